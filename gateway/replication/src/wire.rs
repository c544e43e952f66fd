//! The peer protocol: messages between two gateways, their encoding and bounds.
//!
//! # Framing
//!
//! One message per frame; a frame is a 4-byte big-endian length and that many
//! bytes of MessagePack (the compact array form of serde: field order is the
//! format, so fields are only ever appended, with `#[serde(default)]`).
//! [`encode`] writes the prefix; the driver splits a stream with
//! [`edgesync_protocol::codec::LengthPrefixed`] (limit [`MAX_FRAME_BYTES`]) and
//! hands each body to [`decode`], which never panics and bounds nesting depth.
//!
//! # Streams
//!
//! [`StreamId::Control`] is the connection's first bidirectional stream (opened
//! by the dialer): hello, refusal, summary, acks with credit, digests, pulls and
//! the LWW channel. Records and truncations of one topic always travel on one
//! data lane ([`StreamId::Lane`]), a unidirectional stream opened by the sender,
//! so per-(topic, origin) order is the stream's order and one big topic does not
//! block the topics of the other lanes.
//!
//! # Messages (REPLICATION.md §2)
//!
//! | message | stream | from → to |
//! |---|---|---|
//! | [`Hello`] | control | both, first |
//! | `Refuse` | control | either, then close |
//! | `Summary` | control | record receiver → sender: its vectors of the carried topics |
//! | `Records` | lane | sender → receiver: a batch of one (topic, origin), ascending seqs |
//! | `Truncated` | lane | sender → receiver: seqs below the sender's retention floor |
//! | `Ack` | control | receiver → sender: durable set of one (topic, origin) + lane credit |
//! | `Credit` | control | receiver → sender: lane credit (cumulative) |
//! | `Digest` | control | sender → receiver: bucket digests of one (topic, origin) |
//! | `Pull` | control | receiver → sender: re-send a range (repair) |
//! | `LwwDigest` / `LwwEntries` | control | both ways |

use bytes::Bytes;
use edgesync_protocol::Origin;
use edgesync_protocol::topic::{validate_pattern, validate_topic};
use serde::{Deserialize, Serialize};

use crate::digest::BucketDigest;
use crate::lww::LwwEntry;
use crate::ranges::{Range, RangeSet};

/// The peer protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u32 = 1;
/// ALPN of the peer protocol on the gateway's QUIC endpoint.
pub const ALPN_PEER: &[u8] = b"edgesync-peer/1";
/// Largest frame body accepted (a full record batch plus headroom).
pub const MAX_FRAME_BYTES: usize = 8 << 20;
/// Most records (and gap ranges) in one `Records` message.
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Most topics in one `Summary`, buckets in one `Digest`, entries in one LWW message.
pub const MAX_ITEMS: usize = 8192;
/// Longest topic name or pattern accepted from a peer.
pub const MAX_TOPIC_LEN: usize = 1024;
/// Most data lanes a link may use.
pub const MAX_LANES: u16 = 64;
/// Longest node or cluster id.
pub const MAX_ID_LEN: usize = 255;
/// Most ranges in one set carried on the wire.
pub const MAX_RANGES: usize = 65_536;

/// Which stream a frame goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId {
    /// The control stream (bidirectional, opened by the dialer).
    Control,
    /// Data lane `n` (unidirectional, opened by the record sender on first use).
    Lane(u16),
}

/// Who sends records to whom on a link, from this node's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// This node sends records to the peer.
    Push,
    /// The peer sends records to this node.
    Pull,
    /// Both.
    Both,
}

impl Direction {
    /// This side offers to send.
    pub fn sends(self) -> bool {
        matches!(self, Direction::Push | Direction::Both)
    }

    /// This side accepts records.
    pub fn receives(self) -> bool {
        matches!(self, Direction::Pull | Direction::Both)
    }
}

/// The first message on a link, from each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub cluster_id: String,
    pub node_id: String,
    pub epoch: u64,
    pub direction: Direction,
    /// Topic patterns this side carries on this link.
    pub filters: Vec<String>,
    /// [`filter_hash`] of `filters`: equal hashes mean equal filters.
    pub filter_hash: u32,
    /// Data lanes this side will open when it sends.
    pub lanes: u16,
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The peers speak different protocol versions.
    ProtocolVersion,
    /// The peer belongs to another cluster.
    ClusterMismatch,
    /// The hello's node id is not the identity in the peer's certificate.
    IdentityMismatch,
    /// The peer is this node.
    SelfLink,
    /// Neither side would send records (e.g. push facing push).
    Direction,
    /// The hello is malformed (bad filter, hash, lane count, id).
    BadHello,
}

/// One record as carried between peers: identity and the store's bytes, opaque.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    pub seq: u64,
    /// The record's HLC (for metrics and the store's clock).
    pub hlc: u64,
    /// CRC32C of the record as the store computed it (the digest element).
    pub crc: u32,
    /// The record, byte for byte in the store's format; verified on apply.
    pub bytes: Bytes,
}

/// The vector of one topic in a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicVector {
    pub topic: String,
    pub vector: crate::vv::VersionVector,
}

/// A peer protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Refuse {
        reason: RefuseReason,
        detail: String,
    },
    /// The receiver's durable vectors of the carried topics it holds, in chunks;
    /// `last` marks the final chunk (a topic absent from every chunk is empty).
    Summary {
        topics: Vec<TopicVector>,
        last: bool,
    },
    Records {
        lane: u16,
        topic: String,
        origin: Origin,
        /// Sent to repair a range the receiver already covers (digest mismatch,
        /// corrupt record): the store fills what it lacks, holds corrupt, or
        /// holds as a gap marker, and never overwrites a valid record.
        repair: bool,
        records: Vec<RecordBody>,
    },
    Truncated {
        lane: u16,
        topic: String,
        origin: Origin,
        from: u64,
        to: u64,
        /// Answers a repair: the receiver also turns a record it holds as
        /// corrupt in this range into a gap marker (the sender cannot serve it
        /// either; a later repair from another peer may still fill it).
        repair: bool,
    },
    Ack {
        topic: String,
        origin: Origin,
        /// The receiver's durable set of this (topic, origin) after the apply.
        durable: RangeSet,
        /// The lane's new cumulative credit.
        lane: u16,
        credit_records: u64,
        credit_bytes: u64,
    },
    Credit {
        lane: u16,
        credit_records: u64,
        credit_bytes: u64,
    },
    Digest {
        topic: String,
        origin: Origin,
        /// The sender's retention floor of this (topic, origin).
        floor: u64,
        /// The sender's vector of this (topic, origin).
        vector: RangeSet,
        /// The buckets `first..=last` this message describes; a bucket in the
        /// span but not listed is empty.
        first: u64,
        last: u64,
        buckets: Vec<(u64, BucketDigest)>,
    },
    Pull {
        topic: String,
        origin: Origin,
        from: u64,
        to: u64,
    },
    LwwDigest {
        /// (namespace, key bucket, digest); `last` marks the final chunk.
        buckets: Vec<(String, u32, BucketDigest)>,
        last: bool,
    },
    LwwEntries {
        entries: Vec<LwwEntry>,
    },
}

/// A frame that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid MessagePack: {0}")]
    Decode(String),
    #[error("{len} trailing bytes after the message")]
    Trailing { len: usize },
    #[error("{what} has {len} items, limit {max}")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid topic or pattern {0:?}")]
    Topic(String),
    #[error("invalid field {0}")]
    Field(&'static str),
}

/// Append the length-prefixed frame of `msg` to `out`.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // Serializing our own types into a Vec cannot fail: no Serialize impl here
    // returns an error and a Vec grows as needed.
    if let Err(e) = rmp_serde::encode::write(out, msg) {
        debug_assert!(false, "peer message encode failed: {e}");
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// The length-prefixed frame of `msg`.
pub fn encode(msg: &Message) -> Bytes {
    let mut out = Vec::with_capacity(64);
    encode_into(msg, &mut out);
    Bytes::from(out)
}

/// Decode and validate one frame body (without its length prefix).
///
/// # Errors
/// [`WireError`] naming what is wrong; the link is closed with it.
pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let mut rd = body;
    let mut de = rmp_serde::Deserializer::new(&mut rd);
    de.set_max_depth(16);
    let msg = Message::deserialize(&mut de).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rd.is_empty() {
        return Err(WireError::Trailing { len: rd.len() });
    }
    validate(&msg)?;
    Ok(msg)
}

/// CRC32C of the sorted filter patterns joined by `\n`.
pub fn filter_hash(filters: &[String]) -> u32 {
    let mut sorted: Vec<&str> = filters.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    crc32c::crc32c(sorted.join("\n").as_bytes())
}

fn count(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooMany { what, len, max });
    }
    Ok(())
}

fn topic(t: &str) -> Result<(), WireError> {
    validate_topic(t, MAX_TOPIC_LEN).map_err(|_| WireError::Topic(t.to_owned()))
}

fn origin(o: &Origin) -> Result<(), WireError> {
    if o.node.is_empty() || o.node.len() > MAX_ID_LEN {
        return Err(WireError::Field("origin.node"));
    }
    Ok(())
}

fn range(from: u64, to: u64) -> Result<(), WireError> {
    if from == 0 || from > to {
        return Err(WireError::Field("range"));
    }
    Ok(())
}

fn set(s: &RangeSet) -> Result<(), WireError> {
    count("range set", s.ranges().len(), MAX_RANGES)?;
    if s.first() == Some(0) {
        return Err(WireError::Field("seq 0"));
    }
    Ok(())
}

/// Check the bounds serde cannot express.
fn validate(msg: &Message) -> Result<(), WireError> {
    match msg {
        Message::Hello(h) => {
            if h.node_id.is_empty() || h.node_id.len() > MAX_ID_LEN {
                return Err(WireError::Field("node_id"));
            }
            if h.cluster_id.len() > MAX_ID_LEN {
                return Err(WireError::Field("cluster_id"));
            }
            if h.lanes == 0 || h.lanes > MAX_LANES {
                return Err(WireError::Field("lanes"));
            }
            count("filters", h.filters.len(), 256)?;
            for f in &h.filters {
                validate_pattern(f, MAX_TOPIC_LEN).map_err(|_| WireError::Topic(f.clone()))?;
            }
            Ok(())
        }
        Message::Refuse { detail, .. } => count("refusal detail", detail.len(), 1024),
        Message::Summary { topics, .. } => {
            count("summary topics", topics.len(), MAX_ITEMS)?;
            for t in topics {
                topic(&t.topic)?;
                count("summary origins", t.vector.len(), MAX_ITEMS)?;
                for (o, s) in t.vector.iter() {
                    origin(o)?;
                    set(s)?;
                }
            }
            Ok(())
        }
        Message::Records {
            lane,
            topic: t,
            origin: o,
            records,
            ..
        } => {
            topic(t)?;
            origin(o)?;
            lane_ok(*lane)?;
            count("records", records.len(), MAX_BATCH_RECORDS)?;
            if records.is_empty() {
                return Err(WireError::Field("records (empty)"));
            }
            let ascending = records.windows(2).all(|w| w[0].seq < w[1].seq);
            if !ascending || records[0].seq == 0 {
                return Err(WireError::Field("records (seqs not ascending from 1)"));
            }
            Ok(())
        }
        Message::Truncated {
            lane,
            topic: t,
            origin: o,
            from,
            to,
            ..
        } => {
            lane_ok(*lane)?;
            topic(t)?;
            origin(o)?;
            range(*from, *to)
        }
        Message::Ack {
            topic: t,
            origin: o,
            durable,
            lane,
            ..
        } => {
            lane_ok(*lane)?;
            topic(t)?;
            origin(o)?;
            set(durable)
        }
        Message::Credit { lane, .. } => lane_ok(*lane),
        Message::Digest {
            topic: t,
            origin: o,
            vector,
            buckets,
            first,
            last,
            ..
        } => {
            topic(t)?;
            origin(o)?;
            set(vector)?;
            count("digest buckets", buckets.len(), MAX_ITEMS)?;
            if first > last || buckets.iter().any(|(b, _)| b < first || b > last) {
                return Err(WireError::Field("digest span"));
            }
            Ok(())
        }
        Message::Pull {
            topic: t,
            origin: o,
            from,
            to,
        } => {
            topic(t)?;
            origin(o)?;
            range(*from, *to)
        }
        Message::LwwDigest { buckets, .. } => count("lww buckets", buckets.len(), MAX_ITEMS),
        Message::LwwEntries { entries } => count("lww entries", entries.len(), MAX_ITEMS),
    }
}

fn lane_ok(lane: u16) -> Result<(), WireError> {
    if lane >= MAX_LANES {
        return Err(WireError::Field("lane"));
    }
    Ok(())
}

/// The seq ranges a `Records` batch covers, for logs and assertions.
pub fn batch_span(records: &[RecordBody]) -> Option<Range> {
    Some((records.first()?.seq, records.last()?.seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Message> {
        let o = Origin::new("edge-1", 2);
        vec![
            Message::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                cluster_id: "plant-7".into(),
                node_id: "edge-1".into(),
                epoch: 2,
                direction: Direction::Both,
                filters: vec!["sensors.>".into()],
                filter_hash: filter_hash(&["sensors.>".into()]),
                lanes: 4,
            }),
            Message::Records {
                lane: 1,
                topic: "sensors.a".into(),
                origin: o.clone(),
                repair: false,
                records: vec![
                    RecordBody {
                        seq: 1,
                        hlc: 7 << 16,
                        crc: 9,
                        bytes: Bytes::from_static(b"abc"),
                    },
                    RecordBody {
                        seq: 2,
                        hlc: 8 << 16,
                        crc: 10,
                        bytes: Bytes::new(),
                    },
                ],
            },
            Message::Ack {
                topic: "sensors.a".into(),
                origin: o.clone(),
                durable: RangeSet::from_range(1, 2),
                lane: 1,
                credit_records: 10,
                credit_bytes: 100,
            },
            Message::Digest {
                topic: "sensors.a".into(),
                origin: o,
                floor: 1,
                vector: RangeSet::from_range(1, 2),
                first: 0,
                last: 0,
                buckets: vec![(0, BucketDigest { count: 2, sum: 5 })],
            },
        ]
    }

    #[test]
    fn messages_round_trip() {
        for m in sample() {
            let frame = encode(&m);
            let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(decode(&frame[4..]), Ok(m));
        }
    }

    #[test]
    fn invalid_fields_are_refused_precisely() {
        let bad = Message::Records {
            lane: 0,
            topic: "a".into(),
            origin: Origin::new("n", 1),
            repair: false,
            records: vec![],
        };
        let frame = encode(&bad);
        assert_eq!(
            decode(&frame[4..]),
            Err(WireError::Field("records (empty)"))
        );
        let bad = Message::Pull {
            topic: "a..b".into(),
            origin: Origin::new("n", 1),
            from: 1,
            to: 2,
        };
        let frame = encode(&bad);
        assert!(matches!(decode(&frame[4..]), Err(WireError::Topic(_))));
        let mut frame = encode(&sample()[0]).to_vec();
        frame.push(0xc0);
        assert_eq!(decode(&frame[4..]), Err(WireError::Trailing { len: 1 }));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(i in 0usize..4, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&sample()[i]);
            let mut body = frame[4..].to_vec();
            let p = pos.index(body.len());
            body[p] = byte;
            let _ = decode(&body);
            let c = cut.index(body.len());
            let _ = decode(&body[..c]);
        }
    }
}
