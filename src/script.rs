//! The Lua script the limiter runs, embedded at build time with the SHA1 of
//! both of its variants (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/script_shas.rs"));

/// `lua/token_bucket.lua` as written: its shebang asks Upstash for per-key locking.
pub const TOKEN_BUCKET_FLAGGED: &str = include_str!("../lua/token_bucket.lua");
/// The same script without the shebang, for servers that reject the flag (vanilla Redis 7).
pub const TOKEN_BUCKET_PLAIN: &str = include_str!(concat!(env!("OUT_DIR"), "/token_bucket.plain.lua"));

/// Which variant of the script an isolate sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// With `#!lua flags=allow-key-locking` (Upstash runs it without its global lock).
    Flagged,
    /// Without the shebang, after a server said it does not know the flag.
    Plain,
}

impl Variant {
    pub fn text(self) -> &'static str {
        match self {
            Variant::Flagged => TOKEN_BUCKET_FLAGGED,
            Variant::Plain => TOKEN_BUCKET_PLAIN,
        }
    }

    pub fn sha(self) -> &'static str {
        match self {
            Variant::Flagged => TOKEN_BUCKET_FLAGGED_SHA,
            Variant::Plain => TOKEN_BUCKET_PLAIN_SHA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_variant_is_the_flagged_script_without_its_shebang_line() {
        assert!(TOKEN_BUCKET_FLAGGED.starts_with("#!lua flags=allow-key-locking\n"));
        assert_eq!(TOKEN_BUCKET_PLAIN, &TOKEN_BUCKET_FLAGGED["#!lua flags=allow-key-locking".len()..]);
        assert_eq!(TOKEN_BUCKET_FLAGGED.lines().count(), TOKEN_BUCKET_PLAIN.lines().count());
    }

    #[test]
    fn digests_are_forty_hex_digits_and_differ() {
        for sha in [TOKEN_BUCKET_FLAGGED_SHA, TOKEN_BUCKET_PLAIN_SHA] {
            assert_eq!(sha.len(), 40);
            assert!(sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(TOKEN_BUCKET_FLAGGED_SHA, TOKEN_BUCKET_PLAIN_SHA);
    }
}
