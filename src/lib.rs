//! edge-ratelimit: an API-gateway rate limiter for Cloudflare Workers.
//!
//! Every request is identified, mapped to limits (token buckets, sliding or fixed windows, in-flight
//! slots) per caller and API path, and decided by one atomic Lua script in Redis (reached over the
//! Upstash REST API), then forwarded to the origin or answered 429.
//!
//! Glossary (one word, one meaning):
//! - **policy** — the rules document (`RATE_LIMIT_POLICY`, [`Policy`]); **rule** — one of its entries
//!   (methods + route → limits); **limit** — one bucket, window or set of in-flight slots of a rule
//!   ([`Limit`]), named in `RateLimit-Policy`; **tier** — a named set of a limit's numbers.
//! - **caller** — who is calling ([`Caller`]: a verified token's subject, a trusted header, the IP);
//!   **subject** — whose bucket a limit counts (the caller, or a `by: ip | header:… | global` value);
//!   **key** — the Redis key of one limit of one subject (`rate:{<subject>}:<route>…`).
//! - **check** — one limit that applies to a request, with its key, cost and [`Mode`] ([`Check`]);
//!   **decision** — what the script (or the local bucket) said of a request's checks ([`Decision`]);
//!   **outcome** — what the gateway does with it, the fail mode applied ([`Outcome`]).
//! - **step** — what the core asks the executor to do next ([`Step`]); **ticket** — the number a
//!   step's reply comes back under ([`Gateway::resume`]); **work** — what a ticket waits for.
//! - **lease** — tokens debited in Redis for one isolate and spent without a call; **grant** — one
//!   addition to a lease; **give-back** — returning a lease's unspent tokens; **wake** — the step that
//!   carries the lease chain on after a response.
//! - **slot** — one admitted request of an in-flight limit, held until its response is delivered;
//!   **settlement** — after a response, releasing its slots and charging or refunding its cost;
//!   **batch** — the settlements of many responses sent in one call (merged per key, one marker).
//!
//! Module map: concern folders, layered; a module uses only modules of its own layer or below (no
//! import circle, none running back up: `tests/architecture.rs` checks both from the sources). Only
//! `edge` names `worker`, and nothing reads a clock or the network: time comes in as an argument, I/O
//! goes out as a [`Step`].
//! 1. `edge/`     — the executor's Rust half: `exports` (wasm32 only: four synchronous exports around an
//!    [`Isolate`]; `js/shim.mjs` is the other half and carries out the steps) and `wire` (steps and
//!    replies as the executor's text).
//! 2. `gateway/`  — the whole request, one file a job: `mod.rs` the HTTP entries ([`Gateway::begin`]:
//!    requests, quota reads, the admin API), `step` the executor protocol, `work` pending work and
//!    [`Gateway::resume`], `decide` decisions and candidates, `after` what follows a response (one
//!    `After` owns the watched responses, the batch of releases and settlements, the lease chain),
//!    `call` the RPC entry, `rpc` its arguments and results (`env.LIMITER.limit({ key })`), `isolate`
//!    a gateway for an isolate's lifetime.
//! 3. `ops/`      — operating it: `admin` (routes, auth, peek/reset, overrides, status), `metrics`
//!    (per-isolate counts reported to Redis, read back as Prometheus text), `quota` (the caller quota
//!    endpoint), `log` (JSON log lines, callers named by a keyed hash).
//! 4. `http`      — every response and every header the gateway renders.
//! 5. `limiter/`  — one isolate's view of the shared buckets: the script call and its NOSCRIPT
//!    recovery, deny cache, fail mode, the local buckets that bound fail-open traffic; `lease`, tokens
//!    of busy keys debited in Redis for this isolate and spent without a call; `known`, which override
//!    keys exist (so a call reads only those).
//! 6. `store/`    — Redis: `script` (the Lua script and its build-time SHA1s), `upstash` (the REST
//!    protocol: bodies in, classified replies out), `decision` (what the script said, per limit,
//!    bounded by what the call asked), `bucket` (the script's arithmetic in Rust: the reference the Lua
//!    agrees with bit for bit, and the local fail-open bucket), `place` (where a key lives when the data
//!    is spread over several databases or a Redis Cluster).
//! 7. `policy/`   — what applies: `config` (validated configuration), `document` (rules, tiers, lists),
//!    `limit`, `rate`, `settle` (settle sources and what was delivered), `overrides` (live overrides for
//!    a caller, tier or route), `check` (one limit that applies to a request, and how it takes part),
//!    `plan` (a request's plan: identity, lists, the limits that apply).
//! 8. `identity/` — who is calling, on which canonical path, in which bucket: `caller`, `jwt` (verified
//!    callers: algorithm pinned by key, time passed in, asymmetric signatures checked by the
//!    executor's WebCrypto), `path`, `key`.
//! 9. `json`      — the JSON writer every layer uses.

// A small public surface: `pub(crate)` unless the crate's users (tests, benches, fuzz, examples) need it.
#![warn(unreachable_pub)]

mod edge;
mod gateway;
mod http;
mod identity;
mod json;
mod limiter;
mod ops;
mod policy;
mod store;

// The public surface: what tests, benches, fuzz targets and examples use (the executor uses `edge`).
pub use edge::wire::{decode_request, encode_step, reply};
pub use gateway::rpc::{ErrorKind, Method, MAX_KEY_BYTES};
pub use gateway::{Fetch, Gateway, Isolate, Reply, Request, Step};
pub use http::{rate_limit_headers, Asset, Body, Header};
pub use identity::caller::{identify, Caller};
pub use identity::jwt::{JwtConfig, JwtError, JwtMode, JwtSettings, SignatureCheck, Verification, Verified};
pub use identity::key::bucket_key;
pub use identity::path::{normalize, normalize_with, views};
pub use limiter::lease::{GiveBack, Lease, LeaseBook, Want, MIN_LEASE};
pub use limiter::{Debited, Failure, Limiter, Next, Outcome, ScriptCall, TransportError};
pub use ops::admin::{admin_target, MAX_BODY_BYTES};
pub use ops::log::caller_id;
pub use ops::metrics::{Event, Report, Totals, METRICS_KEY};
pub use policy::check::{Check, Mode};
pub use policy::config::{Candidate, Clock, Config, FailMode, LeaseConfig, VARIABLES};
pub use policy::document::{Facts, Policy};
pub use policy::limit::{Algorithm, Limit};
pub use policy::overrides::Override;
pub use policy::plan::plan;
pub use policy::rate::Refill;
pub use policy::settle::{Delivered, Settle};
pub use store::bucket;
pub use store::decision::{Asked, Decision, LimitStatus, MAX_SF_INTEGER};
pub use store::place::{shard_of, tag_of, Place, Places};
pub use store::script::{Variant, SCRIPT_FLAGGED, SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN, SCRIPT_PLAIN_SHA};
pub use store::upstash::{evalsha_body, parse_script_reply, RestError};
