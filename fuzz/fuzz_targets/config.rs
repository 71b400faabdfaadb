//! Any environment either builds a configuration that keeps its documented
//! bounds, or is rejected naming a variable; never a panic.
#![no_main]

use std::collections::HashMap;

use edge_ratelimit::{Config, VARIABLES};
use libfuzzer_sys::fuzz_target;

/// Every variable the gateway reads (`BENCH_FLOOR` is benchmark-only), and one it does not.
const NAMES: [&str; VARIABLES.len()] = {
    let mut names = VARIABLES;
    names[VARIABLES.len() - 1] = "UNRELATED";
    names
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut vars: HashMap<&str, String> =
        [("UPSTASH_REDIS_REST_URL", "https://x.upstash.io".to_string()), ("UPSTASH_REDIS_REST_TOKEN", "t".to_string())]
            .into_iter()
            .collect();
    for (i, value) in text.split('\n').enumerate() {
        let name = NAMES[value.len().wrapping_add(i) % NAMES.len()];
        vars.insert(name, value.to_string());
    }
    match Config::from_env(|name| vars.get(name).cloned()) {
        Ok(c) => {
            assert!(c.limit.window_seconds() <= 100 * 365 * 86_400, "a full refill within 100 years");
            assert!(c.limit.capacity() >= 1 && c.limit.capacity() <= 1_000_000_000);
            assert!(c.limit.ttl_seconds() >= c.limit.window_seconds());
            assert!(c.limit.refill().tokens_per_second().is_finite() && c.limit.refill().tokens_per_second() > 0.0);
            assert!((1..=30_000).contains(&c.redis_timeout_ms));
            assert!((1..=128).contains(&c.ipv6_prefix));
            assert!(c.redis_url.starts_with("http"));
        }
        Err(e) => assert!(NAMES.contains(&e.variable), "{e}"),
    }
});
