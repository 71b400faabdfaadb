//! Any HTTP status and body from the REST endpoint is classified; a script
//! result is accepted only when it is consistent. Never a panic.
#![no_main]

use edge_ratelimit::{parse_script_reply, Decision, Limit, Refill};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 600;
    let body = String::from_utf8_lossy(&data[2..]);
    let Ok(values) = parse_script_reply(status, &body) else { return };
    let limit = Limit::new(5, Refill::parse("5/min").expect("valid"), 60).expect("valid");
    for n in 1..=2 {
        let limits: Vec<(&str, &Limit, bool)> = (0..n).map(|_| ("default", &limit, false)).collect();
        if let Ok(d) = Decision::from_script(&values, &limits) {
            assert_eq!(d.limits.len(), n);
            assert_eq!(d.allowed, d.denied_by.is_none());
            assert!(d.retry_after_s() >= 1);
            let _ = edge_ratelimit::rate_limit_headers(&d);
        }
    }
});
