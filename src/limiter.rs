//! The limiter: one isolate's view of the shared buckets. It asks Redis (one
//! EVALSHA for every limit of a request), remembers denials so that a caller
//! known to be empty costs no round trip, recovers from `NOSCRIPT` and from
//! servers that reject the script's shebang, and turns failures into the
//! configured fail mode. Time and the network come in from the edge.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::config::{Clock, FailMode};
use crate::decision::{Decision, LimitStatus};
use crate::limit::Limit;
use crate::script::Variant;
use crate::upstash::{eval_body, evalsha_body, parse_script_reply, RestError};

/// An HTTP reply from the REST endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The decision's deadline passed.
    Timeout,
    /// The endpoint could not be reached (DNS, connect, TLS, reset).
    Unreachable,
}

/// The one seam to the network: POST a JSON body to the REST endpoint. The
/// transport owns the deadline of the whole decision.
#[allow(async_fn_in_trait)] // the Worker is single-threaded: no Send bound wanted
pub trait Transport {
    async fn post(&self, body: String) -> Result<HttpReply, TransportError>;
}

/// One limit that applies to a request.
#[derive(Clone, Debug)]
pub struct Check<'a> {
    pub key: String,
    pub policy: &'static str,
    pub limit: &'a Limit,
    pub cost: u32,
}

/// Why no decision came from Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Unreachable,
    Rest(RestError),
}

impl Failure {
    /// A short reason for logs and the degraded-response header; no internal detail.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Rest(RestError::Unauthorized) => "unauthorized",
            Failure::Rest(RestError::Throttled) => "throttled",
            Failure::Rest(RestError::Server(_)) => "server-error",
            Failure::Rest(RestError::Malformed(_)) => "malformed-reply",
            Failure::Rest(RestError::NoScript | RestError::ShebangRejected | RestError::Redis(_)) => "redis-error",
        }
    }
}

/// What the gateway does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed(Decision),
    Denied(Decision),
    /// Redis failed and the fail mode is open: forward, marked as not rate-limited.
    FailedOpen(Failure),
    /// Redis failed and the fail mode is closed: 503.
    FailedClosed(Failure),
}

/// Applies the fail mode to a decision attempt.
pub fn outcome(result: Result<Decision, Failure>, mode: FailMode) -> Outcome {
    match (result, mode) {
        (Ok(d), _) if d.allowed => Outcome::Allowed(d),
        (Ok(d), _) => Outcome::Denied(d),
        (Err(f), FailMode::Open) => Outcome::FailedOpen(f),
        (Err(f), FailMode::Closed) => Outcome::FailedClosed(f),
    }
}

/// How many denials an isolate remembers; beyond it, expired entries are dropped, and if none
/// are, the cache starts over (losing only a shortcut, never correctness).
pub const DENY_CACHE_ENTRIES: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Denial {
    /// Until then (Worker ms) this bucket cannot pay `cost`.
    until_ms: f64,
    full_at_ms: f64,
    cost: u32,
}

/// Per-isolate limiter state. Nothing here is authoritative: the deny cache
/// only ever says no, and only until Redis said the bucket refills.
#[derive(Debug)]
pub struct Limiter {
    variant: Cell<Variant>,
    denials: RefCell<HashMap<String, Denial>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { variant: Cell::new(Variant::Flagged), denials: RefCell::new(HashMap::new()) }
    }
}

impl Limiter {
    /// Decides `checks` all-or-nothing. `now_ms` is the Worker's clock: it
    /// drives the deny cache, and the buckets too in [`Clock::Worker`] mode.
    pub async fn decide<T: Transport>(
        &self,
        transport: &T,
        checks: &[Check<'_>],
        clock: Clock,
        now_ms: f64,
    ) -> Result<Decision, Failure> {
        if let Some(denied) = self.cached_denial(checks, now_ms) {
            return Ok(denied);
        }
        let keys: Vec<String> = checks.iter().map(|c| c.key.clone()).collect();
        let mut args = Vec::with_capacity(1 + 4 * checks.len());
        args.push(match clock {
            Clock::Redis => String::new(),
            Clock::Worker => format!("{}", now_ms.floor()),
        });
        for c in checks {
            args.push(c.limit.capacity().to_string());
            args.push(c.limit.refill().tokens_per_second().to_string());
            args.push(c.limit.ttl_seconds().to_string());
            args.push(c.cost.to_string());
        }

        let mut variant = self.variant.get();
        let mut reply = self.call(transport, evalsha_body(variant, &keys, &args)).await;
        // At most: NOSCRIPT → EVAL → shebang rejected → EVAL of the plain variant.
        for _ in 0..2 {
            let body = match &reply {
                Err(Failure::Rest(RestError::NoScript)) => eval_body(variant, &keys, &args),
                Err(Failure::Rest(RestError::ShebangRejected)) if variant == Variant::Flagged => {
                    variant = Variant::Plain;
                    self.variant.set(variant);
                    eval_body(variant, &keys, &args)
                }
                _ => break,
            };
            reply = self.call(transport, body).await;
        }
        let limits: Vec<(&'static str, &Limit)> = checks.iter().map(|c| (c.policy, c.limit)).collect();
        let decision = Decision::from_script(&reply?, &limits).map_err(Failure::Rest)?;
        if let Some(i) = decision.denied_by {
            self.remember_denial(&checks[i], &decision.limits[i], now_ms);
        }
        Ok(decision)
    }

    /// The script variant this isolate sends (it falls back to plain once for its lifetime).
    pub fn variant(&self) -> Variant {
        self.variant.get()
    }

    async fn call<T: Transport>(&self, transport: &T, body: String) -> Result<Vec<i64>, Failure> {
        let reply = transport.post(body).await.map_err(|e| match e {
            TransportError::Timeout => Failure::Timeout,
            TransportError::Unreachable => Failure::Unreachable,
        })?;
        parse_script_reply(reply.status, &reply.body).map_err(Failure::Rest)
    }

    fn cached_denial(&self, checks: &[Check<'_>], now_ms: f64) -> Option<Decision> {
        let denials = self.denials.borrow();
        if denials.is_empty() {
            return None;
        }
        let (i, denial) = checks.iter().enumerate().find_map(|(i, c)| {
            let d = denials.get(&c.key)?;
            (now_ms < d.until_ms && c.cost >= d.cost).then_some((i, *d))
        })?;
        let limits = checks
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let (remaining, retry_ms, reset_ms) = if j == i {
                    (0, (denial.until_ms - now_ms).ceil() as u64, (denial.full_at_ms - now_ms).max(0.0).ceil() as u64)
                } else {
                    (u64::from(c.limit.capacity()), 0, 0) // not asked: Redis was not called
                };
                LimitStatus {
                    policy: c.policy,
                    capacity: c.limit.capacity(),
                    window_s: c.limit.window_seconds(),
                    remaining,
                    retry_ms,
                    reset_ms,
                }
            })
            .collect();
        Some(Decision { allowed: false, denied_by: Some(i), limits })
    }

    fn remember_denial(&self, check: &Check<'_>, status: &LimitStatus, now_ms: f64) {
        let mut denials = self.denials.borrow_mut();
        if denials.len() >= DENY_CACHE_ENTRIES {
            denials.retain(|_, d| d.until_ms > now_ms);
            if denials.len() >= DENY_CACHE_ENTRIES {
                denials.clear();
            }
        }
        let denial = Denial {
            until_ms: now_ms + status.retry_ms as f64,
            full_at_ms: now_ms + status.reset_ms as f64,
            cost: check.cost,
        };
        denials.insert(check.key.clone(), denial);
    }

    /// Entries in the deny cache (for tests and metrics).
    pub fn cached_denials(&self) -> usize {
        self.denials.borrow().len()
    }
}
