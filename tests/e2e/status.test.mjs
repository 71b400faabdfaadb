// The admin status page (assets/status.html) in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): once against a fake status.json with hostile data (escaping, CSP, error handling),
// and once against the real Worker in Miniflare behind a tiny HTTP proxy (Chromium cannot load a
// dispatchFetch). Fails, never skips, when Chromium is missing: run scripts/setup.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { chromium } from "playwright-core";
import { ROOT, startStack } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const PAGE = path.join(ROOT, "assets/status.html");
const OUT = path.join(ROOT, "test-output");
const CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";
const PREFIX = "/__ratelimit/";
const ADMIN_TOKEN = "st4tus-page-admin-token-32chars!"; // 32 characters
const WRONG_TOKEN = "not-the-admin-token-0123456789ab";
assert.equal(ADMIN_TOKEN.length, 32);

test("Chromium is installed", () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM}: run scripts/setup (apt-get install chromium)`);
});

let browser;
before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium is not installed at ${CHROMIUM}: run scripts/setup (apt-get install chromium)`);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
});
after(async () => browser?.close());

const listen = (server) => new Promise((r) => server.listen(0, "127.0.0.1", () => r(`http://127.0.0.1:${server.address().port}`)));
const close = (server) => new Promise((r) => { server.closeAllConnections(); server.close(r); });
const readBody = (req) => new Promise((resolve, reject) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => resolve(Buffer.concat(chunks)));
  req.on("error", reject);
});

/**
 * A page at 1280×800 that records every request URL, console error and uncaught exception, and fails
 * on any dialog (an alert() would mean injected script ran).
 */
async function openPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const seen = { urls: [], consoleErrors: [], pageErrors: [], dialogs: [] };
  page.on("request", (r) => seen.urls.push(r.url()));
  page.on("console", (m) => { if (m.type() === "error") seen.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
  page.on("dialog", (d) => { seen.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  return { context, page, seen };
}

/** The only console errors allowed: Chromium's own log lines for replies the test provoked (401 for a wrong token). */
function assertCleanConsole(seen, statuses = [401]) {
  const expected = new RegExp(`^Failed to load resource: the server responded with a status of (${statuses.join("|")})\\b`);
  const unexpected = seen.consoleErrors.filter((t) => !expected.test(t));
  assert.deepEqual(unexpected, [], "console errors");
  assert.deepEqual(seen.pageErrors, [], "uncaught exceptions");
  assert.deepEqual(seen.dialogs, [], "dialogs (injected script?)");
}

function assertTokenNotInUrls(seen, ...tokens) {
  assert.ok(seen.urls.length > 0);
  for (const url of seen.urls) {
    for (const t of tokens) {
      for (const form of [t, encodeURIComponent(t)]) assert.ok(!url.includes(form), `token in requested URL ${url}`);
    }
  }
}

async function login(page, token) {
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
}

/** Numbers of the allowed/denied cells of every #rules row of `rule`, summed over tiers. */
const ruleTotals = (page, rule) => page.evaluate((rule) => {
  const n = (td) => Number(td.textContent.replace(/,/g, ""));
  const rows = [...document.querySelectorAll("#rules tbody tr")].filter((tr) => tr.dataset.rule === rule);
  return {
    rows: rows.length,
    allowed: rows.reduce((s, tr) => s + n(tr.querySelector("[data-col=allowed]")), 0),
    denied: rows.reduce((s, tr) => s + n(tr.querySelector("[data-col=denied]")), 0),
  };
}, rule);

/** The drawn chart series of `rule`: one array of per-poll values per series. */
const chartSeries = (page, rule) => page.evaluate((rule) => {
  const out = {};
  for (const p of document.querySelectorAll("#chart svg polyline.series")) {
    if (p.dataset.rule !== rule) continue;
    out[p.classList.contains("allowed") ? "allowed" : "denied"] = p.dataset.values.split(",").map(Number);
    out.points = p.getAttribute("points").trim().split(/\s+/).length;
  }
  return out;
}, rule);

const sum = (xs) => xs.reduce((a, b) => a + b, 0);

describe("status page against a fake status.json", () => {
  const HOSTILE = `<img src=x onerror=alert(1)>`;
  const HOSTILE_RULE = `"><svg onload=alert(2)>`;
  let server, base;
  let mode = "ok"; // "ok" | "503"
  let polls = 0;
  const requests = [];
  const status = () => ({
    generated_ms: Date.now(),
    flush_interval_ms: 10000,
    rules: [
      { rule: "orders", tier: "free", allowed: 10 + polls, denied: 3, shadow_denied: 1, failed_open: 0, failed_closed: 0 },
      { rule: "orders", tier: "premium", allowed: 5, denied: 0, shadow_denied: 0, failed_open: 2, failed_closed: 0 },
      { rule: HOSTILE_RULE, tier: "free", allowed: 1, denied: 1, shadow_denied: 0, failed_open: 0, failed_closed: 0 },
    ],
    latency: {
      decision_ms: { count: 13, p50: 1.5, p95: 4.2, p99: 9.0 },
      redis_ms: { count: 0, p50: null, p95: null, p99: null },
    },
    top_denied: [{ caller: HOSTILE, denied: 12 }, { caller: "alice", denied: 3 }],
    overrides: [
      { scope: "user", name: HOSTILE, capacity: 100, refill: "100/min", concurrency: null, expires_at_ms: null, created_at_ms: Date.now() },
      { scope: "ip", name: "192.0.2.1", capacity: null, refill: null, concurrency: 3, expires_at_ms: Date.UTC(2030, 0, 2), created_at_ms: Date.now() },
    ],
    noscript: 2,
    deny_cache_hits: 4,
    leases: { granted: 5000, spent: 4200, requests: 4200, returned: 700, lost: 20, outstanding: 80 },
    held: { slots_taken: 50, slots_released: 45, release_failed: 2, settled: 30, missing: 4, settle_failed: 0, repeated: 1, charged: 900, refunded: 120, slots_held: 3 },
  });

  before(async () => {
    server = createServer(async (req, res) => {
      await readBody(req);
      requests.push({ method: req.method, url: req.url, auth: req.headers.authorization });
      const send = (code, type, body) => {
        res.writeHead(code, { "content-type": type, "content-security-policy": CSP, "cache-control": "no-store" });
        res.end(body);
      };
      if (req.method === "GET" && req.url === `${PREFIX}status`) return send(200, "text/html; charset=utf-8", readFileSync(PAGE));
      if (req.method === "GET" && req.url === `${PREFIX}status.json`) {
        if (req.headers.authorization !== `Bearer ${ADMIN_TOKEN}`) return send(401, "application/problem+json", '{"status":401}');
        if (mode === "503") return send(503, "application/problem+json", '{"status":503}');
        polls++;
        return send(200, "application/json", JSON.stringify(status()));
      }
      send(404, "text/plain", "not found");
    });
    base = await listen(server);
  });
  after(async () => server && close(server));

  test("login, hostile names rendered as text, 503 then recovery, session kept on reload, sign out", async () => {
    const { context, page, seen } = await openPage();
    try {
      await page.goto(`${base}${PREFIX}status`);
      assert.ok(await page.isVisible("#login"));
      assert.ok(await page.isHidden("#dashboard"));
      assert.equal(await page.getAttribute("#token", "type"), "password");
      assert.equal(await page.getAttribute("#token", "autocomplete"), "current-password");

      await login(page, WRONG_TOKEN);
      await page.waitForFunction(() => /wrong token/i.test(document.querySelector("#error")?.textContent ?? "") && !document.querySelector("#error").hidden);
      assert.ok(await page.isVisible("#login"));
      assert.equal(await page.evaluate(() => Object.keys(sessionStorage).length), 0, "a wrong token is not kept");

      await login(page, ADMIN_TOKEN);
      await page.locator("#dashboard").waitFor({ state: "visible" });
      assert.ok(await page.isHidden("#login"));
      assert.ok(await page.isHidden("#error"));

      // Hostile strings are text, never markup.
      assert.equal(await page.locator("#top-denied li").first().textContent(), `${HOSTILE} — 12 denied`);
      assert.equal(await page.locator("#top-denied img").count(), 0);
      assert.equal(await page.locator("#overrides img, #rules svg, #chart svg svg, #chart svg img").count(), 0);
      assert.equal(await page.locator("#overrides tbody tr").count(), 2);
      const row = page.locator("#overrides tbody tr").first();
      assert.equal(await row.getAttribute("data-name"), HOSTILE);
      assert.deepEqual(await row.locator("td").allTextContents(), ["user", HOSTILE, "100", "100/min", "–", "never"]);
      // An override of in-flight slots only (issue 23, item 5).
      assert.deepEqual(await page.locator("#overrides tr[data-scope=ip] td").allTextContents(), ["ip", "192.0.2.1", "–", "–", "3", "2030-01-02T00:00:00Z"]);
      assert.equal(await page.locator("#overrides tr[data-scope=ip] td").last().textContent(), "2030-01-02T00:00:00Z");
      assert.equal(await page.locator("#chart svg g").filter({ hasText: "svg onload" }).count(), 1);
      assert.ok((await page.locator("#legend").textContent()).includes(HOSTILE_RULE));

      // Rules summed over tiers; latency with "–" for null; totals.
      const orders = await ruleTotals(page, "orders");
      assert.equal(orders.rows, 2);
      assert.equal(orders.denied, 3);
      assert.deepEqual(await page.locator("#latency tr[data-measure=decision_ms] td").allTextContents(), ["13", "1.5", "4.2", "9"]);
      assert.deepEqual(await page.locator("#latency tr[data-measure=redis_ms] td").allTextContents(), ["0", "–", "–", "–"]);
      assert.equal(await page.textContent("#noscript"), "2");
      assert.equal(await page.textContent("#deny-cache-hits"), "4");
      assert.equal(await page.textContent("#lease-requests"), (4200).toLocaleString("en-US"));
      assert.equal(await page.textContent("#lease-outstanding"), "80");
      assert.match(await page.textContent("#lease-returned"), /^700 \(20 lost\)$/);
      assert.equal(await page.textContent("#inflight-held"), "3 (2 releases failed)");
      assert.equal(await page.textContent("#settled"), "30 (+900 / −120 tokens), 4 without usage");
      assert.match(await page.textContent("#updated"), /\d/);

      // The next poll draws deltas: allowed grows by one per poll in the fake.
      await page.waitForFunction(() => document.querySelector("#chart polyline.series.allowed")?.dataset.values.split(",").length >= 2, null, { timeout: 10_000 });
      const s = await chartSeries(page, "orders");
      assert.equal(s.allowed[0], 16, "first sample: totals");
      assert.deepEqual(s.allowed.slice(1), s.allowed.slice(1).map(() => 1), "then per-poll deltas");
      assert.equal(s.denied[1], 0);

      // A 5xx shows the status and keeps polling; the next good reply clears it.
      mode = "503";
      await page.waitForFunction(() => /503/.test(document.querySelector("#error").textContent) && !document.querySelector("#error").hidden, null, { timeout: 10_000 });
      assert.ok(await page.isVisible("#dashboard"), "the last data stays on screen");
      mode = "ok";
      await page.locator("#error").waitFor({ state: "hidden", timeout: 10_000 });

      // The token lives in sessionStorage: a reload skips the form.
      await page.reload();
      await page.locator("#dashboard").waitFor({ state: "visible" });
      assert.ok(await page.isHidden("#login"));

      mkdirSync(OUT, { recursive: true });
      await page.screenshot({ path: path.join(OUT, "status-fake.png"), fullPage: true });

      await page.click("#logout");
      assert.ok(await page.isVisible("#login"));
      assert.equal(await page.evaluate(() => Object.keys(sessionStorage).length), 0);

      assertCleanConsole(seen, [401, 503]);
      assertTokenNotInUrls(seen, ADMIN_TOKEN, WRONG_TOKEN);
      for (const r of requests) assert.ok(!r.url.includes(ADMIN_TOKEN) && !r.url.includes(WRONG_TOKEN), r.url);
      const paths = new Set(requests.map((r) => `${r.method} ${r.url}`));
      assert.deepEqual([...paths].sort(), [`GET ${PREFIX}status`, `GET ${PREFIX}status.json`], "only the page and status.json, by GET");
    } finally {
      await context.close();
    }
  });
});

/** A node:http server on 127.0.0.1 that forwards every request to the Worker through dispatchFetch. */
async function startProxy(mf) {
  const HOP = new Set(["connection", "keep-alive", "transfer-encoding", "upgrade", "host", "proxy-connection", "te", "trailer"]);
  const server = createServer(async (req, res) => {
    try {
      const headers = {};
      for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v;
      headers["cf-connecting-ip"] = "127.0.0.1";
      const body = req.method === "GET" || req.method === "HEAD" ? undefined : await readBody(req);
      const reply = await mf.dispatchFetch(`http://${req.headers.host}${req.url}`, { method: req.method, headers, body, redirect: "manual" });
      const out = {};
      // dispatchFetch hands back a decoded body.
      reply.headers.forEach((v, k) => { if (k !== "content-encoding" && k !== "content-length" && !HOP.has(k)) out[k] = v; });
      const buf = Buffer.from(await reply.arrayBuffer());
      res.writeHead(reply.status, out);
      res.end(buf);
    } catch (e) {
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`proxy: ${e.message}`);
    }
  });
  return { url: await listen(server), stop: () => close(server) };
}

describe("status page against the real Worker", () => {
  let stack, gw, proxy;
  before(async () => {
    stack = await startStack();
    gw = await stack.gateway({ ADMIN_TOKEN, METRICS_FLUSH_MS: "0" }); // ADMIN_PREFIX: the default /__ratelimit/
    proxy = await startProxy(gw.mf);
  });
  after(async () => {
    await proxy?.stop();
    await stack?.stop();
  });

  const as = (user) => ({ headers: { "x-user-id": user } });
  async function traffic(user, n) {
    const codes = [];
    for (let i = 0; i < n; i++) codes.push((await gw.fetch("/api/orders", as(user))).status);
    return codes;
  }

  test("shows live rules, top denied callers, overrides, latency and a chart; only with the right token", async () => {
    // Zero-config default limit: 5 per minute per caller, rule "default".
    assert.deepEqual(await traffic("alice", 8), [200, 200, 200, 200, 200, 429, 429, 429]);
    assert.deepEqual(await traffic("bob", 2), [200, 200]);
    const put = await gw.fetch(`${PREFIX}overrides/user/carol`, {
      method: "PUT",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ capacity: 100, refill: "100/min" }),
    });
    assert.ok(put.status >= 200 && put.status < 300, `PUT override: ${put.status} ${put.text}`);
    assert.equal(put.headers.get("x-origin"), null, "the admin API answered, not the origin");

    const { context, page, seen } = await openPage();
    try {
      const resp = await page.goto(`${proxy.url}${PREFIX}status`);
      assert.equal(resp.status(), 200, `GET ${PREFIX}status`);
      assert.equal(resp.headers()["x-origin"], undefined, "the Worker served the page, not the origin");
      assert.match(resp.headers()["content-type"] ?? "", /^text\/html/);
      assert.ok(await page.isVisible("#login"));
      assert.ok(await page.isHidden("#dashboard"));

      await login(page, WRONG_TOKEN);
      await page.waitForFunction(() => /wrong token/i.test(document.querySelector("#error")?.textContent ?? "") && !document.querySelector("#error").hidden);
      assert.ok(await page.isVisible("#login"));

      await login(page, ADMIN_TOKEN);
      await page.locator("#dashboard").waitFor({ state: "visible" });
      assert.ok(await page.isHidden("#error"), await page.textContent("#error"));

      const first = await ruleTotals(page, "default");
      assert.ok(first.rows >= 1, "a #rules row for rule default");
      assert.deepEqual({ allowed: first.allowed, denied: first.denied }, { allowed: 7, denied: 3 }, "alice 5+3, bob 2+0");
      const top = await page.locator("#top-denied li").allTextContents();
      assert.ok(top.some((t) => t.startsWith("alice")), `top denied: ${top}`);
      assert.equal(await page.locator('#overrides tr[data-scope="user"][data-name="carol"]').count(), 1);
      // Every request is timed. Redis is called 9 times: 8 requests (alice's 2nd and 3rd denials come from the
      // deny cache) plus the EVAL that loads the script after the first request's NOSCRIPT.
      for (const [measure, count] of [["decision_ms", 10], ["redis_ms", 9]]) {
        const cells = await page.locator(`#latency tr[data-measure=${measure}] td`).allTextContents();
        assert.equal(Number(cells[0]), count, `${measure} count ${cells[0]}`);
        for (const p of cells.slice(1)) assert.match(p, /^\d+(\.\d+)?$/, `${measure} percentiles ${cells}`);
      }
      const s1 = await chartSeries(page, "default");
      assert.ok(s1.points >= 1 && sum(s1.allowed) === 7 && sum(s1.denied) === 3, `chart ${JSON.stringify(s1)}`);

      // More traffic: the next poll updates the table and adds a point to the chart.
      assert.deepEqual(await traffic("alice", 2), [429, 429]);
      assert.deepEqual(await traffic("dave", 3), [200, 200, 200]);
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll("#rules tbody tr")].filter((tr) => tr.dataset.rule === "default");
        return rows.reduce((s, tr) => s + Number(tr.querySelector("[data-col=denied]").textContent), 0) === 5;
      }, null, { timeout: 15_000 });
      const second = await ruleTotals(page, "default");
      assert.deepEqual({ allowed: second.allowed, denied: second.denied }, { allowed: 10, denied: 5 });
      const s2 = await chartSeries(page, "default");
      assert.ok(s2.points > s1.points, `chart points ${s1.points} -> ${s2.points}`);
      assert.equal(sum(s2.allowed), 10, `allowed series ${s2.allowed}`);
      assert.equal(sum(s2.denied), 5, `denied series ${s2.denied}`);
      assert.ok(s2.denied.slice(1).some((d) => d > 0), "a per-poll delta is drawn");
      assert.equal((await page.locator("#top-denied li").first().textContent()).split(" ")[0], "alice");

      mkdirSync(OUT, { recursive: true });
      const shot = path.join(OUT, "status.png");
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`status page screenshot: ${shot}`);

      assertCleanConsole(seen);
      assertTokenNotInUrls(seen, ADMIN_TOKEN, WRONG_TOKEN);
      for (const url of seen.urls) assert.ok(url.startsWith(proxy.url), `request off the page's origin: ${url}`);
    } finally {
      await context.close();
    }
  });
});

describe("status page with a candidate policy", () => {
  let stack, gw, proxy;
  const POLICY = { rules: [{ name: "orders", route: "/api/*", limits: [{ name: "orders-per-user", capacity: 5, refill: "5/h" }] }] };
  const CANDIDATE = { rules: [{ name: "orders", route: "/api/*", limits: [{ name: "orders-per-user", capacity: 2, refill: "2/h" }] }] };
  before(async () => {
    stack = await startStack();
    gw = await stack.gateway({
      ADMIN_TOKEN,
      METRICS_FLUSH_MS: "0",
      RATE_LIMIT_POLICY: JSON.stringify(POLICY),
      RATE_LIMIT_POLICY_CANDIDATE: JSON.stringify(CANDIDATE),
    });
    proxy = await startProxy(gw.mf);
  });
  after(async () => {
    await proxy?.stop();
    await stack?.stop();
  });

  test("shows what the candidate would have done differently (and a screenshot of it)", async () => {
    const codes = [];
    for (let i = 0; i < 5; i++) codes.push((await gw.fetch("/api/orders", { headers: { "x-user-id": "alice" } })).status);
    assert.deepEqual(codes, [200, 200, 200, 200, 200]);
    const { context, page, seen } = await openPage();
    try {
      await page.goto(`${proxy.url}${PREFIX}status`);
      await login(page, ADMIN_TOKEN);
      await page.locator("#candidate-section").waitFor({ state: "visible" });
      await page.waitForFunction(() => document.querySelector('#candidate tr[data-limit="orders-per-user"] [data-col=would_deny]')?.textContent === "3", null, { timeout: 15_000 });
      const row = await page.locator('#candidate tr[data-limit="orders-per-user"] td').allTextContents();
      assert.deepEqual(row, ["orders-per-user", "3", "0", "alice (3)", "keeps its live bucket"]);
      assert.match(await page.textContent("#candidate-summary"), /Counting since .* \(document [0-9a-f]{16}\)/);
      mkdirSync(OUT, { recursive: true });
      const shot = path.join(OUT, "status-candidate.png");
      await page.locator("#candidate-section").scrollIntoViewIfNeeded();
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`status page screenshot with the candidate's diff: ${shot}`);
      assertCleanConsole(seen);
    } finally {
      await context.close();
    }
  });
});
