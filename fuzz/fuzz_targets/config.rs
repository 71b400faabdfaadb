//! Any environment either builds a configuration that keeps its documented
//! bounds, or is rejected naming a variable; never a panic.
#![no_main]

use std::collections::HashMap;

use edge_ratelimit::Config;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 19] = [
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "RATE_LIMIT_CAPACITY",
    "RATE_LIMIT_REFILL",
    "RATE_LIMIT_TTL_SECONDS",
    "USER_ID_HEADER",
    "ORIGIN_URL",
    "FAIL_MODE",
    "REDIS_TIMEOUT_MS",
    "RATE_LIMIT_CLOCK",
    "PATH_CASE_INSENSITIVE",
    "IPV6_PREFIX",
    "JWT_MODE",
    "JWT_SECRET",
    "JWT_JWKS",
    "JWT_LEEWAY_SECONDS",
    "JWT_REQUIRE_EXP",
    "RATE_LIMIT_POLICY",
    "UNRELATED",
];

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
