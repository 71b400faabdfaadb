//! The admin API end to end in the pure core, against a real Redis, through the gateway's one entry
//! (the same `begin` / `resume` the Worker calls): auth, overrides applied by the decision script in
//! the same call, peek and reset (with the deny cache forgotten), metrics reported after the
//! response and read back, strict validation.

mod common;

use common::{body_json, header, run, status, Req, Rest};
use edge_ratelimit::{admin_target, Asset, Body, Config, Gateway, Reply, Request, Step};
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789";

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
        ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ("ADMIN_TOKEN", TOKEN),
        ("METRICS_FLUSH_MS", "0"),
    ];
    vars.extend_from_slice(extra);
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

/// A gateway on its own Redis, at a fixed time.
struct Admin<'c> {
    gw: Gateway<'c>,
    rest: Rest,
    now: f64,
}

impl<'c> Admin<'c> {
    fn new(config: &'c Config) -> Admin<'c> {
        Admin { gw: Gateway::new(config), rest: Rest::new(), now: 1.8e12 }
    }

    fn call(&mut self, method: &str, target: &str, token: Option<&str>, body: &str) -> Step {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("cf-connecting-ip", "203.0.113.9")];
        headers.extend(authorization.as_deref().map(|a| ("authorization", a)));
        let req = Req::new(&self.gw, method, target, &headers).body(body);
        run(&mut self.gw, &self.rest, &req, self.now)
    }

    fn json(&mut self, method: &str, target: &str, body: &str) -> (u16, Value) {
        let step = self.call(method, target, Some(TOKEN), body);
        (status(&step), body_json(&step))
    }

    /// A request through the gateway as `user`: its final step, and the REST calls it took.
    fn request(&mut self, user: &str, method: &str, target: &str) -> (Step, usize) {
        let req = Req::new(&self.gw, method, target, &[("x-user-id", user), ("cf-connecting-ip", "203.0.113.9")]);
        self.rest.take_sent();
        let step = run(&mut self.gw, &self.rest, &req, self.now);
        let calls = self.rest.take_sent().iter().filter(|c| *c != "PIPELINE").count();
        (step, calls)
    }

    fn allowed(&mut self, user: &str, target: &str, n: usize) -> usize {
        (0..n).filter(|_| matches!(self.request(user, "GET", target).0, Step::Forward { .. })).count()
    }
}

/// The capacities `RateLimit-Policy` reports (`q=`), limit by limit.
fn capacities(step: &Step) -> Vec<u32> {
    let policy = header(step, "ratelimit-policy").expect("a RateLimit-Policy field");
    policy.split(", ").map(|p| p.split(";q=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap()).collect()
}

fn capacity(step: &Step) -> u32 {
    capacities(step)[0]
}

fn text(step: &Step) -> &str {
    match step {
        Step::Respond { response, .. } => response.text(),
        other => panic!("not a response: {other:?}"),
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
    let mut g = Admin::new(&off);
    for target in ["/__ratelimit/status", "/__ratelimit/policy", "/__RateLimit/policy"] {
        let r = g.call("GET", target, Some(TOKEN), "");
        assert!(
            matches!(&r, Step::Respond { response, .. } if response.status == 404),
            "no ADMIN_TOKEN: {target} {r:?}"
        );
    }

    let config = config(&[]);
    let mut g = Admin::new(&config);
    for (token, code) in [(None, 401), (Some("admin-token-012345678"), 401), (Some(TOKEN), 200)] {
        let r = g.call("GET", "/__ratelimit/policy", token, "");
        assert_eq!(status(&r), code, "{token:?}");
        if code == 401 {
            assert!(header(&r, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
            assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
        }
    }
    // The status page's shell has no data and needs no token; its data does.
    let page = g.call("GET", "/__ratelimit/status", None, "");
    let Step::Respond { response, .. } = &page else { panic!("{page:?}") };
    assert_eq!((response.status, &response.body), (200, &Body::Asset(Asset::StatusPage)));
    assert_eq!(header(&page, "content-type"), Some("text/html; charset=utf-8"));
    assert!(header(&page, "content-security-policy").is_some_and(|v| v.contains("default-src 'none'")));
    assert_eq!(status(&g.call("GET", "/__ratelimit/status.json", None, "")), 401);
    assert_eq!(status(&g.call("GET", "/__ratelimit/nothing", Some(TOKEN), "")), 404);
    let r = g.call("POST", "/__ratelimit/policy", Some(TOKEN), "");
    assert_eq!((status(&r), header(&r, "allow")), (405, Some("GET")));
    // HEAD: the same status and headers, no body.
    let head = g.call("HEAD", "/__ratelimit/policy", Some(TOKEN), "");
    assert_eq!((status(&head), text(&head)), (200, ""));
    // Every spelling of the prefix is reserved: 404, never forwarded to the origin.
    for other in ["/%5F_ratelimit/policy", "//__ratelimit/policy", "/x/../__ratelimit/policy", "/__RATELIMIT/policy"] {
        assert!(admin_target(&config, other).is_some(), "{other}");
        assert_eq!(status(&g.call("GET", other, Some(TOKEN), "")), 404, "{other}");
    }
    assert!(admin_target(&config, "/__ratelimitx/policy").is_none());
    assert!(admin_target(&config, "/api/__ratelimit/").is_none());
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
    let config = config(&[]);
    let mut g = Admin::new(&config);
    let (outcome, calls) = g.request("alice", "GET", "/api/orders");
    // NOSCRIPT, EVAL, and (vanilla Redis refuses the Upstash flag) the plain EVAL.
    assert_eq!((capacity(&outcome), calls), (5, 3));
    assert_eq!(header(&outcome, "ratelimit"), Some("\"default\";r=4;t=12"));

    let (code, body) = g.json("PUT", "/__ratelimit/overrides/user/alice", r#"{"capacity":100,"refill":"100/min"}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["scope"], "user");
    assert_eq!(body["expires_at_ms"], Value::Null);
    let (outcome, calls) = g.request("alice", "GET", "/api/orders");
    assert_eq!((capacity(&outcome), calls), (100, 1), "applied by the decision call itself");
    // A bigger bucket is not a fuller one: the tokens left carry over and refill at the new rate…
    assert_eq!(g.allowed("alice", "/api/orders", 120), 3);
    // …unless the bucket is reset, and then it starts full.
    assert_eq!(g.json("DELETE", "/__ratelimit/buckets?user=alice&path=/api/orders", "").0, 200);
    assert_eq!(g.allowed("alice", "/api/orders", 120), 100);
    assert_eq!(capacity(&g.request("bob", "GET", "/api/orders").0), 5, "only alice");

    let (code, body) = g.json("GET", "/__ratelimit/overrides", "");
    assert_eq!((code, body["overrides"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(g.json("GET", "/__ratelimit/overrides/user/alice", "").1["capacity"], 100);
    assert_eq!(g.json("DELETE", "/__ratelimit/overrides/user/alice", "").0, 200);
    assert_eq!(g.json("DELETE", "/__ratelimit/overrides/user/alice", "").0, 404);
    assert_eq!(g.json("GET", "/__ratelimit/overrides/user/alice", "").0, 404);
    assert_eq!(capacity(&g.request("alice", "GET", "/api/orders").0), 5, "back to the policy");
}

#[test]
fn an_override_expires_by_itself() {
    let config = config(&[]);
    let mut g = Admin::new(&config);
    let (code, body) =
        g.json("PUT", "/__ratelimit/overrides/ip/203.0.113.9", r#"{"capacity":50,"refill":"1/s","expires_in_s":1}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["expires_at_ms"], json!(1.8e12 as u64 + 1000));
    // An IP override applies to a caller known only by its IP.
    let by_ip = |g: &mut Admin<'_>| {
        let req = Req::new(&g.gw, "GET", "/a", &[("cf-connecting-ip", "203.0.113.9")]);
        capacity(&run(&mut g.gw, &g.rest, &req, g.now))
    };
    assert_eq!(by_ip(&mut g), 50);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(by_ip(&mut g), 5, "Redis expired the override key");
}

#[test]
fn overrides_for_routes_and_tiers_with_precedence_user_route_tier() {
    let policy = r#"{"tiers":["free","pro"],"default_tier":"free","rules":[
        {"name":"orders","route":"/api/orders/*","limits":[
            {"name":"per-user","capacity":5,"refill":"5/min"},
            {"name":"everyone","by":"global","capacity":1000,"refill":"1000/min"}]}]}"#;
    let config = config(&[("RATE_LIMIT_POLICY", policy)]);
    let mut g = Admin::new(&config);
    let caps = |g: &mut Admin<'_>, user: &str| {
        let c = capacities(&g.request(user, "GET", "/api/orders/7").0);
        (c[0], c[1])
    };
    assert_eq!(caps(&mut g, "ann"), (5, 1000));
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/tier/free", r#"{"capacity":7,"refill":"7/min"}"#).0, 200);
    assert_eq!(caps(&mut g, "ann"), (7, 7), "a tier override covers every limit of the tier's callers");
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/route/api/orders/*", r#"{"capacity":9,"refill":"9/min"}"#).0, 200);
    assert_eq!(caps(&mut g, "ann"), (9, 9), "a route outranks a tier");
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/user/ann", r#"{"capacity":11,"refill":"11/min"}"#).0, 200);
    assert_eq!(caps(&mut g, "ann"), (11, 9), "a user outranks a route, on the limits counted per user");
    // Strict: unknown tiers and routes are refused, naming the field.
    let (code, body) = g.json("PUT", "/__ratelimit/overrides/tier/gold", r#"{"capacity":1,"refill":"1/s"}"#);
    assert_eq!((code, body["field"].as_str()), (400, Some("name")));
    let (code, body) = g.json("PUT", "/__ratelimit/overrides/route/api/other", r#"{"capacity":1,"refill":"1/s"}"#);
    assert_eq!((code, body["field"].as_str()), (400, Some("name")));
    // The effective policy shows every default.
    let (code, body) = g.json("GET", "/__ratelimit/policy", "");
    assert_eq!((code, body["mode"].as_str()), (200, Some("policy")));
    assert_eq!(body["policy"]["rules"][0]["limits"][1]["by"], "global");
    assert_eq!(body["policy"]["rules"][0]["limits"][0]["algorithm"], "token-bucket");
}

/// Issue 10, item 2, in the core: a write's body is asked for only once its token is right, and not
/// at all when it declares more than the limit.
#[test]
fn a_body_is_read_only_after_the_token_and_only_up_to_the_limit() {
    let config = config(&[]);
    let mut gw = Gateway::new(&config);
    let url = "https://gateway.test/__ratelimit/overrides/user/zed";
    let begin = |gw: &mut Gateway<'_>, authorization: Option<&str>, length: Option<&str>| {
        let headers: Vec<Option<&str>> = gw
            .header_names()
            .iter()
            .map(|n| match n.as_str() {
                "authorization" => authorization,
                "content-length" => length,
                _ => None,
            })
            .collect();
        gw.begin(&Request { method: "PUT", url, headers: &headers }, 1.8e12)
    };
    let right = format!("Bearer {TOKEN}");
    for wrong in [None, Some("Bearer not-the-token-at-all")] {
        let step = begin(&mut gw, wrong, None);
        assert_eq!(status(&step), 401, "{wrong:?}: answered without reading the body");
    }
    let step = begin(&mut gw, Some(&right), Some("16385"));
    assert_eq!(status(&step), 413, "declared too large: answered without reading it");
    let Step::ReadBody { ticket, max } = begin(&mut gw, Some(&right), None) else { panic!("the body is wanted") };
    assert_eq!(max, edge_ratelimit::MAX_BODY_BYTES);
    assert_eq!(status(&gw.resume(ticket, Reply::Body(None), 1.8e12)), 413, "longer than the limit as read");
    assert_eq!(gw.pending(), 0);
}

#[test]
fn bad_override_input_is_a_400_naming_the_field() {
    let config = config(&[]);
    let mut g = Admin::new(&config);
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
        let (code, body) = g.json("PUT", target, body);
        assert_eq!((code, body["field"].as_str()), (400, Some(field)), "{target} {body}");
        assert_eq!(body["type"], "urn:edge-ratelimit:problem:bad-request");
    }
    let huge = format!(r#"{{"capacity":5,"refill":"1/s","pad":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(g.json("PUT", "/__ratelimit/overrides/user/a", &huge).0, 413);
    assert_eq!(g.rest.redis(&["EXISTS", "ratelimit:overrides"]), json!(0), "nothing was written");
}

#[test]
fn peek_consumes_nothing_and_reset_forgets_the_deny_cache() {
    let config = config(&[]);
    let mut g = Admin::new(&config);
    assert_eq!(g.allowed("carol", "/api/x", 3), 3);
    let peek = |g: &mut Admin<'_>| g.json("GET", "/__ratelimit/buckets?user=carol&path=/api/x", "");
    let (code, body) = peek(&mut g);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["limits"][0]["remaining"], 2);
    assert_eq!(body["limits"][0]["key"], "rate:{carol}:/api/x");
    assert_eq!(peek(&mut g).1["limits"][0]["remaining"], 2, "peeking took nothing");
    assert_eq!(g.allowed("carol", "/api/x", 5), 2);
    let (denied, calls) = g.request("carol", "GET", "/api/x");
    assert_eq!((status(&denied), calls), (429, 0), "answered by the deny cache");

    let (code, body) = g.json("DELETE", "/__ratelimit/buckets?user=carol&path=/api/./x/", "");
    assert_eq!((code, body["deleted"].as_i64()), (200, Some(1)), "{body}");
    assert_eq!(status(&g.request("carol", "GET", "/api/x").0), 200, "the cached denial is gone");
    assert_eq!(peek(&mut g).1["limits"][0]["remaining"], 4);

    // A key is taken literally, never as a pattern.
    g.rest.redis(&["HSET", "rate:{a}:/x", "tokens", "1"]);
    let (code, body) = g.json("DELETE", "/__ratelimit/buckets?key=rate%3A*", "");
    assert_eq!((code, body["deleted"].as_i64()), (200, Some(0)));
    assert_eq!(g.rest.redis(&["EXISTS", "rate:{a}:/x"]), json!(1));
    assert_eq!(g.json("DELETE", "/__ratelimit/buckets?key=rate:{a}:/x", "").1["deleted"], 1);
    let (code, body) = g.json("DELETE", "/__ratelimit/buckets?key=session:1", "");
    assert_eq!((code, body["field"].as_str()), (400, Some("key")), "only bucket keys");
    for (query, field) in [
        ("key=rate:{a}:/x", "query"),
        ("path=/x", "user"),
        ("user=a&ip=1.2.3.4&path=/x", "user"),
        ("ip=nope&path=/x", "ip"),
        ("user=a", "path"),
        ("user=a&path=x", "path"),
        ("user=a&path=/x&tier=gold", "tier"),
        ("user=a&path=/x&colour=red", "query"),
        ("user=a&user=b&path=/x", "user"),
    ] {
        let (code, body) = g.json("GET", &format!("/__ratelimit/buckets?{query}"), "");
        assert_eq!((code, body["field"].as_str()), (400, Some(field)), "{query}");
    }
}

/// Counted by the gateway itself and reported after each response (METRICS_FLUSH_MS=0 here): the
/// counts of every kind differ, so a count put in the wrong place shows.
#[test]
fn metrics_are_reported_after_the_response_and_read_back_as_prometheus_text() {
    let config = config(&[]);
    let mut g = Admin::new(&config);
    for user in ["dan", "dan", "dan", "dan", "dan", "dan", "dan", "dan", "eve"] {
        let (step, _) = g.request(user, "GET", "/api/m");
        let (Step::Forward { report, .. } | Step::Respond { report, .. }) = &step else { panic!("{step:?}") };
        assert!(report.as_ref().is_some_and(|f| f.pipeline), "each answer carries its report, sent after it");
    }
    assert_eq!(g.rest.redis(&["HGET", "ratelimit:metrics", "c|denied|default|none"]), json!("3"));

    let r = g.call("GET", "/__ratelimit/metrics", Some(TOKEN), "");
    assert_eq!((status(&r), header(&r, "content-type")), (200, Some("text/plain; version=0.0.4; charset=utf-8")));
    for line in [
        "edge_ratelimit_requests_total{rule=\"default\",tier=\"none\",outcome=\"allowed\"} 6",
        "edge_ratelimit_requests_total{rule=\"default\",tier=\"none\",outcome=\"denied\"} 3",
        "edge_ratelimit_decision_seconds_count 9",
        "edge_ratelimit_noscript_total 1",
        "edge_ratelimit_deny_cache_hits_total 2",
    ] {
        assert!(text(&r).lines().any(|l| l == line), "missing {line:?} in\n{}", text(&r));
    }
    let (code, body) = g.json("GET", "/__ratelimit/status.json", "");
    assert_eq!(code, 200);
    assert_eq!(body["rules"][0]["denied"], 3);
    assert_eq!(body["top_denied"][0], json!({ "caller": "dan", "denied": 3 }));
    assert_eq!(body["latency"]["decision_ms"]["count"], 9);
    // Round trips: dan's first request loads the script (EVALSHA, EVAL, plain EVAL), five more ask
    // Redis once each, two are cached denials; eve asks once.
    assert_eq!(body["latency"]["redis_ms"]["count"], 3 + 5 + 1);
}

#[test]
fn a_sliding_window_rule_is_decided_with_the_others_in_one_call() {
    let policy = r#"{"rules":[{"name":"search","route":"/search","algorithm":"sliding-window","limits":[
        {"name":"search-user","capacity":3,"refill":"3/min"},
        {"name":"search-all","by":"global","capacity":100,"refill":"100/min","algorithm":"token-bucket"}]}]}"#;
    let config = config(&[("RATE_LIMIT_POLICY", policy)]);
    let mut g = Admin::new(&config);
    g.request("fay", "GET", "/search"); // loads the script
    let (step, calls) = g.request("fay", "GET", "/search");
    assert_eq!(calls, 1);
    assert_eq!(header(&step, "ratelimit"), Some("\"search-user\";r=1;t=120"));
    assert!(header(&step, "ratelimit-policy").unwrap().starts_with("\"search-user\";q=3;w=60"));
    assert_eq!(g.allowed("fay", "/search", 3), 1);
    let fields = g.rest.redis(&["HGETALL", "rate:{fay}:/search#search-user"]);
    assert!(fields.to_string().contains("\"previous\""), "stored as a window: {fields}");
    let (_, body) = g.json("GET", "/__ratelimit/buckets?user=fay&path=/search", "");
    assert_eq!(body["limits"][0]["algorithm"], "sliding-window");
    assert_eq!(body["allowed_now"], false);
}

#[test]
fn redis_down_is_a_503_not_a_hang_or_a_500() {
    let config = config(&[]);
    let mut gw = Gateway::new(&config);
    let authorization = format!("Bearer {TOKEN}");
    for reply in [Reply::Timeout, Reply::Unreachable, Reply::Http { status: 502, body: "<html>" }] {
        for target in ["/__ratelimit/metrics", "/__ratelimit/overrides", "/__ratelimit/buckets?user=a&path=/x"] {
            let url = format!("https://gateway.test{target}");
            let headers: Vec<Option<&str>> =
                gw.header_names().iter().map(|n| (n == "authorization").then_some(authorization.as_str())).collect();
            let mut step = gw.begin(&Request { method: "GET", url: &url, headers: &headers }, 1.8e12);
            while let Step::Fetch(f) = &step {
                step = gw.resume(f.ticket, reply, 1.8e12);
            }
            assert_eq!(status(&step), 503, "{target} {reply:?}: {step:?}");
            assert_eq!(header(&step, "retry-after"), Some("1"));
            assert!(text(&step).contains("redis-unavailable"), "{}", text(&step));
        }
    }
}

#[test]
fn the_openapi_document_describes_every_route_and_nothing_else() {
    let doc: Value = serde_json::from_str(include_str!("../assets/openapi.json")).expect("valid JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // The quota endpoint is documented at its usual path; the gateway serves it where QUOTA_PATH says.
    let config = config(&[("QUOTA_PATH", "/.well-known/ratelimit")]);
    let mut g = Admin::new(&config);
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("a path item").iter().filter(|(m, _)| *m != "parameters") {
            documented.push(format!("{} {path}", method.to_uppercase()));
            // Every documented operation is routed: whatever it answers, it is not "no such resource".
            let concrete = path.replace("{scope}", "user").replace("{name}", "someone");
            let r = g.call(&method.to_uppercase(), &concrete, Some(TOKEN), "{}");
            assert!(!text(&r).contains("no such admin resource"), "{method} {path}: {}", text(&r));
            assert_ne!(status(&r), 405, "{method} {path}");
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /__ratelimit/buckets",
            "DELETE /__ratelimit/overrides/{scope}/{name}",
            "GET /.well-known/ratelimit",
            "GET /__ratelimit/buckets",
            "GET /__ratelimit/candidate",
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
