//! The Worker: the only code that names `worker`, a clock or the network.
//! It builds its parts from `Env` once per isolate and delegates every
//! decision to the pure core.

mod env;
mod glue;
mod respond;
mod transport;

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use worker::wasm_bindgen::prelude::*;
use worker::worker_sys::web_sys;
use worker::Env;

use crate::admin::{self, AdminRequest, MAX_BODY_BYTES};
use crate::config::{Config, ConfigError};
use crate::gateway::{plan, Plan, RequestFacts};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::path::path_and_query;

/// What an isolate builds once: the configuration, and the request headers it reads up front.
struct Isolate {
    config: Config,
    /// Lower-case header names, `\n`-joined, for [`glue::request_facts`].
    header_names: String,
    names: Vec<String>,
    limiter: Limiter,
    /// Counts not yet reported to Redis (kept only when the admin API is on).
    metrics: RefCell<Metrics>,
}

impl Isolate {
    fn new(config: Config) -> Isolate {
        let mut names: Vec<String> = config.user_id_header.iter().cloned().collect();
        names.push("cf-connecting-ip".into());
        if config.jwt.mode != crate::jwt::JwtMode::Off {
            names.push("authorization".into());
        }
        if config.policy.is_some() {
            names.extend(crate::gateway::METHOD_OVERRIDE_HEADERS.iter().map(|h| h.to_string()));
            names.push("content-type".into());
        }
        Isolate {
            header_names: names.join("\n"),
            names,
            limiter: Limiter::new(config.deny_cache_max_ms),
            metrics: RefCell::new(Metrics::default()),
            config,
        }
    }
}

thread_local! {
    static ISOLATE: OnceCell<Result<Rc<Isolate>, ConfigError>> = const { OnceCell::new() };
}

/// The Worker's fetch handler (js/shim.mjs calls it). It resolves to a Response, or to the promise of
/// the origin's response, which the runtime then adopts: the forward is never awaited in Rust.
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen, wasm_bindgen_futures = ::worker::wasm_bindgen_futures, js_sys = ::worker::js_sys)]
pub async fn fetch(req: web_sys::Request, env: Env, ctx: JsValue, assets: JsValue) -> Result<JsValue, JsValue> {
    Ok(handle(req, &env, &ctx, &assets).await)
}

async fn handle(req: web_sys::Request, env: &Env, ctx: &JsValue, assets: &JsValue) -> JsValue {
    let isolate = ISOLATE.with(|c| {
        c.get_or_init(|| Config::from_env(|name| env::var(env, name)).map(|config| Rc::new(Isolate::new(config))))
            .clone()
    });
    let isolate = match isolate {
        Ok(isolate) => isolate,
        Err(e) => {
            worker::console_error!("edge-ratelimit is misconfigured: {e}");
            return respond::misconfigured(&e).into();
        }
    };
    let config = &isolate.config;
    #[cfg(feature = "bench-floor")]
    if let Some(mode) = env::var(env, "BENCH_FLOOR") {
        return floor(&mode, req, config).await;
    }

    // One crossing for the method, the URL and every header the configuration reads.
    let facts = glue::request_facts(&req, &isolate.header_names);
    let mut parts = facts.split('\n');
    let method = parts.next().unwrap_or("GET");
    let url = parts.next().unwrap_or("/");
    let known: Vec<(&str, Option<&str>)> =
        isolate.names.iter().map(|n| (n.as_str(), parts.next().filter(|v| *v != "\0"))).collect();
    let header = |name: &str| match known.iter().find(|(n, _)| *n == name) {
        Some((_, value)) => value.map(str::to_string),
        None => req.headers().get(name).ok().flatten(), // a policy's `header:<name>` limit
    };
    let target = path_and_query(url);
    let now = js_sys::Date::now();
    if let Some(spelled) = admin::admin_target(config, target) {
        return match spelled {
            Some((rest, query)) => admin(&isolate, &req, assets, method, rest, query, now).await,
            None => respond::not_found().into(),
        };
    }
    let limited = match plan(config, &RequestFacts { method, target, header: &header, now_ms: now }) {
        Plan::Limit(limited) => limited,
        Plan::Unlimited => return respond::forward(&req, config, target, &[]),
        Plan::Unauthorized(e) => return respond::unauthorized(e).into(),
        Plan::Unidentified(e) => return respond::unidentified(e).into(),
        Plan::Forbidden => return respond::forbidden().into(),
    };

    let checks = &limited.checks;
    let transport = transport::Rest::new(config, now);
    let limiter = &isolate.limiter;
    let result = limiter.decide(&transport, checks, config.clock, now).await;
    match &result {
        Err(failure) => worker::console_warn!("rate limiter degraded ({}): {failure:?}", failure.reason()),
        Ok(d) => {
            if let Some(l) = d.shadow_denial() {
                worker::console_log!("shadow limit {:?} would have denied {}", l.policy, checks[0].key);
            }
        }
    }
    let outcome = limiter.outcome(result, config.fail_mode, checks, now);
    if config.admin_token_sha256.is_some() {
        let mut metrics = isolate.metrics.borrow_mut();
        metrics.record(&outcome, checks, limited.tier.as_deref(), &limited.subject);
        let done = js_sys::Date::now();
        metrics.decision.observe(done - now);
        for rtt in transport.round_trips() {
            metrics.redis.observe(rtt);
        }
        metrics.add_limiter_counts(limiter.take_counts());
        if let Some(report) = metrics.report(done, config.metrics_flush_ms) {
            drop(metrics);
            glue::wait_until(ctx, &send_report(Rc::clone(&isolate), report, done));
        }
    }
    respond::outcome(outcome, &req, config, target)
}

/// Sends an isolate's metrics to Redis after the response (`ctx.waitUntil`); a report that does not
/// arrive is put back and goes with the next one.
fn send_report(isolate: Rc<Isolate>, report: crate::metrics::Report, now: f64) -> js_sys::Promise {
    worker::wasm_bindgen_futures::future_to_promise(async move {
        let transport = transport::Rest::new(&isolate.config, now);
        let sent = match crate::limiter::Transport::pipeline(&transport, report.body).await {
            Ok(reply) => reply.status == 200 && !reply.body.contains("\"error\""),
            Err(_) => false,
        };
        if !sent {
            worker::console_warn!("metrics report did not reach Redis; it goes with the next one");
            isolate.metrics.borrow_mut().restore(report.counts);
        }
        Ok(JsValue::UNDEFINED)
    })
}

/// The admin API: reads what it needs of the request (the body only for writes, at most
/// [`MAX_BODY_BYTES`]) and hands it to the pure handler.
async fn admin(
    isolate: &Isolate,
    req: &web_sys::Request,
    assets: &JsValue,
    method: &str,
    rest: &str,
    query: &str,
    now: f64,
) -> JsValue {
    let config = &isolate.config;
    let headers = req.headers();
    let authorization = headers.get("authorization").ok().flatten();
    let mut body = String::new();
    // The token first: an unauthenticated request is answered without reading a byte of its body.
    if admin::wants_body(config, method, authorization.as_deref()) {
        let declared = headers.get("content-length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
        let text = if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            None
        } else {
            // At most MAX_BODY_BYTES + 1 bytes are read, whatever the body says or never says.
            let read = glue::read_body(req, MAX_BODY_BYTES as f64);
            js_sys::futures::JsFuture::from(read).await.ok().and_then(|v| v.as_string())
        };
        body = text.unwrap_or_else(|| " ".repeat(MAX_BODY_BYTES + 1)); // over the limit: answered 413
    }
    let transport = transport::Rest::new(config, now);
    let request = AdminRequest { method, rest, query, authorization: authorization.as_deref(), body: &body };
    let response = admin::handle(config, &isolate.limiter, &transport, &request, now).await;
    let mut headers = vec![("content-type", response.content_type.to_string())];
    headers.extend(response.headers);
    let flat = glue::flat(&headers);
    match response.asset {
        Some(asset) if method != "HEAD" => glue::respond_asset(response.status, assets, asset.name(), &flat).into(),
        _ => {
            let body = if method == "HEAD" { "" } else { response.body.as_str() };
            glue::respond(response.status, body, &flat).into()
        }
    }
}

/// Benchmark floors (feature `bench-floor`, never in a deployed build): answer 429 at once, or make one
/// plain REST call and forward, through the same entry and glue as the real Worker.
#[cfg(feature = "bench-floor")]
async fn floor(mode: &str, req: web_sys::Request, config: &Config) -> JsValue {
    if mode == "deny" {
        return glue::respond(429, "Too Many Requests", "retry-after\n12").into();
    }
    let ping = glue::rest_post(&config.redis_url, config.redis_authorization.expose(), "[\"PING\"]", 500.0);
    let _ = js_sys::futures::JsFuture::from(ping).await;
    let url = req.url();
    respond::forward(&req, config, path_and_query(&url), &[])
}
