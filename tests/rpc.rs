//! The RPC entry (`env.LIMITER.limit/peek/reset`) through the gateway's core, against a real Redis:
//! the same buckets, deny cache, fail mode, metrics and log lines as a request's decision, and key
//! spaces no HTTP caller can reach.

mod common;

use common::{carry, header, run, Req, Rest};
use edge_ratelimit::{Config, ErrorKind, Gateway, Reply, Step};
use serde_json::{json, Value};

const NOW: f64 = 1.8e12;
const ADMIN: &str = "an-admin-token-of-some-length";
const POLICY: &str = r#"{"rules":[
    {"name":"export","methods":["POST"],"route":"/export/*",
     "limits":[{"name":"exports","capacity":5,"refill":"5/h"},
               {"name":"export-shadow","capacity":2,"refill":"2/h","shadow":true}]}]}"#;

fn config(rest: Option<&Rest>, extra: &[(&str, &str)]) -> Config {
    let url = rest.map_or("http://127.0.0.1:1".to_string(), |r| format!("http://127.0.0.1:{}", r.redis.port));
    let mut vars: Vec<(&str, String)> =
        vec![("UPSTASH_REDIS_REST_URL", url), ("UPSTASH_REDIS_REST_TOKEN", "t".into()), ("ADMIN_TOKEN", ADMIN.into())];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap()
}

/// Carries an RPC call to its end against `rest`: the returned value, or the error thrown.
fn call(gw: &mut Gateway<'_>, rest: &Rest, method: &str, options: Value) -> Result<Value, (ErrorKind, String)> {
    let step = gw.call(method, &options.to_string(), NOW);
    let req = Req { method: String::new(), url: String::new(), headers: Vec::new(), body: String::new() };
    match carry(gw, rest, &req, step, NOW) {
        Step::Return { value, .. } => Ok(serde_json::from_str(&value).expect("a JSON result")),
        Step::Throw { error, .. } => Err((error.kind, error.message)),
        other => panic!("an RPC call ended with {other:?}"),
    }
}

fn limit(gw: &mut Gateway<'_>, rest: &Rest, options: Value) -> Value {
    call(gw, rest, "limit", options).expect("limit returns")
}

#[test]
fn limit_admits_exactly_the_capacity_and_reports_the_bindings_fields() {
    let rest = Rest::new();
    let c = config(Some(&rest), &[]);
    let mut gw = Gateway::new(&c);
    let results: Vec<Value> = (0..5).map(|_| limit(&mut gw, &rest, json!({ "key": "k1" }))).collect();
    assert!(results.iter().all(|r| r["success"] == true), "RATE_LIMIT_CAPACITY: {results:?}");
    assert_eq!(results[0]["remaining"], 4);
    assert_eq!((results[0]["limit"].clone(), results[0]["name"].clone()), (json!(5), json!("default")));
    assert_eq!((results[0]["retryAfter"].clone(), results[0]["shadowDenied"].clone()), (json!(0), json!(false)));
    assert!(results[0]["reset"].as_u64().is_some_and(|t| (1..=12).contains(&t)), "{}", results[0]);
    rest.take_sent();
    let denied = limit(&mut gw, &rest, json!({ "key": "k1" }));
    assert_eq!((denied["success"].clone(), denied["remaining"].clone()), (json!(false), json!(0)));
    assert!(denied["retryAfter"].as_u64().is_some_and(|s| (1..=12).contains(&s)), "{denied}");
    assert!(denied.get("degraded").is_none());
    assert_eq!(rest.take_sent(), ["EVALSHA"], "one script call per decision");
    let cached = limit(&mut gw, &rest, json!({ "key": "k1" }));
    assert_eq!(cached["success"], false);
    assert!(rest.take_sent().is_empty(), "a known denial is answered from the deny cache");
}

#[test]
fn cost_takes_that_many_tokens_and_shadow_never_denies() {
    let rest = Rest::new();
    let c = config(Some(&rest), &[("RATE_LIMIT_CAPACITY", "10"), ("RATE_LIMIT_REFILL", "10/h")]);
    let mut gw = Gateway::new(&c);
    assert_eq!(limit(&mut gw, &rest, json!({ "key": "c", "cost": 4 }))["remaining"], 6);
    let too_much = limit(&mut gw, &rest, json!({ "key": "c", "cost": 7 }));
    assert_eq!((too_much["success"].clone(), too_much["remaining"].clone()), (json!(false), json!(6)));
    assert!(too_much["retryAfter"].as_u64().unwrap() >= 1);
    let shadow = limit(&mut gw, &rest, json!({ "key": "c", "cost": 7, "shadow": true }));
    assert_eq!((shadow["success"].clone(), shadow["shadowDenied"].clone()), (json!(true), json!(true)), "{shadow}");
    assert_eq!(shadow["retryAfter"], 0);
    let fits = limit(&mut gw, &rest, json!({ "key": "c", "cost": 6, "shadow": true }));
    assert_eq!(
        (fits["shadowDenied"].clone(), fits["remaining"].clone()),
        (json!(false), json!(0)),
        "counted as it passes"
    );
}

#[test]
fn a_rule_shares_the_buckets_the_gateway_keeps_for_that_user_id() {
    let rest = Rest::new();
    let c = config(Some(&rest), &[("RATE_LIMIT_POLICY", POLICY)]);
    let mut gw = Gateway::new(&c);
    assert_eq!(limit(&mut gw, &rest, json!({ "key": "alice", "rule": "export" }))["remaining"], 4);
    let by_route = limit(&mut gw, &rest, json!({ "key": "alice", "rule": { "method": "POST", "path": "/export/x" } }));
    assert_eq!((by_route["remaining"].clone(), by_route["name"].clone()), (json!(3), json!("exports")));
    let req = Req::new(&gw, "POST", "/export/y", &[("x-user-id", "alice")]);
    let http = run(&mut gw, &rest, &req, NOW);
    assert_eq!(
        header(&http, "ratelimit"),
        Some("\"exports\";r=2;t=2160"),
        "the HTTP request sees the RPC calls' tokens"
    );
    // The policy's shadow limit (capacity 2) has seen three requests: the third would have been denied.
    assert_eq!(header(&http, "x-ratelimit-status"), Some("shadow; limit=\"export-shadow\""));
    let after = call(&mut gw, &rest, "peek", json!({ "key": "alice", "rule": "export" })).unwrap();
    assert_eq!((after["remaining"].clone(), after["shadowDenied"].clone()), (json!(2), json!(true)));
    // Without a rule, "alice" is another bucket altogether.
    assert_eq!(limit(&mut gw, &rest, json!({ "key": "alice" }))["remaining"], 4);
}

#[test]
fn peek_consumes_nothing_and_reset_empties_the_buckets() {
    let rest = Rest::new();
    let c = config(Some(&rest), &[]);
    let mut gw = Gateway::new(&c);
    for _ in 0..20 {
        let p = call(&mut gw, &rest, "peek", json!({ "key": "p" })).unwrap();
        assert_eq!((p["success"].clone(), p["remaining"].clone()), (json!(true), json!(5)));
    }
    let admitted = (0..5).filter(|_| limit(&mut gw, &rest, json!({ "key": "p" }))["success"] == true).count();
    assert_eq!(admitted, 5, "twenty peeks took nothing");
    let empty = call(&mut gw, &rest, "peek", json!({ "key": "p" })).unwrap();
    assert_eq!((empty["success"].clone(), empty["remaining"].clone()), (json!(false), json!(0)));
    assert!(empty["retryAfter"].as_u64().unwrap() >= 1);
    assert_eq!(limit(&mut gw, &rest, json!({ "key": "p" }))["success"], false);
    let reset = call(&mut gw, &rest, "reset", json!({ "key": "p" })).unwrap();
    assert_eq!(reset, json!({ "success": true, "deleted": 1 }));
    // The reset also dropped this isolate's cached denial: the next call asks Redis and passes.
    assert_eq!(limit(&mut gw, &rest, json!({ "key": "p" }))["remaining"], 4);
    assert_eq!(call(&mut gw, &rest, "reset", json!({ "key": "nobody" })).unwrap()["deleted"], 0);
}

#[test]
fn no_http_caller_reaches_an_rpc_key_and_no_rpc_key_reaches_an_http_bucket() {
    let rest = Rest::new();
    let c = config(Some(&rest), &[]);
    let mut gw = Gateway::new(&c);
    for _ in 0..5 {
        limit(&mut gw, &rest, json!({ "key": "bob" }));
    }
    assert_eq!(limit(&mut gw, &rest, json!({ "key": "bob" }))["success"], false);
    for id in ["bob", "@rpc/bob", "@rpc%2Fbob"] {
        let req = Req::new(&gw, "GET", "/", &[("x-user-id", id)]);
        assert_eq!(common::status(&run(&mut gw, &rest, &req, NOW)), 200, "HTTP caller {id:?}");
    }
    let keys: Vec<String> = serde_json::from_value(rest.redis(&["KEYS", "rate:*"])).unwrap();
    let rpc: Vec<&String> = keys.iter().filter(|k| k.starts_with("rate:{@rpc/")).collect();
    assert_eq!(rpc, ["rate:{@rpc/bob}"], "{keys:?}");
}

#[test]
fn redis_failing_follows_the_fail_mode_says_so_and_never_throws() {
    for (mode, success) in [("open", true), ("closed", false)] {
        let c = config(None, &[("FAIL_MODE", mode)]);
        let mut gw = Gateway::new(&c);
        for (method, options) in [("limit", json!({ "key": "f" })), ("peek", json!({ "key": "f" }))] {
            let Step::Fetch(f) = gw.call(method, &options.to_string(), NOW) else { panic!() };
            let step = gw.resume(f.ticket, Reply::Timeout, NOW + 500.0);
            let Step::Return { value, note, .. } = &step else { panic!("{step:?}") };
            let v: Value = serde_json::from_str(value).unwrap();
            assert_eq!(
                (v["success"].clone(), v["degraded"].clone()),
                (json!(success), json!("timeout")),
                "{mode} {method}"
            );
            let line: Value = serde_json::from_str(note.as_deref().unwrap()).expect("a JSON log line");
            assert_eq!(
                (line["event"].clone(), line["via"].clone(), line["reason"].clone()),
                (json!("degraded"), json!("rpc"), json!("timeout"))
            );
            assert_eq!(line["caller"], edge_ratelimit::caller_id(&c.log_caller_ids, "@rpc/f"), "hashed by default");
        }
        let Step::Fetch(f) = gw.call("reset", &json!({ "key": "f" }).to_string(), NOW) else { panic!() };
        let Step::Return { value, .. } = gw.resume(f.ticket, Reply::Unreachable, NOW) else { panic!() };
        assert_eq!(
            serde_json::from_str::<Value>(&value).unwrap(),
            json!({ "success": false, "deleted": 0, "degraded": "unreachable" })
        );
    }
    // Fail open is still bounded by this isolate's local bucket, and says what it knows.
    let c = config(None, &[("RATE_LIMIT_CAPACITY", "2")]);
    let mut gw = Gateway::new(&c);
    let down = |gw: &mut Gateway<'_>| {
        let Step::Fetch(f) = gw.call("limit", r#"{"key":"d"}"#, NOW) else { panic!() };
        let Step::Return { value, .. } = gw.resume(f.ticket, Reply::Unreachable, NOW) else { panic!() };
        serde_json::from_str::<Value>(&value).unwrap()
    };
    let first = down(&mut gw);
    assert_eq!(
        (first["success"].clone(), first["remaining"].clone(), first["degraded"].clone()),
        (json!(true), json!(1), json!("unreachable"))
    );
    down(&mut gw);
    assert_eq!(down(&mut gw)["success"], false, "an outage is not unlimited");
}

#[test]
fn rpc_decisions_are_counted_in_the_metrics() {
    let rest = Rest::new();
    let c = config(Some(&rest), &[("RATE_LIMIT_CAPACITY", "1"), ("METRICS_FLUSH_MS", "0")]);
    let mut gw = Gateway::new(&c);
    limit(&mut gw, &rest, json!({ "key": "m" }));
    limit(&mut gw, &rest, json!({ "key": "m" }));
    let metrics: Vec<String> = serde_json::from_value(rest.redis(&["HGETALL", edge_ratelimit::METRICS_KEY])).unwrap();
    let field = |name: &str| metrics.chunks(2).find(|p| p[0] == name).map(|p| p[1].clone());
    assert_eq!(field("c|allowed|default|none").as_deref(), Some("1"), "{metrics:?}");
    assert_eq!(field("c|denied|default|none").as_deref(), Some("1"), "{metrics:?}");
}

#[test]
fn a_misconfigured_isolate_throws_an_error_naming_the_variable() {
    let mut isolate = edge_ratelimit::Isolate::from_env(|n| match n {
        "UPSTASH_REDIS_REST_URL" => Some("https://eu1.upstash.io".into()),
        "UPSTASH_REDIS_REST_TOKEN" => Some("hunter2-token".into()),
        "RATE_LIMIT_CAPACITY" => Some("lots".into()),
        _ => None,
    });
    let Step::Throw { error, note } = isolate.call("limit", r#"{"key":"a"}"#, NOW) else { panic!() };
    assert_eq!(error.kind, ErrorKind::Error);
    assert!(error.message.contains("RATE_LIMIT_CAPACITY") && !error.message.contains("hunter2"), "{}", error.message);
    let line: Value = serde_json::from_str(&note.unwrap()).unwrap();
    assert_eq!(
        (line["event"].clone(), line["variable"].clone()),
        (json!("misconfigured"), json!("RATE_LIMIT_CAPACITY"))
    );
}

#[test]
fn log_lines_name_callers_by_hash_unless_plain() {
    for (ids, expect_plain) in [("hashed", false), ("plain", true)] {
        let c = config(None, &[("LOG_CALLER_IDS", ids)]);
        let mut gw = Gateway::new(&c);
        let req = Req::new(&gw, "GET", "/x", &[("x-user-id", "carol@example.com")]);
        let values: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
        let Step::Fetch(f) = gw.begin(&edge_ratelimit::Request { method: "GET", url: &req.url, headers: &values }, NOW)
        else {
            panic!()
        };
        let Step::Forward { note, .. } = gw.resume(f.ticket, Reply::Unreachable, NOW) else { panic!() };
        let line: Value = serde_json::from_str(&note.unwrap()).unwrap();
        assert_eq!((line["event"].clone(), line["via"].clone()), (json!("degraded"), json!("http")));
        let caller = line["caller"].as_str().unwrap();
        assert_eq!(caller == "carol@example.com", expect_plain, "{ids}: {caller}");
        if !expect_plain {
            assert_eq!(caller, edge_ratelimit::caller_id(&c.log_caller_ids, "carol@example.com"));
            assert!(!line.to_string().contains("carol"), "{line}");
        }
    }
    assert!(Config::from_env(|n| match n {
        "UPSTASH_REDIS_REST_URL" => Some("https://x.upstash.io".into()),
        "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
        "LOG_CALLER_IDS" => Some("clear".into()),
        _ => None,
    })
    .is_err_and(|e| e.variable == "LOG_CALLER_IDS"));
}

#[test]
fn reset_empties_only_the_keys_own_buckets_and_keys_are_trimmed_like_user_ids() {
    let rest = Rest::new();
    let policy = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
        {"name":"per-user","capacity":5,"refill":"5/h"},{"name":"everyone","by":"global","capacity":100,"refill":"100/h"}]}]}"#;
    let c = config(Some(&rest), &[("RATE_LIMIT_POLICY", policy)]);
    let mut gw = Gateway::new(&c);
    limit(&mut gw, &rest, json!({ "key": "ida", "rule": "api" }));
    limit(&mut gw, &rest, json!({ "key": "  ida ", "rule": "api" }));
    let req = Req::new(&gw, "GET", "/api/x", &[("x-user-id", "ida")]);
    let http = run(&mut gw, &rest, &req, NOW);
    assert!(
        header(&http, "ratelimit").is_some_and(|f| f.starts_with("\"per-user\";r=2;")),
        "a padded key is the same caller: {http:?}"
    );
    let reset = call(&mut gw, &rest, "reset", json!({ "key": "ida", "rule": "api" })).unwrap();
    assert_eq!(reset["deleted"], 1, "ida's bucket, not everyone's");
    assert_eq!(
        rest.redis(&["HEXISTS", "rate:{@global}:/api/%2A#everyone", "tokens"]),
        json!(1),
        "the shared bucket stays"
    );
}
