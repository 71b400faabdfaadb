//! Who is calling, on which canonical path, in which bucket: the caller (a verified token's subject, a
//! trusted header or the client IP), verified JWTs, the canonical path, and the bucket keys made of them.

pub(crate) mod caller;
pub(crate) mod jwt;
pub(crate) mod key;
pub(crate) mod path;
