//! Steps and replies as text for the executor (`js/shim.mjs`): one string in and one out per step,
//! so a request crosses the wasm boundary once per step whatever its headers, and the executor needs
//! nothing but `indexOf` and `split` to read a step.
//!
//! A request is `method \n url \n value … ` with one value per [`Gateway::header_names`]
//! (`\0` for an absent header: header values never hold NUL or a line break).
//!
//! A step is `head \0 extra \0 body`: `head` is lines, its first the kind:
//! - `R` respond: status, asset name (`""` = `body`), note, report ticket (`""` = none), report
//!   timeout, wake ticket (`""` = none), wake ms, then header name / value lines; `extra` is the
//!   report's pipeline body.
//! - `F` forward: url (`""` = the request's own), note, report ticket, report timeout, wake ticket
//!   (`""` = none), wake ms, watch ticket (`""` = none, `0` = only strip headers), `e` to report at the body's end (else as
//!   soon as the headers are in), the origin's response headers to report
//!   (`,`-joined), those to strip, the SSE keys to look for (`,`-joined), then header name / value
//!   lines to add; `extra` is the report's body.
//! - `Q` fetch: ticket, `p` for `/pipeline` (else `""`), timeout ms, and the shard when it is not the
//!   first (an index into the REST URLs); `body` is the POST body.
//! - `M` fetches at once (a script call spread over several shards or slots): `body` is their `Q`
//!   steps, `\u{1}`-separated; each is carried out on its own (resumed with its ticket, what follows
//!   carried out), and the one that does not end in `D` is the answer.
//! - `W` wait: ticket, ms.
//! - `V` verify: ticket, algorithm (`RS256`, `ES256`, `EdDSA`), kid, signature (base64url); `extra`
//!   is the public JWK, `body` the signed data.
//! - `B` read the body: ticket, the most bytes to accept.
//! - `J` return to an RPC caller: note, report ticket, report timeout, wake ticket, wake ms; `extra`
//!   is the report's body, `body` the JSON value to return.
//! - `T` throw to an RPC caller: the error's constructor (`TypeError`, `RangeError`, `Error`), note;
//!   `body` is the message.
//! - `D` done.
//!
//! A watched response is streamed through unchanged (but for stripped headers); once it has been
//! delivered — to its end, or the client went away, or the origin failed — the watch ticket is
//! resumed with code -8 (below) and what follows is carried out like a wake's steps.
//!
//! A wake is carried out off the response path (`waitUntil`): wait its ms, resume its ticket with
//! "woke", and carry out what follows (`Q`, `W`) until `D`.
//!
//! `extra` never holds NUL (it is JSON from [`crate::json`], which escapes control characters), so
//! `body` is everything after the second NUL. A note is one line for the Worker's log.
//!
//! A reply is `(ticket, code, text)`: see [`reply`].
//!
//! [`Gateway::header_names`]: crate::Gateway::header_names

use crate::gateway::{Fetch, Isolate, Reply, Step, Wake};
use crate::http::{self, Body, Header};

/// The variables the executor passes once per isolate: `name \0 value \0 …` (values as strings;
/// an object, such as a `[vars]` table, as JSON).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // (the wasm exports use it)
pub(crate) fn decode_vars(text: &str) -> Vec<(&str, &str)> {
    let mut parts = text.split('\0');
    let mut out = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        out.push((name, value));
    }
    out
}

/// The method, URL and header values of a request in its wire form.
pub fn decode_request(facts: &str) -> (&str, &str, Vec<Option<&str>>) {
    let mut parts = facts.split('\n');
    let method = parts.next().unwrap_or("GET");
    let url = parts.next().unwrap_or("/");
    (method, url, parts.map(|v| (v != "\0").then_some(v)).collect())
}

/// What the executor learns once per isolate: the header names to read, the REST URLs and their
/// authorizations (`\n`-joined: one per shard), and the 502 to answer when the origin cannot be reached —
/// `names (\n-joined) \0 url \0 authorization \0 step`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // (the wasm exports use it)
pub(crate) fn encode_start(isolate: &Isolate) -> String {
    // (several databases: their URLs and authorizations, `\n`-joined, in the same order)
    let (url, authorization) = match isolate {
        Isolate::Ready(g) => (
            g.config().redis_urls.join("\n"),
            g.config().redis_authorizations.iter().map(|a| a.expose()).collect::<Vec<_>>().join("\n"),
        ),
        Isolate::Misconfigured(_) => (String::new(), String::new()),
    };
    let unreachable = Step::Respond { response: http::origin_unreachable(), note: None, report: None, wake: None };
    format!("{}\0{url}\0{authorization}\0{}", isolate.header_names().join("\n"), encode_step(&unreachable))
}

/// The reply for `code` and `text` from the executor: an HTTP status (100 to 599) with its body, or
/// 0 the deadline passed, -1 unreachable, -2 woke, -3 / -4 the signature is invalid / valid, -5 the key
/// could not be imported, -6 the body (in `text`), -7 the body was too long or unreadable, -8 a watched
/// response was delivered (`text`: `1` or `0` for complete or not, a line per header asked, absent
/// ones `\u{1}`, then `\0` and the SSE events' data, `\0`-separated).
pub fn reply(code: i32, text: &str) -> Reply<'_> {
    match code {
        100..=599 => Reply::Http { status: code as u16, body: text },
        0 => Reply::Timeout,
        -2 => Reply::Woke,
        -3 => Reply::Signature(Some(false)),
        -4 => Reply::Signature(Some(true)),
        -5 => Reply::Signature(None),
        -6 => Reply::Body(Some(text)),
        -7 => Reply::Body(None),
        -8 => Reply::Delivered(text),
        _ => Reply::Unreachable,
    }
}

/// A step in its wire form.
pub fn encode_step(step: &Step) -> String {
    let mut head = String::with_capacity(128);
    let (extra, body): (&str, &str) = match step {
        Step::Respond { response, note, report, wake } => {
            let asset = match &response.body {
                Body::Asset(a) => a.name(),
                Body::Text(_) => "",
            };
            line(&mut head, "R");
            number(&mut head, u64::from(response.status));
            line(&mut head, asset);
            note_line(&mut head, note.as_deref());
            let extra = report_lines(&mut head, report.as_ref());
            wake_lines(&mut head, wake.as_ref());
            headers(&mut head, &response.headers);
            (extra, response.text())
        }
        Step::Forward { url, headers: extra_headers, note, report, wake, watch } => {
            line(&mut head, "F");
            line(&mut head, url.as_deref().unwrap_or(""));
            note_line(&mut head, note.as_deref());
            let extra = report_lines(&mut head, report.as_ref());
            wake_lines(&mut head, wake.as_ref());
            match watch {
                Some(w) => {
                    number(&mut head, u64::from(w.ticket));
                    line(&mut head, if w.until_end { "e" } else { "" });
                    line(&mut head, &w.headers.join(","));
                    line(&mut head, &w.strip.join(","));
                    line(&mut head, &w.sse_keys.join(","));
                }
                None => head.push_str("\n\n\n\n\n"),
            }
            headers(&mut head, extra_headers);
            (extra, "")
        }
        Step::Fetch(f) => {
            line(&mut head, "Q");
            number(&mut head, u64::from(f.ticket));
            line(&mut head, if f.pipeline { "p" } else { "" });
            number(&mut head, u64::from(f.timeout_ms));
            if f.shard > 0 {
                number(&mut head, u64::from(f.shard));
            }
            ("", f.body.as_str())
        }
        Step::Fetches(fetches) => {
            // Each piece a `Q` step of its own, `\u{1}`-separated (a JSON body never holds that byte raw).
            line(&mut head, "M");
            head.pop();
            let mut out = head;
            out.push_str("\0\0");
            for (i, f) in fetches.iter().enumerate() {
                if i > 0 {
                    out.push('\u{1}');
                }
                out.push_str(&encode_step(&Step::Fetch(f.clone())));
            }
            return out;
        }
        Step::Wait { ticket, ms } => {
            line(&mut head, "W");
            line(&mut head, &ticket.to_string());
            line(&mut head, &ms.to_string());
            ("", "")
        }
        Step::Verify { ticket, check } => {
            line(&mut head, "V");
            line(&mut head, &ticket.to_string());
            line(&mut head, check.alg);
            line(&mut head, &check.kid);
            line(&mut head, &<base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(&check.signature));
            (check.jwk.as_str(), check.data.as_str())
        }
        Step::ReadBody { ticket, max } => {
            line(&mut head, "B");
            line(&mut head, &ticket.to_string());
            line(&mut head, &max.to_string());
            ("", "")
        }
        Step::Return { value, note, report, wake } => {
            line(&mut head, "J");
            note_line(&mut head, note.as_deref());
            let extra = report_lines(&mut head, report.as_ref());
            wake_lines(&mut head, wake.as_ref());
            (extra, value.as_str())
        }
        Step::Throw { error, note } => {
            line(&mut head, "T");
            line(&mut head, error.kind.name());
            note_line(&mut head, note.as_deref());
            ("", error.message.as_str())
        }
        Step::Done => {
            line(&mut head, "D");
            ("", "")
        }
    };
    head.pop(); // the last line's `\n`
    let mut out = String::with_capacity(head.len() + extra.len() + body.len() + 2);
    out.push_str(&head);
    out.push('\0');
    out.push_str(extra);
    out.push('\0');
    out.push_str(body);
    out
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

fn number(out: &mut String, n: u64) {
    crate::json::push_u64(out, n);
    out.push('\n');
}

/// A note on one line, with no character that would end a field.
fn note_line(out: &mut String, note: Option<&str>) {
    let note = note.unwrap_or("");
    out.extend(note.chars().map(|c| if c.is_control() { ' ' } else { c }));
    out.push('\n');
}

fn report_lines<'a>(out: &mut String, report: Option<&'a Fetch>) -> &'a str {
    match report {
        Some(f) => {
            number(out, u64::from(f.ticket));
            number(out, u64::from(f.timeout_ms));
            &f.body
        }
        None => {
            line(out, "");
            line(out, "");
            ""
        }
    }
}

fn wake_lines(out: &mut String, wake: Option<&Wake>) {
    match wake {
        Some(w) => {
            number(out, u64::from(w.ticket));
            number(out, u64::from(w.ms));
        }
        None => {
            line(out, "");
            line(out, "");
        }
    }
}

fn headers(out: &mut String, headers: &[Header]) {
    for (name, value) in headers {
        line(out, name);
        line(out, value);
    }
}

/// Parses a step's wire form back (for tests of the executor's side of the format).
#[cfg(test)]
pub(crate) fn decode_step(text: &str) -> Option<(Vec<&str>, &str, &str)> {
    let first = text.find('\0')?;
    let second = first + 1 + text[first + 1..].find('\0')?;
    Some((text[..first].split('\n').collect(), &text[first + 1..second], &text[second + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwt::SignatureCheck;

    #[test]
    fn a_request_decodes_with_absent_headers() {
        let (m, u, h) = decode_request("GET\nhttps://h/a?b\nalice\n\0\nBearer x");
        assert_eq!((m, u), ("GET", "https://h/a?b"));
        assert_eq!(h, [Some("alice"), None, Some("Bearer x")]);
        assert_eq!(decode_request("POST\nhttps://h/").2, Vec::<Option<&str>>::new());
    }

    #[test]
    fn every_step_has_its_fields_where_the_executor_reads_them() {
        let report = Fetch { ticket: 9, pipeline: true, body: "[[\"HINCRBY\"]]".into(), timeout_ms: 500, shard: 0 };
        let mut r = http::problem(429, "rate-limited", "Too Many Requests", "a\nb\0c");
        r.headers.push(("retry-after", "12".into()));
        let wake = Some(Wake { ticket: 3, ms: 0 });
        let step = Step::Respond { response: r, note: Some("line one\nline two".into()), report: Some(report), wake };
        let text = encode_step(&step);
        let (head, extra, body) = decode_step(&text).unwrap();
        assert_eq!(&head[..8], ["R", "429", "", "line one line two", "9", "500", "3", "0"]);
        assert_eq!(&head[head.len() - 2..], ["retry-after", "12"]);
        assert_eq!(extra, "[[\"HINCRBY\"]]");
        assert!(body.contains("\"detail\":\"a\\nb\\u0000c\""), "{body}");

        let f = Step::Forward {
            url: None,
            headers: vec![("ratelimit", "\"default\";r=4;t=12".into())],
            note: None,
            report: None,
            wake: Some(Wake { ticket: 7, ms: 1020 }),
            watch: None,
        };
        let text = encode_step(&f);
        assert_eq!(
            decode_step(&text).unwrap(),
            (vec!["F", "", "", "", "", "7", "1020", "", "", "", "", "", "ratelimit", "\"default\";r=4;t=12"], "", "")
        );
        let watch = crate::gateway::Watch {
            ticket: 8,
            until_end: true,
            headers: vec!["x-usage".into(), "x-cost".into()],
            strip: vec!["x-usage".into()],
            sse_keys: vec!["total_tokens".into()],
        };
        let f = Step::Forward { url: None, headers: vec![], note: None, report: None, wake: None, watch: Some(watch) };
        assert_eq!(
            decode_step(&encode_step(&f)).unwrap().0,
            ["F", "", "", "", "", "", "", "8", "e", "x-usage,x-cost", "x-usage", "total_tokens"]
        );
        assert_eq!(reply(-8, "1\n30"), Reply::Delivered("1\n30"));

        let q =
            Step::Fetch(Fetch { ticket: 3, pipeline: false, body: "[\"EVALSHA\"]".into(), timeout_ms: 499, shard: 0 });
        assert_eq!(decode_step(&encode_step(&q)).unwrap(), (vec!["Q", "3", "", "499"], "", "[\"EVALSHA\"]"));

        let check = SignatureCheck {
            alg: "ES256",
            kid: "ec-1".into(),
            jwk: "{\"kty\":\"EC\"}".into(),
            data: "h.p".into(),
            signature: vec![251, 255],
        };
        let v = encode_step(&Step::Verify { ticket: 4, check });
        assert_eq!(decode_step(&v).unwrap(), (vec!["V", "4", "ES256", "ec-1", "-_8"], "{\"kty\":\"EC\"}", "h.p"));
        assert_eq!(decode_step(&encode_step(&Step::Wait { ticket: 5, ms: 2 })).unwrap().0, ["W", "5", "2"]);
        assert_eq!(
            decode_step(&encode_step(&Step::ReadBody { ticket: 6, max: 16384 })).unwrap().0,
            ["B", "6", "16384"]
        );
        assert_eq!(decode_step(&encode_step(&Step::Done)).unwrap().0, ["D"]);

        let report = Fetch { ticket: 11, pipeline: true, body: "[[\"HINCRBY\"]]".into(), timeout_ms: 400, shard: 0 };
        let j = Step::Return {
            value: "{\"success\":true}".into(),
            note: Some("{\"event\":\"x\"}".into()),
            report: Some(report),
            wake: None,
        };
        assert_eq!(
            decode_step(&encode_step(&j)).unwrap(),
            (vec!["J", "{\"event\":\"x\"}", "11", "400", "", ""], "[[\"HINCRBY\"]]", "{\"success\":true}")
        );
        let error = crate::gateway::rpc::CallError {
            kind: crate::gateway::rpc::ErrorKind::Range,
            message: "options.cost\nmust".into(),
        };
        let t = Step::Throw { error, note: None };
        assert_eq!(decode_step(&encode_step(&t)).unwrap(), (vec!["T", "RangeError", ""], "", "options.cost\nmust"));
    }

    #[test]
    fn variables_decode_in_pairs() {
        assert_eq!(decode_vars("A\0x\0B\0{\"x\":1}"), [("A", "x"), ("B", "{\"x\":1}")]);
        assert_eq!(decode_vars(""), Vec::<(&str, &str)>::new());
    }

    #[test]
    fn reply_codes() {
        assert_eq!(reply(200, "x"), Reply::Http { status: 200, body: "x" });
        assert_eq!(reply(307, ""), Reply::Http { status: 307, body: "" });
        assert_eq!(reply(0, ""), Reply::Timeout);
        assert_eq!(reply(-1, ""), Reply::Unreachable);
        assert_eq!(reply(600, ""), Reply::Unreachable);
        assert_eq!(reply(-2, ""), Reply::Woke);
        assert_eq!(
            (reply(-3, ""), reply(-4, ""), reply(-5, "")),
            (Reply::Signature(Some(false)), Reply::Signature(Some(true)), Reply::Signature(None))
        );
        assert_eq!((reply(-6, "{}"), reply(-7, "")), (Reply::Body(Some("{}")), Reply::Body(None)));
    }
}
