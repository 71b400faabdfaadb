//! Pending work: what a ticket waits for, and [`Gateway::resume`] carrying it on — the script call's
//! next round, or what its answer means for the work that asked.

use super::*;

/// A request kept while its I/O is under way.
#[derive(Clone, Debug)]
pub(super) struct OwnedRequest {
    pub(super) method: String,
    pub(super) url: String,
    pub(super) headers: Vec<Option<String>>,
}

impl OwnedRequest {
    pub(super) fn of(req: &Request<'_>) -> OwnedRequest {
        OwnedRequest {
            method: req.method.to_string(),
            url: req.url.to_string(),
            headers: req.headers.iter().map(|h| h.map(str::to_string)).collect(),
        }
    }
}

/// What a pending ticket waits for.
pub(super) enum Work<'c> {
    /// A decision's script call.
    Decide {
        call: ScriptCall,
        limited: Limited<'c>,
        target: String,
        started_ms: f64,
        /// The request's id, when it takes in-flight slots or settles a cost.
        id: Option<String>,
        /// The limits leases paid while the call decides the others.
        part: Option<crate::limiter::Part>,
    },
    /// An admitted request's slots and reserved costs, until its response has been delivered.
    Held {
        items: Vec<Held<'c>>,
        id: String,
        /// The script's time of the admission (epoch ms).
        script_ms: i64,
        headers: Vec<String>,
    },
    /// A full batch of releases and settlements queued by a response sent elsewhere (a failed
    /// decision's), to send at the wake.
    Release {
        batch: Batch<'c>,
    },
    /// The wait after which the queued releases and settlements go in one call.
    Flush,
    /// The call that releases and settles a batch; `attempt` 0, then 1 for the one retry.
    Settling {
        call: ScriptCall,
        batch: Batch<'c>,
        attempt: u8,
    },
    /// The admin API's peek.
    Peek {
        call: ScriptCall,
        peek: Peek<'c>,
    },
    /// An admin pipeline (a write: one to every shard, `replies` one per shard as they come).
    Admin {
        then: Then,
        head: bool,
        replies: Vec<Option<Result<(u16, String), TransportError>>>,
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
    /// The read of which overrides exist (the overrides' version, then their index).
    Overrides,
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
    pub(super) fn call(&mut self) -> Option<&mut ScriptCall> {
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

pub(super) struct Pending<'c> {
    pub(super) work: Work<'c>,
    pub(super) deadline_ms: f64,
    /// When the last fetch of this ticket was handed out (for the Redis round-trip histogram).
    pub(super) sent_ms: f64,
}

/// Pending tickets kept at most; beyond it, those past their deadline are dropped (an executor that
/// never resumes a ticket cannot make the gateway grow).
pub(super) const PENDING_KEPT: usize = 4096;

/// Watched responses kept at most per isolate (beyond it, and none past its time, a new one is not
/// watched: its slots expire after their TTL).
pub(super) const WATCHED_KEPT: usize = 4096;

/// How long past its deadline a ticket may still be resumed.
pub(super) const PENDING_GRACE_MS: f64 = 10_000.0;

/// The tickets handed out and the work each one waits for (apart from the watched responses, which
/// [`After`] keeps).
pub(super) struct Tickets<'c> {
    pub(super) pending: HashMap<u32, Pending<'c>>,
    /// The tickets of a spread script call's pieces: each its call's ticket and the piece.
    pub(super) pieces: HashMap<u32, (u32, usize)>,
    next: u32,
    /// The Redis deadline of a REST call (`REDIS_TIMEOUT_MS`).
    timeout_ms: u32,
}

impl<'c> Tickets<'c> {
    pub(super) fn new(timeout_ms: u32) -> Tickets<'c> {
        Tickets { pending: HashMap::new(), pieces: HashMap::new(), next: 0, timeout_ms }
    }

    /// A ticket for `work`, due within the configured timeout.
    pub(super) fn park(&mut self, work: Work<'c>, now_ms: f64) -> u32 {
        let deadline_ms = now_ms + f64::from(self.timeout_ms);
        self.park_until(work, deadline_ms, now_ms)
    }

    /// Parks `work` and asks the executor to POST `body` to the REST endpoint (`pipeline`: to its
    /// pipeline) within the Redis deadline.
    pub(super) fn send(&mut self, work: Work<'c>, pipeline: bool, body: String, now_ms: f64) -> Step {
        let ticket = self.park(work, now_ms);
        self.fetch(ticket, pipeline, body)
    }

    /// The POST of `body` under `ticket` (already parked) to the first shard, within the Redis deadline.
    pub(super) fn fetch(&self, ticket: u32, pipeline: bool, body: String) -> Step {
        Step::Fetch(Fetch { ticket, pipeline, body, timeout_ms: self.timeout_ms, shard: 0 })
    }

    /// Parks `work`, a script call, and the step that sends what `next` says: one POST, or one per
    /// piece of a call spread over several places, each under a ticket of its own.
    pub(super) fn call(&mut self, work: Work<'c>, next: Next, now_ms: f64) -> Step {
        let ticket = self.new_ticket();
        let deadline_ms = now_ms + f64::from(self.timeout_ms);
        self.call_under(ticket, work, next, deadline_ms, now_ms)
    }

    /// [`Tickets::call`] under `ticket`, due by `deadline_ms`.
    pub(super) fn call_under(
        &mut self,
        ticket: u32,
        mut work: Work<'c>,
        next: Next,
        deadline_ms: f64,
        now_ms: f64,
    ) -> Step {
        let timeout_ms = self.timeout_ms;
        let step = match next {
            Next::Send(body) => {
                let shard = work.call().map_or(0, |c| c.shard(0));
                Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms, shard })
            }
            Next::SendAll(bodies) => Step::Fetches(
                bodies
                    .into_iter()
                    .map(|(piece, shard, body)| {
                        let sub = self.new_ticket();
                        self.pieces.insert(sub, (ticket, piece));
                        Fetch { ticket: sub, pipeline: false, body, timeout_ms, shard }
                    })
                    .collect(),
            ),
            Next::Wait(ms) => Step::Wait { ticket, ms },
            Next::Done(_) | Next::Pending => return Step::Done,
        };
        self.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
        step
    }

    /// The ticket for the next step of `piece` of the call under `ticket` (the call's own when it is
    /// in one piece).
    fn piece_ticket(&mut self, ticket: u32, piece: Option<usize>) -> u32 {
        match piece {
            Some(i) => {
                let sub = self.new_ticket();
                self.pieces.insert(sub, (ticket, i));
                sub
            }
            None => ticket,
        }
    }

    pub(super) fn park_until(&mut self, work: Work<'c>, deadline_ms: f64, now_ms: f64) -> u32 {
        let ticket = self.new_ticket();
        self.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
        ticket
    }

    pub(super) fn new_ticket(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1).max(1);
        self.next
    }

    /// Drops tickets nobody resumed, once there are many.
    pub(super) fn collect(&mut self, now_ms: f64) {
        if self.pending.len() >= PENDING_KEPT {
            self.pending.retain(|_, p| p.deadline_ms + PENDING_GRACE_MS > now_ms);
            if self.pending.len() >= PENDING_KEPT {
                self.pending.clear();
            }
            let pending = &self.pending;
            self.pieces.retain(|_, (parent, _)| pending.contains_key(parent));
        }
    }
}

impl<'c> Gateway<'c> {
    /// The next step for `ticket`, with what its last step brought back at `now_ms`.
    pub fn resume(&mut self, ticket: u32, reply: Reply<'_>, now_ms: f64) -> Step {
        // A piece of a spread script call answers under a ticket of its own.
        // (one database: never one, and no lookup)
        let spread = if self.tickets.pieces.is_empty() { None } else { self.tickets.pieces.remove(&ticket) };
        let (ticket, piece) = match spread {
            Some((parent, i)) => (parent, Some(i)),
            None => (ticket, None),
        };
        let Some(p) = self.tickets.pending.remove(&ticket).or_else(|| self.after.unwatch(ticket)) else {
            return Step::Done;
        };
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
                let i = piece.unwrap_or(0);
                let next = match http {
                    Some(r) => call.on_piece_reply(&self.limiter, i, r, now_ms, deadline),
                    None => call.on_piece_wake(&self.limiter, i, now_ms, deadline),
                };
                self.continue_script(ticket, piece, work, next, deadline, now_ms)
            }
            Work::Admin { then, head, mut replies } => {
                let got = http.unwrap_or(Err(TransportError::Unreachable)).map(|(s, b)| (s, b.to_string()));
                if let Some(slot) = replies.get_mut(piece.unwrap_or(0)) {
                    *slot = Some(got);
                }
                if replies.iter().any(Option::is_none) {
                    let work = Work::Admin { then, head, replies };
                    self.tickets.pending.insert(ticket, Pending { work, deadline_ms: deadline, sent_ms: p.sent_ms });
                    return Step::Done;
                }
                let replies: Vec<_> = replies.into_iter().flatten().collect();
                let databases: Vec<Option<String>> = replies.iter().map(admin::database_problem).collect();
                // A write to every shard: the first shard that did not take it speaks for all (the
                // operator repeats the request, which changes nothing where it was applied). The status
                // page reads the first shard and asks the others whether they answer.
                let speaks = match then {
                    Then::Status(_) => 0,
                    _ => databases.iter().position(Option::is_some).unwrap_or(0),
                };
                let reply = match replies.get(speaks) {
                    Some(Ok((s, b))) => Ok((*s, b.as_str())),
                    Some(Err(e)) => Err(Failure::from(*e)),
                    None => Err(Failure::Unreachable),
                };
                respond(head_only(admin::finish(self.config, &self.limiter, then, reply, &databases, now_ms), head))
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
            work
            @ (Work::Wake { .. } | Work::Release { .. } | Work::Flush | Work::Held { .. } | Work::Renew { .. }) => {
                let (after, mut cx) = self.after();
                after.resume(&mut cx, ticket, work, reply, now_ms)
            }
            Work::Overrides => {
                let reply = match http {
                    Some(Ok((status, body))) => Some((status, body)),
                    _ => None,
                };
                self.limiter.overrides_fetched(reply, now_ms);
                Step::Done
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

    /// The step for a script call's `next`: send or wait under the same ticket, or (done, or out of
    /// time) the answer.
    pub(super) fn continue_script(
        &mut self,
        ticket: u32,
        piece: Option<usize>,
        mut work: Work<'c>,
        mut next: Next,
        deadline_ms: f64,
        now_ms: f64,
    ) -> Step {
        loop {
            let left = (deadline_ms - now_ms).ceil();
            next = match next {
                Next::Done(result) => return self.script_done(work, result, now_ms),
                // This piece is done; the call waits for its others.
                Next::Pending => {
                    self.tickets.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
                    return Step::Done;
                }
                // The deadline has passed: the call ends as a timeout, without another round trip.
                _ if left < 1.0 => match work.call() {
                    Some(call) => call.on_piece_reply(
                        &self.limiter,
                        piece.unwrap_or(0),
                        Err(TransportError::Timeout),
                        now_ms,
                        deadline_ms,
                    ),
                    None => return Step::Done,
                },
                Next::Send(body) => {
                    let shard = work.call().map_or(0, |c| c.shard(piece.unwrap_or(0)));
                    let t = self.tickets.piece_ticket(ticket, piece);
                    self.tickets.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
                    return Step::Fetch(Fetch { ticket: t, pipeline: false, body, timeout_ms: left as u32, shard });
                }
                Next::Wait(ms) => {
                    let t = self.tickets.piece_ticket(ticket, piece);
                    self.tickets.pending.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
                    return Step::Wait { ticket: t, ms: ms.min(left as u32) };
                }
                // (only a call's first step sends every piece)
                Next::SendAll(_) => Next::Done(Err(Failure::Unreachable)),
            };
        }
    }

    pub(super) fn script_done(&mut self, work: Work<'c>, result: Result<Vec<i64>, Failure>, now_ms: f64) -> Step {
        match work {
            Work::Decide { limited, target, started_ms, call, id, part } => {
                self.limiter.answered(call.asked());
                // A call spread over several places that was not admitted as a whole: what its admitted
                // pieces debited, to put back if the request is not admitted.
                let debited = call.debited();
                let put_back = if debited.is_empty() {
                    Vec::new()
                } else {
                    let called = match &part {
                        Some(part) => part.rest(&limited.checks),
                        None if limited.candidates.is_empty() || self.candidate_digest().is_none() => {
                            limited.checks.clone()
                        }
                        None => [&limited.checks[..], &limited.candidates[..]].concat(),
                    };
                    put_back_of(&called, &debited, id.as_deref())
                };
                let (result, candidate) = self.split_candidates(&limited, result);
                let script_ms = result.as_ref().ok().and_then(|ints| ints.last().copied()).unwrap_or(0);
                let result = match &part {
                    Some(part) => self.limiter.decided_part(&limited.checks, part, result, call.wants(), now_ms),
                    None => self.limiter.decided(&limited.checks, result, call.wants(), now_ms),
                };
                let admission = id.map(|id| (id, script_ms));
                self.decided(limited, &target, result, candidate, admission, put_back, started_ms, now_ms)
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
                let put_back = put_back_of(&limited.checks, &call.debited(), None);
                let result = self.limiter.decided(&limited.checks, result, call.wants(), now_ms);
                self.rpc_decided(limited, result, put_back, started_ms, now_ms)
            }
            work @ (Work::GiveBack { .. } | Work::Settling { .. } | Work::Renewing { .. }) => {
                let (after, mut cx) = self.after();
                after.script_done(&mut cx, work, result, now_ms)
            }
            _ => Step::Done,
        }
    }
}
