//! The executor protocol: a request's facts in, the next step out, the reply back (see
//! `src/edge/wire.rs` for their text).

use super::*;

/// A request as the executor read it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The absolute URL (`https://host/path?query`).
    pub url: &'a str,
    /// The values of [`Gateway::header_names`], in that order (`None`: absent).
    pub headers: &'a [Option<&'a str>],
}

/// What the executor does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Answer with this response; then send `report`, if any, without holding the response, and carry
    /// out `wake` (slots a failed decision may have taken, released).
    Respond { response: Response, note: Option<String>, report: Option<Fetch>, wake: Option<Wake> },
    /// Send the request on to `url` (`None`: its own URL), adding `headers` to the origin's response;
    /// if the origin cannot be reached, answer [`http::origin_unreachable`] with the same headers.
    /// `wake`, if any, is resumed after its wait off the response path (leases given back).
    Forward {
        url: Option<String>,
        headers: Vec<Header>,
        note: Option<String>,
        report: Option<Fetch>,
        wake: Option<Wake>,
        watch: Option<Watch>,
    },
    /// POST to the REST endpoint, then resume with the reply.
    Fetch(Fetch),
    /// POST each of these at once (a script call spread over several shards or slots), resuming each
    /// ticket with its reply and carrying out what follows each; exactly one of them ends with the
    /// answer (the others with [`Step::Done`]).
    Fetches(Vec<Fetch>),
    /// Wait `ms`, then resume with [`Reply::Woke`].
    Wait { ticket: u32, ms: u32 },
    /// Check this signature with WebCrypto, then resume with [`Reply::Signature`].
    Verify { ticket: u32, check: SignatureCheck },
    /// Read the request's body, at most `max` + 1 bytes, then resume with [`Reply::Body`].
    ReadBody { ticket: u32, max: usize },
    /// Return this JSON value to an RPC caller; then send `report`, if any, and carry out `wake`.
    Return { value: String, note: Option<String>, report: Option<Fetch>, wake: Option<Wake> },
    /// Throw this error to an RPC caller.
    Throw { error: CallError, note: Option<String> },
    /// Nothing more (after a report).
    Done,
}

/// Off the response path: wait `ms`, then resume `ticket` with [`Reply::Woke`] and carry out the steps
/// that follow (a REST call, another wait) until [`Step::Done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    pub ticket: u32,
    pub ms: u32,
}

/// A response to watch: once it has been delivered — its body streamed to the end, the client gone, or
/// the origin failed; or, unless `until_end`, as soon as its headers have arrived (a cost settled from a
/// header needs nothing more, and the body then streams as it came) — resume `ticket` with
/// [`Reply::Delivered`] (off the response path), carrying the
/// values of `headers` in the origin's response and the data of the last server-sent events whose data
/// mention one of `sse_keys`; then carry out what follows (`Q`, `W`) until [`Step::Done`]. `strip`:
/// origin headers the client does not see. The body streams through unbuffered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// 0: nothing to report (only headers to strip: the request holds nothing, say a shadow limit that
    /// could not pay, or Redis failed and the fail mode forwarded it).
    pub ticket: u32,
    /// Wait for the body's end: a slot is held until then, or the usage is in the stream.
    pub until_end: bool,
    pub headers: Vec<String>,
    pub strip: Vec<String>,
    pub sse_keys: Vec<String>,
}

/// One POST to the REST endpoint of shard `shard` (`/pipeline` when `pipeline`), within `timeout_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub ticket: u32,
    pub pipeline: bool,
    pub body: String,
    pub timeout_ms: u32,
    /// Which database (an index into `UPSTASH_REDIS_REST_URL`'s list; 0 with one).
    pub shard: u16,
}

/// What the executor brings back to [`Gateway::resume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The REST endpoint answered (any status; redirects are not followed).
    Http { status: u16, body: &'a str },
    /// The fetch's deadline passed.
    Timeout,
    /// The endpoint could not be reached.
    Unreachable,
    /// The wait is over.
    Woke,
    /// WebCrypto's verdict: `Some(valid)`, or `None` when the key could not be imported.
    Signature(Option<bool>),
    /// The body (`None`: longer than the limit, or unreadable).
    Body(Option<&'a str>),
    /// A watched response was delivered (or abandoned): what the executor saw, as
    /// [`crate::policy::settle::Delivered::decode`] reads it.
    Delivered(&'a str),
}
