//! The token bucket in Rust: the same arithmetic, in the same order, as
//! `lua/token_bucket.lua`, so a test can demand bit-for-bit agreement on
//! random request sequences. Redis is the only source of truth; the Worker
//! runs this only as the per-isolate bucket that bounds fail-open traffic
//! while Redis cannot decide.

/// One bucket's stored state (the hash fields `tokens` and `lastRefill`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct State {
    pub tokens: f64,
    pub last_refill: f64,
}

/// One bucket's parameters for one call (ARGV of the script).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub capacity: f64,
    pub rate: f64,
    pub cost: f64,
    /// A shadow bucket never denies; it is debited only when it can pay.
    pub shadow: bool,
}

/// What the script returns for one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketReply {
    pub remaining: i64,
    pub retry_ms: i64,
    pub reset_ms: i64,
}

/// What the script returns for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub allowed: bool,
    /// 1-based index of the first bucket short of tokens; 0 when allowed.
    pub denied_by: usize,
    pub buckets: Vec<BucketReply>,
}

impl Reply {
    /// The reply as the script's flat integer array.
    pub fn to_flat(&self) -> Vec<i64> {
        let mut out = vec![i64::from(self.allowed), self.denied_by as i64];
        for b in &self.buckets {
            out.extend([b.remaining, b.retry_ms, b.reset_ms]);
        }
        out
    }
}

/// Runs one all-or-nothing call at `now` (epoch seconds) against `states`
/// (`None` = no such key), updating them as the script would.
pub fn call(states: &mut [Option<State>], specs: &[Spec], now: f64) -> Reply {
    debug_assert_eq!(states.len(), specs.len(), "one spec per bucket");
    let mut levels = Vec::with_capacity(specs.len());
    let mut denied_by = 0;
    for (i, (state, spec)) in states.iter().zip(specs).enumerate() {
        let (tokens, t) = match state {
            None => (spec.capacity, now),
            Some(s) if s.tokens.is_nan() || s.last_refill.is_nan() => (0.0, now),
            Some(s) => {
                let t = if now < s.last_refill { s.last_refill } else { now };
                (spec.capacity.min(s.tokens + (t - s.last_refill) * spec.rate), t)
            }
        };
        levels.push((tokens, t));
        if denied_by == 0 && tokens < spec.cost && !spec.shadow {
            denied_by = i + 1;
        }
    }
    let mut buckets = Vec::with_capacity(specs.len());
    for ((state, spec), (mut tokens, t)) in states.iter_mut().zip(specs).zip(levels) {
        let retry = if tokens < spec.cost { ((spec.cost - tokens) / spec.rate * 1000.0).ceil() } else { 0.0 };
        if denied_by == 0 && tokens >= spec.cost {
            tokens -= spec.cost;
            *state = Some(State { tokens, last_refill: t });
        }
        buckets.push(BucketReply {
            remaining: tokens.floor() as i64,
            retry_ms: retry as i64,
            reset_ms: ((spec.capacity - tokens) / spec.rate * 1000.0).ceil() as i64,
        });
    }
    Reply { allowed: denied_by == 0, denied_by, buckets }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_PER_MIN: Spec = Spec { capacity: 5.0, rate: 5.0 / 60.0, cost: 1.0, shadow: false };

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
        assert_eq!(r.buckets[0], BucketReply { remaining: 0, retry_ms: 12_000, reset_ms: 60_000 });
    }

    #[test]
    fn tokens_refill_fractionally_and_cap_at_capacity() {
        let mut s = [Some(State { tokens: 0.0, last_refill: 100.0 })];
        let r = call(&mut s, &[FIVE_PER_MIN], 106.0); // half a token
        assert!(!r.allowed);
        assert_eq!(r.buckets[0].retry_ms, 6_000);
        let r = call(&mut s, &[FIVE_PER_MIN], 112.0);
        assert!(r.allowed);
        assert_eq!(s[0].unwrap().tokens, 0.0);
        let r = call(&mut s, &[FIVE_PER_MIN], 10_000.0);
        assert_eq!(r.buckets[0].remaining, 4);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut s = [Some(State { tokens: 1.0, last_refill: 500.0 })];
        let r = call(&mut s, &[FIVE_PER_MIN], 470.0); // a clock 30 s behind
        assert!(r.allowed);
        assert_eq!(s[0].unwrap(), State { tokens: 0.0, last_refill: 500.0 });
    }

    #[test]
    fn all_or_nothing_across_buckets() {
        let tight = Spec { capacity: 1.0, rate: 1.0, cost: 1.0, shadow: false };
        let mut s = [None, Some(State { tokens: 0.0, last_refill: 10.0 })];
        let r = call(&mut s, &[FIVE_PER_MIN, tight], 10.0);
        assert_eq!((r.allowed, r.denied_by), (false, 2));
        assert_eq!(s[0], None, "a denied call debits nothing");
        assert_eq!(r.to_flat(), vec![0, 2, 5, 0, 0, 0, 1000, 1000]);
    }

    #[test]
    fn cost_above_what_is_left_is_denied_without_debit() {
        let mut s = [Some(State { tokens: 3.0, last_refill: 0.0 })];
        let big = Spec { cost: 4.0, ..FIVE_PER_MIN };
        let r = call(&mut s, &[big], 0.0);
        assert!(!r.allowed);
        assert_eq!(s[0].unwrap().tokens, 3.0);
        assert_eq!(r.buckets[0].retry_ms, 12_000);
    }

    #[test]
    fn a_shadow_bucket_never_denies_and_pays_only_when_it_can() {
        let shadow = Spec { capacity: 1.0, rate: 1.0, cost: 1.0, shadow: true };
        let mut s = [Some(State { tokens: 0.0, last_refill: 0.0 }), None];
        let r = call(&mut s, &[shadow, FIVE_PER_MIN], 0.0);
        assert_eq!((r.allowed, r.denied_by), (true, 0));
        assert_eq!(r.buckets[0].retry_ms, 1000, "it would have denied");
        assert_eq!(s[0].unwrap().tokens, 0.0, "not debited below zero");
        assert_eq!(s[1].unwrap().tokens, 4.0);
    }

    #[test]
    fn unreadable_state_counts_as_empty() {
        let mut s = [Some(State { tokens: f64::NAN, last_refill: 0.0 })];
        assert!(!call(&mut s, &[FIVE_PER_MIN], 0.0).allowed);
    }
}
