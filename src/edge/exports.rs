//! The executor's Rust half: four synchronous exports around this isolate's [`Isolate`], each taking
//! and giving one string (see [`crate::edge::wire`]). `js/shim.mjs` is the other half: it reads the facts,
//! carries out each step (the REST fetch with its deadline, the forward, the Response, WebCrypto,
//! `waitUntil`) and hands the results back. Nothing here decides; nothing here awaits.

#![allow(unreachable_pub)] // (wasm-bindgen exports: public to the executor, not to Rust)

use std::cell::RefCell;

use worker::wasm_bindgen::prelude::*;

use crate::edge::wire::{decode_request, decode_vars, encode_start, encode_step, reply};
use crate::gateway::{Isolate, Request, Step};
use crate::policy::config::VARIABLES;

thread_local! {
    static ISOLATE: RefCell<Option<Isolate>> = const { RefCell::new(None) };
}

/// The variables the configuration reads, `\n`-joined: the executor passes these from `env`.
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
pub fn variables() -> String {
    VARIABLES.join("\n")
}

/// Builds this isolate's gateway from `vars` (`name \0 value \0 …`, the variables that are set), its
/// request ids prefixed by `instance` (random: unique among isolates), and says what the executor needs
/// to know (see [`encode_start`]).
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
pub fn start(vars: &str, instance: &str) -> String {
    let vars = decode_vars(vars);
    let var = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
    let isolate = Isolate::from_env_as(var, instance);
    let text = encode_start(&isolate);
    ISOLATE.with(|cell| *cell.borrow_mut() = Some(isolate));
    text
}

/// The first step for a request (`facts` in the wire form) arriving at `now` (epoch ms).
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
pub fn begin(facts: &str, now: f64) -> String {
    let (method, url, headers) = decode_request(facts);
    let request = Request { method, url, headers: &headers };
    with_isolate(|isolate| isolate.begin(&request, now))
}

/// The next step for `ticket`, with what the last one brought back (see [`reply`]).
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
pub fn resume(ticket: u32, code: i32, text: &str, now: f64) -> String {
    with_isolate(|isolate| isolate.resume(ticket, reply(code, text), now))
}

/// An RPC call (`limit`, `peek`, `reset` with its options as JSON) arriving at `now` (epoch ms): its
/// first step (see [`crate::Gateway::call`]); it goes on with [`resume`].
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
pub fn call(method: &str, args: &str, now: f64) -> String {
    with_isolate(|isolate| isolate.call(method, args, now))
}

fn with_isolate(f: impl FnOnce(&mut Isolate) -> Step) -> String {
    ISOLATE.with(|cell| match cell.borrow_mut().as_mut() {
        Some(isolate) => encode_step(&f(isolate)),
        None => encode_step(&Step::Done), // `start` first: the executor always calls it
    })
}
