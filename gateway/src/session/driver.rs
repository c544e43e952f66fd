//! The async driver of a session: moves frames between a transport and the
//! [`Session`] state machine, executes validated commands against the store and
//! broker, and writes the connection's outbox.
//!
//! One task per connection runs [`run`]. It waits on, in priority order:
//! shutdown, outbox ready to write, publish acks completing (in order),
//! the next inbound frame (paused while `max_inflight_publishes` acks are
//! outstanding — the per-connection backpressure edge), catch-up work (only
//! while the outbox has room), and the idle/ping timer.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use edgesync_protocol::frame::{GapReason, LimitsInfo};
use edgesync_protocol::{ClientFrame, Cursor, Encoding, ErrorCode, Origin, ServerFrame};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};

use super::{Command, Session, StartAt, frame_kind};
use crate::broker::{ConnOut, SubId, encode_push};
use crate::outbox::Outbox;
use crate::server::Gateway;
use crate::store::AppendRequest;
use crate::store::{Ack, StoreError};

/// Errors a transport reports to the driver.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A frame exceeded the size limit; answered with `frame_too_large` and closed.
    #[error("frame too large: {0}")]
    TooLarge(String),
    /// The peer broke the transport protocol; closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("io: {0}")]
    Io(String),
}

/// What a transport must provide to carry a session.
pub trait Conn: Send {
    /// Next application frame; `None` when the peer closed cleanly. An empty frame is
    /// liveness only (e.g. a WebSocket pong): it resets the idle timer and is not decoded.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Bytes, ConnError>>> + Send;
    /// Write one frame holding one or more encoded messages.
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = Result<(), ConnError>> + Send;
    /// Send a transport-level keepalive.
    fn ping(&mut self) -> impl Future<Output = Result<(), ConnError>> + Send;
    /// Close with an error code (None: normal close).
    fn close(&mut self, code: Option<ErrorCode>, reason: &str) -> impl Future<Output = ()> + Send;
    /// Streams of their own for subscriptions, when the transport and the client agreed
    /// on them (QUIC `edgesync/2`); `None`: everything travels on the session stream.
    fn lanes(&self) -> Option<Arc<dyn Lanes>> {
        None
    }
}

/// A transport that delivers each subscription on a stream of its own, so a subscriber
/// that falls behind on one subscription (a lost packet, a bulk backlog, a full window)
/// does not hold back the others. Each subscription gets its own bounded outbox (a
/// *lane*); the transport's writer task drains it into the subscription's stream.
pub trait Lanes: Send + Sync {
    /// Start the writer of one subscription's stream. It drains `lane` until the lane is
    /// finished ([`Outbox::finish`]: it then ends the stream) or closed (a slow-consumer
    /// disconnect: it closes `session`'s outbox with the same reason, which ends the
    /// session), or until the connection ends.
    fn open(&self, lane: Arc<ConnOut>, session: Arc<ConnOut>, gw: Arc<Gateway>);
}

/// Who is on the other end.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// `ws`, `wss` or `quic`.
    pub transport: &'static str,
    /// Identity from a client certificate, when mTLS presented one.
    pub tls_identity: Option<String>,
    pub encoding: Encoding,
}

/// Largest frame the writer builds from batched messages.
pub(crate) const MAX_BATCH_FRAME: usize = 256 << 10;
/// Records read per catch-up step.
const CATCHUP_CHUNK: usize = 256;

type AckFuture = Pin<Box<dyn Future<Output = AckDone> + Send>>;

struct AckDone {
    id: u64,
    topic: String,
    want_ack: bool,
    started: Instant,
    result: Result<Ack, StoreError>,
}

/// A subscription reading stored records before going live.
struct CatchUp {
    sub: SubId,
    pattern: String,
    position: Cursor,
    /// Where its records go: the session's outbox, or the subscription's lane.
    target: Arc<ConnOut>,
}

/// How a session's subscriptions reach the client: the catch-ups in progress, and
/// the subscription lanes when the transport has them.
struct Delivery {
    catchups: VecDeque<CatchUp>,
    lanes: Option<LaneSet>,
}

/// A session's subscriptions with a lane each (QUIC `edgesync/2`).
///
/// Memory stays that of one connection outbox: the lanes share one byte budget of
/// `outbox_bytes`, and each holds at most half of it (and `outbox_frames` frames), so a
/// stalled subscription overflows into gap notices of its own while the others keep at
/// least half the budget.
struct LaneSet {
    opener: Arc<dyn Lanes>,
    budget: Arc<crate::outbox::Budget>,
    lanes: std::collections::HashMap<SubId, Arc<ConnOut>>,
}

impl LaneSet {
    /// Where a new subscription's pushes go: a new lane when the transport has lanes
    /// (its writer is started by [`LaneSet::open`] once `subscribed` is queued in it).
    fn target(lanes: &Option<LaneSet>, out: &Arc<ConnOut>, gw: &Gateway) -> Arc<ConnOut> {
        let Some(set) = lanes else {
            return out.clone();
        };
        let l = gw.settings.limits();
        ConnOut::new(
            out.id,
            Outbox::new(out.outbox.encoding(), l.outbox_frames, l.outbox_bytes / 2)
                .with_budget(set.budget.clone()),
        )
    }

    /// Start writing `lane` (for `sub`) to its stream. Only once its `subscribed` is at
    /// the front: a writer started earlier could send a push fan-out queued meanwhile
    /// as the stream's first frame.
    fn open(&mut self, sub: SubId, lane: Arc<ConnOut>, out: &Arc<ConnOut>, gw: &Arc<Gateway>) {
        self.opener.open(lane.clone(), out.clone(), gw.clone());
        self.lanes.insert(sub, lane);
    }
}

/// Where a session's out-of-stream ephemeral publishes come from (QUIC datagrams).
///
/// Read by the session task itself rather than forwarded by a task and a channel per
/// connection: an idle connection then costs no extra task or queue. The source bounds
/// what waits unread (QUIC: the connection's datagram receive buffer, oldest dropped).
pub trait Datagrams: Send {
    /// The next datagram; `None` when no more will come. Must be cancel-safe: the driver
    /// drops this future whenever another event wins.
    fn next(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// The datagram source of transports without datagrams.
pub struct NoDatagrams;

impl Datagrams for NoDatagrams {
    async fn next(&mut self) -> Option<Bytes> {
        None
    }
}

/// Run one connection to completion.
pub async fn run<C: Conn>(conn: C, gw: Arc<Gateway>, info: ConnInfo) {
    run_with_datagrams(conn, gw, info, None::<NoDatagrams>).await;
}

/// [`run`], plus ephemeral publishes arriving outside the stream (QUIC datagrams, one
/// MessagePack `pub` each). They pass the same session validation as `pub`, then the
/// broker fans them out without storing them; a rejected one is counted
/// (`edgesync_commands_total{command="datagram"}`), not answered: it has no id and its
/// delivery was never promised.
pub async fn run_with_datagrams<C: Conn, D: Datagrams>(
    mut conn: C,
    gw: Arc<Gateway>,
    info: ConnInfo,
    mut datagrams: Option<D>,
) {
    let limits = gw.settings.limits().clone();
    let conn_id = gw.next_conn_id();
    let out = ConnOut::new(
        conn_id,
        Outbox::new(info.encoding, limits.outbox_frames, limits.outbox_bytes),
    );
    let now = Instant::now();
    let mut session = Session::new(limits.clone(), now);
    let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let (mut last_rx, mut last_tx) = (now, now);
    let shutdown = gw.shutdown.clone();
    let mut draining = false;
    let mut close_reason: Option<(Option<ErrorCode>, String)> = None;
    let _registered = gw.register_conn(conn_id, &info, &out);
    let mut delivery = Delivery {
        catchups: VecDeque::new(),
        lanes: conn.lanes().map(|opener| LaneSet {
            opener,
            budget: crate::outbox::Budget::new(limits.outbox_bytes),
            lanes: std::collections::HashMap::new(),
        }),
    };
    tracing::debug!(conn_id, remote = %info.remote, transport = info.transport, "session start");

    'session: loop {
        let deadline = super::next_deadline(last_rx, last_tx, &limits);
        let read_ok = !draining && pending.len() < limits.max_inflight_publishes;
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => Event::Shutdown,
            _ = out.outbox.ready() => Event::Write,
            done = pending.next(), if !pending.is_empty() => Event::Acked(done),
            frame = conn.recv(), if read_ok => Event::Inbound(frame),
            _ = catch_up_room(&delivery.catchups), if !delivery.catchups.is_empty() && !draining => Event::CatchUp,
            d = next_datagram(&mut datagrams), if datagrams.is_some() && !draining => Event::Datagram(d),
            _ = tokio::time::sleep_until(deadline.into()), if !draining => Event::Timer,
        };
        match event {
            Event::Shutdown => {
                draining = true;
                out.outbox.push_reply(&ServerFrame::error(
                    None,
                    ErrorCode::ShuttingDown,
                    "gateway is shutting down",
                ));
                close_reason = Some((
                    Some(ErrorCode::ShuttingDown),
                    "gateway shutting down".into(),
                ));
            }
            Event::Write => {
                if let Some(closed) = out.outbox.closed() {
                    // Flush what is queued, then the reason, then close.
                    let _ = flush(&mut conn, &out, &gw).await;
                    let f = ServerFrame::error(None, closed.code, closed.message.clone());
                    let _ = conn.send(info.encoding.encode(&f)).await;
                    close_reason = Some((Some(closed.code), closed.message));
                    break 'session;
                }
                if flush(&mut conn, &out, &gw).await.is_err() {
                    close_reason = Some((None, "write failed".into()));
                    break 'session;
                }
                last_tx = Instant::now();
            }
            Event::Acked(Some(done)) => {
                finish_publish(&gw, &out, done);
                // Every other ack already complete (a group commit completes many at
                // once) joins it before the next write: one frame and one write per
                // wake, not per ack — and a pipelining client refills its window with
                // one frame of publishes, which the plugins then see as one batch.
                // (Polling with a no-op waker is safe: the next `select!` polls
                // `pending` again with this task's waker before it sleeps.)
                while let Some(Some(done)) = pending.next().now_or_never() {
                    finish_publish(&gw, &out, done);
                }
            }
            Event::Acked(None) => {}
            Event::Inbound(None) => {
                close_reason = Some((None, "client closed".into()));
                break 'session;
            }
            Event::Inbound(Some(Err(e))) => {
                let code = match e {
                    ConnError::TooLarge(_) => ErrorCode::FrameTooLarge,
                    ConnError::Protocol(_) => ErrorCode::BadFrame,
                    ConnError::Io(_) => {
                        close_reason = Some((None, e.to_string()));
                        break 'session;
                    }
                };
                gw.metrics
                    .commands
                    .with_label_values(&["frame", code.as_str()])
                    .inc();
                out.outbox
                    .push_reply(&ServerFrame::error(None, code, e.to_string()));
                flush(&mut conn, &out, &gw).await.ok();
                close_reason = Some((Some(code), e.to_string()));
                break 'session;
            }
            Event::Inbound(Some(Ok(frame))) => {
                last_rx = Instant::now();
                if frame.is_empty() {
                    continue; // keepalive (a pong, or an empty frame from the client)
                }
                gw.metrics.bytes_in.inc_by(frame.len() as u64);
                let frames: Vec<ClientFrame> = match info.encoding.decode_all(&frame) {
                    Ok(f) => f,
                    Err(e) => {
                        gw.metrics
                            .commands
                            .with_label_values(&["frame", e.code().as_str()])
                            .inc();
                        out.outbox
                            .push_reply(&ServerFrame::error(None, e.code(), e.to_string()));
                        continue;
                    }
                };
                // Consecutive publishes are gathered and run through the plugins
                // together (one `on-batch` per plugin); anything else first settles
                // the publishes before it, so replies keep the frame's order.
                let mut publishes: Vec<Publish> = Vec::new();
                for f in frames {
                    let kind = frame_kind(&f);
                    let handled = session.handle(f, last_rx);
                    if let Ok(Command::Publish { id, req, ack }) = handled {
                        publishes.push(Publish { id, req, ack });
                        continue;
                    }
                    if !publishes.is_empty() {
                        let batch = std::mem::take(&mut publishes);
                        Box::pin(publish_all(batch, &gw, &out, &session, &mut pending)).await;
                    }
                    match handled {
                        Ok(cmd) => {
                            // Boxed: a command's state (plugin calls, store reads) lives
                            // only while it runs, not in every idle session's task.
                            Box::pin(execute(
                                cmd,
                                &gw,
                                &out,
                                &mut session,
                                &mut pending,
                                &mut delivery,
                                &info,
                            ))
                            .await;
                        }
                        Err(reply) => {
                            if let ServerFrame::Error { code, .. } = &*reply {
                                gw.metrics
                                    .commands
                                    .with_label_values(&[kind, code.as_str()])
                                    .inc();
                            }
                            out.outbox.push_reply(&reply);
                        }
                    }
                }
                if !publishes.is_empty() {
                    Box::pin(publish_all(publishes, &gw, &out, &session, &mut pending)).await;
                }
            }
            Event::Datagram(None) => datagrams = None,
            Event::Datagram(Some(d)) => Box::pin(ephemeral(&gw, &mut session, &d, &info)).await,
            Event::CatchUp => {
                if let Some(mut c) = delivery.catchups.pop_front() {
                    match catch_up_step(&gw, &mut c) {
                        Ok(true) => {}
                        Ok(false) => delivery.catchups.push_back(c),
                        Err(e) => {
                            tracing::warn!(conn_id, error = %e, "catch-up read failed");
                            out.outbox.close(
                                ErrorCode::StorageUnavailable,
                                "reading stored messages failed",
                            );
                        }
                    }
                }
            }
            Event::Timer => {
                let now = Instant::now();
                if now.duration_since(last_rx).as_millis() as u64 >= limits.idle_timeout_ms {
                    out.outbox.close(
                        ErrorCode::IdleTimeout,
                        "nothing received within the idle timeout",
                    );
                } else if conn.ping().await.is_err() {
                    close_reason = Some((None, "ping failed".into()));
                    break 'session;
                } else {
                    last_tx = now;
                }
            }
        }
        if draining && pending.is_empty() && out.outbox.depth() == 0 {
            break 'session;
        }
    }
    if session.client_id().is_some() {
        Box::pin(gw.disconnected(&sender(&out, &session))).await;
    }
    // Teardown: subscriptions first so fan-out stops queueing, then close the transport.
    let subs: Vec<SubId> = session.subscriptions().map(|(_, s)| *s).collect();
    gw.metrics.subscriptions.sub(subs.len() as i64);
    gw.broker.remove_conn(subs);
    for lane in delivery.lanes.iter().flat_map(|set| set.lanes.values()) {
        lane.outbox.finish();
    }
    let (code, reason) = close_reason.unwrap_or((None, "closed".into()));
    if draining {
        flush(&mut conn, &out, &gw).await.ok();
    }
    conn.close(code, &reason).await;
    let label = code.map_or("normal", |c| c.as_str());
    gw.metrics
        .connections_closed
        .with_label_values(&[label])
        .inc();
    tracing::debug!(conn_id, reason = %reason, "session end");
}

enum Event {
    Shutdown,
    Write,
    Acked(Option<AckDone>),
    Inbound(Option<Result<Bytes, ConnError>>),
    CatchUp,
    Timer,
    Datagram(Option<Bytes>),
}

/// Room in the outbox of the catch-up that runs next.
async fn catch_up_room(catchups: &VecDeque<CatchUp>) {
    match catchups.front() {
        Some(c) => c.target.outbox.wait_room().await,
        None => std::future::pending().await,
    }
}

async fn next_datagram<D: Datagrams>(source: &mut Option<D>) -> Option<Bytes> {
    match source {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

/// Validate one datagram like a `pub`, run it through the same ingest (permissions and
/// message hooks), and fan it out as an ephemeral message (`seq` 0, not stored, not acked).
async fn ephemeral(gw: &Gateway, session: &mut Session, datagram: &[u8], info: &ConnInfo) {
    let now = Instant::now();
    let count = |result: &str| {
        gw.metrics
            .commands
            .with_label_values(&["datagram", result])
            .inc()
    };
    gw.metrics.bytes_in.inc_by(datagram.len() as u64);
    let mut frames: Vec<super::EphemeralPub> = match info.encoding.decode_all(datagram) {
        Ok(f) => f,
        Err(e) => return count(e.code().as_str()),
    };
    let (Some(p), true) = (frames.pop(), frames.is_empty()) else {
        return count(ErrorCode::BadFrame.as_str());
    };
    let mut req = match session.handle_ephemeral(p, now) {
        Ok(req) => req,
        Err(reply) => {
            if let ServerFrame::Error { code, .. } = &*reply {
                count(code.as_str());
            }
            return;
        }
    };
    match gw.ingest_ephemeral(session.principal(), &mut req).await {
        Ok(crate::server::Ingest::Store) => {}
        Ok(crate::server::Ingest::Dropped) => return count("dropped"),
        Err((code, _)) => return count(code.as_str()),
    }
    let hlc = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as u64) << 16)
        .unwrap_or(0);
    let msg = edgesync_protocol::Msg {
        topic: req.topic,
        origin: gw.store.node().to_string(),
        epoch: gw.store.epoch(),
        seq: 0,
        hlc,
        client: req.client,
        mid: None,
        headers: req.headers,
        data: edgesync_protocol::Payload(req.payload),
    };
    gw.broker.fanout_ephemeral(&msg);
    count("ok");
}

/// Write everything queued, in frames of at most [`MAX_BATCH_FRAME`] bytes.
async fn flush<C: Conn>(conn: &mut C, out: &ConnOut, gw: &Gateway) -> Result<(), ConnError> {
    loop {
        // `drain_into` sizes it.
        let mut buf = Vec::new();
        if out.outbox.drain_into(&mut buf, MAX_BATCH_FRAME) == 0 {
            return Ok(());
        }
        gw.metrics.bytes_out.inc_by(buf.len() as u64);
        conn.send(buf).await?;
    }
}

/// Count a refused command and answer it with its error.
fn refuse(gw: &Gateway, out: &ConnOut, kind: &str, id: u64, code: ErrorCode, msg: String) {
    gw.metrics
        .commands
        .with_label_values(&[kind, code.as_str()])
        .inc();
    out.outbox
        .push_reply(&ServerFrame::error(Some(id), code, msg));
}

async fn execute(
    cmd: Command,
    gw: &Arc<Gateway>,
    out: &Arc<ConnOut>,
    session: &mut Session,
    pending: &mut FuturesOrdered<AckFuture>,
    delivery: &mut Delivery,
    info: &ConnInfo,
) {
    let kind = cmd.kind();
    match cmd {
        Command::Connect {
            id,
            client_id,
            token,
        } => {
            match gw
                .authorize(out.id, &client_id, token.as_deref(), info)
                .await
            {
                Ok(auth) => session.set_auth(auth),
                Err((code, msg)) => {
                    session.reset_connect();
                    refuse(gw, out, kind, id, code, msg.clone());
                    out.outbox.close(code, &msg);
                    return;
                }
            }
            gw.set_conn_client(out.id, &client_id);
            let l = gw.settings.limits();
            out.outbox.push_reply(&ServerFrame::Connected {
                id,
                client_id,
                conn_id: out.id,
                node: gw.store.node().to_string(),
                epoch: gw.store.epoch(),
                version: edgesync_protocol::PROTOCOL_VERSION,
                limits: LimitsInfo {
                    max_frame_bytes: l.max_frame_bytes as u64,
                    max_topic_bytes: l.max_topic_bytes as u64,
                    max_headers: l.max_headers as u64,
                    max_subscriptions: l.max_subscriptions as u64,
                    publish_rate_per_sec: u64::from(l.publish_rate_per_sec),
                    idle_timeout_ms: l.idle_timeout_ms,
                },
            });
        }
        Command::Subscribe { id, pattern, start } => {
            if let Err((code, msg)) = gw
                .authorize_subscribe(&sender(out, session), &pattern)
                .await
            {
                refuse(gw, out, kind, id, code, msg);
                return;
            }
            let live = start == StartAt::Latest;
            let target = LaneSet::target(&delivery.lanes, out, gw);
            let (sub, head) = gw.broker.subscribe(&target, &pattern, live);
            session.add_subscription(pattern.clone(), sub);
            gw.metrics.subscriptions.inc();
            let position = match start {
                StartAt::Latest => head,
                StartAt::Earliest => Cursor::new(),
                StartAt::Cursor(mut c) => {
                    c.retain(|t| edgesync_protocol::topic::matches(&pattern, t));
                    c
                }
                StartAt::Last(n) => {
                    let mut c = Cursor::new();
                    for (topic, _) in gw.broker.matching_heads(&pattern) {
                        c.set_topic(&topic, gw.store.last_n_positions(&topic, n));
                    }
                    c
                }
            };
            let reply = ServerFrame::Subscribed {
                id,
                topic: pattern.clone(),
                cursor: position.encode(),
            };
            match &mut delivery.lanes {
                None => out.outbox.push_reply(&reply),
                Some(set) => {
                    // A lane starts with its `subscribed`, ahead of anything fan-out
                    // queued there since `subscribe` (all of it after the reply's cursor).
                    target.outbox.push_reply_front(&reply);
                    set.open(sub, target.clone(), out, gw);
                }
            }
            if !live {
                delivery.catchups.push_back(CatchUp {
                    sub,
                    pattern,
                    position,
                    target,
                });
            }
        }
        Command::Unsubscribe { id, pattern, sub } => {
            gw.broker.unsubscribe(sub);
            delivery.catchups.retain(|c| c.sub != sub);
            gw.metrics.subscriptions.dec();
            let reply = ServerFrame::Unsubscribed { id, topic: pattern };
            match delivery
                .lanes
                .as_mut()
                .and_then(|set| set.lanes.remove(&sub))
            {
                // The lane's last frame; its stream ends after it.
                Some(lane) => {
                    lane.outbox.push_reply(&reply);
                    lane.outbox.finish();
                }
                None => out.outbox.push_reply(&reply),
            }
        }
        Command::Publish { id, mut req, ack } => {
            let started = Instant::now();
            let result = gw.ingest_from(&sender(out, session), &mut req).await;
            after_ingest(gw, out, pending, Publish { id, req, ack }, started, result);
            return;
        }
        Command::History {
            id,
            topic,
            start,
            limit,
        } => {
            let after = match start {
                StartAt::Latest => gw.store.head(&topic),
                StartAt::Earliest => BTreeMap::new(),
                StartAt::Cursor(c) => c.topic(&topic).cloned().unwrap_or_default(),
                StartAt::Last(n) => gw.store.last_n_positions(&topic, n),
            };
            match gw.store.read(&topic, &after, None, limit) {
                Ok(batch) => {
                    for m in &batch.missing {
                        gw.metrics.gap(m.corrupt);
                        out.outbox.push_reply(&gap_frame(&topic, m, &after));
                    }
                    let mut cursor = Cursor::new();
                    cursor.set_topic(&topic, batch.positions.clone());
                    out.outbox.push_reply(&ServerFrame::History {
                        id,
                        topic,
                        msgs: batch.records.iter().map(|r| r.to_msg()).collect(),
                        cursor: cursor.encode(),
                        more: batch.more,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history read failed");
                    out.outbox.push_reply(&ServerFrame::error(
                        Some(id),
                        ErrorCode::StorageUnavailable,
                        e.to_string(),
                    ));
                    gw.metrics
                        .commands
                        .with_label_values(&[kind, "storage_unavailable"])
                        .inc();
                    return;
                }
            }
        }
        Command::Ping { id } => out.outbox.push_reply(&ServerFrame::Pong { id }),
    }
    gw.metrics.commands.with_label_values(&[kind, "ok"]).inc();
}

/// A validated publish waiting to run.
struct Publish {
    id: u64,
    req: AppendRequest,
    ack: bool,
}

/// Several publishes of one frame, in order: plugins see them together
/// ([`Gateway::ingest_batch_from`]); a lone one takes the single path.
async fn publish_all(
    mut batch: Vec<Publish>,
    gw: &Arc<Gateway>,
    out: &Arc<ConnOut>,
    session: &Session,
    pending: &mut FuturesOrdered<AckFuture>,
) {
    let started = Instant::now();
    let who = sender(out, session);
    if batch.len() == 1 {
        let mut p = batch.remove(0);
        let result = gw.ingest_from(&who, &mut p.req).await;
        after_ingest(gw, out, pending, p, started, result);
        return;
    }
    let (meta, mut reqs): (Vec<(u64, bool)>, Vec<AppendRequest>) =
        batch.into_iter().map(|p| ((p.id, p.ack), p.req)).unzip();
    let results = gw.ingest_batch_from(&who, &mut reqs).await;
    for (((id, ack), req), result) in meta.into_iter().zip(reqs).zip(results) {
        after_ingest(gw, out, pending, Publish { id, req, ack }, started, result);
    }
}

/// A publish after the hooks: refused, acknowledged as dropped, or on its way to the
/// store (its ack follows in order through `pending`).
fn after_ingest(
    gw: &Arc<Gateway>,
    out: &ConnOut,
    pending: &mut FuturesOrdered<AckFuture>,
    p: Publish,
    started: Instant,
    result: Result<crate::server::Ingest, (ErrorCode, String)>,
) {
    let Publish { id, req, ack } = p;
    match result {
        Ok(crate::server::Ingest::Store) => {}
        Ok(crate::server::Ingest::Dropped) => {
            gw.metrics
                .commands
                .with_label_values(&["pub", "dropped"])
                .inc();
            if ack {
                // A plugin dropped the message on purpose: acknowledged, not stored.
                out.outbox.push_reply(&ServerFrame::Puback {
                    id,
                    topic: req.topic,
                    origin: String::new(),
                    epoch: 0,
                    seq: 0,
                    hlc: 0,
                    cursor: String::new(),
                    dup: false,
                });
            }
            return;
        }
        Err((code, msg)) => {
            refuse(gw, out, "pub", id, code, msg);
            return;
        }
    }
    let store = gw.store.clone();
    let topic = req.topic.clone();
    pending.push_back(Box::pin(async move {
        let result = store.append(req).await;
        AckDone {
            id,
            topic,
            want_ack: ack,
            started,
            result,
        }
    }));
}

fn sender(out: &ConnOut, session: &Session) -> crate::plugin::Sender {
    crate::plugin::Sender {
        conn_id: out.id,
        client_id: session.client_id().unwrap_or_default().to_string(),
        principal: session.principal().map(str::to_string),
        plugin: None,
    }
}

fn finish_publish(gw: &Gateway, out: &ConnOut, done: AckDone) {
    gw.metrics
        .publish_ack_seconds
        .observe(done.started.elapsed().as_secs_f64());
    match done.result {
        Ok(ack) => {
            gw.metrics.commands.with_label_values(&["pub", "ok"]).inc();
            if done.want_ack {
                let mut cursor = Cursor::new();
                cursor.set_topic(&done.topic, ack.vv.clone());
                out.outbox.push_reply(&ServerFrame::Puback {
                    id: done.id,
                    topic: done.topic,
                    origin: ack.origin.node,
                    epoch: ack.origin.epoch,
                    seq: ack.seq,
                    hlc: ack.hlc,
                    cursor: cursor.encode(),
                    dup: ack.dup,
                });
            }
        }
        Err(e) => {
            let code = match e {
                StoreError::Closed => ErrorCode::ShuttingDown,
                _ => ErrorCode::StorageUnavailable,
            };
            gw.metrics
                .commands
                .with_label_values(&["pub", code.as_str()])
                .inc();
            out.outbox
                .push_reply(&ServerFrame::error(Some(done.id), code, e.to_string()));
        }
    }
}

fn gap_frame(
    topic: &str,
    m: &crate::store::MissingRange,
    _after: &BTreeMap<Origin, u64>,
) -> ServerFrame {
    let mut cursor = Cursor::new();
    cursor.observe(topic, &m.origin, m.from.saturating_sub(1));
    ServerFrame::Gap {
        topic: topic.to_string(),
        origin: m.origin.node.clone(),
        epoch: m.origin.epoch,
        from: m.from,
        to: m.to,
        reason: GapReason::Retention,
        cursor: cursor.encode(),
    }
}

/// One bounded step of catch-up. Returns true when the subscription went live.
fn catch_up_step(gw: &Gateway, c: &mut CatchUp) -> Result<bool, StoreError> {
    let out = &c.target;
    let enc = out.outbox.encoding();
    let mut budget = CATCHUP_CHUNK;
    for (topic, head) in gw.broker.matching_heads(&c.pattern) {
        let after = c.position.topic(&topic).cloned().unwrap_or_default();
        if head
            .iter()
            .all(|(o, s)| after.get(o).copied().unwrap_or(0) >= *s)
        {
            continue;
        }
        let batch = gw.store.read(&topic, &after, Some(&head), budget)?;
        for m in &batch.missing {
            gw.metrics.gap(m.corrupt);
            out.outbox
                .push_history(Bytes::from(enc.encode(&gap_frame(&topic, m, &after))));
        }
        for r in &batch.records {
            out.outbox.push_history(encode_push(r, enc));
        }
        gw.metrics.messages_out.inc_by(batch.records.len() as u64);
        budget = budget.saturating_sub(batch.records.len());
        c.position.set_topic(&topic, batch.positions);
        if budget == 0 {
            return Ok(false);
        }
    }
    Ok(gw.broker.try_go_live(c.sub, &c.position))
}
