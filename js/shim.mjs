// Worker entry: hands every request to the Rust `fetch` (src/edge) compiled by wasm-bindgen, with the
// static admin assets (status page, OpenAPI document) that scripts/build-worker writes to assets.mjs.
// A Rust panic aborts as a WebAssembly trap; the instance is then reset so the next request runs
// on a clean one, and this request gets a problem body without internal detail.
import * as wasm from "./index.js";
import { assets } from "./assets.mjs";

const CRASHED = JSON.stringify({
  type: "urn:edge-ratelimit:problem:internal",
  title: "Internal Server Error",
  status: 500,
  detail: "The gateway failed on this request; it has been reset.",
});

export default {
  async fetch(request, env, ctx) {
    try {
      return await wasm.fetch(request, env, ctx, assets);
    } catch (e) {
      console.error("edge-ratelimit crashed:", e);
      if (e instanceof WebAssembly.RuntimeError) wasm.__wbg_reset_state?.();
      return new Response(CRASHED, {
        status: 500,
        headers: { "content-type": "application/problem+json", "cache-control": "no-store" },
      });
    }
  },
};
