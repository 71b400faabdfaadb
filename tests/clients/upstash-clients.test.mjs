// The official clients, as published on npm and in their default configuration, against
// upstash-local over a real Redis: @upstash/redis (base64 responses, auto-pipelining,
// read-your-writes) and @upstash/ratelimit (every algorithm, exact under concurrency, multi-region,
// analytics). What a user developing their own Upstash code against our local stack relies on.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Redis } from "@upstash/redis";
import { Analytics, MultiRegionRatelimit, Ratelimit } from "@upstash/ratelimit";
import { startRedis, startRest, TOKEN } from "../e2e/harness.mjs";

const stopped = [];
async function endpoint() {
  const redis = await startRedis();
  const rest = await startRest(redis.port, { faults: false });
  stopped.push(rest, redis);
  return rest;
}
after(async () => {
  for (const p of stopped) await p.stop();
});

describe("@upstash/redis in its default configuration", () => {
  let redis;
  before(async () => {
    const rest = await endpoint();
    redis = new Redis({ url: rest.url, token: TOKEN });
  });

  test("strings come back as stored, whether or not they look like base64", async () => {
    for (const value of ["abcd", "YWJjZA==", "héllo ✓", "OK", "PONG", "0", " "]) {
      await redis.set("s", value);
      assert.equal(await redis.get("s"), value === "0" ? 0 : value, `value ${JSON.stringify(value)}`);
    }
    assert.equal(await redis.ping(), "PONG");
    assert.equal(await redis.type("s"), "string");
    await redis.set("obj", { a: 1, b: "abcd" });
    assert.deepEqual(await redis.get("obj"), { a: 1, b: "abcd" });
    await redis.mset({ m1: "abcd", m2: "wxyz" });
    assert.deepEqual(await redis.mget("m1", "m2", "missing"), ["abcd", "wxyz", null]);
    assert.equal(await redis.incr("counter"), 1);
    assert.equal(await redis.append("m1", "efgh"), 8);
    assert.equal(await redis.getrange("m1", 2, 5), "cdef");
    const [seconds, micros] = await redis.time();
    assert.ok(Math.abs(seconds - Date.now() / 1000) < 60 && micros >= 0, `time ${seconds} ${micros}`);
  });

  test("hashes, lists, sets and sorted sets", async () => {
    await redis.hset("h", { name: "abcd", n: 7 });
    assert.deepEqual(await redis.hgetall("h"), { name: "abcd", n: 7 });
    assert.equal(await redis.hget("h", "name"), "abcd");
    assert.equal(await redis.hincrby("h", "n", 3), 10);
    await redis.rpush("l", "abcd", "efgh", "ijkl");
    assert.deepEqual(await redis.lrange("l", 0, -1), ["abcd", "efgh", "ijkl"]);
    assert.equal(await redis.lpop("l"), "abcd");
    await redis.sadd("set", "abcd", "wxyz");
    assert.deepEqual((await redis.smembers("set")).sort(), ["abcd", "wxyz"]);
    assert.equal(await redis.sismember("set", "abcd"), 1);
    await redis.zadd("z", { score: 1.5, member: "abcd" }, { score: 3, member: "efgh" });
    assert.equal(await redis.zscore("z", "abcd"), 1.5);
    assert.deepEqual(await redis.zrange("z", 0, -1, { withScores: true }), ["abcd", 1.5, "efgh", 3]);
    assert.equal(await redis.zincrby("z", 2, "abcd"), 3.5);
  });

  test("scripts: scriptLoad, evalsha and createScript", async () => {
    const source = "return {ARGV[1], redis.call('GET', KEYS[1])}";
    const sha = await redis.scriptLoad(source);
    assert.equal(sha, createHash("sha1").update(source).digest("hex"));
    await redis.set("sk", "abcd");
    assert.deepEqual(await redis.evalsha(sha, ["sk"], ["wxyz"]), ["wxyz", "abcd"]);
    const script = redis.createScript("return ARGV[1]");
    assert.equal(await script.exec([], ["abcd"]), "abcd");
    assert.equal(await script.exec([], ["second call: EVALSHA"]), "second call: EVALSHA");
  });

  test("pipeline(), and auto-pipelining of concurrent commands", async () => {
    const p = redis.pipeline();
    p.set("p1", "abcd");
    p.get("p1");
    p.incr("p2");
    p.hget("p1", "f"); // WRONGTYPE: an error of its own
    const results = await p.exec({ keepErrors: true });
    assert.equal(results[0].result, "OK");
    assert.equal(results[1].result, "abcd");
    assert.equal(results[2].result, 1);
    assert.match(results[3].error, /WRONGTYPE/);
    await Promise.all(Array.from({ length: 50 }, () => redis.incr("auto")));
    assert.equal(await redis.get("auto"), 50);
  });

  test("multi() with a command that fails at run time applies the others", async () => {
    await redis.set("text", "not a number");
    const tx = redis.multi();
    tx.set("t1", "abcd");
    tx.incr("text");
    tx.get("t1");
    const results = await tx.exec({ keepErrors: true });
    assert.equal(results[0].result, "OK");
    assert.match(results[1].error, /not an integer/);
    assert.equal(results[2].result, "abcd");
    assert.equal(await redis.get("t1"), "abcd");
  });

  test("scan walks every key with the cursors it is given", async () => {
    const keys = Array.from({ length: 120 }, (_, i) => `scan:${i}`);
    await Promise.all(keys.map((k) => redis.set(k, "abcd")));
    const seen = new Set();
    let cursor = "0";
    let rounds = 0;
    do {
      const [next, batch] = await redis.scan(cursor, { match: "scan:*", count: 10 });
      for (const k of batch) seen.add(k);
      cursor = String(next);
      assert.ok(++rounds < 1000, "scan never ended");
    } while (cursor !== "0");
    assert.equal(seen.size, keys.length);
  });

  test("read your writes: every answer carries a sync token the client keeps", async () => {
    await redis.set("ryw", "abcd");
    const first = redis.readYourWritesSyncToken;
    assert.ok(first, "no sync token kept");
    assert.equal(await redis.get("ryw"), "abcd");
    assert.notEqual(redis.readYourWritesSyncToken, first);
  });
});

describe("@upstash/ratelimit as published", () => {
  let redis;
  before(async () => {
    const rest = await endpoint();
    redis = new Redis({ url: rest.url, token: TOKEN });
  });

  const algorithms = {
    fixedWindow: () => Ratelimit.fixedWindow(10, "30 s"),
    slidingWindow: () => Ratelimit.slidingWindow(10, "30 s"),
    tokenBucket: () => Ratelimit.tokenBucket(1, "30 s", 10),
  };
  for (const [name, limiter] of Object.entries(algorithms)) {
    test(`${name}: 100 concurrent requests admit exactly 10; getRemaining and resetUsedTokens agree`, async () => {
      const rl = new Ratelimit({ redis, limiter: limiter(), prefix: `rl:${name}`, ephemeralCache: false });
      const results = await Promise.all(Array.from({ length: 100 }, () => rl.limit("alice")));
      assert.equal(results.filter((r) => r.success).length, 10);
      assert.equal(results.find((r) => r.success).limit, 10);
      assert.equal((await rl.getRemaining("alice")).remaining, 0);
      assert.equal((await rl.getRemaining("bob")).remaining, 10);
      await rl.limit("bob");
      await rl.limit("bob");
      assert.equal((await rl.getRemaining("bob")).remaining, 8);
      await rl.resetUsedTokens("alice");
      assert.equal((await rl.getRemaining("alice")).remaining, 10);
      const again = await rl.limit("alice");
      assert.equal(again.success, true);
      assert.equal(again.remaining, 9);
    });
  }

  test("cachedFixedWindow: exact for sequential requests; a second instance reads the count from Redis", async () => {
    const make = () => new Ratelimit({ redis, limiter: Ratelimit.cachedFixedWindow(10, "30 s"), prefix: "rl:cached", ephemeralCache: new Map() });
    const rl = make();
    let admitted = 0;
    for (let i = 0; i < 15; i++) {
      const r = await rl.limit("frank");
      await r.pending;
      if (r.success) admitted++;
    }
    assert.equal(admitted, 10);
    assert.equal((await make().limit("frank")).success, false);
  });

  test("multi-region sliding window over three endpoints: exact when each sync is awaited", async () => {
    const regions = [];
    for (let i = 0; i < 3; i++) regions.push(new Redis({ url: (await endpoint()).url, token: TOKEN }));
    const rl = new MultiRegionRatelimit({ redis: regions, limiter: MultiRegionRatelimit.slidingWindow(5, "30 s"), prefix: "mrs" });
    let admitted = 0;
    for (let i = 0; i < 8; i++) {
      const r = await rl.limit("gina");
      await r.pending;
      if (r.success) admitted++;
    }
    assert.equal(admitted, 5);
  });

  test("multi-region fixed window over three endpoints: exact when each sync is awaited; a flushed region is repaired with the same request ids", async () => {
    const rests = [];
    for (let i = 0; i < 3; i++) rests.push(await endpoint());
    const regions = rests.map((rest) => new Redis({ url: rest.url, token: TOKEN }));
    const rl = new MultiRegionRatelimit({ redis: regions, limiter: MultiRegionRatelimit.fixedWindow(5, "30 s"), prefix: "mr" });
    const fields = async (rest, who) => {
      const [key] = await rest.redis("KEYS", `mr:${who}:*`);
      return key ? (await rest.redis("HKEYS", key)).sort() : [];
    };
    const call = async (who) => {
      const r = await rl.limit(who);
      await r.pending;
      return r.success;
    };
    let admitted = 0;
    for (let i = 0; i < 8; i++) if (await call("carol")) admitted++;
    assert.equal(admitted, 5);
    assert.equal((await rl.getRemaining("carol")).remaining, 0);
    // One region loses its state; the next call's sync restores it with the ids the others hold.
    for (let i = 0; i < 3; i++) assert.ok(await call("erin"));
    await rests[2].redis("FLUSHALL");
    assert.ok(await call("erin"));
    const ids = await fields(rests[0], "erin");
    assert.equal(ids.length, 4, `request ids ${JSON.stringify(ids)}`);
    for (const id of ids) assert.match(id, /^[A-Za-z0-9]{16}$/, "an id as the client made it");
    assert.deepEqual(await fields(rests[2], "erin"), ids);
  });

  test("analytics count what was allowed and blocked", async () => {
    const rl = new Ratelimit({ redis, limiter: Ratelimit.fixedWindow(5, "30 s"), prefix: "an", analytics: true });
    for (let i = 0; i < 7; i++) await (await rl.limit("dave")).pending;
    const usage = await new Analytics({ redis, prefix: "an" }).getUsage(Date.now() - 60 * 60 * 1000);
    assert.deepEqual(usage.dave, { success: 5, blocked: 2 });
    const [now] = await new Analytics({ redis, prefix: "an" }).getUsageOverTime(2, "identifier");
    assert.deepEqual(now.identifier, { dave: 7 }); // identifiers as sent, whether or not they look like base64
  });
});
