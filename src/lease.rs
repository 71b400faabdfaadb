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
//!   request's cost, so a draining bucket hands out ever smaller leases. One ask per key at a time.
//! - **How long.** A lease lasts [`LeaseConfig::horizon_ms`]; a renewal (a call that tops it up)
//!   starts the horizon again. Unused tokens of an ended lease are given back to the bucket (never
//!   above capacity) by one script call off the response path.
//!
//! Pure bookkeeping: the limiter asks [`LeaseBook`] what to ask for, what a request may spend, and what
//! to give back; time comes in as an argument.

use std::collections::HashMap;

use crate::bucket::Mode;
use crate::config::LeaseConfig;
use crate::limit::Limit;

/// The smallest lease worth taking (tokens): a smaller one may cost a give-back call for each call it saves.
pub const MIN_LEASE: u64 = 4;
/// Keys an isolate tracks (rates seen, leases held); beyond it, what it saw is forgotten (leases are
/// kept: they are given back).
pub const TRACKED_KEYS: usize = 10_000;
/// Tokens within part of a horizon that count as a burst to project from.
const BURST: u64 = 8;
/// How long an ask may stay unanswered before another request of the key may ask again.
const ASK_STALE_MS: f64 = 30_000.0;

/// One key's lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// Whole tokens left to spend.
    pub tokens: u64,
    /// Until then (Worker ms) it may be spent.
    pub expires_ms: f64,
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
}

/// Unused tokens of an ended lease, to give back.
#[derive(Clone, Debug, PartialEq)]
pub struct GiveBack {
    pub key: String,
    pub tokens: u64,
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

    /// The most one isolate may hold of `limit` (0: never leased).
    /// (A lease is taken only when it covers two requests' cost and [`MIN_LEASE`]: see [`LeaseBook::wants`].)
    pub fn cap(&self, limit: &Limit, mode: Mode) -> u64 {
        if !self.config.on || !limit.lease() || !matches!(mode, Mode::Enforce | Mode::Shadow) {
            return 0;
        }
        (f64::from(limit.capacity()) * self.config.share).floor() as u64
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
                let held = self.leases.get(w.key).filter(|l| now_ms < l.expires_ms).map_or(0, |l| l.tokens);
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
        status: &crate::decision::LimitStatus,
        limit: &Limit,
        overrides: &[String],
        now_ms: f64,
    ) {
        let expires_ms = now_ms + f64::from(self.config.horizon_ms);
        let reset_at_ms = now_ms + status.reset_ms as f64;
        self.counts.granted += tokens;
        if let Some(l) = self.leases.get_mut(key) {
            if now_ms < l.expires_ms {
                if l.tokens == 0 {
                    l.taken_ms = script_ms;
                }
                l.tokens += tokens;
                l.expires_ms = expires_ms;
                (l.remaining, l.reset_at_ms, l.capacity, l.window_s) =
                    (status.remaining, reset_at_ms, status.capacity, status.window_s);
                return;
            }
        }
        let lease = Lease {
            tokens,
            expires_ms,
            taken_ms: script_ms,
            remaining: status.remaining,
            reset_at_ms,
            capacity: status.capacity,
            window_s: status.window_s,
            limit: limit.clone(),
            overrides: overrides.to_vec(),
        };
        if let Some(old) = self.leases.insert(key.to_string(), lease) {
            self.end(key, old);
        }
    }

    fn end(&mut self, key: &str, lease: Lease) {
        if lease.tokens > 0 {
            let Lease { tokens, taken_ms, limit, overrides, .. } = lease;
            self.ended.push(GiveBack { key: key.to_string(), tokens, taken_ms, limit, overrides });
        }
    }

    /// Whether every one of `limits` can be paid from a live lease now; if so they are paid, and the
    /// leases are returned (in order) for the request's `RateLimit` fields.
    pub fn spend(&mut self, limits: &[Want<'_>], now_ms: f64) -> Option<Vec<&Lease>> {
        if self.leases.is_empty() || limits.is_empty() {
            return None;
        }
        let covered = limits.iter().all(|w| {
            self.leases.get(w.key).is_some_and(|l| {
                now_ms < l.expires_ms && l.tokens >= u64::from(w.cost) && matches!(w.mode, Mode::Enforce | Mode::Shadow)
            })
        });
        if !covered {
            return None;
        }
        let horizon = f64::from(self.config.horizon_ms);
        for w in limits {
            let cap = self.cap(w.limit, w.mode);
            let seen = *self.observe(w.key, w.cost, now_ms);
            let Some(l) = self.leases.get_mut(w.key) else { continue };
            l.tokens -= u64::from(w.cost);
            self.counts.spent += u64::from(w.cost);
            // Running low (below half of what the horizon needs, or ending soon): topped up after the
            // response, so a busy key rarely waits for Redis.
            let target = seen.need(now_ms, horizon).min(cap);
            let low = l.tokens * 2 < target || l.expires_ms - now_ms < horizon / 4.0;
            let want = target.saturating_sub(l.tokens);
            if low && target >= 2 * u64::from(w.cost) && want >= MIN_LEASE && now_ms >= seen.asking_until_ms {
                let renewal =
                    Renewal { key: w.key.to_string(), want, limit: l.limit.clone(), overrides: l.overrides.clone() };
                self.renewals.push(renewal);
                if let Some(s) = self.seen.get_mut(w.key) {
                    s.asking_until_ms = now_ms + ASK_STALE_MS;
                }
            }
        }
        self.counts.requests += 1;
        Some(limits.iter().filter_map(|w| self.leases.get(w.key)).collect())
    }

    /// The leases to top up now.
    pub fn take_renewals(&mut self) -> Vec<Renewal> {
        std::mem::take(&mut self.renewals)
    }

    /// The tokens of `key`'s live lease (0 without one).
    pub fn held(&self, key: &str, now_ms: f64) -> u64 {
        self.leases.get(key).filter(|l| now_ms < l.expires_ms).map_or(0, |l| l.tokens)
    }

    /// Drops `keys`' leases without giving anything back (their buckets were reset).
    pub fn drop_keys(&mut self, keys: &[String]) {
        for k in keys {
            self.leases.remove(k);
            self.ended.retain(|g| &g.key != k);
        }
    }

    /// The ended leases' unused tokens, to give back now (their leases are gone).
    pub fn due(&mut self, now_ms: f64) -> Vec<GiveBack> {
        let ended: Vec<String> =
            self.leases.iter().filter(|(_, l)| now_ms >= l.expires_ms).map(|(k, _)| k.clone()).collect();
        for k in ended {
            if let Some(l) = self.leases.remove(&k) {
                self.end(&k, l);
            }
        }
        if self.seen.len() >= TRACKED_KEYS {
            self.seen.clear();
        }
        std::mem::take(&mut self.ended)
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
            self.leases.values().map(|l| l.expires_ms).fold(f64::INFINITY, f64::min)
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
        self.leases.get(key).map_or(0, |l| l.tokens)
            + self.ended.iter().filter(|g| g.key == key).map(|g| g.tokens).sum::<u64>()
    }

    /// Tokens held in leases, live or ended and not yet given back (for tests and the status page).
    pub fn outstanding(&self) -> u64 {
        self.leases.values().map(|l| l.tokens).sum::<u64>() + self.ended.iter().map(|g| g.tokens).sum::<u64>()
    }

    pub fn take_counts(&mut self) -> LeaseCounts {
        std::mem::take(&mut self.counts)
    }
}
