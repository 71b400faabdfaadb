//! Issue 14 through the gateway's entry against a real Redis: the caller quota endpoint (reads what the
//! next request's fields show, consumes nothing, only the caller's own buckets, limited itself) and
//! the candidate policy (same call, keys of its own, never deciding, its differences reported).

mod common;

use common::{body_json, header, run, status, Req, Rest};
use edge_ratelimit::{Config, Gateway, Step};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde_json::{json, Value};

const NOW: f64 = 1.8e12;
const ADMIN: &str = "an-admin-token-of-some-length";
const SECRET: &str = "a-quota-test-secret-of-32-bytes-or-more";
const QUOTA: &str = "/.well-known/ratelimit";
const POLICY: &str = r#"{"rules":[
    {"name":"export","methods":["POST"],"route":"/export/*",
     "limits":[{"name":"exports","capacity":5,"refill":"5/h"}]},
    {"name":"search","route":"/search","limits":[{"name":"searches","by":"ip","capacity":3,"refill":"3/h"}]}]}"#;
const CANDIDATE: &str = r#"{"rules":[
    {"name":"export","methods":["POST"],"route":"/export/*",
     "limits":[{"name":"exports","capacity":2,"refill":"2/h"},{"name":"exports-burst","capacity":1,"refill":"1/h"}]}]}"#;

fn config(rest: &Rest, extra: &[(&str, &str)]) -> Config {
    let url = format!("http://127.0.0.1:{}", rest.redis.port);
    let mut vars: Vec<(&str, String)> = vec![
        ("UPSTASH_REDIS_REST_URL", url),
        ("UPSTASH_REDIS_REST_TOKEN", "t".into()),
        ("RATE_LIMIT_POLICY", POLICY.into()),
        ("QUOTA_PATH", QUOTA.into()),
        ("JWT_SECRET", SECRET.into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap()
}

fn token(sub: &str) -> String {
    let claims = json!({ "sub": sub, "exp": NOW as i64 / 1000 + 600 });
    let claims = Claims::new(claims.as_object().unwrap().clone());
    format!("Bearer {}", Hs256.token(&Header::empty(), &claims, &Hs256Key::new(SECRET)).unwrap())
}

fn send(gw: &mut Gateway<'_>, rest: &Rest, method: &str, target: &str, headers: &[(&str, &str)]) -> Step {
    let mut all = vec![("cf-connecting-ip", "203.0.113.9")];
    all.extend_from_slice(headers);
    run(gw, rest, &Req::new(gw, method, target, &all), NOW)
}

fn quota(gw: &mut Gateway<'_>, rest: &Rest, query: &str, headers: &[(&str, &str)]) -> (u16, Value, Option<String>) {
    let step = send(gw, rest, "GET", &format!("{QUOTA}{query}"), headers);
    (status(&step), body_json(&step), header(&step, "ratelimit").map(str::to_string))
}

#[test]
fn a_quota_read_shows_what_the_next_request_will_and_consumes_nothing() {
    let rest = Rest::new();
    let c = config(&rest, &[]);
    let mut gw = Gateway::new(&c);
    let alice = [("x-user-id", "alice")];
    for _ in 0..50 {
        let (code, body, field) = quota(&mut gw, &rest, "?method=POST&path=/export/a.csv", &alice);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["allowed_now"], true);
        let l = &body["limits"][0];
        assert_eq!(
            (l["name"].clone(), l["remaining"].clone(), l["retry_after_ms"].clone()),
            (json!("exports"), json!(5), json!(0))
        );
        assert_eq!((l["capacity"].clone(), l["window_s"].clone()), (json!(5), json!(3600)));
        assert_eq!(field.as_deref(), Some("\"exports\";r=5;t=0"));
        assert_eq!(body["limits"].as_array().unwrap().len(), 1, "the endpoint's own bucket is not listed");
    }
    for i in 0..5 {
        let step = send(&mut gw, &rest, "POST", "/export/b", &alice);
        assert_eq!(status(&step), 200, "request {i}: fifty reads took nothing");
        let (_, body, field) = quota(&mut gw, &rest, "?method=POST&path=/export/b", &alice);
        let r = header(&step, "ratelimit").unwrap();
        assert_eq!(
            r.split(";t=").next(),
            field.as_deref().and_then(|f| f.split(";t=").next()),
            "the read shows what the request showed"
        );
        assert_eq!(body["limits"][0]["remaining"], 4 - i);
    }
    assert_eq!(status(&send(&mut gw, &rest, "POST", "/export/b", &alice)), 429);
    let (_, body, _) = quota(&mut gw, &rest, "?method=POST&path=/export/b", &alice);
    assert_eq!(body["allowed_now"], false);
    assert!(body["limits"][0]["retry_after_ms"].as_u64().unwrap() >= 1);
}

#[test]
fn a_quota_read_never_reveals_another_callers_bucket() {
    let rest = Rest::new();
    let c = config(&rest, &[]);
    let mut gw = Gateway::new(&c);
    for _ in 0..5 {
        send(&mut gw, &rest, "POST", "/export/x", &[("x-user-id", "bob")]);
    }
    let bob = quota(&mut gw, &rest, "?method=POST&path=/export/x", &[("x-user-id", "bob")]).1;
    assert_eq!(bob["limits"][0]["remaining"], 0);
    // A verified token names the caller; a forged user-id header beside it changes nothing.
    let alice = token("alice");
    let forged =
        quota(&mut gw, &rest, "?method=POST&path=/export/x", &[("authorization", &alice), ("x-user-id", "bob")]).1;
    assert_eq!(forged["limits"][0]["remaining"], 5, "alice's bucket, not bob's: {forged}");
    // Counted by IP: another client IP reads its own bucket.
    for _ in 0..3 {
        send(&mut gw, &rest, "GET", "/search", &[]);
    }
    let same = quota(&mut gw, &rest, "?path=/search", &[]).1;
    assert_eq!(same["limits"][0]["remaining"], 0);
    let elsewhere = Req::new(&gw, "GET", &format!("{QUOTA}?path=/search"), &[("cf-connecting-ip", "198.51.100.4")]);
    let step = run(&mut gw, &rest, &elsewhere, NOW);
    assert_eq!(body_json(&step)["limits"][0]["remaining"], 3);
    // No parameter names a caller: asking for someone else is not a thing.
    let (code, body, _) = quota(&mut gw, &rest, "?path=/search&user=bob", &[]);
    assert_eq!((code, body["field"].clone()), (400, json!("query")));
    // An invalid token is refused as for a request.
    assert_eq!(quota(&mut gw, &rest, "?path=/search", &[("authorization", "Bearer x.y.z")]).0, 401);
}

#[test]
fn the_quota_endpoint_is_limited_itself_and_strict_about_its_query() {
    let rest = Rest::new();
    let c = config(&rest, &[]);
    let mut gw = Gateway::new(&c);
    let me = [("x-user-id", "carol")];
    for _ in 0..60 {
        assert_eq!(quota(&mut gw, &rest, "?path=/search", &me).0, 200);
    }
    let step = send(&mut gw, &rest, "GET", &format!("{QUOTA}?path=/search"), &me);
    assert_eq!(status(&step), 429, "60 reads per caller");
    assert!(header(&step, "ratelimit").is_some_and(|f| f.starts_with("\"quota\";r=0")), "{step:?}");
    assert!(header(&step, "retry-after").is_some());
    // Issue 23, item 4: a caller this isolate knows to be out of reads costs no REST call (30 refused
    // reads cost 30 calls before); its answer is the same 429.
    let sent = rest.sent.borrow().len();
    for _ in 0..30 {
        let again = send(&mut gw, &rest, "GET", &format!("{QUOTA}?path=/search"), &me);
        assert_eq!((status(&again), header(&again, "ratelimit")), (429, header(&step, "ratelimit")));
    }
    assert_eq!(rest.sent.borrow().len(), sent, "refused reads from the deny cache");
    // Once the deny cache's maximum age (1 s) has passed, a read asks Redis again.
    let req = Req::new(&gw, "GET", &format!("{QUOTA}?path=/search"), &[("cf-connecting-ip", "203.0.113.9"), me[0]]);
    let later = run(&mut gw, &rest, &req, NOW + 1_001.0);
    assert_eq!(rest.sent.borrow().len(), sent + 1, "{later:?}");
    let other = [("x-user-id", "dave")];
    let every = quota(&mut gw, &rest, "", &other).1;
    let names: Vec<&str> = every["limits"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["exports", "searches"], "without a path: every limit of every rule");
    assert_eq!(quota(&mut gw, &rest, "?path=/nothing-here", &other).1, json!({ "allowed_now": true, "limits": [] }));
    assert_eq!(quota(&mut gw, &rest, "?method=POST", &other).1["field"], "path");
    assert_eq!(quota(&mut gw, &rest, "?path=export", &other).1["field"], "path");
    let post = send(&mut gw, &rest, "POST", QUOTA, &other);
    assert_eq!((status(&post), header(&post, "allow")), (405, Some("GET, HEAD")));
    assert!(
        matches!(send(&mut gw, &rest, "GET", &format!("{QUOTA}/more"), &other), Step::Forward { .. }),
        "only the path itself"
    );
}

#[test]
fn a_candidate_is_decided_in_the_same_call_in_keys_of_its_own_and_never_blocks() {
    let rest = Rest::new();
    let c =
        config(&rest, &[("RATE_LIMIT_POLICY_CANDIDATE", CANDIDATE), ("ADMIN_TOKEN", ADMIN), ("METRICS_FLUSH_MS", "0")]);
    let mut gw = Gateway::new(&c);
    rest.take_sent();
    let statuses: Vec<u16> =
        (0..6).map(|_| status(&send(&mut gw, &rest, "POST", "/export/x", &[("x-user-id", "erin")]))).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "the live policy decides: capacity 5");
    let sent = rest.take_sent();
    assert_eq!(sent.iter().filter(|c| *c == "EVALSHA").count(), 6, "one script call per decision: {sent:?}");
    let keys: Vec<String> = serde_json::from_value(rest.redis(&["KEYS", "rate:*"])).unwrap();
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "rate:@candidate/{erin}:/export/%2A#exports",
            "rate:@candidate/{erin}:/export/%2A#exports-burst",
            "rate:{erin}:/export/%2A#exports",
        ],
        "live and candidate keys are disjoint"
    );
    let auth = format!("Bearer {ADMIN}");
    let report = send(&mut gw, &rest, "GET", "/__ratelimit/candidate", &[("authorization", &auth)]);
    assert_eq!(status(&report), 200, "{report:?}");
    let r = body_json(&report);
    assert_eq!(r["variable"], "RATE_LIMIT_POLICY_CANDIDATE");
    assert!(r["since_ms"].as_u64().is_some_and(|s| s > 0), "{r}");
    let limits = r["limits"].as_array().unwrap();
    // The candidate's burst limit (capacity 1) is the first to run dry: request 2 on would be denied.
    // Its own all-or-nothing: once it denies, the candidate's other limit is not debited either.
    let burst = limits.iter().find(|l| l["name"] == "exports-burst").unwrap();
    assert_eq!((burst["would_deny"].clone(), burst["would_allow"].clone()), (json!(4), json!(0)), "{r}");
    assert_eq!(burst["top_callers"], json!([{ "caller": "erin", "requests": 4 }]));
    assert_eq!(burst["on_adoption"], "starts fresh");
    let exports = limits.iter().find(|l| l["name"] == "exports").unwrap();
    assert_eq!(
        (exports["would_deny"].clone(), exports["on_adoption"].clone()),
        (json!(0), json!("keeps its live bucket"))
    );
    // The status page's data carries the same report.
    let status_json = body_json(&send(&mut gw, &rest, "GET", "/__ratelimit/status.json", &[("authorization", &auth)]));
    assert_eq!(status_json["candidate"]["limits"], r["limits"]);
}

#[test]
fn a_candidate_that_would_deny_more_counts_it_and_one_that_would_allow_counts_that() {
    let rest = Rest::new();
    let generous = r#"{"rules":[{"name":"export","methods":["POST"],"route":"/export/*",
        "limits":[{"name":"exports","capacity":8,"refill":"8/h"}]}]}"#;
    let c = config(
        &rest,
        &[
            ("RATE_LIMIT_POLICY_CANDIDATE", generous),
            ("ADMIN_TOKEN", ADMIN),
            ("METRICS_FLUSH_MS", "0"),
            ("DENY_CACHE_MAX_MS", "0"),
        ],
    );
    let mut gw = Gateway::new(&c);
    let statuses: Vec<u16> =
        (0..9).map(|_| status(&send(&mut gw, &rest, "POST", "/export/x", &[("x-user-id", "fay")]))).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429]);
    let auth = format!("Bearer {ADMIN}");
    let r = body_json(&send(&mut gw, &rest, "GET", "/__ratelimit/candidate", &[("authorization", &auth)]));
    let l = &r["limits"][0];
    assert_eq!(
        (l["would_deny"].clone(), l["would_allow"].clone()),
        (json!(0), json!(3)),
        "requests 6 to 8 the candidate admits; 9 neither: {r}"
    );
}

#[test]
fn a_broken_candidate_is_refused_naming_its_variable_and_the_live_policy_keeps_working() {
    let rest = Rest::new();
    let c = config(&rest, &[("RATE_LIMIT_POLICY_CANDIDATE", r#"{"rules":[{"name":"x"}]}"#), ("ADMIN_TOKEN", ADMIN)]);
    let e = c.candidate.clone().unwrap_err();
    assert_eq!(e.variable, "RATE_LIMIT_POLICY_CANDIDATE");
    let mut gw = Gateway::new(&c);
    let first = send(&mut gw, &rest, "POST", "/export/x", &[("x-user-id", "gus")]);
    assert_eq!(status(&first), 200);
    assert_eq!(header(&first, "ratelimit"), Some("\"exports\";r=4;t=720"));
    let note = match &first {
        Step::Forward { note, .. } => note.clone(),
        other => panic!("{other:?}"),
    };
    let line: Value =
        serde_json::from_str(&note.expect("the isolate says once that the candidate is refused")).unwrap();
    assert_eq!(
        (line["event"].clone(), line["variable"].clone()),
        (json!("misconfigured"), json!("RATE_LIMIT_POLICY_CANDIDATE"))
    );
    let auth = format!("Bearer {ADMIN}");
    let report = send(&mut gw, &rest, "GET", "/__ratelimit/candidate", &[("authorization", &auth)]);
    assert_eq!(status(&report), 422);
    assert_eq!(body_json(&report)["variable"], "RATE_LIMIT_POLICY_CANDIDATE");
    assert!(body_json(&report)["detail"].as_str().unwrap().starts_with("RATE_LIMIT_POLICY_CANDIDATE: "));
}

#[test]
fn a_candidate_is_compared_on_new_routes_by_its_own_headers_and_its_shadow_limits_never_count() {
    let rest = Rest::new();
    let candidate = r#"{"rules":[
        {"name":"beta","route":"/beta/*","limits":[{"name":"beta-per-key","by":"header:x-api-key","capacity":1,"refill":"1/h"},
                                                    {"name":"beta-watch","capacity":1,"refill":"1/h","shadow":true}]}]}"#;
    let c =
        config(&rest, &[("RATE_LIMIT_POLICY_CANDIDATE", candidate), ("ADMIN_TOKEN", ADMIN), ("METRICS_FLUSH_MS", "0")]);
    let mut gw = Gateway::new(&c);
    assert!(gw.header_names().iter().any(|h| h == "x-api-key"), "the candidate's header is read");
    for key in ["k1", "k1", "k2"] {
        let step = send(&mut gw, &rest, "GET", "/beta/x", &[("x-user-id", "hal"), ("x-api-key", key)]);
        assert_eq!(status(&step), 200, "no live rule: forwarded");
        assert_eq!(header(&step, "ratelimit"), None, "and no live fields");
    }
    let keys: Vec<String> = serde_json::from_value(rest.redis(&["KEYS", "rate:*"])).unwrap();
    assert!(keys.iter().any(|k| k.starts_with("rate:@candidate/{@hdr/x-api-key=k1}:")), "{keys:?}");
    let auth = format!("Bearer {ADMIN}");
    let r = body_json(&send(&mut gw, &rest, "GET", "/__ratelimit/candidate", &[("authorization", &auth)]));
    let limit = |name: &str| r["limits"].as_array().unwrap().iter().find(|l| l["name"] == name).unwrap().clone();
    assert_eq!(limit("beta-per-key")["would_deny"], 1, "k1's second request, counted by its own key: {r}");
    assert_eq!(limit("beta-watch")["would_deny"], 0, "a candidate's shadow limit would not have denied: {r}");
    assert_eq!(limit("beta-per-key")["on_adoption"], "starts fresh");
}
