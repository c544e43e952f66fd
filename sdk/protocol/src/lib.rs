//! `edgesync-protocol`: the client protocol of edgesync, with no I/O.
//!
//! Everything a client and the gateway must agree on lives here, in the order a
//! frame travels:
//!
//! - [`topic`]: topic names and `*` / `>` patterns (validation and matching).
//! - [`frame`]: the messages — client commands, server replies and pushes.
//! - [`codec`]: the two encodings (JSON lines and MessagePack), several
//!   messages per transport frame, and the QUIC length prefix.
//! - [`cursor`]: resume positions as per-topic version vectors, opaque base64.
//! - [`error`]: stable error codes with their retry semantics.
//!
//! PROTOCOL.md at the repository root is the normative description; this crate
//! is its reference implementation and the two change together.

pub mod codec;
pub mod cursor;
pub mod error;
pub mod frame;
pub mod topic;

pub use codec::{DecodeError, Encoding};
pub use cursor::{Cursor, CursorError, Origin};
pub use error::ErrorCode;
pub use frame::{
    BatchItemAck, BatchMsg, ClientFrame, Headers, Msg, Ordering, Payload, PresenceMember,
    QueueAnswer, ServerFrame, Start, Verdict,
};

/// WebSocket subprotocol for the JSON encoding (text frames, one JSON object per line).
pub const SUBPROTOCOL_JSON: &str = "edgesync.json.v1";
/// WebSocket subprotocol for the MessagePack encoding (binary frames, concatenated values).
pub const SUBPROTOCOL_MSGPACK: &str = "edgesync.msgpack.v1";
/// ALPN identifier of the QUIC client protocol: every push on the session stream.
pub const ALPN_QUIC: &[u8] = b"edgesync/1";
/// ALPN identifier of the QUIC client protocol with a server-opened stream per
/// subscription (docs/protocol-quic.md, "Subscription streams"). Gateways offer it
/// first; a client that offers both gets it.
pub const ALPN_QUIC_V2: &[u8] = b"edgesync/2";
/// Protocol version announced in `connected`. 2: a subscription's catch-up pushes carry
/// its `sub` id and a `live` push marks the end of its catch-up (PROTOCOL.md §4).
pub const PROTOCOL_VERSION: u32 = 2;
