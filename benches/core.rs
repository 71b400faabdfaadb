//! Micro-benchmarks of the pure core (divan): per-call time and allocations of what a request does
//! before and after its one Redis round trip. Run: `cargo bench --bench core` (or `bench/run micro`).

use divan::{black_box, AllocProfiler, Bencher};
use edge_ratelimit::{
    bucket_key, decode_request, encode_step, evalsha_body, identify, normalize, parse_script_reply, rate_limit_headers,
    Asked, Config, Decision, Gateway, JwtConfig, JwtSettings, Limit, Policy, Refill, Reply, Request, Step, Variant,
    Verification,
};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

const SECRET: &str = "a-benchmark-secret-that-is-at-least-32-bytes";

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        ("UPSTASH_REDIS_REST_URL".into(), "http://127.0.0.1:8079".into()),
        ("UPSTASH_REDIS_REST_TOKEN".into(), "t".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap()
}

#[divan::bench]
fn identify_user_header() -> edge_ratelimit::Caller {
    identify(black_box(Some("alice")), black_box(Some("203.0.113.7")), 64).unwrap()
}

#[divan::bench]
fn normalize_path() -> String {
    normalize(black_box("/api//v1/./users/%61lice/../bob/orders/?page=2"))
}

#[divan::bench]
fn build_key() -> String {
    bucket_key(black_box(&edge_ratelimit::Caller::User("alice".into())), black_box("/api/v1/users/bob/orders"))
}

#[divan::bench]
fn rule_matching(bencher: Bencher) {
    let doc = std::fs::read_to_string("README.md").unwrap();
    let start = doc.find("```json\n").unwrap() + 8;
    let end = start + doc[start..].find("```").unwrap();
    let policy = Policy::parse(&doc[start..end], 60, false).unwrap();
    let caller = edge_ratelimit::Caller::User("alice".into());
    let paths = ["/users/42/orders".to_string()];
    bencher.bench_local(|| {
        let facts = edge_ratelimit::Facts {
            method: "GET",
            method_overrides: &[],
            paths: black_box(&paths),
            caller: &caller,
            client: None,
            tier: Some("premium"),
        };
        policy.applied(&facts, |_| None).len()
    });
}

#[divan::bench]
fn rest_body() -> String {
    let keys = ["rate:alice:/api/orders".to_string(), "ratelimit:override:caller:alice".to_string()];
    let args: Vec<String> =
        ["", "", "1", "t", "5", "0.08333333333333333", "60", "1", "0", "2"].iter().map(|s| s.to_string()).collect();
    evalsha_body(Variant::Flagged, black_box(&keys), black_box(&args))
}

#[divan::bench]
fn rest_reply_and_headers(bencher: Bencher) {
    let limit = Limit::new(5, Refill::parse("5/min").unwrap(), 60).unwrap();
    bencher.bench_local(|| {
        let values = parse_script_reply(200, black_box(r#"{"result":[1,0,4,0,12000,5,60,0,1800000000000]}"#)).unwrap();
        let d = Decision::from_script(&values, &[Asked::new("default", &limit, false, 1)]).unwrap();
        rate_limit_headers(&d).len()
    });
}

/// A full HS256 check: a fresh configuration per call, so nothing is remembered.
#[divan::bench]
fn hs256_verify(bencher: Bencher) {
    let token = hs256_token();
    bencher
        .with_inputs(|| {
            JwtConfig::new(JwtSettings { mode: Some("required"), secret: Some(SECRET), ..JwtSettings::default() })
                .unwrap()
        })
        .bench_local_values(|jwt| matches!(jwt.verify(black_box(&token), 1_800_000_000), Verification::Verified(_)));
}

fn hs256_token() -> String {
    use jwt_compact::alg::{Hs256, Hs256Key};
    use jwt_compact::{AlgorithmExt, Claims, Header};
    let claims = serde_json::json!({"sub": "alice", "tier": "premium", "exp": 4_102_444_800u64});
    let claims = Claims::new(claims.as_object().unwrap().clone());
    Hs256.token(&Header::empty(), &claims, &Hs256Key::new(SECRET)).unwrap()
}

/// The core's part of an RS256 check (parse, pin the key, hand WebCrypto the signature): a fresh
/// configuration per call, so nothing is remembered. The RSA arithmetic is WebCrypto's, in workerd.
#[divan::bench]
fn rs256_prepare(bencher: Bencher) {
    let (jwks, token) = rs256_fixture();
    bencher
        .with_inputs(|| {
            JwtConfig::new(JwtSettings { mode: Some("required"), jwks: Some(&jwks), ..JwtSettings::default() }).unwrap()
        })
        .bench_local_values(|jwt| matches!(jwt.verify(black_box(&token), 1_800_000_000), Verification::Signature(_)));
}

/// The JWKS and an RS256 token signed with its RSA key (tests/keys).
fn rs256_fixture() -> (String, String) {
    use jwt_compact::alg::{Rsa, RsaPrivateKey};
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{AlgorithmExt, Claims, Header};
    let jwks = std::fs::read_to_string("tests/keys/jwks.json").unwrap();
    let private = std::fs::read_to_string("tests/keys/rsa-1.private.jwk.json").unwrap();
    let jwk: JsonWebKey<'_> = serde_json::from_str(&private).unwrap();
    let key = RsaPrivateKey::try_from(&jwk).unwrap();
    let claims = serde_json::json!({"sub": "alice", "exp": 4_102_444_800u64});
    let claims = Claims::new(claims.as_object().unwrap().clone());
    let token = Rsa::rs256().token(&Header::empty().with_key_id("rsa-1"), &claims, &key).unwrap();
    (jwks, token)
}

/// The same RS256 token again: the isolate remembers tokens it verified.
#[divan::bench]
fn rs256_verify_remembered(bencher: Bencher) {
    let (jwks, token) = rs256_fixture();
    let jwt =
        JwtConfig::new(JwtSettings { mode: Some("required"), jwks: Some(&jwks), ..JwtSettings::default() }).unwrap();
    jwt.complete(&token, 1_800_000_000, true).unwrap();
    bencher.bench_local(|| matches!(jwt.verify(black_box(&token), 1_800_000_000), Verification::Verified(_)));
}

/// Everything the Worker's wasm does for an allowed request: read the facts, plan (identity, path,
/// key), the REST body, the reply, the decision and its headers, both steps written for the executor.
#[divan::bench]
fn whole_request_allowed(bencher: Bencher) {
    let config = config(&[]);
    let mut gw = Gateway::new(&config);
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        let facts = format!("GET\nhttps://api.example.com/api/orders?page=2\nuser-{n}\n203.0.113.7");
        let (method, url, headers) = decode_request(black_box(&facts));
        let step = gw.begin(&Request { method, url, headers: &headers }, 1.8e12);
        let out = encode_step(&step);
        let Step::Fetch(f) = step else { unreachable!() };
        let next = gw.resume(
            f.ticket,
            Reply::Http { status: 200, body: r#"{"result":[1,0,4,0,12000,5,60,0,1800000000000]}"# },
            1.8e12,
        );
        out.len() + encode_step(&next).len()
    });
}

/// A caller the deny cache knows to be empty: one synchronous step, no REST body at all.
#[divan::bench]
fn whole_request_cached_denial(bencher: Bencher) {
    let config = config(&[]);
    let mut gw = Gateway::new(&config);
    let facts = "GET\nhttps://api.example.com/api/orders\nhot\n203.0.113.7";
    let (method, url, headers) = decode_request(facts);
    let Step::Fetch(f) = gw.begin(&Request { method, url, headers: &headers }, 1.8e12) else { unreachable!() };
    gw.resume(
        f.ticket,
        Reply::Http { status: 200, body: r#"{"result":[0,1,0,11000,60000,5,60,0,1800000000000]}"# },
        1.8e12,
    );
    bencher.bench_local(|| {
        let (method, url, headers) = decode_request(black_box(facts));
        let step = gw.begin(&Request { method, url, headers: &headers }, 1.8e12);
        encode_step(&step).len()
    });
}
