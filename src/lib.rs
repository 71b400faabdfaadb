//! edge-ratelimit: an API-gateway rate limiter for Cloudflare Workers.
//!
//! Every request is identified, mapped to limits (token buckets or sliding
//! windows) per caller and API path, and decided by one atomic Lua script in Redis (reached over the
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
//! - `admin`     — the admin API: routes, auth, peek/reset, overrides, metrics and status (over any transport).
//! - `overrides` — live limit overrides for a caller, tier or route, read by the script.
//! - `metrics`   — per-isolate counts reported to Redis, read back as Prometheus text.
//! - `script`    — the Lua script (token bucket and sliding window) and its build-time SHA1s.
//! - `bucket`    — both algorithms in Rust: the reference the Lua script must agree with, and
//!   the local bucket that bounds fail-open traffic.

mod admin;
mod config;
mod decision;
mod gateway;
mod identity;
mod json;
mod jwt;
mod key;
mod limit;
mod limiter;
mod metrics;
mod overrides;
mod path;
mod policy;
mod rate;
mod script;
mod upstash;

pub mod bucket;

#[cfg(target_arch = "wasm32")]
mod edge;

pub use admin::{
    admin_target, authorized, handle as admin, wants_body, AdminRequest, AdminResponse, Asset, MAX_BODY_BYTES,
};
pub use config::{Clock, Config, ConfigError, FailMode};
pub use decision::{problem_json, rate_limit_headers, Decision, LimitStatus};
pub use gateway::{limits_for, plan, Limited, Plan, RequestFacts, Target, DEFAULT_POLICY};
pub use identity::{identify, Caller, IdentityError, DEFAULT_IPV6_PREFIX};
pub use jwt::{JwtConfig, JwtError, JwtMode, JwtSettings, Verified};
pub use key::bucket_key;
pub use limit::{Algorithm, Limit};
pub use limiter::{
    script_call, Check, Failure, HttpReply, Limiter, Outcome, Transport, TransportError, DEFAULT_DENY_CACHE_MAX_MS,
    DENY_CACHE_ENTRIES, LOCAL_BUCKETS,
};
pub use metrics::{Event, Histogram, Metrics, Report, Totals, DENIED_KEY, LATENCY_BUCKETS_MS, METRICS_KEY};
pub use overrides::{Override, Scope};
pub use path::{normalize, normalize_with, path_and_query, views};
pub use policy::{parse_net, Applied, CountBy, Facts, LimitRule, Lists, Policy, Rule, Tiered};
pub use rate::Refill;
pub use script::{Variant, SCRIPT_FLAGGED, SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN, SCRIPT_PLAIN_SHA};
pub use upstash::{eval_body, evalsha_body, parse_script_reply, RestError};
