//! Live limit overrides: a different capacity and refill for one caller, one
//! tier or one route, set through the admin API and kept in Redis, so that a
//! change takes effect on the next request everywhere. The decision script
//! reads them in the same call (no extra round trip): each check names the
//! override keys that may apply to it, most specific first (caller, route,
//! tier), and the first that exists wins.
//!
//! An override has rate numbers (`capacity` and `refill`, for token buckets and windows), a
//! `concurrency` (for in-flight limits), or both. Each applies only to its own kind of limit: a rate
//! override never lifts a caller's in-flight slots, and a concurrency never changes a rate.
//!
//! Redis layout (fixed prefixes; the variable part is escaped like bucket keys):
//! - `ratelimit:override:<scope>:<name>`: the string `"<capacity> <tokens per second>"`,
//!   with the override's expiry as the key's own TTL;
//! - `ratelimit:override:slots:<scope>:<name>`: the string `"<slots> <slots>"` (an in-flight
//!   limit's capacity and rate: the script reads it as any override), its expiry the same;
//! - `ratelimit:overrides`: a hash from the first kind of key to the override as JSON, for listing.

use crate::json::Obj;
use crate::json::Q;

use crate::identity::caller::{identify, Caller};
use crate::identity::key::{push_escaped, subject_key};
use crate::identity::path::normalize_with;
use crate::policy::document::Policy;
use crate::policy::limit::MAX_CAPACITY;
use crate::policy::rate::Refill;

/// The hash that lists every override.
pub(crate) const INDEX_KEY: &str = "ratelimit:overrides";
const KEY_PREFIX: &str = "ratelimit:override:";
/// The longest expiry accepted (a year).
pub(crate) const MAX_EXPIRES_IN_S: u64 = 365 * 86_400;

/// Who an override is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A caller identified by user id (verified token subject or trusted header).
    User,
    /// A caller identified by client IP (IPv6 grouped by the configured prefix).
    Ip,
    /// Every caller of a tier.
    Tier,
    /// A route: a policy rule's route template, or (without a policy) a canonical path.
    Route,
}

impl Scope {
    pub(crate) fn parse(text: &str) -> Option<Scope> {
        match text {
            "user" => Some(Scope::User),
            "ip" => Some(Scope::Ip),
            "tier" => Some(Scope::Tier),
            "route" => Some(Scope::Route),
            _ => None,
        }
    }
}

/// The override key of a caller's limits (`subject` as in bucket keys: `alice`, `@ip/…`).
pub(crate) fn caller_key(subject: &str) -> String {
    let mut k = String::with_capacity(KEY_PREFIX.len() + 7 + subject.len());
    k.push_str(KEY_PREFIX);
    k.push_str("caller:{");
    k.push_str(subject);
    k.push('}');
    k
}

pub(crate) fn tier_key(tier: &str) -> String {
    let mut k = format!("{KEY_PREFIX}tier:");
    push_escaped(&mut k, tier);
    k
}

/// The key of the concurrency that the override at `key` (a [`caller_key`], [`tier_key`] or
/// [`route_key`]) sets for in-flight limits.
pub(crate) fn slots_key(key: &str) -> String {
    let scoped = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let mut k = String::with_capacity(KEY_PREFIX.len() + 6 + scoped.len());
    k.push_str(KEY_PREFIX);
    k.push_str("slots:");
    k.push_str(scoped);
    k
}

/// `route` is a route template or canonical path (printable ASCII; `*` written `%2A`).
pub(crate) fn route_key(route: &str) -> String {
    let mut k = String::with_capacity(KEY_PREFIX.len() + 6 + route.len());
    k.push_str(KEY_PREFIX);
    k.push_str("route:");
    for c in route.chars() {
        if c == '*' {
            k.push_str("%2A");
        } else {
            k.push(c);
        }
    }
    k
}

/// An override as stored in the index and returned by the admin API.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub scope: String,
    pub name: String,
    /// The rate part (token buckets and windows): both or neither.
    pub capacity: Option<u32>,
    pub refill: Option<String>,
    /// The in-flight part: slots for in-flight limits.
    pub concurrency: Option<u32>,
    /// Epoch ms, or `None` for no expiry.
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

impl Override {
    /// As JSON (the index's value and the admin API's answer).
    pub fn to_json(&self) -> String {
        Obj::new()
            .str("scope", &self.scope)
            .str("name", &self.name)
            .opt_int("capacity", self.capacity.map(u64::from))
            .opt_str("refill", self.refill.as_deref())
            .opt_int("concurrency", self.concurrency.map(u64::from))
            .opt_int("expires_at_ms", self.expires_at_ms)
            .int("created_at_ms", self.created_at_ms)
            .finish()
    }

    /// From [`Override::to_json`]'s form; `None` for anything else.
    pub fn from_json(text: &str) -> Option<Override> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let whole = |v: &serde_json::Value| match v {
            serde_json::Value::Null => Some(None),
            n => Some(Some(u32::try_from(n.as_u64()?).ok()?)),
        };
        Some(Override {
            scope: v["scope"].as_str()?.to_string(),
            name: v["name"].as_str()?.to_string(),
            capacity: whole(&v["capacity"])?,
            refill: match &v["refill"] {
                serde_json::Value::Null => None,
                r => Some(r.as_str()?.to_string()),
            },
            concurrency: whole(&v["concurrency"])?,
            expires_at_ms: match &v["expires_at_ms"] {
                serde_json::Value::Null => None,
                t => Some(t.as_u64()?),
            },
            created_at_ms: v["created_at_ms"].as_u64()?,
        })
    }

    /// Still in force at `now_ms`?
    pub fn live(&self, now_ms: f64) -> bool {
        self.expires_at_ms.is_none_or(|t| (t as f64) > now_ms)
    }
}

/// A bad request, with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { field, message: message.into() }
}

/// A validated override, ready to be written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NewOverride {
    /// The Redis key the script reads for rate limits, and the one it reads for in-flight limits.
    pub key: String,
    pub slots_key: String,
    /// `"<capacity> <rate>"`, when the override sets rates (else the key is deleted).
    pub value: Option<String>,
    /// `"<slots> <slots>"`, when it sets a concurrency (else the key is deleted).
    pub slots_value: Option<String>,
    pub ttl_ms: Option<u64>,
    pub record: Override,
}

/// Where an override for (`scope`, `name`) lives, checked against the configuration: a tier must be
/// one the policy declares, a route one of its rules' routes (or, without a policy, a path).
pub(crate) fn target_key(
    scope: Scope,
    name: &str,
    policy: Option<&Policy>,
    fold_case: bool,
    ipv6_prefix: u8,
) -> Result<(String, String), Invalid> {
    if name.is_empty() || name.len() > 1024 {
        return Err(invalid("name", "the name must be 1 to 1024 bytes"));
    }
    match scope {
        Scope::User => {
            if name.chars().any(char::is_control) {
                return Err(invalid("name", "a user id has no control characters"));
            }
            Ok((caller_key(&subject_key(&Caller::User(name.to_string()))), name.to_string()))
        }
        Scope::Ip => {
            let caller = identify(None, Some(name), ipv6_prefix)
                .map_err(|_| invalid("name", format!("{} is not an IP address", Q(&name))))?;
            let Caller::Ip { addr, .. } = &caller else {
                return Err(invalid("name", format!("{} is not an IP address", Q(&name))));
            };
            Ok((caller_key(&subject_key(&caller)), addr.to_string()))
        }
        Scope::Tier => {
            let declared = policy.is_some_and(|p| p.tiers.iter().any(|t| t == name));
            if !declared {
                let known = policy.map(|p| p.tiers.join(", ")).unwrap_or_default();
                return Err(invalid("name", format!("{} is not a tier of the policy (tiers: {known})", Q(&name))));
            }
            Ok((tier_key(name), name.to_string()))
        }
        Scope::Route => {
            let route = match policy {
                Some(p) => p.rules.iter().find(|r| r.route == name).map(|r| r.route.clone()).ok_or_else(|| {
                    invalid("name", format!("{} is not the route of any rule of the policy", Q(&name)))
                })?,
                None => {
                    if !name.starts_with('/') {
                        return Err(invalid("name", "a route starts with /"));
                    }
                    let path = normalize_with(name, fold_case);
                    if path.len() > crate::identity::key::MAX_PATH_BYTES {
                        return Err(invalid("name", "the path is too long to have its own bucket"));
                    }
                    path
                }
            };
            Ok((route_key(&route), route))
        }
    }
}

/// Parses and validates an override's JSON body for (`scope`, `name`) at `now_ms`.
pub(crate) fn parse(
    scope: Scope,
    name: &str,
    body: &str,
    policy: Option<&Policy>,
    fold_case: bool,
    ipv6_prefix: u8,
    now_ms: f64,
) -> Result<NewOverride, Invalid> {
    let (key, name) = target_key(scope, name, policy, fold_case, ipv6_prefix)?;
    let body: serde_json::Value =
        serde_json::from_str(body).map_err(|e| invalid("body", format!("not a valid override: {e}")))?;
    let Some(members) = body.as_object() else {
        return Err(invalid("body", "an override is a JSON object: {\"capacity\": 100, \"refill\": \"100/min\"}"));
    };
    const FIELDS: [&str; 4] = ["capacity", "refill", "concurrency", "expires_in_s"];
    if let Some(unknown) = members.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(
            "body",
            format!("unknown field {}; expected capacity, refill, concurrency, expires_in_s", Q(&unknown)),
        ));
    }
    let raw = (&body["capacity"], &body["refill"], &body["expires_in_s"], &body["concurrency"]);
    let rates = match (raw.0, raw.1) {
        (serde_json::Value::Null, serde_json::Value::Null) if !raw.3.is_null() => None,
        _ => {
            let capacity = raw.0.as_u64().filter(|c| (1..=u64::from(MAX_CAPACITY)).contains(c)).ok_or_else(|| {
                invalid("capacity", format!("must be a whole number from 1 to {MAX_CAPACITY} (with refill)"))
            })?;
            let text = raw.1.as_str().ok_or_else(|| invalid("refill", "must be a string like \"100/min\""))?;
            let refill = Refill::parse(text).map_err(|m| invalid("refill", m))?;
            // The numbers the script will run on must make a limit the gateway could have been configured with.
            crate::policy::limit::Limit::new(capacity as u32, refill, 1).map_err(|e| invalid("refill", e.message))?;
            Some((capacity as u32, refill, text.trim().to_string()))
        }
    };
    // In-flight slots of their own: a rate override never lifts them, and this never changes a rate.
    let concurrency = match raw.3 {
        serde_json::Value::Null => None,
        v => Some(v.as_u64().filter(|c| (1..=u64::from(MAX_CAPACITY)).contains(c)).ok_or_else(|| {
            invalid("concurrency", format!("must be a whole number of slots from 1 to {MAX_CAPACITY}"))
        })? as u32),
    };
    let ttl_ms = match raw.2 {
        serde_json::Value::Null => None,
        v => Some(
            v.as_u64().filter(|s| (1..=MAX_EXPIRES_IN_S).contains(s)).ok_or_else(|| {
                invalid("expires_in_s", format!("must be a whole number from 1 to {MAX_EXPIRES_IN_S}"))
            })? * 1000,
        ),
    };
    let now = now_ms.max(0.0) as u64;
    let record = Override {
        scope: match scope {
            Scope::User => "user",
            Scope::Ip => "ip",
            Scope::Tier => "tier",
            Scope::Route => "route",
        }
        .to_string(),
        name,
        capacity: rates.as_ref().map(|r| r.0),
        refill: rates.as_ref().map(|r| r.2.clone()),
        concurrency,
        expires_at_ms: ttl_ms.map(|t| now + t),
        created_at_ms: now,
    };
    Ok(NewOverride {
        slots_key: slots_key(&key),
        key,
        value: rates.map(|(capacity, refill, _)| format!("{} {}", capacity, refill.tokens_per_second())),
        slots_value: concurrency.map(|n| format!("{n} {n}")),
        ttl_ms,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(
            r#"{"tiers":["free","pro"],"rules":[{"name":"orders","route":"/api/orders/*",
                "limits":[{"name":"o","capacity":5,"refill":"5/min"}]}]}"#,
            60,
            false,
        )
        .unwrap()
    }

    #[test]
    fn keys_are_escaped_and_scoped() {
        assert_eq!(caller_key("alice"), "ratelimit:override:caller:{alice}");
        assert_eq!(tier_key("a:b"), "ratelimit:override:tier:a%3Ab");
        assert_eq!(route_key("/api/*"), "ratelimit:override:route:/api/%2A");
        let (k, _) = target_key(Scope::User, "x:y", None, false, 64).unwrap();
        assert_eq!(k, "ratelimit:override:caller:{x%3Ay}");
        let (k, name) = target_key(Scope::Ip, "203.0.113.7", None, false, 64).unwrap();
        assert_eq!((k.as_str(), name.as_str()), ("ratelimit:override:caller:{@ip/203.0.113.7}", "203.0.113.7"));
        // A user id cannot pose as an IP subject: `@` is escaped.
        let (k, _) = target_key(Scope::User, "@ip/203.0.113.7", None, false, 64).unwrap();
        assert_ne!(k, "ratelimit:override:caller:{@ip/203.0.113.7}");
    }

    #[test]
    fn a_valid_body_becomes_a_value_and_a_record() {
        let o = parse(
            Scope::User,
            "alice",
            r#"{"capacity":100,"refill":"100/min","expires_in_s":60}"#,
            None,
            false,
            64,
            1000.0,
        )
        .unwrap();
        assert_eq!(o.value, Some(format!("100 {}", 100.0 / 60.0)));
        assert_eq!((o.slots_key.as_str(), o.slots_value.as_deref()), ("ratelimit:override:slots:caller:{alice}", None));
        assert_eq!(o.ttl_ms, Some(60_000));
        assert_eq!(o.record.expires_at_ms, Some(61_000));
        assert!(o.record.live(60_999.0) && !o.record.live(61_000.0));
        let o =
            parse(Scope::Route, "/API/x/../orders", r#"{"capacity":1,"refill":"1/s"}"#, None, true, 64, 0.0).unwrap();
        assert_eq!(o.key, "ratelimit:override:route:/api/orders");
    }

    /// Issue 23, item 5: in-flight limits take an override field of their own.
    #[test]
    fn a_concurrency_is_an_override_of_its_own_kind() {
        let o = parse(Scope::User, "alice", r#"{"concurrency":3,"expires_in_s":60}"#, None, false, 64, 0.0).unwrap();
        assert_eq!((o.key.as_str(), o.value), ("ratelimit:override:caller:{alice}", None));
        assert_eq!(
            (o.slots_key.as_str(), o.slots_value.as_deref()),
            ("ratelimit:override:slots:caller:{alice}", Some("3 3"))
        );
        assert_eq!((o.record.capacity, o.record.concurrency), (None, Some(3)));
        assert_eq!(Override::from_json(&o.record.to_json()), Some(o.record));
        let both = parse(Scope::User, "a", r#"{"concurrency":2,"capacity":9,"refill":"9/min"}"#, None, false, 64, 0.0);
        let both = both.unwrap();
        assert_eq!((both.value.is_some(), both.slots_value.as_deref()), (true, Some("2 2")));
        assert_eq!(slots_key(&tier_key("pro")), "ratelimit:override:slots:tier:pro");
        assert_eq!(slots_key(&route_key("/api/*")), "ratelimit:override:slots:route:/api/%2A");
    }

    #[test]
    fn bad_input_names_the_field() {
        let p = policy();
        let field =
            |scope, name: &str, body: &str| parse(scope, name, body, Some(&p), false, 64, 0.0).unwrap_err().field;
        let ok = r#"{"capacity":10,"refill":"10/min"}"#;
        assert_eq!(field(Scope::Tier, "gold", ok), "name");
        assert_eq!(field(Scope::Route, "/api/other", ok), "name");
        assert_eq!(field(Scope::Ip, "not-an-ip", ok), "name");
        assert_eq!(field(Scope::User, "", ok), "name");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":0,"refill":"1/s"}"#), "capacity");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":1.5,"refill":"1/s"}"#), "capacity");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":"10","refill":"1/s"}"#), "capacity");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":10,"refill":"fast"}"#), "refill");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":10,"refill":"1/s","expires_in_s":0}"#), "expires_in_s");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":10,"refill":"1/s","colour":1}"#), "body");
        assert_eq!(field(Scope::User, "a", r#"{"refill":"1/s"}"#), "capacity");
        assert_eq!(field(Scope::User, "a", r#"{"capacity":10}"#), "refill");
        assert_eq!(field(Scope::User, "a", r#"{}"#), "capacity");
        assert_eq!(field(Scope::User, "a", r#"{"concurrency":0}"#), "concurrency");
        assert_eq!(field(Scope::User, "a", r#"{"concurrency":1.5}"#), "concurrency");
        assert_eq!(field(Scope::User, "a", r#"{"concurrency":"3"}"#), "concurrency");
        assert_eq!(field(Scope::User, "a", r#"{"concurrency":3,"capacity":10}"#), "refill");
        assert_eq!(field(Scope::User, "a", "not json"), "body");
        // Issue 10, item 6: numbers the script cannot turn into a TTL are refused here, by field.
        assert_eq!(field(Scope::User, "a", r#"{"capacity":1000000000,"refill":"0.0003/d"}"#), "refill");
        assert!(parse(Scope::Tier, "pro", ok, Some(&p), false, 64, 0.0).is_ok());
        assert!(parse(Scope::Route, "/api/orders/*", ok, Some(&p), false, 64, 0.0).is_ok());
    }
}
