//! upstash-local: an Upstash-compatible REST endpoint over a real Redis.
//!
//! It answers what Upstash's REST API documents and the official clients use: `POST /` with a JSON
//! command, path-style commands (`GET /get/k`, `POST /set/k` with the value as the body, query pairs
//! as arguments), `POST /pipeline`, `POST /multi-exec` (one result or error per command), the event
//! streams `/subscribe/<channel>`, `/psubscribe/<pattern>` and `/monitor`; `Authorization: Bearer`
//! or `?_token=`; `Upstash-Encoding: base64`; `Upstash-Response-Format: json | resp2`; an
//! `upstash-sync-token` on every answer; CORS. Answers are `{"result": …}` (200) or
//! `{"error": "…"}` (400 for a Redis error, 401, 500 when Redis is unreachable).
//!
//! Every caller shares one Redis connection, so no request may change it: commands that change a
//! connection's state or administer the server are refused (`protocol::refused`), and blocking
//! commands and event streams get a connection of their own — at most `--dedicated` at once, a
//! blocking command for at most `--block-max-ms`.
//!
//! Like Upstash it accepts the script flag `#!lua flags=allow-key-locking`: vanilla Redis 7 rejects
//! that flag, so it is stripped before Redis sees the script, and EVALSHA keeps working with the
//! SHA1 of the text as sent.
//!
//! When `--redis` names a node of a Redis Cluster (`INFO cluster`: `cluster_enabled:1`), it serves
//! the whole cluster: every command goes to the master of its keys' slot (`cluster.rs`).
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

use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

mod body;
mod cluster;
mod protocol;
mod shebang;

use body::Out;
use protocol::{Args, Format};

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
    client: redis::Client,
    redis: ConnectionManager,
    /// SHA1 of a script as sent → SHA1 of what Redis has (flag stripped).
    scripts: RwLock<HashMap<String, String>>,
    /// On a cluster: each script Redis was given (by its SHA1 there), to load on a master that
    /// answers NOSCRIPT (each master caches scripts of its own).
    bodies: RwLock<HashMap<String, Vec<u8>>>,
    faults: Option<Mutex<Faults>>,
    calls: AtomicU64,
    commands: Mutex<HashMap<String, u64>>,
    /// Connections of their own (blocking commands, event streams) that may be open at once.
    dedicated: Arc<Semaphore>,
    dedicated_max: usize,
    block_max: Duration,
    /// The `upstash-sync-token` of the last answer (one Redis: every answer reads every write before it).
    sync: AtomicU64,
    /// When `--redis` names a node of a Redis Cluster: the cluster, every command routed by its keys' slot.
    cluster: Option<Arc<cluster::Cluster>>,
}

struct Options {
    listen: SocketAddr,
    redis: String,
    token: String,
    faults: bool,
    dedicated: usize,
    block_max_ms: u64,
}

fn parse_args() -> Result<Options, String> {
    let mut listen = "127.0.0.1:8079".to_string();
    let mut redis = "redis://127.0.0.1:6379".to_string();
    let mut token = std::env::var("UPSTASH_LOCAL_TOKEN").unwrap_or_default();
    let mut faults = false;
    let mut dedicated = "64".to_string();
    let mut block_max_ms = "30000".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value("--listen")?,
            "--redis" => redis = value("--redis")?,
            "--token" => token = value("--token")?,
            "--faults" => faults = true,
            "--dedicated" => dedicated = value("--dedicated")?,
            "--block-max-ms" => block_max_ms = value("--block-max-ms")?,
            "-h" | "--help" => {
                println!(
                    "usage: upstash-local [--listen 127.0.0.1:8079] [--redis redis://127.0.0.1:6379] --token TOKEN [--faults]\n\
                     \x20                    [--dedicated 64] [--block-max-ms 30000]\n\
                     (the token may come from UPSTASH_LOCAL_TOKEN instead; --dedicated: blocking commands and event\n\
                     streams open at once, each on a connection of its own; --block-max-ms: the longest a blocking\n\
                     command waits before it answers null, as if its own timeout had passed; --redis may name any\n\
                     node of a Redis Cluster: the whole cluster is then served, each command on its slot's master)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if token.is_empty() {
        return Err("a token is required: --token TOKEN or UPSTASH_LOCAL_TOKEN".into());
    }
    let listen = listen.parse().map_err(|e| format!("--listen {listen:?}: {e}"))?;
    let dedicated = dedicated.parse().ok().filter(|n| *n > 0).ok_or("--dedicated must be a whole number above 0")?;
    let block_max_ms =
        block_max_ms.parse().ok().filter(|n| *n > 0).ok_or("--block-max-ms must be a whole number above 0")?;
    Ok(Options { listen, redis, token, faults, dedicated, block_max_ms })
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

async fn serve(args: Options) -> Result<(), String> {
    let client = redis::Client::open(args.redis.as_str()).map_err(|e| format!("--redis {}: {e}", args.redis))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(1);
    let redis = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| format!("cannot connect to Redis at {}: {e}", args.redis))?;
    let cluster = match cluster_enabled(&redis).await {
        true => Some(
            cluster::Cluster::connect(client.get_connection_info().clone())
                .await
                .map_err(|e| format!("{} is a Redis Cluster node, but the cluster cannot be read: {e}", args.redis))?,
        ),
        false => None,
    };
    let listener =
        TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let server = Arc::new(Server {
        token: args.token,
        client,
        redis,
        scripts: RwLock::new(HashMap::new()),
        bodies: RwLock::new(HashMap::new()),
        faults: args.faults.then(|| Mutex::new(Faults::default())),
        calls: AtomicU64::new(0),
        commands: Mutex::new(HashMap::new()),
        dedicated: Arc::new(Semaphore::new(args.dedicated)),
        dedicated_max: args.dedicated,
        block_max: Duration::from_millis(args.block_max_ms),
        sync: AtomicU64::new(0),
        cluster,
    });
    match &server.cluster {
        Some(c) => println!(
            "upstash-local listening on http://{} (Redis Cluster of {} masters, through {})",
            args.listen,
            c.masters(),
            args.redis
        ),
        None => println!("upstash-local listening on http://{} (Redis {})", args.listen, args.redis),
    }
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

/// Whether the node `--redis` names runs in cluster mode (`INFO cluster`: `cluster_enabled:1`).
async fn cluster_enabled(redis: &ConnectionManager) -> bool {
    let mut conn = redis.clone();
    let info = redis::cmd("INFO").arg("cluster").query_async::<String>(&mut conn).await;
    info.is_ok_and(|text| text.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

fn reply(status: StatusCode, body: Value) -> Response<Out> {
    bytes(status, "application/json", body.to_string().into_bytes())
}

fn bytes(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Out> {
    let mut response = Response::new(Out::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", HeaderValue::from_static(content_type));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Out> {
    reply(status, json!({ "error": message.into() }))
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The CORS fields of every answer (any origin: the token is the authorisation, as on Upstash).
fn cors(headers: &mut HeaderMap) {
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert("access-control-expose-headers", HeaderValue::from_static("upstash-sync-token"));
}

/// A browser's preflight: any method the API takes, the headers it asked for (or the clients' own).
fn preflight(request_headers: &HeaderMap) -> Response<Out> {
    let mut response = Response::new(Out::full(Vec::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert("access-control-allow-methods", HeaderValue::from_static("GET, HEAD, POST, PUT, OPTIONS"));
    let asked = request_headers.get("access-control-request-headers").cloned().unwrap_or(HeaderValue::from_static(
        "authorization, content-type, upstash-encoding, upstash-response-format, upstash-sync-token, \
         upstash-telemetry-runtime, upstash-telemetry-platform, upstash-telemetry-sdk",
    ));
    h.insert("access-control-allow-headers", asked);
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    response
}

/// What a request asks to be done.
enum Call {
    One(Args),
    Pipeline(Vec<Value>),
    MultiExec(Vec<Value>),
    Subscribe { pattern: bool, names: Vec<String> },
    Monitor,
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Out> {
        let mut response = self.answer(req).await;
        cors(response.headers_mut());
        let token = self.sync.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(v) = HeaderValue::from_str(&token.to_string()) {
            response.headers_mut().insert("upstash-sync-token", v);
        }
        response
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Out> {
        let method = req.method().clone();
        if method == Method::OPTIONS {
            return preflight(req.headers());
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        if path == "/__stats" && method == Method::GET {
            return self.stats();
        }
        let bearer =
            req.headers().get("authorization").and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).map(<[u8]>::to_vec);
        let authorized = bearer
            .or_else(|| protocol::query_token(query.as_deref()))
            .is_some_and(|t| same_secret(&t, self.token.as_bytes()));
        if !authorized {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        if !matches!(method, Method::GET | Method::HEAD | Method::POST | Method::PUT) {
            return error(StatusCode::METHOD_NOT_ALLOWED, "ERR the REST API takes GET, HEAD, POST and PUT");
        }
        let format = match Format::of(
            req.headers().get("upstash-encoding").map(HeaderValue::as_bytes),
            req.headers().get("upstash-response-format").map(HeaderValue::as_bytes),
        ) {
            Ok(f) => f,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("ERR cannot read the body: {e}")),
        };
        if path == "/__faults" && method == Method::POST {
            return self.set_faults(&body);
        }
        if let Some(response) = self.injected_fault().await {
            return response;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let call = match call_of(&method, &path, query.as_deref(), &body) {
            Ok(c) => c,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        match call {
            Call::One(args) => match self.run(args).await {
                Ok(value) => self.result(value, format),
                Err((status, message)) if format == Format::Resp2 => {
                    let mut out = Vec::new();
                    protocol::resp2_error(&message, &mut out);
                    bytes(status, "application/octet-stream", out)
                }
                Err((status, message)) => error(status, message),
            },
            Call::Pipeline(commands) => self.pipeline(commands, format).await,
            // Always JSON, as Upstash answers /multi-exec whatever Upstash-Response-Format says.
            Call::MultiExec(commands) => {
                self.multi_exec(commands, if format == Format::Resp2 { Format::Json } else { format }).await
            }
            Call::Subscribe { pattern, names } => self.subscribe(pattern, names).await,
            Call::Monitor => self.monitor().await,
        }
    }

    fn result(&self, value: redis::Value, format: Format) -> Response<Out> {
        match format {
            Format::Resp2 => {
                let mut out = Vec::new();
                protocol::to_resp2(&value, &mut out);
                bytes(StatusCode::OK, "application/octet-stream", out)
            }
            _ => reply(StatusCode::OK, json!({ "result": protocol::to_json(value, format) })),
        }
    }

    /// Runs one command; an error carries the HTTP status Upstash would use (400 for a
    /// Redis error, 500 when Redis cannot be reached).
    async fn run(&self, args: Args) -> Result<redis::Value, (StatusCode, String)> {
        if let Some(why) = protocol::refused(&args) {
            return Err((StatusCode::BAD_REQUEST, protocol::refusal(&args, why)));
        }
        let blocking = protocol::blocks(&args);
        let args = self.translate(args);
        if let Some(cluster) = &self.cluster {
            if blocking {
                let Ok(_permit) = self.dedicated.clone().try_acquire_owned() else {
                    return Err((StatusCode::TOO_MANY_REQUESTS, self.too_many_dedicated()));
                };
                return cluster.blocking(&args, self.block_max).await.map_err(failure);
            }
            let result = cluster.run(&args).await.map_err(failure);
            // A master that has not seen the script (each caches its own): loaded from what an EVAL
            // or SCRIPT LOAD sent before, then the EVALSHA once more, so that one EVAL serves the
            // whole cluster as it serves one Redis.
            if let (Err((_, message)), Some(body)) = (&result, self.body_for(&args)) {
                if message.starts_with("NOSCRIPT") {
                    let load = vec![b"SCRIPT".to_vec(), b"LOAD".to_vec(), body];
                    if cluster.run(&load).await.is_ok() {
                        return cluster.run(&args).await.map_err(failure);
                    }
                }
            }
            return result;
        }
        let cmd = protocol::to_cmd(&args);
        if blocking {
            return self.run_dedicated(cmd).await;
        }
        let mut conn = self.redis.clone();
        cmd.query_async::<redis::Value>(&mut conn).await.map_err(redis_error)
    }

    /// A blocking command, on a connection of its own for at most `block_max`: null after that, as
    /// Redis answers a blocking command whose timeout has passed (the connection is closed, which
    /// unblocks it in Redis).
    async fn run_dedicated(&self, cmd: redis::Cmd) -> Result<redis::Value, (StatusCode, String)> {
        let Ok(_permit) = self.dedicated.clone().try_acquire_owned() else {
            return Err((StatusCode::TOO_MANY_REQUESTS, self.too_many_dedicated()));
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&config).await.map_err(redis_error)?;
        match tokio::time::timeout(self.block_max, cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(result) => result.map_err(redis_error),
            Err(_) => Ok(redis::Value::Nil),
        }
    }

    fn too_many_dedicated(&self) -> String {
        format!(
            "ERR too many blocking commands and event streams at once (at most {}, each on a connection of its own)",
            self.dedicated_max
        )
    }

    /// `/pipeline`: one result or error per command, in order, never atomic. Commands that cannot
    /// block go to Redis as one pipeline.
    async fn pipeline(&self, commands: Vec<Value>, format: Format) -> Response<Out> {
        let mut parsed = Vec::with_capacity(commands.len());
        for command in &commands {
            parsed.push(protocol::command_of_json(command));
        }
        let results: Vec<Result<redis::Value, String>> =
            if parsed.iter().any(|a| a.as_ref().is_ok_and(protocol::blocks)) {
                let mut results = Vec::with_capacity(parsed.len());
                for args in parsed {
                    results.push(match args {
                        Ok(args) => self.run(args).await.map_err(|(_, m)| m),
                        Err(m) => Err(m),
                    });
                }
                results
            } else if let Some(cluster) = &self.cluster {
                let mut runnable = Vec::with_capacity(parsed.len());
                let slots = admitted(parsed, |args| runnable.push(self.translate(args)));
                let mut replies = cluster.pipeline(&runnable).await.into_iter();
                slots
                    .into_iter()
                    .map(|slot| match slot {
                        Ok(()) => match replies.next() {
                            Some(Ok(redis::Value::ServerError(e))) => Err(protocol::server_error_text(&e)),
                            Some(Ok(v)) => Ok(v),
                            Some(Err(f)) => Err(failure(f).1),
                            None => Err("ERR no reply".into()),
                        },
                        Err(m) => Err(m),
                    })
                    .collect()
            } else {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                let slots = admitted(parsed, |args| {
                    pipe.add_command(self.build(args));
                });
                let mut replies = if pipe.is_empty() {
                    Vec::new().into_iter()
                } else {
                    let mut conn = self.redis.clone();
                    match pipe.query_async::<redis::Value>(&mut conn).await {
                        Ok(redis::Value::Array(values)) => values.into_iter(),
                        Ok(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "ERR unexpected pipeline reply"),
                        Err(e) => {
                            let (status, message) = redis_error(e);
                            return error(status, message);
                        }
                    }
                };
                slots
                    .into_iter()
                    .map(|slot| match slot {
                        Ok(()) => match replies.next() {
                            Some(redis::Value::ServerError(e)) => Err(protocol::server_error_text(&e)),
                            Some(v) => Ok(v),
                            None => Err("ERR no reply".into()),
                        },
                        Err(m) => Err(m),
                    })
                    .collect()
            };
        if format == Format::Resp2 {
            let mut out = Vec::new();
            for r in &results {
                match r {
                    Ok(v) => protocol::to_resp2(v, &mut out),
                    Err(m) => protocol::resp2_error(m, &mut out),
                }
            }
            return bytes(StatusCode::OK, "application/octet-stream", out);
        }
        let entries = results
            .into_iter()
            .map(|r| match r {
                Ok(v) => json!({ "result": protocol::to_json(v, format) }),
                Err(m) => json!({ "error": m }),
            })
            .collect();
        reply(StatusCode::OK, Value::Array(entries))
    }

    /// `/multi-exec`: the commands as one transaction. Run-time errors are per command (every other
    /// command is applied, 200); a transaction Redis discards at queue time is one 400 error that
    /// names the command and Redis's reason.
    async fn multi_exec(&self, commands: Vec<Value>, format: Format) -> Response<Out> {
        let mut transaction = Vec::with_capacity(commands.len());
        for (i, command) in commands.iter().enumerate() {
            let args = match protocol::command_of_json(command) {
                Ok(a) => a,
                Err(m) => {
                    return error(StatusCode::BAD_REQUEST, format!("{m} (command {}, transaction discarded)", i + 1))
                }
            };
            if let Some(why) = protocol::refused(&args) {
                let m = protocol::refusal(&args, why);
                return error(StatusCode::BAD_REQUEST, format!("{m} (command {}, transaction discarded)", i + 1));
            }
            transaction.push(self.translate(args));
        }
        let replies = if let Some(cluster) = &self.cluster {
            match cluster.transaction(&transaction).await {
                Ok(values) => values,
                Err(f) => {
                    let (status, message) = failure(f);
                    return error(status, message);
                }
            }
        } else {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.cmd("MULTI");
            for args in &transaction {
                pipe.add_command(protocol::to_cmd(args));
            }
            pipe.cmd("EXEC");
            let mut conn = self.redis.clone();
            match pipe.query_async::<redis::Value>(&mut conn).await {
                Ok(redis::Value::Array(values)) => values,
                Ok(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "ERR unexpected transaction reply"),
                Err(e) => {
                    let (status, message) = redis_error(e);
                    return error(status, message);
                }
            }
        };
        // MULTI's OK, one QUEUED (or the queue-time error) per command, then EXEC's array.
        let queued = replies.get(1..replies.len().saturating_sub(1)).unwrap_or_default();
        if let Some((i, redis::Value::ServerError(e))) =
            queued.iter().enumerate().find(|(_, v)| matches!(v, redis::Value::ServerError(_)))
        {
            let reason = protocol::server_error_text(e);
            return error(
                StatusCode::BAD_REQUEST,
                format!("EXECABORT Transaction discarded because of previous errors: {reason} (command {})", i + 1),
            );
        }
        match replies.into_iter().last() {
            Some(redis::Value::Array(results)) => reply(
                StatusCode::OK,
                Value::Array(
                    results
                        .into_iter()
                        .map(|v| match v {
                            redis::Value::ServerError(e) => json!({ "error": protocol::server_error_text(&e) }),
                            v => json!({ "result": protocol::to_json(v, format) }),
                        })
                        .collect(),
                ),
            ),
            Some(redis::Value::ServerError(e)) => error(StatusCode::BAD_REQUEST, protocol::server_error_text(&e)),
            Some(redis::Value::Nil) => error(StatusCode::BAD_REQUEST, "EXECABORT Transaction aborted"),
            _ => error(StatusCode::INTERNAL_SERVER_ERROR, "ERR unexpected transaction reply"),
        }
    }

    /// `/subscribe/<channel>…` and `/psubscribe/<pattern>…`: an event stream on a connection of its own,
    /// `subscribe,<channel>,<count>` first, then `message,<channel>,<payload>` (or
    /// `pmessage,<pattern>,<channel>,<payload>`), until the client goes away.
    async fn subscribe(&self, pattern: bool, names: Vec<String>) -> Response<Out> {
        let Ok(permit) = self.dedicated.clone().try_acquire_owned() else {
            return error(StatusCode::TOO_MANY_REQUESTS, self.too_many_dedicated());
        };
        // On a cluster every node relays every PUBLISH (the cluster bus), so one master is enough.
        let client = match &self.cluster {
            Some(cluster) => match cluster.any_client() {
                Ok(c) => c,
                Err(e) => return redis_failure(e),
            },
            None => self.client.clone(),
        };
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => return redis_failure(e),
        };
        for name in &names {
            let done = if pattern { pubsub.psubscribe(name).await } else { pubsub.subscribe(name).await };
            if let Err(e) = done {
                return redis_failure(e);
            }
        }
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            let _permit = permit;
            let kind = if pattern { "psubscribe" } else { "subscribe" };
            for (i, name) in names.iter().enumerate() {
                if tx.send(Bytes::from(protocol::sse_event(&format!("{kind},{name},{}", i + 1)))).await.is_err() {
                    return;
                }
            }
            let mut messages = pubsub.into_on_message();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    () = tx.closed() => None,
                };
                let Some(msg) = msg else { return };
                let payload = String::from_utf8_lossy(msg.get_payload_bytes());
                let text = match msg.get_pattern::<String>() {
                    Ok(p) if msg.from_pattern() => format!("pmessage,{p},{},{payload}", msg.get_channel_name()),
                    _ => format!("message,{},{payload}", msg.get_channel_name()),
                };
                if tx.send(Bytes::from(protocol::sse_event(&text))).await.is_err() {
                    return;
                }
            }
        });
        event_stream(rx)
    }

    /// `/monitor`: every command Redis runs, as an event stream (`"OK"` first).
    async fn monitor(&self) -> Response<Out> {
        let Ok(permit) = self.dedicated.clone().try_acquire_owned() else {
            return error(StatusCode::TOO_MANY_REQUESTS, self.too_many_dedicated());
        };
        // On a cluster, every master's commands (each node only sees its own).
        let clients = match &self.cluster {
            Some(cluster) => match cluster.master_clients() {
                Ok(c) => c,
                Err(e) => return redis_failure(e),
            },
            None => vec![self.client.clone()],
        };
        let mut monitors = Vec::with_capacity(clients.len());
        for client in &clients {
            match client.get_async_monitor().await {
                Ok(m) => monitors.push(m),
                Err(e) => return redis_failure(e),
            }
        }
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        if tx.try_send(Bytes::from(protocol::sse_event("\"OK\""))).is_err() {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "ERR the event stream did not start");
        }
        let permit = Arc::new(permit);
        for monitor in monitors {
            let tx = tx.clone();
            let permit = permit.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut lines = monitor.into_on_message::<String>();
                loop {
                    let line = tokio::select! {
                        l = lines.next() => l,
                        () = tx.closed() => None,
                    };
                    let Some(line) = line else { return };
                    if tx.send(Bytes::from(protocol::sse_event(&line))).await.is_err() {
                        return;
                    }
                }
            });
        }
        event_stream(rx)
    }

    /// A Redis command from its arguments, with script flags and SHAs translated.
    fn build(&self, args: Args) -> redis::Cmd {
        protocol::to_cmd(&self.translate(args))
    }

    /// A command's arguments with script flags and SHAs translated (and the command counted).
    fn translate(&self, mut args: Args) -> Args {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        *self.commands.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default() += 1;
        let script_at = match name.as_str() {
            "EVAL" | "EVAL_RO" if args.len() > 1 => Some(1),
            "SCRIPT" if args.len() > 2 && args[1].eq_ignore_ascii_case(b"LOAD") => Some(2),
            _ => None,
        };
        if let Some(i) = script_at {
            let script = String::from_utf8_lossy(&args[i]).into_owned();
            if let Some(stripped) = shebang::strip_upstash_flags(&script) {
                let sent = sha1_smol::Sha1::from(&args[i]).digest().to_string();
                let stored = sha1_smol::Sha1::from(stripped.as_bytes()).digest().to_string();
                self.scripts.write().unwrap_or_else(|p| p.into_inner()).insert(sent, stored);
                args[i] = stripped.into_bytes();
            }
            if self.cluster.is_some() {
                let sha = sha1_smol::Sha1::from(&args[i]).digest().to_string();
                let mut bodies = self.bodies.write().unwrap_or_else(|p| p.into_inner());
                if bodies.len() < 1024 || bodies.contains_key(&sha) {
                    bodies.insert(sha, args[i].clone());
                }
            }
        }
        match name.as_str() {
            "EVALSHA" | "EVALSHA_RO" if args.len() > 1 => args[1] = self.stored_sha(&args[1]),
            "SCRIPT" if args.len() > 2 && args[1].eq_ignore_ascii_case(b"EXISTS") => {
                for sha in &mut args[2..] {
                    *sha = self.stored_sha(sha);
                }
            }
            _ => {}
        }
        args
    }

    /// The script an EVALSHA names, when an EVAL or SCRIPT LOAD sent it through here (cluster mode).
    fn body_for(&self, args: &Args) -> Option<Vec<u8>> {
        let name = String::from_utf8_lossy(args.first()?).to_ascii_uppercase();
        if !matches!(name.as_str(), "EVALSHA" | "EVALSHA_RO") {
            return None;
        }
        let sha = String::from_utf8_lossy(args.get(1)?).to_ascii_lowercase();
        self.bodies.read().unwrap_or_else(|p| p.into_inner()).get(&sha).cloned()
    }

    fn stored_sha(&self, sent: &[u8]) -> Vec<u8> {
        let scripts = self.scripts.read().unwrap_or_else(|p| p.into_inner());
        let key = String::from_utf8_lossy(sent).to_ascii_lowercase();
        scripts.get(&key).map(|s| s.clone().into_bytes()).unwrap_or_else(|| sent.to_vec())
    }

    fn stats(&self) -> Response<Out> {
        let commands = self.commands.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reply(StatusCode::OK, json!({ "calls": self.calls.load(Ordering::Relaxed), "commands": commands }))
    }

    fn set_faults(&self, body: &[u8]) -> Response<Out> {
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

    async fn injected_fault(&self) -> Option<Response<Out>> {
        let faults = self.faults.as_ref()?.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if faults.hang {
            // Never answer; the connection stays open until the client gives up.
            std::future::pending::<()>().await;
        }
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.status != 0 {
            let mut response = Response::new(Out::full(faults.body.unwrap_or_default().into_bytes()));
            *response.status_mut() = StatusCode::from_u16(faults.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(response);
        }
        faults.body.map(|b| Response::new(Out::full(b.into_bytes())))
    }
}

/// Which call a request names: the JSON endpoints, the event streams, or a path-style command.
fn call_of(method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> Result<Call, String> {
    let json_body = || -> Result<Value, String> {
        serde_json::from_slice(body).map_err(|e| format!("ERR failed to parse the command: {e}"))
    };
    let commands = |v: Value| match v {
        Value::Array(commands) => Ok(commands),
        _ => Err("ERR the body must be an array of commands".to_string()),
    };
    let with_body = matches!(*method, Method::POST | Method::PUT);
    match path.trim_end_matches('/') {
        "" if with_body => Ok(Call::One(protocol::command_of_json(&json_body()?)?)),
        "/pipeline" if with_body => Ok(Call::Pipeline(commands(json_body()?)?)),
        "/multi-exec" if with_body => Ok(Call::MultiExec(commands(json_body()?)?)),
        "/pipeline" | "/multi-exec" => Err("ERR POST a JSON array of commands".into()),
        "/monitor" => Ok(Call::Monitor),
        p => {
            for (prefix, pattern) in [("/subscribe/", false), ("/psubscribe/", true)] {
                if let Some(rest) = p.strip_prefix(prefix) {
                    let names = protocol::command_of_path(rest, None, b"")?;
                    let names = names.into_iter().map(|n| String::from_utf8_lossy(&n).into_owned()).collect();
                    return Ok(Call::Subscribe { pattern, names });
                }
            }
            Ok(Call::One(protocol::command_of_path(p, query, if with_body { body } else { b"" })?))
        }
    }
}

fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response<Out> {
    let mut response = Response::new(Out::Stream(rx));
    let h = response.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// A cluster command's failure as Upstash answers it: Redis's error, or ours (`CROSSSLOT …`), with its status.
/// A pipeline's commands: each one Redis may run handed to `add` (in order), and per command `Ok` or
/// why it is not sent (it did not parse, or it is refused).
fn admitted(parsed: Vec<Result<Args, String>>, mut add: impl FnMut(Args)) -> Vec<Result<(), String>> {
    parsed
        .into_iter()
        .map(|args| {
            let args = args?;
            match protocol::refused(&args) {
                Some(why) => Err(protocol::refusal(&args, why)),
                None => {
                    add(args);
                    Ok(())
                }
            }
        })
        .collect()
}

fn failure(f: cluster::Failure) -> (StatusCode, String) {
    match f {
        cluster::Failure::Redis(e) => redis_error(e),
        cluster::Failure::Reply(message) => (StatusCode::BAD_REQUEST, message),
    }
}

fn redis_failure(e: redis::RedisError) -> Response<Out> {
    let (status, message) = redis_error(e);
    error(status, message)
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
