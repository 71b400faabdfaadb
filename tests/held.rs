//! In-flight limits and costs settled from the response, through the gateway's one entry against a
//! real Redis: slots taken in the decision's script call (all or nothing with the rate limits) and
//! released once the response has been delivered; reserved costs charged or refunded exactly once.

mod common;

use common::{body_json, header, status, Req, Rest};
use edge_ratelimit::{Config, Gateway, Reply, Request, Step, Totals};

const T0: f64 = 1.8e12;

fn config(policy: &str) -> Config {
    config_with(policy, "open")
}

fn config_with(policy: &str, fail_mode: &str) -> Config {
    let vars = [
        ("FAIL_MODE", fail_mode),
        ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
        ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ("USER_ID_HEADER", "x-user-id"),
        ("RATE_LIMIT_CLOCK", "worker"),
        ("RATE_LIMIT_POLICY", policy),
        ("ADMIN_TOKEN", "admin-token-of-thirty-two-bytes-or-more"),
    ];
    Config::from_env(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

const INFLIGHT: &str = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
    {"name":"inflight","by":"user","concurrency":2},
    {"name":"rate","by":"user","capacity":100,"refill":"100/min"}]}]}"#;

/// Starts `user`'s request and carries it to its final step (the response not yet delivered).
fn send(gw: &mut Gateway<'_>, rest: &Rest, user: &str, now: f64) -> Step {
    common::run(gw, rest, &Req::new(gw, "GET", "/api/chat", &[("x-user-id", user)]), now)
}

/// Reports a forwarded request's response as delivered with `text` (see `Delivered::decode`), and
/// carries out what follows (the batch's wait included: nothing else is queued); the REST calls that
/// took.
fn deliver(gw: &mut Gateway<'_>, rest: &Rest, step: &Step, text: &str, now: f64) -> usize {
    let Step::Forward { watch: Some(w), .. } = step else { panic!("no watch on {step:?}") };
    let next = gw.resume(w.ticket, Reply::Delivered(text), now);
    follow(gw, rest, next, now)
}

/// Carries out the steps after a response — waits (resumed when due) and REST calls — until done;
/// the REST calls that took.
fn follow(gw: &mut Gateway<'_>, rest: &Rest, mut next: Step, now: f64) -> usize {
    let mut calls = 0;
    loop {
        next = match next {
            Step::Fetch(f) => {
                calls += 1;
                let (code, body) = rest.answer(&f);
                gw.resume(f.ticket, Reply::Http { status: code, body: &body }, now)
            }
            Step::Wait { ticket, ms } => gw.resume(ticket, Reply::Woke, now + f64::from(ms)),
            Step::Done => return calls,
            other => panic!("after a response: {other:?}"),
        }
    }
}

#[test]
fn an_in_flight_limit_admits_exactly_its_slots_until_responses_end() {
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut a = Gateway::new(&config).with_instance_id("isolate-a");
    let mut b = Gateway::new(&config).with_instance_id("isolate-b");
    let user = format!("u{}", std::process::id());
    // Five at once over two isolates: two reach the origin, three are told to come back in a second.
    let steps: Vec<Step> = (0..5)
        .map(|i| if i % 2 == 0 { send(&mut a, &rest, &user, T0) } else { send(&mut b, &rest, &user, T0) })
        .collect();
    let admitted: Vec<usize> = (0..5).filter(|i| matches!(steps[*i], Step::Forward { .. })).collect();
    assert_eq!(admitted, [0, 1], "the first two, one per isolate: slots are shared in Redis");
    for s in &steps[2..] {
        assert_eq!(status(s), 429);
        assert_eq!(header(s, "retry-after"), Some("1"));
        assert_eq!(body_json(s)["type"], "urn:edge-ratelimit:problem:too-many-concurrent");
        assert_eq!(header(s, "ratelimit"), Some("\"inflight\";r=0;t=1"), "the RateLimit field names the limit");
    }
    let other = send(&mut b, &rest, &format!("{user}-other"), T0);
    assert!(matches!(other, Step::Forward { .. }), "another user has slots of their own");

    // One response ends: one slot frees, at once and for every isolate (no cached denial).
    assert_eq!(deliver(&mut a, &rest, &steps[0], "1", T0 + 500.0), 1, "one call releases the slot");
    assert!(matches!(send(&mut b, &rest, &user, T0 + 501.0), Step::Forward { .. }));
    assert_eq!(status(&send(&mut a, &rest, &user, T0 + 502.0)), 429);
    // A client that went away releases its slot too.
    assert_eq!(deliver(&mut b, &rest, &steps[1], "0", T0 + 503.0), 1);
    assert!(matches!(send(&mut a, &rest, &user, T0 + 504.0), Step::Forward { .. }));
    // A denied request took nothing from the rate limit: 100 − 4 admitted, in Redis and in the leases
    // the isolates hold (the rate limit leases beside the in-flight one, which Redis decides).
    let rate = rest.redis(&["HGET", &format!("rate:{{{user}}}:/api/%2A#rate"), "tokens"]);
    let held = (a.limiter().leased_tokens() + b.limiter().leased_tokens()) as f64;
    assert_eq!(rate.as_str().map(|t| (t.parse::<f64>().unwrap() + held).floor()), Some(96.0), "{rate} + {held}");
}

#[test]
fn a_slot_whose_release_never_comes_expires_after_its_ttl() {
    let rest = Rest::new();
    let config = config(
        r#"{"rules":[{"name":"api","route":"/api/*","limits":[
            {"name":"inflight","concurrency":1,"slot_ttl_seconds":5}]}]}"#,
    );
    let mut gw = Gateway::new(&config).with_instance_id("gone");
    let user = format!("ttl{}", std::process::id());
    assert!(matches!(send(&mut gw, &rest, &user, T0), Step::Forward { .. }));
    assert_eq!(status(&send(&mut gw, &rest, &user, T0 + 4_999.0)), 429, "held until its TTL");
    assert!(matches!(send(&mut gw, &rest, &user, T0 + 5_001.0), Step::Forward { .. }), "then it expires");
}

#[test]
fn a_shadow_in_flight_limit_never_denies_and_releases_what_it_took() {
    let rest = Rest::new();
    let config = config(
        r#"{"rules":[{"name":"api","route":"/api/*","limits":[
            {"name":"inflight","concurrency":1,"shadow":true}]}]}"#,
    );
    let mut gw = Gateway::new(&config).with_instance_id("shadow");
    let user = format!("sh{}", std::process::id());
    let first = send(&mut gw, &rest, &user, T0);
    let second = send(&mut gw, &rest, &user, T0 + 1.0);
    assert!(matches!(second, Step::Forward { watch: None, .. }), "allowed, and it took no slot: {second:?}");
    assert_eq!(header(&second, "x-ratelimit-status"), Some("shadow; limit=\"inflight\""));
    assert_eq!(deliver(&mut gw, &rest, &first, "1", T0 + 2.0), 1);
    let key = format!("rate:{{{user}}}:/api/%2A!inflight");
    assert_eq!(rest.redis(&["ZCARD", &key]), 0, "released");
}

const SETTLED: &str = r#"{"rules":[{"name":"llm","route":"/v1/*","limits":[
    {"name":"tokens","by":"user","capacity":100,"refill":"1/d",
     "cost":{"reserve":10,"settle":"header:x-usage-tokens","strip":true}}]}]}"#;

fn tokens(rest: &Rest, key: &str) -> f64 {
    // (to a thousandth: the refill of 1/d adds a few millionths while a test runs)
    let t: f64 = rest.redis(&["HGET", key, "tokens"]).as_str().expect("a bucket").parse().unwrap();
    (t * 1000.0).round() / 1000.0
}

/// One request settled with what the executor saw, and the bucket's tokens after it.
fn settled(policy: &str, text: &str) -> (f64, Option<String>, usize, Totals) {
    let rest = Rest::new();
    let config = config(policy);
    let mut gw = Gateway::new(&config).with_instance_id("s");
    let user = format!("llm{}", std::process::id());
    let step = send_to(&mut gw, &rest, "/v1/chat", &user, T0);
    let key = format!("rate:{{{user}}}:/v1/%2A#tokens");
    assert_eq!(tokens(&rest, &key), 90.0, "admitted by reserving 10");
    let Step::Forward { watch: Some(w), .. } = &step else { panic!("{step:?}") };
    let strip = w.strip.first().cloned();
    // A usage header is read as soon as the response's headers are in; a stream's usage at its end.
    assert_eq!(w.until_end, policy.contains("\"sse:"), "{w:?}");
    let calls = deliver(&mut gw, &rest, &step, text, T0 + 100.0);
    let left = tokens(&rest, &key);
    // The counts reach Redis with the next report (a later decision's).
    send_to(&mut gw, &rest, "/v1/other", &user, T0 + 20_000.0);
    let flat: Vec<String> = serde_json::from_value(rest.redis(&["HGETALL", "ratelimit:metrics"])).unwrap();
    (left, strip, calls, Totals::from_fields(&flat))
}

fn send_to(gw: &mut Gateway<'_>, rest: &Rest, path: &str, user: &str, now: f64) -> Step {
    let req = Req::new(gw, "POST", path, &[("x-user-id", user)]);
    common::run(gw, rest, &req, now)
}

#[test]
fn a_reserved_cost_is_settled_from_a_response_header() {
    let (left, strip, calls, totals) = settled(SETTLED, "1\n30");
    assert_eq!((left, calls), (70.0, 1), "reported 30: 20 more charged");
    assert_eq!(strip.as_deref(), Some("x-usage-tokens"), "the limit strips its usage header");
    assert_eq!((totals.held.settled, totals.held.charged), (1, 20));
    let (left, _, _, totals) = settled(SETTLED, "1\n2");
    assert_eq!((left, totals.held.refunded), (98.0, 8), "reported 2: 8 refunded");
    let (left, _, calls, totals) = settled(SETTLED, "1\n\u{1}");
    assert_eq!((left, calls, totals.held.missing), (90.0, 0, 1), "nothing reported: settled at the reservation");
    let (left, _, calls, totals) = settled(SETTLED, "1\n12 tokens");
    assert_eq!((left, calls, totals.held.missing), (90.0, 0, 1), "malformed: settled at the reservation");
    let (left, _, calls, _) = settled(SETTLED, "1\n10");
    assert_eq!((left, calls), (90.0, 0), "as reserved: no call at all");
}

const STREAMED: &str = r#"{"rules":[{"name":"llm","route":"/v1/*","limits":[
    {"name":"tokens","by":"user","capacity":100,"refill":"1/d",
     "cost":{"reserve":10,"settle":"sse:usage.total_tokens"}}]}]}"#;

#[test]
fn a_reserved_cost_is_settled_from_the_last_event_of_a_stream_that_carries_the_path() {
    let events = "{\"choices\":[{\"delta\":\"hi\"}]}\0{\"usage\":{\"total_tokens\":30},\"id\":\"x\"}";
    let (left, strip, _, _) = settled(STREAMED, &format!("1\ntext/event-stream\0{events}"));
    assert_eq!((left, strip), (70.0, None));
    let (left, _, _, _) = settled(STREAMED, "1\ntext/event-stream\0{\"usage\":{\"total_tokens\":2}}");
    assert_eq!(left, 98.0);
    let (left, _, _, totals) = settled(STREAMED, &format!("1\napplication/json\0{events}"));
    assert_eq!((left, totals.held.missing), (90.0, 1), "not an event stream: the reservation");
    let (left, _, _, totals) = settled(STREAMED, "0\ntext/event-stream\0{\"choices\":[]}");
    assert_eq!((left, totals.held.missing), (90.0, 1), "a stream cut short without usage: the reservation");
}

#[test]
fn a_settle_call_retried_after_a_lost_answer_charges_once() {
    let rest = Rest::new();
    let config = config(SETTLED);
    let mut gw = Gateway::new(&config).with_instance_id("retry");
    let user = format!("re{}", std::process::id());
    let step = send_to(&mut gw, &rest, "/v1/chat", &user, T0);
    let Step::Forward { watch: Some(w), .. } = &step else { panic!("{step:?}") };
    let Step::Wait { ticket, ms } = gw.resume(w.ticket, Reply::Delivered("1\n30"), T0 + 1.0) else { panic!() };
    let Step::Fetch(f) = gw.resume(ticket, Reply::Woke, T0 + 1.0 + f64::from(ms)) else { panic!("the batch") };
    rest.answer(&f); // Redis ran it, but its answer never came back:
    let Step::Fetch(again) = gw.resume(f.ticket, Reply::Timeout, T0 + 2.0) else { panic!("one retry") };
    let (code, body) = rest.answer(&again);
    assert_eq!(gw.resume(again.ticket, Reply::Http { status: code, body: &body }, T0 + 3.0), Step::Done);
    let key = format!("rate:{{{user}}}:/v1/%2A#tokens");
    assert_eq!(tokens(&rest, &key), 70.0, "charged 20 once, not twice");
}

#[test]
fn a_charge_beyond_what_is_left_is_debt_the_next_requests_show() {
    let rest = Rest::new();
    let config = config(SETTLED);
    let mut gw = Gateway::new(&config).with_instance_id("debt");
    let user = format!("debt{}", std::process::id());
    let step = send_to(&mut gw, &rest, "/v1/chat", &user, T0);
    deliver(&mut gw, &rest, &step, "1\n150", T0 + 1.0);
    let key = format!("rate:{{{user}}}:/v1/%2A#tokens");
    assert_eq!(tokens(&rest, &key), -50.0, "100 − 150: in debt");
    let denied = send_to(&mut gw, &rest, "/v1/chat", &user, T0 + 2.0);
    assert_eq!(status(&denied), 429);
    assert_eq!(header(&denied, "ratelimit"), Some("\"tokens\";r=0;t=12960000"), "150 days until full at 1/d");
    let retry: u64 = header(&denied, "retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 60 * 86_400, "until the debt and the reservation are refilled (60 tokens at 1/d)");
}

#[test]
fn concurrency_and_settle_policies_are_checked_strictly() {
    let parse = |limit: &str| {
        let p = format!(r#"{{"rules":[{{"name":"r","route":"/*","limits":[{limit}]}}]}}"#);
        edge_ratelimit::Policy::parse(&p, 60, false)
    };
    assert!(parse(r#"{"name":"l","concurrency":4}"#).is_ok());
    assert!(parse(r#"{"name":"l","concurrency":4,"slot_ttl_seconds":300}"#).is_ok());
    for (limit, says) in [
        (r#"{"name":"l","concurrency":0}"#, "`concurrency` must be a whole number from 1"),
        (r#"{"name":"l","concurrency":4,"capacity":5}"#, "`capacity` does not apply to a `concurrency` limit"),
        (r#"{"name":"l","concurrency":4,"slot_ttl_seconds":0}"#, "`slot_ttl_seconds` must be a whole number from 1"),
        (r#"{"name":"l","capacity":5,"refill":"5/s","slot_ttl_seconds":5}"#, "only to a `concurrency` limit"),
        (
            r#"{"name":"l","capacity":5,"refill":"5/s","cost":{"reserve":9,"settle":"header:x"}}"#,
            "`cost` must be a whole number from 1 to 5",
        ),
        (r#"{"name":"l","capacity":5,"refill":"5/s","cost":{"reserve":1,"settle":"body:x"}}"#, "`settle` must be"),
        (r#"{"name":"l","capacity":5,"refill":"5/s","cost":{"reserve":1}}"#, "missing field `settle`"),
        (
            r#"{"name":"l","capacity":5,"refill":"5/s","cost":{"reserve":1,"settle":"sse:a.b","strip":true}}"#,
            "`strip` applies to a usage header",
        ),
        (r#"{"name":"l","capacity":5,"refill":"5/s","cost":"5"}"#, "`cost` must be a number or"),
        (r#"{"name":"l","concurrency":4,"tiers":{"pro":{"capacity":5}}}"#, "unknown field `capacity`"),
    ] {
        let e = parse(limit).expect_err(limit);
        assert!(e.contains(says), "{limit}: {e}");
    }
}

#[test]
fn an_override_of_a_callers_rates_does_not_lift_their_in_flight_slots() {
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut gw = Gateway::new(&config).with_instance_id("ov");
    let user = format!("ov{}", std::process::id());
    rest.redis(&["SET", &format!("ratelimit:override:caller:{user}"), "1000 1000"]);
    let statuses: Vec<u16> = (0..3).map(|i| status(&send(&mut gw, &rest, &user, T0 + f64::from(i)))).collect();
    assert_eq!(statuses, [200, 200, 429], "still 2 in flight");
    let step = send(&mut gw, &rest, &format!("{user}-x"), T0);
    assert_eq!(header(&step, "ratelimit-policy"), Some("\"inflight\";q=2;w=1, \"rate\";q=100;w=60"));
}

/// An admin API call through the gateway: its status.
fn admin(gw: &mut Gateway<'_>, rest: &Rest, method: &str, target: &str, body: &str) -> u16 {
    let auth = "Bearer admin-token-of-thirty-two-bytes-or-more";
    let mut req = Req::new(gw, method, &format!("/__ratelimit/{target}"), &[("authorization", auth)]);
    req.body = body.to_string();
    status(&common::run(gw, rest, &req, T0))
}

/// Issue 23, item 5: in-flight limits take an override of their own (`concurrency`, per caller, route
/// or tier), which applies only to them; a rate override still never lifts slots, and a concurrency
/// never changes a rate.
#[test]
fn a_concurrency_override_sets_in_flight_slots_and_only_them() {
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut gw = Gateway::new(&config).with_instance_id("cov");
    let user = format!("cov{}", std::process::id());
    let in_flight = |gw: &mut Gateway<'_>, user: &str, at: f64| -> Vec<u16> {
        (0..5).map(|i| status(&send(gw, &rest, user, at + f64::from(i)))).collect()
    };
    // The caller's own: 4 slots, the rate untouched.
    assert_eq!(admin(&mut gw, &rest, "PUT", &format!("overrides/user/{user}"), r#"{"concurrency":4}"#), 200);
    assert_eq!(in_flight(&mut gw, &user, T0), [200, 200, 200, 200, 429], "4 in flight");
    let probe = send(&mut gw, &rest, &user, T0 + 10.0);
    assert_eq!(
        header(&probe, "ratelimit-policy"),
        Some("\"inflight\";q=4;w=1, \"rate\";q=100;w=60"),
        "rates untouched"
    );
    // A PUT replaces the whole override: rates only now, and the slots are the policy's 2 again.
    let rates = r#"{"capacity":1000,"refill":"1000/min"}"#;
    assert_eq!(admin(&mut gw, &rest, "PUT", &format!("overrides/user/{user}"), rates), 200);
    let next = format!("{user}-b");
    assert_eq!(admin(&mut gw, &rest, "PUT", &format!("overrides/user/{next}"), rates), 200);
    assert_eq!(in_flight(&mut gw, &next, T0 + 100.0), [200, 200, 429, 429, 429], "a rate override lifts no slot");
    let probe = send(&mut gw, &rest, &next, T0 + 110.0);
    assert_eq!(header(&probe, "ratelimit-policy"), Some("\"inflight\";q=2;w=1, \"rate\";q=1000;w=60"));
    // A route's concurrency reaches every caller of the route; the caller's own outranks it.
    assert_eq!(admin(&mut gw, &rest, "PUT", "overrides/route/api/*", r#"{"concurrency":1}"#), 200);
    assert_eq!(in_flight(&mut gw, &format!("{user}-c"), T0 + 200.0), [200, 429, 429, 429, 429], "the route's 1");
    let both = r#"{"concurrency":3,"capacity":50,"refill":"50/min"}"#;
    assert_eq!(admin(&mut gw, &rest, "PUT", &format!("overrides/user/{user}-d"), both), 200);
    assert_eq!(in_flight(&mut gw, &format!("{user}-d"), T0 + 300.0), [200, 200, 200, 429, 429], "the caller's 3");
    let probe = send(&mut gw, &rest, &format!("{user}-d"), T0 + 310.0);
    assert_eq!(header(&probe, "ratelimit-policy"), Some("\"inflight\";q=3;w=1, \"rate\";q=50;w=60"));
    // Deleted: both parts go.
    assert_eq!(admin(&mut gw, &rest, "DELETE", &format!("overrides/user/{user}-d"), ""), 200);
    assert_eq!(rest.redis(&["EXISTS", &format!("ratelimit:override:slots:caller:{user}-d")]), serde_json::json!(0));
    assert_eq!(admin(&mut gw, &rest, "PUT", &format!("overrides/user/{user}"), r#"{"concurrency":0}"#), 400);
}

#[test]
fn a_usage_header_is_stripped_even_when_nothing_is_settled() {
    // Redis unreachable and the fail mode open: forwarded, nothing reserved, the header still stripped.
    let config = config(SETTLED);
    let mut gw = Gateway::new(&config).with_instance_id("open");
    let req = Req::new(&gw, "POST", "/v1/chat", &[("x-user-id", "u")]);
    let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
    let Step::Fetch(f) = gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, T0) else {
        panic!()
    };
    let step = gw.resume(f.ticket, Reply::Unreachable, T0 + 1.0);
    let Step::Forward { watch: Some(w), .. } = &step else { panic!("{step:?}") };
    assert_eq!(
        (w.ticket, &w.strip[..]),
        (0, &["x-usage-tokens".to_string()][..]),
        "nothing to report, a header to strip"
    );
}

#[test]
fn a_decision_whose_answer_was_lost_still_releases_the_slots_it_may_have_taken() {
    let rest = Rest::new();
    for mode in ["closed", "open"] {
        let config = config_with(INFLIGHT, mode);
        let mut gw = Gateway::new(&config).with_instance_id(mode);
        let user = format!("lost-{mode}-{}", std::process::id());
        let key = format!("rate:{{{user}}}:/api/%2A!inflight");
        let req = Req::new(&gw, "GET", "/api/chat", &[("x-user-id", &user)]);
        let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
        // Warm the script first, so the decision below is one EVALSHA that Redis runs.
        send(&mut gw, &rest, &format!("{user}-warm"), T0);
        let parked = gw.pending(); // (the warm request's watch)
        let Step::Fetch(f) = gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, T0) else {
            panic!()
        };
        rest.answer(&f); // the slot is taken, but the answer never comes back:
        assert_eq!(rest.redis(&["ZCARD", &key]), 1);
        let step = gw.resume(f.ticket, Reply::Timeout, T0 + 1.0);
        if let Step::Respond { report: Some(r), .. } | Step::Forward { report: Some(r), .. } = &step {
            let (code, body) = rest.answer(r); // (a metrics report, or the read of which overrides exist)
            assert_eq!(gw.resume(r.ticket, Reply::Http { status: code, body: &body }, T0 + 1.0), Step::Done);
        }
        let next = match (&step, mode) {
            (Step::Respond { wake: Some(w), .. }, "closed") => {
                assert_eq!(status(&step), 503);
                gw.resume(w.ticket, Reply::Woke, T0 + 2.0)
            }
            (Step::Forward { watch: Some(w), .. }, "open") => gw.resume(w.ticket, Reply::Delivered("1"), T0 + 2.0),
            _ => panic!("{mode}: {step:?}"),
        };
        follow(&mut gw, &rest, next, T0 + 3.0);
        assert_eq!(rest.redis(&["ZCARD", &key]), 0, "{mode}: released");
        assert_eq!(gw.pending(), parked, "{mode}: nothing left parked");
    }
}

#[test]
fn a_usage_header_is_stripped_beside_a_slot_too() {
    let rest = Rest::new();
    let config = config(
        r#"{"rules":[{"name":"llm","route":"/v1/*","limits":[
            {"name":"inflight","concurrency":2},
            {"name":"tokens","capacity":100,"refill":"1/d","shadow":true,
             "cost":{"reserve":60,"settle":"header:x-usage-tokens","strip":true}}]}]}"#,
    );
    let mut gw = Gateway::new(&config).with_instance_id("both");
    // The second request's shadow cost cannot pay 60 (40 left: nothing reserved), its slot is held: the
    // header is stripped all the same.
    let user = format!("both{}", std::process::id());
    send_to(&mut gw, &rest, "/v1/chat", &user, T0);
    let step = send_to(&mut gw, &rest, "/v1/chat", &user, T0 + 1.0);
    assert_eq!(header(&step, "x-ratelimit-status"), Some("shadow; limit=\"tokens\""));
    let Step::Forward { watch: Some(w), .. } = &step else { panic!("{step:?}") };
    assert!(w.ticket != 0 && w.until_end);
    assert_eq!(w.strip, ["x-usage-tokens"]);
}

#[test]
fn the_admin_api_peeks_at_live_slots_and_resets_them() {
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut gw = Gateway::new(&config).with_instance_id("admin");
    let user = format!("adm{}", std::process::id());
    let auth = "Bearer admin-token-of-thirty-two-bytes-or-more";
    let admin = |gw: &mut Gateway<'_>, method: &str| {
        let target = format!("/__ratelimit/buckets?user={user}&path=/api/chat");
        let req = Req::new(gw, method, &target, &[("authorization", auth)]);
        let step = common::run(gw, &rest, &req, T0 + 10.0);
        assert_eq!(status(&step), 200, "{step:?}");
        body_json(&step)
    };
    send(&mut gw, &rest, &user, T0);
    let peek = admin(&mut gw, "GET");
    let slots = &peek["limits"][0];
    assert_eq!((slots["name"].as_str(), slots["algorithm"].as_str()), (Some("inflight"), Some("concurrency")));
    assert_eq!((slots["capacity"].as_u64(), slots["remaining"].as_u64()), (Some(2), Some(1)), "one live slot");
    assert_eq!(rest.redis(&["ZCARD", &format!("rate:{{{user}}}:/api/%2A!inflight")]), 1, "a peek takes nothing");
    admin(&mut gw, "DELETE");
    assert_eq!(rest.redis(&["EXISTS", &format!("rate:{{{user}}}:/api/%2A!inflight")]), 0, "reset deletes the slots");
}

// ---------------------------------------------------------------- batches (issue 25, item 3) ----

/// Reports a forwarded request's response as delivered with `text`: the step that follows, not
/// carried out.
fn delivered(gw: &mut Gateway<'_>, step: &Step, text: &str, now: f64) -> Step {
    let Step::Forward { watch: Some(w), .. } = step else { panic!("no watch on {step:?}") };
    gw.resume(w.ticket, Reply::Delivered(text), now)
}

/// The KEYS and ARGV of a script call's body (`["EVALSHA", sha, n, keys…, args…]`).
fn keys_and_args(body: &str) -> (Vec<String>, Vec<String>) {
    let v: Vec<String> = serde_json::from_str(body).unwrap();
    let n: usize = v[2].parse().unwrap();
    (v[3..3 + n].to_vec(), v[3 + n..].to_vec())
}

const BOTH: &str = r#"{"rules":[{"name":"llm","route":"/v1/*","limits":[
    {"name":"inflight","by":"user","concurrency":4},
    {"name":"tokens","by":"user","capacity":100,"refill":"1/d",
     "cost":{"reserve":10,"settle":"header:x-usage-tokens"}}]}]}"#;

#[test]
fn responses_delivered_together_are_released_and_settled_in_one_call_merged_per_key() {
    let rest = Rest::new();
    let config = config(BOTH);
    let mut gw = Gateway::new(&config).with_instance_id("batch");
    let p = std::process::id();
    let (a, b, c) = (format!("ba{p}"), format!("bb{p}"), format!("bc{p}"));
    let sent: Vec<(&str, &str, Step)> = [(&a, "30"), (&a, "2"), (&a, "15"), (&b, "10"), (&c, "50")]
        .into_iter()
        .map(|(u, usage)| (u.as_str(), usage, send_to(&mut gw, &rest, "/v1/chat", u, T0)))
        .collect();
    let slots = |u: &str| format!("rate:{{{u}}}:/v1/%2A!inflight");
    let bucket = |u: &str| format!("rate:{{{u}}}:/v1/%2A#tokens");
    // The first response queued schedules the batch's wait; the others join it.
    let mut wait = None;
    for (i, (_, usage, step)) in sent.iter().enumerate() {
        let next = delivered(&mut gw, step, &format!("1\n{usage}"), T0 + 100.0 + i as f64);
        match (i, next) {
            (0, Step::Wait { ticket, ms }) => wait = Some((ticket, ms)),
            (0, other) => panic!("the first response waits for others: {other:?}"),
            (_, next) => assert_eq!(next, Step::Done, "response {i} joins the queue"),
        }
    }
    let (ticket, ms) = wait.unwrap();
    assert!((1..=1000).contains(&ms), "a short wait: {ms} ms");
    assert_eq!(rest.redis(&["ZCARD", &slots(&a)]), 3, "nothing released before the batch goes");
    let Step::Fetch(f) = gw.resume(ticket, Reply::Woke, T0 + 100.0 + f64::from(ms)) else { panic!("the batch") };
    let (keys, args) = keys_and_args(&f.body);
    for u in [&a, &b, &c] {
        assert_eq!(keys.iter().filter(|k| **k == slots(u)).count(), 1, "{u}'s slots in one entry: {keys:?}");
    }
    assert_eq!(keys.iter().filter(|k| **k == bucket(&a)).count(), 1, "a's three costs merged: {keys:?}");
    assert!(!keys.contains(&bucket(&b)), "b's usage was its reservation: nothing to settle");
    assert!(args.contains(&"batch.1 batch.2 batch.3".to_string()), "one ZREM of a's three members: {args:?}");
    assert!(keys.last().unwrap().starts_with("ratelimit:settled:batch.b"), "one marker for the batch: {keys:?}");
    assert!(args.contains(&"17".to_string()), "a's net: 20 charged, 8 refunded, 5 charged: {args:?}");
    let (code, body) = rest.answer(&f);
    assert_eq!(gw.resume(f.ticket, Reply::Http { status: code, body: &body }, T0 + 200.0), Step::Done);
    for u in [&a, &b, &c] {
        assert_eq!(rest.redis(&["ZCARD", &slots(u)]), 0, "{u}: released");
    }
    assert_eq!(tokens(&rest, &bucket(&a)), 53.0, "a used 47");
    assert_eq!(tokens(&rest, &bucket(&b)), 90.0);
    assert_eq!(tokens(&rest, &bucket(&c)), 50.0);
    // Delivered again (an executor that reports twice): the watch is gone, nothing queued.
    assert_eq!(delivered(&mut gw, &sent[0].2, "1\n30", T0 + 300.0), Step::Done);
    assert_eq!(gw.pending(), 0, "nothing parked, nothing watched");
}

/// The batch's queue is bounded (src/gateway/after.rs `BATCH_MAX`): the item that fills it sends it
/// at once; what is queued after it goes at the wait already scheduled.
#[test]
fn a_full_queue_is_sent_at_once_and_the_wait_sends_what_came_after() {
    const BATCH_MAX: usize = 64;
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut gw = Gateway::new(&config).with_instance_id("full");
    let users: Vec<String> = (0..BATCH_MAX / 2 + 1).map(|i| format!("full{i}-{}", std::process::id())).collect();
    let steps: Vec<Step> = (0..=BATCH_MAX).map(|i| send(&mut gw, &rest, &users[i / 2], T0)).collect();
    assert!(steps.iter().all(|s| matches!(s, Step::Forward { .. })), "two slots each");
    let mut wait = None;
    for (i, step) in steps.iter().enumerate() {
        let next = delivered(&mut gw, step, "1", T0 + 10.0);
        match (i, next) {
            (0, Step::Wait { ticket, ms }) => wait = Some((ticket, ms)),
            (i, Step::Fetch(f)) if i == BATCH_MAX - 1 => {
                let (keys, _) = keys_and_args(&f.body);
                let slots = keys.iter().filter(|k| k.ends_with("!inflight")).count();
                assert_eq!(slots, BATCH_MAX / 2, "the full queue, merged: one slot key a user");
                let (code, body) = rest.answer(&f);
                assert_eq!(gw.resume(f.ticket, Reply::Http { status: code, body: &body }, T0 + 20.0), Step::Done);
            }
            (i, next) => assert_eq!(next, Step::Done, "response {i}"),
        }
    }
    for u in &users[..BATCH_MAX / 2] {
        assert_eq!(rest.redis(&["ZCARD", &format!("rate:{{{u}}}:/api/%2A!inflight")]), 0, "{u}: released at once");
    }
    let last = format!("rate:{{{}}}:/api/%2A!inflight", users[BATCH_MAX / 2]);
    assert_eq!(rest.redis(&["ZCARD", &last]), 1, "the one after the full queue waits");
    let (ticket, ms) = wait.unwrap();
    let next = gw.resume(ticket, Reply::Woke, T0 + f64::from(ms));
    assert_eq!(follow(&mut gw, &rest, next, T0 + 60.0), 1);
    assert_eq!(rest.redis(&["ZCARD", &last]), 0, "sent by the wait");
}

#[test]
fn each_batch_settles_once_with_a_marker_of_its_own() {
    let rest = Rest::new();
    let config = config(SETTLED);
    let mut gw = Gateway::new(&config).with_instance_id("twice");
    let user = format!("twice{}", std::process::id());
    let key = format!("rate:{{{user}}}:/v1/%2A#tokens");
    let first = send_to(&mut gw, &rest, "/v1/chat", &user, T0);
    assert_eq!(deliver(&mut gw, &rest, &first, "1\n30", T0 + 1.0), 1);
    assert_eq!(tokens(&rest, &key), 70.0);
    // A second batch: its own marker (the first's would make it a repeat), and nothing of the first.
    let second = send_to(&mut gw, &rest, "/v1/chat", &user, T0 + 2.0);
    assert_eq!(deliver(&mut gw, &rest, &second, "1\n15", T0 + 3.0), 1);
    assert_eq!(tokens(&rest, &key), 55.0, "30 then 15, each charged once");
}

#[test]
fn a_batch_wait_that_never_came_back_is_replaced() {
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut gw = Gateway::new(&config).with_instance_id("lost");
    let user = format!("lostwait{}", std::process::id());
    let key = format!("rate:{{{user}}}:/api/%2A!inflight");
    let a = send(&mut gw, &rest, &user, T0);
    let b = send(&mut gw, &rest, &user, T0);
    assert!(matches!(delivered(&mut gw, &a, "1", T0 + 1.0), Step::Wait { .. }));
    // That wait is never resumed (its executor was stopped): a response much later schedules another.
    let next = delivered(&mut gw, &b, "1", T0 + 30_000.0);
    assert!(matches!(next, Step::Wait { .. }), "{next:?}");
    assert_eq!(follow(&mut gw, &rest, next, T0 + 30_100.0), 1, "one call for both");
    assert_eq!(rest.redis(&["ZCARD", &key]), 0);
}

#[test]
fn request_ids_never_hold_a_space_so_a_release_of_several_members_splits_right() {
    let rest = Rest::new();
    let config = config(INFLIGHT);
    let mut gw = Gateway::new(&config).with_instance_id("iso late\t");
    let user = format!("space{}", std::process::id());
    let key = format!("rate:{{{user}}}:/api/%2A!inflight");
    let (a, b) = (send(&mut gw, &rest, &user, T0), send(&mut gw, &rest, &user, T0));
    let members: Vec<String> = serde_json::from_value(rest.redis(&["ZRANGE", &key, "0", "-1"])).unwrap();
    assert_eq!(members, ["iso_late_.1", "iso_late_.2"]);
    let Step::Wait { ticket, ms } = delivered(&mut gw, &a, "1", T0 + 1.0) else { panic!() };
    assert_eq!(delivered(&mut gw, &b, "1", T0 + 2.0), Step::Done);
    let next = gw.resume(ticket, Reply::Woke, T0 + 1.0 + f64::from(ms));
    assert_eq!(follow(&mut gw, &rest, next, T0 + 60.0), 1);
    assert_eq!(rest.redis(&["ZCARD", &key]), 0, "both members removed by one call");
}

/// Found in review (issue 25): a window's charge and refund of one key could not be merged, went in
/// one call as two items, and the script — which reads every key before it writes any — wrote the
/// second over the first: the charge was lost. A key now appears once in a call; the other item goes
/// in the next batch, sent when the first is done.
#[test]
fn a_charge_and_a_refund_of_one_window_are_both_applied() {
    let window = r#"{"rules":[{"name":"llm","route":"/v1/*","algorithm":"sliding-window","limits":[
        {"name":"tokens","by":"user","capacity":100,"refill":"100/h",
         "cost":{"reserve":10,"settle":"header:x-usage-tokens"}}]}]}"#;
    let rest = Rest::new();
    let config = config(window);
    let mut gw = Gateway::new(&config).with_instance_id("window");
    let user = format!("w{}", std::process::id());
    let key = format!("rate:{{{user}}}:/v1/%2A#tokens");
    let first = send_to(&mut gw, &rest, "/v1/chat", &user, T0);
    let second = send_to(&mut gw, &rest, "/v1/chat", &user, T0 + 1.0);
    let count = |rest: &Rest| rest.redis(&["HGET", &key, "count"]).as_str().unwrap().parse::<f64>().unwrap();
    assert_eq!(count(&rest), 20.0, "two reservations of 10");
    let Step::Wait { ticket, ms } = delivered(&mut gw, &first, "1\n30", T0 + 100.0) else { panic!("the batch's wait") };
    assert_eq!(delivered(&mut gw, &second, "1\n2", T0 + 101.0), Step::Done, "joins the batch");
    let next = gw.resume(ticket, Reply::Woke, T0 + 100.0 + f64::from(ms));
    assert_eq!(follow(&mut gw, &rest, next, T0 + 200.0), 2, "two calls: the key once in each");
    assert_eq!(count(&rest), 32.0, "20 reserved, 20 charged, 8 refunded");
    assert_eq!(gw.pending(), 0);
}
