//! The Lua script the limiter runs (token buckets, sliding and fixed windows, in-flight slots), embedded at build time with the SHA1 of
//! both of its variants (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/script_shas.rs"));

/// `lua/ratelimit.lua` without its comments (see `build.rs`): its shebang asks Upstash for per-key locking.
pub const SCRIPT_FLAGGED: &str = include_str!(concat!(env!("OUT_DIR"), "/ratelimit.lua"));
/// The same script without the shebang, for servers that reject the flag (vanilla Redis 7): the same
/// bytes from the end of the first line on, so the first line is empty and line numbers stay.
pub const SCRIPT_PLAIN: &str = SCRIPT_FLAGGED.split_at(SHEBANG.len()).1;
const SHEBANG: &str = "#!lua flags=allow-key-locking";

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
            Variant::Flagged => SCRIPT_FLAGGED,
            Variant::Plain => SCRIPT_PLAIN,
        }
    }

    pub fn sha(self) -> &'static str {
        match self {
            Variant::Flagged => SCRIPT_FLAGGED_SHA,
            Variant::Plain => SCRIPT_PLAIN_SHA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_variant_is_the_flagged_script_without_its_shebang_line() {
        assert!(SCRIPT_FLAGGED.starts_with("#!lua flags=allow-key-locking\n"));
        assert_eq!(SCRIPT_PLAIN, &SCRIPT_FLAGGED["#!lua flags=allow-key-locking".len()..]);
        assert_eq!(SCRIPT_FLAGGED.lines().count(), SCRIPT_PLAIN.lines().count());
    }

    #[test]
    fn digests_are_forty_hex_digits_and_differ() {
        for sha in [SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN_SHA] {
            assert_eq!(sha.len(), 40);
            assert!(sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN_SHA);
    }
}
