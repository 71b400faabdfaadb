//! What to do with a request before Redis is asked: who is calling (verified
//! token, trusted header, client IP), whether a list decides it, and which
//! limits apply. Pure: the edge gathers the request's facts and carries out
//! the plan.

use std::net::IpAddr;

use crate::config::Config;
use crate::identity::{identify, Caller, IdentityError};
use crate::jwt::{JwtError, JwtMode};
use crate::key::{bucket_key, subject_key};
use crate::limiter::Check;
use crate::overrides;
use crate::path::normalize_with;
use crate::policy::Facts;

/// The zero-config policy's name in `RateLimit-Policy`.
pub const DEFAULT_POLICY: &str = "default";

/// The parts of a request the gateway looks at.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Path and query as sent (`/a/b?c`).
    pub target: &'a str,
    /// Any request header by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// Epoch milliseconds.
    pub now_ms: f64,
}

#[derive(Debug)]
pub enum Plan<'c> {
    /// 401: the token is missing (required) or invalid.
    Unauthorized(JwtError),
    /// 400: no identity at all.
    Unidentified(IdentityError),
    /// 403: the deny list names the caller or its network.
    Forbidden,
    /// Forward without limiting: allow-listed, or no rule applies.
    Unlimited,
    /// Ask Redis about these limits, all at once.
    Limit(Limited<'c>),
}

/// The limits of a request, and who is asking (for metrics).
#[derive(Debug)]
pub struct Limited<'c> {
    pub checks: Vec<Check<'c>>,
    /// The caller as in keys (`alice`, `@ip/…`).
    pub subject: String,
    pub tier: Option<String>,
}

pub fn plan<'c>(config: &'c Config, req: &RequestFacts<'_>) -> Plan<'c> {
    let header = req.header;
    let mut tier = None;
    let mut caller = None;
    if config.jwt.mode != JwtMode::Off {
        let bearer = header("authorization").and_then(|v| {
            let v = v.trim();
            v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim().to_string())
        });
        match bearer {
            Some(token) => match config.jwt.verify(&token, (req.now_ms / 1000.0).floor() as i64) {
                Ok(v) => {
                    tier = v.tier;
                    caller = Some(Caller::User(v.subject));
                }
                Err(e) => return Plan::Unauthorized(e),
            },
            None if config.jwt.mode == JwtMode::Required => return Plan::Unauthorized(JwtError::Missing),
            None => {}
        }
    }
    let client_ip = header("cf-connecting-ip");
    let caller = match caller {
        Some(c) => c,
        None => {
            let user = config.user_id_header.as_deref().and_then(header);
            match identify(user.as_deref(), client_ip.as_deref(), config.ipv6_prefix) {
                Ok(c) => c,
                Err(e) => return Plan::Unidentified(e),
            }
        }
    };
    let path = normalize_with(req.target, config.path_case_insensitive);

    if let Some(policy) = &config.policy {
        let ip: Option<IpAddr> = client_ip.as_deref().and_then(|ip| ip.trim().parse().ok());
        let user = match &caller {
            Caller::User(id) => Some(id.as_str()),
            Caller::Ip { .. } => None,
        };
        if policy.deny.contains(user, ip) {
            return Plan::Forbidden;
        }
        if policy.allow.contains(user, ip) {
            return Plan::Unlimited;
        }
    }
    let (client, method_override) = match config.policy {
        Some(_) => (
            client_ip.as_deref().and_then(|ip| identify(None, Some(ip), config.ipv6_prefix).ok()),
            header("x-http-method-override"),
        ),
        None => (None, None),
    };
    let on = Target { method: req.method, method_override: method_override.as_deref(), path: &path };
    match limits_for(config, &caller, client.as_ref(), tier, &on, header) {
        Some(limited) => Plan::Limit(limited),
        None => Plan::Unlimited,
    }
}

/// A request's method(s) and canonical path.
pub struct Target<'a> {
    pub method: &'a str,
    /// `X-HTTP-Method-Override`, if any: a rule for either method applies.
    pub method_override: Option<&'a str>,
    /// The canonical path (see [`crate::normalize`]).
    pub path: &'a str,
}

/// The limits a request of `caller` (in `tier`, from `client`) to `on` is checked against, each with
/// the override keys that may replace its numbers; `None` when no rule applies. The admin API's
/// peek and reset use it too, so they name exactly the buckets a request would use.
pub fn limits_for<'c>(
    config: &'c Config,
    caller: &Caller,
    client: Option<&Caller>,
    tier: Option<String>,
    on: &Target<'_>,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<Limited<'c>> {
    let subject = subject_key(caller);
    let Some(policy) = &config.policy else {
        let mut overrides = vec![overrides::caller_key(&subject)];
        // A path too long for its own bucket key (hashed there) has no route override either.
        if on.path.len() <= crate::key::MAX_PATH_BYTES {
            overrides.push(overrides::route_key(on.path));
        }
        overrides.extend(tier.as_deref().map(overrides::tier_key));
        let check = Check {
            key: bucket_key(caller, on.path),
            policy: DEFAULT_POLICY,
            limit: &config.limit,
            cost: 1,
            shadow: false,
            rule: DEFAULT_POLICY,
            overrides,
        };
        return Some(Limited { checks: vec![check], subject, tier });
    };
    let facts = Facts {
        method: on.method,
        method_override: on.method_override,
        path: on.path,
        caller,
        client,
        tier: tier.as_deref(),
    };
    let applied = policy.applied(&facts, header);
    if applied.is_empty() {
        return None;
    }
    let tier = tier.or_else(|| policy.default_tier.clone());
    let (caller_override, tier_override) = (overrides::caller_key(&subject), tier.as_deref().map(overrides::tier_key));
    let checks = applied
        .into_iter()
        .map(|a| {
            let mut overrides = Vec::with_capacity(3);
            if a.per_caller {
                overrides.push(caller_override.clone());
            }
            overrides.push(overrides::route_key(a.route));
            overrides.extend(tier_override.clone());
            Check {
                key: a.key,
                policy: a.name,
                limit: a.limit,
                cost: a.cost,
                shadow: a.shadow,
                rule: a.rule,
                overrides,
            }
        })
        .collect();
    Some(Limited { checks, subject, tier })
}
