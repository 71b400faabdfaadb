//! Refill rates as written in configuration: `N/s`, `N/min`, `N/h`, `N/d`.

use std::fmt;

use crate::json::Q;

/// The largest capacity accepted; far below 2^53 so every token count stays exact in a double.
pub(crate) const MAX_CAPACITY: u32 = 1_000_000_000;

/// Tokens added to a bucket per second; always finite and > 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refill {
    per_second: f64,
}

/// The fastest refill accepted: beyond this a bucket is not a limit.
const MAX_PER_SECOND: f64 = 1e9;
/// The slowest refill accepted (one token per 10 years): slower rates overflow TTLs.
const MIN_PER_SECOND: f64 = 1.0 / (10.0 * 365.0 * 86_400.0);

impl Refill {
    /// Parses `N/unit`; N may be fractional (`0.5/s`), units are `s`, `min`, `h`, `d`.
    pub fn parse(text: &str) -> Result<Refill, String> {
        let (amount, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("expected N/s, N/min, N/h or N/d (e.g. \"5/min\"), got {}", Q(&text)))?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3_600.0,
            "d" | "day" => 86_400.0,
            other => return Err(format!("unknown unit {} in {}: use s, min, h or d", Q(&other), Q(&text))),
        };
        let amount = amount.trim();
        // Only plain decimals: Rust's float parser would also take "inf", "NaN" and "1e400".
        let plain = !amount.is_empty()
            && amount.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && amount.bytes().filter(|&b| b == b'.').count() <= 1
            && amount != ".";
        let n: f64 = if plain { amount.parse().ok() } else { None }
            .ok_or_else(|| format!("the amount {} in {} is not a plain positive number", Q(&amount), Q(&text)))?;
        Refill::per_second(n / seconds).map_err(|e| format!("{e} (from {})", Q(&text)))
    }

    /// A rate in tokens per second.
    pub fn per_second(rate: f64) -> Result<Refill, String> {
        if !rate.is_finite() || rate <= 0.0 {
            return Err("the refill rate must be greater than zero".into());
        }
        if rate > MAX_PER_SECOND {
            return Err(format!("the refill rate must be at most {MAX_PER_SECOND} tokens per second"));
        }
        if rate < MIN_PER_SECOND {
            return Err("the refill rate must be at least one token per 10 years".into());
        }
        Ok(Refill { per_second: rate })
    }

    pub fn tokens_per_second(self) -> f64 {
        self.per_second
    }

    /// Whole seconds to refill `tokens` from empty (rounded up).
    pub fn seconds_for(self, tokens: f64) -> u64 {
        (tokens / self.per_second).ceil() as u64
    }
}

impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(Refill::parse("5/min").unwrap().tokens_per_second(), 5.0 / 60.0);
        assert_eq!(Refill::parse("10/s").unwrap().tokens_per_second(), 10.0);
        assert_eq!(Refill::parse("36/h").unwrap().tokens_per_second(), 0.01);
        assert_eq!(Refill::parse("86400/d").unwrap().tokens_per_second(), 1.0);
        assert_eq!(Refill::parse(" 0.5 / s ").unwrap().tokens_per_second(), 0.5);
        assert_eq!(Refill::parse("2.5/minute").unwrap().tokens_per_second(), 2.5 / 60.0);
    }

    #[test]
    fn rejects_what_is_not_a_positive_finite_rate() {
        for bad in [
            "",
            "5",
            "5/",
            "/s",
            "5/week",
            "-1/s",
            "0/s",
            "0.0/min",
            "NaN/s",
            "inf/s",
            "1e400/s",
            "1e3/s",
            "./s",
            "1.2.3/s",
            "five/min",
            "9999999999/s",
            "1/3650d",
        ] {
            assert!(Refill::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn error_names_the_unit_problem() {
        let e = Refill::parse("5/week").unwrap_err();
        assert!(e.contains("unknown unit \"week\""), "{e}");
    }

    #[test]
    fn seconds_to_refill_round_up() {
        let r = Refill::parse("5/min").unwrap();
        assert_eq!(r.seconds_for(5.0), 60);
        assert_eq!(r.seconds_for(1.0), 12);
        assert_eq!(Refill::parse("3/s").unwrap().seconds_for(1.0), 1);
    }
}
