//! `edgesync-client`: an async Rust client for edgesync.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgesync_client::ClientError> {
//! use edgesync_client::{Client, ClientOptions, Start};
//! let client = Client::connect(ClientOptions::new("ws://127.0.0.1:7400")).await?;
//! let mut sub = client.subscribe("chat.>", Start::Latest).await?;
//! let ack = client.publish("chat.room1", "hello").await?;
//! println!("stored as seq {}", ack.seq);
//! while let Some(event) = sub.next().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! The client keeps one connection in a background task. With `reconnect`
//! (the default) it reconnects after a failure — waiting 50 ms, doubling up to
//! `max_backoff`, each wait jittered to between half and all of it so a fleet does
//! not return in step — re-subscribes
//! every subscription from its cursor (so nothing is missed or repeated), and
//! resends publishes that were in flight with the same client message id (so
//! the gateway stores each exactly once). With `fallback_urls` it fails over to the
//! other gateways of a cluster the same way (see [`ClientOptions::fallback_urls`]).

mod conn;
mod task;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use edgesync_protocol::frame::{GapReason, LimitsInfo};
pub use edgesync_protocol::{
    Cursor, Encoding, ErrorCode, Headers, Msg, Ordering, Origin, Payload, PresenceMember,
    QueueAnswer, Start, Verdict,
};
use tokio::sync::{mpsc, oneshot};

/// Client failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("bad url {0:?}: use ws://, wss:// or quic://host:port")]
    Url(String),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("tls: {0}")]
    Tls(String),
    /// The gateway answered with an error.
    #[error("{code}: {message}")]
    Server {
        code: ErrorCode,
        message: String,
        retry: bool,
    },
    #[error("connection lost")]
    ConnectionLost,
    #[error("timed out waiting for the gateway")]
    Timeout,
    #[error("client closed")]
    Closed,
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gateway's error code, when this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port[/path]`, `wss://...` or `quic://host:port`.
    pub url: String,
    /// Other gateways of the same cluster (same URL forms), for failover: when the
    /// connection fails, reconnect attempts go round `url` and these in turn, starting
    /// with the gateway after the one that failed; the first connect tries them in order
    /// too. Subscriptions resume from their cursors (valid on every gateway of a
    /// cluster: nothing missed, nothing repeated) and in-flight publishes are resent
    /// with their `mid`s. Default empty.
    pub fallback_urls: Vec<String>,
    pub token: Option<String>,
    /// Stable client id (scopes idempotent publish, with the topic and, when auth is on,
    /// the principal): 1-128 ASCII letters, digits and `-_.:@+/=~`; generated when absent.
    pub client_id: Option<String>,
    /// Encoding for WebSocket (QUIC always uses MessagePack). Default MessagePack.
    pub encoding: Encoding,
    /// CA certificate (PEM) to trust for wss/quic, e.g. the gateway's development CA.
    pub ca: Option<PathBuf>,
    /// Skip certificate verification (development only).
    pub insecure: bool,
    /// Client certificate chain (PEM, leaf first) presented on wss/quic when the gateway
    /// verifies clients (`[tls] client_ca`); its subject CN (else first SAN) becomes the
    /// connection's TLS identity for auth plugins. Needs [`ClientOptions::key`].
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of [`ClientOptions::cert`].
    pub key: Option<PathBuf>,
    /// Reconnect and resume after a failure. Default true.
    pub reconnect: bool,
    /// Longest wait between reconnect attempts. Default 5 s.
    pub max_backoff: Duration,
    /// Give up on a command after this long. Default 30 s.
    pub request_timeout: Duration,
    /// Resume cursor sent with `connect`.
    pub cursor: Option<String>,
    /// Events buffered per subscription. A subscription the application does not read
    /// never holds back the others or publish acks: once its buffer is full, further
    /// messages become a `Gap` event (reason `slow_consumer`, one per topic and origin)
    /// delivered when the application takes events again; read the range with
    /// [`Client::history`] from its cursor. Default 65536.
    pub subscription_buffer: usize,
    /// How long the gateway may stay silent before the connection is taken for dead
    /// and the client fails over (a killed or stopped gateway, a cut link: neither
    /// says goodbye). After half of it without a frame the client sends a `ping`;
    /// over QUIC it is also the connection's idle timeout. Default 10 s.
    pub liveness_timeout: Duration,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            fallback_urls: Vec::new(),
            token: None,
            client_id: None,
            encoding: Encoding::MsgPack,
            ca: None,
            insecure: false,
            cert: None,
            key: None,
            reconnect: true,
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            cursor: None,
            subscription_buffer: 65_536,
            liveness_timeout: Duration::from_secs(10),
        }
    }
}

/// Options of one publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub headers: Headers,
    /// Client message id; generated when absent so retries are idempotent.
    pub mid: Option<String>,
    /// Wait for the durable ack (default). `false`: fire and forget.
    pub ack: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            headers: Headers::default(),
            mid: None,
            ack: true,
        }
    }
}

/// Membership of a queue group (PROTOCOL.md §2.5). `None` fields take the gateway's
/// defaults; group options (`ack_wait_ms`, `max_deliveries`, `ordering`) must match the
/// group's or the gateway answers `queue_conflict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    pub group: String,
    /// Where a new group starts (an existing group goes on from its progress).
    pub start: Start,
    pub max_unacked: Option<u32>,
    pub ack_wait_ms: Option<u64>,
    pub max_deliveries: Option<u32>,
    pub ordering: Option<Ordering>,
}

impl QueueOptions {
    pub fn new(group: impl Into<String>) -> Self {
        QueueOptions {
            group: group.into(),
            start: Start::Latest,
            max_unacked: None,
            ack_wait_ms: None,
            max_deliveries: None,
            ordering: None,
        }
    }
}

/// A durable publish acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub topic: String,
    pub origin: Origin,
    pub seq: u64,
    pub hlc: u64,
    pub cursor: String,
    pub dup: bool,
}

/// Something a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Msg(Msg),
    /// Messages that will not arrive live; read them with [`Client::history`] from `cursor`.
    Gap {
        topic: String,
        origin: Origin,
        from: u64,
        to: u64,
        reason: GapReason,
        cursor: String,
    },
    /// A client became present on the topic (subscriptions made with
    /// [`Client::subscribe_present`] only).
    Join {
        topic: String,
        client: String,
        principal: Option<String>,
        node: String,
        since: u64,
    },
    /// A client left the topic (its last connection there went).
    Leave {
        topic: String,
        client: String,
        principal: Option<String>,
        node: String,
    },
}

/// Who is present on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceList {
    pub topic: String,
    pub count: u64,
    /// More members than the gateway lists (`limits.max_presence_members`).
    pub truncated: bool,
    pub members: Vec<PresenceMember>,
}

/// A page of stored messages.
#[derive(Debug, Clone)]
pub struct History {
    pub msgs: Vec<Msg>,
    pub cursor: String,
    pub more: bool,
}

/// Facts from the gateway's `connected` reply.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub client_id: String,
    /// The gateway's protocol version (2 tags catch-up pushes with their subscription).
    pub version: u32,
    pub conn_id: u64,
    pub node: String,
    pub epoch: u64,
    pub limits: LimitsInfo,
}

/// A live subscription; dropping it does not unsubscribe (call [`Client::unsubscribe`]).
#[derive(Debug)]
pub struct Subscription {
    pub pattern: String,
    rx: mpsc::Receiver<Event>,
    /// What the application has taken from this subscription (its resume point).
    consumed: Arc<Mutex<Cursor>>,
}

impl Subscription {
    /// Next event; `None` when the client closed.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        self.note(&ev);
        ev
    }

    /// Next event within `d`.
    pub async fn next_timeout(&mut self, d: Duration) -> Option<Event> {
        let ev = tokio::time::timeout(d, self.rx.recv()).await.ok().flatten();
        self.note(&ev);
        ev
    }

    /// Position after the last event taken with `next`: resume from it to continue exactly here.
    pub fn cursor(&self) -> Cursor {
        self.consumed.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn note(&self, ev: &Option<Event>) {
        if let (Some(Event::Msg(m)), Ok(mut c)) = (ev, self.consumed.lock()) {
            c.observe(&m.topic, &Origin::new(m.origin.clone(), m.epoch), m.seq);
        }
    }
}

pub(crate) enum Request {
    Publish {
        topic: String,
        payload: Bytes,
        opts: PublishOptions,
        reply: Option<oneshot::Sender<Result<PubAck, ClientError>>>,
    },
    Subscribe {
        pattern: String,
        start: Start,
        queue: Option<QueueOptions>,
        presence: bool,
        events: mpsc::Sender<Event>,
        consumed: Arc<Mutex<Cursor>>,
        reply: oneshot::Sender<Result<String, ClientError>>,
    },
    Unsubscribe {
        pattern: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    History {
        topic: String,
        start: Start,
        limit: Option<u32>,
        reply: oneshot::Sender<Result<History, ClientError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Answer {
        answer: QueueAnswer,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Presence {
        topic: String,
        reply: oneshot::Sender<Result<PresenceList, ClientError>>,
    },
    Batch {
        msgs: Vec<edgesync_protocol::BatchMsg>,
        reply: oneshot::Sender<Result<Vec<PubAck>, ClientError>>,
    },
    Send {
        to_client: Option<String>,
        to_principal: Option<String>,
        payload: Bytes,
        opts: PublishOptions,
        reply: oneshot::Sender<Result<PubAck, ClientError>>,
    },
    Raw {
        frame: Vec<u8>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Ephemeral {
        topic: String,
        payload: Bytes,
        headers: Headers,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Cursor {
        reply: oneshot::Sender<Cursor>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A connected client. Cheap to clone; all clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::Sender<Request>,
    info: SessionInfo,
    timeout: Duration,
    sub_buffer: usize,
}

impl Client {
    /// Connect and complete the `connect` handshake.
    ///
    /// # Errors
    /// [`ClientError`] when the URL is bad, the connection fails or the gateway refuses.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let timeout = opts.request_timeout;
        let sub_buffer = opts.subscription_buffer;
        let (tx, info) = task::spawn(opts).await?;
        Ok(Client {
            tx,
            info,
            timeout,
            sub_buffer,
        })
    }

    /// What the gateway said at connect.
    pub fn session(&self) -> &SessionInfo {
        &self.info
    }

    /// Publish and wait for the durable ack.
    ///
    /// # Errors
    /// [`ClientError::Server`] with the gateway's code, or a connection error.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PubAck, ClientError> {
        self.publish_with(topic, payload, PublishOptions::default())
            .await
    }

    /// Publish with options. With `ack: false` returns once the frame is queued
    /// (the returned ack has seq 0).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<PubAck, ClientError> {
        let payload = payload.into();
        if !opts.ack {
            self.send(Request::Publish {
                topic: topic.into(),
                payload,
                opts,
                reply: None,
            })
            .await?;
            return Ok(PubAck {
                topic: topic.into(),
                origin: Origin::new("", 0),
                seq: 0,
                hlc: 0,
                cursor: String::new(),
                dup: false,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Publish {
            topic: topic.into(),
            payload,
            opts,
            reply: Some(reply),
        })
        .await?;
        self.wait(rx).await?
    }

    /// Subscribe to a topic or pattern.
    ///
    /// # Errors
    /// [`ClientError::Server`] (e.g. `forbidden`, `too_many_subscriptions`).
    pub async fn subscribe(
        &self,
        pattern: &str,
        start: Start,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_inner(pattern, start, None, false).await
    }

    /// Subscribe to `topic` and be present there while subscribed: the subscription
    /// also yields [`Event::Join`] / [`Event::Leave`] for every client that comes and
    /// goes (this one included). After a reconnect the client is present again.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_present(
        &self,
        topic: &str,
        start: Start,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_inner(topic, start, None, true).await
    }

    /// Publish several messages stored all or nothing in one commit (`pub_batch`,
    /// PROTOCOL.md §2.8): `(topic, payload, headers)` each. Every message gets a `mid`
    /// (generated), so the batch is resent as it is after a reconnect and stored once.
    /// The acks come in order; a message a plugin dropped has `seq` 0.
    ///
    /// # Errors
    /// [`ClientError::Server`] naming the first message refused (nothing stored).
    pub async fn publish_batch(
        &self,
        msgs: Vec<(String, Bytes, Headers)>,
    ) -> Result<Vec<PubAck>, ClientError> {
        let msgs = msgs
            .into_iter()
            .map(|(topic, data, headers)| edgesync_protocol::BatchMsg {
                topic,
                data: Payload(data),
                headers,
                mid: None,
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        self.send(Request::Batch { msgs, reply }).await?;
        self.wait(rx).await?
    }

    /// Who is present on `topic`.
    ///
    /// # Errors
    /// [`ClientError::Server`] (`forbidden`, a bad topic).
    pub async fn presence(&self, topic: &str) -> Result<PresenceList, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Presence {
            topic: topic.into(),
            reply,
        })
        .await?;
        self.wait(rx).await?
    }

    /// A direct message to every connection of client `client`, stored in its inbox
    /// `$inbox.<client>` (read it with [`Client::inbox`] on that client).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn send_to_client(
        &self,
        client: &str,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<PubAck, ClientError> {
        self.direct(Some(client.into()), None, payload.into(), opts)
            .await
    }

    /// A direct message to every client authenticated as `principal`, stored in
    /// `$inbox.@<principal>`.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn send_to_principal(
        &self,
        principal: &str,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<PubAck, ClientError> {
        self.direct(None, Some(principal.into()), payload.into(), opts)
            .await
    }

    /// This client's inbox (`$inbox.<client id>`): direct messages from `start`, then
    /// live. Pass a saved cursor to get what arrived while offline exactly once.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn inbox(&self, start: Start) -> Result<Subscription, ClientError> {
        let topic = format!("$inbox.{}", self.info.client_id);
        self.subscribe(&topic, start).await
    }

    async fn direct(
        &self,
        to_client: Option<String>,
        to_principal: Option<String>,
        payload: Bytes,
        opts: PublishOptions,
    ) -> Result<PubAck, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Send {
            to_client,
            to_principal,
            payload,
            opts,
            reply,
        })
        .await?;
        self.wait(rx).await?
    }

    /// Join a queue group: each message of the matching topics goes to one member of
    /// the group. Deliveries come as [`Event::Msg`] with `queue` and `delivery` set;
    /// answer each with [`Client::ack`], [`Client::nak`], [`Client::progress`] or
    /// [`Client::term`]. After a reconnect the client joins again; what it held when
    /// the connection dropped is delivered again (to any member), and answers for it
    /// then fail with `not_in_flight`.
    ///
    /// # Errors
    /// [`ClientError::Server`] (`queue_conflict`, `forbidden`, `too_many_subscriptions`).
    pub async fn join_queue(
        &self,
        pattern: &str,
        opts: QueueOptions,
    ) -> Result<Subscription, ClientError> {
        let start = opts.start.clone();
        self.subscribe_inner(pattern, start, Some(opts), false)
            .await
    }

    /// The delivery `m` is handled: it is never delivered again in its group.
    ///
    /// # Errors
    /// [`ClientError::Server`] `not_in_flight` (not held by this connection: answered
    /// already, taken back after the ack wait, or held before a reconnect).
    pub async fn ack(&self, m: &Msg) -> Result<(), ClientError> {
        self.answer(m, Verdict::Ack).await
    }

    /// The delivery `m` was not handled: deliver it again after `delay` (zero: now).
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn nak(&self, m: &Msg, delay: Duration) -> Result<(), ClientError> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.answer(m, Verdict::Nak { delay_ms }).await
    }

    /// Still working on `m`: its ack wait starts again.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn progress(&self, m: &Msg) -> Result<(), ClientError> {
        self.answer(m, Verdict::Progress).await
    }

    /// Give up on `m`: it goes to the group's dead-letter topic with `reason`.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn term(&self, m: &Msg, reason: &str) -> Result<(), ClientError> {
        let reason = reason.to_string();
        self.answer(m, Verdict::Term { reason }).await
    }

    async fn answer(&self, m: &Msg, verdict: Verdict) -> Result<(), ClientError> {
        let Some(queue) = m.queue.clone() else {
            return Err(ClientError::Protocol(format!(
                "{} seq {} is not a queue delivery",
                m.topic, m.seq
            )));
        };
        let answer = QueueAnswer {
            id: 0, // the connection task numbers it
            queue,
            topic: m.topic.clone(),
            origin: m.origin.clone(),
            epoch: m.epoch,
            seq: m.seq,
            verdict,
        };
        let (reply, rx) = oneshot::channel();
        self.send(Request::Answer { answer, reply }).await?;
        self.wait(rx).await?
    }

    async fn subscribe_inner(
        &self,
        pattern: &str,
        start: Start,
        queue: Option<QueueOptions>,
        presence: bool,
    ) -> Result<Subscription, ClientError> {
        let (events, rx) = mpsc::channel(self.sub_buffer.max(16));
        let (reply, done) = oneshot::channel();
        let consumed = Arc::new(Mutex::new(Cursor::new()));
        self.send(Request::Subscribe {
            pattern: pattern.into(),
            start,
            queue,
            presence,
            events,
            consumed: consumed.clone(),
            reply,
        })
        .await?;
        let start_cursor = self.wait(done).await??;
        if let (Ok(c), Ok(mut g)) = (Cursor::decode(&start_cursor, usize::MAX), consumed.lock()) {
            g.merge(&c);
        }
        Ok(Subscription {
            pattern: pattern.into(),
            rx,
            consumed,
        })
    }

    /// Drop a subscription.
    ///
    /// # Errors
    /// [`ClientError::Server`] `not_subscribed`.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Unsubscribe {
            pattern: pattern.into(),
            reply,
        })
        .await?;
        self.wait(rx).await?
    }

    /// Read stored messages of one topic.
    ///
    /// # Errors
    /// [`ClientError::Server`] for a bad topic or cursor.
    pub async fn history(
        &self,
        topic: &str,
        start: Start,
        limit: Option<u32>,
    ) -> Result<History, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::History {
            topic: topic.into(),
            start,
            limit,
            reply,
        })
        .await?;
        self.wait(rx).await?
    }

    /// Round trip to the gateway.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Ping { reply }).await?;
        self.wait(rx).await?
    }

    /// Publish an ephemeral message as one QUIC datagram (`quic://` only): not stored, not
    /// acknowledged, delivered best-effort to live subscribers on every transport with
    /// `seq` 0. Returns once the datagram is handed to QUIC; it may still be lost.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] on WebSocket or when the datagram is larger than the path
    /// allows (about 1.1 KiB on a typical path); connection errors.
    pub async fn publish_ephemeral(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Ephemeral {
            topic: topic.into(),
            payload: payload.into(),
            headers,
            reply,
        })
        .await?;
        self.wait(rx).await?
    }

    /// Send raw bytes as one frame (for conformance tests of malformed input).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn send_raw(&self, frame: Vec<u8>) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Raw { frame, reply }).await?;
        self.wait(rx).await?
    }

    /// What the application has consumed from every subscription, merged: pass it as
    /// `ClientOptions::cursor` (or a `Start::Cursor`) to resume elsewhere.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn cursor(&self) -> Result<Cursor, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Cursor { reply }).await?;
        self.wait(rx).await
    }

    /// Close the connection (pending commands fail with [`ClientError::Closed`]).
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, r: Request) -> Result<(), ClientError> {
        self.tx.send(r).await.map_err(|_| ClientError::Closed)
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

/// Per-topic positions as a map (used by tests and tools).
pub fn positions(c: &Cursor, topic: &str) -> BTreeMap<Origin, u64> {
    c.topic(topic).cloned().unwrap_or_default()
}
