//! The REST protocol of upstash-local over raw HTTP, against a real redis-server (started per test
//! on a free port; the tests fail loudly when it is not installed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "protocol-test-token";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_for(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().ok().flatten().is_none(), "{what} exited");
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// redis-server and upstash-local in front of it, both killed when dropped.
struct Stack {
    redis: Child,
    rest: Child,
    redis_port: u16,
    port: u16,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.rest.kill();
        let _ = self.redis.kill();
        let _ = self.rest.wait();
        let _ = self.redis.wait();
    }
}

fn stack(extra: &[&str]) -> Stack {
    let redis_port = free_port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): these tests need a real Redis; run scripts/setup")
        });
    wait_for(redis_port, "redis-server", &mut redis);
    let port = free_port();
    let mut rest = Command::new(env!("CARGO_BIN_EXE_upstash-local"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis",
            &format!("redis://127.0.0.1:{redis_port}"),
            "--token",
            TOKEN,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("upstash-local starts");
    wait_for(port, "upstash-local", &mut rest);
    Stack { redis, rest, redis_port, port }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Stack {
    /// One request on its own connection (`Connection: close`), the whole answer.
    fn call(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nhost: local\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Answer { status, headers, body: raw[split + 4..].to_vec() }
    }

    fn command(&self, command: Value, headers: &[(&str, &str)]) -> Answer {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.call("POST", "/", &all, command.to_string().as_bytes())
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        let auth = format!("Bearer {TOKEN}");
        self.call("POST", path, &[("authorization", auth.as_str())], body.to_string().as_bytes())
    }

    fn get(&self, path: &str) -> Answer {
        let auth = format!("Bearer {TOKEN}");
        self.call("GET", path, &[("authorization", auth.as_str())], b"")
    }

    fn result(&self, command: Value) -> Value {
        let a = self.command(command.clone(), &[]);
        assert_eq!(a.status, 200, "{command}: {}", String::from_utf8_lossy(&a.body));
        a.json()["result"].clone()
    }

    /// An event stream: the connection, read line by line.
    fn stream(&self, path: &str) -> BufReader<TcpStream> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: local\r\nauthorization: Bearer {TOKEN}\r\naccept: text/event-stream\r\ncontent-length: 2\r\n\r\n[]"
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.contains(" 200 "), "{path}: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a header");
            if line == "\r\n" {
                return reader;
            }
        }
    }
}

/// The next `data:` line of an event stream (chunked framing lines skipped).
fn next_event(reader: &mut BufReader<TcpStream>) -> String {
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("an event within 5 s");
        assert!(n > 0, "the stream ended");
        if let Some(data) = line.strip_prefix("data: ") {
            return data.trim_end().to_string();
        }
    }
}

#[test]
fn base64_encoding_encodes_every_string_but_a_top_level_ok_and_never_an_error() {
    let s = stack(&[]);
    let b64 = [("upstash-encoding", "base64")];
    let a = s.command(json!(["SET", "k", "abcd"]), &b64);
    assert_eq!(a.json(), json!({ "result": "OK" }));
    assert_eq!(s.command(json!(["GET", "k"]), &b64).json(), json!({ "result": "YWJjZA==" }));
    assert_eq!(s.command(json!(["PING"]), &b64).json(), json!({ "result": "UE9ORw==" }));
    assert_eq!(s.command(json!(["TYPE", "k"]), &b64).json(), json!({ "result": "c3RyaW5n" }));
    s.result(json!(["HSET", "h", "f", "abcd"]));
    assert_eq!(s.command(json!(["HGETALL", "h"]), &b64).json(), json!({ "result": ["Zg==", "YWJjZA=="] }));
    assert_eq!(s.command(json!(["INCR", "n"]), &b64).json(), json!({ "result": 1 }));
    assert_eq!(s.command(json!(["GET", "missing"]), &b64).json(), json!({ "result": null }));
    let e = s.command(json!(["HGET", "k", "f"]), &b64);
    assert_eq!(e.status, 400);
    assert!(e.json()["error"].as_str().unwrap_or_default().starts_with("WRONGTYPE"), "{}", e.json());
    // The SCAN cursor is a string too, and the next SCAN works with it decoded.
    let scan = s.command(json!(["SCAN", "0"]), &b64).json();
    assert_eq!(scan["result"][0], json!("MA=="));
    // In a pipeline every entry is a result of its own; nested OKs are encoded.
    let p = s.call(
        "POST",
        "/pipeline",
        &[("authorization", &format!("Bearer {TOKEN}")), ("upstash-encoding", "base64")],
        json!([["SET", "a", "x"], ["GET", "a"], ["EVAL", "return {'OK', 'y'}", "0"]]).to_string().as_bytes(),
    );
    assert_eq!(p.json(), json!([{ "result": "OK" }, { "result": "eA==" }, { "result": ["T0s=", "eQ=="] }]));
    // Without the header, strings are as stored.
    assert_eq!(s.result(json!(["GET", "k"])), json!("abcd"));
}

#[test]
fn a_transaction_answers_one_result_per_command_and_a_discarded_one_says_why() {
    let s = stack(&[]);
    s.result(json!(["SET", "text", "not a number"]));
    let a = s.post("/multi-exec", json!([["SET", "m1", "v"], ["INCR", "text"], ["GET", "m1"]]));
    assert_eq!(a.status, 200);
    let r = a.json();
    assert_eq!(r[0], json!({ "result": "OK" }));
    assert!(r[1]["error"].as_str().unwrap_or_default().starts_with("ERR value is not an integer"), "{r}");
    assert_eq!(r[2], json!({ "result": "v" }));
    // Discarded at queue time: nothing applied, and the reason and the command named.
    let d = s.post("/multi-exec", json!([["SET", "m2", "v"], ["SET", "only-a-key"]]));
    assert_eq!(d.status, 400);
    let message = d.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        message.starts_with("EXECABORT")
            && message.contains("wrong number of arguments")
            && message.contains("command 2"),
        "{message}"
    );
    assert_eq!(s.result(json!(["EXISTS", "m2"])), json!(0));
    // A refused command discards the transaction before Redis sees it.
    let r = s.post("/multi-exec", json!([["SET", "m3", "v"], ["SELECT", "1"]]));
    assert_eq!(r.status, 400);
    assert_eq!(s.result(json!(["EXISTS", "m3"])), json!(0));
    // And the shared connection is not left inside a transaction.
    assert_eq!(s.result(json!(["SET", "after", "1"])), json!("OK"));
}

#[test]
fn no_request_changes_the_connection_every_caller_shares() {
    let s = stack(&[]);
    s.result(json!(["SET", "k", "db0"]));
    for command in [
        json!(["SELECT", "1"]),
        json!(["MULTI"]),
        json!(["SUBSCRIBE", "c"]),
        json!(["CLIENT", "REPLY", "OFF"]),
        json!(["QUIT"]),
        json!(["RESET"]),
        json!(["HELLO", "3"]),
        json!(["SHUTDOWN", "NOSAVE"]),
        json!(["CONFIG", "SET", "maxmemory", "1"]),
        json!(["DEBUG", "SLEEP", "5"]),
    ] {
        let a = s.command(command.clone(), &[]);
        assert_eq!(a.status, 400, "{command}");
        assert!(
            a.json()["error"].as_str().unwrap_or_default().starts_with("ERR command is not available"),
            "{command}: {}",
            a.json()
        );
        assert_eq!(s.result(json!(["GET", "k"])), json!("db0"), "after {command}");
    }
    // Refused inside a pipeline as one entry; the others run.
    let p = s.post("/pipeline", json!([["SELECT", "2"], ["GET", "k"]])).json();
    assert!(p[0]["error"].is_string() && p[1]["result"] == json!("db0"), "{p}");
    // Redis is still up (SHUTDOWN never reached it).
    assert_eq!(s.result(json!(["PING"])), json!("PONG"));
}

#[test]
fn a_blocking_command_waits_on_its_own_connection_for_a_bounded_time() {
    let s = stack(&["--block-max-ms", "3000", "--dedicated", "1"]);
    std::thread::scope(|scope| {
        let blocked = scope.spawn(|| s.result(json!(["BLPOP", "never", "0"])));
        std::thread::sleep(Duration::from_millis(200));
        // Others are answered while it waits (on the shared connection it would hold them all).
        assert_eq!(s.result(json!(["SET", "x", "1"])), json!("OK"));
        assert!(!blocked.is_finished(), "the blocking call ended before the others were answered");
        // Only one dedicated connection here: a second blocking call is refused at once.
        let second = s.command(json!(["BLPOP", "never", "0"]), &[]);
        assert_eq!(second.status, 429, "{}", second.json());
        // `BLPOP … 0` waits forever in Redis; here it ends, with null, as if its timeout had passed
        // (without the bound this read gives up after 20 s and the test fails).
        assert_eq!(blocked.join().expect("the blocked call ends"), Value::Null);
    });
    // A push wakes a waiting pop with the value.
    std::thread::scope(|scope| {
        let blocked = scope.spawn(|| s.result(json!(["BLPOP", "q", "5"])));
        std::thread::sleep(Duration::from_millis(200));
        s.result(json!(["LPUSH", "q", "job"]));
        assert_eq!(blocked.join().expect("woken"), json!(["q", "job"]));
    });
}

#[test]
fn the_response_format_header_and_the_sync_token() {
    let s = stack(&[]);
    s.result(json!(["SET", "foo", "bar"]));
    let a = s.command(json!(["GET", "foo"]), &[("upstash-response-format", "resp2")]);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"$3\r\nbar\r\n"[..]));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    let ok = s.command(json!(["SET", "foo", "baz"]), &[("upstash-response-format", "RESP2")]);
    assert_eq!(ok.body, b"+OK\r\n");
    let bad = s.command(json!(["GET", "foo"]), &[("upstash-response-format", "xml")]);
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].is_string());
    let both =
        s.command(json!(["GET", "foo"]), &[("upstash-response-format", "resp2"), ("upstash-encoding", "base64")]);
    assert_eq!(both.status, 400);
    // A transaction answers JSON whatever the format.
    let t = s.call(
        "POST",
        "/multi-exec",
        &[("authorization", &format!("Bearer {TOKEN}")), ("upstash-response-format", "resp2")],
        json!([["GET", "foo"]]).to_string().as_bytes(),
    );
    assert_eq!(t.json(), json!([{ "result": "baz" }]));
    // Every answer carries a sync token, later answers a later one; a client's own (even empty) is accepted.
    let first: u64 = s
        .command(json!(["PING"]), &[("upstash-sync-token", "")])
        .header("upstash-sync-token")
        .and_then(|t| t.parse().ok())
        .expect("a token");
    let second: u64 = s
        .command(json!(["PING"]), &[("upstash-sync-token", &first.to_string())])
        .header("upstash-sync-token")
        .and_then(|t| t.parse().ok())
        .expect("a token");
    assert!(second > first);
}

#[test]
fn tokens_path_style_commands_and_cors() {
    let s = stack(&[]);
    let none = s.call("POST", "/", &[], br#"["PING"]"#);
    assert_eq!((none.status, none.json()), (401, json!({ "error": "Unauthorized" })));
    let wrong = s.call("POST", "/", &[("authorization", "Bearer nope")], br#"["PING"]"#);
    assert_eq!(wrong.status, 401);
    let by_query = s.call("GET", &format!("/set/foo/bar?_token={TOKEN}"), &[], b"");
    assert_eq!(by_query.json(), json!({ "result": "OK" }));
    assert_eq!(s.get("/get/foo").json(), json!({ "result": "bar" }));
    let auth = format!("Bearer {TOKEN}");
    let posted = s.call("POST", "/set/doc?EX=100", &[("authorization", &auth)], b"{\"a\": 1}\nline two");
    assert_eq!(posted.json(), json!({ "result": "OK" }));
    assert_eq!(s.result(json!(["GET", "doc"])), json!("{\"a\": 1}\nline two"));
    let ttl = s.result(json!(["TTL", "doc"])).as_i64().unwrap_or_default();
    assert!((1..=100).contains(&ttl), "{ttl}");
    assert_eq!(s.get("/get/a%2Fb").json(), json!({ "result": null }));
    assert_eq!(s.get("/set/a%2Fb/c%20d").json(), json!({ "result": "OK" }));
    assert_eq!(s.result(json!(["GET", "a/b"])), json!("c d"));
    assert_eq!(s.call("DELETE", "/get/foo", &[("authorization", &auth)], b"").status, 405);
    // A browser's preflight needs no token; every answer allows any origin and exposes the sync token.
    let pre = s.call(
        "OPTIONS",
        "/pipeline",
        &[("origin", "https://app.example"), ("access-control-request-headers", "authorization, upstash-encoding")],
        b"",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-headers"), Some("authorization, upstash-encoding"));
    assert!(pre.header("access-control-allow-methods").unwrap_or_default().contains("POST"));
    let any = s.get("/get/foo");
    assert_eq!(any.header("access-control-allow-origin"), Some("*"));
    assert_eq!(any.header("access-control-expose-headers"), Some("upstash-sync-token"));
}

#[test]
fn subscriptions_and_monitor_are_event_streams_that_end_with_their_client() {
    let s = stack(&["--dedicated", "2"]);
    let mut sub = s.stream("/subscribe/news");
    assert_eq!(next_event(&mut sub), "subscribe,news,1");
    let mut psub = s.stream("/psubscribe/ne*");
    assert_eq!(next_event(&mut psub), "psubscribe,ne*,1");
    assert_eq!(s.result(json!(["PUBLISH", "news", "hello, world"])), json!(2));
    assert_eq!(next_event(&mut sub), "message,news,hello, world");
    assert_eq!(next_event(&mut psub), "pmessage,ne*,news,hello, world");
    // Both dedicated connections are taken: a third stream is refused.
    let third = s.call("POST", "/monitor", &[("authorization", &format!("Bearer {TOKEN}"))], b"[]");
    assert_eq!(third.status, 429);
    // A client that goes away frees its connection (Redis sees the subscriber leave).
    drop(sub);
    drop(psub);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.result(json!(["PUBLISH", "news", "x"])) != json!(0) {
        assert!(Instant::now() < deadline, "the subscribers never left");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut monitor = s.stream("/monitor");
    assert_eq!(next_event(&mut monitor), "\"OK\"");
    s.result(json!(["SET", "watched", "1"]));
    let mut line = next_event(&mut monitor);
    while !line.contains("\"watched\"") {
        line = next_event(&mut monitor);
    }
    assert!(line.contains("\"SET\""), "{line}");
    let _ = s.redis_port;
}
