//! Any bearer token is verified or refused with a reason; never a panic, and
//! never accepted without the configured secret's signature.
#![no_main]

use edge_ratelimit::{JwtConfig, JwtSettings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let config = JwtConfig::new(JwtSettings {
        mode: Some("required"),
        secret: Some("fuzzing-secret-that-is-at-least-32-bytes"),
        ..JwtSettings::default()
    })
    .expect("valid settings");
    if let Ok(v) = config.verify(&token, 1_800_000_000) {
        // Only a token the fuzzer could not forge would get here; report it.
        panic!("accepted a token without knowing the secret: {v:?} from {token:?}");
    }
});
