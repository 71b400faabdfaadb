// The RPC entrypoint end to end: a second (JavaScript) Worker bound to the built gateway by a service
// binding calls env.LIMITER.limit / peek / reset, as another team's Worker would. Real Redis, the
// local REST endpoint, Miniflare. Also: the example caller type-checks (tsc) and runs, and every line
// the gateway logs is JSON.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { transformSync } from "esbuild";
import { ROOT, startRedis, startRest, startWithCaller, TOKEN } from "./harness.mjs";

let redis;
let rest;
const workers = [];
before(async () => {
  redis = await startRedis();
  rest = await startRest(redis.port);
});
after(async () => {
  for (const w of workers) await w.stop();
  await rest?.stop();
  await redis?.stop();
});

const POLICY = JSON.stringify({
  rules: [
    {
      name: "export",
      methods: ["POST"],
      route: "/export/*",
      limits: [{ name: "exports", capacity: 5, refill: "5/h" }],
    },
  ],
});

async function limiter(vars = {}) {
  const w = await startWithCaller({
    UPSTASH_REDIS_REST_URL: rest.url,
    UPSTASH_REDIS_REST_TOKEN: TOKEN,
    REDIS_TIMEOUT_MS: "5000",
    ...vars,
  });
  workers.push(w);
  return w;
}

/** The Workers' log lines as JSON, once `ready(lines)` holds (stdout reaches us a little after the answer). */
async function logged(w, ready) {
  for (let i = 0; i < 100; i++) {
    const lines = w.logs.map((l) => JSON.parse(l));
    if (ready(lines)) return lines;
    await new Promise((r) => setTimeout(r, 20));
  }
  return w.logs.map((l) => JSON.parse(l));
}

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;

describe("limit over a service binding", () => {
  test("200 concurrent calls for one key: exactly the capacity succeeds", async () => {
    const w = await limiter({ RATE_LIMIT_CAPACITY: "50", RATE_LIMIT_REFILL: "1/h" });
    const key = fresh("burst");
    const results = await w.calls(200, "limit", { key });
    const errors = results.filter((r) => r.error);
    assert.deepEqual(errors, []);
    const admitted = results.filter((r) => r.value.success).length;
    assert.equal(admitted, 50);
    const denied = results.find((r) => !r.value.success).value;
    assert.equal(denied.remaining, 0);
    assert.ok(denied.retryAfter >= 1, JSON.stringify(denied));
    assert.equal(denied.limit, 50);
    assert.equal(denied.name, "default");
  });

  test("cost, peek that consumes nothing, reset, and shadow calls", async () => {
    const w = await limiter({ RATE_LIMIT_CAPACITY: "10", RATE_LIMIT_REFILL: "10/h" });
    const key = fresh("cost");
    const first = await w.call("limit", { key, cost: 4 });
    assert.equal(first.success, true);
    assert.equal(first.remaining, 6);
    assert.equal(first.retryAfter, 0);
    for (let i = 0; i < 50; i++) {
      const p = await w.call("peek", { key });
      assert.equal(p.remaining, 6, "a peek takes nothing");
    }
    const tooMuch = await w.call("limit", { key, cost: 7 });
    assert.equal(tooMuch.success, false);
    assert.ok(tooMuch.retryAfter >= 1);
    const shadow = await w.call("limit", { key, cost: 7, shadow: true });
    assert.equal(shadow.success, true, "shadow never denies");
    assert.equal(shadow.shadowDenied, true);
    const six = await w.calls(6, "limit", { key });
    assert.equal(six.filter((r) => r.value.success).length, 6);
    assert.equal((await w.call("limit", { key })).success, false);
    const reset = await w.call("reset", { key });
    assert.deepEqual({ success: reset.success, deleted: reset.deleted }, { success: true, deleted: 1 });
    assert.equal((await w.call("limit", { key })).remaining, 9, "reset: full again");
  });

  test("a rule by name and by { method, path } shares the gateway's buckets for that user id", async () => {
    const w = await limiter({ RATE_LIMIT_POLICY: POLICY, ORIGIN_URL: "http://127.0.0.1:9" });
    const user = fresh("alice");
    assert.equal((await w.call("limit", { key: user, rule: "export" })).remaining, 4);
    const byRoute = await w.call("limit", { key: user, rule: { method: "POST", path: "/export/report.csv" } });
    assert.equal(byRoute.remaining, 3);
    assert.equal(byRoute.name, "exports");
    // The gateway's own HTTP decision for that user counts in the same bucket (the origin is down: 502,
    // but the RateLimit field was set by then).
    const http = await w.fetch("/export/x", { method: "POST", headers: { "x-user-id": user } });
    assert.match(http.headers.get("ratelimit"), /^"exports";r=2;/);
    // Without a rule the same key is another bucket: the zero-config limit in the RPC key space.
    assert.equal((await w.call("limit", { key: user })).remaining, 4);
    const keys = await rest.redis("KEYS", `rate:*${user}*`);
    assert.deepEqual(keys.sort(), [`rate:{${user}}:/export/%2A#exports`, `rate:{@rpc/${user}}`].sort());
  });

  test("bad arguments throw TypeError / RangeError naming the argument; nothing is consumed", async () => {
    const w = await limiter({ RATE_LIMIT_POLICY: POLICY });
    const cases = [
      ["limit", "undefined", "TypeError", /options must be an object/],
      // Checked before they are serialised (issue 23, item 3): every message names the argument.
      ["limit", "bigint", "TypeError", /^options\.cost must be a number, got a BigInt$/],
      ["limit", "bigint-cost", "TypeError", /^options\.cost must be a number, got a BigInt$/],
      ["limit", "date-key", "TypeError", /^options\.key must be a string, got a Date$/],
      ["limit", "now-key", "TypeError", /^options\.key must be a string, got a Date$/],
      ["limit", "boxed-key", "TypeError", /^options\.key must be a string, got a String$/],
      ["limit", "nan-cost", "RangeError", /^options\.cost must be a finite number, got NaN$/],
      ["limit", "infinite-cost", "RangeError", /^options\.cost must be a finite number, got Infinity$/],
      ["limit", "map-rule", "TypeError", /^options\.rule must be a rule's name or \{ method, path \}, got a Map$/],
      ["limit", "date-options", "TypeError", /^limit\(options\): options must be an object such as .*, got a Date$/],
      ["limit", "date-in-rule", "TypeError", /^options\.rule\.path must be a string, got a Date$/],
      ["limit", { key: "k", cost: 1000000001 }, "RangeError", /options\.cost must be a whole number from 1 to 1000000000/],
      ["limit", {}, "TypeError", /options\.key is required/],
      ["limit", { key: 42 }, "TypeError", /options\.key must be a string/],
      ["limit", { key: "" }, "RangeError", /options\.key must not be empty/],
      ["limit", { key: "k", cost: 0 }, "RangeError", /options\.cost/],
      ["limit", { key: "k", cost: "3" }, "TypeError", /options\.cost must be a number/],
      ["limit", { key: "k", rule: "nope" }, "RangeError", /no rule "nope"/],
      ["limit", { key: "k", rule: { method: "GET", path: "/other" } }, "RangeError", /no rule .* matches GET \/other/],
      ["limit", { key: "k", colour: "red" }, "TypeError", /unknown option "colour"/],
      ["peek", { key: "k", shadow: true }, "TypeError", /unknown option "shadow"/],
    ];
    for (const [method, options, name, message] of cases) {
      const r = await w.call(method, options);
      assert.ok(r.error, `${method}(${JSON.stringify(options)}) threw`);
      assert.equal(r.error.name, name, JSON.stringify(r.error));
      assert.equal(r.error[`is${name}`], true, "the caller can test instanceof");
      assert.match(r.error.message, message);
    }
    assert.deepEqual(await rest.redis("KEYS", "rate:{@rpc/k*}"), []);
  });

  test("Redis stopped and the endpoint hung: the fail mode's answer at REDIS_TIMEOUT_MS, never a throw", async () => {
    const deadRedis = await startRedis();
    const deadRest = await startRest(deadRedis.port);
    try {
      const vars = { UPSTASH_REDIS_REST_URL: deadRest.url, REDIS_TIMEOUT_MS: "300" };
      const open = await limiter(vars);
      const closed = await limiter({ ...vars, FAIL_MODE: "closed" });
      const key = fresh("down");
      assert.equal((await open.call("limit", { key })).success, true); // warm
      await deadRedis.stop();
      await deadRest.faults({ hang: true }); // and the endpoint stops answering too
      for (const [w, success] of [[open, true], [closed, false]]) {
        // The endpoint never answers: a result at all, marked "timeout", is the deadline's doing.
        const r = await w.call("limit", { key });
        assert.equal(r.error, undefined, JSON.stringify(r));
        assert.equal(r.success, success);
        assert.equal(r.degraded, "timeout");
        assert.equal((await w.call("reset", { key })).degraded, "timeout");
      }
      const lines = await logged(open, (ls) => ls.some((l) => l.event === "degraded"));
      const degraded = lines.find((l) => l.event === "degraded");
      assert.equal(degraded.via, "rpc");
      assert.equal(degraded.reason, "timeout");
      assert.match(degraded.caller, /^h:[0-9a-f]{16}$/);
      assert.ok(!JSON.stringify(lines).includes(key), "caller ids appear only hashed");
    } finally {
      await deadRest.stop();
    }
  });

  test("the same Worker still serves HTTP, and every line it logs is JSON", async () => {
    const w = await limiter({ RATE_LIMIT_CAPACITY: "1", ORIGIN_URL: "http://127.0.0.1:9", LOG_CALLER_IDS: "plain" });
    const user = fresh("http");
    assert.equal((await w.fetch("/a", { headers: { "x-user-id": user } })).status, 502, "forwarded (origin down)");
    assert.equal((await w.fetch("/a", { headers: { "x-user-id": user } })).status, 429);
    await w.call("limit", { key: user });
    await w.call("limit", { key: user, shadow: true });
    const lines = await logged(w, (ls) => ls.some((l) => l.event === "shadow_denied") && ls.some((l) => l.event === "origin_unreachable"));
    const events = lines.map((l) => l.event);
    assert.ok(events.includes("origin_unreachable"), events.join());
    const shadow = lines.find((l) => l.event === "shadow_denied");
    assert.deepEqual({ via: shadow.via, caller: shadow.caller, limit: shadow.limit }, { via: "rpc", caller: `@rpc/${user}`, limit: "default" });
    const bad = await limiter({ RATE_LIMIT_CAPACITY: "lots" });
    assert.equal((await bad.call("limit", { key: "x" })).error.name, "Error");
    assert.equal((await bad.fetch("/")).status, 500);
    const all = await logged(bad, (ls) => ls.filter((l) => l.event === "misconfigured").length >= 2);
    const misconfigured = all.filter((l) => l.event === "misconfigured");
    assert.ok(misconfigured.length >= 2 && misconfigured.every((l) => l.variable === "RATE_LIMIT_CAPACITY"), bad.logs.join("\n"));
  });
});

describe("the TypeScript declaration", () => {
  const tsc = (project) =>
    spawnSync(path.join(ROOT, "node_modules/.bin/tsc"), ["-p", project], { cwd: ROOT, encoding: "utf8" });

  test("the example caller type-checks, and a misuse does not", () => {
    const ok = tsc("examples/caller/tsconfig.json");
    assert.equal(ok.status, 0, ok.stdout + ok.stderr);
    // The same project with a call the declaration forbids: tsc must refuse it.
    const dir = mkdtempSync(path.join(os.tmpdir(), "caller-"));
    const source = readFileSync(path.join(ROOT, "examples/caller/index.ts"), "utf8")
      .replace("../../js/edge-ratelimit", path.join(ROOT, "js/edge-ratelimit"))
      .replace("{ key: user, cost:", "{ kee: user, cost:");
    writeFileSync(path.join(dir, "index.ts"), source);
    const config = JSON.parse(readFileSync(path.join(ROOT, "examples/caller/tsconfig.json"), "utf8"));
    config.include = ["index.ts"];
    config.compilerOptions.typeRoots = [path.join(ROOT, "node_modules/@cloudflare")];
    config.compilerOptions.types = ["workers-types"];
    writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify(config));
    const bad = tsc(path.join(dir, "tsconfig.json"));
    assert.notEqual(bad.status, 0, "a misspelt option is a type error");
    assert.match(bad.stdout, /kee/);
  });

  test("the example caller runs against the gateway", async () => {
    const ts = readFileSync(path.join(ROOT, "examples/caller/index.ts"), "utf8");
    const { code } = transformSync(ts, { loader: "ts", format: "esm" });
    const w = await startWithCaller(
      { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: TOKEN, REDIS_TIMEOUT_MS: "5000" },
      { callerScript: code },
    );
    workers.push(w);
    const user = fresh("example");
    const texts = [];
    for (let i = 0; i < 6; i++) {
      const r = await w.callerFetch("http://caller.test/", { headers: { "x-user-id": user } });
      texts.push(`${r.status} ${await r.text()}`);
    }
    assert.equal(texts[0], "200 ok, 4 of 5 left");
    assert.equal(texts[5], "429 slow down");
  });
});
