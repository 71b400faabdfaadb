//! The one place where outcomes and errors become HTTP responses.

use js_sys::futures::JsFuture;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::web_sys;

use crate::config::{Config, ConfigError};
use crate::decision::{problem_json, rate_limit_headers};
use crate::identity::IdentityError;
use crate::jwt::JwtError;
use crate::limiter::Outcome;

pub async fn outcome(outcome: Outcome, req: web_sys::Request, config: &Config, target: &str) -> web_sys::Response {
    match outcome {
        Outcome::Allowed(decision) => forward(req, config, target, &rate_limit_headers(&decision)).await,
        Outcome::Denied(decision) => {
            let limit = decision.most_restrictive().map_or("default", |l| l.policy.as_str());
            let detail = format!("Rate limit \"{limit}\" exceeded; retry in {} s.", decision.retry_after_s());
            problem(429, "rate-limited", "Too Many Requests", &detail, &rate_limit_headers(&decision))
        }
        Outcome::DeniedLocally(decision, failure) => {
            let detail = format!("Rate limit exceeded; retry in {} s.", decision.retry_after_s());
            let mut headers = rate_limit_headers(&decision);
            headers.push(("X-RateLimit-Status", format!("degraded; reason={}", failure.reason())));
            problem(429, "rate-limited", "Too Many Requests", &detail, &headers)
        }
        Outcome::FailedOpen(failure) => {
            let status = format!("degraded; reason={}", failure.reason());
            forward(req, config, target, &[("X-RateLimit-Status", status)]).await
        }
        Outcome::FailedClosed(failure) => problem(
            503,
            "limiter-unavailable",
            "Service Unavailable",
            "The rate limiter cannot decide right now; try again shortly.",
            &[("Retry-After", "1".into()), ("X-RateLimit-Status", format!("unavailable; reason={}", failure.reason()))],
        ),
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

pub fn forbidden() -> web_sys::Response {
    problem(403, "denied", "Forbidden", "This caller or network is on the gateway's deny list.", &[])
}

pub fn unidentified(e: IdentityError) -> web_sys::Response {
    let detail = match e {
        IdentityError::Anonymous => "The caller cannot be identified: no user id and no CF-Connecting-IP header.",
        IdentityError::BadClientIp => "The caller cannot be identified: CF-Connecting-IP is not an IP address.",
    };
    problem(400, "unidentified-caller", "Bad Request", detail, &[])
}

fn problem(status: u16, kind: &str, title: &str, detail: &str, extra: &[(&'static str, String)]) -> web_sys::Response {
    let body = problem_json(kind, title, status, detail);
    let build = || -> Result<web_sys::Response, JsValue> {
        let headers = web_sys::Headers::new()?;
        headers.set("content-type", "application/problem+json")?;
        headers.set("cache-control", "no-store")?;
        for (name, value) in extra {
            headers.set(name, value)?;
        }
        let init = web_sys::ResponseInit::new();
        init.set_status(status);
        init.set_headers(&headers);
        web_sys::Response::new_with_opt_str_and_init(Some(&body), &init)
    };
    build().unwrap_or_else(|_| bare(status))
}

/// A response with no body: what is left if even building a response fails.
fn bare(status: u16) -> web_sys::Response {
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    web_sys::Response::new_with_opt_str_and_init(None, &init).unwrap_or_else(|_| JsValue::NULL.unchecked_into())
}

/// Sends the request on (to `ORIGIN_URL`, or to its own URL) and adds `extra`
/// headers to the origin's response; its body streams through untouched.
pub async fn forward(
    req: web_sys::Request,
    config: &Config,
    target: &str,
    extra: &[(&'static str, String)],
) -> web_sys::Response {
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let sent = match &config.origin {
        None => Ok(scope.fetch_with_request(&req)),
        Some(origin) => to_origin(&req, origin, target).map(|r| scope.fetch_with_request(&r)),
    };
    let response = match sent {
        Ok(promise) => JsFuture::from(promise).await.and_then(|r| r.dyn_into::<web_sys::Response>()),
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            worker::console_error!("origin fetch failed: {e:?}");
            return problem(502, "origin-unreachable", "Bad Gateway", "The origin could not be reached.", extra);
        }
    };
    with_headers(response, extra).unwrap_or_else(|e| {
        worker::console_error!("cannot add headers to the origin response: {e:?}");
        bare(502)
    })
}

fn to_origin(req: &web_sys::Request, origin: &str, target: &str) -> Result<web_sys::Request, JsValue> {
    let init = web_sys::RequestInit::new();
    init.set_method(&req.method());
    init.set_headers(&req.headers());
    init.set_redirect(web_sys::RequestRedirect::Manual);
    if let Some(body) = req.body() {
        init.set_body(&body);
    }
    web_sys::Request::new_with_str_and_init(&format!("{origin}{target}"), &init)
}

fn with_headers(response: web_sys::Response, extra: &[(&'static str, String)]) -> Result<web_sys::Response, JsValue> {
    if extra.is_empty() {
        return Ok(response);
    }
    let headers = web_sys::Headers::new_with_headers(&response.headers())?;
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    let init = web_sys::ResponseInit::new();
    init.set_status(response.status());
    init.set_status_text(&response.status_text());
    init.set_headers(&headers);
    web_sys::Response::new_with_opt_readable_stream_and_init(response.body().as_ref(), &init)
}
