//! What the limiter decided, per limit, as the script (or the local bucket) said it; `crate::http`
//! renders it.

use crate::policy::check::Check;
use crate::policy::limit::{Algorithm, Limit, MAX_CAPACITY, MAX_WINDOW_SECONDS};
use crate::store::bucket::{MIN_GRANT, PER_LIMIT};
use crate::store::upstash::RestError;

/// The largest integer of an RFC 9651 structured field (15 digits); every number the gateway puts in a
/// header is clamped to it.
pub const MAX_SF_INTEGER: u64 = 999_999_999_999_999;

/// The latest script time a reply may carry (epoch ms): the largest integer a double holds exactly.
pub(crate) const MAX_SCRIPT_MS: i64 = (1 << 53) - 1;

/// What one call asked of one limit. A reply is never taken on trust: every number it carries for the
/// limit is bounded by what was asked (a lease by the tokens wanted and the share of the capacity, the
/// tokens left by the capacity, the times by the window), and a reply out of bounds is malformed — the
/// fail mode's answer, never a decision.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    /// The limit's name (as in `RateLimit-Policy`).
    pub name: &'a str,
    pub limit: &'a Limit,
    /// It never denies (shadow, a candidate's, or only reported).
    pub shadow: bool,
    /// The cost the call decided (0 for calls that decide nothing: give-backs, settlements, renewals
    /// pay none).
    pub cost: u32,
    /// Lease tokens asked beyond the cost (0: none), and the most of the capacity in effect one grant
    /// may take.
    pub want: u64,
    pub share: f64,
    /// An override may have replaced the limit's numbers (the call names override keys); otherwise
    /// the reply must show the limit's own capacity.
    pub overridable: bool,
}

impl<'a> Asked<'a> {
    /// A limit asked at `cost`, without a lease, whose numbers an override may have replaced.
    pub fn new(name: &'a str, limit: &'a Limit, shadow: bool, cost: u32) -> Asked<'a> {
        Asked { name, limit, shadow, cost, want: 0, share: 0.0, overridable: true }
    }

    /// What a call deciding `check` asked: its cost, and `want` lease tokens of at most `share` of the
    /// capacity in effect.
    pub fn of(check: &Check<'a>, want: u64, share: f64) -> Asked<'a> {
        Asked {
            want,
            share,
            overridable: !check.overrides.is_empty(),
            ..Asked::new(check.name, check.limit, check.shadow(), check.cost)
        }
    }
}

/// One limit's state after a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// The limit's name, a `[A-Za-z0-9_.-]` identifier.
    pub name: String,
    /// A shadow limit: reported in logs and `X-RateLimit-Status`, never in the RateLimit fields.
    pub shadow: bool,
    pub capacity: u32,
    /// Seconds for an empty bucket to become full.
    pub window_s: u64,
    pub remaining: u64,
    /// Milliseconds until this limit could pay the request's cost (0: it can now).
    pub retry_ms: u64,
    /// Milliseconds until this bucket is full again.
    pub reset_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Index into `limits` of the limit that denied.
    pub denied_by: Option<usize>,
    pub limits: Vec<LimitStatus>,
}

impl Decision {
    /// Decodes the script's integer reply for `limits`, each number checked against what was asked.
    pub fn from_script(reply: &[i64], limits: &[Asked<'_>]) -> Result<Decision, RestError> {
        let malformed = |why: String| RestError::Malformed(format!("script reply: {why}"));
        if reply.len() != 3 + PER_LIMIT * limits.len() {
            return Err(malformed(format!("{} integers for {} limits", reply.len(), limits.len())));
        }
        let allowed = match reply[0] {
            1 => true,
            0 => false,
            v => return Err(malformed(format!("allowed is {v}"))),
        };
        let denied_by = match (allowed, reply[1]) {
            (true, 0) => None,
            // Only an enforcing limit denies.
            (false, i) if i >= 1 && (i as usize) <= limits.len() && !limits[i as usize - 1].shadow => {
                Some(i as usize - 1)
            }
            (_, i) => return Err(malformed(format!("allowed {} with denied_by {i}", reply[0]))),
        };
        let now = reply[reply.len() - 1];
        if !(1..=MAX_SCRIPT_MS).contains(&now) {
            return Err(malformed(format!("the script's time is {now}")));
        }
        for (i, (asked, v)) in limits.iter().zip(reply[2..].chunks_exact(PER_LIMIT)).enumerate() {
            within(asked, v, allowed, denied_by == Some(i))
                .map_err(|why| malformed(format!("limit {}: {why}", i + 1)))?;
        }
        // Every number stays a structured-field integer (at most 15 digits).
        let int = |v: i64| v.clamp(0, MAX_SF_INTEGER as i64) as u64;
        let limits = limits
            .iter()
            .zip(reply[2..].chunks_exact(PER_LIMIT))
            .map(|(asked, v)| LimitStatus {
                name: asked.name.to_string(),
                shadow: asked.shadow,
                // What the script had in effect: an override may have replaced the policy's numbers.
                capacity: v[3] as u32,
                window_s: int(v[4]),
                remaining: int(v[0]),
                retry_ms: int(v[1]),
                reset_ms: int(v[2]),
            })
            .collect();
        Ok(Decision { allowed, denied_by, limits })
    }

    /// Checks the script's reply to a call that settled (op `settle_once`: exactly once, so a first
    /// element of 0 says the request was settled before) or gave back `limits`: whether it was a
    /// repeat. A reply out of bounds is malformed.
    pub fn settled(reply: &[i64], limits: &[Asked<'_>], settle_once: bool) -> Result<bool, RestError> {
        if settle_once && reply.len() == 3 + PER_LIMIT * limits.len() && reply[0] == 0 {
            let now = reply[reply.len() - 1];
            if reply[1..reply.len() - 1].iter().all(|&v| v == 0) && (1..=MAX_SCRIPT_MS).contains(&now) {
                return Ok(true);
            }
            return Err(RestError::Malformed("script reply: a repeated settlement with numbers".into()));
        }
        let d = Decision::from_script(reply, limits)?;
        if !d.allowed {
            return Err(RestError::Malformed("script reply: a settlement denied".into()));
        }
        Ok(false)
    }

    /// The limit the `RateLimit` field reports: the one that denied, else the enforcing one with
    /// the fewest tokens left.
    pub fn most_restrictive(&self) -> Option<&LimitStatus> {
        match self.denied_by {
            Some(i) => self.limits.get(i),
            None => self.limits.iter().filter(|l| !l.shadow).min_by_key(|l| l.remaining),
        }
    }

    /// The first shadow limit that would have denied this request.
    pub fn shadow_denial(&self) -> Option<&LimitStatus> {
        self.limits.iter().find(|l| l.shadow && l.retry_ms > 0)
    }

    /// Whole seconds for `Retry-After` (≥ 1) when denied.
    pub fn retry_after_s(&self) -> u64 {
        let ms = self.most_restrictive().map_or(1000, |l| l.retry_ms);
        ms.div_ceil(1000).clamp(1, MAX_SF_INTEGER)
    }
}

/// Whether one limit's six numbers (`remaining`, `retry_ms`, `reset_ms`, `capacity`, `window_s`,
/// `leased`) are within what the script can say for what was asked (`lua/ratelimit.lua`'s reply).
fn within(asked: &Asked<'_>, v: &[i64], allowed: bool, denying: bool) -> Result<(), String> {
    let &[remaining, retry, reset, capacity, window, leased] = v else {
        return Err("not six numbers".into());
    };
    if !(1..=i64::from(MAX_CAPACITY)).contains(&capacity) {
        return Err(format!("capacity {capacity}"));
    }
    if !asked.overridable && capacity != i64::from(asked.limit.capacity()) {
        return Err(format!("capacity {capacity} where the limit has {} and no override", asked.limit.capacity()));
    }
    if !(1..=MAX_WINDOW_SECONDS as i64).contains(&window) {
        return Err(format!("window {window} s"));
    }
    if remaining > capacity {
        return Err(format!("{remaining} tokens left of a capacity of {capacity}"));
    }
    if retry < 0 || reset < 0 {
        return Err(format!("retry {retry} ms, reset {reset} ms"));
    }
    if denying && retry == 0 {
        return Err("it denied with nothing to wait for".into());
    }
    if asked.limit.is_concurrency() {
        // Slots: when one frees is unknown, so a second; and never leased.
        if window != 1 || !matches!(retry, 0 | 1000) || !matches!(reset, 0 | 1000) || leased != 0 {
            return Err(format!("slots with window {window}, retry {retry}, reset {reset}, leased {leased}"));
        }
        return Ok(());
    }
    // Times by the window: a token takes at most window / capacity to refill (the window in effect
    // is ceil(capacity / rate)), and a bucket in debt waits for its debt too; a sliding window is full
    // again within two windows, and pays any cost within 2 + cost windows. (Slack for the doubles.)
    let (c, w, k) = (capacity as f64, window as f64 * 1000.0, f64::from(asked.cost));
    let debt = (-remaining).max(0) as f64;
    let (retry_max, reset_max) = match asked.limit.algorithm() {
        Algorithm::SlidingWindow => ((2.0 + k) * w, 2.0 * w),
        // (the window's end; a charge beyond the capacity is paid when the window ends too)
        Algorithm::FixedWindow => (w, w),
        _ => ((k + debt) * w / c, (c + debt) * w / c),
    };
    let slack = |x: f64| x + x * 1e-9 + 2.0;
    if retry as f64 > slack(retry_max) || reset as f64 > slack(reset_max) {
        return Err(format!("retry {retry} ms, reset {reset} ms beyond a window of {window} s"));
    }
    // A lease: granted only on an allowed call, at least MIN_GRANT, at most what was asked, the share
    // of the capacity in effect and half of what was left after the cost (so never above what is left).
    if leased != 0 {
        let share_cap = (c * asked.share).floor();
        if !allowed
            || leased < MIN_GRANT as i64
            || leased as u64 > asked.want
            || leased as f64 > share_cap
            || leased > remaining
        {
            return Err(format!(
                "a lease of {leased} tokens ({} asked, {share_cap} the share, {remaining} left, allowed {allowed})",
                asked.want
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate::Refill;

    fn limit() -> Limit {
        Limit::new(5, Refill::parse("5/min").unwrap(), 60).unwrap()
    }

    fn asked(l: &Limit) -> Asked<'_> {
        Asked::new("default", l, false, 1)
    }

    /// A lease of up to `want` tokens asked of a limit without overrides, at most half its capacity.
    fn leasing(l: &Limit, want: u64) -> Asked<'_> {
        Asked { want, share: 0.5, overridable: false, ..asked(l) }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_reply_within_bounds_is_a_decision() {
        let l = Limit::new(400, Refill::parse("400/min").unwrap(), 60).unwrap();
        // 400 full, cost 1, a lease of 100: 299 left.
        let d = Decision::from_script(&[1, 0, 299, 0, 15_150, 400, 60, 100, NOW], &[leasing(&l, 100)]).unwrap();
        assert_eq!((d.allowed, d.limits[0].remaining, d.limits[0].capacity), (true, 299, 400));
        let d = Decision::from_script(&[0, 1, 0, 150, 60_000, 400, 60, 0, NOW], &[leasing(&l, 100)]).unwrap();
        assert_eq!((d.denied_by, d.limits[0].retry_ms), (Some(0), 150));
        // In debt (a settled cost charged more than there was): longer waits, still bounded.
        let d = Decision::from_script(&[0, 1, -400, 60_150, 120_000, 400, 60, 0, NOW], &[asked(&l)]).unwrap();
        assert_eq!(d.limits[0].remaining, 0);
        // Deep in debt, times beyond 15 digits: each kept a structured-field integer.
        let far = 1_500_000_000_000_000_000;
        let d =
            Decision::from_script(&[0, 1, -10_000_000_000_000_000, far, far, 400, 60, 0, NOW], &[asked(&l)]).unwrap();
        assert_eq!((d.limits[0].retry_ms, d.limits[0].reset_ms), (MAX_SF_INTEGER, MAX_SF_INTEGER));
    }

    #[test]
    fn a_lease_beyond_what_was_asked_is_malformed() {
        let l = Limit::new(400, Refill::parse("400/min").unwrap(), 60).unwrap();
        for (reply, why) in [
            (vec![1, 0, 399, 0, 150, 400, 60, 1_000_000, NOW], "more than asked"),
            (vec![1, 0, 299, 0, 150, 400, 60, 101, NOW], "one more than asked"),
            (vec![1, 0, 2, 0, 150, 400, 60, 100, NOW], "more than is left"),
            (vec![0, 1, 200, 150, 150, 400, 60, 100, NOW], "granted on a denial"),
            (vec![1, 0, 299, 0, 150, 400, 60, 3, NOW], "below the smallest grant"),
            (vec![1, 0, 299, 0, 150, 400, 60, -1, NOW], "negative"),
        ] {
            let r = Decision::from_script(&reply, &[leasing(&l, 100)]);
            assert!(matches!(r, Err(RestError::Malformed(_))), "{why}: {r:?}");
        }
        // Not asked at all, and beyond the share of the capacity in effect.
        let r = Decision::from_script(&[1, 0, 299, 0, 150, 400, 60, 100, NOW], &[asked(&l)]);
        assert!(matches!(r, Err(RestError::Malformed(_))), "{r:?}");
        let r =
            Decision::from_script(&[1, 0, 200, 0, 150, 400, 60, 100, NOW], &[Asked { share: 0.2, ..leasing(&l, 100) }]);
        assert!(matches!(r, Err(RestError::Malformed(_))), "{r:?}");
        let r =
            Decision::from_script(&[1, 0, 200, 0, 150, 400, 60, 80, NOW], &[Asked { share: 0.2, ..leasing(&l, 100) }]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn remaining_capacity_windows_and_times_out_of_bounds_are_malformed() {
        let l = limit();
        let fixed = Asked { overridable: false, ..asked(&l) };
        for (reply, a, why) in [
            (vec![1, 0, 6, 0, 0, 5, 60, 0, NOW], asked(&l), "more left than the capacity"),
            (vec![1, 0, 4, 0, 0, 0, 60, 0, NOW], asked(&l), "capacity 0"),
            (vec![1, 0, 4, 0, 0, 1_000_000_001, 60, 0, NOW], asked(&l), "capacity above the largest"),
            (vec![1, 0, 4, 0, 0, 6, 60, 0, NOW], fixed, "capacity changed with no override"),
            (vec![1, 0, 4, 0, 0, 5, 0, 0, NOW], asked(&l), "window 0"),
            (vec![1, 0, 4, 0, 0, 5, 3_153_600_001, 0, NOW], asked(&l), "window above 100 years"),
            (vec![1, 0, 4, -1, 0, 5, 60, 0, NOW], asked(&l), "negative retry"),
            (vec![1, 0, 4, 0, -1, 5, 60, 0, NOW], asked(&l), "negative reset"),
            (vec![1, 0, 4, 0, 60_003, 5, 60, 0, NOW], asked(&l), "full later than a window"),
            (vec![0, 1, 0, 12_003, 60_000, 5, 60, 0, NOW], asked(&l), "retry beyond a token's refill"),
            (vec![0, 1, 0, 0, 60_000, 5, 60, 0, NOW], asked(&l), "denied with no wait"),
            (vec![1, 0, 4, 0, 0, 5, 60, 0, 0], asked(&l), "no script time"),
            (vec![1, 0, 4, 0, 0, 5, 60, 0, MAX_SCRIPT_MS + 1], asked(&l), "a time no double holds"),
        ] {
            let r = Decision::from_script(&reply, &[a]);
            assert!(matches!(r, Err(RestError::Malformed(_))), "{why}: {r:?}");
        }
        // The bounds themselves hold.
        assert!(Decision::from_script(&[1, 0, 5, 0, 60_000, 5, 60, 0, NOW], &[fixed]).is_ok());
        assert!(Decision::from_script(&[0, 1, 0, 12_000, 60_000, 5, 60, 0, NOW], &[fixed]).is_ok());
        assert!(Decision::from_script(&[1, 0, 4, 0, 0, 5, 60, 0, MAX_SCRIPT_MS], &[fixed]).is_ok());
    }

    #[test]
    fn slot_replies_out_of_bounds_are_malformed() {
        let l = Limit::concurrency(3, 60).unwrap();
        let a = asked(&l);
        assert!(Decision::from_script(&[0, 1, 0, 1000, 1000, 3, 1, 0, NOW], &[a]).is_ok());
        for reply in [
            [0, 1, 0, 2000, 1000, 3, 1, 0, NOW],
            [1, 0, 2, 0, 5, 3, 1, 0, NOW],
            [1, 0, 2, 0, 0, 3, 2, 0, NOW],
            [1, 0, 2, 0, 0, 3, 1, 4, NOW],
            [1, 0, 4, 0, 0, 3, 1, 0, NOW],
        ] {
            assert!(matches!(Decision::from_script(&reply, &[a]), Err(RestError::Malformed(_))), "{reply:?}");
        }
    }

    #[test]
    fn settle_replies_are_checked_too() {
        let l = limit();
        let a = [asked(&l)];
        assert_eq!(Decision::settled(&[1, 0, 3, 0, 24_000, 5, 60, 0, NOW], &a, true), Ok(false));
        assert_eq!(Decision::settled(&[0, 0, 0, 0, 0, 0, 0, 0, NOW], &a, true), Ok(true));
        for (reply, once) in [
            (&[0, 0, 0, 0, 0, 0, 0, 0, NOW][..], false), // a repeat only exists exactly once
            (&[0, 1, 0, 1, 24_000, 5, 60, 0, NOW][..], false), // a settlement denied
            (&[0, 0, 3, 0, 0, 0, 0, 0, NOW][..], true),  // a repeat with numbers
            (&[0, 1, 0, 1, 24_000, 5, 60, 0, NOW][..], true), // a settlement denied
            (&[1, 0, 3, 0, 24_000, 5, 60, 4, NOW][..], true), // a lease nobody asked for
            (&[1, 0, 3, 0, 24_000, 5, 60, 0][..], true), // too short
        ] {
            assert!(matches!(Decision::settled(reply, &a, once), Err(RestError::Malformed(_))), "{reply:?}");
        }
    }

    #[test]
    fn only_an_enforcing_limit_denies() {
        let l = limit();
        let shadow = Asked::new("s", &l, true, 1);
        let r = Decision::from_script(&[0, 1, 0, 12_000, 60_000, 5, 60, 0, NOW], &[shadow]);
        assert!(matches!(r, Err(RestError::Malformed(_))), "{r:?}");
    }

    #[test]
    fn inconsistent_script_replies_are_malformed() {
        let l = limit();
        for reply in [
            &[][..],
            &[1, 0, 4, 0, 0][..],
            &[1, 0, 4, 0, 0, 5, 60, 0][..],
            &[2, 0, 4, 0, 0, 5, 60, 0, 1][..],
            &[1, 1, 4, 0, 0, 5, 60, 0, 1][..],
            &[0, 0, 4, 0, 0, 5, 60, 0, 1][..],
            &[0, 2, 4, 0, 0, 5, 60, 0, 1][..],
        ] {
            assert!(matches!(Decision::from_script(reply, &[asked(&l)]), Err(RestError::Malformed(_))), "{reply:?}");
        }
    }
}
