//! What applies to a request: the configuration (read once per isolate), the policy document (rules,
//! tiers, lists), its limits, rates and settle sources, live overrides, and the plan — the limits one
//! request is checked against ([`check::Check`]).

pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod document;
pub(crate) mod limit;
pub(crate) mod overrides;
pub(crate) mod plan;
pub(crate) mod rate;
pub(crate) mod settle;
