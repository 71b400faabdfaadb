// End to end: the built Worker in Miniflare, a real Redis behind the local REST endpoint, a recording origin.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startStack, startBlackHole, startGateway, TOKEN } from "./harness.mjs";

let stack;
let gw; // capacity 5, refill 5/min: the defaults
before(async () => {
  stack = await startStack();
  gw = await stack.gateway({});
});
after(async () => stack?.stop());

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let n = 0;
const freshUser = (name = "user") => `${name}-${process.pid}-${++n}`;
const as = (user) => ({ headers: { "x-user-id": user } });

describe("token bucket", () => {
  test("capacity 5: five requests reach the origin, the sixth is 429 with Retry-After", async () => {
    const user = freshUser();
    const before = stack.origin.requests.length;
    for (let i = 0; i < 5; i++) {
      const r = await gw.fetch("/api/orders", as(user));
      assert.equal(r.status, 200, `request ${i + 1}: ${r.text}`);
      assert.equal(r.headers.get("x-origin"), "demo");
      assert.equal(r.headers.get("ratelimit-policy"), '"default";q=5;w=60');
      assert.match(r.headers.get("ratelimit"), new RegExp(`^"default";r=${4 - i};t=\\d+$`));
    }
    assert.equal(stack.origin.requests.length - before, 5);
    const denied = await gw.fetch("/api/orders", as(user));
    assert.equal(denied.status, 429);
    assert.equal(stack.origin.requests.length - before, 5, "a denied request never reaches the origin");
    const retry = Number(denied.headers.get("retry-after"));
    assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= 12, `Retry-After ${retry}`);
    assert.match(denied.headers.get("ratelimit"), /^"default";r=0;t=\d+$/);
    assert.equal(denied.headers.get("ratelimit-policy"), '"default";q=5;w=60');
    assert.equal(denied.headers.get("content-type"), "application/problem+json");
    const body = denied.json();
    assert.equal(body.status, 429);
    assert.equal(body.type, "urn:edge-ratelimit:problem:rate-limited");
    assert.equal(body.title, "Too Many Requests");
  });

  test("the bucket is the hash rate:{<userId>}:<apiPath> with tokens, lastRefill and a TTL", async () => {
    const user = freshUser("hash");
    await gw.fetch("/api/orders/", as(user));
    const key = `rate:{${user}}:/api/orders`;
    const fields = await stack.rest.redis("HGETALL", key);
    const hash = Object.fromEntries([[fields[0], fields[1]], [fields[2], fields[3]]]);
    assert.ok(Math.abs(Number(hash.tokens) - 4) < 0.01, `tokens ${hash.tokens}`);
    const [sec] = await stack.rest.redis("TIME");
    assert.ok(Math.abs(Number(hash.lastRefill) - Number(sec)) < 5, `lastRefill ${hash.lastRefill} vs TIME ${sec}`);
    const ttl = await stack.rest.redis("TTL", key);
    // A TTL and a half on a key's first write, so that later writes need no EXPIRE (docs/design.md).
    assert.ok(ttl > 85 && ttl <= 90, `TTL ${ttl}`);
  });

  test("users and API paths have separate buckets; spellings of one path share one", async () => {
    const [a, b] = [freshUser("a"), freshUser("b")];
    for (let i = 0; i < 5; i++) assert.equal((await gw.fetch("/api/x", as(a))).status, 200);
    assert.equal((await gw.fetch("/api/x", as(a))).status, 429);
    assert.equal((await gw.fetch("/api/x", as(b))).status, 200, "another user has its own bucket");
    assert.equal((await gw.fetch("/api/y", as(a))).status, 200, "another path has its own bucket");
    for (const spelling of ["/api/x/", "//api//x", "/api/./x", "/api/%78", "/api/z/../x", "/api/x?page=2"]) {
      assert.equal((await gw.fetch(spelling, as(a))).status, 429, `${spelling} must share /api/x's bucket`);
    }
  });

  test("callers without a user id are limited by CF-Connecting-IP; spoofed forwarding headers change nothing", async () => {
    const ip = `198.51.100.${(process.pid % 200) + 1}`;
    for (let i = 0; i < 5; i++) assert.equal((await gw.fetch("/ip", { ip })).status, 200);
    for (const headers of [{ "x-forwarded-for": "10.0.0.1" }, { "x-real-ip": "10.0.0.2" }, { "true-client-ip": "10.0.0.3" }, { forwarded: "for=10.0.0.4" }, { "x-user-id": "  " }]) {
      assert.equal((await gw.fetch("/ip", { ip, headers })).status, 429, JSON.stringify(headers));
    }
    assert.ok(await stack.rest.redis("EXISTS", `rate:{@ip/${ip}}:/ip`));
  });

  test("a caller whose CF-Connecting-IP is not an address, and who has no user id, gets 400", async () => {
    const before = (await stack.rest.stats()).calls;
    const r = await gw.fetch("/anon", { ip: "not-an-ip" });
    assert.equal(r.status, 400);
    const body = r.json();
    assert.equal(body.type, "urn:edge-ratelimit:problem:unidentified-caller");
    assert.match(body.detail, /CF-Connecting-IP is not an IP address/);
    assert.equal((await stack.rest.stats()).calls, before, "no Redis call for an unidentified caller");
  });

  test("tokens come back after the refill time", async () => {
    const fast = await stack.gateway({ RATE_LIMIT_CAPACITY: "2", RATE_LIMIT_REFILL: "10/s" });
    const user = freshUser("refill");
    assert.equal((await fast.fetch("/r", as(user))).status, 200);
    assert.equal((await fast.fetch("/r", as(user))).status, 200);
    const denied = await fast.fetch("/r", as(user));
    assert.equal(denied.status, 429);
    assert.equal(denied.headers.get("retry-after"), "1", "100 ms rounds up to 1 s");
    await sleep(250); // 2.5 tokens' worth at 10/s, capped at 2
    assert.equal((await fast.fetch("/r", as(user))).status, 200);
    assert.equal((await fast.fetch("/r", as(user))).status, 200);
    assert.equal((await fast.fetch("/r", as(user))).status, 429);
  });

  test("200 concurrent requests for one fresh user admit exactly 5", async () => {
    const user = freshUser("burst");
    const results = await Promise.all(Array.from({ length: 200 }, () => gw.fetch("/burst", as(user))));
    const counts = {};
    for (const r of results) counts[r.status] = (counts[r.status] ?? 0) + 1;
    assert.deepEqual(counts, { 200: 5, 429: 195 });
  });
});

describe("forwarding", () => {
  test("method, path, query, headers and body reach ORIGIN_URL untouched", async () => {
    const user = freshUser("fwd");
    const r = await gw.fetch("/api/items/%7Bid%7D?q=a%20b&x=1", {
      method: "POST",
      body: JSON.stringify({ hello: "world" }),
      headers: { "x-user-id": user, "content-type": "application/json", "x-custom": "kept" },
    });
    assert.equal(r.status, 200);
    const seen = r.json();
    assert.equal(seen.method, "POST");
    assert.equal(seen.url, "/api/items/%7Bid%7D?q=a%20b&x=1");
    assert.equal(seen.headers["x-custom"], "kept");
    assert.equal(seen.body, '{"hello":"world"}');
  });
});

describe("Redis faults", () => {
  test("after SCRIPT FLUSH the next requests still succeed and are still limited", async () => {
    const user = freshUser("flush");
    for (let i = 0; i < 3; i++) assert.equal((await gw.fetch("/f", as(user))).status, 200);
    await stack.rest.redis("SCRIPT", "FLUSH");
    const evalsBefore = (await stack.rest.stats()).commands.EVAL ?? 0;
    assert.equal((await gw.fetch("/f", as(user))).status, 200);
    assert.equal((await gw.fetch("/f", as(user))).status, 200);
    assert.equal((await gw.fetch("/f", as(user))).status, 429);
    assert.equal((await stack.rest.stats()).commands.EVAL - evalsBefore, 1, "one EVAL reloads the script");
  });

  test("a misconfigured gateway answers 500 with a problem body naming the variable", async () => {
    const bad = await stack.gateway({ RATE_LIMIT_REFILL: "5/week" });
    const r = await bad.fetch("/x");
    assert.equal(r.status, 500);
    assert.equal(r.headers.get("content-type"), "application/problem+json");
    const body = r.json();
    assert.equal(body.type, "urn:edge-ratelimit:problem:misconfigured");
    assert.match(body.detail, /RATE_LIMIT_REFILL/);
    const noToken = await startGateway({ UPSTASH_REDIS_REST_URL: stack.rest.url });
    try {
      const r2 = await noToken.fetch("/x");
      assert.equal(r2.status, 500);
      assert.match(r2.json().detail, /UPSTASH_REDIS_REST_TOKEN: is not set/);
    } finally {
      await noToken.stop();
    }
  });

  test("a wrong REST token fails open, marked, and never as a 429 or bare 500", async () => {
    const wrong = await stack.gateway({ UPSTASH_REDIS_REST_TOKEN: "wrong" });
    const r = await wrong.fetch("/wrong", as(freshUser()));
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("x-ratelimit-status"), "degraded; reason=unauthorized");
  });

  for (const mode of ["open", "closed"]) {
    test(`a hung REST endpoint is decided within REDIS_TIMEOUT_MS (fail ${mode})`, async () => {
      const hole = await startBlackHole();
      const g = await startGateway({ UPSTASH_REDIS_REST_URL: hole.url, UPSTASH_REDIS_REST_TOKEN: TOKEN, ORIGIN_URL: stack.origin.url, REDIS_TIMEOUT_MS: "300", FAIL_MODE: mode });
      try {
        await g.fetch("/warm", as(freshUser())); // isolate start-up is not part of the decision
        const started = Date.now();
        const r = await g.fetch("/hung", as(freshUser()));
        const took = Date.now() - started;
        assert.ok(took >= 250 && took < 1300, `took ${took} ms`);
        if (mode === "open") {
          assert.equal(r.status, 200);
          assert.equal(r.headers.get("x-ratelimit-status"), "degraded; reason=timeout");
        } else {
          assert.equal(r.status, 503);
          assert.equal(r.headers.get("retry-after"), "1");
          assert.equal(r.json().type, "urn:edge-ratelimit:problem:limiter-unavailable");
        }
      } finally {
        await g.stop();
        await hole.stop();
      }
    });
  }

  test("with Redis stopped the gateway decides within its timeout, never a bare 500, and recovers", async () => {
    const open = await stack.gateway({ REDIS_TIMEOUT_MS: "400" });
    const closed = await stack.gateway({ REDIS_TIMEOUT_MS: "400", FAIL_MODE: "closed" });
    const user = freshUser("down");
    assert.equal((await open.fetch("/down", as(user))).status, 200);
    assert.equal((await closed.fetch("/down", as(user))).status, 200);
    await stack.redis.stop();
    try {
      for (const [g, status, reason] of [[open, 200, /^degraded; reason=(server-error|timeout)$/], [closed, 503, /^unavailable; reason=/]]) {
        const started = Date.now();
        const r = await g.fetch("/down", as(user));
        const took = Date.now() - started;
        assert.equal(r.status, status, r.text);
        assert.match(r.headers.get("x-ratelimit-status"), reason);
        assert.ok(took < 1400, `took ${took} ms`);
      }
    } finally {
      const { startRedis } = await import("./harness.mjs");
      stack.redis = await startRedis(stack.redis.port);
    }
    // Enforcement resumes on the first request after Redis is back (the flushed Redis starts a fresh bucket).
    let r;
    for (let i = 0; i < 50; i++) {
      r = await open.fetch("/down", as(user));
      if (!r.headers.get("x-ratelimit-status")) break;
      await sleep(100);
    }
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("x-ratelimit-status"), null);
    assert.match(r.headers.get("ratelimit"), /^"default";r=4;/);
  });
});
