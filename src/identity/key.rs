//! Redis keys: `rate:{<caller>}:<path>`.
//!
//! Only what could collide or mislead is escaped, so ordinary keys stay
//! readable (`rate:{alice}:/api/orders`): in a user id, `:` (the separator),
//! `%` (the escape), glob characters `*?[]\` (so an operator's
//! `SCAN MATCH rate:{<id>}:*` matches only that id), braces `{}` (the subject is
//! the key's Redis Cluster hash tag: no caller picks its slot), spaces, control and
//! non-ASCII bytes become `%XX`, and a leading `@` too, because `@…` names
//! identities the gateway derives itself (`@ip/…`, `@sha256/…`). Ids longer
//! than [`MAX_ID_BYTES`] and paths longer than [`MAX_PATH_BYTES`] are
//! replaced by their SHA-256, so no caller can make keys huge.

use std::fmt::Write;

use sha2::{Digest, Sha256};

use crate::identity::caller::Caller;
use crate::identity::path::push_percent;

pub(crate) const MAX_ID_BYTES: usize = 256;
pub(crate) const MAX_PATH_BYTES: usize = 1024;

/// The bucket key for `caller` on the canonical `path` (see [`crate::identity::path::normalize`]).
pub fn bucket_key(caller: &Caller, path: &str) -> String {
    bucket_key_of(&subject_key(caller), path)
}

/// [`bucket_key`] from the caller's [`subject_key`].
pub(crate) fn bucket_key_of(subject: &str, path: &str) -> String {
    let mut key = String::with_capacity(6 + subject.len() + path.len().min(MAX_PATH_BYTES + 72));
    key.push_str("rate:{");
    key.push_str(subject);
    key.push_str("}:");
    if path.len() > MAX_PATH_BYTES {
        push_digest(&mut key, path.as_bytes());
    } else {
        key.push_str(path);
    }
    key
}

/// The caller part of a key (`alice`, `@ip/203.0.113.7`, `@sha256/…`).
pub(crate) fn subject_key(caller: &Caller) -> String {
    let mut s = String::new();
    push_caller(&mut s, caller);
    s
}

fn push_caller(key: &mut String, caller: &Caller) {
    match caller {
        Caller::User(id) if id.len() > MAX_ID_BYTES => push_digest(key, id.as_bytes()),
        // (never reached: every entry refuses an empty id; an empty hash tag would not be one)
        Caller::User(id) if id.is_empty() => key.push_str("@empty"),
        Caller::User(id) => push_escaped(key, id),
        Caller::Ip { addr, prefix } => {
            key.push_str("@ip/");
            let text = if addr.is_ipv6() { format!("{addr}/{prefix}") } else { addr.to_string() };
            push_escaped(key, &text);
        }
    }
}

pub(crate) fn push_escaped(key: &mut String, id: &str) {
    for (i, &b) in id.as_bytes().iter().enumerate() {
        let unsafe_byte = b <= b' ' || b >= 0x7f || b":%*?[]\\{}".contains(&b) || (i == 0 && b == b'@');
        if unsafe_byte {
            push_percent(key, b);
        } else {
            key.push(b as char);
        }
    }
}

fn push_digest(key: &mut String, bytes: &[u8]) {
    key.push_str("@sha256/");
    for b in Sha256::digest(bytes) {
        let _ = write!(key, "{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::caller::identify;

    fn user(id: &str) -> Caller {
        Caller::User(id.into())
    }

    #[test]
    fn plain_ids_and_paths_stay_readable() {
        assert_eq!(bucket_key(&user("alice"), "/api/orders"), "rate:{alice}:/api/orders");
        assert_eq!(bucket_key(&user("user-42_x.y~z@corp"), "/"), "rate:{user-42_x.y~z@corp}:/");
    }

    #[test]
    fn separator_and_glob_characters_cannot_collide() {
        // "a:/x" as a user on "/y" must not become the user "a" on path "/x:/y".
        assert_eq!(bucket_key(&user("a:/x"), "/y"), "rate:{a%3A/x}:/y");
        assert_ne!(bucket_key(&user("a:/x"), "/y"), bucket_key(&user("a"), "/x:/y"));
        assert_eq!(bucket_key(&user("*"), "/"), "rate:{%2A}:/");
        assert_eq!(bucket_key(&user("a?b[c]\\"), "/"), "rate:{a%3Fb%5Bc%5D%5C}:/");
        assert_eq!(bucket_key(&user("100%"), "/"), "rate:{100%25}:/");
        assert_ne!(bucket_key(&user("%3A"), "/"), bucket_key(&user(":"), "/"));
    }

    #[test]
    fn the_subject_is_the_hash_tag_and_no_caller_can_pick_another() {
        // A Redis Cluster hashes the text between the first `{` and the next `}`: a caller's braces are
        // escaped, so its keys' tag is its whole id and no id can choose the slot of another.
        for id in ["alice", "a}b", "{bob}", "x{y}z", "}", "{", "@ip/1"] {
            let key = bucket_key(&user(id), "/p/{q}");
            assert_eq!(crate::store::place::tag_of(&key), Some(subject_key(&user(id)).as_str()), "{key}");
        }
        assert_eq!(bucket_key(&user("{bob}"), "/"), "rate:{%7Bbob%7D}:/");
        assert_eq!(crate::store::place::tag_of(&bucket_key(&user(""), "/")), Some("@empty"));
        assert_ne!(crate::store::place::tag_of(&bucket_key(&user("x{bob}"), "/")), Some("bob"));
    }

    #[test]
    fn control_space_and_non_ascii_bytes_are_escaped() {
        assert_eq!(bucket_key(&user("a b\u{0}\n\u{7f}é"), "/"), "rate:{a%20b%00%0A%7F%C3%A9}:/");
    }

    #[test]
    fn users_cannot_pose_as_derived_identities() {
        let ip = identify(None, Some("203.0.113.7"), 64).unwrap();
        assert_eq!(bucket_key(&ip, "/"), "rate:{@ip/203.0.113.7}:/");
        assert_eq!(bucket_key(&user("@ip/203.0.113.7"), "/"), "rate:{%40ip/203.0.113.7}:/");
        assert_eq!(bucket_key(&user("a@b"), "/"), "rate:{a@b}:/");
    }

    #[test]
    fn ipv6_keys_name_the_prefix() {
        let ip = identify(None, Some("2001:db8:1:2::99"), 64).unwrap();
        assert_eq!(bucket_key(&ip, "/"), "rate:{@ip/2001%3Adb8%3A1%3A2%3A%3A/64}:/");
    }

    #[test]
    fn a_key_from_the_subject_is_the_same_key() {
        for (caller, path) in [(user("a:b"), "/x"), (user(&"z".repeat(300)), "/y"), (user("c"), &*"/p".repeat(600))] {
            assert_eq!(bucket_key_of(&subject_key(&caller), path), bucket_key(&caller, path));
        }
    }

    #[test]
    fn long_ids_and_paths_are_hashed() {
        let long = "x".repeat(64 * 1024);
        let key = bucket_key(&user(&long), "/p");
        assert!(key.starts_with("rate:{@sha256/"), "{key}");
        assert_eq!(key.len(), "rate:{@sha256/".len() + 64 + "}:/p".len());
        assert_ne!(key, bucket_key(&user(&format!("{long}y")), "/p"));
        let at_limit = "y".repeat(MAX_ID_BYTES);
        assert_eq!(bucket_key(&user(&at_limit), "/"), format!("rate:{{{at_limit}}}:/"));
        let path = format!("/{}", "p".repeat(MAX_PATH_BYTES));
        assert!(bucket_key(&user("a"), &path).starts_with("rate:{a}:@sha256/"));
    }
}
