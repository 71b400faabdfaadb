//! The admin API, under a configurable prefix (default `/__ratelimit/`):
//! the effective policy, peek and reset of a caller's buckets, live
//! overrides, Prometheus metrics, the status page and its data, and the
//! OpenAPI document that describes all of it (`assets/openapi.json`).
//!
//! Off unless `ADMIN_TOKEN` is set (every admin path then answers 404, and
//! none reaches the origin); every operation but the status page's empty
//! shell needs `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant
//! time. Synchronous: [`route`] says what a request needs (an answer, one Redis
//! pipeline, or a peek), the gateway carries that out and hands the reply to
//! [`finish`] or [`peeked`]. Bucket keys are only ever named exactly (never
//! `KEYS`/`SCAN` with user input).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::http::{problem, problem_with, Asset, Body, Response};
use crate::identity::caller::{identify, Caller};
use crate::identity::path::{normalize_with, percent_decode, views};
use crate::json::Q;
use crate::json::{self, Obj};
use crate::limiter::known::VERSION_KEY;
use crate::limiter::{Failure, Limiter};
use crate::ops::metrics::{Totals, DENIED_KEY, METRICS_KEY};
use crate::policy::check::Check;
use crate::policy::config::{Candidate, Clock, Config, FailMode};
use crate::policy::document::limit_json;
use crate::policy::overrides::{self, Invalid, Override, Scope, INDEX_KEY};
use crate::policy::plan::{limits_for, Limited, Target};
use crate::store::decision::Decision;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The status page's Content-Security-Policy: its own inline script and style, `fetch` to itself.
pub(crate) const STATUS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An admin request's body, as far as the executor read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminBody<'a> {
    /// Not read: not a write, or the token was wrong (see [`wants_body`]).
    Unread,
    Text(&'a str),
    /// Longer than [`MAX_BODY_BYTES`] (declared or read): the rest was never read.
    TooLarge,
}

/// An admin request, as the gateway sees it.
pub(crate) struct AdminRequest<'a> {
    pub method: &'a str,
    /// The path after the prefix, as sent (still percent-encoded).
    pub rest: &'a str,
    /// The query string without `?`.
    pub query: &'a str,
    pub authorization: Option<&'a str>,
    pub body: AdminBody<'a>,
}

/// Where `target` (path and query as sent) falls in the admin namespace: `Some(rest, query)` for a
/// path under the prefix as spelled, `Some(None)` for another spelling of it (answered 404, never
/// forwarded), `None` for every other path.
pub fn admin_target<'t>(config: &Config, target: &'t str) -> Option<Option<(&'t str, &'t str)>> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    admin_target_of(config, target, &normalize_with(path, config.path_case_insensitive))
}

/// [`admin_target`] for a request whose canonical path is already known.
pub(crate) fn admin_target_of<'t>(
    config: &Config,
    target: &'t str,
    canonical: &str,
) -> Option<Option<(&'t str, &'t str)>> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let prefix = config.admin_prefix.as_str();
    if let Some(rest) = path.strip_prefix(prefix) {
        return Some(Some((rest, query)));
    }
    if path == &prefix[..prefix.len() - 1] {
        return Some(Some(("", query)));
    }
    // Another spelling (`/%5F_ratelimit/…`, `//__ratelimit/…`, `\__ratelimit`, `/__RateLimit/`,
    // `/__ratelimit;x/`): reserved all the same, whatever PATH_CASE_INSENSITIVE says (an origin may fold
    // case on its own). The prefix holds only characters the canonical form writes as they are, so
    // comparing without case is comparing the folded canonical path.
    let bare = &prefix[..prefix.len() - 1];
    let reserved = canonical.len() >= bare.len()
        && canonical.as_bytes()[..bare.len()].eq_ignore_ascii_case(bare.as_bytes())
        && matches!(canonical.as_bytes().get(bare.len()), None | Some(b'/'));
    reserved.then_some(None)
}

/// Whether the edge should read this admin request's body: only for a write, and only once the token
/// is known to be right, so an unauthenticated request never makes the Worker read anything. The edge
/// reads at most [`MAX_BODY_BYTES`] + 1 bytes and then stops.
pub(crate) fn wants_body(config: &Config, method: &str, authorization: Option<&str>) -> bool {
    matches!(method.to_ascii_uppercase().as_str(), "PUT" | "POST" | "PATCH")
        && config.admin_token_sha256.as_ref().is_some_and(|t| authorized(t, authorization))
}

/// `Authorization: Bearer <token>` against the configured token's digest, in constant time (the
/// digests have a fixed length whatever the token's).
pub(crate) fn authorized(expected: &[u8; 32], authorization: Option<&str>) -> bool {
    let Some(h) = authorization.map(str::trim) else { return false };
    let Some(token) = h.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| h[7..].trim()) else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    got.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn ok(body: String) -> Response {
    Response::json(200, body)
}

pub(crate) fn bad_request(field: &str, detail: &str) -> Response {
    problem_with(400, "bad-request", "Bad Request", detail, |o| o.str("field", field))
}

fn invalid(e: Invalid) -> Response {
    bad_request(e.field, &e.message)
}

fn not_found() -> Response {
    problem(404, "not-found", "Not Found", "no such admin resource")
}

fn no_override() -> Response {
    problem(404, "not-found", "Not Found", "there is no such override")
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response {
    problem(405, "method-not-allowed", "Method Not Allowed", &format!("this resource allows {allow}"))
        .with("allow", allow)
}

fn unavailable(detail: &str) -> Response {
    problem(503, "redis-unavailable", "Service Unavailable", detail).with("retry-after", "1")
}

/// What a request needs after routing: nothing more, one Redis pipeline, or a peek.
pub(crate) enum Action<'c> {
    Done(Response),
    /// Send these commands as one pipeline; [`finish`] makes the answer from the replies.
    Redis(Vec<Vec<String>>, Then),
    /// Run the decision script in peek mode for these limits; [`peeked`] answers.
    Peek(Peek<'c>),
}

/// A peek's caller and path, and the limits the script is asked about.
pub(crate) struct Peek<'c> {
    pub caller: String,
    pub path: String,
    pub checks: Vec<Check<'c>>,
}

/// What to make of a pipeline's replies.
#[derive(Clone, Debug)]
pub(crate) enum Then {
    Metrics,
    /// The status page's data: 3 commands, then the candidate's.
    Status(usize),
    /// The candidate policy's report: its hash, then each limit's callers (this many commands).
    Candidate(usize),
    List,
    Get,
    Put(String),
    Delete,
    Reset(Vec<String>),
}

impl Then {
    /// Whether its pipeline writes keys every shard holds (overrides, or a reset of keys that may live
    /// on any shard): sent to every database when there are several.
    pub(crate) fn writes_everywhere(&self) -> bool {
        matches!(self, Then::Put(_) | Then::Delete | Then::Reset(_))
    }
}

/// What an admin request needs. `now_ms` is the Worker's clock.
pub(crate) fn route<'c>(config: &'c Config, req: &AdminRequest<'_>, now_ms: f64) -> Action<'c> {
    let done = Action::Done;
    let Some(token) = &config.admin_token_sha256 else { return done(not_found()) };
    let segments: Vec<&str> = req.rest.split('/').collect();
    let get = req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD");
    if segments == ["status"] {
        if !get {
            return done(method_not_allowed("GET"));
        }
        let mut r = Response::new(200, "text/html; charset=utf-8", String::new())
            .with("content-security-policy", STATUS_CSP)
            .with("x-content-type-options", "nosniff")
            .with("referrer-policy", "no-referrer");
        r.body = Body::Asset(Asset::StatusPage);
        return done(r);
    }
    if !authorized(token, req.authorization) {
        let r = problem(401, "unauthorized", "Unauthorized", "the admin API needs Authorization: Bearer <ADMIN_TOKEN>");
        return done(r.with("www-authenticate", "Bearer realm=\"edge-ratelimit admin\""));
    }
    let body = match req.body {
        AdminBody::TooLarge => {
            return done(problem(
                413,
                "payload-too-large",
                "Payload Too Large",
                "admin request bodies are at most 16 KiB",
            ))
        }
        AdminBody::Text(t) => t,
        AdminBody::Unread => "",
    };
    let method = req.method.to_ascii_uppercase();
    let method = if method == "HEAD" { "GET".to_string() } else { method };
    match (segments.as_slice(), method.as_str()) {
        (["openapi.json"], "GET") => {
            let mut r = Response::json(200, String::new());
            r.body = Body::Asset(Asset::OpenApi);
            done(r)
        }
        (["policy"], "GET") => done(ok(effective_policy(config))),
        (["metrics"], "GET") => Action::Redis(vec![cmd(&["HGETALL", METRICS_KEY])], Then::Metrics),
        (["status.json"], "GET") => {
            let mut commands = vec![
                cmd(&["HGETALL", METRICS_KEY]),
                cmd(&["ZREVRANGE", DENIED_KEY, "0", "9", "WITHSCORES"]),
                cmd(&["HGETALL", INDEX_KEY]),
            ];
            if let Ok(Some(c)) = &config.candidate {
                commands.extend(candidate_commands(c));
            }
            let n = commands.len();
            Action::Redis(commands, Then::Status(n))
        }
        (["candidate"], "GET") => match &config.candidate {
            Ok(Some(c)) => {
                let commands = candidate_commands(c);
                let n = commands.len();
                Action::Redis(commands, Then::Candidate(n))
            }
            Ok(None) => done(problem(
                404,
                "not-found",
                "Not Found",
                "no candidate policy is set: set RATE_LIMIT_POLICY_CANDIDATE (same format as RATE_LIMIT_POLICY)",
            )),
            Err(e) => done(candidate_invalid(e)),
        },
        (["openapi.json" | "policy" | "metrics" | "status.json" | "candidate"], _) => done(method_not_allowed("GET")),
        (["buckets"], "GET") => {
            let query = query_pairs(req.query, &["user", "ip", "path", "method", "tier"]);
            match query.and_then(|p| bucket_query(config, &p)) {
                Ok(q) => peek(config, q),
                Err(r) => done(r),
            }
        }
        (["buckets"], "DELETE") => reset(config, req.query),
        (["buckets"], _) => done(method_not_allowed("GET, DELETE")),
        (["overrides"], "GET") => Action::Redis(vec![cmd(&["HGETALL", INDEX_KEY])], Then::List),
        (["overrides"], _) => done(method_not_allowed("GET")),
        (["overrides", scope, name @ ..], m) if !name.is_empty() => {
            let Some(scope) = Scope::parse(scope) else {
                return done(bad_request(
                    "scope",
                    &format!("{} is not a scope: use user, ip, tier or route", Q(&scope)),
                ));
            };
            let name = match decode(&name.join("/"), false) {
                Some(n) if scope == Scope::Route => format!("/{n}"),
                Some(n) => n,
                None => return done(bad_request("name", "the name is not valid percent-encoded UTF-8")),
            };
            match m {
                "GET" | "DELETE" => {
                    let key = match target(config, scope, &name) {
                        Ok(k) => k,
                        Err(r) => return done(r),
                    };
                    let slots = overrides::slots_key(&key);
                    if m == "GET" {
                        Action::Redis(vec![cmd(&["HGET", INDEX_KEY, &key]), cmd(&["EXISTS", &key, &slots])], Then::Get)
                    } else {
                        let commands = vec![
                            cmd(&["DEL", &key, &slots]),
                            cmd(&["HDEL", INDEX_KEY, &key]),
                            cmd(&["INCR", VERSION_KEY]),
                        ];
                        Action::Redis(commands, Then::Delete)
                    }
                }
                "PUT" => put_override(config, scope, &name, body, now_ms),
                _ => done(method_not_allowed("GET, PUT, DELETE")),
            }
        }
        _ => done(not_found()),
    }
}

/// The answer from a pipeline's reply (`Err` when none came back).
pub(crate) fn finish(
    config: &Config,
    limiter: &Limiter,
    then: Then,
    reply: Result<(u16, &str), Failure>,
    databases: &[Option<String>],
    now_ms: f64,
) -> Response {
    let replies = match pipeline_replies(reply, then.commands()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let replies = &replies;
    match then {
        Then::Metrics => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            Totals::from_fields(&strings(&replies[0])).prometheus(),
        ),
        Then::Status(_) => status_json(config, replies, databases, now_ms),
        Then::Candidate(_) => match &config.candidate {
            Ok(Some(c)) => ok(candidate_json(config, c, replies)),
            _ => not_found(),
        },
        Then::List => {
            let list = live_overrides(&strings(&replies[0]), now_ms);
            ok(Obj::new().raw("overrides", &json::array(list.iter().map(Override::to_json))).finish())
        }
        Then::Get => match replies[0].as_str().and_then(Override::from_json) {
            Some(o) if integer(&replies[1]) >= 1 && o.live(now_ms) => ok(o.to_json()),
            _ => no_override(),
        },
        Then::Put(record) => {
            limiter.forget(None);
            ok(record)
        }
        Then::Delete if integer(&replies[0]) + integer(&replies[1]) > 0 => {
            limiter.forget(None);
            ok(r#"{"deleted":true}"#.to_string())
        }
        Then::Delete => no_override(),
        Then::Reset(keys) => {
            limiter.forget(Some(&keys));
            ok(Obj::new().int("deleted", integer(&replies[0])).raw("keys", &json::strings(&keys)).finish())
        }
    }
}

fn effective_policy(config: &Config) -> String {
    let policy = match &config.policy {
        Some(p) => p.to_json(),
        None => {
            let limit = Obj::new().str("name", "default").str("by", "user").bool("shadow", false);
            let limit = limit_json(limit, &config.limit, 1).raw("tiers", "{}").finish();
            let rule = Obj::new().str("name", "default").raw("methods", "null").str("route", "*");
            let lists = r#"{"users":[],"ips":[]}"#;
            Obj::new()
                .raw("tiers", "[]")
                .raw("default_tier", "null")
                .raw("allow", lists)
                .raw("deny", lists)
                .raw("rules", &json::array([rule.raw("limits", &json::array([limit])).finish()]))
                .finish()
        }
    };
    Obj::new()
        .str("mode", if config.policy.is_some() { "policy" } else { "default" })
        .str("fail_mode", if config.fail_mode == FailMode::Open { "open" } else { "closed" })
        .str("clock", if config.clock == Clock::Redis { "redis" } else { "worker" })
        .int("redis_timeout_ms", config.redis_timeout_ms)
        .int("deny_cache_max_ms", config.deny_cache_max_ms)
        .int("metrics_flush_ms", config.metrics_flush_ms)
        .raw("policy", &policy)
        .finish()
}

// ---- Redis ----

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

impl Then {
    /// How many commands the pipeline of this step sent.
    fn commands(&self) -> usize {
        match self {
            Then::Status(n) => *n,
            Then::Candidate(n) => *n,
            Then::Put(_) => 4,
            Then::Delete => 3,
            Then::Get => 2,
            Then::Metrics | Then::List | Then::Reset(_) => 1,
        }
    }
}

/// The body of one Redis pipeline.
pub(crate) fn pipeline_body(commands: &[Vec<String>]) -> String {
    json::array(commands.iter().map(|c| json::strings(c)))
}

/// A pipeline's replies, one per command; every command must have succeeded.
fn pipeline_replies(reply: Result<(u16, &str), Failure>, commands: usize) -> Result<Vec<Value>, Response> {
    let (status, body) = match reply {
        Ok(r) => r,
        Err(Failure::Timeout) => return Err(unavailable("Redis did not answer within REDIS_TIMEOUT_MS")),
        Err(_) => return Err(unavailable("the Redis REST endpoint cannot be reached")),
    };
    if status == 401 || status == 403 {
        return Err(unavailable("the Redis REST endpoint rejected UPSTASH_REDIS_REST_TOKEN"));
    }
    if (300..400).contains(&status) {
        return Err(unavailable("the Redis REST endpoint answered with a redirect, which is never followed"));
    }
    if status != 200 {
        return Err(unavailable(&format!("the Redis REST endpoint answered HTTP {status}")));
    }
    let items: Vec<Value> = match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(items)) if items.len() == commands => items,
        _ => return Err(unavailable("the Redis REST endpoint sent a malformed pipeline reply")),
    };
    let mut out = Vec::with_capacity(items.len());
    for mut item in items {
        if item.get("error").is_some() {
            return Err(unavailable("Redis answered an admin command with an error"));
        }
        out.push(item.get_mut("result").map(Value::take).unwrap_or(Value::Null));
    }
    Ok(out)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect())
        .unwrap_or_default()
}

fn integer(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

// ---- buckets ----

/// The query of a peek or reset: a caller, a path, a method, a tier.
struct BucketQuery {
    caller: Caller,
    /// The views of the path (canonical first), as a request would be matched.
    paths: Vec<String>,
    method: String,
    tier: Option<String>,
}

pub(crate) fn query_pairs(query: &str, allowed: &[&'static str]) -> Result<Vec<(&'static str, String)>, Response> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = decode(k, true).unwrap_or_default();
        let Some(&name) = allowed.iter().find(|a| **a == k) else {
            let detail = format!("unknown query parameter {}; expected {}", Q(&k), allowed.join(", "));
            return Err(bad_request("query", &detail));
        };
        let Some(v) = decode(v, true) else { return Err(bad_request(name, "not valid percent-encoded UTF-8")) };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad_request(name, "given twice"));
        }
        out.push((name, v));
    }
    Ok(out)
}

fn bucket_query(config: &Config, pairs: &[(&'static str, String)]) -> Result<BucketQuery, Response> {
    let get = |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
    let caller = match (get("user"), get("ip")) {
        (Some(u), None) if !u.is_empty() && !u.chars().any(char::is_control) => Caller::User(u.to_string()),
        (Some(_), None) => return Err(bad_request("user", "a user id is non-empty, without control characters")),
        (None, Some(ip)) => identify(None, Some(ip), config.ipv6_prefix)
            .map_err(|_| bad_request("ip", &format!("{} is not an IP address", Q(&ip))))?,
        (Some(_), Some(_)) => return Err(bad_request("user", "give either user or ip, not both")),
        (None, None) => return Err(bad_request("user", "give the caller: user=<id> or ip=<address>")),
    };
    let path = match get("path") {
        Some(p) if p.starts_with('/') => views(p, config.path_case_insensitive),
        Some(_) => return Err(bad_request("path", "the path starts with /")),
        None => return Err(bad_request("path", "give the request path: path=/api/…")),
    };
    let method = get("method").unwrap_or("GET").to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad_request("method", "a method is letters only, like GET"));
    }
    let tier = match get("tier") {
        None => None,
        Some(t) => {
            let known = config.policy.as_ref().is_some_and(|p| p.tiers.iter().any(|x| x == t));
            if !known {
                return Err(bad_request("tier", &format!("{} is not a tier of the policy", Q(&t))));
            }
            Some(t.to_string())
        }
    };
    Ok(BucketQuery { caller, paths: path, method, tier })
}

fn limits_of<'c>(config: &'c Config, q: &BucketQuery) -> Option<Limited<'c>> {
    let client = matches!(q.caller, Caller::Ip { .. }).then_some(&q.caller);
    let on = Target { method: &q.method, method_overrides: &[], paths: &q.paths };
    limits_for(config, &q.caller, client, q.tier.clone(), &on, &|_| None)
}

/// A peek at every limit `q` would be checked against, or its answer when none applies.
fn peek<'c>(config: &'c Config, q: BucketQuery) -> Action<'c> {
    let caller = crate::identity::key::subject_key(&q.caller);
    let path = q.paths[0].clone();
    match limits_of(config, &q) {
        Some(limited) => Action::Peek(Peek { caller, path, checks: limited.checks }),
        None => {
            let body = Obj::new().str("caller", &caller).str("path", &path).bool("allowed_now", true);
            Action::Done(ok(body.raw("limits", "[]").finish()))
        }
    }
}

/// The answer to a peek, from what the script said (consuming nothing).
pub(crate) fn peeked(p: &Peek<'_>, decision: Result<Decision, Failure>) -> Response {
    let decision = match decision {
        Ok(d) => d,
        Err(f) => return unavailable(&format!("Redis could not be asked ({})", f.reason())),
    };
    let limits = json::array(p.checks.iter().zip(&decision.limits).map(|(c, l)| crate::http::limit_json(c, l, true)));
    let body = Obj::new().str("caller", &p.caller).str("path", &p.path).bool("allowed_now", decision.allowed);
    ok(body.raw("limits", &limits).finish())
}

fn reset<'c>(config: &Config, query: &str) -> Action<'c> {
    let pairs = match query_pairs(query, &["user", "ip", "path", "method", "tier", "key"]) {
        Ok(p) => p,
        Err(r) => return Action::Done(r),
    };
    let keys: Vec<String> = match pairs.iter().find(|(k, _)| *k == "key") {
        Some((_, key)) => {
            if pairs.len() > 1 {
                return Action::Done(bad_request("key", "give either key or a caller and path, not both"));
            }
            if !key.starts_with("rate:") || key.len() > 4096 || key.chars().any(char::is_control) {
                let detail = "a bucket key starts with rate: (an exact key, never a pattern)";
                return Action::Done(bad_request("key", detail));
            }
            vec![key.clone()]
        }
        None => match bucket_query(config, &pairs) {
            Ok(q) => limits_of(config, &q).map(|l| l.checks.into_iter().map(|c| c.key).collect()).unwrap_or_default(),
            Err(r) => return Action::Done(r),
        },
    };
    if keys.is_empty() {
        return Action::Done(ok(r#"{"deleted":0,"keys":[]}"#.to_string()));
    }
    let mut del = vec!["DEL".to_string()];
    del.extend(keys.iter().cloned());
    Action::Redis(vec![del], Then::Reset(keys))
}

// ---- overrides ----

fn live_overrides(flat: &[String], now_ms: f64) -> Vec<Override> {
    let mut list: Vec<Override> =
        flat.chunks_exact(2).filter_map(|kv| Override::from_json(&kv[1])).filter(|o| o.live(now_ms)).collect();
    list.sort_by(|a, b| (&a.scope, &a.name).cmp(&(&b.scope, &b.name)));
    list
}

fn target(config: &Config, scope: Scope, name: &str) -> Result<String, Response> {
    overrides::target_key(scope, name, config.policy.as_ref(), config.path_case_insensitive, config.ipv6_prefix)
        .map(|(key, _)| key)
        .map_err(invalid)
}

fn put_override<'c>(config: &Config, scope: Scope, name: &str, body: &str, now_ms: f64) -> Action<'c> {
    if config.redis_cluster && matches!(scope, Scope::Tier | Scope::Route) {
        // A call touches one caller's slot; a tier's or route's override is shared by callers in every
        // slot, so no call could read it.
        return Action::Done(problem(
            409,
            "not-on-a-cluster",
            "Conflict",
            "tier and route overrides are not read on a Redis Cluster (REDIS_CLUSTER=true): a script call \
             touches one caller's slot only. Set user or ip overrides, or change the tier or rule in the policy",
        ));
    }
    let (policy, fold, v6) = (config.policy.as_ref(), config.path_case_insensitive, config.ipv6_prefix);
    let new = match overrides::parse(scope, name, body, policy, fold, v6, now_ms) {
        Ok(o) => o,
        Err(e) => return Action::Done(invalid(e)),
    };
    let record = new.record.to_json();
    // Each part set, or deleted when the override has none (a PUT replaces the whole override).
    let part = |key: &str, value: &Option<String>| match value {
        Some(v) => {
            let mut set = cmd(&["SET", key, v]);
            if let Some(ms) = new.ttl_ms {
                set.extend(["PX".to_string(), ms.to_string()]);
            }
            set
        }
        None => cmd(&["DEL", key]),
    };
    let commands = vec![
        part(&new.key, &new.value),
        part(&new.slots_key, &new.slots_value),
        cmd(&["HSET", INDEX_KEY, &new.key, &record]),
        // Last: an isolate that reads the version before this sees the new index the next time.
        cmd(&["INCR", VERSION_KEY]),
    ];
    Action::Redis(commands, Then::Put(record))
}

// ---- status ----

/// What went wrong with a database's reply to the status page's read (`None`: it answered).
pub(crate) fn database_problem(reply: &Result<(u16, String), crate::limiter::TransportError>) -> Option<String> {
    match reply {
        Ok((200, body)) if !body.contains("\"error\"") => None,
        Ok((200, _)) => Some("an error reply".into()),
        Ok((status, _)) => Some(format!("HTTP {status}")),
        Err(e) => Some(Failure::from(*e).reason().to_string()),
    }
}

fn status_json(config: &Config, replies: &[Value], databases: &[Option<String>], now_ms: f64) -> Response {
    let totals = Totals::from_fields(&strings(&replies[0]));
    let rules = json::array(totals.requests.iter().map(|((rule, tier), c)| {
        Obj::new()
            .str("rule", rule)
            .str("tier", tier)
            .int("allowed", c[0])
            .int("denied", c[1])
            .int("shadow_denied", c[2])
            .int("failed_open", c[3])
            .int("failed_closed", c[4])
            .finish()
    }));
    let top =
        json::array(strings(&replies[1]).chunks_exact(2).map(|p| {
            Obj::new().str("caller", &p[0]).int("denied", p[1].parse::<f64>().unwrap_or(0.0) as u64).finish()
        }));
    let latency = |h: &crate::ops::metrics::Histogram| {
        Obj::new()
            .int("count", h.count)
            .opt_num("p50", h.quantile(0.5))
            .opt_num("p95", h.quantile(0.95))
            .opt_num("p99", h.quantile(0.99))
            .finish()
    };
    let latency = Obj::new().raw("decision_ms", &latency(&totals.decision)).raw("redis_ms", &latency(&totals.redis));
    let overrides = json::array(live_overrides(&strings(&replies[2]), now_ms).iter().map(Override::to_json));
    // Each database (in the order UPSTASH_REDIS_REST_URL lists them; never its URL): whether it answered.
    let databases = json::array(databases.iter().enumerate().map(|(i, problem)| {
        let o = Obj::new().int("shard", i as u64 + 1).bool("reachable", problem.is_none());
        match problem {
            Some(p) => o.str("problem", p).finish(),
            None => o.raw("problem", "null").finish(),
        }
    }));
    let body = Obj::new()
        .int("generated_ms", now_ms as u64)
        .int("flush_interval_ms", config.metrics_flush_ms)
        .raw("databases", &databases)
        .raw("rules", &rules)
        .raw("latency", &latency.finish())
        .raw("top_denied", &top)
        .raw("overrides", &overrides)
        .int("noscript", totals.noscript)
        .int("deny_cache_hits", totals.deny_cache_hits)
        .raw("leases", &{
            let l = &totals.leases;
            Obj::new()
                .int("granted", l.granted)
                .int("spent", l.spent)
                .int("requests", l.requests)
                .int("returned", l.returned)
                .int("lost", l.lost)
                .int("outstanding", totals.leases_outstanding())
                .finish()
        })
        .raw("held", &{
            let h = &totals.held;
            h.fields()
                .into_iter()
                .fold(Obj::new(), |o, (name, n)| o.int(name, n))
                .int("slots_held", h.slots_held())
                .finish()
        });
    let body = match &config.candidate {
        Ok(Some(c)) => body.raw("candidate", &candidate_json(config, c, &replies[3..])),
        Ok(None) => body.raw("candidate", "null"),
        Err(e) => body.raw("candidate", &Obj::new().str("error", &e.to_string()).finish()),
    };
    ok(body.finish())
}

// ---- the candidate policy ----

/// The candidate's limits as (rule, limit, whether adopting it keeps a live bucket): a limit keeps its
/// bucket when the live policy has a limit of the same name, count, algorithm and route (the same keys,
/// read the same way).
fn candidate_limits<'c>(config: &Config, c: &'c Candidate) -> Vec<(&'c str, &'c str, bool)> {
    let live = config.policy.as_ref();
    c.policy
        .rules
        .iter()
        .flat_map(|r| r.limits.iter().map(move |l| (r, l)))
        .map(|(r, l)| {
            let kept = live.is_some_and(|p| {
                p.rules.iter().any(|lr| {
                    lr.route == r.route
                        && lr.limits.iter().any(|ll| {
                            ll.name == l.name && ll.by == l.by && ll.base.limit.algorithm() == l.base.limit.algorithm()
                        })
                })
            });
            (r.name.as_str(), l.name.as_str(), kept)
        })
        .collect()
}

/// The pipeline that reads the candidate's report: its counters, then each limit's top callers.
fn candidate_commands(c: &Candidate) -> Vec<Vec<String>> {
    let mut commands = vec![cmd(&["HGETALL", &crate::ops::metrics::candidate_key(&c.digest)])];
    for r in &c.policy.rules {
        for l in &r.limits {
            let key = crate::ops::metrics::candidate_callers_key(&c.digest, &r.name, &l.name);
            commands.push(cmd(&["ZREVRANGE", &key, "0", "4", "WITHSCORES"]));
        }
    }
    commands
}

/// The candidate's report: `{ digest, since_ms, unevaluated, limits: [{ rule, name, would_deny,
/// would_allow, top_callers, on_adoption }] }` from [`candidate_commands`]'s replies.
fn candidate_json(config: &Config, c: &Candidate, replies: &[Value]) -> String {
    let fields = replies.first().map(strings).unwrap_or_default();
    let field = |name: &str| fields.chunks_exact(2).find(|p| p[0] == name).map(|p| p[1].clone());
    let count = |name: String| field(&name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let limits = json::array(candidate_limits(config, c).into_iter().enumerate().map(|(i, (rule, limit, kept))| {
        let callers = replies.get(1 + i).map(strings).unwrap_or_default();
        let top = json::array(callers.chunks_exact(2).map(|p| {
            Obj::new().str("caller", &p[0]).int("requests", p[1].parse::<f64>().unwrap_or(0.0) as u64).finish()
        }));
        Obj::new()
            .str("rule", rule)
            .str("name", limit)
            .int("would_deny", count(format!("d|{rule}|{limit}")))
            .int("would_allow", count(format!("a|{rule}|{limit}")))
            .raw("top_callers", &top)
            .str("on_adoption", if kept { "keeps its live bucket" } else { "starts fresh" })
            .finish()
    }));
    Obj::new()
        .str("variable", "RATE_LIMIT_POLICY_CANDIDATE")
        .str("digest", &c.digest)
        .opt_int("since_ms", field("since_ms").and_then(|v| v.parse::<u64>().ok()))
        .int("unevaluated", count("unevaluated".into()))
        .raw("limits", &limits)
        .finish()
}

/// 422: the candidate document does not parse; the message names the variable (the live policy works).
fn candidate_invalid(e: &crate::policy::config::ConfigError) -> Response {
    problem_with(422, "candidate-invalid", "Unprocessable Content", &e.to_string(), |o| o.str("variable", e.variable))
}

/// Percent-decoding of a path segment or (with `plus_as_space`) a query component; `None` when the
/// result is not UTF-8.
fn decode(s: &str, plus_as_space: bool) -> Option<String> {
    let bytes = if plus_as_space { s.replace('+', " ") } else { s.to_string() };
    String::from_utf8(percent_decode(bytes.as_bytes())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict_about_utf8_and_lenient_about_stray_percent() {
        assert_eq!(decode("a%2Fb%20c", false).as_deref(), Some("a/b c"));
        assert_eq!(decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(decode("100%", false).as_deref(), Some("100%"));
        assert_eq!(decode("%zz", false).as_deref(), Some("%zz"));
        assert_eq!(decode("%ff", false), None);
    }

    #[test]
    fn the_token_is_checked_exactly() {
        let digest: [u8; 32] = Sha256::digest(b"0123456789abcdef").into();
        assert!(authorized(&digest, Some("Bearer 0123456789abcdef")));
        assert!(authorized(&digest, Some("bearer   0123456789abcdef ")));
        assert!(!authorized(&digest, Some("Bearer 0123456789abcde")));
        assert!(!authorized(&digest, Some("0123456789abcdef")));
        assert!(!authorized(&digest, Some("Basic 0123456789abcdef")));
        assert!(!authorized(&digest, None));
    }
}
