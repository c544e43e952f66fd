//! The client's background task: owns the connection, matches replies to
//! commands, routes pushes to subscriptions, and reconnects and resumes.

use std::collections::BTreeMap;
use std::time::Duration;

use edgesync_protocol::topic::matches;
use edgesync_protocol::{ClientFrame, Cursor, Encoding, Origin, Payload, ServerFrame, Start};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Conn;
use crate::{
    ClientError, ClientOptions, Event, History, PubAck, PublishOptions, Request, SessionInfo,
};

enum Inflight {
    Publish {
        topic: String,
        payload: bytes::Bytes,
        opts: PublishOptions,
        reply: Option<oneshot::Sender<Result<PubAck, ClientError>>>,
    },
    Subscribe {
        sub: usize,
        reply: Option<oneshot::Sender<Result<String, ClientError>>>,
    },
    Unsubscribe {
        pattern: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    History {
        reply: oneshot::Sender<Result<History, ClientError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
}

struct SubState {
    pattern: String,
    events: mpsc::Sender<Event>,
    /// What this subscription has delivered: the resume point after a reconnect.
    position: Cursor,
    /// Cleared by unsubscribe.
    active: bool,
    /// What the application has taken (shared with the `Subscription`).
    consumed: std::sync::Arc<std::sync::Mutex<Cursor>>,
}

struct Task {
    opts: ClientOptions,
    encoding: Encoding,
    next_id: u64,
    inflight: BTreeMap<u64, Inflight>,
    subs: Vec<SubState>,
    mid_prefix: u64,
    mid_counter: u64,
}

/// Connect, say `connect`, and start the task.
pub(crate) async fn spawn(
    mut opts: ClientOptions,
) -> Result<(mpsc::Sender<Request>, SessionInfo), ClientError> {
    let (conn, encoding, info) = establish(&opts).await?;
    opts.client_id = Some(info.client_id.clone());
    let (tx, rx) = mpsc::channel(1024);
    let task = Task {
        opts,
        encoding,
        next_id: 1,
        inflight: BTreeMap::new(),
        subs: Vec::new(),
        mid_prefix: rand::random(),
        mid_counter: 0,
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
                    ..
                } => {
                    return Ok((
                        conn,
                        encoding,
                        SessionInfo {
                            client_id,
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
        loop {
            tokio::select! {
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
                        }
                    }
                },
                frame = conn.recv() => match frame {
                    Some(f) => self.handle_frame(&f.bytes, f.lane.as_deref()).await,
                    None => match self.reconnect().await {
                        Some(c) => conn = c,
                        None => break,
                    },
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
            Request::Publish {
                topic,
                payload,
                mut opts,
                reply,
            } => {
                if opts.mid.is_none() {
                    self.mid_counter += 1;
                    opts.mid = Some(format!("{:016x}-{}", self.mid_prefix, self.mid_counter));
                }
                let id = self.id();
                let frame = self.pub_frame(id, &topic, &payload, &opts);
                if opts.ack {
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
            Request::Subscribe {
                pattern,
                start,
                events,
                consumed,
                reply,
            } => {
                let id = self.id();
                self.subs.push(SubState {
                    pattern: pattern.clone(),
                    events,
                    position: Cursor::new(),
                    active: true,
                    consumed,
                });
                self.inflight.insert(
                    id,
                    Inflight::Subscribe {
                        sub: self.subs.len() - 1,
                        reply: Some(reply),
                    },
                );
                conn.send(self.encoding.encode(&ClientFrame::Sub {
                    id,
                    topic: pattern,
                    start: Some(start),
                }))
                .await
            }
            Request::Unsubscribe { pattern, reply } => {
                let id = self.id();
                self.inflight.insert(
                    id,
                    Inflight::Unsubscribe {
                        pattern: pattern.clone(),
                        reply,
                    },
                );
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
                for s in &self.subs {
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

    fn pub_frame(
        &self,
        id: u64,
        topic: &str,
        payload: &bytes::Bytes,
        opts: &PublishOptions,
    ) -> Vec<u8> {
        self.encoding.encode(&ClientFrame::Pub {
            id,
            topic: topic.into(),
            data: Payload(payload.clone()),
            headers: opts.headers.clone(),
            mid: opts.mid.clone(),
            ack: opts.ack,
        })
    }

    /// `lane`: the pattern of the subscription stream the frame came on (`edgesync/2`);
    /// its pushes go to that subscription only, so an overlapping subscription never
    /// takes (and marks as seen) what another one is still catching up on.
    async fn handle_frame(&mut self, bytes: &[u8], lane: Option<&str>) {
        let frames: Vec<ServerFrame> = match self.encoding.decode_all(bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from gateway");
                return;
            }
        };
        for f in frames {
            self.handle_server_frame(f, lane).await;
        }
    }

    async fn handle_server_frame(&mut self, f: ServerFrame, lane: Option<&str>) {
        let for_lane = |pattern: &str| lane.is_none_or(|l| l == pattern);
        match f {
            ServerFrame::Msg(m) if m.seq == 0 => {
                // Ephemeral (datagram) message: best-effort, never in a cursor, not deduplicated.
                for s in self
                    .subs
                    .iter()
                    .filter(|s| s.active && for_lane(&s.pattern) && matches(&s.pattern, &m.topic))
                {
                    let _ = s.events.try_send(Event::Msg(m.clone()));
                }
            }
            ServerFrame::Msg(m) => {
                let origin = Origin::new(m.origin.clone(), m.epoch);
                for s in self
                    .subs
                    .iter_mut()
                    .filter(|s| s.active && for_lane(&s.pattern) && matches(&s.pattern, &m.topic))
                {
                    if m.seq <= s.position.position(&m.topic, &origin) {
                        continue; // already delivered (resume overlap): never twice
                    }
                    s.position.observe(&m.topic, &origin, m.seq);
                    let _ = s.events.send(Event::Msg(m.clone())).await;
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
            } => {
                let origin = Origin::new(origin, epoch);
                for s in self
                    .subs
                    .iter_mut()
                    .filter(|s| s.active && for_lane(&s.pattern) && matches(&s.pattern, &topic))
                {
                    let ev = Event::Gap {
                        topic: topic.clone(),
                        origin: origin.clone(),
                        from,
                        to,
                        reason,
                        cursor: cursor.clone(),
                    };
                    let _ = s.events.send(ev).await;
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
                        (self.subs.get_mut(sub), Cursor::decode(&cursor, usize::MAX))
                    {
                        s.position.merge(&c);
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Ok(cursor));
                    }
                }
            }
            ServerFrame::Unsubscribed { id, .. } => {
                if let Some(Inflight::Unsubscribe { pattern, reply }) = self.inflight.remove(&id) {
                    for s in self.subs.iter_mut().filter(|s| s.pattern == pattern) {
                        s.active = false;
                    }
                    self.subs.retain(|s| s.active);
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
                        if let Some(s) = self.subs.get_mut(sub) {
                            s.active = false;
                        }
                        if let Some(r) = reply {
                            let _ = r.send(Err(e));
                        }
                    }
                    Some(Inflight::Unsubscribe { reply, .. }) => drop(reply.send(Err(e))),
                    Some(Inflight::History { reply }) => drop(reply.send(Err(e))),
                    Some(Inflight::Ping { reply }) => drop(reply.send(Err(e))),
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
                Some(p @ Inflight::Publish { .. }) => {
                    self.inflight.insert(id, p);
                }
                Some(Inflight::Subscribe {
                    sub,
                    reply: Some(r),
                }) => {
                    if let Some(s) = self.subs.get_mut(sub) {
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
                Some(Inflight::Ping { reply }) => {
                    drop(reply.send(Err(ClientError::ConnectionLost)))
                }
                _ => {}
            }
        }
        self.subs.retain(|s| s.active);
        if !self.opts.reconnect {
            return None;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.subs.iter().all(|s| s.events.is_closed())
                && self.inflight.is_empty()
                && self.subs.iter().any(|_| true)
            {
                // Every subscriber is gone and nothing is owed: keep trying anyway; the handle may publish.
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.opts.max_backoff);
            let Ok((mut conn, enc, _info)) = establish(&self.opts).await else {
                continue;
            };
            self.encoding = enc;
            if self.resume(&mut conn).await.is_ok() {
                tracing::debug!("reconnected and resumed");
                return Some(conn);
            }
        }
    }

    async fn resume(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        for i in 0..self.subs.len() {
            let id = self.id();
            let start = Start::Cursor(self.subs[i].position.encode());
            let frame = self.encoding.encode(&ClientFrame::Sub {
                id,
                topic: self.subs[i].pattern.clone(),
                start: Some(start),
            });
            self.inflight.insert(
                id,
                Inflight::Subscribe {
                    sub: i,
                    reply: None,
                },
            );
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
