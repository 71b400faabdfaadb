//! Computes, at build time, the embedded form of the Lua script (without
//! comments), its plain variant and the SHA1 of both variants, so EVALSHA needs no hashing at run time. `tests/lua.rs`
//! proves each digest equals Redis's `SCRIPT LOAD` answer.

use std::{env, fs, path::Path};

fn main() {
    let out_dir = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let source = fs::read_to_string("lua/ratelimit.lua").expect("lua/ratelimit.lua is readable");
    // Embedded (and sent with EVAL) without its comments; comment lines become empty lines so that
    // line numbers in Redis error messages still point into lua/ratelimit.lua.
    let flagged = strip_comments(&source);
    let plain = strip_shebang(&flagged);
    fs::write(Path::new(&out_dir).join("ratelimit.lua"), &flagged).expect("OUT_DIR is writable");
    let code = format!(
        "pub const SCRIPT_FLAGGED_SHA: &str = \"{}\";\npub const SCRIPT_PLAIN_SHA: &str = \"{}\";\n",
        sha1_smol::Sha1::from(flagged.as_bytes()).digest(),
        sha1_smol::Sha1::from(plain.as_bytes()).digest(),
    );
    fs::write(Path::new(&out_dir).join("script_shas.rs"), code).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed=lua/ratelimit.lua");
}

/// Drops `--` comments (whole lines and trailing ones) and trailing blanks; the script has no `--`
/// inside a string literal (`tests/lua.rs` runs the result).
fn strip_comments(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    for (i, line) in script.lines().enumerate() {
        let code = if i == 0 { line } else { line.split_once("--").map_or(line, |(code, _)| code) };
        out.push_str(code.trim_end());
        out.push('\n');
    }
    out
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
