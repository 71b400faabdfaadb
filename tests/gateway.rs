//! The whole request path in the pure core, through the gateway's one entry (`begin` / `resume`, as
//! the Worker calls it): identity precedence, lists, rules, spellings and method overrides, the deny
//! cache, the fail mode, and every status and header the gateway answers with. Each rule of precedence
//! here has a test that fails when the rule is flipped.

mod common;

use common::{body_json, header, keys_of, run, status, Req, Rest};
use edge_ratelimit::{Config, Gateway, Reply, Request, Step};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde_json::json;

const ORDERS: &str = r#"{"rules":[
    {"name":"orders","methods":["GET"],"route":"/users/:id/orders",
     "limits":[{"name":"orders-per-user","capacity":5,"refill":"5/min"}]},
    {"name":"delete-user","methods":["DELETE"],"route":"/users/:id",
     "limits":[{"name":"deletes","capacity":1,"refill":"1/h"}]}
]}"#;

const SECRET: &str = "a-gateway-test-secret-of-32-bytes-or-more";
const NOW: f64 = 1.8e12;

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"), ("UPSTASH_REDIS_REST_TOKEN", "t")];
    vars.extend_from_slice(extra);
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

/// The first step for a request (no I/O carried out).
fn begin(gw: &mut Gateway<'_>, method: &str, target: &str, headers: &[(&str, &str)]) -> Step {
    let req = Req::new(gw, method, target, headers);
    let values: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
    gw.begin(&Request { method: &req.method, url: &req.url, headers: &values }, NOW)
}

/// The bucket keys a request is checked against (empty: decided or forwarded without Redis).
fn keys(gw: &mut Gateway<'_>, method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<String> {
    let mut all = vec![("x-user-id", "alice"), ("cf-connecting-ip", "203.0.113.9")];
    all.extend_from_slice(headers);
    let step = begin(gw, method, target, &all);
    assert!(matches!(step, Step::Fetch(_) | Step::Forward { .. }), "{method} {target}: {step:?}");
    keys_of(&step)
}

fn token(claims: serde_json::Value) -> String {
    let mut map = json!({ "exp": NOW as i64 / 1000 + 600 }).as_object().unwrap().clone();
    map.extend(claims.as_object().unwrap().clone());
    Hs256.token(&Header::empty(), &Claims::new(map), &Hs256Key::new(SECRET)).unwrap()
}

/// Issue 10, item 3: with only `/users/:id/orders` in the policy, `/users/7%2Fx/orders` (user "7/x"
/// to an origin that splits before decoding) and `/users/7/orders;v=1` (Tomcat, Jetty and Spring
/// strip path parameters) matched no rule and were forwarded unlimited.
#[test]
fn a_rule_counts_every_spelling_an_origin_may_route_to_it() {
    let c = config(&[("RATE_LIMIT_POLICY", ORDERS)]);
    let mut gw = Gateway::new(&c);
    let orders = vec!["rate:{alice}:/users/:id/orders#orders-per-user".to_string()];
    assert_eq!(keys(&mut gw, "GET", "/users/7/orders", &[]), orders);
    for spelling in [
        "/users/7%2Fx/orders",
        "/users/7%2fx/orders",
        "/users/7%5Cx/orders",
        "/users/7/orders;v=1",
        "/users/7;x/orders",
        "/users/;x/orders",
        "/users/7/x/..;/orders",
        "/users\\7\\orders",
        "/users/7/orders/",
        "/users/7/orders%3Bv",
        "/users/7%2F..%2F8/orders",
        "//users/7/./orders?x=1",
        // Spring and Tomcat cut the literal `;v` before decoding and keep `%3B` as data: user `.;x`.
        // Found by the fuzz target `request` after issue 10 (the views cut only decoded parameters).
        "/users/.%3Bx/orders;v",
    ] {
        assert_eq!(keys(&mut gw, "GET", spelling, &[]), orders, "{spelling} escaped the rule");
    }
    assert!(keys(&mut gw, "GET", "/users/7/8/orders", &[]).is_empty(), "a genuinely other path has no rule");
}

/// Issue 10, item 3: without a policy, a path parameter minted a bucket per value.
#[test]
fn path_parameters_never_mint_a_bucket() {
    let c = config(&[]);
    let mut gw = Gateway::new(&c);
    for target in ["/api/x;jsessionid=1", "/api/x;jsessionid=2", "/api/x", "/api;v=2/x"] {
        assert_eq!(keys(&mut gw, "GET", target, &[]), ["rate:{alice}:/api/x"], "{target}");
    }
}

/// Issue 10, item 4: only `X-HTTP-Method-Override` was counted; these let a POST run an unlimited
/// DELETE on origins that honour them.
#[test]
fn every_method_override_a_common_framework_honours_is_counted() {
    let c = config(&[("RATE_LIMIT_POLICY", ORDERS)]);
    let mut gw = Gateway::new(&c);
    let deletes = vec!["rate:{alice}:/users/:id#deletes".to_string()];
    assert!(keys(&mut gw, "POST", "/users/7", &[]).is_empty(), "a plain POST has no rule");
    for (target, headers) in [
        ("/users/7", vec![("x-http-method-override", "DELETE")]),
        ("/users/7", vec![("x-http-method", "DELETE")]),
        ("/users/7", vec![("x-method-override", "delete")]),
        ("/users/7", vec![("x-http-method-override", "PATCH, DELETE")]),
        ("/users/7?_method=DELETE", vec![]),
        ("/users/7?x=1&_method=delete", vec![]),
        ("/users/7?_method=%44ELETE", vec![]),
        ("/users/7", vec![("content-type", "application/x-www-form-urlencoded")]),
        ("/users/7", vec![("content-type", "multipart/form-data; boundary=x")]),
        ("/users/7", vec![("content-type", "Application/X-WWW-Form-Urlencoded;charset=utf-8")]),
    ] {
        assert_eq!(keys(&mut gw, "POST", target, &headers), deletes, "POST {target} {headers:?}");
    }
    assert!(keys(&mut gw, "POST", "/users/7", &[("content-type", "application/json")]).is_empty());
    assert_eq!(keys(&mut gw, "HEAD", "/users/7/orders", &[]).len(), 1, "HEAD counts under GET rules");
    assert!(keys(&mut gw, "DELETE", "/users/7/orders", &[]).is_empty(), "a GET rule does not count DELETE");
}

#[test]
fn a_verified_token_outranks_the_user_header_which_outranks_the_ip() {
    let c = config(&[("JWT_SECRET", SECRET)]);
    let mut gw = Gateway::new(&c);
    let bearer = format!("Bearer {}", token(json!({"sub": "alice"})));
    let with = |gw: &mut Gateway<'_>, headers: &[(&str, &str)]| {
        let mut all = vec![("cf-connecting-ip", "203.0.113.9")];
        all.extend_from_slice(headers);
        keys_of(&begin(gw, "GET", "/api/x", &all))
    };
    assert_eq!(with(&mut gw, &[("authorization", &bearer), ("x-user-id", "mallory")]), ["rate:{alice}:/api/x"]);
    assert_eq!(with(&mut gw, &[("x-user-id", "mallory")]), ["rate:{mallory}:/api/x"]);
    assert_eq!(with(&mut gw, &[("x-user-id", "   ")]), ["rate:{@ip/203.0.113.9}:/api/x"]);
    assert_eq!(with(&mut gw, &[]), ["rate:{@ip/203.0.113.9}:/api/x"]);
    // A present but invalid token is refused; it never falls back to the header.
    let forged = format!("Bearer {}x", token(json!({"sub": "alice"})));
    let pending = gw.pending();
    let step = begin(&mut gw, "GET", "/api/x", &[("authorization", &forged), ("x-user-id", "mallory")]);
    assert_eq!(status(&step), 401);
    assert_eq!(header(&step, "www-authenticate").map(|v| v.contains("invalid_token")), Some(true));
    assert_eq!(gw.pending(), pending, "refused without asking Redis");
}

#[test]
fn jwt_required_refuses_every_request_without_a_valid_token() {
    let c = config(&[("JWT_SECRET", SECRET), ("JWT_MODE", "required")]);
    let mut gw = Gateway::new(&c);
    for headers in [vec![], vec![("x-user-id", "alice")], vec![("authorization", "Basic YWxpY2U6cHc=")]] {
        let step = begin(&mut gw, "GET", "/api/x", &headers);
        assert_eq!(status(&step), 401, "{headers:?}");
        assert_eq!(header(&step, "www-authenticate"), Some("Bearer"), "no token: a bare challenge (RFC 6750)");
        assert_eq!(body_json(&step)["type"], "urn:edge-ratelimit:problem:invalid-token");
    }
    let bearer = format!("Bearer {}", token(json!({"sub": "bob"})));
    assert_eq!(keys_of(&begin(&mut gw, "GET", "/api/x", &[("authorization", &bearer)])), ["rate:{bob}:/api/x"]);
}

#[test]
fn an_asymmetric_token_is_checked_by_the_executor_then_planned() {
    let jwks = std::fs::read_to_string("tests/keys/jwks.json").unwrap();
    let c = config(&[("JWT_JWKS", &jwks), ("RATE_LIMIT_CAPACITY", "1")]);
    let mut gw = Gateway::new(&c);
    let rest = Rest::new();
    let jwk: jwt_compact::jwk::JsonWebKey<'_> =
        serde_json::from_str(&std::fs::read_to_string("tests/keys/ed-1.private.jwk.json").unwrap()).unwrap();
    let key = <jwt_compact::alg::Ed25519 as jwt_compact::Algorithm>::SigningKey::try_from(&jwk).unwrap();
    let claims = Claims::new(json!({"sub": "erin", "exp": NOW as i64 / 1000 + 600}));
    let token = jwt_compact::alg::Ed25519.token(&Header::empty().with_key_id("ed-1"), &claims, &key).unwrap();
    let bearer = format!("Bearer {token}");
    let first = begin(&mut gw, "GET", "/api/e", &[("authorization", &bearer), ("x-user-id", "mallory")]);
    let Step::Verify { ticket, check } = first else { panic!("{first:?}") };
    assert_eq!((check.alg, check.kid.as_str()), ("EdDSA", "ed-1"));
    // A "no" from WebCrypto is a 401; a "yes" plans the request as the token's subject.
    let no = gw.resume(ticket, Reply::Signature(Some(false)), NOW);
    assert_eq!(status(&no), 401);
    let req = Req::new(&gw, "GET", "/api/e", &[("authorization", &bearer), ("x-user-id", "mallory")]);
    assert_eq!(status(&run(&mut gw, &rest, &req, NOW)), 200);
    assert_eq!(rest.redis(&["EXISTS", "rate:{erin}:/api/e"]), json!(1));
    // Remembered: the next request asks WebCrypto nothing, and is limited as erin.
    assert!(matches!(begin(&mut gw, "GET", "/api/e", &[("authorization", &bearer)]), Step::Fetch(_)));
    assert_eq!(status(&run(&mut gw, &rest, &req, NOW)), 429);
}

const LISTS: &str = r#"{"allow":{"users":["ops-bot","both"],"ips":["10.0.0.0/8"]},
    "deny":{"users":["banned","both"],"ips":["192.0.2.0/24"]},
    "rules":[{"name":"all","route":"/*","limits":[{"name":"all","capacity":5,"refill":"5/min"}]}]}"#;

#[test]
fn the_deny_list_outranks_the_allow_list_and_neither_asks_redis() {
    let c = config(&[("RATE_LIMIT_POLICY", LISTS), ("JWT_SECRET", SECRET)]);
    let mut gw = Gateway::new(&c);
    let ask = |gw: &mut Gateway<'_>, user: &str, ip: &str| {
        begin(gw, "GET", "/x", &[("x-user-id", user), ("cf-connecting-ip", ip)])
    };
    for (user, ip) in
        [("both", "203.0.113.9"), ("banned", "10.1.2.3"), ("ops-bot", "192.0.2.7"), ("anyone", "192.0.2.7")]
    {
        let step = ask(&mut gw, user, ip);
        assert_eq!(status(&step), 403, "{user} from {ip}");
        assert_eq!(body_json(&step)["type"], "urn:edge-ratelimit:problem:denied");
    }
    for (user, ip) in [("ops-bot", "203.0.113.9"), ("anyone", "10.9.9.9")] {
        let step = ask(&mut gw, user, ip);
        assert!(matches!(&step, Step::Forward { headers, .. } if headers.is_empty()), "{user} from {ip}: {step:?}");
    }
    assert!(matches!(ask(&mut gw, "anyone", "203.0.113.9"), Step::Fetch(_)), "neither list: limited");
    // The lists see the verified caller, not the header beside its token.
    let banned = format!("Bearer {}", token(json!({"sub": "banned"})));
    let step = begin(&mut gw, "GET", "/x", &[("authorization", &banned), ("x-user-id", "ops-bot")]);
    assert_eq!(status(&step), 403);
    let ok = format!("Bearer {}", token(json!({"sub": "fine"})));
    let step = begin(&mut gw, "GET", "/x", &[("authorization", &ok), ("x-user-id", "banned")]);
    assert!(matches!(step, Step::Fetch(_)));
    assert_eq!(gw.pending(), 2, "only the two limited requests asked Redis");
}

#[test]
fn every_matching_rule_applies_tiers_choose_numbers_and_shadow_limits_never_block() {
    let policy = r#"{"tiers":["free","pro"],"default_tier":"free","rules":[
        {"name":"a","route":"/p/*","limits":[{"name":"a","capacity":5,"refill":"5/min","tiers":{"pro":{"capacity":50}}}]},
        {"name":"b","route":"/p/:x","limits":[{"name":"b","by":"global","capacity":1,"refill":"1/h"}]},
        {"name":"trial","route":"/p/*","shadow":true,"limits":[{"name":"trial","capacity":1,"refill":"1/h"}]}]}"#;
    let c = config(&[("RATE_LIMIT_POLICY", policy), ("JWT_SECRET", SECRET)]);
    let mut gw = Gateway::new(&c);
    let rest = Rest::new();
    assert_eq!(
        keys(&mut gw, "GET", "/p/1", &[]),
        ["rate:{alice}:/p/%2A#a", "rate:{@global}:/p/:x#b", "rate:{alice}:/p/%2A#trial"]
    );
    let pro = format!("Bearer {}", token(json!({"sub": "pam", "tier": "pro"})));
    let req = Req::new(&gw, "GET", "/p/1", &[("authorization", &pro)]);
    let first = run(&mut gw, &rest, &req, NOW);
    assert_eq!(status(&first), 200);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some("\"a\";q=50;w=600, \"b\";q=1;w=3600"),
        "pro numbers; shadow unadvertised"
    );
    // The shadow limit is empty now and the global one too: the global one denies, the shadow one only marks.
    let other = Req::new(&gw, "GET", "/p/2/3", &[("x-user-id", "sam")]);
    run(&mut gw, &rest, &other, NOW);
    let shadowed = run(&mut gw, &rest, &other, NOW);
    assert_eq!(status(&shadowed), 200, "a shadow limit never blocks");
    assert_eq!(header(&shadowed, "x-ratelimit-status"), Some("shadow; limit=\"trial\""));
    let denied = run(&mut gw, &rest, &req, NOW);
    assert_eq!(status(&denied), 429);
    assert_eq!(header(&denied, "ratelimit"), Some("\"b\";r=0;t=3600"), "the limit that denied is the one reported");
    assert_eq!(
        rest.redis(&["HGET", "rate:{pam}:/p/%2A#a", "tokens"]),
        json!("49"),
        "all or nothing: the denied request took nothing from the rule that had room"
    );
}

/// The fail mode and every answer's status, headers and problem type, from one script reply each.
#[test]
fn each_outcome_becomes_its_status_and_headers() {
    let answer = |extra: &[(&str, &str)], reply: Reply<'_>| {
        let c = config(extra);
        let mut gw = Gateway::new(&c);
        let Step::Fetch(f) = begin(&mut gw, "GET", "/api/o", &[("x-user-id", "olly")]) else { panic!() };
        let step = gw.resume(f.ticket, reply, NOW);
        (status(&step), step)
    };
    let ok = Reply::Http { status: 200, body: r#"{"result":[1,0,4,0,12000,5,60,0,1700000000000]}"# };
    let (code, step) = answer(&[], ok);
    assert_eq!(code, 200);
    assert!(matches!(&step, Step::Forward { url: None, .. }), "no ORIGIN_URL: the request's own URL");
    assert_eq!(header(&step, "ratelimit"), Some("\"default\";r=4;t=12"));
    assert_eq!(header(&step, "retry-after"), None);

    // Denied, with a millisecond left: Retry-After is still at least one second.
    let (code, step) = answer(&[], Reply::Http { status: 200, body: r#"{"result":[0,1,0,1,0,5,60,0,1700000000000]}"# });
    assert_eq!((code, header(&step, "retry-after")), (429, Some("1")));
    assert_eq!(body_json(&step)["type"], "urn:edge-ratelimit:problem:rate-limited");
    assert_eq!(header(&step, "content-type"), Some("application/problem+json"));
    let (_, step) =
        answer(&[], Reply::Http { status: 200, body: r#"{"result":[0,1,0,11001,59000,5,60,0,1700000000000]}"# });
    assert_eq!(header(&step, "retry-after"), Some("12"));

    for (reply, reason) in [
        (Reply::Timeout, "timeout"),
        (Reply::Unreachable, "unreachable"),
        (Reply::Http { status: 401, body: "" }, "unauthorized"),
        (Reply::Http { status: 429, body: "" }, "throttled"),
        (Reply::Http { status: 502, body: "" }, "server-error"),
        (Reply::Http { status: 308, body: "" }, "redirected"),
        (Reply::Http { status: 200, body: "{" }, "malformed-reply"),
        // Numbers beyond what the call asked (issue 23): more left than the capacity, a denial with
        // nothing to wait for, a lease nobody asked for, a reset beyond the window.
        (Reply::Http { status: 200, body: r#"{"result":[1,0,6,0,0,5,60,0,1700000000000]}"# }, "malformed-reply"),
        (Reply::Http { status: 200, body: r#"{"result":[0,1,0,0,0,5,60,0,1700000000000]}"# }, "malformed-reply"),
        (Reply::Http { status: 200, body: r#"{"result":[1,0,4,0,0,5,60,4,1700000000000]}"# }, "malformed-reply"),
        (Reply::Http { status: 200, body: r#"{"result":[1,0,4,0,90000,5,60,0,1700000000000]}"# }, "malformed-reply"),
        (Reply::Http { status: 400, body: r#"{"error":"OOM"}"# }, "redis-error"),
    ] {
        let (code, open) = answer(&[], reply);
        assert_eq!(code, 200, "fail open forwards ({reason})");
        assert_eq!(header(&open, "x-ratelimit-status"), Some(format!("degraded; reason={reason}").as_str()));
        assert_eq!(header(&open, "ratelimit"), None);
        let (code, closed) = answer(&[("FAIL_MODE", "closed")], reply);
        assert_eq!(code, 503, "fail closed answers 503 ({reason})");
        assert_eq!(header(&closed, "retry-after"), Some("1"));
        assert_eq!(header(&closed, "x-ratelimit-status"), Some(format!("unavailable; reason={reason}").as_str()));
        assert_eq!(body_json(&closed)["type"], "urn:edge-ratelimit:problem:limiter-unavailable");
    }
}

#[test]
fn fail_open_is_bounded_by_the_local_bucket_and_says_so() {
    let c = config(&[("RATE_LIMIT_CAPACITY", "2"), ("RATE_LIMIT_REFILL", "1/min")]);
    let mut gw = Gateway::new(&c);
    let down = |gw: &mut Gateway<'_>| {
        let Step::Fetch(f) = begin(gw, "GET", "/api/d", &[("x-user-id", "dora")]) else { panic!() };
        gw.resume(f.ticket, Reply::Unreachable, NOW)
    };
    assert_eq!(status(&down(&mut gw)), 200);
    assert_eq!(status(&down(&mut gw)), 200);
    let third = down(&mut gw);
    assert_eq!(status(&third), 429, "an outage is not unlimited");
    assert_eq!(header(&third, "x-ratelimit-status"), Some("degraded; reason=unreachable"));
    assert_eq!(header(&third, "retry-after"), Some("60"), "one token at 1/min");
}

#[test]
fn a_cached_denial_is_answered_in_one_step_with_nothing_pending() {
    let c = config(&[("RATE_LIMIT_CAPACITY", "1")]);
    let mut gw = Gateway::new(&c);
    let Step::Fetch(f) = begin(&mut gw, "GET", "/api/h", &[("x-user-id", "hot")]) else { panic!() };
    let denied = gw.resume(
        f.ticket,
        Reply::Http { status: 200, body: r#"{"result":[0,1,0,11000,60000,1,60,0,1700000000000]}"# },
        NOW,
    );
    assert_eq!(status(&denied), 429);
    // After its first response, an isolate reads which overrides exist (off the response path).
    let Step::Respond { report: Some(read), .. } = &denied else { panic!("the overrides read: {denied:?}") };
    assert!(read.pipeline && read.body.contains("ratelimit:overrides:version"), "{}", read.body);
    let index = r#"[{"result":"3"},{"result":[]}]"#;
    assert!(matches!(gw.resume(read.ticket, Reply::Http { status: 200, body: index }, NOW), Step::Done));
    let cached = begin(&mut gw, "GET", "/api/./h/", &[("x-user-id", "hot")]);
    assert_eq!(status(&cached), 429, "another spelling of the same bucket");
    assert_eq!(header(&cached, "retry-after"), Some("11"));
    assert_eq!(gw.pending(), 0);
    assert!(matches!(begin(&mut gw, "GET", "/api/h", &[("x-user-id", "cold")]), Step::Fetch(_)), "per caller");
}

#[test]
fn unidentified_and_undecodable_callers_are_refused_without_redis() {
    let c = config(&[]);
    let mut gw = Gateway::new(&c);
    for headers in [vec![], vec![("cf-connecting-ip", "not-an-ip")], vec![("x-user-id", "alice\u{FFFD}")]] {
        let step = begin(&mut gw, "GET", "/x", &headers);
        assert_eq!(status(&step), 400, "{headers:?}");
        assert_eq!(body_json(&step)["type"], "urn:edge-ratelimit:problem:unidentified-caller");
    }
    assert_eq!(gw.pending(), 0);
}

#[test]
fn a_misconfigured_isolate_answers_500_naming_the_variable_and_nothing_else() {
    let mut isolate = edge_ratelimit::Isolate::from_env(|n| match n {
        "UPSTASH_REDIS_REST_URL" => Some("rediss://default:hunter2@eu1.upstash.io:6379".into()),
        "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
        _ => None,
    });
    assert!(isolate.header_names().is_empty());
    let step = isolate.begin(&Request { method: "GET", url: "https://gw/x", headers: &[] }, NOW);
    let Step::Respond { response, note, .. } = &step else { panic!("{step:?}") };
    assert_eq!(response.status, 500);
    assert!(response.text().contains("UPSTASH_REDIS_REST_URL") && !response.text().contains("hunter2"));
    assert!(note.as_deref().is_some_and(|n| n.contains("UPSTASH_REDIS_REST_URL") && !n.contains("hunter2")));
}
