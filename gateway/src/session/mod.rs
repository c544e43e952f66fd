//! The session: one client connection's protocol state, with no I/O.
//!
//! [`Session::handle`] takes a decoded command and the current time and returns
//! either a validated [`Command`] for the driver to execute or the error reply
//! to send. Everything a client can get wrong is decided here: ordering
//! (`connect` first, once), topic and pattern rules, header and id bounds,
//! subscription limits, cursors and the publish rate. The async driver in
//! [`driver`] moves frames and executes commands; it makes no protocol decisions.
//!
//! Auth decisions come from an [`Authorizer`] (the plugin layer implements it; with no
//! auth plugins, [`AllowAll`]); the session enforces what it granted on every later
//! command.

mod delivery;
pub mod driver;
#[cfg(test)]
mod driver_tests;
mod execute;
pub mod liveness;

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use edgesync_protocol::topic::{covers, is_system, matches, validate_pattern, validate_topic};
use edgesync_protocol::{
    ClientFrame, Cursor, ErrorCode, Headers, QueueAnswer, ServerFrame, Start, Verdict,
};

use crate::config::Limits;
pub use crate::model::Auth;
use crate::model::{ConnId, ConnInfo, Publish, QueueJoin, Refusal, Sender, SubId};
use crate::pipeline::BoxFuture;

/// Who may connect, and subscribe to what: the auth phases of a session. The plugin
/// layer implements it with the `on-connect` / `on-subscribe` / `on-disconnect` hooks.
pub trait Authorizer: Send + Sync {
    /// At `connect`. `Ok(None)`: no auth configured, everything is allowed.
    fn connect<'a>(
        &'a self,
        conn_id: ConnId,
        client_id: &'a str,
        token: Option<&'a str>,
        info: &'a ConnInfo,
    ) -> BoxFuture<'a, Result<Option<Auth>, Refusal>>;

    /// At `sub`, after the granted patterns allowed it.
    fn subscribe<'a>(
        &'a self,
        sender: &'a Sender,
        pattern: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>>;

    /// The session ended.
    fn disconnect<'a>(&'a self, sender: &'a Sender) -> BoxFuture<'a, ()>;
}

/// No auth: everyone may connect and do anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn connect<'a>(
        &'a self,
        _: ConnId,
        _: &'a str,
        _: Option<&'a str>,
        _: &'a ConnInfo,
    ) -> BoxFuture<'a, Result<Option<Auth>, Refusal>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn subscribe<'a>(&'a self, _: &'a Sender, _: &'a str) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn disconnect<'a>(&'a self, _: &'a Sender) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The rules every stored publish must pass, whoever sends it (a session's `pub`, the
/// admin API): a valid topic, not a reserved `$` topic, headers within bounds with
/// non-empty names, a `mid` within the id bound.
///
/// # Errors
/// The refusal naming the broken rule.
pub fn validate_publish(
    limits: &Limits,
    topic: &str,
    headers: &Headers,
    mid: Option<&str>,
) -> Result<(), Refusal> {
    validate_topic(topic, limits.max_topic_bytes)
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    if is_system(topic) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "topics starting with '$' are reserved for the gateway",
        ));
    }
    validate_body(limits, headers, mid)
}

/// The rules of a publish that do not concern its topic: header bounds with non-empty
/// names, a `mid` within the id bound (a direct message's inbox topic is the gateway's).
///
/// # Errors
/// The refusal naming the broken rule.
pub fn validate_body(limits: &Limits, headers: &Headers, mid: Option<&str>) -> Result<(), Refusal> {
    if headers.len() > limits.max_headers || headers.byte_len() > limits.max_header_bytes {
        return Err(Refusal::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "{} headers / {} bytes; limits are {} / {}",
                headers.len(),
                headers.byte_len(),
                limits.max_headers,
                limits.max_header_bytes
            ),
        ));
    }
    if headers.0.iter().any(|(k, _)| k.is_empty()) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "header names must not be empty",
        ));
    }
    if let Some(m) = mid {
        validate_id(limits, "mid", m)?;
    }
    Ok(())
}

/// A client id or client message id: 1 to `limits.max_id_bytes` bytes.
///
/// # Errors
/// `bad_request` naming `field`.
pub fn validate_id(limits: &Limits, field: &str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() || value.len() > limits.max_id_bytes {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("{field} must be 1-{} bytes", limits.max_id_bytes),
        ));
    }
    Ok(())
}

/// Characters a client id may hold besides ASCII letters and digits.
pub const CLIENT_ID_PUNCTUATION: &str = "-_.:@+/=~";

/// A client id: 1 to `limits.max_id_bytes` bytes of ASCII letters, digits and
/// [`CLIENT_ID_PUNCTUATION`]. Other clients see it (in `msg` pushes) and it scopes
/// idempotent publish, so it may not hold control characters (log and terminal
/// injection), `$` (the gateway's own `$plugin.<name>` senders), spaces or look-alike
/// Unicode.
///
/// # Errors
/// `bad_request` naming the first byte that is not allowed.
pub fn validate_client_id(limits: &Limits, value: &str) -> Result<(), Refusal> {
    validate_id(limits, "client_id", value)?;
    match value
        .bytes()
        .position(|b| !b.is_ascii_alphanumeric() && !CLIENT_ID_PUNCTUATION.as_bytes().contains(&b))
    {
        None => Ok(()),
        Some(i) => Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "client_id may hold only ASCII letters, digits and {CLIENT_ID_PUNCTUATION}; byte {i} is {:?}",
                value[i..].chars().next().unwrap_or_default()
            ),
        )),
    }
}

/// The queue options of a `sub`, with defaults filled in and bounds checked. The group
/// name must be one topic segment (it names the dead-letter topic `$dlq.queue.<group>`).
fn queue_join(
    id: u64,
    group: String,
    max_unacked: Option<u32>,
    ack_wait_ms: Option<u64>,
    max_deliveries: Option<u32>,
    ordering: Option<edgesync_protocol::Ordering>,
) -> Result<QueueJoin, Reply> {
    let bad = |m: String| err(id, ErrorCode::BadRequest, m);
    if group.is_empty() || group.contains('.') || group.len() > 64 {
        return Err(bad(format!("queue {group:?}: 1 to 64 bytes without '.'")));
    }
    validate_topic(&format!("q.{group}"), 256).map_err(|e| bad(format!("queue {group:?}: {e}")))?;
    let max_unacked = max_unacked.unwrap_or(QueueJoin::DEFAULT_MAX_UNACKED);
    if !(1..=QueueJoin::MAX_MAX_UNACKED).contains(&max_unacked) {
        return Err(bad(format!(
            "max_unacked {max_unacked}: 1 to {}",
            QueueJoin::MAX_MAX_UNACKED
        )));
    }
    let ack_wait_ms = ack_wait_ms.unwrap_or(QueueJoin::DEFAULT_ACK_WAIT_MS);
    if !QueueJoin::ACK_WAIT_MS_RANGE.contains(&ack_wait_ms) {
        return Err(bad(format!(
            "ack_wait_ms {ack_wait_ms}: {:?}",
            QueueJoin::ACK_WAIT_MS_RANGE
        )));
    }
    let max_deliveries = max_deliveries.unwrap_or(QueueJoin::DEFAULT_MAX_DELIVERIES);
    if !(1..=QueueJoin::MAX_MAX_DELIVERIES).contains(&max_deliveries) {
        return Err(bad(format!(
            "max_deliveries {max_deliveries}: 1 to {}",
            QueueJoin::MAX_MAX_DELIVERIES
        )));
    }
    Ok(QueueJoin {
        group,
        max_unacked,
        ack_wait_ms,
        max_deliveries,
        ordering: ordering.unwrap_or_default(),
    })
}

pub use crate::model::StartAt;

/// A validated command for the driver.
#[derive(Debug)]
pub enum Command {
    Connect {
        id: u64,
        client_id: String,
        token: Option<String>,
    },
    Subscribe {
        id: u64,
        pattern: String,
        start: StartAt,
        /// Set when the `sub` joins a queue group.
        queue: Option<QueueJoin>,
        /// Be present on `pattern` and watch its joins and leaves.
        presence: bool,
    },
    /// `unsub` of a queue group membership.
    LeaveQueue {
        id: u64,
        pattern: String,
        group: String,
    },
    /// Who is present on `topic`.
    Presence {
        id: u64,
        topic: String,
    },
    /// `ack`, `nak`, `progress` or `term` of a queue delivery.
    Answer(QueueAnswer),
    Unsubscribe {
        id: u64,
        pattern: String,
        sub: SubId,
        /// The subscription was a presence one: leave the topic's presence too.
        presence: bool,
    },
    Publish {
        id: u64,
        req: Publish,
        ack: bool,
    },
    /// `pub_batch`: stored all or nothing.
    PublishBatch {
        id: u64,
        reqs: Vec<Publish>,
    },
    History {
        id: u64,
        topic: String,
        start: StartAt,
        limit: usize,
    },
    Ping {
        id: u64,
    },
}

impl Command {
    /// Metric label for the command type.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Connect { .. } => "connect",
            Command::Subscribe { .. } => "sub",
            Command::Unsubscribe { .. } | Command::LeaveQueue { .. } => "unsub",
            Command::Presence { .. } => "presence",
            Command::Publish { .. } => "pub",
            Command::PublishBatch { .. } => "pub_batch",
            Command::History { .. } => "history",
            Command::Ping { .. } => "ping",
            Command::Answer(a) => verdict_kind(&a.verdict),
        }
    }
}

/// Metric label for a raw frame's command type.
pub fn frame_kind(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Connect { .. } => "connect",
        ClientFrame::Sub { .. } => "sub",
        ClientFrame::Unsub { .. } => "unsub",
        ClientFrame::Pub { .. } => "pub",
        ClientFrame::History { .. } => "history",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::Nak { .. } => "nak",
        ClientFrame::Progress { .. } => "progress",
        ClientFrame::Term { .. } => "term",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::Send { .. } => "send",
        ClientFrame::PubBatch { .. } => "pub_batch",
    }
}

fn verdict_kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Ack => "ack",
        Verdict::Nak { .. } => "nak",
        Verdict::Progress => "progress",
        Verdict::Term { .. } => "term",
    }
}

/// Token bucket for the publish rate: `rate` tokens per second, burst `rate`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate_per_sec),
            tokens: f64::from(rate_per_sec),
            last: now,
        }
    }

    /// Take `n` tokens if that many are available (none otherwise).
    pub fn take_n(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Take one token if available.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(1, now)
    }
}

/// An ephemeral publish as carried by a QUIC datagram: the `pub` frame shape, with `id`
/// optional (and ignored, like `mid` and `ack`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct EphemeralPub {
    /// Frame type; must be `pub`.
    pub t: String,
    /// Accepted so a client may send its `pub` map as it is; never read (a datagram
    /// gets no reply).
    #[serde(default)]
    pub id: Option<u64>,
    pub topic: String,
    pub data: edgesync_protocol::Payload,
    #[serde(default)]
    pub headers: Headers,
    /// Accepted, never read: nothing is stored, so there is nothing to deduplicate.
    #[serde(default)]
    pub mid: Option<String>,
    /// Accepted, never read: a datagram is never acknowledged.
    #[serde(default)]
    pub ack: Option<bool>,
}

/// Inbox topics of direct messages: `$inbox.<client>`, `$inbox.@<principal>`.
pub const INBOX: &str = "$inbox.";

/// Protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    client_id: Option<String>,
    auth: Option<Auth>,
    connect_cursor: Option<Cursor>,
    subs: HashMap<String, SubId>,
    /// Queue group memberships: pattern → group.
    queues: HashMap<String, String>,
    /// Plain subscriptions that are also present on their pattern.
    presence: std::collections::HashSet<String>,
    bucket: TokenBucket,
}

type Reply = Box<ServerFrame>;

fn err(id: u64, code: ErrorCode, msg: impl Into<String>) -> Reply {
    Box::new(ServerFrame::error(Some(id), code, msg))
}

impl Session {
    pub fn new(limits: Limits, now: Instant) -> Self {
        let bucket = TokenBucket::new(limits.publish_rate_per_sec, now);
        Session {
            limits,
            client_id: None,
            auth: None,
            connect_cursor: None,
            subs: HashMap::new(),
            queues: HashMap::new(),
            presence: std::collections::HashSet::new(),
            bucket,
        }
    }

    /// The client id once connected.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The authenticated principal, if auth assigned one.
    pub fn principal(&self) -> Option<&str> {
        self.auth.as_ref().map(|a| a.principal.as_str())
    }

    /// Record what the auth hooks decided; enforced on every later publish and subscribe.
    pub fn set_auth(&mut self, auth: Option<Auth>) {
        self.auth = auth;
    }

    /// Subscriptions held, by pattern.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&String, &SubId)> {
        self.subs.iter()
    }

    /// Remember a subscription the broker accepted.
    pub fn add_subscription(&mut self, pattern: String, sub: SubId) {
        self.subs.insert(pattern, sub);
    }

    /// Remember that the subscription on `pattern` is present there.
    pub fn add_presence(&mut self, pattern: String) {
        self.presence.insert(pattern);
    }

    /// Remember a queue group membership the gateway accepted.
    pub fn add_queue(&mut self, pattern: String, group: String) {
        self.queues.insert(pattern, group);
    }

    /// Forget the session (connect failed auth).
    pub fn reset_connect(&mut self) {
        self.client_id = None;
    }

    /// Validate one command.
    ///
    /// # Errors
    /// The error reply to send (the connection stays open).
    pub fn handle(&mut self, frame: ClientFrame, now: Instant) -> Result<Command, Reply> {
        let id = frame.id();
        if self.client_id.is_none()
            && !matches!(
                frame,
                ClientFrame::Connect { .. } | ClientFrame::Ping { .. }
            )
        {
            return Err(err(id, ErrorCode::NotConnected, "send connect first"));
        }
        match frame {
            ClientFrame::Connect {
                id,
                token,
                client_id,
                cursor,
            } => self.connect(id, token, client_id, cursor),
            ClientFrame::Sub {
                id,
                topic,
                start,
                queue,
                max_unacked,
                ack_wait_ms,
                max_deliveries,
                ordering,
                presence,
            } => {
                if presence && queue.is_some() {
                    return Err(err(
                        id,
                        ErrorCode::BadRequest,
                        "presence is for plain subscriptions, not queue members",
                    ));
                }
                let queue = match queue {
                    Some(group) => Some(queue_join(
                        id,
                        group,
                        max_unacked,
                        ack_wait_ms,
                        max_deliveries,
                        ordering,
                    )?),
                    None => None,
                };
                self.subscribe(id, topic, start, queue, presence)
            }
            ClientFrame::Unsub { id, topic } => match self.subs.remove(&topic) {
                Some(sub) => Ok(Command::Unsubscribe {
                    id,
                    presence: self.presence.remove(&topic),
                    pattern: topic,
                    sub,
                }),
                None if self.queues.contains_key(&topic) => {
                    let group = self.queues.remove(&topic).unwrap_or_default();
                    Ok(Command::LeaveQueue {
                        id,
                        pattern: topic,
                        group,
                    })
                }
                None => Err(err(
                    id,
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to {topic:?}"),
                )),
            },
            ClientFrame::Pub {
                id,
                topic,
                data,
                headers,
                mid,
                ack,
            } => self.publish(id, topic, data.0, headers, mid, ack, now),
            ClientFrame::History {
                id,
                topic,
                start,
                limit,
            } => {
                validate_topic(&topic, self.limits.max_topic_bytes)
                    .map_err(|e| err(id, e.code(), e.to_string()))?;
                self.authorize_read(id, &topic)?;
                let start = self.start(id, start.unwrap_or(Start::Earliest))?;
                let limit = limit
                    .unwrap_or(self.limits.max_history)
                    .min(self.limits.max_history)
                    .max(1) as usize;
                Ok(Command::History {
                    id,
                    topic,
                    start,
                    limit,
                })
            }
            ClientFrame::Ping { id } => Ok(Command::Ping { id }),
            ClientFrame::Presence { id, topic } => {
                validate_pattern(&topic, self.limits.max_topic_bytes)
                    .map_err(|e| err(id, e.code(), e.to_string()))?;
                self.authorize_read(id, &topic)?;
                Ok(Command::Presence { id, topic })
            }
            ClientFrame::Send {
                id,
                to_client,
                to_principal,
                data,
                headers,
                mid,
            } => {
                let topic = self.inbox_of(id, to_client, to_principal)?;
                validate_body(&self.limits, &headers, mid.as_deref())
                    .map_err(|r| err(id, r.code, r.message))?;
                self.publish_to(id, topic, data.0, headers, mid, true, now)
            }
            ClientFrame::PubBatch { id, msgs } => self.publish_batch(id, msgs, now),
            other => match QueueAnswer::from_frame(other) {
                Ok(a) => self.answer(a),
                Err(f) => Err(err(
                    f.id(),
                    ErrorCode::Internal,
                    format!("unhandled command {}", frame_kind(&f)),
                )),
            },
        }
    }

    /// An `ack`/`nak`/`progress`/`term`: well-formed, within bounds. Whether this
    /// connection holds the delivery is the queue group's decision.
    fn answer(&self, a: QueueAnswer) -> Result<Command, Reply> {
        if let Verdict::Nak { delay_ms } = a.verdict
            && delay_ms > QueueJoin::MAX_NAK_DELAY_MS
        {
            return Err(err(
                a.id,
                ErrorCode::BadRequest,
                format!(
                    "delay_ms {delay_ms} is above {}",
                    QueueJoin::MAX_NAK_DELAY_MS
                ),
            ));
        }
        if let Verdict::Term { reason } = &a.verdict
            && reason.len() > self.limits.max_header_bytes
        {
            return Err(err(
                a.id,
                ErrorCode::BadRequest,
                format!(
                    "reason is {} bytes; limits.max_header_bytes is {}",
                    reason.len(),
                    self.limits.max_header_bytes
                ),
            ));
        }
        Ok(Command::Answer(a))
    }

    /// Validate an ephemeral publish (one QUIC datagram) with exactly the rules of a `pub`
    /// command: connected first, topic, reserved `$` topics, header bounds and the same
    /// publish-rate bucket. `id`, `mid` and `ack` are ignored: nothing is stored or acked.
    ///
    /// # Errors
    /// The error reply that a `pub` would get (the driver counts it; datagrams get no reply).
    pub fn handle_ephemeral(&mut self, p: EphemeralPub, now: Instant) -> Result<Publish, Reply> {
        if p.t != "pub" {
            return Err(err(
                0,
                ErrorCode::BadRequest,
                format!("a datagram carries a pub frame, not {:?}", p.t),
            ));
        }
        let frame = ClientFrame::Pub {
            id: 0,
            topic: p.topic,
            data: p.data,
            headers: p.headers,
            mid: None,
            ack: false,
        };
        match self.handle(frame, now)? {
            Command::Publish { req, .. } => Ok(req),
            other => Err(err(
                0,
                ErrorCode::Internal,
                format!("unexpected command {}", other.kind()),
            )),
        }
    }

    fn connect(
        &mut self,
        id: u64,
        token: Option<String>,
        client_id: Option<String>,
        cursor: Option<String>,
    ) -> Result<Command, Reply> {
        if self.client_id.is_some() {
            return Err(err(
                id,
                ErrorCode::AlreadyConnected,
                "connect was already sent",
            ));
        }
        let client_id = match client_id {
            Some(c) => {
                validate_client_id(&self.limits, &c).map_err(|r| err(id, r.code, r.message))?;
                c
            }
            None => format!("c-{:016x}", rand::random::<u64>()),
        };
        if let Some(text) = cursor {
            let c = Cursor::decode(&text, self.limits.max_cursor_bytes)
                .map_err(|e| err(id, ErrorCode::CursorInvalid, e.to_string()))?;
            self.connect_cursor = Some(c);
        }
        self.client_id = Some(client_id.clone());
        Ok(Command::Connect {
            id,
            client_id,
            token,
        })
    }

    fn subscribe(
        &mut self,
        id: u64,
        pattern: String,
        start: Option<Start>,
        queue: Option<QueueJoin>,
        presence: bool,
    ) -> Result<Command, Reply> {
        validate_pattern(&pattern, self.limits.max_topic_bytes)
            .map_err(|e| err(id, e.code(), e.to_string()))?;
        self.authorize_read(id, &pattern)?;
        let start = match start {
            Some(s) => self.start(id, s)?,
            None => match &self.connect_cursor {
                Some(c) => StartAt::Cursor(c.clone()),
                None => StartAt::Latest,
            },
        };
        if self.subs.contains_key(&pattern) || self.queues.contains_key(&pattern) {
            return Err(err(
                id,
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {pattern:?}"),
            ));
        }
        if self.subs.len() + self.queues.len() >= self.limits.max_subscriptions {
            return Err(err(
                id,
                ErrorCode::TooManySubscriptions,
                format!(
                    "limit is {} subscriptions per connection",
                    self.limits.max_subscriptions
                ),
            ));
        }
        Ok(Command::Subscribe {
            id,
            pattern,
            start,
            queue,
            presence,
        })
    }

    /// A `pub_batch`: every message passes the rules of a `pub` (the first that does
    /// not names the whole batch's refusal, with its index), one rate token each.
    fn publish_batch(
        &mut self,
        id: u64,
        msgs: Vec<edgesync_protocol::BatchMsg>,
        now: Instant,
    ) -> Result<Command, Reply> {
        let max = self.limits.max_inflight_publishes;
        if msgs.is_empty() || msgs.len() > max {
            return Err(err(
                id,
                ErrorCode::BadRequest,
                format!(
                    "a batch holds 1 to {max} messages (limits.max_inflight_publishes); this one {}",
                    msgs.len()
                ),
            ));
        }
        let mut reqs = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.into_iter().enumerate() {
            validate_publish(&self.limits, &m.topic, &m.headers, m.mid.as_deref())
                .map_err(|r| err(id, r.code, format!("message {i}: {}", r.message)))?;
            self.granted(&m.topic)
                .map_err(|why| err(id, ErrorCode::Forbidden, format!("message {i}: {why}")))?;
            reqs.push(Publish {
                topic: m.topic,
                client: self.client_id.clone().unwrap_or_default(),
                principal: self.principal().map(str::to_string),
                mid: m.mid,
                headers: m.headers,
                payload: m.data.0,
            });
        }
        if !self.bucket.take_n(reqs.len(), now) {
            return Err(err(
                id,
                ErrorCode::RateLimited,
                format!(
                    "a batch of {} is more than the publish rate allows now (limit {} per second per connection)",
                    reqs.len(),
                    self.limits.publish_rate_per_sec
                ),
            ));
        }
        Ok(Command::PublishBatch { id, reqs })
    }

    /// The inbox topic of a direct message: `$inbox.<client>` or `$inbox.@<principal>`.
    fn inbox_of(
        &self,
        id: u64,
        to_client: Option<String>,
        to_principal: Option<String>,
    ) -> Result<String, Reply> {
        let topic = match (to_client, to_principal) {
            (Some(c), None) => {
                validate_client_id(&self.limits, &c).map_err(|r| err(id, r.code, r.message))?;
                if c.starts_with('@') {
                    return Err(err(
                        id,
                        ErrorCode::BadRequest,
                        "a client id starting with '@' has no inbox ('@' names principals)",
                    ));
                }
                format!("{INBOX}{c}")
            }
            (None, Some(p)) => format!("{INBOX}@{p}"),
            _ => {
                return Err(err(
                    id,
                    ErrorCode::BadRequest,
                    "send needs exactly one of to_client and to_principal",
                ));
            }
        };
        validate_topic(&topic, self.limits.max_topic_bytes)
            .map_err(|e| err(id, e.code(), format!("no inbox for that name: {e}")))?;
        Ok(topic)
    }

    /// The one read check, shared by every path that returns stored or live messages
    /// (`sub` from any start, the connect cursor — which only ever narrows a `sub` —
    /// and `history`): the granted subscribe patterns must cover `pattern`. A grant
    /// covers a `$` topic only when it names it (`$dlq.>`, not `>`). The driver then
    /// asks the [`Authorizer`] (`on-subscribe`) before reading anything.
    fn authorize_read(&self, id: u64, pattern: &str) -> Result<(), Reply> {
        if let Some(rest) = pattern.strip_prefix(INBOX) {
            // An inbox is read by its owner (the client, or connections authenticated as
            // the principal) — or by a grant that names inboxes explicitly (operators).
            let own = match rest.strip_prefix('@') {
                Some(p) => self.principal() == Some(p),
                None => self.client_id() == Some(rest),
            };
            let granted = self.auth.as_ref().is_some_and(|a| {
                a.subscribe
                    .iter()
                    .any(|g| g.starts_with(INBOX) && covers(g, pattern))
            });
            if own || granted {
                return Ok(());
            }
            return Err(err(
                id,
                ErrorCode::Forbidden,
                format!("{pattern:?} is another client's inbox"),
            ));
        }
        if pattern == "$inbox" || pattern.starts_with("$inbox.") {
            return Err(err(id, ErrorCode::Forbidden, "inboxes are read one by one"));
        }
        match &self.auth {
            Some(a) if !a.subscribe.iter().any(|g| covers(g, pattern)) => Err(err(
                id,
                ErrorCode::Forbidden,
                format!("{} may not read {pattern:?}", a.principal),
            )),
            _ => Ok(()),
        }
    }

    fn start(&self, id: u64, s: Start) -> Result<StartAt, Reply> {
        Ok(match s {
            Start::Latest => StartAt::Latest,
            Start::Earliest => StartAt::Earliest,
            Start::Last(n) => StartAt::Last(n),
            Start::Cursor(text) => StartAt::Cursor(
                Cursor::decode(&text, self.limits.max_cursor_bytes)
                    .map_err(|e| err(id, ErrorCode::CursorInvalid, e.to_string()))?,
            ),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        id: u64,
        topic: String,
        payload: Bytes,
        headers: Headers,
        mid: Option<String>,
        ack: bool,
        now: Instant,
    ) -> Result<Command, Reply> {
        validate_publish(&self.limits, &topic, &headers, mid.as_deref())
            .map_err(|r| err(id, r.code, r.message))?;
        self.publish_to(id, topic, payload, headers, mid, ack, now)
    }

    /// The publish grants must cover `topic`; `Err` is the `forbidden` text.
    fn granted(&self, topic: &str) -> Result<(), String> {
        match &self.auth {
            Some(a) if !a.publish.iter().any(|g| matches(g, topic)) => {
                Err(format!("{} may not publish to {topic:?}", a.principal))
            }
            _ => Ok(()),
        }
    }

    /// A publish to `topic` whose rules were checked (a `pub`'s, or an inbox's): the
    /// grants, the rate.
    #[allow(clippy::too_many_arguments)]
    fn publish_to(
        &mut self,
        id: u64,
        topic: String,
        payload: Bytes,
        headers: Headers,
        mid: Option<String>,
        ack: bool,
        now: Instant,
    ) -> Result<Command, Reply> {
        self.granted(&topic)
            .map_err(|m| err(id, ErrorCode::Forbidden, m))?;
        if !self.bucket.take(now) {
            return Err(err(
                id,
                ErrorCode::RateLimited,
                format!(
                    "limit is {} publishes per second per connection",
                    self.limits.publish_rate_per_sec
                ),
            ));
        }
        let client = self.client_id.clone().unwrap_or_default();
        Ok(Command::Publish {
            id,
            req: Publish {
                topic,
                client,
                principal: self.principal().map(str::to_string),
                mid,
                headers,
                payload,
            },
            ack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesync_protocol::Payload;
    use std::time::Duration;

    fn connected() -> (Session, Instant) {
        let now = Instant::now();
        let mut s = Session::new(
            Limits {
                publish_rate_per_sec: 2,
                max_subscriptions: 1,
                ..Limits::default()
            },
            now,
        );
        s.handle(
            ClientFrame::Connect {
                id: 1,
                token: None,
                client_id: Some("c".into()),
                cursor: None,
            },
            now,
        )
        .expect("connect");
        (s, now)
    }

    fn code(r: Result<Command, Reply>) -> ErrorCode {
        match r.map_err(|b| *b) {
            Err(ServerFrame::Error { code, .. }) => code,
            other => panic!("expected error, got {other:?}"),
        }
    }

    fn publish(topic: &str) -> ClientFrame {
        ClientFrame::Pub {
            id: 2,
            topic: topic.into(),
            data: Payload::from("x"),
            headers: Headers::default(),
            mid: None,
            ack: true,
        }
    }

    #[test]
    fn commands_before_connect_are_refused() {
        let mut s = Session::new(Limits::default(), Instant::now());
        assert_eq!(
            code(s.handle(publish("a"), Instant::now())),
            ErrorCode::NotConnected
        );
        assert!(
            s.handle(ClientFrame::Ping { id: 1 }, Instant::now())
                .is_ok()
        );
    }

    #[test]
    fn limits_answer_with_their_codes() {
        let (mut s, now) = connected();
        assert_eq!(
            code(s.handle(
                ClientFrame::Connect {
                    id: 3,
                    token: None,
                    client_id: None,
                    cursor: None
                },
                now
            )),
            ErrorCode::AlreadyConnected
        );
        assert_eq!(
            code(s.handle(publish("a..b"), now)),
            ErrorCode::TopicInvalid
        );
        assert_eq!(
            code(s.handle(publish(&"x".repeat(300)), now)),
            ErrorCode::TopicTooLong
        );
        assert_eq!(code(s.handle(publish("$sys"), now)), ErrorCode::Forbidden);
        assert_eq!(code(s.handle(publish("a.*"), now)), ErrorCode::TopicInvalid);
        let many = Headers((0..40).map(|i| (format!("h{i}"), "v".into())).collect());
        let f = ClientFrame::Pub {
            id: 4,
            topic: "a".into(),
            data: Payload::from("x"),
            headers: many,
            mid: None,
            ack: true,
        };
        assert_eq!(code(s.handle(f, now)), ErrorCode::HeadersTooLarge);
        assert!(s.handle(publish("a"), now).is_ok());
        assert!(s.handle(publish("a"), now).is_ok());
        assert_eq!(code(s.handle(publish("a"), now)), ErrorCode::RateLimited);
        assert!(
            s.handle(publish("a"), now + Duration::from_millis(600))
                .is_ok(),
            "bucket refills"
        );
        assert_eq!(
            code(s.handle(
                ClientFrame::sub(8, "q".into(), Some(Start::Cursor("!!".into()))),
                now
            )),
            ErrorCode::CursorInvalid
        );
        let sub = s
            .handle(ClientFrame::sub(5, "a.>".into(), None), now)
            .expect("sub");
        assert!(matches!(
            sub,
            Command::Subscribe {
                start: StartAt::Latest,
                ..
            }
        ));
        s.add_subscription("a.>".into(), SubId(1));
        assert_eq!(
            code(s.handle(ClientFrame::sub(6, "a.>".into(), None), now)),
            ErrorCode::AlreadySubscribed
        );
        assert_eq!(
            code(s.handle(ClientFrame::sub(6, "b".into(), None), now)),
            ErrorCode::TooManySubscriptions
        );
        assert_eq!(
            code(s.handle(
                ClientFrame::Unsub {
                    id: 7,
                    topic: "zz".into()
                },
                now
            )),
            ErrorCode::NotSubscribed
        );
    }

    #[test]
    fn auth_permissions_are_enforced() {
        let (mut s, now) = connected();
        s.set_auth(Some(Auth {
            principal: "u1".into(),
            publish: vec!["chat.u1.>".into()],
            subscribe: vec!["chat.*".into()],
        }));
        assert_eq!(
            code(s.handle(publish("chat.u2.x"), now)),
            ErrorCode::Forbidden
        );
        assert!(s.handle(publish("chat.u1.x"), now).is_ok());
        assert_eq!(
            code(s.handle(ClientFrame::sub(3, "chat.>".into(), None), now)),
            ErrorCode::Forbidden
        );
        assert!(
            s.handle(ClientFrame::sub(4, "chat.room".into(), None), now)
                .is_ok()
        );
        assert_eq!(s.principal(), Some("u1"));
    }

    #[test]
    fn connect_cursor_is_the_default_start() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now);
        let mut c = Cursor::new();
        c.observe("a", &edgesync_protocol::Origin::new("n", 1), 3);
        s.handle(
            ClientFrame::Connect {
                id: 1,
                token: None,
                client_id: None,
                cursor: Some(c.encode()),
            },
            now,
        )
        .expect("connect");
        assert!(s.client_id().is_some_and(|c| c.starts_with("c-")));
        match s
            .handle(ClientFrame::sub(2, "a".into(), None), now)
            .expect("sub")
        {
            Command::Subscribe {
                start: StartAt::Cursor(got),
                ..
            } => assert_eq!(got, c),
            other => panic!("{other:?}"),
        }
    }
    #[test]
    fn client_ids_are_restricted_and_the_error_names_the_byte() {
        let l = Limits::default();
        for good in ["a", "sensor-7", "u@x.org", "A.b:c_d+e/f=g~h"] {
            assert!(validate_client_id(&l, good).is_ok(), "{good}");
        }
        for (bad, byte) in [("a b", 1), ("$plugin.x", 0), ("ok\n", 2), ("\u{ff04}x", 0)] {
            let r = validate_client_id(&l, bad).expect_err(bad);
            assert_eq!(r.code, ErrorCode::BadRequest);
            assert!(r.message.contains(&format!("byte {byte}")), "{}", r.message);
        }
        assert!(validate_client_id(&l, "").is_err());
        assert!(validate_client_id(&l, &"x".repeat(129)).is_err());
    }

    #[test]
    fn history_is_checked_like_sub() {
        let (mut s, now) = connected();
        s.set_auth(Some(Auth {
            principal: "u1".into(),
            publish: vec![],
            subscribe: vec!["chat.>".into(), ">".into()],
        }));
        let history = |topic: &str| ClientFrame::History {
            id: 9,
            topic: topic.into(),
            start: None,
            limit: None,
        };
        assert!(s.handle(history("chat.room"), now).is_ok());
        assert!(
            s.handle(history("other.room"), now).is_ok(),
            "`>` covers it"
        );
        assert_eq!(
            code(s.handle(history("$dlq.auth"), now)),
            ErrorCode::Forbidden,
            "`>` never covers a `$` topic"
        );
        s.set_auth(Some(Auth {
            principal: "u2".into(),
            publish: vec![],
            subscribe: vec!["mine.>".into()],
        }));
        assert_eq!(
            code(s.handle(history("chat.room"), now)),
            ErrorCode::Forbidden
        );
    }

    fn queue_sub(group: &str, max_unacked: Option<u32>, ack_wait_ms: Option<u64>) -> ClientFrame {
        ClientFrame::Sub {
            id: 9,
            topic: "jobs.>".into(),
            start: Some(Start::Earliest),
            queue: Some(group.into()),
            max_unacked,
            ack_wait_ms,
            max_deliveries: None,
            ordering: None,
            presence: false,
        }
    }

    #[test]
    fn queue_options_are_checked_and_defaulted() {
        let (mut s, now) = connected();
        match s.handle(queue_sub("resize", None, None), now).expect("sub") {
            Command::Subscribe { queue: Some(q), .. } => {
                assert_eq!(q.group, "resize");
                assert_eq!(q.max_unacked, QueueJoin::DEFAULT_MAX_UNACKED);
                assert_eq!(q.ack_wait_ms, QueueJoin::DEFAULT_ACK_WAIT_MS);
                assert_eq!(q.max_deliveries, QueueJoin::DEFAULT_MAX_DELIVERIES);
                assert_eq!(q.ordering, edgesync_protocol::Ordering::Parallel);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            queue_sub("a.b", None, None),
            queue_sub("", None, None),
            queue_sub("a*", None, None),
            queue_sub("ok", Some(0), None),
            queue_sub("ok", None, Some(5)),
        ] {
            assert_eq!(
                code(s.handle(bad.clone(), now)),
                ErrorCode::BadRequest,
                "{bad:?}"
            );
        }
        let nak = |delay_ms| {
            QueueAnswer {
                id: 3,
                queue: "resize".into(),
                topic: "jobs.a".into(),
                origin: "n".into(),
                epoch: 1,
                seq: 1,
                verdict: Verdict::Nak { delay_ms },
            }
            .into_frame()
        };
        assert!(matches!(s.handle(nak(10), now), Ok(Command::Answer(_))));
        assert_eq!(
            code(s.handle(nak(QueueJoin::MAX_NAK_DELAY_MS + 1), now)),
            ErrorCode::BadRequest
        );
    }
}
