//! Every canonical path is printable ASCII, rooted, free of empty, `.` and `..`
//! segments and of glob characters, and a fixed point of the normaliser.
#![no_main]

use edge_ratelimit::{normalize, normalize_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    for fold in [false, true] {
        let once = normalize_with(&input, fold);
        assert!(once.starts_with('/'), "{once:?}");
        assert!(once.bytes().all(|b| b.is_ascii_graphic()), "{once:?}");
        assert!(!once.contains(['*', '?', '[', ']', '\\', '#']), "{once:?}");
        if once != "/" {
            for segment in once[1..].split('/') {
                assert!(!matches!(segment, "" | "." | ".."), "{once:?}");
            }
        }
        assert_eq!(normalize_with(&once, fold), once, "not a fixed point for {input:?}");
    }
    let _ = normalize(&input);
});
