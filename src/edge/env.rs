//! Environment variables as text, whatever type wrangler gave them.

use worker::wasm_bindgen::JsValue;
use worker::Env;

/// `name` from the environment: strings as they are, numbers and booleans as
/// written in wrangler.toml, objects as JSON; `None` when unset.
pub fn var(env: &Env, name: &str) -> Option<String> {
    let value = js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name)).ok()?;
    if value.is_undefined() || value.is_null() {
        None
    } else if let Some(s) = value.as_string() {
        Some(s)
    } else if let Some(n) = value.as_f64() {
        Some(format_number(n))
    } else if let Some(b) = value.as_bool() {
        Some(b.to_string())
    } else {
        js_sys::JSON::stringify(&value).ok().and_then(|s| s.as_string())
    }
}

/// A JS number as wrangler.toml wrote it: `5` not `5.0`, so whole-number checks see it.
fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}
