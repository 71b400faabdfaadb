//! Path normalisation: every spelling of one path maps to one canonical form,
//! so no spelling mints a fresh bucket.
//!
//! The canonical form is built from the path's bytes after one round of
//! percent-decoding: `\` counts as `/` (some origins treat it so), empty, `.`
//! and `..` segments are resolved (never above the root), a trailing slash is
//! dropped, and each segment is re-encoded with one fixed rule: ASCII letters,
//! digits and `-._~!$&'()+,;=:@` stay, every other byte becomes `%XX` with
//! upper-case hex. Merging spellings the origin might tell apart only ever
//! shares a bucket, which is safe; splitting spellings would be a bypass.

/// The canonical form of the path in `target` (anything from `?` or `#` on is ignored).
pub fn normalize(target: &str) -> String {
    normalize_with(target, false)
}

/// As [`normalize`], optionally folding ASCII letters to lower case (for origins whose routes are
/// case-insensitive).
pub fn normalize_with(target: &str, fold_case: bool) -> String {
    let raw = target.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(raw.as_bytes());

    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/' || b == b'\\') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }

    let mut out = String::with_capacity(decoded.len() + 1);
    if segments.is_empty() {
        out.push('/');
    }
    for segment in segments {
        out.push('/');
        for &b in segment {
            let b = if fold_case { b.to_ascii_lowercase() } else { b };
            if b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@".contains(&b) {
                out.push(b as char);
            } else {
                push_percent(&mut out, b);
            }
        }
    }
    out
}

/// The path-and-query part of an absolute URL (`https://host/a?b` → `/a?b`), without any
/// fragment; `/` when the URL has no path.
pub fn path_and_query(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let without_fragment = after_scheme.split('#').next().unwrap_or("");
    match without_fragment.find(['/', '?']) {
        Some(i) if without_fragment.as_bytes()[i] == b'/' => &without_fragment[i..],
        _ => "/",
    }
}

/// One round of percent-decoding; a `%` not followed by two hex digits stays as it is.
pub(crate) fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex_value(input[i + 1]), hex_value(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `%XX` (upper-case hex) for `b`.
pub(crate) fn push_percent(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_one_path_is_one_path() {
        for spelling in [
            "/a/x",
            "/a/x/",
            "//a//x",
            "/a/./x",
            "/a/%78",
            "/a/b/../x",
            "/a/x?q=1",
            "/a/x#frag",
            "/a/x/?",
            "/%61/x",
            "/a\\x",
            "/a/%2e/x",
            "/a/b/%2E%2E/x",
            "a/x",
            "/a/x/.",
            "/a/c/d/../../x",
        ] {
            assert_eq!(normalize(spelling), "/a/x", "{spelling}");
        }
    }

    #[test]
    fn path_and_query_of_a_url() {
        assert_eq!(path_and_query("https://api.example.com/a/b?x=1#f"), "/a/b?x=1");
        assert_eq!(path_and_query("http://127.0.0.1:8787"), "/");
        assert_eq!(path_and_query("http://127.0.0.1:8787?x"), "/");
        assert_eq!(path_and_query("http://h//a"), "//a");
    }

    #[test]
    fn root_and_empty() {
        for spelling in ["", "/", "//", "/.", "/..", "/../..", "?x", "/a/.."] {
            assert_eq!(normalize(spelling), "/", "{spelling}");
        }
    }

    #[test]
    fn dot_dot_never_climbs_above_root() {
        assert_eq!(normalize("/../../etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn reserved_and_unsafe_bytes_are_encoded_one_way() {
        assert_eq!(normalize("/a b"), "/a%20b");
        assert_eq!(normalize("/a%20b"), "/a%20b");
        assert_eq!(normalize("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(normalize("/café"), "/caf%C3%A9");
        assert_eq!(normalize("/a*"), "/a%2A");
        assert_eq!(normalize("/a%2a"), "/a%2A");
        assert_eq!(normalize("/a[1]"), "/a%5B1%5D");
        assert_eq!(normalize("/users/:id@x"), "/users/:id@x");
    }

    #[test]
    fn encoded_slash_is_a_separator() {
        assert_eq!(normalize("/a%2Fx"), "/a/x");
        assert_eq!(normalize("/a%5cx"), "/a/x");
    }

    #[test]
    fn double_encoding_is_decoded_once() {
        assert_eq!(normalize("/a%252Fx"), "/a%252Fx");
    }

    #[test]
    fn broken_escapes_are_kept_as_literal_percent() {
        assert_eq!(normalize("/a%"), "/a%25");
        assert_eq!(normalize("/a%4"), "/a%254");
        assert_eq!(normalize("/a%zz"), "/a%25zz");
        assert_eq!(normalize("/a%00b"), "/a%00b");
    }

    #[test]
    fn case_folding_is_optional() {
        assert_eq!(normalize("/API/Orders"), "/API/Orders");
        assert_eq!(normalize_with("/API/%4Frders", true), "/api/orders");
    }

    #[test]
    fn output_is_a_fixed_point() {
        for s in ["/a b/../c%2F%252F/./é/", "/x/%ZZ/%", "\\\\a\\b"] {
            let once = normalize(s);
            assert_eq!(normalize(&once), once, "{s}");
        }
    }
}
