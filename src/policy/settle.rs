//! Costs known only after the response: a limit with `"cost": { "reserve": 500, "settle": … }` admits
//! a request by reserving `reserve` tokens, and once the origin's response has been delivered the
//! actual cost — read from a response header, or from the last `data:` event of a server-sent event
//! stream that carries a JSON path — is charged or refunded, exactly once per request, in one script
//! call after the response (see `lua/ratelimit.lua`, ops "3" and "4"). Pure: the executor hands over
//! what it saw ([`Delivered`]), this module reads the numbers.

use crate::json::Q;
use crate::policy::rate::MAX_CAPACITY;

/// Where a request's actual cost is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A response header (lower-case name) holding a whole number.
    Header(String),
    /// In a `text/event-stream` response, the last `data:` event whose JSON has this path (object
    /// members, outermost first) holding a whole number.
    Sse(Vec<String>),
}

/// How a limit settles its cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    pub usage: Usage,
    /// Remove the usage header from the client's response.
    pub strip: bool,
}

/// The most segments an SSE path may have.
const MAX_PATH_SEGMENTS: usize = 8;

impl Settle {
    /// `"header:<name>"` or `"sse:<a.b.c>"`; `strip` only for a header.
    pub fn parse(text: &str, strip: bool) -> Result<Settle, String> {
        let token = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        if let Some(name) = text.strip_prefix("header:") {
            if !token(name) {
                return Err(format!("`settle` header name {} must be 1 to 64 of A-Z a-z 0-9 - _", Q(&name)));
            }
            return Ok(Settle { usage: Usage::Header(name.to_ascii_lowercase()), strip });
        }
        if let Some(path) = text.strip_prefix("sse:") {
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            if segments.len() > MAX_PATH_SEGMENTS || !segments.iter().all(|s| token(s)) {
                return Err(format!(
                    "`settle` path {} must be 1 to {MAX_PATH_SEGMENTS} dot-separated names of A-Z a-z 0-9 - _ \
                     (such as \"sse:usage.total_tokens\")",
                    Q(&path)
                ));
            }
            if strip {
                return Err("`strip` applies to a usage header; a stream's events pass through unchanged".into());
            }
            return Ok(Settle { usage: Usage::Sse(segments), strip });
        }
        Err(format!("`settle` must be \"header:<name>\" or \"sse:<json.path>\", got {}", Q(&text)))
    }

    /// As written in a policy.
    pub fn source(&self) -> String {
        match &self.usage {
            Usage::Header(h) => format!("header:{h}"),
            Usage::Sse(path) => format!("sse:{}", path.join(".")),
        }
    }

    /// The response header to read, if any.
    pub fn header(&self) -> Option<&str> {
        match &self.usage {
            Usage::Header(h) => Some(h),
            Usage::Sse(_) => None,
        }
    }

    /// The JSON member name an SSE event must mention to be a candidate (the path's last segment).
    pub fn sse_key(&self) -> Option<&str> {
        match &self.usage {
            Usage::Sse(path) => path.last().map(String::as_str),
            Usage::Header(_) => None,
        }
    }

    /// The actual cost in what was delivered; `None` when it is missing or malformed.
    pub fn actual(&self, delivered: &Delivered<'_>) -> Option<u32> {
        match &self.usage {
            Usage::Header(h) => delivered.header(h).and_then(usage_number),
            Usage::Sse(path) => {
                // Only a server-sent event stream's events count (a JSON body with `data:` lines does not).
                let stream = delivered
                    .header("content-type")
                    .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("text/event-stream"));
                if !stream {
                    return None;
                }
                // The last event that has the path decides: a bad value there settles at the
                // reservation, never at an earlier event's usage.
                delivered.events.iter().rev().find_map(|e| sse_field(e, path)).flatten()
            }
        }
    }
}

/// A whole number of tokens from a header value (`30`, ` 30 `), at most [`MAX_CAPACITY`].
pub(crate) fn usage_number(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<u64>().ok().filter(|n| *n <= u64::from(MAX_CAPACITY)).map(|n| n as u32)
}

/// What one event's data holds at `path`: `None` when it has no such path (or is no JSON), `Some(None)`
/// when the value there is not a whole number from 0 to [`MAX_CAPACITY`].
fn sse_field(data: &str, path: &[String]) -> Option<Option<u32>> {
    let value: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    let mut at = &value;
    for segment in path {
        at = at.as_object()?.get(segment)?;
    }
    Some(match at.as_u64() {
        Some(n) if n <= u64::from(MAX_CAPACITY) => Some(n as u32),
        Some(_) => None,
        None => {
            at.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(MAX_CAPACITY)).map(|f| f as u32)
        }
    })
}

/// What the executor saw of a response once it was delivered (or abandoned).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered<'a> {
    /// The body was streamed to its end (`false`: the client went away, or the origin failed).
    pub complete: bool,
    /// The response headers asked for, in order, as (name, value).
    pub headers: Vec<(&'a str, Option<&'a str>)>,
    /// The data of the SSE events that mention the usage key, oldest first (the executor keeps the
    /// last few).
    pub events: Vec<&'a str>,
}

impl<'a> Delivered<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v)
    }

    /// The executor's text for `names` (see `crate::edge::wire`): `complete \n value … \0 event \0 event …`,
    /// one value line per name (`\u{1}` for an absent header).
    pub fn decode(text: &'a str, names: &'a [String]) -> Delivered<'a> {
        let (head, events) = text.split_once('\0').unwrap_or((text, ""));
        let mut lines = head.split('\n');
        let complete = lines.next() == Some("1");
        let headers = names.iter().map(|n| (n.as_str(), lines.next().filter(|v| *v != "\u{1}"))).collect();
        let events = events.split('\0').filter(|e| !e.is_empty()).collect();
        Delivered { complete, headers, events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_strictly() {
        let h = Settle::parse("header:X-Usage-Tokens", true).unwrap();
        assert_eq!((h.header(), h.strip, h.source()), (Some("x-usage-tokens"), true, "header:x-usage-tokens".into()));
        let s = Settle::parse("sse:usage.total_tokens", false).unwrap();
        assert_eq!((s.sse_key(), s.source()), (Some("total_tokens"), "sse:usage.total_tokens".into()));
        for bad in ["", "header:", "header:a b", "sse:", "sse:a..b", "sse:a.b.c.d.e.f.g.h.i", "body:x", "x-usage"] {
            assert!(Settle::parse(bad, false).is_err(), "{bad:?}");
        }
        assert!(Settle::parse("sse:usage.total_tokens", true).is_err(), "strip is for headers");
    }

    /// The number at `path` in one event's data, if it is a whole number from 0 to [`MAX_CAPACITY`].
    fn sse_usage(data: &str, path: &[String]) -> Option<u32> {
        sse_field(data, path).flatten()
    }

    #[test]
    fn usage_values_are_whole_numbers_in_range() {
        assert_eq!(usage_number(" 30 "), Some(30));
        assert_eq!(usage_number("0"), Some(0));
        for bad in ["", "-3", "3.5", "1e3", "30 tokens", "99999999999", "1000000001", "０"] {
            assert_eq!(usage_number(bad), None, "{bad:?}");
        }
        let path = ["usage".to_string(), "total_tokens".to_string()];
        assert_eq!(sse_usage(r#"{"usage":{"total_tokens":30}}"#, &path), Some(30));
        assert_eq!(sse_usage(r#"{"usage":{"total_tokens":30.0}}"#, &path), Some(30));
        for bad in [
            r#"{"usage":{"total_tokens":-1}}"#,
            r#"{"usage":{"total_tokens":"30"}}"#,
            r#"{"usage":null}"#,
            "[DONE]",
            r#"{"total_tokens":30}"#,
            r#"{"usage":{"total_tokens":2.5}}"#,
        ] {
            assert_eq!(sse_usage(bad, &path), None, "{bad}");
        }
    }

    #[test]
    fn the_last_event_that_carries_the_path_counts() {
        let s = Settle::parse("sse:usage.total_tokens", false).unwrap();
        let names = vec!["content-type".to_string()];
        let events = "{\"usage\":{\"total_tokens\":7}}\0{\"usage\":{\"total_tokens\":30}}\0{\"total_tokens\":99}";
        let text = format!("1\ntext/event-stream; charset=utf-8\0{events}");
        let d = Delivered::decode(&text, &names);
        assert!(d.complete);
        assert_eq!(s.actual(&d), Some(30), "the last event whose JSON has the path, not merely the word");
        // Found by a helper's review (issue 23, item 7): a bad value in the last event that has the path
        // settles at the reservation (as docs/in-flight-and-costs.md says), never at an earlier event's usage.
        for last in [r#"{"usage":{"total_tokens":1000000001}}"#, r#"{"usage":{"total_tokens":"x"}}"#] {
            let text = format!("1\ntext/event-stream\0{{\"usage\":{{\"total_tokens\":5}}}}\0{last}");
            assert_eq!(s.actual(&Delivered::decode(&text, &["content-type".to_string()])), None, "{last}");
        }
        let json = format!("1\napplication/json\0{events}");
        assert_eq!(s.actual(&Delivered::decode(&json, &names)), None, "not an event stream: no events count");
        let h = Settle::parse("header:x-usage", false).unwrap();
        let names = vec!["x-usage".to_string(), "x-other".to_string()];
        let d = Delivered::decode("0\n12\n\u{1}", &names);
        assert_eq!((d.complete, h.actual(&d)), (false, Some(12)));
        let d = Delivered::decode("1\n\u{1}\n5", &names);
        assert_eq!(h.actual(&d), None, "absent");
    }
}
