//! The Upstash REST protocol, as pure code: request bodies in, classified
//! replies out. `POST {url}` with a JSON array (`["EVALSHA", sha, …]`),
//! `Authorization: Bearer <token>`; the answer is `{"result": …}` or
//! `{"error": "…"}` with an HTTP status. Only the transport (src/edge) does I/O.

use crate::json::push_str;
use crate::store::script::Variant;

/// Why the REST endpoint did not give us a usable script result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestError {
    /// `NOSCRIPT`: the script cache does not have this SHA (after a flush, restart or failover).
    NoScript,
    /// The server does not accept the `#!lua flags=…` shebang (vanilla Redis 7, or Redis < 7).
    ShebangRejected,
    /// 401/403 or `WRONGPASS`/`NOAUTH`: the token is wrong.
    Unauthorized,
    /// 429: Upstash's own request limit (never to be relayed as the caller's 429).
    Throttled,
    /// 5xx from the endpoint.
    Server(u16),
    /// 3xx: never followed (the body carries bucket keys, i.e. user ids, and another host's answer
    /// is no decision).
    Redirect(u16),
    /// Any other error text from Redis (a script error, OOM, …).
    Redis(String),
    /// A reply that is not what the protocol promises.
    Malformed(String),
}

/// `["EVALSHA", sha, numkeys, keys…, args…]` for `variant`.
pub fn evalsha_body(variant: Variant, keys: &[String], args: &[String]) -> String {
    body("EVALSHA", variant.sha(), keys, args)
}

/// `["EVAL", script, numkeys, keys…, args…]` for `variant`.
pub(crate) fn eval_body(variant: Variant, keys: &[String], args: &[String]) -> String {
    body("EVAL", variant.text(), keys, args)
}

fn body(command: &str, script: &str, keys: &[String], args: &[String]) -> String {
    let size = script.len() + 32 + keys.iter().chain(args).map(|s| s.len() + 3).sum::<usize>();
    let mut out = String::with_capacity(size);
    out.push('[');
    push_str(&mut out, command);
    out.push(',');
    push_str(&mut out, script);
    out.push_str(",\"");
    out.push_str(&keys.len().to_string());
    out.push('"');
    for item in keys.iter().chain(args) {
        out.push(',');
        push_str(&mut out, item);
    }
    out.push(']');
    out
}

/// The usual reply, `{"result":[1,0,4,0,12000,5,60,0,1700000000000]}` exactly (no spaces, integers only), read
/// without building a JSON tree; anything else (`None`) goes through serde_json.
fn integers_fast(body: &str) -> Option<Vec<i64>> {
    let list = body.strip_prefix("{\"result\":[")?.strip_suffix("]}")?;
    let mut out = Vec::with_capacity(16);
    for item in list.split(',') {
        let digits = item.strip_prefix('-').unwrap_or(item);
        if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        out.push(item.parse().ok()?);
    }
    Some(out)
}

/// Classifies an HTTP reply to a script call; `Ok` is the script's integer array.
pub fn parse_script_reply(status: u16, body: &str) -> Result<Vec<i64>, RestError> {
    classify_status(status)?;
    if status == 200 {
        if let Some(values) = integers_fast(body) {
            return Ok(values);
        }
    }
    let items = match result_of(status, body)? {
        serde_json::Value::Array(items) => items,
        _ => return Err(RestError::Malformed("the result is not an array".into())),
    };
    items
        .iter()
        .map(|v| v.as_i64().ok_or_else(|| RestError::Malformed("a result item is not an integer".into())))
        .collect()
}

/// Classifies an HTTP reply to a command that answers an integer (`DEL`).
pub(crate) fn parse_integer_reply(status: u16, body: &str) -> Result<i64, RestError> {
    classify_status(status)?;
    result_of(status, body)?.as_i64().ok_or_else(|| RestError::Malformed("the result is not an integer".into()))
}

fn classify_status(status: u16) -> Result<(), RestError> {
    match status {
        401 | 403 => Err(RestError::Unauthorized),
        429 => Err(RestError::Throttled),
        300..=399 => Err(RestError::Redirect(status)),
        500..=599 => Err(RestError::Server(status)),
        _ => Ok(()),
    }
}

/// The `result` of a reply envelope, or its classified `error`.
fn result_of(status: u16, body: &str) -> Result<serde_json::Value, RestError> {
    let not_an_object = || RestError::Malformed(format!("HTTP {status}: not a JSON object"));
    let envelope: serde_json::Value = serde_json::from_str(body).map_err(|_| not_an_object())?;
    let serde_json::Value::Object(mut envelope) = envelope else { return Err(not_an_object()) };
    match envelope.remove("error") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(error)) => return Err(classify_error(error)),
        Some(_) => return Err(RestError::Malformed(format!("HTTP {status}: the error is not a string"))),
    }
    if status != 200 {
        return Err(RestError::Malformed(format!("HTTP {status} without an error")));
    }
    envelope
        .remove("result")
        .filter(|v| !v.is_null())
        .ok_or_else(|| RestError::Malformed("the reply has no result".into()))
}

fn classify_error(error: String) -> RestError {
    if error.starts_with("NOSCRIPT") {
        RestError::NoScript
    } else if error.starts_with("WRONGPASS") || error.starts_with("NOAUTH") {
        RestError::Unauthorized
    } else if error.contains("shebang") || error.contains("near '#'") {
        // Redis 7: "ERR Unexpected flag in script shebang: …"; Redis < 7 cannot parse "#!" at all.
        RestError::ShebangRejected
    } else {
        RestError::Redis(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_reply_is_classified_like_a_script_reply() {
        assert_eq!(parse_integer_reply(200, r#"{"result":2}"#), Ok(2));
        assert_eq!(parse_integer_reply(401, ""), Err(RestError::Unauthorized));
        assert_eq!(parse_integer_reply(307, ""), Err(RestError::Redirect(307)));
        assert_eq!(parse_integer_reply(400, r#"{"error":"ERR wrong"}"#), Err(RestError::Redis("ERR wrong".into())));
        assert!(matches!(parse_integer_reply(200, r#"{"result":"2"}"#), Err(RestError::Malformed(_))));
        assert!(matches!(parse_integer_reply(200, "{"), Err(RestError::Malformed(_))));
    }

    #[test]
    fn the_fast_path_reads_exactly_what_serde_json_reads() {
        for body in [
            r#"{"result":[1,0,4,0,12000,5,60]}"#,
            r#"{"result":[0,1,-3,9007199254740993,1]}"#,
            r#"{"result":[]}"#,
            r#"{"result":[1, 0]}"#,
            r#"{"result":[1,0.5]}"#,
            r#"{"result":[1,"2"]}"#,
            r#"{"result":[1,,2]}"#,
            r#"{"result":[1e3]}"#,
            r#"{"result":[-]}"#,
            r#"{"result":[99999999999999999999]}"#,
        ] {
            let fast = integers_fast(body);
            let slow = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["result"].as_array().cloned())
                .and_then(|a| a.iter().map(serde_json::Value::as_i64).collect::<Option<Vec<i64>>>());
            if let Some(f) = &fast {
                assert_eq!(Some(f), slow.as_ref(), "{body}");
            }
            assert_eq!(parse_script_reply(200, body).ok(), slow, "{body}");
        }
        assert_eq!(integers_fast(r#"{"result":[1,0,4]}"#), Some(vec![1, 0, 4]));
    }
    use crate::store::script::{SCRIPT_FLAGGED_SHA, SCRIPT_PLAIN_SHA};

    #[test]
    fn evalsha_body_is_a_json_array_of_strings() {
        let body = evalsha_body(
            Variant::Flagged,
            &["rate:{a}:/x".into()],
            &["".into(), "5".into(), "0.08333333333333333".into()],
        );
        assert_eq!(
            body,
            format!(r#"["EVALSHA","{SCRIPT_FLAGGED_SHA}","1","rate:{{a}}:/x","","5","0.08333333333333333"]"#)
        );
        let parsed: Vec<String> = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed.len(), 7);
        assert!(evalsha_body(Variant::Plain, &[], &[]).contains(SCRIPT_PLAIN_SHA));
    }

    #[test]
    fn eval_body_escapes_the_script_and_keys() {
        let body = eval_body(Variant::Flagged, &["rate:\"q\"\\\u{1}:/".into()], &[]);
        let parsed: Vec<String> = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed[0], "EVAL");
        assert_eq!(parsed[1], Variant::Flagged.text());
        assert_eq!(parsed[2], "1");
        assert_eq!(parsed[3], "rate:\"q\"\\\u{1}:/");
    }

    #[test]
    fn results_and_errors_are_classified() {
        assert_eq!(parse_script_reply(200, r#"{"result":[1,0,4,0,12000]}"#), Ok(vec![1, 0, 4, 0, 12000]));
        assert_eq!(
            parse_script_reply(400, r#"{"error":"NOSCRIPT No matching script. Please use EVAL."}"#),
            Err(RestError::NoScript)
        );
        assert_eq!(
            parse_script_reply(400, r#"{"error":"ERR Unexpected flag in script shebang: allow-key-locking"}"#),
            Err(RestError::ShebangRejected)
        );
        assert_eq!(parse_script_reply(401, r#"{"error":"Unauthorized"}"#), Err(RestError::Unauthorized));
        assert_eq!(parse_script_reply(400, r#"{"error":"WRONGPASS invalid password"}"#), Err(RestError::Unauthorized));
        assert_eq!(parse_script_reply(429, "slow down"), Err(RestError::Throttled));
        assert_eq!(parse_script_reply(502, "<html>bad gateway</html>"), Err(RestError::Server(502)));
        assert_eq!(
            parse_script_reply(400, r#"{"error":"ERR user_script:3: boom"}"#),
            Err(RestError::Redis("ERR user_script:3: boom".into()))
        );
    }

    /// Issue 10, item 7: a 3xx was followed, sending the keys elsewhere and taking that answer as
    /// the decision. Redirects are never followed, and one is a failure of its own.
    #[test]
    fn a_redirect_is_a_failure_of_its_own() {
        for status in [301, 302, 303, 307, 308, 300, 399] {
            let body = r#"{"result":[1,0,4,0,12000,5,60]}"#;
            assert_eq!(parse_script_reply(status, body), Err(RestError::Redirect(status)), "{status}");
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for (status, body) in [
            (200, ""),
            (200, "not json"),
            (200, "[1,2]"),
            (200, r#"{"result":"OK"}"#),
            (200, r#"{"result":[1,"x"]}"#),
            (200, r#"{"result":[1.5]}"#),
            (200, r#"{}"#),
            (400, r#"{"result":[1]}"#),
            (200, r#"{"result":[1],"error":7}"#),
        ] {
            assert!(matches!(parse_script_reply(status, body), Err(RestError::Malformed(_))), "{status} {body}");
        }
    }
}
