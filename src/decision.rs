//! What the limiter decided, and how that is told to the client: the IETF
//! `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers,
//! structured-field syntax), `Retry-After`, and RFC 9457 problem bodies.
//! Every response header the gateway adds is rendered here.

use std::fmt::Write;

use crate::json::Obj;
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
        if reply.len() != 2 + 5 * limits.len() {
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
            .zip(reply[2..].chunks_exact(5))
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

/// The `RateLimit-Policy` and `RateLimit` field values (and `Retry-After` when denied).
pub fn rate_limit_headers(decision: &Decision) -> Vec<(&'static str, String)> {
    let mut policy = String::new();
    for l in decision.limits.iter().filter(|l| !l.shadow) {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        let _ = write!(policy, "\"{}\";q={};w={}", l.policy, l.capacity, l.window_s.min(MAX_SF_INTEGER));
    }
    let mut headers = Vec::with_capacity(4);
    if !policy.is_empty() {
        headers.push(("RateLimit-Policy", policy));
    }
    if let Some(l) = decision.most_restrictive().filter(|l| !l.shadow) {
        let (r, t) = (l.remaining.min(MAX_SF_INTEGER), l.reset_ms.div_ceil(1000).min(MAX_SF_INTEGER));
        headers.push(("RateLimit", format!("\"{}\";r={r};t={t}", l.policy)));
    }
    if !decision.allowed {
        headers.push(("Retry-After", decision.retry_after_s().to_string()));
    }
    if let Some(l) = decision.shadow_denial() {
        headers.push(("X-RateLimit-Status", format!("shadow; limit=\"{}\"", l.policy)));
    }
    headers
}

/// An RFC 9457 problem body; its type is `urn:edge-ratelimit:problem:<kind>` (the README lists
/// the kinds). No internal detail is ever put in `detail`.
pub fn problem_json(kind: &str, title: &str, status: u16, detail: &str) -> String {
    problem(kind, title, status, detail).finish()
}

/// [`problem_json`] still open for extension members (the admin API adds `field`).
pub fn problem(kind: &str, title: &str, status: u16, detail: &str) -> Obj {
    Obj::new()
        .str("type", &format!("urn:edge-ratelimit:problem:{kind}"))
        .str("title", title)
        .int("status", status)
        .str("detail", detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Refill;

    fn limit() -> Limit {
        Limit::new(5, Refill::parse("5/min").unwrap(), 60).unwrap()
    }

    #[test]
    fn allowed_decision_renders_policy_and_remaining() {
        let l = limit();
        let d = Decision::from_script(&[1, 0, 4, 0, 12_000, 5, 60], &[("default", &l, false)]).unwrap();
        assert!(d.allowed);
        assert_eq!(
            rate_limit_headers(&d),
            vec![
                ("RateLimit-Policy", "\"default\";q=5;w=60".to_string()),
                ("RateLimit", "\"default\";r=4;t=12".to_string())
            ]
        );
    }

    #[test]
    fn denied_decision_adds_retry_after_in_whole_seconds_at_least_one() {
        let l = limit();
        let d = Decision::from_script(&[0, 1, 0, 11_001, 59_000, 5, 60], &[("default", &l, false)]).unwrap();
        let h = rate_limit_headers(&d);
        assert_eq!(h[1], ("RateLimit", "\"default\";r=0;t=59".to_string()));
        assert_eq!(h[2], ("Retry-After", "12".to_string()));
        let d = Decision::from_script(&[0, 1, 0, 1, 1, 5, 60], &[("default", &l, false)]).unwrap();
        assert_eq!(d.retry_after_s(), 1);
    }

    #[test]
    fn several_limits_report_the_one_that_denied() {
        let (a, b) = (limit(), Limit::new(100, Refill::parse("100/h").unwrap(), 60).unwrap());
        let d = Decision::from_script(
            &[0, 2, 3, 0, 24_000, 5, 60, 0, 30_000, 3_600_000, 100, 3600],
            &[("user", &a, false), ("api", &b, false)],
        )
        .unwrap();
        let h = rate_limit_headers(&d);
        assert_eq!(h[0].1, "\"user\";q=5;w=60, \"api\";q=100;w=3600");
        assert_eq!(h[1].1, "\"api\";r=0;t=3600");
        assert_eq!(h[2].1, "30");
        let d = Decision::from_script(
            &[1, 0, 3, 0, 24_000, 5, 60, 50, 0, 1000, 100, 3600],
            &[("user", &a, false), ("api", &b, false)],
        )
        .unwrap();
        assert_eq!(rate_limit_headers(&d)[1].1, "\"user\";r=3;t=24");
    }

    #[test]
    fn shadow_limits_are_not_advertised_but_marked_when_they_would_deny() {
        let (a, b) = (limit(), limit());
        let d = Decision::from_script(
            &[1, 0, 0, 12_000, 60_000, 5, 60, 3, 0, 24_000, 5, 60],
            &[("trial", &a, true), ("user", &b, false)],
        )
        .unwrap();
        let h = rate_limit_headers(&d);
        assert_eq!(h[0].1, "\"user\";q=5;w=60");
        assert_eq!(h[1].1, "\"user\";r=3;t=24");
        assert_eq!(h[2], ("X-RateLimit-Status", "shadow; limit=\"trial\"".to_string()));
    }

    #[test]
    fn an_override_shows_in_the_policy_field() {
        let l = limit();
        let d = Decision::from_script(&[1, 0, 99, 0, 600, 100, 60], &[("default", &l, false)]).unwrap();
        assert_eq!(rate_limit_headers(&d)[0].1, "\"default\";q=100;w=60");
    }

    /// Issue 10, item 11: 18-digit numbers from Redis went into the RateLimit fields as they came,
    /// beyond the 15-digit integers of RFC 9651 structured fields.
    #[test]
    fn every_number_in_a_header_is_a_structured_field_integer() {
        let l = limit();
        let huge = 999_999_999_999_999_999;
        for reply in
            [[0, 1, huge, huge, huge, huge, huge], [1, 0, huge, 0, huge, huge, huge], [0, 1, -huge, -1, -5, 0, 0]]
        {
            let d = Decision::from_script(&reply, &[("default", &l, false)]).unwrap();
            for (name, value) in rate_limit_headers(&d) {
                for number in value.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()) {
                    assert!(number.len() <= 15, "{name}: {value} for {reply:?}");
                }
            }
        }
    }

    #[test]
    fn inconsistent_script_replies_are_malformed() {
        let l = limit();
        for reply in [
            &[][..],
            &[1, 0, 4, 0, 0][..],
            &[2, 0, 4, 0, 0, 5, 60][..],
            &[1, 1, 4, 0, 0, 5, 60][..],
            &[0, 0, 4, 0, 0, 5, 60][..],
            &[0, 2, 4, 0, 0, 5, 60][..],
        ] {
            assert!(
                matches!(Decision::from_script(reply, &[("default", &l, false)]), Err(RestError::Malformed(_))),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn problem_body_is_rfc9457() {
        let v: serde_json::Value =
            serde_json::from_str(&problem_json("rate-limited", "Too Many Requests", 429, "x")).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["title"], "Too Many Requests");
        assert_eq!(v["type"], "urn:edge-ratelimit:problem:rate-limited");
    }
}
