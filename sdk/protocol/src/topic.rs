//! Topic names and subscription patterns.
//!
//! A topic is a dot-separated name (`sensors.eu.t1`). A pattern may use `*` for
//! exactly one segment and `>` (last segment only) for one or more remaining
//! segments. Topics whose first segment starts with `$` are system topics
//! (e.g. `$dlq.<plugin>`): clients cannot publish to them, and a wildcard in the
//! first position never matches them — they must be named explicitly.

use crate::error::ErrorCode;

/// Why a topic or pattern was refused. The gateway maps this to an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes, limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("topic has an empty segment")]
    EmptySegment,
    #[error("topic segment contains a forbidden character {0:?}")]
    BadChar(char),
    #[error("wildcards are not allowed here")]
    Wildcard,
    #[error("'>' must be the last segment")]
    GreaterNotLast,
    #[error("'*' and '>' must be a whole segment")]
    PartialWildcard,
    #[error("too many segments ({0})")]
    TooManySegments(usize),
}

impl TopicError {
    /// The stable error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            TopicError::TooLong { .. } => ErrorCode::TopicTooLong,
            _ => ErrorCode::TopicInvalid,
        }
    }
}

/// Maximum number of segments in a topic or pattern (bounds matching work).
pub const MAX_SEGMENTS: usize = 32;

/// Validate a concrete topic name (no wildcards).
///
/// # Errors
/// [`TopicError`] naming the first rule broken.
pub fn validate_topic(topic: &str, max_len: usize) -> Result<(), TopicError> {
    validate(topic, max_len, false)
}

/// Validate a subscription pattern (wildcards allowed).
///
/// # Errors
/// [`TopicError`] naming the first rule broken.
pub fn validate_pattern(pattern: &str, max_len: usize) -> Result<(), TopicError> {
    validate(pattern, max_len, true)
}

fn validate(s: &str, max_len: usize, wildcards: bool) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max_len {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: max_len,
        });
    }
    let mut count = 0;
    let mut segments = s.split('.').peekable();
    while let Some(seg) = segments.next() {
        count += 1;
        if count > MAX_SEGMENTS {
            return Err(TopicError::TooManySegments(s.split('.').count()));
        }
        if seg.is_empty() {
            return Err(TopicError::EmptySegment);
        }
        match seg {
            "*" | ">" if !wildcards => return Err(TopicError::Wildcard),
            "*" => continue,
            ">" if segments.peek().is_some() => return Err(TopicError::GreaterNotLast),
            ">" => continue,
            _ => {}
        }
        for c in seg.chars() {
            if c == '*' || c == '>' {
                return Err(if wildcards {
                    TopicError::PartialWildcard
                } else {
                    TopicError::Wildcard
                });
            }
            if c.is_whitespace() || c.is_control() || is_invisible(c) || is_dollar_lookalike(c) {
                return Err(TopicError::BadChar(c));
            }
        }
    }
    Ok(())
}

/// Unicode format characters (general category Cf) and other invisible characters: they
/// render as nothing or reorder text, so `chat\u{200B}.x` or a right-to-left override
/// would make a topic look like another one (security finding 21). Refused everywhere.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Characters that look like `$` (fullwidth, small form): a topic such as `＄dlq.x` would
/// pass for a system topic in a listing without being one. Refused everywhere; `$`
/// itself is the only dollar a topic may hold.
fn is_dollar_lookalike(c: char) -> bool {
    matches!(c, '\u{FF04}' | '\u{FE69}' | '\u{1F4B2}')
}

/// True when `pattern` contains a wildcard segment.
pub fn is_pattern(pattern: &str) -> bool {
    pattern.split('.').any(|s| s == "*" || s == ">")
}

/// True when the topic is a system topic (`$...`).
pub fn is_system(topic: &str) -> bool {
    topic.starts_with('$')
}

/// Does `pattern` match the concrete `topic`? Both are assumed valid.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    let mut first = true;
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(">"), Some(seg)) => return !(first && seg.starts_with('$')),
            (Some("*"), Some(seg)) => {
                if first && seg.starts_with('$') {
                    return false;
                }
            }
            (Some(ps), Some(ts)) => {
                if ps != ts {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// Does permission pattern `grant` cover subscription pattern `wanted`, i.e. does every
/// topic matching `wanted` also match `grant`? Both are assumed valid patterns.
pub fn covers(grant: &str, wanted: &str) -> bool {
    let g: Vec<&str> = grant.split('.').collect();
    let w: Vec<&str> = wanted.split('.').collect();
    for (i, gs) in g.iter().enumerate() {
        let Some(ws) = w.get(i) else { return false };
        match (*gs, *ws) {
            (">", _) => return !(i == 0 && ws.starts_with('$')),
            (_, ">") => return false,
            ("*", "*") => {}
            // A leading wildcard never matches system topics.
            ("*", lit) if i == 0 && lit.starts_with('$') => return false,
            ("*", _) => {}
            (_, "*") => return false,
            (a, b) if a != b => return false,
            _ => {}
        }
    }
    g.len() == w.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matching_rules() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(matches("a.*.c", "a.x.c"));
        assert!(!matches("a.*", "a.x.c"));
        assert!(matches("a.>", "a.x.c"));
        assert!(matches("a.>", "a.x"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(!matches(">", "$dlq.x"));
        assert!(!matches("*.x", "$dlq.x"));
        assert!(matches("$dlq.>", "$dlq.x"));
    }

    #[test]
    fn covering_rules() {
        assert!(covers(">", "a.b"));
        assert!(covers("a.>", "a.*.c"));
        assert!(covers("a.>", "a.>"));
        assert!(!covers("a.>", "a"));
        assert!(covers("a.*", "a.b"));
        assert!(covers("a.*", "a.*"));
        assert!(!covers("a.*", "a.>"));
        assert!(!covers("a.b", "a.*"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.b.c"));
        assert!(!covers(">", "$dlq.x"));
        assert!(covers("$dlq.>", "$dlq.x"));
    }

    #[test]
    fn validation_rules() {
        assert_eq!(validate_topic("", 10), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic("a.b.c.d", 3),
            Err(TopicError::TooLong { .. })
        ));
        assert_eq!(validate_topic("a..b", 10), Err(TopicError::EmptySegment));
        assert_eq!(validate_topic("a.*", 10), Err(TopicError::Wildcard));
        assert_eq!(
            validate_pattern("a.>.b", 10),
            Err(TopicError::GreaterNotLast)
        );
        assert_eq!(
            validate_pattern("a.b*", 10),
            Err(TopicError::PartialWildcard)
        );
        assert_eq!(validate_topic("a b", 10), Err(TopicError::BadChar(' ')));
        // Look-alikes of `$` and invisible characters (finding 21).
        for (topic, c) in [
            ("\u{FF04}dlq.x", '\u{FF04}'),
            ("\u{FE69}sys", '\u{FE69}'),
            ("\u{200B}$dlq.x", '\u{200B}'),
            ("chat.\u{202E}x", '\u{202E}'),
            ("a\u{FEFF}", '\u{FEFF}'),
            ("a\u{2060}b", '\u{2060}'),
        ] {
            assert_eq!(
                validate_topic(topic, 64),
                Err(TopicError::BadChar(c)),
                "{topic:?}"
            );
            assert_eq!(validate_pattern(topic, 64), Err(TopicError::BadChar(c)));
        }
        // Other non-ASCII text stays allowed.
        assert_eq!(validate_topic("café.日本.ü", 64), Ok(()));
        assert!(validate_pattern("a.*.>", 10).is_ok());
        let deep = vec!["x"; MAX_SEGMENTS + 1].join(".");
        assert!(matches!(
            validate_topic(&deep, 1000),
            Err(TopicError::TooManySegments(_))
        ));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string()),
            "[a-z]{1,3}"
        ]
    }

    fn topic() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(segment(), 1..6)
    }

    /// Reference matcher over segment vectors, written independently of `matches`.
    fn model(p: &[String], t: &[String]) -> bool {
        match (p.first().map(String::as_str), t.first()) {
            (None, None) => true,
            (Some(">"), Some(_)) => true,
            (Some("*"), Some(_)) => model(&p[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && model(&p[1..], &t[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_model(t in topic(), mask in prop::collection::vec(0u8..4, 1..6), tail in any::<bool>()) {
            // Build a pattern from the topic by replacing some segments with '*' and optionally
            // ending in '>'; also try unrelated patterns through the mask.
            let mut p: Vec<String> = t.iter().zip(mask.iter().cycle()).map(|(s, m)| match m {
                0 => "*".to_string(),
                1 => "z".to_string(),
                _ => s.clone(),
            }).collect();
            if tail && p.len() > 1 { let n = p.len() - 1; p.truncate(n); p.push(">".into()); }
            let ps = p.join(".");
            let ts = t.join(".");
            prop_assert!(validate_pattern(&ps, 1000).is_ok());
            prop_assert!(validate_topic(&ts, 1000).is_ok());
            prop_assert_eq!(matches(&ps, &ts), model(&p, &t));
        }

        #[test]
        fn covering_implies_matching(t in topic(), g in topic(), w in topic(), gm in 0u8..3, wm in 0u8..3) {
            // Random grant and wanted patterns; whenever `covers` says yes, every topic the
            // wanted pattern matches must match the grant.
            let pat = |v: &Vec<String>, m: u8| -> String {
                let mut v = v.clone();
                match m { 0 => { v[0] = "*".into(); } 1 => { let n = v.len() - 1; v[n] = ">".into(); } _ => {} }
                v.join(".")
            };
            let (gp, wp) = (pat(&g, gm), pat(&w, wm));
            let ts = t.join(".");
            if covers(&gp, &wp) && matches(&wp, &ts) {
                prop_assert!(matches(&gp, &ts), "{} covers {} but not {}", gp, wp, ts);
            }
        }

        #[test]
        fn a_topic_matches_itself(t in topic()) {
            let ts = t.join(".");
            prop_assert!(matches(&ts, &ts));
            prop_assert!(matches(">", &ts));
        }
    }
}
