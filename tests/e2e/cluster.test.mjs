// On a real Redis Cluster: 3 masters and 1 replica on loopback (scripts/cluster), crates/upstash-local
// in front of it (it finds out by itself that it talks to a cluster), and the built Worker with
// REDIS_CLUSTER=true. Exactness, leases, in-flight slots, overrides and the admin API; then, while
// traffic flows, a busy caller's slot moved to another master, and a master failed over to its
// replica: never more admitted than the limit allows, every request decided within REDIS_TIMEOUT_MS
// by the fail mode, and no CROSSSLOT anywhere. Figures print as `MEASURED …`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:http";
import os from "node:os";
import path from "node:path";
import { freePort, ROOT, startGateway, startRest, TOKEN } from "./harness.mjs";

const ADMIN = "admin-token-0123456789abcdef";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let dir;
let base;
let rest;
let origin;
const gateways = [];

function cli(port, ...args) {
  const r = spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { encoding: "utf8" });
  if (r.error) throw new Error(`redis-cli is not installed: run scripts/setup (${r.error.message})`);
  return r.stdout.trim();
}

/** A base port whose 4 ports and their bus ports (+10000) are free, all below the ephemeral range
 * (32768 on): a client connection's local port there would make a node's bind fail. */
async function freeBase() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const p = 20000 + Math.floor(Math.random() * 2700);
    const free = [0, 1, 2, 3].every((i) => spawnSync("bash", ["-c", `! (exec 3<>/dev/tcp/127.0.0.1/${p + i}) 2>/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/${p + i + 10000}) 2>/dev/null`]).status === 0);
    if (free) return p;
  }
  return freePort();
}

before(async () => {
  let why = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    dir = mkdtempSync(path.join(os.tmpdir(), "e2e-cluster-"));
    base = await freeBase();
    const started = spawnSync(path.join(ROOT, "scripts/cluster"), ["start", dir, String(base)], { encoding: "utf8" });
    if (started.status === 0) break;
    why += `base ${base}: ${started.stderr}${started.stdout}\n`;
    spawnSync(path.join(ROOT, "scripts/cluster"), ["stop", dir], { encoding: "utf8" });
    dir = null;
  }
  if (!dir) throw new Error(`scripts/cluster start failed three times:\n${why}`);
  rest = await startRest(base, { faults: false });
  origin = await slowOrigin();
});

after(async () => {
  for (const g of gateways) await g.stop();
  await rest?.stop();
  await origin?.stop();
  if (dir) spawnSync(path.join(ROOT, "scripts/cluster"), ["stop", dir], { encoding: "utf8" });
});

/** An origin that answers 200, after `?ms=` milliseconds on `/slow`. */
async function slowOrigin() {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname.startsWith("/slow")) await sleep(Number(url.searchParams.get("ms") ?? 300));
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

async function gateway(vars = {}) {
  const gw = await startGateway({
    UPSTASH_REDIS_REST_URL: rest.url,
    UPSTASH_REDIS_REST_TOKEN: TOKEN,
    REDIS_CLUSTER: "true",
    ORIGIN_URL: origin.url,
    USER_ID_HEADER: "x-user-id",
    ADMIN_TOKEN: ADMIN,
    METRICS_FLUSH_MS: "0",
    REDIS_TIMEOUT_MS: "5000",
    ...vars,
  });
  gateways.push(gw);
  return gw;
}

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;
const as = (user) => ({ headers: { "x-user-id": user } });
const admin = (gw, method, target, body) =>
  gw.fetch(`/__ratelimit/${target}`, { method, headers: { authorization: `Bearer ${ADMIN}` }, body });
/** The master port that holds `key`'s slot (CLUSTER NODES: `id ip:port@bus flags master … ranges`). */
function owner(key) {
  const slot = Number(cli(base, "CLUSTER", "KEYSLOT", key));
  for (const line of cli(base, "CLUSTER", "NODES").split("\n")) {
    const f = line.trim().split(" ");
    if (!f[2]?.includes("master")) continue;
    for (const range of f.slice(8)) {
      if (range.startsWith("[")) continue; // (a slot being migrated or imported)
      const [from, to = from] = range.split("-").map(Number);
      if (slot >= from && slot <= to) return { slot, port: Number(f[1].split("@")[0].split(":")[1]) };
    }
  }
  throw new Error(`no master for slot ${slot}`);
}
const nodeId = (port) => cli(port, "CLUSTER", "MYID");

describe("a Redis Cluster (3 masters, 1 replica) through upstash-local", () => {
  test("200 concurrent requests of one caller, capacity 5: exactly 5", async () => {
    const gw = await gateway();
    const user = fresh("one");
    const answers = await Promise.all(Array.from({ length: 200 }, () => gw.fetch("/api/x", as(user))));
    const codes = answers.map((r) => r.status);
    assert.equal(codes.filter((c) => c === 200).length, 5);
    assert.equal(codes.filter((c) => c === 429).length, 195, "every other request a plain 429: no CROSSSLOT, no fail mode");
    assert.deepEqual(answers.map((r) => r.headers.get("x-ratelimit-status")).filter(Boolean), [], "none decided by the fail mode");
  });

  test("a global limit of 50 shared by 500 callers in every slot: at most 50, exactly 50 once leases are back", async () => {
    const policy = JSON.stringify({ rules: [{ name: "api", route: "/g/*", limits: [
      { name: "caller", capacity: 3, refill: "3/d" },
      { name: "global", by: "global", capacity: 50, refill: "50/d" },
      { name: "ip", by: "ip", capacity: 1000, refill: "1000/d" },
    ] }] });
    const vars = { RATE_LIMIT_POLICY: policy, RATE_LIMIT_LEASE_MS: "1000" };
    const a = await gateway(vars);
    const b = await gateway(vars);
    let admitted = 0;
    const statuses = new Set();
    const degraded = [];
    for (let wave = 0; wave < 10; wave++) {
      const codes = await Promise.all(Array.from({ length: 50 }, (_, i) =>
        (i % 2 ? a : b).fetch("/g/x", as(`cg${process.pid}-${wave * 50 + i}`)).then((r) => {
          if (r.headers.get("x-ratelimit-status")) degraded.push(r.headers.get("x-ratelimit-status"));
          return r.status;
        })));
      codes.forEach((c) => statuses.add(c));
      admitted += codes.filter((c) => c === 200).length;
      assert.ok(admitted <= 50, `${admitted} admitted after wave ${wave}`);
    }
    assert.deepEqual([...statuses].sort(), [200, 429], "decided, never failed (no CROSSSLOT)");
    assert.deepEqual(degraded, [], "no request decided by the fail mode (every master runs the script)");
    await sleep(3000);
    for (let i = 0; i < 200 && admitted < 50; i++) {
      if ((await (i % 2 ? a : b).fetch("/g/x", as(fresh("late"))).then((r) => r.status)) === 200) admitted++;
    }
    assert.equal((await a.fetch("/g/x", as(fresh("over")))).status, 429);
    assert.equal(admitted, 50, "exactly the global allowance once the leases are back");
    console.log(`MEASURED cluster: global 50 over 500 callers, ${admitted} admitted`);
  });

  test("in-flight slots: concurrency 2, 5 at once → 2 reach the origin; released after the responses", async () => {
    const policy = JSON.stringify({ rules: [{ name: "slow", route: "/slow", limits: [
      { name: "inflight", by: "user", concurrency: 2, slot_ttl_seconds: 30 },
    ] }] });
    const gw = await gateway({ RATE_LIMIT_POLICY: policy });
    const user = fresh("held");
    const codes = await Promise.all(Array.from({ length: 5 }, () => gw.fetch("/slow?ms=400", as(user)).then((r) => r.status)));
    assert.deepEqual(codes.sort(), [200, 200, 429, 429, 429]);
    await sleep(300); // the releases go after the responses, batched
    const again = await Promise.all(Array.from({ length: 2 }, () => gw.fetch("/slow?ms=10", as(user)).then((r) => r.status)));
    assert.deepEqual(again, [200, 200], "both slots free again");
  });

  test("overrides: a caller's own holds at once; tier and route overrides are refused with a reason", async () => {
    const gw = await gateway();
    const user = fresh("ovr");
    const put = await admin(gw, "PUT", `overrides/user/${user}`, JSON.stringify({ capacity: 2, refill: "2/min" }));
    assert.equal(put.status, 200, put.text);
    const codes = [];
    for (let i = 0; i < 3; i++) codes.push((await gw.fetch("/o", as(user))).status);
    assert.deepEqual(codes, [200, 200, 429]);
    const route = await admin(gw, "PUT", "overrides/route/o", JSON.stringify({ capacity: 9, refill: "9/min" }));
    assert.equal(route.status, 409);
    assert.match(route.json().detail, /REDIS_CLUSTER/);
    const list = await admin(gw, "GET", "overrides");
    assert.ok(list.json().overrides.some((o) => o.name === user), "the index lists it");
    assert.equal((await admin(gw, "DELETE", `overrides/user/${user}`)).status, 200);
  });

  test("admin: peek, reset and metrics across the masters", async () => {
    const gw = await gateway();
    const user = fresh("adm");
    for (let i = 0; i < 3; i++) await gw.fetch("/a", as(user));
    const peek = await admin(gw, "GET", `buckets?user=${user}&path=/a`);
    assert.equal(peek.status, 200, peek.text);
    assert.equal(peek.json().limits[0].remaining, 2);
    assert.equal(peek.json().limits[0].key, `rate:{${user}}:/a`);
    const reset = await admin(gw, "DELETE", `buckets?user=${user}&path=/a`);
    assert.equal(reset.json().deleted, 1, reset.text);
    assert.equal((await admin(gw, "GET", `buckets?user=${user}&path=/a`)).json().limits[0].remaining, 5);
    const metrics = await admin(gw, "GET", "metrics");
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /ratelimit_requests_total/);
    const keys = await rest.redis("KEYS", "rate:*");
    const masters = new Set(keys.map((k) => owner(k).port));
    assert.ok(masters.size >= 2, `keys on ${masters.size} masters`);
  });

  test("while traffic flows, a busy caller's slot moves to another master: never over the limit, every request in time", async () => {
    const gw = await gateway({ RATE_LIMIT_CAPACITY: "30", RATE_LIMIT_REFILL: "30/d", FAIL_MODE: "closed", REDIS_TIMEOUT_MS: "2000" });
    const user = fresh("move");
    const key = `rate:{${user}}:/m`;
    await gw.fetch("/m", as(user)); // the key exists
    const { slot, port: from } = owner(key);
    const to = [base, base + 1, base + 2].find((p) => p !== from);
    const results = [];
    let running = true;
    const traffic = (async () => {
      while (running) {
        const t = Date.now();
        const status = (await gw.fetch("/m", as(user))).status;
        results.push({ status, ms: Date.now() - t });
      }
    })();
    await sleep(100);
    const src = nodeId(from);
    const dst = nodeId(to);
    cli(to, "CLUSTER", "SETSLOT", String(slot), "IMPORTING", src);
    cli(from, "CLUSTER", "SETSLOT", String(slot), "MIGRATING", dst);
    await sleep(100); // (requests meet ASK while the slot is migrating)
    for (const k of cli(from, "CLUSTER", "GETKEYSINSLOT", String(slot), "100").split("\n").filter(Boolean)) {
      cli(from, "MIGRATE", "127.0.0.1", String(to), k, "0", "5000");
    }
    for (const p of [to, from, ...[base, base + 1, base + 2, base + 3].filter((x) => x !== to && x !== from)]) {
      cli(p, "CLUSTER", "SETSLOT", String(slot), "NODE", dst);
    }
    await sleep(300);
    running = false;
    await traffic;
    assert.equal(owner(key).port, to, "the slot moved");
    const admitted = results.filter((r) => r.status === 200).length + 1;
    const slowest = Math.max(...results.map((r) => r.ms));
    console.log(`MEASURED reshard under traffic: ${results.length} requests, ${admitted} admitted of 30, slowest ${slowest} ms, statuses ${[...new Set(results.map((r) => r.status))]}`);
    assert.ok(admitted <= 30, `${admitted} admitted: the capacity is 30`);
    assert.ok(results.every((r) => [200, 429, 503].includes(r.status)), "decided, or the fail mode's answer");
    assert.ok(slowest < 2000 + 1500, `every request decided within REDIS_TIMEOUT_MS (+ margin): ${slowest} ms`);
    assert.ok(results.filter((r) => r.status !== 503).length > results.length / 2, "most requests decided by Redis");
  });

  test("while traffic flows, a master fails over to its replica: never over the limit, every request in time", async () => {
    const gw = await gateway({ RATE_LIMIT_CAPACITY: "40", RATE_LIMIT_REFILL: "40/d", FAIL_MODE: "closed", REDIS_TIMEOUT_MS: "2000" });
    // A caller whose slot the first master (the one with a replica) holds.
    let user;
    for (let i = 0; ; i++) {
      user = `fo-${process.pid}-${i}`;
      if (owner(`rate:{${user}}:/f`).port === base) break;
    }
    const results = [];
    let running = true;
    const traffic = (async () => {
      while (running) {
        const t = Date.now();
        const status = (await gw.fetch("/f", as(user))).status;
        results.push({ status, ms: Date.now() - t });
      }
    })();
    await sleep(150);
    assert.equal(cli(base + 3, "CLUSTER", "FAILOVER"), "OK");
    for (let i = 0; i < 100 && !/role:master/.test(cli(base + 3, "INFO", "replication")); i++) await sleep(50);
    await sleep(500);
    running = false;
    await traffic;
    assert.match(cli(base + 3, "INFO", "replication"), /role:master/, "the replica took over");
    const admitted = results.filter((r) => r.status === 200).length;
    const slowest = Math.max(...results.map((r) => r.ms));
    console.log(`MEASURED failover under traffic: ${results.length} requests, ${admitted} admitted of 40, slowest ${slowest} ms, statuses ${[...new Set(results.map((r) => r.status))]}`);
    assert.ok(admitted <= 40, `${admitted} admitted: the capacity is 40`);
    assert.ok(results.every((r) => [200, 429, 503].includes(r.status)), "decided, or the fail mode's answer");
    assert.ok(slowest < 2000 + 1500, `every request decided within REDIS_TIMEOUT_MS (+ margin): ${slowest} ms`);
    const after = (await gw.fetch("/f", as(user))).status;
    assert.ok([200, 429].includes(after), "decided by Redis again after the failover");
  });
});
