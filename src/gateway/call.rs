//! The RPC entry: `env.LIMITER.limit / peek / reset` decided by the same core as an HTTP request.

use super::*;

impl<'c> Gateway<'c> {
    /// An RPC call (`method` with its options as JSON, `""` for none) arriving at `now_ms`: the same
    /// decision as a request's — deny cache, one script call, fail mode, metrics — returned as a plain
    /// object ([`rpc::result_json`]), or an error to throw for bad arguments.
    pub fn call(&mut self, method: &str, args: &str, now_ms: f64) -> Step {
        self.tickets.collect(now_ms);
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
                let own = format!("rate:{{{}}}", limited.subject);
                let keys: Vec<String> = limited
                    .checks
                    .into_iter()
                    .map(|c| c.key)
                    .filter(|k| *k == own || k.strip_prefix(own.as_str()).is_some_and(|rest| rest.starts_with(':')))
                    .collect();
                let mut del = vec!["DEL".to_string()];
                del.extend(keys.iter().cloned());
                let body = crate::json::strings(&del);
                // (the caller's own keys: all on its shard, in its slot)
                let shard = keys.first().map_or(0, |k| self.limiter.places().of(k).shard);
                let ticket = self.tickets.park(Work::Reset { keys }, now_ms);
                let timeout_ms = self.config.redis_timeout_ms;
                Step::Fetch(Fetch { ticket, pipeline: false, body, timeout_ms, shard })
            }
            method => {
                let peek = method == Method::Peek;
                if !peek {
                    if let Some(allowed) = self.limiter.leased(&limited.checks, now_ms) {
                        return self.rpc_decided(limited, Ok(allowed), Vec::new(), now_ms, now_ms);
                    }
                    if let Some(denied) = self.limiter.cached_denial(&limited.checks, now_ms) {
                        return self.rpc_decided(limited, Ok(denied), Vec::new(), now_ms, now_ms);
                    }
                }
                let (call, body) = ScriptCall::start(&self.limiter, &limited.checks, self.config.clock, now_ms, peek);
                self.tickets.call(Work::Call { call, limited, method, started_ms: now_ms }, body, now_ms)
            }
        }
    }

    pub(super) fn rpc_decided(
        &mut self,
        limited: Limited<'c>,
        result: Result<Decision, Failure>,
        put_back: Vec<Settlement<'c>>,
        started_ms: f64,
        now_ms: f64,
    ) -> Step {
        let note = self.decision_note(&limited, &result, "rpc");
        let outcome = self.limiter.outcome(result, self.config.fail_mode, &limited.checks, now_ms);
        let report = self.count(&outcome, &limited, started_ms, now_ms);
        let admitted = matches!(outcome, crate::limiter::Outcome::Allowed(_) | crate::limiter::Outcome::FailedOpen(..));
        let (after, mut cx) = self.after();
        // What a spread call's admitted pieces debited for a call not admitted goes back (then the
        // lease chain's wake waits for the next decision).
        let wake = match (admitted, put_back.is_empty()) {
            (false, false) => after.put_back(&mut cx, put_back, now_ms),
            _ => after.wake(&mut cx, now_ms),
        };
        Step::Return { value: rpc::limit_result(&outcome, &limited.checks), note, report, wake }
    }

    /// A peek's result: what a `limit` of the same cost would get now. Redis failing, the fail mode
    /// says what to expect (open: success, closed: not), marked degraded.
    pub(super) fn peek_result(&self, limited: &Limited<'_>, peeked: Result<Decision, Failure>) -> Step {
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
}
