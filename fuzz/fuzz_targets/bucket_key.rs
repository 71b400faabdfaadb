//! A key names exactly one (caller, path): the caller part, between braces (the key's Redis Cluster
//! hash tag), decodes back to the user id (unless hashed), and the path follows the `}:`.
#![no_main]

use edge_ratelimit::{bucket_key, normalize, tag_of, Caller};
use libfuzzer_sys::fuzz_target;

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("escapes are two hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (id, raw_path) = text.split_once('\u{1}').unwrap_or((&text, "/"));
    let path = normalize(raw_path);
    let key = bucket_key(&Caller::User(id.to_string()), &path);
    let rest = key.strip_prefix("rate:{").expect("prefix");
    let (caller, key_path) = rest.split_once("}:").expect("separator");
    assert!(!caller.bytes().any(|b| b <= b' ' || b >= 0x7f || b"*?[]\\{}".contains(&b)), "{key:?}");
    assert_eq!(tag_of(&key), Some(caller), "the caller is the key's hash tag: {key:?}");
    if id.is_empty() {
        assert_eq!(caller, "@empty");
    } else if id.len() > 256 {
        assert!(caller.starts_with("@sha256/") && caller.len() == 8 + 64, "{key:?}");
    } else {
        assert!(!caller.starts_with('@'), "a user id posed as a derived identity: {key:?}");
        assert_eq!(percent_decode(caller), id.as_bytes(), "{key:?} does not decode to {id:?}");
    }
    if path.len() <= 1024 {
        assert_eq!(key_path, path);
    }
    assert!(key.len() <= 6 + 3 * 256 + 2 + 1024);
});
