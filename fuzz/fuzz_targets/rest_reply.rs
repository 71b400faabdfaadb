//! Any HTTP status and body from the REST endpoint is classified; a script result is accepted only
//! when it is consistent and within what the call asked: a lease never beyond the tokens wanted or
//! the share of the capacity, tokens left never above the capacity, slots only as the script
//! answers them, a settlement's "done before" only with nothing else said. Never a panic.
#![no_main]

use edge_ratelimit::bucket::Mode;
use edge_ratelimit::{
    parse_script_reply, Algorithm, Asked, Check, Decision, LeaseConfig, Limit, Limiter, Refill, MAX_SF_INTEGER,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 600;
    // What the call asked: a lease of up to `want` tokens per limit.
    let wants = [u64::from(data[2]), u64::from(data[3])];
    let body = String::from_utf8_lossy(&data[4..]);
    let Ok(values) = parse_script_reply(status, &body) else { return };
    let bucket = Limit::new(400, Refill::parse("400/min").expect("valid"), 60).expect("valid");
    let window = bucket.clone().with_algorithm(Algorithm::SlidingWindow);
    let slots = Limit::concurrency(3, 60).expect("valid");
    let kinds = [&bucket, &window, &slots];

    // Decisions and peeks, one or two limits of any kind.
    for n in 1..=2 {
        for first in kinds {
            let limits: Vec<Asked<'_>> = (0..n)
                .map(|i| {
                    let limit = if i == 0 { first } else { &bucket };
                    Asked { want: wants[i], share: 0.25, overridable: i == 1, ..Asked::new("l", limit, false, 1) }
                })
                .collect();
            if let Ok(d) = Decision::from_script(&values, &limits) {
                assert_eq!(d.limits.len(), n);
                assert_eq!(d.allowed, d.denied_by.is_none());
                assert!(d.retry_after_s() >= 1);
                for (i, (s, a)) in d.limits.iter().zip(&limits).enumerate() {
                    assert!(s.remaining <= u64::from(s.capacity), "{s:?}");
                    assert!(s.retry_ms <= MAX_SF_INTEGER && s.reset_ms <= MAX_SF_INTEGER);
                    let leased = values[2 + 6 * i + 5];
                    assert!(leased >= 0 && leased as u64 <= a.want, "a lease of {leased}, {} asked", a.want);
                    assert!(leased == 0 || (d.allowed && !a.limit.is_concurrency()));
                    if !a.overridable {
                        assert_eq!(s.capacity, a.limit.capacity());
                    }
                    if a.limit.is_concurrency() {
                        assert!(s.retry_ms % 1000 == 0 && s.retry_ms <= 1000 && s.window_s == 1, "{s:?}");
                    }
                }
                let _ = edge_ratelimit::rate_limit_headers(&d);
            }
            // Settlements and give-backs (they ask no lease and decide nothing).
            let settled: Vec<Asked<'_>> = limits.iter().map(|a| Asked { want: 0, cost: 0, ..*a }).collect();
            for once in [false, true] {
                if let Ok(repeated) = Decision::settled(&values, &settled, once) {
                    assert!(!repeated || once);
                    let middle = &values[1..values.len() - 1];
                    assert_eq!(repeated, values[0] == 0, "{values:?}");
                    assert!(!repeated || middle.iter().all(|&v| v == 0), "{values:?}");
                    assert!(repeated || (0..n).all(|i| values[2 + 6 * i + 5] == 0), "{values:?}");
                }
            }
        }
    }

    // Through an isolate's limiter: a lease is held only as granted within what was asked.
    let limiter = Limiter::with_leases(1_000, LeaseConfig { share: 0.25, ..LeaseConfig::default() });
    let checks: Vec<Check<'_>> = ["a", "b"]
        .iter()
        .map(|k| Check {
            key: (*k).to_string(),
            name: "l",
            limit: &bucket,
            cost: 1,
            mode: Mode::Enforce,
            rule: "r",
            overrides: Vec::new(),
        })
        .collect();
    if let Ok(d) = limiter.decided(&checks, Ok(values.clone()), &wants, 1.8e12) {
        for ((c, s), want) in checks.iter().zip(&d.limits).zip(wants) {
            let held = limiter.leased_tokens_of(&c.key);
            assert!(held <= want, "{held} held, {want} asked");
            assert!(s.remaining <= u64::from(s.capacity) + held, "{s:?}");
        }
    } else {
        assert_eq!(limiter.leased_tokens(), 0, "a malformed reply leases nothing");
    }
});
