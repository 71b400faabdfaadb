//! The Lua script against a real Redis: its embedded SHA1s, and bit-for-bit
//! agreement with the Rust reference bucket (src/store/bucket.rs).

mod common;

use common::{Redis, Rng};
use edge_ratelimit::bucket::{self, Mode, Op, Slots, Spec, State};
use edge_ratelimit::Algorithm;
use edge_ratelimit::{SCRIPT_FLAGGED, SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN, SCRIPT_PLAIN_SHA};

/// Calls the plain script (vanilla Redis rejects the Upstash flag) in worker-clock mode at `now_ms`.
fn run(con: &mut redis::Connection, keys: &[String], specs: &[(Spec, u64)], now_ms: Option<u64>) -> Vec<i64> {
    let none = vec![String::new(); specs.len()];
    run_with(con, keys, specs, now_ms, false, &[], &none)
}

/// As [`run`], with `peek`, override keys after the limits' keys, and each limit's override indexes.
/// The reply as five integers per limit (no lease was asked, so none is granted) without the time.
fn run_with(
    con: &mut redis::Connection,
    keys: &[String],
    specs: &[(Spec, u64)],
    now_ms: Option<u64>,
    peek: bool,
    override_keys: &[String],
    override_indexes: &[String],
) -> Vec<i64> {
    let op = if peek { Op::Peek } else { Op::Take };
    let full =
        script(keys, specs, now_ms, op, override_keys, override_indexes).query::<Vec<i64>>(con).expect("script runs");
    let mut out = full[..2].to_vec();
    for limit in full[2..full.len() - 1].chunks_exact(bucket::PER_LIMIT) {
        assert_eq!(limit[5], 0, "no lease asked, none granted");
        out.extend(&limit[..5]);
    }
    if let Some(ms) = now_ms {
        assert_eq!(full[full.len() - 1], ms as i64, "the script's time ends the reply");
    }
    out
}

/// The EVAL of one call of `op` (its reply: the script's whole reply).
fn script(
    keys: &[String],
    specs: &[(Spec, u64)],
    now_ms: Option<u64>,
    op: Op,
    override_keys: &[String],
    override_indexes: &[String],
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SCRIPT_PLAIN).arg(keys.len() + override_keys.len()).arg(keys).arg(override_keys);
    cmd.arg(now_ms.map_or(String::new(), |ms| ms.to_string()));
    cmd.arg(op.code()).arg(specs.len());
    for ((spec, ttl), indexes) in specs.iter().zip(override_indexes) {
        cmd.arg(spec.algorithm.code())
            .arg(spec.capacity.to_string())
            .arg(spec.rate.to_string())
            .arg(ttl)
            .arg(spec.cost.to_string());
        cmd.arg(spec.mode_arg()).arg(indexes).arg(spec.lease_arg(op));
    }
    cmd
}

const TB: Algorithm = Algorithm::TokenBucket;
const SW: Algorithm = Algorithm::SlidingWindow;
const FW: Algorithm = Algorithm::FixedWindow;

fn fresh_keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("rate:{prefix}-{}-{i}:/t", std::process::id())).collect()
}

#[test]
fn embedded_sha_of_the_plain_script_equals_script_load() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT_PLAIN).query(&mut con).unwrap();
    assert_eq!(sha, SCRIPT_PLAIN_SHA);
}

#[test]
fn vanilla_redis_rejects_the_upstash_flag_as_the_client_expects() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let err = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT_FLAGGED).query::<String>(&mut con).unwrap_err();
    let text = format!("{:?} {:?}", err.code(), err.detail());
    assert!(text.contains("shebang"), "{text}");
    // The flagged digest is the SHA1 of the text as sent (what Upstash and upstash-local answer).
    // Redis's own SHA1 (redis.sha1hex) of the text as sent.
    let sha: String =
        redis::cmd("EVAL").arg("return redis.sha1hex(ARGV[1])").arg(0).arg(SCRIPT_FLAGGED).query(&mut con).unwrap();
    assert_eq!(sha, SCRIPT_FLAGGED_SHA);
}

#[test]
fn lua_agrees_with_the_rust_reference_on_random_sequences() {
    let redis = Redis::start();
    let mut con = redis.connection();
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let n = 1 + rng.below(3) as usize;
        let keys = fresh_keys(&format!("agree{seed}"), n);
        let mut specs = Vec::new();
        for _ in 0..n {
            let capacity = if rng.below(3) == 0 { 100.0 + rng.below(100) as f64 } else { 1.0 + rng.below(20) as f64 };
            let rate = [5.0 / 60.0, 10.0, 0.5, 1.0 / 3.0, 1000.0 / 7.0][rng.below(5) as usize];
            let algorithm = [TB, SW, FW][rng.below(3) as usize];
            let mode = [Mode::Enforce, Mode::Enforce, Mode::Enforce, Mode::Shadow, Mode::Candidate, Mode::Report]
                [rng.below(6) as usize];
            specs.push(Spec::new(algorithm, capacity, rate, 1.0, mode));
        }
        let mut states: Vec<Option<State>> = vec![None; n];
        let mut now_ms: u64 = 1_700_000_000_000 + rng.below(1_000_000);
        // Some limits are of a subject new on this database after a shard change a while ago (or to come).
        for s in &mut specs {
            if rng.below(3) == 0 {
                let ago = [0i64, 5_000, 90_000, -2_000][rng.below(4) as usize];
                s.seed = Some((now_ms as i64 - ago) as f64 / 1000.0);
            }
        }
        for step in 0..150 {
            now_ms += [0, 1, 7, 100, 333, 1000, 12_000][rng.below(7) as usize];
            // A fixed window's key dies when its window ends: here by the simulated clock (the test
            // removes the real TTL right after each call, in the same transaction, and checks it).
            for (key, state) in keys.iter().zip(states.iter_mut()) {
                if matches!(state, Some(State::Fixed { expires_ms, .. }) if *expires_ms <= now_ms as f64) {
                    redis::cmd("DEL").arg(key).query::<()>(&mut con).unwrap();
                    *state = None;
                }
            }
            if rng.below(20) == 0 {
                now_ms -= 500; // a Worker clock that runs behind: the bucket's time must not go back
            }
            // Now and then a call asks for a lease, or gives tokens back (taken at some earlier time).
            // Or settles a request's cost after its response (charging or refunding the difference).
            let op =
                [Op::Take, Op::Take, Op::Take, Op::Take, Op::GiveBack, Op::Peek, Op::Settle][rng.below(7) as usize];
            let call: Vec<(Spec, u64)> = specs
                .iter()
                .map(|s| {
                    let cost = match op {
                        Op::Settle => [-30.0, -3.0, 2.0, 25.0, 400.0][rng.below(5) as usize],
                        _ => (1.0 + rng.below(3) as f64).min(s.capacity),
                    };
                    let lease = match op {
                        Op::Take => [0.0, 0.0, 1.0, 5.0, 40.0][rng.below(5) as usize],
                        Op::GiveBack | Op::Settle | Op::SettleOnce => {
                            (now_ms - [0, 500, 30_000, 200_000][rng.below(4) as usize]) as f64
                        }
                        Op::Peek => 0.0,
                    };
                    let slot_ms = [1500.0, 1500.0, 3000.0, 700.0][rng.below(4) as usize];
                    let share = [0.5, 0.05, 0.25][rng.below(3) as usize];
                    // Lease tokens reported spent or given back, from grants of some time ago.
                    let settle = [0.0, 0.0, 3.0, 50.0][rng.below(4) as usize];
                    let since = (now_ms - [0, 700, 1600, 5000][rng.below(4) as usize]) as f64;
                    (Spec { cost, lease, slot_ms, share, settle, since, ..*s }, 3600)
                })
                .collect();
            let call_specs: Vec<Spec> = call.iter().map(|(s, _)| *s).collect();
            let expected = bucket::call_with(&mut states, &call_specs, now_ms as f64 / 1000.0, op).to_flat();
            let none = vec![String::new(); call.len()];
            let before = states.clone();
            let mut pipe = redis::pipe();
            pipe.atomic().add_command(script(&keys, &call, Some(now_ms), op, &[], &none));
            for key in &keys {
                pipe.cmd("PTTL").arg(key).cmd("PERSIST").arg(key).ignore();
            }
            let (got, pttls): (Vec<i64>, Vec<i64>) = {
                let all: Vec<redis::Value> = pipe.query(&mut con).expect("script runs");
                let reply: Vec<i64> = redis::from_redis_value(all[0].clone()).unwrap();
                (reply, all[1..].iter().map(|v| redis::from_redis_value(v.clone()).unwrap()).collect())
            };
            assert_eq!(got, expected, "seed {seed}, step {step}");
            for (i, (key, state)) in keys.iter().zip(&states).enumerate() {
                // A fixed window's count that began in this call dies when the window ends.
                if let Some(State::Fixed { expires_ms, .. }) = state {
                    let began = !matches!(before[i], Some(State::Fixed { expires_ms: e, .. }) if e == *expires_ms);
                    if began {
                        let want = expires_ms - now_ms as f64;
                        let pttl = pttls[i] as f64;
                        assert!(
                            pttl <= want && pttl > want - 1000.0,
                            "seed {seed}, step {step}: PTTL {pttl}, want {want}"
                        );
                    }
                }
                let fields: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(key)
                    .arg(&["tokens", "lastRefill", "start", "count", "previous", "lq", "lp", "li", "ll", "n"])
                    .query(&mut con)
                    .unwrap();
                let num = |i: usize| fields[i].as_deref().map(|v| v.parse::<f64>().unwrap());
                let slots = match (num(5), num(6), num(7), num(8)) {
                    (Some(current), Some(previous), Some(index), Some(length)) => {
                        Some(Slots { current, previous, index, length })
                    }
                    (None, None, None, None) => None,
                    other => panic!("seed {seed}, step {step}: lease slots {other:?}"),
                };
                let stored = match (num(0), num(1), num(2), num(3), num(4)) {
                    _ if num(9).is_some() => match state {
                        Some(State::Fixed { expires_ms, .. }) => {
                            Some(State::Fixed { count: num(9).unwrap(), expires_ms: *expires_ms })
                        }
                        _ => panic!("seed {seed}, step {step}: a count where the reference has {state:?}"),
                    },
                    (Some(tokens), Some(last_refill), None, None, None) => {
                        Some(State::Bucket { tokens, last_refill, slots })
                    }
                    (None, None, Some(start), Some(count), Some(previous)) => {
                        Some(State::Window { start, count, previous })
                    }
                    (None, None, None, None, None) => None,
                    other => panic!("seed {seed}, step {step}: unexpected fields {other:?}"),
                };
                assert_eq!(stored, *state, "seed {seed}, step {step}: stored state; {op:?} {call:?} before {before:?}");
            }
        }
    }
}

#[test]
fn fractional_tokens_accumulate() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("fraction", 1);
    let spec = Spec::new(TB, 1.0, 0.5, 1.0, Mode::Enforce);
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(10_000)), vec![1, 0, 0, 0, 2000, 1, 2]);
    // 0.9 s later: 0.45 tokens, denied; retry in 1.1 s.
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(10_900)), vec![0, 1, 0, 1100, 1100, 1, 2]);
    // 1.1 s after that the bucket holds exactly 1.0 (a denied call wrote nothing).
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(12_000)), vec![1, 0, 0, 0, 2000, 1, 2]);
    let tokens: String = redis::cmd("HGET").arg(&keys[0]).arg("tokens").query(&mut con).unwrap();
    assert_eq!(tokens, "0");
}

#[test]
fn allowed_calls_set_the_ttl_and_denied_calls_leave_it() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("ttl", 1);
    let spec = Spec::new(TB, 1.0, 1.0 / 60.0, 1.0, Mode::Enforce);
    run(&mut con, &keys, &[(spec, 90)], None);
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
    assert!((134..=135).contains(&ttl), "a first write sets a TTL and a half: TTL {ttl}");
    redis::cmd("EXPIRE").arg(&keys[0]).arg(500).query::<i64>(&mut con).unwrap();
    assert_eq!(run(&mut con, &keys, &[(spec, 90)], None)[0], 0);
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
    assert!(ttl > 400, "a denied call must not touch the TTL: {ttl}");
}

#[test]
fn cost_larger_than_what_is_left_is_denied_without_debit() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("cost", 1);
    let five = Spec::new(TB, 5.0, 1.0, 3.0, Mode::Enforce);
    assert_eq!(run(&mut con, &keys, &[(five, 60)], Some(1_000)), vec![1, 0, 2, 0, 3000, 5, 5]);
    assert_eq!(run(&mut con, &keys, &[(five, 60)], Some(1_000)), vec![0, 1, 2, 1000, 3000, 5, 5]);
    let tokens: String = redis::cmd("HGET").arg(&keys[0]).arg("tokens").query(&mut con).unwrap();
    assert_eq!(tokens, "2", "nothing debited");
}

#[test]
fn several_buckets_are_all_or_nothing() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("multi", 2);
    let roomy = Spec::new(TB, 10.0, 1.0, 1.0, Mode::Enforce);
    let tight = Spec::new(TB, 1.0, 1.0, 1.0, Mode::Enforce);
    assert_eq!(run(&mut con, &keys, &[(roomy, 60), (tight, 60)], Some(5_000))[..2], [1, 0]);
    assert_eq!(run(&mut con, &keys, &[(roomy, 60), (tight, 60)], Some(5_000))[..2], [0, 2]);
    let tokens: String = redis::cmd("HGET").arg(&keys[0]).arg("tokens").query(&mut con).unwrap();
    assert_eq!(tokens, "9", "the roomy bucket paid only for the admitted call");
}

#[test]
fn redis_time_mode_admits_capacity_then_denies() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("time", 1);
    let spec = Spec::new(TB, 3.0, 5.0 / 60.0, 1.0, Mode::Enforce);
    let allowed: Vec<i64> = (0..5).map(|_| run(&mut con, &keys, &[(spec, 60)], None)[0]).collect();
    assert_eq!(allowed, vec![1, 1, 1, 0, 0]);
    let last: f64 =
        redis::cmd("HGET").arg(&keys[0]).arg("lastRefill").query::<String>(&mut con).unwrap().parse().unwrap();
    let (sec, _): (u64, u64) = redis::cmd("TIME").query(&mut con).unwrap();
    assert!((last - sec as f64).abs() < 5.0, "lastRefill {last} comes from Redis TIME {sec}");
}

#[test]
fn worker_clock_behind_the_stored_time_mints_nothing() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("skew", 1);
    let spec = Spec::new(TB, 2.0, 1.0, 1.0, Mode::Enforce);
    let t = 1_800_000_000_000u64;
    run(&mut con, &keys, &[(spec, 60)], Some(t + 30_000)); // an instance 30 s ahead
    run(&mut con, &keys, &[(spec, 60)], Some(t + 30_000));
    // An instance 30 s behind sees an empty bucket, not 30 s of refill.
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(t))[..2], [0, 1]);
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(t + 31_000))[..2], [1, 0]);
}

#[test]
fn shadow_buckets_report_but_never_deny() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("shadow", 2);
    let shadow = Spec::new(TB, 1.0, 1.0, 1.0, Mode::Shadow);
    let enforced = Spec::new(TB, 10.0, 1.0, 1.0, Mode::Enforce);
    assert_eq!(
        run(&mut con, &keys, &[(shadow, 60), (enforced, 60)], Some(1_000)),
        vec![1, 0, 0, 0, 1000, 1, 1, 9, 0, 1000, 10, 10]
    );
    // The shadow bucket is empty: it would deny (retry > 0) but the call is allowed and it is not overdrawn.
    assert_eq!(
        run(&mut con, &keys, &[(shadow, 60), (enforced, 60)], Some(1_000)),
        vec![1, 0, 0, 1000, 1000, 1, 1, 8, 0, 2000, 10, 10]
    );
    let tokens: String = redis::cmd("HGET").arg(&keys[0]).arg("tokens").query(&mut con).unwrap();
    assert_eq!(tokens, "0");
}

#[test]
fn unreadable_state_is_treated_as_empty_not_full() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("corrupt", 1);
    redis::cmd("HSET")
        .arg(&keys[0])
        .arg("tokens")
        .arg("lots")
        .arg("lastRefill")
        .arg("1")
        .query::<i64>(&mut con)
        .unwrap();
    let spec = Spec::new(TB, 5.0, 1.0, 1.0, Mode::Enforce);
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(2_000))[..2], [0, 1]);
}

#[test]
fn a_burst_straddling_a_window_edge_never_admits_twice_the_limit() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("edge", 1);
    let spec = Spec::new(SW, 10.0, 10.0 / 60.0, 1.0, Mode::Enforce);
    let t = 1_800_000_000_000u64;
    let mut admitted =
        |at: u64, n: usize| (0..n).filter(|_| run(&mut con, &keys, &[(spec, 120)], Some(at))[0] == 1).count();
    assert_eq!(admitted(t, 1), 1); // opens the window at t
    let before = admitted(t + 59_990, 30); // the last 10 ms of the window
    let after = admitted(t + 60_010, 30); // the first 10 ms of the next
    assert_eq!((before, after), (9, 0), "a fixed window would admit 9 + 10");
    // Over the whole next window the previous one fades out: at most the limit again, never 2x.
    let later: usize = (1..=6).map(|i| admitted(t + 60_000 + i * 10_000, 30)).sum();
    assert!(later <= 10, "admitted {later} in the next window");
    assert!(1 + before + after < 20);
}

#[test]
fn the_window_ttl_covers_two_windows() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("wttl", 1);
    let spec = Spec::new(SW, 5.0, 5.0 / 60.0, 1.0, Mode::Enforce);
    run(&mut con, &keys, &[(spec, 60)], None); // a TTL argument below two windows is raised
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
    assert!((179..=180).contains(&ttl), "two windows, and half of that again: TTL {ttl}");
}

#[test]
fn an_override_replaces_capacity_and_rate_in_the_same_call() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("override", 2);
    let overrides =
        vec![format!("ratelimit:override:caller:{}", std::process::id()), "ratelimit:override:tier:free".into()];
    let spec = Spec::new(TB, 2.0, 2.0 / 60.0, 1.0, Mode::Enforce);
    let window = Spec { algorithm: SW, ..spec };
    let specs = [(spec, 60), (window, 120)];
    // Limit 1 may take the caller's override, then the tier's; limit 2 only the tier's.
    let indexes = ["3 4".to_string(), "4".to_string()];
    let call =
        |con: &mut redis::Connection, now: u64| run_with(con, &keys, &specs, Some(now), false, &overrides, &indexes);
    let t = 1_800_000_000_000u64;
    assert_eq!(call(&mut con, t), vec![1, 0, 1, 0, 30_000, 2, 60, 1, 0, 120_000, 2, 60]);
    redis::cmd("SET").arg(&overrides[1]).arg(format!("100 {}", 100.0 / 60.0)).query::<()>(&mut con).unwrap();
    let r = call(&mut con, t);
    assert_eq!((r[2], r[4], r[5], r[6]), (0, 60_000, 100, 60), "limit 1 runs on the tier override");
    assert_eq!((r[7], r[10], r[11]), (98, 100, 60), "limit 2 too");
    redis::cmd("SET").arg(&overrides[0]).arg("1 1").query::<()>(&mut con).unwrap();
    let r = call(&mut con, t);
    assert_eq!((r[0], r[1], r[5], r[6]), (0, 1, 1, 1), "the caller's override wins and denies");
    // Garbage in an override key is ignored, not obeyed.
    redis::cmd("SET").arg(&overrides[0]).arg("lots please").query::<()>(&mut con).unwrap();
    assert_eq!(call(&mut con, t)[5], 100);
}

/// Issue 10, item 6: numbers the script formats (the TTL above all) stay in Redis's range whatever
/// an override key or the arguments hold; an override the gateway could never have written is ignored.
#[test]
fn absurd_overrides_and_arguments_never_make_the_script_fail() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("absurd", 2);
    let overrides = vec![format!("ratelimit:override:caller:{{absurd-{}}}", std::process::id())];
    let spec = Spec::new(TB, 2.0, 2.0 / 60.0, 1.0, Mode::Enforce);
    let specs = [(spec, 60), (Spec { algorithm: SW, ..spec }, 120)];
    let indexes = ["2".to_string(), "2".to_string()];
    let t = 1_800_000_000_000u64;
    for value in ["1000000000 0.000000000003", "1e300 1e-300", "5 1e-300", "1e30 1", "inf 1", "nan nan", "-5 1"] {
        redis::cmd("SET").arg(&overrides[0]).arg(value).query::<()>(&mut con).unwrap();
        let r = run_with(&mut con, &keys, &specs, Some(t), false, &overrides, &indexes);
        assert_eq!((r[5], r[10]), (2, 2), "override {value:?} must be ignored");
        let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
        assert!((1..=90).contains(&ttl), "TTL {ttl} with override {value:?}");
    }
    // An absurd TTL argument is clamped, not passed on to EXPIRE as 1e+17.
    let slow = Spec::new(TB, 1e9, 1e9 / 2.88e17, 1.0, Mode::Enforce);
    let r = run_with(&mut con, &fresh_keys("absurd-ttl", 1), &[(slow, 1)], Some(t), false, &[], &[String::new()]);
    assert_eq!(r[0], 1, "the call still decides");
    // So is an in-flight slot's (its EXPIRE takes the TTL as it is).
    let slots = fresh_keys("absurd-slot-ttl", 1);
    let r = raw(&mut con, "", &[&slots[0]], &[["c", "2", "2", "100000000000000000", "1", "0", "id"]], t, &[]);
    assert_eq!(r[0], 1, "the slot is taken");
}

/// An override with a slower full refill than the policy's raises the key's TTL with it: the
/// policy's TTL would expire an emptied bucket before it refilled, handing out free tokens.
#[test]
fn an_override_raises_the_ttl_to_its_own_refill_time() {
    let redis = Redis::start();
    let mut con = redis.connection();
    for (algorithm, expected) in [(TB, 9_000), (SW, 18_000)] {
        let keys = fresh_keys(&format!("override-ttl-{}", algorithm.code()), 1);
        let overrides = vec![format!("ratelimit:override:caller:{{ttl-{}-{}}}", algorithm.code(), std::process::id())];
        redis::cmd("SET").arg(&overrides[0]).arg(format!("100 {}", 1.0 / 60.0)).query::<()>(&mut con).unwrap();
        let spec = Spec::new(algorithm, 5.0, 5.0 / 60.0, 1.0, Mode::Enforce);
        let r = run_with(&mut con, &keys, &[(spec, 60)], Some(1_800_000_000_000), false, &overrides, &["2".into()]);
        assert_eq!((r[0], r[5], r[6]), (1, 100, 6000), "allowed, on the override's numbers");
        let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
        assert!((expected - 2..=expected).contains(&ttl), "{algorithm:?}: TTL {ttl}, want {expected}");
    }
}

#[test]
fn peek_reports_without_consuming_or_writing() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("peek", 2);
    let specs = [(Spec::new(TB, 3.0, 1.0, 1.0, Mode::Enforce), 60), (Spec::new(SW, 3.0, 1.0, 1.0, Mode::Enforce), 60)];
    let none = vec![String::new(); 2];
    let peek = |con: &mut redis::Connection| run_with(con, &keys, &specs, Some(5_000), true, &[], &none);
    assert_eq!(peek(&mut con), vec![1, 0, 3, 0, 0, 3, 3, 3, 0, 0, 3, 3]);
    let exists: i64 = redis::cmd("EXISTS").arg(&keys).query(&mut con).unwrap();
    assert_eq!(exists, 0, "a peek writes nothing");
    run(&mut con, &keys, &specs, Some(5_000));
    assert_eq!(peek(&mut con)[2..4], [2, 0]);
    assert_eq!(peek(&mut con)[7..9], [2, 0], "still 2: peeking consumed nothing");
}

/// One call with raw per-limit arguments `(algorithm, capacity, rate, ttl, cost, mode, arg7)` at `now_ms`
/// (worker clock), `extra` keys after the limits' (the settle marker last for op "4").
fn raw(
    con: &mut redis::Connection,
    op: &str,
    keys: &[&str],
    limits: &[[&str; 7]],
    now_ms: u64,
    extra: &[&str],
) -> Vec<i64> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SCRIPT_PLAIN).arg(keys.len() + extra.len()).arg(keys).arg(extra);
    cmd.arg(now_ms.to_string()).arg(op).arg(limits.len());
    for [algorithm, capacity, rate, ttl, cost, mode, arg] in limits {
        cmd.arg(*algorithm).arg(*capacity).arg(*rate).arg(*ttl).arg(*cost).arg(*mode).arg("").arg(*arg);
    }
    cmd.query(con).expect("script runs")
}

#[test]
fn in_flight_slots_are_taken_all_or_nothing_released_by_id_and_expire() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let slots = format!("rate:inflight-{}:/t!inflight", std::process::id());
    let bucket = format!("rate:inflight-{}:/t#b", std::process::id());
    let t0 = 1_700_000_000_000u64;
    let take = |con: &mut redis::Connection, id: &str, at: u64| {
        let limits = [["c", "2", "2", "60", "1", "0", id], ["t", "10", "1", "60", "1", "0", "0"]];
        raw(con, "", &[&slots, &bucket], &limits, at, &[])
    };
    let a = take(&mut con, "a", t0);
    assert_eq!(&a[..8], &[1, 0, 1, 0, 0, 2, 1, 0], "one slot left");
    assert_eq!(take(&mut con, "b", t0 + 1)[..3], [1, 0, 0]);
    let denied = take(&mut con, "c", t0 + 2);
    assert_eq!(&denied[..5], &[0, 1, 0, 1000, 1000], "denied by the slots: try again in a second");
    assert_eq!(denied[8], 8, "a denied call debits no other limit either");
    let members: Vec<String> = redis::cmd("ZRANGE").arg(&slots).arg(0).arg(-1).query(&mut con).unwrap();
    assert_eq!(members, ["a", "b"], "a denied call writes nothing");
    let ttl: i64 = redis::cmd("TTL").arg(&slots).query(&mut con).unwrap();
    assert!((59..=60).contains(&ttl), "{ttl}");

    // Released by id (twice: harmless); the freed slot is taken at once.
    let release = [["c", "2", "2", "60", "0", "0", "a"]];
    for _ in 0..2 {
        raw(&mut con, "3", &[&slots], &release, t0 + 3, &[]);
    }
    assert_eq!(take(&mut con, "c", t0 + 4)[..3], [1, 0, 0]);
    assert_eq!(take(&mut con, "d", t0 + 5)[0], 0, "b and c hold both slots");

    // A slot whose release never comes expires after its TTL (60 s after it was taken).
    let peek = raw(&mut con, "1", &[&slots], &[["c", "2", "2", "60", "1", "0", ""]], t0 + 60_002, &[]);
    assert_eq!(&peek[..3], &[1, 0, 1], "b expired; a peek counts live slots only");
    let count: i64 = redis::cmd("ZCARD").arg(&slots).query(&mut con).unwrap();
    assert_eq!(count, 2, "a peek writes nothing");
    assert_eq!(take(&mut con, "e", t0 + 60_005)[..3], [1, 0, 1], "c (taken at +4) expired at +60004");
    let live: i64 =
        redis::cmd("ZCOUNT").arg(&slots).arg(format!("({}", t0 + 60_005)).arg("+inf").query(&mut con).unwrap();
    assert_eq!(live, 1, "only e is live (expired members are pruned when slots are released, not taken)");

    // Shadow: never denies, takes a slot only when one is free.
    let shadow = |con: &mut redis::Connection, id: &str| {
        raw(con, "", &[&slots], &[["c", "1", "1", "60", "1", "1", id]], t0 + 60_006, &[])
    };
    let s = shadow(&mut con, "f");
    assert_eq!((s[0], s[3]), (1, 1000), "full (e holds the one slot): allowed, would have denied");
    let taken: i64 = redis::cmd("ZSCORE").arg(&slots).arg("f").query::<Option<i64>>(&mut con).unwrap().map_or(0, |_| 1);
    assert_eq!(taken, 0, "a shadow limit that cannot pay takes nothing");

    // Expired members are pruned by the releases made in one second of every eight (epoch seconds
    // divisible by 8; t0 is one): c and b (expired) are left by a release at +61 s, pruned by one at +64 s.
    let members = |con: &mut redis::Connection| -> Vec<String> {
        redis::cmd("ZRANGE").arg(&slots).arg(0).arg(-1).query(con).unwrap()
    };
    assert_eq!(members(&mut con), ["b", "c", "e"]);
    raw(&mut con, "3", &[&slots], &[["c", "2", "2", "60", "0", "0", "nobody"]], t0 + 61_000, &[]);
    assert_eq!(members(&mut con), ["b", "c", "e"], "not pruned at +61 s");
    raw(&mut con, "3", &[&slots], &[["c", "2", "2", "60", "0", "0", "nobody"]], t0 + 64_000, &[]);
    assert_eq!(members(&mut con), ["e"], "pruned at +64 s");
}

#[test]
fn settling_charges_refunds_never_above_capacity_and_once_per_marker() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let key = format!("rate:settle-{}:/t#cost", std::process::id());
    let marker = format!("ratelimit:settled:test-{}", std::process::id());
    let t0 = 1_700_000_000_000u64;
    let tokens = |con: &mut redis::Connection| -> f64 {
        let v: String = redis::cmd("HGET").arg(&key).arg("tokens").query(con).unwrap();
        v.parse().unwrap()
    };
    // Capacity 100 at a token a day: reserve 10, then settle.
    fn bucket(cost: &str) -> [&str; 7] {
        ["t", "100", "0.0000115740740740741", "60", cost, "0", "0"]
    }
    raw(&mut con, "", &[&key], &[bucket("10")], t0, &[]);
    assert_eq!(tokens(&mut con), 90.0);
    let once = |con: &mut redis::Connection, delta: &str| {
        raw(
            con,
            "4",
            &[&key],
            &[["t", "100", "0.0000115740740740741", "60", delta, "0", &t0.to_string()]],
            t0,
            &[&marker],
        )
    };
    assert_eq!(once(&mut con, "20")[0], 1, "applied");
    assert_eq!(tokens(&mut con), 70.0, "actual 30 for a reservation of 10");
    assert_eq!(once(&mut con, "20")[..3], [0, 0, 0], "the same request settled again: nothing");
    assert_eq!(tokens(&mut con), 70.0);
    let ttl: i64 = redis::cmd("TTL").arg(&marker).query(&mut con).unwrap();
    assert!(ttl > 0, "the marker expires");

    // Refunds never exceed capacity; charges may leave debt, and the key lives until it is full again.
    raw(&mut con, "3", &[&key], &[bucket("-1000")], t0, &[]);
    assert_eq!(tokens(&mut con), 100.0);
    // (a debt deeper than half the TTL: the deadline's slack alone would not cover it)
    raw(&mut con, "3", &[&key], &[bucket("250")], t0, &[]);
    assert_eq!(tokens(&mut con), -150.0);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut con).unwrap();
    assert!(ttl >= 250 * 86_400 - 1, "{ttl}: debt is not forgiven by an expiry");
    // A refund of another request while in debt keeps it so (it wrote the short TTL before).
    raw(&mut con, "3", &[&key], &[bucket("-5")], t0, &[]);
    assert_eq!(tokens(&mut con), -145.0);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut con).unwrap();
    assert!(ttl >= 245 * 86_400 - 1, "{ttl}: a refund in debt must not shorten the key's life");
    let denied = raw(&mut con, "", &[&key], &[bucket("1")], t0, &[]);
    assert_eq!(&denied[..3], &[0, 1, -145], "in debt: denied, the reply shows the debt (headers say 0)…");
    assert!(denied[3] >= 146 * 86_400_000, "…and the wait covers the debt: {}", denied[3]);
}

/// Found in review (issue 25): a limit whose algorithm changes keeps its key. A fixed window's
/// PEXPIRE (its window's end) could shorten a bucket's hash whose deadline `x` still promised more,
/// and the bucket, trusting `x`, sent no EXPIRE again: the key would die before it was full. A
/// bucket or window that finds a fixed window's count in its hash drops it and sets the TTL anew.
#[test]
fn a_key_whose_algorithm_changed_sets_its_ttl_anew() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let key = fresh_keys("switch", 1)[0].clone();
    let t0 = 1_800_000_000_000u64 / 60_000 * 60_000 + 50_000; // 10 s before a minute's end
    let (rate, fixed_rate) = ((100.0f64 / 60.0).to_string(), (5.0f64 / 60.0).to_string());
    let bucket = [["t", "100", rate.as_str(), "60", "50", "0", "0"]];
    let pttl = |con: &mut redis::Connection| redis::cmd("PTTL").arg(&key).query::<i64>(con).unwrap();
    assert_eq!(raw(&mut con, "", &[&key], &bucket, t0, &[])[0], 1);
    assert!(pttl(&mut con) > 80_000, "a TTL and a half");
    assert_eq!(raw(&mut con, "", &[&key], &[["f", "5", fixed_rate.as_str(), "60", "1", "0", "0"]], t0 + 1, &[])[0], 1);
    assert!(pttl(&mut con) <= 10_000, "the fixed window's end");
    assert_eq!(raw(&mut con, "", &[&key], &bucket, t0 + 2, &[])[0], 1);
    assert!(pttl(&mut con) >= 59_000, "the bucket needs ~59 s to be full again: PTTL {}", pttl(&mut con));
    let n: Option<String> = redis::cmd("HGET").arg(&key).arg("n").query(&mut con).unwrap();
    assert_eq!(n, None, "the stray count dropped");
}
