//! The Worker: the only code that names `worker`, a clock or the network.
//! It builds its parts from `Env` once per isolate and delegates every
//! decision to the pure core.

mod env;
mod respond;
mod transport;

use std::cell::OnceCell;
use std::rc::Rc;

use worker::worker_sys::web_sys;
use worker::{event, Context, Env};

use crate::config::{Config, ConfigError};
use crate::identity::identify;
use crate::key::bucket_key;
use crate::limiter::{Check, Limiter};
use crate::path::{normalize_with, path_and_query};

/// The default (zero-config) policy's name in `RateLimit-Policy`.
const DEFAULT_POLICY: &str = "default";

thread_local! {
    static CONFIG: OnceCell<Result<Rc<Config>, ConfigError>> = const { OnceCell::new() };
    static LIMITER: Rc<Limiter> = Rc::new(Limiter::default());
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> worker::Result<web_sys::Response> {
    Ok(handle(req, &env).await)
}

async fn handle(req: web_sys::Request, env: &Env) -> web_sys::Response {
    let config =
        match CONFIG.with(|c| c.get_or_init(|| Config::from_env(|name| env::var(env, name)).map(Rc::new)).clone()) {
            Ok(config) => config,
            Err(e) => {
                worker::console_error!("edge-ratelimit is misconfigured: {e}");
                return respond::misconfigured(&e);
            }
        };

    let url = req.url();
    let target = path_and_query(&url);
    let headers = req.headers();
    let user_id = config.user_id_header.as_deref().and_then(|h| headers.get(h).ok().flatten());
    let client_ip = headers.get("cf-connecting-ip").ok().flatten();
    let caller = match identify(user_id.as_deref(), client_ip.as_deref(), config.ipv6_prefix) {
        Ok(caller) => caller,
        Err(e) => return respond::unidentified(e),
    };
    let key = bucket_key(&caller, &normalize_with(target, config.path_case_insensitive));
    let checks = [Check { key, policy: DEFAULT_POLICY, limit: &config.limit, cost: 1 }];

    let now = js_sys::Date::now();
    let transport = transport::Rest::new(&config, now);
    let limiter = LIMITER.with(Rc::clone);
    let result = limiter.decide(&transport, &checks, config.clock, now).await;
    if let Err(failure) = &result {
        worker::console_warn!("rate limiter degraded ({}): {failure:?}", failure.reason());
    }
    let outcome = limiter.outcome(result, config.fail_mode, &checks, now);
    respond::outcome(outcome, req, &config, target).await
}
