//! Any RPC call — method, options text, Redis reply — through the gateway's entry either throws a
//! TypeError / RangeError with a message, or returns the documented result object (JSON that parses,
//! `success` a boolean, whole numbers, `retryAfter` ≥ 1 exactly when a `limit` is denied). Never a panic,
//! nothing left pending.
#![no_main]

use edge_ratelimit::{Config, ErrorKind, Gateway, Reply, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields separated by \x1f: method, options (JSON text), the REST status, its body.
    let mut parts = text.split('\x1f');
    let method = parts.next().unwrap_or("limit");
    let options = parts.next().unwrap_or("");
    let status: u16 = parts.next().and_then(|s| s.trim().parse().ok()).filter(|s| (100..600).contains(s)).unwrap_or(200);
    let body = parts.next().unwrap_or(r#"{"result":[1,0,4,0,12000,5,60,0,1800000000000]}"#);
    let policy = r#"{"tiers":["free","pro"],"rules":[{"name":"r","route":"/api/*","limits":[{"name":"l","capacity":5,"refill":"5/min"},{"name":"s","by":"global","capacity":9,"refill":"9/min","shadow":true}]}]}"#;
    let config = Config::from_env(|n| match n {
        "UPSTASH_REDIS_REST_URL" => Some("http://127.0.0.1:1".into()),
        "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
        "RATE_LIMIT_POLICY" => (data.first().copied().unwrap_or(0) % 2 == 0).then(|| policy.to_string()),
        "FAIL_MODE" => (data.last().copied().unwrap_or(0) % 2 == 0).then(|| "closed".to_string()),
        _ => None,
    })
    .expect("valid configuration");
    let mut gw = Gateway::new(&config);
    let mut step = gw.call(method, options, 1.8e12);
    for _ in 0..10 {
        step = match step {
            Step::Fetch(f) => gw.resume(f.ticket, Reply::Http { status, body }, 1.8e12),
            Step::Wait { ticket, .. } => gw.resume(ticket, Reply::Woke, 1.8e12),
            done => done,
        };
        if matches!(step, Step::Return { .. } | Step::Throw { .. }) {
            break;
        }
    }
    // The fetch an executor sends after returning (a metrics report, or the read of which overrides
    // exist), answered with the same reply.
    if let Step::Return { report: Some(f), .. } = &step {
        let after = gw.resume(f.ticket, Reply::Http { status, body }, 1.8e12);
        assert!(matches!(after, Step::Done), "{after:?}");
    }
    match step {
        Step::Throw { error, .. } => {
            assert!(matches!(error.kind, ErrorKind::Type | ErrorKind::Range), "{error:?}");
            assert!(error.message.contains("options") || error.message.contains("method"), "{}", error.message);
        }
        Step::Return { value, .. } => {
            let v: serde_json::Value = serde_json::from_str(&value).expect("the result is JSON");
            let success = v["success"].as_bool().expect("success is a boolean");
            if method == "reset" {
                assert!(v["deleted"].is_u64());
            } else {
                for field in ["remaining", "reset", "retryAfter", "limit"] {
                    assert!(v[field].is_u64(), "{field} in {v}");
                }
                assert!(v["name"].is_string() && v["shadowDenied"].is_boolean(), "{v}");
                if method == "limit" {
                    assert_eq!(v["retryAfter"].as_u64().unwrap() >= 1, !success, "{v}");
                }
            }
        }
        other => panic!("an RPC call always returns or throws: {other:?}"),
    }
    assert_eq!(gw.pending(), 0, "nothing left pending");
});
