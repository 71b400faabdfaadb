//! The caller quota endpoint (`QUOTA_PATH`, off unless set): `GET {QUOTA_PATH}?method=POST&path=/x`
//! identifies the caller exactly as a request would and answers, consuming nothing, every limit that
//! request would meet — what is left now, when it is full, and how long until a request would pass —
//! as JSON and in the `RateLimit-Policy` / `RateLimit` fields. Without `method` and `path`, every
//! limit of every rule of the policy, for this caller. It only ever names the caller's own buckets (the
//! caller is who the request proves to be, never a parameter), and is limited itself: a bucket of
//! [`QUOTA_CAPACITY`] per caller, taken in the same script call that reads the others (one REST call).

use crate::http::{self, Response};
use crate::json::{self, Obj};
use crate::limiter::Failure;
use crate::policy::check::Check;
use crate::policy::limit::Limit;
use crate::store::decision::{Decision, LimitStatus};

/// Its name in the `RateLimit` fields of a 429 (and in its key, `rate:{<caller>}:@quota`).
pub(crate) const QUOTA_LIMIT: &str = "quota";

/// What a quota read asks about.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// The limits a request with this method and path (as sent: it is matched as a request is) meets.
    Request { method: String, path: String },
    /// Every limit of every rule of the policy.
    EveryRule,
}

/// Reads the endpoint's query; a `400` naming the parameter when it is wrong.
pub(crate) fn asked(query: &str, has_policy: bool) -> Result<Asked, Response> {
    let pairs = crate::ops::admin::query_pairs(query, &["method", "path"])?;
    let get = |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let bad = crate::ops::admin::bad_request;
    match (get("method"), get("path")) {
        (method, Some(path)) => {
            if !path.starts_with('/') || path.len() > 8192 {
                return Err(bad("path", "path must be a request path starting with / (at most 8192 bytes)"));
            }
            let method = method.unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(bad("method", "method must be an HTTP method such as GET or POST"));
            }
            Ok(Asked::Request { method, path })
        }
        (Some(_), None) => Err(bad("path", "give path with method (the request path to ask about)")),
        (None, None) if has_policy => Ok(Asked::EveryRule),
        (None, None) => {
            Err(bad("path", "without RATE_LIMIT_POLICY each path has a bucket of its own: give path (and method)"))
        }
    }
}

/// The answer when no limit applies (allow-listed, or no rule for that method and path): nothing to read.
pub(crate) fn unlimited() -> Response {
    Response::json(200, r#"{"allowed_now":true,"limits":[]}"#.to_string())
}

/// The check of the endpoint's own bucket for the caller `subject`.
pub(crate) fn own_check<'c>(subject: &str, limit: &'c Limit) -> Check<'c> {
    Check {
        key: format!("rate:{{{subject}}}:@quota"),
        name: QUOTA_LIMIT,
        limit,
        cost: 1,
        mode: crate::policy::check::Mode::Enforce,
        rule: QUOTA_LIMIT,
        overrides: Vec::new(),
    }
}

/// The answer once the script spoke: `decision.limits[0]` is the endpoint's own bucket, the rest are
/// `listed` (reported, not consumed).
pub(crate) fn answer(listed: &[Check<'_>], decision: Result<Decision, Failure>) -> Response {
    let decision = match decision {
        Ok(d) => d,
        Err(f) => {
            return http::problem(
                503,
                "limiter-unavailable",
                "Service Unavailable",
                &format!("The quota cannot be read right now ({}); try again shortly.", f.reason()),
            )
            .with("retry-after", "1")
        }
    };
    let mut limits = decision.limits;
    let own = limits.remove(0);
    if decision.denied_by == Some(0) {
        let denied = Decision { allowed: false, denied_by: Some(0), limits: vec![own] };
        return match http::answer(&crate::limiter::Outcome::Denied(denied)) {
            http::Answer::Respond(r) => r,
            http::Answer::Forward(_) => http::not_found(),
        };
    }
    let passes = listed.iter().zip(&limits).all(|(c, l)| c.shadow() || l.retry_ms == 0);
    let items = json::array(listed.iter().zip(&limits).map(|(c, l)| http::limit_json(c, l, false)));
    let body = Obj::new().bool("allowed_now", passes).raw("limits", &items).finish();
    let mut response = Response::json(200, body);
    // The fields a request would carry, of the state now (nothing was taken); shadow limits as the
    // policy says (the script saw every listed limit as reported only).
    let limits = limits.into_iter().zip(listed).map(|(l, c)| LimitStatus { shadow: c.shadow(), ..l }).collect();
    let state = Decision { allowed: true, denied_by: None, limits };
    for (name, value) in http::rate_limit_headers(&state) {
        if name == "ratelimit-policy" || name == "ratelimit" {
            response.headers.push((name, value));
        }
    }
    response
}
