//! The whole request path in the pure core: which limits a request is checked against, whatever
//! its spelling, method override or identity headers.

use edge_ratelimit::{plan, Config, Plan, RequestFacts};

const ORDERS: &str = r#"{"rules":[
    {"name":"orders","methods":["GET"],"route":"/users/:id/orders",
     "limits":[{"name":"orders-per-user","capacity":5,"refill":"5/min"}]},
    {"name":"delete-user","methods":["DELETE"],"route":"/users/:id",
     "limits":[{"name":"deletes","capacity":1,"refill":"1/h"}]}
]}"#;

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"), ("UPSTASH_REDIS_REST_TOKEN", "t")];
    vars.extend_from_slice(extra);
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

/// The bucket keys a request is checked against (empty: forwarded without limits).
fn keys(config: &Config, method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<String> {
    let header = |name: &str| {
        let mut all = vec![("x-user-id", "alice"), ("cf-connecting-ip", "203.0.113.9")];
        all.extend_from_slice(headers);
        all.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    };
    match plan(config, &RequestFacts { method, target, header: &header, now_ms: 1.8e12 }) {
        Plan::Limit(l) => l.checks.into_iter().map(|c| c.key).collect(),
        Plan::Unlimited => vec![],
        other => panic!("{method} {target}: {other:?}"),
    }
}

/// Issue 10, item 3: with only `/users/:id/orders` in the policy, `/users/7%2Fx/orders` (user "7/x"
/// to an origin that splits before decoding) and `/users/7/orders;v=1` (Tomcat, Jetty and Spring
/// strip path parameters) matched no rule and were forwarded unlimited.
#[test]
fn a_rule_counts_every_spelling_an_origin_may_route_to_it() {
    let c = config(&[("RATE_LIMIT_POLICY", ORDERS)]);
    let orders = vec!["rate:alice:/users/:id/orders#orders-per-user".to_string()];
    assert_eq!(keys(&c, "GET", "/users/7/orders", &[]), orders);
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
    ] {
        assert_eq!(keys(&c, "GET", spelling, &[]), orders, "{spelling} escaped the rule");
    }
    assert!(keys(&c, "GET", "/users/7/8/orders", &[]).is_empty(), "a genuinely other path has no rule");
}

/// Issue 10, item 3: without a policy, a path parameter minted a bucket per value.
#[test]
fn path_parameters_never_mint_a_bucket() {
    let c = config(&[]);
    for target in ["/api/x;jsessionid=1", "/api/x;jsessionid=2", "/api/x", "/api;v=2/x"] {
        assert_eq!(keys(&c, "GET", target, &[]), ["rate:alice:/api/x"], "{target}");
    }
}

/// Issue 10, item 4: only `X-HTTP-Method-Override` was counted; these let a POST run an unlimited
/// DELETE on origins that honour them.
#[test]
fn every_method_override_a_common_framework_honours_is_counted() {
    let c = config(&[("RATE_LIMIT_POLICY", ORDERS)]);
    let deletes = vec!["rate:alice:/users/:id#deletes".to_string()];
    assert!(keys(&c, "POST", "/users/7", &[]).is_empty(), "a plain POST has no rule");
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
        assert_eq!(keys(&c, "POST", target, &headers), deletes, "POST {target} {headers:?}");
    }
    assert!(keys(&c, "POST", "/users/7", &[("content-type", "application/json")]).is_empty());
}
