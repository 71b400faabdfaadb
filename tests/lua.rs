//! The Lua script against a real Redis: its embedded SHA1s, and bit-for-bit
//! agreement with the Rust reference bucket (src/bucket.rs).

mod common;

use common::{Redis, Rng};
use edge_ratelimit::bucket::{self, Spec, State};
use edge_ratelimit::{TOKEN_BUCKET_FLAGGED, TOKEN_BUCKET_FLAGGED_SHA, TOKEN_BUCKET_PLAIN, TOKEN_BUCKET_PLAIN_SHA};

/// Calls the plain script (vanilla Redis rejects the Upstash flag) in worker-clock mode at `now_ms`.
fn run(con: &mut redis::Connection, keys: &[String], specs: &[(Spec, u64)], now_ms: Option<u64>) -> Vec<i64> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(TOKEN_BUCKET_PLAIN).arg(keys.len()).arg(keys);
    cmd.arg(now_ms.map_or(String::new(), |ms| ms.to_string()));
    for (spec, ttl) in specs {
        cmd.arg(spec.capacity.to_string()).arg(spec.rate.to_string()).arg(ttl).arg(spec.cost.to_string());
        cmd.arg(if spec.shadow { "1" } else { "0" });
    }
    cmd.query(con).expect("script runs")
}

fn fresh_keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("rate:{prefix}-{}-{i}:/t", std::process::id())).collect()
}

#[test]
fn embedded_sha_of_the_plain_script_equals_script_load() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(TOKEN_BUCKET_PLAIN).query(&mut con).unwrap();
    assert_eq!(sha, TOKEN_BUCKET_PLAIN_SHA);
}

#[test]
fn vanilla_redis_rejects_the_upstash_flag_as_the_client_expects() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let err = redis::cmd("SCRIPT").arg("LOAD").arg(TOKEN_BUCKET_FLAGGED).query::<String>(&mut con).unwrap_err();
    let text = format!("{:?} {:?}", err.code(), err.detail());
    assert!(text.contains("shebang"), "{text}");
    // The flagged digest is the SHA1 of the text as sent (what Upstash and upstash-local answer).
    // Redis's own SHA1 (redis.sha1hex) of the text as sent.
    let sha: String = redis::cmd("EVAL")
        .arg("return redis.sha1hex(ARGV[1])")
        .arg(0)
        .arg(TOKEN_BUCKET_FLAGGED)
        .query(&mut con)
        .unwrap();
    assert_eq!(sha, TOKEN_BUCKET_FLAGGED_SHA);
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
            let capacity = 1.0 + rng.below(20) as f64;
            let rate = [5.0 / 60.0, 10.0, 0.5, 1.0 / 3.0, 1000.0 / 7.0][rng.below(5) as usize];
            specs.push(Spec { capacity, rate, cost: 1.0, shadow: rng.below(4) == 0 });
        }
        let mut states: Vec<Option<State>> = vec![None; n];
        let mut now_ms: u64 = 1_700_000_000_000 + rng.below(1_000_000);
        for step in 0..150 {
            now_ms += [0, 1, 7, 100, 333, 1000, 12_000][rng.below(7) as usize];
            if rng.below(20) == 0 {
                now_ms -= 500; // a Worker clock that runs behind: the bucket's time must not go back
            }
            let call: Vec<(Spec, u64)> = specs
                .iter()
                .map(|s| {
                    let cost = 1.0 + rng.below(3) as f64;
                    (Spec { cost: cost.min(s.capacity), ..*s }, 3600)
                })
                .collect();
            let call_specs: Vec<Spec> = call.iter().map(|(s, _)| *s).collect();
            let expected = bucket::call(&mut states, &call_specs, now_ms as f64 / 1000.0).to_flat();
            let got = run(&mut con, &keys, &call, Some(now_ms));
            assert_eq!(got, expected, "seed {seed}, step {step}");
            for (key, state) in keys.iter().zip(&states) {
                let stored: (Option<String>, Option<String>) =
                    redis::cmd("HMGET").arg(key).arg("tokens").arg("lastRefill").query(&mut con).unwrap();
                match state {
                    None => assert_eq!(stored, (None, None)),
                    Some(s) => {
                        let tokens: f64 = stored.0.unwrap().parse().unwrap();
                        let last: f64 = stored.1.unwrap().parse().unwrap();
                        assert_eq!((tokens, last), (s.tokens, s.last_refill), "seed {seed}, step {step}: stored state");
                    }
                }
            }
        }
    }
}

#[test]
fn fractional_tokens_accumulate() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("fraction", 1);
    let spec = Spec { capacity: 1.0, rate: 0.5, cost: 1.0, shadow: false };
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(10_000)), vec![1, 0, 0, 0, 2000]);
    // 0.9 s later: 0.45 tokens, denied; retry in 1.1 s.
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(10_900)), vec![0, 1, 0, 1100, 1100]);
    // 1.1 s after that the bucket holds exactly 1.0 (a denied call wrote nothing).
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(12_000)), vec![1, 0, 0, 0, 2000]);
    let tokens: String = redis::cmd("HGET").arg(&keys[0]).arg("tokens").query(&mut con).unwrap();
    assert_eq!(tokens, "0");
}

#[test]
fn allowed_calls_set_the_ttl_and_denied_calls_leave_it() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("ttl", 1);
    let spec = Spec { capacity: 1.0, rate: 1.0 / 60.0, cost: 1.0, shadow: false };
    run(&mut con, &keys, &[(spec, 90)], None);
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut con).unwrap();
    assert!((89..=90).contains(&ttl), "TTL {ttl}");
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
    let five = Spec { capacity: 5.0, rate: 1.0, cost: 3.0, shadow: false };
    assert_eq!(run(&mut con, &keys, &[(five, 60)], Some(1_000)), vec![1, 0, 2, 0, 3000]);
    assert_eq!(run(&mut con, &keys, &[(five, 60)], Some(1_000)), vec![0, 1, 2, 1000, 3000]);
    let tokens: String = redis::cmd("HGET").arg(&keys[0]).arg("tokens").query(&mut con).unwrap();
    assert_eq!(tokens, "2", "nothing debited");
}

#[test]
fn several_buckets_are_all_or_nothing() {
    let redis = Redis::start();
    let mut con = redis.connection();
    let keys = fresh_keys("multi", 2);
    let roomy = Spec { capacity: 10.0, rate: 1.0, cost: 1.0, shadow: false };
    let tight = Spec { capacity: 1.0, rate: 1.0, cost: 1.0, shadow: false };
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
    let spec = Spec { capacity: 3.0, rate: 5.0 / 60.0, cost: 1.0, shadow: false };
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
    let spec = Spec { capacity: 2.0, rate: 1.0, cost: 1.0, shadow: false };
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
    let shadow = Spec { capacity: 1.0, rate: 1.0, cost: 1.0, shadow: true };
    let enforced = Spec { capacity: 10.0, rate: 1.0, cost: 1.0, shadow: false };
    assert_eq!(run(&mut con, &keys, &[(shadow, 60), (enforced, 60)], Some(1_000)), vec![1, 0, 0, 0, 1000, 9, 0, 1000]);
    // The shadow bucket is empty: it would deny (retry > 0) but the call is allowed and it is not overdrawn.
    assert_eq!(
        run(&mut con, &keys, &[(shadow, 60), (enforced, 60)], Some(1_000)),
        vec![1, 0, 0, 1000, 1000, 8, 0, 2000]
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
    let spec = Spec { capacity: 5.0, rate: 1.0, cost: 1.0, shadow: false };
    assert_eq!(run(&mut con, &keys, &[(spec, 60)], Some(2_000))[..2], [0, 1]);
}
