// Test harness: a real Redis, the local Upstash REST endpoint, a recording origin and the built
// Worker in Miniflare, all on 127.0.0.1. Every process is started per test file and stopped after.
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const TOKEN = "local-test-token";
const WORKER_DIR = process.env.WORKER_DIR ?? path.join(ROOT, "build/worker");
const REST_BIN = process.env.UPSTASH_LOCAL_BIN ?? path.join(ROOT, "target/release/upstash-local");

/** The compatibility date and flags a deploy gets (wrangler.toml): the tests run the Worker on the same. */
const WRANGLER = readFileSync(path.join(ROOT, "wrangler.toml"), "utf8");
export const COMPATIBILITY = {
  compatibilityDate: WRANGLER.match(/^compatibility_date\s*=\s*"([^"]+)"/m)[1],
  compatibilityFlags: JSON.parse(WRANGLER.match(/^compatibility_flags\s*=\s*(\[[^\]]*\])/m)?.[1] ?? "[]"),
};

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, what, child, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => { s.destroy(); resolve(true); });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port} within ${ms} ms`);
}

function logOf(child) {
  let out = "";
  child.stdout?.on("data", (d) => { out += d; });
  child.stderr?.on("data", (d) => { out += d; });
  return () => out;
}

/** A real redis-server on a free port (no persistence). Fails loudly when it is not installed. */
export async function startRedis(port) {
  const which = spawnSync("redis-server", ["--version"]);
  if (which.error) throw new Error("redis-server is not installed: run scripts/setup (apt-get install redis-server)");
  port ??= await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "pipe" });
  const log = logOf(child);
  try {
    await waitForPort(port, "redis-server", child);
  } catch (e) {
    throw new Error(`${e.message}\n${log()}`);
  }
  return {
    port,
    child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

/** The local Upstash-compatible REST endpoint in front of `redisPort`. */
export async function startRest(redisPort, { faults = true } = {}) {
  const port = await freePort();
  const args = ["--listen", `127.0.0.1:${port}`, "--redis", `redis://127.0.0.1:${redisPort}`, "--token", TOKEN];
  if (faults) args.push("--faults");
  const child = spawn(REST_BIN, args, { stdio: "pipe" });
  const log = logOf(child);
  child.on("error", (e) => { throw new Error(`cannot start ${REST_BIN}: ${e.message} (run scripts/test, which builds it)`); });
  try {
    await waitForPort(port, "upstash-local", child);
  } catch (e) {
    throw new Error(`${e.message}\n${log()}`);
  }
  const url = `http://127.0.0.1:${port}`;
  const post = async (pathname, body) => {
    const res = await fetch(url + pathname, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify(body),
    });
    return res.json();
  };
  return {
    url,
    port,
    log,
    /** Runs one Redis command through the endpoint; throws on a Redis error. */
    async redis(...command) {
      const reply = await post("/", command);
      if (reply.error) throw new Error(`redis ${command[0]}: ${reply.error}`);
      return reply.result;
    },
    faults: (f) => post("/__faults", f),
    stats: async () => (await fetch(`${url}/__stats`)).json(),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

/** An origin that answers 200 with what it received, and records every request. */
export async function startOrigin() {
  const requests = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => { body += d; });
    req.on("end", () => {
      const seen = { method: req.method, url: req.url, headers: req.headers, body };
      requests.push(seen);
      res.writeHead(200, { "content-type": "application/json", "x-origin": "demo" });
      res.end(JSON.stringify(seen));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

/** A TCP server that accepts connections and never answers: a hung Redis REST endpoint. */
export async function startBlackHole() {
  const sockets = new Set();
  const server = net.createServer((s) => { sockets.add(s); s.on("close", () => sockets.delete(s)); s.on("error", () => {}); });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stop: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); }),
  };
}

/** Miniflare's options for the built Worker (build/worker) with `vars` as its environment. */
const gatewayWorker = (vars) => ({
  modules: true,
  scriptPath: path.join(WORKER_DIR, "shim.mjs"),
  modulesRoot: WORKER_DIR,
  modulesRules: [
    { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
    { type: "CompiledWasm", include: ["**/*.wasm"] },
  ],
  ...COMPATIBILITY,
  bindings: vars,
});

/** The built Worker (build/worker) in Miniflare with `vars` as its environment. */
export async function startGateway(vars) {
  const mf = new Miniflare(gatewayWorker(vars));
  await mf.ready;
  let stopped = null;
  return {
    mf,
    /** Sends a request through the gateway as client `ip` (CF-Connecting-IP). */
    async fetch(pathname, { ip = "203.0.113.7", headers = {}, ...init } = {}) {
      const res = await mf.dispatchFetch(`http://gateway.test${pathname}`, {
        ...init,
        headers: { "cf-connecting-ip": ip, ...headers },
      });
      const text = await res.text();
      return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
    },
    /** Stops the instance (its isolate and whatever it still holds); once, however often called. */
    stop: () => (stopped ??= mf.dispose()),
  };
}

/**
 * A caller Worker (JavaScript) bound to the gateway by a service binding, as another team's Worker
 * would be: `POST /` with `{ method, options, times }` calls `env.LIMITER[method](options)` `times`
 * times at once and answers `[{ value } | { error: { name, message } }]`. `options` "undefined"
 * calls with no argument, "bigint" with a value JSON cannot carry.
 */
const CALLER = `
export default {
  async fetch(request, env) {
    const { method, options, times = 1 } = await request.json();
    // JavaScript values JSON cannot carry as they are (issue 23, item 3), by name.
    const special = {
      undefined: undefined,
      bigint: { key: "k", cost: 1n },
      "bigint-cost": { key: "k", cost: 5n },
      "date-key": { key: new Date(0) },
      "now-key": { key: new Date() },
      "boxed-key": { key: new String("k") },
      "nan-cost": { key: "k", cost: NaN },
      "infinite-cost": { key: "k", cost: Infinity },
      "map-rule": { key: "k", rule: new Map([["path", "/export/x"]]) },
      "date-options": new Date(0),
      "date-in-rule": { key: "k", rule: { method: "POST", path: new Date(0) } },
    };
    const arg = Object.hasOwn(special, options) ? special[options] : options;
    const one = async () => {
      try {
        return { value: await env.LIMITER[method](arg) };
      } catch (e) {
        return { error: { name: e.name, message: e.message, isTypeError: e instanceof TypeError, isRangeError: e instanceof RangeError } };
      }
    };
    const results = await Promise.all(Array.from({ length: times }, one));
    return Response.json({ results });
  },
};`;

/**
 * The gateway Worker and a caller Worker bound to its `RateLimiter` entrypoint, in one Miniflare.
 * `call(method, options)` → the result (or `{ error }`); `calls(n, …)` → n results made at once;
 * `fetch` is an HTTP request to the gateway itself; `logs` every line the Workers printed.
 */
export async function startWithCaller(vars, { callerScript = CALLER } = {}) {
  const logs = []; // stdout: what the Workers console.log-ged
  const collect = (stream, into = logs) => {
    let rest = "";
    stream.on("data", (chunk) => {
      rest += chunk;
      const lines = rest.split("\n");
      rest = lines.pop();
      into.push(...lines.filter((l) => l.trim() !== ""));
    });
  };
  const mf = new Miniflare({
    handleRuntimeStdio: (stdout, stderr) => {
      collect(stdout);
      collect(stderr, []); // workerd's own diagnostics (an origin that cannot be resolved, say)
    },
    workers: [
      { name: "edge-ratelimit", ...gatewayWorker(vars) },
      {
        name: "caller",
        modules: true,
        script: callerScript,
        ...COMPATIBILITY,
        serviceBindings: { LIMITER: { name: "edge-ratelimit", entrypoint: "RateLimiter" } },
      },
    ],
  });
  await mf.ready;
  const caller = await mf.getWorker("caller");
  const calls = async (times, method, options) => {
    const res = await caller.fetch("http://caller.test/", { method: "POST", body: JSON.stringify({ method, options, times }) });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`caller Worker answered ${res.status}: ${text}`);
    return JSON.parse(text);
  };
  return {
    mf,
    logs,
    /** The caller Worker's own fetch (for a caller script of one's own). */
    callerFetch: (url, init) => caller.fetch(url, init),
    calls: async (times, method, options) => (await calls(times, method, options)).results,
    /** One call: its value, or `{ error }` when it threw. */
    async call(method, options) {
      const r = (await calls(1, method, options)).results[0];
      return r.value ?? { error: r.error };
    },
    async fetch(pathname, { ip = "203.0.113.7", headers = {}, ...init } = {}) {
      const res = await mf.dispatchFetch(`http://gateway.test${pathname}`, { ...init, headers: { "cf-connecting-ip": ip, ...headers } });
      const text = await res.text();
      return { status: res.status, headers: res.headers, text };
    },
    stop: () => mf.dispose(),
  };
}

/** Standard stack: Redis + REST endpoint + origin; `gateway(vars)` starts a Worker on it. */
export async function startStack() {
  const redis = await startRedis();
  const rest = await startRest(redis.port);
  const origin = await startOrigin();
  const gateways = [];
  return {
    redis,
    rest,
    origin,
    async gateway(vars = {}) {
      const gw = await startGateway({
        UPSTASH_REDIS_REST_URL: rest.url,
        UPSTASH_REDIS_REST_TOKEN: TOKEN,
        ORIGIN_URL: origin.url,
        // A generous deadline unless a test is about deadlines: on a busy 2-core machine a 500 ms
        // one can pass, and the gateway would then (correctly) fail open instead of deciding.
        REDIS_TIMEOUT_MS: "5000",
        ...vars,
      });
      gateways.push(gw);
      return gw;
    },
    async stop() {
      for (const gw of gateways) await gw.stop();
      await origin.stop();
      await rest.stop();
      await this.redis.stop(); // a test may have replaced it

    },
  };
}

/**
 * A scriptable fake REST endpoint: `handle(command, body)` answers each call with
 * `{ status, body, headers }` (command = the first element of the JSON array, "PIPELINE" for /pipeline).
 * Counts calls per command.
 */
export async function startFakeRest(handle) {
  const counts = {};
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => { body += d; });
    req.on("end", async () => {
      let command = "?";
      try {
        command = req.url.startsWith("/pipeline") ? "PIPELINE" : String(JSON.parse(body)[0]);
      } catch {}
      counts[command] = (counts[command] ?? 0) + 1;
      const r = await handle(command, body, req);
      res.writeHead(r.status ?? 200, { "content-type": "application/json", ...(r.headers ?? {}) });
      res.end(r.body ?? "");
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    counts,
    calls: () => Object.values(counts).reduce((a, b) => a + b, 0),
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

/**
 * One HTTP/1.1 request written by hand to the gateway (bytes exactly as given: non-UTF-8 header values,
 * chunked bodies). `chunks` is an async generator of body chunks, written until the response's status
 * line arrives or `ms` pass. Resolves to { status, head, sent } (status 0: no answer in time, -1: the
 * connection was reset before any answer).
 */
export async function rawRequest(gateway, head, { chunks = null, ms = 3000 } = {}) {
  const url = new URL((await gateway.mf.ready).toString());
  return new Promise((resolve) => {
    const socket = net.connect(Number(url.port), url.hostname);
    let got = Buffer.alloc(0);
    let sent = 0;
    let done = false;
    const finish = (status) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const text = got.toString("latin1");
      resolve({ status, head: text.split("\r\n\r\n")[0], sent });
    };
    const timer = setTimeout(() => finish(0), ms);
    socket.on("data", (d) => {
      got = Buffer.concat([got, d]);
      const m = /^HTTP\/1\.1 (\d{3})/.exec(got.toString("latin1"));
      if (m && got.includes("\r\n\r\n")) finish(Number(m[1]));
    });
    // A reset before any answer is -1 (a server that closes with the body unread may cause one).
    socket.on("error", () => finish(got.length === 0 ? -1 : 0));
    socket.on("connect", async () => {
      socket.write(Buffer.from(head, "latin1"));
      if (!chunks) return;
      for await (const chunk of chunks) {
        if (done) return;
        const ok = socket.write(`${chunk.length.toString(16)}\r\n`) && socket.write(chunk) && socket.write("\r\n");
        sent += chunk.length;
        if (!ok) await new Promise((r) => { socket.once("drain", r); setTimeout(r, 50); });
      }
    });
  });
}

/**
 * Warms a gateway's isolate: requests (of fresh callers, to `path`) until two in a row cost the same
 * REST calls once the endpoint stands still — past the isolate's one-off calls (the script's load, the
 * metrics report, the read of which overrides exist after its first responses) — so that a test
 * counting REST calls counts only its own.
 */
export async function warm(gw, rest, path = "/warm") {
  const calls = async () => (await rest.stats()).calls;
  const still = async () => {
    for (let last = -1, now = await calls(); now !== last; last = now, now = await calls()) {
      await new Promise((r) => setTimeout(r, 150));
    }
  };
  await still();
  let previous = -1;
  for (let i = 0; i < 8; i++) {
    const before = await calls();
    await gw.fetch(path, { headers: { "x-user-id": `warm-${process.pid}-${Date.now()}-${i}` } });
    await still();
    const cost = (await calls()) - before;
    if (cost === previous) return;
    previous = cost;
  }
  throw new Error("the isolate's REST calls per request never settled");
}
