//! A real redis-server per test, on a free loopback port, killed when the test ends
//! (a static would never be dropped, and would outlive the test binary). Tests that
//! need Redis fail loudly when it is not installed: they never skip.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): these tests need a real Redis; run scripts/setup")
            });
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return redis;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("valid URL")
    }

    pub fn connection(&self) -> redis::Connection {
        self.client().get_connection().expect("connect to the test Redis")
    }
}

/// Runs a future that never waits on anything outside itself (our test transports answer at once).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the test future waited on something that never wakes it"),
    }
}

/// A small deterministic random source (xorshift64*), so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- the executor, natively: a gateway's steps carried out against a real Redis ----

use std::cell::RefCell;

use edge_ratelimit::{Fetch, Gateway, Reply, Request, SignatureCheck, Step};
use serde_json::{json, Value};

/// A request as the executor reads it, kept owned: method, URL, and the headers the gateway asks for.
pub struct Req {
    pub method: String,
    pub url: String,
    pub headers: Vec<Option<String>>,
    /// What the executor reads when the gateway asks for the body.
    pub body: String,
}

impl Req {
    /// `method` on `target` (path and query) with `headers` (lower-case names); the gateway's list of
    /// header names decides which of them it sees, as in the Worker.
    pub fn new(gw: &Gateway<'_>, method: &str, target: &str, headers: &[(&str, &str)]) -> Req {
        let headers = gw
            .header_names()
            .iter()
            .map(|n| headers.iter().rev().find(|(h, _)| h == n).map(|(_, v)| v.to_string()))
            .collect();
        Req { method: method.into(), url: format!("https://gateway.test{target}"), headers, body: String::new() }
    }

    pub fn body(mut self, body: &str) -> Req {
        self.body = body.into();
        self
    }
}

/// The Upstash REST protocol straight to a Redis of its own: one command per POST, many per
/// pipeline, `{"result"}` / `{"error"}` as Upstash answers (a vanilla Redis, so the script's
/// shebang is refused once). Records the commands it was sent.
pub struct Rest {
    pub redis: Redis,
    con: RefCell<redis::Connection>,
    pub sent: RefCell<Vec<String>>,
}

pub fn to_json(v: redis::Value) -> Value {
    use redis::Value as V;
    match v {
        V::Nil => Value::Null,
        V::Int(i) => json!(i),
        V::BulkString(b) => json!(String::from_utf8_lossy(&b)),
        V::Array(items) | V::Set(items) => Value::Array(items.into_iter().map(to_json).collect()),
        V::SimpleString(s) => json!(s),
        V::Okay => json!("OK"),
        V::Double(d) => json!(d.to_string()),
        V::Map(pairs) => Value::Array(pairs.into_iter().flat_map(|(k, v)| [to_json(k), to_json(v)]).collect()),
        other => json!(format!("{other:?}")),
    }
}

impl Rest {
    pub fn new() -> Rest {
        let redis = Redis::start();
        let con = RefCell::new(redis.connection());
        Rest { redis, con, sent: RefCell::new(Vec::new()) }
    }

    fn run(&self, args: &[String]) -> Value {
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        match cmd.query::<redis::Value>(&mut self.con.borrow_mut()) {
            Ok(v) => json!({ "result": to_json(v) }),
            Err(e) => json!({ "error": format!("{} {}", e.code().unwrap_or("ERR"), e.detail().unwrap_or_default()) }),
        }
    }

    /// Runs one command now (test setup and inspection); its result.
    pub fn redis(&self, args: &[&str]) -> Value {
        self.run(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())["result"].clone()
    }

    /// The commands sent since the last call (their names: `EVALSHA`, `EVAL`, `PIPELINE`).
    pub fn take_sent(&self) -> Vec<String> {
        std::mem::take(&mut self.sent.borrow_mut())
    }

    /// The REST endpoint's answer to `fetch`.
    pub fn answer(&self, fetch: &Fetch) -> (u16, String) {
        if fetch.pipeline {
            self.sent.borrow_mut().push("PIPELINE".into());
            let commands: Vec<Vec<String>> = serde_json::from_str(&fetch.body).expect("a JSON array of commands");
            let replies: Vec<Value> = commands.iter().map(|c| self.run(c)).collect();
            return (200, Value::Array(replies).to_string());
        }
        let args: Vec<String> = serde_json::from_str(&fetch.body).expect("a JSON array of strings");
        self.sent.borrow_mut().push(args[0].clone());
        let reply = self.run(&args);
        (if reply.get("error").is_some() { 400 } else { 200 }, reply.to_string())
    }
}

/// What answers the gateway's fetches: one [`Rest`], or several databases ([`Shards`]).
pub trait Endpoint {
    fn answer(&self, fetch: &Fetch) -> (u16, String);
}

impl Endpoint for Rest {
    fn answer(&self, fetch: &Fetch) -> (u16, String) {
        Rest::answer(self, fetch)
    }
}

/// Several databases, each a [`Rest`] of its own: a fetch goes to its shard's.
pub struct Shards(pub Vec<Rest>);

impl Endpoint for Shards {
    fn answer(&self, fetch: &Fetch) -> (u16, String) {
        self.0[usize::from(fetch.shard)].answer(fetch)
    }
}

/// WebCrypto's part, natively: checks a signature the gateway hands out with jwt-compact's own
/// RSA, P-256 and Ed25519 (dev-dependencies only; the product's wasm has none of them).
pub fn webcrypto(check: &SignatureCheck) -> Option<bool> {
    use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey};
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{Algorithm, AlgorithmSignature};
    let jwk: JsonWebKey<'_> = serde_json::from_str(&check.jwk).ok()?;
    let data = check.data.as_bytes();
    Some(match check.alg {
        "RS256" => {
            let key = RsaPublicKey::try_from(&jwk).ok()?;
            let sig = <Rsa as Algorithm>::Signature::try_from_slice(&check.signature).ok()?;
            Rsa::rs256().verify_signature(&sig, &key, data)
        }
        "ES256" => {
            let key = <Es256 as Algorithm>::VerifyingKey::try_from(&jwk).ok()?;
            let Ok(sig) = <Es256 as Algorithm>::Signature::try_from_slice(&check.signature) else { return Some(false) };
            Es256.verify_signature(&sig, &key, data)
        }
        "EdDSA" => {
            let key = <Ed25519 as Algorithm>::VerifyingKey::try_from(&jwk).ok()?;
            let Ok(sig) = <Ed25519 as Algorithm>::Signature::try_from_slice(&check.signature) else {
                return Some(false);
            };
            Ed25519.verify_signature(&sig, &key, data)
        }
        _ => return None,
    })
}

/// Carries a request through the gateway at `now`: every fetch to `rest`, waits at once, signatures
/// with [`webcrypto`], the body from `req`; a report after the response is sent too. The final step:
/// `Respond` or `Forward`.
pub fn run<E: Endpoint>(gw: &mut Gateway<'_>, rest: &E, req: &Req, now: f64) -> Step {
    let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
    let request = Request { method: &req.method, url: &req.url, headers: &headers };
    let step = gw.begin(&request, now);
    carry(gw, rest, req, step, now)
}

/// Carries `step` (and those after it) out, as [`run`] does.
pub fn carry<E: Endpoint>(gw: &mut Gateway<'_>, rest: &E, req: &Req, mut step: Step, now: f64) -> Step {
    for _ in 0..100 {
        step = match step {
            Step::Fetch(f) => {
                let (status, body) = rest.answer(&f);
                gw.resume(f.ticket, Reply::Http { status, body: &body }, now)
            }
            // A call spread over several places: every piece carried out; one ends with the answer.
            Step::Fetches(fetches) => {
                let mut answer = Step::Done;
                for f in fetches {
                    let (status, body) = rest.answer(&f);
                    let next = gw.resume(f.ticket, Reply::Http { status, body: &body }, now);
                    let end = carry(gw, rest, req, next, now);
                    if end != Step::Done {
                        answer = end;
                    }
                }
                return answer;
            }
            Step::Wait { ticket, .. } => gw.resume(ticket, Reply::Woke, now),
            Step::Verify { ticket, check } => gw.resume(ticket, Reply::Signature(webcrypto(&check)), now),
            Step::ReadBody { ticket, max } => {
                let body = (req.body.len() <= max).then_some(req.body.as_str());
                gw.resume(ticket, Reply::Body(body), now)
            }
            Step::Respond { ref report, .. } | Step::Forward { ref report, .. } => {
                // The executor hands a response's headers to the runtime in one go: no name twice.
                let names: Vec<&str> = match &step {
                    Step::Respond { response, .. } => response.headers.iter().map(|(n, _)| *n).collect(),
                    Step::Forward { headers, .. } => headers.iter().map(|(n, _)| *n).collect(),
                    _ => Vec::new(),
                };
                for (i, n) in names.iter().enumerate() {
                    assert!(!names[..i].contains(n), "the header {n} twice in {step:?}");
                }
                if let Some(f) = report {
                    let (status, body) = rest.answer(f);
                    assert_eq!(gw.resume(f.ticket, Reply::Http { status, body: &body }, now), Step::Done);
                }
                return step;
            }
            Step::Return { ref report, .. } => {
                if let Some(f) = report {
                    let (status, body) = rest.answer(f);
                    assert_eq!(gw.resume(f.ticket, Reply::Http { status, body: &body }, now), Step::Done);
                }
                return step;
            }
            Step::Throw { .. } | Step::Done => return step,
        };
    }
    panic!("the request did not finish within 100 steps");
}

/// A final step's status (a forward is the origin's 200) and headers.
pub fn status(step: &Step) -> u16 {
    match step {
        Step::Respond { response, .. } => response.status,
        Step::Forward { .. } => 200,
        other => panic!("not a final step: {other:?}"),
    }
}

/// A header a final step sets (a response's, or one a forward adds).
pub fn header<'s>(step: &'s Step, name: &str) -> Option<&'s str> {
    let headers = match step {
        Step::Respond { response, .. } => &response.headers,
        Step::Forward { headers, .. } => headers,
        _ => return None,
    };
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

/// A response's body as JSON (`Null` for a forward or a non-JSON body).
pub fn body_json(step: &Step) -> Value {
    match step {
        Step::Respond { response, .. } => serde_json::from_str(response.text()).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The bucket keys of the script call a request starts with (none: decided without Redis).
pub fn keys_of(step: &Step) -> Vec<String> {
    match step {
        Step::Fetch(f) if !f.pipeline => {
            let args: Vec<String> = serde_json::from_str(&f.body).expect("a JSON array");
            let n: usize = args[2].parse().expect("numkeys");
            let limits: usize = args[3 + n + 2].parse().expect("the number of limits");
            args[3..3 + limits].to_vec()
        }
        _ => Vec::new(),
    }
}

/// A configuration on the Worker's clock, callers named by `x-user-id`, with `extra` on top (the last
/// of a name wins); the REST URL is never dialled: a test's [`Rest`] answers every fetch itself.
pub fn worker_clock_config(extra: &[(&str, &str)]) -> edge_ratelimit::Config {
    let mut vars = vec![
        ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
        ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ("USER_ID_HEADER", "x-user-id"),
        ("RATE_LIMIT_CLOCK", "worker"),
    ];
    vars.extend_from_slice(extra);
    edge_ratelimit::Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
        .unwrap()
}
