//! Topic pattern matching, the same rules as the gateway: topics are
//! dot-separated, `*` matches exactly one segment, `>` (last) matches one or
//! more trailing segments.

/// Whether `topic` matches `pattern`.
///
/// ```
/// use edgesync_plugin::topic_matches;
/// assert!(topic_matches("chat.*", "chat.room1"));
/// assert!(!topic_matches("chat.*", "chat.room1.typing"));
/// assert!(topic_matches("chat.>", "chat.room1.typing"));
/// assert!(!topic_matches("chat.>", "chat"));
/// ```
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut top = topic.split('.');
    loop {
        match (pat.next(), top.next()) {
            (Some(">"), Some(_)) => return pat.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(p), Some(t)) if p == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `pattern` is well formed: non-empty segments, `>` only last.
pub fn pattern_is_valid(pattern: &str) -> bool {
    let segments: Vec<&str> = pattern.split('.').collect();
    segments
        .iter()
        .enumerate()
        .all(|(i, s)| !s.is_empty() && (*s != ">" || i + 1 == segments.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(topic_matches("a.b.c", "a.b.c"));
        assert!(!topic_matches("a.b", "a.b.c"));
        assert!(!topic_matches("a.b.c", "a.b"));
        assert!(topic_matches("*.b.*", "a.b.c"));
        assert!(topic_matches(">", "a"));
        assert!(topic_matches("a.>", "a.b.c"));
        assert!(!topic_matches("a.>", "a"));
        assert!(pattern_is_valid("a.*.>"));
        assert!(!pattern_is_valid("a.>.b"));
        assert!(!pattern_is_valid("a..b"));
    }
}
