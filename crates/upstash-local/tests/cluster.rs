//! upstash-local in front of a Redis Cluster (3 masters, 1 replica of the first, started by
//! scripts/cluster on free ports for each test and stopped when it is dropped). The tests fail
//! loudly when redis-server is not installed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "cluster-test-token";
/// The longest any request may take: the endpoint's retry budget (2 s) and some room for HTTP.
const BOUND: Duration = Duration::from_millis(2600);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port whose four ports and their bus ports (+10000) are free, below the ephemeral range.
fn free_base(test: u16, attempt: u16) -> u16 {
    let start = 12000 + (u32::from(test) * 1000 + std::process::id() % 97 * 10 + u32::from(attempt) * 200) % 9900;
    let mut base = u16::try_from(start).unwrap_or(12000);
    loop {
        if (0..4).all(|i| bindable(base + i) && bindable(base + i + 10000)) {
            return base;
        }
        base = if base > 21900 { 12000 } else { base + 10 };
    }
}

fn wait_for(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().ok().flatten().is_none(), "upstash-local exited");
        assert!(Instant::now() < deadline, "upstash-local did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster (scripts/cluster) and upstash-local in front of it; both stopped when dropped.
struct Stack {
    dir: PathBuf,
    base: u16,
    rest: Child,
    port: u16,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.rest.kill();
        let _ = self.rest.wait();
        let _ = Command::new("bash").arg(script()).arg("stop").arg(&self.dir).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a cluster; `seed` is the node (0..=3, 3 the replica) upstash-local is told about.
fn stack(test: u16, seed: u16) -> Stack {
    let dir = std::env::temp_dir().join(format!("upstash-local-cluster-{}-{test}", std::process::id()));
    let mut failures = Vec::new();
    for attempt in 0..3 {
        let base = free_base(test, attempt);
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(base.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/cluster ({e})"));
        if !out.status.success() {
            let _ = Command::new("bash").arg(script()).arg("stop").arg(&dir).stdout(Stdio::null()).status();
            failures.push(format!("base {base}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port");
        let mut rest = Command::new(env!("CARGO_BIN_EXE_upstash-local"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis",
                &format!("redis://127.0.0.1:{}", base + seed),
                "--token",
                TOKEN,
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("upstash-local starts");
        wait_for(port, &mut rest);
        return Stack { dir, base, rest, port };
    }
    panic!(
        "scripts/cluster could not start a cluster (these tests need redis-server and redis-cli; run scripts/setup):\n{}",
        failures.join("\n")
    );
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Stack {
    fn post(&self, path: &str, body: &Value) -> Answer {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let body = body.to_string();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: local\r\nconnection: close\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status");
        Answer { status, body: raw[split + 4..].to_vec() }
    }

    fn command(&self, command: Value) -> Answer {
        self.post("/", &command)
    }

    fn result(&self, command: Value) -> Value {
        let a = self.command(command.clone());
        assert_eq!(a.status, 200, "{command}: {}", String::from_utf8_lossy(&a.body));
        a.json()["result"].clone()
    }

    fn error(&self, command: Value) -> String {
        let a = self.command(command.clone());
        assert_eq!(a.status, 400, "{command}: {}", String::from_utf8_lossy(&a.body));
        a.json()["error"].as_str().unwrap_or_default().to_string()
    }

    /// A direct connection to one node (0..=3).
    fn node(&self, i: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.base + i))
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("node {i}: {e}"))
    }

    fn masters(&self) -> Vec<redis::Connection> {
        (0..3).map(|i| self.node(i)).collect()
    }

    /// The port of the master serving `key`'s slot, by the cluster's own word.
    fn owner(&self, key: &str) -> u16 {
        let mut node = self.node(0);
        let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut node).expect("KEYSLOT");
        let slots: Vec<(i64, i64, (String, i64))> = {
            let raw: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut node).expect("SLOTS");
            raw.into_iter()
                .filter_map(|r| match r {
                    redis::Value::Array(items) if items.len() >= 3 => {
                        let int = |v: &redis::Value| if let redis::Value::Int(n) = v { *n } else { -1 };
                        let master = match &items[2] {
                            redis::Value::Array(m) if m.len() >= 2 => (String::new(), int(&m[1])),
                            _ => return None,
                        };
                        Some((int(&items[0]), int(&items[1]), master))
                    }
                    _ => None,
                })
                .collect()
        };
        let (_, _, (_, port)) = slots.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).expect("an owner");
        u16::try_from(*port).expect("a port")
    }
}

fn int(con: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn a_cluster_routes_by_slot_and_answers_for_every_master() {
    // Told about the replica only: upstash-local finds the masters itself.
    let s = stack(0, 3);
    let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
    for k in &keys {
        assert_eq!(s.result(json!(["SET", k, k])), json!("OK"));
    }
    // Keys of different slots land on different masters, each on exactly one.
    let mut masters = s.masters();
    let sizes: Vec<i64> = masters.iter_mut().map(|m| int(m, &["DBSIZE"])).collect();
    assert!(sizes.iter().all(|&n| n > 0), "every master holds some keys: {sizes:?}");
    assert_eq!(sizes.iter().sum::<i64>(), 30);
    let mut held: Vec<String> =
        masters.iter_mut().flat_map(|m| redis::cmd("KEYS").arg("*").query::<Vec<String>>(m).expect("KEYS")).collect();
    held.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(held, sorted, "each key on exactly one master");
    assert_eq!(s.result(json!(["DBSIZE"])), json!(30));
    let mut all = s.result(json!(["KEYS", "key:*"])).as_array().cloned().unwrap_or_default();
    all.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
    let mut expected: Vec<Value> = keys.iter().map(|k| json!(k)).collect();
    expected.sort_by_key(|v| v.as_str().unwrap_or_default().to_string());
    assert_eq!(all, expected);

    // SCRIPT LOAD (with Upstash's flag) reaches every master: EVALSHA works on keys of each.
    let sha = s.result(json!([
        "SCRIPT",
        "LOAD",
        "#!lua flags=allow-key-locking\nreturn redis.call('APPEND', KEYS[1], ARGV[1])"
    ]));
    let sha = sha.as_str().expect("a sha").to_string();
    for k in &keys {
        assert_eq!(s.result(json!(["EVALSHA", sha, 1, k, "!"])), json!(k.len() + 1), "{k}");
    }
    assert_eq!(s.result(json!(["SCRIPT", "EXISTS", sha, "0000000000000000000000000000000000000000"])), json!([1, 0]));
    // Several keys of one hash tag: one slot, one master.
    let incr2 = s.result(json!([
        "SCRIPT",
        "LOAD",
        "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])"
    ]));
    let incr2 = incr2.as_str().expect("a sha").to_string();
    assert_eq!(s.result(json!(["EVALSHA", incr2, 2, "{alice}:a", "{alice}:b", 2])), json!(4));
    assert_eq!(s.result(json!(["EVALSHA", incr2, 2, "{alice}:a", "{alice}:b", 1])), json!(6));
    // Keys of two slots: Redis's own CROSSSLOT, the script not split.
    assert_ne!(s.owner("a"), s.owner("b"), "a and b are on different masters");
    let cross = s.error(json!(["EVAL", "return 1", 2, "a", "b"]));
    assert_eq!(cross, "CROSSSLOT Keys in request don't hash to the same slot");
    assert!(s.error(json!(["EVALSHA", incr2, 2, "a", "b", 1])).starts_with("CROSSSLOT"));
    assert!(s.error(json!(["RENAME", "a", "b"])).starts_with("CROSSSLOT"));
    assert!(s.error(json!(["EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", 1, "a"])).starts_with("NOSCRIPT"));
    assert_eq!(s.result(json!(["EVAL", "return 7", 0])), json!(7));

    // MGET merged in order, DEL summed, MSET split.
    assert_eq!(s.result(json!(["MSET", "a", "1", "b", "2", "c", "3"])), json!("OK"));
    assert_eq!(s.result(json!(["MGET", "c", "a", "nope", "b", "a"])), json!(["3", "1", null, "2", "1"]));
    assert_eq!(s.result(json!(["EXISTS", "a", "b", "c", "nope", "a"])), json!(4));
    assert_eq!(s.result(json!(["DEL", "a", "b", "nope"])), json!(2));
    assert_eq!(s.result(json!(["MGET", "a", "b", "c"])), json!([null, null, "3"]));

    // SCAN with MATCH visits every master: each key exactly once.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let r = s.result(json!(["SCAN", cursor, "MATCH", "key:*", "COUNT", 4]));
        cursor = r[0].as_str().expect("a cursor").to_string();
        seen.extend(r[1].as_array().expect("keys").iter().map(|k| k.as_str().unwrap_or_default().to_string()));
        calls += 1;
        assert!(calls < 200, "the scan never ended");
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(seen, want, "every key once");
    assert!(calls >= 3, "one master after another ({calls} calls)");
    assert_eq!(s.error(json!(["SCAN", "not-a-cursor"])), "ERR invalid cursor");

    // A pipeline mixes slots; answers in order, a cross-slot entry an error of its own.
    let p = s.post(
        "/pipeline",
        &json!([
            ["SET", "a", "x"],
            ["SET", "b", "y"],
            ["GET", "a"],
            ["GET", "b"],
            ["MGET", "a", "b"],
            ["EVAL", "return 1", 2, "a", "b"],
            ["INCR", "{alice}:a"],
            ["SELECT", "1"]
        ]),
    );
    assert_eq!(p.status, 200);
    let p = p.json();
    let p = p.as_array().cloned().unwrap_or_default();
    assert_eq!(
        &p[0..5],
        &[
            json!({"result": "OK"}),
            json!({"result": "OK"}),
            json!({"result": "x"}),
            json!({"result": "y"}),
            json!({"result": ["x", "y"]})
        ],
        "{p:?}"
    );
    assert!(p[5]["error"].as_str().unwrap_or_default().starts_with("CROSSSLOT"), "{p:?}");
    assert_eq!(p[6], json!({"result": 4}));
    assert!(p[7]["error"].as_str().unwrap_or_default().starts_with("ERR command is not available"), "{p:?}");

    // A transaction in one slot runs there; across slots it is refused whole.
    let t = s.post("/multi-exec", &json!([["INCR", "{alice}:a"], ["GET", "{alice}:b"]]));
    assert_eq!((t.status, t.json()), (200, json!([{"result": 5}, {"result": "3"}])));
    let t = s.post("/multi-exec", &json!([["SET", "a", "1"], ["SET", "b", "1"]]));
    assert_eq!(t.status, 400);
    assert_eq!(t.json(), json!({"error": "CROSSSLOT Keys in request don't hash to the same slot"}));
    assert_eq!(s.result(json!(["GET", "a"])), json!("x"), "nothing of it applied");

    // INFO commandstats sums every master's calls.
    let gets = |s: &Stack| -> i64 {
        let info = s.result(json!(["INFO", "commandstats"]));
        let line =
            info.as_str().unwrap_or_default().lines().find(|l| l.starts_with("cmdstat_get:")).map(str::to_string);
        line.and_then(|l| l.split(&['=', ','][..]).nth(1).and_then(|n| n.parse().ok())).unwrap_or(0)
    };
    let before = gets(&s);
    for k in &keys {
        s.result(json!(["GET", k]));
    }
    assert_eq!(gets(&s) - before, 30, "30 GETs over three masters, counted as one");
    let one_master = masters.iter_mut().map(|m| {
        let info: String = redis::cmd("INFO").arg("commandstats").query(m).expect("INFO");
        info.lines().any(|l| l.starts_with("cmdstat_get:calls=") && l.contains(&format!("calls={},", before + 30)))
    });
    assert!(one_master.into_iter().all(|full| !full), "no single master saw all of them");

    // PING, TIME, RANDOMKEY, FLUSHALL over every master.
    assert_eq!(s.result(json!(["PING"])), json!("PONG"));
    assert_eq!(s.result(json!(["TIME"])).as_array().map(Vec::len), Some(2));
    assert!(s.result(json!(["RANDOMKEY"])).is_string());
    assert_eq!(s.result(json!(["FLUSHALL"])), json!("OK"));
    assert_eq!(masters.iter_mut().map(|m| int(m, &["DBSIZE"])).sum::<i64>(), 0);
    assert_eq!(s.result(json!(["RANDOMKEY"])), Value::Null);
    assert_eq!(s.result(json!(["SCRIPT", "FLUSH"])), json!("OK"));
    assert_eq!(s.result(json!(["SCRIPT", "EXISTS", sha])), json!([0]));

    // A master that stops answering: its keys get an error within the bound, the others answer.
    let stopped = (0..3).map(|i| s.base + i).find(|p| *p != s.owner("a")).expect("a master");
    let key = (0..1000).map(|i| format!("k{i}")).find(|k| s.owner(k) == stopped).expect("a key of it");
    let pid = std::fs::read_to_string(s.dir.join(format!("redis-{stopped}.pid"))).expect("a pid file");
    let signal = |sig: &str| Command::new("kill").args([sig, pid.trim()]).status().expect("kill");
    struct Resume<F: Fn()>(F);
    impl<F: Fn()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    signal("-STOP");
    let _resume = Resume(|| {
        signal("-CONT");
    });
    let started = Instant::now();
    let a = s.command(json!(["GET", key]));
    assert!(started.elapsed() < BOUND, "{:?}", started.elapsed());
    assert_eq!(a.status, 500, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.json()["error"].as_str().unwrap_or_default().starts_with("ERR Redis is unreachable"), "{}", a.json());
    assert_eq!(s.result(json!(["SET", "a", "still"])), json!("OK"));
}

/// What a traffic thread saw: (ok, error) answers and the slowest.
struct Seen {
    ok: i64,
    errors: Vec<String>,
    slowest: Duration,
    /// Whether each answer (in order) was a success.
    outcomes: Vec<bool>,
}

/// Stops the traffic when dropped: also when the test panics (a scope waits for its threads).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const INCR: &str = "return redis.call('INCR', KEYS[1])";

/// EVALSHA of [`INCR`] and INCR (alternately) on `key` until `stop`, each incrementing it by one;
/// NOSCRIPT is answered with EVAL, as the Worker does (a promoted replica may lack the script).
fn traffic(s: &Stack, key: &str, sha: &str, stop: &AtomicBool) -> Seen {
    let mut seen = Seen { ok: 0, errors: Vec::new(), slowest: Duration::ZERO, outcomes: Vec::new() };
    let mut i = 0u64;
    let give_up = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        let command = if i.is_multiple_of(2) { json!(["EVALSHA", sha, 1, key]) } else { json!(["INCR", key]) };
        i += 1;
        let started = Instant::now();
        let mut a = s.command(command);
        if a.status == 400 && a.json()["error"].as_str().is_some_and(|e| e.starts_with("NOSCRIPT")) {
            a = s.command(json!(["EVAL", INCR, 1, key]));
        }
        seen.slowest = seen.slowest.max(started.elapsed());
        let body = a.json();
        match (a.status, body["result"].as_i64(), body["error"].as_str()) {
            (200, Some(_), _) => {
                seen.ok += 1;
                seen.outcomes.push(true);
            }
            (400 | 500, _, Some(e)) => {
                seen.errors.push(e.to_string());
                seen.outcomes.push(false);
            }
            other => panic!("not an answer: {other:?} {body}"),
        }
    }
    eprintln!(
        "traffic on {key}: {} ok, {} errors {:?}, slowest {:?}",
        seen.ok,
        seen.errors.len(),
        seen.errors.iter().take(3).collect::<Vec<_>>(),
        seen.slowest
    );
    seen
}

#[test]
fn a_slot_moved_under_traffic_loses_and_doubles_nothing() {
    let s = stack(1, 0);
    let key = "{bob}:n";
    let sha = s.result(json!(["SCRIPT", "LOAD", INCR]));
    let sha = sha.as_str().expect("a sha").to_string();
    let src_port = s.owner(key);
    let dst_port = (0..3).map(|i| s.base + i).find(|p| *p != src_port).expect("another master");
    let (mut src, mut dst) = (s.node(src_port - s.base), s.node(dst_port - s.base));
    let id = |c: &mut redis::Connection| -> String { redis::cmd("CLUSTER").arg("MYID").query(c).expect("MYID") };
    let (src_id, dst_id) = (id(&mut src), id(&mut dst));
    let slot = int(&mut src, &["CLUSTER", "KEYSLOT", key]).to_string();
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let load = scope.spawn(|| traffic(&s, key, &sha, &stop));
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));
        // The migration as redis-cli --cluster reshard does it: importing, migrating, the keys
        // moved (ASK from then on), then the slot given to the destination (MOVED).
        let ok = |c: &mut redis::Connection, args: &[&str]| {
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query::<redis::Value>(c).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        };
        ok(&mut dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
        ok(&mut src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        std::thread::sleep(Duration::from_millis(200));
        let keys: Vec<String> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(&slot).arg(100).query(&mut src).expect("GETKEYSINSLOT");
        assert!(keys.contains(&key.to_string()), "{keys:?}");
        let mut migrate = redis::cmd("MIGRATE");
        migrate.arg("127.0.0.1").arg(dst_port).arg("").arg(0).arg(5000).arg("KEYS");
        for k in &keys {
            migrate.arg(k);
        }
        migrate.query::<redis::Value>(&mut src).expect("MIGRATE");
        // The key lives on the destination now; the source answers ASK for it.
        std::thread::sleep(Duration::from_millis(300));
        ok(&mut dst, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        ok(&mut src, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        for i in 0..3 {
            if s.base + i != src_port && s.base + i != dst_port {
                ok(&mut s.node(i), &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
            }
        }
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, Ordering::Relaxed);
        load.join().expect("the traffic thread")
    });
    assert!(
        seen.errors.is_empty(),
        "every request answered with a result, but {} errors: {:?}",
        seen.errors.len(),
        seen.errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(seen.ok > 20, "some traffic flowed ({})", seen.ok);
    assert!(seen.slowest < BOUND, "the slowest request took {:?}", seen.slowest);
    assert_eq!(s.result(json!(["GET", key])), json!(seen.ok.to_string()), "no increment lost or doubled");
    assert_eq!(s.owner(key), dst_port);
    assert_eq!(int(&mut dst, &["CLUSTER", "COUNTKEYSINSLOT", &slot]), 1);
    assert_eq!(int(&mut src, &["CLUSTER", "COUNTKEYSINSLOT", &slot]), 0);
    // Both redirections happened: ASKING reached the destination, and MOVED moved the map.
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut dst).expect("INFO");
    assert!(info.contains("cmdstat_asking:"), "ASK was followed:\n{info}");
}

#[test]
fn a_failover_under_traffic_answers_every_request_in_time() {
    let s = stack(2, 1);
    // A key of the first master (the one with a replica).
    let key =
        (0..1000).map(|i| format!("{{f{i}}}:n")).find(|k| s.owner(k) == s.base).expect("a key of the first master");
    let sha = s.result(json!(["SCRIPT", "LOAD", INCR]));
    let sha = sha.as_str().expect("a sha").to_string();
    let stop = AtomicBool::new(false);
    let replica_port = s.base + 3;
    let seen = std::thread::scope(|scope| {
        let load = scope.spawn(|| traffic(&s, &key, &sha, &stop));
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));
        let mut replica = s.node(3);
        let _: String = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut replica).expect("CLUSTER FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut replica).expect("INFO");
            if info.contains("role:master") && s.owner(&key) == replica_port {
                break;
            }
            assert!(Instant::now() < deadline, "the replica was never promoted");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
        load.join().expect("the traffic thread")
    });
    assert!(seen.slowest < BOUND, "the slowest request took {:?}", seen.slowest);
    assert!(seen.ok > 20, "some traffic flowed ({})", seen.ok);
    // After the failover the promoted replica answers: the last requests all succeeded.
    let tail = &seen.outcomes[seen.outcomes.len().saturating_sub(5)..];
    assert!(
        tail.iter().all(|ok| *ok),
        "the last requests failed: {:?}",
        seen.errors.iter().rev().take(5).collect::<Vec<_>>()
    );
    let count: i64 = s.result(json!(["GET", key])).as_str().and_then(|n| n.parse().ok()).expect("a count");
    let errors = i64::try_from(seen.errors.len()).unwrap_or(i64::MAX);
    assert!(
        (seen.ok..=seen.ok + errors).contains(&count),
        "{count} increments for {} successes and {errors} errors",
        seen.ok
    );
    assert_eq!(s.result(json!(["EVALSHA", sha, 1, key])), json!(count + 1));
    let mut promoted = s.node(3);
    assert_eq!(int(&mut promoted, &["EXISTS", &key]), 1);
}
