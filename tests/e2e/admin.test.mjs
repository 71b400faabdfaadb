// Operations end to end in the built Worker: the admin API (off without a token, reserved prefix,
// bearer auth), a user's limit changed with one PUT and applied on the next request in the same single
// Redis call, metrics scraped as Prometheus text, a sliding-window rule, and REST calls per request
// with overrides and metrics on.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { startStack } from "./harness.mjs";

const ADMIN = "e2e-admin-token-0123456789abcdef";
const auth = { authorization: `Bearer ${ADMIN}` };

describe("admin API", () => {
  let stack, off, gw;
  before(async () => {
    stack = await startStack();
    off = await stack.gateway({});
    gw = await stack.gateway({
      ADMIN_TOKEN: ADMIN,
      RATE_LIMIT_POLICY: JSON.stringify({
        rules: [
          { name: "search", route: "/search", algorithm: "sliding-window", limits: [{ name: "search-user", capacity: 3, refill: "3/min" }] },
          { name: "api", route: "/api/*", limits: [{ name: "api-user", capacity: 5, refill: "5/min" }] },
        ],
      }),
    });
  });
  after(() => stack?.stop());

  const stats = () => stack.rest.stats();
  const evalshas = async () => (await stats()).commands.EVALSHA ?? 0;

  test("off without ADMIN_TOKEN: every spelling of the prefix is 404 and never reaches the origin", async () => {
    const seen = stack.origin.requests.length;
    for (const p of ["/__ratelimit/policy", "/__ratelimit/status", "/%5F_ratelimit/policy", "//__ratelimit/metrics"]) {
      const r = await off.fetch(p, { headers: auth });
      assert.equal(r.status, 404, p);
      assert.equal(r.headers.get("content-type"), "application/problem+json");
    }
    assert.equal(stack.origin.requests.length, seen);
  });

  test("bearer auth: 401 without or with a wrong token, the OpenAPI document with the right one", async () => {
    assert.equal((await gw.fetch("/__ratelimit/policy")).status, 401);
    const wrong = await gw.fetch("/__ratelimit/policy", { headers: { authorization: `Bearer ${ADMIN}x` } });
    assert.equal(wrong.status, 401);
    assert.match(wrong.headers.get("www-authenticate"), /^Bearer realm=/);
    const doc = await gw.fetch("/__ratelimit/openapi.json", { headers: auth });
    assert.equal(doc.status, 200);
    assert.equal(doc.json().openapi, "3.1.0");
    assert.ok(doc.json().paths["/__ratelimit/overrides/{scope}/{name}"].put);
    const policy = (await gw.fetch("/__ratelimit/policy", { headers: auth })).json();
    assert.equal(policy.policy.rules[0].limits[0].algorithm, "sliding-window");
    assert.equal(policy.metrics_flush_ms, 10000);
  });

  test("one PUT changes a user's limit on the next request, still one Redis call per decision", async () => {
    const get = (user) => gw.fetch("/api/orders", { headers: { "x-user-id": user } });
    assert.equal((await get("ana")).headers.get("ratelimit-policy"), '"api-user";q=5;w=60');
    const put = await gw.fetch("/__ratelimit/overrides/user/ana", {
      method: "PUT",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ capacity: 2, refill: "2/min" }),
    });
    assert.equal(put.status, 200, put.text);
    assert.deepEqual({ scope: put.json().scope, name: put.json().name, capacity: put.json().capacity }, { scope: "user", name: "ana", capacity: 2 });

    const before = await stats();
    const allowed = await get("ana"); // 4 tokens left, capped at the new capacity 2
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers.get("ratelimit-policy"), '"api-user";q=2;w=60');
    assert.equal(await evalshas(), (before.commands.EVALSHA ?? 0) + 1);
    const mid = await stats();
    // One REST call decides (the override read in the same script); after the response, this isolate
    // reads which overrides exist again, as it does after every change made through it.
    assert.equal(mid.calls - before.calls, 2, "allowed: one REST call, then the overrides read");
    assert.equal((await get("ana")).status, 200);
    const denied = await get("ana");
    assert.equal(denied.status, 429);
    assert.equal(denied.headers.get("ratelimit-policy"), '"api-user";q=2;w=60');
    const after = await stats();
    assert.equal(after.calls - mid.calls, 2, "one REST call for the last allowed request and one for the denial");
    console.log(`MEASURED REST calls per request with an override and metrics on: allowed 1, denied 1 (deny cache then 0)`);
    const cached = await get("ana");
    assert.equal(cached.status, 429);
    assert.equal((await stats()).calls, after.calls, "a known-empty caller costs no call");
    assert.equal((await get("ben")).headers.get("ratelimit-policy"), '"api-user";q=5;w=60', "only ana");

    const list = (await gw.fetch("/__ratelimit/overrides", { headers: auth })).json();
    assert.deepEqual(list.overrides.map((o) => `${o.scope}:${o.name}`), ["user:ana"]);
    const bad = await gw.fetch("/__ratelimit/overrides/user/ana", { method: "PUT", headers: auth, body: '{"capacity":"lots","refill":"2/min"}' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json().field, "capacity");
    assert.equal((await gw.fetch("/__ratelimit/overrides/user/ana", { method: "DELETE", headers: auth })).status, 200);
    assert.equal((await gw.fetch("/__ratelimit/buckets?user=ana&path=/api/orders", { method: "DELETE", headers: auth })).json().deleted, 1);
    const back = await get("ana");
    assert.equal(back.status, 200, "the reset forgot this isolate's cached denial");
    assert.equal(back.headers.get("ratelimit-policy"), '"api-user";q=5;w=60');
  });

  test("a sliding-window rule: the limit within the window, its state peeked without consuming", async () => {
    const search = () => gw.fetch("/search", { headers: { "x-user-id": "sam" } });
    const codes = [];
    for (let i = 0; i < 5; i++) codes.push((await search()).status);
    assert.deepEqual(codes, [200, 200, 200, 429, 429]);
    const peek = await gw.fetch("/__ratelimit/buckets?user=sam&path=/search", { headers: auth });
    assert.equal(peek.status, 200, peek.text);
    assert.equal(peek.json().limits[0].algorithm, "sliding-window");
    assert.equal(peek.json().limits[0].remaining, 0);
    assert.equal(peek.json().allowed_now, false);
    const fields = await stack.rest.redis("HGETALL", "rate:{sam}:/search#search-user");
    assert.ok(fields.includes("previous"), `stored as a window: ${fields}`);
  });

  test("metrics: scraped as Prometheus text, global across isolates, reported off the response path", async () => {
    const a = await stack.gateway({ ADMIN_TOKEN: ADMIN, METRICS_FLUSH_MS: "0" });
    const b = await stack.gateway({ ADMIN_TOKEN: ADMIN, METRICS_FLUSH_MS: "0" });
    const metricCommands = (c) => (c.HINCRBY ?? 0) + (c.ZINCRBY ?? 0) + (c.ZREMRANGEBYRANK ?? 0);
    const before = await stats();
    for (const g of [a, b]) for (let i = 0; i < 4; i++) await g.fetch("/m", { headers: { "x-user-id": "max" } });
    const line = 'edge_ratelimit_requests_total{rule="default",tier="none",outcome="denied"} 3';
    let text = "";
    let polls = 0;
    for (let i = 0; i < 50 && !text.includes(line); i++) {
      polls++;
      text = (await a.fetch("/__ratelimit/metrics", { headers: auth })).text;
      if (!text.includes(line)) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(text.includes(line), text);
    const after = await stats();
    const scripts = (c) => (c.EVALSHA ?? 0) + (c.EVAL ?? 0);
    const reports = after.calls - before.calls - (scripts(after.commands) - scripts(before.commands)) - polls;
    const perReport = (metricCommands(after.commands) - metricCommands(before.commands)) / reports;
    console.log(`MEASURED metrics: ${reports} reports after 8 requests (METRICS_FLUSH_MS=0), ${perReport.toFixed(1)} Redis commands per report, 0 on the decision's call`);
    assert.ok(reports >= 1 && reports <= 8, `${reports} reports`);
    assert.ok(text.includes('edge_ratelimit_requests_total{rule="default",tier="none",outcome="allowed"} 5\n'), text);
    // 8 decisions of `a` and `b`, plus whatever the policy gateway above has reported (its first
    // request at once, the rest within its 10 s interval).
    assert.ok(Number(text.match(/^edge_ratelimit_decision_seconds_count (\d+)$/m)?.[1]) >= 8, text);
    assert.match(text, /^edge_ratelimit_redis_seconds_bucket\{le="\+Inf"\} \d+$/m);
  });
});
