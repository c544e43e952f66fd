//! One peer connection: a task that owns a [`Link`] and moves its bytes.
//!
//! The task follows the core's call order (`edgesync_replication` crate docs): it feeds
//! the link every frame read from any stream, every batch the store commits, the
//! answers to its reads and applies and its timer, and after each call carries out the
//! link's actions in order. Nothing in it waits on the peer while holding the link:
//!
//! - each stream has a reader task that splits frames (limit `wire::MAX_FRAME_BYTES`)
//!   into one bounded channel (256 frames; a full channel stops reading, and QUIC flow
//!   control then holds the peer);
//! - each stream has a writer task fed by an unbounded queue: what the link sends is
//!   bounded by the peer's credit (records) and by one message per request (control);
//! - reads run on the blocking pool (`Store::read_range`, at most
//!   `LinkConfig::reads_in_flight` at once); applies run on an apply task in rounds:
//!   what queued since the last round, one `Store::apply` (one atomic batch, one fsync)
//!   per (topic, origin), then each batch's durable set is acked.
//!
//! A link that falls more than `COMMITTED_BUFFER` committed batches behind closes and is
//! redialed: reconnecting is "summary, diff, stream", so nothing is lost, only redone.
//!
//! A record a read finds corrupt is never sent; the driver tells every link
//! (`handle_corrupt`), so each asks its peer for a good copy at once. Corruption a
//! client's read finds reaches links through the store's durable corrupt list, pulled
//! on every reconnect and digest round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgesync_protocol::Origin;
use edgesync_protocol::codec::LengthPrefixed;
use edgesync_protocol::topic::matches;
use edgesync_replication::wire::{self, Direction, RecordBody, RefuseReason, StreamId};
use edgesync_replication::{
    Action, ApplyBatch, ApplyOutcome, CloseReason, Committed as CoreCommitted, Link, LinkConfig,
    LinkEvent, LocalView, LwwEntry, ReadRequest, ReadResult, VersionVector,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{broadcast, mpsc};

use super::Peers;
use crate::config::PeerDirection;
use crate::presence::{PRESENCE_NAMESPACE, Presence};
use crate::store::{Applied, ApplyRequest, Committed, LwwBatch, Record, Store};

/// QUIC application close code: the link ended normally.
pub const CLOSE_NORMAL: u32 = 0x0;
/// QUIC application close code: the peer was refused (certificate, identity, cluster).
pub const CLOSE_REFUSED: u32 = 0x10;
/// QUIC application close code: a protocol error or a local failure.
pub const CLOSE_ERROR: u32 = 0x11;

/// Frames read but not yet handled, per link.
const FRAME_QUEUE: usize = 256;
/// Largest read from a stream at once.
const READ_CHUNK: usize = 64 << 10;
/// How long the dialer waits for the peer's control stream / the acceptor for the dialer's.
const CONTROL_STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the link's lag and backlog are recomputed for status and metrics.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What one link carries, from this side.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub direction: PeerDirection,
    pub topics: Vec<String>,
    /// The node id the peer's certificate must name (a dialed `[[peer]]` with `node_id`).
    pub expect_node: Option<String>,
}

/// Answers from the blocking pool and the apply task.
enum Op {
    Read(u64, String, Origin, Result<ReadResult, String>),
    Applied(u64, ApplyOutcome, usize),
}

/// Run a link on `connection` until it ends. Returns the peer's node id, or why the
/// link could not start.
///
/// # Errors
/// A refused certificate, a peer that is not the expected node, or no control stream.
pub async fn run(
    hub: Arc<Peers>,
    connection: Connection,
    dialed: bool,
    settings: LinkSettings,
) -> Result<String, String> {
    let remote = connection.remote_address();
    let certs = crate::transport::quic::presented_certs(&connection);
    let peer = match hub.tls.verify_peer(certs.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            hub.refused("certificate");
            connection.close(CLOSE_REFUSED.into(), e.as_bytes());
            return Err(format!("peer link refused: {e}"));
        }
    };
    if let Some(expected) = settings.expect_node.as_deref().filter(|e| *e != peer) {
        hub.refused("identity");
        let why = format!("the certificate names node {peer:?}, the [[peer]] entry {expected:?}");
        connection.close(CLOSE_REFUSED.into(), why.as_bytes());
        return Err(format!("peer link refused: {why}"));
    }
    if !dialed {
        // The listener's transport allows clients no unidirectional stream; a peer
        // opens one per data lane.
        connection
            .set_max_concurrent_uni_streams(VarInt::from_u32(super::tls::MAX_PEER_UNI_STREAMS));
    }
    let (control_send, control_recv) = match control_stream(&connection, dialed).await {
        Ok(s) => s,
        Err(e) => {
            connection.close(CLOSE_ERROR.into(), b"no control stream");
            return Err(e);
        }
    };
    let (id, close) = hub.register(&peer, remote, dialed);
    tracing::info!(%peer, %remote, dialed, "peer connection established");
    let mut driver = Driver::new(hub.clone(), connection.clone(), &peer, id, &settings);
    driver.spawn_io(control_send, control_recv);
    let ended = driver.run(close).await;
    hub.unregister(id);
    driver.finish(ended).await;
    Ok(peer)
}

/// The dialer opens the control stream; the acceptor takes it.
async fn control_stream(
    connection: &Connection,
    dialed: bool,
) -> Result<(SendStream, RecvStream), String> {
    let open = async {
        if dialed {
            connection.open_bi().await
        } else {
            connection.accept_bi().await
        }
    };
    match tokio::time::timeout(CONTROL_STREAM_TIMEOUT, open).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!(
            "peer connection lost before the control stream: {e}"
        )),
        Err(_) => Err("no control stream in time".into()),
    }
}

/// How a link ended: the close reason to count and log, and the QUIC close code.
struct Ended {
    reason: &'static str,
    detail: String,
    code: u32,
}

/// The state of one link task.
struct Driver {
    hub: Arc<Peers>,
    connection: Connection,
    peer: String,
    id: u64,
    link: Link,
    filters: Vec<String>,
    started: Instant,
    frames_tx: mpsc::Sender<Result<Bytes, String>>,
    frames_rx: mpsc::Receiver<Result<Bytes, String>>,
    ops_tx: mpsc::UnboundedSender<Op>,
    ops_rx: mpsc::UnboundedReceiver<Op>,
    apply_tx: mpsc::UnboundedSender<ApplyBatch>,
    apply_rx: Option<mpsc::UnboundedReceiver<ApplyBatch>>,
    control_tx: Option<mpsc::UnboundedSender<Bytes>>,
    lanes: Vec<Option<mpsc::UnboundedSender<Bytes>>>,
    control_writer: Option<tokio::task::JoinHandle<()>>,
    committed: broadcast::Receiver<Committed>,
    /// Corrupt records found by any link's reads.
    corrupt: broadcast::Receiver<(String, Origin, u64)>,
    /// New LWW winners (local plugin kv writes, merges by other links): sent live.
    lww: broadcast::Receiver<LwwBatch>,
    /// The same for presence entries.
    presence_lww: broadcast::Receiver<LwwBatch>,
    /// What the peer sent us per topic (it held it durably): with its acks, what the lag
    /// gauge counts as on the peer.
    peer_has: HashMap<String, VersionVector>,
    /// The peer's current origin: never counted as lag (it is the peer's own).
    peer_origin: Option<Origin>,
    bytes_in: prometheus::IntCounter,
    bytes_out: prometheus::IntCounter,
    records_in: prometheus::IntCounter,
}

impl Driver {
    fn new(
        hub: Arc<Peers>,
        connection: Connection,
        peer: &str,
        id: u64,
        settings: &LinkSettings,
    ) -> Self {
        // Subscribed before the link reads any vector: nothing committed is missed.
        let committed = hub.committed.subscribe();
        let corrupt = hub.corrupt.subscribe();
        // Before the link's digest exchange: a write is either in the digest or sent live.
        let lww = hub.store.subscribe_lww();
        let presence_lww = hub.presence.subscribe_lww();
        let direction = match settings.direction {
            PeerDirection::Push => Direction::Push,
            PeerDirection::Pull => Direction::Pull,
            PeerDirection::Both => Direction::Both,
        };
        let mut cfg = LinkConfig::new(&hub.cluster.id, &hub.node_id, hub.store.epoch(), direction);
        cfg.filters = settings.topics.clone();
        cfg.digest_interval_ms = hub.cluster.digest_interval_ms;
        let link = Link::new(cfg, Some(peer.to_string()));
        let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let m = &hub.metrics;
        Driver {
            bytes_in: m.peer_bytes.with_label_values(&[peer, "in"]),
            bytes_out: m.peer_bytes.with_label_values(&[peer, "out"]),
            records_in: m.peer_records_in.with_label_values(&[peer]),
            hub,
            connection,
            peer: peer.to_string(),
            id,
            link,
            filters: settings.topics.clone(),
            started: Instant::now(),
            frames_tx,
            frames_rx,
            ops_tx,
            ops_rx,
            apply_tx,
            apply_rx: Some(apply_rx),
            control_tx: None,
            lanes: Vec::new(),
            control_writer: None,
            committed,
            corrupt,
            lww,
            presence_lww,
            peer_has: HashMap::new(),
            peer_origin: None,
        }
    }

    /// The peer sent these records and gaps: it holds them.
    fn note_peer_has(&mut self, batch: &ApplyBatch) {
        let vv = self.peer_has.entry(batch.topic.clone()).or_default();
        for r in &batch.records {
            vv.insert(&batch.origin, r.seq);
        }
        for &(from, to) in &batch.gaps {
            vv.insert_range(&batch.origin, from, to);
        }
    }

    /// Readers for the control stream and every lane the peer opens; the control writer;
    /// the apply task.
    fn spawn_io(&mut self, send: SendStream, recv: RecvStream) {
        let tasks = &self.hub.tasks;
        tasks.spawn(read_frames(recv, self.frames_tx.clone(), true));
        let (conn, frames) = (self.connection.clone(), self.frames_tx.clone());
        tasks.spawn(async move {
            while let Ok(lane) = conn.accept_uni().await {
                tokio::spawn(read_frames(lane, frames.clone(), false));
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        self.control_tx = Some(tx);
        self.control_writer = Some(tokio::spawn(write_frames(send, rx)));
        if let Some(rx) = self.apply_rx.take() {
            tokio::spawn(apply_task(self.hub.store.clone(), rx, self.ops_tx.clone()));
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The event loop; returns how the link ended.
    async fn run(&mut self, close: tokio_util::sync::CancellationToken) -> Ended {
        let mut status = tokio::time::interval(STATUS_EVERY);
        loop {
            if let Some(ended) = self.drain() {
                return ended;
            }
            let timer = self.link.poll_timeout().map(|t| {
                let at = self.started + Duration::from_millis(t);
                tokio::time::Instant::from_std(at)
            });
            let (store, presence) = (self.hub.store.clone(), self.hub.presence.clone());
            let store = View {
                store: &store,
                presence: &presence,
            };
            tokio::select! {
                _ = close.cancelled() => {
                    self.link.close();
                    if self.hub.is_duplicate(self.id) {
                        return ended("duplicate", "another link to this peer is kept".into(), CLOSE_NORMAL);
                    }
                }
                Some(op) = self.ops_rx.recv() => match op {
                    Op::Read(id, topic, origin, Ok(result)) => {
                        // Never sent; every link (this one too) asks its peer for them.
                        for &seq in &result.corrupt {
                            let _ = self.hub.corrupt.send((topic.clone(), origin.clone(), seq));
                        }
                        self.link.handle_read(id, result, &store);
                    }
                    Op::Read(_, _, _, Err(e)) => {
                        return ended("store", format!("reading the log failed: {e}"), CLOSE_ERROR);
                    }
                    Op::Applied(id, outcome, stored) => {
                        self.records_in.inc_by(stored as u64);
                        self.hub.update(self.id, |s| s.records_in += stored as u64);
                        self.link.handle_applied(id, outcome);
                    }
                },
                frame = self.frames_rx.recv() => match frame {
                    Some(Ok(body)) => {
                        self.bytes_in.inc_by(body.len() as u64 + 4);
                        self.hub.update(self.id, |s| s.bytes_in += body.len() as u64 + 4);
                        let now = self.now();
                        self.link.handle_frame(now, &body, &store);
                    }
                    Some(Err(e)) => return ended("connection", e, CLOSE_NORMAL),
                    None => return ended("connection", "streams ended".into(), CLOSE_NORMAL),
                },
                batch = self.committed.recv() => match batch {
                    Ok(batch) => self.on_committed(&batch, &store),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return ended("lagged", format!("{n} committed batches behind; reconnecting to resync"), CLOSE_NORMAL);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return ended("local", "gateway stopping".into(), CLOSE_NORMAL);
                    }
                },
                _ = sleep_until(timer), if timer.is_some() => {
                    let now = self.now();
                    self.link.handle_timeout(now, &store);
                }
                batch = self.lww.recv() => if let Some(ended) = self.on_lww(batch) {
                    return ended;
                },
                batch = self.presence_lww.recv() => if let Some(ended) = self.on_lww(batch) {
                    return ended;
                },
                notice = self.corrupt.recv() => {
                    if let Ok((topic, origin, seq)) = notice {
                        self.link.handle_corrupt(&topic, &origin, seq);
                    }
                }
                _ = status.tick() => self.refresh_status(&store),
            }
        }
    }

    /// Hand a committed batch to the link, grouped by (topic, origin), only for topics
    /// this side carries (the link checks the peer's filters too).
    fn on_committed(&mut self, batch: &Committed, view: &impl LocalView) {
        if !self.link.is_up() {
            return;
        }
        for group in group_committed(batch, &self.filters) {
            self.link.handle_committed(&group, view);
        }
    }

    /// Carry out the link's actions; `Some` when the link closed.
    fn drain(&mut self) -> Option<Ended> {
        while let Some(action) = self.link.poll_action() {
            tracing::trace!(peer = %self.peer, action = ?ActionKind(&action), "link action");
            match action {
                Action::Send { stream, frame } => self.send(stream, frame),
                Action::Read(req) => self.read(req),
                Action::Apply(batch) => {
                    self.note_peer_has(&batch);
                    let _ = self.apply_tx.send(batch);
                }
                Action::LwwMerge(entries) => {
                    if let Some(ended) = self.lww_merge(entries) {
                        return Some(ended);
                    }
                }
                Action::PeerDurable {
                    topic,
                    origin,
                    durable,
                } => {
                    // Only this node's own records are waited for (`replicated(k)`).
                    if origin == *self.hub.store.local_origin() {
                        self.hub.acks.peer_durable(&self.peer, &topic, &durable);
                    }
                }
                Action::Up(up) => {
                    tracing::info!(peer = %self.peer, epoch = up.peer_epoch, sends = up.sends, receives = up.receives, filters_differ = up.filters_differ, "peer link up");
                    self.peer_origin = Some(Origin::new(up.peer_node.clone(), up.peer_epoch));
                    if up.sends {
                        self.hub.acks.peer_receives(&self.peer, &self.filters);
                    }
                    self.hub.link_up(self.id, up.sends, up.receives);
                }
                Action::Closed(reason) => return Some(self.closed(reason)),
                Action::Event(e) => self.event(e),
            }
        }
        None
    }

    /// New LWW winners made here or by another link: send them to the peer.
    fn on_lww(&mut self, batch: Result<LwwBatch, broadcast::error::RecvError>) -> Option<Ended> {
        match batch {
            Ok(batch) if batch.source != self.id => self.link.send_lww(&batch.entries),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Some(ended(
                    "lagged",
                    format!("{n} LWW batches behind; reconnecting to resync"),
                    CLOSE_NORMAL,
                ));
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Some(ended("local", "gateway stopping".into(), CLOSE_NORMAL));
            }
        }
        None
    }

    /// Merge LWW entries from the peer into the store (plugin kv) and presence; the winners go to the other
    /// links through the store's channel. A failed write ends the link (the store is
    /// poisoned or broken; the peer resends on the next connection's digest exchange).
    fn lww_merge(&mut self, entries: Vec<LwwEntry>) -> Option<Ended> {
        let received = entries.len();
        let (presence, kv): (Vec<LwwEntry>, Vec<LwwEntry>) = entries
            .into_iter()
            .partition(|e| e.namespace == PRESENCE_NAMESPACE);
        let from_presence = self.hub.presence.lww_merge(presence, self.id);
        match self.hub.store.lww_merge(kv, self.id) {
            Ok(mut merged) => {
                merged.winners.extend(from_presence.winners);
                merged.stale += from_presence.stale;
                merged.clamped += from_presence.clamped;
                merged.refused += from_presence.refused;
                let m = &self.hub.metrics;
                m.peer_lww_entries
                    .with_label_values(&["won"])
                    .inc_by(merged.winners.len() as u64);
                m.peer_lww_entries
                    .with_label_values(&["stale"])
                    .inc_by(merged.stale as u64);
                m.peer_lww_entries
                    .with_label_values(&["refused"])
                    .inc_by(merged.refused as u64);
                m.peer_lww_clamped.inc_by(merged.clamped as u64);
                if merged.clamped > 0 {
                    tracing::warn!(peer = %self.peer, entries = merged.clamped, "LWW entries stamped beyond the clock drift bound: stored clamped (a clock in the cluster runs ahead)");
                }
                tracing::debug!(peer = %self.peer, received, won = merged.winners.len(), stale = merged.stale, "LWW entries merged");
                None
            }
            Err(e) => Some(ended(
                "store",
                format!("merging LWW entries failed: {e}"),
                CLOSE_ERROR,
            )),
        }
    }

    fn send(&mut self, stream: StreamId, frame: Bytes) {
        self.bytes_out.inc_by(frame.len() as u64);
        let len = frame.len() as u64;
        self.hub.update(self.id, |s| s.bytes_out += len);
        let tx = match stream {
            StreamId::Control => self.control_tx.as_ref(),
            StreamId::Lane(n) => {
                let n = usize::from(n);
                if self.lanes.len() <= n {
                    self.lanes.resize(n + 1, None);
                }
                if self.lanes[n].is_none() {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let conn = self.connection.clone();
                    tokio::spawn(async move {
                        if let Ok(send) = conn.open_uni().await {
                            write_frames(send, rx).await;
                        }
                    });
                    self.lanes[n] = Some(tx);
                }
                self.lanes[n].as_ref()
            }
        };
        if let Some(tx) = tx {
            let _ = tx.send(frame);
        }
    }

    fn read(&self, req: ReadRequest) {
        let store = self.hub.store.clone();
        let ops = self.ops_tx.clone();
        tokio::task::spawn_blocking(move || {
            let id = req.id;
            let result = store
                .read_range(
                    &req.topic,
                    &req.origin,
                    req.from,
                    req.to,
                    req.max_records as usize,
                    req.max_bytes,
                )
                .map(|r| ReadResult {
                    records: r
                        .records
                        .into_iter()
                        .map(|r| RecordBody {
                            seq: r.seq,
                            hlc: r.hlc,
                            crc: r.crc,
                            bytes: r.bytes,
                        })
                        .collect(),
                    truncated: r.truncated,
                    corrupt: r.corrupt,
                    end: r.end,
                })
                .map_err(|e| e.to_string());
            let _ = ops.send(Op::Read(id, req.topic, req.origin, result));
        });
    }

    fn closed(&mut self, reason: CloseReason) -> Ended {
        let detail = reason.to_string();
        match &reason {
            CloseReason::Refused { reason: r, .. } => {
                self.hub.refused(refuse_label(*r));
                tracing::warn!(peer = %self.peer, "peer link refused: {detail}");
                ended("refused", detail, CLOSE_REFUSED)
            }
            CloseReason::RefusedByPeer { .. } => {
                self.hub.refused("by_peer");
                tracing::warn!(peer = %self.peer, "{detail}");
                ended("refused", detail, CLOSE_REFUSED)
            }
            CloseReason::Protocol(_) => ended("protocol", detail, CLOSE_ERROR),
            CloseReason::Wire(_) => ended("wire", detail, CLOSE_ERROR),
            CloseReason::Store(_) => ended("store", detail, CLOSE_ERROR),
            CloseReason::Local => ended("local", detail, CLOSE_NORMAL),
        }
    }

    fn event(&self, e: LinkEvent) {
        let m = &self.hub.metrics;
        match e {
            LinkEvent::GapReceived {
                topic,
                origin,
                from,
                to,
            } => {
                m.peer_gaps.inc();
                tracing::error!(peer = %self.peer, %topic, %origin, from, to, "records lost to the peer's retention before they reached this node: stored as a gap marker");
            }
            LinkEvent::DigestMismatch {
                topic,
                origin,
                ranges,
            } => {
                m.peer_digest_mismatches.inc();
                tracing::warn!(peer = %self.peer, %topic, %origin, ranges = ?ranges, "digest mismatch; pulling the ranges again");
            }
            LinkEvent::Rejected {
                topic,
                origin,
                seqs,
            } => {
                tracing::warn!(peer = %self.peer, %topic, %origin, seqs = ?seqs, "records from the peer failed verification; pulling them again");
            }
            LinkEvent::Unavailable {
                topic,
                origin,
                seqs,
            } => {
                tracing::warn!(peer = %self.peer, %topic, %origin, seqs = ?seqs.ranges(), "local records not servable (corrupt); not sent");
            }
        }
    }

    /// Lag (records held here of the carried topics that the peer has not acked) and backlog.
    fn refresh_status(&self, view: &impl LocalView) {
        if !self.link.is_up() {
            return;
        }
        let mut lag = 0u64;
        for topic in view.topics() {
            if !self.filters.iter().any(|f| matches(f, &topic)) {
                continue;
            }
            let Some(local) = view.vector(&topic) else {
                continue;
            };
            let acked = self.link.peer_durable(&topic);
            let sent_us = self.peer_has.get(&topic);
            for (origin, set) in local.iter() {
                if self.peer_origin.as_ref() == Some(origin) {
                    continue;
                }
                let mut missing = set.clone();
                for held in [acked, sent_us].into_iter().flatten() {
                    if let Some(h) = held.get(origin) {
                        missing = missing.difference(h);
                    }
                }
                lag += missing.len();
            }
        }
        let backlog = self.link.backlog_messages() as u64;
        let sends = self.hub.links.lock().get(&self.id).is_some_and(|s| s.sends);
        let lag = if sends { lag } else { 0 };
        self.hub.update(self.id, |s| {
            s.lag_records = lag;
            s.backlog_messages = backlog;
        });
        self.hub
            .metrics
            .peer_lag_records
            .with_label_values(&[self.peer.as_str()])
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Count and log the end, let the control stream flush, close the connection.
    async fn finish(mut self, ended: Ended) {
        self.hub
            .metrics
            .peer_links_closed
            .with_label_values(&[ended.reason])
            .inc();
        match ended.reason {
            "local" | "duplicate" => {
                tracing::info!(peer = %self.peer, why = %ended.detail, "peer link closed")
            }
            "connection" => {
                tracing::info!(peer = %self.peer, why = %ended.detail, "peer connection lost")
            }
            _ => {
                tracing::warn!(peer = %self.peer, reason = ended.reason, why = %ended.detail, "peer link ended")
            }
        }
        self.control_tx = None;
        self.lanes.clear();
        if let Some(w) = self.control_writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), w).await;
        }
        let reason = truncate(&ended.detail);
        self.connection
            .close(VarInt::from_u32(ended.code), reason.as_bytes());
    }
}

fn ended(reason: &'static str, detail: String, code: u32) -> Ended {
    Ended {
        reason,
        detail,
        code,
    }
}

/// The metric label of a refusal.
fn refuse_label(r: RefuseReason) -> &'static str {
    match r {
        RefuseReason::ProtocolVersion => "protocol_version",
        RefuseReason::ClusterMismatch => "cluster",
        RefuseReason::IdentityMismatch => "identity",
        RefuseReason::SelfLink => "self_link",
        RefuseReason::Direction => "direction",
        RefuseReason::BadHello => "bad_hello",
    }
}

/// A committed batch as the core's per-(topic, origin) batches, records re-encoded in
/// the store's format (byte-identical: the format is canonical and carries its CRC).
fn group_committed(batch: &[Arc<Record>], filters: &[String]) -> Vec<CoreCommitted> {
    let mut out: Vec<CoreCommitted> = Vec::new();
    for r in batch {
        if !filters.iter().any(|f| matches(f, &r.topic)) {
            continue;
        }
        let Ok(bytes) = r.encode() else {
            continue;
        };
        let crc = bytes
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let body = RecordBody {
            seq: r.seq,
            hlc: r.hlc,
            crc,
            bytes: Bytes::from(bytes),
        };
        match out.last_mut() {
            Some(c) if c.topic == r.topic && c.origin == r.origin => c.records.push(body),
            _ => out.push(CoreCommitted {
                topic: r.topic.clone(),
                origin: r.origin.clone(),
                records: vec![body],
                gaps: Vec::new(),
            }),
        }
    }
    out
}

/// Split a stream into frames for the link. `control`: its end ends the link.
async fn read_frames(mut recv: RecvStream, tx: mpsc::Sender<Result<Bytes, String>>, control: bool) {
    let framing = LengthPrefixed::new(wire::MAX_FRAME_BYTES);
    let mut buf = BytesMut::new();
    loop {
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk.bytes);
                loop {
                    match framing.next_frame(&mut buf) {
                        Ok(Some(frame)) => {
                            if tx.send(Ok(frame)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(format!("bad frame from peer: {e}"))).await;
                            return;
                        }
                    }
                }
            }
            Ok(None) => {
                if control {
                    let _ = tx
                        .send(Err("the peer ended the control stream".into()))
                        .await;
                }
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(format!("peer stream failed: {e}"))).await;
                return;
            }
        }
    }
}

/// Write queued frames in order; finish the stream when the queue closes.
async fn write_frames(mut send: SendStream, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    // Finished, then until the peer has read it all (bounded by the caller): a refusal
    // or the last acks reach the peer before the connection closes.
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Applies queued at once that one round takes together. Live pushes are often one
/// record per batch and a round costs an fsync, so this bounds the rate: 64 held a link
/// at ~2k records/s over 8 topics. What can queue is bounded by the credit window anyway.
const APPLY_COALESCE: usize = 4096;

/// Applies, one store apply (one atomic batch, one fsync) at a time. What queued while
/// the last one ran is taken together, grouped by (topic, origin, repair): live pushes
/// arrive a few records per frame, and one fsync per frame capped a link at a few
/// thousand records/s (`edgesync-bench replication` measured 20 s of lag at 10k/s).
/// Every batch of a group gets its own answer: the group's outcome, with the rejected
/// seqs that were its own.
async fn apply_task(
    store: crate::store::Store,
    mut rx: mpsc::UnboundedReceiver<ApplyBatch>,
    ops: mpsc::UnboundedSender<Op>,
) {
    while let Some(first) = rx.recv().await {
        let mut groups: Vec<Vec<ApplyBatch>> = vec![vec![first]];
        let mut taken = 1;
        while taken < APPLY_COALESCE {
            let Ok(b) = rx.try_recv() else { break };
            taken += 1;
            match groups.iter_mut().find(|g| {
                g[0].topic == b.topic && g[0].origin == b.origin && g[0].repair == b.repair
            }) {
                Some(g) => g.push(b),
                None => groups.push(vec![b]),
            }
        }
        // One store apply for the whole round: one atomic batch and one fsync for
        // every (topic, origin) group (a stream named twice, repair and not, commits
        // in two).
        let reqs: Vec<ApplyRequest> = groups
            .iter()
            .map(|group| {
                let head = &group[0];
                ApplyRequest {
                    topic: head.topic.clone(),
                    origin: head.origin.clone(),
                    records: group
                        .iter()
                        .flat_map(|b| b.records.iter().map(|r| r.bytes.clone()))
                        .collect(),
                    gaps: group.iter().flat_map(|b| b.gaps.iter().copied()).collect(),
                    repair: head.repair,
                }
            })
            .collect();
        let results: Vec<Result<Applied, String>> = match store.apply_all(reqs).await {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.to_string()); groups.len()],
        };
        for (group, result) in groups.into_iter().zip(results) {
            // Only when something was rejected: the seqs the group's batches name.
            let seqs: std::collections::HashSet<u64> = match &result {
                Ok(a) if !a.rejected.is_empty() => group
                    .iter()
                    .flat_map(|b| b.records.iter().map(|r| r.seq))
                    .collect(),
                _ => Default::default(),
            };
            for (i, b) in group.into_iter().enumerate() {
                let (outcome, stored) = match &result {
                    Ok(a) => (
                        ApplyOutcome::Durable {
                            durable: a.durable.clone(),
                            rejected: a
                                .rejected
                                .iter()
                                .copied()
                                // Its own seqs; the first also takes any the bytes
                                // garbled beyond recognition.
                                .filter(|s| {
                                    b.records.iter().any(|r| r.seq == *s)
                                        || (i == 0 && !seqs.contains(s))
                                })
                                .collect(),
                        },
                        if i == 0 { a.stored } else { 0 },
                    ),
                    Err(e) => (ApplyOutcome::Failed(e.clone()), 0),
                };
                if ops.send(Op::Applied(b.id, outcome, stored)).is_err() {
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// QUIC close reasons are kept short (one packet).
fn truncate(reason: &str) -> &str {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// An action without its bytes, for trace logs.
struct ActionKind<'a>(&'a Action);

impl std::fmt::Debug for ActionKind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Action::Send { stream, frame } => write!(f, "Send({stream:?}, {} bytes)", frame.len()),
            Action::Read(r) => write!(f, "Read({} {} {}..={})", r.topic, r.origin, r.from, r.to),
            Action::Apply(b) => write!(
                f,
                "Apply({} {} {} records, gaps {:?}, repair {})",
                b.topic,
                b.origin,
                b.records.len(),
                b.gaps,
                b.repair
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

/// What a link sees of this node: the store, with presence's LWW entries beside plugin kv.
struct View<'a> {
    store: &'a Store,
    presence: &'a Presence,
}

impl LocalView for View<'_> {
    fn topics(&self) -> Vec<String> {
        LocalView::topics(self.store)
    }

    fn vector(&self, topic: &str) -> Option<VersionVector> {
        LocalView::vector(self.store, topic)
    }

    fn digest(&self, topic: &str, origin: &Origin) -> Option<edgesync_replication::OriginDigest> {
        LocalView::digest(self.store, topic, origin)
    }

    fn lww_digests(&self) -> Vec<(String, u32, edgesync_replication::BucketDigest)> {
        let mut all = LocalView::lww_digests(self.store);
        all.extend(self.presence.lww_digests());
        all
    }

    fn lww_bucket(&self, namespace: &str, bucket: u32) -> Vec<LwwEntry> {
        if namespace == PRESENCE_NAMESPACE {
            self.presence.lww_bucket(bucket)
        } else {
            LocalView::lww_bucket(self.store, namespace, bucket)
        }
    }

    fn corrupt(&self) -> Vec<(String, Origin, u64)> {
        LocalView::corrupt(self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesync_protocol::Headers;

    fn record(topic: &str, node: &str, seq: u64) -> Arc<Record> {
        Arc::new(Record {
            topic: topic.into(),
            origin: Origin::new(node, 1),
            seq,
            hlc: seq << 16,
            client: "c".into(),
            mid: Some(format!("m{seq}")),
            publish_key: None,
            headers: Headers::default(),
            payload: Bytes::from(format!("p{seq}")),
        })
    }

    /// A committed batch becomes one core batch per run of (topic, origin), in commit
    /// order, only for carried topics, with the record's bytes and CRC as stored.
    #[test]
    fn committed_batches_are_grouped_filtered_and_byte_identical() {
        let batch = vec![
            record("sensors.a", "n1", 1),
            record("sensors.a", "n1", 2),
            record("other.x", "n1", 1),
            record("sensors.b", "n2", 7),
            record("sensors.a", "n1", 3),
        ];
        let groups = group_committed(&batch, &["sensors.>".to_string()]);
        let shape: Vec<(String, String, Vec<u64>)> = groups
            .iter()
            .map(|g| {
                (
                    g.topic.clone(),
                    g.origin.node.clone(),
                    g.records.iter().map(|r| r.seq).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("sensors.a".into(), "n1".into(), vec![1, 2]),
                ("sensors.b".into(), "n2".into(), vec![7]),
                ("sensors.a".into(), "n1".into(), vec![3]),
            ]
        );
        let body = &groups[0].records[1];
        let decoded = Record::decode(&body.bytes).expect("valid record");
        assert_eq!(decoded, *batch[1]);
        assert_eq!(body.crc, crc32c::crc32c(&body.bytes[4..]));
        assert_eq!(body.hlc, 2 << 16);
    }
}
