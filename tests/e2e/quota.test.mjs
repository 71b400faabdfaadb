// Issue 14 end to end, the built Worker in Miniflare with Redis and the REST endpoint: the caller quota
// endpoint (what the next request's fields show, nothing consumed, only the caller's own buckets, a
// bucket of its own) and the candidate policy (same call, keys of its own, the admin report, a broken
// document that leaves the live policy working).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { ROOT, startStack, startWithCaller, TOKEN } from "./harness.mjs";

const QUOTA = "/.well-known/ratelimit";
const ADMIN = "quota-test-admin-token-0123456789";
const KEYS = path.join(ROOT, "tests/keys");
const POLICY = {
  rules: [
    { name: "export", methods: ["POST"], route: "/export/*", limits: [{ name: "exports", capacity: 5, refill: "5/h" }] },
    { name: "search", route: "/search", limits: [{ name: "searches", by: "ip", capacity: 3, refill: "3/h" }] },
  ],
};
const CANDIDATE = {
  rules: [{ name: "export", methods: ["POST"], route: "/export/*", limits: [{ name: "exports", capacity: 2, refill: "2/h" }] }],
};

/** An ES256 token (checked by workerd's WebCrypto: the quota read waits for the signature as a request does). */
function es256(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "ES256", typ: "JWT", kid: "ec-1" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  const key = createPrivateKey({ key: JSON.parse(readFileSync(path.join(KEYS, "ec-1.private.jwk.json"), "utf8")), format: "jwk" });
  return `${body}.${sign("sha256", Buffer.from(body), { key, dsaEncoding: "ieee-p1363" }).toString("base64url")}`;
}

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => stack?.stop());

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;
const field = (r) => r.headers.get("ratelimit");

describe("the caller quota endpoint", () => {
  let g;
  before(async () => {
    g = await stack.gateway({ RATE_LIMIT_POLICY: JSON.stringify(POLICY), QUOTA_PATH: QUOTA, JWT_JWKS: readFileSync(path.join(KEYS, "jwks.json"), "utf8") });
  });

  test("reads what the next request's RateLimit field shows, and 50 reads consume nothing", async () => {
    const as = { headers: { "x-user-id": fresh("reader") } };
    for (let i = 0; i < 50; i++) {
      const q = await g.fetch(`${QUOTA}?method=POST&path=/export/a.csv`, as);
      assert.equal(q.status, 200, q.text);
      assert.equal(q.json().limits[0].remaining, 5);
      assert.equal(field(q), '"exports";r=5;t=0');
      assert.equal(q.headers.get("ratelimit-policy"), '"exports";q=5;w=3600');
      assert.equal(q.headers.get("x-origin"), null, "answered by the gateway, never the origin");
    }
    for (let i = 0; i < 5; i++) {
      const r = await g.fetch("/export/b", { method: "POST", ...as });
      assert.equal(r.status, 200, `request ${i + 1} of 5`);
      const q = await g.fetch(`${QUOTA}?method=POST&path=/export/b`, as);
      assert.equal(field(q).split(";t=")[0], field(r).split(";t=")[0], "the read after a request shows that request's r");
    }
    assert.equal((await g.fetch("/export/b", { method: "POST", ...as })).status, 429);
    const empty = (await g.fetch(`${QUOTA}?method=POST&path=/export/b`, as)).json();
    assert.equal(empty.allowed_now, false);
    assert.ok(empty.limits[0].retry_after_ms >= 1);
  });

  test("never reveals another caller's bucket: a forged header beside a verified token, another IP", async () => {
    const victim = fresh("victim");
    for (let i = 0; i < 5; i++) await g.fetch("/export/x", { method: "POST", headers: { "x-user-id": victim } });
    const mine = await g.fetch(`${QUOTA}?method=POST&path=/export/x`, { headers: { authorization: `Bearer ${es256(fresh("me"))}`, "x-user-id": victim } });
    assert.equal(mine.status, 200, mine.text);
    assert.equal(mine.json().limits[0].remaining, 5, "the token's subject, not the forged header's");
    for (let i = 0; i < 3; i++) await g.fetch("/search", { ip: "192.0.2.77" });
    assert.equal((await g.fetch(`${QUOTA}?path=/search`, { ip: "192.0.2.77" })).json().limits[0].remaining, 0);
    assert.equal((await g.fetch(`${QUOTA}?path=/search`, { ip: "192.0.2.78" })).json().limits[0].remaining, 3);
  });

  test("is limited itself: 60 reads per caller, then 429", async () => {
    const as = { headers: { "x-user-id": fresh("greedy") } };
    const codes = await Promise.all(Array.from({ length: 61 }, () => g.fetch(`${QUOTA}?path=/search`, as).then((r) => r.status)));
    assert.equal(codes.filter((c) => c === 200).length, 60);
    const last = await g.fetch(`${QUOTA}?path=/search`, as);
    assert.equal(last.status, 429);
    assert.match(field(last), /^"quota";r=0;/);
    assert.ok(Number(last.headers.get("retry-after")) >= 1);
  });
});

describe("a candidate policy on live traffic", () => {
  test("capacity 2 beside a live 5: all 5 admitted, the report says 3 would have been denied; keys disjoint", async () => {
    const g = await stack.gateway({
      RATE_LIMIT_POLICY: JSON.stringify(POLICY),
      RATE_LIMIT_POLICY_CANDIDATE: JSON.stringify(CANDIDATE),
      ADMIN_TOKEN: ADMIN,
      METRICS_FLUSH_MS: "0",
    });
    const user = fresh("cand");
    const codes = [];
    for (let i = 0; i < 5; i++) codes.push((await g.fetch("/export/x", { method: "POST", headers: { "x-user-id": user } })).status);
    assert.deepEqual(codes, [200, 200, 200, 200, 200], "the candidate never blocks");
    const keys = (await stack.rest.redis("KEYS", `rate:*${user}*`)).sort();
    assert.deepEqual(keys, [`rate:{${user}}:/export/%2A#exports`, `rate:@candidate/{${user}}:/export/%2A#exports`].sort());
    let report;
    for (let i = 0; i < 50; i++) {
      report = (await g.fetch("/__ratelimit/candidate", { headers: { authorization: `Bearer ${ADMIN}` } })).json();
      if (report.limits[0].would_deny === 3) break;
      await new Promise((r) => setTimeout(r, 50)); // reports go out after the response (waitUntil)
    }
    assert.equal(report.limits[0].would_deny, 3, JSON.stringify(report));
    assert.equal(report.limits[0].would_allow, 0);
    assert.deepEqual(report.limits[0].top_callers, [{ caller: user, requests: 3 }]);
    assert.equal(report.limits[0].on_adoption, "keeps its live bucket");
    assert.ok(report.since_ms > 0 && report.since_ms <= Date.now());
  });

  test("a broken candidate is refused naming its variable; the live policy keeps working", async () => {
    const w = await startWithCaller({
      UPSTASH_REDIS_REST_URL: stack.rest.url,
      UPSTASH_REDIS_REST_TOKEN: TOKEN,
      REDIS_TIMEOUT_MS: "5000",
      ORIGIN_URL: stack.origin.url,
      RATE_LIMIT_POLICY: JSON.stringify(POLICY),
      RATE_LIMIT_POLICY_CANDIDATE: '{"rules": [{"name": "x"}]}',
      ADMIN_TOKEN: ADMIN,
    });
    try {
      const r = await w.fetch("/export/x", { method: "POST", headers: { "x-user-id": fresh("live") } });
      assert.equal(r.status, 200);
      assert.match(r.headers.get("ratelimit"), /^"exports";r=4;/);
      const report = await w.fetch("/__ratelimit/candidate", { headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(report.status, 422);
      const problem = JSON.parse(report.text);
      assert.equal(problem.variable, "RATE_LIMIT_POLICY_CANDIDATE");
      assert.match(problem.detail, /^RATE_LIMIT_POLICY_CANDIDATE: /);
      let line;
      for (let i = 0; i < 100 && !line; i++) {
        line = w.logs.map((l) => JSON.parse(l)).find((l) => l.event === "misconfigured");
        if (!line) await new Promise((res) => setTimeout(res, 20));
      }
      assert.equal(line?.variable, "RATE_LIMIT_POLICY_CANDIDATE", w.logs.join("\n"));
    } finally {
      await w.stop();
    }
  });
});
