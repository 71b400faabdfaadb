//! One limit's policy: algorithm, capacity, refill rate and TTL. Invalid
//! policy cannot be built.

use std::num::NonZeroU32;

use crate::policy::rate::Refill;
pub(crate) use crate::policy::rate::MAX_CAPACITY;
use crate::policy::settle::Settle;

/// The longest TTL accepted (a year).
pub(crate) const MAX_TTL_SECONDS: u64 = 365 * 86_400;
/// The longest time an empty bucket may take to refill (or a window may last): a hundred years. The
/// script sets TTLs of up to two windows, and Lua writes numbers from 10^14 on with an exponent,
/// which `EXPIRE` refuses; this bound keeps every TTL far below that.
pub(crate) const MAX_WINDOW_SECONDS: u64 = 100 * 365 * 86_400;

/// Which number of a limit is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitPart {
    Capacity,
    Refill,
    Ttl,
}

/// Why a limit cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitError {
    pub part: LimitPart,
    pub message: String,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// A bucket of `capacity` tokens refilled continuously at the refill rate: bursts up to the
    /// capacity, then the refill rate.
    #[default]
    TokenBucket,
    /// A sliding-window counter: at most about `capacity` requests in any window of
    /// `capacity / refill` seconds (the previous window's count weighted by its overlap).
    SlidingWindow,
    /// A fixed window aligned to the clock: at most `capacity` requests in each window of
    /// `capacity / refill` seconds counted from the epoch (the cheapest exact algorithm: one command).
    FixedWindow,
    /// In-flight slots: at most `capacity` requests at the origin at once, each slot taken with the
    /// decision and released when its response has been delivered (or expiring after the TTL).
    Concurrency,
}

impl Algorithm {
    /// The name in policy documents and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token-bucket",
            Algorithm::SlidingWindow => "sliding-window",
            Algorithm::FixedWindow => "fixed-window",
            Algorithm::Concurrency => "concurrency",
        }
    }

    pub fn parse(text: &str) -> Option<Algorithm> {
        match text {
            "token-bucket" => Some(Algorithm::TokenBucket),
            "sliding-window" => Some(Algorithm::SlidingWindow),
            "fixed-window" => Some(Algorithm::FixedWindow),
            _ => None,
        }
    }

    /// The script's code for it.
    pub fn code(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "t",
            Algorithm::SlidingWindow => "w",
            Algorithm::FixedWindow => "f",
            Algorithm::Concurrency => "c",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    capacity: NonZeroU32,
    refill: Refill,
    ttl_seconds: u64,
    algorithm: Algorithm,
    /// Whether isolates may lease this limit's tokens (a policy's `"lease": false` says no).
    lease: bool,
    /// A cost settled after the response (`"cost": { "reserve": …, "settle": … }`).
    settle: Option<Box<Settle>>,
    /// The script's arguments for this limit (capacity, rate, TTL), written once: formatting a float
    /// on every request is a measurable share of a decision's CPU.
    args: [String; 3],
}

impl Limit {
    /// A bucket of `capacity` tokens refilled at `refill`. The bucket's TTL is
    /// `ttl_seconds`, raised to the time a bucket needs to refill completely:
    /// an empty bucket that expired sooner would come back full, handing out
    /// tokens that were never refilled.
    pub fn new(capacity: u32, refill: Refill, ttl_seconds: u64) -> Result<Limit, LimitError> {
        let error = |part, message: String| LimitError { part, message };
        let capacity = NonZeroU32::new(capacity).filter(|c| c.get() <= MAX_CAPACITY).ok_or_else(|| {
            error(LimitPart::Capacity, format!("the capacity must be a whole number from 1 to {MAX_CAPACITY}"))
        })?;
        if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
            return Err(error(LimitPart::Ttl, format!("the TTL must be from 1 to {MAX_TTL_SECONDS} seconds")));
        }
        let window = refill.seconds_for(f64::from(capacity.get()));
        if window > MAX_WINDOW_SECONDS {
            let years = window / (365 * 86_400);
            return Err(error(
                LimitPart::Refill,
                format!(
                    "{capacity} tokens at this refill rate take {years} years to refill; at most 100 years \
                     (raise the refill or lower the capacity)"
                ),
            ));
        }
        let ttl_seconds = ttl_seconds.max(window);
        let args = [capacity.to_string(), refill.tokens_per_second().to_string(), ttl_seconds.to_string()];
        Ok(Limit { capacity, refill, ttl_seconds, algorithm: Algorithm::TokenBucket, lease: true, settle: None, args })
    }

    /// The same numbers counted by `algorithm`. A sliding window's TTL covers two windows (the
    /// previous window still weighs on the current one).
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Limit {
        if algorithm == Algorithm::SlidingWindow {
            self.ttl_seconds = self.ttl_seconds.max(2 * self.window_seconds());
            self.args[2] = self.ttl_seconds.to_string();
        }
        self.algorithm = algorithm;
        self
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// At most `slots` requests in flight at once; a slot whose release never comes expires after
    /// `slot_ttl_seconds`. (The script reads it as capacity `slots` refilled `slots` per second, so
    /// `RateLimit-Policy` says `w=1`.) Never leased.
    pub fn concurrency(slots: u32, slot_ttl_seconds: u64) -> Result<Limit, LimitError> {
        let rate = Refill::per_second(f64::from(slots.clamp(1, MAX_CAPACITY)))
            .map_err(|m| LimitError { part: LimitPart::Capacity, message: m })?;
        let mut limit = Limit::new(slots, rate, slot_ttl_seconds)?;
        limit.algorithm = Algorithm::Concurrency;
        limit.lease = false;
        Ok(limit)
    }

    /// The same limit with its cost settled after the response (never leased: the cost is not known
    /// when the tokens would be spent).
    pub fn with_settle(mut self, settle: Settle) -> Limit {
        self.settle = Some(Box::new(settle));
        self.lease = false;
        self
    }

    /// How its cost is settled after the response, if it is.
    pub fn settle(&self) -> Option<&Settle> {
        self.settle.as_deref()
    }

    /// Whether it counts requests in flight rather than arrivals.
    pub fn is_concurrency(&self) -> bool {
        self.algorithm == Algorithm::Concurrency
    }

    /// The same limit, leasable or not.
    pub fn with_lease(mut self, lease: bool) -> Limit {
        self.lease = lease;
        self
    }

    /// Whether isolates may lease this limit's tokens (when the bucket is large enough; see
    /// [`crate::limiter`]).
    pub fn lease(&self) -> bool {
        self.lease
    }

    /// Capacity, rate (tokens per second) and TTL as the script takes them.
    pub fn script_args(&self) -> &[String; 3] {
        &self.args
    }

    pub fn capacity(&self) -> u32 {
        self.capacity.get()
    }

    pub fn refill(&self) -> Refill {
        self.refill
    }

    /// The TTL the script sets: never shorter than [`Limit::window_seconds`].
    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// Whole seconds for an empty bucket to become full, or a sliding window's length (the `w` of
    /// `RateLimit-Policy`).
    pub fn window_seconds(&self) -> u64 {
        self.refill.seconds_for(f64::from(self.capacity.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refill(text: &str) -> Refill {
        Refill::parse(text).unwrap()
    }

    #[test]
    fn ttl_is_raised_to_the_full_refill_time() {
        // 5 tokens at 1/min take 300 s to refill; a 60 s TTL would hand out free tokens.
        let slow = Limit::new(5, refill("1/min"), 60).unwrap();
        assert_eq!(slow.ttl_seconds(), 300);
        assert_eq!(slow.window_seconds(), 300);
        let fast = Limit::new(5, refill("5/min"), 60).unwrap();
        assert_eq!(fast.ttl_seconds(), 60);
        let long = Limit::new(5, refill("10/s"), 3600).unwrap();
        assert_eq!(long.ttl_seconds(), 3600);
    }

    #[test]
    fn a_sliding_window_keeps_two_windows() {
        let w = Limit::new(5, refill("5/min"), 60).unwrap().with_algorithm(Algorithm::SlidingWindow);
        assert_eq!((w.window_seconds(), w.ttl_seconds(), w.algorithm()), (60, 120, Algorithm::SlidingWindow));
        assert_eq!(Algorithm::parse(w.algorithm().name()), Some(Algorithm::SlidingWindow));
        assert_eq!(Algorithm::parse("fixed-window"), Some(Algorithm::FixedWindow));
        assert_eq!(Algorithm::parse("concurrency"), None, "in-flight limits say \"concurrency\": N");
    }

    /// Issue 10, item 6: capacity 1e9 at 0.0003/d was accepted, and its TTL (2.88e17 s) made every
    /// script call fail, which fail-open turned into no limit at all.
    #[test]
    fn a_limit_slower_than_a_hundred_years_to_refill_is_refused() {
        let e = Limit::new(MAX_CAPACITY, refill("0.0003/d"), 60).unwrap_err();
        assert_eq!(e.part, LimitPart::Refill, "{e}");
        assert!(e.to_string().contains("100 years"), "{e}");
    }

    /// Every limit that can be built gives the script numbers it can use: whole TTL seconds that
    /// Redis accepts (in ms too, below 2^53), plain decimal capacity and rate, and reply fields in range.
    #[test]
    fn every_accepted_limit_gives_the_script_usable_numbers() {
        let capacities = [1, 2, 5, 999, 1_000_000, 123_456_789, MAX_CAPACITY];
        let rates = ["0.0003/d", "1/d", "0.5/h", "1/min", "5/min", "1/s", "1000/s", "1000000000/s"];
        let mut accepted = 0;
        for &c in &capacities {
            for r in rates {
                for ttl in [1, 60, MAX_TTL_SECONDS] {
                    for algorithm in [Algorithm::TokenBucket, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
                        let Ok(l) = Limit::new(c, refill(r), ttl) else { continue };
                        let l = l.with_algorithm(algorithm);
                        accepted += 1;
                        assert!(l.window_seconds() <= MAX_WINDOW_SECONDS, "{c} at {r}");
                        assert!(l.ttl_seconds() <= 2 * MAX_WINDOW_SECONDS, "{c} at {r}");
                        assert!((l.ttl_seconds() as f64) * 1000.0 < 9.007e15, "{c} at {r}");
                        for arg in l.script_args() {
                            assert!(arg.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{arg:?} for {c} at {r}");
                        }
                    }
                }
            }
        }
        assert!(accepted > 100, "the grid exercised only {accepted} limits");
    }

    #[test]
    fn rejects_zero_and_huge_capacity_and_ttl() {
        assert!(Limit::new(0, refill("1/s"), 60).is_err());
        assert!(Limit::new(MAX_CAPACITY + 1, refill("1/s"), 60).is_err());
        assert!(Limit::new(5, refill("1/s"), 0).is_err());
        assert!(Limit::new(5, refill("1/s"), MAX_TTL_SECONDS + 1).is_err());
        assert!(Limit::new(MAX_CAPACITY, refill("1/s"), MAX_TTL_SECONDS).is_ok());
    }
}
