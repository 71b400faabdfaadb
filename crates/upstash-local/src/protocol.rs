//! The pure half of the REST protocol: which command a request names, which commands the shared
//! connection must never run, and how a Redis reply is written back (JSON, JSON with base64
//! strings, or RESP2).

use serde_json::{json, Value};

/// A command's arguments as bytes (values may be binary: a path-style `POST` body is sent as is).
pub type Args = Vec<Vec<u8>>;

/// How results are written: `Upstash-Encoding: base64` and `Upstash-Response-Format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    /// JSON, every string of a result base64-encoded except a top-level `"OK"` (errors never).
    Base64,
    /// The raw RESP2 reply (`application/octet-stream`).
    Resp2,
}

impl Format {
    /// The format a request asks for, or the 400 message for a format Upstash refuses.
    pub fn of(encoding: Option<&[u8]>, response_format: Option<&[u8]>) -> Result<Format, String> {
        let base64 = encoding.is_some_and(|e| e.trim_ascii().eq_ignore_ascii_case(b"base64"));
        match response_format.map(<[u8]>::trim_ascii) {
            None => Ok(if base64 { Format::Base64 } else { Format::Json }),
            Some(f) if f.eq_ignore_ascii_case(b"json") => Ok(if base64 { Format::Base64 } else { Format::Json }),
            Some(f) if f.eq_ignore_ascii_case(b"resp2") && base64 => {
                Err("ERR Upstash-Response-Format: resp2 cannot be combined with Upstash-Encoding: base64".into())
            }
            Some(f) if f.eq_ignore_ascii_case(b"resp2") => Ok(Format::Resp2),
            Some(_) => Err("ERR Upstash-Response-Format must be json or resp2".into()),
        }
    }
}

/// A command from the JSON array of the root endpoint, `/pipeline` and `/multi-exec`.
pub fn command_of_json(command: &Value) -> Result<Args, String> {
    let items = command.as_array().filter(|a| !a.is_empty()).ok_or("ERR a command is a non-empty JSON array")?;
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Number(n) => Ok(n.to_string().into_bytes()),
            Value::Bool(b) => Ok(b.to_string().into_bytes()),
            other => Err(format!("ERR unsupported argument {other}")),
        })
        .collect()
}

/// A path-style command (`GET /set/k/v/EX/100`, `POST /set/k` with the value as the body,
/// `/set/k?EX=100`): the path's segments, percent-decoded, then the body (when not empty), then
/// each query pair as two arguments (a key without `=` as one). `_token` is never an argument.
pub fn command_of_path(path: &str, query: Option<&str>, body: &[u8]) -> Result<Args, String> {
    let mut args: Args = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        args.push(percent_decode(segment).ok_or("ERR a path segment has a malformed %-escape")?);
    }
    if args.is_empty() {
        return Err("ERR no command: POST a JSON array to /, or name the command in the path (/get/key)".into());
    }
    if !body.is_empty() {
        args.push(body.to_vec());
    }
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        if key == "_token" {
            continue;
        }
        args.push(percent_decode(key).ok_or("ERR a query parameter has a malformed %-escape")?);
        if let Some(v) = value {
            args.push(percent_decode(v).ok_or("ERR a query parameter has a malformed %-escape")?);
        }
    }
    Ok(args)
}

/// The `_token` query parameter, percent-decoded.
pub fn query_token(query: Option<&str>) -> Option<Vec<u8>> {
    query?.split('&').find_map(|p| p.strip_prefix("_token=")).and_then(percent_decode)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Commands the shared connection must never run, and why (Upstash refuses them too).
pub fn refused(args: &Args) -> Option<&'static str> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let sub = args.get(1).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
    Some(match name.as_str() {
        "SELECT" | "SWAPDB" | "HELLO" | "AUTH" | "RESET" | "QUIT" | "READONLY" | "READWRITE" | "ASKING" => {
            "it changes the connection every REST call shares"
        }
        "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "UNWATCH" => "transactions are POST /multi-exec",
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => {
            "subscriptions are the event streams /subscribe/<channel> and /psubscribe/<pattern>"
        }
        "MONITOR" => "monitoring is the event stream /monitor",
        "CLIENT" if !matches!(sub.as_str(), "ID" | "INFO" | "GETNAME" | "LIST") => {
            "it changes the connection every REST call shares"
        }
        "SHUTDOWN" | "DEBUG" | "CONFIG" | "SAVE" | "BGSAVE" | "BGREWRITEAOF" | "REPLICAOF" | "SLAVEOF" | "FAILOVER"
        | "SYNC" | "PSYNC" | "REPLCONF" | "MODULE" | "ACL" | "CLUSTER" | "MIGRATE" => {
            "server administration is not available over REST"
        }
        "SCRIPT" if sub == "KILL" => "server administration is not available over REST",
        "FUNCTION" if sub == "KILL" || sub == "RESTORE" || sub == "FLUSH" => {
            "server administration is not available over REST"
        }
        _ => return None,
    })
}

/// The 400 message for a refused command.
pub fn refusal(args: &Args, why: &str) -> String {
    format!("ERR command is not available: {} ({why})", String::from_utf8_lossy(&args[0]).to_ascii_lowercase())
}

/// Whether a command may block the connection it runs on (it then gets a connection of its own).
pub fn blocks(args: &Args) -> bool {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    match name.as_str() {
        "BLPOP" | "BRPOP" | "BRPOPLPUSH" | "BLMOVE" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX" | "BZMPOP" | "WAIT"
        | "WAITAOF" => true,
        "XREAD" | "XREADGROUP" => args[1..].iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK")),
        _ => false,
    }
}

/// The Redis command of some arguments.
pub fn to_cmd(args: &Args) -> redis::Cmd {
    let mut cmd = redis::cmd(&String::from_utf8_lossy(&args[0]));
    for arg in &args[1..] {
        cmd.arg(arg.as_slice());
    }
    cmd
}

/// A reply as the root endpoint's `result` (or a pipeline entry's), in JSON or base64 JSON.
pub fn to_json(value: redis::Value, format: Format) -> Value {
    encode(value, format == Format::Base64, true)
}

fn encode(value: redis::Value, base64: bool, top: bool) -> Value {
    use redis::Value as R;
    let text = |bytes: &[u8]| {
        if base64 {
            Value::String(base64_encode(bytes))
        } else {
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
    };
    match value {
        R::Nil => Value::Null,
        R::Int(i) => json!(i),
        R::Okay if top => Value::String("OK".into()),
        R::Okay => text(b"OK"),
        R::SimpleString(s) if top && s == "OK" => Value::String(s),
        R::SimpleString(s) => text(s.as_bytes()),
        R::BulkString(bytes) => text(&bytes),
        R::Array(items) | R::Set(items) | R::Push { data: items, .. } => {
            Value::Array(items.into_iter().map(|v| encode(v, base64, false)).collect())
        }
        R::Map(pairs) => Value::Array(
            pairs.into_iter().flat_map(|(k, v)| [encode(k, base64, false), encode(v, base64, false)]).collect(),
        ),
        R::Double(d) => text(d.to_string().as_bytes()),
        R::Boolean(b) => json!(i64::from(b)),
        R::VerbatimString { text: t, .. } => text(t.as_bytes()),
        R::BigNumber(n) => text(&n),
        R::Attribute { data, .. } => encode(*data, base64, top),
        R::ServerError(e) => json!({ "error": server_error_text(&e) }),
        _ => Value::Null,
    }
}

/// Redis's own error text: `"NOSCRIPT No matching script…"`.
pub fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    }
}

/// A reply as RESP2 bytes.
pub fn to_resp2(value: &redis::Value, out: &mut Vec<u8>) {
    use redis::Value as R;
    let bulk = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    };
    match value {
        R::Nil => out.extend_from_slice(b"$-1\r\n"),
        R::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        R::Okay => out.extend_from_slice(b"+OK\r\n"),
        R::SimpleString(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        R::BulkString(b) => bulk(out, b),
        R::Array(items) | R::Set(items) | R::Push { data: items, .. } => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for v in items {
                to_resp2(v, out);
            }
        }
        R::Map(pairs) => {
            out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes());
            for (k, v) in pairs {
                to_resp2(k, out);
                to_resp2(v, out);
            }
        }
        R::Double(d) => bulk(out, d.to_string().as_bytes()),
        R::Boolean(b) => out.extend_from_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
        R::VerbatimString { text, .. } => bulk(out, text.as_bytes()),
        R::BigNumber(n) => bulk(out, n),
        R::Attribute { data, .. } => to_resp2(data, out),
        R::ServerError(e) => resp2_error(&server_error_text(e), out),
        _ => out.extend_from_slice(b"$-1\r\n"),
    }
}

/// An error as RESP2 (`-ERR …`), on one line.
pub fn resp2_error(message: &str, out: &mut Vec<u8>) {
    out.push(b'-');
    out.extend(message.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// Standard base64 with padding (what `atob` reads).
pub fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// One server-sent event: every line of `text` a `data:` line (a payload with a newline stays one
/// event, as the SSE format defines it), ended by a blank line.
pub fn sse_event(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    for line in text.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value as R;

    fn strings(args: &Args) -> Vec<String> {
        args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    #[test]
    fn base64_is_what_atob_reads() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"abcd"), "YWJjZA==");
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn base64_results_encode_every_string_but_a_top_level_ok() {
        let f = Format::Base64;
        assert_eq!(to_json(R::Okay, f), json!("OK"));
        assert_eq!(to_json(R::SimpleString("OK".into()), f), json!("OK"));
        assert_eq!(to_json(R::SimpleString("PONG".into()), f), json!("UE9ORw=="));
        assert_eq!(to_json(R::BulkString(b"abcd".to_vec()), f), json!("YWJjZA=="));
        assert_eq!(to_json(R::Int(7), f), json!(7));
        assert_eq!(to_json(R::Nil, f), Value::Null);
        let nested = R::Array(vec![R::Okay, R::Array(vec![R::BulkString(b"x".to_vec()), R::Nil]), R::Int(1)]);
        assert_eq!(to_json(nested, f), json!(["T0s=", ["eA==", null], 1]));
    }

    #[test]
    fn plain_json_results_are_text() {
        assert_eq!(to_json(R::SimpleString("PONG".into()), Format::Json), json!("PONG"));
        assert_eq!(to_json(R::BulkString(b"abcd".to_vec()), Format::Json), json!("abcd"));
    }

    #[test]
    fn formats_upstash_accepts_and_refuses() {
        assert_eq!(Format::of(None, None), Ok(Format::Json));
        assert_eq!(Format::of(Some(b"base64"), None), Ok(Format::Base64));
        assert_eq!(Format::of(Some(b"BASE64"), Some(b"json")), Ok(Format::Base64));
        assert_eq!(Format::of(None, Some(b"resp2")), Ok(Format::Resp2));
        assert!(Format::of(None, Some(b"xml")).is_err());
        assert!(Format::of(Some(b"base64"), Some(b"resp2")).is_err());
    }

    #[test]
    fn path_style_commands() {
        assert_eq!(
            strings(&command_of_path("/set/foo/bar/EX/100", None, b"").unwrap()),
            ["set", "foo", "bar", "EX", "100"]
        );
        assert_eq!(
            strings(&command_of_path("/set/foo", Some("EX=100"), b"the value").unwrap()),
            ["set", "foo", "the value", "EX", "100"]
        );
        assert_eq!(strings(&command_of_path("/get/a%2Fb%20c", Some("_token=t"), b"").unwrap()), ["get", "a/b c"]);
        assert_eq!(strings(&command_of_path("/set/k/v", Some("NX"), b"").unwrap()), ["set", "k", "v", "NX"]);
        assert!(command_of_path("/get/%zz", None, b"").is_err());
        assert!(command_of_path("/", None, b"").is_err());
        assert_eq!(query_token(Some("a=1&_token=s%3Dx")), Some(b"s=x".to_vec()));
    }

    #[test]
    fn shared_state_commands_are_refused_and_blocking_ones_recognised() {
        let args = |a: &[&str]| a.iter().map(|s| s.as_bytes().to_vec()).collect::<Args>();
        for c in [
            &["select", "1"][..],
            &["MULTI"],
            &["subscribe", "c"],
            &["client", "reply", "off"],
            &["QUIT"],
            &["shutdown"],
            &["monitor"],
            &["config", "set", "x", "y"],
        ] {
            assert!(refused(&args(c)).is_some(), "{c:?}");
        }
        for c in [&["get", "k"][..], &["client", "id"], &["flushall"], &["script", "load", "x"], &["info"]] {
            assert!(refused(&args(c)).is_none(), "{c:?}");
        }
        assert!(blocks(&args(&["blpop", "k", "0"])));
        assert!(blocks(&args(&["XREAD", "block", "0", "STREAMS", "s", "$"])));
        assert!(!blocks(&args(&["XREAD", "STREAMS", "s", "0"])));
        assert!(!blocks(&args(&["lpop", "k"])));
    }

    #[test]
    fn resp2_replies() {
        let mut out = Vec::new();
        to_resp2(&R::Array(vec![R::Okay, R::BulkString(b"bar".to_vec()), R::Int(3), R::Nil]), &mut out);
        assert_eq!(out, b"*4\r\n+OK\r\n$3\r\nbar\r\n:3\r\n$-1\r\n");
    }

    #[test]
    fn an_event_is_data_lines_and_a_blank_line() {
        assert_eq!(sse_event("message,c,hi"), b"data: message,c,hi\n\n");
        assert_eq!(sse_event("a\nb"), b"data: a\ndata: b\n\n");
    }
}
