//! What to do with a request before Redis is asked: who is calling (verified
//! token, trusted header, client IP), whether a list decides it, and which
//! limits apply.

use std::net::IpAddr;

use crate::identity::caller::{identify, Caller, IdentityError};
use crate::identity::jwt::{JwtError, JwtMode, SignatureCheck, Verification, Verified};
use crate::identity::key::{bucket_key_of, subject_key};
use crate::identity::path::{percent_decode, views_of};
use crate::policy::check::Check;
use crate::policy::check::Mode;
use crate::policy::config::Config;
use crate::policy::document::Facts;
use crate::policy::overrides;

/// The zero-config limit's name (in `RateLimit-Policy`, and its rule's).
pub(crate) const DEFAULT_LIMIT: &str = "default";

/// The parts of a request the gateway looks at.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Path and query as sent (`/a/b?c`).
    pub target: &'a str,
    /// The target's canonical path ([`crate::normalize_with`], folded as configured).
    pub canonical: &'a str,
    /// A request header by lower-case name (one the gateway reads: [`crate::Gateway::header_names`]).
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
    /// Epoch milliseconds.
    pub now_ms: f64,
}

#[derive(Debug)]
pub enum Plan<'c> {
    /// 401: the token is missing (required) or invalid.
    Unauthorized(JwtError),
    /// The token's signature is for the executor to check (WebCrypto); plan again with its verdict.
    Signature(SignatureCheck),
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
    /// The candidate policy's limits for the same request (`RATE_LIMIT_POLICY_CANDIDATE`), in keys of
    /// their own: asked in the same script call, never deciding anything.
    pub candidates: Vec<Check<'c>>,
    /// The caller as in keys (`alice`, `@ip/…`).
    pub subject: String,
    pub tier: Option<String>,
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim();
    v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim())
}

/// Which limits a plan lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Select {
    /// Those of the rules the request matches, and the candidate policy's beside them.
    Request,
    /// Every limit of every rule of the policy, for the caller (the quota endpoint without a path).
    EveryRule,
}

/// The plan for a request. `verified` is the caller its token proved, once the executor has checked
/// the token's signature ([`Plan::Signature`]).
pub fn plan<'c>(config: &'c Config, req: &RequestFacts<'_>, verified: Option<Verified>) -> Plan<'c> {
    plan_select(config, req, verified, Select::Request)
}

/// [`plan`], listing the limits `select` says.
pub(crate) fn plan_select<'c>(
    config: &'c Config,
    req: &RequestFacts<'_>,
    verified: Option<Verified>,
    select: Select,
) -> Plan<'c> {
    let header = req.header;
    let mut tier = None;
    let mut caller = None;
    if config.jwt.mode != JwtMode::Off {
        let checked = match (verified, bearer(header("authorization"))) {
            (Some(v), _) => Some(Ok(v)),
            (None, Some(token)) => match config.jwt.verify(token, (req.now_ms / 1000.0).floor() as i64) {
                Verification::Verified(v) => Some(Ok(v)),
                Verification::Refused(e) => Some(Err(e)),
                Verification::Signature(check) => return Plan::Signature(check),
            },
            (None, None) if config.jwt.mode == JwtMode::Required => Some(Err(JwtError::Missing)),
            (None, None) => None,
        };
        match checked {
            Some(Ok(v)) => {
                tier = v.tier;
                caller = Some(Caller::User(v.subject));
            }
            Some(Err(e)) => return Plan::Unauthorized(e),
            None => {}
        }
    }
    let client_ip = header("cf-connecting-ip");
    let caller = match caller {
        Some(c) => c,
        None => {
            let user = config.user_id_header.as_deref().and_then(header);
            match identify(user, client_ip, config.ipv6_prefix) {
                Ok(c) => c,
                Err(e) => return Plan::Unidentified(e),
            }
        }
    };
    // The candidate policy, when it is compared (only with the admin API on, where its report is read).
    let candidate = match &config.candidate {
        Ok(Some(c)) if select == Select::Request && config.admin_token_sha256.is_some() => Some(&c.policy),
        _ => None,
    };
    // With a policy (live or candidate), every view of the path is matched against the rules; without,
    // only the canonical path (the bucket key) matters.
    let rules = config.policy.is_some() || candidate.is_some();
    let paths = match rules {
        true => views_of(req.target, req.canonical, config.path_case_insensitive),
        false => vec![req.canonical.to_string()],
    };

    if let Some(policy) = &config.policy {
        let ip: Option<IpAddr> = client_ip.and_then(|ip| ip.trim().parse().ok());
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
    let (client, method_overrides) = match rules {
        true => (
            client_ip.and_then(|ip| identify(None, Some(ip), config.ipv6_prefix).ok()),
            method_overrides(header, req.target),
        ),
        false => (None, Vec::new()),
    };
    let on = Target { method: req.method, method_overrides: &method_overrides, paths: &paths };
    let limited = match (select, &config.policy) {
        (Select::EveryRule, Some(policy)) => {
            let facts = Facts {
                method: req.method,
                method_overrides: &[],
                paths: &paths,
                caller: &caller,
                client: client.as_ref(),
                tier: tier.as_deref(),
            };
            limited_by(policy, policy.applied_rules(&policy.rules, &facts, header), subject_key(&caller), tier)
        }
        _ => {
            let candidates = candidate
                .and_then(|p| policy_limits(p, &caller, client.as_ref(), tier.clone(), &on, header))
                .map(as_candidates)
                .unwrap_or_default();
            match limits_for(config, &caller, client.as_ref(), tier.clone(), &on, header) {
                Some(mut l) => {
                    l.candidates = candidates;
                    Some(l)
                }
                // No live limit, but the candidate has some (a new route, say): asked all the same.
                None if !candidates.is_empty() => {
                    Some(Limited { checks: Vec::new(), candidates, subject: subject_key(&caller), tier })
                }
                None => None,
            }
        }
    };
    match limited {
        Some(limited) => Plan::Limit(limited),
        None => Plan::Unlimited,
    }
}

/// The prefix of a candidate policy's keys: `rate:@candidate/{<subject>}:<route>#<limit>` (no HTTP or RPC
/// subject starts with `@candidate/`, so its counters never touch a live bucket).
pub(crate) const CANDIDATE_SUBJECT_PREFIX: &str = "@candidate/";

/// A candidate policy's limits for a request (matched as the live ones are), as checks in keys of their
/// own, each in [`Mode::Candidate`] (its shadow and in-flight limits only reported).
fn as_candidates(limited: Limited<'_>) -> Vec<Check<'_>> {
    limited
        .checks
        .into_iter()
        .map(|mut c| {
            c.key = format!("rate:{CANDIDATE_SUBJECT_PREFIX}{}", &c.key["rate:".len()..]);
            // (a candidate's in-flight slots would never be released: reported only)
            c.mode = if c.mode == Mode::Shadow || c.limit.is_concurrency() { Mode::Report } else { Mode::Candidate };
            c
        })
        .collect()
}

/// Request headers that name a method the origin may run instead of the request's own: Rails and
/// Express (`X-HTTP-Method-Override`), ASP.NET (`X-HTTP-Method`), others (`X-Method-Override`). The
/// edge reads them when a policy is set.
pub(crate) const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Methods a form POST may carry in its `_method` field (Rails, Laravel, Symfony). Bodies are never
/// read, so a form POST counts under the rules for each of them.
const FORM_METHODS: [&str; 3] = ["PUT", "PATCH", "DELETE"];

/// Every method the origin may run for this request besides its own: each override header's values,
/// the `_method` query parameter, and for a form POST the methods a form can override to.
pub(crate) fn method_overrides<'a>(header: &dyn Fn(&str) -> Option<&'a str>, target: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |m: &str| {
        let m = m.trim().to_ascii_uppercase();
        if !m.is_empty() && !out.contains(&m) {
            out.push(m);
        }
    };
    for name in METHOD_OVERRIDE_HEADERS {
        if let Some(v) = header(name) {
            v.split(',').for_each(&mut add);
        }
    }
    let query = target.split('#').next().unwrap_or("").split_once('?').map_or("", |(_, q)| q);
    for pair in query.split(['&', ';']) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| String::from_utf8_lossy(&percent_decode(s.replace('+', " ").as_bytes())).into_owned();
        if decode(k).trim().eq_ignore_ascii_case("_method") {
            add(&decode(v));
        }
    }
    let form = header("content-type").is_some_and(|t| {
        let t = t.trim().to_ascii_lowercase();
        t.starts_with("application/x-www-form-urlencoded") || t.starts_with("multipart/form-data")
    });
    if form {
        FORM_METHODS.iter().for_each(|m| add(m));
    }
    out
}

/// A request's method(s) and path.
pub(crate) struct Target<'a> {
    pub method: &'a str,
    /// Methods the origin may run instead ([`method_overrides`]): a rule for any of them applies.
    pub method_overrides: &'a [String],
    /// The views of the path ([`crate::identity::path::views`]), the canonical one first; the bucket key and
    /// route overrides use the canonical one.
    pub paths: &'a [String],
}

impl Target<'_> {
    /// The canonical path.
    pub(crate) fn path(&self) -> &str {
        &self.paths[0]
    }
}

/// The limits a request of `caller` (in `tier`, from `client`) to `on` is checked against, each with
/// the override keys that may replace its numbers; `None` when no rule applies. The admin API's
/// peek and reset use it too, so they name exactly the buckets a request would use.
pub(crate) fn limits_for<'c, 'h>(
    config: &'c Config,
    caller: &Caller,
    client: Option<&Caller>,
    tier: Option<String>,
    on: &Target<'_>,
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> Option<Limited<'c>> {
    let subject = subject_key(caller);
    let Some(policy) = &config.policy else {
        let mut overrides = vec![overrides::caller_key(&subject)];
        // A path too long for its own bucket key (hashed there) has no route override either.
        if on.path().len() <= crate::identity::key::MAX_PATH_BYTES {
            overrides.push(overrides::route_key(on.path()));
        }
        overrides.extend(tier.as_deref().map(overrides::tier_key));
        let check = Check {
            key: bucket_key_of(&subject, on.path()),
            name: DEFAULT_LIMIT,
            limit: &config.limit,
            cost: 1,
            mode: Mode::Enforce,
            rule: DEFAULT_LIMIT,
            overrides,
        };
        return Some(Limited { checks: vec![check], candidates: Vec::new(), subject, tier });
    };
    policy_limits(policy, caller, client, tier, on, header)
}

/// The limits of `policy`'s rules that match `on`, for `caller`.
fn policy_limits<'c, 'h>(
    policy: &'c crate::policy::document::Policy,
    caller: &Caller,
    client: Option<&Caller>,
    tier: Option<String>,
    on: &Target<'_>,
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> Option<Limited<'c>> {
    let facts = Facts {
        method: on.method,
        method_overrides: on.method_overrides,
        paths: on.paths,
        caller,
        client,
        tier: tier.as_deref(),
    };
    limited_by(policy, policy.applied(&facts, header), subject_key(caller), tier)
}

/// The checks for `applied` (limits of `policy`'s rules) of the caller `subject` in `tier`, with the
/// override keys that may replace their numbers; `None` when nothing applies.
pub(crate) fn limited_by<'c>(
    policy: &'c crate::policy::document::Policy,
    applied: Vec<crate::policy::document::Applied<'c>>,
    subject: String,
    tier: Option<String>,
) -> Option<Limited<'c>> {
    if applied.is_empty() {
        return None;
    }
    let tier = tier.or_else(|| policy.default_tier.clone());
    let (caller_override, tier_override) = (overrides::caller_key(&subject), tier.as_deref().map(overrides::tier_key));
    let checks = applied
        .into_iter()
        .map(|a| {
            // Most specific first: the caller's (for a limit counted per caller), the route's, the tier's.
            let mut keys = Vec::with_capacity(3);
            if a.per_caller {
                keys.push(caller_override.clone());
            }
            keys.push(overrides::route_key(a.route));
            keys.extend(tier_override.clone());
            // An in-flight limit reads only an override's concurrency, a rate limit only its rates: a
            // rate override never lifts a caller's slots, and a concurrency never changes a rate.
            let overrides =
                if a.limit.is_concurrency() { keys.iter().map(|k| overrides::slots_key(k)).collect() } else { keys };
            Check {
                key: a.key,
                name: a.name,
                limit: a.limit,
                cost: a.cost,
                mode: if a.shadow { Mode::Shadow } else { Mode::Enforce },
                rule: a.rule,
                overrides,
            }
        })
        .collect();
    Some(Limited { checks, candidates: Vec::new(), subject, tier })
}
