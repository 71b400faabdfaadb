//! A few JavaScript helpers, so that reading a request, calling the REST
//! endpoint and building a response each cross the wasm ↔ JS boundary once
//! instead of once per header (the benchmark showed those crossings to be a
//! large share of the Worker's CPU).

use worker::wasm_bindgen::prelude::*;
use worker::worker_sys::web_sys;

#[wasm_bindgen(inline_js = r#"
export function requestFacts(req, names) {
  const h = req.headers;
  let out = req.method + "\n" + req.url;
  if (names !== "") {
    for (const name of names.split("\n")) {
      const v = h.get(name);
      out += v === null ? "\n\u0000" : "\n" + v;
    }
  }
  return out;
}

function headersOf(flat) {
  const headers = new Headers();
  if (flat !== "") {
    const parts = flat.split("\n");
    for (let i = 0; i + 1 < parts.length; i += 2) headers.set(parts[i], parts[i + 1]);
  }
  return headers;
}

export function respond(status, body, flat) {
  return new Response(body, { status, headers: headersOf(flat) });
}

export function respondAsset(status, assets, name, flat) {
  const body = assets && typeof assets[name] === "string" ? assets[name] : "";
  return new Response(body, { status, headers: headersOf(flat) });
}

export function withHeaders(response, flat) {
  if (flat === "") return response;
  // A fetched response's headers are immutable; a new Response over the same body gets a mutable copy.
  const out = new Response(response.body, response);
  const parts = flat.split("\n");
  for (let i = 0; i + 1 < parts.length; i += 2) out.headers.set(parts[i], parts[i + 1]);
  return out;
}

export function forward(request, url, flat, unreachable) {
  return (url === "" ? fetch(request) : fetch(url, request)).then(
    (response) => withHeaders(response, flat),
    (e) => {
      console.error("origin fetch failed:", String(e));
      const headers = "content-type\napplication/problem+json\ncache-control\nno-store" + (flat === "" ? "" : "\n" + flat);
      return new Response(unreachable, { status: 502, headers: headersOf(headers) });
    },
  );
}

// The body as text, reading at most max + 1 bytes: null when it is longer (the rest is never read).
export async function readBody(request, max) {
  if (request.body === null) return "";
  const reader = request.body.getReader();
  const chunks = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > max) {
        reader.cancel().catch(() => {});
        return null;
      }
      chunks.push(value);
    }
  } catch {
    return null;
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

export function waitUntil(ctx, promise) {
  if (ctx && typeof ctx.waitUntil === "function") ctx.waitUntil(promise);
}

export async function restPost(url, authorization, body, timeoutMs) {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { authorization, "content-type": "application/json" },
      body,
      // Never follow a redirect: the body names bucket keys (user ids), and another host's answer is
      // no decision. A 3xx comes back as it is and is classified as a failure.
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
    });
    return [response.status, await response.text()];
  } catch (e) {
    // 0 = the deadline passed, -1 = the endpoint could not be reached.
    return [e && (e.name === "TimeoutError" || e.name === "AbortError") ? 0 : -1, String(e)];
  }
}
"#)]
extern "C" {
    /// `method \n url \n value-of-name-1 \n …` (`\0` for an absent header; names joined by `\n`).
    #[wasm_bindgen(js_name = requestFacts)]
    pub fn request_facts(req: &web_sys::Request, names: &str) -> String;

    /// A response with `flat` headers (`name \n value \n …`).
    pub fn respond(status: u16, body: &str, flat: &str) -> web_sys::Response;

    /// A response whose body is `assets[name]` (the shim's static files), with `flat` headers.
    #[wasm_bindgen(js_name = respondAsset)]
    pub fn respond_asset(status: u16, assets: &JsValue, name: &str, flat: &str) -> web_sys::Response;

    /// `fetch` of the request itself (`url` empty) or of the request sent to `url`, resolving to the
    /// origin's response with `flat` headers added (its body streams through untouched), or to a 502
    /// with the `unreachable` problem body. The Worker returns this promise without awaiting it.
    pub fn forward(request: &web_sys::Request, url: &str, flat: &str, unreachable: &JsValue) -> js_sys::Promise;

    /// POST `body` to the REST endpoint within `timeout_ms`; resolves to `[status, text]`, where
    /// status 0 means the deadline passed and -1 that the endpoint could not be reached.
    #[wasm_bindgen(js_name = restPost)]
    pub fn rest_post(url: &str, authorization: &str, body: &str, timeout_ms: f64) -> js_sys::Promise;

    /// The request's body as text, reading at most `max` + 1 bytes; resolves to `null` when it is longer.
    #[wasm_bindgen(js_name = readBody)]
    pub fn read_body(req: &web_sys::Request, max: f64) -> js_sys::Promise;

    /// `ctx.waitUntil(promise)`: the runtime keeps the isolate alive until it settles.
    #[wasm_bindgen(js_name = waitUntil)]
    pub fn wait_until(ctx: &JsValue, promise: &js_sys::Promise);
}

/// `name \n value \n …` for [`respond`] and [`forward`].
pub fn flat(headers: &[(&'static str, String)]) -> String {
    let mut out = String::with_capacity(headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum());
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(name);
        out.push('\n');
        out.push_str(value);
    }
    out
}
