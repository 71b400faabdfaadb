//! edge-ratelimit: an API-gateway rate limiter for Cloudflare Workers.
//!
//! Every request is identified, mapped to limits (token buckets or sliding
//! windows) per caller and API path, and decided by one atomic Lua script in Redis (reached over the
//! Upstash REST API), then forwarded to the origin or answered 429.
//!
//! Module map (dependencies point down; only `edge` names `worker`, and nothing reads a clock or the
//! network: time comes in as an argument, I/O goes out as a [`Step`]):
//! - `edge`      — the executor's Rust half (wasm32 only): four synchronous exports around an
//!   [`Isolate`]; `js/shim.mjs` is the other half, and carries out the steps.
//! - `wire`      — steps and replies as the executor's text.
//! - `gateway`   — the whole request: [`Gateway::begin`] / [`Gateway::resume`], step by step.
//! - `http`      — every response and every header the gateway renders.
//! - `rpc`       — the RPC entry's arguments and results (`env.LIMITER.limit({ key })`).
//! - `log`       — the JSON log lines, callers named by a keyed hash.
//! - `quota`     — the caller quota endpoint (`QUOTA_PATH`): its query and its answer.
//! - `plan`      — a request's plan: identity (token, header, IP), lists, the limits that apply.
//! - `admin`     — the admin API: routes, auth, peek/reset, overrides, metrics and status.
//! - `limiter`   — one isolate's limiter: the script call and its NOSCRIPT recovery, deny cache,
//!   fail mode and the local buckets that bound fail-open traffic.
//! - `lease`     — leases: tokens of busy keys debited in Redis for this isolate, spent without a call.
//! - `upstash`   — the REST protocol: bodies in, classified replies out.
//! - `decision`  — what the script said, per limit.
//! - `config`, `limit`, `rate` — validated configuration.
//! - `policy`    — rules (methods + route template → limits per user/IP/header/global, tiers).
//! - `jwt`       — verified JWT callers (algorithm pinned by key, time passed in, asymmetric
//!   signatures checked by the executor's WebCrypto).
//! - `identity`, `path`, `key` — who is calling, on which canonical path, in which bucket.
//! - `overrides` — live limit overrides for a caller, tier or route, read by the script.
//! - `metrics`   — per-isolate counts reported to Redis, read back as Prometheus text.
//! - `script`    — the Lua script (token bucket and sliding window) and its build-time SHA1s.
//! - `bucket`    — both algorithms in Rust: the reference the Lua script must agree with, and
//!   the local bucket that bounds fail-open traffic.

mod admin;
mod config;
mod decision;
mod gateway;
mod http;
mod identity;
mod json;
mod jwt;
mod key;
mod lease;
mod limit;
mod limiter;
mod log;
mod metrics;
mod overrides;
mod path;
mod plan;
mod policy;
mod quota;
mod rate;
mod rpc;
mod script;
mod settle;
mod upstash;
mod wire;

pub mod bucket;

#[cfg(target_arch = "wasm32")]
mod edge;

pub use admin::{admin_target, authorized, wants_body, AdminBody, MAX_BODY_BYTES};
pub use config::{Candidate, Clock, Config, ConfigError, FailMode, LeaseConfig, LogCallerIds, VARIABLES};
pub use decision::{Asked, Decision, LimitStatus, MAX_SCRIPT_MS, MAX_SF_INTEGER};
pub use gateway::{Fetch, Gateway, Isolate, Reply, Request, Step};
pub use http::{rate_limit_headers, Asset, Body, Header, Response};
pub use identity::{identify, Caller, IdentityError, DEFAULT_IPV6_PREFIX};
pub use jwt::{JwtConfig, JwtError, JwtMode, JwtSettings, SignatureCheck, Verification, Verified};
pub use key::bucket_key;
pub use lease::{GiveBack, Lease, LeaseBook, LeaseCounts, Want, MIN_LEASE};
pub use limit::{Algorithm, Limit};
pub use limiter::{
    script_call, Check, Failure, Limiter, Next, Outcome, ScriptCall, Settlement, TransportError,
    DEFAULT_DENY_CACHE_MAX_MS, DENY_CACHE_ENTRIES, LOAD_EPISODE_MS, LOCAL_BUCKETS,
};
pub use log::caller_id;
pub use metrics::{Event, HeldCounts, Histogram, Metrics, Report, Totals, DENIED_KEY, LATENCY_BUCKETS_MS, METRICS_KEY};
pub use overrides::{Override, Scope};
pub use path::{normalize, normalize_with, path_and_query, views};
pub use plan::{
    limits_for, plan, plan_select, Limited, Plan, RequestFacts, Select, Target, CANDIDATE_SUBJECT_PREFIX,
    DEFAULT_POLICY,
};
pub use policy::{parse_net, Applied, CountBy, Facts, LimitRule, Lists, Policy, Rule, Tiered};
pub use rate::Refill;
pub use rpc::{CallError, ErrorKind, Method, MAX_KEY_BYTES};
pub use script::{Variant, SCRIPT_FLAGGED, SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN, SCRIPT_PLAIN_SHA};
pub use settle::{Delivered, Settle, Usage};
pub use upstash::{eval_body, evalsha_body, parse_script_reply, RestError};
pub use wire::{decode_request, decode_step, decode_vars, encode_start, encode_step, reply};
