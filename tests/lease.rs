//! Leases through the gateway's one entry, against a real Redis: several isolates (gateways) sharing
//! one bucket, each answering a busy key from its lease without a round trip, never admitting more
//! than the bucket allows, and — once the leases are given back — admitting exactly the allowance.
//! Time is the Worker's clock (`RATE_LIMIT_CLOCK = worker`), so the allowance is known exactly.

mod common;

use common::{header, status, Req, Rest};
use edge_ratelimit::{Config, Gateway, Reply, Request, Step, Totals};
use serde_json::Value;

const T0: f64 = 1.8e12;

fn config(extra: &[(&str, &str)]) -> Config {
    common::worker_clock_config(extra)
}

/// One isolate: its gateway, and the wakes it was asked to carry out later (ticket, when).
struct Isolate<'c> {
    gw: Gateway<'c>,
    wakes: Vec<(u32, f64)>,
    /// A broken or hostile endpoint: every lease its replies grant claims this many tokens.
    inflate: Option<i64>,
}

/// What the REST endpoint was asked, by kind: decisions and give-backs are counted by their EVALSHA.
#[derive(Default, Debug)]
struct Calls {
    decisions: usize,
    /// How many limits each decision call carried.
    decision_limits: Vec<usize>,
    give_backs: usize,
    other: usize,
}

impl<'c> Isolate<'c> {
    fn new(config: &'c Config) -> Isolate<'c> {
        Isolate { gw: Gateway::new(config), wakes: Vec::new(), inflate: None }
    }

    /// Carries `step` out at `now` (every fetch answered at once), keeping any wake for later.
    fn carry(&mut self, rest: &Rest, mut step: Step, now: f64, calls: &mut Calls) -> Step {
        loop {
            step = match step {
                Step::Fetch(f) => {
                    if f.pipeline || f.body.starts_with("[\"EVAL\",") {
                        calls.other += 1; // a report, or the script's load after NOSCRIPT
                    } else if f.body.contains("\"2\"") && is_give_back(&f.body) {
                        calls.give_backs += 1;
                    } else {
                        calls.decisions += 1;
                        let args: Vec<String> = serde_json::from_str(&f.body).unwrap();
                        let keys: usize = args[2].parse().unwrap();
                        calls.decision_limits.push(args[3 + keys + 2].parse().unwrap());
                    }
                    let (status, mut body) = rest.answer(&f);
                    if let (Some(claim), Ok(mut reply)) = (self.inflate, serde_json::from_str::<Value>(&body)) {
                        if let Some(ints) = reply["result"].as_array_mut() {
                            for i in (7..ints.len()).step_by(6) {
                                if ints[i].as_i64().is_some_and(|v| v > 0) {
                                    ints[i] = claim.into();
                                }
                            }
                            body = reply.to_string();
                        }
                    }
                    self.gw.resume(f.ticket, Reply::Http { status, body: &body }, now)
                }
                Step::Wait { ticket, ms } => {
                    self.wakes.push((ticket, now + f64::from(ms)));
                    return Step::Done;
                }
                Step::Forward { wake, ref report, .. } | Step::Return { wake, ref report, .. } => {
                    if let Some(f) = report {
                        calls.other += 1;
                        let (status, body) = rest.answer(f);
                        assert_eq!(self.gw.resume(f.ticket, Reply::Http { status, body: &body }, now), Step::Done);
                    }
                    if let Some(w) = wake {
                        self.wakes.push((w.ticket, now + f64::from(w.ms)));
                    }
                    return step;
                }
                other => return other,
            };
        }
    }

    /// Carries out the wakes due by `now` (and what follows them).
    fn wake(&mut self, rest: &Rest, now: f64, calls: &mut Calls) {
        let due: Vec<(u32, f64)> = self.wakes.iter().copied().filter(|(_, at)| *at <= now).collect();
        self.wakes.retain(|(_, at)| *at > now);
        for (ticket, _) in due {
            let step = self.gw.resume(ticket, Reply::Woke, now);
            assert!(matches!(self.carry(rest, step, now, calls), Step::Done));
        }
    }

    fn request(&mut self, rest: &Rest, user: &str, now: f64, calls: &mut Calls) -> Step {
        self.wake(rest, now, calls);
        let req = Req::new(&self.gw, "GET", "/api/busy", &[("x-user-id", user)]);
        let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
        let step = self.gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, now);
        self.carry(rest, step, now, calls)
    }
}

/// Whether an EVALSHA/EVAL body is a give-back call (`ARGV[2]` = "2").
fn is_give_back(body: &str) -> bool {
    let args: Vec<String> = serde_json::from_str(body).unwrap();
    let n: usize = args[2].parse().unwrap();
    args[3 + n + 1] == "2"
}

/// `r=` of a response's `RateLimit` field.
fn remaining(step: &Step) -> u64 {
    let field = header(step, "ratelimit").expect("a RateLimit field");
    field.split(";r=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap()
}

/// Requests of one busy user spread over `isolates`, 1 ms apart; then, after every lease has ended
/// and been given back, requests until the bucket denies. Returns (admitted while busy, admitted in
/// all, the allowance, calls while busy, requests while busy).
fn busy(
    extra: &[(&str, &str)],
    isolates: usize,
    requests: usize,
    capacity: f64,
    per_second: f64,
) -> (u64, u64, u64, Calls, usize) {
    let rest = Rest::new();
    let c = config(extra);
    let mut all: Vec<Isolate<'_>> = (0..isolates).map(|_| Isolate::new(&c)).collect();
    let mut calls = Calls::default();
    let mut admitted = 0;
    let mut now = T0;
    for i in 0..requests {
        now += 1.0;
        if status(&all[i % isolates].request(&rest, "busy", now, &mut calls)) == 200 {
            admitted += 1;
        }
    }
    let busy_calls = std::mem::take(&mut calls);
    let busy_admitted = admitted;
    // Every lease ends within its horizon; the wakes give the tokens back.
    now += 5_000.0;
    for iso in &mut all {
        iso.wake(&rest, now, &mut calls);
        iso.wake(&rest, now + 100.0, &mut calls);
    }
    for iso in &all {
        assert_eq!(iso.gw.limiter().leased_tokens(), 0, "every lease given back");
    }
    now += 100.0;
    // One isolate drains what is left, 1 ms apart (a refill of `per_second` adds to the allowance).
    let mut denied = 0;
    while denied < 3 {
        now += 1.0;
        match status(&all[0].request(&rest, "busy", now, &mut calls)) {
            200 => admitted += 1,
            _ => denied += 1,
        }
        assert!(admitted < 1_000_000, "the bucket never ran dry");
    }
    // Every lease of that drain given back too: nothing more could have been admitted.
    let elapsed_s = (now - (T0 + 1.0)) / 1000.0;
    let allowance = (capacity + per_second * elapsed_s).floor() as u64;
    (busy_admitted, admitted, allowance, busy_calls, requests)
}

#[test]
fn two_isolates_spend_leases_without_calls_and_admit_exactly_the_allowance() {
    let (busy_admitted, admitted, allowance, calls, requests) =
        busy(&[("RATE_LIMIT_CAPACITY", "3000"), ("RATE_LIMIT_REFILL", "3000/d")], 2, 2_000, 3000.0, 3000.0 / 86_400.0);
    assert_eq!(busy_admitted, 2_000, "all of the busy traffic fits the bucket");
    assert!(
        (calls.decisions as f64) / (requests as f64) <= 0.1,
        "a busy key costs at most 0.1 decision calls per request: {calls:?}"
    );
    assert_eq!(admitted, allowance, "once the leases are back, exactly the allowance ({calls:?})");
}

#[test]
fn isolates_sharing_a_bucket_never_admit_beyond_it_while_leases_are_out() {
    for isolates in [2, 5] {
        let (busy_admitted, admitted, allowance, calls, _) = busy(
            &[("RATE_LIMIT_CAPACITY", "400"), ("RATE_LIMIT_REFILL", "400/h")],
            isolates,
            3_000,
            400.0,
            400.0 / 3600.0,
        );
        assert!(busy_admitted <= allowance, "{isolates} isolates admitted {busy_admitted} > {allowance}");
        assert!(calls.decisions < 3_000, "leases saved calls: {calls:?}");
        assert_eq!(admitted, allowance, "{isolates} isolates: exactly the allowance once the leases are back");
    }
    // Short leases: several grants of a key end before a wake, and go back in one entry per key.
    let (_, admitted, allowance, _, _) = busy(
        &[("RATE_LIMIT_CAPACITY", "400"), ("RATE_LIMIT_REFILL", "400/h"), ("RATE_LIMIT_LEASE_MS", "15")],
        2,
        3_000,
        400.0,
        400.0 / 3600.0,
    );
    assert_eq!(admitted, allowance, "short leases: exactly the allowance once they are back");
}

#[test]
fn a_sliding_window_leases_and_gives_back_to_its_window() {
    let (busy_admitted, admitted, allowance, calls, _) = busy(
        &[("RATE_LIMIT_CAPACITY", "600"), ("RATE_LIMIT_REFILL", "600/h"), ("RATE_LIMIT_ALGORITHM", "sliding-window")],
        3,
        1_500,
        600.0,
        0.0, // within one window nothing slides out
    );
    assert!(busy_admitted <= 600 && calls.decisions < 1_500, "{busy_admitted} {calls:?}");
    assert_eq!(admitted, allowance);
}

#[test]
fn a_small_bucket_or_leases_turned_off_asks_redis_for_every_request() {
    for extra in [
        vec![],                                                              // 5 per minute
        vec![("RATE_LIMIT_CAPACITY", "1000"), ("RATE_LIMIT_LEASES", "off")], // the switch
        vec![(
            "RATE_LIMIT_POLICY",
            r#"{"rules":[{"name":"busy","route":"/api/*","lease":false,
            "limits":[{"name":"big","capacity":1000,"refill":"1000/min"}]}]}"#,
        )], // a rule says no
        vec![(
            "RATE_LIMIT_POLICY",
            r#"{"rules":[{"name":"busy","route":"/api/*",
            "limits":[{"name":"big","capacity":1000,"refill":"1000/min","lease":false}]}]}"#,
        )], // a limit says no
        // 5 % of 100 is 5 tokens: not two requests of cost 3
        vec![(
            "RATE_LIMIT_POLICY",
            r#"{"rules":[{"name":"busy","route":"/api/*",
            "limits":[{"name":"big","capacity":100,"refill":"1/d","cost":3}]}]}"#,
        )],
        // (a limit that leases beside one that never does now leases, and its lease is spent while
        // Redis decides the other: `a_lease_pays_the_shared_limit_while_redis_decides_the_callers_own`)
    ] {
        let rest = Rest::new();
        let c = config(&extra);
        let mut iso = Isolate::new(&c);
        let mut calls = Calls::default();
        for i in 0..30 {
            iso.request(&rest, "busy", T0 + f64::from(i), &mut calls);
            if i == 4 {
                assert_eq!(calls.decisions, 5, "each of the first five asked Redis ({extra:?})");
            }
        }
        if !extra.is_empty() {
            assert_eq!(calls.decisions, 30, "{extra:?}"); // (the 5-per-minute bucket denies from the deny cache)
        }
        assert_eq!(calls.give_backs, 0, "{extra:?}");
        assert!(iso.wakes.is_empty() && iso.gw.limiter().leased_tokens() == 0, "no lease ({extra:?})");
    }
}

#[test]
fn the_ratelimit_field_counts_the_lease_so_one_isolate_sees_every_token() {
    let rest = Rest::new();
    let c = config(&[("RATE_LIMIT_CAPACITY", "1000"), ("RATE_LIMIT_REFILL", "1/d")]);
    let mut iso = Isolate::new(&c);
    let mut calls = Calls::default();
    for i in 1..=400u64 {
        let step = iso.request(&rest, "solo", T0 + i as f64, &mut calls);
        assert_eq!(remaining(&step), 1000 - i, "request {i}: what the caller can still spend ({calls:?})");
    }
    assert!(calls.decisions < 40, "{calls:?}");
}

#[test]
fn a_lease_not_renewed_ends_after_its_horizon() {
    let rest = Rest::new();
    let c = config(&[("RATE_LIMIT_CAPACITY", "1000"), ("RATE_LIMIT_REFILL", "1/d"), ("RATE_LIMIT_LEASE_MS", "500")]);
    let mut iso = Isolate::new(&c);
    let mut calls = Calls::default();
    let mut now = T0;
    for _ in 0..100 {
        now += 1.0;
        iso.request(&rest, "busy", now, &mut calls);
    }
    assert!(iso.gw.limiter().leased_tokens() > 0);
    iso.wakes.clear(); // (the executor never carries the wake out: the lease must still end)
    let before = calls.decisions;
    now += 501.0;
    let req = Req::new(&iso.gw, "GET", "/api/busy", &[("x-user-id", "busy")]);
    let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
    let step = iso.gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, now);
    assert!(matches!(step, Step::Fetch(_)), "an ended lease is not spent: Redis decides ({step:?})");
    iso.carry(&rest, step, now, &mut calls);
    assert_eq!(calls.decisions, before + 1);
}

#[test]
fn costs_and_shadow_limits_are_paid_from_leases_too() {
    let policy = r#"{"rules":[{"name":"busy","route":"/api/*","limits":[
        {"name":"big","capacity":2000,"refill":"1/d","cost":3},
        {"name":"trial","capacity":1000,"refill":"1/d","shadow":true}]}]}"#;
    let rest = Rest::new();
    let c = config(&[("RATE_LIMIT_POLICY", policy)]);
    let mut iso = Isolate::new(&c);
    let mut calls = Calls::default();
    let mut now = T0;
    for _ in 0..300 {
        now += 1.0;
        assert_eq!(status(&iso.request(&rest, "busy", now, &mut calls)), 200);
    }
    assert!(calls.decisions < 100, "{calls:?}");
    iso.wake(&rest, now + 5_000.0, &mut calls);
    iso.wake(&rest, now + 5_100.0, &mut calls);
    let tokens = |key: &str| -> f64 {
        let v = rest.redis(&["HGET", key, "tokens"]);
        v.as_str().unwrap().parse().unwrap()
    };
    // (a refill of 1 a day adds a few millionths)
    let big = tokens("rate:{busy}:/api/%2A#big");
    assert!((big - (2000.0 - 900.0)).abs() < 0.01, "300 requests of cost 3, leases given back: {big}");
    let trial = tokens("rate:{busy}:/api/%2A#trial");
    assert!((trial - (1000.0 - 300.0)).abs() < 0.01, "the shadow limit paid once per request: {trial}");
}

#[test]
fn a_give_back_that_fails_is_counted_lost_and_the_metrics_count_leases() {
    let rest = Rest::new();
    let c = config(&[
        ("RATE_LIMIT_CAPACITY", "1000"),
        ("RATE_LIMIT_REFILL", "1/d"),
        ("ADMIN_TOKEN", "an-admin-token-0123456789"),
        ("METRICS_FLUSH_MS", "0"),
    ]);
    let mut iso = Isolate::new(&c);
    let mut calls = Calls::default();
    let mut now = T0;
    for _ in 0..100 {
        now += 1.0;
        iso.request(&rest, "busy", now, &mut calls);
    }
    let held = iso.gw.limiter().leased_tokens();
    assert!(held > 0, "a lease is held");
    // Redis goes away before the lease ends: giving back fails, and the tokens are counted lost.
    let due: Vec<(u32, f64)> = std::mem::take(&mut iso.wakes);
    for (ticket, at) in due {
        let at = at.max(now + 2_000.0);
        let mut step = iso.gw.resume(ticket, Reply::Woke, at);
        while let Step::Fetch(f) = step {
            step = iso.gw.resume(f.ticket, Reply::Unreachable, at);
        }
    }
    assert_eq!(iso.gw.limiter().leased_tokens(), 0);
    now += 3_000.0;
    iso.request(&rest, "busy", now, &mut calls); // reports the metrics (flush 0)
    let fields: Vec<String> = match rest.redis(&["HGETALL", "ratelimit:metrics"]) {
        Value::Array(v) => v.into_iter().map(|x| x.as_str().unwrap_or_default().to_string()).collect(),
        other => panic!("{other:?}"),
    };
    let totals = Totals::from_fields(&fields);
    assert_eq!(totals.leases.lost, held, "{:?}", totals.leases);
    assert!(totals.leases.requests > 0 && totals.leases.spent > 0 && totals.leases.granted >= totals.leases.spent);
}

#[test]
fn rpc_calls_spend_leases_too() {
    let rest = Rest::new();
    let c = config(&[("RATE_LIMIT_CAPACITY", "1000"), ("RATE_LIMIT_REFILL", "1/d")]);
    let mut iso = Isolate::new(&c);
    let mut calls = Calls::default();
    for i in 1..=300u64 {
        let now = T0 + i as f64;
        iso.wake(&rest, now, &mut calls);
        let step = iso.gw.call("limit", r#"{"key":"worker-7"}"#, now);
        let Step::Return { value, .. } = iso.carry(&rest, step, now, &mut calls) else { panic!("a result") };
        let v: Value = serde_json::from_str(&value).unwrap();
        assert_eq!((v["success"].as_bool(), v["remaining"].as_u64()), (Some(true), Some(1000 - i)), "call {i}");
    }
    assert!(calls.decisions < 30, "{calls:?}");
}

/// The hostile review of issue 15: a lease's debit left room in the bucket that the refill filled while
/// the lease was still held, so at one instant the bucket and the leases together exceeded the capacity.
#[test]
fn at_no_instant_do_the_bucket_and_the_leases_hold_more_than_the_capacity() {
    let rest = Rest::new();
    let c =
        config(&[("RATE_LIMIT_CAPACITY", "100"), ("RATE_LIMIT_REFILL", "100/s"), ("RATE_LIMIT_LEASE_SHARE", "0.2")]);
    let (mut a, mut b) = (Isolate::new(&c), Isolate::new(&c));
    let mut calls = Calls::default();
    // A sees the key busy and leases (at most 20 tokens); everything else refills within the second.
    for i in 0..30 {
        a.request(&rest, "k", T0 + f64::from(i), &mut calls);
    }
    assert!(a.gw.limiter().leased_tokens() >= 4, "A holds a lease");
    // Half a second on, at one instant: B takes all the bucket has, A spends its lease.
    let at = T0 + 500.0;
    let mut admitted = 0;
    for _ in 0..300 {
        if status(&b.request(&rest, "k", at, &mut calls)) == 200 {
            admitted += 1;
        }
        if status(&a.request(&rest, "k", at, &mut calls)) == 200 {
            admitted += 1;
        }
    }
    assert!(admitted <= 100, "{admitted} admitted at one instant, capacity 100");
    // The price: what A spent since it last told the script (at most one grant, 20) still holds the
    // refill back until its slot has passed.
    assert!(admitted >= 80, "{admitted}: the leases' price is bounded");
}

/// Found by the `rpc` fuzz target: a reply that claims a lease the call never asked for (a broken or
/// hostile REST endpoint; the script grants only what is asked) must hand the isolate nothing to spend;
/// since issue 23 such a reply is malformed (the fail mode's answer: open here).
#[test]
fn a_grant_nobody_asked_for_is_malformed() {
    let config = config(&[]); // capacity 5: too small to lease, so no lease is asked
    let mut gw = Gateway::new(&config);
    let req = Req::new(&gw, "GET", "/api/busy", &[("x-user-id", "u")]);
    let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
    let Step::Fetch(f) = gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, T0) else {
        panic!()
    };
    let claimed = r#"{"result":[1,0,3,0,0,5,60,9,1800000000000]}"#;
    let step = gw.resume(f.ticket, Reply::Http { status: 200, body: claimed }, T0 + 1.0);
    assert!(matches!(step, Step::Forward { wake: None, .. }), "{step:?}");
    assert_eq!(header(&step, "x-ratelimit-status"), Some("degraded; reason=malformed-reply"));
    assert_eq!(gw.limiter().leased_tokens(), 0, "nothing leased");
    // (the one ticket parked is the read of which overrides exist, sent after the response)
    let read = usize::from(matches!(&step, Step::Forward { report: Some(_), .. }));
    assert_eq!(gw.pending(), read, "no wake parked for a lease that does not exist");
}

/// Issue 23, item 1: a reply claiming a lease of 1,000,000 tokens on a bucket of 400 was honoured
/// (1,200 of 1,200 admitted, and the give-back refilled the bucket with tokens Redis never debited).
/// A reply beyond what the call asked is malformed: the fail mode's answer, never a decision.
#[test]
fn a_lease_beyond_what_was_asked_is_a_malformed_reply_never_a_decision() {
    let run = |inflate: Option<i64>| {
        let rest = Rest::new();
        let c = config(&[("RATE_LIMIT_CAPACITY", "400"), ("RATE_LIMIT_REFILL", "400/min"), ("FAIL_MODE", "closed")]);
        let mut iso = Isolate::new(&c);
        iso.inflate = inflate;
        let (mut calls, mut admitted, mut malformed, mut held) = (Calls::default(), 0, 0, 0);
        let mut now = T0;
        for _ in 0..1_200 {
            now += 1.0;
            let step = iso.request(&rest, "k", now, &mut calls);
            match status(&step) {
                200 => admitted += 1,
                503 => {
                    assert_eq!(header(&step, "x-ratelimit-status"), Some("unavailable; reason=malformed-reply"));
                    malformed += 1;
                }
                _ => {}
            }
            held = held.max(iso.gw.limiter().leased_tokens());
        }
        iso.wake(&rest, now + 5_000.0, &mut calls);
        iso.wake(&rest, now + 5_100.0, &mut calls);
        let left: f64 = rest.redis(&["HGET", "rate:{k}:/api/busy", "tokens"]).as_str().unwrap().parse().unwrap();
        (admitted, malformed, held, left, now)
    };
    // The same traffic from an honest endpoint leases (so the hostile run goes through the lease path).
    let (admitted, malformed, held, _, _) = run(None);
    assert!(held > 0 && malformed == 0 && admitted > 400, "honest: leased {held}, admitted {admitted}");

    let (admitted, malformed, held, left, end) = run(Some(1_000_000));
    assert_eq!(held, 0, "nothing of a claimed lease is held");
    assert!(malformed > 0, "the inflated replies are malformed");
    let refill = ((end - T0) / 1000.0 * 400.0 / 60.0).ceil();
    assert!(admitted as f64 <= 400.0 + refill, "{admitted} admitted on a bucket of 400");
    assert!(
        left + admitted as f64 <= 400.0 + refill,
        "{left} left after {admitted} admitted: no tokens came back unearned"
    );
}

/// Issue 25 (the realistic mix): a request under a caller's own limit and a busy global one. Once
/// the isolate holds a lease of the global limit, each request pays it from the lease and sends only
/// its caller's limit to Redis (3 commands, not 5); a request the caller's limit denies puts back what
/// it paid, so it costs the global limit nothing; and over 200 callers on two isolates the global
/// limit admits at most its allowance during the run, and exactly it once the leases are back.
#[test]
fn a_lease_pays_the_shared_limit_while_redis_decides_the_callers_own() {
    let policy = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
        {"name":"caller","capacity":3,"refill":"3/d","lease":false},
        {"name":"global","by":"global","capacity":600,"refill":"600/d"}]}]}"#;
    let c = config(&[("RATE_LIMIT_POLICY", policy)]);
    let rest = Rest::new();
    let mut isolates = [Isolate::new(&c), Isolate::new(&c)];
    let mut calls = Calls::default();
    let (mut admitted, mut now, mut caller_only, mut denials_put_back) = (0u64, T0, 0, 0);
    // 200 callers, each 4 requests (the fourth denied by its own limit of 3), over both isolates.
    for i in 0..800 {
        now += 1.0;
        let iso = &mut isolates[i % 2];
        iso.wake(&rest, now, &mut calls);
        let leased_before = iso.gw.limiter().leased_tokens();
        let decisions_before = calls.decision_limits.len();
        let step = iso.request(&rest, &format!("c{}", i / 4), now, &mut calls);
        let sent: Vec<usize> = calls.decision_limits[decisions_before..].to_vec();
        if status(&step) == 200 {
            admitted += 1;
        } else if i % 4 == 3 && sent == [1] {
            assert_eq!(
                iso.gw.limiter().leased_tokens(),
                leased_before,
                "request {i}: the denial put back what it paid"
            );
            denials_put_back += 1;
        }
        caller_only += usize::from(sent == [1]);
    }
    assert!(admitted <= 600, "{admitted} admitted during the run: the global limit allows 600");
    assert!(caller_only > 600, "most requests sent only the caller's limit: {caller_only} of 800");
    assert!(denials_put_back > 150, "{denials_put_back} denials by the caller's own limit, with a lease");
    // Every lease ends within its horizon and is given back; then new callers drain what is left.
    now += 5_000.0;
    for iso in &mut isolates {
        iso.wake(&rest, now, &mut calls);
        iso.wake(&rest, now + 100.0, &mut calls);
        assert_eq!(iso.gw.limiter().leased_tokens(), 0, "every lease given back");
    }
    let mut denied = 0;
    for n in 0.. {
        now += 1.0;
        match status(&isolates[0].request(&rest, &format!("late{n}"), now, &mut calls)) {
            200 => admitted += 1,
            _ => denied += 1,
        }
        if denied == 3 {
            break;
        }
    }
    assert_eq!(admitted, 600, "once the leases are back, exactly the global allowance");
}
