//! Redis Cluster mode: when `--redis` names a node of a cluster (`INFO cluster` says
//! `cluster_enabled:1`), every command goes to the master of its keys' hash slot.
//!
//! - The slot map comes from `CLUSTER SLOTS`; a `MOVED` answer updates the slot and refreshes the
//!   whole map in the background, an `ASK` answer is followed once with `ASKING`; `TRYAGAIN`,
//!   `CLUSTERDOWN`, `MASTERDOWN`, `LOADING` and lost connections are retried with a short backoff —
//!   all within [`RETRY_BUDGET`], then the last error is the answer.
//! - Which arguments are keys comes from the server's own `COMMAND` table (first/last/step, and
//!   subcommands); scripts and functions are read by their `numkeys`; any other command whose keys
//!   move (`ZUNIONSTORE`, `XREAD`, `SORT … STORE`) asks `COMMAND GETKEYS`.
//! - Keys of more than one slot: `MGET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH` and `MSET` are split by
//!   slot and their answers merged, as cluster clients do; anything else (scripts included) answers
//!   Redis's own `CROSSSLOT` error.
//! - Some commands concern every master: `SCRIPT LOAD|EXISTS|FLUSH`, `FUNCTION LOAD|DELETE`,
//!   `FLUSHALL`, `FLUSHDB`, `KEYS`, `DBSIZE`, `RANDOMKEY`, `SCAN` (the cursor carries which master
//!   it is on) and `INFO` with its command statistics (summed).
//!
//! A master is named by the first slot it serves, so a scan cursor or a "send to every master" stays
//! right across a failover (the promoted replica serves the same slots).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, RedisError, Value};

use crate::protocol::{self, Args};

pub const SLOTS: u16 = 16384;
/// How long one command may spend following redirections and retrying before its last error is the answer.
pub const RETRY_BUDGET: Duration = Duration::from_secs(2);
/// The longest one attempt waits for its answer (a node that stops answering is then asked again,
/// after a refresh of the slot map, while the budget lasts).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_REDIRECTS: u32 = 16;
/// Redis's own error for keys of more than one slot.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Why a command has no result: Redis's error (or the connection's), or a message of ours.
pub enum Failure {
    Redis(RedisError),
    Reply(String),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Failure {
        Failure::Redis(e)
    }
}

/// CRC16-CCITT (XMODEM), as the cluster specification hashes keys.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The hash slot of a key: of its `{hash tag}` when it has a non-empty one (the first `{` and the
/// first `}` after it), of the whole key otherwise.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &rest[..len])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// Where a command's keys are, from the `COMMAND` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    first: i64,
    last: i64,
    step: i64,
    movable: bool,
}

/// By lower-case name, subcommands as `container|sub`.
pub type Specs = HashMap<String, KeySpec>;

/// The key specs of a `COMMAND` reply (subcommands included).
pub fn specs_of(reply: &Value) -> Specs {
    let mut specs = Specs::new();
    if let Value::Array(entries) = reply {
        for entry in entries {
            add_spec(entry, &mut specs);
        }
    }
    specs
}

fn add_spec(entry: &Value, specs: &mut Specs) {
    let Value::Array(items) = entry else { return };
    let Some(name) = items.first().and_then(text) else { return };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    };
    let movable = match items.get(2) {
        Some(Value::Array(flags) | Value::Set(flags)) => {
            flags.iter().any(|f| text(f).is_some_and(|f| f.eq_ignore_ascii_case("movablekeys")))
        }
        _ => false,
    };
    specs.insert(name.to_ascii_lowercase(), KeySpec { first: int(3), last: int(4), step: int(5), movable });
    if let Some(Value::Array(subcommands)) = items.get(9) {
        for sub in subcommands {
            add_spec(sub, specs);
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Which arguments of a command are keys, or `None` when only the server can tell (`COMMAND GETKEYS`).
pub fn key_positions(specs: &Specs, args: &Args) -> Option<Vec<usize>> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    if matches!(name.as_str(), "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro") {
        let numkeys = args.get(2).and_then(|n| std::str::from_utf8(n).ok()).and_then(|n| n.parse::<usize>().ok());
        return Some((3..3usize.saturating_add(numkeys.unwrap_or(0)).min(args.len())).collect());
    }
    let sub =
        args.get(1).and_then(|s| specs.get(&format!("{name}|{}", String::from_utf8_lossy(s).to_ascii_lowercase())));
    let Some(spec) = sub.or_else(|| specs.get(&name)) else { return Some(Vec::new()) };
    if spec.movable {
        return None;
    }
    if spec.first <= 0 {
        return Some(Vec::new());
    }
    let len = i64::try_from(args.len()).unwrap_or(i64::MAX);
    let last = if spec.last < 0 { len + spec.last } else { spec.last.min(len - 1) };
    let step = spec.step.max(1);
    let mut positions = Vec::new();
    let mut i = spec.first;
    while i <= last && i < len {
        positions.push(usize::try_from(i).unwrap_or(usize::MAX));
        i += step;
    }
    Some(positions)
}

/// One master: where it is, and the first slot it serves (its name, stable across a failover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub addr: String,
    pub first_slot: u16,
}

const UNASSIGNED: u32 = u32::MAX;

/// The slot map: for every slot the index of its master.
#[derive(Clone, Debug)]
pub struct Topology {
    slots: Vec<u32>,
    masters: Vec<Shard>,
    replicas: Vec<String>,
}

impl Topology {
    fn empty() -> Topology {
        Topology { slots: vec![UNASSIGNED; usize::from(SLOTS)], masters: Vec::new(), replicas: Vec::new() }
    }

    /// The map of a `CLUSTER SLOTS` reply (asked of `asked_host`, which stands in for a node that
    /// does not know its own address), or `None` when no slot is served.
    pub fn of_slots_reply(reply: &Value, asked_host: &str) -> Option<Topology> {
        let Value::Array(ranges) = reply else { return None };
        let mut topology = Topology::empty();
        let node_addr = |v: &Value| -> Option<String> {
            let Value::Array(node) = v else { return None };
            let host = node.first().and_then(text).filter(|h| !h.is_empty() && h != "?");
            let port = match node.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).ok()?,
                _ => return None,
            };
            Some(format!("{}:{port}", host.as_deref().unwrap_or(asked_host)))
        };
        for range in ranges {
            let Value::Array(items) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end))) = (items.first(), items.get(1)) else { continue };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else { continue };
            if start > end || end >= SLOTS {
                continue;
            }
            let Some(master) = items.get(2).and_then(node_addr) else { continue };
            let index = match topology.masters.iter().position(|m| m.addr == master) {
                Some(i) => i,
                None => {
                    topology.masters.push(Shard { addr: master, first_slot: start });
                    topology.masters.len() - 1
                }
            };
            let shard = &mut topology.masters[index];
            shard.first_slot = shard.first_slot.min(start);
            for s in start..=end {
                topology.slots[usize::from(s)] = u32::try_from(index).unwrap_or(UNASSIGNED);
            }
            for replica in items.iter().skip(3).filter_map(node_addr) {
                if !topology.replicas.contains(&replica) {
                    topology.replicas.push(replica);
                }
            }
        }
        (!topology.masters.is_empty()).then_some(topology)
    }

    fn owner(&self, slot: u16) -> Option<&Shard> {
        let i = *self.slots.get(usize::from(slot))?;
        self.masters.get(usize::try_from(i).ok()?)
    }

    /// The masters in the order of the first slot they serve.
    pub fn shards(&self) -> Vec<Shard> {
        let mut shards = self.masters.clone();
        shards.sort_by_key(|s| s.first_slot);
        shards.dedup_by_key(|s| s.first_slot);
        shards
    }

    /// A `MOVED` answer: `slot` is served by `addr` now.
    fn moved(&self, slot: u16, addr: &str) -> Topology {
        let mut next = self.clone();
        let index = match next.masters.iter().position(|m| m.addr == addr) {
            Some(i) => i,
            None => {
                next.masters.push(Shard { addr: addr.to_string(), first_slot: slot });
                next.masters.len() - 1
            }
        };
        if let Some(s) = next.slots.get_mut(usize::from(slot)) {
            *s = u32::try_from(index).unwrap_or(UNASSIGNED);
        }
        next
    }
}

/// A SCAN cursor over every master: the master's own cursor times 16384, plus the first slot of the
/// master it is on. `0` starts at the first master and is the end of the last.
pub fn encode_cursor(node_cursor: u64, first_slot: u16) -> u128 {
    u128::from(node_cursor) * u128::from(SLOTS) + u128::from(first_slot)
}

pub fn decode_cursor(cursor: &[u8]) -> Option<(u64, u16)> {
    let n: u128 = std::str::from_utf8(cursor).ok()?.parse().ok()?;
    let node = u64::try_from(n / u128::from(SLOTS)).ok()?;
    Some((node, u16::try_from(n % u128::from(SLOTS)).ok()?))
}

/// `INFO` from every master as one: the first master's text, its command statistics replaced by
/// the sums over all of them (`calls`, `usec`, `rejected_calls`, `failed_calls`; `usec_per_call` recomputed).
pub fn merge_info(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut sums: HashMap<String, [u64; 4]> = HashMap::new();
    const FIELDS: [&str; 4] = ["calls", "usec", "rejected_calls", "failed_calls"];
    for text in texts {
        for line in text.lines() {
            let Some((name, values)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let sum = sums.entry(name.to_string()).or_insert_with(|| {
                order.push(name.to_string());
                [0; 4]
            });
            for pair in values.trim_end().split(',') {
                if let Some((field, value)) = pair.split_once('=') {
                    if let (Some(i), Ok(v)) = (FIELDS.iter().position(|f| *f == field), value.parse::<u64>()) {
                        sum[i] += v;
                    }
                }
            }
        }
    }
    let Some(first) = texts.first() else { return String::new() };
    let mut out = String::with_capacity(first.len());
    let merged = || {
        order.iter().map(|name| {
            let [calls, usec, rejected, failed] = sums[name];
            let per_call = if calls == 0 { 0.0 } else { usec as f64 / calls as f64 };
            format!(
                "cmdstat_{name}:calls={calls},usec={usec},usec_per_call={per_call:.2},rejected_calls={rejected},failed_calls={failed}\r\n"
            )
        })
    };
    for line in first.split_inclusive('\n') {
        if line.starts_with("cmdstat_") {
            continue;
        }
        out.push_str(line);
        if line.trim_end().eq_ignore_ascii_case("# Commandstats") {
            out.extend(merged());
        }
    }
    out
}

fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// Where one command goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Slot(u16),
    Any,
}

/// What a failed attempt leads to.
enum Step {
    Again { ask: Option<String> },
    Fail,
}

/// The retry state of one command.
struct Retry {
    redirects: u32,
    pause: Duration,
}

impl Retry {
    fn new() -> Retry {
        Retry { redirects: 0, pause: Duration::from_millis(5) }
    }
}

pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

fn no_answer(addr: &str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {addr} in time")))
}

/// A cluster of Redis masters behind one endpoint.
pub struct Cluster {
    info: ConnectionInfo,
    seed: String,
    specs: Specs,
    topology: RwLock<Arc<Topology>>,
    conns: Mutex<HashMap<String, MultiplexedConnection>>,
    /// When the slot map was last read (refreshes asked for before that are already done).
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    next: AtomicUsize,
}

impl Cluster {
    /// Reads the command table and the slot map through the node `info` names.
    pub async fn connect(info: ConnectionInfo) -> Result<Arc<Cluster>, String> {
        let seed = match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            _ => return Err("a Redis Cluster is reached over TCP, not a unix socket".into()),
        };
        let mut cluster = Cluster {
            info,
            seed: seed.clone(),
            specs: Specs::new(),
            topology: RwLock::new(Arc::new(Topology::empty())),
            conns: Mutex::new(HashMap::new()),
            refreshed: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
        };
        let mut conn = cluster.conn(&seed).await.map_err(|e| format!("cannot connect to {seed}: {e}"))?;
        let table: Value =
            redis::cmd("COMMAND").query_async(&mut conn).await.map_err(|e| format!("COMMAND on {seed}: {e}"))?;
        cluster.specs = specs_of(&table);
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let host = seed.rsplit_once(':').map_or(seed.as_str(), |(h, _)| h);
        let topology = Topology::of_slots_reply(&slots, host).ok_or("the cluster serves no slot yet")?;
        *cluster.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(topology);
        Ok(Arc::new(cluster))
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A client for one node, with the credentials and settings of `--redis`.
    pub fn client_for(&self, addr: &str) -> Result<redis::Client, RedisError> {
        let bad = || {
            RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad node address {addr}")))
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let node = match self.info.addr().clone() {
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                ConnectionAddr::TcpTls { host, port, insecure, tls_params }
            }
            _ => ConnectionAddr::Tcp(host, port),
        };
        redis::Client::open(self.info.clone().set_addr(node))
    }

    /// A client for the first master (event streams: a cluster relays every PUBLISH to every node).
    pub fn any_client(&self) -> Result<redis::Client, RedisError> {
        let shards = self.topology().shards();
        let first = shards.first().map_or(self.seed.clone(), |s| s.addr.clone());
        self.client_for(&first)
    }

    /// A client for every master.
    pub fn master_clients(&self) -> Result<Vec<redis::Client>, RedisError> {
        self.topology().shards().iter().map(|s| self.client_for(&s.addr)).collect()
    }

    pub fn masters(&self) -> usize {
        self.topology().shards().len()
    }

    async fn conn(&self, addr: &str) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(ATTEMPT_TIMEOUT));
        let c = self.client_for(addr)?.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(self.conns.lock().unwrap_or_else(|p| p.into_inner()).entry(addr.to_string()).or_insert(c).clone())
    }

    fn forget(&self, addr: &str) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    fn addr_of(&self, target: Target) -> String {
        let topology = self.topology();
        let owner = match target {
            Target::Slot(s) => topology.owner(s),
            Target::Any => None,
        };
        match owner {
            Some(shard) => shard.addr.clone(),
            None if topology.masters.is_empty() => self.seed.clone(),
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % topology.masters.len();
                topology.masters[i].addr.clone()
            }
        }
    }

    /// Reads the slot map again (from the masters, the replicas, then the node `--redis` names),
    /// unless it was read since this was asked for.
    async fn refresh(&self, deadline: Instant) {
        let asked = Instant::now();
        let Ok(mut last) = tokio::time::timeout_at(deadline.into(), self.refreshed.lock()).await else { return };
        if last.is_some_and(|t| t >= asked) {
            return;
        }
        let topology = self.topology();
        let mut candidates: Vec<String> = topology.masters.iter().map(|m| m.addr.clone()).collect();
        candidates.extend(topology.replicas.iter().cloned());
        candidates.push(self.seed.clone());
        candidates.dedup();
        for addr in candidates {
            let remaining = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(300));
            if remaining.is_zero() {
                return;
            }
            let asked_host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).to_string();
            let read = async {
                let mut conn = self.conn(&addr).await?;
                redis::cmd("CLUSTER").arg("SLOTS").query_async::<Value>(&mut conn).await
            };
            match tokio::time::timeout(remaining, read).await {
                Ok(Ok(reply)) => {
                    if let Some(next) = Topology::of_slots_reply(&reply, &asked_host) {
                        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
                        *last = Some(Instant::now());
                        return;
                    }
                }
                Ok(Err(e)) if is_connection_error(&e) => self.forget(&addr),
                Ok(Err(_)) => {}
                Err(_) => self.forget(&addr),
            }
        }
    }

    fn refresh_soon(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.refresh(Instant::now() + Duration::from_secs(1)).await });
    }

    /// What to do after `e` from `addr`: follow a redirection, wait and retry, reconnect, or give up.
    async fn after(self: &Arc<Self>, e: &RedisError, addr: &str, retry: &mut Retry, deadline: Instant) -> Step {
        if Instant::now() >= deadline {
            return Step::Fail;
        }
        use redis::{ErrorKind, ServerErrorKind as S};
        match e.kind() {
            ErrorKind::Server(S::Moved) => {
                retry.redirects += 1;
                let Some((to, slot)) = e.redirect_node().filter(|_| retry.redirects <= MAX_REDIRECTS) else {
                    return Step::Fail;
                };
                {
                    let mut topology = self.topology.write().unwrap_or_else(|p| p.into_inner());
                    let next = topology.moved(slot, to);
                    *topology = Arc::new(next);
                }
                self.refresh_soon();
                Step::Again { ask: None }
            }
            ErrorKind::Server(S::Ask) => {
                retry.redirects += 1;
                match e.redirect_node().filter(|_| retry.redirects <= MAX_REDIRECTS) {
                    Some((to, _)) => Step::Again { ask: Some(to.to_string()) },
                    None => Step::Fail,
                }
            }
            ErrorKind::Server(S::TryAgain | S::ClusterDown | S::MasterDown | S::BusyLoading | S::ReadOnly) => {
                if matches!(e.kind(), ErrorKind::Server(S::ClusterDown | S::ReadOnly)) {
                    self.refresh(deadline).await;
                }
                self.pause(retry, deadline).await
            }
            _ if is_connection_error(e) => {
                self.forget(addr);
                self.refresh(deadline).await;
                self.pause(retry, deadline).await
            }
            _ => Step::Fail,
        }
    }

    async fn pause(&self, retry: &mut Retry, deadline: Instant) -> Step {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Step::Fail;
        }
        tokio::time::sleep(retry.pause.min(remaining)).await;
        retry.pause = (retry.pause * 2).min(Duration::from_millis(200));
        Step::Again { ask: None }
    }

    /// One attempt at `addr` (after `ASKING` when following an `ASK`).
    async fn send(&self, addr: &str, cmd: &redis::Cmd, asking: bool) -> Result<Value, RedisError> {
        let mut conn = self.conn(addr).await?;
        query(&mut conn, cmd, asking).await
    }

    /// One command to one target, redirections followed and retries made until `deadline`.
    async fn exec(self: &Arc<Self>, cmd: &redis::Cmd, target: Target, deadline: Instant) -> Result<Value, RedisError> {
        let mut retry = Retry::new();
        let mut ask: Option<String> = None;
        loop {
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => (self.addr_of(target), false),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let e = match tokio::time::timeout(remaining, self.send(&addr, cmd, asking)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => return Err(no_answer(&addr)),
            };
            match self.after(&e, &addr, &mut retry, deadline).await {
                Step::Again { ask: a } => ask = a,
                Step::Fail => return Err(e),
            }
        }
    }

    /// The slots of a command's keys (repeats kept out).
    async fn slots_of(self: &Arc<Self>, args: &Args, deadline: Instant) -> Vec<u16> {
        let mut slots: Vec<u16> = match key_positions(&self.specs, args) {
            Some(positions) => positions.iter().filter_map(|&i| args.get(i)).map(|k| slot(k)).collect(),
            None => {
                let mut getkeys = redis::cmd("COMMAND");
                getkeys.arg("GETKEYS");
                for a in args {
                    getkeys.arg(a.as_slice());
                }
                match self.exec(&getkeys, Target::Any, deadline).await {
                    Ok(Value::Array(keys)) => keys
                        .iter()
                        .filter_map(|k| match k {
                            Value::BulkString(b) => Some(slot(b)),
                            Value::SimpleString(s) => Some(slot(s.as_bytes())),
                            _ => None,
                        })
                        .collect(),
                    // No keys, or arguments Redis will refuse anyway: let a master answer.
                    _ => Vec::new(),
                }
            }
        };
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// Where a command goes when it goes to one node; `None` for the commands that concern every
    /// master, that are split, or whose keys span slots.
    async fn single_target(self: &Arc<Self>, args: &Args, deadline: Instant) -> Option<Target> {
        if every_master(args) {
            return None;
        }
        let slots = self.slots_of(args, deadline).await;
        match slots.as_slice() {
            [] => Some(Target::Any),
            [s] => Some(Target::Slot(*s)),
            _ => None,
        }
    }

    /// One command (already translated: script flags stripped, SHAs mapped), within [`RETRY_BUDGET`].
    pub async fn run(self: &Arc<Self>, args: &Args) -> Result<Value, Failure> {
        let deadline = Instant::now() + RETRY_BUDGET;
        let name = upper(&args[0]);
        let sub = args.get(1).map(|s| upper(s)).unwrap_or_default();
        if every_master(args) {
            return self.on_every_master(&name, &sub, args, deadline).await;
        }
        let slots = self.slots_of(args, deadline).await;
        let cmd = protocol::to_cmd(args);
        match slots.as_slice() {
            [] => Ok(self.exec(&cmd, Target::Any, deadline).await?),
            [s] => Ok(self.exec(&cmd, Target::Slot(*s), deadline).await?),
            _ if matches!(name.as_str(), "MGET" | "DEL" | "UNLINK" | "EXISTS" | "TOUCH" | "MSET") => {
                self.split(&name, args, deadline).await
            }
            _ => Err(Failure::Reply(CROSSSLOT.into())),
        }
    }

    async fn on_every_master(
        self: &Arc<Self>,
        name: &str,
        sub: &str,
        args: &Args,
        deadline: Instant,
    ) -> Result<Value, Failure> {
        let shards = self.topology().shards();
        if name == "SCAN" {
            return self.scan(args, &shards, deadline).await;
        }
        if name == "RANDOMKEY" {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let cmd = protocol::to_cmd(args);
            for i in 0..shards.len() {
                let shard = &shards[(start + i) % shards.len()];
                let v = self.exec(&cmd, Target::Slot(shard.first_slot), deadline).await?;
                if v != Value::Nil {
                    return Ok(v);
                }
            }
            return Ok(Value::Nil);
        }
        let cmd = protocol::to_cmd(args);
        let replies = join_all(shards.iter().map(|s| self.exec(&cmd, Target::Slot(s.first_slot), deadline))).await;
        let replies: Vec<Value> = replies.into_iter().collect::<Result<_, _>>()?;
        Ok(match (name, sub) {
            ("SCRIPT", "EXISTS") => {
                let mut all: Vec<bool> = Vec::new();
                for (n, reply) in replies.iter().enumerate() {
                    let Value::Array(items) = reply else { return Ok(reply.clone()) };
                    let these = items.iter().map(|v| matches!(v, Value::Int(1) | Value::Boolean(true)));
                    if n == 0 {
                        all = these.collect();
                    } else {
                        all.iter_mut().zip(these).for_each(|(a, b)| *a &= b);
                    }
                }
                Value::Array(all.into_iter().map(|b| Value::Int(i64::from(b))).collect())
            }
            ("KEYS", _) => Value::Array(
                replies.into_iter().flat_map(|r| if let Value::Array(keys) = r { keys } else { Vec::new() }).collect(),
            ),
            ("DBSIZE", _) => Value::Int(replies.iter().map(|r| if let Value::Int(n) = r { *n } else { 0 }).sum()),
            ("INFO", _) => {
                let texts: Vec<String> = replies.iter().filter_map(text).collect();
                Value::BulkString(merge_info(&texts).into_bytes())
            }
            // SCRIPT LOAD and FUNCTION LOAD answer the same on every master; FLUSH* answer OK.
            _ => replies.into_iter().next().unwrap_or(Value::Okay),
        })
    }

    /// `SCAN` over every master in turn: the cursor carries the master's first slot.
    async fn scan(self: &Arc<Self>, args: &Args, shards: &[Shard], deadline: Instant) -> Result<Value, Failure> {
        let Some((node_cursor, first_slot)) = args.get(1).and_then(|c| decode_cursor(c)) else {
            return Err(Failure::Reply("ERR invalid cursor".into()));
        };
        let Some(shard) = shards.iter().find(|s| s.first_slot >= first_slot) else {
            return Ok(Value::Array(vec![Value::BulkString(b"0".to_vec()), Value::Array(Vec::new())]));
        };
        let mut node_args = args.clone();
        node_args[1] = node_cursor.to_string().into_bytes();
        let reply = self.exec(&protocol::to_cmd(&node_args), Target::Slot(shard.first_slot), deadline).await?;
        let Value::Array(mut parts) = reply else { return Ok(reply) };
        let (Some(keys), Some(cursor)) = (parts.pop(), parts.pop()) else { return Ok(Value::Array(parts)) };
        let next_node = text(&cursor).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
        let next = if next_node != 0 {
            encode_cursor(next_node, shard.first_slot)
        } else {
            shards.iter().find(|s| s.first_slot > shard.first_slot).map_or(0, |s| encode_cursor(0, s.first_slot))
        };
        Ok(Value::Array(vec![Value::BulkString(next.to_string().into_bytes()), keys]))
    }

    /// A multi-key command split by slot, as cluster clients do: `MGET` merged in order,
    /// `DEL`/`UNLINK`/`EXISTS`/`TOUCH` summed, `MSET` OK when every part is.
    async fn split(self: &Arc<Self>, name: &str, args: &Args, deadline: Instant) -> Result<Value, Failure> {
        let width = if name == "MSET" { 2 } else { 1 };
        if !(args.len() - 1).is_multiple_of(width) {
            return Ok(self.exec(&protocol::to_cmd(args), Target::Any, deadline).await?);
        }
        // (slot, positions of the groups of arguments) in the order each slot first appears.
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (n, chunk) in args[1..].chunks(width).enumerate() {
            let s = slot(&chunk[0]);
            match groups.iter_mut().find(|(g, _)| *g == s) {
                Some((_, members)) => members.push(n),
                None => groups.push((s, vec![n])),
            }
        }
        let parts = groups.iter().map(|(s, members)| {
            let mut cmd = redis::cmd(name);
            for &n in members {
                for arg in &args[1 + n * width..1 + (n + 1) * width] {
                    cmd.arg(arg.as_slice());
                }
            }
            let target = Target::Slot(*s);
            async move { self.exec(&cmd, target, deadline).await }
        });
        let replies: Vec<Value> = join_all(parts).await.into_iter().collect::<Result<_, _>>()?;
        Ok(match name {
            "MGET" => {
                let mut out = vec![Value::Nil; (args.len() - 1) / width];
                for ((_, members), reply) in groups.iter().zip(replies) {
                    if let Value::Array(values) = reply {
                        for (&n, v) in members.iter().zip(values) {
                            out[n] = v;
                        }
                    }
                }
                Value::Array(out)
            }
            "MSET" => Value::Okay,
            _ => Value::Int(replies.iter().map(|r| if let Value::Int(n) = r { *n } else { 0 }).sum()),
        })
    }

    /// `/pipeline`: every command routed on its own, answers in order. Commands for one node go
    /// to it as one pipeline (the nodes' pipelines at once); a redirected answer is then followed
    /// for that command alone; commands for every master, split ones and cross-slot ones run alone.
    pub async fn pipeline(self: &Arc<Self>, commands: &[Args]) -> Vec<Result<Value, Failure>> {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut results: Vec<Option<Result<Value, Failure>>> = (0..commands.len()).map(|_| None).collect();
        let mut batch: Vec<(usize, Target)> = Vec::new();
        for (i, args) in commands.iter().enumerate() {
            match self.single_target(args, deadline).await {
                Some(target) => batch.push((i, target)),
                None => {
                    self.flush(commands, std::mem::take(&mut batch), &mut results, deadline).await;
                    results[i] = Some(self.run(args).await);
                }
            }
        }
        self.flush(commands, batch, &mut results, deadline).await;
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(Failure::Reply("ERR no reply".into())))).collect()
    }

    async fn flush(
        self: &Arc<Self>,
        commands: &[Args],
        batch: Vec<(usize, Target)>,
        results: &mut [Option<Result<Value, Failure>>],
        deadline: Instant,
    ) {
        if batch.is_empty() {
            return;
        }
        let mut by_node: Vec<(String, Vec<(usize, Target)>)> = Vec::new();
        let any = self.addr_of(Target::Any);
        for (i, target) in batch {
            let addr = if target == Target::Any { any.clone() } else { self.addr_of(target) };
            match by_node.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, members)) => members.push((i, target)),
                None => by_node.push((addr, vec![(i, target)])),
            }
        }
        let sent = join_all(by_node.iter().map(|(addr, members)| async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (i, _) in members {
                pipe.add_command(protocol::to_cmd(&commands[*i]));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let send = async {
                let mut conn = self.conn(addr).await?;
                pipe.query_async::<Value>(&mut conn).await
            };
            match tokio::time::timeout(remaining, send).await {
                Ok(r) => r,
                Err(_) => Err(no_answer(addr)),
            }
        }))
        .await;
        let mut again: Vec<(usize, Target)> = Vec::new();
        for ((addr, members), reply) in by_node.into_iter().zip(sent) {
            match reply {
                Ok(Value::Array(values)) if values.len() == members.len() => {
                    for ((i, target), v) in members.into_iter().zip(values) {
                        match v {
                            Value::ServerError(e) => {
                                let e = RedisError::from(e);
                                if e.is_cluster_error()
                                    || matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown))
                                {
                                    again.push((i, target));
                                } else {
                                    results[i] = Some(Err(Failure::Redis(e)));
                                }
                            }
                            v => results[i] = Some(Ok(v)),
                        }
                    }
                }
                Ok(_) => {
                    for (i, _) in members {
                        results[i] = Some(Err(Failure::Reply("ERR unexpected pipeline reply".into())));
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    self.forget(&addr);
                    again.extend(members);
                }
                Err(e) => {
                    let message = Failure::Redis(e).message();
                    for (i, _) in members {
                        results[i] = Some(Err(Failure::Reply(message.clone())));
                    }
                }
            }
        }
        again.sort_by_key(|(i, _)| *i);
        for (i, target) in again {
            results[i] =
                Some(self.exec(&protocol::to_cmd(&commands[i]), target, deadline).await.map_err(Failure::Redis));
        }
    }

    /// `/multi-exec` on a cluster: every key in one slot (else `CROSSSLOT`), the transaction sent to
    /// that slot's master; a transaction refused at queue time for a redirection (nothing applied)
    /// is sent again where it was redirected. The replies are MULTI's, each command's queuing, EXEC's.
    pub async fn transaction(self: &Arc<Self>, commands: &[Args]) -> Result<Vec<Value>, Failure> {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut slots = Vec::new();
        for args in commands {
            slots.extend(self.slots_of(args, deadline).await);
        }
        slots.sort_unstable();
        slots.dedup();
        let target = match slots.as_slice() {
            [] => Target::Any,
            [s] => Target::Slot(*s),
            _ => return Err(Failure::Reply(CROSSSLOT.into())),
        };
        let mut retry = Retry::new();
        let mut ask: Option<String> = None;
        loop {
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => (self.addr_of(target), false),
            };
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            if asking {
                pipe.cmd("ASKING");
            }
            pipe.cmd("MULTI");
            for args in commands {
                pipe.add_command(protocol::to_cmd(args));
            }
            pipe.cmd("EXEC");
            let remaining = deadline.saturating_duration_since(Instant::now());
            let send = async {
                let mut conn = self.conn(&addr).await?;
                pipe.query_async::<Value>(&mut conn).await
            };
            let e = match tokio::time::timeout(remaining, send).await {
                Ok(Ok(Value::Array(mut values))) => {
                    if asking && !values.is_empty() {
                        values.remove(0);
                    }
                    let redirected = values.iter().find_map(|v| match v {
                        Value::ServerError(e) => Some(RedisError::from(e.clone())).filter(|e| {
                            e.is_cluster_error()
                                || matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown))
                        }),
                        _ => None,
                    });
                    match redirected {
                        None => return Ok(values),
                        Some(e) => e,
                    }
                }
                Ok(Ok(_)) => return Err(Failure::Reply("ERR unexpected transaction reply".into())),
                Ok(Err(e)) => e,
                Err(_) => return Err(Failure::Redis(no_answer(&addr))),
            };
            match self.after(&e, &addr, &mut retry, deadline).await {
                Step::Again { ask: a } => ask = a,
                Step::Fail => return Err(Failure::Redis(e)),
            }
        }
    }

    /// A blocking command on a connection of its own to its slot's master, for at most `block_max`
    /// (then `null`, as if its own timeout had passed); redirections followed within [`RETRY_BUDGET`].
    pub async fn blocking(self: &Arc<Self>, args: &Args, block_max: Duration) -> Result<Value, Failure> {
        let deadline = Instant::now() + RETRY_BUDGET;
        let until = tokio::time::Instant::now() + block_max;
        let target = match self.slots_of(args, deadline).await.as_slice() {
            [] => Target::Any,
            [s] => Target::Slot(*s),
            _ => return Err(Failure::Reply(CROSSSLOT.into())),
        };
        let cmd = protocol::to_cmd(args);
        let mut retry = Retry::new();
        let mut ask: Option<String> = None;
        loop {
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => (self.addr_of(target), false),
            };
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(None);
            let attempt = async {
                let mut conn = self.client_for(&addr)?.get_multiplexed_async_connection_with_config(&config).await?;
                query(&mut conn, &cmd, asking).await
            };
            let e = match tokio::time::timeout_at(until, attempt).await {
                Err(_) => return Ok(Value::Nil),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
            };
            match self.after(&e, &addr, &mut retry, deadline).await {
                Step::Again { ask: a } => ask = a,
                Step::Fail => return Err(Failure::Redis(e)),
            }
        }
    }
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Reply(m) => m.clone(),
            Failure::Redis(e) => match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => format!("{code} {detail}"),
                (Some(code), None) => code.to_string(),
                _ => format!("ERR {e}"),
            },
        }
    }
}

/// A command on one connection, after `ASKING` when following an `ASK`.
async fn query(conn: &mut MultiplexedConnection, cmd: &redis::Cmd, asking: bool) -> Result<Value, RedisError> {
    if !asking {
        return cmd.query_async(conn).await;
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("ASKING");
    pipe.add_command(cmd.clone());
    match pipe.query_async::<Value>(conn).await? {
        Value::Array(mut replies) => match replies.pop() {
            Some(Value::ServerError(e)) => Err(e.into()),
            Some(v) => v.extract_error(),
            None => Err(no_answer("ASKING")),
        },
        other => other.extract_error(),
    }
}

/// Commands that concern every master (or, for `SCAN` and `RANDOMKEY`, each in turn).
fn every_master(args: &Args) -> bool {
    let name = upper(&args[0]);
    let sub = args.get(1).map(|s| upper(s)).unwrap_or_default();
    match name.as_str() {
        "SCRIPT" => matches!(sub.as_str(), "LOAD" | "EXISTS" | "FLUSH"),
        "FUNCTION" => matches!(sub.as_str(), "LOAD" | "DELETE"),
        "FLUSHALL" | "FLUSHDB" | "KEYS" | "DBSIZE" | "RANDOMKEY" | "SCAN" => true,
        "INFO" => args[1..].iter().any(|a| {
            a.eq_ignore_ascii_case(b"commandstats")
                || a.eq_ignore_ascii_case(b"all")
                || a.eq_ignore_ascii_case(b"everything")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Args {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn slots_follow_the_specification() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag hashes the whole key; only the first { and the first } after it count.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"{"), crc16(b"{") % SLOTS);
    }

    fn spec(first: i64, last: i64, step: i64, movable: bool) -> KeySpec {
        KeySpec { first, last, step, movable }
    }

    #[test]
    fn keys_by_the_command_table() {
        let mut specs = Specs::new();
        specs.insert("get".into(), spec(1, 1, 1, false));
        specs.insert("mset".into(), spec(1, -1, 2, false));
        specs.insert("mget".into(), spec(1, -1, 1, false));
        specs.insert("object".into(), spec(0, 0, 0, false));
        specs.insert("object|encoding".into(), spec(2, 2, 1, false));
        specs.insert("zunionstore".into(), spec(1, 1, 1, true));
        specs.insert("ping".into(), spec(0, 0, 0, false));
        assert_eq!(key_positions(&specs, &args(&["GET", "k"])), Some(vec![1]));
        assert_eq!(key_positions(&specs, &args(&["GET"])), Some(vec![]));
        assert_eq!(key_positions(&specs, &args(&["mset", "a", "1", "b", "2"])), Some(vec![1, 3]));
        assert_eq!(key_positions(&specs, &args(&["MGET", "a", "b", "c"])), Some(vec![1, 2, 3]));
        assert_eq!(key_positions(&specs, &args(&["OBJECT", "ENCODING", "k"])), Some(vec![2]));
        assert_eq!(key_positions(&specs, &args(&["PING"])), Some(vec![]));
        assert_eq!(key_positions(&specs, &args(&["nosuch", "x"])), Some(vec![]));
        assert_eq!(key_positions(&specs, &args(&["ZUNIONSTORE", "d", "2", "a", "b"])), None);
        assert_eq!(key_positions(&specs, &args(&["EVALSHA", "sha", "2", "a", "b", "arg"])), Some(vec![3, 4]));
        assert_eq!(key_positions(&specs, &args(&["EVAL", "s", "0", "arg"])), Some(vec![]));
        assert_eq!(key_positions(&specs, &args(&["EVAL", "s", "9", "a"])), Some(vec![3]));
        assert_eq!(key_positions(&specs, &args(&["EVAL", "s", "x", "a"])), Some(vec![]));
        assert_eq!(key_positions(&specs, &args(&["EVAL", "s", "99999999999999999999999"])), Some(vec![]));
    }

    #[test]
    fn the_command_table_is_read_with_subcommands() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let status = |s: &str| Value::SimpleString(s.into());
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("get"),
                Value::Int(2),
                Value::Array(vec![status("readonly")]),
                Value::Int(1),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Array(vec![
                bulk("eval"),
                Value::Int(-3),
                Value::Array(vec![status("movablekeys")]),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ]),
            Value::Array(vec![
                bulk("object"),
                Value::Int(-2),
                Value::Array(vec![]),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                Value::Array(vec![]),
                Value::Array(vec![]),
                Value::Array(vec![]),
                Value::Array(vec![Value::Array(vec![
                    bulk("object|freq"),
                    Value::Int(3),
                    Value::Array(vec![]),
                    Value::Int(2),
                    Value::Int(2),
                    Value::Int(1),
                ])]),
            ]),
        ]);
        let specs = specs_of(&reply);
        assert_eq!(specs["get"], spec(1, 1, 1, false));
        assert!(specs["eval"].movable);
        assert_eq!(specs["object|freq"], spec(2, 2, 1, false));
    }

    #[test]
    fn the_slot_map_of_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("127.0.0.1", 7001)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("127.0.0.1", 7000), node("127.0.0.1", 7003)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("", 7002)]),
            Value::Array(vec![Value::Int(3), Value::Int(99999), node("127.0.0.1", 7009)]),
        ]);
        let t = Topology::of_slots_reply(&reply, "10.0.0.1").expect("a map");
        assert_eq!(t.owner(0).map(|s| s.addr.as_str()), Some("127.0.0.1:7000"));
        assert_eq!(t.owner(5461).map(|s| s.addr.as_str()), Some("127.0.0.1:7001"));
        assert_eq!(t.owner(16383).map(|s| s.addr.as_str()), Some("10.0.0.1:7002"));
        assert_eq!(
            t.shards().iter().map(|s| s.first_slot).collect::<Vec<_>>(),
            vec![0, 5461, 10923],
            "masters by their first slot"
        );
        assert_eq!(t.replicas, vec!["127.0.0.1:7003".to_string()]);
        let moved = t.moved(42, "127.0.0.1:7002");
        assert_eq!(moved.owner(42).map(|s| s.addr.as_str()), Some("127.0.0.1:7002"));
        assert_eq!(moved.owner(41).map(|s| s.addr.as_str()), Some("127.0.0.1:7000"));
        assert!(Topology::of_slots_reply(&Value::Array(vec![]), "h").is_none());
        assert!(Topology::of_slots_reply(&Value::Nil, "h").is_none());
    }

    #[test]
    fn scan_cursors_carry_the_master() {
        assert_eq!(decode_cursor(b"0"), Some((0, 0)));
        let c = encode_cursor(1234, 5461);
        assert_eq!(decode_cursor(c.to_string().as_bytes()), Some((1234, 5461)));
        let big = encode_cursor(u64::MAX, 16383);
        assert_eq!(decode_cursor(big.to_string().as_bytes()), Some((u64::MAX, 16383)));
        assert_eq!(decode_cursor(b"x"), None);
        assert_eq!(decode_cursor(b"-1"), None);
        assert_eq!(decode_cursor(u128::MAX.to_string().as_bytes()), None);
    }

    #[test]
    fn info_sums_the_command_statistics() {
        let a = "# Server\r\nredis_version:7.0.15\r\n\r\n# Commandstats\r\ncmdstat_get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\ncmdstat_evalsha:calls=1,usec=4,usec_per_call=4.00,rejected_calls=1,failed_calls=0\r\n";
        let b = "# Server\r\nredis_version:7.0.15\r\n\r\n# Commandstats\r\ncmdstat_get:calls=3,usec=20,usec_per_call=6.67,rejected_calls=0,failed_calls=1\r\ncmdstat_set:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n";
        let merged = merge_info(&[a.to_string(), b.to_string()]);
        assert!(merged.starts_with("# Server\r\nredis_version:7.0.15\r\n"), "{merged}");
        assert!(
            merged.contains("cmdstat_get:calls=5,usec=30,usec_per_call=6.00,rejected_calls=0,failed_calls=1\r\n"),
            "{merged}"
        );
        assert!(
            merged.contains("cmdstat_evalsha:calls=1,usec=4,usec_per_call=4.00,rejected_calls=1,failed_calls=0\r\n")
        );
        assert!(merged.contains("cmdstat_set:calls=1,"));
        assert_eq!(merged.matches("cmdstat_get").count(), 1);
        assert_eq!(merge_info(&[]), "");
    }

    #[test]
    fn commands_for_every_master() {
        assert!(every_master(&args(&["script", "load", "x"])));
        assert!(every_master(&args(&["SCRIPT", "EXISTS", "a"])));
        assert!(!every_master(&args(&["SCRIPT", "KILL"])));
        assert!(every_master(&args(&["INFO", "commandstats"])));
        assert!(!every_master(&args(&["INFO"])));
        assert!(!every_master(&args(&["INFO", "server"])));
        assert!(every_master(&args(&["scan", "0", "MATCH", "*"])));
        assert!(!every_master(&args(&["GET", "k"])));
    }
}
