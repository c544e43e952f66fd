//! Encodings and framing.
//!
//! One transport frame (a WebSocket message, or one length-prefixed QUIC frame)
//! carries one or more protocol messages:
//!
//! - **JSON** (`edgesync.json.v1`, WebSocket text frames): JSON objects separated
//!   by whitespace; the gateway writes one object per line (`\n`).
//! - **MessagePack** (`edgesync.msgpack.v1`, WebSocket binary frames and QUIC):
//!   MessagePack maps written back to back.
//!
//! QUIC frames are prefixed with their length as a 4-byte big-endian unsigned
//! integer (see [`LengthPrefixed`]).

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ErrorCode;

/// The encoding negotiated for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    MsgPack,
}

/// Maximum nesting depth accepted when decoding (bounds recursion on hostile input).
pub const MAX_DEPTH: u16 = 32;

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid MessagePack: {0}")]
    MsgPack(String),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::BadFrame,
        }
    }
}

impl Encoding {
    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => crate::SUBPROTOCOL_JSON,
            Encoding::MsgPack => crate::SUBPROTOCOL_MSGPACK,
        }
    }

    /// The encoding for a subprotocol name, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            crate::SUBPROTOCOL_JSON => Some(Encoding::Json),
            crate::SUBPROTOCOL_MSGPACK => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// True for encodings sent as WebSocket text frames.
    pub fn is_text(self) -> bool {
        matches!(self, Encoding::Json)
    }

    /// Bytes placed between two messages batched into one frame.
    pub fn separator(self) -> &'static [u8] {
        match self {
            Encoding::Json => b"\n",
            Encoding::MsgPack => b"",
        }
    }

    /// Encode one message, appending to `out`.
    pub fn encode_into<T: Serialize>(self, value: &T, out: &mut Vec<u8>) {
        match self {
            // Serializing our own types into a Vec cannot fail: every map key is a string
            // and no Serialize impl here returns an error.
            Encoding::Json => {
                if let Err(e) = serde_json::to_writer(&mut *out, value) {
                    debug_assert!(false, "json encode failed: {e}");
                }
            }
            Encoding::MsgPack => {
                let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
                if let Err(e) = value.serialize(&mut ser) {
                    debug_assert!(false, "msgpack encode failed: {e}");
                }
            }
        }
    }

    /// Encode one message into a new buffer.
    pub fn encode<T: Serialize>(self, value: &T) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(value, &mut out);
        out
    }

    /// Decode every message in one transport frame.
    ///
    /// # Errors
    /// [`DecodeError`] at the first message that fails; messages before it are lost
    /// with the frame (a frame is all-or-nothing).
    pub fn decode_all<T: DeserializeOwned>(self, frame: &[u8]) -> Result<Vec<T>, DecodeError> {
        let mut out = Vec::new();
        match self {
            Encoding::Json => {
                for v in serde_json::Deserializer::from_slice(frame).into_iter::<T>() {
                    out.push(v.map_err(|e| DecodeError::Json(e.to_string()))?);
                }
            }
            Encoding::MsgPack => {
                check_msgpack_lengths(frame).map_err(DecodeError::MsgPack)?;
                let mut rd: &[u8] = frame;
                while !rd.is_empty() {
                    let mut de = rmp_serde::Deserializer::new(&mut rd);
                    de.set_max_depth(MAX_DEPTH as usize);
                    let v =
                        T::deserialize(&mut de).map_err(|e| DecodeError::MsgPack(e.to_string()))?;
                    out.push(v);
                }
            }
        }
        if out.is_empty() {
            return Err(DecodeError::Empty);
        }
        Ok(out)
    }
}

/// One message of a frame that is well-formed in its encoding but is not a valid
/// command: a missing or mistyped field, or an unknown `t`. Answered with `bad_request`
/// carrying the message's `id` when it has one, so the client knows which command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The message's `id` field, when present as an unsigned integer.
    pub id: Option<u64>,
    /// What is wrong, naming the field (the decoder's message).
    pub message: String,
}

impl Encoding {
    /// Decode every message in one transport frame, each on its own: a message that is
    /// well-formed but not a valid `T` becomes an [`Invalid`] (with its `id` when it
    /// has one) and the messages around it still decode.
    ///
    /// The well-formed path costs what [`Encoding::decode_all`] costs; only a message
    /// that fails is read a second time, loosely, for its `id` and its end.
    ///
    /// # Errors
    /// [`DecodeError`] when the frame itself is broken (not JSON / MessagePack, or a
    /// value that is not a map): nothing after the break can be located, so the whole
    /// frame is dropped.
    pub fn decode_each<T: DeserializeOwned>(
        self,
        frame: &[u8],
    ) -> Result<Vec<Result<T, Invalid>>, DecodeError> {
        let out = match self {
            Encoding::Json => decode_each_json(frame)?,
            Encoding::MsgPack => decode_each_msgpack(frame)?,
        };
        if out.is_empty() {
            return Err(DecodeError::Empty);
        }
        Ok(out)
    }
}

fn decode_each_json<T: DeserializeOwned>(
    frame: &[u8],
) -> Result<Vec<Result<T, Invalid>>, DecodeError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        while frame.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let rest = &frame[pos..];
        if rest.is_empty() {
            return Ok(out);
        }
        let mut typed = serde_json::Deserializer::from_slice(rest).into_iter::<T>();
        match typed.next() {
            None => return Ok(out),
            Some(Ok(v)) => {
                pos += typed.byte_offset();
                out.push(Ok(v));
            }
            Some(Err(e)) => {
                let mut loose = serde_json::Deserializer::from_slice(rest).into_iter::<Probe>();
                match loose.next() {
                    Some(Ok(p)) if p.is_map => {
                        pos += loose.byte_offset();
                        out.push(Err(p.invalid(e.to_string())));
                    }
                    Some(Ok(_)) => return Err(DecodeError::Json(NOT_A_MAP.into())),
                    _ => return Err(DecodeError::Json(e.to_string())),
                }
            }
        }
    }
}

fn decode_each_msgpack<T: DeserializeOwned>(
    frame: &[u8],
) -> Result<Vec<Result<T, Invalid>>, DecodeError> {
    check_msgpack_lengths(frame).map_err(DecodeError::MsgPack)?;
    let mut out = Vec::new();
    let mut rd: &[u8] = frame;
    while !rd.is_empty() {
        let start = rd;
        let typed = {
            let mut de = rmp_serde::Deserializer::new(&mut rd);
            de.set_max_depth(MAX_DEPTH as usize);
            T::deserialize(&mut de)
        };
        let e = match typed {
            Ok(v) => {
                out.push(Ok(v));
                continue;
            }
            Err(e) => e,
        };
        rd = start;
        let loose = {
            let mut de = rmp_serde::Deserializer::new(&mut rd);
            de.set_max_depth(MAX_DEPTH as usize);
            Probe::deserialize(&mut de)
        };
        match loose {
            Ok(p) if p.is_map => out.push(Err(p.invalid(e.to_string()))),
            Ok(_) => return Err(DecodeError::MsgPack(NOT_A_MAP.into())),
            Err(_) => return Err(DecodeError::MsgPack(e.to_string())),
        }
    }
    Ok(out)
}

const NOT_A_MAP: &str = "every message is a map with a `t` field";

/// Refuse MessagePack whose arrays and maps claim more elements than the bytes left can
/// hold (every element takes at least one byte), before any decoding.
///
/// The decoder trusts a claimed length up to 1 MiB of preallocation per container (serde's
/// cautious size hint), once per nesting level: a 96-byte frame of nested `array32` headers
/// made the gateway hold 12 MB (found by the `client_msgpack` fuzz target). After this
/// check, what a claim can preallocate is bounded by the frame's length. One pass, no
/// allocation; anything else wrong (a bad marker, a truncated string) is left for the
/// decoder to report.
///
/// # Errors
/// The offending container and its claim.
pub(crate) fn check_msgpack_lengths(frame: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    // Values still to read in the current top-level value; each takes ≥ 1 byte.
    let mut pending: u64 = 0;
    while at < frame.len() {
        pending = pending.max(1);
        let marker = frame[at];
        let be = |n: usize| -> Option<u64> {
            let b = frame.get(at + 1..at + 1 + n)?;
            Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        };
        // (bytes after the marker to skip, elements the value contains)
        let (skip, items): (u64, u64) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4..=0xd8 => (1 + (1 << (marker - 0xd4)), 0),
            0xc4 | 0xd9 => (1 + be(1).unwrap_or(0), 0),
            0xc5 | 0xda => (2 + be(2).unwrap_or(0), 0),
            0xc6 | 0xdb => (4 + be(4).unwrap_or(0), 0),
            0xc7 => (2 + be(1).unwrap_or(0), 0),
            0xc8 => (3 + be(2).unwrap_or(0), 0),
            0xc9 => (5 + be(4).unwrap_or(0), 0),
            0xdc => (2, be(2).unwrap_or(0)),
            0xdd => (4, be(4).unwrap_or(0)),
            0xde => (2, 2 * be(2).unwrap_or(0)),
            0xdf => (4, 2 * be(4).unwrap_or(0)),
            // 0xc1 (never used): the decoder names it.
            _ => return Ok(()),
        };
        pending = pending - 1 + items;
        at = at
            .saturating_add(1)
            .saturating_add(usize::try_from(skip).unwrap_or(usize::MAX));
        let left = frame.len().saturating_sub(at) as u64;
        if pending > left {
            return Err(format!(
                "a container at byte {} claims more elements than the {left} bytes left",
                at.min(frame.len())
            ));
        }
    }
    Ok(())
}

/// A loose reading of one message: is it a map, and its `id` and `t` if they have the
/// expected types. Everything else is skipped (bounded by the decoders' depth limits).
#[derive(Debug, Default)]
struct Probe {
    is_map: bool,
    id: Option<u64>,
    t: Option<String>,
}

impl Probe {
    fn invalid(self, why: String) -> Invalid {
        let message = match self.t {
            Some(t) => format!("{t}: {why}"),
            None => why,
        };
        Invalid {
            id: self.id,
            message,
        }
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl<'de> Visitor<'de> for ProbeVisitor {
    type Value = Probe;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Probe, A::Error> {
        let mut p = Probe {
            is_map: true,
            ..Probe::default()
        };
        while let Some(key) = a.next_key::<Scalar>()? {
            let value = a.next_value::<Scalar>()?;
            match (key, value) {
                (Scalar::Str(k), Scalar::U64(id)) if k == "id" => p.id = Some(id),
                (Scalar::Str(k), Scalar::Str(t)) if k == "t" => p.t = Some(t),
                _ => {}
            }
        }
        Ok(p)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Probe, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Probe::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Probe, E> {
        Ok(Probe::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<Probe, E> {
        Ok(Probe::default())
    }
}

/// A map key or value as the probe sees it: an unsigned integer, a string, or
/// anything else (skipped whole).
enum Scalar {
    U64(u64),
    Str(String),
    Other,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// Length-prefixed framing for byte streams (QUIC streams): `u32` big-endian
/// length, then that many bytes of MessagePack messages.
#[derive(Debug, Clone)]
pub struct LengthPrefixed {
    max_frame: usize,
}

impl LengthPrefixed {
    /// Frames longer than `max_frame` bytes are refused.
    pub fn new(max_frame: usize) -> Self {
        LengthPrefixed { max_frame }
    }

    /// Append the 4-byte prefix for a body of `len` bytes.
    pub fn put_prefix(out: &mut Vec<u8>, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
    }

    /// Split the next complete frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`] when the announced length exceeds the limit: the stream
    /// cannot be resynchronised and must be closed.
    pub fn next_frame(
        &self,
        buf: &mut bytes::BytesMut,
    ) -> Result<Option<bytes::Bytes>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_frame {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(4 + len);
        let _prefix = frame.split_to(4);
        Ok(Some(frame.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn any_payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            "[ -~]{0,40}".prop_map(|s| Payload::from(s.as_str())),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::from),
        ]
    }

    fn any_headers() -> impl Strategy<Value = Headers> {
        prop::collection::vec(("[a-z-]{1,8}", "[ -~]{0,16}"), 0..4).prop_map(Headers)
    }

    fn any_start() -> impl Strategy<Value = Option<Start>> {
        prop_oneof![
            Just(None),
            Just(Some(Start::Latest)),
            Just(Some(Start::Earliest)),
            "[A-Za-z0-9_-]{0,20}".prop_map(|c| Some(Start::Cursor(c))),
            any::<u64>().prop_map(|n| Some(Start::Last(n))),
        ]
    }

    fn any_client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (
                any::<u64>(),
                prop::option::of("[ -~]{0,20}"),
                prop::option::of("[a-z0-9]{1,10}")
            )
                .prop_map(|(id, token, client_id)| ClientFrame::Connect {
                    id,
                    token,
                    client_id,
                    cursor: None
                }),
            (any::<u64>(), "[a-z.*>]{1,20}", any_start())
                .prop_map(|(id, topic, start)| ClientFrame::sub(id, topic, start)),
            (
                any::<u64>(),
                "[a-z.*>]{1,20}",
                "[a-z0-9-]{1,12}",
                prop::option::of(any::<u32>()),
                prop::option::of(any::<u64>()),
                prop::option::of(any::<u32>()),
                prop::option::of(prop_oneof![
                    Just(Ordering::Parallel),
                    Just(Ordering::Strict)
                ]),
            )
                .prop_map(
                    |(id, topic, q, max_unacked, ack_wait_ms, max_deliveries, ordering)| {
                        ClientFrame::Sub {
                            id,
                            topic,
                            start: Some(Start::Earliest),
                            queue: Some(q),
                            max_unacked,
                            ack_wait_ms,
                            max_deliveries,
                            ordering,
                            presence: false,
                        }
                    }
                ),
            (any::<u64>(), "[a-z.]{1,20}").prop_map(|(id, topic)| ClientFrame::Sub {
                id,
                topic,
                start: None,
                queue: None,
                max_unacked: None,
                ack_wait_ms: None,
                max_deliveries: None,
                ordering: None,
                presence: true,
            }),
            (any::<u64>(), "[a-z.]{1,20}")
                .prop_map(|(id, topic)| ClientFrame::Presence { id, topic }),
            (
                any::<u64>(),
                "[a-z0-9@-]{1,12}",
                any::<bool>(),
                any_payload(),
                any_headers(),
                prop::option::of("[a-z0-9]{1,8}")
            )
                .prop_map(|(id, to, principal, data, headers, mid)| {
                    ClientFrame::Send {
                        id,
                        to_client: (!principal).then(|| to.clone()),
                        to_principal: principal.then_some(to),
                        data,
                        headers,
                        mid,
                    }
                }),
            (
                any::<u64>(),
                prop::collection::vec(
                    (
                        "[a-z.]{1,20}",
                        any_payload(),
                        any_headers(),
                        prop::option::of("[a-z0-9]{1,8}")
                    ),
                    0..4
                )
            )
                .prop_map(|(id, items)| ClientFrame::PubBatch {
                    id,
                    msgs: items
                        .into_iter()
                        .map(|(topic, data, headers, mid)| crate::frame::BatchMsg {
                            topic,
                            data,
                            headers,
                            mid
                        })
                        .collect()
                }),
            (
                any::<u64>(),
                "[a-z0-9-]{1,12}",
                "[a-z.]{1,20}",
                any::<u64>(),
                any::<u64>(),
                0u8..4,
                any::<u64>(),
                "[ -~]{0,20}"
            )
                .prop_map(|(id, queue, topic, epoch, seq, kind, n, why)| {
                    let verdict = match kind {
                        0 => Verdict::Ack,
                        1 => Verdict::Nak { delay_ms: n },
                        2 => Verdict::Progress,
                        _ => Verdict::Term { reason: why },
                    };
                    QueueAnswer {
                        id,
                        queue,
                        topic,
                        origin: "n1".into(),
                        epoch,
                        seq,
                        verdict,
                    }
                    .into_frame()
                }),
            (any::<u64>(), "[a-z.]{1,20}").prop_map(|(id, topic)| ClientFrame::Unsub { id, topic }),
            (
                any::<u64>(),
                "[a-z.]{1,20}",
                any_payload(),
                any_headers(),
                prop::option::of("[a-z0-9]{1,8}"),
                any::<bool>()
            )
                .prop_map(|(id, topic, data, headers, mid, ack)| ClientFrame::Pub {
                    id,
                    topic,
                    data,
                    headers,
                    mid,
                    ack
                }),
            (
                any::<u64>(),
                "[a-z.]{1,20}",
                any_start(),
                prop::option::of(any::<u32>())
            )
                .prop_map(|(id, topic, start, limit)| ClientFrame::History {
                    id,
                    topic,
                    start,
                    limit
                }),
            any::<u64>().prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    fn any_msg() -> impl Strategy<Value = Msg> {
        (
            "[a-z.]{1,20}",
            "[a-z0-9-]{1,8}",
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any_payload(),
            any_headers(),
            prop::option::of("[a-z]{1,4}"),
            prop::option::of(any::<u64>()),
            prop::option::of(("[a-z0-9-]{1,12}", any::<u32>())),
        )
            .prop_map(
                |(topic, origin, epoch, seq, hlc, data, headers, mid, sub, queued)| Msg {
                    topic,
                    origin,
                    epoch,
                    seq,
                    hlc,
                    client: "c".into(),
                    mid,
                    headers,
                    data,
                    sub,
                    queue: queued.as_ref().map(|(q, _)| q.clone()),
                    delivery: queued.map(|(_, d)| d),
                },
            )
    }

    fn any_server_frame() -> impl Strategy<Value = ServerFrame> {
        prop_oneof![
            any_msg().prop_map(ServerFrame::Msg),
            (
                any::<u64>(),
                prop::collection::vec(any_msg(), 0..3),
                any::<bool>()
            )
                .prop_map(|(id, msgs, more)| ServerFrame::History {
                    id,
                    topic: "a".into(),
                    msgs,
                    cursor: "x".into(),
                    more
                }),
            (prop::option::of(any::<u64>()), "[ -~]{0,20}").prop_map(|(id, m)| ServerFrame::error(
                id,
                ErrorCode::RateLimited,
                m
            )),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                prop::option::of(any::<u64>())
            )
                .prop_map(|(from, to, epoch, sub)| ServerFrame::Gap {
                    topic: "a.b".into(),
                    origin: "n1".into(),
                    epoch,
                    from,
                    to,
                    reason: GapReason::SlowConsumer,
                    cursor: "c".into(),
                    sub,
                }),
            (any::<u64>(), "[a-z.*>]{1,20}")
                .prop_map(|(sub, topic)| ServerFrame::Live { sub, topic }),
            any::<u64>().prop_map(|id| ServerFrame::Ok { id }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                prop::option::of("[a-z]{1,6}")
            )
                .prop_map(|(id, since, truncated, principal)| ServerFrame::Presence {
                    id,
                    topic: "chat.a".into(),
                    count: 1,
                    truncated,
                    members: vec![crate::frame::PresenceMember {
                        client: "c1".into(),
                        principal,
                        connections: 2,
                        node: "n1".into(),
                        since
                    }]
                }),
            (any::<u64>(), prop::option::of("[a-z]{1,6}")).prop_map(|(since, principal)| {
                ServerFrame::Join {
                    topic: "chat.a".into(),
                    client: "c1".into(),
                    principal,
                    node: "n1".into(),
                    since,
                }
            }),
            prop::option::of("[a-z]{1,6}").prop_map(|principal| ServerFrame::Leave {
                topic: "chat.a".into(),
                client: "c1".into(),
                principal,
                node: "n1".into(),
            }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(id, seq, dup)| {
                ServerFrame::BatchAck {
                    id,
                    acks: vec![crate::frame::BatchItemAck {
                        topic: "a.b".into(),
                        origin: "n1".into(),
                        epoch: 1,
                        seq,
                        hlc: seq,
                        dup,
                    }],
                    cursor: "x".into(),
                }
            }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(id, seq, dup)| {
                ServerFrame::Puback {
                    id,
                    topic: "t".into(),
                    origin: "n".into(),
                    epoch: 1,
                    seq,
                    hlc: seq,
                    cursor: "c".into(),
                    dup,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frames in prop::collection::vec(any_client_frame(), 1..5)) {
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let mut buf = Vec::new();
                for (i, f) in frames.iter().enumerate() {
                    if i > 0 { buf.extend_from_slice(enc.separator()); }
                    enc.encode_into(f, &mut buf);
                }
                let back: Vec<ClientFrame> = enc.decode_all(&buf).expect("decode");
                prop_assert_eq!(&back, &frames);
            }
        }

        #[test]
        fn server_frames_round_trip(frames in prop::collection::vec(any_server_frame(), 1..5)) {
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let mut buf = Vec::new();
                for (i, f) in frames.iter().enumerate() {
                    if i > 0 { buf.extend_from_slice(enc.separator()); }
                    enc.encode_into(f, &mut buf);
                }
                let back: Vec<ServerFrame> = enc.decode_all(&buf).expect("decode");
                prop_assert_eq!(&back, &frames);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Encoding::Json.decode_all::<ClientFrame>(&bytes);
            let _ = Encoding::MsgPack.decode_all::<ClientFrame>(&bytes);
            let _ = Encoding::Json.decode_each::<ClientFrame>(&bytes);
            let _ = Encoding::MsgPack.decode_each::<ClientFrame>(&bytes);
        }

        #[test]
        fn length_prefix_round_trip(bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..100), 1..8), split in 0usize..500) {
            let mut wire = Vec::new();
            for b in &bodies { LengthPrefixed::put_prefix(&mut wire, b.len()); wire.extend_from_slice(b); }
            let lp = LengthPrefixed::new(1000);
            let mut buf = bytes::BytesMut::new();
            let split = split.min(wire.len());
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(f) = lp.next_frame(&mut buf).expect("frame") { got.push(f.to_vec()); }
            }
            prop_assert_eq!(got, bodies);
        }
    }

    #[test]
    fn json_payload_forms() {
        let f: Vec<ClientFrame> = Encoding::Json
            .decode_all(br#"{"t":"pub","id":1,"topic":"a","data":{"b64":"AAEC"}} {"t":"pub","id":2,"topic":"a","data":"hi","ack":false}"#)
            .expect("decode");
        match (&f[0], &f[1]) {
            (
                ClientFrame::Pub {
                    data: d1, ack: a1, ..
                },
                ClientFrame::Pub {
                    data: d2, ack: a2, ..
                },
            ) => {
                assert_eq!(d1.0, Bytes::from_static(&[0, 1, 2]));
                assert_eq!(d2.0, Bytes::from_static(b"hi"));
                assert!(*a1);
                assert!(!*a2);
            }
            other => panic!("unexpected {other:?}"),
        }
        let out =
            String::from_utf8(Encoding::Json.encode(&Payload::from(vec![0xff, 0]))).expect("utf8");
        assert_eq!(out, r#"{"b64":"/wA="}"#);
    }

    /// Messages that are well-formed but not valid commands, with the `id` their
    /// `bad_request` must carry. The gateway's e2e test sends the same table.
    pub(crate) fn invalid_commands() -> Vec<(serde_json::Value, Option<u64>)> {
        use serde_json::json;
        vec![
            (json!({"t":"connect","id":1,"token":5}), Some(1)),
            (json!({"t":"connect","id":2,"client_id":7}), Some(2)),
            (json!({"t":"connect","id":3,"cursor":[]}), Some(3)),
            (json!({"t":"sub","id":4}), Some(4)),
            (json!({"t":"sub","id":5,"topic":1}), Some(5)),
            (
                json!({"t":"sub","id":6,"topic":"a","start":"bogus"}),
                Some(6),
            ),
            (
                json!({"t":"sub","id":7,"topic":"a","start":{"last":"x"}}),
                Some(7),
            ),
            (json!({"t":"unsub","id":8}), Some(8)),
            (json!({"t":"pub","id":9,"topic":"a"}), Some(9)),
            (json!({"t":"pub","id":10,"data":"x"}), Some(10)),
            (
                json!({"t":"pub","id":11,"topic":"a","data":"x","headers":{"h":1}}),
                Some(11),
            ),
            (
                json!({"t":"pub","id":12,"topic":"a","data":"x","mid":5}),
                Some(12),
            ),
            (
                json!({"t":"pub","id":13,"topic":"a","data":"x","ack":"yes"}),
                Some(13),
            ),
            (
                json!({"t":"pub","id":14,"topic":"a","data":{"b64":"!!"}}),
                Some(14),
            ),
            (json!({"t":"history","id":15}), Some(15)),
            (
                json!({"t":"history","id":16,"topic":"a","limit":-1}),
                Some(16),
            ),
            (
                json!({"t":"history","id":17,"topic":"a","start":5}),
                Some(17),
            ),
            (json!({"t":"nope","id":18}), Some(18)),
            (json!({"id":19}), Some(19)),
            (json!({"t":"ping"}), None),
            (json!({"t":"ping","id":"20"}), None),
            (json!({"t":"ping","id":-21}), None),
            (
                json!({"t":"ack","id":22,"queue":"g","topic":"a","origin":"n","epoch":1}),
                Some(22),
            ),
            (
                json!({"t":"sub","id":23,"topic":"a","queue":"g","ordering":"random"}),
                Some(23),
            ),
            (
                json!({"t":"nak","id":24,"queue":"g","topic":"a","origin":"n","epoch":1,"seq":1,"delay_ms":"soon"}),
                Some(24),
            ),
        ]
    }

    /// `value` in `enc`, as a client would send it.
    fn encode_value(enc: Encoding, value: &serde_json::Value) -> Vec<u8> {
        match enc {
            Encoding::Json => serde_json::to_vec(value).expect("json"),
            Encoding::MsgPack => rmp_serde::to_vec_named(value).expect("msgpack"),
        }
    }

    #[test]
    fn invalid_commands_keep_their_id_and_their_neighbours() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            for (value, id) in invalid_commands() {
                let ping = |id| encode_value(enc, &serde_json::json!({"t":"ping","id":id}));
                let mut frame = ping(100);
                frame.extend_from_slice(enc.separator());
                frame.extend_from_slice(&encode_value(enc, &value));
                frame.extend_from_slice(enc.separator());
                frame.extend_from_slice(&ping(101));
                let got: Vec<Result<ClientFrame, Invalid>> =
                    enc.decode_each(&frame).expect("well-formed frame");
                assert_eq!(got.len(), 3, "{enc:?} {value}");
                assert_eq!(got[0], Ok(ClientFrame::Ping { id: 100 }), "{enc:?} {value}");
                assert_eq!(got[2], Ok(ClientFrame::Ping { id: 101 }), "{enc:?} {value}");
                match &got[1] {
                    Err(invalid) => {
                        assert_eq!(invalid.id, id, "{enc:?} {value}");
                        assert!(!invalid.message.is_empty());
                    }
                    Ok(f) => panic!("{enc:?} {value} decoded as {f:?}"),
                }
            }
        }
    }

    #[test]
    fn a_broken_frame_is_refused_whole() {
        for (enc, frame) in [
            (Encoding::Json, &b"{\"t\":\"ping\",\"id\":1} {not json"[..]),
            (Encoding::Json, &b"{\"t\":\"ping\",\"id\":1} 5"[..]),
            (Encoding::MsgPack, &[0xc1, 0xc1][..]),
            (Encoding::MsgPack, &[0x81, 0xa1, b't'][..]),
            (Encoding::MsgPack, &[0x05][..]),
        ] {
            assert!(
                enc.decode_each::<ClientFrame>(frame).is_err(),
                "{enc:?} {frame:?}"
            );
        }
        assert_eq!(
            Encoding::Json.decode_each::<ClientFrame>(b"  \n"),
            Err(DecodeError::Empty)
        );
    }

    #[test]
    fn claimed_lengths_beyond_the_frame_are_refused_before_decoding() {
        // Found by the client_msgpack fuzz target: a `sub` whose `start` holds nested
        // array32 headers each claiming 3.7e9 elements made the decoder hold 12 MB for
        // these 96 bytes (1 MiB of preallocation per nesting level).
        let mut frame = vec![
            0x84, 0xa1, b't', 0xa3, b's', b'u', b'b', 0xa2, b'i', b'd', 4,
        ];
        frame.extend_from_slice(&[0xa5, b't', b'o', b'p', b'i', b'c', 0xa1, b'a']);
        frame.extend_from_slice(&[0xa5, b's', 0x8d, b't', b'a', b'r', b't', 0x81]);
        frame.extend_from_slice(&[0xa4, b'l', b'a', 0xdd, 0xdd]);
        frame.extend_from_slice(&[0xdd; 60]);
        for enc_err in [
            Encoding::MsgPack
                .decode_each::<ClientFrame>(&frame)
                .map(|_| ()),
            Encoding::MsgPack
                .decode_all::<ClientFrame>(&frame)
                .map(|_| ()),
        ] {
            match enc_err {
                Err(DecodeError::MsgPack(m)) => assert!(m.contains("claims more elements"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        // Every length fits: a real frame passes the check, and so do frames it does not
        // understand (the decoder reports those).
        let ok = Encoding::MsgPack.encode(&ClientFrame::Ping { id: 1 });
        assert_eq!(check_msgpack_lengths(&ok), Ok(()));
        assert_eq!(check_msgpack_lengths(&[0xc1, 0xdd, 0xff]), Ok(()));
        assert!(check_msgpack_lengths(&[0x92, 0x01]).is_err());
        assert!(check_msgpack_lengths(&[0xdc, 0x00, 0x02, 0x01, 0x02]).is_ok());
    }

    #[test]
    fn oversized_prefix_is_refused() {
        let lp = LengthPrefixed::new(10);
        let mut buf = bytes::BytesMut::from(&[0u8, 0, 0, 11, 1][..]);
        assert_eq!(
            lp.next_frame(&mut buf),
            Err(DecodeError::TooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn wire_shape_is_documented_shape() {
        // PROTOCOL.md shows these exact bytes; keep them in sync.
        let f = ClientFrame::sub(7, "a.*".into(), Some(Start::Last(5)));
        assert_eq!(
            String::from_utf8(Encoding::Json.encode(&f)).expect("utf8"),
            r#"{"t":"sub","id":7,"topic":"a.*","start":{"last":5}}"#
        );
        let f = ClientFrame::sub(7, "a".into(), Some(Start::Latest));
        let mp = Encoding::MsgPack.encode(&f);
        // fixmap(4) "t" "sub" "id" 7 "topic" "a" "start" "latest"
        let mut want = vec![
            0x84, 0xa1, b't', 0xa3, b's', b'u', b'b', 0xa2, b'i', b'd', 0x07, 0xa5,
        ];
        want.extend_from_slice(b"topic");
        want.extend_from_slice(&[0xa1, b'a', 0xa5]);
        want.extend_from_slice(b"start");
        want.push(0xa6);
        want.extend_from_slice(b"latest");
        assert_eq!(mp, want);
    }

    #[test]
    fn queue_wire_shapes_are_documented_shapes() {
        // PROTOCOL.md §2.5 shows these exact lines; keep them in sync.
        let json = |f: &ClientFrame| String::from_utf8(Encoding::Json.encode(f)).expect("utf8");
        let sub = ClientFrame::Sub {
            id: 2,
            topic: "jobs.>".into(),
            start: Some(Start::Earliest),
            queue: Some("resize".into()),
            max_unacked: Some(4),
            ack_wait_ms: Some(30000),
            max_deliveries: Some(5),
            ordering: Some(Ordering::Strict),
            presence: false,
        };
        assert_eq!(
            json(&sub),
            r#"{"t":"sub","id":2,"topic":"jobs.>","start":"earliest","queue":"resize","max_unacked":4,"ack_wait_ms":30000,"max_deliveries":5,"ordering":"strict"}"#
        );
        let nak = QueueAnswer {
            id: 9,
            queue: "resize".into(),
            topic: "jobs.img".into(),
            origin: "edge-1".into(),
            epoch: 1,
            seq: 4,
            verdict: Verdict::Nak { delay_ms: 500 },
        };
        assert_eq!(
            json(&nak.clone().into_frame()),
            r#"{"t":"nak","id":9,"queue":"resize","topic":"jobs.img","origin":"edge-1","epoch":1,"seq":4,"delay_ms":500}"#
        );
        assert_eq!(QueueAnswer::from_frame(nak.clone().into_frame()), Ok(nak));
        assert_eq!(
            QueueAnswer::from_frame(ClientFrame::Ping { id: 1 }),
            Err(Box::new(ClientFrame::Ping { id: 1 }))
        );
        let ok =
            String::from_utf8(Encoding::Json.encode(&ServerFrame::Ok { id: 9 })).expect("utf8");
        assert_eq!(ok, r#"{"t":"ok","id":9}"#);
    }
}
