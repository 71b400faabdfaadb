//! One limit that applies to a request, as the plan hands it to the limiter, and how it takes part.

use crate::policy::limit::Limit;

/// How a limit takes part in a call (the script's `ARGV[a+5]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// It denies when it cannot pay; debited when the call is allowed.
    Enforce,
    /// It never denies; debited only when the call is allowed and it can pay.
    Shadow,
    /// A limit of a candidate policy: it never denies, and the candidate limits of a call are debited
    /// all or nothing among themselves, whatever the enforcing limits say.
    Candidate,
    /// Reported, never denying, never debited.
    Report,
}

impl Mode {
    /// Its code in the script's arguments.
    pub fn code(self) -> &'static str {
        match self {
            Mode::Enforce => "0",
            Mode::Shadow => "1",
            Mode::Candidate => "2",
            Mode::Report => "3",
        }
    }
}

/// One limit that applies to a request.
#[derive(Clone, Debug)]
pub struct Check<'a> {
    pub key: String,
    /// The limit's name (as in `RateLimit-Policy`).
    pub name: &'a str,
    pub limit: &'a Limit,
    pub cost: u32,
    /// Enforcing, shadow (reported but never denying), a candidate policy's, or only reported.
    pub mode: Mode,
    /// The rule the limit belongs to (for metrics).
    pub rule: &'a str,
    /// Override keys that may replace the limit's capacity and refill, most specific first
    /// (see [`crate::policy::overrides`]); the script reads them in the same call.
    pub overrides: Vec<String>,
}

impl Check<'_> {
    /// Whether it never denies (shadow, a candidate's, or only reported).
    pub fn shadow(&self) -> bool {
        self.mode != Mode::Enforce
    }
}
