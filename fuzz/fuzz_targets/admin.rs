//! Any admin request — method, path, query, authorization, body — and any Redis reply gets a
//! well-formed answer through the gateway's entry: a known status, a JSON or problem body that parses
//! (or the page, the document, Prometheus text), and a 400 that names a field. Never a panic, and
//! nothing left pending.
#![no_main]

use edge_ratelimit::{Body, Config, Gateway, Reply, Request, Step};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-admin-token-0123";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields separated by \x1f: method, rest, query, body, redis reply.
    let mut parts = text.split('\x1f');
    let method = parts.next().unwrap_or("GET");
    let rest = parts.next().unwrap_or("");
    let query = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let reply = parts.next().unwrap_or("[]");
    let policy = r#"{"tiers":["free"],"rules":[{"name":"r","route":"/api/*","limits":[{"name":"l","capacity":5,"refill":"5/min"}]}]}"#;
    let config = Config::from_env(|n| match n {
        "UPSTASH_REDIS_REST_URL" => Some("http://127.0.0.1:1".into()),
        "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
        "ADMIN_TOKEN" => Some(TOKEN.into()),
        "RATE_LIMIT_POLICY" => (data.first().copied().unwrap_or(0) % 2 == 0).then(|| policy.to_string()),
        _ => None,
    })
    .expect("valid configuration");
    let mut gw = Gateway::new(&config);
    let authorization = format!("Bearer {TOKEN}");
    let headers: Vec<Option<&str>> = gw
        .header_names()
        .iter()
        .map(|n| match n.as_str() {
            "authorization" => Some(authorization.as_str()),
            "cf-connecting-ip" => Some("203.0.113.9"),
            _ => None,
        })
        .collect();
    let url = format!("https://gw.test/__ratelimit/{rest}?{query}");
    let mut step = gw.begin(&Request { method, url: &url, headers: &headers }, 1.8e12);
    for _ in 0..10 {
        step = match step {
            Step::Fetch(f) => gw.resume(f.ticket, Reply::Http { status: 200, body: reply }, 1.8e12),
            Step::Wait { ticket, .. } => gw.resume(ticket, Reply::Woke, 1.8e12),
            Step::ReadBody { ticket, .. } => gw.resume(ticket, Reply::Body(Some(body)), 1.8e12),
            done => done,
        };
        if matches!(step, Step::Respond { .. } | Step::Forward { .. } | Step::Done) {
            break;
        }
    }
    let Step::Respond { response, .. } = step else { panic!("an admin request always gets an answer: {step:?}") };
    assert_eq!(gw.pending(), 0, "nothing left pending");
    assert!([200, 400, 404, 405, 413, 503].contains(&response.status), "status {}", response.status);
    let json = response.header("content-type").is_some_and(|t| t.starts_with("application/"));
    if json && matches!(response.body, Body::Text(_)) && !response.text().is_empty() {
        let v: serde_json::Value = serde_json::from_str(response.text()).expect("JSON bodies parse");
        if response.status == 400 {
            assert!(v["field"].as_str().is_some_and(|f| !f.is_empty()), "a 400 names its field");
        }
    }
});
