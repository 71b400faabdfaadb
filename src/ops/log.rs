//! The gateway's log lines: each one JSON object on one line (the executor `console.log`s the text), so
//! Workers Logs, `wrangler tail` and Logpush read fields instead of prose. Field names are stable (the
//! docs/logs.md lists them): `event` (what happened), `level` (`info`, `warn`, `error`), `via` (`http` or
//! `rpc`), `rule`, `limit`, `reason`, `status`, `variable`, `caller`, `detail`.
//!
//! A caller appears only as [`caller_id`]: a short keyed hash unless `LOG_CALLER_IDS = "plain"`.

use std::fmt::Write;

use sha2::{Digest, Sha256};

use crate::json::Obj;
use crate::policy::config::LogCallerIds;

/// Hex digits of a hashed caller id (64 bits: distinct for any realistic number of callers).
pub(crate) const HASH_HEX_DIGITS: usize = 16;

/// One log line under construction.
pub(crate) struct Line(Obj);

impl Line {
    /// A line for `event` at `level`.
    pub(crate) fn new(event: &str, level: &str) -> Line {
        Line(Obj::new().str("event", event).str("level", level))
    }

    pub(crate) fn str(self, key: &str, value: &str) -> Line {
        Line(self.0.str(key, value))
    }

    /// The caller, as `ids` says to name it.
    pub(crate) fn caller(self, ids: &LogCallerIds, subject: &str) -> Line {
        let id = caller_id(ids, subject);
        self.str("caller", &id)
    }

    pub(crate) fn finish(self) -> String {
        self.0.finish()
    }
}

/// How a log line names the caller `subject` (as in bucket keys): `h:` and [`HASH_HEX_DIGITS`] hex digits
/// of SHA-256 keyed with the deployment's key, or the subject itself when plain ids are configured.
pub fn caller_id(ids: &LogCallerIds, subject: &str) -> String {
    match ids {
        LogCallerIds::Plain => subject.to_string(),
        LogCallerIds::Hashed { key } => {
            let digest = Sha256::new().chain_update(key).chain_update(subject.as_bytes()).finalize();
            let mut out = String::with_capacity(2 + HASH_HEX_DIGITS);
            out.push_str("h:");
            for b in &digest[..HASH_HEX_DIGITS / 2] {
                let _ = write!(out, "{b:02x}");
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_and_names_callers_by_keyed_hash_unless_plain() {
        let a = LogCallerIds::Hashed { key: [1; 32] };
        let b = LogCallerIds::Hashed { key: [2; 32] };
        let line = Line::new("shadow_denied", "info").str("limit", "l \"x\"\n").caller(&a, "alice").finish();
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["level"].as_str(), v["limit"].as_str()),
            (Some("shadow_denied"), Some("info"), Some("l \"x\"\n"))
        );
        let hashed = v["caller"].as_str().unwrap();
        assert!(
            hashed.starts_with("h:") && hashed.len() == 2 + HASH_HEX_DIGITS && !hashed.contains("alice"),
            "{hashed}"
        );
        assert_eq!(caller_id(&a, "alice"), hashed, "the same caller, the same hash");
        assert_ne!(caller_id(&a, "bob"), hashed);
        assert_ne!(caller_id(&b, "alice"), hashed, "another deployment's key, another hash");
        assert_eq!(caller_id(&LogCallerIds::Plain, "@ip/203.0.113.7"), "@ip/203.0.113.7");
    }
}
