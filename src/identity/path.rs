//! Path normalisation: every spelling of one path maps to one canonical form,
//! so no spelling mints a fresh bucket or escapes a rule.
//!
//! The canonical form is built from the path's bytes after one round of
//! percent-decoding: `\` counts as `/` (some origins treat it so), path
//! parameters are cut from every segment (`/a;v=1/b` is `/a/b`, as Tomcat,
//! Jetty and Spring read it; their `..;` is `..`), empty, `.` and `..`
//! segments are resolved (never above the root), a trailing slash is
//! dropped, and each segment is re-encoded with one fixed rule: ASCII letters,
//! digits and `-._~!$&'()+,;=:@` stay, every other byte becomes `%XX` with
//! upper-case hex. Merging spellings the origin might tell apart only ever
//! shares a bucket, which is safe; splitting spellings would be a bypass.
//!
//! Rules are matched against every [`views`] of a path, not only the canonical
//! one: an origin may take `%2F` for data (`/users/7%2Fx/orders` is user
//! `7/x`'s orders to Express), or keep `;v=1` in the last segment, and a rule
//! must count every request an origin may route to it.

/// How a path is cut into segments.
#[derive(Clone, Copy)]
struct Split {
    /// `%2F` (and `%5C` with `backslash`) separate segments, as if decoded before routing.
    encoded_separators: bool,
    /// `\` separates segments.
    backslash: bool,
    /// Which `;` starts a path parameter (everything from it to the end of its segment is not part
    /// of the path).
    parameters: Parameters,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Parameters {
    /// None: `;` is data.
    Kept,
    /// A `;` in the decoded segment, `%3B` too (the canonical form).
    CutDecoded,
    /// Only a literal `;` in the raw path, cut before decoding: `%3B` is data (Spring, Tomcat).
    CutRaw,
}

const CANONICAL: Split = Split { encoded_separators: true, backslash: true, parameters: Parameters::CutDecoded };

/// The canonical form of the path in `target` (anything from `?` or `#` on is ignored).
pub fn normalize(target: &str) -> String {
    normalize_with(target, false)
}

/// As [`normalize`], optionally folding ASCII letters to lower case (for origins whose routes are
/// case-insensitive).
pub fn normalize_with(target: &str, fold_case: bool) -> String {
    render(raw_path(target), CANONICAL, fold_case)
}

/// Every distinct way an origin may segment the path in `target`, each written like a canonical path
/// (a separator that is data in that view is written `%2F` or `%5C` inside its segment, path
/// parameters kept or cut): the canonical form first. A path without `%2F`, `%5C`, `%3B`, `\` or
/// `;` has one view.
pub fn views(target: &str, fold_case: bool) -> Vec<String> {
    views_of(target, &normalize_with(target, fold_case), fold_case)
}

/// [`views`] for a target whose canonical path is already known.
pub(crate) fn views_of(target: &str, canonical: &str, fold_case: bool) -> Vec<String> {
    let raw = raw_path(target);
    let canonical = canonical.to_string();
    let bytes = raw.as_bytes();
    let ambiguous = bytes.iter().any(|&b| b == b'\\' || b == b';')
        || bytes.windows(3).any(|w| {
            w[0] == b'%' && matches!((w[1], w[2].to_ascii_uppercase()), (b'2', b'F') | (b'5', b'C') | (b'3', b'B'))
        });
    let mut out = vec![canonical];
    if !ambiguous {
        return out;
    }
    for encoded_separators in [true, false] {
        for backslash in [true, false] {
            for parameters in [Parameters::CutDecoded, Parameters::CutRaw, Parameters::Kept] {
                let view = render(raw, Split { encoded_separators, backslash, parameters }, fold_case);
                if !out.contains(&view) {
                    out.push(view);
                }
            }
        }
    }
    out
}

fn raw_path(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or("")
}

fn render(raw: &str, split: Split, fold_case: bool) -> String {
    let separator = |b: u8| b == b'/' || (split.backslash && b == b'\\');
    let raw = if split.parameters == Parameters::CutRaw {
        // Each raw segment up to its first literal `;`, before anything is decoded.
        let mut cut = String::with_capacity(raw.len());
        let mut in_parameter = false;
        for c in raw.chars() {
            match c {
                '/' => in_parameter = false,
                '\\' if split.backslash => in_parameter = false,
                ';' => in_parameter = true,
                _ => {}
            }
            if !in_parameter {
                cut.push(c);
            }
        }
        std::borrow::Cow::Owned(cut)
    } else {
        std::borrow::Cow::Borrowed(raw)
    };
    let raw: &str = &raw;
    let decoded;
    let pieces: Vec<std::borrow::Cow<'_, [u8]>> = if split.encoded_separators {
        decoded = percent_decode(raw.as_bytes());
        decoded.split(|&b| separator(b)).map(std::borrow::Cow::Borrowed).collect()
    } else {
        raw.as_bytes().split(|&b| separator(b)).map(|s| std::borrow::Cow::Owned(percent_decode(s))).collect()
    };
    let mut segments: Vec<&[u8]> = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        let mut segment: &[u8] = piece;
        if split.parameters == Parameters::CutDecoded {
            if let Some(at) = segment.iter().position(|&b| b == b';') {
                segment = &segment[..at];
            }
        }
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }

    let mut out = String::with_capacity(raw.len() + 1);
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
pub(crate) fn path_and_query(url: &str) -> &str {
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

    /// Issue 10, item 3: `/api/x;jsessionid=N` minted a bucket per value; Tomcat, Jetty and Spring strip
    /// path parameters (and `..;` is their `..`).
    #[test]
    fn path_parameters_are_cut_from_every_segment() {
        for (spelling, canonical) in [
            ("/api/x;jsessionid=1", "/api/x"),
            ("/api/x;jsessionid=2?q", "/api/x"),
            ("/a;v=1/b;c", "/a/b"),
            ("/a/%3Bx", "/a"),
            ("/a;/b", "/a/b"),
            ("/a/b/..;/c", "/a/c"),
            ("/a/.;x/c", "/a/c"),
            ("/;x", "/"),
        ] {
            assert_eq!(normalize(spelling), canonical, "{spelling}");
        }
    }

    /// Every way an origin may split a path (encoded separators as data or not, path parameters cut or
    /// kept) is a view; the canonical one always comes first.
    #[test]
    fn views_cover_every_segmentation_an_origin_may_use() {
        let v = views("/users/7%2Fx/orders", false);
        assert_eq!(v[0], "/users/7/x/orders");
        assert!(v.contains(&"/users/7%2Fx/orders".to_string()), "{v:?}");
        let v = views("/users/7/orders;v=1", false);
        assert_eq!(v[0], "/users/7/orders");
        assert!(v.contains(&"/users/7/orders;v=1".to_string()), "{v:?}");
        let v = views("/users/;x/orders", false);
        assert!(v.contains(&"/users/;x/orders".to_string()), "{v:?}");
        // Spring cuts a literal `;v` before decoding and keeps an encoded `%3B` as data: `/a/1/b/.;x` here
        // is segment `.;x` (found by the fuzz target `request`).
        let v = views("/a/1/b/.%3bx/;T", false);
        assert!(v.contains(&"/a/1/b/.;x".to_string()), "{v:?}");
        let v = views("/a;p\\b;q/c", false);
        assert!(v.contains(&"/a/b/c".to_string()) && v.contains(&"/a/c".to_string()), "{v:?}");
        let v = views("/a\\b%5Cc", false);
        assert_eq!(v[0], "/a/b/c");
        assert!(v.contains(&"/a%5Cb%5Cc".to_string()) && v.contains(&"/a/b%5Cc".to_string()), "{v:?}");
        assert_eq!(views("/plain/path", false), ["/plain/path"], "one view when no spelling is ambiguous");
        assert_eq!(views("/A/%42", true), ["/a/b"]);
    }

    #[test]
    fn output_is_a_fixed_point() {
        for s in ["/a b/../c%2F%252F/./é/", "/x/%ZZ/%", "\\\\a\\b"] {
            let once = normalize(s);
            assert_eq!(normalize(&once), once, "{s}");
        }
    }
}
