//! A whole request through the gateway's entry (`Gateway::begin`): any method, target and identity or override headers,
//! with a policy (case-sensitive or folded) or without. Never a panic; keys are printable and free of
//! glob characters; no spelling matches fewer limits than its canonical twin, nor than any respelling
//! of that twin an origin reads as the same path (a byte percent-encoded, a path parameter added, `./`,
//! `x/../` or `//` inserted, `\` or `%2F` for `/`); and whenever one of several model origins (Express,
//! Tomcat, Spring, nginx, IIS: each its own way to split, decode and cut path parameters, written here
//! independently of the gateway's code) would route the request to a rule's route, that rule's limits
//! apply.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeSet;

use edge_ratelimit::{normalize_with, Config, Gateway, Request, Step};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"{"tiers":["free"],"rules":[
  {"name":"orders","methods":["GET","POST"],"route":"/users/:id/orders","limits":[{"name":"orders","capacity":5,"refill":"5/min"}]},
  {"name":"user","methods":["DELETE"],"route":"/users/:id","limits":[{"name":"user","capacity":1,"refill":"1/h"}]},
  {"name":"export","route":"/API/export/*","limits":[{"name":"export","capacity":10,"refill":"10/h","cost":5},
     {"name":"per-ip","by":"ip","capacity":100,"refill":"100/min"}]},
  {"name":"item","route":"/a/:x/b/:y","limits":[{"name":"item","by":"header:x-api-key","capacity":3,"refill":"1/s"}]}
]}"#;

thread_local! {
    // Built once per fuzzing thread (a Config is not Sync: its JWT cache is a RefCell).
    static GATEWAYS: RefCell<Vec<Gateway<'static>>> =
        RefCell::new(Box::leak(Box::new(build())).iter().map(Gateway::new).collect());
}

fn build() -> [Config; 3] {
    {
        let make = |policy: bool, fold: bool| {
            Config::from_env(|n| match n {
                "UPSTASH_REDIS_REST_URL" => Some("http://127.0.0.1:1".into()),
                "UPSTASH_REDIS_REST_TOKEN" => Some("t".into()),
                "RATE_LIMIT_POLICY" => policy.then(|| POLICY.to_string()),
                "PATH_CASE_INSENSITIVE" => Some(fold.to_string()),
                _ => None,
            })
            .expect("valid configuration")
        };
        [make(true, false), make(true, true), make(false, false)]
    }
}

/// The bucket keys of the script call `begin` starts with (empty: forwarded without limits); `None`
/// when the request is refused outright (401, 400, 403).
fn keys(gw: &mut Gateway<'static>, method: &str, target: &str, headers: &[(&str, String)]) -> Option<BTreeSet<String>> {
    let values: Vec<Option<&str>> =
        gw.header_names().iter().map(|n| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.as_str())).collect();
    let url = format!("https://gw.test{}{target}", if target.starts_with('/') { "" } else { "/" });
    match gw.begin(&Request { method, url: &url, headers: &values }, 1.8e12) {
        Step::Fetch(f) => {
            let args: Vec<String> = serde_json::from_str(&f.body).expect("a JSON array of strings");
            let n: usize = args[2].parse().unwrap();
            let limits: usize = args[3 + n + 2].parse().unwrap();
            for key in &args[3..3 + limits] {
                assert!(key.starts_with("rate:"), "{key}");
                assert!(key.bytes().all(|b| b > b' ' && b < 0x7f && !b"*?[]".contains(&b)), "{key:?}");
            }
            Some(args[3..3 + limits].iter().cloned().collect())
        }
        Step::Forward { .. } => Some(BTreeSet::new()),
        Step::Respond { response, .. } => {
            assert!([400, 401, 403, 404].contains(&response.status), "{}", response.status);
            None
        }
        other => panic!("{other:?}"),
    }
}

/// The names of the limits a request is checked against (the `#<name>` of a policy's keys).
fn limit_names(keys: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter().filter_map(|k| k.rsplit_once('#').map(|(_, n)| n.to_string())).collect()
}

/// A spelling of canonical `path` that an origin reads as the same path, chosen by `ops`.
fn respell(path: &str, ops: &[u8]) -> String {
    let mut out = String::new();
    let mut ops = ops.iter().copied().cycle();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push_str(match ops.next().unwrap_or(0) % 8 {
                0 => "//",
                1 => "/./",
                2 => "\\",
                3 => "%2F",
                4 => "/zz/../",
                _ => "/",
            });
        }
        for b in decode(segment) {
            let plain = b.is_ascii_alphanumeric() || b"-._~!$&'()+,=:@".contains(&b);
            match ops.next().unwrap_or(0) % 5 {
                _ if !plain => out.push_str(&format!("%{b:02X}")),
                0 => out.push_str(&format!("%{b:02x}")),
                _ => out.push(b as char),
            }
        }
        if !segment.is_empty() && ops.next().unwrap_or(0) % 6 == 0 {
            out.push_str(";v=1");
        }
    }
    out
}

/// One round of percent-decoding (a `%` without two hex digits stays).
fn decode(text: &str) -> Vec<u8> {
    decode_bytes(text.as_bytes())
}

fn decode_bytes(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// How a model origin reads a path: split raw or decoded, `\\` a separator or not, `;params` cut or not.
#[derive(Clone, Copy)]
struct Origin {
    decode_first: bool,
    backslash: bool,
    cut_params: bool,
}

const ORIGINS: [Origin; 5] = [
    Origin { decode_first: false, backslash: false, cut_params: false }, // Express, Go: split, then decode
    Origin { decode_first: false, backslash: false, cut_params: true },  // Tomcat, Jetty: cut raw ;params
    Origin { decode_first: true, backslash: false, cut_params: true },   // Spring: cut, decode, then split
    Origin { decode_first: true, backslash: false, cut_params: false },  // nginx: decode, then split
    Origin { decode_first: true, backslash: true, cut_params: false },   // IIS: `\` is a separator too
];

/// The segments a model origin routes on (dot segments resolved, empty ones dropped).
fn origin_segments(path: &str, o: Origin, fold: bool) -> Vec<Vec<u8>> {
    let sep = |b: &u8| *b == b'/' || (o.backslash && *b == b'\\');
    let cut = |s: &[u8]| -> Vec<u8> {
        if o.cut_params {
            s.split(|&b| b == b';').next().unwrap_or(&[]).to_vec()
        } else {
            s.to_vec()
        }
    };
    let raw: Vec<Vec<u8>> = if o.decode_first {
        // Spring cuts ;params from the raw path before decoding; nginx and IIS keep them.
        let cut_raw: Vec<u8> = path.as_bytes().split(|&b| b == b'/').map(cut).collect::<Vec<_>>().join(&b'/');
        decode_bytes(&cut_raw).split(sep).map(<[u8]>::to_vec).collect()
    } else {
        path.as_bytes().split(sep).map(|s| decode_bytes(&cut(s))).collect()
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in raw {
        let s = if fold { s.to_ascii_lowercase() } else { s };
        match s.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(s),
        }
    }
    out
}

/// Whether `segments` fit `route` (`:x` one segment, a last `*` any number), compared as bytes.
fn route_fits(route: &str, segments: &[Vec<u8>], fold: bool) -> bool {
    let parts: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let mut i = 0;
    for part in &parts {
        if *part == "*" {
            return true;
        }
        let Some(seg) = segments.get(i) else { return false };
        if !part.starts_with(':') {
            let lit = if fold { part.to_ascii_lowercase() } else { part.to_string() };
            if lit.as_bytes() != seg.as_slice() {
                return false;
            }
        }
        i += 1;
    }
    i == segments.len()
}

/// The policy's rules as (methods, route, limit names), read from the document, not from the gateway.
fn rules() -> Vec<(Option<Vec<String>>, String, Vec<String>)> {
    let doc: serde_json::Value = serde_json::from_str(POLICY).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    };
    doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let methods = r.get("methods").map(strings);
            let names =
                r["limits"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_string()).collect();
            (methods, r["route"].as_str().unwrap().to_string(), names)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let text = String::from_utf8_lossy(rest);
    // Fields separated by \x1f: method, target, user id, content type, override header, api key, respelling ops.
    let mut parts = text.split('\x1f');
    let method = parts.next().unwrap_or("GET");
    let target = parts.next().unwrap_or("/");
    let mut headers = vec![("cf-connecting-ip", "203.0.113.9".to_string())];
    for name in ["x-user-id", "content-type", "x-http-method-override", "x-api-key"] {
        if let Some(v) = parts.next().filter(|v| !v.is_empty()) {
            headers.push((name, v.to_string()));
        }
    }
    let ops = parts.next().unwrap_or("").as_bytes().to_vec();
    GATEWAYS
        .with(|gateways| check(&mut gateways.borrow_mut()[usize::from(*selector) % 3], method, target, &headers, &ops));
});

fn check(gw: &mut Gateway<'static>, method: &str, target: &str, headers: &[(&str, String)], ops: &[u8]) {
    let config = gw.config();
    let Some(original) = keys(gw, method, target, headers) else { return };
    if config.policy.is_some() {
        let names = limit_names(&original);
        let fold = config.path_case_insensitive;
        let path = target.split(['?', '#']).next().unwrap_or("");
        for (methods, route, limits) in rules() {
            let method_fits = methods.is_none_or(|m| m.iter().any(|x| *x == method.trim().to_ascii_uppercase()));
            for origin in ORIGINS {
                if method_fits && route_fits(&route, &origin_segments(path, origin, fold), fold) {
                    for l in &limits {
                        assert!(
                            names.contains(l),
                            "{target:?} reaches {route} at an origin, but limit {l} was not applied"
                        );
                    }
                }
            }
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let twin = normalize_with(path, config.path_case_insensitive);
    let twin_keys = keys(gw, method, &twin, headers).expect("the twin is refused as the original is not");
    assert!(twin_keys.is_subset(&original), "{target:?} matches fewer limits than its twin {twin:?}");
    let spelled = respell(&twin, ops);
    let spelled_keys = keys(gw, method, &spelled, headers).expect("the respelling is refused");
    assert!(twin_keys.is_subset(&spelled_keys), "{spelled:?} matches fewer limits than {twin:?}");
}
