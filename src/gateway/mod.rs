//! The gateway: the whole request in the pure core. [`Gateway::begin`] takes a request's facts and
//! the time and says what to do next — respond, forward (with the headers to add), or do one piece of
//! I/O (a REST call, a short wait, a signature check, reading an admin body) and
//! [`Gateway::resume`] with the result. A step may carry a metrics report to send after the response.
//! Every product decision — identity precedence, lists, rules, the deny cache, the script's recovery,
//! the fail mode, outcome → status and headers, metrics, the admin API — is made here, so `cargo test`
//! sees all of it; the executor (`src/edge`, `js/`) reads the facts and carries out the steps.
//!
//! A cached denial is one synchronous [`Gateway::begin`] that answers at once: no I/O, nothing pending.
//! (The shape is quinn-proto's `Endpoint::handle(now, …)`: the core says what to do, the shell does it.)

mod after;
mod call;
mod decide;
mod isolate;
pub(crate) mod rpc;
mod step;
mod work;

use after::*;
use decide::put_back_of;
pub use isolate::Isolate;
use isolate::*;
pub use step::{Fetch, Reply, Request, Step};
pub(crate) use step::{Wake, Watch};
use work::*;

use std::collections::HashMap;

use crate::gateway::rpc::{CallError, ErrorKind, Method};
use crate::http::{self, Answer, Body, Header, Response};
use crate::identity::jwt::{JwtMode, SignatureCheck};
use crate::identity::path::{normalize_with, path_and_query};
use crate::limiter::{after_reply, Failure, Limiter, Next, ScriptCall, Settlement, TransportError};
use crate::ops::admin::{self, Action, AdminBody, AdminRequest, Peek, Then, MAX_BODY_BYTES};
use crate::ops::log::Line;
use crate::ops::metrics::HeldCounts;
use crate::ops::metrics::Metrics;
use crate::ops::quota::{self, Asked};
use crate::policy::check::Check;
use crate::policy::check::Mode;
use crate::policy::config::{Config, ConfigError};
use crate::policy::document::CountBy;
use crate::policy::limit::Limit;
use crate::policy::plan::{bearer, plan_select, Limited, Plan, RequestFacts, Select, METHOD_OVERRIDE_HEADERS};
use crate::policy::settle::Delivered;
use crate::store::decision::Decision;
use crate::store::place::Places;

/// One isolate's gateway: its configuration, limiter state, metrics and pending tickets.
pub struct Gateway<'c> {
    config: &'c Config,
    header_names: Vec<String>,
    limiter: Limiter,
    metrics: Metrics,
    tickets: Tickets<'c>,
    /// What follows a response: the watched responses, the batch of releases and settlements, the
    /// lease chain.
    after: After<'c>,
    /// Whether this isolate has logged that the candidate policy is refused (once is enough).
    candidate_refusal_logged: bool,
    /// Unique among every isolate (the executor draws it at random): request ids are this, a dot and
    /// a counter.
    instance_id: String,
    requests: u64,
}

impl<'c> Gateway<'c> {
    pub fn new(config: &'c Config) -> Gateway<'c> {
        Gateway {
            header_names: header_names(config),
            limiter: Limiter::with_leases(config.deny_cache_max_ms, config.leases).with_places(places_of(config)),
            metrics: Metrics::default(),
            tickets: Tickets::new(config.redis_timeout_ms),
            after: After::default(),
            candidate_refusal_logged: false,
            instance_id: String::new(),
            requests: 0,
            config,
        }
    }

    /// The same gateway, its request ids prefixed by `id`: in-flight slots are members of a sorted set
    /// shared by every isolate, so two isolates must never name a request alike. Every gateway of a
    /// deployment needs one of its own (the executor draws a random one); without it ids are `.1`, `.2`…
    /// Only printable ASCII other than a space is kept (each other character becomes `_`): a release
    /// names several members in one argument, space-separated.
    pub fn with_instance_id(mut self, id: &str) -> Gateway<'c> {
        self.instance_id = id.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
        self
    }

    fn request_id(&mut self) -> String {
        self.requests += 1;
        format!("{}.{}", self.instance_id, self.requests)
    }

    pub fn config(&self) -> &'c Config {
        self.config
    }

    /// The request headers (lower-case) the executor must read, in the order of [`Request::headers`].
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// This isolate's limiter (for tests and the admin API).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Tickets waiting to be resumed.
    pub fn pending(&self) -> usize {
        self.tickets.pending.len() + self.after.watched()
    }

    fn header<'r>(&self, req: &Request<'r>, name: &str) -> Option<&'r str> {
        let i = self.header_names.iter().position(|n| n == name)?;
        req.headers.get(i).copied().flatten()
    }

    /// The first step for a request arriving at `now_ms` (the Worker's clock, epoch ms).
    pub fn begin(&mut self, req: &Request<'_>, now_ms: f64) -> Step {
        self.begin_verified(req, now_ms, None)
    }

    fn begin_verified(
        &mut self,
        req: &Request<'_>,
        now_ms: f64,
        verified: Option<crate::identity::jwt::Verified>,
    ) -> Step {
        self.tickets.collect(now_ms);
        let target = path_and_query(req.url);
        #[cfg(feature = "bench-floor")]
        if let Some(floor) = self.config.bench_floor {
            return self.floor(floor, target, now_ms);
        }
        let canonical = normalize_with(target, self.config.path_case_insensitive);
        if let Some(spelled) = admin::admin_target_of(self.config, target, &canonical) {
            return match spelled {
                Some((rest, query)) => self.admin(req, rest, query, AdminBody::Unread, now_ms),
                None => respond(http::not_found()),
            };
        }
        if self.config.quota_path.as_deref() == Some(canonical.as_str()) {
            return self.quota(req, target, now_ms, verified);
        }
        let header = |name: &str| self.header(req, name);
        let facts = RequestFacts { method: req.method, target, canonical: &canonical, header: &header, now_ms };
        match plan_select(self.config, &facts, verified, Select::Request) {
            Plan::Limit(limited) => self.decide(limited, target, now_ms),
            Plan::Unlimited => self.forward(target, Vec::new(), None, None),
            Plan::Unauthorized(e) => respond(http::unauthorized(e)),
            Plan::Unidentified(e) => respond(http::unidentified(e)),
            Plan::Forbidden => respond(http::forbidden()),
            Plan::Signature(check) => self.verify(req, check, now_ms),
        }
    }

    /// Parks `req` until WebCrypto has checked its token's signature; it is planned again with the verdict.
    fn verify(&mut self, req: &Request<'_>, check: crate::identity::jwt::SignatureCheck, now_ms: f64) -> Step {
        let token = bearer(self.header(req, "authorization")).unwrap_or_default().to_string();
        let ticket = self.tickets.park(Work::Token { request: OwnedRequest::of(req), token }, now_ms);
        Step::Verify { ticket, check }
    }

    /// A read of the caller's own quota (`QUOTA_PATH`): the caller identified as a request would be, the
    /// limits of the asked method and path (or of every rule) reported in one script call that also
    /// takes a token from the endpoint's own bucket.
    fn quota(
        &mut self,
        req: &Request<'_>,
        target: &str,
        now_ms: f64,
        verified: Option<crate::identity::jwt::Verified>,
    ) -> Step {
        let head = req.method.eq_ignore_ascii_case("HEAD");
        if !head && !req.method.eq_ignore_ascii_case("GET") {
            return respond(admin::method_not_allowed("GET, HEAD"));
        }
        let query = target.split('#').next().unwrap_or("").split_once('?').map_or("", |(_, q)| q);
        let asked = match quota::asked(query, self.config.policy.is_some()) {
            Ok(a) => a,
            Err(r) => return respond(head_only(r, head)),
        };
        let (method, path, select) = match &asked {
            Asked::Request { method, path } => (method.as_str(), path.as_str(), Select::Request),
            Asked::EveryRule => ("GET", "/", Select::EveryRule),
        };
        let canonical = normalize_with(path, self.config.path_case_insensitive);
        let header = |name: &str| self.header(req, name);
        let facts = RequestFacts { method, target: path, canonical: &canonical, header: &header, now_ms };
        let limited = match plan_select(self.config, &facts, verified, select) {
            Plan::Limit(limited) => limited,
            Plan::Unlimited => return respond(head_only(quota::unlimited(), head)),
            Plan::Unauthorized(e) => return respond(head_only(http::unauthorized(e), head)),
            Plan::Unidentified(e) => return respond(head_only(http::unidentified(e), head)),
            Plan::Forbidden => return respond(head_only(http::forbidden(), head)),
            Plan::Signature(check) => return self.verify(req, check, now_ms),
        };
        let mut all = Vec::with_capacity(1 + limited.checks.len());
        all.push(quota::own_check(&limited.subject, &self.config.quota_limit));
        all.extend(limited.checks.iter().cloned().map(|mut c| {
            c.mode = crate::policy::check::Mode::Report;
            c
        }));
        // A caller this isolate knows to be out of reads costs no round trip (only the endpoint's own
        // bucket is looked up: the limits it reports are always read from Redis).
        if let Some(denied) = self.limiter.cached_denial(&all[..1], now_ms) {
            return respond(head_only(quota::answer(&limited.checks, Ok(denied)), head));
        }
        let (call, body) = ScriptCall::start(&self.limiter, &all, self.config.clock, now_ms, false);
        self.tickets.call(Work::Quota { call, listed: limited.checks, all, head }, body, now_ms)
    }

    /// The fetch to send after the response: the metrics report when one is due, else the read of
    /// which overrides exist when this isolate should make it.
    fn report(&mut self, now_ms: f64) -> Option<Fetch> {
        if self.config.admin_token_sha256.is_some() {
            if let Some(report) = self.metrics.report(now_ms, self.config.metrics_flush_ms) {
                let ticket = self.tickets.park(Work::Report { counts: Box::new(report.counts) }, now_ms);
                let timeout_ms = self.config.redis_timeout_ms;
                return Some(Fetch { ticket, pipeline: true, body: report.body, timeout_ms, shard: 0 });
            }
        }
        let body = self.limiter.overrides_fetch(now_ms)?;
        let ticket = self.tickets.park(Work::Overrides, now_ms);
        Some(Fetch { ticket, pipeline: true, body, timeout_ms: self.config.redis_timeout_ms, shard: 0 })
    }

    fn forward(&self, target: &str, headers: Vec<Header>, note: Option<String>, report: Option<Fetch>) -> Step {
        let url = self.config.origin.as_ref().map(|origin| format!("{origin}{target}"));
        Step::Forward { url, headers, note, report, wake: None, watch: None }
    }

    /// An admin request: its body read first if it is a write with the right token.
    fn admin(&mut self, req: &Request<'_>, rest: &str, query: &str, body: AdminBody<'_>, now_ms: f64) -> Step {
        let authorization = self.header(req, "authorization");
        let mut body = body;
        if body == AdminBody::Unread && admin::wants_body(self.config, req.method, authorization) {
            let declared = self.header(req, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
            if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
                body = AdminBody::TooLarge; // answered 413 without reading a byte of it
            } else {
                let ticket = self.tickets.park(Work::Body { request: OwnedRequest::of(req) }, now_ms);
                return Step::ReadBody { ticket, max: MAX_BODY_BYTES };
            }
        }
        let head = req.method.eq_ignore_ascii_case("HEAD");
        let request = AdminRequest { method: req.method, rest, query, authorization, body };
        match admin::route(self.config, &request, now_ms) {
            Action::Done(response) => respond(head_only(response, head)),
            Action::Redis(commands, then) => {
                let body = admin::pipeline_body(&commands);
                let shards = self.config.redis_urls.len();
                let status = matches!(then, Then::Status(_));
                if shards > 1 && (then.writes_everywhere() || status) {
                    // Overrides and resets go to every shard: each holds the route and tier overrides, and
                    // a reset's keys may live on any. The status page asks every shard whether it answers.
                    let replies = (0..shards).map(|_| None).collect();
                    let ticket = self.tickets.park(Work::Admin { then, head, replies }, now_ms);
                    let timeout_ms = self.config.redis_timeout_ms;
                    let fetches = (0..shards)
                        .map(|shard| {
                            let sub = self.tickets.new_ticket();
                            self.tickets.pieces.insert(sub, (ticket, shard));
                            let body = if status && shard > 0 { r#"[["PING"]]"#.to_string() } else { body.clone() };
                            Fetch { ticket: sub, pipeline: true, body, timeout_ms, shard: shard as u16 }
                        })
                        .collect();
                    return Step::Fetches(fetches);
                }
                self.tickets.send(Work::Admin { then, head, replies: vec![None] }, true, body, now_ms)
            }
            Action::Peek(peek) => {
                let (call, body) = ScriptCall::start(&self.limiter, &peek.checks, self.config.clock, now_ms, true);
                self.tickets.call(Work::Peek { call, peek }, body, now_ms)
            }
        }
    }

    /// The benchmark floors: a 429 at once, or one plain REST call and a forward, through the same
    /// entry and executor as the real gateway.
    #[cfg(feature = "bench-floor")]
    fn floor(&mut self, floor: crate::policy::config::BenchFloor, target: &str, now_ms: f64) -> Step {
        match floor {
            crate::policy::config::BenchFloor::Deny => respond(Response {
                status: 429,
                headers: vec![("retry-after", "12".into())],
                body: Body::Text("Too Many Requests".into()),
            }),
            crate::policy::config::BenchFloor::Limit => {
                let ticket = self.tickets.park(Work::Floor { target: target.to_string() }, now_ms);
                Step::Fetch(Fetch { ticket, pipeline: false, body: "[\"PING\"]".into(), timeout_ms: 500, shard: 0 })
            }
        }
    }
}

/// Where keys live, as `config` says (during a shard change, where they lived before too).
fn places_of(config: &Config) -> Places {
    let places = Places::new(config.redis_urls.clone(), config.redis_cluster);
    match &config.redis_previous {
        Some((previous, at_ms)) => places.with_previous(previous.clone(), *at_ms),
        None => places,
    }
}

fn respond(response: Response) -> Step {
    Step::Respond { response, note: None, report: None, wake: None }
}

fn with_note(step: Step, note: Option<String>) -> Step {
    match step {
        Step::Respond { response, report, wake, .. } => Step::Respond { response, note, report, wake },
        other => other,
    }
}

/// A `HEAD` request's response: the same status and headers, no body.
fn head_only(mut response: Response, head: bool) -> Response {
    if head {
        response.body = Body::Text(String::new());
    }
    response
}

/// Every request header the configuration reads: the caller's identity, the token, the method
/// overrides, the policy's `header:<name>` limits, and the admin API's.
fn header_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.user_id_header.iter().cloned().collect();
    names.push("cf-connecting-ip".into());
    if config.jwt.mode != JwtMode::Off || config.admin_token_sha256.is_some() {
        names.push("authorization".into());
    }
    // The live policy's and the candidate's: a candidate may count by a header the live one does not.
    let candidate = match &config.candidate {
        Ok(Some(c)) => Some(&c.policy),
        _ => None,
    };
    for policy in config.policy.iter().chain(candidate) {
        names.extend(METHOD_OVERRIDE_HEADERS.iter().map(|h| h.to_string()));
        names.push("content-type".into());
        for limit in policy.rules.iter().flat_map(|r| &r.limits) {
            if let CountBy::Header(h) = &limit.by {
                names.push(h.clone());
            }
        }
    }
    if config.admin_token_sha256.is_some() {
        names.push("content-length".into());
    }
    let mut seen = Vec::with_capacity(names.len());
    names.retain(|n| {
        let new = !seen.contains(n);
        seen.push(n.clone());
        new
    });
    names
}
