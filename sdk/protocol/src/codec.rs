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

use serde::Serialize;
use serde::de::DeserializeOwned;

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
                .prop_map(|(id, topic, start)| ClientFrame::Sub { id, topic, start }),
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
        )
            .prop_map(|(topic, origin, epoch, seq, hlc, data, headers, mid)| Msg {
                topic,
                origin,
                epoch,
                seq,
                hlc,
                client: "c".into(),
                mid,
                headers,
                data,
            })
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
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(from, to, epoch)| {
                ServerFrame::Gap {
                    topic: "a.b".into(),
                    origin: "n1".into(),
                    epoch,
                    from,
                    to,
                    reason: GapReason::SlowConsumer,
                    cursor: "c".into(),
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
        let f = ClientFrame::Sub {
            id: 7,
            topic: "a.*".into(),
            start: Some(Start::Last(5)),
        };
        assert_eq!(
            String::from_utf8(Encoding::Json.encode(&f)).expect("utf8"),
            r#"{"t":"sub","id":7,"topic":"a.*","start":{"last":5}}"#
        );
        let f = ClientFrame::Sub {
            id: 7,
            topic: "a".into(),
            start: Some(Start::Latest),
        };
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
}
