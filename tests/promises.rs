//! Issue 23, item 7: promises of the README that no native test guarded (small bugs breaking them
//! survived `cargo test --workspace`). Each test here names its promise, and probes the boundary on
//! both sides: exactly at a limit (kept) and one past it (refused, hashed, settled at the
//! reservation…), in bytes where the README says bytes. `scripts/mutants` breaks each of them on
//! purpose. Most drive the public gateway with scripted REST replies (no Redis needed); the lease
//! chain runs against a real Redis, since leases are granted by the script.

mod common;

use common::{keys_of, Req, Rest};
use edge_ratelimit::{
    bucket::Mode, bucket_key, Caller, Config, ErrorKind, Gateway, LeaseBook, LeaseConfig, Limit, LimitStatus, Refill,
    Reply, Request, Step, Want, MAX_KEY_BYTES, MIN_LEASE,
};
use edge_ratelimit::{Delivered, Settle};
use serde_json::Value;

const T0: f64 = 1.8e12;
const ADMIN: &str = "an-admin-token-of-thirty-two-bytes-or-more";
/// The key and path bounds of `src/identity/key.rs` (not exported): ids over 256 bytes and paths over 1024
/// bytes are hashed.
const MAX_ID_BYTES: usize = 256;
const MAX_PATH_BYTES: usize = 1024;
const BILLION: u64 = 1_000_000_000;

fn config(extra: &[(&str, &str)]) -> Config {
    common::worker_clock_config(extra)
}

/// The first step of `method target` with `headers`.
fn begin(gw: &mut Gateway<'_>, method: &str, target: &str, headers: &[(&str, &str)], now: f64) -> Step {
    let req = Req::new(gw, method, target, headers);
    let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
    gw.begin(&Request { method: &req.method, url: &req.url, headers: &headers }, now)
}

/// A script reply: `allowed`, `denied_by` (1-based, 0: none), six integers per limit (remaining,
/// retry ms, reset ms, capacity, window s, leased), then the script's time.
fn script_reply(allowed: bool, denied_by: usize, limits: &[[i64; 6]]) -> String {
    let mut ints = vec![i64::from(allowed), denied_by as i64];
    for l in limits {
        ints.extend_from_slice(l);
    }
    ints.push(T0 as i64);
    format!("{{\"result\":{}}}", Value::from(ints))
}

fn fetch(step: Step) -> edge_ratelimit::Fetch {
    match step {
        Step::Fetch(f) => f,
        other => panic!("expected a REST call, got {other:?}"),
    }
}

fn hashed(key: &str) -> bool {
    key.contains("@sha256/")
}

// ---------------------------------------------------------------- boundaries ----------------

/// An RPC key is 1 to 4096 *bytes* (after trimming): exactly 4096 bytes is accepted, 4097 is a
/// `RangeError`, whatever its number of characters.
#[test]
fn an_rpc_key_of_exactly_the_maximum_bytes_is_accepted_and_one_byte_more_refused() {
    assert_eq!(MAX_KEY_BYTES, 4096);
    let c = config(&[]);
    let mut gw = Gateway::new(&c);
    let call = |gw: &mut Gateway<'_>, key: &str| gw.call("limit", &serde_json::json!({ "key": key }).to_string(), T0);
    let accepted = [
        "k".repeat(MAX_KEY_BYTES),
        "é".repeat(MAX_KEY_BYTES / 2),                 // 2048 characters, 4096 bytes
        "😀".repeat(MAX_KEY_BYTES / 4),                // 1024 characters, 4096 bytes
        format!("  {}\t ", "k".repeat(MAX_KEY_BYTES)), // measured after trimming
        format!("{}{}", "é".repeat(MAX_KEY_BYTES / 2 - 1), "kk"), // 4096 bytes
    ];
    for key in &accepted {
        let step = call(&mut gw, key);
        let keys = keys_of(&step);
        assert_eq!(keys.len(), 1, "{} bytes accepted: {step:?}", key.trim().len());
        assert!(keys[0].starts_with("rate:{@rpc/@sha256/"), "a long key is hashed in Redis: {}", keys[0]);
    }
    let refused = [
        "k".repeat(MAX_KEY_BYTES + 1),
        format!("{}k", "é".repeat(MAX_KEY_BYTES / 2)), // 2049 characters, 4097 bytes
        format!("{}é", "k".repeat(MAX_KEY_BYTES - 1)), // 4096 characters, 4097 bytes
        format!("{}k", "😀".repeat(MAX_KEY_BYTES / 4)), // 1025 characters, 4097 bytes
        "€".repeat(1366),                              // 1366 characters, 4098 bytes
    ];
    for key in &refused {
        match call(&mut gw, key) {
            Step::Throw { error, .. } => {
                assert_eq!(error.kind, ErrorKind::Range, "{} bytes: {error:?}", key.len());
                assert!(error.message.contains(&format!("{} bytes long", key.len())), "{}", error.message);
            }
            other => panic!("a key of {} bytes ({} chars) was accepted: {other:?}", key.len(), key.chars().count()),
        }
    }
}

/// A path of exactly 1024 bytes stays plain in the bucket key (and keeps its route override); one
/// byte more is hashed (and has none).
#[test]
fn a_path_of_exactly_1024_bytes_stays_plain_and_one_more_is_hashed() {
    let c = config(&[]);
    let mut gw = Gateway::new(&c);
    for (len, plain) in [(MAX_PATH_BYTES - 1, true), (MAX_PATH_BYTES, true), (MAX_PATH_BYTES + 1, false)] {
        let path = format!("/{}", "p".repeat(len - 1));
        assert_eq!(path.len(), len);
        let Step::Fetch(f) = begin(&mut gw, "GET", &path, &[("x-user-id", "alice")], T0) else { panic!("{len}") };
        let keys = keys_of(&Step::Fetch(f.clone()));
        let route_override = format!("ratelimit:override:route:{path}\"");
        if plain {
            assert_eq!(keys, [format!("rate:{{alice}}:{path}")], "{len} bytes: plain");
            assert!(f.body.contains(&route_override), "{len} bytes: the path's route override is read");
        } else {
            assert!(keys[0].starts_with("rate:{alice}:@sha256/"), "{len} bytes: hashed, {}", &keys[0][..40]);
            assert_eq!(keys[0].len(), "rate:{alice}:@sha256/".len() + 64);
            assert!(!f.body.contains("ratelimit:override:route:"), "{len} bytes: no route override");
        }
    }
    // In bytes, not characters: 1024 bytes of two-byte characters stay plain, 1025 are hashed.
    let alice = Caller::User("alice".into());
    let at = format!("/{}p", "é".repeat(511)); // 1024 bytes, 513 characters
    assert_eq!((at.len(), bucket_key(&alice, &at)), (1024, format!("rate:{{alice}}:{at}")));
    let over = format!("/{}", "é".repeat(512)); // 1025 bytes, 513 characters
    assert!(bucket_key(&alice, &over).starts_with("rate:{alice}:@sha256/"), "1025 bytes: hashed");
    let over4 = format!("/{}", "😀".repeat(256)); // 1025 bytes, 257 characters
    assert!(hashed(&bucket_key(&alice, &over4)));
    assert_ne!(bucket_key(&alice, &over), bucket_key(&alice, &format!("{over}x")), "each its own digest");
}

/// User ids over 256 *bytes* are hashed: a 256-byte id stays (escaped) in the key, 257 bytes are
/// hashed — even with far fewer than 256 characters.
#[test]
fn user_ids_over_256_bytes_are_hashed_whatever_their_characters() {
    let c = config(&[]);
    let mut gw = Gateway::new(&c);
    let cases: Vec<(String, bool)> = vec![
        ("u".repeat(MAX_ID_BYTES), false),
        ("u".repeat(MAX_ID_BYTES + 1), true),
        ("é".repeat(MAX_ID_BYTES / 2), false),   // 128 characters, 256 bytes
        (format!("{}u", "é".repeat(128)), true), // 129 characters, 257 bytes
        ("€".repeat(85), false),                 // 255 bytes
        ("€".repeat(86), true),                  // 86 characters, 258 bytes
        ("😀".repeat(64), false),                // 64 characters, 256 bytes
        (format!("{}u", "😀".repeat(64)), true), // 65 characters, 257 bytes
        ("é".repeat(200), true),                 // 200 characters, 400 bytes
    ];
    for (id, hash) in &cases {
        let key = bucket_key(&Caller::User(id.clone()), "/p");
        assert_eq!(hashed(&key), *hash, "{} bytes, {} chars: {key}", id.len(), id.chars().count());
        // The gateway's key for a caller with that id, and the RPC key space's.
        let step = begin(&mut gw, "GET", "/p", &[("x-user-id", id)], T0);
        assert_eq!(keys_of(&step), std::slice::from_ref(&key), "{} bytes through the gateway", id.len());
        let rpc = gw.call("limit", &serde_json::json!({ "key": id }).to_string(), T0);
        let rpc_key = &keys_of(&rpc)[0];
        assert_eq!(rpc_key.starts_with("rate:{@rpc/@sha256/"), *hash, "{} bytes through RPC: {rpc_key}", id.len());
        if !hash {
            assert!(key.starts_with("rate:") && key.ends_with(":/p") && !hashed(&key));
            assert!(key.len() >= 5 + id.len() + 3, "escaped, not shortened: {key}");
        }
    }
}

// ------------------------------------------------------- upper limits of inputs -------------

/// An RPC `cost` is a whole number from 1 to 1,000,000,000: exactly 10⁹ is accepted (and sent as
/// the cost), 10⁹ + 1 and anything beyond a u32 is a `RangeError`.
#[test]
fn an_rpc_cost_above_a_billion_is_a_range_error_and_exactly_a_billion_is_accepted() {
    let c = config(&[("RATE_LIMIT_CAPACITY", "1000000000"), ("RATE_LIMIT_REFILL", "1000000000/d")]);
    let mut gw = Gateway::new(&c);
    for cost in [1, 2, BILLION - 1, BILLION] {
        let step = gw.call("limit", &format!(r#"{{"key":"k","cost":{cost}}}"#), T0);
        let f = fetch(step);
        let args: Vec<String> = serde_json::from_str(&f.body).unwrap();
        assert!(args.contains(&cost.to_string()), "cost {cost} is sent as is: {args:?}");
        let peek = gw.call("peek", &format!(r#"{{"key":"k","cost":{cost}}}"#), T0);
        assert!(matches!(peek, Step::Fetch(_)), "peek of cost {cost}: {peek:?}");
    }
    for cost in [
        (BILLION + 1).to_string(),
        (2 * BILLION).to_string(),
        "4294967295".into(),
        "4294967296".into(), // 2³²: would wrap to 0 as a u32
        "4294967297".into(), // would wrap to 1
        "18446744073709551615".into(),
        "1e10".into(),
        "0".into(),
    ] {
        for method in ["limit", "peek"] {
            match gw.call(method, &format!(r#"{{"key":"k","cost":{cost}}}"#), T0) {
                Step::Throw { error, .. } => {
                    assert_eq!(error.kind, ErrorKind::Range, "{method} cost {cost}: {error:?}");
                    assert!(error.message.contains("from 1 to 1000000000"), "{}", error.message);
                }
                other => panic!("{method} with cost {cost} was accepted: {other:?}"),
            }
        }
    }
}

/// A settled usage is a whole number from 0 to 10⁹ (a header's or an SSE event's, integer or
/// integral float): exactly 10⁹ counts, anything above settles at the reservation.
#[test]
fn a_usage_above_a_billion_settles_at_the_reservation_and_exactly_a_billion_counts() {
    let sse = Settle::parse("sse:usage.total_tokens", false).unwrap();
    let names = vec!["content-type".to_string()];
    let event = |n: &str| format!("1\ntext/event-stream\0{{\"usage\":{{\"total_tokens\":{n}}}}}");
    let read = |n: &str| sse.actual(&Delivered::decode(&event(n), &names));
    assert_eq!(read("1000000000"), Some(1_000_000_000));
    assert_eq!(read("999999999"), Some(999_999_999));
    assert_eq!(read("1000000000.0"), Some(1_000_000_000), "an integral float");
    assert_eq!(read("0"), Some(0));
    for over in ["1000000001", "1000000001.0", "4294967296", "4294967296.0", "1e10", "18446744073709551615", "1e300"] {
        assert_eq!(read(over), None, "{over}: missing, settled at the reservation");
    }

    let header = Settle::parse("header:x-usage", false).unwrap();
    let names = vec!["x-usage".to_string()];
    let read = |v: &str| header.actual(&Delivered::decode(&format!("1\n{v}"), &names));
    assert_eq!(read("1000000000"), Some(1_000_000_000));
    assert_eq!(read(" 1000000000 "), Some(1_000_000_000));
    for over in ["1000000001", "4294967296", "4294967297", "9999999999"] {
        assert_eq!(read(over), None, "{over}");
    }
}

const STREAMED: &str = r#"{"rules":[{"name":"llm","route":"/v1/*","limits":[
    {"name":"tokens","by":"user","capacity":100,"refill":"1/d",
     "cost":{"reserve":10,"settle":"sse:usage.total_tokens"}}]}]}"#;

/// Through the gateway: a stream whose usage is above 10⁹ settles at the reservation (no settle call
/// at all, counted missing), one of exactly 10⁹ is charged (a settle call).
#[test]
fn through_the_gateway_a_streamed_usage_above_a_billion_sends_no_settle_call() {
    let c = config(&[("RATE_LIMIT_POLICY", STREAMED), ("ADMIN_TOKEN", ADMIN), ("METRICS_FLUSH_MS", "0")]);
    for (usage, charged) in
        [("1000000001", false), ("1000000000", true), ("1000000000.0", true), ("4294967296", false), ("90", true)]
    {
        let mut gw = Gateway::new(&c).with_instance_id("sse");
        let f = fetch(begin(&mut gw, "POST", "/v1/chat", &[("x-user-id", "u")], T0));
        let reply = script_reply(true, 0, &[[90, 0, 0, 100, 86_400 * 100, 0]]);
        let step = gw.resume(f.ticket, Reply::Http { status: 200, body: &reply }, T0 + 1.0);
        let Step::Forward { watch: Some(w), .. } = step else { panic!("a watched forward: {step:?}") };
        assert!(w.until_end && w.sse_keys == ["total_tokens"], "{w:?}");
        let text = format!("1\ntext/event-stream\0{{\"usage\":{{\"total_tokens\":{usage}}}}}");
        let next = gw.resume(w.ticket, Reply::Delivered(&text), T0 + 2.0);
        match (charged, &next) {
            (true, Step::Wait { ticket, .. }) => {
                let f = fetch(gw.resume(*ticket, Reply::Woke, T0 + 2.0));
                assert!(!f.pipeline, "{usage}: one settle call");
            }
            (false, Step::Done) => {}
            _ => panic!("usage {usage}: {next:?}"),
        }
        // What the next report counts: settled, or missing (settled at the reservation).
        let next = begin(&mut gw, "POST", "/v1/chat", &[("x-user-id", "u2")], T0 + 3.0);
        let r = report_after(&mut gw, next);
        assert_eq!(r.body.contains("\"held|settled\""), charged, "usage {usage}: {}", r.body);
        assert_eq!(r.body.contains("\"held|missing\""), !charged, "usage {usage}: {}", r.body);
    }
}

/// The metrics report sent after the decision `step` started (its script call answered: allowed,
/// every limit with room).
fn report_after(gw: &mut Gateway<'_>, step: Step) -> edge_ratelimit::Fetch {
    let f = fetch(step);
    let n = keys_of(&Step::Fetch(f.clone())).len();
    let reply = script_reply(true, 0, &vec![[1, 0, 0, 100, 60, 0]; n]);
    match gw.resume(f.ticket, Reply::Http { status: 200, body: &reply }, T0 + 10.0) {
        Step::Forward { report: Some(r), .. } => r,
        other => panic!("a report (flush 0): {other:?}"),
    }
}

// ------------------------------------------------------------------ lease timing -------------

fn limit(capacity: u32) -> Limit {
    Limit::new(capacity, Refill::parse(&format!("{capacity}/min")).unwrap(), 60).unwrap()
}

fn status_of(capacity: u32) -> LimitStatus {
    LimitStatus {
        name: "p".into(),
        shadow: false,
        capacity,
        window_s: 60,
        remaining: u64::from(capacity) / 2,
        retry_ms: 0,
        reset_ms: 0,
    }
}

/// A limit leases only when its cap — ⌊share × capacity⌋ — covers two requests' cost and
/// `MIN_LEASE` tokens, and only enforcing or shadow.
#[test]
fn a_limit_leases_only_when_its_cap_covers_two_requests_cost() {
    assert_eq!(MIN_LEASE, 4);
    let book = LeaseBook::new(LeaseConfig::default()); // share 0.05
    let cases: &[(u32, u32, bool)] = &[
        (80, 1, true),   // cap 4 = MIN_LEASE
        (79, 1, false),  // cap 3 (3.95 floored)
        (80, 2, true),   // cap 4 = 2 × 2
        (99, 2, true),   // cap 4 (4.95 floored) = 2 × 2
        (119, 3, false), // cap 5 < 2 × 3
        (120, 3, true),  // cap 6 = 2 × 3
        (139, 3, true),  // cap 6
        (199, 5, false), // cap 9 < 10
        (200, 5, true),  // cap 10 = 2 × 5
        (1000, 25, true),
        (1000, 26, false),
        (1_000_000_000, 25_000_000, true),
        (1_000_000_000, 25_000_001, false),
    ];
    for &(capacity, cost, leases) in cases {
        let l = limit(capacity);
        assert_eq!(book.can_lease(&l, cost, Mode::Enforce), leases, "capacity {capacity}, cost {cost}");
        assert_eq!(book.can_lease(&l, cost, Mode::Shadow), leases, "shadow: capacity {capacity}, cost {cost}");
        assert!(!book.can_lease(&l, cost, Mode::Report) && !book.can_lease(&l, cost, Mode::Candidate));
        assert!(!book.can_lease(&l.clone().with_lease(false), cost, Mode::Enforce), "lease: false");
    }
    // A larger share: capacity 8 at 0.5 → cap 4, two requests of cost 2; cost 3 needs capacity 12.
    let half = LeaseBook::new(LeaseConfig { share: 0.5, ..LeaseConfig::default() });
    assert!(half.can_lease(&limit(8), 1, Mode::Enforce) && half.can_lease(&limit(8), 2, Mode::Enforce));
    assert!(!half.can_lease(&limit(7), 1, Mode::Enforce), "cap 3 < MIN_LEASE");
    assert!(!half.can_lease(&limit(11), 3, Mode::Enforce) && half.can_lease(&limit(12), 3, Mode::Enforce));
    assert!(!half.can_lease(&limit(8), 3, Mode::Enforce), "cap 4 < 2 × 3 (MIN_LEASE alone is not enough)");
    let off = LeaseBook::new(LeaseConfig { on: false, ..LeaseConfig::default() });
    assert!(!off.can_lease(&limit(1_000_000), 1, Mode::Enforce), "RATE_LIMIT_LEASES = off");
}

/// The same through the gateway against Redis: cost 3 at capacity 120 leases (busy requests are
/// answered without a call), at capacity 119 every request asks Redis.
#[test]
fn through_the_gateway_cost_3_leases_at_capacity_120_and_not_at_119() {
    for (capacity, leases) in [(119, false), (120, true), (79, false), (80, true)] {
        let rest = Rest::new();
        let cost = if capacity >= 100 { 3 } else { 1 };
        let policy = format!(
            r#"{{"rules":[{{"name":"busy","route":"/api/*","limits":[
            {{"name":"big","capacity":{capacity},"refill":"1/d","cost":{cost}}}]}}]}}"#
        );
        let c = config(&[("RATE_LIMIT_POLICY", &policy)]);
        let mut gw = Gateway::new(&c);
        let mut calls = 0; // requests that asked Redis
        for i in 0..20 {
            let now = T0 + f64::from(i);
            let mut step = begin(&mut gw, "GET", "/api/x", &[("x-user-id", "busy")], now);
            if matches!(step, Step::Fetch(_)) {
                calls += 1;
            }
            while let Step::Fetch(f) = step {
                let (code, body) = rest.answer(&f);
                step = gw.resume(f.ticket, Reply::Http { status: code, body: &body }, now);
            }
            assert!(matches!(step, Step::Forward { .. }), "{capacity}: request {i} admitted: {step:?}");
        }
        let leased = gw.limiter().leased_tokens() > 0 || calls < 20;
        assert_eq!(leased, leases, "capacity {capacity}, cost {cost}: {calls} calls for 20 requests");
        if !leases {
            assert_eq!(calls, 20, "capacity {capacity}: every request asks Redis");
        }
    }
}

/// A grant may be spent until its horizon and not at it: at `horizon` it has ended, and its unspent
/// tokens are due to go back.
#[test]
fn a_grant_ends_exactly_at_its_horizon_and_goes_back() {
    let l = limit(1000);
    let mut book = LeaseBook::new(LeaseConfig { horizon_ms: 100, ..LeaseConfig::default() });
    book.grant("k", 10, 1, &status_of(1000), &l, &[], 0.0);
    assert_eq!(book.held("k", 99.999), 10);
    assert_eq!(book.held("k", 100.0), 0, "ended at its horizon");
    let want = |cost| Want { key: "k", limit: &l, cost, mode: Mode::Enforce };
    assert!(book.spend(&[want(1)], 99.0).is_some(), "spendable before its end");
    assert_eq!(book.held("k", 99.0), 9);
    assert!(book.spend(&[want(1)], 100.0).is_none(), "not at its end");
    let due = book.due(100.0);
    assert_eq!(due.iter().map(|g| g.tokens).sum::<u64>(), 9, "the unspent rest goes back: {due:?}");
    assert_eq!(book.outstanding(), 0);
    // A renewal adds a grant of its own: it never extends an older one.
    book.grant("j", 4, 2, &status_of(1000), &l, &[], 0.0);
    book.grant("j", 6, 3, &status_of(1000), &l, &[], 60.0);
    assert_eq!((book.held("j", 99.0), book.held("j", 100.0), book.held("j", 159.0)), (10, 6, 6));
    assert_eq!(book.held("j", 160.0), 0);
    assert_eq!(book.due(100.0).iter().map(|g| g.tokens).sum::<u64>(), 4, "the first grant only");
    assert_eq!(book.due(160.0).iter().map(|g| g.tokens).sum::<u64>(), 6);
}

/// The wake that gives leases back is scheduled once, shortly after the first grant ends (never
/// before it, within 2 s of it); while it is due nothing else is scheduled, but a wake long overdue
/// (its executor was stopped: 2 horizons + 1 s past its time) is rescheduled.
#[test]
fn an_overdue_wake_is_rescheduled_and_a_timely_one_is_not_doubled() {
    let l = limit(1000);
    let mut book = LeaseBook::new(LeaseConfig { horizon_ms: 1000, ..LeaseConfig::default() });
    assert_eq!(book.schedule_wake(0.0), None, "no lease, no wake");
    book.grant("k", 10, 1, &status_of(1000), &l, &[], 0.0);
    let ms = book.schedule_wake(0.0).expect("a wake for the lease");
    assert!((1000..=3000).contains(&ms), "after the grant's end (1000 ms), within 2 s of it: {ms}");
    let at = f64::from(ms); // the wake is due then
    let overdue = at + 2.0 * 1000.0 + 1000.0;
    for now in [1.0, at, at + 1.0, overdue - 1.0, overdue - 0.001] {
        assert_eq!(book.schedule_wake(now), None, "at {now}: the wake at {at} is still expected");
    }
    let again = book.schedule_wake(overdue).expect("a wake long overdue is rescheduled");
    assert!(f64::from(again) <= 2000.0, "the grant ended long ago: soon ({again} ms)");
    assert_eq!(book.schedule_wake(overdue + 1.0), None, "and counted as scheduled again");
    // The wake fired: the next one is scheduled by `woke`, and none beside it.
    assert!(book.woke(overdue + 100.0).is_some(), "the ended grant is still to give back");
    let back = book.due(overdue + 100.0);
    assert_eq!(back.iter().map(|g| g.tokens).sum::<u64>(), 10);
    assert_eq!(book.woke(overdue + 200.0), None, "nothing left: the chain ends");
    book.grant("k", 5, 2, &status_of(1000), &l, &[], overdue + 300.0);
    assert!(book.schedule_wake(overdue + 300.0).is_some(), "a new lease after the chain starts a new one");
    // Unscheduled (a chain ended at its age limit): the next lease schedules at once.
    book.unschedule_wake();
    assert!(book.schedule_wake(overdue + 301.0).is_some());
}

/// One chain of lease wakes under steady traffic, against Redis: it ends within 20 s of its start
/// with everything given back; the next lease starts a new chain (while tokens are out, a wake is
/// always coming); when traffic stops, every token goes back.
#[test]
fn a_lease_chain_ends_within_its_bound_and_the_next_lease_starts_another() {
    let rest = Rest::new();
    let c = config(&[("RATE_LIMIT_CAPACITY", "100000"), ("RATE_LIMIT_REFILL", "100000/min")]);
    let mut gw = Gateway::new(&c);
    // Pending wakes: (ticket, when, the start of its chain — `None` for a renewal).
    let mut wakes: Vec<(u32, f64, Option<f64>)> = Vec::new();
    let mut chains: Vec<(f64, f64, u64)> = Vec::new(); // (start, end, tokens still out at its end)
    let mut dropped_first: Option<f64> = None;

    /// Carries `step` out at `now`; a wait joins `wakes` (in `chain`, or a new chain starting now).
    fn carry(
        gw: &mut Gateway<'_>,
        rest: &Rest,
        mut step: Step,
        now: f64,
        chain: Option<f64>,
        wakes: &mut Vec<(u32, f64, Option<f64>)>,
        chains: &mut Vec<(f64, f64, u64)>,
    ) -> Step {
        loop {
            step = match step {
                Step::Fetch(f) => {
                    let (code, body) = rest.answer(&f);
                    gw.resume(f.ticket, Reply::Http { status: code, body: &body }, now)
                }
                Step::Wait { ticket, ms } => {
                    wakes.push((ticket, now + f64::from(ms), Some(chain.unwrap_or(now))));
                    return Step::Done;
                }
                Step::Done => {
                    if let Some(start) = chain {
                        chains.push((start, now, gw.limiter().leased_tokens()));
                    }
                    return Step::Done;
                }
                Step::Forward { wake, .. } => {
                    if let Some(w) = wake {
                        let chain = if w.ms == 0 { None } else { Some(now) };
                        wakes.push((w.ticket, now + f64::from(w.ms), chain));
                    }
                    return Step::Done;
                }
                other => panic!("{other:?}"),
            };
        }
    }

    for pass in ["carried", "first wake lost"] {
        let start = if pass == "carried" { T0 } else { T0 + 100_000.0 };
        let (stop, mut next_request) = (start + 30_000.0, start + 1.0);
        let user = format!("busy-{}", pass.len());
        chains.clear();
        loop {
            let next_wake = wakes.iter().map(|w| w.1).fold(f64::INFINITY, f64::min);
            if next_request <= stop && next_request <= next_wake {
                let now = next_request;
                next_request += 10.0;
                let step = begin(&mut gw, "GET", "/api/busy", &[("x-user-id", &user)], now);
                let before = wakes.len();
                carry(&mut gw, &rest, step, now, None, &mut wakes, &mut chains);
                if pass != "carried" && dropped_first.is_none() && wakes.len() > before {
                    if let Some(i) = wakes[before..].iter().position(|w| w.2.is_some()).map(|i| before + i) {
                        dropped_first = Some(wakes[i].1); // the executor never carries it out
                        wakes.remove(i);
                    }
                }
            } else if next_wake.is_finite() {
                let i = wakes.iter().position(|w| w.1 == next_wake).unwrap();
                let (ticket, at, chain) = wakes.remove(i);
                let step = gw.resume(ticket, Reply::Woke, at);
                // (a renewal's wait, if any, starts a chain: `carry` makes it one)
                carry(&mut gw, &rest, step, at, chain, &mut wakes, &mut chains);
            } else {
                break;
            }
            let now = next_request.min(next_wake);
            // While tokens are out and the isolate is not waiting for an overdue wake, a wake is coming.
            let lost_wait = dropped_first.is_some_and(|at| now < at + 3_000.0 + 20.0);
            if gw.limiter().leased_tokens() > 0 && !lost_wait {
                assert!(
                    wakes.iter().any(|w| w.2.is_some()),
                    "{pass}: {} tokens out at {} ms with no wake to give them back (chains so far {chains:?})",
                    gw.limiter().leased_tokens(),
                    now - start
                );
            }
        }
        assert_eq!(gw.limiter().leased_tokens(), 0, "{pass}: every token given back once traffic stopped");
        assert!(chains.len() >= 2, "{pass}: 30 s of traffic take more than one chain: {chains:?}");
        for &(s, e, out) in &chains {
            assert!(e - s <= 20_000.0, "{pass}: a chain lasted {} ms: {chains:?}", e - s);
            assert_eq!(out, 0, "{pass}: a chain ended with {out} tokens still out");
        }
        let long = chains.iter().filter(|(s, e, _)| e - s >= 18_000.0).count();
        assert!(long >= 1, "{pass}: under steady traffic a chain runs to its bound: {chains:?}");
        if pass != "carried" {
            let lost = dropped_first.expect("a wake was dropped");
            let first = chains.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
            assert!(first >= lost + 3_000.0 && first <= lost + 3_100.0, "rescheduled once overdue: {first} vs {lost}");
        }
    }
}

// ------------------------------------------------------------------------- reports ----------

const QUOTA: &str = "/.well-known/ratelimit";
const QUOTA_POLICY: &str = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
    {"name":"hard","capacity":10,"refill":"10/min"},
    {"name":"soft","capacity":1,"refill":"1/h","shadow":true}]}]}"#;

/// The quota's `allowed_now` says whether every *enforcing* limit would let a request through: a
/// shadow limit short of tokens never makes it false, an enforcing one always does.
#[test]
fn the_quotas_allowed_now_ignores_shadow_limits() {
    let c = config(&[("RATE_LIMIT_POLICY", QUOTA_POLICY), ("QUOTA_PATH", QUOTA)]);
    let own = [59, 0, 1000, 60, 60, 0];
    let ok_hard = [10, 0, 0, 10, 60, 0];
    let no_hard = [0, 6_000, 60_000, 10, 60, 0];
    let ok_soft = [1, 0, 0, 1, 3600, 0];
    let no_soft = [0, 3_600_000, 3_600_000, 1, 3600, 0];
    for (hard, soft, allowed) in
        [(ok_hard, ok_soft, true), (ok_hard, no_soft, true), (no_hard, ok_soft, false), (no_hard, no_soft, false)]
    {
        let mut gw = Gateway::new(&c);
        let f = fetch(begin(&mut gw, "GET", &format!("{QUOTA}?path=/api/x"), &[("x-user-id", "q")], T0));
        let reply = script_reply(true, 0, &[own, hard, soft]);
        let step = gw.resume(f.ticket, Reply::Http { status: 200, body: &reply }, T0 + 1.0);
        let Step::Respond { response, .. } = &step else { panic!("{step:?}") };
        assert_eq!(response.status, 200);
        let body: Value = serde_json::from_str(response.text()).unwrap();
        assert_eq!(body["allowed_now"], allowed, "hard {hard:?}, soft {soft:?}: {body}");
        let soft_item = &body["limits"][1];
        assert_eq!((soft_item["name"].as_str(), soft_item["shadow"].as_bool()), (Some("soft"), Some(true)));
        assert_eq!(soft_item["retry_after_ms"], soft[1] as u64, "the shadow limit is still reported");
        assert_eq!(body["limits"][0]["shadow"], false);
    }
    // Only shadow limits, all short: a request would pass.
    let only_shadow = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
        {"name":"a","capacity":1,"refill":"1/h","shadow":true},{"name":"b","capacity":1,"refill":"1/h","shadow":true}]}]}"#;
    let c = config(&[("RATE_LIMIT_POLICY", only_shadow), ("QUOTA_PATH", QUOTA)]);
    let mut gw = Gateway::new(&c);
    let f = fetch(begin(&mut gw, "GET", &format!("{QUOTA}?path=/api/x"), &[("x-user-id", "q")], T0));
    let reply = script_reply(true, 0, &[own, no_soft, no_soft]);
    let Step::Respond { response, .. } = gw.resume(f.ticket, Reply::Http { status: 200, body: &reply }, T0) else {
        panic!()
    };
    let body: Value = serde_json::from_str(response.text()).unwrap();
    assert_eq!(body["allowed_now"], true, "{body}");
}

const LIVE: &str =
    r#"{"rules":[{"name":"api","route":"/api/*","limits":[{"name":"live","capacity":1,"refill":"1/h"}]}]}"#;
const TRIAL: &str = r#"{"rules":[{"name":"trial","route":"/api/*","limits":[
    {"name":"watch","capacity":5,"refill":"5/h","shadow":true},
    {"name":"strict","capacity":5,"refill":"5/h"}]}]}"#;

/// What the candidate's report counts for one request whose script call said `live` for the live
/// limit and `watch`, `strict` for the candidate's (its shadow limit first): the candidate fields of
/// the metrics report (`d|rule|limit` would deny, `a|rule|limit` would allow).
fn candidate_counts(live: [i64; 6], watch: [i64; 6], strict: [i64; 6]) -> Vec<String> {
    let c = config(&[
        ("RATE_LIMIT_POLICY", LIVE),
        ("RATE_LIMIT_POLICY_CANDIDATE", TRIAL),
        ("ADMIN_TOKEN", ADMIN),
        ("METRICS_FLUSH_MS", "0"),
    ]);
    let mut gw = Gateway::new(&c);
    let f = fetch(begin(&mut gw, "GET", "/api/x", &[("x-user-id", "cand")], T0));
    let keys = keys_of(&Step::Fetch(f.clone()));
    assert_eq!(keys.len(), 3, "the live limit and the candidate's two ride in one call: {keys:?}");
    let allowed = live[1] == 0;
    let reply = script_reply(allowed, if allowed { 0 } else { 1 }, &[live, watch, strict]);
    let step = gw.resume(f.ticket, Reply::Http { status: 200, body: &reply }, T0 + 1.0);
    let report = match &step {
        Step::Forward { report, .. } | Step::Respond { report, .. } => report.clone().expect("a report (flush 0)"),
        other => panic!("{other:?}"),
    };
    assert_eq!(allowed, matches!(step, Step::Forward { .. }), "the live policy decides: {step:?}");
    let commands: Vec<Vec<String>> = serde_json::from_str(&report.body).unwrap();
    commands
        .iter()
        .filter(|c| c[0] == "HINCRBY" && c[1].starts_with("ratelimit:candidate:"))
        .map(|c| c[2].clone())
        .filter(|f| f.starts_with("d|") || f.starts_with("a|"))
        .collect()
}

/// A candidate's shadow limits never count as denying or allowing, whatever the live verdict: a
/// would-deny goes to the first *counted* candidate limit short of tokens, a would-allow to each
/// counted limit only.
#[test]
fn a_candidates_shadow_limits_never_count_whatever_the_live_verdict() {
    let ok = [4, 0, 720_000, 5, 3600, 0];
    let short = [0, 720_000, 3_600_000, 5, 3600, 0];
    let live_ok = [0, 0, 3_600_000, 1, 3600, 0];
    let live_denied = [0, 3_600_000, 3_600_000, 1, 3600, 0];
    type Case = ([i64; 6], [i64; 6], [i64; 6], &'static [&'static str]);
    let cases: &[Case] = &[
        // live allows
        (live_ok, ok, ok, &[]),
        (live_ok, short, ok, &[]), // only the shadow limit is short: the candidate would allow too
        (live_ok, ok, short, &["d|trial|strict"]),
        (live_ok, short, short, &["d|trial|strict"]), // counted on the first *counted* limit short
        // live denies
        (live_denied, ok, ok, &["a|trial|strict"]),
        (live_denied, short, ok, &["a|trial|strict"]), // the shadow limit's shortness changes nothing
        (live_denied, ok, short, &[]),
        (live_denied, short, short, &[]),
    ];
    for (live, watch, strict, expected) in cases {
        let got = candidate_counts(*live, *watch, *strict);
        assert_eq!(got, *expected, "live {live:?}, watch (shadow) {watch:?}, strict {strict:?}");
    }
}

const SETTLED: &str = r#"{"rules":[{"name":"llm","route":"/v1/*","limits":[
    {"name":"tokens","by":"user","capacity":100,"refill":"1/d",
     "cost":{"reserve":10,"settle":"header:x-usage"}},
    {"name":"inflight","by":"user","concurrency":2}]}]}"#;

/// A request admitted with a reserved cost and a slot, delivered with usage `usage`: the first
/// settle call.
fn settle_call(gw: &mut Gateway<'_>, usage: &str) -> edge_ratelimit::Fetch {
    let f = fetch(begin(gw, "POST", "/v1/chat", &[("x-user-id", "s")], T0));
    let reply = script_reply(true, 0, &[[90, 0, 0, 100, 8_640_000, 0], [1, 0, 0, 2, 1, 0]]);
    let step = gw.resume(f.ticket, Reply::Http { status: 200, body: &reply }, T0 + 1.0);
    let Step::Forward { watch: Some(w), .. } = step else { panic!("a watched forward: {step:?}") };
    // (queued for the batch: nothing else is, so the batch's wait sends it)
    let Step::Wait { ticket, .. } = gw.resume(w.ticket, Reply::Delivered(&format!("1\n{usage}")), T0 + 2.0) else {
        panic!("the batch's wait")
    };
    fetch(gw.resume(ticket, Reply::Woke, T0 + 2.0))
}

/// A settle call without an answer (a timeout, an unreachable endpoint, a 5xx) is retried once —
/// never twice; an answer that is an error is not retried; the failure is counted.
#[test]
fn a_settle_call_is_retried_once_never_twice() {
    let c = config(&[("RATE_LIMIT_POLICY", SETTLED), ("ADMIN_TOKEN", ADMIN), ("METRICS_FLUSH_MS", "0")]);
    let lost: [Reply<'_>; 4] = [
        Reply::Timeout,
        Reply::Unreachable,
        Reply::Http { status: 503, body: "upstream down" },
        Reply::Http { status: 500, body: "{\"error\":\"internal\"}" },
    ];
    for first in lost {
        for second in lost {
            for usage in ["30", "10"] {
                // (30: a charge with its marker; 10: the reservation, only the slot to release)
                let mut gw = Gateway::new(&c).with_instance_id("retry");
                let f = settle_call(&mut gw, usage);
                let again = fetch(gw.resume(f.ticket, first, T0 + 3.0));
                let (a, b): (Vec<String>, Vec<String>) =
                    (serde_json::from_str(&f.body).unwrap(), serde_json::from_str(&again.body).unwrap());
                let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
                assert!(a.len() == b.len() && differ <= 1, "the same call again, at its own time ({first:?})");
                let last = gw.resume(again.ticket, second, T0 + 4.0);
                assert_eq!(last, Step::Done, "{first:?} then {second:?}: retried once, never twice");
                // Counted as failed in the next report.
                let next = begin(&mut gw, "POST", "/v1/chat", &[("x-user-id", "s2")], T0 + 5.0);
                let r = report_after(&mut gw, next);
                assert!(r.body.contains("\"held|release_failed\""), "{}", r.body);
                assert_eq!(r.body.contains("\"held|settle_failed\""), usage == "30", "{}", r.body);
            }
        }
        // A retry that is answered ends it.
        let mut gw = Gateway::new(&c).with_instance_id("retry");
        let f = settle_call(&mut gw, "30");
        let again = fetch(gw.resume(f.ticket, first, T0 + 3.0));
        let ok = gw.resume(again.ticket, Reply::Http { status: 200, body: "{\"result\":[1]}" }, T0 + 4.0);
        assert_eq!(ok, Step::Done);
    }
    // An error Redis answered (the call was refused, not lost) is not retried.
    let mut gw = Gateway::new(&c).with_instance_id("retry");
    let f = settle_call(&mut gw, "30");
    let refused = gw.resume(f.ticket, Reply::Http { status: 400, body: "{\"error\":\"ERR wrong\"}" }, T0 + 3.0);
    assert_eq!(refused, Step::Done, "{refused:?}");
}
