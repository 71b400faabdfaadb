//! The Worker: the only code that names `worker`, a clock or the network.
//! It builds its parts from `Env` once per isolate and delegates every
//! decision to the pure core.

mod env;
mod glue;
mod respond;
mod transport;

use std::cell::OnceCell;
use std::rc::Rc;

use worker::wasm_bindgen::prelude::*;
use worker::worker_sys::web_sys;
use worker::Env;

use crate::config::{Config, ConfigError};
use crate::gateway::{plan, Plan, RequestFacts};
use crate::limiter::Limiter;
use crate::path::path_and_query;

/// What an isolate builds once: the configuration, and the request headers it reads up front.
struct Isolate {
    config: Config,
    /// Lower-case header names, `\n`-joined, for [`glue::request_facts`].
    header_names: String,
    names: Vec<String>,
}

impl Isolate {
    fn new(config: Config) -> Isolate {
        let mut names: Vec<String> = config.user_id_header.iter().cloned().collect();
        names.push("cf-connecting-ip".into());
        if config.jwt.mode != crate::jwt::JwtMode::Off {
            names.push("authorization".into());
        }
        if config.policy.is_some() {
            names.push("x-http-method-override".into());
        }
        Isolate { header_names: names.join("\n"), names, config }
    }
}

thread_local! {
    static ISOLATE: OnceCell<Result<Rc<Isolate>, ConfigError>> = const { OnceCell::new() };
    static LIMITER: Rc<Limiter> = Rc::new(Limiter::default());
}

/// The Worker's fetch handler (js/shim.mjs calls it). It resolves to a Response, or to the promise of
/// the origin's response, which the runtime then adopts: the forward is never awaited in Rust.
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen, wasm_bindgen_futures = ::worker::wasm_bindgen_futures, js_sys = ::worker::js_sys)]
pub async fn fetch(req: web_sys::Request, env: Env, _ctx: JsValue) -> Result<JsValue, JsValue> {
    Ok(handle(req, &env).await)
}

async fn handle(req: web_sys::Request, env: &Env) -> JsValue {
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
    let checks = match plan(config, &RequestFacts { method, target, header: &header, now_ms: now }) {
        Plan::Limit(checks) => checks,
        Plan::Unlimited => return respond::forward(&req, config, target, &[]),
        Plan::Unauthorized(e) => return respond::unauthorized(e).into(),
        Plan::Unidentified(e) => return respond::unidentified(e).into(),
        Plan::Forbidden => return respond::forbidden().into(),
    };

    let transport = transport::Rest::new(config, now);
    let limiter = LIMITER.with(Rc::clone);
    let result = limiter.decide(&transport, &checks, config.clock, now).await;
    match &result {
        Err(failure) => worker::console_warn!("rate limiter degraded ({}): {failure:?}", failure.reason()),
        Ok(d) => {
            if let Some(l) = d.shadow_denial() {
                worker::console_log!("shadow limit {:?} would have denied {}", l.policy, checks[0].key);
            }
        }
    }
    let outcome = limiter.outcome(result, config.fail_mode, &checks, now);
    respond::outcome(outcome, &req, config, target)
}

/// Benchmark floors (feature `bench-floor`, never in a deployed build): answer 429 at once, or make one
/// plain REST call and forward, through the same entry and glue as the real Worker.
#[cfg(feature = "bench-floor")]
async fn floor(mode: &str, req: web_sys::Request, config: &Config) -> JsValue {
    if mode == "deny" {
        return glue::respond(429, "Too Many Requests", "retry-after\n12").into();
    }
    let ping = glue::rest_post(&config.redis_url, &config.redis_authorization, "[\"PING\"]", 500.0);
    let _ = js_sys::futures::JsFuture::from(ping).await;
    let url = req.url();
    respond::forward(&req, config, path_and_query(&url), &[])
}
