//! Any policy document is parsed or rejected with a message; an accepted one
//! keeps its bounds and applies to any path without panicking.
#![no_main]

use edge_ratelimit::{Caller, Facts, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (doc, path) = text.split_once('\u{1}').unwrap_or((&text, "/a/b"));
    let Ok(policy) = Policy::parse(doc, 60, false) else { return };
    let caller = Caller::User("u".into());
    let (overrides, paths) = (["POST".to_string()], edge_ratelimit::views(path, false));
    let facts = Facts {
        method: "GET",
        method_overrides: &overrides,
        paths: &paths,
        caller: &caller,
        client: None,
        tier: Some("t"),
    };
    for a in policy.applied(&facts, |_| Some("v".into())) {
        assert!(a.cost >= 1 && a.cost <= a.limit.capacity());
        assert!(a.key.starts_with("rate:"));
        assert!(!a.key.contains(['*', '?', '[']), "{}", a.key);
    }
});
