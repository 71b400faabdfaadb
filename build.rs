//! Computes, at build time, the plain variant of each Lua script and the SHA1
//! of both variants, so EVALSHA needs no hashing at run time. `tests/lua.rs`
//! proves each digest equals Redis's `SCRIPT LOAD` answer.

use std::{env, fs, path::Path};

fn main() {
    let out_dir = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let flagged = fs::read_to_string("lua/ratelimit.lua").expect("lua/ratelimit.lua is readable");
    let plain = strip_shebang(&flagged);
    fs::write(Path::new(&out_dir).join("ratelimit.plain.lua"), &plain).expect("OUT_DIR is writable");
    let code = format!(
        "pub const SCRIPT_FLAGGED_SHA: &str = \"{}\";\npub const SCRIPT_PLAIN_SHA: &str = \"{}\";\n",
        sha1_smol::Sha1::from(flagged.as_bytes()).digest(),
        sha1_smol::Sha1::from(plain.as_bytes()).digest(),
    );
    fs::write(Path::new(&out_dir).join("script_shas.rs"), code).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed=lua/ratelimit.lua");
}

/// The script without its `#!lua ...` first line, so Redis runs it as a plain
/// (flag-less) script. The line becomes an empty one so that line numbers in
/// Redis error messages stay the same.
fn strip_shebang(script: &str) -> String {
    match script.strip_prefix("#!") {
        Some(rest) => rest.find('\n').map_or_else(String::new, |end| rest[end..].to_string()),
        None => script.to_string(),
    }
}
