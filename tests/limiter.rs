//! The limiter (EVALSHA recovery, shebang fallback, deny cache, fail modes) against a real Redis that
//! the REST protocol reaches as vanilla Redis 7 answers it — one script call at a time through
//! [`ScriptCall`], and many at once through the gateway, interleaved as an event loop would.

mod common;

use std::cell::Cell;
use std::collections::VecDeque;

use common::{header, status, Req, Rest};
use edge_ratelimit::bucket::Mode;
use edge_ratelimit::{
    bucket_key, Caller, Check, Clock, Config, Decision, FailMode, Failure, Fetch, Gateway, Limit, Limiter, Next,
    Outcome, Refill, Reply, Request, RestError, ScriptCall, Step, TransportError, Variant,
};

fn limit(capacity: u32, refill: &str) -> Limit {
    Limit::new(capacity, Refill::parse(refill).unwrap(), 60).unwrap()
}

/// One default-policy limit on `key`, without overrides.
fn check(key: String, limit: &Limit, cost: u32) -> Check<'_> {
    Check { key, name: "default", limit, cost, mode: Mode::Enforce, rule: "default", overrides: vec![] }
}

fn key(name: &str) -> String {
    bucket_key(&Caller::User(format!("{name}-{}", std::process::id())), "/t")
}

/// One decision as the gateway makes it: the deny cache, then the script call to its end, each POST
/// answered by `endpoint`.
fn decide_with(
    limiter: &Limiter,
    checks: &[Check<'_>],
    now_ms: f64,
    endpoint: impl Fn(&str) -> Result<(u16, String), TransportError>,
) -> Result<Decision, Failure> {
    if let Some(denied) = limiter.cached_denial(checks, now_ms) {
        return Ok(denied);
    }
    let deadline = now_ms + 500.0;
    let (mut call, mut next) = ScriptCall::start(limiter, checks, Clock::Worker, now_ms, false);
    loop {
        next = match next {
            Next::Send(body) => {
                let reply = endpoint(&body);
                call.on_reply(limiter, reply.as_ref().map(|(s, b)| (*s, b.as_str())).map_err(|e| *e), now_ms, deadline)
            }
            Next::Wait(_) => call.on_wake(limiter, now_ms, deadline),
            Next::Done(result) => return limiter.decided(checks, result, call.wants(), now_ms),
            other => panic!("one database: never {other:?}"),
        };
    }
}

fn decide(limiter: &Limiter, rest: &Rest, checks: &[Check<'_>], now_ms: f64) -> Result<Decision, Failure> {
    decide_with(limiter, checks, now_ms, |body| {
        Ok(rest.answer(&Fetch { ticket: 0, pipeline: false, body: body.to_string(), timeout_ms: 500, shard: 0 }))
    })
}

#[test]
fn against_vanilla_redis_the_isolate_falls_back_to_the_plain_script_once() {
    let rest = Rest::new();
    let limiter = Limiter::default();
    let l = limit(5, "5/min");
    let checks = [check(key("fallback"), &l, 1)];
    let now = 1_800_000_000_000.0;
    assert!(decide(&limiter, &rest, &checks, now).unwrap().allowed);
    // EVALSHA of the flagged script (unknown), EVAL of it (flag rejected), EVAL of the plain one.
    assert_eq!(rest.take_sent(), ["EVALSHA", "EVAL", "EVAL"]);
    assert_eq!(limiter.variant(), Variant::Plain);
    assert!(decide(&limiter, &rest, &checks, now).unwrap().allowed);
    assert_eq!(rest.take_sent(), ["EVALSHA"], "one round trip once the script is cached");
}

#[test]
fn after_script_flush_one_eval_reloads_the_script() {
    let rest = Rest::new();
    let limiter = Limiter::default();
    let l = limit(5, "5/min");
    let checks = [check(key("flush"), &l, 1)];
    decide(&limiter, &rest, &checks, 1e12).unwrap();
    decide(&limiter, &rest, &checks, 1e12).unwrap();
    rest.take_sent();
    rest.redis(&["SCRIPT", "FLUSH"]);
    let d = decide(&limiter, &rest, &checks, 1e12).unwrap();
    assert!(d.allowed);
    assert_eq!(d.limits[0].remaining, 2, "the bucket survived the flush; only the script was reloaded");
    assert_eq!(rest.take_sent(), ["EVALSHA", "EVAL"]);
    // Flushed again within the second, before any EVALSHA worked: the same episode, no second EVAL.
    rest.redis(&["SCRIPT", "FLUSH"]);
    assert_eq!(decide(&limiter, &rest, &checks, 1e12 + 10.0), Err(Failure::Rest(RestError::NoScript)));
    assert_eq!(rest.take_sent(), ["EVALSHA"]);
    assert!(decide(&limiter, &rest, &checks, 1e12 + 1000.0).unwrap().allowed, "the next episode loads again");
    assert_eq!(rest.take_sent(), ["EVALSHA", "EVAL"]);
}

#[test]
fn a_known_empty_caller_costs_no_round_trip_until_its_refill() {
    let rest = Rest::new();
    let limiter = Limiter::default();
    let l = limit(2, "1/s");
    let checks = [check(key("denycache"), &l, 1)];
    let now = 1_800_000_000_000.0;
    assert!(decide(&limiter, &rest, &checks, now).unwrap().allowed);
    assert!(decide(&limiter, &rest, &checks, now).unwrap().allowed);
    let denied = decide(&limiter, &rest, &checks, now).unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.limits[0].retry_ms, 1000);
    rest.take_sent();

    let cached = decide(&limiter, &rest, &checks, now + 400.0).unwrap();
    assert!(!cached.allowed);
    assert_eq!(cached.limits[0].retry_ms, 600);
    assert_eq!(cached.retry_after_s(), 1);
    assert!(rest.take_sent().is_empty(), "a cached denial makes no call");
    assert_eq!(limiter.cached_denials(), 1);
    assert_eq!(limiter.take_counts(), (1, 1), "one load (the first call), one deny-cache hit");

    // At the refill time the cache steps aside and Redis decides again.
    assert!(decide(&limiter, &rest, &checks, now + 1000.0).unwrap().allowed);
    assert_eq!(rest.take_sent(), ["EVALSHA"]);
}

#[test]
fn past_its_maximum_age_one_request_rechecks_while_the_others_stay_denied() {
    let rest = Rest::new();
    let limiter = Limiter::new(1000);
    let l = limit(1, "1/min"); // empty for 60 s after one request
    let checks = [check(key("maxage"), &l, 1)];
    let now = 1_800_000_000_000.0;
    assert!(decide(&limiter, &rest, &checks, now).unwrap().allowed);
    assert!(!decide(&limiter, &rest, &checks, now).unwrap().allowed);
    rest.take_sent();
    assert!(!decide(&limiter, &rest, &checks, now + 999.0).unwrap().allowed);
    assert!(rest.take_sent().is_empty(), "within the maximum age: no call");
    assert!(!decide(&limiter, &rest, &checks, now + 1000.0).unwrap().allowed);
    assert_eq!(rest.take_sent(), ["EVALSHA"], "one re-check");
    assert!(!decide(&limiter, &rest, &checks, now + 1001.0).unwrap().allowed);
    assert!(rest.take_sent().is_empty(), "the others keep the denial");
    // An admin reset elsewhere: the next re-check finds a full bucket, and the denial is dropped.
    rest.redis(&["DEL", &checks[0].key]);
    assert!(decide(&limiter, &rest, &checks, now + 2000.0).unwrap().allowed);
    assert_eq!(limiter.cached_denials(), 0);
}

#[test]
fn a_cached_denial_for_a_large_cost_does_not_block_a_smaller_one() {
    let rest = Rest::new();
    let limiter = Limiter::default();
    let l = limit(5, "1/s");
    let now = 1_800_000_000_000.0;
    let k = key("costcache");
    let big = [check(k.clone(), &l, 5)];
    let small = [check(k, &l, 1)];
    assert!(decide(&limiter, &rest, &big, now).unwrap().allowed);
    assert!(!decide(&limiter, &rest, &big, now + 1500.0).unwrap().allowed);
    rest.take_sent();
    assert!(decide(&limiter, &rest, &small, now + 1500.0).unwrap().allowed, "1.5 tokens pay for a cost of 1");
    assert_eq!(rest.take_sent(), ["EVALSHA"]);
}

#[test]
fn failures_are_classified_and_follow_the_fail_mode() {
    let l = limit(5, "5/min");
    let checks = [check(key("fail"), &l, 1)];
    let reply = |status: u16, body: &str| Ok((status, body.to_string()));
    let cases = [
        (Err(TransportError::Timeout), Failure::Timeout, "timeout"),
        (Err(TransportError::Unreachable), Failure::Unreachable, "unreachable"),
        (reply(401, r#"{"error":"Unauthorized"}"#), Failure::Rest(RestError::Unauthorized), "unauthorized"),
        (reply(429, "{}"), Failure::Rest(RestError::Throttled), "throttled"),
        (reply(503, "down"), Failure::Rest(RestError::Server(503)), "server-error"),
        (reply(307, ""), Failure::Rest(RestError::Redirect(307)), "redirected"),
        (reply(200, "{"), Failure::Rest(RestError::Malformed(String::new())), "malformed-reply"),
        (reply(200, r#"{"result":[1,0]}"#), Failure::Rest(RestError::Malformed(String::new())), "malformed-reply"),
    ];
    for (result, expected, reason) in cases {
        let calls = Cell::new(0);
        let failure = decide_with(&Limiter::default(), &checks, 0.0, |_| {
            calls.set(calls.get() + 1);
            result.clone()
        })
        .unwrap_err();
        assert_eq!(std::mem::discriminant(&failure), std::mem::discriminant(&expected), "{failure:?}");
        assert_eq!(failure.reason(), reason);
        assert_eq!(calls.get(), 1, "a failure is not retried past the deadline");
        let limiter = Limiter::default();
        assert!(matches!(limiter.outcome(Err(failure.clone()), FailMode::Open, &checks, 0.0), Outcome::FailedOpen(..)));
        assert!(matches!(limiter.outcome(Err(failure), FailMode::Closed, &checks, 0.0), Outcome::FailedClosed(_)));
    }
}

#[test]
fn a_script_error_is_not_retried_forever() {
    let l = limit(5, "5/min");
    let checks = [check(key("noscript"), &l, 1)];
    let calls = Cell::new(0);
    let failure = decide_with(&Limiter::default(), &checks, 0.0, |_| {
        calls.set(calls.get() + 1);
        Ok((400, r#"{"error":"NOSCRIPT No matching script"}"#.to_string()))
    })
    .unwrap_err();
    assert_eq!(failure, Failure::Rest(RestError::NoScript));
    assert_eq!(calls.get(), 2, "one EVALSHA, one EVAL");
}

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"), ("UPSTASH_REDIS_REST_TOKEN", "t")];
    vars.extend_from_slice(extra);
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

/// Runs `reqs` through `gw` at once, as one event loop would: every step's I/O is queued, and
/// completed one at a time in order (a fetch answered by `endpoint`, a wait simply over). The final
/// step of each.
fn concurrently(gw: &mut Gateway<'_>, reqs: &[Req], now: f64, endpoint: impl Fn(&Fetch) -> (u16, String)) -> Vec<Step> {
    let mut queue: VecDeque<(usize, Step)> = VecDeque::new();
    for (i, req) in reqs.iter().enumerate() {
        let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
        queue.push_back((i, gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, now)));
    }
    let mut finals: Vec<Option<Step>> = reqs.iter().map(|_| None).collect();
    while let Some((i, step)) = queue.pop_front() {
        match step {
            Step::Fetch(f) => {
                let (status, body) = endpoint(&f);
                queue.push_back((i, gw.resume(f.ticket, Reply::Http { status, body: &body }, now)));
            }
            Step::Wait { ticket, .. } => queue.push_back((i, gw.resume(ticket, Reply::Woke, now))),
            done => {
                // A fetch after the response (the read of which overrides exist) is carried out too.
                if let Step::Respond { report: Some(f), .. } | Step::Forward { report: Some(f), .. } = &done {
                    let (status, body) = endpoint(f);
                    assert_eq!(gw.resume(f.ticket, Reply::Http { status, body: &body }, now), Step::Done);
                }
                finals[i] = Some(done)
            }
        }
    }
    assert_eq!(gw.pending(), 0, "every ticket was resumed");
    finals.into_iter().map(Option::unwrap).collect()
}

const DECIDED: &str = r#"{"result":[1,0,4,0,12000,5,60,0,1700000000000]}"#;
/// The reply to the read of which overrides exist: none.
const NO_OVERRIDES: &str = r#"[{"result":null},{"result":[]}]"#;
const NOSCRIPT: &str = r#"{"error":"NOSCRIPT No matching script. Please use EVAL."}"#;

fn users(gw: &Gateway<'_>, prefix: &str, n: usize) -> Vec<Req> {
    (0..n).map(|i| Req::new(gw, "GET", "/api/x", &[("x-user-id", &format!("{prefix}{i}"))])).collect()
}

#[test]
fn a_burst_after_a_flush_sends_one_eval_per_isolate() {
    let config = config(&[]);
    let mut gw = Gateway::new(&config);
    let (loaded, evals, evalshas) = (Cell::new(false), Cell::new(0), Cell::new(0));
    let reqs = users(&gw, "storm", 200);
    let finals = concurrently(&mut gw, &reqs, 1.8e12, |f| {
        if f.pipeline {
            return (200, NO_OVERRIDES.into()); // the read of which overrides exist, after a response
        }
        if f.body.starts_with(r#"["EVAL","#) {
            evals.set(evals.get() + 1);
            loaded.set(true);
            return (200, DECIDED.into());
        }
        evalshas.set(evalshas.get() + 1);
        if loaded.get() {
            (200, DECIDED.into())
        } else {
            (400, NOSCRIPT.into())
        }
    });
    assert!(finals.iter().all(|s| status(s) == 200 && header(s, "x-ratelimit-status").is_none()), "{:?}", finals[1]);
    assert_eq!(evals.get(), 1, "one EVAL for 200 concurrent requests");
    assert_eq!(evalshas.get(), 200 + 199, "everyone else retried EVALSHA once the script was loaded");
}

/// Issue 10, item 10: such an endpoint turned 20 concurrent requests into ~90 REST calls. Now one EVAL
/// per isolate per episode (until an EVALSHA works again, or a second has passed), whatever the reply.
#[test]
fn an_endpoint_that_always_answers_noscript_gets_one_eval_per_episode() {
    let config = config(&[]);
    let mut gw = Gateway::new(&config);
    let (evals, evalshas) = (Cell::new(0), Cell::new(0));
    let endpoint = |f: &Fetch| {
        if f.pipeline {
            return (200, NO_OVERRIDES.to_string()); // the read of which overrides exist
        }
        let counter = if f.body.starts_with(r#"["EVAL","#) { &evals } else { &evalshas };
        counter.set(counter.get() + 1);
        (400, NOSCRIPT.to_string())
    };
    let now = 1_800_000_000_000.0;
    for (round, at) in [now, now + 500.0].into_iter().enumerate() {
        let reqs = users(&gw, &format!("noscript{round}-"), 20);
        let finals = concurrently(&mut gw, &reqs, at, endpoint);
        assert!(finals.iter().all(|s| header(s, "x-ratelimit-status") == Some("degraded; reason=redis-error")));
    }
    assert_eq!((evals.get(), evalshas.get()), (1, 40), "40 requests in one episode: one EVAL, no EVALSHA retried");
    let reqs = users(&gw, "noscript-later-", 20);
    concurrently(&mut gw, &reqs, now + 1500.0, endpoint);
    assert_eq!(evals.get(), 2, "a second later, one EVAL tries again");
}

#[test]
fn a_load_whose_answer_never_comes_holds_the_others_only_until_its_deadline() {
    let config = config(&[("REDIS_TIMEOUT_MS", "100")]);
    let mut gw = Gateway::new(&config);
    let now = 1.8e12;
    let reqs = users(&gw, "stuck", 2);
    let begin = |gw: &mut Gateway<'_>, r: &Req| {
        let headers: Vec<Option<&str>> = r.headers.iter().map(|h| h.as_deref()).collect();
        gw.begin(&Request { method: &r.method, url: &r.url, headers: &headers }, now)
    };
    let (Step::Fetch(a), Step::Fetch(b)) = (begin(&mut gw, &reqs[0]), begin(&mut gw, &reqs[1])) else { panic!() };
    let Step::Fetch(eval) = gw.resume(a.ticket, Reply::Http { status: 400, body: NOSCRIPT }, now) else { panic!() };
    assert!(eval.body.starts_with(r#"["EVAL","#));
    let Step::Wait { ticket, .. } = gw.resume(b.ticket, Reply::Http { status: 400, body: NOSCRIPT }, now) else {
        panic!()
    };
    // The loader's EVAL never comes back; the waiter gives up at its own deadline, as a timeout.
    let mut step = gw.resume(ticket, Reply::Woke, now + 50.0);
    while let Step::Wait { ticket, .. } = step {
        step = gw.resume(ticket, Reply::Woke, now + 100.0);
    }
    assert_eq!(header(&step, "x-ratelimit-status"), Some("degraded; reason=timeout"));
    if let Step::Forward { report: Some(f), .. } = &step {
        gw.resume(f.ticket, Reply::Timeout, now + 100.0); // (the read of which overrides exist)
    }
    assert_eq!(gw.pending(), 1, "only the loader's ticket is left");
    let late = gw.resume(eval.ticket, Reply::Timeout, now + 101.0);
    assert_eq!(header(&late, "x-ratelimit-status"), Some("degraded; reason=timeout"));
    assert_eq!(gw.pending(), 0);
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
        assert!(matches!(
            limiter.outcome(down(), FailMode::Open, &checks, now),
            Outcome::FailedOpen(Failure::Timeout, _)
        ));
    }
    match limiter.outcome(down(), FailMode::Open, &checks, now) {
        Outcome::DeniedLocally(d, Failure::Timeout) => assert_eq!(d.retry_after_s(), 1),
        other => panic!("expected a local denial, got {other:?}"),
    }
    assert!(matches!(limiter.outcome(down(), FailMode::Open, &other, now), Outcome::FailedOpen(..)), "per key");
    assert!(matches!(limiter.outcome(down(), FailMode::Open, &checks, now + 1000.0), Outcome::FailedOpen(..)));
    assert!(matches!(limiter.outcome(down(), FailMode::Closed, &checks, now), Outcome::FailedClosed(_)));
}
