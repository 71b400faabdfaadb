//! Metrics: what one isolate saw since it last reported, reported to Redis
//! off the response path, and read back by the admin API as Prometheus text
//! or the status page's JSON. Counts are global because every isolate adds
//! its own into the same Redis hash (`HINCRBY`); nothing is added to a
//! decision's round trip. Pure: the edge decides when to send the batch.
//!
//! Redis layout: hash `ratelimit:metrics` with fields `c|<outcome>|<rule>|<tier>` (requests),
//! `h|<histogram>|<bucket index>` / `h|<histogram>|sum_us` / `h|<histogram>|count`,
//! `noscript`, `deny_cache_hits`, `lease|granted|spent|requests|returned|lost` (tokens, and requests
//! answered from leases), `held|<what>` (in-flight slots and settled costs: [`HeldCounts`]); sorted set
//! `ratelimit:denied` (denials per caller, top 1,000 kept).

use std::collections::HashMap;
use std::fmt::Write;

use crate::limiter::lease::LeaseCounts;
use crate::limiter::Outcome;
use crate::policy::check::Check;

pub const METRICS_KEY: &str = "ratelimit:metrics";
pub(crate) const DENIED_KEY: &str = "ratelimit:denied";
/// How many callers `ratelimit:denied` keeps (the most denied).
pub(crate) const DENIED_KEEP: usize = 1_000;
/// Callers one isolate tracks between reports; beyond it new callers are not counted by name.
const DENIED_CALLERS_PER_BATCH: usize = 1_000;

/// Upper bounds (ms) of the latency histograms' buckets; one more bucket is `+Inf`.
pub(crate) const LATENCY_BUCKETS_MS: [f64; 12] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// What happened to a request, per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    Allowed,
    Denied,
    /// A shadow limit would have denied (the request went on).
    ShadowDenied,
    FailedOpen,
    FailedClosed,
}

impl Event {
    pub const ALL: [Event; 5] =
        [Event::Allowed, Event::Denied, Event::ShadowDenied, Event::FailedOpen, Event::FailedClosed];

    pub fn name(self) -> &'static str {
        match self {
            Event::Allowed => "allowed",
            Event::Denied => "denied",
            Event::ShadowDenied => "shadow_denied",
            Event::FailedOpen => "failed_open",
            Event::FailedClosed => "failed_closed",
        }
    }

    fn parse(text: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == text)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, ms: f64) {
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        let i = LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.sum_us += (ms * 1000.0).round() as u64;
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }

    /// The `q` quantile (0..1) in ms, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BUCKETS_MS.get(i) else {
                    return Some(LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 1]);
                    // in +Inf
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS_MS[i - 1] };
                return Some(lower + (upper - lower) * ((rank - seen as f64) / n as f64).clamp(0.0, 1.0));
            }
            seen += n;
        }
        None
    }
}

/// In-flight slots and settled costs: slots taken, released after their response, and whose release
/// failed (they expire after their TTL); requests settled from their response, settled at their
/// reservation because the usage was missing or malformed, whose settle call failed, or whose settle
/// call was a repeat; tokens charged and refunded by settling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldCounts {
    pub slots_taken: u64,
    pub slots_released: u64,
    pub release_failed: u64,
    pub settled: u64,
    pub missing: u64,
    pub settle_failed: u64,
    pub repeated: u64,
    pub charged: u64,
    pub refunded: u64,
}

impl HeldCounts {
    /// Each count with its field name (`held|<name>` in Redis).
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("slots_taken", self.slots_taken),
            ("slots_released", self.slots_released),
            ("release_failed", self.release_failed),
            ("settled", self.settled),
            ("missing", self.missing),
            ("settle_failed", self.settle_failed),
            ("repeated", self.repeated),
            ("charged", self.charged),
            ("refunded", self.refunded),
        ]
    }

    fn field(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "slots_taken" => &mut self.slots_taken,
            "slots_released" => &mut self.slots_released,
            "release_failed" => &mut self.release_failed,
            "settled" => &mut self.settled,
            "missing" => &mut self.missing,
            "settle_failed" => &mut self.settle_failed,
            "repeated" => &mut self.repeated,
            "charged" => &mut self.charged,
            "refunded" => &mut self.refunded,
            _ => return None,
        })
    }

    fn add(&mut self, other: &HeldCounts) {
        for (name, n) in other.fields() {
            if let Some(f) = self.field(name) {
                *f += n;
            }
        }
    }

    /// Slots taken and neither released nor failed: held by requests in flight (or lost with an
    /// isolate, until their TTL).
    pub fn slots_held(&self) -> u64 {
        self.slots_taken.saturating_sub(self.slots_released + self.release_failed)
    }
}

/// One isolate's counts since its last report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    requests: HashMap<(String, String, Event), u64>,
    pub decision: Histogram,
    pub redis: Histogram,
    noscript: u64,
    deny_cache_hits: u64,
    leases: LeaseCounts,
    held: HeldCounts,
    denied_callers: HashMap<String, u64>,
    /// The candidate policy's differences from the live one: (rule, limit, would deny) → requests; and
    /// per (rule, limit) the callers they were (bounded per batch like the denied callers).
    candidate: HashMap<(String, String, bool), u64>,
    candidate_callers: HashMap<(String, String, String), u64>,
    /// Requests answered without Redis (the deny cache) while a candidate is set: never compared.
    unevaluated: u64,
    /// The candidate's counters' key (`ratelimit:candidate:<digest>`), and when this batch began counting.
    candidate_key: Option<String>,
    candidate_since_ms: f64,
    last_report_ms: f64,
}

/// How long a candidate's counters live after their last report (a retired candidate's fade away).
pub(crate) const CANDIDATE_TTL_SECONDS: u64 = 30 * 86_400;
/// Callers kept per candidate limit.
pub(crate) const CANDIDATE_CALLERS_KEPT: usize = 100;

/// The hash of a candidate policy's counters.
pub(crate) fn candidate_key(digest: &str) -> String {
    format!("ratelimit:candidate:{digest}")
}

/// The sorted set of the callers a candidate limit treated differently.
pub(crate) fn candidate_callers_key(digest: &str, rule: &str, limit: &str) -> String {
    format!("ratelimit:candidate:{digest}:callers:{rule}#{limit}")
}

/// A report on its way to Redis: the pipeline body, and the counts it carries (to put back if it fails).
pub struct Report {
    pub body: String,
    pub counts: Metrics,
}

impl Metrics {
    /// Counts a request's outcome for each rule it fell under; a denial also for its caller.
    pub fn record(&mut self, outcome: &Outcome, checks: &[Check<'_>], tier: Option<&str>, subject: &str) {
        let tier = tier.unwrap_or("none");
        let mut count = |rule: &str, event: Event| {
            *self.requests.entry((rule.to_string(), tier.to_string(), event)).or_default() += 1;
        };
        let mut rules: Vec<&str> = checks.iter().map(|c| c.rule).collect();
        rules.dedup();
        match outcome {
            Outcome::Allowed(d) => {
                rules.iter().for_each(|r| count(r, Event::Allowed));
                for (c, l) in checks.iter().zip(&d.limits) {
                    if l.shadow && l.retry_ms > 0 {
                        count(c.rule, Event::ShadowDenied);
                    }
                }
            }
            Outcome::Denied(d) | Outcome::DeniedLocally(d, _) => {
                if let Some(c) = d.denied_by.and_then(|i| checks.get(i)) {
                    count(c.rule, Event::Denied);
                }
                let known = self.denied_callers.len() < DENIED_CALLERS_PER_BATCH;
                if let Some(n) = self.denied_callers.get_mut(subject) {
                    *n += 1;
                } else if known {
                    self.denied_callers.insert(subject.to_string(), 1);
                }
            }
            Outcome::FailedOpen(..) => rules.iter().for_each(|r| count(r, Event::FailedOpen)),
            Outcome::FailedClosed(_) => rules.iter().for_each(|r| count(r, Event::FailedClosed)),
        }
    }

    /// Counts what the candidate policy (its counters under `digest`) would have done differently for one
    /// request the live policy `live_allowed` or not: a denial by its first limit short of tokens, or,
    /// when the live policy denied, an admission by each of its limits.
    pub fn record_candidate(
        &mut self,
        digest: &str,
        live_allowed: bool,
        candidates: &[Check<'_>],
        statuses: &[crate::store::decision::LimitStatus],
        subject: &str,
        now_ms: f64,
    ) {
        if candidates.is_empty() {
            return;
        }
        self.candidate_key.get_or_insert_with(|| digest.to_string());
        if self.candidate_since_ms == 0.0 {
            self.candidate_since_ms = now_ms;
        }
        let counted = |c: &&Check<'_>| c.mode == crate::policy::check::Mode::Candidate; // not its shadow limits
        let denying = candidates.iter().zip(statuses).position(|(c, l)| counted(&c) && l.retry_ms > 0);
        let differs: Vec<(&Check<'_>, bool)> = match (live_allowed, denying) {
            (true, Some(i)) => candidates.get(i).map(|c| (c, true)).into_iter().collect(),
            (false, None) => candidates.iter().filter(counted).map(|c| (c, false)).collect(),
            _ => Vec::new(),
        };
        for (c, would_deny) in differs {
            *self.candidate.entry((c.rule.to_string(), c.name.to_string(), would_deny)).or_default() += 1;
            let key = (c.rule.to_string(), c.name.to_string(), subject.to_string());
            let room = self.candidate_callers.len() < DENIED_CALLERS_PER_BATCH;
            if let Some(n) = self.candidate_callers.get_mut(&key) {
                *n += 1;
            } else if room {
                self.candidate_callers.insert(key, 1);
            }
        }
    }

    /// A request the candidate could not be compared on (decided without Redis).
    pub fn record_unevaluated(&mut self, digest: &str, now_ms: f64) {
        self.candidate_key.get_or_insert_with(|| digest.to_string());
        if self.candidate_since_ms == 0.0 {
            self.candidate_since_ms = now_ms;
        }
        self.unevaluated += 1;
    }

    /// Adds the limiter's NOSCRIPT fallbacks and deny-cache hits.
    pub fn add_limiter_counts(&mut self, (noscript, deny_cache_hits): (u64, u64)) {
        self.noscript += noscript;
        self.deny_cache_hits += deny_cache_hits;
    }

    /// Adds the limiter's lease counts.
    pub fn add_lease_counts(&mut self, c: LeaseCounts) {
        let l = &mut self.leases;
        (l.granted, l.spent, l.requests, l.returned, l.lost) = (
            l.granted + c.granted,
            l.spent + c.spent,
            l.requests + c.requests,
            l.returned + c.returned,
            l.lost + c.lost,
        );
    }

    /// Adds in-flight and settle counts.
    pub fn add_held(&mut self, c: HeldCounts) {
        self.held.add(&c);
    }

    fn is_empty(&self) -> bool {
        self.leases == LeaseCounts::default()
            && self.held == HeldCounts::default()
            && self.requests.is_empty()
            && self.decision.count == 0
            && self.redis.count == 0
            && self.noscript == 0
            && self.deny_cache_hits == 0
            && self.candidate.is_empty()
            && self.unevaluated == 0
    }

    /// The report to send now, if there is something to report and `interval_ms` has passed since
    /// the last one; the counts start over.
    pub fn report(&mut self, now_ms: f64, interval_ms: u32) -> Option<Report> {
        if self.is_empty() || now_ms - self.last_report_ms < f64::from(interval_ms) {
            return None;
        }
        let counts = std::mem::take(self);
        self.last_report_ms = now_ms;
        Some(Report { body: counts.pipeline(), counts })
    }

    /// Puts back the counts of a report that did not reach Redis.
    pub fn restore(&mut self, counts: Metrics) {
        for (k, n) in counts.requests {
            *self.requests.entry(k).or_default() += n;
        }
        for (k, n) in counts.denied_callers {
            *self.denied_callers.entry(k).or_default() += n;
        }
        self.decision.merge(&counts.decision);
        self.redis.merge(&counts.redis);
        self.noscript += counts.noscript;
        self.deny_cache_hits += counts.deny_cache_hits;
        self.add_lease_counts(counts.leases);
        self.held.add(&counts.held);
        for (k, n) in counts.candidate {
            *self.candidate.entry(k).or_default() += n;
        }
        for (k, n) in counts.candidate_callers {
            *self.candidate_callers.entry(k).or_default() += n;
        }
        self.unevaluated += counts.unevaluated;
        if self.candidate_key.is_none() {
            self.candidate_key = counts.candidate_key;
        }
        if self.candidate_since_ms == 0.0
            || (counts.candidate_since_ms > 0.0 && counts.candidate_since_ms < self.candidate_since_ms)
        {
            self.candidate_since_ms = counts.candidate_since_ms;
        }
    }

    /// The Upstash pipeline (`POST /pipeline`) that adds these counts.
    fn pipeline(&self) -> String {
        let mut commands: Vec<Vec<String>> = Vec::new();
        let mut incr = |field: String, n: u64| {
            if n > 0 {
                commands.push(vec!["HINCRBY".into(), METRICS_KEY.into(), field, n.to_string()]);
            }
        };
        let mut requests: Vec<_> = self.requests.iter().collect();
        requests.sort_by(|a, b| a.0.cmp(b.0));
        for ((rule, tier, event), n) in requests {
            incr(format!("c|{}|{rule}|{tier}", event.name()), *n);
        }
        for (name, h) in [("decision", &self.decision), ("redis", &self.redis)] {
            for (i, n) in h.buckets.iter().enumerate() {
                incr(format!("h|{name}|{i}"), *n);
            }
            incr(format!("h|{name}|sum_us"), h.sum_us);
            incr(format!("h|{name}|count"), h.count);
        }
        incr("noscript".into(), self.noscript);
        incr("deny_cache_hits".into(), self.deny_cache_hits);
        let l = &self.leases;
        for (name, n) in [
            ("granted", l.granted),
            ("spent", l.spent),
            ("requests", l.requests),
            ("returned", l.returned),
            ("lost", l.lost),
        ] {
            incr(format!("lease|{name}"), n);
        }
        for (name, n) in self.held.fields() {
            incr(format!("held|{name}"), n);
        }
        let mut callers: Vec<_> = self.denied_callers.iter().collect();
        callers.sort();
        for (caller, n) in &callers {
            commands.push(vec!["ZINCRBY".into(), DENIED_KEY.into(), n.to_string(), (*caller).clone()]);
        }
        if !callers.is_empty() {
            let keep = format!("-{}", DENIED_KEEP + 1);
            commands.push(vec!["ZREMRANGEBYRANK".into(), DENIED_KEY.into(), "0".into(), keep]);
        }
        if let Some(digest) = &self.candidate_key {
            let key = candidate_key(digest);
            let ttl = CANDIDATE_TTL_SECONDS.to_string();
            let since = format!("{}", self.candidate_since_ms.floor());
            commands.push(vec!["HSETNX".into(), key.clone(), "since_ms".into(), since]);
            let mut diffs: Vec<_> = self.candidate.iter().collect();
            diffs.sort_by(|a, b| a.0.cmp(b.0));
            for ((rule, limit, would_deny), n) in diffs {
                let field = format!("{}|{rule}|{limit}", if *would_deny { "d" } else { "a" });
                commands.push(vec!["HINCRBY".into(), key.clone(), field, n.to_string()]);
            }
            if self.unevaluated > 0 {
                commands.push(vec!["HINCRBY".into(), key.clone(), "unevaluated".into(), self.unevaluated.to_string()]);
            }
            commands.push(vec!["EXPIRE".into(), key, ttl.clone()]);
            let mut callers: Vec<_> = self.candidate_callers.iter().collect();
            callers.sort();
            let mut sets: Vec<String> = Vec::new();
            for ((rule, limit, caller), n) in callers {
                let set = candidate_callers_key(digest, rule, limit);
                commands.push(vec!["ZINCRBY".into(), set.clone(), n.to_string(), caller.clone()]);
                if !sets.contains(&set) {
                    sets.push(set);
                }
            }
            for set in sets {
                let keep = format!("-{}", CANDIDATE_CALLERS_KEPT + 1);
                commands.push(vec!["ZREMRANGEBYRANK".into(), set.clone(), "0".into(), keep]);
                commands.push(vec!["EXPIRE".into(), set, ttl.clone()]);
            }
        }
        crate::json::array(commands.iter().map(|c| crate::json::strings(c)))
    }
}

/// The global counts, as read back from `ratelimit:metrics` (`HGETALL`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// (rule, tier) → count per event, in [`Event::ALL`] order; sorted by rule then tier.
    pub requests: Vec<((String, String), [u64; 5])>,
    pub decision: Histogram,
    pub redis: Histogram,
    pub noscript: u64,
    pub deny_cache_hits: u64,
    /// Lease tokens granted, spent, given back and lost, and requests answered from leases, over all isolates.
    pub leases: LeaseCounts,
    /// In-flight slots and settled costs over all isolates.
    pub held: HeldCounts,
}

impl Totals {
    /// Lease tokens neither spent nor given back: held by live isolates, or lost with one that ended.
    pub fn leases_outstanding(&self) -> u64 {
        let l = &self.leases;
        l.granted.saturating_sub(l.spent + l.returned + l.lost)
    }
}

impl Totals {
    /// From `HGETALL`'s flat `[field, value, …]`; unknown or unreadable fields are skipped.
    pub fn from_fields(flat: &[String]) -> Totals {
        let mut t = Totals::default();
        let mut requests: HashMap<(String, String), [u64; 5]> = HashMap::new();
        for pair in flat.chunks_exact(2) {
            let Ok(n) = pair[1].parse::<u64>() else { continue };
            let parts: Vec<&str> = pair[0].split('|').collect();
            match parts.as_slice() {
                ["c", event, rule, tier] => {
                    if let Some(e) = Event::parse(event) {
                        let i = Event::ALL.iter().position(|x| *x == e).unwrap_or(0);
                        requests.entry((rule.to_string(), tier.to_string())).or_default()[i] += n;
                    }
                }
                ["h", name, what] => {
                    let h = match *name {
                        "decision" => &mut t.decision,
                        "redis" => &mut t.redis,
                        _ => continue,
                    };
                    match *what {
                        "sum_us" => h.sum_us += n,
                        "count" => h.count += n,
                        i => {
                            if let Some(b) = i.parse::<usize>().ok().and_then(|i| h.buckets.get_mut(i)) {
                                *b += n;
                            }
                        }
                    }
                }
                ["noscript"] => t.noscript += n,
                ["deny_cache_hits"] => t.deny_cache_hits += n,
                ["lease", "granted"] => t.leases.granted += n,
                ["lease", "spent"] => t.leases.spent += n,
                ["lease", "requests"] => t.leases.requests += n,
                ["lease", "returned"] => t.leases.returned += n,
                ["lease", "lost"] => t.leases.lost += n,
                ["held", what] => {
                    if let Some(f) = t.held.field(what) {
                        *f += n;
                    }
                }
                _ => {}
            }
        }
        t.requests = requests.into_iter().collect();
        t.requests.sort();
        t
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP edge_ratelimit_requests_total Rate-limited requests by rule, tier and outcome.\n");
        out.push_str("# TYPE edge_ratelimit_requests_total counter\n");
        for ((rule, tier), counts) in &self.requests {
            for (event, n) in Event::ALL.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "edge_ratelimit_requests_total{{rule=\"{}\",tier=\"{}\",outcome=\"{}\"}} {n}",
                    label(rule),
                    label(tier),
                    event.name()
                );
            }
        }
        for (name, help, h) in [
            ("decision", "Time from request to decision (deny cache, Redis round trip, fail mode).", &self.decision),
            ("redis", "Round-trip time of calls to the Redis REST endpoint.", &self.redis),
        ] {
            let metric = format!("edge_ratelimit_{name}_seconds");
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n;
                let le = LATENCY_BUCKETS_MS.get(i).map_or("+Inf".to_string(), |ms| format!("{}", ms / 1000.0));
                let _ = writeln!(out, "{metric}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{metric}_sum {}", h.sum_us as f64 / 1e6);
            let _ = writeln!(out, "{metric}_count {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_noscript_total NOSCRIPT replies that led to loading the script.\n\
             # TYPE edge_ratelimit_noscript_total counter\nedge_ratelimit_noscript_total {}",
            self.noscript
        );
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_deny_cache_hits_total Requests denied from an isolate's deny cache, without Redis.\n\
             # TYPE edge_ratelimit_deny_cache_hits_total counter\nedge_ratelimit_deny_cache_hits_total {}",
            self.deny_cache_hits
        );
        let l = &self.leases;
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_lease_tokens_total Lease tokens by what became of them (granted to isolates, \
             spent without Redis, given back, lost when giving back failed).\n\
             # TYPE edge_ratelimit_lease_tokens_total counter"
        );
        for (what, n) in [("granted", l.granted), ("spent", l.spent), ("returned", l.returned), ("lost", l.lost)] {
            let _ = writeln!(out, "edge_ratelimit_lease_tokens_total{{what=\"{what}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_lease_requests_total Requests answered from an isolate's leases, without Redis.\n\
             # TYPE edge_ratelimit_lease_requests_total counter\nedge_ratelimit_lease_requests_total {}",
            l.requests
        );
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_lease_tokens_outstanding Lease tokens neither spent nor given back yet.\n\
             # TYPE edge_ratelimit_lease_tokens_outstanding gauge\nedge_ratelimit_lease_tokens_outstanding {}",
            self.leases_outstanding()
        );
        let h = &self.held;
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_inflight_slots_total In-flight slots taken, released after their response, \
             and whose release failed (those expire after their TTL).\n\
             # TYPE edge_ratelimit_inflight_slots_total counter"
        );
        for (what, n) in
            [("taken", h.slots_taken), ("released", h.slots_released), ("release_failed", h.release_failed)]
        {
            let _ = writeln!(out, "edge_ratelimit_inflight_slots_total{{what=\"{what}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_inflight_slots In-flight slots held now (or lost with an isolate, until their TTL).\n\
             # TYPE edge_ratelimit_inflight_slots gauge\nedge_ratelimit_inflight_slots {}",
            h.slots_held()
        );
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_settled_requests_total Requests whose cost was settled from the response, \
             settled at the reservation (usage missing or malformed), whose settle call failed, or was a repeat.\n\
             # TYPE edge_ratelimit_settled_requests_total counter"
        );
        for (how, n) in
            [("settled", h.settled), ("missing", h.missing), ("failed", h.settle_failed), ("repeated", h.repeated)]
        {
            let _ = writeln!(out, "edge_ratelimit_settled_requests_total{{how=\"{how}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP edge_ratelimit_settled_tokens_total Tokens charged beyond and refunded below reservations.\n\
             # TYPE edge_ratelimit_settled_tokens_total counter"
        );
        for (what, n) in [("charged", h.charged), ("refunded", h.refunded)] {
            let _ = writeln!(out, "edge_ratelimit_settled_tokens_total{{what=\"{what}\"}} {n}");
        }
        out
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limit::Limit;
    use crate::policy::rate::Refill;
    use crate::store::decision::{Decision, LimitStatus};

    fn status(policy: &str, shadow: bool, retry_ms: u64) -> LimitStatus {
        LimitStatus { name: policy.into(), shadow, capacity: 5, window_s: 60, remaining: 0, retry_ms, reset_ms: 0 }
    }

    #[test]
    fn outcomes_are_counted_per_rule_and_reported_as_one_pipeline() {
        let l = Limit::new(5, Refill::parse("5/min").unwrap(), 60).unwrap();
        let check = |rule| Check {
            key: "k".into(),
            name: "p",
            limit: &l,
            cost: 1,
            mode: crate::policy::check::Mode::Enforce,
            rule,
            overrides: vec![],
        };
        let checks = [check("orders"), check("orders"), check("all")];
        let mut m = Metrics::default();
        let allowed = Decision {
            allowed: true,
            denied_by: None,
            limits: vec![status("a", false, 0), status("b", true, 10), status("c", false, 0)],
        };
        m.record(&Outcome::Allowed(allowed), &checks, Some("free"), "alice");
        let denied = Decision { allowed: false, denied_by: Some(2), limits: vec![status("a", false, 0); 3] };
        m.record(&Outcome::Denied(denied), &checks, None, "bob");
        m.decision.observe(3.0);
        m.add_limiter_counts((1, 2));
        assert!(m.report(500.0, 1000).is_none(), "not yet due");
        let report = m.report(1000.0, 1000).unwrap();
        assert!(m.report(5000.0, 1000).is_none(), "nothing new");
        let cmds: Vec<Vec<String>> = serde_json::from_str(&report.body).unwrap();
        let has = |c: &[&str]| cmds.iter().any(|x| x == c);
        assert!(has(&["HINCRBY", METRICS_KEY, "c|allowed|orders|free", "1"]));
        assert!(has(&["HINCRBY", METRICS_KEY, "c|allowed|all|free", "1"]));
        assert!(has(&["HINCRBY", METRICS_KEY, "c|shadow_denied|orders|free", "1"]));
        assert!(has(&["HINCRBY", METRICS_KEY, "c|denied|all|none", "1"]));
        assert!(has(&["HINCRBY", METRICS_KEY, "h|decision|2", "1"]));
        assert!(has(&["HINCRBY", METRICS_KEY, "noscript", "1"]));
        assert!(has(&["ZINCRBY", DENIED_KEY, "1", "bob"]));
        // A failed report is put back and sent with the next.
        m.restore(report.counts);
        let again = m.report(2000.0, 1000).unwrap();
        assert_eq!(again.body, report.body);
    }

    #[test]
    fn totals_read_back_and_render_as_prometheus_text() {
        let fields: Vec<String> = [
            "c|allowed|orders|free",
            "7",
            "c|denied|orders|free",
            "3",
            "h|decision|0",
            "8",
            "h|decision|3",
            "2",
            "h|decision|sum_us",
            "25000",
            "h|decision|count",
            "10",
            "noscript",
            "1",
            "junk",
            "x",
            "c|bogus|a|b",
            "1",
        ]
        .map(String::from)
        .to_vec();
        let t = Totals::from_fields(&fields);
        assert_eq!(t.requests, vec![(("orders".into(), "free".into()), [7, 3, 0, 0, 0])]);
        let text = t.prometheus();
        assert!(text.contains("edge_ratelimit_requests_total{rule=\"orders\",tier=\"free\",outcome=\"denied\"} 3\n"));
        assert!(text.contains("edge_ratelimit_decision_seconds_bucket{le=\"0.001\"} 8\n"));
        assert!(text.contains("edge_ratelimit_decision_seconds_bucket{le=\"0.01\"} 10\n"));
        assert!(text.contains("edge_ratelimit_decision_seconds_bucket{le=\"+Inf\"} 10\n"));
        assert!(text.contains("edge_ratelimit_decision_seconds_sum 0.025\n"));
        assert!(text.contains("edge_ratelimit_noscript_total 1\n"));
        // p50 falls in the first bucket (8 of 10 ≤ 1 ms); p95 in (5, 10].
        assert_eq!(t.decision.quantile(0.5), Some(0.625));
        assert_eq!(t.decision.quantile(0.95), Some(8.75));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
