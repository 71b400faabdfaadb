//! upstash-local: an Upstash-compatible REST endpoint over a real Redis.
//!
//! `POST /` runs one command (`["EVALSHA", sha, "1", key, …]`), `POST /pipeline`
//! a list of commands, `POST /multi-exec` a list in one transaction; every call
//! needs `Authorization: Bearer <token>` (401 without). Answers are
//! `{"result": …}` (200) or `{"error": "…"}` (400 for a Redis error, 401, 500
//! when Redis is unreachable), as Upstash answers.
//!
//! Like Upstash it accepts the script flag `#!lua flags=allow-key-locking`:
//! vanilla Redis 7 rejects that flag, so it is stripped before Redis sees the
//! script, and EVALSHA keeps working with the SHA1 of the text as sent.
//!
//! Test switches (only with `--faults`): `POST /__faults` with
//! `{"latency_ms": 0, "hang": false, "status": 0, "body": null}` makes every
//! later call wait, never answer, or answer with that status/body.
//! `GET /__stats` counts calls, by command.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::net::TcpListener;

mod shebang;

const MAX_BODY: usize = 16 << 20;

#[derive(Default, Clone, Debug)]
struct Faults {
    latency_ms: u64,
    hang: bool,
    status: u16,
    body: Option<String>,
}

struct Server {
    token: String,
    redis: ConnectionManager,
    /// SHA1 of a script as sent → SHA1 of what Redis has (flag stripped).
    scripts: RwLock<HashMap<String, String>>,
    faults: Option<Mutex<Faults>>,
    calls: AtomicU64,
    commands: Mutex<HashMap<String, u64>>,
}

struct Args {
    listen: SocketAddr,
    redis: String,
    token: String,
    faults: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = "127.0.0.1:8079".to_string();
    let mut redis = "redis://127.0.0.1:6379".to_string();
    let mut token = std::env::var("UPSTASH_LOCAL_TOKEN").unwrap_or_default();
    let mut faults = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value("--listen")?,
            "--redis" => redis = value("--redis")?,
            "--token" => token = value("--token")?,
            "--faults" => faults = true,
            "-h" | "--help" => {
                println!("usage: upstash-local [--listen 127.0.0.1:8079] [--redis redis://127.0.0.1:6379] --token TOKEN [--faults]\n(the token may come from UPSTASH_LOCAL_TOKEN instead)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if token.is_empty() {
        return Err("a token is required: --token TOKEN or UPSTASH_LOCAL_TOKEN".into());
    }
    let listen = listen.parse().map_err(|e| format!("--listen {listen:?}: {e}"))?;
    Ok(Args { listen, redis, token, faults })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upstash-local: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upstash-local: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(args)) {
        eprintln!("upstash-local: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let client = redis::Client::open(args.redis.as_str()).map_err(|e| format!("--redis {}: {e}", args.redis))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(1);
    let redis = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| format!("cannot connect to Redis at {}: {e}", args.redis))?;
    let listener =
        TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let server = Arc::new(Server {
        token: args.token,
        redis,
        scripts: RwLock::new(HashMap::new()),
        faults: args.faults.then(|| Mutex::new(Faults::default())),
        calls: AtomicU64::new(0),
        commands: Mutex::new(HashMap::new()),
    });
    println!("upstash-local listening on http://{} (Redis {})", args.listen, args.redis);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("upstash-local: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path == "/__stats" && req.method() == Method::GET {
            return self.stats();
        }
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| same_secret(t, self.token.as_bytes()));
        if !authorized {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "ERR only POST is supported");
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("ERR cannot read the body: {e}")),
        };
        if path == "/__faults" {
            return self.set_faults(&body);
        }
        if let Some(response) = self.injected_fault().await {
            return response;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("ERR failed to parse the command: {e}")),
        };
        match path.trim_end_matches('/') {
            "" => match self.run(&parsed).await {
                Ok(result) => reply(StatusCode::OK, json!({ "result": result })),
                Err((status, message)) => error(status, message),
            },
            "/pipeline" | "/multi-exec" => {
                let Some(commands) = parsed.as_array() else {
                    return error(StatusCode::BAD_REQUEST, "ERR the body must be an array of commands");
                };
                if path.starts_with("/multi-exec") {
                    self.multi_exec(commands).await
                } else {
                    let mut results = Vec::with_capacity(commands.len());
                    for command in commands {
                        results.push(match self.run(command).await {
                            Ok(result) => json!({ "result": result }),
                            Err((_, message)) => json!({ "error": message }),
                        });
                    }
                    reply(StatusCode::OK, Value::Array(results))
                }
            }
            _ => error(StatusCode::NOT_FOUND, format!("ERR unknown endpoint {path}")),
        }
    }

    /// Runs one command; an error carries the HTTP status Upstash would use (400 for a
    /// Redis error, 500 when Redis cannot be reached).
    async fn run(&self, command: &Value) -> Result<Value, (StatusCode, String)> {
        let cmd = self.build(command).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
        let mut conn = self.redis.clone();
        cmd.query_async::<redis::Value>(&mut conn).await.map(to_json).map_err(redis_error)
    }

    async fn multi_exec(&self, commands: &[Value]) -> Response<Full<Bytes>> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for command in commands {
            match self.build(command) {
                Ok(cmd) => {
                    pipe.add_command(cmd);
                }
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            }
        }
        let mut conn = self.redis.clone();
        match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
            Ok(values) => reply(
                StatusCode::OK,
                Value::Array(values.into_iter().map(|v| json!({ "result": to_json(v) })).collect()),
            ),
            Err(e) => {
                let (status, message) = redis_error(e);
                error(status, message)
            }
        }
    }

    /// A Redis command from a JSON array, with script flags and SHAs translated.
    fn build(&self, command: &Value) -> Result<redis::Cmd, String> {
        let items = command.as_array().filter(|a| !a.is_empty()).ok_or("ERR a command is a non-empty JSON array")?;
        let mut args: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            args.push(match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return Err(format!("ERR unsupported argument {other}")),
            });
        }
        let name = args[0].to_ascii_uppercase();
        *self.commands.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default() += 1;
        match name.as_str() {
            "EVAL" | "EVAL_RO" if args.len() > 1 => {
                if let Some(stripped) = shebang::strip_upstash_flags(&args[1]) {
                    let sent = sha1_smol::Sha1::from(args[1].as_bytes()).digest().to_string();
                    let stored = sha1_smol::Sha1::from(stripped.as_bytes()).digest().to_string();
                    self.scripts.write().unwrap_or_else(|p| p.into_inner()).insert(sent, stored);
                    args[1] = stripped;
                }
            }
            "EVALSHA" | "EVALSHA_RO" if args.len() > 1 => args[1] = self.stored_sha(&args[1]),
            "SCRIPT" if args.len() > 2 && args[1].eq_ignore_ascii_case("LOAD") => {
                if let Some(stripped) = shebang::strip_upstash_flags(&args[2]) {
                    let sent = sha1_smol::Sha1::from(args[2].as_bytes()).digest().to_string();
                    let stored = sha1_smol::Sha1::from(stripped.as_bytes()).digest().to_string();
                    self.scripts.write().unwrap_or_else(|p| p.into_inner()).insert(sent, stored);
                    args[2] = stripped;
                }
            }
            "SCRIPT" if args.len() > 2 && args[1].eq_ignore_ascii_case("EXISTS") => {
                for sha in &mut args[2..] {
                    *sha = self.stored_sha(sha);
                }
            }
            _ => {}
        }
        let mut cmd = redis::cmd(&args[0]);
        for arg in &args[1..] {
            cmd.arg(arg.as_bytes());
        }
        Ok(cmd)
    }

    fn stored_sha(&self, sent: &str) -> String {
        let scripts = self.scripts.read().unwrap_or_else(|p| p.into_inner());
        scripts.get(&sent.to_ascii_lowercase()).cloned().unwrap_or_else(|| sent.to_string())
    }

    fn stats(&self) -> Response<Full<Bytes>> {
        let commands = self.commands.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reply(StatusCode::OK, json!({ "calls": self.calls.load(Ordering::Relaxed), "commands": commands }))
    }

    fn set_faults(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let Some(faults) = &self.faults else {
            return error(StatusCode::NOT_FOUND, "ERR fault injection is off (start with --faults)");
        };
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let next = Faults {
            latency_ms: v["latency_ms"].as_u64().unwrap_or(0),
            hang: v["hang"].as_bool().unwrap_or(false),
            status: v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
            body: v["body"].as_str().map(str::to_string),
        };
        *faults.lock().unwrap_or_else(|p| p.into_inner()) = next;
        reply(StatusCode::OK, json!({ "result": "OK" }))
    }

    async fn injected_fault(&self) -> Option<Response<Full<Bytes>>> {
        let faults = self.faults.as_ref()?.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if faults.hang {
            // Never answer; the connection stays open until the client gives up.
            std::future::pending::<()>().await;
        }
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.status != 0 {
            let mut response = Response::new(Full::new(Bytes::from(faults.body.unwrap_or_default())));
            *response.status_mut() = StatusCode::from_u16(faults.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(response);
        }
        faults.body.map(|b| Response::new(Full::new(Bytes::from(b))))
    }
}

/// Redis's error text as Upstash relays it ("NOSCRIPT No matching script…"), with its status.
fn redis_error(e: redis::RedisError) -> (StatusCode, String) {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("ERR Redis is unreachable: {e}"));
    }
    let message = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => format!("ERR {e}"),
    };
    (StatusCode::BAD_REQUEST, message)
}

fn to_json(value: redis::Value) -> Value {
    use redis::Value as R;
    match value {
        R::Nil => Value::Null,
        R::Int(i) => json!(i),
        R::BulkString(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        R::SimpleString(s) => Value::String(s),
        R::Okay => Value::String("OK".into()),
        R::Array(items) | R::Set(items) | R::Push { data: items, .. } => {
            Value::Array(items.into_iter().map(to_json).collect())
        }
        R::Map(pairs) => Value::Array(pairs.into_iter().flat_map(|(k, v)| [to_json(k), to_json(v)]).collect()),
        R::Double(d) => json!(d),
        R::Boolean(b) => json!(b),
        R::VerbatimString { text, .. } => Value::String(text),
        R::BigNumber(n) => Value::String(String::from_utf8_lossy(&n).into_owned()),
        R::Attribute { data, .. } => to_json(*data),
        R::ServerError(e) => json!({ "error": format!("{} {}", e.code(), e.details().unwrap_or_default()) }),
        _ => Value::Null,
    }
}
