//! edge-ratelimit: an API-gateway rate limiter for Cloudflare Workers.
//!
//! Every request is identified, mapped to a token bucket per caller and API
//! path, and decided by one atomic Lua script in Redis (reached over the
//! Upstash REST API), then forwarded to the origin or answered 429.
//!
//! Module map (dependencies point down; only `edge` names `worker`, a clock or the network):
//! - `edge`      — the Worker: `Env` → [`Config`], request facts, the REST transport, forwarding,
//!   and the one place outcomes become HTTP responses (wasm32 only).
//! - `gateway`   — a request's plan: identity (token, header, IP), lists, the limits that apply.
//! - `limiter`   — one isolate's limiter: EVALSHA/EVAL recovery, deny cache, fail mode.
//! - `upstash`   — the REST protocol: bodies in, classified replies out.
//! - `decision`  — decisions and how they are rendered (RateLimit headers, problem bodies).
//! - `config`, `limit`, `rate` — validated configuration.
//! - `policy`    — rules (methods + route template → limits per user/IP/header/global, tiers).
//! - `jwt`       — verified JWT callers (algorithm pinned by key, time passed in).
//! - `identity`, `path`, `key` — who is calling, on which canonical path, in which bucket.
//! - `script`    — the Lua script and its build-time SHA1s.
//! - `bucket`    — the token bucket in Rust: the reference the Lua script must agree with, and
//!   the local bucket that bounds fail-open traffic.

mod config;
mod decision;
mod gateway;
mod identity;
mod jwt;
mod key;
mod limit;
mod limiter;
mod path;
mod policy;
mod rate;
mod script;
mod upstash;

pub mod bucket;

#[cfg(target_arch = "wasm32")]
mod edge;

pub use config::{Clock, Config, ConfigError, FailMode};
pub use decision::{problem_json, rate_limit_headers, Decision, LimitStatus};
pub use gateway::{plan, Plan, RequestFacts, DEFAULT_POLICY};
pub use identity::{identify, Caller, IdentityError, DEFAULT_IPV6_PREFIX};
pub use jwt::{JwtConfig, JwtError, JwtMode, JwtSettings, Verified};
pub use key::bucket_key;
pub use limit::Limit;
pub use limiter::{
    Check, Failure, HttpReply, Limiter, Outcome, Transport, TransportError, DENY_CACHE_ENTRIES, LOCAL_BUCKETS,
};
pub use path::{normalize, normalize_with, path_and_query};
pub use policy::{parse_net, Applied, CountBy, Facts, LimitRule, Lists, Policy, Rule, Tiered};
pub use rate::Refill;
pub use script::{Variant, TOKEN_BUCKET_FLAGGED, TOKEN_BUCKET_FLAGGED_SHA, TOKEN_BUCKET_PLAIN, TOKEN_BUCKET_PLAIN_SHA};
pub use upstash::{eval_body, evalsha_body, parse_script_reply, RestError};
