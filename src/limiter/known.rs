//! What this isolate knows of the overrides, so that a decision reads only the override keys that
//! exist: no command at all for a caller with none.
//!
//! The admin API keeps every override in the index hash (`ratelimit:overrides`) and moves a version
//! counter ([`VERSION_KEY`]) on every change. An isolate reads both in one pipeline off the response
//! path, then tells the script which of a call's override keys it believes do not exist; the script
//! skips those. At most every [`CHECK_MS`] a call also reads the version key in the same MGET: if the
//! version moved, that very call reads the skipped keys too (its decision is exact), and the isolate
//! reads the index again. Hence:
//! - a changed or deleted override holds at once everywhere (its key is read whenever it exists);
//! - a new override (a caller, tier or route that had none) holds at once in the isolate that set
//!   it, and within [`CHECK_MS`] in every other (the next call of each after that reads the version);
//! - an isolate that knows nothing yet (or whose index is larger than [`KEPT`]) reads every key.

use std::collections::HashMap;

use crate::policy::overrides::{slots_key, Override, INDEX_KEY};

/// The overrides' version: INCR by the admin API on every PUT and DELETE.
pub(crate) const VERSION_KEY: &str = "ratelimit:overrides:version";

/// How long an isolate trusts what it knows without checking the version.
pub(crate) const CHECK_MS: f64 = 10_000.0;

/// The most overrides an isolate holds; with more, every call reads every override key.
pub(crate) const KEPT: usize = 10_000;

/// How long a failed read of the index waits before the next one.
const RETRY_MS: f64 = 1_000.0;

/// A read of the index whose answer has not come after this long is given up (its ticket was lost).
const FETCH_LOST_MS: f64 = 30_000.0;

#[derive(Debug, Default)]
pub(crate) struct Known {
    /// The version and the override keys that existed then (with their expiry, epoch ms); `None`:
    /// nothing known (every key is read).
    known: Option<(i64, HashMap<String, Option<f64>>)>,
    /// When the version was last found unchanged (or the index read), Worker ms.
    checked_ms: f64,
    /// The index must be read (again); not before this time (Worker ms).
    fetch_due: Option<f64>,
    /// A read of the index is on its way, sent then (Worker ms), in this generation.
    fetching: Option<(f64, u64)>,
    /// Moves on with every change made through this isolate: a read sent before it is out of date.
    generation: u64,
}

/// What one call does with its override keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Read the version key in this call, expecting this version.
    pub(crate) check: Option<i64>,
}

impl Known {
    pub(crate) fn new() -> Known {
        Known { fetch_due: Some(0.0), ..Known::default() }
    }

    /// Whether the call must read the version key, and what it expects it to be.
    pub(crate) fn plan(&self, now_ms: f64) -> Plan {
        match &self.known {
            None => Plan { check: Some(-1) },
            Some((v, _)) if !(now_ms - self.checked_ms < CHECK_MS && now_ms >= self.checked_ms) => {
                Plan { check: Some(*v) }
            }
            Some(_) => Plan { check: None },
        }
    }

    /// Whether override `key` may exist (nothing known: it may).
    pub(crate) fn may_exist(&self, key: &str, now_ms: f64) -> bool {
        match &self.known {
            None => true,
            Some((_, keys)) => keys.get(key).is_some_and(|until| until.is_none_or(|t| t > now_ms)),
        }
    }

    /// A call read the overrides' version.
    pub(crate) fn seen(&mut self, version: i64, now_ms: f64) {
        match &self.known {
            Some((v, _)) if *v == version => self.checked_ms = now_ms,
            _ => {
                // Another version: what this isolate knew is out of date (every key is read until the
                // index has been read again).
                self.known = None;
                self.fetch_due.get_or_insert(now_ms);
            }
        }
    }

    /// A call wanted to check the version but could not read it (its keys are on another shard, or in
    /// another slot of a cluster): the index is read again off the response path instead.
    pub(crate) fn check_due(&mut self, now_ms: f64) {
        if self.fetching.is_none() {
            self.fetch_due.get_or_insert(now_ms);
        }
    }

    /// An override changed through this isolate's admin API: read the index again.
    pub(crate) fn changed(&mut self) {
        self.known = None;
        self.fetch_due = Some(0.0);
        self.generation += 1;
    }

    /// The pipeline that reads the version, then the index (in that order: a change between the two
    /// leaves an older version with a newer index, which the next check corrects), if one is due.
    pub(crate) fn fetch(&mut self, now_ms: f64) -> Option<String> {
        let in_flight = self.fetching.is_some_and(|(sent, _)| (0.0..FETCH_LOST_MS).contains(&(now_ms - sent)));
        if in_flight || self.fetch_due.is_none_or(|at| now_ms < at) {
            return None;
        }
        self.fetching = Some((now_ms, self.generation));
        Some(format!(r#"[["GET","{VERSION_KEY}"],["HGETALL","{INDEX_KEY}"]]"#))
    }

    /// The pipeline's reply (`None`: it failed).
    pub(crate) fn fetched(&mut self, reply: Option<(u16, &str)>, now_ms: f64) {
        let Some((_, generation)) = self.fetching.take() else { return }; // (one given up as lost)
        if generation != self.generation {
            return; // sent before a change made here: read again (still due)
        }
        match reply.and_then(|(status, body)| (status == 200).then(|| parse_index(body)).flatten()) {
            Some((version, keys)) if keys.len() <= KEPT => {
                self.known = Some((version, keys));
                self.checked_ms = now_ms;
                self.fetch_due = None;
            }
            Some(_) => {
                // Too many to hold: every key is read, and the index again after a while.
                self.known = None;
                self.fetch_due = Some(now_ms + CHECK_MS);
            }
            None => self.fetch_due = Some(now_ms + RETRY_MS),
        }
    }

    /// How many override keys this isolate holds (`None`: it knows nothing).
    pub(crate) fn held(&self) -> Option<usize> {
        self.known.as_ref().map(|(_, k)| k.len())
    }
}

/// The version and the override keys (with their expiry) of a `[GET version, HGETALL index]`
/// pipeline's reply; `None` when it is not one.
fn parse_index(body: &str) -> Option<(i64, HashMap<String, Option<f64>>)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let [version, index] = v.as_array()?.as_slice() else { return None };
    let version = match &version["result"] {
        serde_json::Value::Null => 0,
        serde_json::Value::String(s) => s.parse().ok()?,
        serde_json::Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    let flat = index["result"].as_array()?;
    if flat.len() % 2 != 0 {
        return None;
    }
    let mut keys = HashMap::with_capacity(flat.len());
    for pair in flat.chunks_exact(2) {
        let key = pair[0].as_str()?;
        // An unreadable record still names its key: it may exist.
        let record = pair[1].as_str().and_then(Override::from_json);
        let until = record.as_ref().and_then(|o| o.expires_at_ms).map(|t| t as f64);
        let (rate, slots) = record.map_or((true, true), |o| (o.capacity.is_some(), o.concurrency.is_some()));
        if rate {
            keys.insert(key.to_string(), until);
        }
        if slots {
            keys.insert(slots_key(key), until);
        }
    }
    Some((version, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = r#"{"scope":"user","name":"alice","capacity":100,"refill":"100/min","created_at_ms":1}"#;

    fn index(version: &str, pairs: &[(&str, &str)]) -> String {
        let flat: Vec<String> = pairs.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect();
        serde_json::json!([{ "result": version }, { "result": flat }]).to_string()
    }

    #[test]
    fn nothing_known_reads_every_key_and_checks_the_version() {
        let k = Known::new();
        assert_eq!(k.plan(0.0), Plan { check: Some(-1) });
        assert!(k.may_exist("ratelimit:override:caller:{bob}", 0.0));
    }

    #[test]
    fn a_known_index_skips_absent_keys_and_checks_every_check_ms() {
        let mut k = Known::new();
        let body = k.fetch(5.0).expect("due at once");
        assert!(body.contains(VERSION_KEY) && body.contains(INDEX_KEY));
        assert_eq!(k.fetch(6.0), None, "one read at a time");
        k.fetched(Some((200, &index("7", &[("ratelimit:override:caller:{alice}", REC)]))), 10.0);
        assert!(k.may_exist("ratelimit:override:caller:{alice}", 11.0));
        assert!(!k.may_exist("ratelimit:override:slots:caller:alice", 11.0), "no concurrency part");
        assert!(!k.may_exist("ratelimit:override:caller:{bob}", 11.0));
        assert_eq!(k.plan(11.0), Plan { check: None });
        assert_eq!(k.plan(10.0 + CHECK_MS), Plan { check: Some(7) });
        assert_eq!(k.plan(9.0), Plan { check: Some(7) }, "a clock that went back checks");
        k.seen(7, 10.0 + CHECK_MS);
        assert_eq!(k.plan(11.0 + CHECK_MS), Plan { check: None }, "checked: trusted again");
        assert_eq!(k.fetch(20.0 + CHECK_MS), None, "nothing due");
    }

    #[test]
    fn another_version_forgets_everything_and_reads_the_index_again() {
        let mut k = Known::new();
        k.fetch(0.0);
        k.fetched(Some((200, &index("7", &[]))), 0.0);
        assert!(!k.may_exist("ratelimit:override:caller:{bob}", 1.0));
        k.seen(8, CHECK_MS);
        assert!(k.may_exist("ratelimit:override:caller:{bob}", CHECK_MS), "every key read again");
        assert_eq!(k.plan(CHECK_MS), Plan { check: Some(-1) });
        assert!(k.fetch(CHECK_MS).is_some());
        k.fetched(None, CHECK_MS + 1.0);
        assert_eq!(k.fetch(CHECK_MS + 2.0), None, "a failed read waits");
        assert!(k.fetch(CHECK_MS + 1.0 + RETRY_MS).is_some());
    }

    #[test]
    fn expired_overrides_count_as_absent_and_unreadable_records_as_present() {
        let mut k = Known::new();
        k.fetch(0.0);
        let timed = r#"{"scope":"tier","name":"free","concurrency":3,"expires_at_ms":500,"created_at_ms":1}"#;
        k.fetched(
            Some((200, &index("2", &[("ratelimit:override:tier:free", timed), ("ratelimit:override:x", "?")]))),
            0.0,
        );
        assert!(k.may_exist("ratelimit:override:slots:tier:free", 499.0));
        assert!(!k.may_exist("ratelimit:override:slots:tier:free", 500.0));
        assert!(!k.may_exist("ratelimit:override:tier:free", 1.0), "no rate part");
        assert!(k.may_exist("ratelimit:override:x", 1.0) && k.may_exist("ratelimit:override:slots:x", 1.0));
    }

    #[test]
    fn a_reply_that_is_not_an_index_is_a_failed_read() {
        for body in ["", "[]", r#"[{"result":"x"},{"result":[]}]"#, r#"[{"result":"1"},{"result":["k"]}]"#] {
            let mut k = Known::new();
            k.fetch(0.0);
            k.fetched(Some((200, body)), 0.0);
            assert_eq!(k.held(), None, "{body}");
        }
        let mut k = Known::new();
        k.fetch(0.0);
        k.fetched(Some((200, r#"[{"result":null},{"result":[]}]"#)), 0.0);
        assert_eq!(k.held(), Some(0), "no version key yet: version 0");
    }

    #[test]
    fn a_read_sent_before_a_change_made_here_is_ignored_and_a_lost_one_is_replaced() {
        let mut k = Known::new();
        assert!(k.fetch(0.0).is_some());
        k.changed(); // a PUT through this isolate while the read is on its way
        k.fetched(Some((200, &index("1", &[]))), 5.0);
        assert_eq!(k.held(), None, "the older index is not trusted");
        assert!(k.fetch(6.0).is_some(), "read again");
        assert_eq!(k.fetch(7.0), None, "one at a time");
        assert!(k.fetch(6.0 + FETCH_LOST_MS).is_some(), "a read never answered is given up");
        k.fetched(Some((200, &index("2", &[]))), 7.0 + FETCH_LOST_MS);
        assert_eq!(k.held(), Some(0));
    }
}
