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

pub(crate) mod rpc;

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

/// A request as the executor read it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The absolute URL (`https://host/path?query`).
    pub url: &'a str,
    /// The values of [`Gateway::header_names`], in that order (`None`: absent).
    pub headers: &'a [Option<&'a str>],
}

/// What the executor does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Answer with this response; then send `report`, if any, without holding the response, and carry
    /// out `wake` (slots a failed decision may have taken, released).
    Respond { response: Response, note: Option<String>, report: Option<Fetch>, wake: Option<Wake> },
    /// Send the request on to `url` (`None`: its own URL), adding `headers` to the origin's response;
    /// if the origin cannot be reached, answer [`http::origin_unreachable`] with the same headers.
    /// `wake`, if any, is resumed after its wait off the response path (leases given back).
    Forward {
        url: Option<String>,
        headers: Vec<Header>,
        note: Option<String>,
        report: Option<Fetch>,
        wake: Option<Wake>,
        watch: Option<Watch>,
    },
    /// POST to the REST endpoint, then resume with the reply.
    Fetch(Fetch),
    /// Wait `ms`, then resume with [`Reply::Woke`].
    Wait { ticket: u32, ms: u32 },
    /// Check this signature with WebCrypto, then resume with [`Reply::Signature`].
    Verify { ticket: u32, check: SignatureCheck },
    /// Read the request's body, at most `max` + 1 bytes, then resume with [`Reply::Body`].
    ReadBody { ticket: u32, max: usize },
    /// Return this JSON value to an RPC caller; then send `report`, if any, and carry out `wake`.
    Return { value: String, note: Option<String>, report: Option<Fetch>, wake: Option<Wake> },
    /// Throw this error to an RPC caller.
    Throw { error: CallError, note: Option<String> },
    /// Nothing more (after a report).
    Done,
}

/// Off the response path: wait `ms`, then resume `ticket` with [`Reply::Woke`] and carry out the steps
/// that follow (a REST call, another wait) until [`Step::Done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    pub ticket: u32,
    pub ms: u32,
}

/// A response to watch: once it has been delivered — its body streamed to the end, the client gone, or
/// the origin failed; or, unless `until_end`, as soon as its headers have arrived (a cost settled from a
/// header needs nothing more, and the body then streams as it came) — resume `ticket` with
/// [`Reply::Delivered`] (off the response path), carrying the
/// values of `headers` in the origin's response and the data of the last server-sent events whose data
/// mention one of `sse_keys`; then carry out what follows (`Q`, `W`) until [`Step::Done`]. `strip`:
/// origin headers the client does not see. The body streams through unbuffered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// 0: nothing to report (only headers to strip: the request holds nothing, say a shadow limit that
    /// could not pay, or Redis failed and the fail mode forwarded it).
    pub ticket: u32,
    /// Wait for the body's end: a slot is held until then, or the usage is in the stream.
    pub until_end: bool,
    pub headers: Vec<String>,
    pub strip: Vec<String>,
    pub sse_keys: Vec<String>,
}

/// One POST to the REST endpoint (`/pipeline` when `pipeline`), within `timeout_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub ticket: u32,
    pub pipeline: bool,
    pub body: String,
    pub timeout_ms: u32,
}

/// What the executor brings back to [`Gateway::resume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The REST endpoint answered (any status; redirects are not followed).
    Http { status: u16, body: &'a str },
    /// The fetch's deadline passed.
    Timeout,
    /// The endpoint could not be reached.
    Unreachable,
    /// The wait is over.
    Woke,
    /// WebCrypto's verdict: `Some(valid)`, or `None` when the key could not be imported.
    Signature(Option<bool>),
    /// The body (`None`: longer than the limit, or unreadable).
    Body(Option<&'a str>),
    /// A watched response was delivered (or abandoned): what the executor saw, as
    /// [`crate::policy::settle::Delivered::decode`] reads it.
    Delivered(&'a str),
}

/// A request kept while its I/O is under way.
#[derive(Clone, Debug)]
struct OwnedRequest {
    method: String,
    url: String,
    headers: Vec<Option<String>>,
}

impl OwnedRequest {
    fn of(req: &Request<'_>) -> OwnedRequest {
        OwnedRequest {
            method: req.method.to_string(),
            url: req.url.to_string(),
            headers: req.headers.iter().map(|h| h.map(str::to_string)).collect(),
        }
    }
}

/// What a pending ticket waits for.
enum Work<'c> {
    /// A decision's script call.
    Decide {
        call: ScriptCall,
        limited: Limited<'c>,
        target: String,
        started_ms: f64,
        /// The request's id, when it takes in-flight slots or settles a cost.
        id: Option<String>,
    },
    /// An admitted request's slots and reserved costs, until its response has been delivered.
    Held {
        items: Vec<Held<'c>>,
        id: String,
        /// The script's time of the admission (epoch ms).
        script_ms: i64,
        headers: Vec<String>,
    },
    /// Slots a failed decision may have taken, to release at the wake.
    Release {
        items: Vec<Settlement<'c>>,
    },
    /// The call that releases and settles them; `attempt` 0, then 1 for the one retry.
    Settling {
        call: ScriptCall,
        items: Vec<Settlement<'c>>,
        marker: Option<String>,
        attempt: u8,
    },
    /// The admin API's peek.
    Peek {
        call: ScriptCall,
        peek: Peek<'c>,
    },
    /// An admin pipeline.
    Admin {
        then: Then,
        head: bool,
    },
    /// An RPC `limit` or `peek`'s script call.
    Call {
        call: ScriptCall,
        limited: Limited<'c>,
        method: Method,
        started_ms: f64,
    },
    /// An RPC `reset`: these keys deleted.
    Reset {
        keys: Vec<String>,
    },
    /// A quota read's script call: `all` is the endpoint's own bucket then `listed` (reported only).
    Quota {
        call: ScriptCall,
        listed: Vec<Check<'c>>,
        all: Vec<Check<'c>>,
        head: bool,
    },
    /// A metrics report.
    Report {
        counts: Box<Metrics>,
    },
    /// The wake that gives back ended leases; the chain of wakes began at `since_ms`.
    Wake {
        since_ms: f64,
    },
    /// Leases running low, topped up after the response (at the wake), then the give-back chain.
    Renew {
        items: Vec<crate::limiter::lease::Renewal>,
    },
    Renewing {
        call: ScriptCall,
        items: Vec<crate::limiter::lease::Renewal>,
    },
    /// Ended leases' unused tokens given back (`tokens` in all); `last`: the chain ends after it.
    GiveBack {
        call: ScriptCall,
        tokens: u64,
        since_ms: f64,
        last: bool,
        /// What is given back (its reply is checked against them).
        items: Vec<crate::limiter::lease::GiveBack>,
    },
    /// A token's signature; the request is planned again with the verdict.
    Token {
        request: OwnedRequest,
        token: String,
    },
    /// An admin request's body.
    Body {
        request: OwnedRequest,
    },
    /// The benchmark's limit floor: one PING, then forward.
    #[cfg(feature = "bench-floor")]
    Floor {
        target: String,
    },
}

impl Work<'_> {
    fn call(&mut self) -> Option<&mut ScriptCall> {
        match self {
            Work::Decide { call, .. }
            | Work::Peek { call, .. }
            | Work::Call { call, .. }
            | Work::GiveBack { call, .. }
            | Work::Renewing { call, .. }
            | Work::Settling { call, .. }
            | Work::Quota { call, .. } => Some(call),
            _ => None,
        }
    }
}

/// One limit an admitted request holds until its response has been delivered: an in-flight slot
/// (`reserve` `None`), or a cost reserved and settled from the response.
#[derive(Debug)]
struct Held<'c> {
    key: String,
    limit: &'c Limit,
    overrides: Vec<String>,
    reserve: Option<u32>,
}

/// The key that makes a request's settlement happen once (a retried call finds it set).
fn settle_marker(id: &str) -> String {
    format!("ratelimit:settled:{id}")
}

struct Pending<'c> {
    work: Work<'c>,
    deadline_ms: f64,
    /// When the last fetch of this ticket was handed out (for the Redis round-trip histogram).
    sent_ms: f64,
}

/// Pending tickets kept at most; beyond it, those past their deadline are dropped (an executor that
/// never resumes a ticket cannot make the gateway grow).
const PENDING_KEPT: usize = 4096;
/// Watched responses kept at most per isolate (beyond it, and none past its time, a new one is not
/// watched: its slots expire after their TTL).
const WATCHED_KEPT: usize = 4096;
/// How long one chain of lease wakes may last (the runtime keeps `waitUntil` work 30 s at most).
const WAKE_CHAIN_MS: f64 = 20_000.0;
/// How long past its deadline a ticket may still be resumed.
const PENDING_GRACE_MS: f64 = 10_000.0;

/// One isolate's gateway: its configuration, limiter state, metrics and pending tickets.
pub struct Gateway<'c> {
    config: &'c Config,
    header_names: Vec<String>,
    limiter: Limiter,
    metrics: Metrics,
    pending: HashMap<u32, Pending<'c>>,
    /// Admitted requests whose responses are watched (apart: they wait as long as a response takes, and
    /// an overflow of the others must never drop them).
    watching: HashMap<u32, Pending<'c>>,
    next_ticket: u32,
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
            limiter: Limiter::with_leases(config.deny_cache_max_ms, config.leases),
            metrics: Metrics::default(),
            pending: HashMap::new(),
            watching: HashMap::new(),
            next_ticket: 0,
            candidate_refusal_logged: false,
            instance_id: String::new(),
            requests: 0,
            config,
        }
    }

    /// The same gateway, its request ids prefixed by `id`: in-flight slots are members of a sorted set
    /// shared by every isolate, so two isolates must never name a request alike. Every gateway of a
    /// deployment needs one of its own (the executor draws a random one); without it ids are `.1`, `.2`…
    pub fn with_instance_id(mut self, id: &str) -> Gateway<'c> {
        self.instance_id = id.to_string();
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
        self.pending.len() + self.watching.len()
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
        self.collect(now_ms);
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
        let ticket = self.park(Work::Token { request: OwnedRequest::of(req), token }, now_ms);
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
        let ticket = self.park(Work::Quota { call, listed: limited.checks, all, head }, now_ms);
        Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
    }

    /// The next step for `ticket`, with what its last step brought back at `now_ms`.
    pub fn resume(&mut self, ticket: u32, reply: Reply<'_>, now_ms: f64) -> Step {
        let Some(p) = self.pending.remove(&ticket).or_else(|| self.watching.remove(&ticket)) else { return Step::Done };
        let http = match reply {
            Reply::Http { status, body } => Some(Ok((status, body))),
            Reply::Timeout => Some(Err(TransportError::Timeout)),
            Reply::Unreachable => Some(Err(TransportError::Unreachable)),
            _ => None,
        };
        if http.is_some() && self.config.admin_token_sha256.is_some() && !matches!(p.work, Work::Report { .. }) {
            self.metrics.redis.observe(now_ms - p.sent_ms);
        }
        let deadline = p.deadline_ms;
        match p.work {
            mut work @ (Work::Decide { .. }
            | Work::Peek { .. }
            | Work::Call { .. }
            | Work::Quota { .. }
            | Work::GiveBack { .. }
            | Work::Settling { .. }
            | Work::Renewing { .. }) => {
                let Some(call) = work.call() else { return Step::Done };
                let next = match http {
                    Some(r) => call.on_reply(&self.limiter, r, now_ms, deadline),
                    None => call.on_wake(&self.limiter, now_ms, deadline),
                };
                self.continue_script(ticket, work, next, deadline, now_ms)
            }
            Work::Admin { then, head } => {
                let reply = http.unwrap_or(Err(TransportError::Unreachable)).map_err(Failure::from);
                respond(head_only(admin::finish(self.config, &self.limiter, then, reply, now_ms), head))
            }
            Work::Reset { keys } => {
                let deleted = match http {
                    Some(Ok((status, body))) => {
                        crate::store::upstash::parse_integer_reply(status, body).map_err(Failure::Rest)
                    }
                    Some(Err(e)) => Err(Failure::from(e)),
                    None => Err(Failure::Unreachable),
                };
                if deleted.is_ok() {
                    self.limiter.forget(Some(&keys));
                }
                let note = deleted.as_ref().err().map(|f| self.degraded_line(f, "rpc", None, "reset"));
                Step::Return { value: rpc::reset_result(deleted.as_ref().copied()), note, report: None, wake: None }
            }
            Work::Wake { since_ms } => self.give_back(ticket, since_ms, now_ms),
            Work::Release { items } => self.settle_call(items, None, 0, now_ms),
            Work::Held { items, id, script_ms, headers } => {
                // Anything but a delivery report (an executor that lost track) releases all the same.
                let text = match reply {
                    Reply::Delivered(text) => text,
                    _ => "0",
                };
                self.delivered(items, id, script_ms, &Delivered::decode(text, &headers), now_ms)
            }
            Work::Renew { items } => {
                let (call, body) = ScriptCall::renew(&self.limiter, &items, self.config.clock, now_ms);
                let deadline_ms = now_ms + f64::from(self.config.redis_timeout_ms);
                self.pending
                    .insert(ticket, Pending { work: Work::Renewing { call, items }, deadline_ms, sent_ms: now_ms });
                Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
            }
            Work::Report { counts } => {
                let sent = matches!(http, Some(Ok((200, body))) if !body.contains("\"error\""));
                if !sent {
                    self.metrics.restore(*counts);
                }
                Step::Done
            }
            Work::Token { request, token } => {
                let now_s = (now_ms / 1000.0).floor() as i64;
                let (verdict, note) = match reply {
                    Reply::Signature(Some(valid)) => (valid, None),
                    _ => {
                        let line = Line::new("jwks_key_unusable", "error")
                            .str("variable", "JWT_JWKS")
                            .str("reason", "a key could not be used by WebCrypto; its tokens are refused");
                        (false, Some(line.finish()))
                    }
                };
                let headers: Vec<Option<&str>> = request.headers.iter().map(|h| h.as_deref()).collect();
                let req = Request { method: &request.method, url: &request.url, headers: &headers };
                match self.config.jwt.complete(&token, now_s, verdict) {
                    Ok(verified) => self.begin_verified(&req, now_ms, Some(verified)),
                    Err(e) => with_note(respond(http::unauthorized(e)), note),
                }
            }
            Work::Body { request } => {
                let headers: Vec<Option<&str>> = request.headers.iter().map(|h| h.as_deref()).collect();
                let req = Request { method: &request.method, url: &request.url, headers: &headers };
                let target = path_and_query(req.url);
                let Some(Some((rest, query))) = admin::admin_target(self.config, target) else {
                    return respond(http::not_found());
                };
                let body = match reply {
                    Reply::Body(Some(text)) if text.len() <= MAX_BODY_BYTES => AdminBody::Text(text),
                    _ => AdminBody::TooLarge,
                };
                self.admin(&req, rest, query, body, now_ms)
            }
            #[cfg(feature = "bench-floor")]
            Work::Floor { target } => self.forward(&target, Vec::new(), None, None),
        }
    }

    /// A ticket for `work`, due within the configured timeout.
    fn park(&mut self, work: Work<'c>, now_ms: f64) -> u32 {
        let deadline_ms = now_ms + f64::from(self.config.redis_timeout_ms);
        self.park_until(work, deadline_ms, now_ms)
    }

    fn park_until(&mut self, work: Work<'c>, deadline_ms: f64, now_ms: f64) -> u32 {
        let ticket = self.new_ticket();
        self.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
        ticket
    }

    fn new_ticket(&mut self) -> u32 {
        self.next_ticket = self.next_ticket.wrapping_add(1).max(1);
        self.next_ticket
    }

    /// Drops tickets nobody resumed, once there are many.
    fn collect(&mut self, now_ms: f64) {
        if self.pending.len() >= PENDING_KEPT {
            self.pending.retain(|_, p| p.deadline_ms + PENDING_GRACE_MS > now_ms);
            if self.pending.len() >= PENDING_KEPT {
                self.pending.clear();
            }
        }
    }

    /// The step for a script call's `next`: send or wait under the same ticket, or (done, or out of
    /// time) the answer.
    fn continue_script(
        &mut self,
        ticket: u32,
        mut work: Work<'c>,
        mut next: Next,
        deadline_ms: f64,
        now_ms: f64,
    ) -> Step {
        loop {
            let left = (deadline_ms - now_ms).ceil();
            next = match next {
                Next::Done(result) => return self.script_done(work, result, now_ms),
                // The deadline has passed: the call ends as a timeout, without another round trip.
                _ if left < 1.0 => match work.call() {
                    Some(call) => call.on_reply(&self.limiter, Err(TransportError::Timeout), now_ms, deadline_ms),
                    None => return Step::Done,
                },
                Next::Send(body) => {
                    self.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
                    return Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: left as u32 });
                }
                Next::Wait(ms) => {
                    self.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
                    return Step::Wait { ticket, ms: ms.min(left as u32) };
                }
            };
        }
    }

    fn script_done(&mut self, work: Work<'c>, result: Result<Vec<i64>, Failure>, now_ms: f64) -> Step {
        match work {
            Work::Decide { limited, target, started_ms, call, id } => {
                self.limiter.answered(call.asked());
                let (result, candidate) = self.split_candidates(&limited, result);
                let script_ms = result.as_ref().ok().and_then(|ints| ints.last().copied()).unwrap_or(0);
                let result = self.limiter.decided(&limited.checks, result, call.wants(), now_ms);
                let admission = id.map(|id| (id, script_ms));
                self.decided(limited, &target, result, candidate, admission, started_ms, now_ms)
            }
            Work::Peek { peek, .. } => respond(admin::peeked(&peek, self.limiter.peeked(&peek.checks, result))),
            Work::Quota { listed, all, head, .. } => {
                respond(head_only(quota::answer(&listed, self.limiter.read_quota(&all, result, now_ms)), head))
            }
            Work::Call { limited, method: Method::Peek, .. } => {
                let peeked = self.limiter.peeked(&limited.checks, result);
                self.peek_result(&limited, peeked)
            }
            Work::Call { limited, started_ms, call, .. } => {
                self.limiter.answered(call.asked());
                let result = self.limiter.decided(&limited.checks, result, call.wants(), now_ms);
                self.rpc_decided(limited, result, started_ms, now_ms)
            }
            Work::GiveBack { tokens, since_ms, last, items, .. } => {
                let ok = result.and_then(|ints| {
                    after_reply(&ints, items.iter().map(|g| (&g.limit, g.overrides.as_slice())), false)
                });
                self.limiter.gave_back(tokens, ok.is_ok());
                if last {
                    self.limiter.unschedule_wake(); // the next decision that leases starts a new chain
                    return Step::Done;
                }
                self.next_wake(since_ms, now_ms)
            }
            Work::Settling { items, marker, attempt, .. } => {
                let limits = items.iter().map(|s| (s.limit, s.overrides.as_slice()));
                match result.and_then(|ints| after_reply(&ints, limits, marker.is_some())) {
                    Ok(repeated) => {
                        let slots_released = items.iter().filter(|s| s.limit.is_concurrency()).count() as u64;
                        let repeated = u64::from(repeated);
                        self.metrics.add_held(HeldCounts { slots_released, repeated, ..HeldCounts::default() });
                        Step::Done
                    }
                    // No answer (or a server error): it may or may not have been applied; the marker makes
                    // one retry safe.
                    Err(
                        Failure::Timeout
                        | Failure::Unreachable
                        | Failure::Rest(crate::store::upstash::RestError::Server(_)),
                    ) if attempt == 0 => self.settle_call(items, marker, 1, now_ms),
                    Err(_) => {
                        let slots = items.iter().filter(|s| s.limit.is_concurrency()).count() as u64;
                        let costs = items.len() as u64 - slots;
                        self.metrics.add_held(HeldCounts {
                            release_failed: slots,
                            settle_failed: costs,
                            ..HeldCounts::default()
                        });
                        Step::Done
                    }
                }
            }
            Work::Renewing { items, .. } => {
                self.limiter.renewed(&items, result, now_ms);
                // Then the give-back chain, if this isolate holds leases and none is scheduled.
                match self.limiter.schedule_wake(now_ms) {
                    Some(ms) => {
                        let deadline_ms = now_ms + f64::from(ms) + f64::from(self.config.redis_timeout_ms);
                        let ticket = self.park_until(Work::Wake { since_ms: now_ms }, deadline_ms, now_ms);
                        Step::Wait { ticket, ms }
                    }
                    None => Step::Done,
                }
            }
            _ => Step::Done,
        }
    }

    /// A wake of the chain begun at `since_ms`: the unused tokens of every lease that has ended given
    /// back in one script call, then the next wake while leases remain.
    fn give_back(&mut self, ticket: u32, since_ms: f64, now_ms: f64) -> Step {
        let due = self.limiter.leases_due(now_ms);
        if due.is_empty() {
            return self.next_wake(since_ms, now_ms);
        }
        self.give_back_now(ticket, due, since_ms, false, now_ms)
    }

    fn give_back_now(
        &mut self,
        ticket: u32,
        due: Vec<crate::limiter::lease::GiveBack>,
        since_ms: f64,
        last: bool,
        now_ms: f64,
    ) -> Step {
        let tokens = due.iter().map(|g| g.tokens).sum();
        let (call, body) = ScriptCall::give_back(&self.limiter, &due, self.config.clock, now_ms);
        let deadline_ms = now_ms + f64::from(self.config.redis_timeout_ms);
        let work = Work::GiveBack { call, tokens, since_ms, last, items: due };
        self.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
        Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
    }

    /// The chain's next wait, while leases remain and the chain is young enough for the runtime to keep
    /// it (`waitUntil` work lasts at most 30 s after a response). A chain at its age limit ends every
    /// lease now and gives it all back (nothing is left stranded if no request comes), and the next
    /// request that takes a lease starts another chain.
    fn next_wake(&mut self, since_ms: f64, now_ms: f64) -> Step {
        match self.limiter.woke(now_ms) {
            Some(ms) if now_ms + f64::from(ms) - since_ms <= WAKE_CHAIN_MS => {
                let deadline_ms = now_ms + f64::from(ms) + f64::from(self.config.redis_timeout_ms);
                let ticket = self.park_until(Work::Wake { since_ms }, deadline_ms, now_ms);
                Step::Wait { ticket, ms }
            }
            Some(_) => {
                let all = self.limiter.end_all_leases();
                if all.is_empty() {
                    self.limiter.unschedule_wake();
                    return Step::Done;
                }
                let ticket = self.new_ticket();
                self.give_back_now(ticket, all, since_ms, true, now_ms)
            }
            None => Step::Done,
        }
    }

    /// The wake to schedule after a decision: at once when leases run low (topped up, then the
    /// give-back chain), else when this isolate holds leases and no wake is scheduled.
    fn wake(&mut self, now_ms: f64) -> Option<Wake> {
        let items = self.limiter.take_renewals();
        if !items.is_empty() {
            let ticket = self.park(Work::Renew { items }, now_ms);
            return Some(Wake { ticket, ms: 0 });
        }
        let ms = self.limiter.schedule_wake(now_ms)?;
        let deadline_ms = now_ms + f64::from(ms) + f64::from(self.config.redis_timeout_ms);
        let ticket = self.park_until(Work::Wake { since_ms: now_ms }, deadline_ms, now_ms);
        Some(Wake { ticket, ms })
    }

    /// Decides `limited`: from this isolate's leases or the deny cache at once, or with one script call.
    fn decide(&mut self, limited: Limited<'c>, target: &str, now_ms: f64) -> Step {
        if let Some(allowed) = self.limiter.leased(&limited.checks, now_ms) {
            if let (Some(digest), false) = (self.candidate_digest(), limited.candidates.is_empty()) {
                self.metrics.record_unevaluated(digest, now_ms);
            }
            return self.decided(limited, target, Ok(allowed), None, None, now_ms, now_ms);
        }
        if let Some(denied) = self.limiter.cached_denial(&limited.checks, now_ms) {
            if let (Some(digest), false) = (self.candidate_digest(), limited.candidates.is_empty()) {
                self.metrics.record_unevaluated(digest, now_ms);
            }
            return self.decided(limited, target, Ok(denied), None, None, now_ms, now_ms);
        }
        let holds = limited.checks.iter().any(|c| c.limit.is_concurrency() || c.limit.settle().is_some());
        let id = holds.then(|| self.request_id());
        let clock = self.config.clock;
        let (call, body) = if limited.candidates.is_empty() || self.candidate_digest().is_none() {
            ScriptCall::start_with_id(&self.limiter, &limited.checks, clock, now_ms, false, id.as_deref().unwrap_or(""))
        } else {
            // The candidate's limits ride in the same call, after the live ones.
            let all = [&limited.checks[..], &limited.candidates[..]].concat();
            ScriptCall::start_with_id(&self.limiter, &all, clock, now_ms, false, id.as_deref().unwrap_or(""))
        };
        let work = Work::Decide { call, limited, target: target.to_string(), started_ms: now_ms, id };
        let ticket = self.park(work, now_ms);
        Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
    }

    /// The digest of the candidate policy, when one is set and counted (the admin API reads its report).
    fn candidate_digest(&self) -> Option<&'c str> {
        match &self.config.candidate {
            Ok(Some(c)) if self.config.admin_token_sha256.is_some() => Some(c.digest.as_str()),
            _ => None,
        }
    }

    /// A script reply for live limits followed by the candidate's: the live part, and what the script
    /// said of each candidate limit (`None` when no candidate rode along or the call failed).
    fn split_candidates(
        &self,
        limited: &Limited<'_>,
        result: Result<Vec<i64>, Failure>,
    ) -> (Result<Vec<i64>, Failure>, Option<Vec<crate::store::decision::LimitStatus>>) {
        if limited.candidates.is_empty() || self.candidate_digest().is_none() {
            return (result, None);
        }
        let Ok(mut ints) = result else { return (result, None) };
        let per = crate::store::bucket::PER_LIMIT;
        let live = 2 + per * limited.checks.len();
        if ints.len() != live + per * limited.candidates.len() + 1 {
            let e = crate::store::upstash::RestError::Malformed(format!("script returned {} integers", ints.len()));
            return (Err(Failure::Rest(e)), None);
        }
        let mut candidate = vec![1, 0];
        candidate.extend(ints.drain(live..));
        ints.push(candidate[candidate.len() - 1]); // the script's time ends both parts
        let limits: Vec<_> = limited.candidates.iter().map(|c| crate::store::decision::Asked::of(c, 0, 0.0)).collect();
        let statuses = Decision::from_script(&candidate, &limits).ok().map(|d| d.limits);
        (Ok(ints), statuses)
    }

    /// The answer to a decision attempt: the fail mode applied, metrics counted (the candidate's
    /// differences too), headers rendered; an admitted request that holds slots or reserved costs
    /// (`admission`: its id and the script's time) has its response watched.
    #[allow(clippy::too_many_arguments)]
    fn decided(
        &mut self,
        limited: Limited<'c>,
        target: &str,
        result: Result<crate::store::decision::Decision, Failure>,
        candidate: Option<Vec<crate::store::decision::LimitStatus>>,
        admission: Option<(String, i64)>,
        started_ms: f64,
        now_ms: f64,
    ) -> Step {
        let mut note = self.decision_note(&limited, &result, "http");
        if let (Err(e), None, false) = (&self.config.candidate, &note, self.candidate_refusal_logged) {
            self.candidate_refusal_logged = true;
            note = Some(misconfigured_line(e));
        }
        if let (Some(digest), Some(statuses), Ok(d)) = (self.candidate_digest(), &candidate, &result) {
            self.metrics.record_candidate(digest, d.allowed, &limited.candidates, statuses, &limited.subject, now_ms);
        }
        if limited.checks.is_empty() {
            // Only the candidate was asked: the live policy does not limit this request, whatever Redis said.
            let report = match self.config.admin_token_sha256 {
                Some(_) => self.report(now_ms),
                None => None,
            };
            return self.forward(target, Vec::new(), None, report);
        }
        let outcome = self.limiter.outcome(result, self.config.fail_mode, &limited.checks, now_ms);
        use crate::limiter::Outcome;
        let (held, failed) = match (&outcome, admission) {
            (Outcome::Allowed(d), Some((id, script_ms))) => (Some((held_of(&limited.checks, d), id, script_ms)), None),
            // No answer, but the script may have run: its slots are released after the response if the
            // fail mode forwarded the request, at once if it was answered here.
            (Outcome::FailedOpen(..), Some((id, _))) => (Some((maybe_taken(&limited.checks), id, 0)), None),
            (Outcome::FailedClosed(_) | Outcome::DeniedLocally(..), Some((id, _))) => {
                let items = maybe_taken(&limited.checks);
                let settlements: Vec<Settlement<'c>> = items
                    .into_iter()
                    .map(|h| Settlement {
                        key: h.key,
                        limit: h.limit,
                        overrides: h.overrides,
                        delta: 0,
                        arg: id.clone(),
                    })
                    .collect();
                (None, (!settlements.is_empty()).then_some(settlements))
            }
            _ => (None, None),
        };
        let report = self.count(&outcome, &limited, started_ms, now_ms);
        let in_flight = |i: usize| limited.checks.get(i).is_some_and(|c| c.limit.is_concurrency());
        match http::answer_in_flight(&outcome, in_flight) {
            Answer::Forward(headers) => match self.forward(target, headers, note, report) {
                Step::Forward { url, headers, note, report, .. } => {
                    let strip = strip_of(&limited.checks);
                    let watch = match held.and_then(|(items, id, script_ms)| self.watch(items, id, script_ms, now_ms)) {
                        Some(w) => Some(Watch { strip, ..w }),
                        None if !strip.is_empty() => Some(Watch {
                            ticket: 0,
                            until_end: false,
                            headers: Vec::new(),
                            strip,
                            sse_keys: Vec::new(),
                        }),
                        None => None,
                    };
                    Step::Forward { url, headers, note, report, wake: self.wake(now_ms), watch }
                }
                other => other,
            },
            Answer::Respond(response) => {
                // Redis failed, and the script may have run all the same: the slots it may have taken
                // are released at once (a ZREM of a slot that was never taken changes nothing).
                let wake = failed.map(|items| {
                    let ticket = self.park(Work::Release { items }, now_ms);
                    Wake { ticket, ms: 0 }
                });
                Step::Respond { response, note, report, wake }
            }
        }
    }

    /// The watch for an admitted request's response, parked until it has been delivered.
    fn watch(&mut self, items: Vec<Held<'c>>, id: String, script_ms: i64, now_ms: f64) -> Option<Watch> {
        if items.is_empty() {
            return None;
        }
        let (mut headers, mut sse_keys) = (Vec::new(), Vec::new());
        for s in items.iter().filter_map(|h| h.limit.settle()) {
            if let Some(h) = s.header() {
                if !headers.iter().any(|x| x == h) {
                    headers.push(h.to_string());
                }
            }
            if let Some(k) = s.sse_key() {
                if !sse_keys.iter().any(|x| x == k) {
                    sse_keys.push(k.to_string());
                }
                // (usage is read from a stream only if the response says it is one: see `Settle::actual`)
                if !headers.iter().any(|x| x == "content-type") {
                    headers.push("content-type".to_string());
                }
            }
        }
        let slots = items.iter().filter(|h| h.reserve.is_none()).count() as u64;
        self.metrics.add_held(HeldCounts { slots_taken: slots, ..HeldCounts::default() });
        if self.watching.len() >= WATCHED_KEPT {
            self.watching.retain(|_, p| p.deadline_ms > now_ms);
            if self.watching.len() >= WATCHED_KEPT {
                // Bounded: this request's slots expire after their TTL, its cost stays at the reservation.
                self.metrics.add_held(HeldCounts { release_failed: slots, ..HeldCounts::default() });
                return None;
            }
        }
        // Kept as long as a slot may live (a response may stream for minutes), an hour for a cost alone.
        let keep_s = items
            .iter()
            .map(|h| if h.reserve.is_none() { h.limit.ttl_seconds() } else { 3_600 })
            .max()
            .unwrap_or(60)
            .min(crate::policy::document::MAX_SLOT_TTL_SECONDS);
        let work = Work::Held { items, id, script_ms, headers: headers.clone() };
        let ticket = self.new_ticket();
        let deadline_ms = now_ms + keep_s as f64 * 1000.0;
        self.watching.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
        let until_end = slots > 0 || !sse_keys.is_empty();
        Some(Watch { ticket, until_end, headers, strip: Vec::new(), sse_keys })
    }

    /// A watched response was delivered: its slots released and its costs settled in one script call
    /// (exactly once: a settle marker per request), nothing when there is nothing to change.
    fn delivered(
        &mut self,
        items: Vec<Held<'c>>,
        id: String,
        script_ms: i64,
        delivered: &Delivered<'_>,
        now_ms: f64,
    ) -> Step {
        let mut counts = HeldCounts::default();
        let mut settlements = Vec::with_capacity(items.len());
        let mut costs = false;
        for h in items {
            let (delta, arg) = match (h.reserve, h.limit.settle()) {
                (None, _) => (0, id.clone()),
                (Some(reserve), Some(settle)) => match settle.actual(delivered) {
                    Some(actual) => {
                        counts.settled += 1;
                        let delta = i64::from(actual) - i64::from(reserve);
                        if delta > 0 {
                            counts.charged += delta as u64;
                        } else {
                            counts.refunded += delta.unsigned_abs();
                        }
                        if delta == 0 {
                            continue;
                        }
                        costs = true;
                        (delta, script_ms.to_string())
                    }
                    None => {
                        counts.missing += 1; // settled at the reservation
                        continue;
                    }
                },
                (Some(_), None) => continue,
            };
            settlements.push(Settlement { key: h.key, limit: h.limit, overrides: h.overrides, delta, arg });
        }
        self.metrics.add_held(counts);
        if settlements.is_empty() {
            return Step::Done;
        }
        let marker = costs.then(|| settle_marker(&id));
        self.settle_call(settlements, marker, 0, now_ms)
    }

    fn settle_call(&mut self, items: Vec<Settlement<'c>>, marker: Option<String>, attempt: u8, now_ms: f64) -> Step {
        let (call, body) = ScriptCall::settle(&self.limiter, &items, marker.as_deref(), self.config.clock, now_ms);
        let ticket = self.park(Work::Settling { call, items, marker, attempt }, now_ms);
        Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
    }

    /// The log line of a decision attempt, if it deserves one: Redis failed, or a shadow limit would
    /// have denied.
    fn decision_note(&self, limited: &Limited<'_>, result: &Result<Decision, Failure>, via: &str) -> Option<String> {
        let rule = limited.checks.first().map_or("", |c| c.rule);
        match result {
            Err(failure) => Some(self.degraded_line(failure, via, Some(&limited.subject), rule)),
            Ok(d) => {
                let i = d.limits.iter().position(|l| l.shadow && l.retry_ms > 0)?;
                let line = Line::new("shadow_denied", "info")
                    .str("via", via)
                    .str("rule", limited.checks.get(i).map_or("", |c| c.rule))
                    .str("limit", &d.limits[i].policy)
                    .caller(&self.config.log_caller_ids, &limited.subject);
                Some(line.finish())
            }
        }
    }

    /// The log line of a call Redis did not answer.
    fn degraded_line(&self, failure: &Failure, via: &str, subject: Option<&str>, rule: &str) -> String {
        let mut line = Line::new("degraded", "warn")
            .str("via", via)
            .str("reason", failure.reason())
            .str("detail", &failure.to_string())
            .str(
                "fail_mode",
                if self.config.fail_mode == crate::policy::config::FailMode::Open { "open" } else { "closed" },
            )
            .str("rule", rule);
        if let Some(s) = subject {
            line = line.caller(&self.config.log_caller_ids, s);
        }
        line.finish()
    }

    /// Counts a decision in the metrics (when they are kept); the report due now, if any.
    fn count(
        &mut self,
        outcome: &crate::limiter::Outcome,
        limited: &Limited<'_>,
        started_ms: f64,
        now_ms: f64,
    ) -> Option<Fetch> {
        self.config.admin_token_sha256.as_ref()?; // metrics are kept only with the admin API on
        self.metrics.record(outcome, &limited.checks, limited.tier.as_deref(), &limited.subject);
        self.metrics.decision.observe(now_ms - started_ms);
        self.metrics.add_limiter_counts(self.limiter.take_counts());
        self.metrics.add_lease_counts(self.limiter.take_lease_counts());
        self.report(now_ms)
    }

    /// An RPC call (`method` with its options as JSON, `""` for none) arriving at `now_ms`: the same
    /// decision as a request's — deny cache, one script call, fail mode, metrics — returned as a plain
    /// object ([`rpc::result_json`]), or an error to throw for bad arguments.
    pub fn call(&mut self, method: &str, args: &str, now_ms: f64) -> Step {
        self.collect(now_ms);
        let call = match rpc::parse(self.config, method, args) {
            Ok(call) => call,
            Err(error) => return Step::Throw { error, note: None },
        };
        let mut limited = call.limited;
        // An RPC caller's response is not the gateway's to watch: in-flight limits are reported only
        // (a slot would never be released), and settled costs charge their reservation.
        for c in limited.checks.iter_mut().filter(|c| c.limit.is_concurrency()) {
            c.mode = Mode::Report;
        }
        match call.method {
            Method::Reset => {
                // Only the key's own buckets: a rule's `by: "global"` bucket is everyone's.
                let own = format!("rate:{}", limited.subject);
                let keys: Vec<String> = limited
                    .checks
                    .into_iter()
                    .map(|c| c.key)
                    .filter(|k| *k == own || k.strip_prefix(own.as_str()).is_some_and(|rest| rest.starts_with(':')))
                    .collect();
                let mut del = vec!["DEL".to_string()];
                del.extend(keys.iter().cloned());
                let body = crate::json::strings(&del);
                let ticket = self.park(Work::Reset { keys }, now_ms);
                Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
            }
            method => {
                let peek = method == Method::Peek;
                if !peek {
                    if let Some(allowed) = self.limiter.leased(&limited.checks, now_ms) {
                        return self.rpc_decided(limited, Ok(allowed), now_ms, now_ms);
                    }
                    if let Some(denied) = self.limiter.cached_denial(&limited.checks, now_ms) {
                        return self.rpc_decided(limited, Ok(denied), now_ms, now_ms);
                    }
                }
                let (call, body) = ScriptCall::start(&self.limiter, &limited.checks, self.config.clock, now_ms, peek);
                let ticket = self.park(Work::Call { call, limited, method, started_ms: now_ms }, now_ms);
                Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
            }
        }
    }

    fn rpc_decided(
        &mut self,
        limited: Limited<'c>,
        result: Result<Decision, Failure>,
        started_ms: f64,
        now_ms: f64,
    ) -> Step {
        let note = self.decision_note(&limited, &result, "rpc");
        let outcome = self.limiter.outcome(result, self.config.fail_mode, &limited.checks, now_ms);
        let report = self.count(&outcome, &limited, started_ms, now_ms);
        let wake = self.wake(now_ms);
        Step::Return { value: rpc::limit_result(&outcome, &limited.checks), note, report, wake }
    }

    /// A peek's result: what a `limit` of the same cost would get now. Redis failing, the fail mode
    /// says what to expect (open: success, closed: not), marked degraded.
    fn peek_result(&self, limited: &Limited<'_>, peeked: Result<Decision, Failure>) -> Step {
        let checks = &limited.checks;
        match peeked {
            Ok(d) => {
                let value = rpc::result_json(d.allowed, Some(&d), checks, None);
                Step::Return { value, note: None, report: None, wake: None }
            }
            Err(f) => {
                let open = self.config.fail_mode == crate::policy::config::FailMode::Open;
                let rule = checks.first().map_or("", |c| c.rule);
                let note = Some(self.degraded_line(&f, "rpc", Some(&limited.subject), rule));
                Step::Return { value: rpc::result_json(open, None, checks, Some(&f)), note, report: None, wake: None }
            }
        }
    }

    /// The metrics report due now, if any, as a fetch to send after the response.
    fn report(&mut self, now_ms: f64) -> Option<Fetch> {
        let report = self.metrics.report(now_ms, self.config.metrics_flush_ms)?;
        let ticket = self.park(Work::Report { counts: Box::new(report.counts) }, now_ms);
        Some(Fetch { ticket, pipeline: true, body: report.body, timeout_ms: self.config.redis_timeout_ms })
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
                let ticket = self.park(Work::Body { request: OwnedRequest::of(req) }, now_ms);
                return Step::ReadBody { ticket, max: MAX_BODY_BYTES };
            }
        }
        let head = req.method.eq_ignore_ascii_case("HEAD");
        let request = AdminRequest { method: req.method, rest, query, authorization, body };
        match admin::route(self.config, &request, now_ms) {
            Action::Done(response) => respond(head_only(response, head)),
            Action::Redis(commands, then) => {
                let body = admin::pipeline_body(&commands);
                let ticket = self.park(Work::Admin { then, head }, now_ms);
                Step::Fetch(Fetch { ticket, pipeline: true, body, timeout_ms: self.config.redis_timeout_ms })
            }
            Action::Peek(peek) => {
                let (call, body) = ScriptCall::start(&self.limiter, &peek.checks, self.config.clock, now_ms, true);
                let ticket = self.park(Work::Peek { call, peek }, now_ms);
                Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms: self.config.redis_timeout_ms })
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
                let ticket = self.park(Work::Floor { target: target.to_string() }, now_ms);
                Step::Fetch(Fetch { ticket, pipeline: false, body: "[\"PING\"]".into(), timeout_ms: 500 })
            }
        }
    }
}

/// The usage headers the limits of `checks` say to strip from the client's response, whatever the
/// request holds.
fn strip_of(checks: &[Check<'_>]) -> Vec<String> {
    let mut strip: Vec<String> = Vec::new();
    for s in checks.iter().filter_map(|c| c.limit.settle()).filter(|s| s.strip) {
        if let Some(h) = s.header().filter(|h| !strip.iter().any(|x| x == h)) {
            strip.push(h.to_string());
        }
    }
    strip
}

/// The slots a decision whose answer never came may have taken: every enforcing or shadow in-flight
/// limit's.
fn maybe_taken<'c>(checks: &[Check<'c>]) -> Vec<Held<'c>> {
    checks
        .iter()
        .filter(|c| c.limit.is_concurrency() && matches!(c.mode, Mode::Enforce | Mode::Shadow))
        .map(|c| Held { key: c.key.clone(), limit: c.limit, overrides: c.overrides.clone(), reserve: None })
        .collect()
}

/// What an admitted request holds until its response has been delivered: the slots it took and the
/// costs it reserved (enforcing limits, and shadow limits that could pay: those were debited).
fn held_of<'c>(checks: &[Check<'c>], decision: &Decision) -> Vec<Held<'c>> {
    checks
        .iter()
        .zip(&decision.limits)
        .filter(|(c, status)| match c.mode {
            Mode::Enforce => true,
            Mode::Shadow => status.retry_ms == 0,
            Mode::Candidate | Mode::Report => false,
        })
        .filter(|(c, _)| c.limit.is_concurrency() || c.limit.settle().is_some())
        .map(|(c, _)| Held {
            key: c.key.clone(),
            limit: c.limit,
            overrides: c.overrides.clone(),
            reserve: (!c.limit.is_concurrency()).then_some(c.cost),
        })
        .collect()
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

/// A gateway for an isolate's lifetime, built from its environment; a configuration error answers
/// every request with the same 500 (and a note for the log), never a panic.
pub enum Isolate {
    Ready(Box<Gateway<'static>>),
    Misconfigured(ConfigError),
}

impl Isolate {
    /// Reads the configuration once (`var` looks a variable up). The configuration lives as long as
    /// the isolate, so it is leaked on purpose: one per isolate, never freed.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Isolate {
        Isolate::from_env_as(var, "")
    }

    /// [`Isolate::from_env`] whose request ids start with `instance_id` (random, drawn by the executor:
    /// see [`Gateway::with_instance_id`]).
    pub fn from_env_as(var: impl Fn(&str) -> Option<String>, instance_id: &str) -> Isolate {
        match Config::from_env(var) {
            Ok(config) => {
                let gateway = Gateway::new(Box::leak(Box::new(config))).with_instance_id(instance_id);
                Isolate::Ready(Box::new(gateway))
            }
            Err(e) => Isolate::Misconfigured(e),
        }
    }

    pub fn header_names(&self) -> &[String] {
        match self {
            Isolate::Ready(g) => g.header_names(),
            Isolate::Misconfigured(_) => &[],
        }
    }

    pub fn begin(&mut self, req: &Request<'_>, now_ms: f64) -> Step {
        match self {
            Isolate::Ready(g) => g.begin(req, now_ms),
            Isolate::Misconfigured(e) => self::misconfigured(e),
        }
    }

    pub fn resume(&mut self, ticket: u32, reply: Reply<'_>, now_ms: f64) -> Step {
        match self {
            Isolate::Ready(g) => g.resume(ticket, reply, now_ms),
            Isolate::Misconfigured(e) => self::misconfigured(e),
        }
    }

    /// An RPC call ([`Gateway::call`]); a misconfigured isolate throws an `Error` naming the variable.
    pub fn call(&mut self, method: &str, args: &str, now_ms: f64) -> Step {
        match self {
            Isolate::Ready(g) => g.call(method, args, now_ms),
            Isolate::Misconfigured(e) => Step::Throw {
                error: CallError { kind: ErrorKind::Error, message: format!("edge-ratelimit is misconfigured: {e}") },
                note: Some(misconfigured_line(e)),
            },
        }
    }
}

fn misconfigured_line(e: &ConfigError) -> String {
    Line::new("misconfigured", "error").str("variable", e.variable).str("reason", &e.message).finish()
}

fn misconfigured(e: &ConfigError) -> Step {
    Step::Respond { response: http::misconfigured(e), note: Some(misconfigured_line(e)), report: None, wake: None }
}
