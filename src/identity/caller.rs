//! Who is calling: a trusted user-id header, else the client IP from
//! `CF-Connecting-IP` (set by Cloudflare's edge, not by the client).
//! `X-Forwarded-For`, `X-Real-IP`, `True-Client-IP` and `Forwarded` are
//! client-controlled and never read.

use std::net::{IpAddr, Ipv6Addr};

/// Default IPv6 grouping: one /64 is one caller, as an end site usually gets at least a /64
/// and could otherwise mint a bucket per address.
pub(crate) const DEFAULT_IPV6_PREFIX: u8 = 64;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// An id from the trusted user-id header (trimmed, never blank).
    User(String),
    /// A client address; IPv6 addresses are masked to their prefix.
    Ip { addr: IpAddr, prefix: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityError {
    /// Neither a user id nor `CF-Connecting-IP`.
    Anonymous,
    /// `CF-Connecting-IP` is not an IP address.
    BadClientIp,
    /// The user id holds U+FFFD: the runtime puts it where a header value had bytes that are not
    /// UTF-8, so distinct ids would share one bucket.
    UserIdNotUtf8,
}

/// Identifies the caller from the user-id header's value (if that header is configured) and
/// `CF-Connecting-IP`.
pub fn identify(user_id: Option<&str>, connecting_ip: Option<&str>, ipv6_prefix: u8) -> Result<Caller, IdentityError> {
    if let Some(id) = user_id.map(str::trim).filter(|id| !id.is_empty()) {
        if id.contains(char::REPLACEMENT_CHARACTER) {
            return Err(IdentityError::UserIdNotUtf8);
        }
        return Ok(Caller::User(id.to_string()));
    }
    let raw = connecting_ip.map(str::trim).filter(|ip| !ip.is_empty()).ok_or(IdentityError::Anonymous)?;
    match raw.parse::<IpAddr>().map_err(|_| IdentityError::BadClientIp)? {
        IpAddr::V4(v4) => Ok(Caller::Ip { addr: IpAddr::V4(v4), prefix: 32 }),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Ok(Caller::Ip { addr: IpAddr::V4(v4), prefix: 32 }),
            None => {
                let prefix = ipv6_prefix.min(128);
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
                let masked = Ipv6Addr::from(u128::from(v6) & mask);
                Ok(Caller::Ip { addr: IpAddr::V6(masked), prefix })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_header_wins_and_is_trimmed() {
        assert_eq!(identify(Some("  alice "), Some("203.0.113.7"), 64), Ok(Caller::User("alice".into())));
    }

    #[test]
    fn blank_user_header_falls_back_to_ip() {
        let ip = Caller::Ip { addr: "203.0.113.7".parse().unwrap(), prefix: 32 };
        assert_eq!(identify(Some("   "), Some("203.0.113.7"), 64), Ok(ip.clone()));
        assert_eq!(identify(None, Some(" 203.0.113.7 "), 64), Ok(ip));
    }

    #[test]
    fn no_identity_is_an_error() {
        assert_eq!(identify(None, None, 64), Err(IdentityError::Anonymous));
        assert_eq!(identify(Some(""), Some(""), 64), Err(IdentityError::Anonymous));
        assert_eq!(identify(None, Some("not-an-ip"), 64), Err(IdentityError::BadClientIp));
        assert_eq!(identify(None, Some("1.2.3.4, 5.6.7.8"), 64), Err(IdentityError::BadClientIp));
    }

    /// Issue 10, item 5: `alice\xff` and `alice\xfe` both reach the Worker as `alice\u{FFFD}`.
    #[test]
    fn an_id_the_runtime_could_not_decode_is_refused() {
        for id in ["alice\u{FFFD}", "\u{FFFD}", "a\u{FFFD}b"] {
            assert_eq!(identify(Some(id), Some("203.0.113.7"), 64), Err(IdentityError::UserIdNotUtf8), "{id:?}");
        }
        assert!(identify(Some("café"), None, 64).is_ok(), "UTF-8 ids are fine");
    }

    #[test]
    fn ipv6_hosts_in_one_prefix_are_one_caller() {
        let a = identify(None, Some("2001:db8:1:2:aaaa::1"), 64).unwrap();
        let b = identify(None, Some("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64).unwrap();
        let other = identify(None, Some("2001:db8:1:3::1"), 64).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, Caller::Ip { addr: "2001:db8:1:2::".parse().unwrap(), prefix: 64 });
        let full = identify(None, Some("2001:db8::1"), 128).unwrap();
        assert_eq!(full, Caller::Ip { addr: "2001:db8::1".parse().unwrap(), prefix: 128 });
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_ipv4_caller() {
        assert_eq!(identify(None, Some("::ffff:203.0.113.7"), 64), identify(None, Some("203.0.113.7"), 64));
    }
}
