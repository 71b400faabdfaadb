//! After the response, in one room: [`After`] owns the responses watched until they are delivered,
//! the batch of slot releases and settlements that many requests share one call for, and the lease
//! chain (renewals, give-backs). The gateway hands it its work and its tickets; nothing is relayed.

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

/// The key that makes a batch's settlement happen once (a retried call finds it set).
pub(super) fn settle_marker(id: &str) -> String {
    format!("ratelimit:settled:{id}")
}

/// How long one chain of lease wakes may last (the runtime keeps `waitUntil` work 30 s at most).
pub(super) const WAKE_CHAIN_MS: f64 = 20_000.0;

/// Releases and settlements queued at most: the one that fills the queue sends it at once.
pub(super) const BATCH_MAX: usize = 64;

/// How long the first release or settlement queued waits for others before the queue is sent.
pub(super) const BATCH_WAIT_MS: u32 = 50;

/// A flush wait this long past its time is taken as lost (its executor was stopped): the next item
/// queued schedules another.
pub(super) const BATCH_WAIT_LOST_MS: f64 = 10_000.0;

/// What the after-the-response work uses of its gateway.
pub(super) struct Cx<'g, 'c> {
    pub(super) tickets: &'g mut Tickets<'c>,
    pub(super) limiter: &'g Limiter,
    pub(super) metrics: &'g mut Metrics,
    pub(super) config: &'c Config,
    /// Unique among every isolate: batch ids are this, `.b` and a counter (request ids: a dot and a
    /// counter), so no two batches anywhere share a settle marker.
    pub(super) instance_id: &'g str,
}

/// One call's worth of releases and settlements, merged per key: a slot key's members removed in
/// one `ZREM`, a bucket's deltas summed.
#[derive(Debug)]
pub(super) struct Batch<'c> {
    pub(super) items: Vec<Settlement<'c>>,
    /// Set when it settles a cost: the batch's marker, so that a retried call changes nothing (a
    /// release alone needs none: removing a member twice changes nothing).
    pub(super) marker: Option<String>,
    /// Slots it releases and costs it settles, one per request and limit (before merging).
    pub(super) slots: u64,
    pub(super) costs: u64,
}

/// Where an item queued stands.
enum Queued<'c> {
    /// Waiting for the flush; `Some`: the wait that sends it, to schedule now (the first item).
    Waiting(Option<Wake>),
    /// The queue is full: this batch goes now.
    Full(Batch<'c>),
}

/// What follows a response, for one isolate.
#[derive(Default)]
pub(super) struct After<'c> {
    /// Admitted requests whose responses are watched (apart from the other tickets: they wait as long
    /// as a response takes, and an overflow of the others must never drop them).
    watching: HashMap<u32, Pending<'c>>,
    /// Releases and settlements waiting for the next call, in the order queued (at most [`BATCH_MAX`]).
    queue: Vec<Settlement<'c>>,
    /// The wait that sends the queue: its ticket, and when it is due (Worker ms).
    timer: Option<(u32, f64)>,
    /// Batches that carried a marker.
    batches: u64,
}

impl<'c> Gateway<'c> {
    /// The after-the-response room, and what it may use of this gateway.
    pub(super) fn after(&mut self) -> (&mut After<'c>, Cx<'_, 'c>) {
        let cx = Cx {
            tickets: &mut self.tickets,
            limiter: &self.limiter,
            metrics: &mut self.metrics,
            config: self.config,
            instance_id: &self.instance_id,
        };
        (&mut self.after, cx)
    }
}

impl<'c> After<'c> {
    /// Responses watched now.
    pub(super) fn watched(&self) -> usize {
        self.watching.len()
    }

    /// The watched response of `ticket`, no longer watched.
    pub(super) fn unwatch(&mut self, ticket: u32) -> Option<Pending<'c>> {
        self.watching.remove(&ticket)
    }

    /// The watch for an admitted request's response, parked until it has been delivered.
    pub(super) fn watch(
        &mut self,
        cx: &mut Cx<'_, 'c>,
        items: Vec<Held<'c>>,
        id: String,
        script_ms: i64,
        now_ms: f64,
    ) -> Option<Watch> {
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
        cx.metrics.add_held(HeldCounts { slots_taken: slots, ..HeldCounts::default() });
        if self.watching.len() >= WATCHED_KEPT {
            self.watching.retain(|_, p| p.deadline_ms > now_ms);
            if self.watching.len() >= WATCHED_KEPT {
                // Bounded: this request's slots expire after their TTL, its cost stays at the reservation.
                cx.metrics.add_held(HeldCounts { release_failed: slots, ..HeldCounts::default() });
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
        let ticket = cx.tickets.new_ticket();
        let deadline_ms = now_ms + keep_s as f64 * 1000.0;
        self.watching.insert(ticket, Pending { work, deadline_ms, sent_ms: now_ms });
        let until_end = slots > 0 || !sse_keys.is_empty();
        Some(Watch { ticket, until_end, headers, strip: Vec::new(), sse_keys })
    }

    /// The next step for after-the-response `work` resumed under `ticket` with `reply`.
    pub(super) fn resume(
        &mut self,
        cx: &mut Cx<'_, 'c>,
        ticket: u32,
        work: Work<'c>,
        reply: Reply<'_>,
        now_ms: f64,
    ) -> Step {
        match work {
            Work::Held { items, id, script_ms, headers } => {
                // Anything but a delivery report (an executor that lost track) releases all the same.
                let text = match reply {
                    Reply::Delivered(text) => text,
                    _ => "0",
                };
                self.delivered(cx, items, id, script_ms, &Delivered::decode(text, &headers), now_ms)
            }
            Work::Flush => self.flush(cx, ticket, now_ms),
            Work::Release { batch } => self.send(cx, batch, 0, now_ms),
            Work::Wake { since_ms } => self.give_back(cx, ticket, since_ms, now_ms),
            Work::Renew { items } => {
                let (call, body) = ScriptCall::renew(cx.limiter, &items, cx.config.clock, now_ms);
                let deadline_ms = now_ms + f64::from(cx.config.redis_timeout_ms);
                cx.tickets.call_under(ticket, Work::Renewing { call, items }, body, deadline_ms, now_ms)
            }
            _ => Step::Done,
        }
    }

    /// What an after-the-response script call's answer means.
    pub(super) fn script_done(
        &mut self,
        cx: &mut Cx<'_, 'c>,
        work: Work<'c>,
        result: Result<Vec<i64>, Failure>,
        now_ms: f64,
    ) -> Step {
        match work {
            Work::GiveBack { tokens, since_ms, last, items, .. } => {
                let ok = result.and_then(|ints| {
                    after_reply(&ints, items.iter().map(|g| (&g.limit, g.overrides.as_slice())), false)
                });
                cx.limiter.leases().gave_back(tokens, ok.is_ok());
                if last {
                    cx.limiter.leases().unschedule_wake(); // the next decision that leases starts a new chain
                    return Step::Done;
                }
                self.next_wake(cx, since_ms, now_ms)
            }
            Work::Settling { batch, attempt, .. } => {
                let limits = batch.items.iter().map(|s| (s.limit, s.overrides.as_slice()));
                match result.and_then(|ints| after_reply(&ints, limits, batch.marker.is_some())) {
                    Ok(repeated) => {
                        let (slots_released, repeated) = (batch.slots, u64::from(repeated));
                        cx.metrics.add_held(HeldCounts { slots_released, repeated, ..HeldCounts::default() });
                        self.held_back(cx, now_ms)
                    }
                    // No answer (or a server error): it may or may not have been applied; the marker makes
                    // one retry safe.
                    Err(
                        Failure::Timeout
                        | Failure::Unreachable
                        | Failure::Rest(crate::store::upstash::RestError::Server(_)),
                    ) if attempt == 0 => self.send(cx, batch, 1, now_ms),
                    Err(_) => {
                        // Given up: the slots expire after their TTL, the costs stay at their reservation.
                        cx.metrics.add_held(HeldCounts {
                            release_failed: batch.slots,
                            settle_failed: batch.costs,
                            ..HeldCounts::default()
                        });
                        self.held_back(cx, now_ms)
                    }
                }
            }
            Work::Renewing { items, .. } => {
                cx.limiter.renewed(&items, result, now_ms);
                // Then the give-back chain, if this isolate holds leases and none is scheduled.
                let Some(ms) = cx.limiter.leases().schedule_wake(now_ms) else { return Step::Done };
                let deadline_ms = now_ms + f64::from(ms) + f64::from(cx.config.redis_timeout_ms);
                let ticket = cx.tickets.park_until(Work::Wake { since_ms: now_ms }, deadline_ms, now_ms);
                Step::Wait { ticket, ms }
            }
            _ => Step::Done,
        }
    }

    /// A watched response was delivered: its slots to release and the differences of its costs
    /// queued for the next batch (nothing when there is nothing to change).
    fn delivered(
        &mut self,
        cx: &mut Cx<'_, 'c>,
        items: Vec<Held<'c>>,
        id: String,
        script_ms: i64,
        delivered: &Delivered<'_>,
        now_ms: f64,
    ) -> Step {
        let mut counts = HeldCounts::default();
        let mut settlements = Vec::with_capacity(items.len());
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
                        (delta, script_ms.to_string())
                    }
                    None => {
                        counts.missing += 1; // settled at the reservation
                        continue;
                    }
                },
                (Some(_), None) => continue,
            };
            settlements.push(Settlement {
                key: h.key,
                limit: h.limit,
                overrides: h.overrides,
                delta,
                arg,
                shard: None,
            });
        }
        cx.metrics.add_held(counts);
        if settlements.is_empty() {
            return Step::Done;
        }
        match self.enqueue(cx, settlements, now_ms) {
            Queued::Waiting(Some(Wake { ticket, ms })) => Step::Wait { ticket, ms },
            Queued::Waiting(None) => Step::Done,
            Queued::Full(batch) => self.send(cx, batch, 0, now_ms),
        }
    }

    /// Settlements queued off the response path (slots released, charges put back): the wake to carry
    /// out after the response, if one is needed.
    pub(super) fn put_back(&mut self, cx: &mut Cx<'_, 'c>, items: Vec<Settlement<'c>>, now_ms: f64) -> Option<Wake> {
        if items.is_empty() {
            return None;
        }
        match self.enqueue(cx, items, now_ms) {
            Queued::Waiting(wake) => wake,
            Queued::Full(batch) => Some(Wake { ticket: cx.tickets.park(Work::Release { batch }, now_ms), ms: 0 }),
        }
    }

    /// Queues `items`: sent with the others at the flush [`BATCH_WAIT_MS`] after the first of them, or
    /// at once when the queue is full ([`BATCH_MAX`]).
    fn enqueue(&mut self, cx: &mut Cx<'_, 'c>, items: Vec<Settlement<'c>>, now_ms: f64) -> Queued<'c> {
        self.queue.extend(items);
        if self.queue.len() >= BATCH_MAX {
            // (the scheduled wait, if any, stays: it sends what is queued after this by its time)
            return Queued::Full(self.take(cx.instance_id));
        }
        if self.timer.is_some_and(|(_, due)| now_ms > due + BATCH_WAIT_LOST_MS) {
            self.timer = None; // its wait never came back
        }
        if self.timer.is_some() {
            return Queued::Waiting(None);
        }
        let due = now_ms + f64::from(BATCH_WAIT_MS);
        let deadline_ms = due + f64::from(cx.config.redis_timeout_ms);
        let ticket = cx.tickets.park_until(Work::Flush, deadline_ms, now_ms);
        self.timer = Some((ticket, due));
        Queued::Waiting(Some(Wake { ticket, ms: BATCH_WAIT_MS }))
    }

    /// The queue as one batch, emptied: merged per key, with a marker of its own when it settles a cost.
    /// A key appears once in a call (the script reads every key before it writes any, so a second
    /// item of one key would overwrite the first's write): an item that could not be merged with an
    /// earlier one of its key stays queued for the next batch, sent when this one is done.
    fn take(&mut self, instance_id: &str) -> Batch<'c> {
        let (items, later): (Vec<_>, Vec<_>) = {
            let merged = merge(std::mem::take(&mut self.queue));
            let mut seen: Vec<String> = Vec::with_capacity(merged.len());
            merged.into_iter().partition(|s| {
                let first = !seen.contains(&s.key);
                seen.push(s.key.clone());
                first
            })
        };
        self.queue = later;
        let slots = items.iter().filter(|s| s.limit.is_concurrency()).count() as u64;
        let costs = items.len() as u64 - slots;
        let marker = items.iter().any(|s| !s.limit.is_concurrency()).then(|| {
            self.batches += 1;
            settle_marker(&format!("{instance_id}.b{}", self.batches))
        });
        Batch { items, marker, slots, costs }
    }

    /// After a batch's call: what [`After::take`] held back (a second item of a key) goes now, unless
    /// a flush is scheduled (it sends it with what comes meanwhile).
    fn held_back(&mut self, cx: &mut Cx<'_, 'c>, now_ms: f64) -> Step {
        if self.queue.is_empty() || self.timer.is_some() {
            return Step::Done;
        }
        let batch = self.take(cx.instance_id);
        self.send(cx, batch, 0, now_ms)
    }

    /// The flush's wait is over: what is queued goes in one call.
    fn flush(&mut self, cx: &mut Cx<'_, 'c>, ticket: u32, now_ms: f64) -> Step {
        if self.timer.is_some_and(|(t, _)| t == ticket) {
            self.timer = None;
        }
        if self.queue.is_empty() {
            return Step::Done;
        }
        let batch = self.take(cx.instance_id);
        self.send(cx, batch, 0, now_ms)
    }

    /// The call that releases and settles `batch` (`attempt` 0, then 1 for the one retry).
    fn send(&mut self, cx: &mut Cx<'_, 'c>, batch: Batch<'c>, attempt: u8, now_ms: f64) -> Step {
        if batch.items.is_empty() {
            return Step::Done; // (charges and refunds of one key that cancel out)
        }
        let (call, body) =
            ScriptCall::settle(cx.limiter, &batch.items, batch.marker.as_deref(), cx.config.clock, now_ms);
        cx.tickets.call(Work::Settling { call, batch, attempt }, body, now_ms)
    }

    /// The wake to schedule after a decision: at once when leases run low (topped up, then the
    /// give-back chain), else when this isolate holds leases and no wake is scheduled.
    pub(super) fn wake(&mut self, cx: &mut Cx<'_, 'c>, now_ms: f64) -> Option<Wake> {
        let items = cx.limiter.leases().take_renewals();
        if !items.is_empty() {
            let ticket = cx.tickets.park(Work::Renew { items }, now_ms);
            return Some(Wake { ticket, ms: 0 });
        }
        let ms = cx.limiter.leases().schedule_wake(now_ms)?;
        let deadline_ms = now_ms + f64::from(ms) + f64::from(cx.config.redis_timeout_ms);
        let ticket = cx.tickets.park_until(Work::Wake { since_ms: now_ms }, deadline_ms, now_ms);
        Some(Wake { ticket, ms })
    }

    /// A wake of the chain begun at `since_ms`: the unused tokens of every lease that has ended given
    /// back in one script call, then the next wake while leases remain.
    fn give_back(&mut self, cx: &mut Cx<'_, 'c>, ticket: u32, since_ms: f64, now_ms: f64) -> Step {
        let due = cx.limiter.leases().due(now_ms);
        if due.is_empty() {
            return self.next_wake(cx, since_ms, now_ms);
        }
        give_back_now(cx, ticket, due, since_ms, false, now_ms)
    }

    /// The chain's next wait, while leases remain and the chain is young enough for the runtime to keep
    /// it (`waitUntil` work lasts at most 30 s after a response). A chain at its age limit ends every
    /// lease now and gives it all back (nothing is left stranded if no request comes), and the next
    /// request that takes a lease starts another chain.
    fn next_wake(&mut self, cx: &mut Cx<'_, 'c>, since_ms: f64, now_ms: f64) -> Step {
        let next = cx.limiter.leases().woke(now_ms);
        match next {
            Some(ms) if now_ms + f64::from(ms) - since_ms <= WAKE_CHAIN_MS => {
                let deadline_ms = now_ms + f64::from(ms) + f64::from(cx.config.redis_timeout_ms);
                let ticket = cx.tickets.park_until(Work::Wake { since_ms }, deadline_ms, now_ms);
                Step::Wait { ticket, ms }
            }
            Some(_) => {
                let all = cx.limiter.leases().end_all();
                if all.is_empty() {
                    cx.limiter.leases().unschedule_wake();
                    return Step::Done;
                }
                let ticket = cx.tickets.new_ticket();
                give_back_now(cx, ticket, all, since_ms, true, now_ms)
            }
            None => Step::Done,
        }
    }
}

/// The call that gives `due` back under `ticket` (`last`: the chain ends after it).
fn give_back_now(
    cx: &mut Cx<'_, '_>,
    ticket: u32,
    due: Vec<crate::limiter::lease::GiveBack>,
    since_ms: f64,
    last: bool,
    now_ms: f64,
) -> Step {
    let tokens = due.iter().map(|g| g.tokens).sum();
    let (call, body) = ScriptCall::give_back(cx.limiter, &due, cx.config.clock, now_ms);
    let deadline_ms = now_ms + f64::from(cx.config.redis_timeout_ms);
    let work = Work::GiveBack { call, tokens, since_ms, last, items: due };
    cx.tickets.call_under(ticket, work, body, deadline_ms, now_ms)
}

/// `items` with those of one key merged, in the order first queued: a slot key's members joined
/// (space-separated: one `ZREM` removes them all), a token bucket's deltas summed (net actual −
/// reserved), a window's charges summed and its refunds summed per window they go back to (the
/// reservation's time); a merged delta stays within the largest capacity, and one that nets to
/// nothing is dropped.
pub(super) fn merge(items: Vec<Settlement<'_>>) -> Vec<Settlement<'_>> {
    let max = i64::from(crate::policy::limit::MAX_CAPACITY);
    let mut out: Vec<Settlement<'_>> = Vec::with_capacity(items.len());
    for s in items {
        let same = out.iter_mut().find(|o| {
            o.key == s.key
                && o.shard == s.shard
                && o.overrides == s.overrides
                && if s.limit.is_concurrency() {
                    o.limit.is_concurrency()
                } else {
                    !o.limit.is_concurrency()
                        && (o.delta + s.delta).abs() <= max
                        && match s.limit.algorithm() {
                            crate::policy::limit::Algorithm::TokenBucket => true,
                            // a charge goes to the current window, a refund to the reservation's
                            _ => (o.delta > 0 && s.delta > 0) || (o.delta < 0 && s.delta < 0 && o.arg == s.arg),
                        }
                }
        });
        match same {
            Some(o) if s.limit.is_concurrency() => {
                o.arg.push(' ');
                o.arg.push_str(&s.arg);
            }
            Some(o) => o.delta += s.delta,
            None => out.push(s),
        }
    }
    out.retain(|s| s.limit.is_concurrency() || s.delta != 0);
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limit::Algorithm;
    use crate::policy::rate::Refill;

    fn item<'a>(key: &str, limit: &'a Limit, delta: i64, arg: &str) -> Settlement<'a> {
        Settlement { key: key.into(), limit, overrides: Vec::new(), delta, arg: arg.into(), shard: None }
    }

    fn shape(items: &[Settlement<'_>]) -> Vec<(String, i64, String)> {
        items.iter().map(|s| (s.key.clone(), s.delta, s.arg.clone())).collect()
    }

    #[test]
    fn a_batch_merges_the_items_of_one_key() {
        let slots = Limit::concurrency(4, 60).unwrap();
        let bucket = Limit::new(100, Refill::parse("100/min").unwrap(), 60).unwrap();
        let window = bucket.clone().with_algorithm(Algorithm::SlidingWindow);
        let merged = merge(vec![
            item("s", &slots, 0, "i.1"),
            item("b", &bucket, 20, "1000"),
            item("s", &slots, 0, "i.2"),
            item("w", &window, -3, "1000"),
            item("b", &bucket, -8, "2000"),
            item("w", &window, -2, "1000"),
            item("w", &window, -4, "9000"), // another window's refund: apart
            item("w", &window, 5, "9000"),  // a charge: apart from the refunds
            item("s2", &slots, 0, "i.3"),
            item("z", &bucket, 4, "1"),
            item("z", &bucket, -4, "2"), // nets to nothing: dropped
        ]);
        let want = [
            ("s", 0, "i.1 i.2"),
            ("b", 12, "1000"),
            ("w", -5, "1000"),
            ("w", -4, "9000"),
            ("w", 5, "9000"),
            ("s2", 0, "i.3"),
        ];
        let want: Vec<(String, i64, String)> =
            want.iter().map(|(k, d, a)| (k.to_string(), *d, a.to_string())).collect();
        assert_eq!(shape(&merged), want);
        // Other override keys: another limit in effect, never merged.
        let mut other = item("b", &bucket, 1, "1");
        other.overrides = vec!["o".into()];
        assert_eq!(merge(vec![item("b", &bucket, 1, "1"), other]).len(), 2);
        // A merged delta stays within the largest capacity.
        let max = i64::from(crate::policy::limit::MAX_CAPACITY);
        assert_eq!(merge(vec![item("b", &bucket, max, "1"), item("b", &bucket, 1, "1")]).len(), 2);
    }
}
