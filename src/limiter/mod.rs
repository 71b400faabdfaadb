//! The limiter: one isolate's view of the shared buckets. It asks Redis (one
//! EVALSHA for every limit of a request), remembers denials so that a caller
//! known to be empty costs no round trip, recovers from `NOSCRIPT` with one
//! EVAL per isolate per episode however many requests hit it at once, falls
//! back from servers that reject the script's shebang, and turns failures into
//! the configured fail mode — fail-open still bounded by a local bucket per key.
//!
//! Synchronous and without I/O: a [`ScriptCall`] says what to send next and is
//! told what came back; time comes in as an argument.

pub(crate) mod known;
pub(crate) mod lease;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::limiter::known::{Known, VERSION_KEY};
use crate::limiter::lease::{GiveBack, LeaseBook, LeaseCounts, Renewal, Spent, Want};
use crate::policy::check::Check;
use crate::policy::check::Mode;
use crate::policy::config::{Clock, FailMode, LeaseConfig, DEFAULT_DENY_CACHE_MAX_MS};
use crate::policy::limit::Limit;
use crate::store::bucket::{self, Op, Spec, State, PER_LIMIT};
use crate::store::decision::{Asked, Decision, LimitStatus};
use crate::store::place::{tag_of, Place, Places};
use crate::store::script::Variant;
use crate::store::upstash::{eval_body, evalsha_body, parse_script_reply, RestError};

/// Why the REST endpoint gave no reply at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The decision's deadline passed.
    Timeout,
    /// The endpoint could not be reached (DNS, connect, TLS, reset).
    Unreachable,
}

/// Why no decision came from Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Unreachable,
    Rest(RestError),
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout => Failure::Timeout,
            TransportError::Unreachable => Failure::Unreachable,
        }
    }
}

/// The failure for the Worker's log: its reason and what the endpoint said (never in a response).
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer within REDIS_TIMEOUT_MS"),
            Failure::Unreachable => f.write_str("the REST endpoint could not be reached"),
            Failure::Rest(RestError::NoScript) => f.write_str("NOSCRIPT, and this episode has had its EVAL"),
            Failure::Rest(RestError::ShebangRejected) => f.write_str("the script's shebang was refused"),
            Failure::Rest(RestError::Unauthorized) => f.write_str("the REST token was refused"),
            Failure::Rest(RestError::Throttled) => f.write_str("Upstash's own request limit (HTTP 429)"),
            Failure::Rest(RestError::Server(status) | RestError::Redirect(status)) => write!(f, "HTTP {status}"),
            Failure::Rest(RestError::Redis(text) | RestError::Malformed(text)) => f.write_str(text),
        }
    }
}

impl Failure {
    /// A short reason for logs and the degraded-response header; no internal detail.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Rest(RestError::Unauthorized) => "unauthorized",
            Failure::Rest(RestError::Throttled) => "throttled",
            Failure::Rest(RestError::Server(_)) => "server-error",
            Failure::Rest(RestError::Redirect(_)) => "redirected",
            Failure::Rest(RestError::Malformed(_)) => "malformed-reply",
            Failure::Rest(RestError::NoScript | RestError::ShebangRejected | RestError::Redis(_)) => "redis-error",
        }
    }
}

/// What the gateway does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed(Decision),
    Denied(Decision),
    /// Redis failed and the fail mode is open: forward, marked as not rate-limited by Redis (with what
    /// this isolate's local bucket said, when it could say it).
    FailedOpen(Failure, Option<Decision>),
    /// Redis failed, the fail mode is open, and this isolate's local bucket is empty: 429.
    DeniedLocally(Decision, Failure),
    /// Redis failed and the fail mode is closed: 503.
    FailedClosed(Failure),
}

/// How many denials an isolate remembers; beyond it, expired entries are dropped, and if none
/// are, the cache starts over (losing only a shortcut, never correctness).
pub(crate) const DENY_CACHE_ENTRIES: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Denial {
    /// Until then (Worker ms) this denial stands: the earlier of when the bucket can pay `cost`
    /// and the deny cache's maximum age.
    until_ms: f64,
    /// When Redis said the bucket can pay `cost` again, and when it is full.
    retry_at_ms: f64,
    full_at_ms: f64,
    cost: u32,
    /// What Redis said was in effect (overrides applied).
    capacity: u32,
    window_s: u64,
}

/// How many keys an isolate keeps a local (fail-open) bucket for; beyond it the
/// map starts over, which can hand each key one more local capacity during an outage.
pub(crate) const LOCAL_BUCKETS: usize = 10_000;

/// How often a request that met `NOSCRIPT` looks whether another request's EVAL is done.
pub(crate) const LOAD_POLL_MS: u32 = 2;

/// After a load, how long NOSCRIPT replies fail instead of loading again, unless an EVALSHA has worked
/// in between (an endpoint that keeps forgetting the script gets one EVAL per isolate per second).
pub(crate) const LOAD_EPISODE_MS: f64 = 1_000.0;

/// Per-isolate limiter state. Nothing here is authoritative: the deny cache
/// only ever says no, and only until Redis said the bucket refills; the local
/// buckets only decide while Redis cannot.
#[derive(Debug)]
pub struct Limiter {
    /// The script's state per shard (each database loads it on its own).
    loads: Vec<Load>,
    /// Where keys live (one database; several shards; a Redis Cluster).
    places: Places,
    denials: RefCell<HashMap<String, Denial>>,
    /// How long (ms) a denial is believed without asking Redis, at most.
    deny_cache_max_ms: f64,
    local: RefCell<HashMap<String, State>>,
    /// Counts since the last [`Limiter::take_counts`]: loads (NOSCRIPT replies that led to an EVAL),
    /// and requests answered from the deny cache.
    noscript: Cell<u64>,
    deny_cache_hits: Cell<u64>,
    leases: RefCell<LeaseBook>,
    /// What this isolate knows of the overrides (which keys exist).
    known: RefCell<Known>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(DEFAULT_DENY_CACHE_MAX_MS)
    }
}

/// KEYS and ARGV for `n` limits: (key, limit, cost, mode, override keys, lease argument `ARGV[a+7]`) each.
fn script_args<'a>(
    limits: impl Iterator<Item = (&'a str, &'a Limit, i64, Mode, &'a [String], String, Option<i64>)>,
    n: usize,
    clock: Clock,
    now_ms: f64,
    op: Op,
    known: &Known,
    can_check: bool,
) -> (Vec<String>, Vec<String>, bool, bool) {
    let mut keys: Vec<String> = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(3 + 8 * n);
    args.push(match clock {
        Clock::Redis => String::new(),
        Clock::Worker => format!("{}", now_ms.floor()),
    });
    args.push(op.code().to_string());
    args.push(n.to_string());
    let mut overrides: Vec<&[String]> = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    for (key, limit, cost, mode, o, lease, seed) in limits {
        keys.push(key.to_string());
        args.push(limit.algorithm().code().to_string());
        args.extend(limit.script_args().iter().cloned());
        args.push(cost.to_string());
        args.push(match seed {
            // (a key new on this shard since a shard change at that time: as if empty then)
            Some(ms) => format!("{} {ms}", mode.code()),
            None => mode.code().to_string(),
        });
        args.push(String::new()); // override indexes, below (their keys come after every limit's)
        args.push(String::new()); // the lease argument, below
        overrides.push(o);
        leases.push(lease);
    }
    for (i, (o, lease)) in overrides.into_iter().zip(leases).enumerate() {
        let mut indexes = String::new();
        for name in o {
            let at = match keys[n..].iter().position(|k| k == name) {
                Some(j) => n + j + 1,
                None => {
                    keys.push(name.clone());
                    keys.len()
                }
            };
            if !indexes.is_empty() {
                indexes.push(' ');
            }
            indexes.push_str(&at.to_string());
        }
        let a = 3 + 8 * i;
        args[a + 6] = indexes;
        args[a + 7] = lease;
    }
    // What this isolate knows of the overrides: the keys it believes absent are not read (unless the
    // version read with them says they may have appeared).
    let mut checked = false;
    let mut wanted = false;
    if keys.len() > n {
        let plan = known.plan(now_ms);
        let mut arg = String::new();
        let skipped: Vec<usize> =
            (n..keys.len()).filter(|&j| !known.may_exist(&keys[j], now_ms)).map(|j| j + 1).collect();
        match plan.check {
            Some(_) if !can_check => {
                wanted = true;
                arg.push_str("0 0");
            }
            Some(expected) => {
                keys.push(VERSION_KEY.to_string());
                checked = true;
                arg.push_str(&format!("{} {expected}", keys.len()));
            }
            None => arg.push_str("0 0"),
        }
        for j in skipped {
            arg.push_str(&format!(" {j}"));
        }
        args.push(arg);
    }
    (keys, args, checked, wanted)
}

/// Checks the reply to a call that gave back or settled `limits` (each a limit and its override keys;
/// `settle_once`: the call carried a settle marker): `Ok(true)` when the request had been settled
/// before, `Ok(false)` when the call was applied, and malformed when any number is out of bounds.
pub(crate) fn after_reply<'a>(
    reply: &[i64],
    limits: impl Iterator<Item = (&'a Limit, &'a [String])>,
    settle_once: bool,
) -> Result<bool, Failure> {
    let asked: Vec<Asked<'_>> =
        limits.map(|(l, o)| Asked { overridable: !o.is_empty(), ..Asked::new("", l, false, 0) }).collect();
    Decision::settled(reply, &asked, settle_once).map_err(Failure::Rest)
}

/// One limit of a request to settle after its response: a slot to release (`delta` 0, `arg` the
/// request's id) or a cost to charge (`delta` > 0) or refund (< 0), `arg` when it was reserved (the
/// script's ms).
#[derive(Clone, Debug)]
pub struct Settlement<'a> {
    pub key: String,
    pub limit: &'a Limit,
    pub overrides: Vec<String>,
    pub delta: i64,
    pub arg: String,
    /// The one shard it goes to (what one piece of a spread call debited); `None`: wherever the key
    /// lives (during a shard change, on both the shard it moved from and the one it moved to).
    pub shard: Option<u16>,
}

/// Where one piece of a script call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The first EVALSHA, sent while its shard's load generation was this.
    First { generation: u64 },
    /// Waiting for another request's load to end.
    Waiting,
    /// The one EVALSHA retried after another request's load.
    Retry,
    /// This request's EVAL of `variant`: the isolate's one load of the episode on that shard.
    Load(Variant),
}

/// What a [`ScriptCall`] needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// POST this body to the REST endpoint (of the piece's shard, [`ScriptCall::shard`]) and report
    /// the reply.
    Send(String),
    /// Wait about this long, then report that time passed.
    Wait(u32),
    /// The script's integers, or why there are none.
    Done(Result<Vec<i64>, Failure>),
    /// A call spread over several places (shards, or slots of a cluster): POST each body to its shard
    /// at once, `(piece, shard, body)`, and report each reply with its piece.
    SendAll(Vec<(usize, u16, String)>),
    /// This piece is done; the call waits for its other pieces.
    Pending,
}

/// The limits of a request that leases paid while one script call decides the others.
#[derive(Debug)]
pub struct Part {
    spent: Vec<Spent>,
    statuses: Vec<LimitStatus>,
}

impl Part {
    /// The limits the script call decides.
    pub fn rest<'c>(&self, checks: &[Check<'c>]) -> Vec<Check<'c>> {
        let covered = |i: usize| self.spent.iter().any(|s| s.index == i);
        checks.iter().enumerate().filter(|(i, _)| !covered(*i)).map(|(_, c)| c.clone()).collect()
    }
}

/// One script call's piece: the limits of one place (a shard; on a cluster, one subject's slot), sent
/// as one EVALSHA.
#[derive(Clone, Debug)]
struct Piece {
    shard: u16,
    keys: Vec<String>,
    args: Vec<String>,
    phase: Phase,
    /// It reads the overrides' version (the reply ends with it).
    version: bool,
    /// The call's limits it holds, in order.
    limits: Vec<usize>,
    result: Option<Result<Vec<i64>, Failure>>,
}

/// A limit debited by an admitted piece of a call that, as a whole, was not admitted: its charge must
/// be put back ([`ScriptCall::debited`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debited {
    /// The limit's index in the call.
    pub index: usize,
    /// The piece's script time (epoch ms): when the charge was counted.
    pub script_ms: i64,
    /// Lease tokens the piece debited beyond the cost (given back with it).
    pub leased: i64,
    /// Whether it paid (a shadow limit pays only when it can).
    pub paid: bool,
    /// The shard that debited it (where it is put back).
    pub shard: u16,
}

/// One script call: EVALSHA, and on `NOSCRIPT` either a wait for another request's load and one more
/// EVALSHA, or this isolate's one EVAL of the episode (once more without the shebang if the server
/// rejects it). Bounded: at most three calls per piece.
///
/// A call whose limits live in several places (their subjects on several shards, or in several slots
/// of a Redis Cluster) goes out in pieces, one per place, all at once; each piece is atomic, and the
/// replies are merged into the one reply a single call would have given: admitted only if every
/// piece admitted. The limits an admitted piece debited for a call that was not admitted are
/// [`ScriptCall::debited`], for the gateway to put back.
#[derive(Clone, Debug)]
pub struct ScriptCall {
    pieces: Vec<Piece>,
    /// The limits of the whole call.
    n: usize,
    op: Op,
    /// The keys this call asks a lease for.
    asked: Vec<String>,
    /// The lease tokens it asks, per limit (empty: none).
    wants: Vec<u64>,
}

/// One limit's part in a call: (key, limit, cost, mode, override keys, lease argument `ARGV[a+7]`,
/// the one shard it goes to if it must).
type LimitArg<'a> = (&'a str, &'a Limit, i64, Mode, &'a [String], String, Option<u16>);

impl ScriptCall {
    /// The call for `checks`, and what to send first.
    pub fn start(limiter: &Limiter, checks: &[Check<'_>], clock: Clock, now_ms: f64, peek: bool) -> (ScriptCall, Next) {
        Self::start_with_id(limiter, checks, clock, now_ms, peek, "")
    }

    /// [`ScriptCall::start`] for a request whose in-flight slots are taken under `id` (unique among
    /// every isolate's requests: see [`crate::Gateway::with_instance_id`]).
    pub fn start_with_id(
        limiter: &Limiter,
        checks: &[Check<'_>],
        clock: Clock,
        now_ms: f64,
        peek: bool,
        id: &str,
    ) -> (ScriptCall, Next) {
        // The limits that may lease (a lease beside a limit that never leases is spent while Redis
        // decides the other: `Limiter::lease_part`).
        let can: Vec<bool> = {
            let book = limiter.leases.borrow();
            checks
                .iter()
                .map(|c| {
                    // (during a shard change a moved subject is decided on two databases: no lease)
                    !peek
                        && matches!(c.mode, Mode::Enforce | Mode::Shadow)
                        && book.can_lease(c.limit, c.cost, c.mode)
                        && limiter.places.moved(&c.key).is_none()
                })
                .collect()
        };
        let leasable = can.iter().any(|&c| c);
        let op = if peek { Op::Peek } else { Op::Take };
        let mut wants = vec![0; checks.len()];
        if leasable {
            let asking: Vec<Want<'_>> = checks
                .iter()
                .zip(&can)
                .filter(|(_, &can)| can)
                .map(|(c, _)| Want { key: &c.key, limit: c.limit, cost: c.cost, mode: c.mode })
                .collect();
            let asked = limiter.leases.borrow_mut().wants(&asking, now_ms);
            for (w, a) in wants.iter_mut().zip(&can).filter(|(_, &can)| can).map(|(w, _)| w).zip(asked) {
                *w = a;
            }
        }
        let asked = checks.iter().zip(&wants).filter(|(_, w)| **w > 0).map(|(c, _)| c.key.clone()).collect();
        let lease_args: Vec<String> = {
            let mut book = limiter.leases.borrow_mut();
            checks
                .iter()
                .zip(&wants)
                .zip(&can)
                .map(|((c, w), &can)| {
                    if c.limit.is_concurrency() {
                        id.to_string() // (a slot's argument is the request's id: its member in the sorted set)
                    } else if can {
                        book.lease_arg(&c.key, *w)
                    } else {
                        "0".to_string()
                    }
                })
                .collect()
        };
        let limits = checks
            .iter()
            .zip(lease_args)
            .map(|(c, arg)| (c.key.as_str(), c.limit, i64::from(c.cost), c.mode, c.overrides.as_slice(), arg, None))
            .collect();
        Self::build(limiter, limits, clock, now_ms, op, None, asked, if leasable { wants } else { Vec::new() })
    }

    /// The call that gives the unused tokens of ended leases back to their buckets.
    pub fn give_back(limiter: &Limiter, items: &[GiveBack], clock: Clock, now_ms: f64) -> (ScriptCall, Next) {
        let limits = items
            .iter()
            .map(|g| {
                let tokens = g.tokens.min(u64::from(u32::MAX)) as u32;
                let arg = format!("{} {} {}", g.taken_ms, g.settle, g.since);
                (g.key.as_str(), &g.limit, i64::from(tokens), Mode::Enforce, g.overrides.as_slice(), arg, None)
            })
            .collect();
        Self::build(limiter, limits, clock, now_ms, Op::GiveBack, None, Vec::new(), Vec::new())
    }

    /// The call after responses that releases their slots and settles their costs (`items` merged per
    /// key: a slot's argument is its members, space-separated; `marker`: the batch's settle marker key,
    /// so that a retried call changes nothing — each piece of a spread call gets a marker of its own).
    pub fn settle(
        limiter: &Limiter,
        items: &[Settlement<'_>],
        marker: Option<&str>,
        clock: Clock,
        now_ms: f64,
    ) -> (ScriptCall, Next) {
        let limits = items
            .iter()
            .map(|s| (s.key.as_str(), s.limit, s.delta, Mode::Enforce, s.overrides.as_slice(), s.arg.clone(), s.shard))
            .collect();
        let op = if marker.is_some() { Op::SettleOnce } else { Op::Settle };
        Self::build(limiter, limits, clock, now_ms, op, marker, Vec::new(), Vec::new())
    }

    /// The call that tops up leases running low: cost 0, only the leases asked for.
    pub fn renew(limiter: &Limiter, items: &[Renewal], clock: Clock, now_ms: f64) -> (ScriptCall, Next) {
        let lease_args: Vec<String> = {
            let mut book = limiter.leases.borrow_mut();
            items.iter().map(|r| book.lease_arg(&r.key, r.want)).collect()
        };
        let limits = items
            .iter()
            .zip(lease_args)
            .map(|(r, arg)| (r.key.as_str(), &r.limit, 0, Mode::Enforce, r.overrides.as_slice(), arg, None))
            .collect();
        let asked = items.iter().map(|r| r.key.clone()).collect();
        Self::build(limiter, limits, clock, now_ms, Op::Take, None, asked, items.iter().map(|r| r.want).collect())
    }

    /// The call's pieces, one per place its limits live in, and what to send first.
    #[allow(clippy::too_many_arguments)]
    fn build(
        limiter: &Limiter,
        limits: Vec<LimitArg<'_>>,
        clock: Clock,
        now_ms: f64,
        op: Op,
        marker: Option<&str>,
        asked: Vec<String>,
        wants: Vec<u64>,
    ) -> (ScriptCall, Next) {
        let n = limits.len();
        let places = &limiter.places;
        // Each piece's limits: (index, whether the key is new on this shard since a shard change).
        let mut groups: Vec<(Place, Vec<(usize, bool)>)> = Vec::new();
        if places.one() || n == 0 {
            groups.push((Place { shard: 0, tag: None }, (0..n).map(|i| (i, false)).collect()));
        } else {
            let mut add = |place: Place, member: (usize, bool)| match groups.iter_mut().find(|(p, _)| *p == place) {
                Some((_, members)) => members.push(member),
                None => groups.push((place, vec![member])),
            };
            for (i, l) in limits.iter().enumerate() {
                let place = places.of(l.0);
                match (l.6, places.moved(l.0)) {
                    (Some(shard), _) => add(Place { shard, ..place }, (i, false)),
                    // During a shard change a moved subject's limit is decided on both databases: the
                    // one it left (its history) and the one it moved to (new there: as if empty at the
                    // change), all or nothing; so neither admits beyond what the other can.
                    (None, Some(from)) => {
                        add(Place { shard: from, tag: place.tag.clone() }, (i, false));
                        add(place, (i, true));
                    }
                    (None, None) => add(place, (i, false)),
                }
            }
        }
        // A key of no subject (a route or tier override, the overrides' version) rides along only where
        // it is readable: on shards it is on every one; on a cluster only a subject's own keys can.
        let shared = places.shared_key_reachable();
        let mut stale = false;
        let pieces: Vec<Piece> = {
            let known = limiter.known.borrow();
            groups
                .into_iter()
                .map(|(place, members)| {
                    // (on a cluster, only the override keys in this subject's slot; elsewhere all, unfiltered)
                    let overrides: Vec<Vec<String>> = match shared {
                        true => Vec::new(),
                        false => members
                            .iter()
                            .map(|&(i, _)| {
                                let own = |k: &&String| tag_of(k) == place.tag.as_deref();
                                limits[i].4.iter().filter(own).cloned().collect()
                            })
                            .collect(),
                    };
                    let piece_limits = members.iter().enumerate().map(|(j, &(i, seeded))| {
                        let l = &limits[i];
                        let seed = if seeded { places.changed_ms() } else { None };
                        let o = if shared { l.4 } else { overrides[j].as_slice() };
                        (l.0, l.1, l.2, l.3, o, l.5.clone(), seed)
                    });
                    // The version is read in a call to the first shard only (the admin API moves it there);
                    // elsewhere a due check reads the index off the response path instead.
                    let can_check = shared && place.shard == 0;
                    let (mut keys, args, version, wanted) =
                        script_args(piece_limits, members.len(), clock, now_ms, op, &known, can_check);
                    stale |= wanted;
                    if let Some(m) = marker {
                        keys.push(match &place.tag {
                            Some(t) => format!("{m}:{{{t}}}"),
                            None => m.to_string(),
                        });
                    }
                    let generation = limiter.load(place.shard).generation.get();
                    Piece {
                        shard: place.shard,
                        keys,
                        args,
                        phase: Phase::First { generation },
                        version,
                        limits: members.into_iter().map(|(i, _)| i).collect(),
                        result: None,
                    }
                })
                .collect()
        };
        if stale {
            limiter.known.borrow_mut().check_due(now_ms);
        }
        let bodies: Vec<(usize, u16, String)> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.shard, evalsha_body(limiter.load(p.shard).variant.get(), &p.keys, &p.args)))
            .collect();
        let call = ScriptCall { pieces, n, op, asked, wants };
        let next = match bodies.len() {
            1 => Next::Send(bodies.into_iter().next().map(|(_, _, b)| b).unwrap_or_default()),
            _ => Next::SendAll(bodies),
        };
        (call, next)
    }

    /// The keys this call asked a lease for.
    pub fn asked(&self) -> &[String] {
        &self.asked
    }

    /// The lease tokens this call asked, per limit in the order given (empty: none).
    pub fn wants(&self) -> &[u64] {
        &self.wants
    }

    /// How many pieces the call goes out in (one unless its limits live in several places).
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// The shard `piece` goes to.
    pub fn shard(&self, piece: usize) -> u16 {
        self.pieces.get(piece).map_or(0, |p| p.shard)
    }

    /// What came back from the REST endpoint for the call (of one piece); `deadline_ms` bounds how
    /// long a started load may hold the isolate's other requests.
    pub fn on_reply(
        &mut self,
        limiter: &Limiter,
        reply: Result<(u16, &str), TransportError>,
        now_ms: f64,
        deadline_ms: f64,
    ) -> Next {
        self.on_piece_reply(limiter, 0, reply, now_ms, deadline_ms)
    }

    /// What came back for `piece`.
    pub fn on_piece_reply(
        &mut self,
        limiter: &Limiter,
        piece: usize,
        reply: Result<(u16, &str), TransportError>,
        now_ms: f64,
        deadline_ms: f64,
    ) -> Next {
        let Some(p) = self.pieces.get_mut(piece) else { return Next::Pending };
        if p.result.is_some() {
            return Next::Pending; // (a reply for a piece already done: nothing more)
        }
        let next = p.on_reply(limiter, reply, now_ms, deadline_ms);
        self.settled(piece, next)
    }

    /// The wait asked for has passed (or the deadline has: `Done(Timeout)`).
    pub fn on_wake(&mut self, limiter: &Limiter, now_ms: f64, deadline_ms: f64) -> Next {
        self.on_piece_wake(limiter, 0, now_ms, deadline_ms)
    }

    /// The wait asked for by `piece` has passed.
    pub fn on_piece_wake(&mut self, limiter: &Limiter, piece: usize, now_ms: f64, deadline_ms: f64) -> Next {
        let Some(p) = self.pieces.get_mut(piece) else { return Next::Pending };
        if p.result.is_some() {
            return Next::Pending;
        }
        let next = p.on_wake(limiter, now_ms, deadline_ms);
        self.settled(piece, next)
    }

    /// A piece's `next`: kept when it is done, and the merged reply once every piece is.
    fn settled(&mut self, piece: usize, next: Next) -> Next {
        let Next::Done(result) = next else { return next };
        if self.pieces.len() == 1 {
            return Next::Done(result);
        }
        self.pieces[piece].result = Some(result);
        if self.pieces.iter().any(|p| p.result.is_none()) {
            return Next::Pending;
        }
        Next::Done(self.merged())
    }

    /// The pieces' replies as the one reply a single call would have given: admitted when every piece
    /// admitted; denied by the first denying piece's limit (a definite denial outweighs a piece that
    /// failed); otherwise the first failure. Limits of a piece that has no numbers (it failed, or it
    /// was settled before) report their own numbers at rest; leases of a call not admitted are put
    /// back with its charges ([`ScriptCall::debited`]), so none is reported.
    fn merged(&self) -> Result<Vec<i64>, Failure> {
        let mut out = vec![0i64; 2 + PER_LIMIT * self.n];
        // Per limit: 0 no numbers yet, 1 at rest, 2 a reply's (a limit decided on two shards during a
        // shard change reports the one with fewer tokens left).
        let mut filled = vec![0u8; self.n];
        let mut failure: Option<Failure> = None;
        let mut denied: Option<(usize, [i64; PER_LIMIT])> = None;
        let mut repeated = 0;
        let mut script_ms = 0;
        for p in &self.pieces {
            let ints = match &p.result {
                Some(Ok(ints)) if ints.len() == 3 + PER_LIMIT * p.limits.len() => ints,
                Some(Ok(ints)) => {
                    let why = format!("script returned {} integers for {} limits", ints.len(), p.limits.len());
                    failure.get_or_insert(Failure::Rest(RestError::Malformed(why)));
                    p.fill_at_rest(&mut out, &mut filled);
                    continue;
                }
                Some(Err(f)) => {
                    failure.get_or_insert(f.clone());
                    p.fill_at_rest(&mut out, &mut filled);
                    continue;
                }
                None => {
                    failure.get_or_insert(Failure::Timeout);
                    p.fill_at_rest(&mut out, &mut filled);
                    continue;
                }
            };
            script_ms = script_ms.max(ints[ints.len() - 1]);
            let settles = matches!(self.op, Op::Settle | Op::SettleOnce | Op::GiveBack);
            if self.op == Op::SettleOnce && ints[0] == 0 {
                repeated += 1; // (settled before: its limits report their numbers at rest)
                p.fill_at_rest(&mut out, &mut filled);
                continue;
            }
            for (j, &i) in p.limits.iter().enumerate() {
                let got = &ints[2 + PER_LIMIT * j..2 + PER_LIMIT * (j + 1)];
                let at = 2 + PER_LIMIT * i;
                if filled[i] < 2 || got[0] < out[at] {
                    out[at..at + PER_LIMIT].copy_from_slice(got);
                }
                filled[i] = 2;
            }
            if !settles && ints[0] != 1 && denied.is_none() {
                let at = usize::try_from(ints[1]).ok().and_then(|d| d.checked_sub(1)).and_then(|d| p.limits.get(d));
                match at {
                    // (its numbers stand for that limit, whatever another piece had left)
                    Some(&i) => {
                        let mut nums = [0; PER_LIMIT];
                        let j = p.limits.iter().position(|&l| l == i).unwrap_or(0);
                        nums.copy_from_slice(&ints[2 + PER_LIMIT * j..2 + PER_LIMIT * (j + 1)]);
                        denied = Some((i, nums));
                    }
                    None => {
                        let why = format!("a piece denied by limit {}", ints[1]);
                        failure.get_or_insert(Failure::Rest(RestError::Malformed(why)));
                    }
                }
            }
        }
        match (denied, failure) {
            (Some((i, nums)), _) => {
                out[1] = i as i64 + 1;
                out[2 + PER_LIMIT * i..2 + PER_LIMIT * (i + 1)].copy_from_slice(&nums);
                for l in 0..self.n {
                    out[2 + PER_LIMIT * l + 5] = 0;
                }
            }
            (None, Some(f)) => return Err(f),
            (None, None) if repeated == self.pieces.len() => {
                out.iter_mut().for_each(|v| *v = 0);
            }
            (None, None) => out[0] = 1,
        }
        out.push(script_ms.max(1));
        Ok(out)
    }

    /// For a call in pieces that, as a whole, was not admitted: the limits its admitted pieces debited
    /// (their charges and leases must be put back; a candidate's limits pay by their own verdict and a
    /// reported one never pays, so neither is listed). Empty for a call in one piece.
    pub fn debited(&self) -> Vec<Debited> {
        if self.pieces.len() < 2 || self.op != Op::Take {
            return Vec::new();
        }
        let admitted = |p: &Piece| matches!(&p.result, Some(Ok(ints)) if ints.first() == Some(&1) && ints.len() == 3 + PER_LIMIT * p.limits.len());
        if self.pieces.iter().all(admitted) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for p in self.pieces.iter().filter(|p| admitted(p)) {
            let Some(Ok(ints)) = &p.result else { continue };
            let script_ms = ints[ints.len() - 1];
            for (j, &i) in p.limits.iter().enumerate() {
                let mode = p.args.get(3 + PER_ARGS * j + 5).and_then(|m| m.split(' ').next());
                let v = &ints[2 + PER_LIMIT * j..2 + PER_LIMIT * (j + 1)];
                let paid = match mode {
                    Some("0") => true,
                    Some("1") => v[1] == 0,
                    _ => false,
                };
                if paid || v[5] > 0 {
                    out.push(Debited { index: i, script_ms, leased: v[5], paid, shard: p.shard });
                }
            }
        }
        out
    }
}

/// The script's arguments per limit.
const PER_ARGS: usize = 8;

impl Piece {
    /// Its limits' numbers at rest where no reply says more: full, nothing to wait for, the capacity and
    /// window asked.
    fn fill_at_rest(&self, out: &mut [i64], filled: &mut [u8]) {
        for (j, &i) in self.limits.iter().enumerate() {
            if filled[i] > 0 {
                continue;
            }
            filled[i] = 1;
            let a = 3 + PER_ARGS * j;
            let capacity: f64 = self.args.get(a + 1).and_then(|v| v.parse().ok()).unwrap_or(1.0);
            let rate: f64 = self.args.get(a + 2).and_then(|v| v.parse().ok()).unwrap_or(1.0);
            let window = if rate > 0.0 { (capacity / rate).ceil().max(1.0) } else { 1.0 };
            let at = 2 + PER_LIMIT * i;
            out[at..at + PER_LIMIT].copy_from_slice(&[capacity as i64, 0, 0, capacity as i64, window as i64, 0]);
        }
    }

    fn evalsha(&mut self, limiter: &Limiter) -> Next {
        self.phase = Phase::Retry;
        Next::Send(evalsha_body(limiter.load(self.shard).variant.get(), &self.keys, &self.args))
    }

    fn on_reply(
        &mut self,
        limiter: &Limiter,
        reply: Result<(u16, &str), TransportError>,
        now_ms: f64,
        deadline_ms: f64,
    ) -> Next {
        let result = reply
            .map_err(Failure::from)
            .and_then(|(status, body)| parse_script_reply(status, body).map_err(Failure::Rest))
            .map(|mut ints| {
                // The overrides' version, when the call read it, ends the reply: this isolate's to keep.
                let n: usize = self.args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
                if self.version && ints.len() == 4 + PER_LIMIT * n {
                    if let Some(v) = ints.pop() {
                        limiter.known.borrow_mut().seen(v, now_ms);
                    }
                }
                ints
            });
        let load = limiter.load(self.shard);
        match self.phase {
            Phase::Load(variant) => {
                if result == Err(Failure::Rest(RestError::ShebangRejected)) && variant == Variant::Flagged {
                    load.variant.set(Variant::Plain);
                    self.phase = Phase::Load(Variant::Plain);
                    return Next::Send(eval_body(Variant::Plain, &self.keys, &self.args));
                }
                load.end(result.is_ok());
                Next::Done(result)
            }
            Phase::First { generation } if result == Err(Failure::Rest(RestError::NoScript)) => {
                if load.loading(now_ms) {
                    // Another request of this isolate is loading the script: wait for it rather than
                    // send one more EVAL (the storm @upstash/ratelimit has after a flush).
                    self.phase = Phase::Waiting;
                    Next::Wait(LOAD_POLL_MS)
                } else if load.generation.get() != generation {
                    // A load overlapped this EVALSHA's flight: one more EVALSHA, if that load worked.
                    if load.load_ok.get() {
                        self.evalsha(limiter)
                    } else {
                        Next::Done(result)
                    }
                } else if load.may_load(now_ms) {
                    let variant = load.variant.get();
                    load.start(now_ms, deadline_ms);
                    limiter.noscript.set(limiter.noscript.get() + 1);
                    self.phase = Phase::Load(variant);
                    Next::Send(eval_body(variant, &self.keys, &self.args))
                } else {
                    Next::Done(result) // this episode has had its EVAL
                }
            }
            Phase::First { .. } | Phase::Retry | Phase::Waiting => {
                if result.is_ok() {
                    load.confirmed.set(true);
                }
                Next::Done(result)
            }
        }
    }

    fn on_wake(&mut self, limiter: &Limiter, now_ms: f64, deadline_ms: f64) -> Next {
        if now_ms >= deadline_ms {
            return Next::Done(Err(Failure::Timeout));
        }
        let load = limiter.load(self.shard);
        if load.loading(now_ms) {
            return Next::Wait(LOAD_POLL_MS);
        }
        if load.load_ok.get() {
            self.evalsha(limiter)
        } else {
            Next::Done(Err(Failure::Rest(RestError::NoScript)))
        }
    }
}

/// One database's script state in this isolate: each shard loads the script on its own.
#[derive(Debug)]
struct Load {
    variant: Cell<Variant>,
    /// A request of this isolate is sending the script (EVAL) right now, until at most this time
    /// (its deadline: a load whose answer never comes back cannot hold the others forever).
    loading_until_ms: Cell<Option<f64>>,
    /// Moves on when a load starts and when it ends: a request whose EVALSHA met NOSCRIPT while a
    /// load overlapped its flight retries that EVALSHA instead of loading again.
    generation: Cell<u64>,
    /// Whether the last load's EVAL answered with a decision.
    load_ok: Cell<bool>,
    /// When the last load started (Worker ms), and whether an EVALSHA has worked since: one EVAL per
    /// episode, which ends with a working EVALSHA or [`LOAD_EPISODE_MS`] after the load.
    last_load_ms: Cell<Option<f64>>,
    confirmed: Cell<bool>,
}

impl Load {
    fn new() -> Load {
        Load {
            variant: Cell::new(Variant::Flagged),
            loading_until_ms: Cell::new(None),
            generation: Cell::new(0),
            load_ok: Cell::new(false),
            last_load_ms: Cell::new(None),
            confirmed: Cell::new(false),
        }
    }

    fn loading(&self, now_ms: f64) -> bool {
        self.loading_until_ms.get().is_some_and(|until| now_ms < until)
    }

    /// Whether a NOSCRIPT may start a load now: never twice in one episode.
    fn may_load(&self, now_ms: f64) -> bool {
        match self.last_load_ms.get() {
            None => true,
            Some(at) => self.confirmed.get() || now_ms - at >= LOAD_EPISODE_MS || now_ms < at,
        }
    }

    fn start(&self, now_ms: f64, deadline_ms: f64) {
        self.loading_until_ms.set(Some(deadline_ms));
        self.load_ok.set(false);
        self.generation.set(self.generation.get() + 1);
        self.last_load_ms.set(Some(now_ms));
        self.confirmed.set(false);
    }

    fn end(&self, ok: bool) {
        self.loading_until_ms.set(None);
        self.load_ok.set(ok);
        self.generation.set(self.generation.get() + 1);
    }
}

impl Limiter {
    /// A limiter whose cached denials stand at most `deny_cache_max_ms`, without leases.
    pub fn new(deny_cache_max_ms: u32) -> Limiter {
        Limiter::with_leases(deny_cache_max_ms, LeaseConfig { on: false, ..LeaseConfig::default() })
    }

    /// A limiter whose cached denials stand at most `deny_cache_max_ms`, leasing as `leases` says.
    pub fn with_leases(deny_cache_max_ms: u32, leases: LeaseConfig) -> Limiter {
        Limiter {
            leases: RefCell::new(LeaseBook::new(leases)),
            known: RefCell::new(Known::new()),
            loads: vec![Load::new()],
            places: Places::single(),
            denials: RefCell::new(HashMap::new()),
            deny_cache_max_ms: f64::from(deny_cache_max_ms),
            local: RefCell::new(HashMap::new()),
            noscript: Cell::new(0),
            deny_cache_hits: Cell::new(0),
        }
    }

    /// The limiter for databases spread as `places` says (shards, a Redis Cluster).
    pub fn with_places(mut self, places: Places) -> Limiter {
        self.loads = (0..places.shards()).map(|_| Load::new()).collect();
        self.places = places;
        self
    }

    /// Where keys live.
    pub fn places(&self) -> &Places {
        &self.places
    }

    fn load(&self, shard: u16) -> &Load {
        self.loads.get(usize::from(shard)).unwrap_or(&self.loads[0])
    }

    /// Forgets the cached denials of `keys` (after an admin reset), or all of them (`None`, after an
    /// override changed).
    pub fn forget(&self, keys: Option<&[String]>) {
        let mut denials = self.denials.borrow_mut();
        match keys {
            Some(keys) => {
                keys.iter().for_each(|k| {
                    denials.remove(k);
                });
                // A lease taken before a reset would give its tokens back to the fresh bucket: dropped.
                self.leases.borrow_mut().drop_keys(keys);
            }
            None => {
                denials.clear(); // an override changed: a lease taken before it holds until its horizon
                self.known.borrow_mut().changed();
            }
        }
    }

    /// The pipeline that reads which overrides exist, when this isolate should read it now.
    pub fn overrides_fetch(&self, now_ms: f64) -> Option<String> {
        self.known.borrow_mut().fetch(now_ms)
    }

    /// What that pipeline answered (`None`: no answer).
    pub fn overrides_fetched(&self, reply: Option<(u16, &str)>, now_ms: f64) {
        self.known.borrow_mut().fetched(reply, now_ms);
    }

    /// How many override keys this isolate knows exist (`None`: it knows nothing, and reads them all).
    pub fn overrides_known(&self) -> Option<usize> {
        self.known.borrow().held()
    }

    /// A decision from this isolate's leases, if every one of `checks` can be paid from one: no
    /// round trip. Each limit reports what Redis had left at the lease's last grant plus the lease's
    /// unspent tokens.
    pub fn leased(&self, checks: &[Check<'_>], now_ms: f64) -> Option<Decision> {
        let mut book = self.leases.borrow_mut();
        if book.is_empty() {
            return None; // (most requests: no allocation)
        }
        let wants: Vec<Want<'_>> =
            checks.iter().map(|c| Want { key: &c.key, limit: c.limit, cost: c.cost, mode: c.mode }).collect();
        let leases = book.spend(&wants, now_ms)?;
        let limits = checks
            .iter()
            .zip(leases)
            .map(|(c, l)| LimitStatus {
                name: c.name.to_string(),
                shadow: c.shadow(),
                capacity: l.capacity,
                window_s: l.window_s,
                remaining: l.remaining.saturating_add(l.tokens()),
                retry_ms: 0,
                reset_ms: (l.reset_at_ms - now_ms).max(0.0).ceil() as u64,
            })
            .collect();
        Some(Decision { allowed: true, denied_by: None, limits })
    }

    /// When this isolate's leases cover some but not all of a request's limits (a caller's own limit
    /// beside a busy per-route or global one): those paid from their leases now, and the others left
    /// for one script call to decide ([`Part::rest`]). The request is admitted only if that call
    /// admits it; otherwise what the leases paid is put back ([`Limiter::decided_part`]), so a denial
    /// costs the covered limits nothing.
    pub fn lease_part(&self, checks: &[Check<'_>], now_ms: f64) -> Option<Part> {
        let mut book = self.leases.borrow_mut();
        if book.is_empty() {
            return None;
        }
        let wants: Vec<Want<'_>> =
            checks.iter().map(|c| Want { key: &c.key, limit: c.limit, cost: c.cost, mode: c.mode }).collect();
        let spent = book.spend_part(&wants, now_ms)?;
        let statuses = spent
            .iter()
            .map(|s| {
                let c = &checks[s.index];
                let l = book.lease_of(&s.key);
                LimitStatus {
                    name: c.name.to_string(),
                    shadow: c.shadow(),
                    capacity: l.map_or(c.limit.capacity(), |l| l.capacity),
                    window_s: l.map_or(c.limit.window_seconds(), |l| l.window_s),
                    remaining: l.map_or(0, |l| l.remaining.saturating_add(l.tokens())),
                    retry_ms: 0,
                    reset_ms: l.map_or(0, |l| (l.reset_at_ms - now_ms).max(0.0).ceil() as u64),
                }
            })
            .collect();
        Some(Part { spent, statuses })
    }

    /// The decision for all of `checks` from the script's reply for [`Part::rest`] of them: admitted
    /// only if the call admitted the rest (the covered limits paid from their leases); otherwise what
    /// the leases paid is put back, and a failure stays a failure (the fail mode decides the request).
    pub fn decided_part(
        &self,
        checks: &[Check<'_>],
        part: &Part,
        reply: Result<Vec<i64>, Failure>,
        wants: &[u64],
        now_ms: f64,
    ) -> Result<Decision, Failure> {
        let rest = part.rest(checks);
        let decided = self.decided(&rest, reply, wants, now_ms);
        if !decided.as_ref().is_ok_and(|d| d.allowed) {
            self.leases.borrow_mut().unspend(&part.spent);
        }
        let d = decided?;
        let mut from_call = d.limits.into_iter();
        let mut denied_by = None;
        let mut asked = 0;
        let mut limits = Vec::with_capacity(checks.len());
        for i in 0..checks.len() {
            match part.spent.iter().position(|s| s.index == i) {
                Some(j) => limits.push(part.statuses[j].clone()),
                None => {
                    if d.denied_by == Some(asked) {
                        denied_by = Some(i);
                    }
                    asked += 1;
                    limits.extend(from_call.next());
                }
            }
        }
        Ok(Decision { allowed: d.allowed, denied_by, limits })
    }

    /// This isolate's leases (the after-the-response work schedules their renewals, wakes and
    /// give-backs: `src/gateway/after.rs`).
    pub(crate) fn leases(&self) -> std::cell::RefMut<'_, LeaseBook> {
        self.leases.borrow_mut()
    }

    /// What a renewal call brought: the leases granted (nothing when it failed).
    pub fn renewed(&self, items: &[Renewal], reply: Result<Vec<i64>, Failure>, now_ms: f64) {
        let keys: Vec<String> = items.iter().map(|r| r.key.clone()).collect();
        self.answered(&keys);
        let Ok(ints) = reply else { return };
        let share = self.share();
        let limits: Vec<Asked<'_>> = items
            .iter()
            .map(|r| Asked {
                want: r.want,
                share,
                overridable: !r.overrides.is_empty(),
                ..Asked::new("", &r.limit, false, 0)
            })
            .collect();
        let Ok(decision) = Decision::from_script(&ints, &limits) else { return };
        let script_ms = ints.last().copied().unwrap_or(0);
        let mut book = self.leases.borrow_mut();
        for (i, (r, status)) in items.iter().zip(&decision.limits).enumerate() {
            let leased = ints[2 + PER_LIMIT * i + 5];
            if leased > 0 {
                book.grant(&r.key, leased as u64, script_ms, status, &r.limit, &r.overrides, now_ms);
            }
        }
    }

    /// The call that asked leases for `keys` is over.
    pub fn answered(&self, keys: &[String]) {
        if !keys.is_empty() {
            self.leases.borrow_mut().answered(keys.iter());
        }
    }

    /// The most of a limit's capacity one lease grant may take.
    fn share(&self) -> f64 {
        self.leases.borrow().share()
    }

    /// Tokens this isolate holds in leases, live or ended and not yet given back.
    pub fn leased_tokens(&self) -> u64 {
        self.leases.borrow().outstanding()
    }

    /// Tokens of `key` this isolate holds in leases, live or ended and not yet given back.
    pub fn leased_tokens_of(&self, key: &str) -> u64 {
        self.leases.borrow().outstanding_of(key)
    }

    /// Lease counts since the last call.
    pub fn take_lease_counts(&self) -> LeaseCounts {
        self.leases.borrow_mut().take_counts()
    }

    /// (loads after NOSCRIPT, deny-cache hits) since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        (self.noscript.replace(0), self.deny_cache_hits.replace(0))
    }

    /// The script variant this isolate sends (it falls back to plain once for its lifetime).
    pub fn variant(&self) -> Variant {
        self.loads[0].variant.get()
    }

    /// The decision the script's integers stand for, remembered for the deny cache: a denial is
    /// cached, an allowed call drops what this isolate believed about its keys (say, before an admin
    /// reset elsewhere). The reply is bounded by what the call asked ([`ScriptCall::wants`], the lease
    /// tokens per limit): a grant nobody asked for, or more than asked (a broken or hostile endpoint),
    /// makes the reply malformed — the fail mode's answer, never a decision.
    pub fn decided(
        &self,
        checks: &[Check<'_>],
        reply: Result<Vec<i64>, Failure>,
        wants: &[u64],
        now_ms: f64,
    ) -> Result<Decision, Failure> {
        let share = self.share();
        let limits: Vec<Asked<'_>> =
            checks.iter().enumerate().map(|(i, c)| Asked::of(c, wants.get(i).copied().unwrap_or(0), share)).collect();
        let ints = reply?;
        let mut decision = Decision::from_script(&ints, &limits).map_err(Failure::Rest)?;
        match decision.denied_by {
            // Slots free when responses end, which no isolate can foresee: never cached.
            Some(i) if checks[i].limit.is_concurrency() => {}
            Some(i) => self.remember_denial(&checks[i], &decision.limits[i], now_ms),
            None => {
                let mut denials = self.denials.borrow_mut();
                if !denials.is_empty() {
                    checks.iter().for_each(|c| {
                        denials.remove(&c.key);
                    });
                }
                drop(denials);
                // Leases granted in this call, and what the caller can still spend: Redis's remaining
                // tokens plus the lease's.
                let mut book = self.leases.borrow_mut();
                let script_ms = ints.last().copied().unwrap_or(0);
                for (i, (c, status)) in checks.iter().zip(decision.limits.iter_mut()).enumerate() {
                    let leased = ints[2 + PER_LIMIT * i + 5];
                    if leased > 0 {
                        book.grant(&c.key, leased as u64, script_ms, status, c.limit, &c.overrides, now_ms);
                    }
                    status.remaining = status.remaining.saturating_add(book.held(&c.key, now_ms));
                }
            }
        }
        Ok(decision)
    }

    /// The script's integers for a peek (the admin API): nothing remembered.
    pub fn peeked(&self, checks: &[Check<'_>], reply: Result<Vec<i64>, Failure>) -> Result<Decision, Failure> {
        let limits: Vec<Asked<'_>> = checks.iter().map(|c| Asked::of(c, 0, 0.0)).collect();
        Decision::from_script(&reply?, &limits).map_err(Failure::Rest)
    }

    /// The script's integers for a quota read (`checks[0]` the endpoint's own bucket, the others only
    /// reported): a denial by its own bucket is remembered, so a caller known to be out of reads costs
    /// no round trip; nothing of the reported limits is.
    pub fn read_quota(
        &self,
        checks: &[Check<'_>],
        reply: Result<Vec<i64>, Failure>,
        now_ms: f64,
    ) -> Result<Decision, Failure> {
        let decision = self.peeked(checks, reply)?;
        if let (Some(0), Some(own)) = (decision.denied_by, checks.first()) {
            self.remember_denial(own, &decision.limits[0], now_ms);
        }
        Ok(decision)
    }

    /// What the gateway does with a decision attempt under `mode`. When Redis
    /// failed and the mode is open, this isolate's local bucket for each key
    /// (same capacity and refill, the Worker's clock) still bounds the traffic:
    /// an outage must not mean unlimited requests.
    pub fn outcome(
        &self,
        result: Result<Decision, Failure>,
        mode: FailMode,
        checks: &[Check<'_>],
        now_ms: f64,
    ) -> Outcome {
        let failure = match result {
            Ok(d) if d.allowed => return Outcome::Allowed(d),
            Ok(d) => return Outcome::Denied(d),
            Err(f) => f,
        };
        if mode == FailMode::Closed {
            return Outcome::FailedClosed(failure);
        }
        let mut local = self.local.borrow_mut();
        if local.len() + checks.len() > LOCAL_BUCKETS {
            local.clear();
        }
        let mut states: Vec<Option<State>> = checks.iter().map(|c| local.get(&c.key).copied()).collect();
        let specs: Vec<Spec> = checks
            .iter()
            .map(|c| {
                Spec::new(
                    c.limit.algorithm(),
                    f64::from(c.limit.capacity()),
                    c.limit.refill().tokens_per_second(),
                    f64::from(c.cost),
                    c.mode,
                )
            })
            .collect();
        let reply = bucket::call(&mut states, &specs, now_ms / 1000.0);
        for (c, state) in checks.iter().zip(states) {
            if let Some(state) = state {
                local.insert(c.key.clone(), state);
            }
        }
        let limits: Vec<Asked<'_>> = checks.iter().map(|c| Asked::new(c.name, c.limit, c.shadow(), c.cost)).collect();
        match Decision::from_script(&reply.to_flat(), &limits) {
            Ok(decision) if !reply.allowed => Outcome::DeniedLocally(decision, failure),
            local => Outcome::FailedOpen(failure, local.ok()),
        }
    }

    /// A denial this isolate already knows, without asking Redis: the first of `checks` whose bucket
    /// Redis said cannot pay this cost yet (counted as a deny-cache hit).
    pub fn cached_denial(&self, checks: &[Check<'_>], now_ms: f64) -> Option<Decision> {
        let mut denials = self.denials.borrow_mut();
        if denials.is_empty() {
            return None;
        }
        let max_age = self.deny_cache_max_ms;
        let (i, denial) = checks.iter().enumerate().find_map(|(i, c)| {
            // A shadow limit never denies, whatever another call learnt about its bucket.
            let d = denials.get_mut(&c.key).filter(|_| !c.shadow())?;
            if c.cost < d.cost || now_ms >= d.retry_at_ms {
                return None;
            }
            if now_ms >= d.until_ms {
                // Redis said "empty until retry_at", but the denial is older than its maximum age: this
                // request asks Redis again, and the others keep the denial meanwhile (one re-check per
                // key, not a stampede of every request in flight).
                d.until_ms = now_ms + max_age;
                return None;
            }
            Some((i, *d))
        })?;
        self.deny_cache_hits.set(self.deny_cache_hits.get() + 1);
        let limits = checks
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let (remaining, retry_ms, reset_ms) = if j == i {
                    (
                        0,
                        (denial.retry_at_ms - now_ms).ceil() as u64,
                        (denial.full_at_ms - now_ms).max(0.0).ceil() as u64,
                    )
                } else {
                    (u64::from(c.limit.capacity()), 0, 0) // not asked: Redis was not called
                };
                let (capacity, window_s) = if j == i {
                    (denial.capacity, denial.window_s)
                } else {
                    (c.limit.capacity(), c.limit.window_seconds())
                };
                LimitStatus {
                    name: c.name.to_string(),
                    shadow: c.shadow(),
                    capacity,
                    window_s,
                    remaining,
                    retry_ms,
                    reset_ms,
                }
            })
            .collect();
        Some(Decision { allowed: false, denied_by: Some(i), limits })
    }

    fn remember_denial(&self, check: &Check<'_>, status: &LimitStatus, now_ms: f64) {
        let mut denials = self.denials.borrow_mut();
        if denials.len() >= DENY_CACHE_ENTRIES {
            denials.retain(|_, d| d.until_ms > now_ms);
            if denials.len() >= DENY_CACHE_ENTRIES {
                denials.clear();
            }
        }
        let denial = Denial {
            until_ms: now_ms + (status.retry_ms as f64).min(self.deny_cache_max_ms),
            retry_at_ms: now_ms + status.retry_ms as f64,
            full_at_ms: now_ms + status.reset_ms as f64,
            cost: check.cost,
            capacity: status.capacity,
            window_s: status.window_s,
        };
        denials.insert(check.key.clone(), denial);
    }

    /// Entries in the deny cache (for tests and metrics).
    pub fn cached_denials(&self) -> usize {
        self.denials.borrow().len()
    }
}
