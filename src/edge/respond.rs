//! The one place where outcomes and errors become HTTP responses.

use worker::wasm_bindgen::JsValue;
use worker::worker_sys::web_sys;

use super::glue;
use crate::config::{Config, ConfigError};
use crate::decision::{problem_json, rate_limit_headers};
use crate::identity::IdentityError;
use crate::jwt::JwtError;
use crate::limiter::Outcome;

/// The response for `outcome`: a Response, or the promise of the origin's.
pub fn outcome(outcome: Outcome, req: &web_sys::Request, config: &Config, target: &str) -> JsValue {
    match outcome {
        Outcome::Allowed(decision) => forward(req, config, target, &rate_limit_headers(&decision)),
        Outcome::Denied(decision) => {
            let limit = decision.most_restrictive().map_or("default", |l| l.policy.as_str());
            let detail = format!("Rate limit \"{limit}\" exceeded; retry in {} s.", decision.retry_after_s());
            problem(429, "rate-limited", "Too Many Requests", &detail, &rate_limit_headers(&decision)).into()
        }
        Outcome::DeniedLocally(decision, failure) => {
            let detail = format!("Rate limit exceeded; retry in {} s.", decision.retry_after_s());
            let mut headers = rate_limit_headers(&decision);
            headers.push(("X-RateLimit-Status", format!("degraded; reason={}", failure.reason())));
            problem(429, "rate-limited", "Too Many Requests", &detail, &headers).into()
        }
        Outcome::FailedOpen(failure) => {
            let status = format!("degraded; reason={}", failure.reason());
            forward(req, config, target, &[("X-RateLimit-Status", status)])
        }
        Outcome::FailedClosed(failure) => problem(
            503,
            "limiter-unavailable",
            "Service Unavailable",
            "The rate limiter cannot decide right now; try again shortly.",
            &[("Retry-After", "1".into()), ("X-RateLimit-Status", format!("unavailable; reason={}", failure.reason()))],
        )
        .into(),
    }
}

pub fn misconfigured(e: &ConfigError) -> web_sys::Response {
    let detail = format!("The gateway is misconfigured: {e}");
    problem(500, "misconfigured", "Gateway Misconfigured", &detail, &[])
}

pub fn unauthorized(e: JwtError) -> web_sys::Response {
    let challenge = match e {
        // RFC 6750: no error code when the request carried no token at all.
        JwtError::Missing => "Bearer".to_string(),
        _ => format!("Bearer error=\"invalid_token\", error_description=\"{}\"", e.reason()),
    };
    let detail = format!("Unauthorized: {}.", e.reason());
    problem(401, "invalid-token", "Unauthorized", &detail, &[("WWW-Authenticate", challenge)])
}

/// An admin path while the admin API is off, or another spelling of one: never forwarded.
pub fn not_found() -> web_sys::Response {
    problem(404, "not-found", "Not Found", "No such resource.", &[])
}

pub fn forbidden() -> web_sys::Response {
    problem(403, "denied", "Forbidden", "This caller or network is on the gateway's deny list.", &[])
}

pub fn unidentified(e: IdentityError) -> web_sys::Response {
    let detail = match e {
        IdentityError::Anonymous => "The caller cannot be identified: no user id and no CF-Connecting-IP header.",
        IdentityError::BadClientIp => "The caller cannot be identified: CF-Connecting-IP is not an IP address.",
        IdentityError::UserIdNotUtf8 => {
            "The caller cannot be identified: the user id header is not valid UTF-8 (send ids as UTF-8)."
        }
    };
    problem(400, "unidentified-caller", "Bad Request", detail, &[])
}

fn problem(status: u16, kind: &str, title: &str, detail: &str, extra: &[(&'static str, String)]) -> web_sys::Response {
    let body = problem_json(kind, title, status, detail);
    let mut headers = Vec::with_capacity(extra.len() + 2);
    headers.push(("content-type", "application/problem+json".to_string()));
    headers.push(("cache-control", "no-store".to_string()));
    headers.extend(extra.iter().cloned());
    glue::respond(status, &body, &glue::flat(&headers))
}

/// Sends the request on (to `ORIGIN_URL`, or to its own URL): the promise of the origin's response
/// with `extra` headers added, its body streaming through untouched.
pub fn forward(req: &web_sys::Request, config: &Config, target: &str, extra: &[(&'static str, String)]) -> JsValue {
    let url = config.origin.as_ref().map_or_else(String::new, |origin| format!("{origin}{target}"));
    UNREACHABLE.with(|body| glue::forward(req, &url, &glue::flat(extra), body)).into()
}

thread_local! {
    /// The 502 problem body, made once per isolate and kept as a JS string.
    static UNREACHABLE: JsValue = JsValue::from_str(&problem_json(
        "origin-unreachable",
        "Bad Gateway",
        502,
        "The origin could not be reached.",
    ));
}
