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
const js = Object.fromEntries(["anchor", "forward", "limit", "deny", "deny-fields", "rpc-caller", "rpc-floor"].map((n) => [n, bundle(n)]));
const workers = {
  "edge-ratelimit": await startWorker("edge-ratelimit", rustOptions()),
  // The same Worker with the admin API on: metrics counted per request, reported every 10 s (waitUntil).
  "edge-ratelimit + metrics": await startWorker("edge-ratelimit + metrics", rustOptions(), { ADMIN_TOKEN: "bench-admin-token-0123456789" }),
  "@upstash/ratelimit": await startWorker("@upstash/ratelimit", jsOptions(js.anchor)),
  // A user's Worker calling env.LIMITER.limit({ key }) over a service binding, then forwarding itself.
  "RPC caller → edge-ratelimit": await startRpcWorker("RPC caller → edge-ratelimit", js["rpc-caller"]),
  // The same caller bound to an entrypoint that only makes one REST call (or, for the hot user, denies at once).
  "RPC caller → RPC floor": await startRpcWorker("RPC caller → RPC floor", js["rpc-caller"], { modules: true, scriptPath: js["rpc-floor"], bindings: { ...vars, FLOOR: "limit" } }),
  "RPC caller → RPC 429 floor": await startRpcWorker("RPC caller → RPC 429 floor", js["rpc-caller"], { modules: true, scriptPath: js["rpc-floor"], bindings: { ...vars, FLOOR: "deny" } }),
  "limit Worker": await startWorker("limit Worker", jsOptions(js.limit)),
  "forward-only": await startWorker("forward-only", jsOptions(js.forward)),
  "answers 429": await startWorker("answers 429", jsOptions(js.deny)),
  // Plain JS sending the very 429 edge-ratelimit sends (body and fields): what that answer costs by itself.
  "answers our 429": await startWorker("answers our 429", jsOptions(js["deny-fields"])),
  // The same Rust entry and glue doing only the floor's work (build/floor, feature bench-floor).
  "wasm limit floor": await startWorker("wasm limit floor", rustOptions("build/floor"), { BENCH_FLOOR: "limit" }),
  "wasm 429 floor": await startWorker("wasm 429 floor", rustOptions("build/floor"), { BENCH_FLOOR: "deny" }),
};

// The in-flight and settled-cost rows: the same per-user rate limit as a policy, alone, beside an
// in-flight limit (a slot taken in the decision's call, released after the response), and with its cost
// settled from the response (the demo origin's content-length as the usage: a settle call per request).
const policyOf = (...limits) => JSON.stringify({ rules: [{ name: "api", route: "/*", limits: [{ name: "per-user", capacity: 1000, refill: "1000/min", ...limits[0] }, ...limits.slice(1)] }] });
Object.assign(workers, {
  "edge-ratelimit, policy": await startWorker("edge-ratelimit, policy", rustOptions(), { RATE_LIMIT_POLICY: policyOf({}) }),
  "edge-ratelimit, + in-flight limit": await startWorker("edge-ratelimit, + in-flight limit", rustOptions(), { RATE_LIMIT_POLICY: policyOf({}, { name: "inflight", concurrency: 4 }) }),
  "edge-ratelimit, settled cost": await startWorker("edge-ratelimit, settled cost", rustOptions(), { RATE_LIMIT_POLICY: policyOf({ cost: { reserve: 1, settle: "header:content-length" } }) }),
});

// The busy-key rows: one API key under a 100,000/min limit, two instances of each Worker driven at once.
const BUSY = { RATE_LIMIT_CAPACITY: "100000", RATE_LIMIT_REFILL: "100000/min", ANCHOR_CAPACITY: "100000" };
async function startPair(name, options, extra = {}) {
  const a = await startWorker(`${name} #1`, options, { ...BUSY, ...extra });
  const b = await startWorker(`${name} #2`, options, { ...BUSY, ...extra });
  return { name, pair: [a, b] };
}
const pairs = {
  "edge-ratelimit ×2": await startPair("edge-ratelimit", rustOptions()),
  "edge-ratelimit ×2, leases off": await startPair("edge-ratelimit, leases off", rustOptions(), { RATE_LIMIT_LEASES: "off" }),
  "@upstash/ratelimit ×2": await startPair("@upstash/ratelimit", jsOptions(js.anchor)),
  "limit Worker ×2": await startPair("limit Worker", jsOptions(js.limit)),
  "forward-only ×2": await startPair("forward-only", jsOptions(js.forward)),
};
Object.assign(workers, pairs);

// COMPARE_DIR=build/<dir>: another build of the Worker beside this one in every scenario (an A/B of a change).
const COMPARE = process.env.COMPARE_DIR ? `edge-ratelimit @ ${process.env.COMPARE_DIR}` : null;
if (COMPARE) workers[COMPARE] = await startWorker(COMPARE, rustOptions(process.env.COMPARE_DIR));

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
/** wrk against `url` with `connections`, to the end of its run: its RESULT line's numbers. */
function wrk(url, scenario, connections = CONNECTIONS) {
  // Written once per scenario: two wrk runs at once must not read a file being rewritten.
  const script = path.join(OUT, `${scenario}.wrk.lua`);
  return new Promise((resolve, reject) => {
    const child = spawn("wrk", ["-t1", `-c${connections}`, `-d${SECONDS}s`, "--timeout", "5s", "-s", script, url], { stdio: ["ignore", "pipe", "inherit"] });
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
/** Both instances of a pair at once, half the connections each: requests summed, p50 the mean, p99 the worse. */
async function wrkPair(urls, scenario) {
  const rs = await Promise.all(urls.map((u) => wrk(u, scenario, Math.max(1, CONNECTIONS / urls.length))));
  return {
    requests: rs.reduce((s, r) => s + r.requests, 0),
    seconds: Math.max(...rs.map((r) => r.seconds)),
    p50_us: rs.reduce((s, r) => s + r.p50_us, 0) / rs.length,
    p99_us: Math.max(...rs.map((r) => r.p99_us)),
    errors: rs.reduce((s, r) => s + r.errors, 0),
  };
}
async function measure(worker, scenario) {
  await rest.redis("FLUSHALL");
  const instances = worker.pair ?? [worker];
  const cpu = () => instances.reduce((s, w) => s + cpuTicks(w.pid), 0);
  const cpu0 = cpu();
  const calls0 = (await rest.stats()).calls;
  const cmds0 = await redisCommands();
  const r = await wrkPair(instances.map((w) => w.url), scenario);
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
    errors: r.errors,
  };
}

for (const name of readdirSync(path.join(ROOT, "bench/wrk")).filter((f) => f.endsWith(".lua") && f !== "report.lua")) {
  writeFileSync(path.join(OUT, name.replace(/\.lua$/, ".wrk.lua")), readFileSync(path.join(ROOT, "bench/wrk", name), "utf8") + readFileSync(path.join(ROOT, "bench/wrk/report.lua"), "utf8"));
}
const ONLY = process.env.ONLY ? process.env.ONLY.split(",") : null; // e.g. ONLY=many,hot
const allScenarios = [
  { id: "many", title: "many users (all allowed)", workers: ["edge-ratelimit", "edge-ratelimit + metrics", "RPC caller → edge-ratelimit", "RPC caller → RPC floor", "@upstash/ratelimit", "limit Worker", "wasm limit floor", "forward-only"], base: "limit Worker" },
  { id: "hot", title: "one hot user (denied)", workers: ["edge-ratelimit", "edge-ratelimit + metrics", "RPC caller → edge-ratelimit", "RPC caller → RPC 429 floor", "@upstash/ratelimit", "answers 429", "answers our 429", "wasm 429 floor"], base: "answers 429" },
  { id: "mix", title: "mix (half new users, half one hot user)", workers: ["edge-ratelimit", "@upstash/ratelimit", "limit Worker", "forward-only"], base: "limit Worker" },
  { id: "many", title: "many users, +20 ms REST latency", latency: 20, workers: ["edge-ratelimit", "RPC caller → edge-ratelimit", "@upstash/ratelimit", "limit Worker"], base: "limit Worker", tag: "latency" },
  { id: "many", title: "many users: an in-flight limit, a settled cost (beside the same rate limit as a policy)", workers: ["edge-ratelimit, policy", "edge-ratelimit, + in-flight limit", "edge-ratelimit, settled cost", "@upstash/ratelimit", "forward-only"], base: "edge-ratelimit, policy", tag: "held" },
  { id: "busy", title: "one busy API key, 100,000/min, 2 instances each (leases)", workers: ["edge-ratelimit ×2", "edge-ratelimit ×2, leases off", "@upstash/ratelimit ×2", "limit Worker ×2", "forward-only ×2"], base: "forward-only ×2", anchor: "@upstash/ratelimit ×2" },
  { id: "busy", title: "one busy API key, 100,000/min, 2 instances each, +20 ms REST latency", latency: 20, workers: ["edge-ratelimit ×2", "@upstash/ratelimit ×2", "forward-only ×2"], base: "forward-only ×2", anchor: "@upstash/ratelimit ×2", tag: "busy-latency" },
];
const scenarios = allScenarios.filter((sc) => !ONLY || ONLY.includes(sc.tag ?? sc.id));
if (COMPARE) for (const sc of scenarios) if (sc.id !== "busy") sc.workers.splice(1, 0, COMPARE);

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
      runs[w].push(await measure(workers[w], sc.id));
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
const lines = [];
const cpuInfo = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
lines.push(`Benchmark of ${new Date().toISOString().slice(0, 10)} on ${cpuInfo}, ${execFileSync("nproc").toString().trim()} cores; Miniflare 4 / workerd, wrk -t1 -c${CONNECTIONS}, ${SECONDS} s per run, median of ${ROUNDS} interleaved rounds.`);
for (const sc of results) {
  const anchor = sc.med[sc.anchor ?? "@upstash/ratelimit"];
  const base = sc.med[sc.base];
  lines.push("", `### ${sc.title}`, "", `| worker | req/s | p50 ms | p99 ms | CPU µs/req | REST calls/req | Redis cmds/req | × anchor req/s | × ${sc.base} req/s |`, "|---|---|---|---|---|---|---|---|---|");
  for (const w of sc.workers) {
    const m = sc.med[w];
    lines.push(`| ${w} | ${fmt(m.rps)} ±${fmt((m.spread * 100) / 2)}% | ${fmt(m.p50, 2)} | ${fmt(m.p99, 2)} | ${fmt(m.cpu)} | ${fmt(m.rest, 2)} | ${fmt(m.cmds, 2)} | ${fmt(m.rps / anchor.rps, 2)} | ${fmt(m.rps / base.rps, 2)} |`);
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
lines.push("", `Cold start (first request of a fresh isolate, median of ${COLD}, interleaved): ` +
  Object.entries(cold).map(([n, t]) => `${n} ${fmt(t, 1)} ms`).join(", ") + ".");
const report = lines.join("\n");
writeFileSync(path.join(OUT, "latest.md"), report + "\n");
console.log(report);

for (const w of Object.values(workers).flatMap((w) => w.pair ?? [w])) await w.mf.dispose();
origin.kill();
await rest.stop();
await redis.stop();
