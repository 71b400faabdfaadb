//! What the limiter decided, per limit, as the script (or the local bucket) said it; `crate::http`
//! renders it.

use crate::bucket::PER_LIMIT;
use crate::limit::Limit;
use crate::upstash::RestError;

/// The largest integer of an RFC 9651 structured field (15 digits); every number the gateway puts in a
/// header is clamped to it.
pub const MAX_SF_INTEGER: u64 = 999_999_999_999_999;

/// One limit's state after a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Policy name, a `[A-Za-z0-9_.-]` identifier.
    pub policy: String,
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
    /// Decodes the script's integer reply for `limits` (policy name, limit, shadow).
    pub fn from_script(reply: &[i64], limits: &[(&str, &Limit, bool)]) -> Result<Decision, RestError> {
        let malformed =
            || RestError::Malformed(format!("script returned {} integers for {} limits", reply.len(), limits.len()));
        if reply.len() != 3 + PER_LIMIT * limits.len() {
            return Err(malformed());
        }
        let allowed = match reply[0] {
            1 => true,
            0 => false,
            _ => return Err(malformed()),
        };
        let denied_by = match (allowed, reply[1]) {
            (true, 0) => None,
            (false, i) if i >= 1 && (i as usize) <= limits.len() => Some(i as usize - 1),
            _ => return Err(malformed()),
        };
        // Whatever Redis sent, every number stays a structured-field integer (at most 15 digits).
        let int = |v: i64, min: i64| v.clamp(min, MAX_SF_INTEGER as i64) as u64;
        let limits = limits
            .iter()
            .zip(reply[2..].chunks_exact(PER_LIMIT))
            .map(|((policy, _limit, shadow), v)| LimitStatus {
                policy: policy.to_string(),
                shadow: *shadow,
                // What the script had in effect: an override may have replaced the policy's numbers.
                capacity: v[3].clamp(1, i64::from(u32::MAX)) as u32,
                window_s: int(v[4], 1),
                remaining: int(v[0], 0),
                retry_ms: int(v[1], 0),
                reset_ms: int(v[2], 0),
            })
            .collect();
        Ok(Decision { allowed, denied_by, limits })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Refill;

    fn limit() -> Limit {
        Limit::new(5, Refill::parse("5/min").unwrap(), 60).unwrap()
    }

    #[test]
    fn every_number_from_the_script_is_kept_within_a_structured_field_integer() {
        let l = limit();
        let huge = i64::MAX;
        let d = Decision::from_script(&[0, 1, huge, huge, huge, huge, huge, huge, huge], &[("default", &l, false)])
            .unwrap();
        let s = &d.limits[0];
        for n in [s.remaining, s.retry_ms, s.reset_ms, s.window_s] {
            assert!(n <= MAX_SF_INTEGER, "{n}");
        }
        let d = Decision::from_script(&[0, 1, -5, -5, -5, -5, -5, -5, -5], &[("default", &l, false)]).unwrap();
        assert_eq!((d.limits[0].remaining, d.limits[0].capacity, d.limits[0].window_s), (0, 1, 1));
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
            assert!(
                matches!(Decision::from_script(reply, &[("default", &l, false)]), Err(RestError::Malformed(_))),
                "{reply:?}"
            );
        }
    }
}
