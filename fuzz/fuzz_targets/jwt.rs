//! Any bearer token is verified or refused with a reason, or (for a JWKS key) handed to the executor
//! with the key it names; never a panic, and never accepted without the configured secret's signature,
//! nor ever handed out for a key the token's algorithm does not fit.
#![no_main]

use edge_ratelimit::{JwtConfig, JwtSettings, Verification};
use libfuzzer_sys::fuzz_target;

const JWKS: &str = include_str!("../../tests/keys/jwks.json");

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let config = JwtConfig::new(JwtSettings {
        mode: Some("required"),
        secret: Some("fuzzing-secret-that-is-at-least-32-bytes"),
        jwks: Some(JWKS),
        ..JwtSettings::default()
    })
    .expect("valid settings");
    match config.verify(&token, 1_800_000_000) {
        // Only a token the fuzzer could not forge would get here; report it.
        Verification::Verified(v) => panic!("accepted a token without knowing the secret: {v:?} from {token:?}"),
        Verification::Signature(check) => {
            assert!(["RS256", "ES256", "EdDSA"].contains(&check.alg), "{check:?}");
            assert!(token.starts_with(&check.data), "the signed data is the token's own");
            assert!(!check.signature.is_empty());
            // Without WebCrypto's yes, nothing is accepted.
            assert!(config.complete(&token, 1_800_000_000, false).is_err());
        }
        Verification::Refused(_) => {}
    }
});
