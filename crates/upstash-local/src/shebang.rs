//! Upstash's script flag `allow-key-locking`, which vanilla Redis rejects.

const FLAG: &str = "allow-key-locking";

/// The script with `allow-key-locking` removed from its `#!lua flags=…` line,
/// or `None` when the script does not carry the flag. The first line keeps its
/// place so line numbers in Redis errors stay the same.
pub fn strip_upstash_flags(script: &str) -> Option<String> {
    let (first, rest) = match script.find('\n') {
        Some(i) => script.split_at(i),
        None => (script, ""),
    };
    let mut words = first.strip_prefix("#!")?.split_whitespace();
    let engine = words.next()?;
    let mut flags_seen = false;
    let mut kept_words = vec![format!("#!{engine}")];
    for word in words {
        match word.strip_prefix("flags=") {
            Some(list) => {
                let flags: Vec<&str> = list.split(',').filter(|f| !f.is_empty()).collect();
                flags_seen |= flags.contains(&FLAG);
                let kept: Vec<&str> = flags.into_iter().filter(|f| *f != FLAG).collect();
                if !kept.is_empty() {
                    kept_words.push(format!("flags={}", kept.join(",")));
                }
            }
            None => kept_words.push(word.to_string()),
        }
    }
    flags_seen.then(|| format!("{}{rest}", kept_words.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_the_upstash_flag() {
        assert_eq!(strip_upstash_flags("#!lua flags=allow-key-locking\nreturn 1").as_deref(), Some("#!lua\nreturn 1"));
        assert_eq!(
            strip_upstash_flags("#!lua flags=no-writes,allow-key-locking\nreturn 1").as_deref(),
            Some("#!lua flags=no-writes\nreturn 1")
        );
        assert_eq!(strip_upstash_flags("#!lua flags=no-writes\nreturn 1"), None);
        assert_eq!(strip_upstash_flags("return 1"), None);
        assert_eq!(strip_upstash_flags("#!lua flags=allow-key-locking").as_deref(), Some("#!lua"));
    }
}
