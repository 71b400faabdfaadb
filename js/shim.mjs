// The Worker entry and executor. The Rust core (src/gateway/, through src/edge) decides everything;
// this file reads a request's facts once, carries out each step the core returns — answer, forward,
// a REST call with its deadline, a short wait, a WebCrypto signature check, reading an admin body,
// a metrics report after the response — and hands the results back. Steps and replies are strings
// (src/edge/wire.rs documents the format). A cached denial is one synchronous call into the wasm.
// A Rust panic aborts as a WebAssembly trap; the instance is then reset so the next request runs on
// a clean one, and this request gets a problem body without internal detail.
// The same Worker is an RPC service (`RateLimiter`, below): another Worker bound to it calls
// `env.LIMITER.limit({ key })`, and the core decides it exactly as it decides a request.
// Every log line is one JSON object (src/ops/log.rs names the fields).
import { WorkerEntrypoint } from "cloudflare:workers";
import * as wasm from "./index.js";
import { assets } from "./assets.mjs";

const CRASHED = JSON.stringify({
  type: "urn:edge-ratelimit:problem:internal",
  title: "Internal Server Error",
  status: 500,
  detail: "The gateway failed on this request; it has been reset.",
});

// What the core said once per isolate (src/edge/wire.rs encode_start).
let names = null; // the request headers it reads, in order
let restUrls = []; // one per database (shard), in the order UPSTASH_REDIS_REST_URL lists them
let restAuthorizations = [];
let unreachable = ""; // the 502 step, for a forward whose origin cannot be reached
const keys = new Map(); // WebCrypto keys by kid

function start(env) {
  let vars = "";
  for (const name of wasm.variables().split("\n")) {
    const v = env?.[name];
    if (v === undefined || v === null) continue;
    vars += (vars === "" ? "" : "\0") + name + "\0" + (typeof v === "string" ? v : typeof v === "object" ? JSON.stringify(v) : String(v));
  }
  // Request ids start with this isolate's random id: in-flight slots are shared by every isolate.
  const s = wasm.start(vars, crypto.randomUUID());
  const a = s.indexOf("\0");
  const b = s.indexOf("\0", a + 1);
  const c = s.indexOf("\0", b + 1);
  names = a === 0 ? [] : s.slice(0, a).split("\n");
  restUrls = s.slice(a + 1, b).split("\n");
  restAuthorizations = s.slice(b + 1, c).split("\n");
  unreachable = s.slice(c + 1);
}

// The configuration is read on the isolate's first request, not when the module loads: calling into
// the wasm from the module's top level (with `env` from "cloudflare:workers") made every later request
// cost about 80 µs more CPU in workerd (bench/run: the wasm limit floor at 0.86× the limit Worker
// against 1.03× without), far more than the 3 ms it saves once per isolate.

/** One log line: a JSON object with `event` and `level` first. */
function log(event, level, fields) {
  console.log(JSON.stringify({ event, level, ...fields }));
}

let instance = 0; // moves on when the wasm instance is reset

function reset(e) {
  log("crashed", "error", { reason: String(e) });
  if (e instanceof WebAssembly.RuntimeError) {
    wasm.__wbg_reset_state?.();
    names = null;
    instance++;
  }
}

function crashed(e) {
  reset(e);
  return new Response(CRASHED, { status: 500, headers: { "content-type": "application/problem+json", "cache-control": "no-store" } });
}

/** The RPC entrypoint: `services = [{ binding = "LIMITER", service = "edge-ratelimit", entrypoint = "RateLimiter" }]`. */
export class RateLimiter extends WorkerEntrypoint {
  /** Takes `cost` tokens for `key` (under `rule`'s limits, if given): `{ success, remaining, reset, retryAfter, limit, policy, shadowDenied }`. */
  limit(options) {
    return call("limit", options, this.env, this.ctx);
  }
  /** What `limit` would answer now, consuming nothing. */
  peek(options) {
    return call("peek", options, this.env, this.ctx);
  }
  /** Empties `key`'s buckets (under `rule`): `{ success, deleted }`. */
  reset(options) {
    return call("reset", options, this.env, this.ctx);
  }
}

function call(method, options, env, ctx) {
  let args;
  try {
    args = optionsJson(options) ?? "";
  } catch {
    throw new TypeError(`${method}(options): options must be a plain object such as { key: "user-1" }`);
  }
  try {
    if (names === null) start(env);
    return carry(wasm.call(method, args, Date.now()), null, ctx);
  } catch (e) {
    throw failed(e);
  }
}

/** The options as JSON, with every value JSON would not carry as it is marked `{"\u0000js": what}`
 * (what the core's src/gateway/rpc.rs refuses by name): a Date or a boxed String would become a string,
 * a Map or a class instance an object of other fields, NaN and Infinity null, and a BigInt throws. */
function optionsJson(options) {
  const mark = (what) => ({ "\u0000js": what });
  return JSON.stringify(options, function (key, value) {
    const raw = this[key]; // (as it was, before a toJSON)
    const t = typeof raw;
    if (t === "number") return Number.isFinite(raw) ? raw : mark(String(raw));
    if (t === "bigint") return mark("BigInt");
    if (t === "function" || t === "symbol") return mark(t);
    if (t === "object" && raw !== null && !Array.isArray(raw)) {
      const proto = Object.getPrototypeOf(raw);
      if (proto !== Object.prototype && proto !== null) return mark(raw.constructor?.name || "object");
    }
    return value;
  });
}

/** What an RPC caller gets when the gateway itself failed: no internal detail. */
function failed(e) {
  if (ours.has(e)) return e;
  reset(e);
  const again = e instanceof WebAssembly.RuntimeError ? "; it has been reset" : "";
  return new Error(`edge-ratelimit failed on this call${again}`);
}

const ERRORS = { TypeError, RangeError, Error };
const ours = new WeakSet(); // the errors the core asked to throw (their messages are meant for the caller)

export default {
  fetch(request, env, ctx) {
    try {
      if (names === null) start(env);
      const h = request.headers;
      let facts = request.method + "\n" + request.url;
      for (let i = 0; i < names.length; i++) {
        const v = h.get(names[i]);
        facts += v === null ? "\n\0" : "\n" + v;
      }
      return carry(wasm.begin(facts, Date.now()), request, ctx);
    } catch (e) {
      return crashed(e);
    }
  },
};

/** Carries out a step: a Response, or the promise of one. `piece`: one of several fetches carried out at
 * once (`M`), whose chain may end with `D` (null) while another gives the answer. */
function carry(step, request, ctx, piece = false) {
  const a = step.indexOf("\0");
  const b = step.indexOf("\0", a + 1);
  const f = step.slice(0, a).split("\n");
  switch (f[0]) {
    case "R":
      return respond(f, step.slice(a + 1, b), step.slice(b + 1), ctx);
    case "F":
      return forward(f, step.slice(a + 1, b), request, ctx);
    case "Q":
      return rest(f[2] === "p", step.slice(b + 1), Number(f[3]), Number(f[4] ?? 0)).then(([code, text]) => next(f[1], code, text, request, ctx, piece));
    case "M":
      // A script call spread over several databases or slots: every piece at once; one gives the answer.
      return Promise.all(step.slice(b + 1).split("\u0001").map((s) => carry(s, request, ctx, true))).then((all) => {
        const answer = all.find((r) => r !== null && r !== undefined);
        return answer ?? carry("D\0\0", request, ctx);
      });
    case "W":
      return new Promise((r) => setTimeout(r, Number(f[2]))).then(() => next(f[1], -2, "", request, ctx, piece));
    case "V":
      return verify(f[2], f[3], f[4], step.slice(a + 1, b), step.slice(b + 1)).then((code) => next(f[1], code, "", request, ctx));
    case "B":
      return readBody(request, Number(f[2])).then((text) => next(f[1], text === null ? -7 : -6, text ?? "", request, ctx));
    case "J":
      sideEffects(f[1], f[2], f[3], step.slice(a + 1, b), ctx);
      later(f[4], f[5], ctx);
      return JSON.parse(step.slice(b + 1));
    case "T": {
      if (f[2] !== "") console.log(f[2]);
      const e = new (ERRORS[f[1]] ?? Error)(step.slice(b + 1));
      ours.add(e);
      throw e;
    }
    default:
      if (piece) return null; // (this piece is done; another gives the answer)
      // An RPC call whose state the core no longer has (the instance was reset meanwhile).
      if (request === null) throw new Error("edge-ratelimit lost this call's state; try again");
      return new Response(null, { status: 204 });
  }
}

function next(ticket, code, text, request, ctx, piece = false) {
  try {
    return carry(wasm.resume(Number(ticket), code, text, Date.now()), request, ctx, piece);
  } catch (e) {
    if (request === null) throw failed(e); // an RPC call
    return crashed(e);
  }
}

/** A note for the log, and a metrics report sent after the response. */
function sideEffects(note, ticket, timeout, report, ctx) {
  if (note !== "") console.log(note);
  if (ticket !== "" && ctx && typeof ctx.waitUntil === "function") {
    const born = instance;
    ctx.waitUntil(rest(true, report, Number(timeout)).then(([code, text]) => born === instance && wasm.resume(Number(ticket), code, text, Date.now())).catch(() => {}));
  }
}

/** A wake off the response path: wait, resume the ticket, and carry out what follows (leases given back). */
function later(ticket, ms, ctx) {
  if (ticket === "" || !ctx || typeof ctx.waitUntil !== "function") return;
  const born = instance;
  ctx.waitUntil(new Promise((r) => setTimeout(r, Number(ms))).then(() => background(born, Number(ticket), -2, "")));
}

/** Carries out steps after a response — resume `ticket` (woken, or a watched response delivered), then
 * REST calls and waits — until done; a chain of an instance that was reset meanwhile stops (its tickets
 * mean nothing to the new one). */
async function background(born, ticket, code, text) {
  try {
    if (born !== instance) return;
    await drive(born, wasm.resume(ticket, code, text, Date.now()));
  } catch (e) {
    reset(e);
  }
}

/** Carries out `step` and what follows it off the response path (`M`: every piece at once). */
async function drive(born, step) {
  for (;;) {
    const a = step.indexOf("\0");
    const f = step.slice(0, a).split("\n");
    let code = -2;
    let text = "";
    if (f[0] === "Q") {
      [code, text] = await rest(f[2] === "p", step.slice(step.indexOf("\0", a + 1) + 1), Number(f[3]), Number(f[4] ?? 0));
    } else if (f[0] === "M") {
      const pieces = step.slice(step.indexOf("\0", a + 1) + 1).split("\u0001");
      await Promise.all(pieces.map((s) => drive(born, s)));
      return;
    } else if (f[0] === "W") {
      await new Promise((r) => setTimeout(r, Number(f[2])));
    } else {
      return;
    }
    if (born !== instance) return;
    step = wasm.resume(Number(f[1]), code, text, Date.now());
  }
}

// R: status, asset, note, report ticket, report timeout, wake ticket, wake ms, headers…
function respond(f, report, body, ctx) {
  sideEffects(f[3], f[4], f[5], report, ctx);
  later(f[6], f[7], ctx);
  // Pairs handed to the constructor: one crossing into the runtime instead of one per header.
  const headers = [];
  for (let i = 8; i + 1 < f.length; i += 2) headers.push([f[i], f[i + 1]]);
  const text = f[2] === "" ? body : typeof assets?.[f[2]] === "string" ? assets[f[2]] : "";
  return new Response(text, { status: Number(f[1]), headers });
}

// F: url, note, report ticket, report timeout, wake ticket, wake ms, watch ticket, until the end ("e"),
// headers to report, headers to strip, SSE keys, headers to add…
function forward(f, report, request, ctx) {
  sideEffects(f[2], f[3], f[4], report, ctx);
  later(f[5], f[6], ctx);
  const watch = f[7] === "" ? null : delivery(f, ctx, request?.signal);
  const sent = f[1] === "" ? fetch(request) : fetch(f[1], request);
  return sent.then(
    (response) => {
      if (f.length <= 12 && watch === null) return response;
      // A fetched response's headers are immutable: a copy of them, on a Response over the same body.
      // (Fields copied by hand: `new Response(body, response)` costs about 50 µs more CPU per request in
      // workerd, bench/run measured.)
      const headers = new Headers(response.headers);
      for (let i = 12; i + 1 < f.length; i += 2) headers.set(f[i], f[i + 1]);
      if (watch === null) return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
      return watch.watched(response, headers);
    },
    (e) => {
      // (With the client gone, the runtime aborts the forwarded request too: nothing to log.)
      if (!request?.signal?.aborted) log("origin_unreachable", "error", { status: 502, reason: String(e) });
      watch?.done("0");
      const out = carry(unreachable, request, null);
      for (let i = 12; i + 1 < f.length; i += 2) out.headers.set(f[i], f[i + 1]);
      return out;
    },
  );
}

/** A watched response (src/edge/wire.rs): streamed through as it comes, unbuffered; once delivered (to its
 * end, the client gone, the origin failed) the core hears what was seen — the usage headers asked for,
 * the last few SSE events that mention a usage key — and releases or settles after the response.
 * The client's leaving is heard two ways, since the runtime tells it by one or the other depending on
 * timing (issue 23; workerd issue 6832): the request's `signal` (compatibility flag
 * `enable_request_signal`) and the cancellation of the body handed to the runtime. Either ends the
 * delivery and stops the origin's stream. */
function delivery(f, ctx, signal) {
  const ticket = Number(f[7]);
  const untilEnd = f[8] === "e";
  const names = f[9] === "" ? [] : f[9].split(",");
  const strip = f[10] === "" ? [] : f[10].split(",");
  const keys = f[11] === "" ? [] : f[11].split(",").map((k) => `"${k}"`);
  const born = instance;
  let values = names.map(() => "\u0001");
  let tail = null; // the SSE reader, when usage is read from a stream
  let finish;
  const ended = new Promise((r) => (finish = r));
  if (ticket !== 0 && ctx && typeof ctx.waitUntil === "function") { // (0: only headers to strip)
    ctx.waitUntil(ended.then((complete) => background(born, ticket, -8, complete + "\n" + values.join("\n") + "\0" + (tail?.events.join("\0") ?? ""))));
  }
  let over = false;
  let stop = null; // stops reading the origin's body, once it is being read
  const done = (complete) => {
    if (over) return;
    over = true;
    tail?.flush();
    finish(complete);
  };
  const gone = () => {
    done("0");
    stop?.();
  };
  if (signal?.aborted) gone();
  else signal?.addEventListener("abort", gone, { once: true });
  return {
    done,
    watched(response, headers) {
      try {
        return watchedBody(response, headers);
      } catch (e) {
        done("0"); // (a Response the runtime refuses: the slot is released all the same)
        throw e;
      }
    },
  };
  function watchedBody(response, headers) {
    values = names.map((n) => response.headers.get(n) ?? "\u0001");
    for (const n of strip) headers.delete(n);
    const init = { status: response.status, statusText: response.statusText, headers };
    if (response.body === null || !untilEnd) {
      done("1"); // (a usage header is all there is to read: the body streams as it came)
      return new Response(response.body, init);
    }
    // Chunks pass on as they arrive, through the runtime's own pipe unless an event stream is read on
    // the way (bench/run: a JavaScript pull stream cost about 400 µs of CPU per request more); the
    // pipe's end, or its failure (the client gone, the origin failed), says the response was delivered.
    if (keys.length > 0) return new Response(reading(response.body, (tail = sse(keys))), init);
    const through = typeof IdentityTransformStream === "function" ? new IdentityTransformStream() : new TransformStream();
    const abort = new AbortController();
    stop = () => abort.abort();
    if (over) stop(); // (the client left before the origin answered)
    response.body.pipeTo(through.writable, { signal: abort.signal }).then(() => done("1"), () => done("0"));
    return new Response(through.readable, init);
  }

  /** The origin's body, read for usage on its way: a pull stream (one chunk read per chunk the client
   * takes: unbuffered) whose `cancel` is the runtime telling that the client went away. */
  function reading(body, tail) {
    const reader = body.getReader();
    stop = () => reader.cancel().catch(() => {});
    if (over) stop(); // (the client left before the origin answered)
    return new ReadableStream(
      {
        async pull(c) {
          try {
            const next = await reader.read();
            if (next.done) {
              c.close();
              done("1");
            } else {
              tail.push(next.value);
              c.enqueue(next.value);
            }
          } catch (e) {
            done("0"); // the origin failed (or the client left while a read was pending)
            try {
              c.error(e);
            } catch {} // (already cancelled)
          }
        },
        cancel(reason) {
          done("0"); // the client went away: released and settled now, the origin's stream closed
          return reader.cancel(reason).catch(() => {});
        },
      },
      { highWaterMark: 0 },
    );
  }
}

/** The data of the last few server-sent events that mention one of `keys` (what the core reads the
 * usage from: src/policy/settle.rs), kept while the stream passes through. Lines end at LF, CRLF or CR; each
 * chunk is scanned once. Bounded: a line or an event's data beyond 1 MiB is dropped (to its end), and
 * 4 events are kept. */
function sse(keys) {
  const MAX = 1 << 20;
  const decoder = new TextDecoder();
  const events = [];
  let line = ""; // the current line so far
  let dropping = false; // the current line is too long: skipped to its end
  let cr = false; // the last line ended with CR: an LF right after it ends nothing
  let data = null; // the current event's data
  let tooBig = false; // the current event's data is too long
  const end = () => {
    if (data !== null && !tooBig && keys.some((k) => data.includes(k))) {
      events.push(data);
      if (events.length > 4) events.shift();
    }
    data = null;
    tooBig = false;
  };
  const take = (l) => {
    if (l === "") return end();
    if (!l.startsWith("data") || (l.length > 4 && l[4] !== ":")) return; // another field (or "database")
    let v = l.slice(5);
    if (v.startsWith(" ")) v = v.slice(1);
    data = data === null ? v : data + "\n" + v;
    if (data.length > MAX) {
      data = "";
      tooBig = true;
    }
  };
  const add = (part) => {
    if (dropping || part === "") return;
    line += part;
    if (line.length > MAX) {
      line = "";
      dropping = true;
    }
  };
  const lineEnd = () => {
    if (!dropping) take(line);
    line = "";
    dropping = false;
  };
  const breaks = /[\r\n]/g;
  return {
    events,
    push(chunk) {
      const text = decoder.decode(chunk, { stream: true });
      let from = 0;
      breaks.lastIndex = 0;
      for (let m; (m = breaks.exec(text)) !== null; ) {
        const at = m.index;
        if (cr && at === from && text[at] === "\n") {
          cr = false;
          from = at + 1;
          continue;
        }
        add(text.slice(from, at));
        lineEnd();
        cr = text[at] === "\r";
        from = at + 1;
      }
      if (from < text.length) {
        cr = false;
        add(text.slice(from));
      }
    },
    /** The stream ended: its last line and event count even without a blank line after them. */
    flush() {
      if (line !== "" || dropping) lineEnd();
      end();
    },
  };
}

/** POST to the REST endpoint of `shard` within `timeoutMs`: [status, text], 0 = deadline, -1 = unreachable. */
async function rest(pipeline, body, timeoutMs, shard = 0) {
  try {
    const url = restUrls[shard] ?? restUrls[0];
    const response = await fetch(pipeline ? url + "/pipeline" : url, {
      method: "POST",
      headers: { authorization: restAuthorizations[shard] ?? restAuthorizations[0], "content-type": "application/json" },
      body,
      // Never follow a redirect: the body names bucket keys (user ids); the core classifies the 3xx.
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
    });
    return [response.status, await response.text()];
  } catch (e) {
    return [e && (e.name === "TimeoutError" || e.name === "AbortError") ? 0 : -1, ""];
  }
}

const ALGORITHMS = {
  RS256: [{ name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, { name: "RSASSA-PKCS1-v1_5" }],
  ES256: [{ name: "ECDSA", namedCurve: "P-256" }, { name: "ECDSA", hash: "SHA-256" }],
  EdDSA: [{ name: "Ed25519" }, { name: "Ed25519" }],
};

function base64url(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** WebCrypto's verdict on a signature: -4 valid, -3 invalid, -5 the key cannot be imported. */
async function verify(alg, kid, signature, jwk, data) {
  const [importAs, verifyAs] = ALGORITHMS[alg] ?? [];
  let key = keys.get(kid);
  try {
    if (key === undefined) {
      key = await crypto.subtle.importKey("jwk", JSON.parse(jwk), importAs, false, ["verify"]);
      keys.set(kid, key);
    }
  } catch (e) {
    log("jwks_key_unusable", "error", { variable: "JWT_JWKS", kid, reason: String(e) });
    return -5;
  }
  try {
    return (await crypto.subtle.verify(verifyAs, key, base64url(signature), new TextEncoder().encode(data))) ? -4 : -3;
  } catch {
    return -3;
  }
}

/** The body as text, reading at most max + 1 bytes: null when it is longer (the rest is never read). */
async function readBody(request, max) {
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
