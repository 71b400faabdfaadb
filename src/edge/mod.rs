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
use crate::gateway::{plan, Plan, RequestFacts};
use crate::limiter::Limiter;
use crate::path::path_and_query;

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
    let header = |name: &str| headers.get(name).ok().flatten();
    let method = req.method();
    let now = js_sys::Date::now();
    let checks = match plan(&config, &RequestFacts { method: &method, target, header: &header, now_ms: now }) {
        Plan::Limit(checks) => checks,
        Plan::Unlimited => return respond::forward(req, &config, target, &[]).await,
        Plan::Unauthorized(e) => return respond::unauthorized(e),
        Plan::Unidentified(e) => return respond::unidentified(e),
        Plan::Forbidden => return respond::forbidden(),
    };

    let transport = transport::Rest::new(&config, now);
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
    respond::outcome(outcome, req, &config, target).await
}
