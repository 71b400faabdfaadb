// Side-by-side benchmark: this Worker, the published @upstash/ratelimit (the anchor), a Worker that makes
// one plain REST call then forwards (the limit Worker), a forward-only Worker (the floor) and, for the
// hot user, a Worker that answers 429 itself — each in its own workerd (Miniflare), against one Redis,
// one local REST endpoint and one origin, all on 127.0.0.1. Scenarios run interleaved, ROUNDS times,
// and the medians are reported. Load comes from wrk. Bounded: SECONDS per run (default 5).
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { Miniflare } from "miniflare";
import { COMPATIBILITY, ROOT, TOKEN, startRedis, startRest, freePort } from "../tests/e2e/harness.mjs";

const SECONDS = Number(process.env.SECONDS_PER_RUN ?? 5);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 32);
const OUT = path.join(ROOT, "bench/results");
mkdirSync(OUT, { recursive: true });
const TICK_US = 1e6 / Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());
const progress = (msg) => process.stderr.write(`\r\x1b[K${msg}`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// ---- the stack ----
const redis = await startRedis();
const rest = await startRest(redis.port, { faults: true });
const originPort = await freePort();
const origin = spawn("node", [path.join(ROOT, "scripts/demo-origin.mjs")], { env: { ...process.env, PORT: String(originPort) }, stdio: "ignore" });
await new Promise((r) => setTimeout(r, 300));
const ORIGIN_URL = `http://127.0.0.1:${originPort}`;
const vars = { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: TOKEN, ORIGIN_URL };

// ---- the workers ----
const bundle = (name) => {
  const out = path.join(OUT, `${name}.bundle.js`);
  execFileSync(path.join(ROOT, "node_modules/.bin/esbuild"), [path.join(ROOT, `bench/workers/${name}.js`), "--bundle",
    "--format=esm", "--platform=neutral", "--main-fields=module,main", "--conditions=workerd,worker,browser", "--external:cloudflare:workers", `--outfile=${out}`, "--log-level=warning"]);
  return out;
};
const workerdPids = () => new Set(readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((p) => {
  try { return readFileSync(`/proc/${p}/comm`, "utf8").trim() === "workerd" && readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" ")[1] === String(process.pid); } catch { return false; }
}));
const rustOptions = (dir = "build/worker") => ({
  modules: true,
  scriptPath: path.join(ROOT, dir, "shim.mjs"),
  modulesRoot: path.join(ROOT, dir),
  modulesRules: [{ type: "ESModule", include: ["**/*.js", "**/*.mjs"] }, { type: "CompiledWasm", include: ["**/*.wasm"] }],
});
const jsOptions = (file) => ({ modules: true, scriptPath: file });
async function startWorker(name, options, extra = {}) {
  const before = workerdPids();
  const mf = new Miniflare({ ...options, ...COMPATIBILITY, bindings: { ...vars, ...extra } });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const pid = [...workerdPids()].find((p) => !before.has(p));
  return { name, mf, url, pid };
}
/** A caller Worker bound to a RateLimiter entrypoint (edge-ratelimit's, or `limiter`), both in one workerd (requests go to the caller). */
async function startRpcWorker(name, callerFile, limiter = { ...rustOptions(), bindings: vars }) {
  const before = workerdPids();
  const mf = new Miniflare({
    workers: [
      { name: "caller", modules: true, scriptPath: callerFile, ...COMPATIBILITY, bindings: { ORIGIN_URL },
        serviceBindings: { LIMITER: { name: "edge-ratelimit", entrypoint: "RateLimiter" } } },
      { name: "edge-ratelimit", ...COMPATIBILITY, ...limiter },
    ],
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const pid = [...workerdPids()].find((p) => !before.has(p));
  return { name, mf, url, pid };
}
const js = Object.fromEntries(["anchor", "anchor-fixed", "forward", "limit", "deny", "deny-fields", "rpc-caller", "rpc-floor"].map((n) => [n, bundle(n)]));
// Every Worker a scenario may drive, as a function that starts it: only the chosen scenarios' Workers start.
const defs = {
  "edge-ratelimit": () => startWorker("edge-ratelimit", rustOptions()),
  // This Worker's fixed window (issue 25); its rows run only if this build has it (FIXED_WINDOW below).
  "edge-ratelimit (fixed window)": () => startWorker("edge-ratelimit (fixed window)", rustOptions(), { RATE_LIMIT_ALGORITHM: "fixed-window" }),
  // The same Worker with the admin API on: metrics counted per request, reported every 10 s (waitUntil).
  "edge-ratelimit + metrics": () => startWorker("edge-ratelimit + metrics", rustOptions(), { ADMIN_TOKEN: "bench-admin-token-0123456789" }),
  "@upstash/ratelimit": () => startWorker("@upstash/ratelimit", jsOptions(js.anchor)),
  // The anchor's fixed window: Ratelimit.fixedWindow(5, "60 s"), the same key.
  "@upstash/ratelimit (fixed window)": () => startWorker("@upstash/ratelimit (fixed window)", jsOptions(js["anchor-fixed"])),
  // A user's Worker calling env.LIMITER.limit({ key }) over a service binding, then forwarding itself.
  "RPC caller → edge-ratelimit": () => startRpcWorker("RPC caller → edge-ratelimit", js["rpc-caller"]),
  // The same caller bound to an entrypoint that only makes one REST call (or, for the hot user, denies at once).
  "RPC caller → RPC floor": () => startRpcWorker("RPC caller → RPC floor", js["rpc-caller"], { modules: true, scriptPath: js["rpc-floor"], bindings: { ...vars, FLOOR: "limit" } }),
  "RPC caller → RPC 429 floor": () => startRpcWorker("RPC caller → RPC 429 floor", js["rpc-caller"], { modules: true, scriptPath: js["rpc-floor"], bindings: { ...vars, FLOOR: "deny" } }),
  "limit Worker": () => startWorker("limit Worker", jsOptions(js.limit)),
  "forward-only": () => startWorker("forward-only", jsOptions(js.forward)),
  "answers 429": () => startWorker("answers 429", jsOptions(js.deny)),
  // Plain JS sending the very 429 edge-ratelimit sends (body and fields): what that answer costs by itself.
  "answers our 429": () => startWorker("answers our 429", jsOptions(js["deny-fields"])),
  // The same Rust entry and glue doing only the floor's work (build/floor, feature bench-floor).
  "wasm limit floor": () => startWorker("wasm limit floor", rustOptions("build/floor"), { BENCH_FLOOR: "limit" }),
  "wasm 429 floor": () => startWorker("wasm 429 floor", rustOptions("build/floor"), { BENCH_FLOOR: "deny" }),
};

// The in-flight and settled-cost rows: the same per-user rate limit as a policy, alone, beside an
// in-flight limit (a slot taken in the decision's call, released after the response), and with its cost
// settled from the response (the demo origin's content-length as the usage: a settle call per request).
const policyOf = (...limits) => JSON.stringify({ rules: [{ name: "api", route: "/*", limits: [{ name: "per-user", capacity: 1000, refill: "1000/min", ...limits[0] }, ...limits.slice(1)] }] });
Object.assign(defs, {
  "edge-ratelimit, policy": () => startWorker("edge-ratelimit, policy", rustOptions(), { RATE_LIMIT_POLICY: policyOf({}) }),
  "edge-ratelimit, + in-flight limit": () => startWorker("edge-ratelimit, + in-flight limit", rustOptions(), { RATE_LIMIT_POLICY: policyOf({}, { name: "inflight", concurrency: 4 }) }),
  "edge-ratelimit, settled cost": () => startWorker("edge-ratelimit, settled cost", rustOptions(), { RATE_LIMIT_POLICY: policyOf({ cost: { reserve: 1, settle: "header:content-length" } }) }),
});

// The busy-key rows: one API key under a 100,000/min limit, two instances of each Worker driven at once.
const BUSY = { RATE_LIMIT_CAPACITY: "100000", RATE_LIMIT_REFILL: "100000/min", ANCHOR_CAPACITY: "100000" };
async function startPair(name, options, extra) {
  const a = await startWorker(`${name} #1`, options, extra);
  const b = await startWorker(`${name} #2`, options, extra);
  return { name, pair: [a, b] };
}
Object.assign(defs, {
  "edge-ratelimit ×2": () => startPair("edge-ratelimit", rustOptions(), BUSY),
  "edge-ratelimit (fixed window) ×2": () => startPair("edge-ratelimit (fixed window)", rustOptions(), { ...BUSY, RATE_LIMIT_ALGORITHM: "fixed-window" }),
  "edge-ratelimit ×2, leases off": () => startPair("edge-ratelimit, leases off", rustOptions(), { ...BUSY, RATE_LIMIT_LEASES: "off" }),
  "@upstash/ratelimit ×2": () => startPair("@upstash/ratelimit", jsOptions(js.anchor), BUSY),
  "@upstash/ratelimit (fixed window) ×2": () => startPair("@upstash/ratelimit (fixed window)", jsOptions(js["anchor-fixed"]), BUSY),
  "limit Worker ×2": () => startPair("limit Worker", jsOptions(js.limit), BUSY),
  "forward-only ×2": () => startPair("forward-only", jsOptions(js.forward), BUSY),
});

// The realistic mix (bench/wrk/zipf.lua: callers drawn from a Zipf distribution, s = 1.1, over 100,000
// ids), two instances each. Every request is under a per-caller limit (100 tokens, 25/s: at about 1,000
// req/s the busiest few callers are denied part of the time, the tail never) and a per-route limit
// (100,000/min: a cap protecting the origin, not reached here). This Worker: one rule with both limits
// (one call, all or nothing); the anchor: two Ratelimit instances, both asked on every request (its
// honest cost: bench/workers/anchor.js), 100 per 4 s per caller (its token bucket refills once per interval).
const zipfPolicy = (algorithm) => JSON.stringify({ rules: [{ name: "api", route: "/api/*", ...(algorithm && { algorithm }), limits: [
  { name: "per-caller", by: "user", capacity: 100, refill: "25/s" },
  { name: "per-route", by: "global", capacity: 100000, refill: "100000/min" },
] }] });
const ZIPF_ANCHOR = { ANCHOR_CAPACITY: "100", ANCHOR_WINDOW: "4 s", ANCHOR_ROUTE_CAPACITY: "100000", ANCHOR_ROUTE_WINDOW: "60 s" };
// Rows a scenario starts for itself (the same names as other scenarios' rows, another configuration).
const zipfWorkers = {
  "edge-ratelimit ×2": () => startPair("edge-ratelimit, zipf", rustOptions(), { RATE_LIMIT_POLICY: zipfPolicy() }),
  "edge-ratelimit (fixed window) ×2": () => startPair("edge-ratelimit (fixed window), zipf", rustOptions(), { RATE_LIMIT_POLICY: zipfPolicy("fixed-window") }),
  "@upstash/ratelimit ×2": () => startPair("@upstash/ratelimit, zipf", jsOptions(js.anchor), ZIPF_ANCHOR),
  "@upstash/ratelimit (fixed window) ×2": () => startPair("@upstash/ratelimit (fixed window), zipf", jsOptions(js["anchor-fixed"]), ZIPF_ANCHOR),
};

// COMPARE_DIR=build/<dir>: another build of the Worker beside this one in every scenario (an A/B of a change).
const COMPARE = process.env.COMPARE_DIR ? `edge-ratelimit @ ${process.env.COMPARE_DIR}` : null;
if (COMPARE) defs[COMPARE] = () => startWorker(COMPARE, rustOptions(process.env.COMPARE_DIR));

const cpuTicks = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return Number(f[11]) + Number(f[12]); // utime + stime of the whole workerd process
};
async function redisCommands() {
  const info = await rest.redis("INFO", "commandstats");
  let total = 0;
  for (const m of info.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)) if (m[1] !== "info") total += Number(m[2]);
  return total;
}
/** wrk against `url` with `connections`, to the end of its run: its RESULT line's numbers. `args` go to the script's `init`. */
function wrk(url, scenario, connections, args) {
  // Written once per scenario: two wrk runs at once must not read a file being rewritten.
  const script = path.join(OUT, `${scenario}.wrk.lua`);
  return new Promise((resolve, reject) => {
    const child = spawn("wrk", ["-t1", `-c${connections}`, `-d${SECONDS}s`, "--timeout", "5s", "-s", script, url, "--", ...args], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => { out += d; });
    child.on("error", reject);
    child.on("exit", () => {
      const line = out.split("\n").find((l) => l.startsWith("RESULT "));
      if (!line) return reject(new Error(`wrk gave no result for ${url}: ${out}`));
      resolve(Object.fromEntries(line.slice(7).split(" ").map((kv) => kv.split("=")).map(([k, v]) => [k, Number(v)])));
    });
  });
}
/** Both instances of a pair at once, half the connections each: requests summed, p50 the mean, p99 the worse.
 * The script's `init` gets the instance's number and `tag` (bench/wrk/zipf.lua: its seed and a prefix of its ids). */
async function wrkPair(urls, scenario, tag) {
  const rs = await Promise.all(urls.map((u, i) => wrk(u, scenario, Math.max(1, CONNECTIONS / urls.length), [String(i + 1), tag])));
  return {
    requests: rs.reduce((s, r) => s + r.requests, 0),
    seconds: Math.max(...rs.map((r) => r.seconds)),
    p50_us: rs.reduce((s, r) => s + r.p50_us, 0) / rs.length,
    p99_us: Math.max(...rs.map((r) => r.p99_us)),
    non2xx: rs.reduce((s, r) => s + r.non2xx, 0),
    errors: rs.reduce((s, r) => s + r.errors, 0),
  };
}
let wrkRuns = 0;
async function measure(worker, scenario) {
  await rest.redis("FLUSHALL");
  const instances = worker.pair ?? [worker];
  const cpu = () => instances.reduce((s, w) => s + cpuTicks(w.pid), 0);
  const cpu0 = cpu();
  const calls0 = (await rest.stats()).calls;
  const cmds0 = await redisCommands();
  const r = await wrkPair(instances.map((w) => w.url), scenario, `r${++wrkRuns}`);
  const cpu1 = cpu();
  const calls1 = (await rest.stats()).calls;
  const cmds1 = await redisCommands();
  const n = r.requests || 1;
  return {
    rps: r.requests / r.seconds,
    p50: r.p50_us / 1000,
    p99: r.p99_us / 1000,
    cpu: ((cpu1 - cpu0) * TICK_US) / n,
    rest: (calls1 - calls0 - 3) / n, // minus the harness's own FLUSHALL and INFO calls
    cmds: Math.max(0, cmds1 - cmds0 - 1) / n,
    denied: r.non2xx / n, // answers other than 2xx and 3xx: here, the 429s
    errors: r.errors,
  };
}

for (const name of readdirSync(path.join(ROOT, "bench/wrk")).filter((f) => f.endsWith(".lua") && f !== "report.lua")) {
  writeFileSync(path.join(OUT, name.replace(/\.lua$/, ".wrk.lua")), readFileSync(path.join(ROOT, "bench/wrk", name), "utf8") + readFileSync(path.join(ROOT, "bench/wrk/report.lua"), "utf8"));
}
const ONLY = process.env.ONLY ? process.env.ONLY.split(",") : null; // e.g. ONLY=many,hot
// Each scenario's rows for this Worker and the anchor (the summary and the bill compare them).
const ROWS = { ours: "edge-ratelimit", oursFixed: "edge-ratelimit (fixed window)", anchor: "@upstash/ratelimit", anchorFixed: "@upstash/ratelimit (fixed window)" };
const PAIR_ROWS = Object.fromEntries(Object.entries(ROWS).map(([k, w]) => [k, `${w} ×2`]));
const allScenarios = [
  { id: "many", title: "many users (all allowed)", workers: ["edge-ratelimit", "edge-ratelimit (fixed window)", "edge-ratelimit + metrics", "RPC caller → edge-ratelimit", "RPC caller → RPC floor", "@upstash/ratelimit", "@upstash/ratelimit (fixed window)", "limit Worker", "wasm limit floor", "forward-only"], base: "limit Worker" },
  { id: "hot", title: "one hot user (denied)", workers: ["edge-ratelimit", "edge-ratelimit (fixed window)", "edge-ratelimit + metrics", "RPC caller → edge-ratelimit", "RPC caller → RPC 429 floor", "@upstash/ratelimit", "@upstash/ratelimit (fixed window)", "answers 429", "answers our 429", "wasm 429 floor"], base: "answers 429" },
  { id: "mix", title: "mix (half new users, half one hot user)", workers: ["edge-ratelimit", "edge-ratelimit (fixed window)", "@upstash/ratelimit", "@upstash/ratelimit (fixed window)", "limit Worker", "forward-only"], base: "limit Worker" },
  { id: "many", title: "many users, +20 ms REST latency", latency: 20, workers: ["edge-ratelimit", "edge-ratelimit (fixed window)", "RPC caller → edge-ratelimit", "@upstash/ratelimit", "@upstash/ratelimit (fixed window)", "limit Worker"], base: "limit Worker", tag: "latency" },
  { id: "many", title: "many users: an in-flight limit, a settled cost (beside the same rate limit as a policy)", workers: ["edge-ratelimit, policy", "edge-ratelimit, + in-flight limit", "edge-ratelimit, settled cost", "@upstash/ratelimit", "@upstash/ratelimit (fixed window)", "forward-only"], base: "edge-ratelimit, policy", tag: "held", ours: "edge-ratelimit, policy" },
  { id: "busy", title: "one busy API key, 100,000/min, 2 instances each (leases)", workers: ["edge-ratelimit ×2", "edge-ratelimit (fixed window) ×2", "edge-ratelimit ×2, leases off", "@upstash/ratelimit ×2", "@upstash/ratelimit (fixed window) ×2", "limit Worker ×2", "forward-only ×2"], base: "forward-only ×2", ...PAIR_ROWS },
  { id: "busy", title: "one busy API key, 100,000/min, 2 instances each, +20 ms REST latency", latency: 20, workers: ["edge-ratelimit ×2", "edge-ratelimit (fixed window) ×2", "@upstash/ratelimit ×2", "@upstash/ratelimit (fixed window) ×2", "forward-only ×2"], base: "forward-only ×2", ...PAIR_ROWS, tag: "busy-latency" },
  { id: "zipf", title: "realistic mix: Zipf callers (s = 1.1 over 100,000 ids), a per-caller and a per-route limit, 2 instances each", workers: ["edge-ratelimit ×2", "edge-ratelimit (fixed window) ×2", "@upstash/ratelimit ×2", "@upstash/ratelimit (fixed window) ×2", "forward-only ×2"], base: "forward-only ×2", ...PAIR_ROWS, own: zipfWorkers },
].map((sc) => ({ ...ROWS, ...sc }));
const scenarios = allScenarios.filter((sc) => !ONLY || ONLY.includes(sc.tag ?? sc.id));
if (COMPARE) for (const sc of scenarios) if (!sc.workers[0].endsWith("×2")) sc.workers.splice(1, 0, COMPARE);

// FIXED_WINDOW: this Worker's fixed-window rows. Unset: they run if this build has the algorithm (its
// first request, zero-config and as a policy, is not answered 500 misconfigured), else they are left out
// with a note; FIXED_WINDOW=1: they must run (an error if not); FIXED_WINDOW=0: never.
const notes = [];
const FIXED_WINDOW = process.env.FIXED_WINDOW ?? "auto";
const isOursFixed = (w) => w.startsWith(ROWS.oursFixed);
async function fixedWindowRefused() {
  for (const extra of [{ RATE_LIMIT_ALGORITHM: "fixed-window" }, { RATE_LIMIT_POLICY: zipfPolicy("fixed-window") }]) {
    const probe = await startWorker("fixed-window probe", rustOptions(), extra);
    const reply = await fetch(probe.url + "/api/orders", { headers: { "x-user-id": "probe" } });
    const body = await reply.text();
    await probe.mf.dispose();
    let detail = body.slice(0, 300);
    try { detail = JSON.parse(body).detail ?? detail; } catch {}
    if (reply.status >= 500) return `with ${Object.keys(extra)[0]} it answers ${reply.status}: ${detail}`;
  }
  return null;
}
if (scenarios.some((sc) => sc.workers.some(isOursFixed))) {
  const refused = FIXED_WINDOW === "0" ? null : await fixedWindowRefused();
  if (refused && FIXED_WINDOW === "1") throw new Error(`FIXED_WINDOW=1, but this build has no fixed window: ${refused}`);
  if (refused || FIXED_WINDOW === "0") {
    for (const sc of scenarios) sc.workers = sc.workers.filter((w) => !isOursFixed(w));
    notes.push(`The edge-ratelimit (fixed window) rows are left out: ${refused ? `this build has no fixed window (${refused})` : "FIXED_WINDOW=0"}.`);
    process.stderr.write(`bench: ${notes.at(-1)}\n`);
  }
}

// Start the chosen scenarios' Workers (a scenario's `own` rows are its own instances).
const keyOf = (sc, w) => (sc.own?.[w] ? `${sc.id}: ${w}` : w);
const workers = {};
for (const sc of scenarios) for (const w of sc.workers) workers[keyOf(sc, w)] ??= await (sc.own?.[w] ?? defs[w])();

// Warm every worker (compile, first isolate) before measuring.
for (const w of Object.values(workers).flatMap((w) => w.pair ?? [w])) for (let i = 0; i < 20; i++) await fetch(w.url + "/warm", { headers: { "x-user-id": `warm-${i}` } }).then((r) => r.text());

const results = [];
const total = scenarios.reduce((s, sc) => s + sc.workers.length * ROUNDS, 0);
let done = 0;
for (const sc of scenarios) {
  await rest.faults(sc.latency ? { latency_ms: sc.latency } : {});
  const runs = Object.fromEntries(sc.workers.map((w) => [w, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const w of sc.workers) {
      progress(`[${++done}/${total}] ${sc.title}: ${w}, round ${round}/${ROUNDS} (${SECONDS}s)`);
      runs[w].push(await measure(workers[keyOf(sc, w)], sc.id));
    }
  }
  const med = Object.fromEntries(Object.entries(runs).map(([w, rs]) => [w, Object.fromEntries(Object.keys(rs[0]).map((k) => [k, median(rs.map((r) => r[k]))]))]));
  // How much a Worker's req/s moved between rounds (max − min over the median): this machine's noise.
  for (const [w, rs] of Object.entries(runs)) {
    const xs = rs.map((r) => r.rps);
    med[w].spread = (Math.max(...xs) - Math.min(...xs)) / med[w].rps;
  }
  results.push({ ...sc, med });
}
await rest.faults({});

// Cold start: the first request of a fresh isolate (its startup, module compile and top-level code
// happen before it, as Cloudflare does them during the TLS handshake). Workers interleaved, COLD runs each.
const COLD = Number(process.env.COLD ?? 9);
const coldWorkers = [
  ["edge-ratelimit", rustOptions(), {}],
  ["@upstash/ratelimit", jsOptions(js.anchor), {}],
  ["answers 429", jsOptions(js.deny), {}],
  ["wasm 429 floor", rustOptions("build/floor"), { BENCH_FLOOR: "deny" }],
];
const coldTimes = Object.fromEntries(coldWorkers.map(([n]) => [n, []]));
for (let i = 0; i < COLD; i++) {
  for (const [name, options, extra] of coldWorkers) {
    progress(`cold start ${i + 1}/${COLD}: ${name}`);
    const mf = new Miniflare({ ...options, ...COMPATIBILITY, bindings: { ...vars, ...extra } });
    const url = (await mf.ready).toString().replace(/\/$/, "");
    const t0 = performance.now();
    await fetch(url + "/cold", { headers: { "x-user-id": `cold-${i}` } }).then((r) => r.text());
    coldTimes[name].push(performance.now() - t0);
    await mf.dispose();
  }
}
const cold = Object.fromEntries(Object.entries(coldTimes).map(([n, ts]) => [n, median(ts)]));
progress("");

// ---- report ----
const fmt = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "–");
// The bill: Upstash's pay-as-you-go price is $0.20 per 100,000 commands (each command a script runs
// counts), and one database serves at most 10,000 commands/s (free, pay-as-you-go and fixed plans).
const DOLLARS_PER_COMMAND = 0.2 / 1e5;
const DATABASE_COMMANDS_PER_S = 10000;
const perDatabase = (cmds) => (cmds > 0 ? Math.round(DATABASE_COMMANDS_PER_S / cmds).toLocaleString("en-US") : "∞");
const lines = [];
const cpuInfo = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
lines.push(`Benchmark of ${new Date().toISOString().slice(0, 10)} on ${cpuInfo}, ${execFileSync("nproc").toString().trim()} cores; Miniflare 4 / workerd, wrk -t1 -c${CONNECTIONS}, ${SECONDS} s per run, median of ${ROUNDS} interleaved rounds.`);
for (const note of notes) lines.push("", note);
for (const sc of results) {
  const anchor = sc.med[sc.anchor];
  const base = sc.med[sc.base];
  lines.push("", `### ${sc.title}`, "", `| worker | req/s | p50 ms | p99 ms | CPU µs/req | REST calls/req | Redis cmds/req | × anchor req/s | × ${sc.base} req/s |`, "|---|---|---|---|---|---|---|---|---|");
  for (const w of sc.workers) {
    const m = sc.med[w];
    lines.push(`| ${w} | ${fmt(m.rps)} ±${fmt((m.spread * 100) / 2)}% | ${fmt(m.p50, 2)} | ${fmt(m.p99, 2)} | ${fmt(m.cpu)} | ${fmt(m.rest, 2)} | ${fmt(m.cmds, 2)} | ${fmt(m.rps / anchor.rps, 2)} | ${fmt(m.rps / base.rps, 2)} |`);
  }
  // The bill of every row: what its commands cost at Upstash's price, and how many of its decisions one database carries.
  lines.push("", "The bill (Upstash pay-as-you-go, $0.20 per 100,000 commands; a database serves 10,000 commands/s):", "",
    "| worker | Redis cmds/req | × anchor cmds/req | $ per million requests | decisions/s per database | REST calls/req | answered 429 |", "|---|---|---|---|---|---|---|");
  for (const w of sc.workers) {
    const m = sc.med[w];
    lines.push(`| ${w} | ${fmt(m.cmds, 2)} | ${anchor.cmds > 0 ? fmt(m.cmds / anchor.cmds, 2) : "–"} | $${fmt(m.cmds * 1e6 * DOLLARS_PER_COMMAND, 2)} | ${perDatabase(m.cmds)} | ${fmt(m.rest, 2)} | ${fmt(m.denied * 100, 1)}% |`);
  }
  const carried = [[sc.ours, "edge-ratelimit"], [sc.oursFixed, "edge-ratelimit fixed window"], [sc.anchor, "anchor token bucket"], [sc.anchorFixed, "anchor fixed window"]]
    .filter(([w]) => sc.med[w]).map(([w, label]) => `${label} ${perDatabase(sc.med[w].cmds)}`);
  lines.push("", `One database at 10,000 cmds/s carries: ${carried[0]} decisions/s, ${carried.slice(1).join(", ")}.`);
  if (sc.id === "zipf") {
    const ratio = (w, to) => `${fmt(sc.med[w].cmds / sc.med[to].cmds, 2)}× the commands/req of the anchor's ${to === sc.anchor ? "token bucket" : "fixed window"}`;
    const says = (w) => `${fmt(sc.med[w].cmds, 2)} Redis commands and ${fmt(sc.med[w].rest, 2)} REST calls per request (${fmt(sc.med[w].denied * 100, 1)}% answered 429)`;
    lines.push("", `Realistic mix: edge-ratelimit ${says(sc.ours)}: ${ratio(sc.ours, sc.anchor)} (issue 25's target: ≤ 0.5×), ${ratio(sc.ours, sc.anchorFixed)}. ` +
      (sc.med[sc.oursFixed] ? `Its fixed window ${says(sc.oursFixed)}: ${ratio(sc.oursFixed, sc.anchorFixed)}. ` : "") +
      `The anchor's token bucket ${says(sc.anchor)}, its fixed window ${says(sc.anchorFixed)}.`);
  }
  if (sc.id === "busy") {
    const ours = sc.med["edge-ratelimit ×2"];
    lines.push("", `Leases: edge-ratelimit ×2 made ${fmt(ours.rest, 4)} REST calls per request, ran at ${fmt(ours.rps / base.rps, 2)}× the forward-only floor's req/s, p50 ${fmt(ours.p50 - base.p50, 2)} ms above the floor's.`);
  }
  if (sc.tag === "held") {
    for (const w of ["edge-ratelimit, + in-flight limit", "edge-ratelimit, settled cost"]) {
      const m = sc.med[w];
      lines.push("", `${w}: p50 ${fmt(m.p50 - base.p50, 2)} ms, CPU ${fmt(m.cpu - base.cpu)} µs/req and ${fmt(m.rest - base.rest, 2)} REST calls/req (${fmt(m.cmds - base.cmds, 2)} Redis commands) beside the policy alone; ${fmt(m.rps / base.rps, 2)}× its req/s.`);
    }
  }
  if (sc.base === "limit Worker") {
    const added = (w) => sc.med[w].cpu - base.cpu;
    lines.push("", `CPU added above the limit Worker: edge-ratelimit ${fmt(added("edge-ratelimit"))} µs, @upstash/ratelimit ${fmt(added("@upstash/ratelimit"))} µs (ratio ${fmt(added("edge-ratelimit") / added("@upstash/ratelimit"), 2)}).`);
  }
  if (sc.med["RPC caller → edge-ratelimit"]) {
    const rpc = sc.med["RPC caller → edge-ratelimit"];
    const http = sc.med["edge-ratelimit"];
    lines.push("", `RPC next to HTTP: the RPC caller at ${fmt(rpc.rps / http.rps, 2)}× the gateway's req/s, p50 ${fmt(rpc.p50 - http.p50, 2)} ms and CPU ${fmt(Math.abs(rpc.cpu - http.cpu))} µs/req ${rpc.cpu >= http.cpu ? "more" : "less"} (caller and limiter together), REST calls/req ${fmt(rpc.rest, 2)} against ${fmt(http.rest, 2)}.`);
    const floor = sc.med["RPC caller → RPC floor"] ?? sc.med["RPC caller → RPC 429 floor"];
    if (floor) lines.push("", `RPC next to its floor (the same caller, an entrypoint doing only the floor's work): ${fmt(rpc.rps / floor.rps, 2)}× its req/s, CPU ${fmt(rpc.cpu - floor.cpu)} µs/req above it.`);
  }
}
if (COLD > 0) lines.push("", `Cold start (first request of a fresh isolate, median of ${COLD}, interleaved): ` +
  Object.entries(cold).map(([n, t]) => `${n} ${fmt(t, 1)} ms`).join(", ") + ".");
const report = lines.join("\n");
writeFileSync(path.join(OUT, "latest.md"), report + "\n");
console.log(report);

for (const w of Object.values(workers).flatMap((w) => w.pair ?? [w])) await w.mf.dispose();
origin.kill();
await rest.stop();
await redis.stop();
