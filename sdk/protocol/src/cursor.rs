//! Cursors: what a subscriber has seen, as per-topic version vectors.
//!
//! A cursor maps each topic to the highest contiguous sequence number seen per
//! origin `(node, epoch)`. Because every origin's records of a topic are
//! delivered in sequence order, one number per (topic, origin) is exact: resuming
//! from a cursor delivers every record with a higher sequence, and topics the
//! cursor does not name from their earliest retained record.
//!
//! On the wire a cursor is opaque to applications: base64url (no padding) of a
//! version byte `1` followed by a MessagePack array
//! `[[topic, [[node, epoch, seq], ...]], ...]`. Client libraries update it from
//! the `topic`/`origin`/`epoch`/`seq` of each message they receive.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Where records come from: a gateway node and the epoch of its log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub node: String,
    pub epoch: u64,
}

impl Origin {
    pub fn new(node: impl Into<String>, epoch: u64) -> Self {
        Origin {
            node: node.into(),
            epoch,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.epoch)
    }
}

/// A cursor that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is not base64url: {0}")]
    Base64(String),
    #[error("cursor version {0} is not supported")]
    Version(u8),
    #[error("cursor body is malformed: {0}")]
    Body(String),
    #[error("cursor is {len} bytes, limit is {max}")]
    TooLarge { len: usize, max: usize },
}

const VERSION: u8 = 1;

type Entry = (String, Vec<(String, u64, u64)>);

/// Per-topic version vectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    topics: BTreeMap<String, BTreeMap<Origin, u64>>,
}

impl Cursor {
    pub fn new() -> Self {
        Cursor::default()
    }

    /// Record that `seq` of (`topic`, `origin`) was seen (keeps the maximum).
    pub fn observe(&mut self, topic: &str, origin: &Origin, seq: u64) {
        let vv = match self.topics.get_mut(topic) {
            Some(vv) => vv,
            None => self.topics.entry(topic.to_string()).or_default(),
        };
        match vv.get_mut(origin) {
            Some(s) => *s = (*s).max(seq),
            None => {
                vv.insert(origin.clone(), seq);
            }
        }
    }

    /// Highest sequence seen for (`topic`, `origin`); 0 when none.
    pub fn position(&self, topic: &str, origin: &Origin) -> u64 {
        self.topics
            .get(topic)
            .and_then(|vv| vv.get(origin))
            .copied()
            .unwrap_or(0)
    }

    /// The version vector of one topic, if the cursor names it.
    pub fn topic(&self, topic: &str) -> Option<&BTreeMap<Origin, u64>> {
        self.topics.get(topic)
    }

    /// Replace the version vector of one topic.
    pub fn set_topic(&mut self, topic: &str, vv: BTreeMap<Origin, u64>) {
        self.topics.insert(topic.to_string(), vv);
    }

    /// Topics named by the cursor.
    pub fn topics(&self) -> impl Iterator<Item = (&String, &BTreeMap<Origin, u64>)> {
        self.topics.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &Cursor) {
        for (topic, vv) in &other.topics {
            for (origin, seq) in vv {
                self.observe(topic, origin, *seq);
            }
        }
    }

    /// Keep only the topics for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.topics.retain(|t, _| keep(t));
    }

    /// The opaque wire form.
    pub fn encode(&self) -> String {
        let body: Vec<Entry> = self
            .topics
            .iter()
            .map(|(t, vv)| {
                (
                    t.clone(),
                    vv.iter()
                        .map(|(o, s)| (o.node.clone(), o.epoch, *s))
                        .collect(),
                )
            })
            .collect();
        let mut bytes = vec![VERSION];
        // Encoding plain tuples and strings into a Vec cannot fail.
        let _ = rmp_serde::encode::write(&mut bytes, &body);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parse the wire form; `max_bytes` bounds the encoded length.
    ///
    /// # Errors
    /// [`CursorError`] when the text is not a cursor this version understands.
    pub fn decode(text: &str, max_bytes: usize) -> Result<Cursor, CursorError> {
        if text.len() > max_bytes {
            return Err(CursorError::TooLarge {
                len: text.len(),
                max: max_bytes,
            });
        }
        if text.is_empty() {
            // Every cursor the gateway hands out has at least the version byte: an empty
            // string is a client bug (an unset variable), not "from earliest".
            return Err(CursorError::Body("empty cursor string".into()));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('=').as_bytes())
            .map_err(|e| CursorError::Base64(e.to_string()))?;
        let (&version, body) = bytes
            .split_first()
            .ok_or(CursorError::Body("empty".into()))?;
        if version != VERSION {
            return Err(CursorError::Version(version));
        }
        crate::codec::check_msgpack_lengths(body).map_err(CursorError::Body)?;
        let entries: Vec<Entry> =
            rmp_serde::from_slice(body).map_err(|e| CursorError::Body(e.to_string()))?;
        let mut c = Cursor::default();
        for (topic, origins) in entries {
            for (node, epoch, seq) in origins {
                c.observe(&topic, &Origin { node, epoch }, seq);
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_cursor() -> impl Strategy<Value = Cursor> {
        prop::collection::vec(("[a-c]{1,2}", "[xy]", 0u64..3, 0u64..1000), 0..10).prop_map(|obs| {
            let mut c = Cursor::new();
            for (t, n, e, s) in obs {
                c.observe(&t, &Origin::new(n, e), s);
            }
            c
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(c in any_cursor()) {
            let text = c.encode();
            prop_assert!(!text.contains('+') && !text.contains('/') && !text.contains('='));
            prop_assert_eq!(Cursor::decode(&text, 1 << 20).expect("decode"), c);
        }

        #[test]
        fn merge_is_pointwise_max(a in any_cursor(), b in any_cursor()) {
            let mut m = a.clone();
            m.merge(&b);
            let mut m2 = b.clone();
            m2.merge(&a);
            prop_assert_eq!(&m, &m2);
            for (t, vv) in a.topics().chain(b.topics()) {
                for (o, s) in vv {
                    prop_assert!(m.position(t, o) >= *s);
                }
            }
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(s in "[ -~]{0,64}") {
            let _ = Cursor::decode(&s, 1024);
        }
    }

    #[test]
    fn documented_example() {
        // PROTOCOL.md §5 shows these bytes.
        let mut c = Cursor::new();
        c.observe("a", &Origin::new("n1", 1), 3);
        assert_eq!(c.encode(), "AZGSoWGRk6JuMQED");
    }

    #[test]
    fn observe_keeps_maximum() {
        let mut c = Cursor::new();
        let o = Origin::new("n", 1);
        c.observe("t", &o, 5);
        c.observe("t", &o, 3);
        assert_eq!(c.position("t", &o), 5);
        assert_eq!(c.position("t", &Origin::new("n", 2)), 0);
        assert!(matches!(
            Cursor::decode("AAAA", 2),
            Err(CursorError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_empty_string_is_not_a_cursor() {
        assert!(matches!(
            Cursor::decode("", 1024),
            Err(CursorError::Body(_))
        ));
        // The empty cursor has a wire form of its own.
        let empty = Cursor::new().encode();
        assert!(!empty.is_empty());
        assert_eq!(Cursor::decode(&empty, 1024).expect("decode"), Cursor::new());
    }
}
