//! The messages of the protocol.
//!
//! Clients send [`ClientFrame`]s; every command carries an `id` chosen by the
//! client and the reply carries the same `id`. The gateway sends
//! [`ServerFrame`]s: replies (with `id`) and pushes (`msg`, `gap`, and `error`
//! without `id`). Every message is a map whose `t` field names its type.

use bytes::Bytes;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ErrorCode;

/// A command from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Opens the session. Must be the first command.
    Connect {
        id: u64,
        /// Credential handed to the auth plugins (e.g. a JWT).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Stable client identity; scopes idempotent publish. Assigned when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Resume cursor: the default `start` of later subscribes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Subscribe to a topic or pattern.
    Sub {
        id: u64,
        topic: String,
        /// Where to start; default `latest`, or the connect cursor when one was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start: Option<Start>,
        /// Join this queue group: each message of the matching topics goes to one member of
        /// the group, which answers `ack`/`nak`/`progress`/`term`. Absent: plain fan-out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
        /// Queue member only: most deliveries this member holds unanswered (its window).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_unacked: Option<u32>,
        /// Queue group: how long a member may hold a delivery without an answer, in ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack_wait_ms: Option<u64>,
        /// Queue group: deliveries of one message before it is dead-lettered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_deliveries: Option<u32>,
        /// Queue group: `parallel` (default) or `strict` (one in flight per topic).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ordering: Option<Ordering>,
        /// Be present on `topic` (the exact string) while subscribed, and get `join` /
        /// `leave` pushes for it. Not with `queue`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        presence: bool,
    },
    /// Who is present on a topic (the exact string subscribed with `presence`).
    /// Answered with `presence`.
    Presence { id: u64, topic: String },
    /// A direct message to every connection of one client (`to_client`) or of every
    /// client authenticated as one principal (`to_principal`): stored in that inbox
    /// topic (`$inbox.<client>` / `$inbox.@<principal>`) and answered with `puback`.
    Send {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_principal: Option<String>,
        data: Payload,
        #[serde(default, skip_serializing_if = "Headers::is_empty")]
        headers: Headers,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mid: Option<String>,
    },
    /// Several messages stored all or nothing in one commit. Answered with `batch_ack`
    /// (one position per message, in order) or one error and nothing stored.
    PubBatch { id: u64, msgs: Vec<BatchMsg> },
    /// Drop a subscription made with exactly this pattern.
    Unsub { id: u64, topic: String },
    /// Publish one message.
    Pub {
        id: u64,
        topic: String,
        data: Payload,
        #[serde(default, skip_serializing_if = "Headers::is_empty")]
        headers: Headers,
        /// Client message id: a retry with the same (client_id, mid) gets the original ack.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mid: Option<String>,
        /// `false`: no `puback` is sent (errors still are). Default `true`.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        ack: bool,
    },
    /// Read stored messages of one topic.
    History {
        id: u64,
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start: Option<Start>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Liveness probe; answered with `pong`.
    Ping { id: u64 },
    /// A queue delivery was handled: it is never delivered again. Answered with `ok`.
    Ack {
        id: u64,
        queue: String,
        topic: String,
        origin: String,
        epoch: u64,
        seq: u64,
    },
    /// A queue delivery was not handled: deliver it again (to any member), at once or
    /// after `delay_ms`. Answered with `ok`.
    Nak {
        id: u64,
        queue: String,
        topic: String,
        origin: String,
        epoch: u64,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
    /// Still working on a queue delivery: its ack wait starts again. Answered with `ok`.
    Progress {
        id: u64,
        queue: String,
        topic: String,
        origin: String,
        epoch: u64,
        seq: u64,
    },
    /// Give up on a queue delivery: it goes to the group's dead-letter topic now, with
    /// `reason`. Answered with `ok`.
    Term {
        id: u64,
        queue: String,
        topic: String,
        origin: String,
        epoch: u64,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// One message of a `pub_batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMsg {
    pub topic: String,
    pub data: Payload,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
}

/// Where one message of a `pub_batch` was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItemAck {
    pub topic: String,
    pub origin: String,
    pub epoch: u64,
    pub seq: u64,
    pub hlc: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dup: bool,
}

/// One member of a topic's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMember {
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Its connections present on the topic (on this gateway).
    pub connections: u32,
    /// The gateway it is connected to.
    pub node: String,
    /// When it became present, Unix ms.
    pub since: u64,
}

/// A queue answer (`ack`, `nak`, `progress`, `term`), split from its command: the group
/// and the message it names (topic, origin, epoch, seq exactly as the `msg` push carried
/// them) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAnswer {
    pub id: u64,
    pub queue: String,
    pub topic: String,
    pub origin: String,
    pub epoch: u64,
    pub seq: u64,
    pub verdict: Verdict,
}

/// What a member says about a queue delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: never deliver it again.
    Ack,
    /// Not handled: deliver again, after this many ms (0: at once).
    Nak { delay_ms: u64 },
    /// Still working: restart the ack wait.
    Progress,
    /// Give up: dead-letter now with this reason.
    Term { reason: String },
}

impl QueueAnswer {
    /// The answer a command carries, or the command back when it is not one.
    pub fn from_frame(f: ClientFrame) -> Result<QueueAnswer, Box<ClientFrame>> {
        let (id, queue, topic, origin, epoch, seq, verdict) = match f {
            ClientFrame::Ack {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
            } => (id, queue, topic, origin, epoch, seq, Verdict::Ack),
            ClientFrame::Nak {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
                delay_ms,
            } => {
                let v = Verdict::Nak {
                    delay_ms: delay_ms.unwrap_or(0),
                };
                (id, queue, topic, origin, epoch, seq, v)
            }
            ClientFrame::Progress {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
            } => (id, queue, topic, origin, epoch, seq, Verdict::Progress),
            ClientFrame::Term {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
                reason,
            } => {
                let v = Verdict::Term {
                    reason: reason.unwrap_or_default(),
                };
                (id, queue, topic, origin, epoch, seq, v)
            }
            other => return Err(Box::new(other)),
        };
        Ok(QueueAnswer {
            id,
            queue,
            topic,
            origin,
            epoch,
            seq,
            verdict,
        })
    }

    /// The command that carries this answer.
    pub fn into_frame(self) -> ClientFrame {
        let QueueAnswer {
            id,
            queue,
            topic,
            origin,
            epoch,
            seq,
            verdict,
        } = self;
        match verdict {
            Verdict::Ack => ClientFrame::Ack {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
            },
            Verdict::Nak { delay_ms } => ClientFrame::Nak {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
                delay_ms: (delay_ms > 0).then_some(delay_ms),
            },
            Verdict::Progress => ClientFrame::Progress {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
            },
            Verdict::Term { reason } => ClientFrame::Term {
                id,
                queue,
                topic,
                origin,
                epoch,
                seq,
                reason: (!reason.is_empty()).then_some(reason),
            },
        }
    }
}

/// How a queue group orders deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Any number of a topic's messages in flight at once (up to the members' windows).
    #[default]
    Parallel,
    /// One message per topic in flight at a time: a topic's messages are handled in order.
    Strict,
}

impl ClientFrame {
    /// The command id.
    pub fn id(&self) -> u64 {
        match self {
            ClientFrame::Connect { id, .. }
            | ClientFrame::Sub { id, .. }
            | ClientFrame::Unsub { id, .. }
            | ClientFrame::Pub { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Ack { id, .. }
            | ClientFrame::Nak { id, .. }
            | ClientFrame::Progress { id, .. }
            | ClientFrame::Term { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::PubBatch { id, .. }
            | ClientFrame::Ping { id } => *id,
        }
    }

    /// A plain (fan-out) subscription.
    pub fn sub(id: u64, topic: String, start: Option<Start>) -> Self {
        ClientFrame::Sub {
            id,
            topic,
            start,
            queue: None,
            max_unacked: None,
            ack_wait_ms: None,
            max_deliveries: None,
            ordering: None,
            presence: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Where a subscription or history read starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Only messages stored after the subscription is made.
    Latest,
    /// Everything still retained.
    Earliest,
    /// Everything after the position in this cursor (topics absent from it: from earliest).
    Cursor(String),
    /// The last N messages of each matching topic, then live.
    Last(u64),
}

/// A reply or push from the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to `connect`.
    Connected {
        id: u64,
        client_id: String,
        /// Gateway-local connection id (appears in admin listings and plugin calls).
        conn_id: u64,
        /// Node id of this gateway.
        node: String,
        /// Current epoch of this gateway's origin.
        epoch: u64,
        version: u32,
        limits: LimitsInfo,
    },
    /// Reply to `sub`; `cursor` is the position the subscription starts from.
    Subscribed {
        id: u64,
        topic: String,
        cursor: String,
    },
    /// Reply to `unsub`.
    Unsubscribed { id: u64, topic: String },
    /// Durable acknowledgement of `pub`.
    Puback {
        id: u64,
        topic: String,
        origin: String,
        epoch: u64,
        seq: u64,
        hlc: u64,
        /// The topic's version vector just after this message: resume point including it.
        cursor: String,
        /// True when this ack repeats the ack of an earlier identical (client_id, mid).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dup: bool,
    },
    /// Reply to `history`.
    History {
        id: u64,
        topic: String,
        msgs: Vec<Msg>,
        /// Position after the last message returned: pass it as the next `start`.
        cursor: String,
        /// More messages exist after `cursor`.
        more: bool,
    },
    /// Reply to `ping`.
    Pong { id: u64 },
    /// Reply to `ack`, `nak`, `progress` and `term`.
    Ok { id: u64 },
    /// Reply to `presence`: `count` members, at most `limits.max_presence_members` of
    /// them listed (`truncated` when there are more), sorted by client id.
    Presence {
        id: u64,
        topic: String,
        count: u64,
        truncated: bool,
        members: Vec<PresenceMember>,
    },
    /// Push to `presence` subscribers of `topic`: a client became present (its first
    /// connection there).
    Join {
        topic: String,
        client: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        node: String,
        since: u64,
    },
    /// Push to `presence` subscribers of `topic`: a client is gone (its last connection
    /// there unsubscribed, closed or was idled out).
    Leave {
        topic: String,
        client: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        node: String,
    },
    /// Reply to `pub_batch`: where each message was stored, in order; `cursor` covers
    /// them all.
    BatchAck {
        id: u64,
        acks: Vec<BatchItemAck>,
        cursor: String,
    },
    /// A failed command (with `id`) or a connection-level error (without).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        msg: String,
        retry: bool,
    },
    /// A delivered message (push).
    Msg(Msg),
    /// A subscription finished its catch-up (push, protocol version 2): from here on it
    /// takes the untagged pushes that match it. Queued after its last catch-up push and
    /// before any live push it gets, so a client knows exactly where the hand-over is.
    Live {
        /// The `id` of the `sub` command that made the subscription.
        sub: u64,
        /// Its pattern.
        topic: String,
    },
    /// Messages the subscriber will not receive live (push): read them with `history`.
    Gap {
        topic: String,
        origin: String,
        epoch: u64,
        /// First missed sequence number (inclusive).
        from: u64,
        /// Last missed sequence number (inclusive).
        to: u64,
        reason: GapReason,
        /// Cursor positioned just before `from`; `history` with it re-reads the range.
        cursor: String,
        /// The subscription whose catch-up found the range missing (the `id` of its `sub`
        /// command); absent for a gap of the live stream (`slow_consumer`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<u64>,
    },
}

impl ServerFrame {
    /// An error reply for command `id`.
    pub fn error(id: Option<u64>, code: ErrorCode, msg: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            msg: msg.into(),
            retry: code.retryable(),
        }
    }
}

/// Why a gap was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The subscriber's outbox overflowed.
    SlowConsumer,
    /// The messages were removed by retention before they could be delivered.
    Retention,
    /// The gateway holds the messages but cannot serve them: they fail their checksum
    /// (a damaged disk). Reading the range again later may succeed once a peer
    /// gateway has repaired them.
    Corrupt,
}

/// Limits the gateway enforces, announced in `connected` so clients can respect them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LimitsInfo {
    pub max_frame_bytes: u64,
    pub max_topic_bytes: u64,
    pub max_headers: u64,
    pub max_subscriptions: u64,
    pub publish_rate_per_sec: u64,
    pub idle_timeout_ms: u64,
}

/// A stored message as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub topic: String,
    /// Node id of the gateway where the message entered.
    pub origin: String,
    pub epoch: u64,
    /// Dense per (topic, origin, epoch), starting at 1. `0` marks an ephemeral message
    /// (a QUIC datagram publish): not stored, never part of a cursor, best-effort.
    pub seq: u64,
    /// Hybrid logical clock: milliseconds since the Unix epoch << 16 | logical counter.
    pub hlc: u64,
    /// Client id of the publisher.
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    pub data: Payload,
    /// Set on a push read by a subscription's catch-up: the `id` of its `sub` command; it
    /// is for that subscription only. Absent on live pushes (each matching live
    /// subscription takes them) and in `history` replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<u64>,
    /// Set on a queue delivery: the group it was handed out by. Answer it with
    /// `ack`/`nak`/`progress`/`term`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Set on a queue delivery: how many times this message has been handed out, this
    /// time included (1 on the first delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<u32>,
}

/// Message headers: ordered string pairs, encoded as a map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Total bytes of names and values.
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of string to string")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Headers, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some((k, val)) = a.next_entry::<String, String>()? {
                    v.push((k, val));
                }
                Ok(Headers(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Message payload: opaque bytes.
///
/// MessagePack carries it as `bin`. JSON carries it as a string when the bytes
/// are valid UTF-8, otherwise as `{"b64": "<standard base64>"}`; both forms
/// are accepted on input in either encoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(Bytes::from(v))
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload(b)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use base64::Engine as _;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "b64",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes, a string, or {\"b64\": string}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(v.as_bytes())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
                Ok(Payload(Bytes::from(v.into_bytes())))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Payload, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Payload(Bytes::from(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Payload, A::Error> {
                use base64::Engine as _;
                let mut out = None;
                while let Some(k) = a.next_key::<String>()? {
                    if k != "b64" {
                        return Err(de::Error::unknown_field(&k, &["b64"]));
                    }
                    let text: String = a.next_value()?;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text.as_bytes())
                        .map_err(|e| de::Error::custom(format!("bad base64 in data.b64: {e}")))?;
                    out = Some(bytes);
                }
                out.map(|b| Payload(Bytes::from(b)))
                    .ok_or_else(|| de::Error::missing_field("b64"))
            }
        }
        d.deserialize_any(V)
    }
}
