// In-flight limits and costs settled from the response, end to end: the built Worker in Miniflare,
// a real Redis behind the local REST endpoint, and an origin that delays, reports usage and streams.
// Slots are taken in the decision's one script call and released after the response (waitUntil);
// reserved costs are charged or refunded once. Figures print as `MEASURED …`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startRedis, startRest, startGateway, TOKEN, warm } from "./harness.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let n = 0;
const freshUser = (name) => `${name}-${process.pid}-${++n}`;

/** An origin that delays (`/slow?ms=`), reports usage in a header (`/usage?n=`), streams server-sent
 * events (`/stream?n=`, the last event carrying `usage.total_tokens`; the second part only once the
 * test says `release()`), or streams forever (`/forever`). Records what it served. */
async function startOrigin() {
  const served = [];
  let inFlight = 0;
  let peak = 0;
  let gate = null;
  const opened = new Set();
  const chatty = new Set(); // the users whose /chatty stream is still open
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://o");
    served.push(url.pathname);
    inFlight++;
    peak = Math.max(peak, inFlight);
    res.on("close", () => inFlight--);
    if (url.pathname.endsWith("/slow")) {
      await sleep(Number(url.searchParams.get("ms") ?? 500));
      res.writeHead(200, { "content-type": "text/plain" }).end("slow");
    } else if (url.pathname.endsWith("/usage")) {
      const headers = { "content-type": "application/json" };
      if (url.searchParams.has("n")) headers["x-usage-tokens"] = url.searchParams.get("n");
      res.writeHead(200, headers).end("{}");
    } else if (url.pathname.endsWith("/stream")) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write('data: {"choices":[{"delta":"hel"}]}\n\n');
      const waited = new Promise((r) => (gate = r));
      const early = await Promise.race([waited.then(() => true), sleep(5000).then(() => false)]);
      res.write(`data: {"choices":[{"delta":"lo"}],"early":${early}}\n\n`);
      if (url.searchParams.has("n")) res.write(`data: {"usage":{"total_tokens":${url.searchParams.get("n")}}}\n\n`);
      res.end("data: [DONE]\n\n");
    } else if (url.pathname.endsWith("/crlf")) {
      // CRLF line ends, the usage event split across writes (mid-line and between CR and LF).
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const part of ['data: {"choices":[]}\r\n\r\ndata: {"usage":{"total_', 'tokens":30}}\r', "\n\r\n", "data: [DONE]\r\n\r\n"]) {
        res.write(part);
        await sleep(20);
      }
      res.end();
    } else if (url.pathname.endsWith("/chatty")) {
      // The usage first, then events of `size` bytes every 5 ms, never ending (until the client leaves).
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(`data: {"usage":{"total_tokens":${url.searchParams.get("n") ?? 30}}}\n\n`);
      const size = Number(url.searchParams.get("size") ?? 31);
      const event = `data: ${"x".repeat(Math.max(0, size - 8))}\n\n`;
      const timer = setInterval(() => res.write(event), 5);
      const user = req.headers["x-user-id"];
      chatty.add(user);
      res.on("close", () => {
        clearInterval(timer);
        chatty.delete(user);
      });
    } else if (url.pathname.endsWith("/forever")) {
      // An event, then a keep-alive comment every 250 ms (as SSE servers send): a runtime notices a
      // client gone only when it next writes to it.
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: {}\n\n");
      const timer = setInterval(() => res.write(": keep-alive\n\n"), 250);
      opened.add(res);
      res.on("close", () => {
        clearInterval(timer);
        opened.delete(res);
      });
    } else {
      res.writeHead(200).end("ok");
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    served,
    peak: () => peak,
    resetPeak: () => (peak = inFlight),
    release: () => gate?.(),
    open: () => opened.size,
    streaming: (user) => chatty.has(user),
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

let redis, rest, origin;
const gateways = [];
before(async () => {
  redis = await startRedis();
  rest = await startRest(redis.port, { faults: false });
  origin = await startOrigin();
});
after(async () => {
  for (const g of gateways) await g.stop();
  await origin?.stop();
  await rest?.stop();
  await redis?.stop();
});

const POLICY = JSON.stringify({
  rules: [
    { name: "api", route: "/api/*", limits: [{ name: "inflight", by: "user", concurrency: 2, slot_ttl_seconds: 3 }] },
    {
      name: "llm",
      route: "/v1/*",
      limits: [{ name: "tokens", by: "user", capacity: 100, refill: "1/d", cost: { reserve: 10, settle: "header:x-usage-tokens", strip: true } }],
    },
    {
      name: "sse",
      route: "/sse/*",
      limits: [
        { name: "sse-tokens", by: "user", capacity: 100, refill: "1/d", cost: { reserve: 10, settle: "sse:usage.total_tokens" } },
        { name: "sse-inflight", by: "user", concurrency: 5 },
      ],
    },
  ],
});

async function gateway(extra = {}) {
  const gw = await startGateway({
    UPSTASH_REDIS_REST_URL: rest.url,
    UPSTASH_REDIS_REST_TOKEN: TOKEN,
    ORIGIN_URL: origin.url,
    REDIS_TIMEOUT_MS: "5000",
    USER_ID_HEADER: "x-user-id",
    RATE_LIMIT_POLICY: POLICY,
    ...extra,
  });
  gateways.push(gw);
  return gw;
}

const as = (user) => ({ headers: { "x-user-id": user } });
// REST calls the gateways made: the endpoint's count less this file's own reads through it.
let own = 0;
const read = (...command) => {
  own++;
  return rest.redis(...command);
};
const calls = async () => (await rest.stats()).calls - own;
const tokens = async (key) => Number(await read("HGET", key, "tokens"));
/** Polls `f` until it returns true (the release runs after the response, off its path). */
async function eventually(f, what, ms = 5000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await f()) return;
    await sleep(25);
  }
  assert.fail(`not within ${ms} ms: ${what}`);
}
const live = (key) => read("ZCOUNT", key, `(${Date.now()}`, "+inf");

describe("in-flight limits", () => {
  let a, b;
  before(async () => {
    a = await gateway();
    b = await gateway();
    // Warm: the script loaded (NOSCRIPT, EVAL), each isolate past its first call and its read of which
    // overrides exist (after the metrics report), so the tests count only their own REST calls.
    for (const g of [a, b]) assert.equal((await g.fetch("/api/slow?ms=1", as(freshUser("warm")))).status, 200);
    for (const g of [a, b]) await warm(g, rest, "/api/slow?ms=1");
  });

  test("concurrency 2, 5 at once: exactly 2 reach the origin, 3 get 429; then the next 2", async () => {
    const user = freshUser("c");
    const key = `rate:{${user}}:/api/%2A!inflight`;
    origin.resetPeak();
    const before = await calls();
    const served = origin.served.length;
    const first = await Promise.all(Array.from({ length: 5 }, () => a.fetch("/api/slow?ms=500", as(user))));
    assert.equal(origin.served.length - served, 2, "exactly 2 reached the origin");
    const statuses = first.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 429, 429, 429]);
    const denied = first.find((r) => r.status === 429);
    assert.equal(denied.headers.get("retry-after"), "1");
    assert.equal(JSON.parse(denied.text).type, "urn:edge-ratelimit:problem:too-many-concurrent");
    assert.equal(denied.headers.get("ratelimit"), '"inflight";r=0;t=1');
    await eventually(async () => (await live(key)) === 0, "both slots released after their responses");
    const decided = (await calls()) - before;
    // The two releases are batched: one call when the responses end within the batch's wait, else two.
    assert.ok(decided >= 5 + 1 && decided <= 5 + 2, `one call per decision, the releases batched: ${decided}`);
    console.log(`MEASURED in-flight: 5 requests → ${decided} REST calls (5 decisions, ${decided - 5} batched release calls)`);
    const next = await Promise.all(Array.from({ length: 2 }, () => a.fetch("/api/slow?ms=100", as(user))));
    assert.deepEqual(next.map((r) => r.status), [200, 200], "freed slots are taken again");
    const other = await a.fetch("/api/slow?ms=1", as(freshUser("other")));
    assert.equal(other.status, 200, "a second user is unaffected");
  });

  test("20 responses ending together: their releases batched, a fraction of a REST call each", async () => {
    const users = Array.from({ length: 20 }, () => freshUser("batch"));
    const before = await calls();
    const rs = await Promise.all(users.map((u) => a.fetch("/api/slow?ms=50", as(u))));
    assert.deepEqual([...new Set(rs.map((r) => r.status))], [200]);
    for (const u of users) await eventually(async () => (await live(`rate:{${u}}:/api/%2A!inflight`)) === 0, `${u}: released`);
    const releases = (await calls()) - before - 20;
    assert.ok(releases >= 1 && releases <= 5, `20 releases in at most 5 calls (0.25 a request): ${releases}`);
    console.log(`MEASURED in-flight, 20 users at once: ${releases} release calls for 20 requests`);
  });

  test("two Worker instances share the slots exactly", async () => {
    const user = freshUser("two");
    const all = await Promise.all(
      Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).fetch("/api/slow?ms=600", as(user))),
    );
    assert.equal(all.filter((r) => r.status === 200).length, 2, all.map((r) => r.status).join(","));
  });

  test("a response abandoned mid-stream releases its slot", async () => {
    const user = freshUser("gone");
    const key = `rate:{${user}}:/api/%2A!inflight`;
    const url = new URL((await a.mf.ready).toString());
    await new Promise((resolve, reject) => {
      const req = http.request({ host: url.hostname, port: url.port, path: "/api/forever", headers: { "x-user-id": user, host: "gateway.test" } }, (res) => {
        assert.equal(res.statusCode, 200);
        res.once("data", () => {
          req.destroy(); // the client goes away with the stream still open
          resolve();
        });
      });
      req.on("error", () => {});
      req.on("close", resolve);
      setTimeout(() => reject(new Error("no first event")), 5000);
      req.end();
    });
    // (Well within the slot's TTL of 3 s: released, not expired.)
    await eventually(async () => (await live(key)) === 0, "the abandoned response's slot released", 1500);
  });

  // Issue 23, item 2, on the slot-only path (the runtime's own pipe): several event sizes, an origin that
  // never ends.
  for (const size of [23, 31, 1000]) {
    test(`a client gone from a never-ending stream (${size}-byte events) releases its slot at once`, async () => {
      const user = freshUser(`gone${size}`);
      const key = `rate:{${user}}:/api/%2A!inflight`;
      const url = new URL((await a.mf.ready).toString());
      await new Promise((resolve, reject) => {
        const headers = { "x-user-id": user, host: "gateway.test" };
        const req = http.request({ host: url.hostname, port: url.port, path: `/api/chatty?size=${size}`, headers }, (res) => {
          assert.equal(res.statusCode, 200);
          res.once("data", () => {
            req.destroy();
            resolve();
          });
        });
        req.on("error", () => {});
        setTimeout(() => reject(new Error("no first event")), 5000);
        req.end();
      });
      await eventually(async () => (await live(key)) === 0, "released, well within its TTL of 3 s", 1500);
      await eventually(async () => !origin.streaming(user), "the origin's stream closed too");
    });
  }

  test("an instance stopped while holding a slot: the slot frees after its TTL (3 s)", async () => {
    const user = freshUser("stopped");
    const key = `rate:{${user}}:/api/%2A!inflight`;
    const doomed = await gateway();
    const pending = doomed.fetch("/api/slow?ms=8000", as(user)).catch(() => null);
    await eventually(async () => (await live(key)) === 1, "the slot taken");
    await doomed.stop();
    await pending;
    assert.equal(await live(key), 1, "no release came: the slot is still held");
    await eventually(async () => (await live(key)) === 0, "expired after slot_ttl_seconds", 6000);
  });
});

describe("costs settled from the response", () => {
  let gw;
  before(async () => {
    gw = await gateway();
    await warm(gw, rest, "/api/warm");
  });

  for (const [reported, left] of [["30", 70], ["2", 98], [null, 90]]) {
    test(`reserve 10, the origin reports ${reported ?? "nothing"} → ${left} left`, async () => {
      const user = freshUser("h");
      const key = `rate:{${user}}:/v1/%2A#tokens`;
      const before = await calls();
      const r = await gw.fetch(`/v1/usage${reported === null ? "" : `?n=${reported}`}`, as(user));
      assert.equal(r.status, 200);
      assert.equal(r.headers.get("x-usage-tokens"), null, "stripped: the limit says strip");
      await eventually(async () => Math.round(await tokens(key)) === left, `${left} left`);
      const used = (await calls()) - before;
      assert.equal(used, reported === null ? 1 : 2, "one decision, and one settle call (a batch of one) when there is a difference");
    });
  }

  test("from an SSE stream: unbuffered, the last event's usage.total_tokens, once", async () => {
    const user = freshUser("s");
    const key = `rate:{${user}}:/sse/%2A#sse-tokens`;
    const res = await gw.mf.dispatchFetch("http://gateway.test/sse/stream?n=30", { headers: { "cf-connecting-ip": "203.0.113.7", "x-user-id": user } });
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    assert.match(first, /"hel"/, "the first event arrives while the origin still holds the rest");
    origin.release();
    let rest_ = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest_ += new TextDecoder().decode(value);
    }
    assert.match(rest_, /"early":true/, "the origin was released by the client seeing the first event: not buffered");
    assert.match(rest_, /total_tokens":30/, "events pass through unchanged");
    await eventually(async () => Math.round(await tokens(key)) === 70, "70 left");
    await eventually(async () => (await live(`rate:{${user}}:/sse/%2A!sse-inflight`)) === 0, "its slot released too");
  });

  // Issue 23, item 2: a client that leaves right after the usage event while the origin keeps streaming
  // released nothing and paid the reservation (with ~31-byte events: the JavaScript pipe that reads
  // usage never learnt the client had left). Several event sizes, a never-ending origin.
  for (const size of [23, 31, 64, 1000, 16_384]) {
    test(`a client gone after the usage event of a never-ending stream (${size}-byte events): released and settled`, async () => {
      const user = freshUser(`leave${size}`);
      const key = `rate:{${user}}:/sse/%2A#sse-tokens`;
      const url = new URL((await gw.mf.ready).toString());
      await new Promise((resolve, reject) => {
        const headers = { "x-user-id": user, host: "gateway.test", "cf-connecting-ip": "203.0.113.7" };
        const req = http.request({ host: url.hostname, port: url.port, path: `/sse/chatty?n=30&size=${size}`, headers }, (res) => {
          assert.equal(res.statusCode, 200);
          let seen = "";
          res.on("data", (chunk) => {
            seen += chunk;
            if (seen.includes("total_tokens")) {
              req.destroy(); // gone, with the origin still streaming
              resolve();
            }
          });
        });
        req.on("error", () => {});
        setTimeout(() => reject(new Error("no usage event")), 5000);
        req.end();
      });
      await eventually(async () => (await live(`rate:{${user}}:/sse/%2A!sse-inflight`)) === 0, "its slot released");
      await eventually(async () => Math.round(await tokens(key)) === 70, "settled at its usage: 70 left");
      await eventually(async () => !origin.streaming(user), "the origin's stream closed too");
    });
  }

  test("a stream with CRLF line ends, its usage event split across chunks", async () => {
    const user = freshUser("crlf");
    const key = `rate:{${user}}:/sse/%2A#sse-tokens`;
    assert.equal((await gw.fetch("/sse/crlf", as(user))).status, 200);
    await eventually(async () => Math.round(await tokens(key)) === 70, "70 left");
  });

  test("a stream without usage settles at the reservation", async () => {
    const user = freshUser("s0");
    const key = `rate:{${user}}:/sse/%2A#sse-tokens`;
    const p = gw.fetch("/sse/stream", as(user));
    await sleep(50);
    origin.release();
    assert.equal((await p).status, 200);
    await eventually(async () => (await live(`rate:{${user}}:/sse/%2A!sse-inflight`)) === 0, "released");
    assert.equal(Math.round(await tokens(key)), 90);
  });

  test("a charge beyond what is left leaves debt that later RateLimit fields show", async () => {
    const user = freshUser("debt");
    const key = `rate:{${user}}:/v1/%2A#tokens`;
    await gw.fetch("/v1/usage?n=150", as(user));
    await eventually(async () => Math.round(await tokens(key)) === -50, "in debt");
    const denied = await gw.fetch("/v1/usage?n=1", as(user));
    assert.equal(denied.status, 429);
    assert.match(denied.headers.get("ratelimit"), /"tokens";r=0;t=\d+/);
    assert.ok(Number(denied.headers.get("retry-after")) >= 60 * 86_400 - 60, denied.headers.get("retry-after"));
  });
});
