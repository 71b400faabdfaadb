//! What to do with a request before Redis is asked: who is calling (verified
//! token, trusted header, client IP), whether a list decides it, and which
//! limits apply. Pure: the edge gathers the request's facts and carries out
//! the plan.

use std::net::IpAddr;

use crate::config::Config;
use crate::identity::{identify, Caller, IdentityError};
use crate::jwt::{JwtError, JwtMode};
use crate::key::bucket_key;
use crate::limiter::Check;
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
    Limit(Vec<Check<'c>>),
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

    let Some(policy) = &config.policy else {
        let key = bucket_key(&caller, &path);
        return Plan::Limit(vec![Check { key, policy: DEFAULT_POLICY, limit: &config.limit, cost: 1, shadow: false }]);
    };
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
    let client = client_ip.as_deref().and_then(|ip| identify(None, Some(ip), config.ipv6_prefix).ok());
    let method_override = header("x-http-method-override");
    let facts = Facts {
        method: req.method,
        method_override: method_override.as_deref(),
        path: &path,
        caller: &caller,
        client: client.as_ref(),
        tier: tier.as_deref(),
    };
    let checks: Vec<Check<'c>> = policy
        .applied(&facts, header)
        .into_iter()
        .map(|a| Check { key: a.key, policy: a.name, limit: a.limit, cost: a.cost, shadow: a.shadow })
        .collect();
    if checks.is_empty() {
        Plan::Unlimited
    } else {
        Plan::Limit(checks)
    }
}
