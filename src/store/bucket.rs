//! The limits in Rust: the same arithmetic, in the same order, as
//! `lua/ratelimit.lua` (token bucket, sliding-window counter, fixed window), so a test
//! can demand bit-for-bit agreement on random request sequences. Redis is the
//! only source of truth; the Worker runs this only as the per-isolate bucket
//! that bounds fail-open traffic while Redis cannot decide.
//!
//! In-flight slots (`"c"`) are not modelled: they live in a sorted set of request ids, tested against
//! the script directly (`tests/lua.rs`). Here such a limit never denies and keeps no state, so the
//! fail-open bucket bounds rates only.

pub use crate::policy::check::Mode;
use crate::policy::limit::Algorithm;

/// One limit's stored state (the hash fields).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    /// `tokens`, `lastRefill` (epoch seconds), and the lease slots once it has leased.
    Bucket { tokens: f64, last_refill: f64, slots: Option<Slots> },
    /// `start` of the current window (epoch seconds), its `count`, and the `previous` window's count.
    Window { start: f64, count: f64, previous: f64 },
    /// A fixed window's count (`n`), and when its key dies (epoch ms: the window's end, set when the
    /// window's count began; no such key from then on).
    Fixed { count: f64, expires_ms: f64 },
}

/// What a token bucket leased lately (`lq`, `lp`, `li`, `ll`): tokens leased in the current and the
/// previous slot of `length` seconds, and the current slot's index (`floor(time / length)`). A lease
/// lives at most one slot, so `current + previous` bounds what leases may still spend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slots {
    pub current: f64,
    pub previous: f64,
    pub index: f64,
    pub length: f64,
}

impl Slots {
    /// The slots at time `t` (never earlier than their last write).
    fn at(self, t: f64) -> Slots {
        let idx = (t / self.length).floor();
        if idx == self.index + 1.0 {
            Slots { current: 0.0, previous: self.current, index: idx, ..self }
        } else if idx > self.index + 1.0 {
            Slots { current: 0.0, previous: 0.0, index: idx, ..self }
        } else {
            self
        }
    }

    /// `amount` tokens of grants made at or after `since` (ms) no longer outstanding: taken off the
    /// oldest slot they may be in first, and not at all once since's slot has slid out.
    fn settled(self, amount: f64, since: f64) -> Slots {
        if amount <= 0.0 {
            return self; // (the script sends no settlement then)
        }
        let at = ((since - 1.0) / 1000.0 / self.length).floor();
        if at == self.index {
            Slots { current: (self.current - amount).max(0.0), ..self }
        } else if at == self.index - 1.0 {
            let p = self.previous.min(amount);
            Slots { current: (self.current - (amount - p)).max(0.0), previous: self.previous - p, ..self }
        } else {
            self
        }
    }

    fn readable(&self) -> bool {
        !(self.current.is_nan() || self.previous.is_nan() || self.index.is_nan()) && self.length > 0.0
    }
}

/// The smallest lease the script grants (`MIN_LEASE` in the script).
pub const MIN_GRANT: f64 = 4.0;

/// One limit's parameters for one call (ARGV of the script, overrides applied).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub algorithm: Algorithm,
    pub capacity: f64,
    pub rate: f64,
    /// The request's cost; when giving back, the lease's unused tokens.
    pub cost: f64,
    pub mode: Mode,
    /// When taking: the whole tokens wanted for a lease beyond the cost (0 = none). When giving back:
    /// the script's time (epoch ms) when the lease was taken.
    pub lease: f64,
    /// When taking a lease: the longest a lease lives (ms), and the most of the capacity in effect
    /// one grant may take.
    pub slot_ms: f64,
    pub share: f64,
    /// Lease tokens the caller spent (or, giving back, returns) since it last said so: no longer
    /// outstanding; all from grants made at or after `since` (the script's epoch ms).
    pub settle: f64,
    pub since: f64,
    /// A shard change at this script time (epoch s): a key that does not exist starts as if empty
    /// then and refilled since (the script's mode `"<mode> <ms>"`).
    pub seed: Option<f64>,
}

impl Spec {
    /// A limit asking for no lease and reporting none.
    pub const fn new(algorithm: Algorithm, capacity: f64, rate: f64, cost: f64, mode: Mode) -> Spec {
        Spec {
            algorithm,
            capacity,
            rate,
            cost,
            mode,
            lease: 0.0,
            slot_ms: 0.0,
            share: 0.0,
            settle: 0.0,
            since: 0.0,
            seed: None,
        }
    }

    /// The script's `ARGV[a+5]` for this limit: its mode, and the time of a shard change.
    pub fn mode_arg(&self) -> String {
        match self.seed {
            Some(s) => format!("{} {}", self.mode.code(), (s * 1000.0).floor()),
            None => self.mode.code().to_string(),
        }
    }

    /// The script's `ARGV[a+7]` for this limit.
    pub fn lease_arg(&self, op: Op) -> String {
        match op {
            Op::GiveBack => format!("{} {} {}", self.lease, self.settle, self.since),
            Op::Settle | Op::SettleOnce => self.lease.to_string(),
            Op::Take if self.lease > 0.0 || self.settle > 0.0 => {
                format!("{} {} {} {} {}", self.lease, self.slot_ms, self.share, self.settle, self.since)
            }
            _ => "0".to_string(),
        }
    }
}

/// What a call does (the script's `ARGV[2]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Decide a request: check, consume all or nothing, take leases.
    Take,
    /// Report without consuming or writing.
    Peek,
    /// Return unused lease tokens.
    GiveBack,
    /// After a response: release slots, charge or refund the difference between actual and reserved
    /// cost (`cost` signed; `lease` the script's ms when the reservation was taken).
    Settle,
    /// [`Op::Settle`] exactly once: the call's last key is the request's settle marker.
    SettleOnce,
}

impl Op {
    /// Its code in the script's arguments.
    pub fn code(self) -> &'static str {
        match self {
            Op::Take => "",
            Op::Peek => "1",
            Op::GiveBack => "2",
            Op::Settle => "3",
            Op::SettleOnce => "4",
        }
    }
}

/// What the script returns for one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketReply {
    pub remaining: i64,
    pub retry_ms: i64,
    pub reset_ms: i64,
    pub capacity: i64,
    pub window_s: i64,
    /// Tokens debited beyond the cost, for the caller's lease.
    pub leased: i64,
}

/// The integers the script returns per limit.
pub const PER_LIMIT: usize = 6;

/// What the script returns for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub allowed: bool,
    /// 1-based index of the first limit short of tokens; 0 when allowed.
    pub denied_by: usize,
    pub buckets: Vec<BucketReply>,
    /// The call's time, epoch ms (floored).
    pub now_ms: i64,
}

impl Reply {
    /// The reply as the script's flat integer array.
    pub fn to_flat(&self) -> Vec<i64> {
        let mut out = vec![i64::from(self.allowed), self.denied_by as i64];
        for b in &self.buckets {
            out.extend([b.remaining, b.retry_ms, b.reset_ms, b.capacity, b.window_s, b.leased]);
        }
        out.push(self.now_ms);
        out
    }
}

/// A limit's level before this call: tokens available, its clock, for a window its
/// (start, count, previous, length) after rolling over, for a bucket its lease slots, and whether it
/// had readable state.
struct Level {
    tokens: f64,
    t: f64,
    window: Option<(f64, f64, f64, f64)>,
    /// A fixed window: its count before this call, and whether this call counted its cost first (a
    /// take: the script's HINCRBY, taken back if not admitted).
    fixed: Option<(f64, bool)>,
    slots: Option<Slots>,
    known: bool,
    /// No such key yet (or it expired): a bucket is full, a window empty.
    fresh: bool,
}

fn level(state: &Option<State>, spec: &Spec, now: f64, op: Op) -> Level {
    let (c, r) = (spec.capacity, spec.rate);
    match spec.algorithm {
        Algorithm::SlidingWindow => {
            let w = c / r;
            let mut t = now;
            let known = matches!(*state, Some(State::Window { start, count, previous })
                if !(start.is_nan() || count.is_nan() || previous.is_nan()))
                || (state.is_none() && spec.seed.is_some());
            let (start, count, previous) = match *state {
                Some(State::Window { start, count, previous })
                    if !(start.is_nan() || count.is_nan() || previous.is_nan()) =>
                {
                    if t < start {
                        t = start;
                    }
                    let moved = ((t - start) / w).floor();
                    if moved >= 2.0 {
                        (start + moved * w, 0.0, 0.0)
                    } else if moved == 1.0 {
                        (start + w, 0.0, count)
                    } else {
                        (start, count, previous)
                    }
                }
                // New in a shard change: the window before the change full, rolled on to now.
                None if spec.seed.is_some() => {
                    let start = spec.seed.map_or(now, |s| s.min(now));
                    let moved = ((t - start) / w).floor();
                    if moved >= 2.0 {
                        (start + moved * w, 0.0, 0.0)
                    } else if moved == 1.0 {
                        (start + w, 0.0, 0.0)
                    } else {
                        (start, 0.0, c)
                    }
                }
                None => (now, 0.0, 0.0),
                Some(_) => (now, c, 0.0), // unreadable (or another algorithm's) state: full for a window
            };
            let tokens = c - (previous * (1.0 - (t - start) / w) + count);
            let fresh = state.is_none() && spec.seed.is_none();
            Level { tokens, t, window: Some((start, count, previous, w)), fixed: None, slots: None, known, fresh }
        }
        Algorithm::FixedWindow => {
            let w = c / r;
            let mut ends = ((now / w).floor() + 1.0) * w;
            if ends <= now {
                ends += w; // (now / w rounded across a window's edge: the window is the one now is in)
            } else if ends - w > now {
                ends -= w;
            }
            let counts =
                !matches!(op, Op::Peek | Op::GiveBack | Op::Settle | Op::SettleOnce) && spec.mode != Mode::Report;
            // (another algorithm's hash has no `n`: a count of 0, as an expired key)
            let count = match *state {
                Some(State::Fixed { count, expires_ms }) if now * 1000.0 < expires_ms => count,
                _ => 0.0,
            };
            let (count, known) = if count.is_nan() { (c, false) } else { (count, true) };
            let fresh = known && count == 0.0;
            // New in a shard change: full in the window of the change.
            let count = match spec.seed {
                Some(s) if fresh && ends - w <= s => c,
                _ => count,
            };
            let fixed = Some((count, counts && known));
            Level {
                tokens: c - count,
                t: now,
                window: Some((ends - w, count, 0.0, w)),
                fixed,
                slots: None,
                known,
                fresh,
            }
        }
        Algorithm::Concurrency => {
            Level { tokens: c, t: now, window: None, fixed: None, slots: None, known: false, fresh: false }
        }
        Algorithm::TokenBucket => match *state {
            // New in a shard change: empty then, refilled since.
            None if spec.seed.is_some() => {
                let since = spec.seed.unwrap_or(now);
                let tokens = c.min(((now - since) * r).max(0.0));
                Level { tokens, t: now, window: None, fixed: None, slots: None, known: true, fresh: false }
            }
            None => Level { tokens: c, t: now, window: None, fixed: None, slots: None, known: false, fresh: true },
            Some(State::Bucket { tokens, last_refill, slots })
                if !(tokens.is_nan() || last_refill.is_nan()) && slots.is_none_or(|s| s.readable()) =>
            {
                let t = if now < last_refill { last_refill } else { now };
                let settle = if matches!(op, Op::Take | Op::GiveBack) { spec.settle } else { 0.0 };
                let slots = slots.map(|s| s.at(t).settled(settle, spec.since));
                let out = slots.map_or(0.0, |s| s.current + s.previous);
                // Never above capacity minus what leases may still spend; refill never takes tokens away.
                let tokens = c.min(tokens.max((c - out).min(tokens + (t - last_refill) * r)));
                Level { tokens, t, window: None, fixed: None, slots, known: true, fresh: false }
            }
            Some(_) => {
                Level { tokens: 0.0, t: now, window: None, fixed: None, slots: None, known: false, fresh: false }
            }
        },
    }
}

/// Runs one all-or-nothing call at `now` (epoch seconds) against `states`
/// (`None` = no such key), updating them as the script would.
pub fn call_with(states: &mut [Option<State>], specs: &[Spec], now: f64, op: Op) -> Reply {
    debug_assert_eq!(states.len(), specs.len(), "one spec per limit");
    let (peek, give, settle) = (op == Op::Peek, op == Op::GiveBack, matches!(op, Op::Settle | Op::SettleOnce));
    let levels: Vec<Level> = states.iter().zip(specs).map(|(s, spec)| level(s, spec, now, op)).collect();
    let concurrency = |spec: &Spec| spec.algorithm == Algorithm::Concurrency;
    let short = |l: &Level, spec: &Spec, mode: Mode| {
        !give && !settle && !concurrency(spec) && l.tokens < spec.cost && spec.mode == mode
    };
    let denied_by = levels.iter().zip(specs).position(|(l, spec)| short(l, spec, Mode::Enforce)).map_or(0, |i| i + 1);
    let candidate_denied = levels.iter().zip(specs).any(|(l, spec)| short(l, spec, Mode::Candidate));
    let mut buckets = Vec::with_capacity(specs.len());
    for ((state, spec), l) in states.iter_mut().zip(specs).zip(levels) {
        let (c, r, k) = (spec.capacity, spec.rate, spec.cost);
        let mut tokens = l.tokens;
        let consume = !concurrency(spec)
            && match spec.mode {
                Mode::Enforce | Mode::Shadow => denied_by == 0 && tokens >= k && !peek && !give && !settle,
                Mode::Candidate => !candidate_denied && !peek && !give && !settle,
                Mode::Report => false,
            };
        let mut lease = 0.0;
        let mut slots = l.slots;
        if consume && matches!(spec.mode, Mode::Enforce | Mode::Shadow) && spec.lease > 0.0 && spec.slot_ms > 0.0 {
            lease = spec.lease.min(((tokens - k) / 2.0).floor()).min((c * spec.share).floor());
            if let Some((start, _, _, w)) = l.window {
                if w - (l.t - start) < spec.slot_ms / 1000.0 {
                    lease = 0.0; // a window's lease must end within its window
                }
            }
            if lease.is_nan() || lease < MIN_GRANT {
                lease = 0.0; // (as the script's `not (lease >= MIN_LEASE)`)
            }
            if lease > 0.0 && l.window.is_none() {
                let length = spec.slot_ms / 1000.0;
                let index = (l.t / length).floor();
                let mut sl = match slots {
                    None => Slots { current: 0.0, previous: 0.0, index, length },
                    Some(s) if s.length != length => {
                        Slots { current: 0.0, previous: s.current + s.previous, index, length }
                    }
                    Some(s) => s,
                };
                sl.current += lease;
                slots = Some(sl);
            }
        }
        let back = give && l.known;
        // A refund to a fresh key changes nothing (it is full, or empty for a window).
        let settling = settle && (l.known || (l.fresh && k > 0.0));
        let (mut retry, mut reset) = (0.0, 0.0);
        match (l.window, l.fixed) {
            (Some((start, mut count, _, w)), Some((before, counted))) => {
                let left = start + w - l.t;
                let ttl_ms = (left * 1000.0).ceil();
                let expires_ms = match *state {
                    Some(State::Fixed { expires_ms, .. }) if before > 0.0 => expires_ms,
                    _ => l.t * 1000.0 + ttl_ms, // (set when this call begins the window's count)
                };
                if tokens < k && !give && !settle {
                    retry = left;
                }
                let at = spec.lease.floor() / 1000.0;
                if consume {
                    tokens = tokens - k - lease;
                    count = count + k + lease;
                    *state = Some(State::Fixed { count, expires_ms });
                } else if counted {
                    // counted back: a count this call began is deleted
                    if before == 0.0 || l.fresh {
                        *state = None;
                    }
                } else if back || (settling && k < 0.0) {
                    if at >= start && count > 0.0 && !l.fresh {
                        count -= count.min(k.abs());
                        *state = Some(State::Fixed { count, expires_ms });
                    }
                    tokens = c - count;
                } else if settling && k > 0.0 {
                    count += k;
                    *state = Some(State::Fixed { count, expires_ms });
                    tokens = c - count;
                }
                if count > 0.0 {
                    reset = left;
                }
            }
            (Some((start, mut count, mut previous, w)), None) => {
                let into = l.t - start;
                if tokens < k && !give && !settle {
                    let need = k - tokens;
                    retry = if previous > 0.0 && into + need * w / previous <= w {
                        need * w / previous
                    } else if count + k <= c {
                        w - into
                    } else if count > 0.0 {
                        w - into + (count + k - c) * w / count
                    } else {
                        2.0 * w - into
                    };
                }
                if consume {
                    tokens = tokens - k - lease;
                    count = count + k + lease;
                } else if back {
                    let taken = spec.lease / 1000.0;
                    if taken >= start {
                        count = (count - k).max(0.0);
                    } else if taken >= start - w {
                        previous = (previous - k).max(0.0);
                    }
                    tokens = c - (previous * (1.0 - into / w) + count);
                } else if settling {
                    if k > 0.0 {
                        count += k; // charged now, in the current window
                    } else {
                        let taken = spec.lease / 1000.0;
                        if taken >= start {
                            count = (count + k).max(0.0);
                        } else if taken >= start - w {
                            previous = (previous + k).max(0.0);
                        }
                    }
                    tokens = c - (previous * (1.0 - into / w) + count);
                }
                if consume || back || settling {
                    *state = Some(State::Window { start, count, previous });
                }
                if count > 0.0 {
                    reset = 2.0 * w - into;
                } else if previous > 0.0 {
                    reset = w - into;
                }
            }
            (None, _) if concurrency(spec) => {}
            (None, _) => {
                if tokens < k && !give && !settle {
                    retry = (k - tokens) / r;
                }
                if consume || back || settling {
                    tokens = if consume {
                        tokens - k - lease
                    } else if back || k < 0.0 {
                        c.min(tokens + k.abs())
                    } else {
                        tokens - k // debt, paid off by the refill
                    };
                    *state = Some(State::Bucket { tokens, last_refill: l.t, slots });
                }
                reset = (c - tokens) / r;
            }
        }
        buckets.push(BucketReply {
            remaining: tokens.floor() as i64,
            retry_ms: (retry * 1000.0).ceil() as i64,
            reset_ms: (reset * 1000.0).ceil() as i64,
            capacity: c as i64,
            window_s: (c / r).ceil() as i64,
            leased: lease as i64,
        });
    }
    Reply { allowed: denied_by == 0, denied_by, buckets, now_ms: (now * 1000.0).floor() as i64 }
}

/// [`call_with`] that takes.
pub fn call(states: &mut [Option<State>], specs: &[Spec], now: f64) -> Reply {
    call_with(states, specs, now, Op::Take)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &Option<State>) -> f64 {
        match s {
            Some(State::Bucket { tokens, .. }) => *tokens,
            other => panic!("not a bucket: {other:?}"),
        }
    }

    const FIVE_PER_MIN: Spec = Spec::new(Algorithm::TokenBucket, 5.0, 5.0 / 60.0, 1.0, Mode::Enforce);

    #[test]
    fn a_fresh_bucket_admits_capacity_then_denies() {
        let mut s = [None];
        for left in (0..5).rev() {
            let r = call(&mut s, &[FIVE_PER_MIN], 1000.0);
            assert!(r.allowed);
            assert_eq!(r.buckets[0].remaining, left);
        }
        let r = call(&mut s, &[FIVE_PER_MIN], 1000.0);
        assert!(!r.allowed);
        assert_eq!(r.denied_by, 1);
        assert_eq!(
            r.buckets[0],
            BucketReply { remaining: 0, retry_ms: 12_000, reset_ms: 60_000, capacity: 5, window_s: 60, leased: 0 }
        );
    }

    #[test]
    fn tokens_refill_fractionally_and_cap_at_capacity() {
        let mut s = [Some(State::Bucket { tokens: 0.0, last_refill: 100.0, slots: None })];
        let r = call(&mut s, &[FIVE_PER_MIN], 106.0); // half a token
        assert!(!r.allowed);
        assert_eq!(r.buckets[0].retry_ms, 6_000);
        let r = call(&mut s, &[FIVE_PER_MIN], 112.0);
        assert!(r.allowed);
        assert_eq!(tokens(&s[0]), 0.0);
        let r = call(&mut s, &[FIVE_PER_MIN], 10_000.0);
        assert_eq!(r.buckets[0].remaining, 4);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut s = [Some(State::Bucket { tokens: 1.0, last_refill: 500.0, slots: None })];
        let r = call(&mut s, &[FIVE_PER_MIN], 470.0); // a clock 30 s behind
        assert!(r.allowed);
        assert_eq!(s[0].unwrap(), State::Bucket { tokens: 0.0, last_refill: 500.0, slots: None });
    }

    #[test]
    fn all_or_nothing_across_buckets() {
        let tight = Spec { capacity: 1.0, rate: 1.0, ..FIVE_PER_MIN };
        let mut s = [None, Some(State::Bucket { tokens: 0.0, last_refill: 10.0, slots: None })];
        let r = call(&mut s, &[FIVE_PER_MIN, tight], 10.0);
        assert_eq!((r.allowed, r.denied_by), (false, 2));
        assert_eq!(s[0], None, "a denied call debits nothing");
        assert_eq!(r.to_flat(), vec![0, 2, 5, 0, 0, 5, 60, 0, 0, 1000, 1000, 1, 1, 0, 10_000]);
    }

    #[test]
    fn cost_above_what_is_left_is_denied_without_debit() {
        let mut s = [Some(State::Bucket { tokens: 3.0, last_refill: 0.0, slots: None })];
        let big = Spec { cost: 4.0, ..FIVE_PER_MIN };
        let r = call(&mut s, &[big], 0.0);
        assert!(!r.allowed);
        assert_eq!(tokens(&s[0]), 3.0);
        assert_eq!(r.buckets[0].retry_ms, 12_000);
    }

    #[test]
    fn a_shadow_bucket_never_denies_and_pays_only_when_it_can() {
        let shadow = Spec { capacity: 1.0, rate: 1.0, mode: Mode::Shadow, ..FIVE_PER_MIN };
        let mut s = [Some(State::Bucket { tokens: 0.0, last_refill: 0.0, slots: None }), None];
        let r = call(&mut s, &[shadow, FIVE_PER_MIN], 0.0);
        assert_eq!((r.allowed, r.denied_by), (true, 0));
        assert_eq!(r.buckets[0].retry_ms, 1000, "it would have denied");
        assert_eq!(tokens(&s[0]), 0.0, "not debited below zero");
        assert_eq!(tokens(&s[1]), 4.0);
    }

    #[test]
    fn candidate_limits_never_deny_and_pay_all_or_nothing_among_themselves() {
        let candidate = Spec { capacity: 2.0, rate: 1.0 / 60.0, mode: Mode::Candidate, ..FIVE_PER_MIN };
        let roomy = Spec { capacity: 10.0, ..candidate };
        let report = Spec { mode: Mode::Report, ..FIVE_PER_MIN };
        let tight = Spec { capacity: 1.0, rate: 1.0 / 60.0, ..FIVE_PER_MIN };
        let mut s = [None, None, None, None];
        // Live limit `tight` admits one; the candidates pay regardless of it, two times, then neither pays.
        let specs = [tight, candidate, roomy, report];
        let r = call(&mut s, &specs, 0.0);
        assert!(r.allowed);
        let r = call(&mut s, &specs, 0.0);
        assert_eq!((r.allowed, r.denied_by), (false, 1), "the live limit denies");
        assert_eq!(r.buckets[1].remaining, 0, "the candidate paid although the live limit denied");
        let r = call(&mut s, &specs, 0.0);
        assert!(r.buckets[1].retry_ms > 0, "the candidate would deny");
        assert_eq!(r.buckets[2].remaining, 8, "and its other limit paid nothing: all or nothing");
        assert_eq!(r.buckets[3].remaining, 5, "a reported limit is never debited");
        assert_eq!(s[3], None, "nor written");
    }

    /// A limit that asks for `want` tokens of lease (slots of 1.5 s, at most half the capacity per grant).
    fn leasing(spec: Spec, want: f64) -> Spec {
        Spec { lease: want, slot_ms: 1500.0, share: 0.5, ..spec }
    }

    #[test]
    fn an_allowed_call_leases_at_most_half_of_what_is_left_and_giving_back_never_exceeds_capacity() {
        let big = Spec { capacity: 100.0, rate: 1.0, ..FIVE_PER_MIN };
        let mut s = [None];
        let r = call(&mut s, &[leasing(big, 30.0)], 0.0);
        assert_eq!((r.buckets[0].leased, r.buckets[0].remaining), (30, 69));
        let r = call(&mut s, &[leasing(big, 1000.0)], 0.0);
        assert_eq!((r.buckets[0].leased, r.buckets[0].remaining), (34, 34), "half of the 68 left after the cost");
        let r = call(&mut s, &[leasing(big, 3.0)], 0.0);
        assert_eq!(r.buckets[0].leased, 0, "less than the smallest grant: none");
        let r = call(&mut s, &[Spec { share: 0.05, ..leasing(big, 30.0) }], 0.0);
        assert_eq!(r.buckets[0].leased, 5, "at most the share of the capacity in effect");
        // Giving 30 back to a bucket that refilled meanwhile: never above capacity.
        let back = Spec { cost: 30.0, ..big };
        let r = call_with(&mut s, &[back], 50.0, Op::GiveBack);
        assert_eq!((r.allowed, r.buckets[0].remaining, r.buckets[0].leased), (true, 100, 0));
        assert_eq!(r.now_ms, 50_000);
        // A key that is gone (expired, reset) gets nothing back.
        let mut gone = [None];
        call_with(&mut gone, &[back], 50.0, Op::GiveBack);
        assert_eq!(gone[0], None);
    }

    /// The hostile review of issue 15: a lease's debit left room that the refill filled while the
    /// isolate still held the tokens, so bucket plus leases exceeded the capacity (105 of 100 at once).
    #[test]
    fn a_bucket_never_refills_above_capacity_minus_what_leases_may_still_spend() {
        let fast = Spec { capacity: 100.0, rate: 100.0, ..FIVE_PER_MIN };
        let mut s = [None];
        let r = call(&mut s, &[Spec { slot_ms: 1000.0, ..leasing(fast, 40.0) }], 0.0);
        assert_eq!((r.buckets[0].leased, r.buckets[0].remaining), (40, 59));
        // Half a second later the refill would give 109: at most 100 - 40 while the lease may be spent.
        assert_eq!(call_with(&mut s, &[fast], 0.5, Op::Peek).buckets[0].remaining, 60);
        // In the next slot the lease still counts (it lives at most one slot, from any point of its own).
        assert_eq!(call_with(&mut s, &[fast], 1.2, Op::Peek).buckets[0].remaining, 60);
        // Two slots on it has ended: the bucket fills up.
        assert_eq!(call_with(&mut s, &[fast], 2.1, Op::Peek).buckets[0].remaining, 100);
        // Given back tokens are never taken away by the cap, and the refill never lowers a bucket.
        let mut s = [None];
        call(&mut s, &[Spec { slot_ms: 1000.0, ..leasing(fast, 40.0) }], 0.0);
        let r = call_with(&mut s, &[Spec { cost: 40.0, ..fast }], 0.5, Op::GiveBack);
        assert_eq!(r.buckets[0].remaining, 100);
        assert_eq!(call_with(&mut s, &[fast], 0.6, Op::Peek).buckets[0].remaining, 100);
    }

    #[test]
    fn a_denied_call_or_a_report_leases_nothing_and_a_shadow_limit_leases_when_it_pays() {
        let big = leasing(Spec { capacity: 10.0, rate: 0.001, ..FIVE_PER_MIN }, 4.0);
        let tight = Spec { capacity: 1.0, rate: 0.001, ..FIVE_PER_MIN };
        let mut s = [None, Some(State::Bucket { tokens: 0.0, last_refill: 0.0, slots: None })];
        let r = call(&mut s, &[big, tight], 0.0);
        assert_eq!((r.allowed, r.buckets[0].leased), (false, 0));
        assert_eq!(s[0], None);
        let report = Spec { mode: Mode::Report, ..big };
        let shadow = Spec { mode: Mode::Shadow, ..big };
        let mut s = [None, None];
        let r = call(&mut s, &[report, shadow], 0.0);
        assert_eq!((r.buckets[0].leased, r.buckets[1].leased), (0, 4));
        assert_eq!(tokens(&s[1]), 5.0);
    }

    #[test]
    fn a_window_leases_only_what_ends_within_it_and_gives_back_to_its_window() {
        let w = leasing(TEN_PER_MIN_WINDOW, 4.0);
        let mut s = [None];
        let r = call(&mut s, &[w], 1000.0);
        assert_eq!(r.buckets[0].leased, 4);
        let taken = r.now_ms as f64;
        let back = Spec { cost: 4.0, lease: taken, ..TEN_PER_MIN_WINDOW };
        // Same window: off the count.
        let mut same = s;
        call_with(&mut same, &[back], 1010.0, Op::GiveBack);
        assert_eq!(same[0], Some(State::Window { start: 1000.0, count: 1.0, previous: 0.0 }));
        // The next window: off the previous window's count.
        let mut next = s;
        call_with(&mut next, &[back], 1070.0, Op::GiveBack);
        assert_eq!(next[0], Some(State::Window { start: 1060.0, count: 0.0, previous: 1.0 }));
        // Two windows on, the lease has slid out: nothing to take off.
        let mut later = s;
        call_with(&mut later, &[back], 1130.0, Op::GiveBack);
        assert_eq!(later[0], Some(State::Window { start: 1120.0, count: 0.0, previous: 0.0 }));
        // 1 s before the window ends a lease of up to 1.5 s could be spent in the next: none.
        assert_eq!(call(&mut s, &[w], 1059.0).buckets[0].leased, 0);
    }

    #[test]
    fn unreadable_state_counts_as_empty() {
        let mut s = [Some(State::Bucket { tokens: f64::NAN, last_refill: 0.0, slots: None })];
        assert!(!call(&mut s, &[FIVE_PER_MIN], 0.0).allowed);
    }

    const TEN_PER_MIN_WINDOW: Spec = Spec::new(Algorithm::SlidingWindow, 10.0, 10.0 / 60.0, 1.0, Mode::Enforce);

    fn admitted(s: &mut [Option<State>; 1], spec: Spec, at: f64, tries: u32) -> u32 {
        (0..tries).filter(|_| call(s, &[spec], at).allowed).count() as u32
    }

    #[test]
    fn a_window_admits_capacity_then_weighs_the_previous_window() {
        let mut s = [None];
        assert_eq!(admitted(&mut s, TEN_PER_MIN_WINDOW, 1000.0, 15), 10);
        let r = call(&mut s, &[TEN_PER_MIN_WINDOW], 1000.0);
        // Not before the next window, and then only once the 10 weigh at most 9: 60 s + 6 s.
        assert_eq!((r.allowed, r.buckets[0].retry_ms, r.buckets[0].reset_ms), (false, 66_000, 120_000));
        // A quarter into the next window, the previous 10 weigh 7.5: two more fit, not three.
        assert_eq!(admitted(&mut s, TEN_PER_MIN_WINDOW, 1075.0, 5), 2);
        // Two windows later everything has slid out.
        assert_eq!(admitted(&mut s, TEN_PER_MIN_WINDOW, 1200.0, 15), 10);
    }

    #[test]
    fn a_burst_straddling_a_window_edge_never_admits_twice_the_limit() {
        for edge_offset in [0.001, 0.5, 3.0] {
            let mut s = [None];
            assert!(call(&mut s, &[TEN_PER_MIN_WINDOW], 1000.0).allowed); // opens the window at 1000
            let before = admitted(&mut s, TEN_PER_MIN_WINDOW, 1060.0 - edge_offset, 20);
            let after = admitted(&mut s, TEN_PER_MIN_WINDOW, 1060.0 + edge_offset, 20);
            assert_eq!(before, 9);
            // Just after the edge the previous window (10) still weighs almost fully.
            let allowed_after = (10.0 * edge_offset / 60.0_f64).floor() as u32;
            assert_eq!(after, allowed_after, "offset {edge_offset}");
            assert!(1 + before + after < 20);
        }
    }

    #[test]
    fn a_window_peek_reports_without_consuming() {
        let mut s = [None];
        let r = call_with(&mut s, &[TEN_PER_MIN_WINDOW], 1000.0, Op::Peek);
        assert_eq!((r.allowed, r.buckets[0].remaining), (true, 10));
        assert_eq!(s[0], None);
    }

    #[test]
    fn a_window_retry_is_when_the_request_fits_again() {
        let mut s = [None];
        assert_eq!(admitted(&mut s, TEN_PER_MIN_WINDOW, 1000.0, 10), 10);
        let r = call(&mut s, &[TEN_PER_MIN_WINDOW], 1030.0);
        let at = 1030.0 + r.buckets[0].retry_ms as f64 / 1000.0;
        assert!(!call(&mut s, &[TEN_PER_MIN_WINDOW], at - 0.01).allowed);
        assert!(call(&mut s, &[TEN_PER_MIN_WINDOW], at).allowed);
    }
}
