//! Leases at scale, in simulation: N isolates (10 per location, each location its own round trip to
//! Redis) run the real gateway core (`Gateway::begin` / `resume`, leases, renewals, give-backs) against
//! a simulated Redis that runs the Rust reference of the script (`bucket::call_with`, bit for bit the
//! Lua), in simulated time. Traffic: a few hot API keys above their limit, warm keys below it, and a
//! long tail of users. Beside it, a perfect global limiter (the same bucket, decided at each arrival
//! with no latency and no leases). Prints, for 10, 100 and 1,000 isolates: REST calls per request (and
//! saved against the same run with leases off), admission against the perfect limiter, the worst under-admission of
//! a key (at the end of the run: tokens still out in leases count as not admitted), and a check that no
//! key was admitted beyond its allowance.
//!
//! `cargo run --release --example lease_sim` (bench/run sim); `SIM_SECONDS` (default 60) simulated seconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use edge_ratelimit::bucket::{self, Mode, Op, Spec, State};
use edge_ratelimit::{Algorithm, Config, Gateway, Reply, Request, Step};

/// One class of keys: how many, and the requests per second of each.
struct Class {
    name: &'static str,
    keys: usize,
    rate: f64,
}

const CLASSES: [Class; 4] = [
    Class { name: "hot API keys (above their limit)", keys: 5, rate: 3_000.0 },
    Class { name: "busy API keys (below it)", keys: 5, rate: 1_000.0 },
    Class { name: "warm keys", keys: 50, rate: 40.0 },
    Class { name: "long tail", keys: 5_000, rate: 0.1 },
];
/// Every key's limit: 20,000 tokens, refilled 100,000 a minute (a hot key exceeds it).
const CAPACITY: f64 = 20_000.0;
const PER_MINUTE: f64 = 100_000.0;
/// Share of a key's traffic from its home location (the rest from anywhere).
const HOME: f64 = 0.8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() * n as f64) as usize).min(n - 1)
    }
}

/// Simulated time in µs (integers order events exactly).
type Us = u64;

enum Event {
    /// The next request of key `key`.
    Arrive { key: usize },
    /// A script call reaches Redis.
    AtRedis { isolate: usize, ticket: u32, body: String },
    /// Redis's reply reaches the isolate.
    Back { isolate: usize, ticket: u32, body: String },
    /// A wake the executor was asked for.
    Wake { isolate: usize, ticket: u32 },
}

struct Sim<'c> {
    gateways: Vec<Gateway<'c>>,
    /// One-way latency (µs) from each isolate's location to Redis.
    one_way: Vec<Us>,
    queue: BinaryHeap<Reverse<(Us, u64, usize)>>,
    events: Vec<Option<Event>>,
    seq: u64,
    redis: HashMap<String, State>,
    /// REST calls per key (a call for several keys counts for each).
    calls: Vec<u64>,
}

impl Sim<'_> {
    fn push(&mut self, at: Us, e: Event) {
        self.seq += 1;
        self.events.push(Some(e));
        self.queue.push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    /// Carries a step of `isolate` out at `now`; `Some(allowed)` for a request's answer.
    fn carry(&mut self, isolate: usize, step: Step, now: Us) -> Option<bool> {
        match step {
            Step::Fetch(f) => {
                // The keys in the call: `rate:{key-<n>}:…`.
                for part in f.body.split("rate:{key-").skip(1) {
                    if let Some(k) = part.split(':').next().and_then(|n| n.parse::<usize>().ok()) {
                        self.calls[k] += 1;
                    }
                }
                let at = now + self.one_way[isolate];
                self.push(at, Event::AtRedis { isolate, ticket: f.ticket, body: f.body });
                None
            }
            Step::Wait { ticket, ms } => {
                self.push(now + Us::from(ms) * 1000, Event::Wake { isolate, ticket });
                None
            }
            Step::Forward { wake, .. } => {
                if let Some(w) = wake {
                    self.push(now + Us::from(w.ms) * 1000, Event::Wake { isolate, ticket: w.ticket });
                }
                Some(true)
            }
            Step::Respond { response, .. } => Some(response.status == 200),
            _ => None,
        }
    }

    /// The simulated Redis: runs the script's reference on its state, at the caller's clock (worker mode).
    fn script(&mut self, body: &str) -> String {
        let v: Vec<String> = serde_json::from_str(body).expect("EVALSHA as strings");
        let nkeys: usize = v[2].parse().unwrap();
        let keys = &v[3..3 + nkeys];
        let argv = &v[3 + nkeys..];
        let now_s = argv[0].parse::<f64>().unwrap() / 1000.0;
        let op = match argv[1].as_str() {
            "1" => Op::Peek,
            "2" => Op::GiveBack,
            _ => Op::Take,
        };
        let n: usize = argv[2].parse().unwrap();
        let mut specs = Vec::with_capacity(n);
        for i in 0..n {
            let a = &argv[3 + 8 * i..3 + 8 * i + 8];
            // The lease argument: "0", "<want> <slot ms> <share> <settle> <since>", or (giving back)
            // "<taken> <settle> <since>".
            let v: Vec<f64> = a[7].split(' ').map(|x| x.parse::<f64>().unwrap()).collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
            let (want, slot_ms, share, settle, since) =
                if op == Op::GiveBack { (at(0), 0.0, 0.0, at(1), at(2)) } else { (at(0), at(1), at(2), at(3), at(4)) };
            specs.push(Spec {
                algorithm: if a[0] == "w" { Algorithm::SlidingWindow } else { Algorithm::TokenBucket },
                capacity: a[1].parse().unwrap(),
                rate: a[2].parse().unwrap(),
                cost: a[4].parse().unwrap(),
                mode: match a[5].as_str() {
                    "1" => Mode::Shadow,
                    "2" => Mode::Candidate,
                    "3" => Mode::Report,
                    _ => Mode::Enforce,
                },
                lease: want,
                slot_ms,
                share,
                settle,
                since,
                seed: None,
            });
        }
        let mut states: Vec<Option<State>> = keys[..n].iter().map(|k| self.redis.get(k).copied()).collect();
        let reply = bucket::call_with(&mut states, &specs, now_s, op);
        for (k, s) in keys.iter().zip(states) {
            if let Some(s) = s {
                self.redis.insert(k.clone(), s);
            }
        }
        serde_json::json!({ "result": reply.to_flat() }).to_string()
    }
}

struct Outcome {
    requests: Vec<u64>,
    calls: Vec<u64>,
    admitted: Vec<u64>,
    perfect: Vec<u64>,
    allowance: f64,
    /// Per key, tokens neither admitted nor back in the bucket once every lease has ended, against the
    /// perfect limiter: (admitted + level) of the perfect bucket minus ours. Leases lost for good.
    lost: Vec<f64>,
}

fn run(isolates: usize, seconds: f64, seed: u64, leases: bool) -> Outcome {
    let vars = [
        ("RATE_LIMIT_LEASES", if leases { "auto" } else { "off" }),
        ("UPSTASH_REDIS_REST_URL", "https://sim.invalid"),
        ("UPSTASH_REDIS_REST_TOKEN", "sim"),
        ("USER_ID_HEADER", "x-user-id"),
        ("RATE_LIMIT_CLOCK", "worker"),
        ("RATE_LIMIT_CAPACITY", "20000"),
        ("RATE_LIMIT_REFILL", "100000/min"),
        ("REDIS_TIMEOUT_MS", "2000"),
    ];
    let config: &'static Config = Box::leak(Box::new(
        Config::from_env(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())).expect("config"),
    ));
    let mut rng = Rng(seed);
    let locations = isolates.div_ceil(10);
    // Round trips from 2 to 60 ms, one per location.
    let location_rtt: Vec<Us> = (0..locations).map(|_| (2_000.0 + rng.next() * 58_000.0) as Us).collect();
    let one_way: Vec<Us> = (0..isolates).map(|i| location_rtt[i % locations] / 2).collect();
    let mut sim = Sim {
        gateways: (0..isolates).map(|_| Gateway::new(config)).collect(),
        one_way,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        seq: 0,
        redis: HashMap::new(),
        calls: Vec::new(),
    };
    let mut rate = Vec::new();
    let mut class_of = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        for _ in 0..class.keys {
            rate.push(class.rate);
            class_of.push(c);
        }
    }
    let keys = rate.len();
    sim.calls = vec![0; keys];
    let home: Vec<usize> = (0..keys).map(|_| rng.below(locations)).collect();
    let names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    let t0: f64 = 1.8e12; // epoch ms at simulated time 0
    let end: Us = (seconds * 1e6) as Us;
    for (k, r) in rate.iter().enumerate() {
        let first = (-(1.0 - rng.next()).ln() / r * 1e6) as Us;
        sim.push(first, Event::Arrive { key: k });
    }
    let spec = Spec::new(Algorithm::TokenBucket, CAPACITY, PER_MINUTE / 60.0, 1.0, Mode::Enforce);
    let mut perfect_state: Vec<[Option<State>; 1]> = vec![[None]; keys];
    let mut admitted = vec![0u64; keys];
    let mut perfect = vec![0u64; keys];
    // Which key each in-flight request ticket belongs to.
    let mut waiting: HashMap<(usize, u32), usize> = HashMap::new();
    let mut requests = vec![0u64; keys];
    let names_header = sim.gateways[0].header_names().to_vec();
    while let Some(Reverse((at, _, i))) = sim.queue.pop() {
        let Some(event) = sim.events[i].take() else { continue };
        let now_ms = t0 + at as f64 / 1000.0;
        match event {
            Event::Arrive { key } => {
                if at > end {
                    continue;
                }
                requests[key] += 1;
                let r = rate[key];
                sim.push(at + (-(1.0 - rng.next()).ln() / r * 1e6) as Us + 1, Event::Arrive { key });
                if bucket::call(&mut perfect_state[key], &[spec], now_ms / 1000.0).allowed {
                    perfect[key] += 1;
                }
                let location = if rng.next() < HOME { home[key] } else { rng.below(locations) };
                let in_location = isolates / locations;
                let isolate = (location + locations * rng.below(in_location.max(1))).min(isolates - 1);
                let headers: Vec<Option<&str>> =
                    names_header.iter().map(|n| (n == "x-user-id").then_some(names[key].as_str())).collect();
                let req = Request { method: "GET", url: "https://api.example/v1/orders", headers: &headers };
                let step = sim.gateways[isolate].begin(&req, now_ms);
                let ticket = if let Step::Fetch(f) = &step { Some(f.ticket) } else { None };
                match sim.carry(isolate, step, at) {
                    Some(true) => admitted[key] += 1,
                    Some(false) => {}
                    None => {
                        if let Some(t) = ticket {
                            waiting.insert((isolate, t), key);
                        }
                    }
                }
            }
            Event::AtRedis { isolate, ticket, body } => {
                let reply = sim.script(&body);
                sim.push(at + sim.one_way[isolate], Event::Back { isolate, ticket, body: reply });
            }
            Event::Back { isolate, ticket, body } => {
                let step = sim.gateways[isolate].resume(ticket, Reply::Http { status: 200, body: &body }, now_ms);
                if let Some(key) = waiting.remove(&(isolate, ticket)) {
                    if sim.carry(isolate, step, at) == Some(true) {
                        admitted[key] += 1;
                    }
                } else {
                    sim.carry(isolate, step, at);
                }
            }
            Event::Wake { isolate, ticket } => {
                let step = sim.gateways[isolate].resume(ticket, Reply::Woke, now_ms);
                sim.carry(isolate, step, at);
            }
        }
    }
    let allowance = CAPACITY + PER_MINUTE / 60.0 * seconds;
    // Every event has run (every lease ended and given back within 3 s of the end): compare what is
    // left in both buckets then (a hot key's bucket is far from full, so no refill is capped away).
    let later = t0 / 1000.0 + seconds + 3.0;
    let level = |state: Option<State>| {
        let r = bucket::call_with(&mut [state], &[spec], later, Op::Peek);
        r.buckets[0].remaining as f64
    };
    let lost = (0..keys)
        .map(|k| {
            let key = format!("rate:{{{}}}:/v1/orders", names[k]);
            // Leases still held when the traffic stopped (an idle isolate gives them back with its next
            // request) are not lost.
            let stranded: u64 = sim.gateways.iter().map(|g| g.limiter().leased_tokens_of(&key)).sum();
            let ours = admitted[k] as f64 + level(sim.redis.get(&key).copied()) + stranded as f64;
            let best = perfect[k] as f64 + level(perfect_state[k][0]);
            best - ours
        })
        .collect();
    Outcome { requests, calls: sim.calls, admitted, perfect, allowance, lost }
}

fn main() {
    let seconds: f64 = std::env::var("SIM_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    println!(
        "Lease simulation: {seconds} simulated s; every key {CAPACITY} tokens refilled {PER_MINUTE}/min; {}; \
         80 % of a key's traffic from its home location; 10 isolates per location, round trips 2-60 ms.\n",
        CLASSES.iter().map(|c| format!("{} {} at {}/s", c.keys, c.name, c.rate)).collect::<Vec<_>>().join(", ")
    );
    println!(
        "| isolates | class | requests | REST calls/req (leases off) | calls saved | admitted / perfect (leases off) | worst key under-admitted at the end | lost for good | over-admitted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut over_any = false;
    for isolates in [10, 100, 1_000] {
        let seed = 0x9E37_79B9_7F4A_7C15 ^ isolates as u64;
        let o = run(isolates, seconds, seed, true);
        let off = run(isolates, seconds, seed, false);
        let mut start = 0;
        for class in &CLASSES {
            let range = start..start + class.keys;
            start += class.keys;
            let sum = |v: &[u64]| v[range.clone()].iter().sum::<u64>();
            let per_request = sum(&o.calls) as f64 / sum(&o.requests) as f64;
            let per_request_off = sum(&off.calls) as f64 / sum(&off.requests) as f64;
            let (ours, best) = (sum(&o.admitted), sum(&o.perfect));
            let (ours_off, best_off) = (sum(&off.admitted), sum(&off.perfect));
            let worst = range.clone().map(|k| o.perfect[k] as i64 - o.admitted[k] as i64).max().unwrap_or(0);
            let over = range.clone().filter(|&k| o.admitted[k] as f64 > o.allowance).count();
            let lost = range.clone().map(|k| o.lost[k]).fold(0.0, f64::max);
            over_any |= over > 0;
            println!(
                "| {isolates} | {} | {} | {per_request:.3} ({per_request_off:.3}) | {:.1} % | {:.4} ({:.4}) | {worst} tokens ({:.2} % of the allowance) | {lost} tokens | {over} keys |",
                class.name,
                sum(&o.requests),
                100.0 * (1.0 - per_request / per_request_off),
                ours as f64 / best.max(1) as f64,
                ours_off as f64 / best_off.max(1) as f64,
                100.0 * worst.max(0) as f64 / o.allowance,
            );
        }
    }
    if over_any {
        eprintln!("a key was admitted beyond its allowance");
        std::process::exit(1);
    }
}
