//! The gateway's answers as plain data, and the one place they are rendered: every response the
//! gateway makes itself (a 429, a 503, a problem, an admin answer, the 502 for an unreachable origin)
//! and every header it adds to the origin's response (the IETF `RateLimit-Policy` / `RateLimit`
//! fields, `Retry-After`, `X-RateLimit-Status`). Problem bodies are RFC 9457 JSON and never carry
//! internal detail; numbers in headers are RFC 9651 integers.

use crate::identity::caller::IdentityError;
use crate::identity::jwt::JwtError;
use crate::json::{push_u64, Obj};
use crate::limiter::{Failure, Outcome};
use crate::policy::check::Check;
use crate::policy::config::ConfigError;
use crate::store::decision::{Decision, LimitStatus, MAX_SF_INTEGER};

/// A header the gateway sets: a lower-case name and its value.
pub type Header = (&'static str, String);

/// A static file served as a body (shipped beside the wasm as a JS module, not inside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    /// `assets/status.html`: the status page's shell, without data.
    StatusPage,
    /// `assets/openapi.json`: the admin API's OpenAPI 3.1 document.
    OpenApi,
}

impl Asset {
    /// Its name in the executor's `assets` object.
    pub fn name(self) -> &'static str {
        match self {
            Asset::StatusPage => "status",
            Asset::OpenApi => "openapi",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Text(String),
    Asset(Asset),
}

/// A response the gateway makes itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: String) -> Response {
        let headers = vec![("content-type", content_type.to_string()), ("cache-control", "no-store".to_string())];
        Response { status, headers, body: Body::Text(body) }
    }

    pub fn json(status: u16, body: String) -> Response {
        Response::new(status, "application/json", body)
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The header `name` (lower case), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (empty for an asset).
    pub fn text(&self) -> &str {
        match &self.body {
            Body::Text(t) => t,
            Body::Asset(_) => "",
        }
    }
}

/// An RFC 9457 problem; its type is `urn:edge-ratelimit:problem:<kind>` (docs/responses.md lists the kinds).
pub(crate) fn problem(status: u16, kind: &str, title: &str, detail: &str) -> Response {
    problem_with(status, kind, title, detail, |o| o)
}

/// [`problem`] with extension members (the admin API's `field`).
pub(crate) fn problem_with(
    status: u16,
    kind: &str,
    title: &str,
    detail: &str,
    extend: impl FnOnce(Obj) -> Obj,
) -> Response {
    let body = Obj::new()
        .str("type", &format!("urn:edge-ratelimit:problem:{kind}"))
        .str("title", title)
        .int("status", status)
        .str("detail", detail);
    Response::new(status, "application/problem+json", extend(body).finish())
}

/// [`problem`]'s body written in one pass (a 429 is on the hot path): `kind` and `title` are the
/// gateway's own plain words, `detail` is escaped.
fn problem_fast(status: u16, kind: &'static str, title: &'static str, detail: &str) -> Response {
    debug_assert!(kind
        .bytes()
        .chain(title.bytes())
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' '));
    let mut body = String::with_capacity(96 + detail.len());
    body.push_str("{\"type\":\"urn:edge-ratelimit:problem:");
    body.push_str(kind);
    body.push_str("\",\"title\":\"");
    body.push_str(title);
    body.push_str("\",\"status\":");
    push_u64(&mut body, u64::from(status));
    body.push_str(",\"detail\":");
    crate::json::push_str(&mut body, detail);
    body.push('}');
    Response::new(status, "application/problem+json", body)
}

/// What the gateway does with a request once the limiter has spoken.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Answer {
    /// Send the request on, adding these headers to the origin's response.
    Forward(Vec<Header>),
    Respond(Response),
}

/// The answer for an outcome: allowed → forward with the RateLimit fields; denied → 429; Redis failed →
/// forward marked degraded, 429 from the local bucket, or 503, by the fail mode.
pub(crate) fn answer(outcome: &Outcome) -> Answer {
    answer_in_flight(outcome, |_| false)
}

/// [`answer`], where `in_flight(i)` says whether limit `i` counts requests in flight: a request it
/// denies gets its own problem type (`too-many-concurrent`).
pub(crate) fn answer_in_flight(outcome: &Outcome, in_flight: impl Fn(usize) -> bool) -> Answer {
    match outcome {
        Outcome::Allowed(d) => Answer::Forward(rate_limit_headers(d)),
        Outcome::Denied(d) if d.denied_by.is_some_and(in_flight) => Answer::Respond(too_many_concurrent(d)),
        Outcome::Denied(d) => Answer::Respond(rate_limited(d, None)),
        Outcome::DeniedLocally(d, failure) => Answer::Respond(rate_limited(d, Some(failure))),
        Outcome::FailedOpen(failure, _) => Answer::Forward(vec![degraded(failure)]),
        Outcome::FailedClosed(failure) => Answer::Respond(
            problem(
                503,
                "limiter-unavailable",
                "Service Unavailable",
                "The rate limiter cannot decide right now; try again shortly.",
            )
            .with("retry-after", "1")
            .with("x-ratelimit-status", format!("unavailable; reason={}", failure.reason())),
        ),
    }
}

/// 429: an in-flight limit is full. `Retry-After: 1` (a slot frees when a response ends, which nobody
/// can foresee) and the RateLimit fields naming the limit.
fn too_many_concurrent(decision: &Decision) -> Response {
    let name = decision.most_restrictive().map_or("", |l| l.name.as_str());
    let detail = format!("In-flight limit \"{name}\" reached: too many requests at once; retry in 1 s.");
    let mut r = problem_fast(429, "too-many-concurrent", "Too Many Requests", &detail);
    r.headers.extend(rate_limit_headers(decision));
    r
}

/// `X-RateLimit-Status` of a request decided without Redis.
fn degraded(failure: &Failure) -> Header {
    ("x-ratelimit-status", format!("degraded; reason={}", failure.reason()))
}

/// 429 with `Retry-After` and the RateLimit fields; `degraded` when the local bucket denied.
fn rate_limited(decision: &Decision, degraded_by: Option<&Failure>) -> Response {
    let mut detail = String::with_capacity(64);
    detail.push_str("Rate limit ");
    if let (None, Some(l)) = (degraded_by, decision.most_restrictive()) {
        detail.push('"');
        detail.push_str(&l.name);
        detail.push_str("\" ");
    }
    detail.push_str("exceeded; retry in ");
    push_u64(&mut detail, decision.retry_after_s());
    detail.push_str(" s.");
    let mut r = problem_fast(429, "rate-limited", "Too Many Requests", &detail);
    r.headers.extend(rate_limit_headers(decision));
    if let Some(failure) = degraded_by {
        // One status: that Redis was not asked says more than what a shadow limit would have done.
        r.headers.retain(|(name, _)| *name != "x-ratelimit-status");
        r.headers.push(degraded(failure));
    }
    r
}

/// A limit's status as JSON, the one rendering wherever one appears (the admin API's peek, the
/// quota endpoint): `{ key?, name, rule, algorithm, shadow, capacity, window_s, cost, remaining,
/// retry_after_ms, reset_ms }` — `key` (its Redis key) only for the admin API.
pub(crate) fn limit_json(check: &Check<'_>, status: &LimitStatus, with_key: bool) -> String {
    let o = if with_key { Obj::new().str("key", &check.key) } else { Obj::new() };
    o.str("name", check.name)
        .str("rule", check.rule)
        .str("algorithm", check.limit.algorithm().name())
        .bool("shadow", check.shadow())
        .int("capacity", status.capacity)
        .int("window_s", status.window_s)
        .int("cost", check.cost)
        .int("remaining", status.remaining)
        .int("retry_after_ms", status.retry_ms)
        .int("reset_ms", status.reset_ms)
        .finish()
}

/// The `RateLimit-Policy` and `RateLimit` fields (and `Retry-After` when denied, `X-RateLimit-Status`
/// when a shadow limit would have denied).
pub fn rate_limit_headers(decision: &Decision) -> Vec<Header> {
    let mut policy = String::with_capacity(40 * decision.limits.len());
    for l in decision.limits.iter().filter(|l| !l.shadow) {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        policy.push('"');
        policy.push_str(&l.name);
        policy.push_str("\";q=");
        push_u64(&mut policy, u64::from(l.capacity));
        policy.push_str(";w=");
        push_u64(&mut policy, l.window_s.min(MAX_SF_INTEGER));
    }
    let mut headers = Vec::with_capacity(6);
    if !policy.is_empty() {
        headers.push(("ratelimit-policy", policy));
    }
    if let Some(l) = decision.most_restrictive().filter(|l| !l.shadow) {
        let mut field = String::with_capacity(32 + l.name.len());
        field.push('"');
        field.push_str(&l.name);
        field.push_str("\";r=");
        push_u64(&mut field, l.remaining.min(MAX_SF_INTEGER));
        field.push_str(";t=");
        push_u64(&mut field, l.reset_ms.div_ceil(1000).min(MAX_SF_INTEGER));
        headers.push(("ratelimit", field));
    }
    if !decision.allowed {
        let mut retry = String::with_capacity(8);
        push_u64(&mut retry, decision.retry_after_s());
        headers.push(("retry-after", retry));
    }
    if let Some(l) = decision.shadow_denial() {
        headers.push(("x-ratelimit-status", format!("shadow; limit=\"{}\"", l.name)));
    }
    headers
}

/// 500: the configuration is invalid. The message names the variable and never repeats a secret.
pub(crate) fn misconfigured(e: &ConfigError) -> Response {
    problem(500, "misconfigured", "Gateway Misconfigured", &format!("The gateway is misconfigured: {e}"))
}

/// 401: the token is missing (required) or invalid.
pub(crate) fn unauthorized(e: JwtError) -> Response {
    let challenge = match e {
        // RFC 6750: no error code when the request carried no token at all.
        JwtError::Missing => "Bearer".to_string(),
        _ => format!("Bearer error=\"invalid_token\", error_description=\"{}\"", e.reason()),
    };
    problem(401, "invalid-token", "Unauthorized", &format!("Unauthorized: {}.", e.reason()))
        .with("www-authenticate", challenge)
}

/// 400: the caller cannot be identified.
pub(crate) fn unidentified(e: IdentityError) -> Response {
    let detail = match e {
        IdentityError::Anonymous => "The caller cannot be identified: no user id and no CF-Connecting-IP header.",
        IdentityError::BadClientIp => "The caller cannot be identified: CF-Connecting-IP is not an IP address.",
        IdentityError::UserIdNotUtf8 => {
            "The caller cannot be identified: the user id header is not valid UTF-8 (send ids as UTF-8)."
        }
    };
    problem(400, "unidentified-caller", "Bad Request", detail)
}

/// 403: the deny list names the caller or its network.
pub(crate) fn forbidden() -> Response {
    problem(403, "denied", "Forbidden", "This caller or network is on the gateway's deny list.")
}

/// 404: an admin path while the admin API is off, or another spelling of the prefix (never forwarded).
pub(crate) fn not_found() -> Response {
    problem(404, "not-found", "Not Found", "No such resource.")
}

/// 502: the origin could not be reached (the executor sends it when the forward fails).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // (the wasm exports use it)
pub(crate) fn origin_unreachable() -> Response {
    problem(502, "origin-unreachable", "Bad Gateway", "The origin could not be reached.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limit::Limit;
    use crate::policy::rate::Refill;

    fn limit() -> Limit {
        Limit::new(5, Refill::parse("5/min").unwrap(), 60).unwrap()
    }

    /// A decision from the script's integers, five per limit (no lease granted, the time 1 added).
    fn decision(reply: &[i64], limits: &[(&str, &Limit, bool)]) -> Decision {
        let mut full = reply[..2].to_vec();
        for limit in reply[2..].chunks(5) {
            full.extend(limit);
            full.push(0);
        }
        full.push(1);
        let limits: Vec<_> = limits.iter().map(|(p, l, s)| crate::store::decision::Asked::new(p, l, *s, 1)).collect();
        Decision::from_script(&full, &limits).unwrap()
    }

    #[test]
    fn allowed_decision_renders_policy_and_remaining() {
        let l = limit();
        let d = decision(&[1, 0, 4, 0, 12_000, 5, 60], &[("default", &l, false)]);
        assert_eq!(
            rate_limit_headers(&d),
            vec![
                ("ratelimit-policy", "\"default\";q=5;w=60".to_string()),
                ("ratelimit", "\"default\";r=4;t=12".to_string())
            ]
        );
    }

    #[test]
    fn denied_decision_adds_retry_after_in_whole_seconds_at_least_one() {
        let l = limit();
        let d = decision(&[0, 1, 0, 11_001, 59_000, 5, 60], &[("default", &l, false)]);
        let h = rate_limit_headers(&d);
        assert_eq!(h[1], ("ratelimit", "\"default\";r=0;t=59".to_string()));
        assert_eq!(h[2], ("retry-after", "12".to_string()));
        // 1 ms, 999 ms and 1000 ms all round up to the floor of one second.
        for (ms, s) in [(1, "1"), (999, "1"), (1000, "1"), (1001, "2")] {
            let d = decision(&[0, 1, 0, ms, 1, 5, 60], &[("default", &l, false)]);
            assert_eq!(rate_limit_headers(&d)[2], ("retry-after", s.to_string()), "{ms} ms");
        }
        // (The script never denies without a wait, and such a reply is malformed; any other source of a
        // denial still gets the floor.)
        let mut zero = decision(&[0, 1, 0, 1, 0, 5, 60], &[("default", &l, false)]);
        zero.limits[0].retry_ms = 0;
        assert_eq!(rate_limit_headers(&zero)[2].1, "1", "a denial with no wait still says at least 1 s");
    }

    #[test]
    fn several_limits_report_the_one_that_denied() {
        let (a, b) = (limit(), Limit::new(100, Refill::parse("100/h").unwrap(), 60).unwrap());
        let limits = [("user", &a, false), ("api", &b, false)];
        let d = decision(&[0, 2, 3, 0, 24_000, 5, 60, 0, 30_000, 3_600_000, 100, 3600], &limits);
        let h = rate_limit_headers(&d);
        assert_eq!(h[0].1, "\"user\";q=5;w=60, \"api\";q=100;w=3600");
        assert_eq!(h[1].1, "\"api\";r=0;t=3600");
        assert_eq!(h[2].1, "30");
        let d = decision(&[1, 0, 3, 0, 24_000, 5, 60, 50, 0, 1000, 100, 3600], &limits);
        assert_eq!(rate_limit_headers(&d)[1].1, "\"user\";r=3;t=24");
    }

    #[test]
    fn shadow_limits_are_not_advertised_but_marked_when_they_would_deny() {
        let (a, b) = (limit(), limit());
        let d = decision(
            &[1, 0, 0, 12_000, 60_000, 5, 60, 3, 0, 24_000, 5, 60],
            &[("trial", &a, true), ("user", &b, false)],
        );
        let h = rate_limit_headers(&d);
        assert_eq!(h[0].1, "\"user\";q=5;w=60");
        assert_eq!(h[1].1, "\"user\";r=3;t=24");
        assert_eq!(h[2], ("x-ratelimit-status", "shadow; limit=\"trial\"".to_string()));
    }

    #[test]
    fn a_local_denial_has_one_status_field_even_beside_a_shadow_denial() {
        let (a, b) = (limit(), limit());
        let d = decision(
            &[0, 2, 0, 12_000, 60_000, 5, 60, 0, 12_000, 60_000, 5, 60],
            &[("trial", &a, true), ("user", &b, false)],
        );
        let Answer::Respond(r) = answer(&Outcome::DeniedLocally(d, Failure::Timeout)) else { panic!("a 429") };
        let statuses: Vec<&str> =
            r.headers.iter().filter(|(n, _)| *n == "x-ratelimit-status").map(|(_, v)| v.as_str()).collect();
        assert_eq!(statuses, ["degraded; reason=timeout"]);
    }

    #[test]
    fn an_override_shows_in_the_policy_field() {
        let l = limit();
        let d = decision(&[1, 0, 99, 0, 600, 100, 60], &[("default", &l, false)]);
        assert_eq!(rate_limit_headers(&d)[0].1, "\"default\";q=100;w=60");
    }

    /// Issue 10, item 11: 18-digit numbers from Redis went into the RateLimit fields as they came,
    /// beyond the 15-digit integers of RFC 9651 structured fields.
    #[test]
    fn every_number_in_a_header_is_a_structured_field_integer() {
        let l = limit();
        let huge = 999_999_999_999_999_999;
        // (Numbers beyond what the script can say are a malformed reply now: `crate::store::decision`'s tests.
        // The largest it can say: a bucket deep in debt, of the largest capacity and window.)
        for reply in [
            [0, 1, -huge, huge, huge, 1_000_000_000, 3_153_600_000],
            [1, 0, 999_999_999, 0, 3_153_600_000_000, 1_000_000_000, 3_153_600_000],
        ] {
            let d = decision(&reply, &[("default", &l, false)]);
            for (name, value) in rate_limit_headers(&d) {
                for number in value.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()) {
                    assert!(number.len() <= 15, "{name}: {value} for {reply:?}");
                }
            }
        }
    }

    /// The renderer clamps too, whatever a decision holds (not only what the script's reply became).
    #[test]
    fn the_renderer_clamps_numbers_it_is_handed() {
        use crate::store::decision::LimitStatus;
        let huge = LimitStatus {
            name: "p".into(),
            shadow: false,
            capacity: 5,
            window_s: u64::MAX,
            remaining: u64::MAX,
            retry_ms: u64::MAX,
            reset_ms: u64::MAX,
        };
        let d = Decision { allowed: false, denied_by: Some(0), limits: vec![huge] };
        for (name, value) in rate_limit_headers(&d) {
            for number in value.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()) {
                assert!(number.len() <= 15, "{name}: {value}");
            }
        }
    }

    #[test]
    fn problem_bodies_are_rfc9457() {
        let r = problem(429, "rate-limited", "Too Many Requests", "x \"quoted\"");
        let v: serde_json::Value = serde_json::from_str(r.text()).unwrap();
        assert_eq!((v["status"].as_u64(), v["title"].as_str()), (Some(429), Some("Too Many Requests")));
        assert_eq!(v["type"], "urn:edge-ratelimit:problem:rate-limited");
        assert_eq!(v["detail"], "x \"quoted\"");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }

    #[test]
    fn a_missing_token_gets_a_bare_challenge_and_a_bad_one_says_why() {
        assert_eq!(unauthorized(JwtError::Missing).header("www-authenticate"), Some("Bearer"));
        let bad = unauthorized(JwtError::Expired);
        assert_eq!(bad.status, 401);
        assert_eq!(
            bad.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\", error_description=\"the token has expired\"")
        );
    }
}
