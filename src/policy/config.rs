//! Gateway configuration, read once per isolate from environment variables
//! (wrangler.toml `[vars]` and secrets) and validated strictly: every bad value
//! is an error naming its variable, never a silent default.

use std::fmt;

use crate::identity::caller::DEFAULT_IPV6_PREFIX;
use crate::identity::jwt::{JwtConfig, JwtSettings};
use crate::json::Q;
use sha2::{Digest, Sha256};

use crate::policy::document::Policy;
use crate::policy::limit::{Algorithm, Limit, LimitPart};
use crate::policy::rate::Refill;

/// What to do when Redis cannot decide in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Forward the request, marked as not rate-limited.
    Open,
    /// Answer 503 with `Retry-After`.
    Closed,
}

/// Where the token bucket's clock comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Redis `TIME` inside the script: one clock for every location, one more command per call.
    Redis,
    /// The Worker's clock, passed to the script (default). The script never lets a bucket's or a
    /// sliding window's time run backwards, so a clock behind mints nothing and one `d` ahead admits at
    /// most `rate × d` early; a fixed window's edges follow each isolate's clock (docs/design.md).
    Worker,
}

#[derive(Debug, PartialEq)]
pub struct Config {
    /// The first database's REST URL (the only one unless several are listed).
    pub redis_url: String,
    pub redis_token: Secret,
    /// `Bearer <token>`, built once.
    pub redis_authorization: Secret,
    /// Every database's REST URL and authorization, in the order listed (shards: each subject's keys
    /// live on the one [`crate::store::place::shard_of`] picks).
    pub redis_urls: Vec<String>,
    pub redis_authorizations: Vec<Secret>,
    /// The databases are Redis Clusters (`REDIS_CLUSTER`): one script call touches one slot.
    pub redis_cluster: bool,
    /// During a shard change: the list before it (`UPSTASH_REDIS_REST_URL_PREVIOUS`, each also in the
    /// current list) and when the new list took effect (`SHARDS_CHANGED_AT`, epoch ms).
    pub redis_previous: Option<(Vec<String>, i64)>,
    pub limit: Limit,
    /// Lower-case header name carrying a trusted user id; `None` identifies callers by IP only.
    pub user_id_header: Option<String>,
    /// Base URL requests are forwarded to (no trailing slash); `None` forwards to the request's own URL.
    pub origin: Option<String>,
    pub fail_mode: FailMode,
    pub redis_timeout_ms: u32,
    pub clock: Clock,
    /// Fold ASCII letters in paths to lower case before keying (for case-insensitive origins).
    pub path_case_insensitive: bool,
    /// IPv6 callers are grouped by this prefix length (one /64 is usually one site).
    pub ipv6_prefix: u8,
    pub jwt: JwtConfig,
    /// A policy tried beside the live one (`RATE_LIMIT_POLICY_CANDIDATE`): `Ok(None)` none, `Err` a
    /// document that does not parse (the live policy keeps working; the admin API and the log say why).
    pub candidate: Result<Option<Candidate>, ConfigError>,
    /// Where callers read their own quota (`QUOTA_PATH`, a canonical path); `None`: off.
    pub quota_path: Option<String>,
    /// The quota endpoint's own bucket per caller ([`QUOTA_CAPACITY`]).
    pub quota_limit: Limit,
    /// Rules from `RATE_LIMIT_POLICY`; `None`: one bucket per caller and path with [`Config::limit`].
    pub policy: Option<Policy>,
    /// SHA-256 of `ADMIN_TOKEN`; `None`: the admin API is off (its paths answer 404) and no metrics are kept.
    pub admin_token_sha256: Option<[u8; 32]>,
    /// Where the admin API lives: starts and ends with `/`.
    pub admin_prefix: String,
    /// How often an isolate reports its metrics to Redis (0: after every request).
    pub metrics_flush_ms: u32,
    /// How long a cached denial stands at most before Redis is asked again.
    pub deny_cache_max_ms: u32,
    /// How log lines name callers (`LOG_CALLER_IDS`).
    pub log_caller_ids: LogCallerIds,
    /// Leases of tokens for busy keys (`RATE_LIMIT_LEASES`, `RATE_LIMIT_LEASE_SHARE`, `RATE_LIMIT_LEASE_MS`).
    pub leases: LeaseConfig,
    /// Benchmark only (`BENCH_FLOOR`): do nothing but a floor's work.
    #[cfg(feature = "bench-floor")]
    pub bench_floor: Option<BenchFloor>,
}

/// A candidate policy and the short digest of its document (its counters are kept under it, so a
/// changed candidate starts counting afresh).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub policy: Policy,
    /// 16 hex digits of the document's SHA-256.
    pub digest: String,
}

/// How long a cached denial stands by default: an admin reset or a raised override reaches every
/// isolate within it, and a caller hammering an empty bucket costs at most one call per second.
pub(crate) const DEFAULT_DENY_CACHE_MAX_MS: u32 = 1_000;

/// The quota endpoint's own bucket per caller: this many reads, refilled at [`QUOTA_REFILL`].
pub(crate) const QUOTA_CAPACITY: u32 = 60;
pub(crate) const QUOTA_REFILL: &str = "60/min";

/// The quota endpoint's own limit (never leased: every read asks Redis).
pub(crate) fn quota_limit() -> Limit {
    let limit = Limit::new(QUOTA_CAPACITY, Refill::parse(QUOTA_REFILL).expect("a valid refill"), 60);
    limit.expect("a valid limit").with_lease(false)
}

/// How isolates lease tokens of busy keys (see [`crate::limiter`]'s leases).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseConfig {
    /// `RATE_LIMIT_LEASES = "auto"` (the default) or `"off"` (no leases anywhere).
    pub on: bool,
    /// The largest share of a limit's capacity one isolate may hold in a lease (`RATE_LIMIT_LEASE_SHARE`).
    pub share: f64,
    /// How long a grant of a lease may be spent from its reply (`RATE_LIMIT_LEASE_MS`).
    pub horizon_ms: u32,
    /// The calls' deadline (`REDIS_TIMEOUT_MS`): a grant is spent at most `horizon_ms + deadline_ms`
    /// after the script debited it (the script's lease slot).
    pub deadline_ms: u32,
}

/// The default lease share: one isolate holds at most 5 % of a bucket, so leases start at capacity 40.
pub(crate) const DEFAULT_LEASE_SHARE: f64 = 0.05;
/// The default lease horizon.
pub(crate) const DEFAULT_LEASE_MS: u32 = 1_000;

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { on: true, share: DEFAULT_LEASE_SHARE, horizon_ms: DEFAULT_LEASE_MS, deadline_ms: 500 }
    }
}

/// How the gateway's log lines name a caller.
#[derive(Clone, PartialEq, Eq)]
pub enum LogCallerIds {
    /// A short keyed hash (see [`crate::ops::log`]): the same caller has the same hash in every isolate of one
    /// deployment, and nobody without the REST token can test a guess (an IP address, an email) against it.
    Hashed { key: [u8; 32] },
    /// As in bucket keys (`alice`, `@ip/203.0.113.7`).
    Plain,
}

impl fmt::Debug for LogCallerIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogCallerIds::Hashed { .. } => "Hashed",
            LogCallerIds::Plain => "Plain",
        })
    }
}

/// The benchmark's floors (feature `bench-floor`, never in a deployed build).
#[cfg(feature = "bench-floor")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchFloor {
    /// Answer 429 at once, as the Worker that only answers 429.
    Deny,
    /// One plain REST call, then forward, as the limit Worker.
    Limit,
}

/// Every variable the configuration reads (the executor passes these, and only these, from `env`).
pub const VARIABLES: [&str; 37] = [
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "REDIS_CLUSTER",
    "UPSTASH_REDIS_REST_URL_PREVIOUS",
    "SHARDS_CHANGED_AT",
    "RATE_LIMIT_CAPACITY",
    "RATE_LIMIT_REFILL",
    "RATE_LIMIT_TTL_SECONDS",
    "RATE_LIMIT_ALGORITHM",
    "USER_ID_HEADER",
    "ORIGIN_URL",
    "FAIL_MODE",
    "REDIS_TIMEOUT_MS",
    "RATE_LIMIT_CLOCK",
    "PATH_CASE_INSENSITIVE",
    "IPV6_PREFIX",
    "JWT_MODE",
    "JWT_SECRET",
    "JWT_JWKS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_LEEWAY_SECONDS",
    "JWT_REQUIRE_EXP",
    "JWT_SUBJECT_CLAIM",
    "JWT_TIER_CLAIM",
    "RATE_LIMIT_POLICY",
    "RATE_LIMIT_POLICY_CANDIDATE",
    "QUOTA_PATH",
    "ADMIN_TOKEN",
    "ADMIN_PREFIX",
    "METRICS_FLUSH_MS",
    "DENY_CACHE_MAX_MS",
    "LOG_CALLER_IDS",
    "RATE_LIMIT_LEASES",
    "RATE_LIMIT_LEASE_SHARE",
    "RATE_LIMIT_LEASE_MS",
    "BENCH_FLOOR",
];

/// A configuration error: the variable at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) const DEFAULT_CAPACITY: u32 = 5;
pub(crate) const DEFAULT_REFILL: &str = "5/min";
pub(crate) const DEFAULT_TTL_SECONDS: u64 = 60;
pub(crate) const DEFAULT_USER_ID_HEADER: &str = "x-user-id";
pub(crate) const DEFAULT_REDIS_TIMEOUT_MS: u32 = 500;
pub(crate) const MAX_REDIS_TIMEOUT_MS: u32 = 30_000;
pub(crate) const DEFAULT_ADMIN_PREFIX: &str = "/__ratelimit/";
pub(crate) const MIN_ADMIN_TOKEN_BYTES: usize = 16;
pub(crate) const DEFAULT_METRICS_FLUSH_MS: u32 = 10_000;
/// The most databases `UPSTASH_REDIS_REST_URL` may list.
pub(crate) const MAX_SHARDS: usize = 256;

impl Config {
    /// Builds the configuration from a variable lookup (`None` = not set).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let err = |variable: &'static str, message: String| ConfigError { variable, message };

        // Several databases (shards): comma-separated URLs, and one token for all or one per URL.
        let urls = required(&var, "UPSTASH_REDIS_REST_URL")?;
        let mut redis_urls: Vec<String> = Vec::new();
        let listed = urls.split(',').count();
        for (i, url) in urls.split(',').enumerate() {
            let which = if listed > 1 { format!("URL {} of {listed}: ", i + 1) } else { String::new() };
            let url = parse_url(url.trim()).map_err(|m| err("UPSTASH_REDIS_REST_URL", format!("{which}{m}")))?;
            if let Some(j) = redis_urls.iter().position(|u| *u == url) {
                return Err(err(
                    "UPSTASH_REDIS_REST_URL",
                    format!("URL {} repeats URL {}: each database once", i + 1, j + 1),
                ));
            }
            redis_urls.push(url);
        }
        if redis_urls.len() > MAX_SHARDS {
            return Err(err(
                "UPSTASH_REDIS_REST_URL",
                format!("lists {} databases; at most {MAX_SHARDS}", redis_urls.len()),
            ));
        }
        // The token is a secret: messages never repeat it.
        let tokens_text = required(&var, "UPSTASH_REDIS_REST_TOKEN")?;
        let tokens: Vec<&str> = tokens_text.split(',').map(str::trim).collect();
        if tokens.len() != 1 && tokens.len() != redis_urls.len() {
            return Err(err(
                "UPSTASH_REDIS_REST_TOKEN",
                format!(
                    "lists {} tokens for {} URLs in UPSTASH_REDIS_REST_URL: give one token for all, or one per URL in the same order",
                    tokens.len(),
                    redis_urls.len()
                ),
            ));
        }
        for (i, t) in tokens.iter().enumerate() {
            let which = if tokens.len() > 1 { format!("token {} of {}: ", i + 1, tokens.len()) } else { String::new() };
            if t.is_empty() {
                return Err(err("UPSTASH_REDIS_REST_TOKEN", format!("{which}is empty")));
            }
            if t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(err("UPSTASH_REDIS_REST_TOKEN", format!("{which}must be printable ASCII without spaces")));
            }
        }
        let redis_authorizations: Vec<Secret> =
            (0..redis_urls.len()).map(|i| Secret(format!("Bearer {}", tokens[i.min(tokens.len() - 1)]))).collect();
        let redis_previous = match optional(&var, "UPSTASH_REDIS_REST_URL_PREVIOUS") {
            None => None,
            Some(list) => {
                let mut previous = Vec::new();
                let listed = list.split(',').count();
                for (i, url) in list.split(',').enumerate() {
                    let url = parse_url(url.trim()).map_err(|m| {
                        err("UPSTASH_REDIS_REST_URL_PREVIOUS", format!("URL {} of {listed}: {m}", i + 1))
                    })?;
                    if !redis_urls.contains(&url) {
                        return Err(err(
                            "UPSTASH_REDIS_REST_URL_PREVIOUS",
                            format!(
                                "URL {} of {listed} is not in UPSTASH_REDIS_REST_URL: a shard change adds databases, \
                                 so the new list keeps every old one",
                                i + 1
                            ),
                        ));
                    }
                    previous.push(url);
                }
                let at = optional(&var, "SHARDS_CHANGED_AT").ok_or_else(|| {
                    err(
                        "SHARDS_CHANGED_AT",
                        "is required with UPSTASH_REDIS_REST_URL_PREVIOUS: when the new list took effect, in \
                         epoch seconds (date +%s when you deploy it)"
                            .into(),
                    )
                })?;
                let at: f64 = at
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s: &f64| (1_577_836_800.0..4_102_444_800.0).contains(s))
                    .ok_or_else(|| {
                    err("SHARDS_CHANGED_AT", "must be epoch seconds between 2020 and 2100".into())
                })?;
                Some((previous, (at * 1000.0).floor() as i64))
            }
        };
        if redis_previous.is_none() && optional(&var, "SHARDS_CHANGED_AT").is_some() {
            return Err(err("SHARDS_CHANGED_AT", "is set without UPSTASH_REDIS_REST_URL_PREVIOUS".into()));
        }
        let redis_token = tokens[0].to_string();
        let redis_url = redis_urls[0].clone();
        let cluster = match optional(&var, "REDIS_CLUSTER").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(_) => return Err(err("REDIS_CLUSTER", "must be true or false".into())),
        };

        let capacity = match optional(&var, "RATE_LIMIT_CAPACITY") {
            None => u64::from(DEFAULT_CAPACITY),
            Some(v) => parse_whole(&v).map_err(|m| err("RATE_LIMIT_CAPACITY", m))?,
        };
        let refill = optional(&var, "RATE_LIMIT_REFILL").unwrap_or_else(|| DEFAULT_REFILL.into());
        let refill = Refill::parse(&refill).map_err(|m| err("RATE_LIMIT_REFILL", m))?;
        let ttl = match optional(&var, "RATE_LIMIT_TTL_SECONDS") {
            None => DEFAULT_TTL_SECONDS,
            Some(v) => parse_whole(&v).map_err(|m| err("RATE_LIMIT_TTL_SECONDS", m))?,
        };
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        let limit = Limit::new(capacity, refill, ttl).map_err(|e| match e.part {
            LimitPart::Capacity => err("RATE_LIMIT_CAPACITY", e.message),
            LimitPart::Ttl => err("RATE_LIMIT_TTL_SECONDS", e.message),
            LimitPart::Refill => err(
                "RATE_LIMIT_REFILL",
                e.message.replace("the refill or lower the capacity", "RATE_LIMIT_REFILL or lower RATE_LIMIT_CAPACITY"),
            ),
        })?;
        let limit = match optional(&var, "RATE_LIMIT_ALGORITHM") {
            None => limit,
            Some(a) => limit.with_algorithm(Algorithm::parse(&a.to_ascii_lowercase()).ok_or_else(|| {
                err(
                    "RATE_LIMIT_ALGORITHM",
                    format!("must be \"token-bucket\", \"sliding-window\" or \"fixed-window\", got {}", Q(&a)),
                )
            })?),
        };

        let user_id_header = match var("USER_ID_HEADER") {
            None => Some(DEFAULT_USER_ID_HEADER.to_string()),
            Some(v) if v.trim().is_empty() => None,
            Some(v) => {
                let name = v.trim().to_ascii_lowercase();
                if !name.bytes().all(is_token_byte) {
                    return Err(err("USER_ID_HEADER", format!("{} is not a valid HTTP header name", Q(&v))));
                }
                Some(name)
            }
        };

        let origin = match optional(&var, "ORIGIN_URL") {
            None => None,
            Some(v) => {
                let url = parse_url(&v).map_err(|m| err("ORIGIN_URL", m))?;
                if url.contains(['?', '#']) {
                    return Err(err(
                        "ORIGIN_URL",
                        "must not have a query or fragment: the request's own are kept".into(),
                    ));
                }
                Some(url)
            }
        };

        let fail_mode = match optional(&var, "FAIL_MODE").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("open") => FailMode::Open,
            Some("closed") => FailMode::Closed,
            Some(other) => return Err(err("FAIL_MODE", format!("must be \"open\" or \"closed\", got {}", Q(&other)))),
        };

        let redis_timeout_ms = match optional(&var, "REDIS_TIMEOUT_MS") {
            None => DEFAULT_REDIS_TIMEOUT_MS,
            Some(v) => match parse_whole(&v) {
                Ok(ms) if (1..=u64::from(MAX_REDIS_TIMEOUT_MS)).contains(&ms) => ms as u32,
                Ok(_) => {
                    return Err(err(
                        "REDIS_TIMEOUT_MS",
                        format!("must be from 1 to {MAX_REDIS_TIMEOUT_MS} milliseconds, got {v}"),
                    ))
                }
                Err(m) => return Err(err("REDIS_TIMEOUT_MS", m)),
            },
        };

        let clock = match optional(&var, "RATE_LIMIT_CLOCK").as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("redis") => Clock::Redis,
            None | Some("worker") => Clock::Worker,
            Some(other) => {
                return Err(err("RATE_LIMIT_CLOCK", format!("must be \"redis\" or \"worker\", got {}", Q(&other))))
            }
        };

        let path_case_insensitive = match optional(&var, "PATH_CASE_INSENSITIVE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(err("PATH_CASE_INSENSITIVE", format!("must be \"true\" or \"false\", got {}", Q(&other))))
            }
        };

        let ipv6_prefix = match optional(&var, "IPV6_PREFIX") {
            None => DEFAULT_IPV6_PREFIX,
            Some(v) => match parse_whole(&v) {
                Ok(p) if (1..=128).contains(&p) => p as u8,
                Ok(_) => return Err(err("IPV6_PREFIX", format!("must be a prefix length from 1 to 128, got {v}"))),
                Err(m) => return Err(err("IPV6_PREFIX", m)),
            },
        };

        let jwt = JwtConfig::new(JwtSettings {
            mode: optional(&var, "JWT_MODE").as_deref(),
            secret: var("JWT_SECRET").as_deref().filter(|s| !s.is_empty()),
            jwks: optional(&var, "JWT_JWKS").as_deref(),
            issuer: optional(&var, "JWT_ISSUER"),
            audience: optional(&var, "JWT_AUDIENCE"),
            leeway_s: match optional(&var, "JWT_LEEWAY_SECONDS") {
                None => 30,
                Some(v) => parse_whole(&v).map_err(|m| err("JWT_LEEWAY_SECONDS", m))?,
            },
            subject_claim: optional(&var, "JWT_SUBJECT_CLAIM").unwrap_or_else(|| "sub".into()),
            tier_claim: optional(&var, "JWT_TIER_CLAIM").unwrap_or_else(|| "tier".into()),
            require_exp: match optional(&var, "JWT_REQUIRE_EXP").as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(err("JWT_REQUIRE_EXP", format!("must be \"true\" or \"false\", got {}", Q(&other))))
                }
            },
        })
        .map_err(|(variable, message)| err(variable, message))?;

        let policy = match optional(&var, "RATE_LIMIT_POLICY") {
            None => None,
            Some(doc) => Some(
                Policy::parse(&doc, limit.ttl_seconds(), path_case_insensitive)
                    .map_err(|m| err("RATE_LIMIT_POLICY", m))?,
            ),
        };

        let candidate = match optional(&var, "RATE_LIMIT_POLICY_CANDIDATE") {
            None => Ok(None),
            Some(doc) => match Policy::parse(&doc, limit.ttl_seconds(), path_case_insensitive) {
                Ok(policy) => {
                    let mut digest = String::with_capacity(16);
                    for b in &Sha256::digest(doc.as_bytes())[..8] {
                        digest.push_str(&format!("{b:02x}"));
                    }
                    Ok(Some(Candidate { policy, digest }))
                }
                Err(m) => Err(err("RATE_LIMIT_POLICY_CANDIDATE", m)),
            },
        };

        // A secret: messages never repeat it, and only its digest is kept.
        let admin_token_sha256 = match var("ADMIN_TOKEN").map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) if t.len() < MIN_ADMIN_TOKEN_BYTES || t.bytes().any(|b| !(0x21..0x7f).contains(&b)) => {
                return Err(err(
                    "ADMIN_TOKEN",
                    format!("must be at least {MIN_ADMIN_TOKEN_BYTES} printable ASCII characters without spaces"),
                ))
            }
            Some(t) => Some(Sha256::digest(t.as_bytes()).into()),
        };
        let admin_prefix = optional(&var, "ADMIN_PREFIX").unwrap_or_else(|| DEFAULT_ADMIN_PREFIX.into());
        let prefix_ok = admin_prefix.len() >= 3
            && admin_prefix.starts_with('/')
            && admin_prefix.ends_with('/')
            && admin_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-.~".contains(&b))
            && !admin_prefix.contains("//")
            && !admin_prefix.split('/').any(|s| s == "." || s == "..");
        if !prefix_ok {
            return Err(err(
                "ADMIN_PREFIX",
                format!(
                    "must be a path like \"/__ratelimit/\" (starts and ends with /, letters, digits, _-.~), got {}",
                    Q(&admin_prefix)
                ),
            ));
        }
        // (One message for a value below and above the range: it names the range that is accepted.)
        let whole_ms = |name: &'static str, default: u32, min: u32, max: u32| -> Result<u32, ConfigError> {
            match optional(&var, name) {
                None => Ok(default),
                Some(v) => match parse_whole(&v) {
                    Ok(ms) if (u64::from(min)..=u64::from(max)).contains(&ms) => Ok(ms as u32),
                    Ok(_) => Err(err(name, format!("must be from {min} to {max} milliseconds, got {v}"))),
                    Err(m) => Err(err(name, m)),
                },
            }
        };
        let quota_path = match optional(&var, "QUOTA_PATH") {
            None => None,
            Some(p) => {
                let canonical = crate::identity::path::normalize_with(&p, path_case_insensitive);
                if !p.starts_with('/') || canonical != p || p == "/" || p.contains(['?', '#', ';', '%']) {
                    return Err(err(
                        "QUOTA_PATH",
                        format!(
                            "must be a plain path like \"/.well-known/ratelimit\" (canonical, not /), got {}",
                            Q(&p)
                        ),
                    ));
                }
                let under_admin = format!("{p}/").to_ascii_lowercase().starts_with(&admin_prefix.to_ascii_lowercase());
                if under_admin {
                    return Err(err("QUOTA_PATH", format!("must not be under ADMIN_PREFIX ({})", Q(&admin_prefix))));
                }
                Some(p)
            }
        };
        let metrics_flush_ms = whole_ms("METRICS_FLUSH_MS", DEFAULT_METRICS_FLUSH_MS, 0, 3_600_000)?;
        let deny_cache_max_ms = whole_ms("DENY_CACHE_MAX_MS", DEFAULT_DENY_CACHE_MAX_MS, 0, 86_400_000)?;

        let log_caller_ids = match optional(&var, "LOG_CALLER_IDS").as_deref().map(str::trim) {
            None | Some("hashed") => {
                // Keyed by the REST token, so a hash cannot be reversed by hashing guesses.
                let key: [u8; 32] =
                    Sha256::new().chain_update(b"edge-ratelimit log ").chain_update(&redis_token).finalize().into();
                LogCallerIds::Hashed { key }
            }
            Some("plain") => LogCallerIds::Plain,
            Some(other) => {
                return Err(err("LOG_CALLER_IDS", format!("must be \"hashed\" or \"plain\", got {}", Q(other))));
            }
        };

        let leases = LeaseConfig {
            on: match optional(&var, "RATE_LIMIT_LEASES").as_deref() {
                None | Some("auto") => true,
                Some("off") => false,
                Some(other) => {
                    return Err(err("RATE_LIMIT_LEASES", format!("must be \"auto\" or \"off\", got {}", Q(other))));
                }
            },
            share: match optional(&var, "RATE_LIMIT_LEASE_SHARE") {
                None => DEFAULT_LEASE_SHARE,
                Some(v) => match v.parse::<f64>() {
                    Ok(x) if x > 0.0 && x <= 0.5 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => x,
                    _ => {
                        return Err(err(
                            "RATE_LIMIT_LEASE_SHARE",
                            format!(
                                "must be a decimal above 0 and at most 0.5 (0.05 = 5 % of a bucket), got {}",
                                Q(&v)
                            ),
                        ))
                    }
                },
            },
            horizon_ms: whole_ms("RATE_LIMIT_LEASE_MS", DEFAULT_LEASE_MS, 10, 10_000)?,
            deadline_ms: redis_timeout_ms,
        };

        #[cfg(feature = "bench-floor")]
        let bench_floor = match optional(&var, "BENCH_FLOOR").as_deref() {
            Some("deny") => Some(BenchFloor::Deny),
            Some("limit") => Some(BenchFloor::Limit),
            _ => None,
        };

        Ok(Config {
            #[cfg(feature = "bench-floor")]
            bench_floor,
            admin_token_sha256,
            admin_prefix,
            metrics_flush_ms,
            deny_cache_max_ms,
            log_caller_ids,
            leases,
            candidate,
            quota_path,
            quota_limit: quota_limit(),
            jwt,
            policy,
            redis_authorization: Secret(format!("Bearer {redis_token}")),
            redis_url,
            redis_urls,
            redis_authorizations,
            redis_cluster: cluster,
            redis_previous,
            redis_token: Secret(redis_token),
            limit,
            user_id_header,
            origin,
            fail_mode,
            redis_timeout_ms,
            clock,
            path_case_insensitive,
            ipv6_prefix,
        })
    }
}

/// A set, non-blank variable, trimmed; blank counts as unset.
fn optional(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn required(var: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<String, ConfigError> {
    optional(var, name).ok_or_else(|| ConfigError {
        variable: name,
        message: "is not set (a secret: `wrangler secret put`; locally: .dev.vars)".into(),
    })
}

/// A whole number of plain digits: no sign, no fraction, no exponent, at most 2^53.
fn parse_whole(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("must be a whole number, got {}", Q(&text)));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= 1 << 53 => Ok(n),
        _ => Err(format!("{text} is too large")),
    }
}

/// An absolute http(s) URL with a host and no credentials; returned without a trailing slash.
///
/// The messages never repeat the value, not even in part: these variables are secrets (the console's
/// `rediss://` Redis URL carries the database password), and the message reaches a 500 body and the log.
fn parse_url(text: &str) -> Result<String, String> {
    let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("redis" | "rediss")) {
        return Err("is a Redis URL (redis:// or rediss://, which carries the password), not the REST URL: \
                    use the https:// URL from the REST API section of the Upstash console"
            .into());
    }
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("must be an absolute https:// (or http://) URL")?;
    if let Some(at) = text.bytes().position(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("contains a space or control character (at character {})", at + 1));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not carry credentials (user:password@ before the host); \
                    the REST token goes in UPSTASH_REDIS_REST_TOKEN"
            .into());
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err("has no host: expected https://<host>[:port][/path]".into());
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// A secret value: kept as it is, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = [
            ("UPSTASH_REDIS_REST_URL", "https://eu1-example.upstash.io"),
            ("UPSTASH_REDIS_REST_TOKEN", "s3cret-token"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        Config::from_env(|name| map.get(name).cloned())
    }

    fn rejected(vars: &[(&str, &str)]) -> ConfigError {
        config(vars).expect_err("configuration should be rejected")
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.redis_url, "https://eu1-example.upstash.io");
        assert_eq!(c.redis_token.expose(), "s3cret-token");
        assert_eq!(c.limit.capacity(), 5);
        assert_eq!(c.limit.refill().tokens_per_second(), 5.0 / 60.0);
        assert_eq!(c.limit.ttl_seconds(), 60);
        assert_eq!(c.user_id_header.as_deref(), Some("x-user-id"));
        assert_eq!(c.origin, None);
        assert_eq!(c.fail_mode, FailMode::Open);
        assert_eq!(c.redis_timeout_ms, 500);
        assert_eq!(c.clock, Clock::Worker);
        assert!(!c.path_case_insensitive);
        assert_eq!(c.ipv6_prefix, 64);
    }

    #[test]
    fn every_variable_is_read() {
        let c = config(&[
            ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:8079/"),
            ("RATE_LIMIT_CAPACITY", "100"),
            ("RATE_LIMIT_REFILL", "10/s"),
            ("RATE_LIMIT_TTL_SECONDS", "120"),
            ("USER_ID_HEADER", "X-Api-Client"),
            ("ORIGIN_URL", "http://127.0.0.1:9000/"),
            ("FAIL_MODE", "closed"),
            ("REDIS_TIMEOUT_MS", "250"),
            ("RATE_LIMIT_CLOCK", "Redis"),
            ("PATH_CASE_INSENSITIVE", "TRUE"),
            ("IPV6_PREFIX", "48"),
        ])
        .unwrap();
        assert!(c.path_case_insensitive);
        assert_eq!(c.ipv6_prefix, 48);
        assert_eq!(c.redis_url, "http://127.0.0.1:8079");
        assert_eq!(c.limit.capacity(), 100);
        assert_eq!(c.limit.refill().tokens_per_second(), 10.0);
        assert_eq!(c.limit.ttl_seconds(), 120);
        assert_eq!(c.user_id_header.as_deref(), Some("x-api-client"));
        assert_eq!(c.origin.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.fail_mode, FailMode::Closed);
        assert_eq!(c.redis_timeout_ms, 250);
        assert_eq!(c.clock, Clock::Redis);
    }

    #[test]
    fn blank_user_id_header_means_ip_only() {
        assert_eq!(config(&[("USER_ID_HEADER", "")]).unwrap().user_id_header, None);
    }

    #[test]
    fn short_ttl_is_raised_to_refill_time() {
        let c = config(&[("RATE_LIMIT_REFILL", "1/min"), ("RATE_LIMIT_TTL_SECONDS", "10")]).unwrap();
        assert_eq!(c.limit.ttl_seconds(), 300);
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let mut vars = HashMap::new();
        vars.insert("UPSTASH_REDIS_REST_URL".to_string(), "https://x.upstash.io".to_string());
        let e = Config::from_env(|n| vars.get(n).cloned()).unwrap_err();
        assert_eq!(e.variable, "UPSTASH_REDIS_REST_TOKEN");
        let e = Config::from_env(|_| None).unwrap_err();
        assert_eq!(e.variable, "UPSTASH_REDIS_REST_URL");
        assert!(e.to_string().starts_with("UPSTASH_REDIS_REST_URL: is not set"), "{e}");
    }

    #[test]
    fn several_databases_take_one_token_or_one_each_and_errors_never_repeat_a_token() {
        let two = |urls: &str, tokens: &str| {
            let vars: HashMap<String, String> =
                [("UPSTASH_REDIS_REST_URL", urls), ("UPSTASH_REDIS_REST_TOKEN", tokens)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            Config::from_env(|n| vars.get(n).cloned())
        };
        let c = two("https://a.upstash.io, https://b.upstash.io/", "shared").unwrap();
        assert_eq!(c.redis_urls, ["https://a.upstash.io", "https://b.upstash.io"]);
        assert_eq!(c.redis_authorizations.iter().map(|a| a.expose()).collect::<Vec<_>>(), ["Bearer shared"; 2]);
        let c = two("https://a.upstash.io,https://b.upstash.io", "ta,tb").unwrap();
        assert_eq!(c.redis_authorizations[1].expose(), "Bearer tb");
        assert!(!c.redis_cluster);
        let e = two("https://a.upstash.io,https://b.upstash.io", "s3cret-a,s3cret-b,s3cret-c").unwrap_err();
        assert_eq!(e.variable, "UPSTASH_REDIS_REST_TOKEN");
        assert!(e.message.contains("3 tokens for 2 URLs") && !e.message.contains("s3cret"), "{e}");
        let e = two("https://a.upstash.io,https://b.upstash.io", "s3cret-a,bad token").unwrap_err();
        assert!(e.message.starts_with("token 2 of 2:") && !e.message.contains("s3cret"), "{e}");
        let e = two("https://a.upstash.io,https://a.upstash.io/", "t").unwrap_err();
        assert_eq!(
            (e.variable, e.message.as_str()),
            ("UPSTASH_REDIS_REST_URL", "URL 2 repeats URL 1: each database once")
        );
        let e = two("https://a.upstash.io,redis://b:6379", "t").unwrap_err();
        assert!(e.message.starts_with("URL 2 of 2: is a Redis URL"), "{e}");
        let e = two("https://a.upstash.io,", "t").unwrap_err();
        assert!(e.message.starts_with("URL 2 of 2:"), "{e}");
        let c = two("https://a.upstash.io,https://b.upstash.io", "t").unwrap();
        assert_eq!(c.redis_previous, None);
        let change = |previous: &str, at: Option<&str>| {
            let mut vars: HashMap<String, String> = [
                ("UPSTASH_REDIS_REST_URL", "https://a.upstash.io,https://b.upstash.io"),
                ("UPSTASH_REDIS_REST_TOKEN", "t"),
                ("UPSTASH_REDIS_REST_URL_PREVIOUS", previous),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            if let Some(at) = at {
                vars.insert("SHARDS_CHANGED_AT".into(), at.into());
            }
            Config::from_env(|n| vars.get(n).cloned())
        };
        let c = change("https://a.upstash.io", Some("1796000000.5")).unwrap();
        assert_eq!(c.redis_previous, Some((vec!["https://a.upstash.io".to_string()], 1_796_000_000_500)));
        let e = change("https://a.upstash.io", None).unwrap_err();
        assert_eq!(e.variable, "SHARDS_CHANGED_AT");
        let e = change("https://c.upstash.io", Some("1796000000")).unwrap_err();
        assert_eq!(e.variable, "UPSTASH_REDIS_REST_URL_PREVIOUS");
        assert!(e.message.contains("keeps every old one"), "{e}");
        assert_eq!(change("https://a.upstash.io", Some("tomorrow")).unwrap_err().variable, "SHARDS_CHANGED_AT");
        let cluster = config(&[("REDIS_CLUSTER", "true")]).unwrap();
        assert!(cluster.redis_cluster);
        assert_eq!(config(&[("REDIS_CLUSTER", "maybe")]).unwrap_err().variable, "REDIS_CLUSTER");
    }

    #[test]
    fn each_bad_value_is_rejected_with_its_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("UPSTASH_REDIS_REST_URL", "redis://localhost:6379", "not the REST URL"),
            ("UPSTASH_REDIS_REST_URL", "https://", "no host"),
            ("UPSTASH_REDIS_REST_URL", "https://a b", "space or control character"),
            ("UPSTASH_REDIS_REST_TOKEN", "has space", "printable ASCII"),
            ("RATE_LIMIT_CAPACITY", "0", "capacity must be a whole number from 1"),
            ("RATE_LIMIT_CAPACITY", "-1", "must be a whole number"),
            ("RATE_LIMIT_CAPACITY", "5.5", "must be a whole number"),
            ("RATE_LIMIT_CAPACITY", "NaN", "must be a whole number"),
            ("RATE_LIMIT_CAPACITY", "1e3", "must be a whole number"),
            ("RATE_LIMIT_CAPACITY", "9007199254740993", "too large"),
            ("RATE_LIMIT_CAPACITY", "4294967296", "capacity must be a whole number from 1"),
            ("RATE_LIMIT_REFILL", "5/week", "unknown unit"),
            ("RATE_LIMIT_REFILL", "0/s", "greater than zero"),
            ("RATE_LIMIT_REFILL", "inf/s", "not a plain positive number"),
            ("RATE_LIMIT_TTL_SECONDS", "0", "TTL must be from 1"),
            ("RATE_LIMIT_TTL_SECONDS", "60s", "must be a whole number"),
            ("USER_ID_HEADER", "x user", "not a valid HTTP header name"),
            ("ORIGIN_URL", "ftp://origin", "absolute https://"),
            ("ORIGIN_URL", "https://origin/?a=1", "must not have a query"),
            ("FAIL_MODE", "sometimes", "must be \"open\" or \"closed\""),
            ("REDIS_TIMEOUT_MS", "0", "must be from 1 to 30000"),
            ("REDIS_TIMEOUT_MS", "30001", "must be from 1 to 30000"),
            ("REDIS_TIMEOUT_MS", "fast", "must be a whole number"),
            ("RATE_LIMIT_CLOCK", "local", "must be \"redis\" or \"worker\""),
            ("PATH_CASE_INSENSITIVE", "yes", "must be \"true\" or \"false\""),
            ("IPV6_PREFIX", "0", "prefix length from 1 to 128"),
            ("IPV6_PREFIX", "129", "prefix length from 1 to 128"),
            ("IPV6_PREFIX", "/64", "must be a whole number"),
            (
                "RATE_LIMIT_ALGORITHM",
                "fixed-windows",
                "must be \"token-bucket\", \"sliding-window\" or \"fixed-window\"",
            ),
            ("ADMIN_TOKEN", "short-token", "at least 16 printable ASCII characters"),
            ("ADMIN_TOKEN", "sixteen chars and a space", "without spaces"),
            ("ADMIN_PREFIX", "__ratelimit/", "starts and ends with /"),
            ("ADMIN_PREFIX", "/__ratelimit", "starts and ends with /"),
            ("ADMIN_PREFIX", "/a/../b/", "starts and ends with /"),
            ("ADMIN_PREFIX", "/a?b/", "starts and ends with /"),
            ("METRICS_FLUSH_MS", "3600001", "must be from 0 to 3600000"),
            ("RATE_LIMIT_LEASES", "on", "must be \"auto\" or \"off\""),
            ("RATE_LIMIT_LEASE_SHARE", "0", "above 0 and at most 0.5"),
            ("RATE_LIMIT_LEASE_SHARE", "0.6", "above 0 and at most 0.5"),
            ("RATE_LIMIT_LEASE_SHARE", "1e-2", "above 0 and at most 0.5"),
            // Issue 23, item 6: the range named is the one accepted, from either side.
            ("RATE_LIMIT_LEASE_MS", "5", "must be from 10 to 10000 milliseconds, got 5"),
            ("RATE_LIMIT_LEASE_MS", "9", "must be from 10 to 10000 milliseconds, got 9"),
            ("RATE_LIMIT_LEASE_MS", "10001", "must be from 10 to 10000 milliseconds, got 10001"),
            ("METRICS_FLUSH_MS", "soon", "must be a whole number"),
            ("DENY_CACHE_MAX_MS", "-1", "must be a whole number"),
            ("DENY_CACHE_MAX_MS", "86400001", "must be from 0 to 86400000"),
        ];
        for (variable, value, expected) in cases {
            let e = rejected(&[(variable, value)]);
            assert_eq!(&e.variable, variable, "{variable}={value:?} blamed {e}");
            assert!(e.message.contains(expected), "{variable}={value:?}: {e}");
        }
    }

    #[test]
    fn operations_variables_are_read_and_the_admin_token_is_kept_as_a_digest() {
        let c = config(&[]).unwrap();
        assert_eq!((c.admin_token_sha256, c.admin_prefix.as_str()), (None, DEFAULT_ADMIN_PREFIX));
        assert_eq!((c.metrics_flush_ms, c.deny_cache_max_ms), (DEFAULT_METRICS_FLUSH_MS, DEFAULT_DENY_CACHE_MAX_MS));
        let token = "an-admin-token-of-32-characters!";
        let c = config(&[
            ("ADMIN_TOKEN", token),
            ("ADMIN_PREFIX", "/ops/limits/"),
            ("METRICS_FLUSH_MS", "0"),
            ("DENY_CACHE_MAX_MS", "250"),
            ("RATE_LIMIT_ALGORITHM", "sliding-window"),
        ])
        .unwrap();
        assert_eq!(c.admin_token_sha256, Some(Sha256::digest(token.as_bytes()).into()));
        assert_eq!((c.admin_prefix.as_str(), c.metrics_flush_ms, c.deny_cache_max_ms), ("/ops/limits/", 0, 250));
        assert_eq!(c.limit.algorithm(), Algorithm::SlidingWindow);
        assert_eq!(c.limit.ttl_seconds(), 120, "a window keeps two windows");
        let fixed = config(&[("RATE_LIMIT_ALGORITHM", "Fixed-Window")]).unwrap().limit;
        assert_eq!((fixed.algorithm(), fixed.ttl_seconds()), (Algorithm::FixedWindow, 60));
        assert!(!format!("{c:?}").contains(token), "only the digest is kept");
        let e = rejected(&[("ADMIN_TOKEN", "short secret")]);
        assert!(!e.to_string().contains("short secret"), "{e}");
    }

    #[test]
    fn jwt_and_policy_variables_are_read_and_checked() {
        let c = config(&[("JWT_SECRET", "0123456789abcdef0123456789abcdef"), ("JWT_ISSUER", "https://auth")]).unwrap();
        assert_eq!(c.jwt.mode, crate::JwtMode::Optional);
        assert_eq!(c.jwt.issuer.as_deref(), Some("https://auth"));
        assert_eq!(c.policy, None);
        let doc = r#"{"rules":[{"name":"r","route":"/*","limits":[{"name":"l","capacity":2,"refill":"1/s"}]}]}"#;
        let c = config(&[("RATE_LIMIT_POLICY", doc)]).unwrap();
        assert_eq!(c.policy.unwrap().rules[0].limits[0].base.limit.capacity(), 2);
        for (variable, value, expected) in [
            ("JWT_SECRET", "short", "at least 32 bytes"),
            ("JWT_MODE", "required", "needs JWT_SECRET or JWT_JWKS"),
            ("JWT_JWKS", "[]", "not a JWKS document"),
            ("JWT_LEEWAY_SECONDS", "301", "from 0 to 300"),
            ("JWT_LEEWAY_SECONDS", "-1", "must be a whole number"),
            ("JWT_REQUIRE_EXP", "no", "must be \"true\" or \"false\""),
            ("RATE_LIMIT_POLICY", "{}", "missing field `rules`"),
        ] {
            let e = rejected(&[(variable, value)]);
            assert_eq!(e.variable, variable, "{e}");
            assert!(e.message.contains(expected), "{variable}={value:?}: {e}");
        }
    }

    /// Issue 10, item 1: a malformed URL secret (the console's `rediss://` Redis URL carries the
    /// password) made every request answer 500 with the whole value in the detail and the log.
    #[test]
    fn no_url_error_repeats_the_url_or_its_credentials() {
        let cases: &[(&str, &str, &str)] = &[
            ("UPSTASH_REDIS_REST_URL", "rediss://default:hunter2-secret@eu1-x.upstash.io:6379", "Redis URL"),
            ("UPSTASH_REDIS_REST_URL", "redis://default:hunter2-secret@localhost:6379", "Redis URL"),
            ("UPSTASH_REDIS_REST_URL", "https://user:hunter2-secret@eu1-x.upstash.io", "credentials"),
            ("UPSTASH_REDIS_REST_URL", "https://hunter2-secret@eu1-x.upstash.io", "credentials"),
            ("UPSTASH_REDIS_REST_URL", "https://eu1-x.upstash.io/hunter2 secret", "space or control character"),
            ("UPSTASH_REDIS_REST_URL", "ftp://hunter2-secret.example", "https://"),
            ("UPSTASH_REDIS_REST_URL", "https:///hunter2-secret", "no host"),
            ("UPSTASH_REDIS_REST_URL", "hunter2-secret", "https://"),
            ("ORIGIN_URL", "https://admin:hunter2-secret@origin.example", "credentials"),
            ("ORIGIN_URL", "https://origin.example/?hunter2-secret", "query"),
            ("ORIGIN_URL", "https://origin.example/hunter2\tsecret", "space or control character"),
        ];
        for (variable, value, expected) in cases {
            let e = rejected(&[(variable, value)]);
            assert_eq!(&e.variable, variable, "{value:?} blamed {e}");
            assert!(e.message.contains(expected), "{value:?}: {e}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hunter2"), "{variable} error repeats a secret: {shown}");
            assert!(
                !shown.contains("upstash.io") && !shown.contains("example"),
                "{variable} error repeats the URL: {shown}"
            );
        }
    }

    #[test]
    fn the_configuration_never_prints_its_secrets() {
        let c = config(&[("UPSTASH_REDIS_REST_TOKEN", "token-hunter2-secret")]).unwrap();
        assert_eq!(c.redis_token.expose(), "token-hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"), "Debug shows the REST token");
    }

    /// Issue 10, item 6: accepted, then every script call failed (EXPIRE 2.88e+17) and fail-open
    /// forwarded everything.
    #[test]
    fn a_bucket_that_would_take_longer_than_a_hundred_years_to_refill_is_refused_by_name() {
        let e = rejected(&[("RATE_LIMIT_CAPACITY", "1000000000"), ("RATE_LIMIT_REFILL", "0.0003/d")]);
        assert_eq!(e.variable, "RATE_LIMIT_REFILL", "{e}");
        assert!(e.message.contains("100 years") && e.message.contains("RATE_LIMIT_CAPACITY"), "{e}");
        let doc = r#"{"rules":[{"name":"r","route":"/*","limits":[{"name":"slow","capacity":1000000000,"refill":"0.0003/d"}]}]}"#;
        let e = rejected(&[("RATE_LIMIT_POLICY", doc)]);
        assert!(e.message.contains("limit \"slow\"") && e.message.contains("100 years"), "{e}");
    }

    /// The executor passes only the variables in [`VARIABLES`]: one the configuration reads and the
    /// list forgets would silently keep its default.
    #[test]
    fn every_variable_read_is_listed() {
        let read = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_env(|name| {
            read.borrow_mut().push(name.to_string());
            match name {
                "UPSTASH_REDIS_REST_URL" => Some("https://x.upstash.io".into()),
                "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
                "JWT_SECRET" => Some("0123456789abcdef0123456789abcdef".into()),
                "RATE_LIMIT_POLICY" => Some(
                    r#"{"rules":[{"name":"r","route":"/*","limits":[{"name":"l","capacity":1,"refill":"1/s"}]}]}"#
                        .into(),
                ),
                "ADMIN_TOKEN" => Some("0123456789abcdef".into()),
                _ => None,
            }
        })
        .unwrap();
        for name in read.borrow().iter() {
            assert!(VARIABLES.contains(&name.as_str()), "{name} is read but not in VARIABLES");
        }
        assert!(read.borrow().len() >= VARIABLES.len() - 1, "{:?}", read.borrow());
    }

    #[test]
    fn the_lease_horizon_accepts_both_ends_of_its_range() {
        for ms in [10, 10_000] {
            let c = config(&[("RATE_LIMIT_LEASE_MS", &ms.to_string())]).unwrap();
            assert_eq!(c.leases.horizon_ms, ms);
        }
    }

    #[test]
    fn token_is_never_echoed() {
        let e = rejected(&[("UPSTASH_REDIS_REST_TOKEN", "leak me")]);
        assert!(!e.to_string().contains("leak me"));
    }
}
