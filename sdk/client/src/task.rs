//! The client's background task: owns the connection, matches replies to
//! commands, routes pushes to subscriptions, and reconnects and resumes.
//!
//! The task never waits for the application: a subscription whose buffer is full
//! keeps what it cannot deliver as a `gap` event (reason `slow_consumer`) that it
//! hands over once the application has made room, so one unread subscription holds
//! back neither the others nor publish acks.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use edgesync_protocol::frame::GapReason;
use edgesync_protocol::topic::matches;
use edgesync_protocol::{ClientFrame, Cursor, Encoding, Origin, Payload, ServerFrame, Start};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::conn::Conn;
use crate::{
    ClientError, ClientOptions, Event, History, Msg, PubAck, PublishOptions, QueueOptions, Request,
    SessionInfo,
};

/// Where a publish goes: a topic, or a direct message's inbox.
enum Dest {
    Topic(String),
    Client(String),
    Principal(String),
}

enum Inflight {
    Publish {
        topic: Dest,
        payload: bytes::Bytes,
        opts: PublishOptions,
        reply: Option<oneshot::Sender<Result<PubAck, ClientError>>>,
    },
    Subscribe {
        /// The subscription's key in [`Task::subs`].
        sub: u64,
        reply: Option<oneshot::Sender<Result<String, ClientError>>>,
    },
    Unsubscribe {
        /// The subscriptions with the pattern when `unsub` was sent (a later `sub` of the
        /// same pattern is a different subscription and stays).
        subs: Vec<u64>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    History {
        reply: oneshot::Sender<Result<History, ClientError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// A queue answer, waiting for `ok`.
    Answer {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Presence {
        reply: oneshot::Sender<Result<crate::PresenceList, ClientError>>,
    },
    /// A `pub_batch`: resent as it is (same mids) after a reconnect.
    Batch {
        msgs: Vec<edgesync_protocol::BatchMsg>,
        reply: oneshot::Sender<Result<Vec<PubAck>, ClientError>>,
    },
}

struct SubState {
    pattern: String,
    events: mpsc::Sender<Event>,
    /// What this subscription has delivered: the resume point after a reconnect.
    position: Cursor,
    /// Cleared by unsubscribe.
    active: bool,
    /// Takes untagged (live) pushes: a `latest` subscription from the start, any other
    /// once the gateway's `live` push ends its catch-up (protocol version 2).
    live: bool,
    /// What the application has taken (shared with the `Subscription`).
    consumed: std::sync::Arc<std::sync::Mutex<Cursor>>,
    /// Events waiting for room in `events`, oldest first: gaps only (messages that did
    /// not fit become a `slow_consumer` gap, merged per topic and origin), so the
    /// backlog is bounded by the topics and origins the subscription sees.
    backlog: VecDeque<Event>,
    /// Set for a queue group membership: it takes the group's deliveries only.
    queue: Option<QueueOptions>,
    /// Present on its pattern: takes its `join`/`leave` pushes.
    presence: bool,
}

impl SubState {
    fn new(
        pattern: String,
        events: mpsc::Sender<Event>,
        consumed: std::sync::Arc<std::sync::Mutex<Cursor>>,
    ) -> Self {
        SubState {
            pattern,
            events,
            position: Cursor::new(),
            active: true,
            live: false,
            consumed,
            backlog: VecDeque::new(),
            queue: None,
            presence: false,
        }
    }

    /// The `sub` command for this subscription from `start`.
    fn frame(&self, id: u64, start: Start) -> ClientFrame {
        match &self.queue {
            None => ClientFrame::Sub {
                id,
                topic: self.pattern.clone(),
                start: Some(start),
                queue: None,
                max_unacked: None,
                ack_wait_ms: None,
                max_deliveries: None,
                ordering: None,
                presence: self.presence,
            },
            Some(q) => ClientFrame::Sub {
                id,
                topic: self.pattern.clone(),
                start: Some(q.start.clone()),
                queue: Some(q.group.clone()),
                max_unacked: q.max_unacked,
                ack_wait_ms: q.ack_wait_ms,
                max_deliveries: q.max_deliveries,
                ordering: q.ordering,
                presence: false,
            },
        }
    }

    /// Hand a stored message to the application without waiting: behind a backlog, or
    /// into a full buffer, it becomes part of a gap instead.
    fn offer_msg(&mut self, m: &Msg) {
        self.flush_backlog();
        if self.backlog.is_empty() {
            match self.events.try_send(Event::Msg(m.clone())) {
                Ok(()) | Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(_)) => {}
            }
        }
        let origin = Origin::new(m.origin.clone(), m.epoch);
        self.add_gap(&m.topic, origin, m.seq, m.seq, GapReason::SlowConsumer);
    }

    /// Hand a gap to the application, after anything already waiting.
    fn offer_gap(&mut self, ev: Event) {
        self.flush_backlog();
        if !self.backlog.is_empty() {
            self.backlog.push_back(ev);
        } else if let Err(TrySendError::Full(ev)) = self.events.try_send(ev) {
            self.backlog.push_back(ev);
        }
    }

    /// Extend the waiting gap of (`topic`, `origin`) that ends just before `from`, or
    /// queue a new one.
    fn add_gap(&mut self, topic: &str, origin: Origin, from: u64, to: u64, reason: GapReason) {
        for ev in self.backlog.iter_mut().rev() {
            if let Event::Gap {
                topic: t,
                origin: o,
                to: end,
                reason: r,
                ..
            } = ev
                && t == topic
                && *o == origin
            {
                if *r == reason && end.saturating_add(1) >= from {
                    *end = (*end).max(to);
                    return;
                }
                break;
            }
        }
        let mut cursor = Cursor::new();
        cursor.observe(topic, &origin, from.saturating_sub(1));
        self.backlog.push_back(Event::Gap {
            topic: topic.to_string(),
            origin,
            from,
            to,
            reason,
            cursor: cursor.encode(),
        });
    }

    /// Move waiting events into the buffer while it has room.
    fn flush_backlog(&mut self) {
        while let Some(ev) = self.backlog.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Closed(_)) => self.backlog.clear(),
                Err(TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
            }
        }
    }
}

/// How often a subscription with a backlog retries handing it over (the buffer gives
/// no notice when the application makes room).
const BACKLOG_RETRY: Duration = Duration::from_millis(20);

struct Task {
    opts: ClientOptions,
    encoding: Encoding,
    next_id: u64,
    inflight: BTreeMap<u64, Inflight>,
    /// Subscriptions by a key of their own, never reused: a reply finds its
    /// subscription whatever was unsubscribed meanwhile.
    subs: BTreeMap<u64, SubState>,
    next_sub: u64,
    /// `id` of the current `sub` command of each subscription → its key: protocol
    /// version 2 tags catch-up pushes (and `live`) with it.
    tags: std::collections::HashMap<u64, u64>,
    /// The gateway's protocol version (1: no tags; every matching subscription takes
    /// every push and drops what its position covers).
    version: u32,
    mid_prefix: u64,
    mid_counter: u64,
    /// Index in [`gateways`] of the gateway connected to (failover goes on from it).
    current: usize,
}

/// `url`, then `fallback_urls`.
fn gateways(opts: &ClientOptions) -> Vec<String> {
    std::iter::once(opts.url.clone())
        .chain(opts.fallback_urls.iter().cloned())
        .collect()
}

/// `opts` aimed at gateway `i` of [`gateways`].
fn aimed(opts: &ClientOptions, urls: &[String], i: usize) -> ClientOptions {
    let mut o = opts.clone();
    o.url = urls[i % urls.len()].clone();
    o
}

/// Connect, say `connect`, and start the task.
pub(crate) async fn spawn(
    mut opts: ClientOptions,
) -> Result<(mpsc::Sender<Request>, SessionInfo), ClientError> {
    let urls = gateways(&opts);
    let mut first = Err(ClientError::ConnectionLost);
    let mut current = 0;
    for i in 0..urls.len() {
        first = establish(&aimed(&opts, &urls, i)).await;
        if first.is_ok() {
            current = i;
            break;
        }
    }
    let (conn, encoding, info) = first?;
    opts.client_id = Some(info.client_id.clone());
    let (tx, rx) = mpsc::channel(1024);
    let task = Task {
        opts,
        encoding,
        next_id: 1,
        inflight: BTreeMap::new(),
        subs: BTreeMap::new(),
        next_sub: 0,
        tags: std::collections::HashMap::new(),
        version: info.version,
        mid_prefix: rand::random(),
        mid_counter: 0,
        current,
    };
    tokio::spawn(task.run(conn, rx));
    Ok((tx, info))
}

async fn establish(opts: &ClientOptions) -> Result<(Conn, Encoding, SessionInfo), ClientError> {
    let (mut conn, encoding) = tokio::time::timeout(opts.request_timeout, Conn::open(opts))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let hello = ClientFrame::Connect {
        id: 0,
        token: opts.token.clone(),
        client_id: opts.client_id.clone(),
        cursor: opts.cursor.clone(),
    };
    conn.send(encoding.encode(&hello)).await?;
    let deadline = tokio::time::Instant::now() + opts.request_timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, conn.recv())
            .await
            .map_err(|_| ClientError::Timeout)?;
        let Some(frame) = frame else {
            return Err(ClientError::ConnectionLost);
        };
        let frames: Vec<ServerFrame> = encoding
            .decode_all(&frame.bytes)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        for f in frames {
            match f {
                ServerFrame::Connected {
                    client_id,
                    conn_id,
                    node,
                    epoch,
                    limits,
                    version,
                    ..
                } => {
                    return Ok((
                        conn,
                        encoding,
                        SessionInfo {
                            client_id,
                            version,
                            conn_id,
                            node,
                            epoch,
                            limits,
                        },
                    ));
                }
                ServerFrame::Error {
                    code, msg, retry, ..
                } => {
                    return Err(ClientError::Server {
                        code,
                        message: msg,
                        retry,
                    });
                }
                _ => {}
            }
        }
    }
}

impl Task {
    async fn run(mut self, mut conn: Conn, mut rx: mpsc::Receiver<Request>) {
        // Liveness: after half of `liveness_timeout` without a frame from the gateway,
        // a `ping`; after all of it, the connection is dead (a killed or stopped
        // gateway, a cut link) and the client fails over.
        let liveness = self.opts.liveness_timeout.max(Duration::from_millis(100));
        let mut last_rx = tokio::time::Instant::now();
        let mut probed = false;
        loop {
            let lagging = self.subs.values().any(|s| !s.backlog.is_empty());
            let wake = last_rx + if probed { liveness } else { liveness / 2 };
            tokio::select! {
                () = tokio::time::sleep(BACKLOG_RETRY), if lagging => {
                    for s in self.subs.values_mut() {
                        s.flush_backlog();
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let alive = !probed && {
                        let id = self.id();
                        conn.send(self.encoding.encode(&ClientFrame::Ping { id })).await.is_ok()
                    };
                    probed = true;
                    if !alive {
                        match self.reconnect().await {
                            Some(c) => conn = c,
                            None => break,
                        }
                        last_rx = tokio::time::Instant::now();
                        probed = false;
                    }
                }
                req = rx.recv() => match req {
                    None => break,
                    Some(Request::Close { reply }) => {
                        conn.close().await;
                        self.fail_all(ClientError::Closed);
                        let _ = reply.send(());
                        return;
                    }
                    Some(req) => {
                        if self.handle_request(&mut conn, req).await.is_err() {
                            match self.reconnect().await {
                                Some(c) => conn = c,
                                None => break,
                            }
                            last_rx = tokio::time::Instant::now();
                            probed = false;
                        }
                    }
                },
                frame = conn.recv() => {
                    last_rx = tokio::time::Instant::now();
                    probed = false;
                    match frame {
                        Some(f) => self.handle_frame(&f.bytes, f.lane.as_deref()),
                        None => {
                            match self.reconnect().await {
                                Some(c) => conn = c,
                                None => break,
                            }
                            last_rx = tokio::time::Instant::now();
                        }
                    }
                },
            }
        }
        self.fail_all(ClientError::ConnectionLost);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn handle_request(&mut self, conn: &mut Conn, req: Request) -> Result<(), ClientError> {
        match req {
            Request::Send {
                to_client,
                to_principal,
                payload,
                opts,
                reply,
            } => {
                let topic = match (to_client, to_principal) {
                    (Some(c), _) => Dest::Client(c),
                    (None, Some(p)) => Dest::Principal(p),
                    (None, None) => Dest::Client(String::new()), // refused by the gateway
                };
                self.publish(conn, topic, payload, opts, Some(reply)).await
            }
            Request::Batch { mut msgs, reply } => {
                for m in &mut msgs {
                    if m.mid.is_none() {
                        self.mid_counter += 1;
                        m.mid = Some(format!("{:016x}-{}", self.mid_prefix, self.mid_counter));
                    }
                }
                let id = self.id();
                let frame = self.encoding.encode(&ClientFrame::PubBatch {
                    id,
                    msgs: msgs.clone(),
                });
                self.inflight.insert(id, Inflight::Batch { msgs, reply });
                conn.send(frame).await
            }
            Request::Presence { topic, reply } => {
                let id = self.id();
                self.inflight.insert(id, Inflight::Presence { reply });
                conn.send(self.encoding.encode(&ClientFrame::Presence { id, topic }))
                    .await
            }
            Request::Publish {
                topic,
                payload,
                opts,
                reply,
            } => {
                self.publish(conn, Dest::Topic(topic), payload, opts, reply)
                    .await
            }
            Request::Subscribe {
                pattern,
                start,
                queue,
                presence,
                events,
                consumed,
                reply,
            } => {
                let id = self.id();
                let sub = self.next_sub;
                self.next_sub += 1;
                let mut state = SubState::new(pattern.clone(), events, consumed);
                state.live = start == Start::Latest;
                state.queue = queue;
                state.presence = presence;
                let frame = state.frame(id, start);
                self.subs.insert(sub, state);
                self.tags.insert(id, sub);
                self.inflight.insert(
                    id,
                    Inflight::Subscribe {
                        sub,
                        reply: Some(reply),
                    },
                );
                conn.send(self.encoding.encode(&frame)).await
            }
            Request::Answer { mut answer, reply } => {
                let id = self.id();
                answer.id = id;
                self.inflight.insert(id, Inflight::Answer { reply });
                conn.send(self.encoding.encode(&answer.into_frame())).await
            }
            Request::Unsubscribe { pattern, reply } => {
                let id = self.id();
                let subs = self
                    .subs
                    .iter()
                    .filter(|(_, s)| s.active && s.pattern == pattern)
                    .map(|(k, _)| *k)
                    .collect();
                self.inflight
                    .insert(id, Inflight::Unsubscribe { subs, reply });
                conn.send(
                    self.encoding
                        .encode(&ClientFrame::Unsub { id, topic: pattern }),
                )
                .await
            }
            Request::History {
                topic,
                start,
                limit,
                reply,
            } => {
                let id = self.id();
                self.inflight.insert(id, Inflight::History { reply });
                conn.send(self.encoding.encode(&ClientFrame::History {
                    id,
                    topic,
                    start: Some(start),
                    limit,
                }))
                .await
            }
            Request::Ping { reply } => {
                let id = self.id();
                self.inflight.insert(id, Inflight::Ping { reply });
                conn.send(self.encoding.encode(&ClientFrame::Ping { id }))
                    .await
            }
            Request::Raw { frame, reply } => {
                let r = conn.send_raw(frame).await;
                let _ = reply.send(r.clone());
                r
            }
            Request::Ephemeral {
                topic,
                payload,
                headers,
                reply,
            } => {
                let frame = ClientFrame::Pub {
                    id: 0,
                    topic,
                    data: Payload(payload),
                    headers,
                    mid: None,
                    ack: false,
                };
                let r = conn.send_datagram(self.encoding.encode(&frame));
                let lost = matches!(r, Err(ClientError::ConnectionLost));
                let _ = reply.send(r);
                // Only a lost connection needs a reconnect; other errors are the caller's.
                if lost {
                    Err(ClientError::ConnectionLost)
                } else {
                    Ok(())
                }
            }
            Request::Cursor { reply } => {
                let mut c = Cursor::new();
                for s in self.subs.values() {
                    if let Ok(consumed) = s.consumed.lock() {
                        c.merge(&consumed);
                    }
                }
                let _ = reply.send(c);
                Ok(())
            }
            Request::Close { .. } => Ok(()),
        }
    }

    async fn publish(
        &mut self,
        conn: &mut Conn,
        topic: Dest,
        payload: bytes::Bytes,
        mut opts: PublishOptions,
        reply: Option<oneshot::Sender<Result<PubAck, ClientError>>>,
    ) -> Result<(), ClientError> {
        if opts.mid.is_none() {
            self.mid_counter += 1;
            opts.mid = Some(format!("{:016x}-{}", self.mid_prefix, self.mid_counter));
        }
        let id = self.id();
        let frame = self.pub_frame(id, &topic, &payload, &opts);
        // A direct message is always acknowledged (`send` has no `ack: false`).
        if opts.ack || !matches!(topic, Dest::Topic(_)) {
            self.inflight.insert(
                id,
                Inflight::Publish {
                    topic,
                    payload,
                    opts,
                    reply,
                },
            );
        }
        conn.send(frame).await
    }

    fn pub_frame(
        &self,
        id: u64,
        topic: &Dest,
        payload: &bytes::Bytes,
        opts: &PublishOptions,
    ) -> Vec<u8> {
        let (to_client, to_principal) = match topic {
            Dest::Topic(topic) => {
                return self.encoding.encode(&ClientFrame::Pub {
                    id,
                    topic: topic.clone(),
                    data: Payload(payload.clone()),
                    headers: opts.headers.clone(),
                    mid: opts.mid.clone(),
                    ack: opts.ack,
                });
            }
            Dest::Client(c) => (Some(c.clone()), None),
            Dest::Principal(p) => (None, Some(p.clone())),
        };
        self.encoding.encode(&ClientFrame::Send {
            id,
            to_client,
            to_principal,
            data: Payload(payload.clone()),
            headers: opts.headers.clone(),
            mid: opts.mid.clone(),
        })
    }

    /// A `join`/`leave` push: to the presence subscription of its topic, in order with
    /// its gaps and after its messages (never dropped: the gateway bounds them).
    fn presence_event(&mut self, ev: Event) {
        let topic = match &ev {
            Event::Join { topic, .. } | Event::Leave { topic, .. } => topic.clone(),
            _ => return,
        };
        for s in self.subs.values_mut() {
            if s.active && s.presence && s.pattern == topic {
                s.offer_gap(ev.clone());
            }
        }
    }

    /// `lane`: the pattern of the subscription stream the frame came on (`edgesync/2`);
    /// its pushes go to that subscription only, so an overlapping subscription never
    /// takes (and marks as seen) what another one is still catching up on.
    fn handle_frame(&mut self, bytes: &[u8], lane: Option<&str>) {
        let frames: Vec<ServerFrame> = match self.encoding.decode_all(bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from gateway");
                return;
            }
        };
        for f in frames {
            self.handle_server_frame(f, lane);
        }
    }

    /// The subscriptions a push is for. Protocol version 2: a tagged push (catch-up) is
    /// for the subscription its `sub` names, an untagged one (live) for every matching
    /// subscription that is live. Version 1: every matching subscription (each drops
    /// what its position already covers). `lane`: the pattern of the QUIC stream the push
    /// came on, whose subscription alone it is for.
    fn targets(&self, tag: Option<u64>, topic: &str, lane: Option<&str>) -> Vec<u64> {
        let tagged = self.version >= 2;
        if let (true, Some(tag)) = (tagged, tag) {
            return self.tags.get(&tag).copied().into_iter().collect();
        }
        self.subs
            .iter()
            .filter(|(_, s)| {
                s.active
                    && s.queue.is_none()
                    && (!tagged || s.live)
                    && lane.is_none_or(|l| l == s.pattern)
                    && matches(&s.pattern, topic)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    fn handle_server_frame(&mut self, f: ServerFrame, lane: Option<&str>) {
        match f {
            ServerFrame::Msg(m) if m.seq == 0 => {
                // Ephemeral (datagram) message: best-effort, never in a cursor, not deduplicated.
                for key in self.targets(m.sub, &m.topic, lane) {
                    if let Some(s) = self.subs.get(&key) {
                        let _ = s.events.try_send(Event::Msg(m.clone()));
                    }
                }
            }
            ServerFrame::Msg(m) if m.queue.is_some() => {
                // A queue delivery is for the membership of its group only; a redelivery
                // repeats a seq, so no position check.
                for s in self.subs.values_mut() {
                    if s.active && s.queue.as_ref().map(|q| &q.group) == m.queue.as_ref() {
                        s.offer_msg(&m);
                        break;
                    }
                }
            }
            ServerFrame::Msg(m) => {
                let origin = Origin::new(m.origin.clone(), m.epoch);
                for key in self.targets(m.sub, &m.topic, lane) {
                    let Some(s) = self.subs.get_mut(&key) else {
                        continue;
                    };
                    if m.seq <= s.position.position(&m.topic, &origin) {
                        continue; // already delivered (resume overlap): never twice
                    }
                    s.position.observe(&m.topic, &origin, m.seq);
                    s.offer_msg(&m);
                }
            }
            ServerFrame::Gap {
                topic,
                origin,
                epoch,
                from,
                to,
                reason,
                cursor,
                sub,
            } => {
                let origin = Origin::new(origin, epoch);
                for key in self.targets(sub, &topic, lane) {
                    let Some(s) = self.subs.get_mut(&key) else {
                        continue;
                    };
                    let ev = Event::Gap {
                        topic: topic.clone(),
                        origin: origin.clone(),
                        from,
                        to,
                        reason,
                        cursor: cursor.clone(),
                    };
                    s.offer_gap(ev);
                }
            }
            ServerFrame::Puback {
                id,
                topic,
                origin,
                epoch,
                seq,
                hlc,
                cursor,
                dup,
            } => {
                if let Some(Inflight::Publish { reply: Some(r), .. }) = self.inflight.remove(&id) {
                    let _ = r.send(Ok(PubAck {
                        topic,
                        origin: Origin::new(origin, epoch),
                        seq,
                        hlc,
                        cursor,
                        dup,
                    }));
                }
            }
            ServerFrame::Subscribed { id, cursor, .. } => {
                if let Some(Inflight::Subscribe { sub, reply }) = self.inflight.remove(&id) {
                    if let (Some(s), Ok(c)) =
                        (self.subs.get_mut(&sub), Cursor::decode(&cursor, usize::MAX))
                    {
                        s.position.merge(&c);
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Ok(cursor));
                    }
                }
            }
            ServerFrame::Unsubscribed { id, .. } => {
                if let Some(Inflight::Unsubscribe { subs, reply }) = self.inflight.remove(&id) {
                    for sub in subs {
                        self.subs.remove(&sub);
                    }
                    self.tags.retain(|_, key| self.subs.contains_key(key));
                    let _ = reply.send(Ok(()));
                }
            }
            ServerFrame::History {
                id,
                msgs,
                cursor,
                more,
                ..
            } => {
                if let Some(Inflight::History { reply }) = self.inflight.remove(&id) {
                    let _ = reply.send(Ok(History { msgs, cursor, more }));
                }
            }
            ServerFrame::Pong { id } => {
                if let Some(Inflight::Ping { reply }) = self.inflight.remove(&id) {
                    let _ = reply.send(Ok(()));
                }
            }
            ServerFrame::Error {
                id: Some(id),
                code,
                msg,
                retry,
            } => {
                let e = ClientError::Server {
                    code,
                    message: msg,
                    retry,
                };
                match self.inflight.remove(&id) {
                    Some(Inflight::Publish { reply: Some(r), .. }) => drop(r.send(Err(e))),
                    Some(Inflight::Subscribe { sub, reply }) => {
                        if let Some(s) = self.subs.get_mut(&sub) {
                            s.active = false;
                        }
                        if let Some(r) = reply {
                            let _ = r.send(Err(e));
                        }
                    }
                    Some(Inflight::Unsubscribe { reply, .. }) => drop(reply.send(Err(e))),
                    Some(Inflight::History { reply }) => drop(reply.send(Err(e))),
                    Some(Inflight::Ping { reply }) => drop(reply.send(Err(e))),
                    Some(Inflight::Answer { reply }) => drop(reply.send(Err(e))),
                    Some(Inflight::Presence { reply }) => drop(reply.send(Err(e))),
                    Some(Inflight::Batch { reply, .. }) => drop(reply.send(Err(e))),
                    _ => {}
                }
            }
            ServerFrame::Error {
                id: None,
                code,
                msg,
                ..
            } => {
                tracing::debug!(%code, %msg, "gateway error push");
            }
            ServerFrame::Presence {
                id,
                topic,
                count,
                truncated,
                members,
            } => {
                if let Some(Inflight::Presence { reply }) = self.inflight.remove(&id) {
                    let _ = reply.send(Ok(crate::PresenceList {
                        topic,
                        count,
                        truncated,
                        members,
                    }));
                }
            }
            ServerFrame::Join {
                topic,
                client,
                principal,
                node,
                since,
            } => self.presence_event(Event::Join {
                topic,
                client,
                principal,
                node,
                since,
            }),
            ServerFrame::Leave {
                topic,
                client,
                principal,
                node,
            } => self.presence_event(Event::Leave {
                topic,
                client,
                principal,
                node,
            }),
            ServerFrame::BatchAck { id, acks, cursor } => {
                if let Some(Inflight::Batch { reply, .. }) = self.inflight.remove(&id) {
                    let acks = acks
                        .into_iter()
                        .map(|a| PubAck {
                            topic: a.topic,
                            origin: Origin::new(a.origin, a.epoch),
                            seq: a.seq,
                            hlc: a.hlc,
                            cursor: cursor.clone(),
                            dup: a.dup,
                        })
                        .collect();
                    let _ = reply.send(Ok(acks));
                }
            }
            ServerFrame::Ok { id } => {
                if let Some(Inflight::Answer { reply }) = self.inflight.remove(&id) {
                    let _ = reply.send(Ok(()));
                }
            }
            ServerFrame::Live { sub, .. } => {
                // Its catch-up is over: from here it takes the untagged pushes.
                if let Some(s) = self.tags.get(&sub).and_then(|k| self.subs.get_mut(k)) {
                    s.live = true;
                }
            }
            ServerFrame::Connected { .. } => {}
        }
    }

    /// Reconnect with backoff, re-subscribe from each subscription's position, and
    /// resend in-flight publishes (same mid: the gateway dedupes). `None`: give up.
    async fn reconnect(&mut self) -> Option<Conn> {
        // Commands that cannot be replayed fail now.
        let ids: Vec<u64> = self.inflight.keys().copied().collect();
        for id in ids {
            match self.inflight.remove(&id) {
                Some(p @ (Inflight::Publish { .. } | Inflight::Batch { .. })) => {
                    self.inflight.insert(id, p);
                }
                Some(Inflight::Subscribe {
                    sub,
                    reply: Some(r),
                }) => {
                    if let Some(s) = self.subs.get_mut(&sub) {
                        s.active = false;
                    }
                    let _ = r.send(Err(ClientError::ConnectionLost));
                }
                Some(Inflight::Unsubscribe { reply, .. }) => {
                    drop(reply.send(Err(ClientError::ConnectionLost)))
                }
                Some(Inflight::History { reply }) => {
                    drop(reply.send(Err(ClientError::ConnectionLost)))
                }
                Some(Inflight::Ping { reply }) | Some(Inflight::Answer { reply }) => {
                    drop(reply.send(Err(ClientError::ConnectionLost)))
                }
                Some(Inflight::Presence { reply }) => {
                    drop(reply.send(Err(ClientError::ConnectionLost)))
                }
                _ => {}
            }
        }
        self.subs.retain(|_, s| s.active);
        if !self.opts.reconnect {
            return None;
        }
        let mut backoff = FIRST_BACKOFF;
        let urls = gateways(&self.opts);
        let mut turn = self.current + usize::from(urls.len() > 1);
        loop {
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(self.opts.max_backoff);
            let target = turn % urls.len();
            turn += 1;
            let Ok((mut conn, enc, info)) = establish(&aimed(&self.opts, &urls, target)).await
            else {
                continue;
            };
            self.current = target;
            self.encoding = enc;
            self.version = info.version;
            if self.resume(&mut conn).await.is_ok() {
                tracing::debug!("reconnected and resumed");
                return Some(conn);
            }
        }
    }

    async fn resume(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        let subs: Vec<u64> = self.subs.keys().copied().collect();
        self.tags.clear();
        for sub in subs {
            let id = self.id();
            self.tags.insert(id, sub);
            let Some(s) = self.subs.get_mut(&sub) else {
                continue;
            };
            s.live = false; // catching up from its position until `live`
            let frame = self
                .encoding
                .encode(&s.frame(id, Start::Cursor(s.position.encode())));
            self.inflight
                .insert(id, Inflight::Subscribe { sub, reply: None });
            conn.send(frame).await?;
        }
        let batches: Vec<(u64, Vec<u8>)> = self
            .inflight
            .iter()
            .filter_map(|(id, p)| match p {
                Inflight::Batch { msgs, .. } => Some((
                    *id,
                    self.encoding.encode(&ClientFrame::PubBatch {
                        id: *id,
                        msgs: msgs.clone(),
                    }),
                )),
                _ => None,
            })
            .collect();
        for (_, frame) in batches {
            conn.send(frame).await?;
        }
        let publishes: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, p)| matches!(p, Inflight::Publish { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in publishes {
            if let Some(Inflight::Publish {
                topic,
                payload,
                opts,
                ..
            }) = self.inflight.get(&id)
            {
                let frame = self.pub_frame(id, topic, payload, opts);
                conn.send(frame).await?;
            }
        }
        Ok(())
    }

    fn fail_all(&mut self, e: ClientError) {
        for (_, p) in std::mem::take(&mut self.inflight) {
            match p {
                Inflight::Publish { reply: Some(r), .. } => drop(r.send(Err(e.clone()))),
                Inflight::Batch { reply, .. } => drop(reply.send(Err(e.clone()))),
                Inflight::Subscribe { reply: Some(r), .. } => drop(r.send(Err(e.clone()))),
                Inflight::Unsubscribe { reply, .. } => drop(reply.send(Err(e.clone()))),
                Inflight::History { reply } => drop(reply.send(Err(e.clone()))),
                Inflight::Ping { reply } => drop(reply.send(Err(e.clone()))),
                _ => {}
            }
        }
        self.subs.clear();
    }
}

/// First wait before reconnecting; it doubles up to `ClientOptions::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// `backoff` with "equal jitter": a uniformly random wait in [backoff/2, backoff], so
/// clients that lost the same gateway at the same moment do not come back in step.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn msg(topic: &str, seq: u64) -> Msg {
        Msg {
            topic: topic.into(),
            origin: "n".into(),
            epoch: 1,
            seq,
            hlc: 0,
            client: "c".into(),
            mid: None,
            headers: Default::default(),
            data: Payload::default(),
            sub: None,
            queue: None,
            delivery: None,
        }
    }

    fn sub(buffer: usize) -> (SubState, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(buffer);
        let s = SubState::new("t.>".into(), tx, Arc::new(Mutex::new(Cursor::new())));
        (s, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<Event>) -> Vec<Event> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_full_buffer_turns_messages_into_one_gap_per_stream_never_a_wait() {
        let (mut s, mut rx) = sub(2);
        for seq in 1..=6 {
            s.offer_msg(&msg("t.a", seq));
        }
        s.offer_msg(&msg("t.b", 1));
        let got = drain(&mut rx);
        assert_eq!(
            got,
            vec![Event::Msg(msg("t.a", 1)), Event::Msg(msg("t.a", 2))]
        );
        assert_eq!(s.backlog.len(), 2, "one gap per (topic, origin)");
        // Room again: the gaps come first, then new messages.
        s.offer_msg(&msg("t.a", 7));
        let got = drain(&mut rx);
        match &got[..] {
            [
                Event::Gap {
                    topic,
                    from: 3,
                    to: 6,
                    reason: GapReason::SlowConsumer,
                    cursor,
                    ..
                },
                Event::Gap { from: 1, to: 1, .. },
            ] => {
                assert_eq!(topic, "t.a");
                let c = Cursor::decode(cursor, 1024).expect("cursor");
                assert_eq!(
                    c.position("t.a", &Origin::new("n", 1)),
                    2,
                    "history re-reads from 3"
                );
            }
            other => panic!("expected the two gaps, got {other:?}"),
        }
        // The two gaps took the room, so 7 found the buffer full: it waits as a gap of
        // its own (never as a wait of the task).
        s.flush_backlog();
        assert_eq!(
            drain(&mut rx),
            vec![Event::Gap {
                topic: "t.a".into(),
                origin: Origin::new("n", 1),
                from: 7,
                to: 7,
                reason: GapReason::SlowConsumer,
                cursor: {
                    let mut c = Cursor::new();
                    c.observe("t.a", &Origin::new("n", 1), 6);
                    c.encode()
                },
            }]
        );
    }

    /// A task with subscriptions `(key, command id, pattern, live)`, no connection.
    fn task(version: u32, subs: &[(u64, u64, &str, bool)]) -> (Task, Vec<mpsc::Receiver<Event>>) {
        let mut t = Task {
            opts: ClientOptions::new("ws://127.0.0.1:1"),
            encoding: Encoding::Json,
            next_id: 100,
            inflight: BTreeMap::new(),
            subs: BTreeMap::new(),
            next_sub: 100,
            tags: std::collections::HashMap::new(),
            version,
            mid_prefix: 0,
            mid_counter: 0,
            current: 0,
        };
        let mut rxs = Vec::new();
        for &(key, id, pattern, live) in subs {
            let (tx, rx) = mpsc::channel(64);
            let mut s = SubState::new(pattern.into(), tx, Arc::new(Mutex::new(Cursor::new())));
            s.live = live;
            t.subs.insert(key, s);
            t.tags.insert(id, key);
            rxs.push(rx);
        }
        (t, rxs)
    }

    fn tagged(topic: &str, seq: u64, sub: u64) -> Msg {
        Msg {
            sub: Some(sub),
            queue: None,
            delivery: None,
            ..msg(topic, seq)
        }
    }

    fn seqs(rx: &mut mpsc::Receiver<Event>) -> Vec<(String, u64)> {
        drain(rx)
            .into_iter()
            .filter_map(|e| match e {
                Event::Msg(m) => Some((m.topic, m.seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn version_2_routes_catch_up_by_tag_and_live_pushes_to_live_subscriptions() {
        // `t.>` (command 2) is live; `t.x` (command 3) catches up from earliest.
        let (mut t, mut rx) = task(2, &[(0, 2, "t.>", true), (1, 3, "t.x", false)]);
        // Live seq 5 reaches the connection while t.x still reads history: not t.x's.
        t.handle_server_frame(ServerFrame::Msg(msg("t.x", 5)), None);
        for seq in 1..=5 {
            t.handle_server_frame(ServerFrame::Msg(tagged("t.x", seq, 3)), None);
        }
        t.handle_server_frame(
            ServerFrame::Live {
                sub: 3,
                topic: "t.x".into(),
            },
            None,
        );
        t.handle_server_frame(ServerFrame::Msg(msg("t.x", 6)), None);
        t.handle_server_frame(ServerFrame::Msg(msg("t.y", 1)), None);
        let x = |s: u64| ("t.x".to_string(), s);
        assert_eq!(seqs(&mut rx[0]), vec![x(5), x(6), ("t.y".into(), 1)]);
        assert_eq!(seqs(&mut rx[1]), (1..=6).map(x).collect::<Vec<_>>());
    }

    #[test]
    fn version_1_gives_every_matching_subscription_each_push_once() {
        let (mut t, mut rx) = task(1, &[(0, 2, "t.>", true), (1, 3, "t.x", false)]);
        for seq in [1, 2, 1, 2, 3] {
            t.handle_server_frame(ServerFrame::Msg(msg("t.x", seq)), None);
        }
        let want: Vec<(String, u64)> = (1..=3).map(|s| ("t.x".to_string(), s)).collect();
        assert_eq!(seqs(&mut rx[0]), want);
        assert_eq!(seqs(&mut rx[1]), want);
    }

    #[test]
    fn a_reply_finds_its_subscription_whatever_was_unsubscribed_before_it() {
        // Subscriptions 0 (`a`), 1 (`b`), 2 (`c`); `b`'s subscribe reply is pending when
        // `a` is unsubscribed (on edgesync/2 the two travel on different streams).
        let (mut t, mut rx) = task(
            2,
            &[(0, 2, "a", true), (1, 3, "b", true), (2, 4, "c", true)],
        );
        let (reply, mut done) = oneshot::channel();
        t.inflight.insert(
            3,
            Inflight::Subscribe {
                sub: 1,
                reply: Some(reply),
            },
        );
        let (ureply, _u) = oneshot::channel();
        t.inflight.insert(
            9,
            Inflight::Unsubscribe {
                subs: vec![0],
                reply: ureply,
            },
        );
        t.handle_server_frame(
            ServerFrame::Unsubscribed {
                id: 9,
                topic: "a".into(),
            },
            None,
        );
        let mut cursor = Cursor::new();
        cursor.observe("b", &Origin::new("n", 1), 7);
        t.handle_server_frame(
            ServerFrame::Subscribed {
                id: 3,
                topic: "b".into(),
                cursor: cursor.encode(),
            },
            None,
        );
        assert!(done.try_recv().is_ok_and(|r| r.is_ok()));
        assert_eq!(
            t.subs[&1].position.position("b", &Origin::new("n", 1)),
            7,
            "the cursor went to `b`"
        );
        assert_eq!(
            t.subs[&2].position.position("b", &Origin::new("n", 1)),
            0,
            "not to `c`, which a shifted index would have picked"
        );
        assert!(!t.subs.contains_key(&0));
        // `b` still receives: seq 8 follows its start position.
        t.handle_server_frame(ServerFrame::Msg(msg("b", 8)), None);
        assert_eq!(seqs(&mut rx[1]), vec![("b".to_string(), 8)]);
    }

    #[test]
    fn reconnect_waits_are_jittered_within_half_to_full() {
        let backoff = Duration::from_millis(800);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(backoff)).collect();
        assert!(waits.iter().all(|w| *w >= backoff / 2 && *w <= backoff));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "spread out, not in step");
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;

    #[test]
    fn gateways_are_the_url_then_the_fallbacks_in_turn() {
        let mut o = ClientOptions::new("ws://a:1");
        o.fallback_urls = vec!["ws://b:1".into(), "quic://c:2".into()];
        let urls = gateways(&o);
        assert_eq!(urls, vec!["ws://a:1", "ws://b:1", "quic://c:2"]);
        assert_eq!(aimed(&o, &urls, 1).url, "ws://b:1");
        assert_eq!(aimed(&o, &urls, 4).url, "ws://b:1", "round and round");
        assert_eq!(gateways(&ClientOptions::new("ws://a:1")), vec!["ws://a:1"]);
    }
}
