//! Past one database, in simulation: 1,000,000 requests/s from 1,000 isolates in 100 locations (10
//! isolates each, each location its own round trip to the databases, 5-80 ms), callers drawn from a
//! Zipf distribution (s = 1.1) over 10,000,000 callers (80 % of a caller's requests from its home
//! location), every request under a per-caller limit and a global limit — spread over N = 1, 4, 16, 64
//! databases (shards). Prints, per N: the commands/s of the busiest and of the average database, REST
//! calls and commands per request, admissions against a perfect limiter (the same two buckets decided
//! together at each arrival, no latency, no leases), a check that no key was admitted beyond its
//! allowance, and which N keeps the busiest database within Upstash's 10,000 commands/s.
//!
//! **What is real code, what is modelled.** Real: the placement (`edge_ratelimit::shard_of`, rendezvous
//! hashing of the subject over the shards' names), every isolate's leases (`LeaseBook`: what to ask,
//! `spend` / `spend_part` / `unspend`, renewals, the wake chain's give-backs), and every key's state in
//! the simulated Redis (`bucket::call_with`, the Rust reference of the script, bit for bit the Lua:
//! grants, the lease slots, settlements, give-backs, refunds). Modelled (the gateway core cannot run a
//! million requests a second here, and it does not split calls across shards yet): the gateway's
//! order per request — every limit covered by a lease (no call), the deny cache (the limiter's rule:
//! a denial stands until the bucket can pay, at most 1 s), leases covering some limits (one call for
//! the rest), else one call — and with more than one database: the caller's key lives on
//! `shard_of(caller)`, the global key (`@global`) on `shard_of("@global")`; a call for limits on two
//! shards becomes two calls sent together, the request admitted only if both admit; an admitting
//! side whose partner denied is refunded (cost −1, `Op::Settle`) in a batched settle call per isolate
//! and shard (sent 50 ms after its first item or at 64 items, as the gateway batches settlements).
//! Commands per script call follow the counts `tests/commands.rs` measures with Redis's
//! `INFO commandstats`: `EVALSHA`, then per key `HMGET`, and for a key the call writes `HSET`, plus
//! `EXPIRE` when the script's own rule says (the key's deadline `x` less than a quarter TTL beyond
//! when it is full again: a key's first write, then at most once per quarter TTL); plus one `MGET` on
//! an isolate's first call to a database in every 10 s (the overrides' version check). Not modelled:
//! the override index reads, metrics flushes, network failures, a second region of databases (every
//! location is the same round trip from every database).
//!
//! `cargo run --release --example shard_sim` (bench/run shard-sim); `SIM_SECONDS` (default 3)
//! simulated seconds per N (3,000,000 requests; two N at a time on two threads, about 30-50 s each);
//! `SIM_SHARDS` (default "1,4,16,64", at most 255); `SIM_GLOBAL` ("<capacity>,<refill>", default
//! "250000,250000/s").

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap as StdHashMap};
use std::hash::{BuildHasherDefault, Hasher};

use edge_ratelimit::bucket::{self, BucketReply, Mode, Op, Reply, Spec, State};
use edge_ratelimit::{shard_of, Algorithm, GiveBack, LeaseBook, LeaseConfig, Limit, LimitStatus, Refill, Want};

const RATE: f64 = 1_000_000.0;
const CALLERS: usize = 10_000_000;
const ZIPF_S: f64 = 1.1;
const LOCATIONS: usize = 100;
const PER_LOCATION: usize = 10;
const HOME: f64 = 0.8;
/// Round trips from a location to the databases: 5-80 ms.
const RTT_MS: (f64, f64) = (5.0, 80.0);
/// Every caller: 100 tokens, refilled 100 a minute.
const CALLER_CAPACITY: u32 = 100;
const CALLER_REFILL: &str = "100/min";
/// The global limit, shared by every caller: 250,000 tokens, refilled 250,000 a second. The callers'
/// own limits let about 440,000 requests/s through at first (their buckets start full), then about
/// 300,000: the global limit binds once its first second's burst is spent.
const GLOBAL_CAPACITY: u32 = 250_000;
const GLOBAL_REFILL: &str = "250000/s";
const TTL_S: u64 = 60;
/// Upstash's ceiling for one database.
const DB_LIMIT: f64 = 10_000.0;
/// The deny cache's maximum age (`DENY_CACHE_MAX_MS`' default) and size.
const DENY_MAX_MS: f64 = 1_000.0;
const DENY_ENTRIES: usize = 10_000;
/// Settlements batched per isolate and database.
const BATCH_MS: f64 = 50.0;
const BATCH_MAX: usize = 64;
/// The overrides' version check (`CHECK_MS`).
const CHECK_MS: f64 = 10_000.0;
/// Epoch ms at simulated time 0.
const T0_MS: f64 = 1.8e12;
const GLOBAL_SUBJECT: &str = "@global";
/// Runs at a time.
const THREADS: usize = 2;

/// A fast hasher for the simulation's own maps (caller ids and keys; `LeaseBook`'s are its own).
#[derive(Default)]
struct Fx(u64);
impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<Fx>>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f64) as usize).min(n - 1)
    }
}

/// A caller's home location: fixed by its id.
fn home_of(caller: u32) -> usize {
    let mut z = u64::from(caller).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % LOCATIONS as u64) as usize
}

/// A key: the global limit's, or caller `n`'s own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Global,
    Caller(u32),
}

impl Key {
    fn name(self) -> String {
        match self {
            Key::Global => format!("rate:{{{GLOBAL_SUBJECT}}}:/v1"),
            Key::Caller(c) => format!("rate:{{c{c}}}:/v1"),
        }
    }
}

/// A key's state in the simulated Redis: the script's hash, and its deadline `x` (epoch s).
#[derive(Clone, Copy, Default)]
struct Stored {
    state: Option<State>,
    x: Option<f64>,
}

#[derive(Clone, Copy)]
struct Denial {
    until_ms: f64,
    retry_at_ms: f64,
}

struct Isolate {
    book: LeaseBook,
    denials: HashMap<Key, Denial>,
    /// Refunds waiting for their batched settle call, per database: (key, tokens).
    settles: HashMap<usize, Vec<(Key, u64)>>,
}

enum Purpose {
    /// Deciding request `id` (one of its `parts` calls).
    Decide(usize),
    Renew,
    GiveBack,
    Settle,
}

struct Call {
    isolate: usize,
    shard: usize,
    op: Op,
    keys: Vec<Key>,
    specs: Vec<Spec>,
    /// Lease tokens asked per key (Take calls).
    wants: Vec<u64>,
    sent_ms: f64,
    purpose: Purpose,
    reply: Option<Reply>,
}

/// Puts back what leases paid for a request that was not admitted.
type Undo = Box<dyn FnOnce(&mut LeaseBook)>;
/// Calls to send, by database: (shard, its items).
type ByShard = Vec<(usize, Vec<(Key, Spec, u64)>)>;

struct Pending {
    isolate: usize,
    caller: u32,
    calls: Vec<usize>,
    left: usize,
    /// What leases paid for this request, to put back if it is not admitted (`LeaseBook::unspend`).
    undo: Option<Undo>,
}

enum Event {
    AtRedis(usize),
    Back(usize),
    Wake(usize),
    Flush(usize, usize),
}

struct Limits {
    caller: Limit,
    global: Limit,
    caller_spec: Spec,
    global_spec: Spec,
}

impl Limits {
    fn of(&self, k: Key) -> (&Limit, Spec) {
        match k {
            Key::Global => (&self.global, self.global_spec),
            Key::Caller(_) => (&self.caller, self.caller_spec),
        }
    }
}

/// A key's limit, its `Spec` with the lease argument the isolate sends (`"0"` or
/// `"<want> <slot ms> <share> <settle> <since>"`), as the simulated Redis parses it.
fn take_spec(base: Spec, cost: f64, lease_arg: &str) -> Spec {
    let v: Vec<f64> = lease_arg.split(' ').map(|x| x.parse::<f64>().expect("a lease argument")).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    Spec { cost, lease: at(0), slot_ms: at(1), share: at(2), settle: at(3), since: at(4), ..base }
}

/// What the script said of a limit, as the gateway hands it to a grant.
fn status(b: &BucketReply) -> LimitStatus {
    LimitStatus {
        name: String::new(),
        shadow: false,
        capacity: b.capacity as u32,
        window_s: b.window_s as u64,
        remaining: b.remaining.max(0) as u64,
        retry_ms: b.retry_ms.max(0) as u64,
        reset_ms: b.reset_ms.max(0) as u64,
    }
}

fn key_of(name: &str) -> Key {
    let tag = edge_ratelimit::tag_of(name).expect("a tagged key");
    if tag == GLOBAL_SUBJECT {
        Key::Global
    } else {
        Key::Caller(tag[1..].parse().expect("c<n>"))
    }
}

/// Kinds of REST calls, for the counts.
const DECIDE: usize = 0;
const RENEW: usize = 1;
const GIVE_BACK: usize = 2;
const SETTLE: usize = 3;

struct Sim<'z> {
    shards: usize,
    names: Vec<String>,
    limits: &'static Limits,
    global_name: String,
    global_shard: usize,
    caller_shard: Vec<u8>,
    zipf: &'z Zipf,
    one_way_ns: Vec<u64>,
    isolates: Vec<Isolate>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    free_events: Vec<usize>,
    seq: u64,
    calls: Vec<Option<Call>>,
    free_calls: Vec<usize>,
    pending: Vec<Option<Pending>>,
    free_pending: Vec<usize>,
    store: HashMap<u32, Stored>,
    global: Stored,
    /// When each isolate last read the overrides' version on each database (ms).
    checked: Vec<f64>,
    end_ns: u64,
    // What happened.
    commands: Vec<u64>,
    commands_in_run: Vec<u64>,
    /// Commands (within the run) of calls that touch the global key: on its database whatever N is.
    global_commands: u64,
    per_second: Vec<Vec<u64>>,
    rest_calls: [u64; 4],
    requests: u64,
    admitted: HashMap<u32, u32>,
    admitted_total: u64,
    denied_by_caller: u64,
    denied_by_global: u64,
    from_leases: u64,
    from_deny_cache: u64,
    split: u64,
    refunds: u64,
    // The perfect limiter.
    perfect: HashMap<u32, (Option<State>, u32)>,
    perfect_global: Option<State>,
    perfect_total: u64,
    perfect_denied_by_caller: u64,
    perfect_denied_by_global: u64,
}

impl Sim<'_> {
    fn now_ms(ns: u64) -> f64 {
        T0_MS + ns as f64 / 1e6
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        let i = match self.free_events.pop() {
            Some(i) => {
                self.events[i] = Some(e);
                i
            }
            None => {
                self.events.push(Some(e));
                self.events.len() - 1
            }
        };
        self.queue.push(Reverse((at, self.seq, i)));
    }

    fn shard(&mut self, k: Key) -> usize {
        match k {
            Key::Global => self.global_shard,
            Key::Caller(c) => {
                let s = self.caller_shard[c as usize];
                if s != u8::MAX {
                    return s as usize;
                }
                let s = shard_of(&format!("c{c}"), &self.names);
                self.caller_shard[c as usize] = s as u8;
                s
            }
        }
    }

    fn one_way(&self, isolate: usize) -> u64 {
        self.one_way_ns[isolate / PER_LOCATION]
    }

    /// Sends `call` now.
    fn send(&mut self, call: Call, now_ns: u64) -> usize {
        let at = now_ns + self.one_way(call.isolate);
        self.rest_calls[match call.purpose {
            Purpose::Decide(_) => DECIDE,
            Purpose::Renew => RENEW,
            Purpose::GiveBack => GIVE_BACK,
            Purpose::Settle => SETTLE,
        }] += 1;
        let id = match self.free_calls.pop() {
            Some(i) => {
                self.calls[i] = Some(call);
                i
            }
            None => {
                self.calls.push(Some(call));
                self.calls.len() - 1
            }
        };
        self.push(at, Event::AtRedis(id));
        id
    }

    /// A call of `op` from `isolate` to `shard` for `keys` with their specs.
    fn call(isolate: usize, shard: usize, op: Op, items: Vec<(Key, Spec, u64)>, purpose: Purpose, ms: f64) -> Call {
        let keys = items.iter().map(|i| i.0).collect();
        let specs = items.iter().map(|i| i.1).collect();
        let wants = items.iter().map(|i| i.2).collect();
        Call { isolate, shard, op, keys, specs, wants, sent_ms: ms, purpose, reply: None }
    }

    /// The simulated Redis runs call `id`: the script's reference on the stored state, at the
    /// isolate's clock when it sent the call (worker clock), counting the commands the script runs.
    fn at_redis(&mut self, id: usize, now_ns: u64) {
        let mut call = self.calls[id].take().expect("a call in flight");
        let now_s = call.sent_ms.floor() / 1000.0;
        let mut stored: Vec<Stored> = call
            .keys
            .iter()
            .map(|k| match k {
                Key::Global => self.global,
                Key::Caller(c) => self.store.get(c).copied().unwrap_or_default(),
            })
            .collect();
        let mut states: Vec<Option<State>> = stored.iter().map(|s| s.state).collect();
        let reply = bucket::call_with(&mut states, &call.specs, now_s, call.op);
        // EVALSHA, an HMGET per key, and the version's MGET on an isolate's first call in CHECK_MS.
        let mut commands = 1 + call.keys.len() as u64;
        let check = &mut self.checked[call.isolate * self.shards + call.shard];
        if call.sent_ms - *check >= CHECK_MS {
            *check = call.sent_ms;
            commands += 1;
        }
        for ((s, after), spec) in stored.iter_mut().zip(&states).zip(&call.specs) {
            if *after == s.state {
                continue;
            }
            commands += 1; // HSET
            if let Some(State::Bucket { tokens, last_refill: t, .. }) = *after {
                // The script's deadline rule: EXPIRE only when `x` is less than a quarter TTL beyond
                // the moment the bucket is full again.
                let ttl = TTL_S.max((spec.capacity / spec.rate).ceil() as u64) as f64;
                let need = t + (spec.capacity - tokens).max(0.0) / spec.rate;
                if s.x.is_none_or(|x| x < need + ttl / 4.0) {
                    s.x = Some(need.max(t + ttl) + ttl / 2.0);
                    commands += 1; // EXPIRE
                }
            }
            s.state = *after;
        }
        for (k, s) in call.keys.iter().zip(stored) {
            match k {
                Key::Global => self.global = s,
                Key::Caller(c) => {
                    self.store.insert(*c, s);
                }
            }
        }
        self.commands[call.shard] += commands;
        if now_ns < self.end_ns {
            self.commands_in_run[call.shard] += commands;
            if call.keys.contains(&Key::Global) {
                self.global_commands += commands;
            }
        }
        let second = (now_ns / 1_000_000_000) as usize;
        let row = &mut self.per_second[call.shard];
        if row.len() <= second {
            row.resize(second + 1, 0);
        }
        row[second] += commands;
        call.reply = Some(reply);
        let back = now_ns + self.one_way(call.isolate);
        self.calls[id] = Some(call);
        self.push(back, Event::Back(id));
    }
}

impl Sim<'_> {
    /// A request of `caller` at `isolate`.
    fn arrive(&mut self, caller: u32, isolate: usize, now_ns: u64) {
        let now_ms = Self::now_ms(now_ns);
        self.requests += 1;
        self.perfect_decide(caller, now_ms);
        let ck = Key::Caller(caller);
        let cname = ck.name();
        let gname = self.global_name.clone();
        let keys = [ck, Key::Global];
        let wants_all = [
            Want { key: &cname, limit: &self.limits.caller, cost: 1, mode: Mode::Enforce },
            Want { key: &gname, limit: &self.limits.global, cost: 1, mode: Mode::Enforce },
        ];
        let iso = &mut self.isolates[isolate];
        // 1. Every limit covered by a lease: no call.
        if iso.book.spend(&wants_all, now_ms).is_some() {
            self.from_leases += 1;
            self.admit(caller);
            self.after_decision(isolate, now_ns);
            return;
        }
        // 2. The deny cache (the limiter's rule).
        if let Some(by) = deny_cache(&mut iso.denials, &keys, now_ms) {
            self.from_deny_cache += 1;
            self.count_denial(by);
            self.after_decision(isolate, now_ns);
            return;
        }
        // 3. Leases covering some limits pay them; a call decides the rest. 4. Else one call for all.
        let (rest, undo): (Vec<usize>, Option<Undo>) = match iso.book.spend_part(&wants_all, now_ms) {
            Some(spent) => {
                let rest = (0..2).filter(|i| !spent.iter().any(|s| s.index == *i)).collect();
                (rest, Some(Box::new(move |book: &mut LeaseBook| book.unspend(&spent))))
            }
            None => ((0..2).collect(), None),
        };
        let asking: Vec<Want<'_>> = rest
            .iter()
            .map(|&i| &wants_all[i])
            .filter(|w| iso.book.can_lease(w.limit, w.cost, w.mode))
            .map(|w| Want { key: w.key, limit: w.limit, cost: w.cost, mode: w.mode })
            .collect();
        let asked = iso.book.wants(&asking, now_ms);
        let mut items: Vec<(Key, Spec, u64)> = Vec::with_capacity(2);
        for &i in &rest {
            let w = &wants_all[i];
            let want = asking.iter().position(|a| a.key == w.key).map_or(0, |j| asked[j]);
            let arg = iso.book.lease_arg(w.key, want);
            let (_, base) = self.limits.of(keys[i]);
            items.push((keys[i], take_spec(base, 1.0, &arg), want));
        }
        // One call per database the rest lives on, sent together.
        let mut by_shard: ByShard = Vec::new();
        for it in items {
            let s = self.shard(it.0);
            match by_shard.iter_mut().find(|b| b.0 == s) {
                Some(b) => b.1.push(it),
                None => by_shard.push((s, vec![it])),
            }
        }
        if by_shard.len() > 1 {
            self.split += 1;
        }
        let pid = match self.free_pending.pop() {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        let mut calls = Vec::with_capacity(by_shard.len());
        let left = by_shard.len();
        for (shard, items) in by_shard {
            let call = Self::call(isolate, shard, Op::Take, items, Purpose::Decide(pid), now_ms);
            calls.push(self.send(call, now_ns));
        }
        self.pending[pid] = Some(Pending { isolate, caller, calls, left, undo });
    }

    fn admit(&mut self, caller: u32) {
        self.admitted_total += 1;
        *self.admitted.entry(caller).or_insert(0) += 1;
    }

    fn count_denial(&mut self, by: Key) {
        match by {
            Key::Global => self.denied_by_global += 1,
            Key::Caller(_) => self.denied_by_caller += 1,
        }
    }

    /// The perfect limiter: both buckets decided together at the arrival, no latency, no leases.
    fn perfect_decide(&mut self, caller: u32, now_ms: f64) {
        let entry = self.perfect.entry(caller).or_insert((None, 0));
        let mut states = [entry.0, self.perfect_global];
        let specs = [self.limits.caller_spec, self.limits.global_spec];
        let r = bucket::call(&mut states, &specs, now_ms.floor() / 1000.0);
        entry.0 = states[0];
        self.perfect_global = states[1];
        match r.denied_by {
            0 => {
                entry.1 += 1;
                self.perfect_total += 1;
            }
            1 => self.perfect_denied_by_caller += 1,
            _ => self.perfect_denied_by_global += 1,
        }
    }

    /// A reply reaches its isolate.
    fn back(&mut self, id: usize, now_ns: u64) {
        let now_ms = Self::now_ms(now_ns);
        let purpose = match &self.calls[id].as_ref().expect("a call").purpose {
            Purpose::Decide(p) => Some(*p),
            Purpose::Renew => None,
            Purpose::GiveBack | Purpose::Settle => {
                self.free(id);
                return;
            }
        };
        match purpose {
            Some(pid) => {
                let p = self.pending[pid].as_mut().expect("a pending request");
                p.left -= 1;
                if p.left == 0 {
                    self.finish(pid, now_ns);
                }
            }
            None => {
                let call = self.calls[id].take().expect("a call");
                self.free_calls.push(id);
                let isolate = call.isolate;
                self.granted(&call, now_ms);
                self.after_decision(isolate, now_ns);
            }
        }
    }

    fn free(&mut self, id: usize) {
        self.calls[id] = None;
        self.free_calls.push(id);
    }

    /// What an answered Take call means for its isolate's leases and deny cache (as `Limiter::decided`
    /// and `Limiter::renewed` do): the asks answered, leases granted, a denial remembered.
    fn granted(&mut self, call: &Call, now_ms: f64) -> bool {
        let reply = call.reply.as_ref().expect("answered");
        let iso = &mut self.isolates[call.isolate];
        let asked: Vec<String> =
            call.keys.iter().zip(&call.wants).filter(|(_, w)| **w > 0).map(|(k, _)| k.name()).collect();
        iso.book.answered(asked.iter());
        if reply.allowed {
            for (j, k) in call.keys.iter().enumerate() {
                let b = &reply.buckets[j];
                if b.leased > 0 {
                    let limit = match k {
                        Key::Global => &self.limits.global,
                        Key::Caller(_) => &self.limits.caller,
                    };
                    iso.book.grant(&k.name(), b.leased as u64, reply.now_ms, &status(b), limit, &[], now_ms);
                }
                iso.denials.remove(k);
            }
        } else {
            let i = reply.denied_by - 1;
            remember(&mut iso.denials, call.keys[i], reply.buckets[i].retry_ms as f64, now_ms);
        }
        reply.allowed
    }

    /// Every call of request `pid` is back: admitted only if every one admitted; an admitting call
    /// whose partner denied is refunded (batched), and what leases paid is put back.
    fn finish(&mut self, pid: usize, now_ns: u64) {
        let now_ms = Self::now_ms(now_ns);
        let p = self.pending[pid].take().expect("a pending request");
        self.free_pending.push(pid);
        let calls: Vec<Call> = p
            .calls
            .iter()
            .map(|&id| {
                let c = self.calls[id].take().expect("a call");
                self.free_calls.push(id);
                c
            })
            .collect();
        let all = calls.iter().all(|c| c.reply.as_ref().is_some_and(|r| r.allowed));
        let mut denied_by = None;
        for c in &calls {
            if !self.granted(c, now_ms) {
                let r = c.reply.as_ref().expect("answered");
                let k = c.keys[r.denied_by - 1];
                if denied_by.is_none() || matches!(k, Key::Caller(_)) {
                    denied_by = Some(k);
                }
            } else if !all {
                for &k in &c.keys {
                    self.refund(p.isolate, c.shard, k, now_ns);
                }
            }
        }
        if all {
            self.admit(p.caller);
        } else {
            if let Some(undo) = p.undo {
                undo(&mut self.isolates[p.isolate].book);
            }
            self.count_denial(denied_by.expect("a denial"));
        }
        self.after_decision(p.isolate, now_ns);
    }

    /// Queues a refund of one token to `key` in the isolate's batched settle call to `shard`.
    fn refund(&mut self, isolate: usize, shard: usize, key: Key, now_ns: u64) {
        self.refunds += 1;
        let queue = self.isolates[isolate].settles.entry(shard).or_default();
        queue.push((key, 1));
        let n = queue.len();
        if n == 1 {
            self.push(now_ns + (BATCH_MS * 1e6) as u64, Event::Flush(isolate, shard));
        } else if n >= BATCH_MAX {
            self.flush(isolate, shard, now_ns);
        }
    }

    fn flush(&mut self, isolate: usize, shard: usize, now_ns: u64) {
        let Some(queue) = self.isolates[isolate].settles.remove(&shard) else { return };
        let mut merged: Vec<(Key, u64)> = Vec::new();
        for (k, t) in queue {
            match merged.iter_mut().find(|m| m.0 == k) {
                Some(m) => m.1 += t,
                None => merged.push((k, t)),
            }
        }
        let items = merged
            .into_iter()
            .map(|(k, t)| {
                let (_, base) = self.limits.of(k);
                (k, Spec { cost: -(t as f64), ..base }, 0)
            })
            .collect();
        let call = Self::call(isolate, shard, Op::Settle, items, Purpose::Settle, Self::now_ms(now_ns));
        self.send(call, now_ns);
    }

    /// After a decision (as the gateway's after-the-response work): leases running low topped up at
    /// once, else the give-back chain's wake if none is scheduled.
    fn after_decision(&mut self, isolate: usize, now_ns: u64) {
        let now_ms = Self::now_ms(now_ns);
        let renewals = self.isolates[isolate].book.take_renewals();
        if !renewals.is_empty() {
            let mut by_shard: ByShard = Vec::new();
            for r in renewals {
                let k = key_of(&r.key);
                let arg = self.isolates[isolate].book.lease_arg(&r.key, r.want);
                let (_, base) = self.limits.of(k);
                let it = (k, take_spec(base, 0.0, &arg), r.want);
                let s = self.shard(k);
                match by_shard.iter_mut().find(|b| b.0 == s) {
                    Some(b) => b.1.push(it),
                    None => by_shard.push((s, vec![it])),
                }
            }
            for (shard, items) in by_shard {
                let call = Self::call(isolate, shard, Op::Take, items, Purpose::Renew, now_ms);
                self.send(call, now_ns);
            }
            return;
        }
        let iso = &mut self.isolates[isolate];
        if let Some(ms) = iso.book.schedule_wake(now_ms) {
            self.push(now_ns + u64::from(ms) * 1_000_000, Event::Wake(isolate));
        }
    }

    /// The give-back chain: the unused tokens of ended leases back to their buckets, one call per
    /// database, then the next wake while leases remain.
    fn wake(&mut self, isolate: usize, now_ns: u64) {
        let now_ms = Self::now_ms(now_ns);
        let due = self.isolates[isolate].book.due(now_ms);
        self.give_back(isolate, due, now_ns);
        let iso = &mut self.isolates[isolate];
        if let Some(ms) = iso.book.woke(now_ms) {
            self.push(now_ns + u64::from(ms) * 1_000_000, Event::Wake(isolate));
        }
    }

    fn give_back(&mut self, isolate: usize, due: Vec<GiveBack>, now_ns: u64) {
        let mut by_shard: ByShard = Vec::new();
        for g in due {
            let k = key_of(&g.key);
            let (_, base) = self.limits.of(k);
            self.isolates[isolate].book.gave_back(g.tokens, true);
            let spec = Spec {
                cost: g.tokens.min(u64::from(u32::MAX)) as f64,
                lease: g.taken_ms as f64,
                settle: g.settle as f64,
                since: g.since as f64,
                ..base
            };
            let s = self.shard(k);
            match by_shard.iter_mut().find(|b| b.0 == s) {
                Some(b) => b.1.push((k, spec, 0)),
                None => by_shard.push((s, vec![(k, spec, 0)])),
            }
        }
        for (shard, items) in by_shard {
            let call = Self::call(isolate, shard, Op::GiveBack, items, Purpose::GiveBack, Self::now_ms(now_ns));
            self.send(call, now_ns);
        }
    }
}

/// The deny cache's answer for `keys` now (`Limiter::cached_denial`): the first key whose denial
/// stands; a denial past its maximum age lets this request ask Redis and stands for the others.
fn deny_cache(denials: &mut HashMap<Key, Denial>, keys: &[Key], now_ms: f64) -> Option<Key> {
    if denials.is_empty() {
        return None;
    }
    keys.iter().copied().find(|k| {
        let Some(d) = denials.get_mut(k) else { return false };
        if now_ms >= d.retry_at_ms {
            return false;
        }
        if now_ms >= d.until_ms {
            d.until_ms = now_ms + DENY_MAX_MS;
            return false;
        }
        true
    })
}

/// Remembers a denial by Redis (`Limiter::remember_denial`).
fn remember(denials: &mut HashMap<Key, Denial>, key: Key, retry_ms: f64, now_ms: f64) {
    if denials.len() >= DENY_ENTRIES {
        denials.retain(|_, d| d.until_ms > now_ms);
        if denials.len() >= DENY_ENTRIES {
            denials.clear();
        }
    }
    denials.insert(key, Denial { until_ms: now_ms + retry_ms.min(DENY_MAX_MS), retry_at_ms: now_ms + retry_ms });
}

/// What one run with `shards` databases measured.
struct Outcome {
    shards: usize,
    seconds: f64,
    requests: u64,
    commands: Vec<u64>,
    commands_in_run: Vec<u64>,
    busiest_second: u64,
    rest_calls: [u64; 4],
    admitted_total: u64,
    perfect_total: u64,
    denied: (u64, u64),
    perfect_denied: (u64, u64),
    from_leases: u64,
    from_deny_cache: u64,
    split: u64,
    refunds: u64,
    global_shard_share: f64,
    global_commands: u64,
    /// Per caller: Σ max(0, perfect − ours), Σ max(0, ours − perfect), the worst under-admission, and
    /// the callers whose own limit bound in the perfect limiter: (ours, perfect).
    caller_under: u64,
    caller_above: u64,
    worst_under: i64,
    limited: (u64, u64),
    /// Keys admitted beyond their allowance (by the count of admissions, or by admissions plus what
    /// the simulated Redis holds at the end, which bounds what was ever taken from the bucket).
    over: Vec<String>,
    global_allowance: f64,
}

/// The global limit: `SIM_GLOBAL` ("<capacity>,<refill>", e.g. "900000,900000/s") or the default.
fn global_limit() -> (u32, String) {
    std::env::var("SIM_GLOBAL")
        .ok()
        .and_then(|v| {
            let (c, r) = v.split_once(',')?;
            Some((c.trim().parse().ok()?, r.trim().to_string()))
        })
        .unwrap_or((GLOBAL_CAPACITY, GLOBAL_REFILL.to_string()))
}

fn limits() -> &'static Limits {
    let caller = Limit::new(CALLER_CAPACITY, Refill::parse(CALLER_REFILL).expect("refill"), TTL_S).expect("limit");
    let (capacity, refill) = global_limit();
    let global = Limit::new(capacity, Refill::parse(&refill).expect("refill"), TTL_S).expect("limit");
    let spec = |l: &Limit| {
        Spec::new(Algorithm::TokenBucket, f64::from(l.capacity()), l.refill().tokens_per_second(), 1.0, Mode::Enforce)
    };
    let (caller_spec, global_spec) = (spec(&caller), spec(&global));
    Box::leak(Box::new(Limits { caller, global, caller_spec, global_spec }))
}

fn run(shards: usize, seconds: f64, zipf: &Zipf, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..shards).map(|i| format!("https://db{i}.example.upstash.io")).collect();
    let global_shard = shard_of(GLOBAL_SUBJECT, &names);
    let one_way_ns =
        (0..LOCATIONS).map(|_| ((RTT_MS.0 + rng.next() * (RTT_MS.1 - RTT_MS.0)) * 1e6 / 2.0) as u64).collect();
    let isolates = LOCATIONS * PER_LOCATION;
    let end_ns = (seconds * 1e9) as u64;
    let mut sim = Sim {
        shards,
        names,
        limits: limits(),
        global_name: Key::Global.name(),
        global_shard,
        caller_shard: vec![u8::MAX; CALLERS],
        zipf,
        one_way_ns,
        isolates: (0..isolates)
            .map(|_| Isolate {
                book: LeaseBook::new(LeaseConfig::default()),
                denials: HashMap::default(),
                settles: HashMap::default(),
            })
            .collect(),
        queue: BinaryHeap::new(),
        events: Vec::new(),
        free_events: Vec::new(),
        seq: 0,
        calls: Vec::new(),
        free_calls: Vec::new(),
        pending: Vec::new(),
        free_pending: Vec::new(),
        store: HashMap::default(),
        global: Stored::default(),
        checked: vec![f64::NEG_INFINITY; isolates * shards],
        end_ns,
        commands: vec![0; shards],
        commands_in_run: vec![0; shards],
        global_commands: 0,
        per_second: vec![Vec::new(); shards],
        rest_calls: [0; 4],
        requests: 0,
        admitted: HashMap::default(),
        admitted_total: 0,
        denied_by_caller: 0,
        denied_by_global: 0,
        from_leases: 0,
        from_deny_cache: 0,
        split: 0,
        refunds: 0,
        perfect: HashMap::default(),
        perfect_global: None,
        perfect_total: 0,
        perfect_denied_by_caller: 0,
        perfect_denied_by_global: 0,
    };
    // Poisson arrivals at RATE, merged with the events in time order (an arrival after an event at
    // the same nanosecond).
    let mut next_arrival = 0u64;
    loop {
        let event_at = sim.queue.peek().map(|Reverse((at, _, _))| *at);
        if next_arrival < end_ns && event_at.is_none_or(|e| next_arrival < e) {
            let at = next_arrival;
            next_arrival += ((-(1.0 - rng.next()).ln() / RATE) * 1e9) as u64 + 1;
            let u = rng.next();
            let caller = sim.zipf.sample(u);
            let location = if rng.next() < HOME { home_of(caller) } else { rng.below(LOCATIONS) };
            let isolate = location * PER_LOCATION + rng.below(PER_LOCATION);
            sim.arrive(caller, isolate, at);
            continue;
        }
        let Some(Reverse((at, _, i))) = sim.queue.pop() else { break };
        let event = sim.events[i].take().expect("an event");
        sim.free_events.push(i);
        match event {
            Event::AtRedis(id) => sim.at_redis(id, at),
            Event::Back(id) => sim.back(id, at),
            Event::Wake(isolate) => sim.wake(isolate, at),
            Event::Flush(isolate, shard) => sim.flush(isolate, shard, at),
        }
    }
    // Every event has run: every lease ended and given back, every refund settled.
    let stranded: u64 = sim.isolates.iter().map(|i| i.book.outstanding()).sum();
    assert_eq!(stranded, 0, "lease tokens still out after the run");
    let limits = sim.limits;
    let later_s = (T0_MS / 1000.0) + seconds + 60.0;
    let elapsed = seconds + 60.0;
    let level = |state: Option<State>, spec: Spec| {
        let r = bucket::call_with(&mut [state], &[spec], later_s, Op::Peek);
        r.buckets[0].remaining as f64
    };
    let allowance = |spec: &Spec, t: f64| spec.capacity + spec.rate * t;
    let mut over = Vec::new();
    // The global key: admissions within C + R·T, and admissions plus what its bucket holds a minute
    // later within C + R·(T + 60 s) (never more taken out of the bucket than went in).
    let g = limits.global_spec;
    let global_allowance = allowance(&g, seconds);
    if sim.admitted_total as f64 > global_allowance
        || sim.admitted_total as f64 + level(sim.global.state, g) > allowance(&g, elapsed) + 1.0
    {
        over.push(GLOBAL_SUBJECT.to_string());
    }
    let c = limits.caller_spec;
    let (mut caller_under, mut caller_above, mut worst_under, mut limited) = (0u64, 0u64, 0i64, (0u64, 0u64));
    for (caller, (pstate, perfect)) in &sim.perfect {
        let ours = u64::from(sim.admitted.get(caller).copied().unwrap_or(0));
        let perfect = u64::from(*perfect);
        let held = level(sim.store.get(caller).and_then(|s| s.state), c);
        if ours as f64 > allowance(&c, seconds) || ours as f64 + held > allowance(&c, elapsed) + 1.0 {
            over.push(format!("c{caller}"));
        }
        caller_under += perfect.saturating_sub(ours);
        caller_above += ours.saturating_sub(perfect);
        worst_under = worst_under.max(perfect as i64 - ours as i64);
        // Bound by its own limit in the perfect limiter: its bucket ended below capacity.
        if let Some(State::Bucket { tokens, .. }) = pstate {
            if *tokens < 1.0 {
                limited.0 += ours;
                limited.1 += perfect;
            }
        }
    }
    let busiest_second = sim.per_second.iter().map(|r| r.iter().copied().max().unwrap_or(0)).max().unwrap_or(0);
    let global_shard_share = sim.commands_in_run[global_shard] as f64 / sim.commands_in_run.iter().sum::<u64>() as f64;
    Outcome {
        shards,
        seconds,
        requests: sim.requests,
        commands: sim.commands,
        commands_in_run: sim.commands_in_run,
        busiest_second,
        rest_calls: sim.rest_calls,
        admitted_total: sim.admitted_total,
        perfect_total: sim.perfect_total,
        denied: (sim.denied_by_caller, sim.denied_by_global),
        perfect_denied: (sim.perfect_denied_by_caller, sim.perfect_denied_by_global),
        from_leases: sim.from_leases,
        from_deny_cache: sim.from_deny_cache,
        split: sim.split,
        refunds: sim.refunds,
        global_shard_share,
        global_commands: sim.global_commands,
        caller_under,
        caller_above,
        worst_under,
        limited,
        over,
        global_allowance,
    }
}

/// The Zipf distribution over the callers (caller 0 the busiest): its cumulative weights, and a
/// guide table (the first caller at or above each 2^-20 step) so a draw searches only a few of them.
struct Zipf {
    cdf: Vec<f64>,
    guide: Vec<u32>,
}

const GUIDE: usize = 1 << 20;

impl Zipf {
    fn new() -> Zipf {
        let mut cdf = Vec::with_capacity(CALLERS);
        let mut sum = 0.0;
        for i in 1..=CALLERS {
            sum += (i as f64).powf(-ZIPF_S);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        let guide = (0..=GUIDE).map(|j| cdf.partition_point(|&c| c < j as f64 / GUIDE as f64) as u32).collect();
        Zipf { cdf, guide }
    }

    /// The caller whose cumulative weight is the first at or above `u` (in [0, 1)).
    fn sample(&self, u: f64) -> u32 {
        let j = ((u * GUIDE as f64) as usize).min(GUIDE - 1);
        let (lo, hi) = (self.guide[j] as usize, (self.guide[j + 1] as usize + 1).min(CALLERS));
        (lo + self.cdf[lo..hi].partition_point(|&c| c < u)).min(CALLERS - 1) as u32
    }
}

fn main() {
    let seconds: f64 = std::env::var("SIM_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let shard_counts: Vec<usize> = std::env::var("SIM_SHARDS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).filter(|n| (1..=255).contains(n)).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64]);
    let zipf = Zipf::new();
    println!(
        "Past one database, in simulation ({seconds} simulated s per row, {} requests/s): {} isolates in {LOCATIONS} \
         locations ({PER_LOCATION} each, round trips {}-{} ms to every database); callers Zipf s = {ZIPF_S} over {} \
         (the busiest {:.1} % of requests, the first 1,000 {:.1} %), {:.0} % of a caller's requests from its home location; \
         every request under a per-caller limit ({CALLER_CAPACITY} tokens, {CALLER_REFILL}) and a global limit \
         ({} tokens, {}); leases on (share {}, {} ms), deny cache {DENY_MAX_MS} ms.\n",
        RATE,
        LOCATIONS * PER_LOCATION,
        RTT_MS.0,
        RTT_MS.1,
        CALLERS,
        100.0 * zipf.cdf[0],
        100.0 * zipf.cdf[999],
        100.0 * HOME,
        global_limit().0,
        global_limit().1,
        LeaseConfig::default().share,
        LeaseConfig::default().horizon_ms,
    );
    println!(
        "Model: the caller's key on shard_of(caller), the global key on shard_of(\"@global\") (rendezvous hashing, \
         the real code); leases (the real LeaseBook) and the Redis state (the real script reference); the gateway's \
         order, the deny cache, the split into one call per database and the batched refunds modelled; commands per \
         call as tests/commands.rs counts them.\n"
    );
    // The runs are independent (each its own seed): two at a time, on two threads.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&n) = shard_counts.get(i) else { break };
                let started = std::time::Instant::now();
                let o = run(n, seconds, &zipf, 0x9E37_79B9_7F4A_7C15 ^ n as u64);
                eprintln!("{n} databases: {:.1} s", started.elapsed().as_secs_f64());
                results.lock().expect("results").push((i, o));
            });
        }
    });
    let mut rows = results.into_inner().expect("results");
    rows.sort_by_key(|r| r.0);
    let rows: Vec<Outcome> = rows.into_iter().map(|r| r.1).collect();
    println!(
        "| databases | requests | REST calls/req (decide, renew, give back, settle) | commands/req | busiest database, commands/s (its busiest second) | average database, commands/s | busiest ≤ 10,000 commands/s | global key's database: its share of commands; calls with the global key, commands/s | answered from leases | from the deny cache | split over two databases | refunds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in &rows {
        let req = o.requests as f64;
        let calls: u64 = o.rest_calls.iter().sum();
        let commands: u64 = o.commands.iter().sum();
        let busiest = o.commands_in_run.iter().copied().max().unwrap_or(0) as f64 / o.seconds;
        let average = o.commands_in_run.iter().sum::<u64>() as f64 / o.seconds / o.shards as f64;
        println!(
            "| {} | {} | {:.3} ({:.3}, {:.3}, {:.3}, {:.3}) | {:.3} | {:.0} ({}) | {:.0} | {} | {:.1} %; {:.0} | {:.1} % | {:.1} % | {:.1} % | {:.2} % |",
            o.shards,
            o.requests,
            calls as f64 / req,
            o.rest_calls[DECIDE] as f64 / req,
            o.rest_calls[RENEW] as f64 / req,
            o.rest_calls[GIVE_BACK] as f64 / req,
            o.rest_calls[SETTLE] as f64 / req,
            commands as f64 / req,
            busiest,
            o.busiest_second,
            average,
            if busiest <= DB_LIMIT { "yes" } else { "no" },
            100.0 * o.global_shard_share,
            o.global_commands as f64 / o.seconds,
            100.0 * o.from_leases as f64 / req,
            100.0 * o.from_deny_cache as f64 / req,
            100.0 * o.split as f64 / req,
            100.0 * o.refunds as f64 / req,
        );
    }
    println!();
    println!(
        "| databases | admitted / perfect | global limit: denied by it (perfect) | global: admitted vs its allowance C + R·T | per-caller limits: denied by them (perfect) | callers bound by their own limit: admitted / perfect | per caller: Σ under perfect, Σ above (tokens) | worst caller under perfect | keys over their allowance (CHECK) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut over_any = false;
    for o in &rows {
        over_any |= !o.over.is_empty();
        println!(
            "| {} | {} / {} = {:.4} | {} ({}) | {} of {:.0} | {} ({}) | {} / {} = {:.4} | {}, {} | {} tokens | {} |",
            o.shards,
            o.admitted_total,
            o.perfect_total,
            o.admitted_total as f64 / o.perfect_total.max(1) as f64,
            o.denied.1,
            o.perfect_denied.1,
            o.admitted_total,
            o.global_allowance,
            o.denied.0,
            o.perfect_denied.0,
            o.limited.0,
            o.limited.1,
            o.limited.0 as f64 / o.limited.1.max(1) as f64,
            o.caller_under,
            o.caller_above,
            o.worst_under,
            if o.over.is_empty() {
                "0 (checked: every key)".to_string()
            } else {
                format!("{}: {:?}", o.over.len(), &o.over[..o.over.len().min(5)])
            },
        );
    }
    println!();
    let total = |o: &Outcome| o.commands_in_run.iter().sum::<u64>() as f64 / o.seconds;
    let fits =
        rows.iter().find(|o| o.commands_in_run.iter().copied().max().unwrap_or(0) as f64 / o.seconds <= DB_LIMIT);
    match fits {
        Some(o) => println!(
            "Databases needed: {} — the fewest simulated whose busiest database stays within {DB_LIMIT} commands/s \
             (the load's total, {:.0} commands/s, needs at least {:.0} even if spread perfectly).",
            o.shards,
            total(o),
            (total(o) / DB_LIMIT).ceil()
        ),
        None => {
            let last = rows.last().expect("a row");
            println!(
                "Databases needed: more than {} — no simulated count keeps the busiest database within {DB_LIMIT} \
                 commands/s. At {} databases the total is {:.0} commands/s (at least {:.0} databases even if spread \
                 perfectly) and the busiest carries {:.0}; the calls that touch the global key alone put {:.0} \
                 commands/s on its database, whatever the number of databases.",
                last.shards,
                last.shards,
                total(last),
                (total(last) / DB_LIMIT).ceil(),
                last.commands_in_run.iter().copied().max().unwrap_or(0) as f64 / last.seconds,
                last.global_commands as f64 / last.seconds,
            )
        }
    }
    if over_any {
        eprintln!("a key was admitted beyond its allowance");
        std::process::exit(1);
    }
}
