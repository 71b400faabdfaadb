//! The RPC entry: what another Worker asks through a service binding (`env.LIMITER.limit({ key })`,
//! `peek`, `reset`; `js/shim.mjs` exports the `RateLimiter` entrypoint), read and checked here, and
//! the plain object it gets back. The decision itself is the gateway's: the same script call, deny
//! cache, fail mode and metrics ([`crate::Gateway::call`]).
//!
//! Key spaces: without `rule`, `key` has the zero-config limit in a key space of its own
//! (`rate:{@rpc/<key>}`: HTTP subjects never start with `@rpc/`, since a user id's leading `@` is
//! escaped in keys). With `rule`, `key` is a caller's user id, and the rule's limits use the very
//! buckets the gateway keeps for a caller with that id.

use serde_json::{Map, Value};

use crate::identity::caller::Caller;
use crate::identity::key::subject_key;
use crate::identity::path::{normalize_with, views_of};
use crate::json::{Obj, Q};
use crate::limiter::{Failure, Outcome};
use crate::policy::check::Check;
use crate::policy::check::Mode;
use crate::policy::config::Config;
use crate::policy::document::Facts;
use crate::policy::limit::MAX_CAPACITY;
use crate::policy::plan::{limited_by, limits_for, Limited, Target, DEFAULT_LIMIT};
use crate::store::decision::{Decision, LimitStatus};

/// The longest `key` accepted, in UTF-8 bytes (keys longer than [`crate::identity::key::MAX_ID_BYTES`] are
/// hashed in Redis).
pub const MAX_KEY_BYTES: usize = 4096;

/// Where the zero-config limit of RPC keys lives: `rate:{@rpc/<key>}`.
pub(crate) const RPC_SUBJECT_PREFIX: &str = "@rpc/";

/// An RPC method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Take `cost` tokens, or be denied.
    Limit,
    /// What a `limit` call of `cost` would get, consuming nothing.
    Peek,
    /// Empty (delete) the buckets: the next call finds them full.
    Reset,
}

impl Method {
    fn parse(name: &str) -> Option<Method> {
        match name {
            "limit" => Some(Method::Limit),
            "peek" => Some(Method::Peek),
            "reset" => Some(Method::Reset),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Limit => "limit",
            Method::Peek => "peek",
            Method::Reset => "reset",
        }
    }

    /// The options it takes.
    fn options(self) -> &'static [&'static str] {
        match self {
            Method::Limit => &["key", "cost", "shadow", "rule", "tier"],
            Method::Peek => &["key", "cost", "rule", "tier"],
            Method::Reset => &["key", "rule", "tier"],
        }
    }
}

/// The JavaScript error a bad call throws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An argument of the wrong type, or one the method does not take.
    Type,
    /// An argument of the right type with a value out of range (an unknown rule, say).
    Range,
    /// The gateway cannot answer at all (misconfigured).
    Error,
}

impl ErrorKind {
    /// The constructor's name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Type => "TypeError",
            ErrorKind::Range => "RangeError",
            ErrorKind::Error => "Error",
        }
    }
}

/// Why a call cannot be made: the error to throw, its message naming the argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub kind: ErrorKind,
    pub message: String,
}

fn type_error(message: String) -> CallError {
    CallError { kind: ErrorKind::Type, message }
}

fn range_error(message: String) -> CallError {
    CallError { kind: ErrorKind::Range, message }
}

/// A checked call: its method, and the limits it is decided against.
#[derive(Debug)]
pub(crate) struct Call<'c> {
    pub method: Method,
    pub limited: Limited<'c>,
}

/// Reads `method` and its options (`args`: the options object as JSON, `""` when none was given).
pub(crate) fn parse<'c>(config: &'c Config, method: &str, args: &str) -> Result<Call<'c>, CallError> {
    let Some(m) = Method::parse(method) else {
        return Err(type_error(format!("{} is not a method of RateLimiter: use limit, peek or reset", Q(method))));
    };
    let name = m.name();
    let shape = || type_error(format!("{name}(options): options must be an object such as {{ key: \"user-1\" }}"));
    let options = match serde_json::from_str::<Value>(args) {
        Ok(v) if js_value(&v).is_some() => {
            return Err(type_error(format!(
                "{name}(options): options must be an object such as {{ key: \"user-1\" }}, got {}",
                kind_of(&v)
            )))
        }
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(shape()),
        Err(_) if !args.is_empty() => {
            return Err(type_error(format!(
                "{name}(options): options could not be read: strings must be well-formed Unicode (no lone surrogates)"
            )))
        }
        Err(_) => return Err(shape()),
    };
    if let Some(unknown) = options.keys().find(|k| !m.options().contains(&k.as_str())) {
        return Err(type_error(format!(
            "{name}(options): unknown option {}; {name} takes {}",
            Q(unknown),
            m.options().join(", ")
        )));
    }
    let key = match options.get("key") {
        None => {
            return Err(type_error(format!("{name}(options): options.key is required (a string naming the caller)")))
        }
        // Trimmed as the gateway trims a user id, so a rule's buckets are those of the same caller.
        Some(Value::String(k)) => k.trim(),
        Some(other) => return Err(type_error(format!("options.key must be a string, got {}", kind_of(other)))),
    };
    if key.is_empty() {
        return Err(range_error("options.key must not be empty (nor only spaces)".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(range_error(format!("options.key is {} bytes long; at most {MAX_KEY_BYTES}", key.len())));
    }
    let cost = match options.get("cost") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c) if (1..=u64::from(MAX_CAPACITY)).contains(&c) => Some(c as u32),
            _ => {
                return Err(range_error(format!(
                    "options.cost must be a whole number from 1 to {MAX_CAPACITY}, got {n}"
                )))
            }
        },
        Some(v) if matches!(js_value(v), Some("NaN" | "Infinity" | "-Infinity")) => {
            return Err(range_error(format!("options.cost must be a finite number, got {}", kind_of(v))))
        }
        Some(other) => return Err(type_error(format!("options.cost must be a number, got {}", kind_of(other)))),
    };
    let shadow = match options.get("shadow") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(type_error(format!("options.shadow must be a boolean, got {}", kind_of(other)))),
    };
    let tier = match options.get("tier") {
        None => None,
        Some(Value::String(t)) => {
            let known = config.policy.as_ref().is_some_and(|p| p.tiers.iter().any(|x| x == t));
            if !known {
                return Err(range_error(format!("options.tier: {} is not a tier of RATE_LIMIT_POLICY", Q(t))));
            }
            Some(t.clone())
        }
        Some(other) => return Err(type_error(format!("options.tier must be a string, got {}", kind_of(other)))),
    };
    let mut limited = match options.get("rule") {
        None => {
            if tier.is_some() {
                return Err(type_error("options.tier needs options.rule: the zero-config limit has no tiers".into()));
            }
            zero_config(config, key)
        }
        Some(rule) => by_rule(config, key, rule, tier)?,
    };
    for check in &mut limited.checks {
        if let Some(cost) = cost {
            check.cost = cost;
        }
        if shadow {
            check.mode = Mode::Shadow;
        }
    }
    Ok(Call { method: m, limited })
}

/// A JavaScript value that JSON would not carry as it is (a `Date` or a boxed `String` would become a
/// string — `new Date()` as a key, a fresh bucket every call —, a `Map` or a class instance an object of
/// other fields, `NaN` `null`, a `BigInt` would throw): the executor sends it as `{"\u0000js": what}`
/// (`js/shim.mjs`), and the core refuses it by name. `what`: a constructor's name, `BigInt`, `NaN`,
/// `Infinity`, `function`, `symbol`.
fn js_value(v: &Value) -> Option<&str> {
    match v {
        Value::Object(o) if o.len() == 1 => o.get("\u{0}js")?.as_str(),
        _ => None,
    }
}

/// What `v` is, for a message: its JSON type, or the JavaScript value the executor marked (a name
/// from the caller's code: shown only when it is a plain identifier of at most 40 characters).
fn kind_of(v: &Value) -> String {
    if let Some(js) = js_value(v) {
        let plain =
            !js.is_empty() && js.len() <= 40 && js.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        return match js {
            "NaN" | "Infinity" | "-Infinity" => js.to_string(),
            _ if plain => format!("a {js}"),
            _ => "an object".to_string(),
        };
    }
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
    .to_string()
}

/// `key`'s zero-config bucket, in the RPC key space.
fn zero_config<'c>(config: &'c Config, key: &str) -> Limited<'c> {
    let subject = format!("{RPC_SUBJECT_PREFIX}{}", subject_key(&Caller::User(key.to_string())));
    let check = Check {
        key: format!("rate:{{{subject}}}"),
        name: DEFAULT_LIMIT,
        limit: &config.limit,
        cost: 1,
        mode: Mode::Enforce,
        rule: DEFAULT_LIMIT,
        // No override can name this key space (the admin API's caller overrides are HTTP callers').
        overrides: Vec::new(),
    };
    Limited { checks: vec![check], candidates: Vec::new(), subject, tier: None }
}

/// The limits of a rule — named, or matched by `{ method, path }` as the gateway matches a request —
/// for the caller whose user id is `key`.
fn by_rule<'c>(config: &'c Config, key: &str, rule: &Value, tier: Option<String>) -> Result<Limited<'c>, CallError> {
    let caller = Caller::User(key.to_string());
    match rule {
        Value::String(name) => {
            let Some(policy) = &config.policy else {
                return Err(range_error(format!(
                    "options.rule: no RATE_LIMIT_POLICY is set, so there is no rule {}; leave rule out for the zero-config limit",
                    Q(name)
                )));
            };
            let Some(found) = policy.rule(name) else {
                let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
                return Err(range_error(format!(
                    "options.rule: RATE_LIMIT_POLICY has no rule {} (its rules: {})",
                    Q(name),
                    names.join(", ")
                )));
            };
            let facts = Facts {
                method: "",
                method_overrides: &[],
                paths: &[],
                caller: &caller,
                client: None,
                tier: tier.as_deref(),
            };
            let applied = policy.applied_rules([found], &facts, |_| None);
            limited_by(policy, applied, subject_key(&caller), tier)
                .ok_or_else(|| range_error(format!("options.rule: the rule {} has no limits", Q(name))))
        }
        Value::Object(route) if js_value(rule).is_none() => {
            let (method, path) = route_of(route)?;
            let canonical = normalize_with(&path, config.path_case_insensitive);
            let paths = views_of(&path, &canonical, config.path_case_insensitive);
            let on = Target { method: &method, method_overrides: &[], paths: &paths };
            limits_for(config, &caller, None, tier, &on, &|_| None).ok_or_else(|| {
                range_error(format!("options.rule: no rule of RATE_LIMIT_POLICY matches {method} {canonical}"))
            })
        }
        other => {
            Err(type_error(format!("options.rule must be a rule's name or {{ method, path }}, got {}", kind_of(other))))
        }
    }
}

fn route_of(route: &Map<String, Value>) -> Result<(String, String), CallError> {
    if let Some(unknown) = route.keys().find(|k| *k != "method" && *k != "path") {
        return Err(type_error(format!("options.rule: unknown member {}; a route is {{ method, path }}", Q(unknown))));
    }
    let method = match route.get("method") {
        None => "GET".to_string(),
        Some(Value::String(m)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => m.to_ascii_uppercase(),
        Some(Value::String(m)) => {
            return Err(range_error(format!("options.rule.method: {} is not an HTTP method", Q(m))))
        }
        Some(other) => return Err(type_error(format!("options.rule.method must be a string, got {}", kind_of(other)))),
    };
    let path = match route.get("path") {
        Some(Value::String(p)) if p.starts_with('/') && p.len() <= 8192 => p.clone(),
        Some(Value::String(p)) => {
            return Err(range_error(format!("options.rule.path must start with / (at most 8192 bytes), got {}", Q(p))))
        }
        None => {
            return Err(type_error(
                "options.rule.path is required: the request path to match, e.g. \"/export/x\"".into(),
            ))
        }
        Some(other) => return Err(type_error(format!("options.rule.path must be a string, got {}", kind_of(other)))),
    };
    Ok((method, path))
}

/// The limit a result reports: the one that denied, else the enforcing one with the fewest tokens left
/// (the `RateLimit` field's choice); for a call whose limits are all shadow, the one that would have
/// denied, else the one with the fewest tokens left.
fn reported(d: &Decision) -> Option<&LimitStatus> {
    d.denied_by
        .and_then(|i| d.limits.get(i))
        .or_else(|| d.limits.iter().filter(|l| !l.shadow).min_by_key(|l| l.remaining))
        .or_else(|| d.shadow_denial())
        .or_else(|| d.limits.iter().min_by_key(|l| l.remaining))
}

/// The result object of a `limit` or `peek`: `{ success, remaining, reset, retryAfter, limit, name,
/// shadowDenied }` (`limit` is the capacity, as Cloudflare's binding and @upstash/ratelimit say; `name`
/// the reported limit's), plus `degraded` (the reason) when Redis could not decide.
pub(crate) fn result_json(
    success: bool,
    decision: Option<&Decision>,
    checks: &[Check<'_>],
    degraded: Option<&Failure>,
) -> String {
    let status = decision.and_then(reported);
    let (remaining, reset, capacity, policy) = match status {
        Some(l) => (l.remaining, l.reset_ms.div_ceil(1000), u64::from(l.capacity), l.name.as_str()),
        // Nothing known beyond the configured numbers (a failed call without a local bucket's say).
        None => match checks.first() {
            Some(c) => (0, 0, u64::from(c.limit.capacity()), c.name),
            None => (0, 0, 0, DEFAULT_LIMIT),
        },
    };
    let retry_after = match (success, decision) {
        (true, _) => 0,
        (false, Some(d)) => d.retry_after_s(),
        (false, None) => 1,
    };
    let shadow_denied = decision.is_some_and(|d| d.shadow_denial().is_some());
    let o = Obj::new()
        .bool("success", success)
        .int("remaining", remaining)
        .int("reset", reset)
        .int("retryAfter", retry_after)
        .int("limit", capacity)
        .str("name", policy)
        .bool("shadowDenied", shadow_denied);
    match degraded {
        Some(f) => o.str("degraded", f.reason()).finish(),
        None => o.finish(),
    }
}

/// The result of a `limit` call's outcome.
pub(crate) fn limit_result(outcome: &Outcome, checks: &[Check<'_>]) -> String {
    match outcome {
        Outcome::Allowed(d) => result_json(true, Some(d), checks, None),
        Outcome::Denied(d) => result_json(false, Some(d), checks, None),
        Outcome::FailedOpen(f, local) => result_json(true, local.as_ref(), checks, Some(f)),
        Outcome::DeniedLocally(d, f) => result_json(false, Some(d), checks, Some(f)),
        Outcome::FailedClosed(f) => result_json(false, None, checks, Some(f)),
    }
}

/// The result of a `reset`: `{ success, deleted }` (how many of the buckets existed), or `success:
/// false` and `degraded` when Redis could not be asked.
pub(crate) fn reset_result(deleted: Result<i64, &Failure>) -> String {
    match deleted {
        Ok(n) => Obj::new().bool("success", true).int("deleted", n.max(0)).finish(),
        Err(f) => Obj::new().bool("success", false).int("deleted", 0).str("degraded", f.reason()).finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut vars = vec![("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"), ("UPSTASH_REDIS_REST_TOKEN", "t")];
        vars.extend_from_slice(extra);
        Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
    }

    const POLICY: &str = r#"{"tiers":["free","pro"],"default_tier":"free","rules":[
        {"name":"export","methods":["POST"],"route":"/export/*",
         "limits":[{"name":"exports","capacity":10,"refill":"10/h","cost":2,"tiers":{"pro":{"capacity":100,"refill":"100/h"}}},
                   {"name":"everyone","by":"global","capacity":1000,"refill":"1000/min"}]}]}"#;

    fn error(c: &Config, method: &str, args: &str) -> CallError {
        parse(c, method, args).map(|_| ()).unwrap_err()
    }

    #[test]
    fn keys_without_a_rule_live_where_no_http_caller_reaches() {
        let c = config(&[]);
        let call = parse(&c, "limit", r#"{"key":"alice"}"#).unwrap();
        assert_eq!(call.limited.checks[0].key, "rate:{@rpc/alice}");
        assert_eq!((call.limited.checks[0].cost, call.limited.checks[0].name), (1, "default"));
        // An HTTP caller who calls itself "@rpc/alice" is escaped: its keys never start with "rate:{@rpc/".
        let http = crate::identity::key::bucket_key(&Caller::User("@rpc/alice".into()), "/");
        assert!(!http.starts_with("rate:{@rpc/"), "{http}");
        let colon = parse(&c, "limit", r#"{"key":"a:b"}"#).unwrap();
        assert_eq!(colon.limited.checks[0].key, "rate:{@rpc/a%3Ab}");
    }

    #[test]
    fn a_rule_by_name_or_route_uses_the_gateways_buckets_for_that_user_id() {
        let c = config(&[("RATE_LIMIT_POLICY", POLICY)]);
        let by_name = parse(&c, "limit", r#"{"key":"alice","rule":"export"}"#).unwrap();
        let keys: Vec<&str> = by_name.limited.checks.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["rate:{alice}:/export/%2A#exports", "rate:{@global}:/export/%2A#everyone"]);
        assert_eq!(by_name.limited.checks[0].cost, 2, "the limit's own cost");
        let by_route =
            parse(&c, "limit", r#"{"key":"alice","rule":{"method":"post","path":"/export/a/../b"}}"#).unwrap();
        let route_keys: Vec<&str> = by_route.limited.checks.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(route_keys, keys);
        let costly =
            parse(&c, "limit", r#"{"key":"alice","rule":"export","cost":7,"shadow":true,"tier":"pro"}"#).unwrap();
        assert!(costly.limited.checks.iter().all(|c| c.cost == 7 && c.shadow()));
        assert_eq!(costly.limited.checks[0].limit.capacity(), 100);
    }

    #[test]
    fn bad_arguments_name_the_argument_and_the_right_error() {
        let c = config(&[("RATE_LIMIT_POLICY", POLICY)]);
        let cases: &[(&str, &str, ErrorKind, &str)] = &[
            ("limit", "", ErrorKind::Type, "options must be an object"),
            ("limit", "\"alice\"", ErrorKind::Type, "options must be an object"),
            ("limit", "{}", ErrorKind::Type, "options.key is required"),
            ("limit", r#"{"key":7}"#, ErrorKind::Type, "options.key must be a string, got a number"),
            ("limit", r#"{"key":""}"#, ErrorKind::Range, "options.key must not be empty"),
            ("limit", r#"{"key":"a","kee":1}"#, ErrorKind::Type, "unknown option \"kee\""),
            ("limit", r#"{"key":"a","cost":0}"#, ErrorKind::Range, "options.cost must be a whole number"),
            ("limit", r#"{"key":"a","cost":1.5}"#, ErrorKind::Range, "options.cost"),
            ("limit", r#"{"key":"a","cost":"2"}"#, ErrorKind::Type, "options.cost must be a number"),
            ("limit", r#"{"key":"a","shadow":1}"#, ErrorKind::Type, "options.shadow must be a boolean"),
            ("limit", r#"{"key":"a","rule":"nope"}"#, ErrorKind::Range, "no rule \"nope\" (its rules: export)"),
            ("limit", r#"{"key":"a","rule":3}"#, ErrorKind::Type, "options.rule must be a rule's name"),
            ("limit", r#"{"key":"a","rule":{"path":"x"}}"#, ErrorKind::Range, "options.rule.path must start with /"),
            ("limit", r#"{"key":"a","rule":{"method":"GET"}}"#, ErrorKind::Type, "options.rule.path is required"),
            (
                "limit",
                r#"{"key":"a","rule":{"method":"GET","path":"/export/x"}}"#,
                ErrorKind::Range,
                "no rule of RATE_LIMIT_POLICY matches GET /export/x",
            ),
            ("limit", r#"{"key":"a","rule":"export","tier":"gold"}"#, ErrorKind::Range, "options.tier"),
            ("limit", r#"{"key":"a","tier":"pro"}"#, ErrorKind::Type, "options.tier needs options.rule"),
            ("peek", r#"{"key":"a","shadow":true}"#, ErrorKind::Type, "peek takes key, cost, rule, tier"),
            ("reset", r#"{"key":"a","cost":1}"#, ErrorKind::Type, "unknown option \"cost\""),
            ("lmit", r#"{"key":"a"}"#, ErrorKind::Type, "not a method"),
            // Issue 23, item 3: JavaScript values the executor marks, refused by name.
            ("limit", r#"{"key":{"\u0000js":"Date"}}"#, ErrorKind::Type, "options.key must be a string, got a Date"),
            (
                "limit",
                r#"{"key":"a","cost":{"\u0000js":"BigInt"}}"#,
                ErrorKind::Type,
                "options.cost must be a number, got a BigInt",
            ),
            (
                "limit",
                r#"{"key":"a","rule":{"\u0000js":"Map"}}"#,
                ErrorKind::Type,
                "options.rule must be a rule's name or { method, path }, got a Map",
            ),
            (
                "limit",
                r#"{"key":"a","cost":{"\u0000js":"NaN"}}"#,
                ErrorKind::Range,
                "options.cost must be a finite number, got NaN",
            ),
            (
                "limit",
                r#"{"\u0000js":"Date"}"#,
                ErrorKind::Type,
                "limit(options): options must be an object such as { key: \"user-1\" }, got a Date",
            ),
            (
                "limit",
                r#"{"key":"a","rule":{"path":{"\u0000js":"Date"}}}"#,
                ErrorKind::Type,
                "options.rule.path must be a string, got a Date",
            ),
            (
                "limit",
                r#"{"key":{"\u0000js":"<script>"}}"#,
                ErrorKind::Type,
                "options.key must be a string, got an object",
            ),
        ];
        for (method, args, kind, words) in cases {
            let e = error(&c, method, args);
            assert_eq!(e.kind, *kind, "{method}({args}): {e:?}");
            assert!(e.message.contains(words), "{method}({args}): {}", e.message);
        }
        let long = format!(r#"{{"key":"{}"}}"#, "k".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(error(&c, "limit", &long).kind, ErrorKind::Range);
        let plain = config(&[]);
        assert!(error(&plain, "limit", r#"{"key":"a","rule":"export"}"#)
            .message
            .contains("no RATE_LIMIT_POLICY is set"));
    }
}
