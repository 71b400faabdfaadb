//! Leases: tokens of a busy key that Redis already debited for this isolate, spent here without a
//! round trip. Over-admission stays impossible — a lease's tokens were debited in the same atomic
//! script call that decided a request — and the price is a bounded under-admission: tokens held by an
//! isolate cannot be spent by another until they are given back.
//!
//! - **When.** Only for a limit that allows it (`"lease"` not `false`, `RATE_LIMIT_LEASES` not `off`),
//!   enforcing or shadow, whose capacity times [`LeaseConfig::share`] is at least [`MIN_LEASE`]
//!   tokens and at least two requests' cost: the zero-config 5-per-minute bucket never leases.
//! - **How much.** What this isolate's rate for the key needs over one horizon (the cost of its
//!   requests in the last horizon, or in the current one so far, projected), at most
//!   `share × capacity` in total; the script grants at most half of what is left after the
//!   request's cost (and the share of the capacity in effect), so a draining bucket hands out ever
//!   smaller leases. One ask per key at a time. A request asks only when every limit it could spend
//!   from can lease (it is answered from leases only when all of them are covered).
//! - **Reports.** What the isolate spent from a lease (and what it gives back) goes with its next call
//!   for the key, so the script stops counting it among the tokens leases may still spend (which cap
//!   the bucket's refill: bucket plus leases never exceed the capacity).
//! - **How long.** Each grant lasts [`LeaseConfig::horizon_ms`] from its reply (so at most the script's
//!   lease slot, the horizon plus the call's deadline, from its debit: the script's bound of what leases
//!   may still spend holds); a renewal adds a grant, it never extends an older one. Unused tokens of
//!   ended grants are given back to the bucket (never above capacity) by one script call off the
//!   response path, one entry per key.
//!
//! Pure bookkeeping: the limiter asks [`LeaseBook`] what to ask for, what a request may spend, and what
//! to give back; time comes in as an argument.

use std::collections::{HashMap, VecDeque};

use crate::policy::check::Mode;
use crate::policy::config::LeaseConfig;
use crate::policy::limit::Limit;

/// The smallest lease worth taking (tokens): a smaller one may cost a give-back call for each call it saves.
pub const MIN_LEASE: u64 = 4;
/// Keys an isolate tracks (rates seen, leases held); beyond it, what it saw is forgotten (leases are
/// kept: they are given back).
pub(crate) const TRACKED_KEYS: usize = 10_000;
/// Tokens within part of a horizon that count as a burst to project from.
const BURST: u64 = 8;
/// How long an ask may stay unanswered before another request of the key may ask again.
const ASK_STALE_MS: f64 = 30_000.0;

/// One key's lease: its grants, each spendable until its own end.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// Grants not yet ended, oldest first: (whole tokens left, until when (Worker ms) they may be spent,
    /// the script's time (epoch ms) of the grant).
    grants: VecDeque<(u64, f64, i64)>,
    /// When the script debited the oldest tokens still held (its clock, epoch ms): a window takes
    /// them off the window they were counted in.
    pub taken_ms: i64,
    /// What Redis said after the last grant (for the `RateLimit` fields of requests spent here).
    pub remaining: u64,
    pub reset_at_ms: f64,
    pub capacity: u32,
    pub window_s: u64,
    /// The limit's numbers and override keys, to give the tokens back.
    pub limit: Limit,
    pub overrides: Vec<String>,
    /// Tokens spent since the script was last told (it then stops counting them as outstanding), all
    /// from grants made at or after `unreported_since` (the script's ms).
    unreported: u64,
    unreported_since: i64,
    /// How many times spent tokens were reported (a payment reported since cannot be put back).
    reports: u64,
}

impl Lease {
    /// Tokens of grants not yet ended.
    pub fn tokens(&self) -> u64 {
        self.grants.iter().map(|g| g.0).sum()
    }

    /// Ends the grants whose time is up by `now_ms`: their unspent tokens, and the script's time of the
    /// oldest of them.
    fn expire(&mut self, now_ms: f64) -> (u64, i64) {
        let (mut ended, mut since) = (0, i64::MAX);
        while self.grants.front().is_some_and(|g| now_ms >= g.1) {
            if let Some(g) = self.grants.pop_front() {
                ended += g.0;
                since = since.min(g.2);
            }
        }
        (ended, since)
    }

    /// Pays `cost` from the oldest grants (the caller checked there is enough): what it took of each
    /// (tokens, its end, its script time), to put back if the request is not admitted after all.
    fn pay(&mut self, mut cost: u64) -> Vec<(u64, f64, i64)> {
        let mut taken = Vec::new();
        while cost > 0 {
            let Some(front) = self.grants.front_mut() else { break };
            let paid = front.0.min(cost);
            front.0 -= paid;
            cost -= paid;
            if self.unreported == 0 || front.2 < self.unreported_since {
                self.unreported_since = front.2;
            }
            self.unreported += paid;
            taken.push((paid, front.1, front.2));
            if front.0 == 0 {
                self.grants.pop_front();
            }
        }
        taken
    }

    /// Puts back what [`Lease::pay`] took: into its grant, or the grant again where it was (a grant
    /// that has ended since is ended and given back by the next look at this lease). Only while the
    /// payment is unreported ([`LeaseBook::unspend`]).
    fn unpay(&mut self, taken: &[(u64, f64, i64)]) {
        for &(tokens, until, at) in taken.iter().rev() {
            self.unreported -= tokens.min(self.unreported);
            self.taken_ms = self.taken_ms.min(at);
            match self.grants.iter_mut().find(|g| g.1 == until && g.2 == at) {
                Some(g) => g.0 += tokens,
                None => {
                    let i = self.grants.iter().position(|g| (g.1, g.2) > (until, at)).unwrap_or(self.grants.len());
                    self.grants.insert(i, (tokens, until, at));
                }
            }
        }
    }

    /// What the script may stop counting as outstanding: the spent tokens not yet reported and `also`
    /// (given back, from grants made at or after `also_since`), with the oldest grant time among them.
    fn settlement(&mut self, also: u64, also_since: i64) -> (u64, i64) {
        let spent = std::mem::take(&mut self.unreported);
        self.reports += u64::from(spent > 0);
        let since = if spent > 0 { self.unreported_since.min(also_since) } else { also_since };
        (spent + also, since)
    }
}

/// What a request paid from one key's lease while Redis decides its other limits.
#[derive(Clone, Debug, PartialEq)]
pub struct Spent {
    /// The limit's index among the request's.
    pub index: usize,
    pub key: String,
    taken: Vec<(u64, f64, i64)>,
    /// The lease's reports when it paid.
    reports: u64,
}

/// Unused tokens of an ended lease, to give back.
#[derive(Clone, Debug, PartialEq)]
pub struct GiveBack {
    pub key: String,
    pub tokens: u64,
    /// Tokens the script may stop counting as outstanding: these, and the ones spent since it was told,
    /// all from grants made at or after `since` (the script's ms).
    pub settle: u64,
    pub since: i64,
    pub taken_ms: i64,
    pub limit: Limit,
    pub overrides: Vec<String>,
}

/// A lease running low, to top up off the response path (a call of cost 0 that only takes a lease).
#[derive(Clone, Debug, PartialEq)]
pub struct Renewal {
    pub key: String,
    pub want: u64,
    pub limit: Limit,
    pub overrides: Vec<String>,
}

/// What this isolate saw of a key lately: the cost of its requests in the current and the previous
/// horizon, and whether a call asking for a lease is in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    since_ms: f64,
    current: u64,
    previous: u64,
    asking_until_ms: f64,
}

impl Seen {
    /// The tokens one horizon needs at the rate seen: the previous horizon's, or the current one's so
    /// far — scaled to a whole horizon once it is a burst (at least [`BURST`] tokens; at least a tenth
    /// of the horizon counted as elapsed), so a key that turns busy leases at once and a quiet one never.
    fn need(&self, now_ms: f64, horizon_ms: f64) -> u64 {
        let projected = if self.current >= BURST {
            let elapsed = (now_ms - self.since_ms).max(horizon_ms / 10.0);
            (self.current as f64 * horizon_ms / elapsed).ceil() as u64
        } else {
            self.current
        };
        self.previous.max(projected)
    }
}

/// Counts since the last [`LeaseBook::take_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    /// Tokens granted to this isolate's leases.
    pub granted: u64,
    /// Tokens spent from leases, and the requests that spent them (answered without Redis).
    pub spent: u64,
    pub requests: u64,
    /// Tokens given back to their buckets, and tokens whose giving back failed (lost until they refill).
    pub returned: u64,
    pub lost: u64,
}

/// One isolate's leases.
#[derive(Debug, Default)]
pub struct LeaseBook {
    config: LeaseConfig,
    leases: HashMap<String, Lease>,
    seen: HashMap<String, Seen>,
    /// Ended leases' unused tokens, given back at the next wake.
    ended: Vec<GiveBack>,
    /// Leases running low, to top up after the response.
    renewals: Vec<Renewal>,
    /// When the one scheduled wake fires (Worker ms).
    wake_at_ms: Option<f64>,
    counts: LeaseCounts,
}

/// A limit as a request meets it: its key, numbers, cost, mode and override keys.
pub struct Want<'a> {
    pub key: &'a str,
    pub limit: &'a Limit,
    pub cost: u32,
    pub mode: Mode,
}

impl LeaseBook {
    pub fn new(config: LeaseConfig) -> LeaseBook {
        LeaseBook { config, ..LeaseBook::default() }
    }

    /// The most of the capacity in effect one grant may take (`RATE_LIMIT_LEASE_SHARE`).
    pub fn share(&self) -> f64 {
        self.config.share
    }

    /// The most one isolate may hold of `limit` (0: never leased).
    /// (A lease is taken only when it covers two requests' cost and [`MIN_LEASE`]: see [`LeaseBook::wants`].)
    pub fn cap(&self, limit: &Limit, mode: Mode) -> u64 {
        if !self.config.on || !limit.lease() || !matches!(mode, Mode::Enforce | Mode::Shadow) {
            return 0;
        }
        (f64::from(limit.capacity()) * self.config.share).floor() as u64
    }

    /// Whether `limit` can ever be leased at `cost`: its cap covers two requests and [`MIN_LEASE`].
    pub fn can_lease(&self, limit: &Limit, cost: u32, mode: Mode) -> bool {
        self.cap(limit, mode) >= MIN_LEASE.max(2 * u64::from(cost))
    }

    /// The script's lease argument for `key` asking `want` tokens: `"<want> <slot ms> <share> <settle>
    /// <since>"` (settle: what this isolate spent of its lease since it last told the script, from grants
    /// made at or after `since`), or `"0"`.
    pub fn lease_arg(&mut self, key: &str, want: u64) -> String {
        let (settle, since) = self.leases.get_mut(key).map_or((0, 0), |l| l.settlement(0, i64::MAX));
        if want == 0 && settle == 0 {
            return "0".to_string();
        }
        let slot = u64::from(self.config.horizon_ms) + u64::from(self.config.deadline_ms);
        let since = if settle > 0 { since } else { 0 };
        format!("{want} {slot} {} {settle} {since}", self.config.share)
    }

    /// Counts a request of `cost` on `key` in what this isolate saw.
    fn observe(&mut self, key: &str, cost: u32, now_ms: f64) -> &mut Seen {
        if self.seen.len() >= TRACKED_KEYS && !self.seen.contains_key(key) {
            self.seen.clear();
        }
        let horizon = f64::from(self.config.horizon_ms);
        let seen = self.seen.entry(key.to_string()).or_insert(Seen { since_ms: now_ms, ..Seen::default() });
        let age = now_ms - seen.since_ms;
        if age >= horizon || age < 0.0 {
            seen.previous = if (0.0..2.0 * horizon).contains(&age) { seen.current } else { 0 };
            seen.current = 0;
            seen.since_ms = now_ms;
        }
        seen.current += u64::from(cost);
        seen
    }

    /// The tokens to ask for, per limit, in a call that decides a request now (counting the request
    /// in what this isolate saw). At most one ask per key is in flight.
    pub fn wants(&mut self, limits: &[Want<'_>], now_ms: f64) -> Vec<u64> {
        limits
            .iter()
            .map(|w| {
                let cap = self.cap(w.limit, w.mode);
                if cap == 0 {
                    return 0;
                }
                let held = self.held(w.key, now_ms);
                let horizon = f64::from(self.config.horizon_ms);
                let seen = self.observe(w.key, w.cost, now_ms);
                let target = seen.need(now_ms, horizon).min(cap);
                let want = target.saturating_sub(held);
                if target < 2 * u64::from(w.cost) || want < MIN_LEASE || now_ms < seen.asking_until_ms {
                    return 0;
                }
                seen.asking_until_ms = now_ms + ASK_STALE_MS;
                want
            })
            .collect()
    }

    /// The call that asked is over (answered or not): the keys may ask again.
    pub fn answered(&mut self, keys: impl Iterator<Item = impl AsRef<str>>) {
        for k in keys {
            if let Some(s) = self.seen.get_mut(k.as_ref()) {
                s.asking_until_ms = 0.0;
            }
        }
    }

    /// Tokens the script granted for `key` at its time `script_ms`, with what it said of the bucket.
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        key: &str,
        tokens: u64,
        script_ms: i64,
        status: &crate::store::decision::LimitStatus,
        limit: &Limit,
        overrides: &[String],
        now_ms: f64,
    ) {
        let until = now_ms + f64::from(self.config.horizon_ms);
        let reset_at_ms = now_ms + status.reset_ms as f64;
        self.counts.granted += tokens;
        self.expire(key, now_ms);
        let lease = self.leases.entry(key.to_string()).or_insert_with(|| Lease {
            grants: VecDeque::new(),
            taken_ms: script_ms,
            remaining: 0,
            reset_at_ms,
            capacity: status.capacity,
            window_s: status.window_s,
            limit: limit.clone(),
            overrides: overrides.to_vec(),
            unreported: 0,
            unreported_since: script_ms,
            reports: 0,
        });
        if lease.grants.is_empty() {
            lease.taken_ms = script_ms; // (the oldest tokens held are these)
        }
        lease.grants.push_back((tokens, until, script_ms));
        (lease.remaining, lease.reset_at_ms, lease.capacity, lease.window_s) =
            (status.remaining, reset_at_ms, status.capacity, status.window_s);
    }

    /// Whether every one of `limits` can be paid from a live lease now; if so they are paid, and the
    /// leases are returned (in order) for the request's `RateLimit` fields.
    pub fn spend(&mut self, limits: &[Want<'_>], now_ms: f64) -> Option<Vec<&Lease>> {
        if self.leases.is_empty() || limits.is_empty() {
            return None;
        }
        for w in limits {
            self.expire(w.key, now_ms);
        }
        let covered = limits.iter().all(|w| {
            matches!(w.mode, Mode::Enforce | Mode::Shadow)
                && self.leases.get(w.key).is_some_and(|l| l.tokens() >= u64::from(w.cost))
        });
        // Two limits of one request on the same key would pay twice from one lease: Redis decides those.
        let repeated = limits.iter().enumerate().any(|(i, w)| limits[..i].iter().any(|v| v.key == w.key));
        if !covered || repeated {
            return None;
        }
        for w in limits {
            let cap = self.cap(w.limit, w.mode);
            let seen = *self.observe(w.key, w.cost, now_ms);
            let Some(l) = self.leases.get_mut(w.key) else { continue };
            l.pay(u64::from(w.cost));
            self.counts.spent += u64::from(w.cost);
            self.renew_if_low(w, cap, seen, now_ms);
        }
        self.counts.requests += 1;
        Some(limits.iter().filter_map(|w| self.leases.get(w.key)).collect())
    }

    /// Pays the limits of a request that its leases cover when some, not all, are covered (the
    /// others are for Redis to decide; see [`crate::limiter::Limiter::lease_part`]): their indexes and
    /// what was taken, to keep if Redis admits the request and to put back ([`LeaseBook::unspend`])
    /// if it does not. `None` when none or all are covered.
    pub fn spend_part(&mut self, limits: &[Want<'_>], now_ms: f64) -> Option<Vec<Spent>> {
        if self.leases.is_empty() || limits.len() < 2 {
            return None;
        }
        for w in limits {
            self.expire(w.key, now_ms);
        }
        let repeated = limits.iter().enumerate().any(|(i, w)| limits[..i].iter().any(|v| v.key == w.key));
        let covered: Vec<usize> = (0..limits.len())
            .filter(|&i| {
                let w = &limits[i];
                matches!(w.mode, Mode::Enforce | Mode::Shadow)
                    && self.leases.get(w.key).is_some_and(|l| l.tokens() >= u64::from(w.cost))
            })
            .collect();
        if repeated || covered.is_empty() || covered.len() == limits.len() {
            return None;
        }
        let mut spent = Vec::with_capacity(covered.len());
        for i in covered {
            let w = &limits[i];
            let cap = self.cap(w.limit, w.mode);
            let seen = *self.observe(w.key, w.cost, now_ms);
            let Some(l) = self.leases.get_mut(w.key) else { continue };
            let taken = l.pay(u64::from(w.cost));
            self.counts.spent += u64::from(w.cost);
            spent.push(Spent { index: i, key: w.key.to_string(), taken, reports: l.reports });
            self.renew_if_low(w, cap, seen, now_ms);
        }
        Some(spent)
    }

    /// `key`'s lease, if this isolate holds one.
    pub fn lease_of(&self, key: &str) -> Option<&Lease> {
        self.leases.get(key)
    }

    /// Puts back what [`LeaseBook::spend_part`] paid, for a request Redis did not admit: into the
    /// lease while the payment is unreported; once another call has reported it spent (the script no
    /// longer counts it as leased), given back to the bucket instead with the next give-back.
    pub fn unspend(&mut self, spent: &[Spent]) {
        for s in spent {
            let tokens: u64 = s.taken.iter().map(|t| t.0).sum();
            self.counts.spent = self.counts.spent.saturating_sub(tokens);
            // (a lease dropped by an admin reset meanwhile has nothing to put back into)
            let Some(l) = self.leases.get_mut(&s.key) else { continue };
            if l.reports == s.reports {
                l.unpay(&s.taken);
            } else {
                let taken_ms = s.taken.iter().map(|t| t.2).min().unwrap_or(l.taken_ms);
                let (limit, overrides) = (l.limit.clone(), l.overrides.clone());
                let key = s.key.clone();
                self.ended.push(GiveBack { key, tokens, settle: 0, since: 0, taken_ms, limit, overrides });
            }
        }
    }

    /// Asks for a top-up of `w`'s lease after it paid, if it is running low.
    fn renew_if_low(&mut self, w: &Want<'_>, cap: u64, seen: Seen, now_ms: f64) {
        let horizon = f64::from(self.config.horizon_ms);
        let Some(l) = self.leases.get_mut(w.key) else { return };
        // Running low — what lasts beyond the next quarter horizon is below half of what a horizon
        // needs: topped up after the response, so a busy key rarely waits for Redis.
        // (Never more than the cap held in all: an isolate holds at most `share × capacity`.)
        let lasting: u64 = l.grants.iter().filter(|g| g.1 - now_ms >= horizon / 4.0).map(|g| g.0).sum();
        let target = seen.need(now_ms, horizon).min(cap);
        let want = target.saturating_sub(lasting).min(cap.saturating_sub(l.tokens()));
        if lasting * 2 < target
            && target >= 2 * u64::from(w.cost)
            && want >= MIN_LEASE
            && now_ms >= seen.asking_until_ms
        {
            let renewal =
                Renewal { key: w.key.to_string(), want, limit: l.limit.clone(), overrides: l.overrides.clone() };
            self.renewals.push(renewal);
            if let Some(s) = self.seen.get_mut(w.key) {
                s.asking_until_ms = now_ms + ASK_STALE_MS;
            }
        }
    }

    /// Ends `key`'s grants whose time is up, to be given back (with the window of the oldest tokens
    /// held: never more than they were counted in).
    fn expire(&mut self, key: &str, now_ms: f64) {
        let Some(l) = self.leases.get_mut(key) else { return };
        let (ended, ended_since) = l.expire(now_ms);
        if ended > 0 {
            let (settle, since) = l.settlement(ended, ended_since);
            let (taken_ms, limit, overrides) = (l.taken_ms, l.limit.clone(), l.overrides.clone());
            let key = key.to_string();
            self.ended.push(GiveBack { key, tokens: ended, settle, since, taken_ms, limit, overrides });
        }
        if self.leases.get(key).is_some_and(|l| l.grants.is_empty()) {
            self.leases.remove(key);
        }
    }

    /// The leases to top up now.
    pub fn take_renewals(&mut self) -> Vec<Renewal> {
        std::mem::take(&mut self.renewals)
    }

    /// Whether this isolate holds no lease at all.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The tokens of `key`'s live grants (0 without one).
    pub fn held(&self, key: &str, now_ms: f64) -> u64 {
        self.leases.get(key).map_or(0, |l| l.grants.iter().filter(|g| now_ms < g.1).map(|g| g.0).sum())
    }

    /// Drops `keys`' leases without giving anything back (their buckets were reset): counted lost.
    pub fn drop_keys(&mut self, keys: &[String]) {
        for k in keys {
            let dropped = self.leases.remove(k).map_or(0, |l| l.tokens());
            let ended: u64 = self.ended.iter().filter(|g| &g.key == k).map(|g| g.tokens).sum();
            self.ended.retain(|g| &g.key != k);
            self.counts.lost += dropped + ended;
        }
    }

    /// The ended grants' unused tokens, to give back now, one entry per key (a key twice in one call
    /// would have one write win over the other).
    pub fn due(&mut self, now_ms: f64) -> Vec<GiveBack> {
        let keys: Vec<String> = self.leases.keys().cloned().collect();
        for k in keys {
            self.expire(&k, now_ms);
        }
        self.merged()
    }

    /// Ends every lease now (a wake chain at its age limit): all of it to give back.
    pub fn end_all(&mut self) -> Vec<GiveBack> {
        for (key, mut l) in std::mem::take(&mut self.leases) {
            let (tokens, ended_since) = l.expire(f64::INFINITY);
            if tokens > 0 {
                let (settle, since) = l.settlement(tokens, ended_since);
                let Lease { taken_ms, limit, overrides, .. } = l;
                self.ended.push(GiveBack { key, tokens, settle, since, taken_ms, limit, overrides });
            }
        }
        self.merged()
    }

    fn merged(&mut self) -> Vec<GiveBack> {
        if self.seen.len() >= TRACKED_KEYS {
            self.seen.clear();
        }
        let mut out: Vec<GiveBack> = Vec::new();
        for g in std::mem::take(&mut self.ended) {
            match out.iter_mut().find(|o| o.key == g.key) {
                Some(o) => {
                    o.tokens += g.tokens;
                    o.settle += g.settle;
                    o.since = o.since.min(g.since);
                    o.taken_ms = o.taken_ms.min(g.taken_ms);
                }
                None => out.push(g),
            }
        }
        out
    }

    /// How long until a wake should give back ended leases, if one should be scheduled now: there are
    /// leases, and no wake is scheduled (or the scheduled one is long overdue: its executor was
    /// stopped). The wake is then counted as scheduled.
    pub fn schedule_wake(&mut self, now_ms: f64) -> Option<u32> {
        if self.wake_at_ms.is_some_and(|at| now_ms < at + 2.0 * f64::from(self.config.horizon_ms) + 1_000.0) {
            return None;
        }
        self.next_wake(now_ms)
    }

    /// The scheduled wake fired (or was given up): the next one, if leases remain.
    pub fn woke(&mut self, now_ms: f64) -> Option<u32> {
        self.wake_at_ms = None;
        self.next_wake(now_ms)
    }

    /// No wake is scheduled after all.
    pub fn unschedule_wake(&mut self) {
        self.wake_at_ms = None;
    }

    fn next_wake(&mut self, now_ms: f64) -> Option<u32> {
        let first = if self.ended.is_empty() {
            self.leases.values().filter_map(|l| l.grants.front().map(|g| g.1)).fold(f64::INFINITY, f64::min)
        } else {
            now_ms
        };
        if !first.is_finite() {
            return None;
        }
        // Shortly after the first lease ends; a few ms late is fine (tokens return within 2 s of the end).
        let at = first.max(now_ms) + 20.0;
        self.wake_at_ms = Some(at);
        Some((at - now_ms).ceil() as u32)
    }

    /// Tokens given back (`ok`) or lost (the call failed).
    pub fn gave_back(&mut self, tokens: u64, ok: bool) {
        if ok {
            self.counts.returned += tokens;
        } else {
            self.counts.lost += tokens;
        }
    }

    /// Tokens of `key` held in leases, live or ended and not yet given back.
    pub fn outstanding_of(&self, key: &str) -> u64 {
        self.leases.get(key).map_or(0, Lease::tokens)
            + self.ended.iter().filter(|g| g.key == key).map(|g| g.tokens).sum::<u64>()
    }

    /// Tokens held in leases, live or ended and not yet given back (for tests and the status page).
    pub fn outstanding(&self) -> u64 {
        self.leases.values().map(Lease::tokens).sum::<u64>() + self.ended.iter().map(|g| g.tokens).sum::<u64>()
    }

    pub fn take_counts(&mut self) -> LeaseCounts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate::Refill;
    use crate::store::decision::LimitStatus;

    fn status() -> LimitStatus {
        LimitStatus {
            name: "p".into(),
            shadow: false,
            capacity: 1000,
            window_s: 60,
            remaining: 500,
            retry_ms: 0,
            reset_ms: 0,
        }
    }

    #[test]
    fn grants_end_on_their_own_and_go_back_one_entry_per_key() {
        let limit = Limit::new(1000, Refill::parse("1000/min").unwrap(), 60).unwrap();
        let mut book = LeaseBook::new(LeaseConfig { horizon_ms: 100, ..LeaseConfig::default() });
        book.grant("k", 10, 1, &status(), &limit, &[], 0.0);
        book.grant("k", 7, 2, &status(), &limit, &[], 50.0); // a renewal: it does not extend the first
        assert_eq!(book.held("k", 60.0), 17);
        assert_eq!(book.held("k", 120.0), 7, "the first grant ended at 100");
        let want = Want { key: "k", limit: &limit, cost: 3, mode: Mode::Enforce };
        assert!(book.spend(&[want], 120.0).is_some());
        assert_eq!(book.held("k", 120.0), 4);
        book.grant("j", 5, 3, &status(), &limit, &[], 120.0);
        // Both grants of k ended (10 unspent, then 4), j's too: one entry per key, the oldest time kept.
        let mut due = book.due(300.0);
        due.sort_by(|a, b| a.key.cmp(&b.key));
        let got: Vec<(&str, u64, i64)> = due.iter().map(|g| (g.key.as_str(), g.tokens, g.taken_ms)).collect();
        assert_eq!(got, [("j", 5, 3), ("k", 14, 1)]);
        assert_eq!(book.outstanding(), 0);
    }

    /// A lease paying part of a request whose other limits Redis denies puts back what it paid: into
    /// its grants while the payment is unreported, and once another call has reported it spent (the
    /// script stopped counting it as leased), to the bucket with the next give-back (never twice).
    #[test]
    fn a_part_payment_is_put_back_once_into_the_lease_or_else_to_the_bucket() {
        let limit = Limit::new(1000, Refill::parse("1000/min").unwrap(), 60).unwrap();
        let mut book = LeaseBook::new(LeaseConfig { horizon_ms: 100, ..LeaseConfig::default() });
        book.grant("k", 10, 1, &status(), &limit, &[], 0.0);
        let wants = [
            Want { key: "k", limit: &limit, cost: 3, mode: Mode::Enforce },
            Want { key: "own", limit: &limit, cost: 1, mode: Mode::Enforce },
        ];
        let spent = book.spend_part(&wants, 10.0).expect("k covered, own not");
        assert_eq!((spent.len(), spent[0].index, book.held("k", 10.0)), (1, 0, 7));
        book.unspend(&spent);
        assert_eq!(book.held("k", 10.0), 10, "put back into its grant");
        assert_eq!(book.lease_arg("k", 0), "0", "nothing spent to report");

        let spent = book.spend_part(&wants, 20.0).unwrap();
        assert!(book.lease_arg("k", 0).starts_with("0 "), "another call reports the 3 spent");
        book.unspend(&spent);
        assert_eq!(book.held("k", 20.0), 7, "reported: not back into the lease");
        let due = book.due(20.0);
        let got: Vec<(&str, u64, u64)> = due.iter().map(|g| (g.key.as_str(), g.tokens, g.settle)).collect();
        assert_eq!(got, [("k", 3, 0)], "given back to the bucket, and not reported again");
    }
}
