//! The durable log: every published message is a [`Record`] written here before
//! it is acknowledged, delivered or replicated. Only this module writes to disk.
//!
//! # Layout on disk
//!
//! The engine is fjall (an LSM tree with a checksummed write-ahead journal; the
//! measurements behind the choice are in ARCHITECTURE.md). One database under
//! `<data_dir>/store` with four keyspaces:
//!
//! | keyspace  | key                                          | value |
//! |-----------|----------------------------------------------|-------|
//! | `records` | topic_id u32 BE · origin_id u32 BE · seq u64 BE | [`Record`] bytes (CRC32C inside) |
//! | `meta`    | `n` / `e` / `h`                              | node id, current epoch, highest HLC |
//! | `meta`    | `t` · topic                                  | topic_id u32 BE |
//! | `meta`    | `o` · origin_id u32 BE                       | epoch u64 BE · node |
//! | `meta`    | `v` · topic_id u32 BE                        | topic state: version vector, low marks, counts (CRC32C) |
//! | `dedupe`  | `k` · client · 0x00 · mid                    | topic_id, origin_id, seq, hlc, written_ms |
//! | `dedupe`  | `w` · written_ms u64 BE · client · 0x00 · mid | (empty): expiry order |
//! | `kv`      | plugin · 0x00 · key                          | plugin key/value entries |
//!
//! # Writing: one thread, group commit
//!
//! A single writer thread owns sequence allocation. It drains up to
//! `max_batch` append requests, assigns each its `seq` (dense per topic and
//! origin) and HLC, writes the records, the topic states (version vectors) and
//! the dedupe entries in **one** atomic batch, then makes it durable with one
//! `fdatasync` (fsync policy `always`). Only then are the publishers
//! acknowledged and the records handed to the broker, so no seq is ever visible
//! before it is durable. A failed fsync poisons the store: nothing more is
//! acknowledged until restart (the state of the page cache is unknown).
//!
//! # Opening: no full scan
//!
//! Opening reads the meta keyspace (one entry per topic and origin), never the
//! records. fjall's journal recovery cuts a torn tail back to the last complete
//! batch; because a topic's version vector is written in the same batch as its
//! records, the two always agree after recovery. The open then proves the tail:
//! for every local stream, the record at the high-water mark must exist and
//! pass its CRC, and the next must not exist. If that proof fails, the node
//! starts a new epoch, so new records never share a (node, epoch, seq) with
//! records that may have been lost.

mod record;

pub use record::{Record, RecordError};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgesync_protocol::{Headers, Origin};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// When the journal is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync after every group-commit batch, before any acknowledgement.
    Always,
    /// Acknowledge after writing to the OS; fdatasync every interval. A power loss
    /// (not a process crash) can lose up to one interval of acknowledged messages.
    Interval(Duration),
}

/// Retention limits for one topic. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Retention {
    pub fn is_unlimited(&self) -> bool {
        self.max_messages.is_none() && self.max_bytes.is_none() && self.max_age.is_none()
    }
}

/// Maps a topic to its retention limits (built from config).
pub type RetentionFn = Arc<dyn Fn(&str) -> Retention + Send + Sync>;

/// What one group commit did, for [`StoreObserver::committed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Append requests in the batch (duplicates answered from the dedupe window included).
    pub requests: usize,
    /// New records made durable.
    pub records: usize,
    /// Batch write plus fsync (policy `always`) or write to the OS (policy `interval`).
    pub elapsed: Duration,
}

/// Told what the writer did (the gateway's metrics implement it). Methods run on
/// the writer or fsync thread, so they must be quick and must not block; the
/// defaults do nothing, which keeps the store usable and testable on its own.
pub trait StoreObserver: Send + Sync {
    /// A group commit succeeded.
    fn committed(&self, _stats: &CommitStats) {}
    /// One fdatasync of the journal finished (successfully or not) after `elapsed`.
    fn synced(&self, _elapsed: Duration) {}
}

/// The observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl StoreObserver for NoObserver {}

/// Totals over every topic, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    pub topics: u64,
    /// Records held (after retention).
    pub records: u64,
    /// Payload bytes held (after retention).
    pub payload_bytes: u64,
}

/// Everything the store needs to open.
#[derive(Clone)]
pub struct StoreOptions {
    /// Directory holding the database (created if missing).
    pub dir: PathBuf,
    /// Node id for a new data directory; `None` generates one. An existing
    /// directory keeps its id, and a different configured id is an error.
    pub node_id: Option<String>,
    pub fsync: FsyncPolicy,
    /// Most append requests per group commit.
    pub max_batch: usize,
    /// Most payload bytes per group commit.
    pub max_batch_bytes: usize,
    /// Append requests that may wait for the writer before publishers are slowed.
    pub queue_depth: usize,
    /// How long a (client id, client message id) pair is remembered for dedupe.
    pub dedupe_window: Duration,
    /// Retention per topic.
    pub retention: RetentionFn,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    /// Told about commits and fsyncs (metrics). Default: [`NoObserver`].
    pub observer: Arc<dyn StoreObserver>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("dir", &self.dir)
            .field("fsync", &self.fsync)
            .finish()
    }
}

impl StoreOptions {
    /// Defaults for a data directory: fsync always, 4096-record batches, 2-minute dedupe window.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            dir: dir.into(),
            node_id: None,
            fsync: FsyncPolicy::Always,
            max_batch: 4096,
            max_batch_bytes: 16 << 20,
            queue_depth: 16_384,
            dedupe_window: Duration::from_secs(120),
            retention: Arc::new(|_| Retention::default()),
            cache_bytes: 64 << 20,
            observer: Arc::new(NoObserver),
        }
    }
}

/// Store failures, classified for the client reply.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("store is poisoned after a failed fsync; restart the gateway")]
    Poisoned,
    #[error("store is shut down")]
    Closed,
    #[error("corrupt metadata {what}: {detail}")]
    CorruptMeta { what: String, detail: String },
    #[error("data directory belongs to node {stored:?}, configured node id is {configured:?}")]
    NodeMismatch { stored: String, configured: String },
    #[error("record: {0}")]
    Record(#[from] RecordError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// One publish to append.
#[derive(Debug)]
pub struct AppendRequest {
    pub topic: String,
    pub client: String,
    pub mid: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

/// The durable acknowledgement of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub origin: Origin,
    pub seq: u64,
    pub hlc: u64,
    /// The topic's version vector just after this record.
    pub vv: BTreeMap<Origin, u64>,
    /// True when this repeats the ack of an earlier (client, mid).
    pub dup: bool,
}

/// A raw key/value pair of the plugin kv keyspace.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Records made durable by one group commit, in commit order.
pub type Committed = Arc<Vec<Arc<Record>>>;

/// A range of one stream that a reader cannot be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingRange {
    pub origin: Origin,
    pub from: u64,
    pub to: u64,
    pub corrupt: bool,
}

/// The result of a read.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    pub records: Vec<Record>,
    /// Ranges skipped because retention removed them or they failed their CRC.
    pub missing: Vec<MissingRange>,
    /// Position per origin after this read (input positions advanced).
    pub positions: BTreeMap<Origin, u64>,
    /// True when the limit stopped the read before `upto`.
    pub more: bool,
}

/// Summary of one topic for listings.
#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    pub topic: String,
    pub messages: u64,
    pub bytes: u64,
    /// Version vector: `node/epoch` → highest seq.
    pub heads: BTreeMap<String, u64>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node", &self.shared.node)
            .field("epoch", &self.shared.epoch)
            .finish()
    }
}

enum Request {
    Append(AppendRequest, oneshot::Sender<Result<Ack, StoreError>>),
    Tick,
    Shutdown(oneshot::Sender<()>),
}

struct Shared {
    db: Database,
    records: Keyspace,
    meta: Keyspace,
    dedupe: Keyspace,
    kv: Keyspace,
    index: RwLock<Index>,
    node: String,
    epoch: u64,
    local: Origin,
    poisoned: AtomicBool,
    dedupe_window: Duration,
    /// Told about fsyncs (the writer also reports commits to it).
    observer: Arc<dyn StoreObserver>,
    /// Set when open had to start a new epoch (the previous tail could not be proven).
    new_epoch_reason: Option<String>,
    /// Retention set at run time by storage hooks (`accept-with` hints); wins over config.
    /// Kept in memory: plugins re-state their hints on every write.
    retention_overrides: RwLock<HashMap<String, Retention>>,
    /// Configured retention per topic.
    retention: RetentionFn,
}

impl Shared {
    fn retention_for(&self, topic: &str) -> Retention {
        let hinted = self.retention_overrides.read().get(topic).copied();
        hinted.unwrap_or_else(|| (self.retention)(topic))
    }
}

/// In-memory view of the meta keyspace, updated only after a durable commit.
#[derive(Default, Clone)]
struct Index {
    topics: HashMap<String, TopicState>,
    origin_ids: HashMap<Origin, u32>,
    origins: HashMap<u32, Origin>,
    next_topic_id: u32,
    next_origin_id: u32,
    max_hlc: u64,
}

/// Persisted per-topic state: the version vector and retention bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TopicState {
    id: u32,
    /// origin_id → stream.
    streams: BTreeMap<u32, Stream>,
    count: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Stream {
    /// First retained seq (high + 1 when the stream is empty).
    low: u64,
    /// Highest contiguous seq stored.
    high: u64,
}

impl Store {
    /// Open (or create) the store and start its writer thread.
    ///
    /// Returns the handle and the stream of committed batches for the broker.
    ///
    /// # Errors
    /// [`StoreError`] when the directory cannot be opened or its metadata is corrupt.
    pub fn open(opts: StoreOptions) -> Result<(Store, mpsc::Receiver<Committed>), StoreError> {
        std::fs::create_dir_all(&opts.dir)?;
        let db = Database::builder(opts.dir.join("store"))
            .manual_journal_persist(true)
            .cache_size(opts.cache_bytes)
            .open()?;
        let records = db.keyspace("records", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let dedupe = db.keyspace("dedupe", KeyspaceCreateOptions::default)?;
        let kv = db.keyspace("kv", KeyspaceCreateOptions::default)?;
        let (node, epoch, index, reason) = recover(&db, &records, &meta, opts.node_id.as_deref())?;
        if let Some(r) = &reason {
            tracing::warn!(node = %node, epoch, reason = %r, "store started a new epoch");
        }
        tracing::info!(node = %node, epoch, topics = index.topics.len(), dir = %opts.dir.display(), "store open");
        let shared = Arc::new(Shared {
            local: Origin::new(node.clone(), epoch),
            node,
            epoch,
            db,
            records,
            meta,
            dedupe,
            kv,
            index: RwLock::new(index),
            poisoned: AtomicBool::new(false),
            dedupe_window: opts.dedupe_window,
            observer: opts.observer.clone(),
            new_epoch_reason: reason,
            retention_overrides: RwLock::new(HashMap::new()),
            retention: opts.retention.clone(),
        });
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let (commit_tx, commit_rx) = mpsc::channel(64);
        let index = shared.index.read().clone();
        let writer = Writer {
            shared: shared.clone(),
            opts: opts.clone(),
            commit_tx,
            clock_last: 0,
            index,
        };
        std::thread::Builder::new()
            .name("edgesync-store".into())
            .spawn(move || writer.run(rx))?;
        if let FsyncPolicy::Interval(every) = opts.fsync {
            spawn_syncer(shared.clone(), every);
        }
        Ok((Store { shared, tx }, commit_rx))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// The epoch new records are written under.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The origin of records written here.
    pub fn local_origin(&self) -> &Origin {
        &self.shared.local
    }

    /// Why open started a new epoch, if it did.
    pub fn new_epoch_reason(&self) -> Option<&str> {
        self.shared.new_epoch_reason.as_deref()
    }

    /// Append one record and wait until it is durable.
    ///
    /// # Errors
    /// [`StoreError::Poisoned`] / [`StoreError::Closed`] / engine errors: nothing was acknowledged.
    pub async fn append(&self, req: AppendRequest) -> Result<Ack, StoreError> {
        if self.shared.poisoned.load(Ordering::Relaxed) {
            return Err(StoreError::Poisoned);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Append(req, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Set a topic's retention at run time (a storage hook's hint); it replaces the
    /// configured limits for that topic until restart.
    pub fn set_retention_override(&self, topic: &str, retention: Retention) {
        let mut g = self.shared.retention_overrides.write();
        if g.get(topic) != Some(&retention) && (g.len() < 100_000 || g.contains_key(topic)) {
            g.insert(topic.to_string(), retention);
        }
    }

    /// The retention in force for `topic`: a storage hook's run-time override, else
    /// the configured limits.
    pub fn retention_for(&self, topic: &str) -> Retention {
        self.shared.retention_for(topic)
    }

    /// Ask the writer to run retention and dedupe expiry now (normally every second).
    pub fn tick(&self) {
        let _ = self.tx.try_send(Request::Tick);
    }

    /// Flush and stop the writer. Appends after this fail with [`StoreError::Closed`].
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The version vector of a topic (empty when unknown).
    pub fn head(&self, topic: &str) -> BTreeMap<Origin, u64> {
        let idx = self.shared.index.read();
        idx.topics.get(topic).map(|t| idx.vv(t)).unwrap_or_default()
    }

    /// Version vectors of every topic (used to seed the broker).
    pub fn heads(&self) -> HashMap<String, BTreeMap<Origin, u64>> {
        let idx = self.shared.index.read();
        idx.topics
            .iter()
            .map(|(name, t)| (name.clone(), idx.vv(t)))
            .collect()
    }

    /// Names of every stored topic.
    pub fn topic_names(&self) -> Vec<String> {
        self.shared.index.read().topics.keys().cloned().collect()
    }

    /// Listing of topics with counts, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let idx = self.shared.index.read();
        let mut out: Vec<TopicInfo> = idx
            .topics
            .iter()
            .map(|(name, t)| TopicInfo {
                topic: name.clone(),
                messages: t.count,
                bytes: t.bytes,
                heads: idx
                    .vv(t)
                    .into_iter()
                    .map(|(o, s)| (o.to_string(), s))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Positions that make a read return the last `n` records of each origin.
    pub fn last_n_positions(&self, topic: &str, n: u64) -> BTreeMap<Origin, u64> {
        let idx = self.shared.index.read();
        let Some(t) = idx.topics.get(topic) else {
            return BTreeMap::new();
        };
        t.streams
            .iter()
            .filter_map(|(oid, s)| {
                let origin = idx.origins.get(oid)?.clone();
                let from = s.high.saturating_sub(n).max(s.low.saturating_sub(1));
                Some((origin, from))
            })
            .collect()
    }

    /// Read records of `topic` after `after` (per origin), at most `limit`, never past
    /// `upto` (per origin) when given. Corrupt records are skipped and reported.
    ///
    /// # Errors
    /// Engine errors.
    pub fn read(
        &self,
        topic: &str,
        after: &BTreeMap<Origin, u64>,
        upto: Option<&BTreeMap<Origin, u64>>,
        limit: usize,
    ) -> Result<ReadBatch, StoreError> {
        let (topic_id, streams) = {
            let idx = self.shared.index.read();
            let Some(t) = idx.topics.get(topic) else {
                return Ok(ReadBatch {
                    positions: after.clone(),
                    ..ReadBatch::default()
                });
            };
            let streams: Vec<(u32, Origin, Stream)> = t
                .streams
                .iter()
                .filter_map(|(oid, s)| Some((*oid, idx.origins.get(oid)?.clone(), *s)))
                .collect();
            (t.id, streams)
        };
        let mut out = ReadBatch {
            positions: after.clone(),
            ..ReadBatch::default()
        };
        for (oid, origin, stream) in streams {
            let pos = after.get(&origin).copied().unwrap_or(0);
            let end = upto.map_or(stream.high, |u| {
                u.get(&origin).copied().unwrap_or(0).min(stream.high)
            });
            if pos >= end {
                continue;
            }
            if out.records.len() >= limit {
                out.more = true;
                break;
            }
            let mut next = pos + 1;
            if next < stream.low {
                let to = (stream.low - 1).min(end);
                out.missing.push(MissingRange {
                    origin: origin.clone(),
                    from: next,
                    to,
                    corrupt: false,
                });
                next = to + 1;
                out.positions.insert(origin.clone(), to);
                if next > end {
                    continue;
                }
            }
            let budget = limit - out.records.len();
            let lo = record_key(topic_id, oid, next);
            let hi = record_key(topic_id, oid, end);
            for guard in self.shared.records.range(lo..=hi).take(budget) {
                let (key, value) = guard.into_inner()?;
                let seq = key_seq(&key);
                if seq != next {
                    // A hole inside the retained range: report it, never skip silently.
                    out.missing.push(MissingRange {
                        origin: origin.clone(),
                        from: next,
                        to: seq - 1,
                        corrupt: true,
                    });
                }
                match Record::decode(&value) {
                    Ok(r) if r.seq == seq && r.topic == topic && r.origin == origin => {
                        out.records.push(r)
                    }
                    Ok(_) | Err(_) => {
                        tracing::error!(topic, origin = %origin, seq, "corrupt record skipped; not served");
                        out.missing.push(MissingRange {
                            origin: origin.clone(),
                            from: seq,
                            to: seq,
                            corrupt: true,
                        });
                    }
                }
                next = seq + 1;
                out.positions.insert(origin.clone(), seq);
            }
            if next <= end {
                out.more = true;
            }
        }
        Ok(out)
    }

    /// Topic, record and payload byte totals (sums the in-memory index; no disk reads).
    pub fn totals(&self) -> StoreTotals {
        let idx = self.shared.index.read();
        idx.topics.values().fold(
            StoreTotals {
                topics: idx.topics.len() as u64,
                ..StoreTotals::default()
            },
            |mut t, s| {
                t.records += s.count;
                t.payload_bytes += s.bytes;
                t
            },
        )
    }

    /// True after a failed fsync: nothing more is acknowledged until restart.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Relaxed)
    }

    /// Approximate bytes used on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.db.disk_space().unwrap_or(0)
    }

    /// Plugin key/value keyspace (durable; written through [`Store::kv_write`]).
    pub fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.shared.kv.get(key)?.map(|v| v.to_vec()))
    }

    /// Apply plugin key/value writes atomically and durably (fdatasync).
    ///
    /// # Errors
    /// Engine errors; the store is poisoned if the fsync fails.
    pub fn kv_write(&self, puts: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        if self.shared.poisoned.load(Ordering::Relaxed) {
            return Err(StoreError::Poisoned);
        }
        let mut b = self.shared.db.batch();
        for (k, v) in puts {
            match v {
                Some(v) => b.insert(&self.shared.kv, k.as_slice(), v.as_slice()),
                None => b.remove(&self.shared.kv, k.as_slice()),
            }
        }
        b.commit()?;
        self.shared.persist()
    }

    /// Plugin key/value entries under a prefix, at most `limit`.
    pub fn kv_scan(&self, prefix: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        let mut out = Vec::new();
        for g in self.shared.kv.prefix(prefix).take(limit) {
            let (k, v) = g.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

impl Shared {
    fn persist(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = self.db.persist(PersistMode::SyncData);
        self.observer.synced(started.elapsed());
        result.map_err(|e| {
            self.poisoned.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, "fsync failed; store poisoned, no further acknowledgements");
            StoreError::Engine(e)
        })
    }
}

impl Index {
    fn vv(&self, t: &TopicState) -> BTreeMap<Origin, u64> {
        t.streams
            .iter()
            .filter_map(|(oid, s)| Some((self.origins.get(oid)?.clone(), s.high)))
            .collect()
    }
}

fn spawn_syncer(shared: Arc<Shared>, every: Duration) {
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let _ = std::thread::Builder::new()
        .name("edgesync-fsync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(s) = weak.upgrade() else { return };
                if s.persist().is_err() {
                    return;
                }
            }
        });
}

fn record_key(topic_id: u32, origin_id: u32, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..8].copy_from_slice(&origin_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn key_seq(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() == 16 {
        b.copy_from_slice(&key[8..16]);
    }
    u64::from_be_bytes(b)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn meta_topic_key(id: u32) -> Vec<u8> {
    let mut k = b"v".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn encode_topic_state(t: &TopicState) -> Vec<u8> {
    let body = rmp_serde::to_vec(t).unwrap_or_default();
    let mut out = crc32c::crc32c(&body).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn decode_topic_state(bytes: &[u8]) -> Result<TopicState, String> {
    if bytes.len() < 4 {
        return Err("truncated".into());
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if crc32c::crc32c(&bytes[4..]) != stored {
        return Err("checksum mismatch".into());
    }
    rmp_serde::from_slice(&bytes[4..]).map_err(|e| e.to_string())
}

/// Rebuild the in-memory index from the meta keyspace and prove the tail.
fn recover(
    db: &Database,
    records: &Keyspace,
    meta: &Keyspace,
    configured_node: Option<&str>,
) -> Result<(String, u64, Index, Option<String>), StoreError> {
    let corrupt = |what: &str, detail: String| StoreError::CorruptMeta {
        what: what.into(),
        detail,
    };
    let mut index = Index::default();
    let stored_node = meta
        .get(b"n")?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let node = match (&stored_node, configured_node) {
        (Some(s), Some(c)) if s != c => {
            return Err(StoreError::NodeMismatch {
                stored: s.clone(),
                configured: c.into(),
            });
        }
        (Some(s), _) => s.clone(),
        (None, Some(c)) => c.to_string(),
        (None, None) => format!("node-{:08x}", rand::random::<u32>()),
    };
    let mut epoch = match meta.get(b"e")? {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("epoch", "length".into()))?,
        ),
        None => 0,
    };
    if let Some(v) = meta.get(b"h")? {
        index.max_hlc = u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("hlc", "length".into()))?,
        );
    }
    for g in meta.prefix(b"o") {
        let (k, v) = g.into_inner()?;
        let id = u32::from_be_bytes(
            k[1..]
                .try_into()
                .map_err(|_| corrupt("origin key", format!("{k:?}")))?,
        );
        if v.len() < 8 {
            return Err(corrupt("origin", format!("id {id}")));
        }
        let e = u64::from_be_bytes(
            v[..8]
                .try_into()
                .map_err(|_| corrupt("origin", "epoch".into()))?,
        );
        let origin = Origin::new(String::from_utf8_lossy(&v[8..]).into_owned(), e);
        index.next_origin_id = index.next_origin_id.max(id + 1);
        index.origin_ids.insert(origin.clone(), id);
        index.origins.insert(id, origin);
    }
    let mut names: HashMap<u32, String> = HashMap::new();
    for g in meta.prefix(b"t") {
        let (k, v) = g.into_inner()?;
        let id = u32::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("topic id", format!("{k:?}")))?,
        );
        names.insert(id, String::from_utf8_lossy(&k[1..]).into_owned());
        index.next_topic_id = index.next_topic_id.max(id + 1);
    }
    for g in meta.prefix(b"v") {
        let (_, v) = g.into_inner()?;
        let state = decode_topic_state(&v).map_err(|e| corrupt("topic state", e))?;
        let name = names
            .get(&state.id)
            .cloned()
            .ok_or_else(|| corrupt("topic state", format!("unknown id {}", state.id)))?;
        index.topics.insert(name, state);
    }
    // Prove the tail of every stream of the current local origin.
    let mut reason = None;
    if epoch == 0 {
        epoch = 1;
    } else if let Some(&oid) = index.origin_ids.get(&Origin::new(node.clone(), epoch)) {
        'topics: for (name, t) in &index.topics {
            let Some(s) = t.streams.get(&oid) else {
                continue;
            };
            if s.high >= s.low {
                let ok = match records.get(record_key(t.id, oid, s.high))? {
                    Some(v) => Record::decode(&v).map(|r| r.seq == s.high).unwrap_or(false),
                    None => false,
                };
                if !ok {
                    reason = Some(format!(
                        "topic {name}: record {} at the high-water mark is missing or corrupt",
                        s.high
                    ));
                    break 'topics;
                }
            }
            if records.get(record_key(t.id, oid, s.high + 1))?.is_some() {
                reason = Some(format!(
                    "topic {name}: a record beyond the high-water mark {} exists",
                    s.high
                ));
                break 'topics;
            }
        }
        if reason.is_some() {
            epoch += 1;
        }
    }
    let mut b = db.batch();
    b.insert(meta, b"n".as_slice(), node.as_bytes());
    b.insert(meta, b"e".as_slice(), epoch.to_be_bytes().as_slice());
    b.commit()?;
    db.persist(PersistMode::SyncData)?;
    Ok((node, epoch, index, reason))
}

/// The single writer: sequence allocation, group commit, retention, dedupe expiry.
struct Writer {
    shared: Arc<Shared>,
    opts: StoreOptions,
    commit_tx: mpsc::Sender<Committed>,
    clock_last: u64,
    /// The writer's authoritative copy of the index; the shared copy is updated
    /// from it after each durable commit (touched topics only).
    index: Index,
}

/// An append waiting in the current batch.
struct Pending {
    reply: oneshot::Sender<Result<Ack, StoreError>>,
    ack: Ack,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        self.clock_last = self.shared.index.read().max_hlc;
        let mut last_tick = std::time::Instant::now();
        while let Some(first) = rx.blocking_recv() {
            // Woken by the first append of a batch: give its producers (often on the
            // same core) the chance to queue the rest before committing, so a commit
            // carries many appends instead of one per wake-up.
            if rx.is_empty() {
                std::thread::yield_now();
            }
            let mut appends = Vec::new();
            let mut shutdown = None;
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append(a, reply) => {
                        bytes += a.payload.len();
                        appends.push((a, reply));
                    }
                    Request::Tick => {}
                    Request::Shutdown(done) => {
                        shutdown = Some(done);
                        break;
                    }
                }
                if appends.len() < self.opts.max_batch && bytes < self.opts.max_batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = std::time::Instant::now();
                self.housekeeping();
            }
            if let Some(done) = shutdown {
                let _ = self.shared.db.persist(PersistMode::SyncAll);
                // Write memtables out so the next open replays a short journal, not all of it.
                for ks in [
                    &self.shared.records,
                    &self.shared.meta,
                    &self.shared.dedupe,
                    &self.shared.kv,
                ] {
                    if let Err(e) = ks.rotate_memtable_and_wait() {
                        tracing::warn!(error = %e, "memtable flush at shutdown failed; the next open replays the journal");
                    }
                }
                let _ = done.send(());
                tracing::info!("store writer stopped");
                return;
            }
        }
        let _ = self.shared.db.persist(PersistMode::SyncAll);
    }

    fn tick_hlc(&mut self) -> u64 {
        let wall = now_ms() << 16;
        self.clock_last = wall.max(self.clock_last + 1);
        self.clock_last
    }

    /// Write one group-commit batch; acknowledge and hand to the broker only after it is durable.
    fn commit(&mut self, appends: Vec<(AppendRequest, oneshot::Sender<Result<Ack, StoreError>>)>) {
        if self.shared.poisoned.load(Ordering::Relaxed) {
            for (_, reply) in appends {
                let _ = reply.send(Err(StoreError::Poisoned));
            }
            return;
        }
        let started = std::time::Instant::now();
        let requests = appends.len();
        let shared = self.shared.clone();
        let mut index = std::mem::take(&mut self.index);
        let mut batch = shared.db.batch();
        let mut pending = Vec::with_capacity(appends.len());
        let mut committed = Vec::with_capacity(appends.len());
        let mut in_batch: HashMap<(String, String), Ack> = HashMap::new();
        let mut touched: HashMap<String, ()> = HashMap::new();
        let now = now_ms();
        let local = shared.local.clone();
        let local_id = index.origin_id(&shared, &mut batch, &local);
        for (req, reply) in appends {
            // Idempotent publish: a (client, mid) seen within the window gets the original ack.
            if let Some(mid) = &req.mid {
                let k = (req.client.clone(), mid.clone());
                if let Some(ack) = in_batch.get(&k) {
                    pending.push(Pending {
                        reply,
                        ack: Ack {
                            dup: true,
                            ..ack.clone()
                        },
                    });
                    continue;
                }
                match self.lookup_dedupe(&index, &req.client, mid, now) {
                    Ok(Some(ack)) => {
                        let _ = reply.send(Ok(ack));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                }
            }
            let hlc = self.tick_hlc();
            let topic_id = index.topic_id(&mut batch, &shared, &req.topic);
            let Some(t) = index.topics.get_mut(&req.topic) else {
                continue;
            };
            let stream = t
                .streams
                .entry(local_id)
                .or_insert(Stream { low: 1, high: 0 });
            let seq = stream.high + 1;
            stream.high = seq;
            t.count += 1;
            t.bytes += req.payload.len() as u64;
            let record = Record {
                topic: req.topic,
                origin: local.clone(),
                seq,
                hlc,
                client: req.client,
                mid: req.mid,
                headers: req.headers,
                payload: req.payload,
            };
            let bytes = match record.encode() {
                Ok(b) => b,
                Err(e) => {
                    // Undo the allocation: the seq stays dense.
                    if let Some(t) = index.topics.get_mut(&record.topic) {
                        if let Some(s) = t.streams.get_mut(&local_id) {
                            s.high -= 1;
                        }
                        t.count -= 1;
                        t.bytes -= record.payload.len() as u64;
                    }
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
            };
            debug_assert_eq!(Record::decode(&bytes).as_ref(), Ok(&record));
            batch.insert(
                &shared.records,
                record_key(topic_id, local_id, seq).as_slice(),
                bytes,
            );
            let vv = index.vv_of(&record.topic);
            let ack = Ack {
                origin: local.clone(),
                seq,
                hlc,
                vv,
                dup: false,
            };
            if let Some(mid) = &record.mid {
                let mut v = Vec::with_capacity(36);
                v.extend_from_slice(&topic_id.to_be_bytes());
                v.extend_from_slice(&local_id.to_be_bytes());
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(&hlc.to_be_bytes());
                v.extend_from_slice(&now.to_be_bytes());
                batch.insert(&shared.dedupe, dedupe_key(&record.client, mid), v);
                let mut w = b"w".to_vec();
                w.extend_from_slice(&now.to_be_bytes());
                w.extend_from_slice(&dedupe_key(&record.client, mid)[1..]);
                batch.insert(&shared.dedupe, w, b"".as_slice());
                in_batch.insert((record.client.clone(), mid.clone()), ack.clone());
            }
            touched.insert(record.topic.clone(), ());
            committed.push(Arc::new(record));
            pending.push(Pending { reply, ack });
        }
        for name in touched.keys() {
            if let Some(t) = index.topics.get(name) {
                batch.insert(&shared.meta, meta_topic_key(t.id), encode_topic_state(t));
            }
        }
        index.max_hlc = self.clock_last;
        batch.insert(
            &shared.meta,
            b"h".as_slice(),
            self.clock_last.to_be_bytes().as_slice(),
        );
        let result =
            batch
                .commit()
                .map_err(StoreError::from)
                .and_then(|()| match self.opts.fsync {
                    FsyncPolicy::Always => shared.persist(),
                    FsyncPolicy::Interval(_) => shared
                        .db
                        .persist(PersistMode::Buffer)
                        .map_err(StoreError::from),
                });
        match result {
            Ok(()) => {
                let stats = CommitStats {
                    requests,
                    records: committed.len(),
                    elapsed: started.elapsed(),
                };
                shared.observer.committed(&stats);
                let names: Vec<String> = touched.into_keys().collect();
                publish_index(&shared, &index, &names);
                self.index = index;
                for p in pending {
                    let _ = p.reply.send(Ok(p.ack));
                }
                if !committed.is_empty()
                    && self.commit_tx.blocking_send(Arc::new(committed)).is_err()
                {
                    tracing::debug!("broker gone; committed records not fanned out");
                }
            }
            Err(e) => {
                shared.poisoned.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "group commit failed; store poisoned, publishes refused");
                for p in pending {
                    let _ = p.reply.send(Err(StoreError::Poisoned));
                }
                self.index = index;
            }
        }
    }

    fn lookup_dedupe(
        &self,
        index: &Index,
        client: &str,
        mid: &str,
        now: u64,
    ) -> Result<Option<Ack>, StoreError> {
        let Some(v) = self.shared.dedupe.get(dedupe_key(client, mid))? else {
            return Ok(None);
        };
        if v.len() != 32 {
            return Ok(None);
        }
        let u32_at = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let (origin_id, seq, hlc, written) = (u32_at(4), u64_at(8), u64_at(16), u64_at(24));
        if now.saturating_sub(written) > self.shared.dedupe_window.as_millis() as u64 {
            return Ok(None);
        }
        let Some(origin) = index.origins.get(&origin_id).cloned() else {
            return Ok(None);
        };
        let mut vv = BTreeMap::new();
        vv.insert(origin.clone(), seq);
        Ok(Some(Ack {
            origin,
            seq,
            hlc,
            vv,
            dup: true,
        }))
    }

    /// Retention and dedupe expiry; bounded work per call.
    fn housekeeping(&mut self) {
        if let Err(e) = self.expire_dedupe().and_then(|()| self.apply_retention()) {
            tracing::warn!(error = %e, "store housekeeping failed");
        }
    }

    fn expire_dedupe(&mut self) -> Result<(), StoreError> {
        let cutoff = now_ms().saturating_sub(self.shared.dedupe_window.as_millis() as u64);
        let mut b = self.shared.db.batch();
        let mut n = 0;
        for g in self.shared.dedupe.prefix(b"w").take(10_000) {
            let (k, _) = g.into_inner()?;
            if k.len() < 9 {
                continue;
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&k[1..9]);
            if u64::from_be_bytes(ts) > cutoff {
                break;
            }
            let mut dk = b"k".to_vec();
            dk.extend_from_slice(&k[9..]);
            b.remove(&self.shared.dedupe, dk);
            b.remove(&self.shared.dedupe, k.to_vec());
            n += 1;
        }
        if n > 0 {
            b.commit()?;
        }
        Ok(())
    }

    fn apply_retention(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let mut index = std::mem::take(&mut self.index);
        let result = self.retention_pass(&shared, &mut index);
        self.index = index;
        result
    }

    fn retention_pass(&mut self, shared: &Shared, index: &mut Index) -> Result<(), StoreError> {
        let mut batch = shared.db.batch();
        let mut budget = 50_000usize;
        let now = now_ms();
        let mut changed = Vec::new();
        for (name, t) in index.topics.iter_mut() {
            let policy = shared.retention_for(name);
            if policy.is_unlimited() {
                continue;
            }
            let before = t.count;
            let age_cutoff = policy
                .max_age
                .map(|a| now.saturating_sub(a.as_millis() as u64) << 16);
            while budget > 0 {
                let over_count = policy.max_messages.is_some_and(|m| t.count > m);
                let over_bytes = policy.max_bytes.is_some_and(|m| t.bytes > m);
                // Oldest record across this topic's streams.
                let mut oldest: Option<(u32, u64, u64, u64)> = None; // (origin, seq, hlc, len)
                for (oid, s) in &t.streams {
                    if s.low > s.high {
                        continue;
                    }
                    let Some(v) = shared.records.get(record_key(t.id, *oid, s.low))? else {
                        continue;
                    };
                    let (hlc, len) = Record::decode(&v)
                        .map(|r| (r.hlc, r.payload.len() as u64))
                        .unwrap_or((0, 0));
                    if oldest.is_none_or(|o| hlc < o.2) {
                        oldest = Some((*oid, s.low, hlc, len));
                    }
                }
                let Some((oid, seq, hlc, len)) = oldest else {
                    break;
                };
                let too_old = age_cutoff.is_some_and(|c| hlc < c);
                if !(over_count || over_bytes || too_old) {
                    break;
                }
                batch.remove(&shared.records, record_key(t.id, oid, seq).as_slice());
                if let Some(s) = t.streams.get_mut(&oid) {
                    s.low = seq + 1;
                }
                t.count = t.count.saturating_sub(1);
                t.bytes = t.bytes.saturating_sub(len);
                budget -= 1;
            }
            if t.count != before {
                batch.insert(&shared.meta, meta_topic_key(t.id), encode_topic_state(t));
                changed.push(name.clone());
            }
        }
        if !changed.is_empty() {
            batch.commit()?;
            shared.db.persist(PersistMode::Buffer)?;
            publish_index(shared, index, &changed);
            tracing::debug!(topics = changed.len(), "retention applied");
        }
        Ok(())
    }
}

fn dedupe_key(client: &str, mid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client.len() + mid.len());
    k.push(b'k');
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(mid.as_bytes());
    k
}

/// Copy what a durable commit changed from the writer's index into the shared one.
fn publish_index(shared: &Shared, index: &Index, topics: &[String]) {
    let mut s = shared.index.write();
    for name in topics {
        if let Some(t) = index.topics.get(name) {
            s.topics.insert(name.clone(), t.clone());
        }
    }
    if s.origins.len() != index.origins.len() {
        s.origins = index.origins.clone();
        s.origin_ids = index.origin_ids.clone();
    }
    s.next_topic_id = index.next_topic_id;
    s.next_origin_id = index.next_origin_id;
    s.max_hlc = index.max_hlc;
}

impl Index {
    fn vv_of(&self, topic: &str) -> BTreeMap<Origin, u64> {
        self.topics
            .get(topic)
            .map(|t| self.vv(t))
            .unwrap_or_default()
    }

    fn topic_id(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        shared: &Shared,
        topic: &str,
    ) -> u32 {
        if let Some(t) = self.topics.get(topic) {
            return t.id;
        }
        let id = self.next_topic_id;
        self.next_topic_id += 1;
        let mut k = b"t".to_vec();
        k.extend_from_slice(topic.as_bytes());
        batch.insert(&shared.meta, k, id.to_be_bytes().as_slice());
        self.topics.insert(
            topic.to_string(),
            TopicState {
                id,
                ..TopicState::default()
            },
        );
        id
    }

    fn origin_id(
        &mut self,
        shared: &Shared,
        batch: &mut fjall::OwnedWriteBatch,
        origin: &Origin,
    ) -> u32 {
        if let Some(id) = self.origin_ids.get(origin) {
            return *id;
        }
        let id = self.next_origin_id;
        self.next_origin_id += 1;
        let mut k = b"o".to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        let mut v = origin.epoch.to_be_bytes().to_vec();
        v.extend_from_slice(origin.node.as_bytes());
        batch.insert(&shared.meta, k, v);
        self.origin_ids.insert(origin.clone(), id);
        self.origins.insert(id, origin.clone());
        id
    }
}

#[cfg(test)]
mod tests;
