//! The rate-limit policy: rules that match methods and a route template, each
//! naming one or more limits counted per user, per IP, per header value or
//! globally, with a capacity, refill and cost that may differ per tier. Parsed
//! strictly from JSON (`RATE_LIMIT_POLICY`): unknown fields, duplicate names,
//! out-of-range numbers and unknown tiers are errors naming the rule and field.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::Deserialize;

use crate::identity::Caller;
use crate::json::{self, Obj};
use crate::key::{push_escaped, subject_key};
use crate::limit::{Algorithm, Limit, LimitPart};
use crate::path::normalize_with;
use crate::rate::Refill;

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountBy {
    /// The caller (verified token subject, trusted user id, else client IP).
    User,
    /// The client IP (IPv6 grouped by prefix), whoever the caller is.
    Ip,
    /// The value of this (lower-case) request header; the caller when it is absent.
    Header(String),
    /// One bucket for everyone.
    Global,
}

/// A limit's numbers for one tier.
#[derive(Clone, Debug, PartialEq)]
pub struct Tiered {
    pub limit: Limit,
    pub cost: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LimitRule {
    pub name: String,
    pub by: CountBy,
    pub base: Tiered,
    pub tiers: HashMap<String, Tiered>,
    pub shadow: bool,
}

impl LimitRule {
    /// The numbers for `tier` (the base numbers for no or an unknown tier).
    pub fn for_tier(&self, tier: Option<&str>) -> &Tiered {
        tier.and_then(|t| self.tiers.get(t)).unwrap_or(&self.base)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    /// `*` as the last segment: any number of remaining segments.
    Rest,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Upper-case methods; `None` matches every method.
    pub methods: Option<Vec<String>>,
    /// The route template as written (it goes into the keys).
    pub route: String,
    segments: Vec<Segment>,
    pub limits: Vec<LimitRule>,
}

/// Users and networks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lists {
    pub users: HashSet<String>,
    pub nets: Vec<(IpAddr, u8)>,
}

impl Lists {
    pub fn contains(&self, user: Option<&str>, ip: Option<IpAddr>) -> bool {
        user.is_some_and(|u| self.users.contains(u)) || ip.is_some_and(|ip| self.nets.iter().any(|n| in_net(ip, *n)))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub allow: Lists,
    pub deny: Lists,
    /// Tier of callers whose token names none.
    pub default_tier: Option<String>,
    /// The declared tiers.
    pub tiers: Vec<String>,
}

/// One limit that applies to a request, ready to become a [`crate::Check`].
#[derive(Clone, Debug, PartialEq)]
pub struct Applied<'a> {
    pub key: String,
    pub name: &'a str,
    /// The rule's name and route template.
    pub rule: &'a str,
    pub route: &'a str,
    /// Counted per caller (`by: "user"`): a caller's override applies to it.
    pub per_caller: bool,
    pub limit: &'a Limit,
    pub cost: u32,
    pub shadow: bool,
}

/// What is known about a request when the policy is applied.
pub struct Facts<'a> {
    pub method: &'a str,
    /// Methods the origin may run instead (overrides; see [`crate::gateway`]): a rule for any applies.
    pub method_overrides: &'a [String],
    /// Every view of the path (see [`crate::path::views`]), the canonical one first: a rule that
    /// matches any of them applies.
    pub paths: &'a [String],
    pub caller: &'a Caller,
    pub client: Option<&'a Caller>,
    pub tier: Option<&'a str>,
}

impl Policy {
    /// The limits of every rule that matches, in policy order.
    pub fn applied<'p, 'h>(&'p self, facts: &Facts<'_>, header: impl Fn(&str) -> Option<&'h str>) -> Vec<Applied<'p>> {
        let tier = facts.tier.or(self.default_tier.as_deref());
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|r| r.matches(facts.method, facts.method_overrides, facts.paths)) {
            for l in &rule.limits {
                let subject = match &l.by {
                    CountBy::User => subject_key(facts.caller),
                    CountBy::Ip => subject_key(facts.client.unwrap_or(facts.caller)),
                    CountBy::Header(name) => match header(name).filter(|v| !v.trim().is_empty()) {
                        Some(v) => {
                            let mut s = String::from("@hdr/");
                            push_escaped(&mut s, name);
                            s.push('=');
                            push_escaped(&mut s, v.trim());
                            s
                        }
                        None => subject_key(facts.caller),
                    },
                    CountBy::Global => "@global".to_string(),
                };
                let tiered = l.for_tier(tier);
                let mut key = format!("rate:{subject}:");
                push_route(&mut key, &rule.route);
                key.push('#');
                key.push_str(&l.name);
                out.push(Applied {
                    key,
                    name: &l.name,
                    rule: &rule.name,
                    route: &rule.route,
                    per_caller: l.by == CountBy::User,
                    limit: &tiered.limit,
                    cost: tiered.cost,
                    shadow: l.shadow,
                });
            }
        }
        out
    }
}

/// A limit's numbers as the admin API shows them, as JSON members.
pub fn limit_json(o: Obj, limit: &Limit, cost: u32) -> Obj {
    o.str("algorithm", limit.algorithm().name())
        .int("capacity", limit.capacity())
        .num("refill_per_second", limit.refill().tokens_per_second())
        .int("window_seconds", limit.window_seconds())
        .int("ttl_seconds", limit.ttl_seconds())
        .int("cost", cost)
}

impl Policy {
    /// The policy in effect, every default filled in (the admin API's `GET policy`), as JSON.
    pub fn to_json(&self) -> String {
        let by = |b: &CountBy| match b {
            CountBy::User => "user".to_string(),
            CountBy::Ip => "ip".to_string(),
            CountBy::Header(h) => format!("header:{h}"),
            CountBy::Global => "global".to_string(),
        };
        let lists = |l: &Lists| {
            let mut users: Vec<&String> = l.users.iter().collect();
            users.sort();
            let ips: Vec<String> = l.nets.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
            Obj::new().raw("users", &json::strings(&users)).raw("ips", &json::strings(&ips)).finish()
        };
        let rules = json::array(self.rules.iter().map(|r| {
            let limits = json::array(r.limits.iter().map(|l| {
                let mut tiers: Vec<(&String, &Tiered)> = l.tiers.iter().collect();
                tiers.sort_by(|a, b| a.0.cmp(b.0));
                let tiers = tiers
                    .into_iter()
                    .fold(Obj::new(), |o, (t, n)| o.raw(t, &limit_json(Obj::new(), &n.limit, n.cost).finish()));
                let o = Obj::new().str("name", &l.name).str("by", &by(&l.by)).bool("shadow", l.shadow);
                limit_json(o, &l.base.limit, l.base.cost).raw("tiers", &tiers.finish()).finish()
            }));
            let methods = r.methods.as_ref().map_or_else(|| "null".to_string(), |m| json::strings(m));
            Obj::new()
                .str("name", &r.name)
                .raw("methods", &methods)
                .str("route", &r.route)
                .raw("limits", &limits)
                .finish()
        }));
        Obj::new()
            .raw("tiers", &json::strings(&self.tiers))
            .opt_str("default_tier", self.default_tier.as_deref())
            .raw("allow", &lists(&self.allow))
            .raw("deny", &lists(&self.deny))
            .raw("rules", &rules)
            .finish()
    }
}

/// Route templates in keys: `*` is written `%2A` so no key holds a glob character.
fn push_route(key: &mut String, route: &str) {
    for c in route.chars() {
        if c == '*' {
            key.push_str("%2A");
        } else {
            key.push(c);
        }
    }
}

impl Rule {
    fn matches(&self, method: &str, overrides: &[String], paths: &[String]) -> bool {
        if let Some(methods) = &self.methods {
            let wanted = |m: &str| {
                let m = m.trim().to_ascii_uppercase();
                // HEAD is a GET without a body: a GET rule counts it too.
                methods.iter().any(|x| *x == m || (m == "HEAD" && x == "GET"))
            };
            if !wanted(method) && !overrides.iter().any(|m| wanted(m)) {
                return false;
            }
        }
        paths.iter().any(|p| self.matches_path(p))
    }

    fn matches_path(&self, path: &str) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::Param => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

fn in_net(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|v4| in_net(IpAddr::V4(v4), (net, prefix))),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

// ---- parsing ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    tiers: Vec<String>,
    #[serde(default)]
    default_tier: Option<String>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    allow: Option<RawLists>,
    #[serde(default)]
    deny: Option<RawLists>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLists {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
    route: String,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    algorithm: Option<String>,
    limits: Vec<RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: String,
    #[serde(default = "default_by")]
    by: String,
    capacity: serde_json::Number,
    refill: String,
    #[serde(default)]
    cost: Option<serde_json::Number>,
    #[serde(default)]
    ttl_seconds: Option<serde_json::Number>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    tiers: HashMap<String, RawTier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    #[serde(default)]
    capacity: Option<serde_json::Number>,
    #[serde(default)]
    refill: Option<String>,
    #[serde(default)]
    cost: Option<serde_json::Number>,
}

fn default_by() -> String {
    "user".into()
}

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];
const MAX_RULES: usize = 256;
const MAX_LIMITS_PER_RULE: usize = 8;

impl Policy {
    /// Parses a policy document. `ttl_seconds` is the default bucket TTL; `fold_case` must match
    /// how request paths are normalised.
    pub fn parse(json: &str, ttl_seconds: u64, fold_case: bool) -> Result<Policy, String> {
        let raw: RawPolicy = serde_json::from_str(json).map_err(|e| format!("not a valid policy document: {e}"))?;
        if raw.rules.is_empty() {
            return Err("`rules` is empty: a policy needs at least one rule".into());
        }
        if raw.rules.len() > MAX_RULES {
            return Err(format!("`rules` has {} rules; at most {MAX_RULES}", raw.rules.len()));
        }
        let mut tiers = HashSet::new();
        for t in &raw.tiers {
            check_name(t).map_err(|m| format!("tier {t:?}: {m}"))?;
            if !tiers.insert(t.as_str()) {
                return Err(format!("tier {t:?} is declared twice"));
            }
        }
        if let Some(t) = &raw.default_tier {
            if !tiers.contains(t.as_str()) {
                return Err(format!("`default_tier` {t:?} is not one of the declared `tiers`"));
            }
        }
        let mut rule_names = HashSet::new();
        let mut limit_names: HashMap<String, String> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for r in raw.rules {
            let at = format!("rule {:?}", r.name);
            check_name(&r.name).map_err(|m| format!("{at}: `name` {m}"))?;
            if !rule_names.insert(r.name.clone()) {
                return Err(format!("{at}: duplicate rule name"));
            }
            let methods = match r.methods {
                None => None,
                Some(ms) if ms.is_empty() => {
                    return Err(format!("{at}: `methods` is empty (omit it to match every method)"))
                }
                Some(ms) => {
                    let mut out = Vec::new();
                    for m in ms {
                        let up = m.to_ascii_uppercase();
                        if !METHODS.contains(&up.as_str()) {
                            return Err(format!("{at}: `methods` has unknown method {m:?}"));
                        }
                        out.push(up);
                    }
                    Some(out)
                }
            };
            let segments = parse_route(&r.route, fold_case).map_err(|m| format!("{at}: `route` {m}"))?;
            if r.limits.is_empty() {
                return Err(format!("{at}: `limits` is empty"));
            }
            if r.limits.len() > MAX_LIMITS_PER_RULE {
                return Err(format!("{at}: `limits` has more than {MAX_LIMITS_PER_RULE} limits"));
            }
            let rule_algorithm = match &r.algorithm {
                None => Algorithm::TokenBucket,
                Some(a) => algorithm(a).map_err(|m| format!("{at}: `algorithm` {m}"))?,
            };
            let mut limits = Vec::new();
            for l in r.limits {
                let at = format!("{at}, limit {:?}", l.name);
                check_name(&l.name).map_err(|m| format!("{at}: `name` {m}"))?;
                if let Some(other) = limit_names.insert(l.name.clone(), r.name.clone()) {
                    return Err(format!("{at}: duplicate limit name (also in rule {other:?}); limit names are unique"));
                }
                let by = match l.by.as_str() {
                    "user" => CountBy::User,
                    "ip" => CountBy::Ip,
                    "global" => CountBy::Global,
                    other => match other.strip_prefix("header:") {
                        Some(h)
                            if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
                        {
                            CountBy::Header(h.to_ascii_lowercase())
                        }
                        _ => {
                            return Err(format!(
                                "{at}: `by` must be \"user\", \"ip\", \"global\" or \"header:<name>\", got {other:?}"
                            ))
                        }
                    },
                };
                let ttl = match &l.ttl_seconds {
                    None => ttl_seconds,
                    Some(n) => {
                        whole(n, 1, crate::limit::MAX_TTL_SECONDS).map_err(|m| format!("{at}: `ttl_seconds` {m}"))?
                    }
                };
                let algo = match &l.algorithm {
                    None => rule_algorithm,
                    Some(a) => algorithm(a).map_err(|m| format!("{at}: `algorithm` {m}"))?,
                };
                let base =
                    tiered(&l.capacity, &l.refill, l.cost.as_ref(), ttl, algo).map_err(|m| format!("{at}: {m}"))?;
                let mut by_tier = HashMap::new();
                for (tier, t) in &l.tiers {
                    if !tiers.contains(tier.as_str()) {
                        return Err(format!("{at}: tier {tier:?} is not one of the declared `tiers`"));
                    }
                    let capacity = t.capacity.as_ref().unwrap_or(&l.capacity);
                    let refill = t.refill.as_deref().unwrap_or(&l.refill);
                    let cost = t.cost.as_ref().or(l.cost.as_ref());
                    let numbers =
                        tiered(capacity, refill, cost, ttl, algo).map_err(|m| format!("{at}, tier {tier:?}: {m}"))?;
                    by_tier.insert(tier.clone(), numbers);
                }
                limits.push(LimitRule {
                    name: l.name,
                    by,
                    base,
                    tiers: by_tier,
                    shadow: raw.shadow || r.shadow || l.shadow,
                });
            }
            rules.push(Rule { name: r.name, methods, route: r.route, segments, limits });
        }
        let allow = lists(raw.allow, "allow")?;
        let deny = lists(raw.deny, "deny")?;
        Ok(Policy { rules, allow, deny, default_tier: raw.default_tier, tiers: raw.tiers })
    }
}

fn tiered(
    capacity: &serde_json::Number,
    refill: &str,
    cost: Option<&serde_json::Number>,
    ttl: u64,
    algorithm: Algorithm,
) -> Result<Tiered, String> {
    let capacity = whole(capacity, 1, u64::from(crate::limit::MAX_CAPACITY)).map_err(|m| format!("`capacity` {m}"))?;
    let refill = Refill::parse(refill).map_err(|m| format!("`refill` {m}"))?;
    let cost = match cost {
        None => 1,
        Some(c) => whole(c, 1, capacity).map_err(|m| format!("`cost` {m} (the capacity is {capacity})"))?,
    };
    let limit = Limit::new(capacity as u32, refill, ttl)
        .map_err(|e| match e.part {
            LimitPart::Capacity => format!("`capacity` {e}"),
            LimitPart::Refill => format!("`refill`: {e}"),
            LimitPart::Ttl => format!("`ttl_seconds`: {e}"),
        })?
        .with_algorithm(algorithm);
    Ok(Tiered { limit, cost: cost as u32 })
}

fn whole(n: &serde_json::Number, min: u64, max: u64) -> Result<u64, String> {
    match n.as_u64() {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("must be a whole number from {min} to {max}, got {n}")),
    }
}

fn algorithm(text: &str) -> Result<Algorithm, String> {
    Algorithm::parse(text).ok_or_else(|| format!("must be \"token-bucket\" or \"sliding-window\", got {text:?}"))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} must be 1 to 64 of A-Z a-z 0-9 _ . -"))
    }
}

fn parse_route(route: &str, fold_case: bool) -> Result<Vec<Segment>, String> {
    if !route.starts_with('/') {
        return Err(format!("{route:?} must start with /"));
    }
    if route.contains(['?', '#', '\\']) || route.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(format!("{route:?} may not contain a query, fragment, backslash, space or control character"));
    }
    let lower = route.to_ascii_lowercase();
    if route.contains(';') || ["%2f", "%5c", "%3b"].iter().any(|e| lower.contains(e)) {
        return Err(format!(
            "{route:?} may not contain `;` or an encoded `/`, `\\` or `;`: paths are matched with their path \
             parameters cut and their separators decoded"
        ));
    }
    let parts: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let mut segments = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if *part == "*" {
            if i + 1 != parts.len() {
                return Err(format!("{route:?}: `*` may only be the last segment"));
            }
            segments.push(Segment::Rest);
        } else if let Some(name) = part.strip_prefix(':') {
            check_name(name).map_err(|m| format!("{route:?}: parameter {m}"))?;
            segments.push(Segment::Param);
        } else if part.contains('*') {
            return Err(format!("{route:?}: `*` must be a whole segment"));
        } else if matches!(*part, "." | "..") {
            return Err(format!("{route:?}: `.` and `..` segments are not allowed"));
        } else {
            // The literal as the normaliser would write it, so it compares with canonical paths.
            let canonical = normalize_with(&format!("/{part}"), fold_case);
            segments.push(Segment::Literal(canonical[1..].to_string()));
        }
    }
    Ok(segments)
}

fn lists(raw: Option<RawLists>, field: &str) -> Result<Lists, String> {
    let Some(raw) = raw else { return Ok(Lists::default()) };
    let mut out = Lists::default();
    for u in raw.users {
        if u.trim().is_empty() || u.trim() != u {
            return Err(format!("`{field}.users` has a blank or padded id {u:?}"));
        }
        out.users.insert(u);
    }
    for ip in raw.ips {
        out.nets.push(parse_net(&ip).map_err(|m| format!("`{field}.ips`: {m}"))?);
    }
    Ok(out)
}

/// `1.2.3.4`, `10.0.0.0/8`, `2001:db8::/32`.
pub fn parse_net(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("{text:?} has an invalid prefix length (0 to {max})")),
        },
        Some(_) => return Err(format!("{text:?} has an invalid prefix length (0 to {max})")),
    };
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "tiers": ["free", "premium"],
        "default_tier": "free",
        "allow": { "users": ["ops-bot"], "ips": ["10.0.0.0/8"] },
        "deny": { "ips": ["203.0.113.0/24", "2001:db8:bad::/48"] },
        "rules": [
            { "name": "orders", "methods": ["GET", "POST"], "route": "/users/:id/orders",
              "limits": [
                { "name": "orders-per-user", "by": "user", "capacity": 5, "refill": "5/min",
                  "tiers": { "premium": { "capacity": 50, "refill": "50/min" } } } ] },
            { "name": "export", "route": "/export/*",
              "limits": [ { "name": "export-cost", "capacity": 10, "refill": "10/h", "cost": 5 } ] },
            { "name": "api", "route": "/*",
              "limits": [
                { "name": "api-global", "by": "global", "capacity": 1000, "refill": "1000/min" },
                { "name": "api-per-key", "by": "header:x-api-key", "capacity": 100, "refill": "100/min", "shadow": true } ] }
        ]
    }"#;

    /// The limits `caller` (in `tier`) meets on `method path`.
    fn applied_to<'p>(
        p: &'p Policy,
        (method, path): (&str, &str),
        caller: &Caller,
        tier: Option<&str>,
        header: impl Fn(&str) -> Option<&'static str>,
    ) -> Vec<Applied<'p>> {
        let paths = [crate::path::normalize(path)];
        p.applied(&Facts { method, method_overrides: &[], paths: &paths, caller, client: None, tier }, header)
    }

    #[test]
    fn the_example_parses_and_matches() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        let alice = Caller::User("alice".into());
        let applied = applied_to(&p, ("GET", "/users/1/orders"), &alice, None, |_| None);
        let names: Vec<&str> = applied.iter().map(|a| a.name).collect();
        assert_eq!(names, ["orders-per-user", "api-global", "api-per-key"]);
        assert_eq!(applied[0].key, "rate:alice:/users/:id/orders#orders-per-user");
        assert_eq!(applied[0].limit.capacity(), 5, "default tier free");
        assert_eq!(applied[1].key, "rate:@global:/%2A#api-global");
        assert_eq!(applied[2].key, "rate:alice:/%2A#api-per-key", "no header: counted by caller");
        assert!(applied[2].shadow);
        let other = applied_to(&p, ("GET", "/users/2/orders"), &alice, None, |_| None);
        assert_eq!(other[0].key, applied[0].key, "/users/1 and /users/2 share the template's bucket");
    }

    #[test]
    fn tiers_choose_their_numbers() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        let bob = Caller::User("bob".into());
        let premium = applied_to(&p, ("POST", "/users/9/orders"), &bob, Some("premium"), |_| None);
        assert_eq!(premium[0].limit.capacity(), 50);
        let unknown = applied_to(&p, ("POST", "/users/9/orders"), &bob, Some("gold"), |_| None);
        assert_eq!(unknown[0].limit.capacity(), 5);
    }

    #[test]
    fn methods_head_and_override() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        let c = Caller::User("c".into());
        let count = |method: &str, ov: Option<&str>| {
            let overrides: Vec<String> = ov.into_iter().map(str::to_string).collect();
            let paths = ["/users/1/orders".to_string()];
            let f = Facts { method, method_overrides: &overrides, paths: &paths, caller: &c, client: None, tier: None };
            p.applied(&f, |_| None).iter().filter(|a| a.name == "orders-per-user").count()
        };
        assert_eq!(count("GET", None), 1);
        assert_eq!(count("HEAD", None), 1, "HEAD counts under GET rules");
        assert_eq!(count("DELETE", None), 0);
        assert_eq!(count("PATCH", Some("post")), 1, "an override counts under the overriding method too");
    }

    #[test]
    fn routes_params_and_rest() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        let c = Caller::User("c".into());
        let names = |path: &str| -> Vec<String> {
            applied_to(&p, ("GET", path), &c, None, |_| None).iter().map(|a| a.name.to_string()).collect()
        };
        assert_eq!(names("/users/1/orders/x"), ["api-global", "api-per-key"]);
        assert_eq!(names("/users//orders"), ["api-global", "api-per-key"], "canonical paths have no empty segment");
        assert_eq!(names("/export/a/b"), ["export-cost", "api-global", "api-per-key"]);
        assert_eq!(names("/export"), ["export-cost", "api-global", "api-per-key"], "`*` matches zero or more segments");
        assert_eq!(names("/exports"), ["api-global", "api-per-key"]);
        assert_eq!(names("/"), ["api-global", "api-per-key"]);
    }

    #[test]
    fn header_counting_escapes_the_value() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        let c = Caller::User("c".into());
        let applied = applied_to(&p, ("GET", "/x"), &c, None, |h| (h == "x-api-key").then_some("k:1*"));
        assert_eq!(applied[1].key, "rate:@hdr/x-api-key=k%3A1%2A:/%2A#api-per-key");
    }

    #[test]
    fn lists_match_users_and_networks() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        assert!(p.allow.contains(Some("ops-bot"), None));
        assert!(p.allow.contains(None, Some("10.1.2.3".parse().unwrap())));
        assert!(!p.allow.contains(Some("alice"), Some("11.0.0.1".parse().unwrap())));
        assert!(p.deny.contains(None, Some("203.0.113.99".parse().unwrap())));
        assert!(p.deny.contains(None, Some("2001:db8:bad:1::1".parse().unwrap())));
        assert!(p.deny.contains(None, Some("::ffff:203.0.113.5".parse().unwrap())));
        assert!(!p.deny.contains(None, Some("2001:db8:bae::1".parse().unwrap())));
    }

    #[test]
    fn case_folded_templates_match_folded_paths() {
        let p = Policy::parse(
            r#"{"rules":[{"name":"r","route":"/API/Orders","limits":[{"name":"l","capacity":1,"refill":"1/s"}]}]}"#,
            60,
            true,
        )
        .unwrap();
        let c = Caller::User("c".into());
        assert_eq!(applied_to(&p, ("GET", "/api/orders"), &c, None, |_| None).len(), 1);
    }
}
