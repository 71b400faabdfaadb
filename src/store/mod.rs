//! Redis: the Lua script and its SHA1s, the Upstash REST protocol, what the script said per limit, and
//! the script's arithmetic in Rust (the reference the Lua must agree with bit for bit).

pub mod bucket;
pub(crate) mod decision;
pub(crate) mod place;
pub(crate) mod script;
pub(crate) mod upstash;
