// Identity and policy end to end: verified JWT callers and tiers, rules with several limits in one
// Redis call, shadow mode, allow and deny lists. Tokens are minted here with Node's crypto and the
// test keys in tests/keys.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { ROOT, startStack } from "./harness.mjs";

const SECRET = "an-e2e-secret-that-is-at-least-32-bytes-long";
const KEYS = path.join(ROOT, "tests/keys");
const JWKS = readFileSync(path.join(KEYS, "jwks.json"), "utf8");
const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
const now = () => Math.floor(Date.now() / 1000);

function token(claims, { alg = "HS256", kid, key = SECRET, header = {} } = {}) {
  const h = { alg, typ: "JWT", ...(kid ? { kid } : {}), ...header };
  const body = `${b64(h)}.${b64({ exp: now() + 600, ...claims })}`;
  if (alg === "none") return `${body}.`;
  if (alg === "HS256") return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
  const jwk = JSON.parse(readFileSync(path.join(KEYS, `${kid}.private.jwk.json`), "utf8"));
  const privateKey = createPrivateKey({ key: jwk, format: "jwk" });
  const opts = alg === "ES256" ? { key: privateKey, dsaEncoding: "ieee-p1363" } : privateKey;
  const sig = sign(alg === "EdDSA" ? null : "sha256", Buffer.from(body), opts);
  return `${body}.${sig.toString("base64url")}`;
}

const POLICY = {
  tiers: ["free", "premium"],
  default_tier: "free",
  deny: { ips: ["192.0.2.0/24"], users: ["banned"] },
  allow: { users: ["ops-bot"] },
  rules: [
    {
      name: "orders",
      route: "/users/:id/orders",
      limits: [
        { name: "orders-user", by: "user", capacity: 5, refill: "5/min", tiers: { premium: { capacity: 8, refill: "8/min" } } },
        { name: "orders-ip", by: "ip", capacity: 100, refill: "100/min" },
        { name: "orders-global", by: "global", capacity: 1000, refill: "1000/min" },
      ],
    },
    { name: "export", methods: ["POST"], route: "/export", limits: [{ name: "export-cost", capacity: 10, refill: "10/h", cost: 5 }] },
    { name: "tight", route: "/pair/*", limits: [{ name: "pair-tight", capacity: 2, refill: "1/h" }] },
    { name: "roomy", route: "/pair/*", limits: [{ name: "pair-roomy", capacity: 10, refill: "1/h" }] },
    { name: "trial", route: "/beta/*", shadow: true, limits: [{ name: "beta-shadow", capacity: 5, refill: "5/min" }] },
  ],
};

let stack;
let gw;
before(async () => {
  stack = await startStack();
  gw = await stack.gateway({
    JWT_SECRET: SECRET,
    JWT_JWKS: JWKS,
    JWT_MODE: "required",
    RATE_LIMIT_POLICY: JSON.stringify(POLICY),
  });
});
after(async () => stack?.stop());

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;
const bearer = (t, extra = {}) => ({ headers: { authorization: `Bearer ${t}`, ...extra } });
const calls = async () => (await stack.rest.stats()).calls;
const statuses = async (count, fn) => {
  const out = [];
  for (let i = 0; i < count; i++) out.push((await fn()).status);
  return out;
};

describe("JWT callers", () => {
  test("a premium token gets the premium limit, a free one the free limit", async () => {
    const premium = token({ sub: fresh("p"), tier: "premium" });
    const free = token({ sub: fresh("f"), tier: "free" });
    assert.deepEqual(await statuses(9, () => gw.fetch("/users/1/orders", bearer(premium))), [200, 200, 200, 200, 200, 200, 200, 200, 429]);
    assert.deepEqual(await statuses(6, () => gw.fetch("/users/1/orders", bearer(free))), [200, 200, 200, 200, 200, 429]);
    const r = await gw.fetch("/users/1/orders", bearer(token({ sub: fresh("none") })));
    assert.equal(r.headers.get("ratelimit-policy"), '"orders-user";q=5;w=60, "orders-ip";q=100;w=60, "orders-global";q=1000;w=60', "no tier claim: the default tier");
  });

  test("RS256, ES256 and EdDSA tokens from the JWKS verify inside the Worker", async () => {
    for (const [alg, kid] of [["RS256", "rsa-1"], ["ES256", "ec-1"], ["EdDSA", "ed-1"]]) {
      const r = await gw.fetch("/users/7/orders", bearer(token({ sub: fresh(alg) }, { alg, kid })));
      assert.equal(r.status, 200, `${alg}: ${r.text}`);
    }
  });

  test("expired, wrong-key, alg none and kid-confused tokens get 401 and Redis is untouched", async () => {
    const jwks = JSON.parse(JWKS);
    const cases = [
      ["expired", token({ sub: "a", exp: now() - 120 }), /expired/],
      ["wrong key", token({ sub: "a" }, { key: "another-secret-that-is-long-enough-to-pass" }), /signature is invalid/],
      ["alg none", token({ sub: "a" }, { alg: "none" }), /algorithm is not accepted/],
      ["HS256 with the RSA public key", token({ sub: "a" }, { kid: "rsa-1", key: JSON.stringify(jwks.keys[0]) }), /algorithm is not accepted/],
      ["unknown kid", token({ sub: "a" }, { kid: "nope" }), /key id \(kid\) is unknown/],
      ["embedded jwk", token({ sub: "a" }, { header: { jwk: { kty: "oct", k: "AAAA" } } }), /carry or point at their own key/],
      ["garbage", "not.a.token", /malformed/],
    ];
    for (const [name, t, reason] of cases) {
      const before = await calls();
      const r = await gw.fetch("/users/1/orders", bearer(t));
      assert.equal(r.status, 401, name);
      assert.match(r.headers.get("www-authenticate"), /^Bearer error="invalid_token"/, name);
      assert.equal(r.headers.get("content-type"), "application/problem+json");
      assert.match(r.json().detail, reason, name);
      assert.equal(await calls(), before, `${name}: no Redis call`);
    }
    const missing = await gw.fetch("/users/1/orders");
    assert.equal(missing.status, 401);
    assert.equal(missing.headers.get("www-authenticate"), "Bearer");
  });

  test("a forged x-user-id beside a valid token is ignored", async () => {
    const victim = fresh("victim");
    const t = token({ sub: fresh("attacker") });
    for (let i = 0; i < 5; i++) await gw.fetch("/users/1/orders", bearer(t, { "x-user-id": victim }));
    assert.equal(await stack.rest.redis("EXISTS", `rate:{${victim}}:/users/:id/orders#orders-user`), 0);
    const v = await gw.fetch("/users/1/orders", bearer(token({ sub: victim })));
    assert.match(v.headers.get("ratelimit"), /"orders-user";r=4;/);
  });
});

describe("rules", () => {
  test("/users/1 and /users/2 map to the template's key; three limits cost one REST call", async () => {
    const sub = fresh("tmpl");
    const t = token({ sub });
    const before = await calls();
    assert.equal((await gw.fetch("/users/1/orders", bearer(t))).status, 200);
    assert.equal(await calls(), before + 1, "three limits, one EVALSHA");
    const r = await gw.fetch("/users/2/orders", bearer(t));
    assert.match(r.headers.get("ratelimit"), /^"orders-user";r=3;/, "same bucket for another id");
    const keys = await stack.rest.redis("KEYS", `rate:{${sub}}:*`);
    assert.deepEqual(keys, [`rate:{${sub}}:/users/:id/orders#orders-user`]);
  });

  test("a cost of 5 takes 5 tokens; a cost above what is left is denied without debit", async () => {
    const t = token({ sub: fresh("cost") });
    const post = () => gw.fetch("/export", { method: "POST", ...bearer(t) });
    assert.equal((await post()).status, 200);
    assert.equal((await post()).status, 200);
    const denied = await post();
    assert.equal(denied.status, 429);
    assert.match(denied.headers.get("ratelimit"), /^"export-cost";r=0;/);
    assert.equal((await gw.fetch("/export", bearer(t))).status, 200, "GET is not under the POST rule");
  });

  test("two rules on one request deny together without debiting the other", async () => {
    const sub = fresh("pair");
    const t = token({ sub });
    assert.deepEqual(await statuses(3, () => gw.fetch("/pair/x", bearer(t))), [200, 200, 429]);
    const denied = await gw.fetch("/pair/x", bearer(t));
    assert.match(denied.headers.get("ratelimit"), /^"pair-tight";r=0;/, "the answer names the limit that denied");
    const fields = await stack.rest.redis("HGET", `rate:{${sub}}:/pair/%2A#pair-roomy`, "tokens");
    assert.ok(Math.abs(Number(fields) - 8) < 0.01, `roomy bucket paid only for the 2 admitted requests: ${fields}`);
  });

  test("shadow mode lets the 6th request through and marks it", async () => {
    const t = token({ sub: fresh("shadow") });
    const results = [];
    for (let i = 0; i < 6; i++) results.push(await gw.fetch("/beta/feature", bearer(t)));
    assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 200, 200, 200]);
    assert.equal(results[4].headers.get("x-ratelimit-status"), null);
    assert.equal(results[5].headers.get("x-ratelimit-status"), 'shadow; limit="beta-shadow"');
    assert.equal(results[5].headers.get("ratelimit"), null, "shadow limits are not advertised");
  });

  test("a request no rule matches is forwarded unlimited", async () => {
    const r = await gw.fetch("/elsewhere", bearer(token({ sub: fresh("free") })));
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("ratelimit"), null);
  });
});

describe("lists", () => {
  test("a deny-listed IP or user gets 403 with zero Redis calls; an allow-listed user is not limited", async () => {
    const before = await calls();
    const ip = await gw.fetch("/users/1/orders", { ip: "192.0.2.44", ...bearer(token({ sub: fresh("x") })) });
    assert.equal(ip.status, 403);
    assert.equal(ip.json().type, "urn:edge-ratelimit:problem:denied");
    const user = await gw.fetch("/users/1/orders", bearer(token({ sub: "banned" })));
    assert.equal(user.status, 403);
    assert.deepEqual(await statuses(8, () => gw.fetch("/users/1/orders", bearer(token({ sub: "ops-bot" })))), Array(8).fill(200));
    assert.equal(await calls(), before, "neither list asks Redis");
  });
});

describe("optional JWT", () => {
  test("a valid token wins over the header; without a token the header or IP identifies", async () => {
    const g = await stack.gateway({ JWT_SECRET: SECRET, JWT_MODE: "optional" });
    const sub = fresh("opt");
    await g.fetch("/o", bearer(token({ sub }), { "x-user-id": "someone-else" }));
    assert.equal(await stack.rest.redis("EXISTS", `rate:{${sub}}:/o`), 1);
    const hdr = fresh("hdr");
    await g.fetch("/o", { headers: { "x-user-id": hdr } });
    assert.equal(await stack.rest.redis("EXISTS", `rate:{${hdr}}:/o`), 1);
    assert.equal((await g.fetch("/o", bearer("broken"))).status, 401, "a token that is present must be valid");
  });
});
