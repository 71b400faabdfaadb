//! Operating the gateway: the admin API (peek, reset, overrides, status), metrics, the caller quota
//! endpoint and the JSON log lines.

pub(crate) mod admin;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod quota;
