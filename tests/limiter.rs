//! The limiter (EVALSHA recovery, shebang fallback, deny cache, fail modes)
//! against a real Redis, through a transport that speaks the REST protocol's
//! JSON straight to Redis, as vanilla Redis 7 would answer it.

mod common;

use std::cell::{Cell, RefCell};

use common::{block_on, Redis};
use edge_ratelimit::{
    bucket_key, Caller, Check, Clock, Decision, FailMode, Failure, HttpReply, Limit, Limiter, Outcome, Refill,
    RestError, Transport, TransportError, Variant,
};

/// POST body → Redis command → Upstash-shaped reply. Records the command names.
struct Direct {
    redis: Redis,
    con: RefCell<redis::Connection>,
    sent: RefCell<Vec<String>>,
}

impl Direct {
    /// A transport to a Redis of its own.
    fn new() -> Direct {
        let redis = Redis::start();
        let con = RefCell::new(redis.connection());
        Direct { redis, con, sent: RefCell::new(Vec::new()) }
    }

    fn take_sent(&self) -> Vec<String> {
        std::mem::take(&mut self.sent.borrow_mut())
    }
}

impl Transport for Direct {
    async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
        Ok(())
    }

    async fn post(&self, body: String) -> Result<HttpReply, TransportError> {
        let args: Vec<String> = serde_json::from_str(&body).expect("the body is a JSON array of strings");
        self.sent.borrow_mut().push(args[0].clone());
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        let reply = match cmd.query::<Vec<i64>>(&mut self.con.borrow_mut()) {
            Ok(values) => HttpReply { status: 200, body: serde_json::json!({ "result": values }).to_string() },
            Err(e) => {
                let text = format!("{} {}", e.code().unwrap_or("ERR"), e.detail().unwrap_or_default());
                HttpReply { status: 400, body: serde_json::json!({ "error": text }).to_string() }
            }
        };
        Ok(reply)
    }
}

/// A transport that always fails in one way, counting calls.
struct Failing {
    result: Result<HttpReply, TransportError>,
    calls: Cell<usize>,
}

impl Transport for Failing {
    async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
        Ok(())
    }

    async fn post(&self, _body: String) -> Result<HttpReply, TransportError> {
        self.calls.set(self.calls.get() + 1);
        self.result.clone()
    }
}

fn limit(capacity: u32, refill: &str) -> Limit {
    Limit::new(capacity, Refill::parse(refill).unwrap(), 60).unwrap()
}

/// One default-policy limit on `key`, without overrides.
fn check(key: String, limit: &Limit, cost: u32) -> Check<'_> {
    Check { key, policy: "default", limit, cost, shadow: false, rule: "default", overrides: vec![] }
}

fn key(name: &str) -> String {
    bucket_key(&Caller::User(format!("{name}-{}", std::process::id())), "/t")
}

fn decide(limiter: &Limiter, t: &impl Transport, checks: &[Check<'_>], now_ms: f64) -> Result<Decision, Failure> {
    block_on(limiter.decide(t, checks, Clock::Worker, now_ms))
}

#[test]
fn against_vanilla_redis_the_isolate_falls_back_to_the_plain_script_once() {
    let t = Direct::new();
    let limiter = Limiter::default();
    let l = limit(5, "5/min");
    let checks = [check(key("fallback"), &l, 1)];
    let now = 1_800_000_000_000.0;
    assert!(decide(&limiter, &t, &checks, now).unwrap().allowed);
    // EVALSHA of the flagged script (unknown), EVAL of it (flag rejected), EVAL of the plain one.
    assert_eq!(t.take_sent(), ["EVALSHA", "EVAL", "EVAL"]);
    assert_eq!(limiter.variant(), Variant::Plain);
    assert!(decide(&limiter, &t, &checks, now).unwrap().allowed);
    assert_eq!(t.take_sent(), ["EVALSHA"], "one round trip once the script is cached");
}

#[test]
fn after_script_flush_one_eval_reloads_the_script() {
    let t = Direct::new();
    let limiter = Limiter::default();
    let l = limit(5, "5/min");
    let checks = [check(key("flush"), &l, 1)];
    decide(&limiter, &t, &checks, 1e12).unwrap();
    decide(&limiter, &t, &checks, 1e12).unwrap();
    t.take_sent();
    redis::cmd("SCRIPT").arg("FLUSH").query::<()>(&mut t.redis.connection()).unwrap();
    let d = decide(&limiter, &t, &checks, 1e12).unwrap();
    assert!(d.allowed);
    assert_eq!(d.limits[0].remaining, 2, "the bucket survived the flush; only the script was reloaded");
    assert_eq!(t.take_sent(), ["EVALSHA", "EVAL"]);
    // Flushed again within the second, before any EVALSHA worked: the same episode, no second EVAL.
    redis::cmd("SCRIPT").arg("FLUSH").query::<()>(&mut t.redis.connection()).unwrap();
    assert_eq!(decide(&limiter, &t, &checks, 1e12 + 10.0), Err(Failure::Rest(RestError::NoScript)));
    assert_eq!(t.take_sent(), ["EVALSHA"]);
    assert!(decide(&limiter, &t, &checks, 1e12 + 1000.0).unwrap().allowed, "the next episode loads again");
    assert_eq!(t.take_sent(), ["EVALSHA", "EVAL"]);
}

#[test]
fn a_known_empty_caller_costs_no_round_trip_until_its_refill() {
    let t = Direct::new();
    let limiter = Limiter::default();
    let l = limit(2, "1/s");
    let checks = [check(key("denycache"), &l, 1)];
    let now = 1_800_000_000_000.0;
    assert!(decide(&limiter, &t, &checks, now).unwrap().allowed);
    assert!(decide(&limiter, &t, &checks, now).unwrap().allowed);
    let denied = decide(&limiter, &t, &checks, now).unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.limits[0].retry_ms, 1000);
    t.take_sent();

    let cached = decide(&limiter, &t, &checks, now + 400.0).unwrap();
    assert!(!cached.allowed);
    assert_eq!(cached.limits[0].retry_ms, 600);
    assert_eq!(cached.retry_after_s(), 1);
    assert!(t.take_sent().is_empty(), "a cached denial makes no call");
    assert_eq!(limiter.cached_denials(), 1);

    // At the refill time the cache steps aside and Redis decides again.
    assert!(decide(&limiter, &t, &checks, now + 1000.0).unwrap().allowed);
    assert_eq!(t.take_sent(), ["EVALSHA"]);
}

#[test]
fn past_its_maximum_age_one_request_rechecks_while_the_others_stay_denied() {
    let t = Direct::new();
    let limiter = Limiter::new(1000);
    let l = limit(1, "1/min"); // empty for 60 s after one request
    let checks = [check(key("maxage"), &l, 1)];
    let now = 1_800_000_000_000.0;
    assert!(decide(&limiter, &t, &checks, now).unwrap().allowed);
    assert!(!decide(&limiter, &t, &checks, now).unwrap().allowed);
    t.take_sent();
    assert!(!decide(&limiter, &t, &checks, now + 999.0).unwrap().allowed);
    assert!(t.take_sent().is_empty(), "within the maximum age: no call");
    assert!(!decide(&limiter, &t, &checks, now + 1000.0).unwrap().allowed);
    assert_eq!(t.take_sent(), ["EVALSHA"], "one re-check");
    assert!(!decide(&limiter, &t, &checks, now + 1001.0).unwrap().allowed);
    assert!(t.take_sent().is_empty(), "the others keep the denial");
    // An admin reset elsewhere: the next re-check finds a full bucket, and the denial is dropped.
    redis::cmd("DEL").arg(&checks[0].key).query::<i64>(&mut t.con.borrow_mut()).unwrap();
    assert!(decide(&limiter, &t, &checks, now + 2000.0).unwrap().allowed);
    assert_eq!(limiter.cached_denials(), 0);
}

#[test]
fn a_cached_denial_for_a_large_cost_does_not_block_a_smaller_one() {
    let t = Direct::new();
    let limiter = Limiter::default();
    let l = limit(5, "1/s");
    let now = 1_800_000_000_000.0;
    let k = key("costcache");
    let big = [check(k.clone(), &l, 5)];
    let small = [check(k, &l, 1)];
    assert!(decide(&limiter, &t, &big, now).unwrap().allowed);
    assert!(!decide(&limiter, &t, &big, now + 1500.0).unwrap().allowed);
    t.take_sent();
    assert!(decide(&limiter, &t, &small, now + 1500.0).unwrap().allowed, "1.5 tokens pay for a cost of 1");
    assert_eq!(t.take_sent(), ["EVALSHA"]);
}

#[test]
fn failures_are_classified_and_follow_the_fail_mode() {
    let l = limit(5, "5/min");
    let checks = [check(key("fail"), &l, 1)];
    let reply = |status: u16, body: &str| Ok(HttpReply { status, body: body.into() });
    let cases = [
        (Err(TransportError::Timeout), Failure::Timeout, "timeout"),
        (Err(TransportError::Unreachable), Failure::Unreachable, "unreachable"),
        (reply(401, r#"{"error":"Unauthorized"}"#), Failure::Rest(RestError::Unauthorized), "unauthorized"),
        (reply(429, "{}"), Failure::Rest(RestError::Throttled), "throttled"),
        (reply(503, "down"), Failure::Rest(RestError::Server(503)), "server-error"),
        (reply(200, "{"), Failure::Rest(RestError::Malformed(String::new())), "malformed-reply"),
        (reply(200, r#"{"result":[1,0]}"#), Failure::Rest(RestError::Malformed(String::new())), "malformed-reply"),
    ];
    for (result, expected, reason) in cases {
        let t = Failing { result, calls: Cell::new(0) };
        let failure = decide(&Limiter::default(), &t, &checks, 0.0).unwrap_err();
        assert_eq!(std::mem::discriminant(&failure), std::mem::discriminant(&expected), "{failure:?}");
        assert_eq!(failure.reason(), reason);
        assert_eq!(t.calls.get(), 1, "a failure is not retried past the deadline");
        let limiter = Limiter::default();
        assert!(matches!(limiter.outcome(Err(failure.clone()), FailMode::Open, &checks, 0.0), Outcome::FailedOpen(_)));
        assert!(matches!(limiter.outcome(Err(failure), FailMode::Closed, &checks, 0.0), Outcome::FailedClosed(_)));
    }
}

#[test]
fn a_script_error_is_not_retried_forever() {
    let t = Failing {
        result: Ok(HttpReply { status: 400, body: r#"{"error":"NOSCRIPT No matching script"}"#.into() }),
        calls: Cell::new(0),
    };
    let l = limit(5, "5/min");
    let checks = [check(key("noscript"), &l, 1)];
    let failure = decide(&Limiter::default(), &t, &checks, 0.0).unwrap_err();
    assert_eq!(failure, Failure::Rest(RestError::NoScript));
    assert!(t.calls.get() <= 3, "{} calls", t.calls.get());
}

/// Ready on the second poll: lets the test executor interleave requests the way I/O would.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// A script cache that starts empty (as after SCRIPT FLUSH); every call takes one scheduling turn.
struct Flushed {
    loaded: Cell<bool>,
    evals: Cell<usize>,
    evalshas: Cell<usize>,
}

impl Transport for Flushed {
    async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
        YieldOnce(false).await;
        Ok(())
    }

    async fn post(&self, body: String) -> Result<HttpReply, TransportError> {
        YieldOnce(false).await;
        let ok = HttpReply { status: 200, body: r#"{"result":[1,0,4,0,12000,5,60]}"#.into() };
        if body.starts_with(r#"["EVAL","#) {
            self.evals.set(self.evals.get() + 1);
            self.loaded.set(true);
            return Ok(ok);
        }
        self.evalshas.set(self.evalshas.get() + 1);
        if self.loaded.get() {
            Ok(ok)
        } else {
            Ok(HttpReply { status: 400, body: r#"{"error":"NOSCRIPT No matching script. Please use EVAL."}"#.into() })
        }
    }
}

/// Polls every future in turn until all are done (a single-threaded event loop in miniature).
fn run_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..10_000 {
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    *slot = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            return out.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("futures did not finish");
}

#[test]
fn a_burst_after_a_flush_sends_one_eval_per_isolate() {
    let t = Flushed { loaded: Cell::new(false), evals: Cell::new(0), evalshas: Cell::new(0) };
    let limiter = Limiter::default();
    let l = limit(5, "5/min");
    let checks: Vec<[Check<'_>; 1]> = (0..200).map(|i| [check(key(&format!("storm{i}")), &l, 1)]).collect();
    let results = run_all(checks.iter().map(|c| limiter.decide(&t, c, Clock::Redis, 0.0)).collect());
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|d| d.allowed)));
    assert_eq!(t.evals.get(), 1, "one EVAL for 200 concurrent requests");
    assert_eq!(t.evalshas.get(), 200 + 199, "everyone else retried EVALSHA once the script was loaded");
}

/// Answers NOSCRIPT to everything, EVAL included (a broken or hostile endpoint); counts both.
struct AlwaysNoScript {
    evals: Cell<usize>,
    evalshas: Cell<usize>,
}

impl Transport for AlwaysNoScript {
    async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
        YieldOnce(false).await;
        Ok(())
    }

    async fn post(&self, body: String) -> Result<HttpReply, TransportError> {
        YieldOnce(false).await;
        let counter = if body.starts_with(r#"["EVAL","#) { &self.evals } else { &self.evalshas };
        counter.set(counter.get() + 1);
        Ok(HttpReply { status: 400, body: r#"{"error":"NOSCRIPT No matching script. Please use EVAL."}"#.into() })
    }
}

/// Issue 10, item 10: such an endpoint turned 20 concurrent requests into ~90 REST calls. Now one EVAL
/// per isolate per episode (until an EVALSHA works again, or a second has passed), whatever the reply.
#[test]
fn an_endpoint_that_always_answers_noscript_gets_one_eval_per_episode() {
    let t = AlwaysNoScript { evals: Cell::new(0), evalshas: Cell::new(0) };
    let limiter = Limiter::default();
    let l = limit(5, "5/min");
    let checks: Vec<[Check<'_>; 1]> = (0..20).map(|i| [check(key(&format!("noscript{i}")), &l, 1)]).collect();
    let burst = |now: f64| {
        let results = run_all(checks.iter().map(|c| limiter.decide(&t, c, Clock::Redis, now)).collect());
        assert!(results.iter().all(|r| r.as_ref().is_err_and(|f| f.reason() == "redis-error")), "{results:?}");
    };
    let now = 1_800_000_000_000.0;
    burst(now);
    assert_eq!((t.evals.get(), t.evalshas.get()), (1, 20), "20 requests: one EVAL, no EVALSHA retried");
    burst(now + 500.0);
    assert_eq!((t.evals.get(), t.evalshas.get()), (1, 40), "the same episode: no EVAL at all");
    burst(now + 1500.0);
    assert_eq!(t.evals.get(), 2, "a second later, one EVAL tries again");
}

#[test]
fn fail_open_is_still_bounded_by_a_local_bucket_per_key() {
    let limiter = Limiter::default();
    let l = limit(3, "1/s");
    let checks = [check(key("outage"), &l, 1)];
    let other = [check(key("outage-other"), &l, 1)];
    let down = || Err(Failure::Timeout);
    let now = 1_800_000_000_000.0;
    for _ in 0..3 {
        assert!(matches!(limiter.outcome(down(), FailMode::Open, &checks, now), Outcome::FailedOpen(Failure::Timeout)));
    }
    match limiter.outcome(down(), FailMode::Open, &checks, now) {
        Outcome::DeniedLocally(d, Failure::Timeout) => assert_eq!(d.retry_after_s(), 1),
        other => panic!("expected a local denial, got {other:?}"),
    }
    assert!(matches!(limiter.outcome(down(), FailMode::Open, &other, now), Outcome::FailedOpen(_)), "per key");
    assert!(matches!(limiter.outcome(down(), FailMode::Open, &checks, now + 1000.0), Outcome::FailedOpen(_)));
    assert!(matches!(limiter.outcome(down(), FailMode::Closed, &checks, now), Outcome::FailedClosed(_)));
}
