//! Where a key lives when the data is spread out: on which of several databases (shards), and, on a
//! Redis Cluster, in which slot.
//!
//! A key's **subject** is its hash tag, the text between its first `{` and the first `}` after it
//! (Redis Cluster's own rule): `rate:{alice}:/api/orders` → `alice`. Every key of one subject —
//! its buckets, slots, its own override — carries the same tag, so it hashes to one slot of a
//! cluster and, by [`shard_of`], to one shard. A key without a tag (a route or tier override, the
//! overrides' index and version, metrics) is the same on every shard: the admin API writes it to
//! each one.
//!
//! Shards are chosen by rendezvous (highest random weight) hashing over the shards' names (their
//! URLs): a subject goes to the shard whose score, a mix of the name's and the subject's hashes, is
//! highest. The list's order does not matter, a subject never moves unless its shard leaves or a new
//! shard wins it, and adding an (N+1)th shard moves only about 1/(N+1) of the subjects — all of them
//! to the new shard.

/// The subject (hash tag) of `key`: the text between its first `{` and the first `}` after it, when
/// that is not empty (Redis Cluster hashes the whole key otherwise).
pub fn tag_of(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// The shard (an index into `shards`, the shards' names) that holds the keys of `subject`; 0 when
/// there is one shard. Each shard's score is a 64-bit mix of FNV-1a hashes of its name and of the
/// subject (no cryptography: a caller choosing its shard gains nothing; its own limits are exact
/// wherever they live), so 64 shards cost a few microseconds of CPU, not 64 digests.
pub fn shard_of<S: AsRef<str>>(subject: &str, shards: &[S]) -> usize {
    if shards.len() <= 1 {
        return 0;
    }
    let s = fnv1a(subject.as_bytes());
    let mut best = (0, 0u64);
    for (i, name) in shards.iter().enumerate() {
        let score = mix(fnv1a(name.as_ref().as_bytes()) ^ mix(s));
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where one script call may go: a shard, and on a cluster the subject whose slot every key shares
/// (`None`: keys that are on every shard, or a database that is not a cluster).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    pub shard: u16,
    pub tag: Option<String>,
}

/// The databases behind the gateway: their names (URLs) and whether each is a Redis Cluster (one
/// call must then touch one slot).
#[derive(Clone, Debug, Default)]
pub struct Places {
    shards: Vec<String>,
    cluster: bool,
    /// During a shard change: the list before it (each an index into `shards`), and when it changed
    /// (script time, epoch ms).
    previous: Option<(Vec<String>, Vec<u16>, i64)>,
}

impl Places {
    pub fn new(shards: Vec<String>, cluster: bool) -> Places {
        Places { shards, cluster, previous: None }
    }

    /// During a shard change from `previous` (every one of them also in the current list) made at
    /// `changed_ms`: a subject whose shard changed is decided on both ([`Places::moved`]).
    pub fn with_previous(mut self, previous: Vec<String>, changed_ms: i64) -> Places {
        let at: Vec<u16> =
            previous.iter().map(|p| self.shards.iter().position(|s| s == p).unwrap_or(0) as u16).collect();
        self.previous = Some((previous, at, changed_ms));
        self
    }

    /// One database, not a cluster: everything in one place.
    pub fn single() -> Places {
        Places { shards: vec![String::new()], cluster: false, previous: None }
    }

    /// During a shard change, the shard a key's subject was on before it, when that is another one.
    pub fn moved(&self, key: &str) -> Option<u16> {
        let (previous, at, _) = self.previous.as_ref()?;
        let tag = tag_of(key)?;
        let before = at[shard_of(tag, previous)];
        (before != shard_of(tag, &self.shards) as u16).then_some(before)
    }

    /// When the shard list changed (script time, epoch ms), during a change.
    pub fn changed_ms(&self) -> Option<i64> {
        self.previous.as_ref().map(|p| p.2)
    }

    /// How many shards.
    pub fn shards(&self) -> usize {
        self.shards.len().max(1)
    }

    /// Whether the databases are Redis Clusters.
    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// Whether every call goes to one place (one database, not a cluster): calls are never split.
    pub fn one(&self) -> bool {
        self.shards() == 1 && !self.cluster && self.previous.is_none()
    }

    /// The place of a limit's `key` (a key with a tag; one without goes to shard 0).
    pub fn of(&self, key: &str) -> Place {
        let tag = tag_of(key);
        let shard = tag.map_or(0, |t| shard_of(t, &self.shards)) as u16;
        Place { shard, tag: if self.cluster { tag.map(str::to_string) } else { None } }
    }

    /// Whether a key of no subject (a route or tier override, the overrides' version) can ride in a
    /// call to `place`: on shards it is written to every shard; on a cluster it lives in a slot of its
    /// own, which a call of a subject cannot touch.
    pub fn shared_key_reachable(&self) -> bool {
        !self.cluster
    }

    /// The shard of a subject's keys.
    pub fn shard_of_subject(&self, subject: &str) -> u16 {
        shard_of(subject, &self.shards) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_first_braced_text() {
        assert_eq!(tag_of("rate:{alice}:/api/orders"), Some("alice"));
        assert_eq!(tag_of("rate:{alice}:/a/{b}"), Some("alice"));
        assert_eq!(tag_of("rate:{}:/a/{b}"), None);
        assert_eq!(tag_of("ratelimit:override:tier:pro"), None);
        assert_eq!(tag_of("x{y"), None);
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("https://db{i}.example.upstash.io")).collect()
    }

    #[test]
    fn one_shard_is_shard_zero() {
        assert_eq!(shard_of("alice", &names(1)), 0);
        assert_eq!(shard_of::<String>("alice", &[]), 0);
    }

    #[test]
    fn subjects_spread_evenly() {
        for n in [2, 4, 16] {
            let shards = names(n);
            let mut counts = vec![0usize; n];
            let subjects = 40_000;
            for s in 0..subjects {
                counts[shard_of(&format!("user-{s}"), &shards)] += 1;
            }
            let mean = subjects as f64 / n as f64;
            for c in &counts {
                assert!((*c as f64 - mean).abs() < 0.06 * mean, "{n} shards: {counts:?}");
            }
        }
    }

    #[test]
    fn the_order_of_the_list_does_not_matter() {
        let shards = names(5);
        let mut reversed = shards.clone();
        reversed.reverse();
        for s in 0..2_000 {
            let subject = format!("u{s}");
            assert_eq!(shards[shard_of(&subject, &shards)], reversed[shard_of(&subject, &reversed)]);
        }
    }

    #[test]
    fn a_new_shard_takes_only_its_share_and_only_for_itself() {
        let before = names(4);
        let after = names(5);
        let (mut moved, total) = (0, 20_000);
        for s in 0..total {
            let subject = format!("caller-{s}");
            let (a, b) = (shard_of(&subject, &before), shard_of(&subject, &after));
            if a != b {
                assert_eq!(b, 4, "a subject moved between two old shards");
                moved += 1;
            }
        }
        let share = moved as f64 / total as f64;
        assert!((share - 0.2).abs() < 0.02, "{share}");
    }

    #[test]
    fn places_split_by_shard_and_on_a_cluster_by_subject() {
        let one = Places::single();
        assert!(one.one());
        assert_eq!(one.of("rate:{a}:/x"), Place { shard: 0, tag: None });
        let shards = Places::new(names(2), false);
        let a = shards.of("rate:{a}:/x");
        assert_eq!(a, shards.of("rate:{a}:/y!slots"));
        assert_eq!(a.tag, None);
        let cluster = Places::new(names(1), true);
        assert_eq!(cluster.of("rate:{a}:/x").tag.as_deref(), Some("a"));
        assert!(!cluster.one());
    }
}
