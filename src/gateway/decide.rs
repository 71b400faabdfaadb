//! A decision: from this isolate's leases or the deny cache at once, or one script call; the fail
//! mode applied, a candidate policy compared, metrics counted, the answer rendered.

use super::*;

impl<'c> Gateway<'c> {
    /// Decides `limited`: from this isolate's leases or the deny cache at once, or with one script call.
    pub(super) fn decide(&mut self, limited: Limited<'c>, target: &str, now_ms: f64) -> Step {
        if let Some(allowed) = self.limiter.leased(&limited.checks, now_ms) {
            if let (Some(digest), false) = (self.candidate_digest(), limited.candidates.is_empty()) {
                self.metrics.record_unevaluated(digest, now_ms);
            }
            return self.decided(limited, target, Ok(allowed), None, None, Vec::new(), now_ms, now_ms);
        }
        if let Some(denied) = self.limiter.cached_denial(&limited.checks, now_ms) {
            if let (Some(digest), false) = (self.candidate_digest(), limited.candidates.is_empty()) {
                self.metrics.record_unevaluated(digest, now_ms);
            }
            return self.decided(limited, target, Ok(denied), None, None, Vec::new(), now_ms, now_ms);
        }
        let holds = limited.checks.iter().any(|c| c.limit.is_concurrency() || c.limit.settle().is_some());
        let id = holds.then(|| self.request_id());
        let clock = self.config.clock;
        let alone = limited.candidates.is_empty() || self.candidate_digest().is_none();
        // Limits this isolate's leases cover are paid here; the call decides the others.
        let part = if alone { self.limiter.lease_part(&limited.checks, now_ms) } else { None };
        let (call, body) = if let Some(part) = &part {
            let rest = part.rest(&limited.checks);
            ScriptCall::start_with_id(&self.limiter, &rest, clock, now_ms, false, id.as_deref().unwrap_or(""))
        } else if alone {
            ScriptCall::start_with_id(&self.limiter, &limited.checks, clock, now_ms, false, id.as_deref().unwrap_or(""))
        } else {
            // The candidate's limits ride in the same call, after the live ones.
            let all = [&limited.checks[..], &limited.candidates[..]].concat();
            ScriptCall::start_with_id(&self.limiter, &all, clock, now_ms, false, id.as_deref().unwrap_or(""))
        };
        let work = Work::Decide { call, limited, target: target.to_string(), started_ms: now_ms, id, part };
        self.tickets.call(work, body, now_ms)
    }

    /// The digest of the candidate policy, when one is set and counted (the admin API reads its report).
    pub(super) fn candidate_digest(&self) -> Option<&'c str> {
        match &self.config.candidate {
            Ok(Some(c)) if self.config.admin_token_sha256.is_some() => Some(c.digest.as_str()),
            _ => None,
        }
    }

    /// A script reply for live limits followed by the candidate's: the live part, and what the script
    /// said of each candidate limit (`None` when no candidate rode along or the call failed).
    pub(super) fn split_candidates(
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
    pub(super) fn decided(
        &mut self,
        limited: Limited<'c>,
        target: &str,
        result: Result<crate::store::decision::Decision, Failure>,
        candidate: Option<Vec<crate::store::decision::LimitStatus>>,
        admission: Option<(String, i64)>,
        put_back: Vec<Settlement<'c>>,
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
        let outcome_admitted = matches!(outcome, Outcome::Allowed(_) | Outcome::FailedOpen(..));
        let (held, failed) = match (&outcome, admission) {
            (Outcome::Allowed(d), Some((id, script_ms))) => (Some((held_of(&limited.checks, d), id, script_ms)), None),
            // No answer, but the script may have run: its slots are released after the response if the
            // fail mode forwarded the request, at once if it was answered here.
            (Outcome::FailedOpen(..), Some((id, _))) => (Some((maybe_taken(&limited.checks), id, 0)), None),
            (Outcome::FailedClosed(_) | Outcome::DeniedLocally(..), Some((id, _))) => {
                (None, Some((maybe_taken(&limited.checks), id)))
            }
            _ => (None, None),
        };
        let report = self.count(&outcome, &limited, started_ms, now_ms);
        let in_flight = |i: usize| limited.checks.get(i).is_some_and(|c| c.limit.is_concurrency());
        match http::answer_in_flight(&outcome, in_flight) {
            Answer::Forward(headers) => match self.forward(target, headers, note, report) {
                Step::Forward { url, headers, note, report, .. } => {
                    let strip = strip_of(&limited.checks);
                    let (after, mut cx) = self.after();
                    let watch = match held
                        .and_then(|(items, id, script_ms)| after.watch(&mut cx, items, id, script_ms, now_ms))
                    {
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
                    Step::Forward { url, headers, note, report, wake: after.wake(&mut cx, now_ms), watch }
                }
                other => other,
            },
            Answer::Respond(response) => {
                // Redis failed, and the script may have run all the same: the slots it may have taken
                // are released with the next batch (a ZREM of a slot that was never taken changes nothing).
                // A spread call's admitted pieces put back what they debited.
                let mut items: Vec<Settlement<'c>> = failed
                    .map(|(items, id)| {
                        items
                            .into_iter()
                            .map(|h| Settlement {
                                key: h.key,
                                limit: h.limit,
                                overrides: h.overrides,
                                delta: 0,
                                arg: id.clone(),
                                shard: None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !outcome_admitted {
                    items.extend(put_back);
                }
                let wake = {
                    let (after, mut cx) = self.after();
                    after.put_back(&mut cx, items, now_ms)
                };
                Step::Respond { response, note, report, wake }
            }
        }
    }

    /// The log line of a decision attempt, if it deserves one: Redis failed, or a shadow limit would
    /// have denied.
    pub(super) fn decision_note(
        &self,
        limited: &Limited<'_>,
        result: &Result<Decision, Failure>,
        via: &str,
    ) -> Option<String> {
        let rule = limited.checks.first().map_or("", |c| c.rule);
        match result {
            Err(failure) => Some(self.degraded_line(failure, via, Some(&limited.subject), rule)),
            Ok(d) => {
                let i = d.limits.iter().position(|l| l.shadow && l.retry_ms > 0)?;
                let line = Line::new("shadow_denied", "info")
                    .str("via", via)
                    .str("rule", limited.checks.get(i).map_or("", |c| c.rule))
                    .str("limit", &d.limits[i].name)
                    .caller(&self.config.log_caller_ids, &limited.subject);
                Some(line.finish())
            }
        }
    }

    /// The log line of a call Redis did not answer.
    pub(super) fn degraded_line(&self, failure: &Failure, via: &str, subject: Option<&str>, rule: &str) -> String {
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
    pub(super) fn count(
        &mut self,
        outcome: &crate::limiter::Outcome,
        limited: &Limited<'_>,
        started_ms: f64,
        now_ms: f64,
    ) -> Option<Fetch> {
        if self.config.admin_token_sha256.is_none() {
            return self.report(now_ms); // metrics are kept only with the admin API on
        }
        self.metrics.record(outcome, &limited.checks, limited.tier.as_deref(), &limited.subject);
        self.metrics.decision.observe(now_ms - started_ms);
        self.metrics.add_limiter_counts(self.limiter.take_counts());
        self.metrics.add_lease_counts(self.limiter.take_lease_counts());
        self.report(now_ms)
    }
}

/// What a spread call's admitted pieces debited (`debited`, indexes into `checks`, the limits the call
/// carried) for a request that, as a whole, was not admitted, as settlements that put it back: a charge
/// refunded with the lease tokens taken beside it, a slot released (under the request's `id`).
pub(super) fn put_back_of<'c>(
    checks: &[Check<'c>],
    debited: &[crate::limiter::Debited],
    id: Option<&str>,
) -> Vec<Settlement<'c>> {
    debited
        .iter()
        .filter_map(|d| {
            let c = checks.get(d.index)?;
            let settlement = |delta: i64, arg: String| Settlement {
                key: c.key.clone(),
                limit: c.limit,
                overrides: c.overrides.clone(),
                delta,
                arg,
                shard: Some(d.shard),
            };
            if c.limit.is_concurrency() {
                return id.map(|id| settlement(0, id.to_string()));
            }
            let tokens = if d.paid { i64::from(c.cost) } else { 0 } + d.leased;
            (tokens > 0).then(|| settlement(-tokens, d.script_ms.to_string()))
        })
        .collect()
}
