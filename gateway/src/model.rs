//! The gateway's shared vocabulary: the types every layer speaks, with no logic.
//!
//! A publish entering the gateway ([`Publish`]), who sent it ([`Sender`]), what the
//! auth hooks granted ([`Auth`]), what the message hooks decided ([`HookOutcome`]),
//! why something was refused ([`Refusal`]), and the ids of connections and
//! subscriptions. Living here (the bottom layer) lets the store, the pipeline,
//! the session and the plugins use them without importing each other.

use std::net::SocketAddr;

use bytes::Bytes;
use edgesync_protocol::{Encoding, ErrorCode, Headers};

/// A connection's gateway-local number (`conn_id` in `connected`).
pub type ConnId = u64;

/// One message to store, as it enters the gateway (a `pub`, an admin publish, a plugin
/// publish, a datagram). Plugins may change `headers` and `payload` before it is stored;
/// the store allocates its identity (origin, seq, HLC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    /// The publisher's client id (with `principal` and `topic`, scopes idempotent publish).
    pub client: String,
    /// The publisher's authenticated principal, when auth assigned one. Not stored: it
    /// only scopes idempotent publish, so a client that borrows another's client id
    /// cannot answer that client's publishes with its own.
    pub principal: Option<String>,
    /// Client message id: a retry with the same (principal, client, topic, mid) is
    /// stored once.
    pub mid: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

/// Who sent a message into the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sender {
    /// 0 for messages that come from no connection (admin API, plugins).
    pub conn_id: ConnId,
    pub client_id: String,
    /// The authenticated principal, when auth plugins assigned one.
    pub principal: Option<String>,
    /// Set when a plugin published it: that plugin's hooks are skipped (loop protection).
    pub plugin: Option<String>,
}

/// Who the auth hooks said is connected, and what they may do. Without auth plugins
/// there is no `Auth` and every topic is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub principal: String,
    /// Topic patterns this principal may publish to.
    pub publish: Vec<String>,
    /// Topic patterns this principal may subscribe to (a subscription must be covered by one).
    pub subscribe: Vec<String>,
}

/// What the message and storage hooks decided about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// Store it (possibly changed in place by a hook).
    Store,
    /// A message hook dropped it on purpose: acknowledge, store nothing, deliver nothing.
    Dropped,
    /// A storage hook said `skip`: delivered live to current subscribers, never stored.
    LiveOnly,
}

/// Why a command or message was refused: the error a client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Identifies a subscription inside the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(pub u64);

/// The transport a client connected over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Wss,
    Quic,
}

impl Transport {
    /// Metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Quic => "quic",
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub transport: Transport,
    /// Identity from a client certificate, when mTLS presented one.
    pub tls_identity: Option<String>,
    pub encoding: Encoding,
}

/// A `sub` that joins a queue group, validated: the group and its options (defaults
/// filled in, bounds checked by the session). `ack_wait_ms`, `max_deliveries` and
/// `ordering` belong to the group (the first member sets them; a member asking for
/// others is refused), `max_unacked` to the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueJoin {
    /// The group name: one topic segment, so `$dlq.queue.<group>` is a topic.
    pub group: String,
    /// Most deliveries this member holds unanswered.
    pub max_unacked: u32,
    /// How long a member may hold a delivery without an answer, in ms.
    pub ack_wait_ms: u64,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliveries: u32,
    /// One in flight per topic (`Strict`) or any number (`Parallel`).
    pub ordering: edgesync_protocol::Ordering,
}

impl QueueJoin {
    /// `max_unacked` when the `sub` names none.
    pub const DEFAULT_MAX_UNACKED: u32 = 64;
    /// Largest `max_unacked` a member may ask for (bounds what one member holds).
    pub const MAX_MAX_UNACKED: u32 = 10_000;
    /// `ack_wait_ms` when the first member names none: 30 s.
    pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
    /// Accepted `ack_wait_ms`: 100 ms to 24 h.
    pub const ACK_WAIT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=86_400_000;
    /// `max_deliveries` when the first member names none.
    pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
    /// Largest `max_deliveries`: a message is never retried forever.
    pub const MAX_MAX_DELIVERIES: u32 = 1000;
    /// Longest `nak` `delay_ms`: 1 h.
    pub const MAX_NAK_DELAY_MS: u64 = 3_600_000;
}

/// Where a subscription, a history read or a new queue group starts, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    Latest,
    Earliest,
    Cursor(edgesync_protocol::Cursor),
    Last(u64),
}
