//! A small JSON writer: objects and arrays written straight into a string, with no intermediate
//! tree. Every JSON document the gateway sends (problem bodies, the admin API, Upstash command
//! lists) is written with it; `serde_json::Value` and `json!` cost the Worker kilobytes of wasm.

use std::fmt::Write;

/// Appends `s` as a JSON string literal. Runs of plain bytes are copied at once (this is on the
/// path of every decision: keys and arguments of the script call).
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Appends `n` in decimal (without the formatting machinery: this is on every request's path).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// `s` as a JSON string literal.
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_str(&mut out, s);
    out
}

/// A string shown quoted in a message, as a JSON string literal (`"a\"b"`): the one quoting every
/// error message uses (it costs the wasm far less than `{:?}`, which brings Unicode tables along).
pub(crate) struct Q<'a, T: ?Sized>(pub &'a T);

impl<T: AsRef<str> + ?Sized> std::fmt::Display for Q<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::with_capacity(self.0.as_ref().len() + 2);
        push_str(&mut out, self.0.as_ref());
        f.write_str(&out)
    }
}

/// A JSON array of already-written values.
pub(crate) fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

/// A JSON array of strings.
pub(crate) fn strings<S: AsRef<str>>(items: &[S]) -> String {
    array(items.iter().map(|s| string(s.as_ref())))
}

/// A finite number (`null` otherwise, which JSON has no other way to say).
pub(crate) fn number(n: f64) -> String {
    if n.is_finite() {
        format!("{n}")
    } else {
        "null".into()
    }
}

/// A JSON object under construction: `Obj::new().str("a", "x").int("n", 3).finish()`.
pub(crate) struct Obj(String);

impl Default for Obj {
    fn default() -> Self {
        Obj::new()
    }
}

impl Obj {
    pub(crate) fn new() -> Obj {
        Obj(String::from("{"))
    }

    /// A member whose value is already JSON.
    pub(crate) fn raw(mut self, key: &str, value: &str) -> Obj {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_str(&mut self.0, key);
        self.0.push(':');
        self.0.push_str(value);
        self
    }

    pub(crate) fn str(self, key: &str, value: &str) -> Obj {
        let v = string(value);
        self.raw(key, &v)
    }

    pub(crate) fn opt_str(self, key: &str, value: Option<&str>) -> Obj {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub(crate) fn int(self, key: &str, value: impl Into<i128>) -> Obj {
        let v = value.into().to_string();
        self.raw(key, &v)
    }

    pub(crate) fn opt_int(self, key: &str, value: Option<u64>) -> Obj {
        match value {
            Some(v) => self.int(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub(crate) fn num(self, key: &str, value: f64) -> Obj {
        let v = number(value);
        self.raw(key, &v)
    }

    pub(crate) fn opt_num(self, key: &str, value: Option<f64>) -> Obj {
        match value {
            Some(v) => self.num(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub(crate) fn bool(self, key: &str, value: bool) -> Obj {
        self.raw(key, if value { "true" } else { "false" })
    }

    pub(crate) fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_serde_json_reads_back() {
        let doc = Obj::new()
            .str("s", "a \"q\" \\ \n\t\u{1} é")
            .int("i", -3i64)
            .num("f", 0.25)
            .num("inf", f64::INFINITY)
            .opt_str("none", None)
            .opt_int("n", Some(7))
            .bool("b", true)
            .raw("a", &strings(&["x", "y"]))
            .raw("o", &Obj::new().finish())
            .finish();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["s"], "a \"q\" \\ \n\t\u{1} é");
        assert_eq!((v["i"].as_i64(), v["f"].as_f64(), v["n"].as_u64()), (Some(-3), Some(0.25), Some(7)));
        assert!(v["inf"].is_null() && v["none"].is_null());
        assert_eq!(v["a"], serde_json::json!(["x", "y"]));
        assert_eq!(v["o"], serde_json::json!({}));
        assert_eq!(array(Vec::new()), "[]");
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
