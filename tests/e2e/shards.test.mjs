// Past one database, end to end: the built Worker in Miniflare with UPSTASH_REDIS_REST_URL listing
// four databases (four redis-servers, each behind its own upstash-local). Exactly the limit for one
// caller under 200 concurrent requests; a global limit shared by 500 callers on every shard never
// exceeded, and exactly met once leases are back; the REST calls of many users spread evenly; one
// database down fails only its callers. Figures print as `MEASURED …`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startOrigin, startRedis, startRest, startGateway, startWithCaller, TOKEN } from "./harness.mjs";

const SHARDS = 4;
let redis = [];
let rests = [];
let origin;
const gateways = [];

before(async () => {
  origin = await startOrigin();
  for (let i = 0; i < SHARDS; i++) {
    redis.push(await startRedis());
    rests.push(await startRest(redis[i].port));
  }
});
after(async () => {
  for (const g of gateways) await g.stop();
  for (const r of rests) await r.stop();
  for (const r of redis) await r.stop();
  await origin?.stop();
});

async function gateway(vars = {}) {
  const gw = await startGateway({
    UPSTASH_REDIS_REST_URL: rests.map((r) => r.url).join(","),
    UPSTASH_REDIS_REST_TOKEN: TOKEN,
    ORIGIN_URL: origin.url,
    USER_ID_HEADER: "x-user-id",
    REDIS_TIMEOUT_MS: "5000",
    ...vars,
  });
  gateways.push(gw);
  return gw;
}

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;
const as = (user) => ({ headers: { "x-user-id": user } });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Which databases hold `key`. */
const holders = async (key) => {
  const out = [];
  for (let i = 0; i < SHARDS; i++) if ((await rests[i].redis("EXISTS", key)) === 1) out.push(i);
  return out;
};

describe("four databases (shards)", () => {
  test("200 concurrent requests of one caller, capacity 5: exactly 5, its bucket on one shard", async () => {
    const gw = await gateway();
    const user = fresh("one");
    const codes = await Promise.all(Array.from({ length: 200 }, () => gw.fetch("/api/orders", as(user)).then((r) => r.status)));
    assert.equal(codes.filter((c) => c === 200).length, 5, "exactly the capacity");
    assert.equal(codes.filter((c) => c === 429).length, 195);
    assert.equal((await holders(`rate:{${user}}:/api/orders`)).length, 1, "one shard holds the caller's bucket");
  });

  test("a global limit of 50 shared by 500 callers on every shard: at most 50, exactly 50 once leases are back", async () => {
    const policy = JSON.stringify({
      rules: [{ name: "api", route: "/g/*", limits: [
        { name: "caller", capacity: 3, refill: "3/d" },
        { name: "global", by: "global", capacity: 50, refill: "50/d" },
      ] }],
    });
    const vars = { RATE_LIMIT_POLICY: policy, RATE_LIMIT_LEASE_MS: "1000" };
    const a = await gateway(vars);
    const b = await gateway(vars);
    let admitted = 0;
    for (let wave = 0; wave < 10; wave++) {
      const codes = await Promise.all(Array.from({ length: 50 }, (_, i) => {
        const gw = i % 2 ? a : b;
        return gw.fetch("/g/x", as(`g${process.pid}-${wave * 50 + i}`)).then((r) => r.status);
      }));
      admitted += codes.filter((c) => c === 200).length;
      assert.ok(admitted <= 50, `${admitted} admitted after wave ${wave}: the global limit is 50`);
    }
    // Leases end within their horizon and go back (off the response path); fresh callers drain the rest.
    await sleep(3000);
    for (let i = 0; i < 200 && admitted < 50; i++) {
      if ((await (i % 2 ? a : b).fetch("/g/x", as(fresh("late"))).then((r) => r.status)) === 200) admitted++;
    }
    const extra = await a.fetch("/g/x", as(fresh("over")));
    assert.equal(extra.status, 429, "nothing beyond the allowance");
    assert.equal(admitted, 50, "exactly the global allowance once the leases are back");
    console.log(`MEASURED global 50 over 500 callers on ${SHARDS} shards: ${admitted} admitted`);
  });

  test("many users: every shard's share of REST calls within ±15 % of the mean", async () => {
    const gw = await gateway();
    const before = await Promise.all(rests.map(async (r) => (await r.stats()).calls));
    for (let batch = 0; batch < 20; batch++) {
      await Promise.all(Array.from({ length: 40 }, () => gw.fetch("/many", as(fresh("m")))));
    }
    const calls = (await Promise.all(rests.map(async (r) => (await r.stats()).calls))).map((c, i) => c - before[i]);
    const mean = calls.reduce((a, b) => a + b, 0) / SHARDS;
    console.log(`MEASURED REST calls per shard for 800 users: ${calls.join(", ")} (mean ${mean})`);
    for (const c of calls) assert.ok(Math.abs(c - mean) <= 0.15 * mean, `${calls} against a mean of ${mean}`);
  });

  test("everything else spread out: RPC, the quota endpoint, a candidate policy, metrics", async () => {
    const policy = JSON.stringify({ rules: [{ name: "api", route: "/s/*", limits: [
      { name: "caller", capacity: 3, refill: "3/d" },
      { name: "per-ip", by: "ip", capacity: 100, refill: "100/d" },
      { name: "global", by: "global", capacity: 1000, refill: "1000/d" },
    ] }] });
    const candidate = JSON.stringify({ rules: [{ name: "api", route: "/s/*", limits: [{ name: "caller", capacity: 1, refill: "1/d" }] }] });
    const admin = "shards-admin-token-0123456789";
    const vars = {
      UPSTASH_REDIS_REST_URL: rests.map((r) => r.url).join(","),
      UPSTASH_REDIS_REST_TOKEN: TOKEN,
      ORIGIN_URL: origin.url,
      USER_ID_HEADER: "x-user-id",
      REDIS_TIMEOUT_MS: "5000",
      RATE_LIMIT_POLICY: policy,
      RATE_LIMIT_POLICY_CANDIDATE: candidate,
      QUOTA_PATH: "/quota",
      ADMIN_TOKEN: admin,
      METRICS_FLUSH_MS: "0",
    };
    const w = await startWithCaller(vars);
    gateways.push(w);
    // RPC: a key's zero-config limit, on its own shard; a rule's limits across shards.
    const key = fresh("rpc");
    const results = await w.calls(7, "limit", { key });
    assert.equal(results.filter((r) => r.value?.success).length, 5, JSON.stringify(results[0]));
    const user = fresh("all");
    const ruled = [];
    for (let i = 0; i < 4; i++) ruled.push((await w.call("limit", { key: user, rule: "api" })).success);
    assert.deepEqual(ruled, [true, true, true, false], "the rule's own limit of 3, its other limits on other shards");
    // HTTP requests of another caller; the quota endpoint reads every limit where it lives.
    const http = fresh("http");
    const codes = [];
    for (let i = 0; i < 4; i++) codes.push((await w.fetch("/s/x", { headers: { "x-user-id": http } })).status);
    assert.deepEqual(codes, [200, 200, 200, 429]);
    const quota = await w.fetch("/quota?path=/s/x", { headers: { "x-user-id": http } });
    assert.equal(quota.status, 200, quota.text);
    const limits = JSON.parse(quota.text).limits;
    assert.deepEqual(limits.map((l) => l.name).sort(), ["caller", "global", "per-ip"]);
    assert.equal(limits.find((l) => l.name === "caller").remaining, 0);
    // The candidate policy was compared on the same requests (its keys beside the caller's).
    let report;
    for (let i = 0; i < 50; i++) {
      report = JSON.parse((await w.fetch("/__ratelimit/candidate", { headers: { authorization: `Bearer ${admin}` } })).text);
      if (report.limits?.[0]?.would_deny >= 2) break;
      await sleep(50);
    }
    assert.ok(report.limits[0].would_deny >= 2, JSON.stringify(report));
    const metrics = await w.fetch("/__ratelimit/metrics", { headers: { authorization: `Bearer ${admin}` } });
    assert.match(metrics.text, /ratelimit_requests_total/);
    const status = JSON.parse((await w.fetch("/__ratelimit/status.json", { headers: { authorization: `Bearer ${admin}` } })).text);
    assert.deepEqual(status.databases.map((d) => d.reachable), [true, true, true, true]);
  });

  test("in-flight slots and settled costs spread out: released and settled on their shards", async () => {
    const policy = JSON.stringify({ rules: [{ name: "held", route: "/h/*", limits: [
      { name: "inflight", by: "user", concurrency: 2, slot_ttl_seconds: 30 },
      { name: "global", by: "global", capacity: 1000, refill: "1000/d" },
    ] }] });
    const gw = await gateway({ RATE_LIMIT_POLICY: policy, RATE_LIMIT_LEASES: "off" });
    const user = fresh("held");
    const first = await Promise.all(Array.from({ length: 2 }, () => gw.fetch("/h/x", as(user)).then((r) => r.status)));
    assert.deepEqual(first, [200, 200]);
    await sleep(300); // released after the responses, in a batch per shard
    const again = await Promise.all(Array.from({ length: 2 }, () => gw.fetch("/h/x", as(user)).then((r) => r.status)));
    assert.deepEqual(again, [200, 200], "both slots free again");
    const slots = await holders(`rate:{${user}}:/h/%2A!inflight`);
    assert.ok(slots.length <= 1, "the slots live on the caller's shard only");
  });

  test("one database down: only its callers get the fail mode's answer", async () => {
    const gw = await gateway({ FAIL_MODE: "closed", REDIS_TIMEOUT_MS: "1000" });
    // Who lives where: a request's bucket appears on its shard.
    const users = Array.from({ length: 24 }, () => fresh("down"));
    const home = {};
    for (const u of users) {
      assert.equal((await gw.fetch("/d", as(u))).status, 200);
      [home[u]] = await holders(`rate:{${u}}:/d`);
    }
    await rests[1].stop();
    try {
      for (const u of users) {
        const status = (await gw.fetch("/d", as(u))).status;
        assert.equal(status, home[u] === 1 ? 503 : 200, `${u} on shard ${home[u]}`);
      }
      assert.ok(users.some((u) => home[u] === 1) && users.some((u) => home[u] !== 1), "callers on both sides");
    } finally {
      rests[1] = await startRest(redis[1].port);
    }
  });
});
