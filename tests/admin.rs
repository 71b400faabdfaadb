//! The admin API end to end in the pure core, against a real Redis: auth,
//! overrides applied by the decision script in the same call, peek and reset
//! (with the deny cache forgotten), metrics reported and read back, strict
//! validation. The Worker only carries requests to `edge_ratelimit::admin`.

mod common;

use std::cell::RefCell;

use common::{block_on, Redis};
use edge_ratelimit::{
    admin, admin_target, plan, AdminRequest, AdminResponse, Asset, Config, HttpReply, Limited, Limiter, Metrics,
    Outcome, Plan, RequestFacts, Transport, TransportError,
};
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789";

/// The Upstash REST protocol straight to Redis: `post` runs one command, `pipeline` many. Counts calls.
struct Rest {
    _redis: Redis,
    con: RefCell<redis::Connection>,
    posts: RefCell<usize>,
}

fn to_json(v: redis::Value) -> Value {
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
    fn new() -> Rest {
        let redis = Redis::start();
        let con = RefCell::new(redis.connection());
        Rest { _redis: redis, con, posts: RefCell::new(0) }
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

    fn redis(&self, args: &[&str]) -> Value {
        self.run(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())["result"].clone()
    }
}

impl Transport for Rest {
    async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
        Ok(())
    }

    async fn post(&self, body: String) -> Result<HttpReply, TransportError> {
        *self.posts.borrow_mut() += 1;
        let args: Vec<String> = serde_json::from_str(&body).expect("a JSON array of strings");
        let reply = self.run(&args);
        let status = if reply.get("error").is_some() { 400 } else { 200 };
        Ok(HttpReply { status, body: reply.to_string() })
    }

    async fn pipeline(&self, body: String) -> Result<HttpReply, TransportError> {
        let commands: Vec<Vec<String>> = serde_json::from_str(&body).expect("a JSON array of commands");
        let replies: Vec<Value> = commands.iter().map(|c| self.run(c)).collect();
        Ok(HttpReply { status: 200, body: Value::Array(replies).to_string() })
    }
}

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
        ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ("ADMIN_TOKEN", TOKEN),
    ];
    vars.extend_from_slice(extra);
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

struct Gateway {
    config: Config,
    limiter: Limiter,
    rest: Rest,
    now: f64,
}

impl Gateway {
    fn new(extra: &[(&str, &str)]) -> Gateway {
        Gateway { config: config(extra), limiter: Limiter::default(), rest: Rest::new(), now: 1.8e12 }
    }

    fn call(&self, method: &str, target: &str, token: Option<&str>, body: &str) -> AdminResponse {
        let (rest, query) = admin_target(&self.config, target).expect("an admin path").expect("spelled as configured");
        let authorization = token.map(|t| format!("Bearer {t}"));
        let req = AdminRequest { method, rest, query, authorization: authorization.as_deref(), body };
        block_on(admin(&self.config, &self.limiter, &self.rest, &req, self.now))
    }

    fn json(&self, method: &str, target: &str, body: &str) -> (u16, Value) {
        let r = self.call(method, target, Some(TOKEN), body);
        (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
    }

    /// A request through the gateway as `user`: its outcome, and the REST calls it took.
    fn request(&self, user: &str, method: &str, target: &str) -> (Outcome, usize, Limited<'_>) {
        let header = |name: &str| match name {
            "x-user-id" => Some(user.to_string()),
            "cf-connecting-ip" => Some("203.0.113.9".to_string()),
            _ => None,
        };
        let Plan::Limit(limited) =
            plan(&self.config, &RequestFacts { method, target, header: &header, now_ms: self.now })
        else {
            panic!("no limits for {method} {target}")
        };
        let before = *self.rest.posts.borrow();
        let result = block_on(self.limiter.decide(&self.rest, &limited.checks, self.config.clock, self.now));
        let calls = *self.rest.posts.borrow() - before;
        (self.limiter.outcome(result, self.config.fail_mode, &limited.checks, self.now), calls, limited)
    }

    fn allowed(&self, user: &str, target: &str, n: usize) -> usize {
        (0..n).filter(|_| matches!(self.request(user, "GET", target).0, Outcome::Allowed(_))).count()
    }
}

fn capacity(outcome: &Outcome) -> u32 {
    match outcome {
        Outcome::Allowed(d) | Outcome::Denied(d) => d.limits[0].capacity,
        other => panic!("no decision: {other:?}"),
    }
}

#[test]
fn off_without_a_token_and_closed_without_the_right_one() {
    let off = Config::from_env(|n| match n {
        "UPSTASH_REDIS_REST_URL" => Some("http://127.0.0.1:1".into()),
        "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
        _ => None,
    })
    .unwrap();
    let req = AdminRequest { method: "GET", rest: "status", query: "", authorization: None, body: "" };
    let r = block_on(admin(&off, &Limiter::default(), &Rest::new(), &req, 0.0));
    assert_eq!(r.status, 404, "no ADMIN_TOKEN: the API does not exist");

    let g = Gateway::new(&[]);
    for (token, status) in [(None, 401), (Some("admin-token-012345678"), 401), (Some(TOKEN), 200)] {
        let r = g.call("GET", "/__ratelimit/policy", token, "");
        assert_eq!(r.status, status, "{token:?}");
        if status == 401 {
            assert!(r.headers.iter().any(|(n, v)| *n == "www-authenticate" && v.starts_with("Bearer")));
            assert_eq!(r.content_type, "application/problem+json");
        }
    }
    // The status page's shell has no data and needs no token; its data does.
    let page = g.call("GET", "/__ratelimit/status", None, "");
    assert_eq!(
        (page.status, page.content_type, page.asset),
        (200, "text/html; charset=utf-8", Some(Asset::StatusPage))
    );
    assert!(page.headers.iter().any(|(n, v)| *n == "content-security-policy" && v.contains("default-src 'none'")));
    assert_eq!(g.call("GET", "/__ratelimit/status.json", None, "").status, 401);
    assert_eq!(g.call("GET", "/__ratelimit/nothing", Some(TOKEN), "").status, 404);
    let r = g.call("POST", "/__ratelimit/policy", Some(TOKEN), "");
    assert_eq!(r.status, 405);
    assert!(r.headers.contains(&("allow", "GET".into())));
    // Every spelling of the prefix is reserved: never forwarded to the origin.
    for other in ["/%5F_ratelimit/policy", "//__ratelimit/policy", "/x/../__ratelimit/policy", "/__ratelimit"] {
        assert!(admin_target(&g.config, other).is_some(), "{other}");
    }
    assert!(admin_target(&g.config, "/__ratelimitx/policy").is_none());
    assert!(admin_target(&g.config, "/api/__ratelimit/").is_none());
}

/// Issue 10, item 9: with PATH_CASE_INSENSITIVE=true an origin takes `/__RATELIMIT/…` for the admin
/// prefix, and such spellings were forwarded to it. Other cases, and path parameters, are reserved too.
#[test]
fn other_case_and_parameter_spellings_of_the_prefix_are_reserved() {
    for fold in ["true", "false"] {
        let config = config(&[("PATH_CASE_INSENSITIVE", fold), ("ADMIN_PREFIX", "/__ratelimit/")]);
        for other in [
            "/__RATELIMIT/policy",
            "/__RateLimit/metrics",
            "/__ratelimit;x=1/policy",
            "/%5F_RATElimit",
            "/__ratelimit;/",
        ] {
            assert_eq!(admin_target(&config, other), Some(None), "{other} with PATH_CASE_INSENSITIVE={fold}");
        }
        assert!(admin_target(&config, "/__ratelimit/policy").unwrap().is_some());
    }
}

#[test]
fn an_override_changes_a_users_limit_on_the_next_request_in_the_same_round_trip() {
    let g = Gateway::new(&[]);
    let (outcome, calls, _) = g.request("alice", "GET", "/api/orders");
    // NOSCRIPT, EVAL, and (vanilla Redis refuses the Upstash flag) the plain EVAL.
    assert_eq!((capacity(&outcome), calls), (5, 3));

    let (status, body) = g.json("PUT", "/__ratelimit/overrides/user/alice", r#"{"capacity":100,"refill":"100/min"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "user");
    assert_eq!(body["expires_at_ms"], Value::Null);
    let (outcome, calls, _) = g.request("alice", "GET", "/api/orders");
    assert_eq!((capacity(&outcome), calls), (100, 1), "applied by the decision call itself");
    // A bigger bucket is not a fuller one: the tokens left carry over and refill at the new rate…
    assert_eq!(g.allowed("alice", "/api/orders", 120), 3);
    // …unless the bucket is reset, and then it starts full.
    assert_eq!(g.json("DELETE", "/__ratelimit/buckets?user=alice&path=/api/orders", "").0, 200);
    assert_eq!(g.allowed("alice", "/api/orders", 120), 100);
    assert_eq!(capacity(&g.request("bob", "GET", "/api/orders").0), 5, "only alice");

    let (status, body) = g.json("GET", "/__ratelimit/overrides", "");
    assert_eq!((status, body["overrides"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(g.json("GET", "/__ratelimit/overrides/user/alice", "").1["capacity"], 100);
    assert_eq!(g.json("DELETE", "/__ratelimit/overrides/user/alice", "").0, 200);
    assert_eq!(g.json("DELETE", "/__ratelimit/overrides/user/alice", "").0, 404);
    assert_eq!(g.json("GET", "/__ratelimit/overrides/user/alice", "").0, 404);
    assert_eq!(capacity(&g.request("alice", "GET", "/api/orders").0), 5, "back to the policy");
}

#[test]
fn an_override_expires_by_itself() {
    let g = Gateway::new(&[]);
    let (status, body) =
        g.json("PUT", "/__ratelimit/overrides/ip/203.0.113.9", r#"{"capacity":50,"refill":"1/s","expires_in_s":1}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_at_ms"], json!(1.8e12 as u64 + 1000));
    // An IP override applies to a caller known only by its IP.
    let header = |name: &str| (name == "cf-connecting-ip").then(|| "203.0.113.9".to_string());
    let Plan::Limit(limited) =
        plan(&g.config, &RequestFacts { method: "GET", target: "/a", header: &header, now_ms: g.now })
    else {
        panic!()
    };
    let outcome = block_on(g.limiter.decide(&g.rest, &limited.checks, g.config.clock, g.now)).unwrap();
    assert_eq!(outcome.limits[0].capacity, 50);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let outcome = block_on(g.limiter.decide(&g.rest, &limited.checks, g.config.clock, g.now)).unwrap();
    assert_eq!(outcome.limits[0].capacity, 5, "Redis expired the override key");
}

#[test]
fn overrides_for_routes_and_tiers_with_precedence_user_route_tier() {
    let policy = r#"{"tiers":["free","pro"],"default_tier":"free","rules":[
        {"name":"orders","route":"/api/orders/*","limits":[
            {"name":"per-user","capacity":5,"refill":"5/min"},
            {"name":"everyone","by":"global","capacity":1000,"refill":"1000/min"}]}]}"#;
    let g = Gateway::new(&[("RATE_LIMIT_POLICY", policy)]);
    let caps = |g: &Gateway, user: &str| match g.request(user, "GET", "/api/orders/7").0 {
        Outcome::Allowed(d) => (d.limits[0].capacity, d.limits[1].capacity),
        other => panic!("{other:?}"),
    };
    assert_eq!(caps(&g, "ann"), (5, 1000));
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/tier/free", r#"{"capacity":7,"refill":"7/min"}"#).0, 200);
    assert_eq!(caps(&g, "ann"), (7, 7), "a tier override covers every limit of the tier's callers");
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/route/api/orders/*", r#"{"capacity":9,"refill":"9/min"}"#).0, 200);
    assert_eq!(caps(&g, "ann"), (9, 9), "a route outranks a tier");
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/user/ann", r#"{"capacity":11,"refill":"11/min"}"#).0, 200);
    assert_eq!(caps(&g, "ann"), (11, 9), "a user outranks a route, on the limits counted per user");
    // Strict: unknown tiers and routes are refused, naming the field.
    let (status, body) = g.json("PUT", "/__ratelimit/overrides/tier/gold", r#"{"capacity":1,"refill":"1/s"}"#);
    assert_eq!((status, body["field"].as_str()), (400, Some("name")));
    let (status, body) = g.json("PUT", "/__ratelimit/overrides/route/api/other", r#"{"capacity":1,"refill":"1/s"}"#);
    assert_eq!((status, body["field"].as_str()), (400, Some("name")));
    // The effective policy shows every default.
    let (status, body) = g.json("GET", "/__ratelimit/policy", "");
    assert_eq!((status, body["mode"].as_str()), (200, Some("policy")));
    assert_eq!(body["policy"]["rules"][0]["limits"][1]["by"], "global");
    assert_eq!(body["policy"]["rules"][0]["limits"][0]["algorithm"], "token-bucket");
}

#[test]
fn bad_override_input_is_a_400_naming_the_field() {
    let g = Gateway::new(&[]);
    for (target, body, field) in [
        ("/__ratelimit/overrides/team/x", r#"{"capacity":1,"refill":"1/s"}"#, "scope"),
        ("/__ratelimit/overrides/user/a", r#"{"capacity":0,"refill":"1/s"}"#, "capacity"),
        ("/__ratelimit/overrides/user/a", r#"{"capacity":5,"refill":"often"}"#, "refill"),
        ("/__ratelimit/overrides/user/a", r#"{"capacity":5,"refill":"1/s","expires_in_s":-1}"#, "expires_in_s"),
        ("/__ratelimit/overrides/user/a", r#"{"capacity":5}"#, "refill"),
        ("/__ratelimit/overrides/user/a", r#"{"capacity":5,"refill":"1/s","extra":true}"#, "body"),
        ("/__ratelimit/overrides/user/a", "[]", "body"),
        ("/__ratelimit/overrides/user/%FF", r#"{"capacity":5,"refill":"1/s"}"#, "name"),
        ("/__ratelimit/overrides/tier/free", r#"{"capacity":5,"refill":"1/s"}"#, "name"),
    ] {
        let (status, body) = g.json("PUT", target, body);
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{target} {body}");
        assert_eq!(body["type"], "urn:edge-ratelimit:problem:bad-request");
    }
    let huge = format!(r#"{{"capacity":5,"refill":"1/s","pad":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/user/a", &huge).0, 413);
    assert_eq!(g.rest.redis(&["EXISTS", "ratelimit:overrides"]), json!(0), "nothing was written");
}

#[test]
fn peek_consumes_nothing_and_reset_forgets_the_deny_cache() {
    let g = Gateway::new(&[]);
    assert_eq!(g.allowed("carol", "/api/x", 3), 3);
    let peek = || g.json("GET", "/__ratelimit/buckets?user=carol&path=/api/x", "");
    let (status, body) = peek();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"][0]["remaining"], 2);
    assert_eq!(body["limits"][0]["key"], "rate:carol:/api/x");
    assert_eq!(peek().1["limits"][0]["remaining"], 2, "peeking took nothing");
    assert_eq!(g.allowed("carol", "/api/x", 5), 2);
    assert!(matches!(g.request("carol", "GET", "/api/x"), (Outcome::Denied(_), 0, _)), "answered by the deny cache");

    let (status, body) = g.json("DELETE", "/__ratelimit/buckets?user=carol&path=/api/./x/", "");
    assert_eq!((status, body["deleted"].as_i64()), (200, Some(1)), "{body}");
    assert!(matches!(g.request("carol", "GET", "/api/x").0, Outcome::Allowed(_)), "the cached denial is gone");
    assert_eq!(peek().1["limits"][0]["remaining"], 4);

    // A key is taken literally, never as a pattern.
    g.rest.redis(&["HSET", "rate:a:/x", "tokens", "1"]);
    let (status, body) = g.json("DELETE", "/__ratelimit/buckets?key=rate%3A*", "");
    assert_eq!((status, body["deleted"].as_i64()), (200, Some(0)));
    assert_eq!(g.rest.redis(&["EXISTS", "rate:a:/x"]), json!(1));
    assert_eq!(g.json("DELETE", "/__ratelimit/buckets?key=rate:a:/x", "").1["deleted"], 1);
    let (status, body) = g.json("DELETE", "/__ratelimit/buckets?key=session:1", "");
    assert_eq!((status, body["field"].as_str()), (400, Some("key")), "only bucket keys");
    for (query, field) in [
        ("key=rate:a:/x", "query"),
        ("path=/x", "user"),
        ("user=a&ip=1.2.3.4&path=/x", "user"),
        ("ip=nope&path=/x", "ip"),
        ("user=a", "path"),
        ("user=a&path=x", "path"),
        ("user=a&path=/x&tier=gold", "tier"),
        ("user=a&path=/x&colour=red", "query"),
        ("user=a&user=b&path=/x", "user"),
    ] {
        let (status, body) = g.json("GET", &format!("/__ratelimit/buckets?{query}"), "");
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{query}");
    }
}

#[test]
fn metrics_are_reported_off_the_decision_and_read_back_as_prometheus_text() {
    let g = Gateway::new(&[]);
    let mut metrics = Metrics::default();
    for user in ["dan", "dan", "dan", "dan", "dan", "dan", "dan", "eve"] {
        let (outcome, _, limited) = g.request(user, "GET", "/api/m");
        metrics.record(&outcome, &limited.checks, limited.tier.as_deref(), &limited.subject);
        metrics.decision.observe(1.5);
    }
    metrics.add_limiter_counts(g.limiter.take_counts());
    let report = metrics.report(g.now, 10_000).expect("something to report");
    let reply = block_on(g.rest.pipeline(report.body)).unwrap();
    assert!(!reply.body.contains("error"), "{}", reply.body);

    let r = g.call("GET", "/__ratelimit/metrics", Some(TOKEN), "");
    assert_eq!((r.status, r.content_type), (200, "text/plain; version=0.0.4; charset=utf-8"));
    for line in [
        "edge_ratelimit_requests_total{rule=\"default\",tier=\"none\",outcome=\"allowed\"} 6",
        "edge_ratelimit_requests_total{rule=\"default\",tier=\"none\",outcome=\"denied\"} 2",
        "edge_ratelimit_decision_seconds_bucket{le=\"0.002\"} 8",
        "edge_ratelimit_decision_seconds_count 8",
        "edge_ratelimit_noscript_total 1",
        "edge_ratelimit_deny_cache_hits_total 1",
    ] {
        assert!(r.body.lines().any(|l| l == line), "missing {line:?} in\n{}", r.body);
    }
    let (status, body) = g.json("GET", "/__ratelimit/status.json", "");
    assert_eq!(status, 200);
    assert_eq!(body["rules"][0]["denied"], 2);
    assert_eq!(body["top_denied"][0], json!({ "caller": "dan", "denied": 2 }));
    assert_eq!(body["latency"]["decision_ms"]["count"], 8);
    assert_eq!(body["latency"]["redis_ms"]["p50"], Value::Null);
}

#[test]
fn a_sliding_window_rule_is_decided_with_the_others_in_one_call() {
    let policy = r#"{"rules":[{"name":"search","route":"/search","algorithm":"sliding-window","limits":[
        {"name":"search-user","capacity":3,"refill":"3/min"},
        {"name":"search-all","by":"global","capacity":100,"refill":"100/min","algorithm":"token-bucket"}]}]}"#;
    let g = Gateway::new(&[("RATE_LIMIT_POLICY", policy)]);
    g.request("fay", "GET", "/search"); // loads the script
    let (outcome, calls, _) = g.request("fay", "GET", "/search");
    assert_eq!(calls, 1);
    let Outcome::Allowed(d) = outcome else { panic!("{outcome:?}") };
    assert_eq!((d.limits[0].remaining, d.limits[0].window_s), (1, 60));
    assert_eq!(g.allowed("fay", "/search", 3), 1);
    let fields = g.rest.redis(&["HGETALL", "rate:fay:/search#search-user"]);
    assert!(fields.to_string().contains("\"previous\""), "stored as a window: {fields}");
    let (_, body) = g.json("GET", "/__ratelimit/buckets?user=fay&path=/search", "");
    assert_eq!(body["limits"][0]["algorithm"], "sliding-window");
    assert_eq!(body["allowed_now"], false);
}

#[test]
fn redis_down_is_a_503_not_a_hang_or_a_500() {
    let g = Gateway::new(&[]);
    struct Down;
    impl Transport for Down {
        async fn pause(&self, _ms: u32) -> Result<(), TransportError> {
            Ok(())
        }
        async fn post(&self, _b: String) -> Result<HttpReply, TransportError> {
            Err(TransportError::Timeout)
        }
        async fn pipeline(&self, _b: String) -> Result<HttpReply, TransportError> {
            Err(TransportError::Unreachable)
        }
    }
    for target in ["/__ratelimit/metrics", "/__ratelimit/overrides", "/__ratelimit/buckets?user=a&path=/x"] {
        let (rest, query) = admin_target(&g.config, target).unwrap().unwrap();
        let authorization = format!("Bearer {TOKEN}");
        let req = AdminRequest { method: "GET", rest, query, authorization: Some(&authorization), body: "" };
        let r = block_on(admin(&g.config, &g.limiter, &Down, &req, 0.0));
        assert_eq!(r.status, 503, "{target}: {}", r.body);
        assert!(r.headers.contains(&("retry-after", "1".into())));
        assert!(r.body.contains("redis-unavailable"));
    }
}

#[test]
fn the_openapi_document_describes_every_route_and_nothing_else() {
    let doc: Value = serde_json::from_str(include_str!("../assets/openapi.json")).expect("valid JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let g = Gateway::new(&[]);
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("a path item").iter().filter(|(m, _)| *m != "parameters") {
            documented.push(format!("{} {path}", method.to_uppercase()));
            // Every documented operation is routed: whatever it answers, it is not "no such resource".
            let concrete = path.replace("{scope}", "user").replace("{name}", "someone");
            let r = g.call(&method.to_uppercase(), &concrete, Some(TOKEN), "{}");
            assert!(!r.body.contains("no such admin resource"), "{method} {path}: {}", r.body);
            assert_ne!(r.status, 405, "{method} {path}");
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /__ratelimit/buckets",
            "DELETE /__ratelimit/overrides/{scope}/{name}",
            "GET /__ratelimit/buckets",
            "GET /__ratelimit/metrics",
            "GET /__ratelimit/openapi.json",
            "GET /__ratelimit/overrides",
            "GET /__ratelimit/overrides/{scope}/{name}",
            "GET /__ratelimit/policy",
            "GET /__ratelimit/status",
            "GET /__ratelimit/status.json",
            "PUT /__ratelimit/overrides/{scope}/{name}",
        ]
    );
}
