//! A gateway for an isolate's lifetime, or the configuration error every request answers with.

use super::*;

/// A gateway for an isolate's lifetime, built from its environment; a configuration error answers
/// every request with the same 500 (and a note for the log), never a panic.
pub enum Isolate {
    Ready(Box<Gateway<'static>>),
    Misconfigured(ConfigError),
}

impl Isolate {
    /// Reads the configuration once (`var` looks a variable up). The configuration lives as long as
    /// the isolate, so it is leaked on purpose: one per isolate, never freed.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Isolate {
        Isolate::from_env_as(var, "")
    }

    /// [`Isolate::from_env`] whose request ids start with `instance_id` (random, drawn by the executor:
    /// see [`Gateway::with_instance_id`]).
    pub fn from_env_as(var: impl Fn(&str) -> Option<String>, instance_id: &str) -> Isolate {
        match Config::from_env(var) {
            Ok(config) => {
                let gateway = Gateway::new(Box::leak(Box::new(config))).with_instance_id(instance_id);
                Isolate::Ready(Box::new(gateway))
            }
            Err(e) => Isolate::Misconfigured(e),
        }
    }

    pub fn header_names(&self) -> &[String] {
        match self {
            Isolate::Ready(g) => g.header_names(),
            Isolate::Misconfigured(_) => &[],
        }
    }

    pub fn begin(&mut self, req: &Request<'_>, now_ms: f64) -> Step {
        match self {
            Isolate::Ready(g) => g.begin(req, now_ms),
            Isolate::Misconfigured(e) => self::misconfigured(e),
        }
    }

    pub fn resume(&mut self, ticket: u32, reply: Reply<'_>, now_ms: f64) -> Step {
        match self {
            Isolate::Ready(g) => g.resume(ticket, reply, now_ms),
            Isolate::Misconfigured(e) => self::misconfigured(e),
        }
    }

    /// An RPC call ([`Gateway::call`]); a misconfigured isolate throws an `Error` naming the variable.
    pub fn call(&mut self, method: &str, args: &str, now_ms: f64) -> Step {
        match self {
            Isolate::Ready(g) => g.call(method, args, now_ms),
            Isolate::Misconfigured(e) => Step::Throw {
                error: CallError { kind: ErrorKind::Error, message: format!("edge-ratelimit is misconfigured: {e}") },
                note: Some(misconfigured_line(e)),
            },
        }
    }
}

pub(super) fn misconfigured_line(e: &ConfigError) -> String {
    Line::new("misconfigured", "error").str("variable", e.variable).str("reason", &e.message).finish()
}

fn misconfigured(e: &ConfigError) -> Step {
    Step::Respond { response: http::misconfigured(e), note: Some(misconfigured_line(e)), report: None, wake: None }
}
