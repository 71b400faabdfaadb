//! After the response, in one room: the slots a request holds and the costs it reserved (released
//! and settled once its response is delivered), and the lease chain (renewals, give-backs).

use super::*;

/// One limit an admitted request holds until its response has been delivered: an in-flight slot
/// (`reserve` `None`), or a cost reserved and settled from the response.
#[derive(Debug)]
pub(super) struct Held<'c> {
    pub(super) key: String,
    pub(super) limit: &'c Limit,
    pub(super) overrides: Vec<String>,
    pub(super) reserve: Option<u32>,
}

/// The key that makes a request's settlement happen once (a retried call finds it set).
pub(super) fn settle_marker(id: &str) -> String {
    format!("ratelimit:settled:{id}")
}

/// How long one chain of lease wakes may last (the runtime keeps `waitUntil` work 30 s at most).
pub(super) const WAKE_CHAIN_MS: f64 = 20_000.0;

impl<'c> Gateway<'c> {
    /// The watch for an admitted request's response, parked until it has been delivered.
    pub(super) fn watch(&mut self, items: Vec<Held<'c>>, id: String, script_ms: i64, now_ms: f64) -> Option<Watch> {
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
    pub(super) fn delivered(
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

    pub(super) fn settle_call(
        &mut self,
        items: Vec<Settlement<'c>>,
        marker: Option<String>,
        attempt: u8,
        now_ms: f64,
    ) -> Step {
        let (call, body) = ScriptCall::settle(&self.limiter, &items, marker.as_deref(), self.config.clock, now_ms);
        self.send(Work::Settling { call, items, marker, attempt }, false, body, now_ms)
    }

    /// The wake to schedule after a decision: at once when leases run low (topped up, then the
    /// give-back chain), else when this isolate holds leases and no wake is scheduled.
    pub(super) fn wake(&mut self, now_ms: f64) -> Option<Wake> {
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

    /// A wake of the chain begun at `since_ms`: the unused tokens of every lease that has ended given
    /// back in one script call, then the next wake while leases remain.
    pub(super) fn give_back(&mut self, ticket: u32, since_ms: f64, now_ms: f64) -> Step {
        let due = self.limiter.leases_due(now_ms);
        if due.is_empty() {
            return self.next_wake(since_ms, now_ms);
        }
        self.give_back_now(ticket, due, since_ms, false, now_ms)
    }

    pub(super) fn give_back_now(
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
    pub(super) fn next_wake(&mut self, since_ms: f64, now_ms: f64) -> Step {
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
}

/// The usage headers the limits of `checks` say to strip from the client's response, whatever the
/// request holds.
pub(super) fn strip_of(checks: &[Check<'_>]) -> Vec<String> {
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
pub(super) fn maybe_taken<'c>(checks: &[Check<'c>]) -> Vec<Held<'c>> {
    checks
        .iter()
        .filter(|c| c.limit.is_concurrency() && matches!(c.mode, Mode::Enforce | Mode::Shadow))
        .map(|c| Held { key: c.key.clone(), limit: c.limit, overrides: c.overrides.clone(), reserve: None })
        .collect()
}

/// What an admitted request holds until its response has been delivered: the slots it took and the
/// costs it reserved (enforcing limits, and shadow limits that could pay: those were debited).
pub(super) fn held_of<'c>(checks: &[Check<'c>], decision: &Decision) -> Vec<Held<'c>> {
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
