//! The executor's Rust half: the wasm exports (wasm32 only) and the wire text they speak with
//! `js/shim.mjs` (steps and replies as strings; tested natively).

#[cfg(target_arch = "wasm32")]
mod exports;
pub(crate) mod wire;
