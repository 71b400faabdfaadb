//! Redis commands are the bill (issue 25): Upstash charges every command a script runs and caps a
//! database at 10,000 commands/s. Counted here from Redis's own `INFO commandstats`, through the
//! gateway's one entry against a real Redis, so a command that creeps back in turns a test red. Also
//! the guarantees that the savings rest on: the key's TTL is never short though most writes send no
//! EXPIRE, a Worker clock ahead admits at most `rate × skew` early, and a new override holds
//! everywhere within `CHECK_MS`.

mod common;

use std::collections::BTreeMap;

use common::{header, run, Redis, Req, Rest};
use edge_ratelimit::bucket::{Mode, Spec};
use edge_ratelimit::{Algorithm, Config, Gateway, Step, SCRIPT_PLAIN};

const T0: f64 = 1.8e12;

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:1"),
        ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ("USER_ID_HEADER", "x-user-id"),
        ("ADMIN_TOKEN", "admin-token-0123456789"),
        ("METRICS_FLUSH_MS", "3600000"),
    ];
    vars.extend_from_slice(extra);
    Config::from_env(|name| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).unwrap()
}

/// The commands Redis ran since the last call, by name (the counting itself left out).
fn commands(rest: &Rest) -> BTreeMap<String, u64> {
    let info = rest.redis(&["INFO", "commandstats"]);
    rest.redis(&["CONFIG", "RESETSTAT"]);
    let mut out = BTreeMap::new();
    for line in info.as_str().unwrap_or_default().lines() {
        let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        let calls = stats.split(',').find_map(|f| f.strip_prefix("calls=")).and_then(|n| n.parse().ok()).unwrap_or(0);
        if !(name.starts_with("info") || name.starts_with("config")) && calls > 0 {
            out.insert(name.to_uppercase(), calls);
        }
    }
    out
}

fn named(list: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for name in list {
        *out.entry(name.to_string()).or_insert(0) += 1;
    }
    out
}

fn request(gw: &mut Gateway<'_>, rest: &Rest, user: &str, path: &str, now: f64) -> Step {
    run(gw, rest, &Req::new(gw, "GET", path, &[("x-user-id", user)]), now)
}

/// An isolate's first requests: the script loaded, every override key read (none exist) with the
/// overrides' version, and after the responses the metrics report, then the read of which overrides
/// exist (one fetch after each response).
fn warm(gw: &mut Gateway<'_>, rest: &Rest) {
    request(gw, rest, "warm", "/api/a", T0 - 2.0);
    request(gw, rest, "warm", "/api/a", T0 - 1.0);
    commands(rest);
}

#[test]
fn a_decision_is_three_commands_a_denial_two_a_new_key_four() {
    let config = config(&[]);
    let rest = Rest::new();
    let mut gw = Gateway::new(&config);
    warm(&mut gw, &rest);
    let at = |i: f64| T0 + 1.0 + i;
    request(&mut gw, &rest, "alice", "/api/a", at(0.0));
    assert_eq!(commands(&rest), named(&["EVALSHA", "HMGET", "HSET", "EXPIRE"]), "a key's first: 4");
    for i in 1..5 {
        request(&mut gw, &rest, "alice", "/api/a", at(f64::from(i)));
        assert_eq!(commands(&rest), named(&["EVALSHA", "HMGET", "HSET"]), "a caller's later requests: 3");
    }
    let denied = request(&mut gw, &rest, "alice", "/api/a", at(5.0));
    assert!(header(&denied, "retry-after").is_some(), "capacity 5: the sixth is denied");
    assert_eq!(commands(&rest), named(&["EVALSHA", "HMGET"]), "denied from Redis: 2");
    request(&mut gw, &rest, "alice", "/api/a", at(6.0));
    assert_eq!(commands(&rest), named(&[]), "then from the deny cache: none");
}

/// The fixed window (issue 25, item 2): one command on a window's later requests (`HINCRBY`), two on
/// its first (and `PEXPIRE`: the key dies when the window ends), and a request it denies is counted
/// back, so a denial costs nothing. Windows are aligned to the clock: the sixth request waits for the
/// window's end, and the next window starts from zero.
#[test]
fn a_fixed_window_is_two_commands_three_on_a_windows_first() {
    let config = config(&[("RATE_LIMIT_ALGORITHM", "fixed-window")]);
    let rest = Rest::new();
    let mut gw = Gateway::new(&config);
    warm(&mut gw, &rest);
    let window_ms = 60_000.0; // capacity 5, refill 5/min
    let start = (T0 / window_ms).ceil() * window_ms; // a window's first millisecond
    request(&mut gw, &rest, "fay", "/api/a", start + 1_000.0);
    assert_eq!(commands(&rest), named(&["EVALSHA", "HINCRBY", "PEXPIRE"]), "a window's first: 3");
    let pttl = rest.redis(&["PTTL", "rate:{fay}:/api/a"]).as_i64().unwrap();
    assert!((58_000..=59_000).contains(&pttl), "the key dies when the window ends: PTTL {pttl}");
    commands(&rest);
    for i in 2..=5 {
        let step = request(&mut gw, &rest, "fay", "/api/a", start + f64::from(i) * 1_000.0);
        assert_eq!(commands(&rest), named(&["EVALSHA", "HINCRBY"]), "later requests: 2");
        assert_eq!(header(&step, "ratelimit"), Some(format!("\"default\";r={};t={}", 5 - i, 60 - i).as_str()));
    }
    let denied = request(&mut gw, &rest, "fay", "/api/a", start + 6_000.0);
    assert_eq!(header(&denied, "retry-after"), Some("54"), "until the window ends");
    assert_eq!(commands(&rest), named(&["EVALSHA", "HINCRBY", "HINCRBY"]), "a denial: counted, then counted back");
    assert_eq!(rest.redis(&["HGET", "rate:{fay}:/api/a", "n"]), "5", "the denial left the count as it was");
    // (Redis expires the key when the window ends, as its PTTL said; this test's clock is simulated)
    rest.redis(&["DEL", "rate:{fay}:/api/a"]);
    let next = request(&mut gw, &rest, "fay", "/api/a", start + window_ms + 1.0);
    assert_eq!(header(&next, "ratelimit"), Some("\"default\";r=4;t=60"), "the next window starts from zero");
}

#[test]
fn each_further_limit_costs_two_and_the_version_check_rides_along_every_check_ms() {
    let policy = r#"{"rules":[{"name":"api","route":"/api/*","limits":[
        {"name":"minute","capacity":100,"refill":"100/min"},{"name":"hour","capacity":1000,"refill":"1000/h"}]}]}"#;
    let config = config(&[("RATE_LIMIT_POLICY", policy)]);
    let rest = Rest::new();
    let mut gw = Gateway::new(&config);
    warm(&mut gw, &rest);
    request(&mut gw, &rest, "bob", "/api/a", T0);
    commands(&rest);
    request(&mut gw, &rest, "bob", "/api/a", T0 + 1.0);
    assert_eq!(commands(&rest), named(&["EVALSHA", "HMGET", "HMGET", "HSET", "HSET"]), "two limits: 3 + 2");
    // CHECK_MS later, one call also reads the overrides' version (in one MGET); the next does not.
    request(&mut gw, &rest, "bob", "/api/a", T0 + 10_001.0);
    assert_eq!(commands(&rest), named(&["EVALSHA", "MGET", "HMGET", "HMGET", "HSET", "HSET"]));
    request(&mut gw, &rest, "bob", "/api/a", T0 + 10_002.0);
    assert_eq!(commands(&rest), named(&["EVALSHA", "HMGET", "HMGET", "HSET", "HSET"]));
}

fn admin(gw: &mut Gateway<'_>, rest: &Rest, method: &str, target: &str, body: &str, now: f64) -> u16 {
    let auth = "Bearer admin-token-0123456789";
    let req = Req::new(gw, method, target, &[("authorization", auth)]).body(body);
    common::status(&run(gw, rest, &req, now))
}

fn capacity(step: &Step) -> u32 {
    let policy = header(step, "ratelimit-policy").expect("a RateLimit-Policy field");
    policy.split(";q=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap()
}

#[test]
fn a_new_override_holds_at_once_where_it_was_set_and_within_check_ms_everywhere() {
    let config = config(&[]);
    let rest = Rest::new();
    let (mut a, mut b) = (Gateway::new(&config), Gateway::new(&config));
    for gw in [&mut a, &mut b] {
        warm(gw, &rest); // each isolate learns that no override exists
    }
    let carol = |gw: &mut Gateway<'_>, capacity: u32, now: f64| {
        let body = format!(r#"{{"capacity":{capacity},"refill":"{capacity}/min"}}"#);
        admin(gw, &rest, "PUT", "/__ratelimit/overrides/user/carol", &body, now)
    };
    assert_eq!(carol(&mut a, 50, T0 + 1.0), 200);
    assert_eq!(capacity(&request(&mut a, &rest, "carol", "/api/a", T0 + 2.0)), 50, "at once where it was set");
    assert_eq!(capacity(&request(&mut b, &rest, "carol", "/api/a", T0 + 3.0)), 5, "B has not checked yet");
    assert_eq!(capacity(&request(&mut b, &rest, "carol", "/api/a", T0 + 9_000.0)), 5);
    // CHECK_MS after B last checked: its next call reads the version, sees it moved, and reads every
    // override key in the same call: exact at once, and B reads the index again after the response.
    assert_eq!(capacity(&request(&mut b, &rest, "carol", "/api/a", T0 + 10_001.0)), 50, "within CHECK_MS");
    commands(&rest);
    assert_eq!(capacity(&request(&mut b, &rest, "carol", "/api/a", T0 + 10_002.0)), 50);
    assert_eq!(commands(&rest), named(&["EVALSHA", "MGET", "HMGET", "HSET"]), "only carol's key is read");
    assert_eq!(capacity(&request(&mut b, &rest, "dave", "/api/a", T0 + 10_003.0)), 5);
    assert_eq!(commands(&rest), named(&["EVALSHA", "HMGET", "HSET", "EXPIRE"]), "dave has none: nothing read");
    // A change or a deletion holds at once everywhere: an existing override's key is read on every call.
    assert_eq!(carol(&mut a, 70, T0 + 10_004.0), 200);
    assert_eq!(capacity(&request(&mut b, &rest, "carol", "/api/a", T0 + 10_005.0)), 70, "changed: at once");
    assert_eq!(admin(&mut a, &rest, "DELETE", "/__ratelimit/overrides/user/carol", "", T0 + 10_006.0), 200);
    assert_eq!(capacity(&request(&mut b, &rest, "carol", "/api/a", T0 + 10_007.0)), 5, "deleted: at once");
}

/// The script straight, in worker-clock mode at `now_ms`: one token-bucket limit; (allowed, reset_ms).
fn take(con: &mut redis::Connection, key: &str, spec: &Spec, ttl: u64, now_ms: f64) -> (bool, i64) {
    let r: Vec<i64> = redis::cmd("EVAL")
        .arg(SCRIPT_PLAIN)
        .arg(1)
        .arg(key)
        .arg(format!("{}", now_ms.floor()))
        .arg("")
        .arg(1)
        .arg(spec.algorithm.code())
        .arg(spec.capacity.to_string())
        .arg(spec.rate.to_string())
        .arg(ttl)
        .arg(spec.cost.to_string())
        .arg("0")
        .arg("")
        .arg("0")
        .query(con)
        .expect("script runs");
    (r[0] == 1, r[4])
}

/// Most writes send no EXPIRE (the key keeps its deadline), yet the key always outlives the moment
/// it is full again, even when writers' clocks differ by up to a quarter TTL. Time here is simulated:
/// each write's clock is the real time plus that isolate's skew, and the key's real deadline is
/// tracked from its PTTL whenever a write moved it.
#[test]
fn the_ttl_is_never_short_though_most_writes_send_no_expire() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let mut rng = common::Rng(7);
    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow] {
        let key = format!("rate:ttl-{}:/x", algorithm.code());
        let spec = Spec::new(algorithm, 20.0, 20.0 / 60.0, 1.0, Mode::Enforce);
        let ttl = 60u64;
        let skew_ms = 15_000.0; // a quarter of the TTL
        let (mut real, mut deadline, mut expires, mut writes) = (T0, None::<f64>, 0, 0);
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut con).unwrap();
        for _ in 0..600 {
            real += rng.below(4_000) as f64;
            if deadline.is_some_and(|d| real >= d) {
                panic!("{algorithm:?}: the key expired before it was full again");
            }
            let clock = real + [-skew_ms / 2.0, 0.0, skew_ms / 2.0][rng.below(3) as usize];
            let before: Option<f64> = redis::cmd("HGET").arg(&key).arg("x").query(&mut con).unwrap();
            let (allowed, reset_ms) = take(&mut con, &key, &spec, ttl, clock);
            if !allowed {
                continue;
            }
            writes += 1;
            let after: Option<f64> = redis::cmd("HGET").arg(&key).arg("x").query(&mut con).unwrap();
            if after != before {
                expires += 1;
                let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
                deadline = Some(real + pttl as f64 - 1_000.0); // (the test's own run time, generously)
            }
            // Full again at `real + reset` (a window: its counts have slid out); the key must live on.
            let full = real + reset_ms as f64;
            let d = deadline.expect("a write sets a deadline");
            assert!(d >= full, "{algorithm:?}: the key dies {} ms before it is full again", full - d);
        }
        assert!(writes > 300, "{writes} writes");
        assert!(expires * 5 < writes, "{algorithm:?}: {expires} EXPIREs for {writes} writes");
    }
}

/// The Worker clock is the default: a location whose clock runs `d` ahead refills early, once (the
/// bucket's time never runs back for the others), so at most `rate × d` more than the limit allows.
#[test]
fn a_worker_clock_ahead_admits_at_most_rate_times_skew_more() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let spec = Spec::new(Algorithm::TokenBucket, 5.0, 1.0, 1.0, Mode::Enforce); // 1 token/s
    for skew_ms in [0.0, 10_000.0] {
        let key = format!("rate:skew-{skew_ms}:/x");
        let (mut admitted, mut real) = (0u32, T0);
        // Two isolates, one of them `skew_ms` ahead, alternating every 100 ms for 60 s.
        for i in 0..600 {
            real += 100.0;
            let clock = if i % 2 == 0 { real } else { real + skew_ms };
            admitted += u32::from(take(&mut con, &key, &spec, 60, clock).0);
        }
        let allowance = 5 + 60; // capacity + 60 s at 1/s
        let bound = allowance + (skew_ms / 1000.0) as u32;
        assert!(admitted <= bound, "skew {skew_ms} ms: {admitted} admitted, at most {bound}");
        assert!(admitted >= allowance - 1, "skew {skew_ms} ms: {admitted} admitted");
    }
}
