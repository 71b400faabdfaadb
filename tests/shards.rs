//! Past one database, against real Redis servers: several databases (shards), each subject's keys on
//! the one its hash picks, and the Redis Cluster mode, where every script call touches one slot. Many
//! requests are begun before any reply comes back (as concurrent requests are), and their calls are
//! answered in a shuffled order, each by its own shard's Redis.

mod common;

use common::{Endpoint, Req, Rest, Rng, Shards};
use edge_ratelimit::{shard_of, tag_of, Config, Fetch, Gateway, Reply, Request, Step};

const T0: f64 = 1.8e12;

fn config(urls: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![("UPSTASH_REDIS_REST_URL", urls), ("RATE_LIMIT_LEASE_MS", "1000")];
    vars.extend_from_slice(extra);
    common::worker_clock_config(&vars)
}

const TWO: &str = "http://127.0.0.1:1/a,http://127.0.0.1:1/b";

fn names(urls: &str) -> Vec<String> {
    urls.split(',').map(str::to_string).collect()
}

/// Every EVALSHA/EVAL body: its keys.
fn call_keys(f: &Fetch) -> Option<Vec<String>> {
    if f.pipeline {
        return None;
    }
    let args: Vec<String> = serde_json::from_str(&f.body).ok()?;
    if !args[0].starts_with("EVAL") {
        return None;
    }
    let n: usize = args[2].parse().ok()?;
    Some(args[3..3 + n].to_vec())
}

/// Isolates whose requests are begun together, their fetches answered in a shuffled order.
struct Run<'c, E: Endpoint> {
    gws: Vec<Gateway<'c>>,
    end: &'c E,
    rng: Rng,
    /// Fetches out: (isolate, fetch).
    out: Vec<(usize, Fetch)>,
    /// Wakes to carry out later: (isolate, ticket, due).
    wakes: Vec<(usize, u32, f64)>,
    /// Final steps of requests, by request number.
    done: Vec<(usize, Step)>,
    /// Which request a ticket's chain belongs to (isolate, ticket) → request.
    owner: Vec<((usize, u32), usize)>,
    /// Every script call's keys (to check what each call touched).
    calls: Vec<(u16, Vec<String>)>,
    /// Watched responses to deliver: (isolate, ticket).
    delivered: Vec<(usize, u32)>,
    now: f64,
}

impl<'c, E: Endpoint> Run<'c, E> {
    fn new(config: &'c Config, isolates: usize, end: &'c E) -> Self {
        Self::of((0..isolates).map(|_| Gateway::new(config)).collect(), end)
    }

    /// Isolates of their own configurations (say, before and after a shard change).
    fn of(gws: Vec<Gateway<'c>>, end: &'c E) -> Self {
        Run {
            gws,
            end,
            rng: Rng(7),
            out: Vec::new(),
            wakes: Vec::new(),
            done: Vec::new(),
            owner: Vec::new(),
            calls: Vec::new(),
            delivered: Vec::new(),
            now: T0,
        }
    }

    fn begin(&mut self, n: usize, iso: usize, user: &str, path: &str) {
        let req = Req::new(&self.gws[iso], "GET", path, &[("x-user-id", user)]);
        let headers: Vec<Option<&str>> = req.headers.iter().map(|h| h.as_deref()).collect();
        let step = self.gws[iso].begin(&Request { method: &req.method, url: &req.url, headers: &headers }, self.now);
        self.take(iso, Some(n), step);
    }

    /// A step of `iso`: fetches queued, a final one kept (for request `n`), wakes kept.
    fn take(&mut self, iso: usize, n: Option<usize>, step: Step) {
        match step {
            Step::Fetch(f) => self.queue(iso, n, f),
            Step::Fetches(fs) => fs.into_iter().for_each(|f| self.queue(iso, n, f)),
            Step::Wait { ticket, ms } => {
                if let Some(n) = n {
                    self.owner.push(((iso, ticket), n));
                }
                self.wakes.push((iso, ticket, self.now + f64::from(ms)))
            }
            Step::Done => {}
            Step::Respond { ref report, wake, .. }
            | Step::Forward { ref report, wake, .. }
            | Step::Return { ref report, wake, .. } => {
                // A watched response is delivered at the next advance (its slots released then).
                if let Step::Forward { watch: Some(w), .. } = &step {
                    if w.ticket != 0 {
                        self.delivered.push((iso, w.ticket));
                    }
                }
                if let Some(f) = report.clone() {
                    self.queue(iso, None, f);
                }
                if let Some(w) = wake {
                    self.wakes.push((iso, w.ticket, self.now + f64::from(w.ms)));
                }
                if let Some(n) = n {
                    self.done.push((n, step));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn queue(&mut self, iso: usize, n: Option<usize>, f: Fetch) {
        if let Some(keys) = call_keys(&f) {
            self.calls.push((f.shard, keys));
        }
        if let Some(n) = n {
            self.owner.push(((iso, f.ticket), n));
        }
        self.out.push((iso, f));
    }

    /// Answers every fetch out (and those that follow, waits included), in a shuffled order.
    fn settle(&mut self) {
        self.answer_all();
        while self.wakes.iter().any(|w| w.2 <= self.now + 10.0) {
            self.advance(10.0);
        }
    }

    fn answer_all(&mut self) {
        while !self.out.is_empty() {
            let i = self.rng.below(self.out.len() as u64) as usize;
            let (iso, f) = self.out.swap_remove(i);
            let (status, body) = self.end.answer(&f);
            let n = self.owner.iter().position(|(k, _)| *k == (iso, f.ticket)).map(|p| self.owner.swap_remove(p).1);
            let step = self.gws[iso].resume(f.ticket, Reply::Http { status, body: &body }, self.now);
            self.take(iso, n, step);
        }
    }

    /// Moves the clock on by `ms`, carrying out the wakes due (and what follows them).
    fn advance(&mut self, ms: f64) {
        self.now += ms;
        for (iso, ticket) in std::mem::take(&mut self.delivered) {
            let step = self.gws[iso].resume(ticket, Reply::Delivered("1\n\0"), self.now);
            self.take(iso, None, step);
        }
        self.answer_all();
        loop {
            let due: Vec<(usize, u32, f64)> = self.wakes.iter().copied().filter(|w| w.2 <= self.now).collect();
            if due.is_empty() {
                break;
            }
            self.wakes.retain(|w| w.2 > self.now);
            for (iso, ticket, _) in due {
                let n = self.owner.iter().position(|(k, _)| *k == (iso, ticket)).map(|p| self.owner.swap_remove(p).1);
                let step = self.gws[iso].resume(ticket, Reply::Woke, self.now);
                self.take(iso, n, step);
            }
            self.answer_all();
        }
    }

    fn admitted(&self) -> usize {
        self.done.iter().filter(|(_, s)| matches!(s, Step::Forward { .. })).count()
    }
}

fn exists(rest: &Rest, key: &str) -> bool {
    rest.redis(&["EXISTS", key]) == 1
}

#[test]
fn two_shards_200_concurrent_requests_of_one_caller_admit_exactly_5_on_its_shard() {
    let c = config(TWO, &[]);
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    let mut run = Run::new(&c, 4, &shards);
    for n in 0..200 {
        run.begin(n, n % 4, "alice", "/api/orders");
    }
    run.settle();
    assert_eq!(run.done.len(), 200, "every request decided");
    assert_eq!(run.admitted(), 5, "capacity 5: exactly 5 of 200 concurrent requests");
    let home = shard_of("alice", &names(TWO));
    assert!(exists(&shards.0[home], "rate:{alice}:/api/orders"), "the bucket lives on alice's shard");
    assert!(!exists(&shards.0[1 - home], "rate:{alice}:/api/orders"), "and on no other");
    assert!(run.calls.iter().all(|(s, _)| usize::from(*s) == home), "every call went to alice's shard");
}

#[test]
fn subjects_spread_over_shards_each_call_to_one_shard() {
    let c = config(TWO, &[]);
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    let mut run = Run::new(&c, 2, &shards);
    for n in 0..200 {
        run.begin(n, n % 2, &format!("u{n}"), "/x");
    }
    run.settle();
    assert_eq!(run.admitted(), 200);
    let mut per = [0usize; 2];
    for (shard, keys) in &run.calls {
        // (route and tier overrides, keys of no subject, are on every shard)
        for k in keys.iter().filter(|k| k.starts_with("rate:")) {
            let subject = tag_of(k).expect("a tagged key");
            assert_eq!(usize::from(*shard), shard_of(subject, &names(TWO)), "{k} sent to shard {shard}");
        }
        per[usize::from(*shard)] += 1;
    }
    assert!(per[0] > 70 && per[1] > 70, "both shards carry callers: {per:?}");
}

const GLOBAL: &str = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
    {"name":"caller","capacity":3,"refill":"3/d","lease":false},
    {"name":"global","by":"global","capacity":50,"refill":"50/d"}]}]}"#;

#[test]
fn a_global_limit_of_50_over_500_callers_on_two_shards_admits_at_most_50_and_exactly_50_once_leases_are_back() {
    let c = config(TWO, &[("RATE_LIMIT_POLICY", GLOBAL)]);
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    let mut run = Run::new(&c, 2, &shards);
    // 500 callers, one request each, in waves of 50 begun together, over two isolates.
    for wave in 0..10 {
        for i in 0..50 {
            let n = wave * 50 + i;
            run.begin(n, n % 2, &format!("caller{n}"), "/api/x");
        }
        run.settle();
        run.advance(5.0);
        assert!(run.admitted() <= 50, "{} admitted by wave {wave}: the global limit is 50", run.admitted());
    }
    let spread = run.calls.iter().filter(|(_, keys)| keys.len() >= 2).count();
    let callers_elsewhere =
        (0..500).filter(|n| shard_of(&format!("caller{n}"), &names(TWO)) != shard_of("@global", &names(TWO))).count();
    assert!(callers_elsewhere > 150, "callers on both shards: {callers_elsewhere} away from the global key");
    // Leases end within their horizon and are given back; then fresh callers drain what is left.
    run.advance(5_000.0);
    run.advance(100.0);
    for g in &run.gws {
        assert_eq!(g.limiter().leased_tokens(), 0, "every lease given back");
    }
    let mut n = 500;
    let mut denied = 0;
    while denied < 3 && n < 700 {
        let before = run.admitted();
        run.begin(n, n % 2, &format!("late{n}"), "/api/x");
        run.settle();
        run.advance(1.0);
        if run.admitted() == before {
            denied += 1;
        }
        n += 1;
    }
    assert_eq!(run.admitted(), 50, "once the leases are back, exactly the global allowance ({spread} spread calls)");
}

#[test]
fn a_denial_by_the_callers_shard_costs_the_other_shards_limit_nothing() {
    let policy = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
        {"name":"caller","capacity":2,"refill":"2/d"},
        {"name":"global","by":"global","capacity":100,"refill":"100/d"}]}]}"#;
    let c = config(TWO, &[("RATE_LIMIT_POLICY", policy), ("RATE_LIMIT_LEASES", "off")]);
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    // A caller whose keys live on the other shard than the global key's: every request is two pieces.
    let global = shard_of("@global", &names(TWO));
    let user = (0..).map(|i| format!("d{i}")).find(|u| shard_of(u, &names(TWO)) != global).unwrap();
    let mut run = Run::new(&c, 1, &shards);
    for n in 0..5 {
        run.begin(n, 0, &user, "/api/x");
        run.settle();
        run.advance(1.0);
    }
    assert_eq!(run.admitted(), 2);
    let to = |shard: usize| run.calls.iter().filter(|(s, _)| usize::from(*s) == shard).count();
    assert!(to(global) >= 5 && to(1 - global) >= 5, "every request in two pieces, one per shard");
    run.advance(200.0); // the batch that puts back what the denied requests' other piece debited
    let tokens: f64 = shards.0[global]
        .redis(&["HGET", "rate:{@global}:/api/%2A#global", "tokens"])
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!((tokens - 98.0).abs() < 0.01, "the global bucket paid only the 2 admitted requests: {tokens} left");
}

#[test]
fn one_database_down_fails_only_its_callers() {
    let c = config(TWO, &[("FAIL_MODE", "closed")]);
    struct HalfDown(Rest, usize);
    impl Endpoint for HalfDown {
        fn answer(&self, f: &Fetch) -> (u16, String) {
            if usize::from(f.shard) == self.1 {
                return (502, "bad gateway".into());
            }
            self.0.answer(f)
        }
    }
    let end = HalfDown(Rest::new(), 1);
    let mut run = Run::new(&c, 1, &end);
    let users: Vec<String> = (0..40).map(|i| format!("h{i}")).collect();
    for (n, u) in users.iter().enumerate() {
        run.begin(n, 0, u, "/x");
    }
    run.settle();
    for (n, step) in &run.done {
        let down = shard_of(&users[*n], &names(TWO)) == 1;
        let code = common::status(step);
        assert_eq!(code, if down { 503 } else { 200 }, "{}: shard {}", users[*n], u8::from(down));
    }
}

#[test]
fn on_a_cluster_every_call_touches_one_slot() {
    // Per caller, per IP and global limits, and settled costs: every call (decisions, settlements,
    // give-backs) touches the keys of one subject only — no CROSSSLOT on a Redis Cluster.
    let policy = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
        {"name":"caller","capacity":5,"refill":"5/min"},
        {"name":"ip","by":"ip","capacity":50,"refill":"50/min"},
        {"name":"global","by":"global","capacity":500,"refill":"500/min"},
        {"name":"inflight","concurrency":3}]}]}"#;
    let c = config("http://127.0.0.1:1", &[("RATE_LIMIT_POLICY", policy), ("REDIS_CLUSTER", "true")]);
    let rest = Rest::new();
    let mut run = Run::new(&c, 2, &rest);
    for n in 0..120 {
        run.begin(n, n % 2, &format!("k{}", n % 7), "/api/x");
        run.settle();
        run.advance(3.0);
    }
    run.advance(6_000.0);
    run.advance(100.0);
    assert!(run.admitted() > 20, "{}", run.admitted());
    assert!(run.calls.len() > 60, "{} calls", run.calls.len());
    for (_, keys) in &run.calls {
        let tags: Vec<Option<&str>> = keys.iter().map(|k| tag_of(k)).collect();
        assert!(tags.iter().all(|t| t.is_some() && *t == tags[0]), "a call across slots: {keys:?}");
    }
}

const ADMIN: &str = "admin-token-0123456789";

/// A request through the gateway (an admin one with the token): its final step.
fn request<E: Endpoint>(gw: &mut Gateway<'_>, end: &E, method: &str, target: &str, user: &str, body: &str) -> Step {
    let auth = format!("Bearer {ADMIN}");
    let req = Req::new(gw, method, target, &[("x-user-id", user), ("authorization", &auth)]).body(body);
    common::run(gw, end, &req, T0)
}

#[test]
fn overrides_and_resets_reach_every_shard() {
    let c = config(TWO, &[("ADMIN_TOKEN", ADMIN), ("METRICS_FLUSH_MS", "0")]);
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    let mut gw = Gateway::new(&c);
    let put =
        request(&mut gw, &shards, "PUT", "/__ratelimit/overrides/route/p", "", r#"{"capacity":2,"refill":"2/min"}"#);
    assert_eq!(common::status(&put), 200, "{put:?}");
    for rest in &shards.0 {
        assert!(exists(rest, "ratelimit:override:route:/p"), "the route override is on every shard");
    }
    // Callers on either shard are held to it at once.
    for shard in 0..2 {
        let user = (0..).map(|i| format!("o{i}")).find(|u| shard_of(u, &names(TWO)) == shard).unwrap();
        let codes: Vec<u16> =
            (0..3).map(|_| common::status(&request(&mut gw, &shards, "GET", "/p", &user, ""))).collect();
        assert_eq!(codes, [200, 200, 429], "{user} on shard {shard}");
    }
    let del = request(&mut gw, &shards, "DELETE", "/__ratelimit/overrides/route/p", "", "");
    assert_eq!(common::status(&del), 200, "{del:?}");
    for rest in &shards.0 {
        assert!(!exists(rest, "ratelimit:override:route:/p"), "deleted on every shard");
    }
    // One shard down: the write is not acknowledged (the operator repeats it).
    struct Down<'a>(&'a Shards);
    impl Endpoint for Down<'_> {
        fn answer(&self, f: &Fetch) -> (u16, String) {
            if f.shard == 1 {
                return (502, String::new());
            }
            self.0.answer(f)
        }
    }
    let put = request(
        &mut gw,
        &Down(&shards),
        "PUT",
        "/__ratelimit/overrides/route/q",
        "",
        r#"{"capacity":2,"refill":"2/min"}"#,
    );
    assert_ne!(common::status(&put), 200, "a write one shard missed is not acknowledged");
}

#[test]
fn on_a_cluster_tier_and_route_overrides_are_refused_and_caller_overrides_live_in_the_callers_slot() {
    let c =
        config("http://127.0.0.1:1", &[("ADMIN_TOKEN", ADMIN), ("METRICS_FLUSH_MS", "0"), ("REDIS_CLUSTER", "true")]);
    let rest = Rest::new();
    let mut gw = Gateway::new(&c);
    let route =
        request(&mut gw, &rest, "PUT", "/__ratelimit/overrides/route/p", "", r#"{"capacity":2,"refill":"2/min"}"#);
    assert_eq!(common::status(&route), 409, "{route:?}");
    assert!(common::body_json(&route)["detail"].as_str().unwrap().contains("REDIS_CLUSTER"));
    let user =
        request(&mut gw, &rest, "PUT", "/__ratelimit/overrides/user/zed", "", r#"{"capacity":1,"refill":"1/min"}"#);
    assert_eq!(common::status(&user), 200, "{user:?}");
    assert!(exists(&rest, "ratelimit:override:caller:{zed}"));
    let codes: Vec<u16> = (0..2).map(|_| common::status(&request(&mut gw, &rest, "GET", "/p", "zed", ""))).collect();
    assert_eq!(codes, [200, 429], "the caller's own override holds on a cluster");
}

#[test]
fn rpc_limit_and_reset_find_the_keys_shard() {
    let c = config(TWO, &[]);
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    let mut gw = Gateway::new(&c);
    let rpc = |gw: &mut Gateway<'_>, method: &str, key: &str| -> serde_json::Value {
        let step = gw.call(method, &serde_json::json!({ "key": key }).to_string(), T0);
        let req = Req { method: String::new(), url: String::new(), headers: Vec::new(), body: String::new() };
        match common::carry(gw, &shards, &req, step, T0) {
            Step::Return { value, .. } => serde_json::from_str(&value).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    for shard in 0..2 {
        let key =
            (0..).map(|i| format!("r{i}")).find(|k| shard_of(&format!("@rpc/{k}"), &names(TWO)) == shard).unwrap();
        let results: Vec<bool> = (0..6).map(|_| rpc(&mut gw, "limit", &key)["success"].as_bool().unwrap()).collect();
        assert_eq!(results, [true, true, true, true, true, false], "{key} on shard {shard}");
        assert!(exists(&shards.0[shard], &format!("rate:{{@rpc/{key}}}")));
        assert_eq!(rpc(&mut gw, "reset", &key)["deleted"], 1, "{key}: reset on its shard");
        assert!(!exists(&shards.0[shard], &format!("rate:{{@rpc/{key}}}")));
        assert_eq!(rpc(&mut gw, "limit", &key)["success"], true, "a fresh bucket after the reset");
    }
}

const ONE: &str = "http://127.0.0.1:1/a";

/// The allowance of a 5/min bucket of capacity 5 over `ms`.
fn allowance(ms: f64) -> f64 {
    5.0 + ms / 12_000.0
}

#[test]
fn adding_a_database_never_admits_more_than_the_limit_during_and_after_the_change() {
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    // Callers the new list moves to the second database, and one it leaves where it was.
    let moved: Vec<String> =
        (0..).map(|i| format!("mv{i}")).filter(|u| shard_of(u, &names(TWO)) == 1).take(2).collect();
    let stays = (0..).map(|i| format!("st{i}")).find(|u| shard_of(u, &names(TWO)) == 0).unwrap();
    let before = config(ONE, &[]);
    let changed_at = format!("{}", (T0 + 1_000.0) / 1000.0);
    let during = config(TWO, &[("UPSTASH_REDIS_REST_URL_PREVIOUS", ONE), ("SHARDS_CHANGED_AT", &changed_at)]);
    let after = config(TWO, &[]);
    let (x, naive) = (&moved[0], &moved[1]);

    // Before: one database. Both moved callers spend their 5; the other caller spends 2.
    let mut run = Run::of(vec![Gateway::new(&before)], &shards);
    let mut n = 0;
    let mut ask = |run: &mut Run<'_, Shards>, iso: usize, user: &str| -> bool {
        n += 1;
        let before = run.admitted();
        run.begin(n, iso, user, "/api/orders");
        run.settle();
        run.advance(1.0);
        run.admitted() > before
    };
    for _ in 0..6 {
        ask(&mut run, 0, x);
        ask(&mut run, 0, naive);
    }
    assert_eq!(run.admitted(), 10);
    assert!(ask(&mut run, 0, &stays) && ask(&mut run, 0, &stays));

    // Without the change's previous list, a moved caller finds a full bucket on the new database: the
    // over-admission this procedure prevents.
    let mut bare = Run::of(vec![Gateway::new(&after)], &shards);
    bare.now = run.now + 1_000.0;
    let extra = (0..6).filter(|_| ask(&mut bare, 0, naive)).count();
    assert_eq!(extra, 5, "a moved bucket starts full without the procedure");

    // During the change: isolates on the old list and on the new one (with the previous list) take
    // turns, a request each every 2 s, for 3 minutes: the moved caller never gets more than its
    // allowance, and the caller that stays is decided on its database alone.
    let start = T0;
    let mut mixed = Run::of(vec![Gateway::new(&before), Gateway::new(&during)], &shards);
    mixed.now = run.now + 1_000.0;
    let mut admitted_x = 5.0; // (before the change)
    for i in 0..90 {
        mixed.advance(2_000.0);
        if ask(&mut mixed, i % 2, x) {
            admitted_x += 1.0;
        }
        let allowed = allowance(mixed.now - start);
        assert!(
            admitted_x <= allowed + 1e-9,
            "{admitted_x} admitted by {} s: the allowance is {allowed}",
            (mixed.now - start) / 1000.0
        );
    }
    assert!(admitted_x >= 5.0 + 10.0, "the moved caller is still served during the change: {admitted_x}");
    let two_keys = mixed.calls.iter().filter(|(_, keys)| keys.iter().any(|k| k.contains(x.as_str()))).count();
    assert!(two_keys > 0);
    assert!(mixed.calls.iter().any(|(s, keys)| *s == 1 && keys.iter().any(|k| k.contains(x.as_str()))));
    let stay_calls: Vec<u16> =
        mixed.calls.iter().filter(|(_, k)| k.iter().any(|k| k.contains(stays.as_str()))).map(|(s, _)| *s).collect();
    assert!(stay_calls.iter().all(|s| *s == 0), "a caller that did not move is not asked about elsewhere");

    // After: the new list alone. The new database's bucket (as if empty at the change, charged for
    // everything since) never holds more than the caller's true allowance.
    let mut done = Run::of(vec![Gateway::new(&after), Gateway::new(&after)], &shards);
    done.now = mixed.now + 1_000.0;
    for i in 0..40 {
        done.advance(3_000.0);
        if ask(&mut done, i % 2, x) {
            admitted_x += 1.0;
        }
        let allowed = allowance(done.now - start);
        assert!(admitted_x <= allowed + 1e-9, "after the change: {admitted_x} admitted, allowance {allowed}");
    }
}

#[test]
fn during_a_shard_change_a_denial_on_one_side_is_a_denial_whatever_the_other_has_left() {
    // Cost 3 of 5. Before the change the caller spent 3 (2 left on its old database). The change's
    // time is 48 s earlier, so the new database's key starts with 4 tokens: the old side denies with 2
    // left, the new side could pay and have 1 left. The answer is a plain 429 (the denying side's
    // numbers), never a malformed reply and the fail mode's answer.
    let policy =
        r#"{"rules":[{"name":"c","route":"/c/*","limits":[{"name":"c","capacity":5,"refill":"5/min","cost":3}]}]}"#;
    let shards = Shards(vec![Rest::new(), Rest::new()]);
    let x = (0..).map(|i| format!("cx{i}")).find(|u| shard_of(u, &names(TWO)) == 1).unwrap();
    let before = config(ONE, &[("RATE_LIMIT_POLICY", policy), ("FAIL_MODE", "open")]);
    let at = format!("{}", (T0 - 48_000.0) / 1000.0);
    let during = config(
        TWO,
        &[
            ("RATE_LIMIT_POLICY", policy),
            ("FAIL_MODE", "open"),
            ("UPSTASH_REDIS_REST_URL_PREVIOUS", ONE),
            ("SHARDS_CHANGED_AT", &at),
        ],
    );
    let mut run = Run::of(vec![Gateway::new(&before), Gateway::new(&during)], &shards);
    run.begin(0, 0, &x, "/c/x");
    run.settle();
    run.advance(1_000.0);
    run.begin(1, 1, &x, "/c/x");
    run.settle();
    run.advance(200.0);
    let codes: Vec<u16> = run.done.iter().map(|(_, s)| common::status(s)).collect();
    assert_eq!(codes, [200, 429], "{:?}", run.done);
    let Step::Respond { response, .. } = &run.done[1].1 else { panic!() };
    assert!(response.headers.iter().any(|(n, v)| *n == "ratelimit" && v.contains(";r=2;")), "{response:?}");
    // What the new side debited for the denied request was put back: still 4 tokens there (as seeded).
    run.advance(100.0);
    let left: f64 = shards.0[1]
        .redis(&["HGET", &format!("rate:{{{x}}}:/c/%2A#c"), "tokens"])
        .as_str()
        .map_or(4.0, |t| t.parse().unwrap());
    assert!(left >= 3.9, "{left} tokens left on the new side");
}
