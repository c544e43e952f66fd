//! The link: one replication connection to one peer, as an I/O-free state machine.
//!
//! A [`Link`] is created per connection (either side) and dropped when the
//! connection ends; a reconnect is a new `Link`, which starts again with
//! "summary, diff, stream". See the crate docs for the call order; this module
//! documents the moving parts.
//!
//! # Sending (this node → peer)
//!
//! Per (topic, origin) an outgoing stream tracks `sent`: what the peer is known
//! to hold (its summary, its acks) plus what this connection already queued.
//! Work = local vector − `sent` − `skip` (seqs the local store could not serve
//! this connection), plus `forced` ranges the peer asked to repair. A stream
//! with work asks the driver to [`Action::Read`] its first range, at most one
//! read per stream and [`LinkConfig::reads_in_flight`] per link; the result
//! goes to its lane's ready queue, sent as credit allows. A stream with no work
//! is *caught up*: a committed batch for it is queued directly, with no read
//! (the live path), as long as its lane's ready queue is short; otherwise it
//! falls back to reading, so a slow peer costs disk reads, never memory.
//!
//! # Credits
//!
//! The receiver grants each lane a cumulative credit in records and bytes:
//! `granted = applied (durable) + window`. The sender sends a message only when
//! it fits, except that one record always fits while any byte credit remains,
//! so a window smaller than one record still makes progress. A truncation costs
//! one record and no bytes. A sender that exceeds its credit is a protocol error.
//!
//! # Receiving (peer → this node)
//!
//! `Records` and `Truncated` become [`Action::Apply`]; the driver appends
//! (idempotently), fsyncs and reports the durable set with
//! [`Link::handle_applied`], which acks it to the sender with fresh credit.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use edgesync_protocol::Origin;
use edgesync_protocol::topic::matches;

use crate::digest::{OriginDigest, mismatches};
use crate::lww::LwwEntry;
use crate::ranges::{Range, RangeSet};
use crate::vv::VersionVector;
use crate::wire::{
    self, Direction, Hello, MAX_BATCH_RECORDS, MAX_ITEMS, Message, PROTOCOL_VERSION, RecordBody,
    RefuseReason, StreamId, TopicVector, WireError,
};

/// Most ranges an ack carries whole; past it, only the batch's span.
const MAX_ACK_RANGES: usize = 1024;

/// What a link needs to know about this node, read synchronously from memory.
///
/// The store implements it over its in-memory index (vectors, digests) and the
/// LWW map. Every method returns *durable* state: what a crash would keep.
pub trait LocalView {
    /// Every topic this node holds.
    fn topics(&self) -> Vec<String>;
    /// The durable version vector of a topic (`None` when unknown).
    fn vector(&self, topic: &str) -> Option<VersionVector>;
    /// The digest of one (topic, origin).
    fn digest(&self, topic: &str, origin: &Origin) -> Option<OriginDigest>;
    /// The LWW digests: (namespace, bucket) → digest.
    fn lww_digests(&self) -> Vec<(String, u32, crate::digest::BucketDigest)>;
    /// The LWW entries of one (namespace, bucket).
    fn lww_bucket(&self, namespace: &str, bucket: u32) -> Vec<LwwEntry>;
    /// Records this store found corrupt and has not repaired yet (the store
    /// keeps this list durable). Pulled again from the peer on every
    /// (re)connect and digest round, so a repair that found no link up, or a
    /// peer without the record, is retried. The store's policy ends the list:
    /// a record no peer repaired within a grace period (the simulation uses
    /// three digest rounds) becomes a gap marker (ERROR log, counted), which
    /// peers then receive as `truncated`; a later repair may still fill it.
    fn corrupt(&self) -> Vec<(String, Origin, u64)>;
}

/// Tunables of one link. Defaults are in [`LinkConfig::new`].
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub cluster_id: String,
    /// This node's id (its certificate identity).
    pub node_id: String,
    /// This node's current epoch.
    pub epoch: u64,
    pub direction: Direction,
    /// Topic patterns carried on this link (a topic is carried when it matches
    /// one of ours and one of the peer's).
    pub filters: Vec<String>,
    /// Data lanes (QUIC unidirectional streams) this side sends on. Default 4.
    pub lanes: u16,
    /// Receive window per lane, records. Default 4096.
    pub window_records: u64,
    /// Receive window per lane, bytes. Default 4 MiB.
    pub window_bytes: u64,
    /// Most records one read asks for (and one `Records` message carries). Default 512.
    pub batch_records: u32,
    /// Most bytes one read asks for. Default 512 KiB.
    pub batch_bytes: u64,
    /// Reads in flight per link. Default 4.
    pub reads_in_flight: usize,
    /// Bytes a lane may hold ready to send before live records fall back to reads. Default 1 MiB.
    pub ready_bytes_max: u64,
    /// Period of digest rounds (records and LWW), ms. Default 30 s.
    pub digest_interval_ms: u64,
}

impl LinkConfig {
    /// A config with the defaults.
    pub fn new(cluster_id: &str, node_id: &str, epoch: u64, direction: Direction) -> Self {
        LinkConfig {
            cluster_id: cluster_id.to_owned(),
            node_id: node_id.to_owned(),
            epoch,
            direction,
            filters: vec![">".to_owned()],
            lanes: 4,
            window_records: 4096,
            window_bytes: 4 << 20,
            batch_records: 512,
            batch_bytes: 512 << 10,
            reads_in_flight: 4,
            ready_bytes_max: 1 << 20,
            digest_interval_ms: 30_000,
        }
    }
}

/// A read the driver performs on the local log and answers with [`Link::handle_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub id: u64,
    pub topic: String,
    pub origin: Origin,
    /// First seq wanted.
    pub from: u64,
    /// Last seq wanted (inclusive).
    pub to: u64,
    /// Stop after this many records (truncated ranges do not count: report a
    /// stretch below the retention floor or of gap markers whole).
    pub max_records: u32,
    /// Stop after this many bytes (always return at least one record if any).
    pub max_bytes: u64,
}

/// The answer to a [`ReadRequest`], in seq order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadResult {
    /// Records found, ascending, CRC verified by the store.
    pub records: Vec<RecordBody>,
    /// Ranges the store cannot serve because retention removed them, or because
    /// it holds them as gap markers: they go to the peer as `truncated`.
    pub truncated: Vec<Range>,
    /// Seqs the vector covers but whose record failed its CRC: never sent; the
    /// driver also reports them to every link with [`Link::handle_corrupt`].
    pub corrupt: Vec<u64>,
    /// The last seq the read examined: the read accounts for `from..=end`. A
    /// seq of that span in none of the lists was not covered at read time and
    /// stays wanted.
    pub end: u64,
}

/// Records (and gap markers) for the driver to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyBatch {
    pub id: u64,
    pub topic: String,
    pub origin: Origin,
    /// Append these, skipping what the vector covers (idempotent); in repair
    /// mode also replace a held copy that is missing, corrupt or a gap marker.
    pub records: Vec<RecordBody>,
    /// Store a gap marker for every seq of these ranges the vector lacks (in
    /// repair mode also for a seq held as a corrupt record).
    pub gaps: Vec<Range>,
    pub repair: bool,
}

/// What the store made of an [`ApplyBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Durable. `durable` is the store's durable set of the (topic, origin) now;
    /// `rejected` are seqs whose bytes failed verification (not stored).
    Durable {
        durable: RangeSet,
        rejected: Vec<u64>,
    },
    /// The store cannot apply (disk full, poisoned): the link closes.
    Failed(String),
}

/// Newly durable local entries of one (topic, origin), as the driver forwards
/// them from the store's commit (local publishes and applied foreign records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub topic: String,
    pub origin: Origin,
    pub records: Vec<RecordBody>,
    /// Gap markers committed.
    pub gaps: Vec<Range>,
}

/// The link is up: the peer said hello and was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUp {
    pub peer_node: String,
    pub peer_epoch: u64,
    /// This node sends records to the peer.
    pub sends: bool,
    /// The peer sends records to this node.
    pub receives: bool,
    /// The peer's filters differ from ours (the link carries the intersection).
    pub filters_differ: bool,
}

/// Why a link ended. The driver logs it, counts it by kind and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("refused the peer: {reason:?}: {detail}")]
    Refused {
        reason: RefuseReason,
        detail: String,
    },
    #[error("the peer refused us: {reason:?}: {detail}")]
    RefusedByPeer {
        reason: RefuseReason,
        detail: String,
    },
    #[error("peer protocol error: {0}")]
    Protocol(String),
    #[error("bad frame from peer: {0}")]
    Wire(#[from] WireError),
    #[error("store failed: {0}")]
    Store(String),
    #[error("closed locally")]
    Local,
}

/// Things worth a metric or a log line that need no action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The peer truncated a range (retention): a gap marker is being stored. ERROR log.
    GapReceived {
        topic: String,
        origin: Origin,
        from: u64,
        to: u64,
    },
    /// Digests disagree on these ranges; a repair pull was sent.
    DigestMismatch {
        topic: String,
        origin: Origin,
        ranges: Vec<Range>,
    },
    /// The store rejected records from the peer (bad bytes); they are pulled again.
    Rejected {
        topic: String,
        origin: Origin,
        seqs: Vec<u64>,
    },
    /// Local seqs the store could not serve (corrupt) on this connection.
    Unavailable {
        topic: String,
        origin: Origin,
        seqs: RangeSet,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame (length prefix included) on the stream.
    Send {
        stream: StreamId,
        frame: Bytes,
    },
    /// Read from the local log; answer with [`Link::handle_read`].
    Read(ReadRequest),
    /// Store records / gap markers; answer with [`Link::handle_applied`].
    Apply(ApplyBatch),
    /// Merge these LWW entries into the node's map; forward the ones that won
    /// to the other links with [`Link::send_lww`].
    LwwMerge(Vec<LwwEntry>),
    /// The peer's durable set of a (topic, origin) grew (drives `replicated(k)`
    /// acks and retention holds).
    PeerDurable {
        topic: String,
        origin: Origin,
        durable: RangeSet,
    },
    Up(LinkUp),
    /// The link is over; close the connection. Nothing follows.
    Closed(CloseReason),
    Event(LinkEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Up,
    Closed,
}

/// One outgoing (topic, origin) stream.
#[derive(Debug, Default)]
struct OutStream {
    /// What the peer holds or was queued on this connection.
    sent: RangeSet,
    /// Local seqs not servable on this connection (corrupt).
    skip: RangeSet,
    /// Ranges the peer asked to be re-sent (repair).
    forced: RangeSet,
    reading: bool,
    queued: bool,
    caught_up: bool,
}

/// A message waiting for lane credit.
#[derive(Debug)]
struct Ready {
    msg: Message,
    records: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct LaneOut {
    granted_records: u64,
    granted_bytes: u64,
    sent_records: u64,
    sent_bytes: u64,
    ready: VecDeque<Ready>,
    ready_bytes: u64,
    work: VecDeque<(String, Origin)>,
}

#[derive(Debug, Default)]
struct LaneIn {
    received_records: u64,
    received_bytes: u64,
    applied_records: u64,
    applied_bytes: u64,
    granted_records: u64,
    granted_bytes: u64,
}

#[derive(Debug)]
struct PendingRead {
    topic: String,
    origin: Origin,
    from: u64,
    to: u64,
    repair: bool,
}

#[derive(Debug)]
struct PendingApply {
    topic: String,
    origin: Origin,
    /// The seqs the batch spans (an ack of a very fragmented vector is cut to it).
    span: Range,
    lane: u16,
    records: u64,
    bytes: u64,
}

/// One replication link to one peer. See the module and crate docs.
#[derive(Debug)]
pub struct Link {
    cfg: LinkConfig,
    /// The identity the driver read from the peer's certificate.
    peer_identity: Option<String>,
    state: State,
    peer: Option<Hello>,
    sends: bool,
    receives: bool,
    actions: VecDeque<Action>,
    next_id: u64,
    // Sending side.
    carried: BTreeMap<String, bool>,
    peer_summary: BTreeMap<String, VersionVector>,
    summary_done: bool,
    out: BTreeMap<String, BTreeMap<Origin, OutStream>>,
    lanes_out: Vec<LaneOut>,
    reads: BTreeMap<u64, PendingRead>,
    peer_durable: BTreeMap<String, VersionVector>,
    // Receiving side.
    lanes_in: Vec<LaneIn>,
    applies: BTreeMap<u64, PendingApply>,
    // Timers.
    next_digest_ms: Option<u64>,
    lww_digest_pending: Vec<(String, u32, crate::digest::BucketDigest)>,
}

impl Link {
    /// A link for a new connection. `peer_identity` is the node id in the peer's
    /// certificate (`None` only in tests without TLS). Queues our hello.
    pub fn new(cfg: LinkConfig, peer_identity: Option<String>) -> Self {
        let mut link = Link {
            peer_identity,
            state: State::AwaitHello,
            peer: None,
            sends: false,
            receives: false,
            actions: VecDeque::new(),
            next_id: 1,
            carried: BTreeMap::new(),
            peer_summary: BTreeMap::new(),
            summary_done: false,
            out: BTreeMap::new(),
            lanes_out: Vec::new(),
            reads: BTreeMap::new(),
            peer_durable: BTreeMap::new(),
            lanes_in: Vec::new(),
            applies: BTreeMap::new(),
            next_digest_ms: None,
            lww_digest_pending: Vec::new(),
            cfg,
        };
        link.cfg.lanes = link.cfg.lanes.clamp(1, wire::MAX_LANES);
        link.cfg.window_records = link.cfg.window_records.max(1);
        link.cfg.window_bytes = link.cfg.window_bytes.max(1);
        link.cfg.batch_records = link.cfg.batch_records.clamp(1, MAX_BATCH_RECORDS as u32);
        link.cfg.reads_in_flight = link.cfg.reads_in_flight.max(1);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: link.cfg.cluster_id.clone(),
            node_id: link.cfg.node_id.clone(),
            epoch: link.cfg.epoch,
            direction: link.cfg.direction,
            filter_hash: wire::filter_hash(&link.cfg.filters),
            filters: link.cfg.filters.clone(),
            lanes: link.cfg.lanes,
        };
        link.send(StreamId::Control, &Message::Hello(hello));
        link
    }

    /// The next action, in order. Call until `None` after every `handle_*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Link::handle_timeout`] wants to be called (ms, same clock as `now`).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state != State::Up {
            return None;
        }
        self.next_digest_ms
    }

    /// True once the handshake succeeded and until the link closes.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// True once closed (by either side or an error).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The peer's hello, once received.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// What the peer holds durably per topic, as far as this link knows (its
    /// summary joined with its acks). Empty unless this node sends on the link.
    pub fn peer_durable(&self, topic: &str) -> Option<&VersionVector> {
        self.peer_durable.get(topic)
    }

    /// Messages queued on this link's lanes waiting for the peer's credit (a
    /// backlog gauge; records not yet read from the log are not counted).
    pub fn backlog_messages(&self) -> usize {
        self.lanes_out.iter().map(|l| l.ready.len()).sum()
    }

    /// True when nothing is in flight on this link: no read, no apply, no queued
    /// message, no stream with known work. (The simulation's quiescence test.)
    pub fn is_idle(&self) -> bool {
        self.reads.is_empty()
            && self.applies.is_empty()
            && self
                .lanes_out
                .iter()
                .all(|l| l.ready.is_empty() && l.work.is_empty())
    }

    /// Close the link from this side (shutdown, config change).
    pub fn close(&mut self) {
        self.close_with(CloseReason::Local);
    }

    /// One frame body (length prefix removed) arrived from the peer on any stream.
    pub fn handle_frame(&mut self, now: u64, body: &[u8], view: &impl LocalView) {
        if self.state == State::Closed {
            return;
        }
        match wire::decode(body) {
            Ok(msg) => self.handle_message(now, msg, view),
            Err(e) => self.close_with(CloseReason::Wire(e)),
        }
    }

    /// One decoded message from the peer.
    pub fn handle_message(&mut self, now: u64, msg: Message, view: &impl LocalView) {
        match (self.state, msg) {
            (State::Closed, _) => {}
            (State::AwaitHello, Message::Hello(h)) => self.on_hello(now, h, view),
            (_, Message::Refuse { reason, detail }) => {
                self.close_with(CloseReason::RefusedByPeer { reason, detail });
            }
            (State::AwaitHello, other) => {
                self.protocol_error(format!("{} before hello", kind(&other)));
            }
            (State::Up, Message::Hello(_)) => self.protocol_error("second hello".into()),
            (State::Up, msg) => self.on_message(now, msg, view),
        }
    }

    /// A batch the local store just made durable (local publishes or applied
    /// records from any peer). Cheap when the link does not carry the topic.
    pub fn handle_committed(&mut self, batch: &Committed, view: &impl LocalView) {
        if self.state != State::Up || !self.sends || !self.summary_done {
            return;
        }
        if !self.carries(&batch.topic) {
            return;
        }
        let lane = self.lane_of(&batch.topic);
        let ready_max = self.cfg.ready_bytes_max;
        let lane_ready = self.lanes_out[lane as usize].ready_bytes;
        let st = self.stream(&batch.topic, &batch.origin);
        for r in &batch.records {
            st.skip.remove_range(r.seq, r.seq);
        }
        let live = st.caught_up && !st.reading && lane_ready < ready_max;
        if !live {
            st.caught_up = false;
            self.enqueue(&batch.topic, &batch.origin, lane);
            self.schedule(lane, view);
            return;
        }
        let mut records = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            if st.sent.insert(r.seq) {
                records.push(r.clone());
            }
        }
        // A commit may mix new records with repaired ones: send in seq order.
        if !records.is_sorted_by_key(|r| r.seq) {
            records.sort_by_key(|r| r.seq);
        }
        let mut gaps = Vec::new();
        for &(a, b) in &batch.gaps {
            let missing = RangeSet::from_range(a, b).difference(&st.sent);
            st.sent.insert_range(a, b);
            gaps.extend(missing.ranges().iter().copied());
        }
        let (topic, origin) = (batch.topic.clone(), batch.origin.clone());
        self.queue_out(lane, &topic, &origin, records, gaps, false);
        self.pump(lane, view);
    }

    /// The answer to an [`Action::Read`].
    pub fn handle_read(&mut self, id: u64, result: ReadResult, view: &impl LocalView) {
        if self.state != State::Up {
            return;
        }
        let Some(req) = self.reads.remove(&id) else {
            debug_assert!(false, "read {id} answered twice or never asked");
            return;
        };
        let lane = self.lane_of(&req.topic);
        let end = result.end.clamp(req.from, req.to);
        let mut records: Vec<RecordBody> = result
            .records
            .into_iter()
            .filter(|r| r.seq >= req.from && r.seq <= end)
            .collect();
        if !records.is_sorted_by_key(|r| r.seq) {
            records.sort_by_key(|r| r.seq);
        }
        records.dedup_by_key(|r| r.seq);
        let mut truncated = RangeSet::new();
        for (a, b) in result.truncated {
            truncated.insert_range(a.max(req.from), b.min(end));
        }
        let mut unavailable: RangeSet = result
            .corrupt
            .into_iter()
            .filter(|s| *s >= req.from && *s <= end)
            .collect();
        if records.is_empty() && truncated.is_empty() && unavailable.is_empty() {
            // Nothing at all for a range the vector covers: do not spin on it.
            let local = self.local_ranges(view, &req.topic, &req.origin);
            unavailable = local.intersect_range(req.from, req.to);
        }
        let served: RangeSet = records.iter().map(|r| r.seq).collect();
        let st = self.stream(&req.topic, &req.origin);
        st.reading = false;
        if req.repair {
            st.forced.remove_range(req.from, end);
        } else {
            records.retain(|r| !st.sent.contains(r.seq));
            truncated = truncated.difference(&st.sent);
            st.sent.union_with(&served);
            st.sent.union_with(&truncated);
            st.skip.union_with(&unavailable);
        }
        if !unavailable.is_empty() {
            self.event(LinkEvent::Unavailable {
                topic: req.topic.clone(),
                origin: req.origin.clone(),
                seqs: unavailable,
            });
        }
        let gaps: Vec<Range> = truncated.ranges().to_vec();
        self.queue_out(lane, &req.topic, &req.origin, records, gaps, req.repair);
        self.enqueue(&req.topic, &req.origin, lane);
        self.pump(lane, view);
        for other in 0..self.cfg.lanes {
            if other != lane {
                self.schedule(other, view);
            }
        }
    }

    /// The answer to an [`Action::Apply`].
    pub fn handle_applied(&mut self, id: u64, outcome: ApplyOutcome) {
        if self.state != State::Up {
            return;
        }
        let Some(p) = self.applies.remove(&id) else {
            debug_assert!(false, "apply {id} answered twice or never asked");
            return;
        };
        let (durable, rejected) = match outcome {
            ApplyOutcome::Durable { durable, rejected } => (durable, rejected),
            ApplyOutcome::Failed(e) => return self.close_with(CloseReason::Store(e)),
        };
        let lane = &mut self.lanes_in[p.lane as usize];
        lane.applied_records += p.records;
        lane.applied_bytes += p.bytes;
        lane.granted_records = lane.applied_records + self.cfg.window_records;
        lane.granted_bytes = lane.applied_bytes + self.cfg.window_bytes;
        let (credit_records, credit_bytes) = (lane.granted_records, lane.granted_bytes);
        // Acks are joined by the sender, so a part is enough: keep them small.
        let durable = if durable.ranges().len() > MAX_ACK_RANGES {
            durable.intersect_range(p.span.0, p.span.1)
        } else {
            durable
        };
        let ack = Message::Ack {
            topic: p.topic.clone(),
            origin: p.origin.clone(),
            durable,
            lane: p.lane,
            credit_records,
            credit_bytes,
        };
        self.send(StreamId::Control, &ack);
        if !rejected.is_empty() {
            for &seq in &rejected {
                self.pull(&p.topic, &p.origin, seq, seq);
            }
            self.event(LinkEvent::Rejected {
                topic: p.topic,
                origin: p.origin,
                seqs: rejected,
            });
        }
    }

    /// The local store found `(topic, origin, seq)` corrupt: ask the peer for it
    /// again (when the peer sends on this link). The store no longer counts it
    /// in its digest and serves it from no read until repaired.
    pub fn handle_corrupt(&mut self, topic: &str, origin: &Origin, seq: u64) {
        if self.state == State::Up && self.receives && self.carries(topic) {
            self.pull(topic, origin, seq, seq);
        }
    }

    /// Send LWW entries (local writes, or entries that won a merge from another link).
    pub fn send_lww(&mut self, entries: &[LwwEntry]) {
        if self.state != State::Up {
            return;
        }
        // Chunks of at most 1024 entries and about 1 MiB, far below the frame limit.
        let mut chunk: Vec<LwwEntry> = Vec::new();
        let mut size = 0usize;
        for e in entries {
            let len = 64 + e.namespace.len() + e.key.len() + e.value.as_ref().map_or(0, Bytes::len);
            if !chunk.is_empty() && (chunk.len() == 1024 || size + len > 1 << 20) {
                let entries = std::mem::take(&mut chunk);
                self.send(StreamId::Control, &Message::LwwEntries { entries });
                size = 0;
            }
            size += len;
            chunk.push(e.clone());
        }
        if !chunk.is_empty() {
            self.send(StreamId::Control, &Message::LwwEntries { entries: chunk });
        }
    }

    /// Time passed: run digest rounds that are due.
    pub fn handle_timeout(&mut self, now: u64, view: &impl LocalView) {
        if self.state != State::Up {
            return;
        }
        if self.next_digest_ms.is_some_and(|t| now >= t) {
            self.digest_round(view);
            self.next_digest_ms = Some(now.saturating_add(self.cfg.digest_interval_ms.max(1)));
        }
    }

    // ----- handshake -----

    fn on_hello(&mut self, now: u64, h: Hello, view: &impl LocalView) {
        let refuse = |reason, detail: String| Some((reason, detail));
        let problem = if h.protocol_version != PROTOCOL_VERSION {
            refuse(
                RefuseReason::ProtocolVersion,
                format!(
                    "peer speaks {}, we speak {PROTOCOL_VERSION}",
                    h.protocol_version
                ),
            )
        } else if h.cluster_id != self.cfg.cluster_id {
            refuse(
                RefuseReason::ClusterMismatch,
                format!(
                    "peer cluster {:?}, ours {:?}",
                    h.cluster_id, self.cfg.cluster_id
                ),
            )
        } else if self
            .peer_identity
            .as_ref()
            .is_some_and(|id| *id != h.node_id)
        {
            refuse(
                RefuseReason::IdentityMismatch,
                format!(
                    "hello says {:?}, certificate says {:?}",
                    h.node_id,
                    self.peer_identity.as_deref().unwrap_or_default()
                ),
            )
        } else if h.node_id == self.cfg.node_id {
            refuse(RefuseReason::SelfLink, "the peer is this node".into())
        } else if h.filter_hash != wire::filter_hash(&h.filters) {
            refuse(
                RefuseReason::BadHello,
                "filter hash does not match filters".into(),
            )
        } else {
            None
        };
        if let Some((reason, detail)) = problem {
            return self.refuse(reason, detail);
        }
        self.sends = self.cfg.direction.sends() && h.direction.receives();
        self.receives = self.cfg.direction.receives() && h.direction.sends();
        if !self.sends && !self.receives {
            let detail = format!("we {:?}, peer {:?}", self.cfg.direction, h.direction);
            return self.refuse(RefuseReason::Direction, detail);
        }
        let up = LinkUp {
            peer_node: h.node_id.clone(),
            peer_epoch: h.epoch,
            sends: self.sends,
            receives: self.receives,
            filters_differ: h.filter_hash != wire::filter_hash(&self.cfg.filters),
        };
        self.lanes_out = (0..self.cfg.lanes).map(|_| LaneOut::default()).collect();
        self.lanes_in = (0..h.lanes).map(|_| LaneIn::default()).collect();
        self.peer = Some(h);
        self.state = State::Up;
        self.actions.push_back(Action::Up(up));
        if self.receives {
            self.send_summary(view);
            for lane in 0..self.lanes_in.len() {
                let l = &mut self.lanes_in[lane];
                l.granted_records = self.cfg.window_records;
                l.granted_bytes = self.cfg.window_bytes;
                let msg = Message::Credit {
                    lane: lane as u16,
                    credit_records: l.granted_records,
                    credit_bytes: l.granted_bytes,
                };
                self.send(StreamId::Control, &msg);
            }
        }
        self.digest_round(view);
        self.next_digest_ms = Some(now.saturating_add(self.cfg.digest_interval_ms.max(1)));
    }

    fn refuse(&mut self, reason: RefuseReason, detail: String) {
        let msg = Message::Refuse {
            reason,
            detail: detail.clone(),
        };
        self.send(StreamId::Control, &msg);
        self.close_with(CloseReason::Refused { reason, detail });
    }

    fn send_summary(&mut self, view: &impl LocalView) {
        let mut chunk = Vec::new();
        for topic in view.topics() {
            if !self.carries(&topic) {
                continue;
            }
            let Some(vector) = view.vector(&topic) else {
                continue;
            };
            chunk.push(TopicVector { topic, vector });
            if chunk.len() == 256 {
                let topics = std::mem::take(&mut chunk);
                self.send(
                    StreamId::Control,
                    &Message::Summary {
                        topics,
                        last: false,
                    },
                );
            }
        }
        self.send(
            StreamId::Control,
            &Message::Summary {
                topics: chunk,
                last: true,
            },
        );
    }

    // ----- messages once up -----

    fn on_message(&mut self, now: u64, msg: Message, view: &impl LocalView) {
        let _ = now;
        match msg {
            Message::Summary { topics, last } => self.on_summary(topics, last, view),
            Message::Records {
                lane,
                topic,
                origin,
                repair,
                records,
            } => self.on_records(lane, topic, origin, repair, records),
            Message::Truncated {
                lane,
                topic,
                origin,
                from,
                to,
                repair,
            } => self.on_truncated(lane, topic, origin, (from, to), repair),
            Message::Ack {
                topic,
                origin,
                durable,
                lane,
                credit_records,
                credit_bytes,
            } => {
                if !self.sends {
                    return self.protocol_error("ack on a link we do not send on".into());
                }
                self.on_credit(lane, credit_records, credit_bytes, view);
                self.on_ack(topic, origin, durable);
            }
            Message::Credit {
                lane,
                credit_records,
                credit_bytes,
            } => {
                if !self.sends {
                    return self.protocol_error("credit on a link we do not send on".into());
                }
                self.on_credit(lane, credit_records, credit_bytes, view);
            }
            Message::Digest {
                topic,
                origin,
                floor,
                vector,
                first,
                last,
                buckets,
            } => self.on_digest(&topic, &origin, floor, vector, (first, last), buckets, view),
            Message::Pull {
                topic,
                origin,
                from,
                to,
            } => self.on_pull(topic, origin, from, to, view),
            Message::LwwDigest { buckets, last } => self.on_lww_digest(buckets, last, view),
            Message::LwwEntries { entries } => self.actions.push_back(Action::LwwMerge(entries)),
            Message::Hello(_) | Message::Refuse { .. } => {}
        }
    }

    fn on_summary(&mut self, topics: Vec<TopicVector>, last: bool, view: &impl LocalView) {
        if !self.sends || self.summary_done {
            return self.protocol_error("unexpected summary".into());
        }
        if self.peer_summary.len() + topics.len() > 1_000_000 {
            return self.protocol_error("summary names too many topics".into());
        }
        for t in topics {
            for (origin, set) in t.vector.iter() {
                self.actions.push_back(Action::PeerDurable {
                    topic: t.topic.clone(),
                    origin: origin.clone(),
                    durable: set.clone(),
                });
            }
            self.peer_durable.insert(t.topic.clone(), t.vector.clone());
            self.peer_summary.insert(t.topic, t.vector);
        }
        if !last {
            return;
        }
        self.summary_done = true;
        // The diff: every carried local (topic, origin) the peer lacks gets a stream.
        for topic in view.topics() {
            if !self.carries(&topic) {
                continue;
            }
            let Some(vv) = view.vector(&topic) else {
                continue;
            };
            let lane = self.lane_of(&topic);
            for (origin, set) in vv.iter() {
                let st = self.stream(&topic, origin);
                if set.difference(&st.sent).is_empty() {
                    st.caught_up = true;
                } else {
                    self.enqueue(&topic, origin, lane);
                }
            }
        }
        for lane in 0..self.cfg.lanes {
            self.schedule(lane, view);
        }
    }

    fn on_records(
        &mut self,
        lane: u16,
        topic: String,
        origin: Origin,
        repair: bool,
        records: Vec<RecordBody>,
    ) {
        if !self.receives || !self.carries(&topic) {
            return self.protocol_error(format!("records for {topic:?}, not carried"));
        }
        let bytes: u64 = records.iter().map(|r| r.bytes.len() as u64).sum();
        if !self.take_credit(lane, records.len() as u64, bytes) {
            return;
        }
        if self.sends {
            // The peer holds what it sends us: never echo it back.
            let st = self.stream(&topic, &origin);
            for r in &records {
                st.sent.insert(r.seq);
            }
        }
        let id = self.next_id();
        self.applies.insert(
            id,
            PendingApply {
                topic: topic.clone(),
                origin: origin.clone(),
                span: wire::batch_span(&records).unwrap_or((1, 1)),
                lane,
                records: records.len() as u64,
                bytes,
            },
        );
        self.actions.push_back(Action::Apply(ApplyBatch {
            id,
            topic,
            origin,
            records,
            gaps: Vec::new(),
            repair,
        }));
    }

    fn on_truncated(
        &mut self,
        lane: u16,
        topic: String,
        origin: Origin,
        (from, to): Range,
        repair: bool,
    ) {
        if !self.receives || !self.carries(&topic) {
            return self.protocol_error(format!("truncated for {topic:?}, not carried"));
        }
        if !self.take_credit(lane, 1, 0) {
            return;
        }
        if self.sends {
            self.stream(&topic, &origin).sent.insert_range(from, to);
        }
        self.event(LinkEvent::GapReceived {
            topic: topic.clone(),
            origin: origin.clone(),
            from,
            to,
        });
        let id = self.next_id();
        self.applies.insert(
            id,
            PendingApply {
                topic: topic.clone(),
                origin: origin.clone(),
                span: (from, to),
                lane,
                records: 1,
                bytes: 0,
            },
        );
        self.actions.push_back(Action::Apply(ApplyBatch {
            id,
            topic,
            origin,
            records: Vec::new(),
            gaps: vec![(from, to)],
            repair,
        }));
    }

    /// Account a received message against the lane's credit; false (and closed) on violation.
    fn take_credit(&mut self, lane: u16, records: u64, bytes: u64) -> bool {
        let Some(l) = self.lanes_in.get_mut(lane as usize) else {
            self.protocol_error(format!("lane {lane} beyond the peer's lanes"));
            return false;
        };
        let records_ok = l.received_records + records <= l.granted_records;
        let bytes_ok = l.received_bytes + bytes <= l.granted_bytes
            || (records == 1 && l.received_bytes < l.granted_bytes);
        if !records_ok || !bytes_ok {
            let detail = format!(
                "lane {lane}: {records} records / {bytes} bytes beyond credit ({}/{} of {}/{})",
                l.received_records, l.received_bytes, l.granted_records, l.granted_bytes
            );
            self.protocol_error(detail);
            return false;
        }
        l.received_records += records;
        l.received_bytes += bytes;
        true
    }

    fn on_credit(&mut self, lane: u16, records: u64, bytes: u64, view: &impl LocalView) {
        let Some(l) = self.lanes_out.get_mut(lane as usize) else {
            return self.protocol_error(format!("credit for lane {lane} we do not have"));
        };
        l.granted_records = l.granted_records.max(records);
        l.granted_bytes = l.granted_bytes.max(bytes);
        self.pump(lane, view);
    }

    fn on_ack(&mut self, topic: String, origin: Origin, durable: RangeSet) {
        let st = self.stream(&topic, &origin);
        st.sent.union_with(&durable);
        let vv = self.peer_durable.entry(topic.clone()).or_default();
        let before = vv.get(&origin).map_or(0, RangeSet::len);
        vv.join_origin(&origin, &durable);
        if vv.get(&origin).map_or(0, RangeSet::len) != before {
            let durable = vv.get(&origin).cloned().unwrap_or_default();
            self.actions.push_back(Action::PeerDurable {
                topic,
                origin,
                durable,
            });
        }
    }

    fn on_pull(
        &mut self,
        topic: String,
        origin: Origin,
        from: u64,
        to: u64,
        view: &impl LocalView,
    ) {
        if !self.sends || !self.carries(&topic) {
            return self.protocol_error(format!("pull for {topic:?}, not sent on this link"));
        }
        let lane = self.lane_of(&topic);
        let st = self.stream(&topic, &origin);
        if st.forced.ranges().len() >= 4096 {
            return; // bounded: the peer asks again at the next digest round
        }
        st.forced.insert_range(from, to);
        st.caught_up = false;
        self.enqueue(&topic, &origin, lane);
        self.schedule(lane, view);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_digest(
        &mut self,
        topic: &str,
        origin: &Origin,
        floor: u64,
        vector: RangeSet,
        span: (u64, u64),
        buckets: Vec<(u64, crate::digest::BucketDigest)>,
        view: &impl LocalView,
    ) {
        if !self.receives || !self.carries(topic) {
            return;
        }
        let mine = view.digest(topic, origin).unwrap_or_default();
        let my_vv = self.local_ranges(view, topic, origin);
        let mut mine_span = mine.clone();
        mine_span.buckets = mine
            .buckets
            .range(span.0..=span.1)
            .map(|(b, d)| (*b, *d))
            .collect();
        let theirs = OriginDigest {
            floor,
            buckets: buckets.into_iter().collect(),
        };
        let bad = mismatches(&mine_span, &my_vv, &theirs, &vector);
        if bad.is_empty() {
            return;
        }
        for &(a, b) in &bad {
            self.pull(topic, origin, a, b);
        }
        self.event(LinkEvent::DigestMismatch {
            topic: topic.to_owned(),
            origin: origin.clone(),
            ranges: bad,
        });
    }

    fn on_lww_digest(
        &mut self,
        buckets: Vec<(String, u32, crate::digest::BucketDigest)>,
        last: bool,
        view: &impl LocalView,
    ) {
        self.lww_digest_pending.extend(buckets);
        if self.lww_digest_pending.len() > 1_000_000 {
            return self.protocol_error("lww digest too large".into());
        }
        if !last {
            return;
        }
        let theirs: BTreeMap<(String, u32), crate::digest::BucketDigest> =
            std::mem::take(&mut self.lww_digest_pending)
                .into_iter()
                .map(|(ns, b, d)| ((ns, b), d))
                .collect();
        let mut entries = Vec::new();
        for (ns, b, d) in view.lww_digests() {
            if theirs.get(&(ns.clone(), b)) != Some(&d) {
                entries.extend(view.lww_bucket(&ns, b));
            }
        }
        self.send_lww(&entries);
    }

    // ----- digests -----

    fn digest_round(&mut self, view: &impl LocalView) {
        if self.receives {
            for (topic, origin, seq) in view.corrupt().into_iter().take(MAX_ITEMS) {
                if self.carries(&topic) {
                    self.pull(&topic, &origin, seq, seq);
                }
            }
        }
        if self.sends && self.summary_done {
            // Seqs the store could not serve (corrupt) may be servable now
            // (repaired, or expired by retention and so truncated): retry them.
            let mut retry = Vec::new();
            for (topic, streams) in &mut self.out {
                for (origin, st) in streams.iter_mut() {
                    if !st.skip.is_empty() {
                        st.skip = RangeSet::new();
                        st.caught_up = false;
                        retry.push((topic.clone(), origin.clone()));
                    }
                }
            }
            for (topic, origin) in retry {
                let lane = self.lane_of(&topic);
                self.enqueue(&topic, &origin, lane);
            }
            for lane in 0..self.cfg.lanes {
                self.schedule(lane, view);
            }
        }
        if self.sends {
            for topic in view.topics() {
                if !self.carries(&topic) {
                    continue;
                }
                let Some(vv) = view.vector(&topic) else {
                    continue;
                };
                for (origin, set) in vv.iter() {
                    let digest = view.digest(&topic, origin).unwrap_or_default();
                    self.send_digest(&topic, origin, set, &digest);
                }
            }
        }
        let all = view.lww_digests();
        let mut chunks = all.chunks(MAX_ITEMS).peekable();
        if chunks.peek().is_none() {
            self.send(
                StreamId::Control,
                &Message::LwwDigest {
                    buckets: Vec::new(),
                    last: true,
                },
            );
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let msg = Message::LwwDigest {
                buckets: c.to_vec(),
                last,
            };
            self.send(StreamId::Control, &msg);
        }
    }

    fn send_digest(&mut self, topic: &str, origin: &Origin, vv: &RangeSet, d: &OriginDigest) {
        let all: Vec<(u64, crate::digest::BucketDigest)> =
            d.buckets.iter().map(|(b, x)| (*b, *x)).collect();
        let top = vv.last().map_or(0, crate::digest::bucket_of);
        let mut first = 0;
        let mut chunks = all.chunks(4096).peekable();
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let is_last = chunks.peek().is_none();
            let last = if is_last {
                top.max(chunk.last().map_or(0, |c| c.0))
            } else {
                chunk.last().map_or(first, |c| c.0)
            };
            let msg = Message::Digest {
                topic: topic.to_owned(),
                origin: origin.clone(),
                floor: d.floor,
                vector: vv.clone(),
                first,
                last,
                buckets: chunk.to_vec(),
            };
            self.send(StreamId::Control, &msg);
            if is_last {
                break;
            }
            first = last + 1;
        }
    }

    // ----- sending records -----

    fn stream(&mut self, topic: &str, origin: &Origin) -> &mut OutStream {
        let summary = self.peer_summary.get(topic).and_then(|vv| vv.get(origin));
        let streams = self.out.entry(topic.to_owned()).or_default();
        streams.entry(origin.clone()).or_insert_with(|| OutStream {
            sent: summary.cloned().unwrap_or_default(),
            ..OutStream::default()
        })
    }

    fn enqueue(&mut self, topic: &str, origin: &Origin, lane: u16) {
        let st = self.stream(topic, origin);
        if st.queued {
            return;
        }
        st.queued = true;
        self.lanes_out[lane as usize]
            .work
            .push_back((topic.to_owned(), origin.clone()));
    }

    /// Start reads for streams of `lane` while credit, read slots and ready room allow.
    fn schedule(&mut self, lane: u16, view: &impl LocalView) {
        let mut budget = self.lanes_out[lane as usize].work.len();
        while budget > 0 && self.reads.len() < self.cfg.reads_in_flight {
            budget -= 1;
            let l = &self.lanes_out[lane as usize];
            if l.ready_bytes >= self.cfg.ready_bytes_max || l.sent_records >= l.granted_records {
                return;
            }
            let Some((topic, origin)) = self.lanes_out[lane as usize].work.pop_front() else {
                return;
            };
            self.service(lane, topic, origin, view);
        }
    }

    /// Issue the next read of one stream, or mark it caught up.
    fn service(&mut self, lane: u16, topic: String, origin: Origin, view: &impl LocalView) {
        let local = self.local_ranges(view, &topic, &origin);
        let l = &self.lanes_out[lane as usize];
        let credit = l.granted_records.saturating_sub(l.sent_records).max(1);
        let max_records = (self.cfg.batch_records as u64).min(credit) as u32;
        let max_bytes = self.cfg.batch_bytes;
        let st = self.stream(&topic, &origin);
        st.queued = false;
        if st.reading {
            return; // requeued when the read returns
        }
        // Repairs first (only what the local vector covers can be served).
        let mut forced = RangeSet::new();
        for &(a, b) in st.forced.ranges() {
            forced.union_with(&local.intersect_range(a, b));
        }
        st.forced = forced;
        let (range, repair) = if let Some(&r) = st.forced.ranges().first() {
            (r, true)
        } else {
            let wanted = local.difference(&st.sent).difference(&st.skip);
            match wanted.ranges().first() {
                Some(&r) => (r, false),
                None => {
                    st.caught_up = true;
                    return;
                }
            }
        };
        st.reading = true;
        st.caught_up = false;
        let id = self.next_id();
        // The whole range: the store stops after max_records records, and
        // reports a long truncated stretch in one piece (it costs no read).
        let (from, to) = range;
        self.reads.insert(
            id,
            PendingRead {
                topic: topic.clone(),
                origin: origin.clone(),
                from,
                to,
                repair,
            },
        );
        self.actions.push_back(Action::Read(ReadRequest {
            id,
            topic,
            origin,
            from,
            to,
            max_records,
            max_bytes,
        }));
    }

    /// Queue records and gaps (ascending, disjoint) as messages in seq order.
    fn queue_out(
        &mut self,
        lane: u16,
        topic: &str,
        origin: &Origin,
        records: Vec<RecordBody>,
        gaps: Vec<Range>,
        repair: bool,
    ) {
        let mut gaps = gaps.into_iter().peekable();
        let mut batch: Vec<RecordBody> = Vec::new();
        let batch_max = self.cfg.batch_records as usize;
        for r in records {
            while gaps.peek().is_some_and(|g| g.1 < r.seq) {
                self.flush_batch(lane, topic, origin, &mut batch, repair);
                if let Some(g) = gaps.next() {
                    self.push_truncated(lane, topic, origin, g, repair);
                }
            }
            batch.push(r);
            if batch.len() >= batch_max {
                self.flush_batch(lane, topic, origin, &mut batch, repair);
            }
        }
        self.flush_batch(lane, topic, origin, &mut batch, repair);
        for g in gaps {
            self.push_truncated(lane, topic, origin, g, repair);
        }
    }

    fn flush_batch(
        &mut self,
        lane: u16,
        topic: &str,
        origin: &Origin,
        batch: &mut Vec<RecordBody>,
        repair: bool,
    ) {
        if batch.is_empty() {
            return;
        }
        let records = std::mem::take(batch);
        let bytes: u64 = records.iter().map(|r| r.bytes.len() as u64).sum();
        let n = records.len() as u64;
        let msg = Message::Records {
            lane,
            topic: topic.to_owned(),
            origin: origin.clone(),
            repair,
            records,
        };
        let l = &mut self.lanes_out[lane as usize];
        l.ready_bytes += bytes;
        l.ready.push_back(Ready {
            msg,
            records: n,
            bytes,
        });
    }

    fn push_truncated(
        &mut self,
        lane: u16,
        topic: &str,
        origin: &Origin,
        (from, to): Range,
        repair: bool,
    ) {
        let msg = Message::Truncated {
            lane,
            topic: topic.to_owned(),
            origin: origin.clone(),
            from,
            to,
            repair,
        };
        self.lanes_out[lane as usize].ready.push_back(Ready {
            msg,
            records: 1,
            bytes: 0,
        });
    }

    /// Send ready messages of `lane` that fit its credit (splitting a batch to
    /// fit), then start more reads.
    fn pump(&mut self, lane: u16, view: &impl LocalView) {
        loop {
            let l = &mut self.lanes_out[lane as usize];
            let Some(front) = l.ready.front_mut() else {
                break;
            };
            let rec_room = l.granted_records.saturating_sub(l.sent_records);
            let byte_room = l.granted_bytes.saturating_sub(l.sent_bytes);
            if rec_room == 0 || byte_room == 0 {
                break;
            }
            if front.records > rec_room || front.bytes > byte_room {
                // Split a record batch to what fits (at least one record).
                let Message::Records { records, .. } = &mut front.msg else {
                    break; // a truncation costs one record: rec_room >= 1 so it fits
                };
                let mut take = 0usize;
                let mut taken_bytes = 0u64;
                for r in records.iter() {
                    let b = r.bytes.len() as u64;
                    if take as u64 >= rec_room || (take > 0 && taken_bytes + b > byte_room) {
                        break;
                    }
                    take += 1;
                    taken_bytes += b;
                }
                let rest = records.split_off(take);
                let head = std::mem::replace(records, rest);
                let emptied = records.is_empty();
                front.records -= take as u64;
                front.bytes -= taken_bytes;
                let mut msg = front.msg.clone();
                if let Message::Records { records, .. } = &mut msg {
                    *records = head;
                }
                l.ready_bytes -= taken_bytes;
                l.sent_records += take as u64;
                l.sent_bytes += taken_bytes;
                if emptied {
                    l.ready.pop_front();
                }
                self.send(StreamId::Lane(lane), &msg);
                continue;
            }
            let Some(r) = l.ready.pop_front() else { break };
            l.ready_bytes -= r.bytes;
            l.sent_records += r.records;
            l.sent_bytes += r.bytes;
            self.send(StreamId::Lane(lane), &r.msg);
        }
        self.schedule(lane, view);
    }

    // ----- helpers -----

    fn pull(&mut self, topic: &str, origin: &Origin, from: u64, to: u64) {
        let msg = Message::Pull {
            topic: topic.to_owned(),
            origin: origin.clone(),
            from,
            to,
        };
        self.send(StreamId::Control, &msg);
    }

    fn local_ranges(&self, view: &impl LocalView, topic: &str, origin: &Origin) -> RangeSet {
        view.vector(topic)
            .and_then(|vv| vv.get(origin).cloned())
            .unwrap_or_default()
    }

    /// Does this link carry `topic` (matches one of our filters and one of the peer's)?
    fn carries(&mut self, topic: &str) -> bool {
        if let Some(c) = self.carried.get(topic) {
            return *c;
        }
        let ours = self.cfg.filters.iter().any(|p| matches(p, topic));
        let theirs = self
            .peer
            .as_ref()
            .is_some_and(|h| h.filters.iter().any(|p| matches(p, topic)));
        if self.carried.len() < 1_000_000 {
            self.carried.insert(topic.to_owned(), ours && theirs);
        }
        ours && theirs
    }

    /// The lane of a topic: a stable hash, so all of a topic's origins share one lane.
    fn lane_of(&self, topic: &str) -> u16 {
        (crc32c::crc32c(topic.as_bytes()) % u32::from(self.cfg.lanes)) as u16
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, stream: StreamId, msg: &Message) {
        self.actions.push_back(Action::Send {
            stream,
            frame: wire::encode(msg),
        });
    }

    fn event(&mut self, e: LinkEvent) {
        self.actions.push_back(Action::Event(e));
    }

    fn protocol_error(&mut self, detail: String) {
        self.close_with(CloseReason::Protocol(detail));
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.reads.clear();
        self.applies.clear();
        self.actions.push_back(Action::Closed(reason));
    }
}

/// A message's name for errors.
fn kind(msg: &Message) -> &'static str {
    match msg {
        Message::Hello(_) => "hello",
        Message::Refuse { .. } => "refuse",
        Message::Summary { .. } => "summary",
        Message::Records { .. } => "records",
        Message::Truncated { .. } => "truncated",
        Message::Ack { .. } => "ack",
        Message::Credit { .. } => "credit",
        Message::Digest { .. } => "digest",
        Message::Pull { .. } => "pull",
        Message::LwwDigest { .. } => "lww digest",
        Message::LwwEntries { .. } => "lww entries",
    }
}
