//! Any admin request — method, path, query, authorization, body — and any
//! Redis reply gets a well-formed answer: a known status, a JSON or problem
//! body that parses (or the page, the document, Prometheus text), and a 400
//! that names a field. Never a panic.
#![no_main]

use std::cell::RefCell;

use edge_ratelimit::{admin, AdminRequest, Config, HttpReply, Limiter, Transport, TransportError};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-admin-token-0123";

struct Canned(RefCell<String>);

impl Transport for Canned {
    async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
        Ok(())
    }
    async fn post(&self, _body: String) -> Result<HttpReply, TransportError> {
        Ok(HttpReply { status: 200, body: self.0.borrow().clone() })
    }
    async fn pipeline(&self, _body: String) -> Result<HttpReply, TransportError> {
        Ok(HttpReply { status: 200, body: self.0.borrow().clone() })
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("the canned transport never waits"),
    }
}

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
    let authorization = format!("Bearer {TOKEN}");
    let req = AdminRequest { method, rest, query, authorization: Some(&authorization), body };
    let r = block_on(admin(&config, &Limiter::default(), &Canned(RefCell::new(reply.to_string())), &req, 1.8e12));
    assert!([200, 400, 404, 405, 413, 503].contains(&r.status), "status {}", r.status);
    if r.content_type.starts_with("application/") && r.asset.is_none() {
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON bodies parse");
        if r.status == 400 {
            assert!(v["field"].as_str().is_some_and(|f| !f.is_empty()), "a 400 names its field");
        }
    }
});
