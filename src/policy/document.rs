//! The rate-limit policy: rules that match methods and a route template, each
//! naming one or more limits counted per user, per IP, per header value or
//! globally, with a capacity, refill and cost that may differ per tier. Parsed
//! strictly from JSON (`RATE_LIMIT_POLICY`): unknown fields, duplicate names,
//! out-of-range numbers and unknown tiers are errors naming the rule and field.

use std::net::IpAddr;

use serde_json::Value;

use crate::identity::caller::Caller;
use crate::identity::key::{push_escaped, subject_key};
use crate::identity::path::normalize_with;
use crate::json::Q;
use crate::json::{self, Obj};
use crate::policy::limit::{Algorithm, Limit, LimitPart};
use crate::policy::rate::Refill;
use crate::policy::settle::Settle;

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
    /// Tier name → its numbers (a few at most: a list beats a map in code size).
    pub tiers: Vec<(String, Tiered)>,
    pub shadow: bool,
}

impl LimitRule {
    /// The numbers for `tier` (the base numbers for no or an unknown tier).
    pub fn for_tier(&self, tier: Option<&str>) -> &Tiered {
        tier.and_then(|t| self.tiers.iter().find(|(n, _)| n == t).map(|(_, n)| n)).unwrap_or(&self.base)
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
    /// Sorted and without duplicates (looked up by binary search).
    pub users: Vec<String>,
    pub nets: Vec<(IpAddr, u8)>,
}

impl Lists {
    pub fn contains(&self, user: Option<&str>, ip: Option<IpAddr>) -> bool {
        user.is_some_and(|u| self.users.binary_search_by(|x| x.as_str().cmp(u)).is_ok())
            || ip.is_some_and(|ip| self.nets.iter().any(|n| in_net(ip, *n)))
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
    /// Every view of the path (see [`crate::identity::path::views`]), the canonical one first: a rule that
    /// matches any of them applies.
    pub paths: &'a [String],
    pub caller: &'a Caller,
    pub client: Option<&'a Caller>,
    pub tier: Option<&'a str>,
}

impl Policy {
    /// The limits of every rule that matches, in policy order.
    pub fn applied<'p, 'h>(&'p self, facts: &Facts<'_>, header: impl Fn(&str) -> Option<&'h str>) -> Vec<Applied<'p>> {
        let rules = self.rules.iter().filter(|r| r.matches(facts.method, facts.method_overrides, facts.paths));
        self.applied_rules(rules, facts, header)
    }

    /// The rule named `name`, if the policy has one.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The limits of `rules` for the caller of `facts` (whatever its method and path).
    pub fn applied_rules<'p, 'h>(
        &'p self,
        rules: impl IntoIterator<Item = &'p Rule>,
        facts: &Facts<'_>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Vec<Applied<'p>> {
        let tier = facts.tier.or(self.default_tier.as_deref());
        let mut out = Vec::new();
        for rule in rules {
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
                let mut key = format!("rate:{{{subject}}}:");
                push_route(&mut key, &rule.route);
                // In-flight slots live in a sorted set, never in a bucket's key (a route holds no `#` or
                // `!`... but `!` is allowed in routes: a bucket key has exactly one `#`, a slots key none).
                key.push(if tiered.limit.is_concurrency() { '!' } else { '#' });
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
pub(crate) fn limit_json(o: Obj, limit: &Limit, cost: u32) -> Obj {
    let o = match limit.is_concurrency() {
        true => o.int("concurrency", limit.capacity()).int("slot_ttl_seconds", limit.ttl_seconds()),
        false => o,
    };
    let o = match limit.settle() {
        Some(s) => {
            o.raw("settle", &Obj::new().int("reserve", cost).str("settle", &s.source()).bool("strip", s.strip).finish())
        }
        None => o,
    };
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
            let users = &l.users;
            let ips: Vec<String> = l.nets.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
            Obj::new().raw("users", &json::strings(users)).raw("ips", &json::strings(&ips)).finish()
        };
        let rules = json::array(self.rules.iter().map(|r| {
            let limits = json::array(r.limits.iter().map(|l| {
                let mut tiers: Vec<&(String, Tiered)> = l.tiers.iter().collect();
                tiers.sort_by(|a, b| a.0.cmp(&b.0));
                let tiers = tiers
                    .into_iter()
                    .fold(Obj::new(), |o, (t, n)| o.raw(t, &limit_json(Obj::new(), &n.limit, n.cost).finish()));
                let o = Obj::new().str("name", &l.name).str("by", &by(&l.by)).bool("shadow", l.shadow);
                let o = o.raw("lease", if l.base.limit.lease() { "\"auto\"" } else { "false" });
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
//
// The document is read into a JSON tree and walked by hand rather than through derived
// deserializers: the derives cost the wasm about 10 KB gzipped, and walking lets every message say
// where it is (rule, limit, tier) and what was expected.

struct RawPolicy {
    tiers: Vec<String>,
    default_tier: Option<String>,
    shadow: bool,
    allow: Option<RawLists>,
    deny: Option<RawLists>,
    rules: Vec<RawRule>,
}

struct RawLists {
    users: Vec<String>,
    ips: Vec<String>,
}

struct RawRule {
    name: String,
    methods: Option<Vec<String>>,
    route: String,
    shadow: bool,
    algorithm: Option<String>,
    lease: bool,
    limits: Vec<RawLimit>,
}

struct RawLimit {
    name: String,
    by: String,
    capacity: Option<serde_json::Number>,
    refill: Option<String>,
    cost: Option<serde_json::Number>,
    /// `"cost": { "reserve", "settle", "strip" }`: the source and whether to strip it.
    settle: Option<(String, bool)>,
    concurrency: Option<serde_json::Number>,
    slot_ttl_seconds: Option<serde_json::Number>,
    ttl_seconds: Option<serde_json::Number>,
    shadow: bool,
    algorithm: Option<String>,
    lease: bool,
    tiers: Vec<(String, RawTier)>,
}

struct RawTier {
    concurrency: Option<serde_json::Number>,
    capacity: Option<serde_json::Number>,
    refill: Option<String>,
    cost: Option<serde_json::Number>,
}

/// One JSON object of the document, with the place it is at for messages.
struct Fields<'v> {
    at: String,
    map: &'v serde_json::Map<String, Value>,
}

impl<'v> Fields<'v> {
    /// `v` as an object whose fields are all among `known`.
    fn of(v: &'v Value, at: String, known: &[&str]) -> Result<Fields<'v>, String> {
        let Value::Object(map) = v else { return Err(format!("{at}must be an object")) };
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            let expected = known.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
            return Err(format!("{at}unknown field `{k}`, expected one of {expected}"));
        }
        Ok(Fields { at, map })
    }

    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'v Value, String> {
        self.get(key).ok_or_else(|| format!("{}missing field `{key}`", self.at))
    }

    fn text(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{}`{key}` must be a string", self.at)),
        }
    }

    fn required_text(&self, key: &str) -> Result<String, String> {
        self.required(key)?;
        self.text(key).map(Option::unwrap_or_default)
    }

    fn texts(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("{}`{key}` must be a list of strings", self.at))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!("{}`{key}` must be a list of strings", self.at)),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{}`{key}` must be true or false", self.at)),
        }
    }

    /// `"lease"`: `"auto"` (the default, also `true`) or `false`.
    fn lease(&self) -> Result<bool, String> {
        match self.get("lease") {
            None | Some(Value::Bool(true)) => Ok(true),
            Some(Value::Bool(false)) => Ok(false),
            Some(Value::String(s)) if s == "auto" => Ok(true),
            Some(_) => Err(format!("{}`lease` must be \"auto\" or false", self.at)),
        }
    }

    fn number(&self, key: &str) -> Result<Option<serde_json::Number>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.clone())),
            Some(_) => Err(format!("{}`{key}` must be a number", self.at)),
        }
    }

    fn required_number(&self, key: &str) -> Result<serde_json::Number, String> {
        self.required(key)?;
        self.number(key).map(|n| n.unwrap_or_else(|| serde_json::Number::from(0)))
    }
}

/// Where a rule or a limit is, for messages: `rule "r", limit "l": `.
fn place(v: &Value, kind: &str, parent: &str) -> String {
    match v.get("name").and_then(Value::as_str) {
        Some(name) => format!("{parent}{kind} {}: ", Q(name)),
        None => parent.to_string(),
    }
}

impl RawPolicy {
    fn from_json(json: &str) -> Result<RawPolicy, String> {
        let doc: Value = serde_json::from_str(json).map_err(|e| format!("not a valid policy document: {e}"))?;
        let top = Fields::of(&doc, String::new(), &["tiers", "default_tier", "shadow", "allow", "deny", "rules"])?;
        let lists = |key: &str| -> Result<Option<RawLists>, String> {
            let Some(v) = top.get(key) else { return Ok(None) };
            let f = Fields::of(v, format!("`{key}`: "), &["users", "ips"])?;
            Ok(Some(RawLists {
                users: f.texts("users")?.unwrap_or_default(),
                ips: f.texts("ips")?.unwrap_or_default(),
            }))
        };
        let rules = match top.required("rules")? {
            Value::Array(rules) => rules.iter().map(RawRule::from_value).collect::<Result<Vec<_>, _>>()?,
            _ => return Err("`rules` must be a list of rules".into()),
        };
        Ok(RawPolicy {
            tiers: top.texts("tiers")?.unwrap_or_default(),
            default_tier: top.text("default_tier")?,
            shadow: top.flag("shadow")?,
            allow: lists("allow")?,
            deny: lists("deny")?,
            rules,
        })
    }
}

impl RawRule {
    fn from_value(v: &Value) -> Result<RawRule, String> {
        let at = place(v, "rule", "");
        let f = Fields::of(v, at.clone(), &["name", "methods", "route", "shadow", "algorithm", "lease", "limits"])?;
        let limits = match f.required("limits")? {
            Value::Array(limits) => {
                limits.iter().map(|l| RawLimit::from_value(l, &at)).collect::<Result<Vec<_>, _>>()?
            }
            _ => return Err(format!("{at}`limits` must be a list of limits")),
        };
        Ok(RawRule {
            name: f.required_text("name")?,
            methods: f.texts("methods")?,
            route: f.required_text("route")?,
            shadow: f.flag("shadow")?,
            algorithm: f.text("algorithm")?,
            lease: f.lease()?,
            limits,
        })
    }
}

impl RawLimit {
    fn from_value(v: &Value, rule: &str) -> Result<RawLimit, String> {
        let at = place(v, "limit", &rule.replace(": ", ", "));
        let known = [
            "name",
            "by",
            "capacity",
            "refill",
            "cost",
            "ttl_seconds",
            "shadow",
            "algorithm",
            "lease",
            "tiers",
            "concurrency",
            "slot_ttl_seconds",
        ];
        let f = Fields::of(v, at.clone(), &known)?;
        let mut tiers = Vec::new();
        if let Some(t) = f.get("tiers") {
            let Value::Object(map) = t else { return Err(format!("{at}`tiers` must be an object of tiers")) };
            for (name, tier) in map {
                let known: &[&str] =
                    if f.get("concurrency").is_some() { &["concurrency"] } else { &["capacity", "refill", "cost"] };
                let tf = Fields::of(tier, format!("{at}tier {}: ", Q(name)), known)?;
                let raw = RawTier {
                    concurrency: tf.number("concurrency")?,
                    capacity: tf.number("capacity")?,
                    refill: tf.text("refill")?,
                    cost: tf.number("cost")?,
                };
                tiers.push((name.clone(), raw));
            }
        }
        let concurrency = f.number("concurrency")?;
        if concurrency.is_some() {
            if let Some(k) = ["capacity", "refill", "cost", "ttl_seconds", "algorithm", "lease"]
                .into_iter()
                .find(|k| f.get(k).is_some())
            {
                return Err(format!(
                    "{at}`{k}` does not apply to a `concurrency` limit (it counts requests in flight; \
                     `slot_ttl_seconds` says when a slot whose release never came expires)"
                ));
            }
        } else if f.get("slot_ttl_seconds").is_some() {
            return Err(format!("{at}`slot_ttl_seconds` applies only to a `concurrency` limit"));
        }
        let (cost, settle) = match f.get("cost") {
            Some(v @ Value::Object(_)) => {
                let cf = Fields::of(v, format!("{at}`cost`: "), &["reserve", "settle", "strip"])?;
                (Some(cf.required_number("reserve")?), Some((cf.required_text("settle")?, cf.flag("strip")?)))
            }
            Some(Value::Number(_)) | None => (f.number("cost")?, None),
            Some(_) => {
                return Err(format!(
                    "{at}`cost` must be a number or {{ \"reserve\": <tokens>, \"settle\": \"header:<name>\" | \"sse:<path>\" }}"
                ))
            }
        };
        Ok(RawLimit {
            name: f.required_text("name")?,
            by: f.text("by")?.unwrap_or_else(|| "user".into()),
            capacity: if concurrency.is_some() { None } else { Some(f.required_number("capacity")?) },
            refill: if concurrency.is_some() { None } else { Some(f.required_text("refill")?) },
            cost,
            settle,
            concurrency,
            slot_ttl_seconds: f.number("slot_ttl_seconds")?,
            ttl_seconds: f.number("ttl_seconds")?,
            shadow: f.flag("shadow")?,
            algorithm: f.text("algorithm")?,
            lease: f.lease()?,
            tiers,
        })
    }
}

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];
const MAX_RULES: usize = 256;
const MAX_LIMITS_PER_RULE: usize = 8;
/// How long an in-flight slot whose release never came lasts, by default and at most.
pub(crate) const DEFAULT_SLOT_TTL_SECONDS: u64 = 60;
pub(crate) const MAX_SLOT_TTL_SECONDS: u64 = 86_400;

impl Policy {
    /// Parses a policy document. `ttl_seconds` is the default bucket TTL; `fold_case` must match
    /// how request paths are normalised.
    pub fn parse(json: &str, ttl_seconds: u64, fold_case: bool) -> Result<Policy, String> {
        let raw = RawPolicy::from_json(json)?;
        if raw.rules.is_empty() {
            return Err("`rules` is empty: a policy needs at least one rule".into());
        }
        if raw.rules.len() > MAX_RULES {
            return Err(format!("`rules` has {} rules; at most {MAX_RULES}", raw.rules.len()));
        }
        let mut tiers: Vec<&str> = Vec::new();
        for t in &raw.tiers {
            check_name(t).map_err(|m| format!("tier {}: {m}", Q(&t)))?;
            if tiers.contains(&t.as_str()) {
                return Err(format!("tier {} is declared twice", Q(&t)));
            }
            tiers.push(t.as_str());
        }
        if let Some(t) = &raw.default_tier {
            if !tiers.contains(&t.as_str()) {
                return Err(format!("`default_tier` {} is not one of the declared `tiers`", Q(&t)));
            }
        }
        // Names seen so far (at most 256 rules of 8 limits: a list is enough).
        let mut rule_names: Vec<String> = Vec::new();
        let mut limit_names: Vec<(String, String)> = Vec::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for r in raw.rules {
            let at = format!("rule {}", Q(&r.name));
            check_name(&r.name).map_err(|m| format!("{at}: `name` {m}"))?;
            if rule_names.contains(&r.name) {
                return Err(format!("{at}: duplicate rule name"));
            }
            rule_names.push(r.name.clone());
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
                            return Err(format!("{at}: `methods` has unknown method {}", Q(&m)));
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
                let at = format!("{at}, limit {}", Q(&l.name));
                check_name(&l.name).map_err(|m| format!("{at}: `name` {m}"))?;
                if let Some((_, other)) = limit_names.iter().find(|(n, _)| *n == l.name) {
                    return Err(format!(
                        "{at}: duplicate limit name (also in rule {}); limit names are unique",
                        Q(other)
                    ));
                }
                limit_names.push((l.name.clone(), r.name.clone()));
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
                                "{at}: `by` must be \"user\", \"ip\", \"global\" or \"header:<name>\", got {}",
                                Q(&other)
                            ))
                        }
                    },
                };
                let ttl = match &l.ttl_seconds {
                    None => ttl_seconds,
                    Some(n) => whole(n, 1, crate::policy::limit::MAX_TTL_SECONDS)
                        .map_err(|m| format!("{at}: `ttl_seconds` {m}"))?,
                };
                let algo = match &l.algorithm {
                    None => rule_algorithm,
                    Some(a) => algorithm(a).map_err(|m| format!("{at}: `algorithm` {m}"))?,
                };
                let lease = r.lease && l.lease;
                let settle = match &l.settle {
                    Some((source, strip)) => {
                        Some(Settle::parse(source, *strip).map_err(|m| format!("{at}: `cost`: {m}"))?)
                    }
                    None => None,
                };
                let slot_ttl = match &l.slot_ttl_seconds {
                    None => DEFAULT_SLOT_TTL_SECONDS,
                    Some(n) => {
                        whole(n, 1, MAX_SLOT_TTL_SECONDS).map_err(|m| format!("{at}: `slot_ttl_seconds` {m}"))?
                    }
                };
                // Either one limit's numbers: in-flight slots, or a bucket / window (its cost settled or not).
                let numbers = |capacity: Option<&serde_json::Number>,
                               refill: Option<&str>,
                               cost: Option<&serde_json::Number>,
                               slots: Option<&serde_json::Number>|
                 -> Result<Tiered, String> {
                    if let Some(slots) = slots {
                        let slots = whole(slots, 1, u64::from(crate::policy::limit::MAX_CAPACITY))
                            .map_err(|m| format!("`concurrency` {m}"))?;
                        let limit = Limit::concurrency(slots as u32, slot_ttl).map_err(|e| e.to_string())?;
                        return Ok(Tiered { limit, cost: 1 });
                    }
                    let zero = serde_json::Number::from(0);
                    let mut t = tiered(capacity.unwrap_or(&zero), refill.unwrap_or(""), cost, ttl, algo)?;
                    t.limit = t.limit.with_lease(lease);
                    if let Some(s) = &settle {
                        t.limit = t.limit.with_settle(s.clone());
                    }
                    Ok(t)
                };
                let base = numbers(l.capacity.as_ref(), l.refill.as_deref(), l.cost.as_ref(), l.concurrency.as_ref())
                    .map_err(|m| format!("{at}: {m}"))?;
                let mut by_tier: Vec<(String, Tiered)> = Vec::new();
                for (tier, t) in &l.tiers {
                    if !tiers.contains(&tier.as_str()) {
                        return Err(format!("{at}: tier {} is not one of the declared `tiers`", Q(&tier)));
                    }
                    let capacity = t.capacity.as_ref().or(l.capacity.as_ref());
                    let refill = t.refill.as_deref().or(l.refill.as_deref());
                    let cost = t.cost.as_ref().or(l.cost.as_ref());
                    let slots = t.concurrency.as_ref().or(l.concurrency.as_ref());
                    let numbers =
                        numbers(capacity, refill, cost, slots).map_err(|m| format!("{at}, tier {}: {m}", Q(&tier)))?;
                    by_tier.retain(|(t, _)| t != tier);
                    by_tier.push((tier.clone(), numbers));
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
    let capacity =
        whole(capacity, 1, u64::from(crate::policy::limit::MAX_CAPACITY)).map_err(|m| format!("`capacity` {m}"))?;
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
    Algorithm::parse(text)
        .ok_or_else(|| format!("must be \"token-bucket\", \"sliding-window\" or \"fixed-window\", got {}", Q(&text)))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{} must be 1 to 64 of A-Z a-z 0-9 _ . -", Q(&name)))
    }
}

fn parse_route(route: &str, fold_case: bool) -> Result<Vec<Segment>, String> {
    if !route.starts_with('/') {
        return Err(format!("{} must start with /", Q(&route)));
    }
    if route.contains(['?', '#', '\\']) || route.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(format!("{} may not contain a query, fragment, backslash, space or control character", Q(&route)));
    }
    let lower = route.to_ascii_lowercase();
    if route.contains(';') || ["%2f", "%5c", "%3b"].iter().any(|e| lower.contains(e)) {
        return Err(format!(
            "{} may not contain `;` or an encoded `/`, `\\` or `;`: paths are matched with their path \
             parameters cut and their separators decoded",
            Q(&route)
        ));
    }
    let parts: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let mut segments = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if *part == "*" {
            if i + 1 != parts.len() {
                return Err(format!("{}: `*` may only be the last segment", Q(&route)));
            }
            segments.push(Segment::Rest);
        } else if let Some(name) = part.strip_prefix(':') {
            check_name(name).map_err(|m| format!("{}: parameter {m}", Q(&route)))?;
            segments.push(Segment::Param);
        } else if part.contains('*') {
            return Err(format!("{}: `*` must be a whole segment", Q(&route)));
        } else if matches!(*part, "." | "..") {
            return Err(format!("{}: `.` and `..` segments are not allowed", Q(&route)));
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
            return Err(format!("`{field}.users` has a blank or padded id {}", Q(&u)));
        }
        out.users.push(u);
    }
    out.users.sort();
    out.users.dedup();
    for ip in raw.ips {
        out.nets.push(parse_net(&ip).map_err(|m| format!("`{field}.ips`: {m}"))?);
    }
    Ok(out)
}

/// `1.2.3.4`, `10.0.0.0/8`, `2001:db8::/32`.
pub(crate) fn parse_net(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("{} is not an IP address or CIDR", Q(&text)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("{} has an invalid prefix length (0 to {max})", Q(&text))),
        },
        Some(_) => return Err(format!("{} has an invalid prefix length (0 to {max})", Q(&text))),
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
        let paths = [crate::identity::path::normalize(path)];
        p.applied(&Facts { method, method_overrides: &[], paths: &paths, caller, client: None, tier }, header)
    }

    #[test]
    fn the_example_parses_and_matches() {
        let p = Policy::parse(EXAMPLE, 60, false).unwrap();
        let alice = Caller::User("alice".into());
        let applied = applied_to(&p, ("GET", "/users/1/orders"), &alice, None, |_| None);
        let names: Vec<&str> = applied.iter().map(|a| a.name).collect();
        assert_eq!(names, ["orders-per-user", "api-global", "api-per-key"]);
        assert_eq!(applied[0].key, "rate:{alice}:/users/:id/orders#orders-per-user");
        assert_eq!(applied[0].limit.capacity(), 5, "default tier free");
        assert_eq!(applied[1].key, "rate:{@global}:/%2A#api-global");
        assert_eq!(applied[2].key, "rate:{alice}:/%2A#api-per-key", "no header: counted by caller");
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
        assert_eq!(applied[1].key, "rate:{@hdr/x-api-key=k%3A1%2A}:/%2A#api-per-key");
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
