//! The async driver of a session: moves frames between a transport and the
//! [`Session`] state machine, executes validated commands through the
//! [`SessionCtx`] handles (pipeline, store reads, broker, auth), and writes the
//! connection's outbox.
//!
//! One task per connection runs [`run`]. It waits on, in priority order:
//! shutdown, outbox ready to write, publish acks completing (in order),
//! the next inbound frame (paused while `max_inflight_publishes` acks are
//! outstanding — the per-connection backpressure edge), catch-up work (only
//! while the outbox has room), datagrams, and the idle/ping timer. Each event is
//! handled by one method of [`Driver`]; command execution lives in
//! [`super::execute`], catch-up and subscription lanes in [`super::delivery`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgesync_protocol::codec::Invalid;
use edgesync_protocol::{ClientFrame, ErrorCode, ServerFrame};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::delivery::Delivery;
use super::execute::{self, AckDone, AckFuture, QueuedPub};
use super::liveness::{Due, Liveness};
use super::{Authorizer, Command, Session, frame_kind};
use crate::broker::{Broker, ConnOut};
use crate::config::Limits;
use crate::conns::ConnRegistry;
use crate::metrics::Metrics;
use crate::model::{ConnInfo, Sender, SubId};
use crate::outbox::Outbox;
use crate::pipeline::Pipeline;
use crate::store::Store;

/// The handles a session needs, shared by every session of a gateway.
pub struct SessionCtx {
    pub limits: Limits,
    /// Ingest: hooks, dead letters, the store append.
    pub pipeline: Arc<Pipeline>,
    /// Reads: history, catch-up, heads, the node's identity.
    pub store: Store,
    pub broker: Arc<Broker>,
    /// Queue groups: members join, answer, and leave at teardown.
    pub queues: Arc<crate::queues::Queues>,
    /// Presence: entered by `presence` subscriptions, left at unsub and teardown.
    pub presence: Arc<crate::presence::Presence>,
    pub conns: Arc<ConnRegistry>,
    pub authorizer: Arc<dyn Authorizer>,
    pub metrics: Arc<Metrics>,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled to start a graceful shutdown.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for SessionCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCtx").finish_non_exhaustive()
    }
}

impl SessionCtx {
    /// Count a command (or frame, datagram) by its type and result.
    pub(crate) fn count(&self, kind: &str, result: &str) {
        self.metrics
            .commands
            .with_label_values(&[kind, result])
            .inc();
    }
}

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
    /// True when the transport itself proves the peer alive (QUIC: keep-alive packets
    /// the peer's stack acknowledges, and the transport's idle timeout). The session
    /// then sends no pings and applies no idle timer of its own.
    fn keeps_alive(&self) -> bool {
        false
    }
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
    fn open(&self, lane: Arc<ConnOut>, session: Arc<ConnOut>, ctx: &SessionCtx);
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

/// The message of the `shutting_down` error push and of the close that follows it.
pub const SHUTTING_DOWN: &str = "gateway is shutting down";

/// Largest frame the writer builds from batched messages.
pub(crate) const MAX_BATCH_FRAME: usize = 256 << 10;
/// Time the closing writes (what is queued, then the final `error`) may take.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Run one connection to completion.
pub async fn run<C: Conn>(conn: C, ctx: Arc<SessionCtx>, info: ConnInfo) {
    run_with_datagrams(conn, ctx, info, None::<NoDatagrams>).await;
}

/// [`run`], plus ephemeral publishes arriving outside the stream (QUIC datagrams, one
/// MessagePack `pub` each). They pass the same session validation as `pub`, then the
/// pipeline fans them out without storing them; a rejected one is counted
/// (`edgesync_commands_total{command="datagram"}`), not answered: it has no id and its
/// delivery was never promised.
pub async fn run_with_datagrams<C: Conn, D: Datagrams>(
    conn: C,
    ctx: Arc<SessionCtx>,
    info: ConnInfo,
    datagrams: Option<D>,
) {
    let conn_id = ctx.conns.next_id();
    let out = ConnOut::new(
        conn_id,
        Outbox::new(
            info.encoding,
            ctx.limits.outbox_frames,
            ctx.limits.outbox_bytes,
        ),
    );
    let _registered = ctx.conns.register(conn_id, &info, &out);
    let now = now();
    let delivery = Delivery::new(conn.lanes(), &ctx.limits);
    let mut d = Driver {
        session: Session::new(ctx.limits.clone(), now),
        liveness: Liveness::new(&ctx.limits, now, conn.keeps_alive()),
        write_timeout: Duration::from_millis(ctx.limits.idle_timeout_ms),
        ctx,
        out,
        info,
        pending: FuturesOrdered::new(),
        backlog: VecDeque::new(),
        delivery,
        last_rx: now,
        draining: false,
        close_reason: None,
    };
    tracing::debug!(conn_id, remote = %d.info.remote, transport = d.info.transport.as_str(), "session start");
    d.run(conn, datagrams).await;
}

/// One connection's state while its task runs.
pub(crate) struct Driver {
    pub(crate) ctx: Arc<SessionCtx>,
    /// The session's outbox (replies, and pushes unless the transport has lanes).
    pub(crate) out: Arc<ConnOut>,
    pub(crate) session: Session,
    pub(crate) info: ConnInfo,
    /// Publishes on their way to the store, in order: acks go out in this order.
    pub(crate) pending: FuturesOrdered<AckFuture>,
    /// Commands of the last frame not run yet: they run only while the outbox has room
    /// for their replies and the in-flight publishes are under their bound, and the
    /// next frame is read only once they all ran. So a frame of commands never queues
    /// more than one outbox of replies before anything is written. (Bounded by
    /// `limits.max_frame_bytes`: one decoded frame.)
    backlog: VecDeque<Result<ClientFrame, Invalid>>,
    pub(crate) delivery: Delivery,
    /// When the last frame arrived (the session's clock for the commands in it).
    last_rx: Instant,
    /// Ping, idle and first-`connect` timers.
    liveness: Liveness,
    /// Longest a single write may wait for the peer to read (`limits.idle_timeout_ms`):
    /// a peer that stops reading is closed instead of holding its slot (finding 8).
    write_timeout: Duration,
    /// Shutdown began: no more reads; finish in-flight publishes, flush, close.
    draining: bool,
    /// How the connection ends (`None` code: a normal close).
    close_reason: Option<(Option<ErrorCode>, String)>,
}

enum Event {
    Shutdown,
    Write,
    Acked(Option<AckDone>),
    Inbound(Option<Result<Bytes, ConnError>>),
    Backlog,
    CatchUp,
    Timer,
    Datagram(Option<Bytes>),
}

/// What to do after an event.
enum Next {
    Continue,
    End,
}

impl Driver {
    async fn run<C: Conn, D: Datagrams>(&mut self, mut conn: C, mut datagrams: Option<D>) {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let deadline = self
                .liveness
                .deadline(self.session.client_id().is_some())
                .map(tokio::time::Instant::from_std);
            let room_for_publishes = self.pending.len() < self.ctx.limits.max_inflight_publishes;
            let backlog = !self.backlog.is_empty();
            let read_ok = !self.draining && room_for_publishes && !backlog;
            let run_backlog = !self.draining && room_for_publishes && backlog;
            let draining = self.draining;
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !draining => Event::Shutdown,
                _ = self.out.outbox.ready() => Event::Write,
                done = self.pending.next(), if !self.pending.is_empty() => Event::Acked(done),
                frame = conn.recv(), if read_ok => Event::Inbound(frame),
                _ = backlog_room(&self.out, &self.delivery), if run_backlog => Event::Backlog,
                _ = self.delivery.room(), if self.delivery.catching_up() && !draining => Event::CatchUp,
                d = next_datagram(&mut datagrams), if datagrams.is_some() && !draining => Event::Datagram(d),
                _ = sleep_until(deadline), if !draining => Event::Timer,
            };
            let next = match event {
                Event::Shutdown => self.on_shutdown(),
                Event::Write => self.on_write(&mut conn).await,
                Event::Acked(done) => self.on_acked(done),
                Event::Inbound(frame) => {
                    if self.session.client_id().is_none() {
                        // Datagrams already waiting arrived before this frame (maybe the
                        // `connect`): they are dropped as not connected, not held for it.
                        while let Some(Some(d)) = next_datagram(&mut datagrams).now_or_never() {
                            Box::pin(execute::datagram(self, &d)).await;
                        }
                    }
                    self.on_inbound(&mut conn, frame).await
                }
                Event::Backlog => {
                    self.run_backlog().await;
                    Next::Continue
                }
                Event::Datagram(None) => {
                    datagrams = None;
                    Next::Continue
                }
                Event::Datagram(Some(d)) => {
                    Box::pin(execute::datagram(self, &d)).await;
                    Next::Continue
                }
                Event::CatchUp => self.on_catch_up(),
                Event::Timer => self.on_timer(&mut conn).await,
            };
            if matches!(next, Next::End)
                || (self.draining && self.pending.is_empty() && self.out.outbox.depth() == 0)
            {
                break;
            }
        }
        self.teardown(conn).await;
    }

    fn on_shutdown(&mut self) -> Next {
        self.draining = true;
        // The final `error` push and the close reason say the same thing (a QUIC or
        // WebSocket client may see only one of them).
        self.out.outbox.push_reply(&ServerFrame::error(
            None,
            ErrorCode::ShuttingDown,
            SHUTTING_DOWN,
        ));
        self.close_reason = Some((Some(ErrorCode::ShuttingDown), SHUTTING_DOWN.into()));
        Next::Continue
    }

    async fn on_write<C: Conn>(&mut self, conn: &mut C) -> Next {
        if let Some(closed) = self.out.outbox.closed() {
            // Flush what is queued, then the reason, then close — within a short bound: a
            // slow consumer being disconnected may not be reading at all.
            let f = ServerFrame::error(None, closed.code, closed.message.clone());
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT.min(self.write_timeout), async {
                flush(&self.out, &self.ctx.metrics, conn, None).await?;
                conn.send(self.info.encoding.encode(&f))
                    .await
                    .map_err(Stalled::Failed)
            })
            .await;
            self.close_reason = Some((Some(closed.code), closed.message));
            return Next::End;
        }
        let flushed = flush(&self.out, &self.ctx.metrics, conn, Some(self.write_timeout)).await;
        match flushed {
            Ok(()) => Next::Continue,
            // Closed while a write waited: the next turn sends the reason and ends.
            Err(Stalled::Closed) => Next::Continue,
            Err(Stalled::Timeout) => {
                tracing::debug!(
                    conn_id = self.out.id,
                    "write timed out: the peer stopped reading"
                );
                self.close_reason = Some((
                    Some(ErrorCode::SlowConsumer),
                    "the client stopped reading".into(),
                ));
                Next::End
            }
            Err(Stalled::Failed(e)) => {
                tracing::debug!(conn_id = self.out.id, error = %e, "write failed");
                self.close_reason = Some((None, "write failed".into()));
                Next::End
            }
        }
    }

    fn on_acked(&mut self, done: Option<AckDone>) -> Next {
        let Some(done) = done else {
            return Next::Continue;
        };
        execute::finish_publish(&self.ctx, &self.out, done);
        // Every other ack already complete (a group commit completes many at once) joins
        // it before the next write: one frame and one write per wake, not per ack — and a
        // pipelining client refills its window with one frame of publishes, which the
        // plugins then see as one batch. (Polling with a no-op waker is safe: the next
        // `select!` polls `pending` again with this task's waker before it sleeps.)
        while let Some(Some(done)) = self.pending.next().now_or_never() {
            execute::finish_publish(&self.ctx, &self.out, done);
        }
        Next::Continue
    }

    async fn on_inbound<C: Conn>(
        &mut self,
        conn: &mut C,
        frame: Option<Result<Bytes, ConnError>>,
    ) -> Next {
        let frame = match frame {
            None => {
                self.close_reason = Some((None, "client closed".into()));
                return Next::End;
            }
            Some(Err(e)) => return self.on_transport_error(conn, e).await,
            Some(Ok(frame)) => frame,
        };
        self.last_rx = now();
        self.liveness.received(self.last_rx);
        if frame.is_empty() {
            return Next::Continue; // keepalive (a pong, or an empty frame from the client)
        }
        self.ctx.metrics.bytes_in.inc_by(frame.len() as u64);
        match self.info.encoding.decode_each::<ClientFrame>(&frame) {
            Ok(frames) => {
                self.backlog.extend(frames);
                self.run_backlog().await;
            }
            Err(e) => {
                self.ctx.count("frame", e.code().as_str());
                self.out
                    .outbox
                    .push_reply(&ServerFrame::error(None, e.code(), e.to_string()));
            }
        }
        Next::Continue
    }

    async fn on_transport_error<C: Conn>(&mut self, conn: &mut C, e: ConnError) -> Next {
        let code = match e {
            ConnError::TooLarge(_) => ErrorCode::FrameTooLarge,
            ConnError::Protocol(_) => ErrorCode::BadFrame,
            ConnError::Io(_) => {
                self.close_reason = Some((None, e.to_string()));
                return Next::End;
            }
        };
        self.ctx.count("frame", code.as_str());
        self.out
            .outbox
            .push_reply(&ServerFrame::error(None, code, e.to_string()));
        flush(&self.out, &self.ctx.metrics, conn, Some(self.write_timeout))
            .await
            .ok();
        self.close_reason = Some((Some(code), e.to_string()));
        Next::End
    }

    /// The backlog's commands, in order, while the outbox has room for their replies and
    /// the in-flight publishes are under their bound (the rest waits for the writer or
    /// the acks). Consecutive publishes are gathered and run through the plugins
    /// together (one `on-batch` per plugin); anything else first settles the publishes
    /// before it, so replies keep the frame's order. A message that is well-formed but
    /// not a valid command is answered `bad_request` with its `id`, in its place.
    async fn run_backlog(&mut self) {
        let mut publishes: Vec<QueuedPub> = Vec::new();
        let max_inflight = self.ctx.limits.max_inflight_publishes;
        while self.out.outbox.has_reply_room()
            && self.delivery.reply_room()
            && self.pending.len() + publishes.len() < max_inflight
        {
            let Some(f) = self.backlog.pop_front() else {
                break;
            };
            let (kind, handled) = match f {
                Ok(f) => (frame_kind(&f), self.session.handle(f, self.last_rx)),
                Err(invalid) => (
                    "frame",
                    Err(Box::new(ServerFrame::error(
                        invalid.id,
                        ErrorCode::BadRequest,
                        invalid.message,
                    ))),
                ),
            };
            if let Ok(Command::Publish { id, req, ack }) = handled {
                publishes.push(QueuedPub { id, req, ack });
                continue;
            }
            if !publishes.is_empty() {
                let batch = std::mem::take(&mut publishes);
                Box::pin(execute::publish_all(self, batch)).await;
            }
            match handled {
                // Boxed: a command's state (plugin calls, store reads) lives only while
                // it runs, not in every idle session's task.
                Ok(cmd) => Box::pin(execute::command(self, cmd)).await,
                Err(reply) => {
                    if let ServerFrame::Error { code, .. } = &*reply {
                        self.ctx.count(kind, code.as_str());
                    }
                    self.out.outbox.push_reply(&reply);
                }
            }
        }
        if !publishes.is_empty() {
            Box::pin(execute::publish_all(self, publishes)).await;
        }
    }

    fn on_catch_up(&mut self) -> Next {
        if let Err(e) = self.delivery.step(&self.ctx) {
            tracing::warn!(conn_id = self.out.id, error = %e, "catch-up read failed");
            self.out.outbox.close(
                ErrorCode::StorageUnavailable,
                "reading stored messages failed",
            );
        }
        Next::Continue
    }

    async fn on_timer<C: Conn>(&mut self, conn: &mut C) -> Next {
        let now = now();
        match self.liveness.due(now, self.session.client_id().is_some()) {
            Due::Nothing => {}
            Due::Close(code, message) => self.out.outbox.close(code, message),
            Due::Ping => {
                // Bounded like any write: a ping stuck behind an unread socket must not
                // hold the connection past the write timeout.
                match tokio::time::timeout(self.write_timeout, conn.ping()).await {
                    Ok(Ok(())) => self.liveness.pinged(now),
                    Ok(Err(_)) | Err(_) => {
                        self.close_reason = Some((None, "ping failed".into()));
                        return Next::End;
                    }
                }
            }
        }
        Next::Continue
    }

    /// Who this session is, for the pipeline and the auth hooks.
    pub(crate) fn sender(&self) -> Sender {
        Sender {
            conn_id: self.out.id,
            client_id: self.session.client_id().unwrap_or_default().to_string(),
            principal: self.session.principal().map(str::to_string),
            plugin: None,
        }
    }

    /// Subscriptions first so fan-out stops queueing, then close the transport.
    async fn teardown<C: Conn>(&mut self, mut conn: C) {
        if self.session.client_id().is_some() {
            let sender = self.sender();
            Box::pin(self.ctx.authorizer.disconnect(&sender)).await;
        }
        let subs: Vec<SubId> = self.session.subscriptions().map(|(_, s)| *s).collect();
        self.ctx.metrics.subscriptions.sub(subs.len() as i64);
        self.ctx.broker.remove_conn(subs);
        self.ctx.queues.leave_conn(self.out.id);
        self.ctx.presence.leave_conn(self.out.id);
        self.delivery.finish_lanes();
        let (code, reason) = self.close_reason.take().unwrap_or((None, "closed".into()));
        if self.draining {
            flush(
                &self.out,
                &self.ctx.metrics,
                &mut conn,
                Some(self.write_timeout),
            )
            .await
            .ok();
        }
        conn.close(code, &reason).await;
        let label = code.map_or("normal", |c| c.as_str());
        self.ctx
            .metrics
            .connections_closed
            .with_label_values(&[label])
            .inc();
        tracing::debug!(conn_id = self.out.id, reason = %reason, "session end");
    }
}

/// Why [`flush`] stopped before the outbox was empty.
enum Stalled {
    /// One write waited longer than the write timeout: the peer stopped reading.
    Timeout,
    /// The outbox was closed (e.g. `slow_consumer` under the disconnect policy) while a
    /// write waited; the write was abandoned.
    Closed,
    /// The transport failed.
    Failed(ConnError),
}

/// Write everything queued in `out`, in frames of at most [`MAX_BATCH_FRAME`] bytes.
/// With `timeout`, each write is bounded by it and abandoned when the outbox closes
/// meanwhile, so a peer that stops reading never holds the session in a write.
/// (A free function taking fields: the driver is not `Sync` — its pending acks are not —
/// so no `&Driver` may live across an await.)
async fn flush<C: Conn>(
    out: &ConnOut,
    metrics: &Metrics,
    conn: &mut C,
    timeout: Option<Duration>,
) -> Result<(), Stalled> {
    loop {
        // `drain_into` sizes it.
        let mut buf = Vec::new();
        if out.outbox.drain_into(&mut buf, MAX_BATCH_FRAME) == 0 {
            return Ok(());
        }
        metrics.bytes_out.inc_by(buf.len() as u64);
        let Some(timeout) = timeout else {
            conn.send(buf).await.map_err(Stalled::Failed)?;
            continue;
        };
        let write = async {
            tokio::select! {
                biased;
                r = conn.send(buf) => r.map_err(Stalled::Failed),
                () = out.outbox.wait_closed(), if out.outbox.closed().is_none() => {
                    Err(Stalled::Closed)
                }
            }
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| Stalled::Timeout)??;
    }
}

/// The current time on tokio's clock (which tests pause and advance), as the
/// `std` instant the I/O-free session logic takes.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the backlog's next command may run: the session's outbox, and the
/// lanes' shared budget when the transport has lanes, have room for its reply.
async fn backlog_room(out: &ConnOut, delivery: &Delivery) {
    out.outbox.wait_reply_room().await;
    delivery.wait_reply_room().await;
}

async fn next_datagram<D: Datagrams>(source: &mut Option<D>) -> Option<Bytes> {
    match source {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}
