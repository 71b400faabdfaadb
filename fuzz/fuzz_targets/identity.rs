//! Any user-id and CF-Connecting-IP header values identify a caller or are
//! rejected; a user id is never blank, and IPv6 callers are masked.
#![no_main]

use edge_ratelimit::{bucket_key, identify, Caller};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let prefix = data.first().copied().unwrap_or(64) % 129;
    let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
    let (user, ip) = text.split_once('\u{0}').unwrap_or(("", &text));
    for user in [Some(user), None] {
        if let Ok(caller) = identify(user, Some(ip), prefix) {
            match &caller {
                Caller::User(id) => assert!(!id.is_empty() && id.trim() == id),
                Caller::Ip { addr: std::net::IpAddr::V6(v6), prefix: p } => {
                    let mask = if *p == 0 { 0 } else { u128::MAX << (128 - u32::from(*p)) };
                    assert_eq!(u128::from(*v6) & !mask, 0, "{v6}/{p} is not masked");
                }
                Caller::Ip { .. } => {}
            }
            assert!(bucket_key(&caller, "/").starts_with("rate:"));
        }
    }
});
