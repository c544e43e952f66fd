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
//! | `records` | topic_id u32 BE · origin_id u32 BE · seq u64 BE | [`Record`] bytes (CRC32C inside), or a 13-byte gap marker covering seq..=to |
//! | `meta`    | `n` / `e` / `h`                              | node id, current epoch, highest HLC |
//! | `meta`    | `t` · topic                                  | topic_id u32 BE |
//! | `meta`    | `o` · origin_id u32 BE                       | epoch u64 BE · node |
//! | `meta`    | `v` · topic_id u32 BE                        | topic state: version vector (with out-of-order ranges), low marks, counts (CRC32C) |
//! | `meta`    | `g` · topic_id · origin_id · bucket u64 BE   | digest of 1024 seqs: count u64 · wrapping sum u64 (see `replica`) |
//! | `meta`    | `c` · topic_id · origin_id · seq             | (empty): a record held but unservable (corrupt list) |
//! | `meta`    | `b` · bridge (u32 BE len · bytes) · key      | a bridge's position entry, CRC32C first (see `position`) |
//! | `dedupe`  | `k` · publish key (16 bytes)                 | topic_id, origin_id, seq, hlc, written_ms |
//! | `dedupe`  | `w` · written_ms u64 BE · publish key        | (empty): expiry order |
//! | `meta`    | `l` · LWW namespace · 0x00 · bucket u32 BE    | digest of that key bucket: count u64 · wrapping sum u64 (see `lww`) |
//! | `meta`    | `Lh` / `Lv`                                  | highest LWW stamp; unstamped plugin kv migrated |
//! | `kv`      | `p` · plugin · 0x00 · key                    | plugin key/value entries, stamped (see `lww`) |
//! | `kv`      | 0x00 · `q` · 0x00 · …                         | queue progress (see `queues::runtime`) |
//!
//! A publish's dedupe *identity* is 0x00, or 0x01 · principal (u32 BE length ·
//! bytes), then client id and topic (u32 BE length · bytes each), then the mid: every
//! part but the last length-prefixed, so no two publishes share one by accident.
//! Its *publish key* is the first 16 bytes of SHA-256 over the identity; the record
//! carries it (format version 2), so a replica indexes the records it applies under
//! the same key and answers a retry made on it after a failover. Entries written
//! before this layout (the raw identity after `k`) match nothing and expire with the
//! dedupe window.
//!
//! # Writing: one thread, group commit
//!
//! A single writer thread owns sequence allocation. It drains up to
//! `max_batch` append requests, assigns each its `seq` (dense per topic and
//! origin) and HLC, writes the records, the topic states (version vectors) and
//! the dedupe entries in **one** atomic batch, then makes it durable with one
//! `fdatasync` (fsync policy `always`). Only then are the publishers
//! acknowledged and the records handed to the broker, so no seq is ever visible
//! before it is durable. A failed write or fsync poisons the store: nothing more is
//! acknowledged until restart (the state of the page cache is unknown), and the
//! refusal names the cause ([`Store::poison_cause`]: "the disk is full" for ENOSPC).
//! Closing never waits on a failed engine flush (see `writer::Writer::close`).
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
//!
//! The engine's journal replay restores into memtables whatever the last run left
//! unflushed (all of it after a kill -9). Open flushes those memtables before the
//! first write ([`Store::replayed_bytes`] says how much), so consecutive crashes do
//! not pile up: each open replays at most what one run wrote since its own open.
//!
//! # Damage
//!
//! Before the engine opens, `salvage` drops damaged journal batches (keeping the
//! originals in `<data_dir>/quarantine`); records they held, records that fail
//! their CRC and table blocks that cannot be read go on the corrupt list and are
//! reported to readers as `corrupt` gaps. `edgesync store check|repair` are the
//! offline tools. See ARCHITECTURE.md, "A flipped bit costs the damaged records".
//!
//! # Replication
//!
//! `replica` is the seam replication uses: idempotent [`Store::apply`] of records
//! that arrive already identified, version vectors with ranges, gap markers,
//! digests and raw range reads.

mod housekeeping;
mod index;
mod keys;
mod kv;
mod lww;
mod position;
mod read;
mod record;
mod recover;
mod replica;
pub mod salvage;
mod verify;
mod writer;

use index::{Index, Stream, TopicState, publish_index};
use keys::{
    corrupt_key, decode_topic_state, dedupe_key, encode_topic_state, key_seq, meta_topic_key,
    publish_key, record_key,
};
use recover::recover;
use writer::{DedupeEntry, Writer, spawn_periodic, spawn_syncer};

pub use lww::{
    DEFAULT_KV_TOMBSTONE_TTL, KV_NAMESPACE_PREFIX, LWW_MAX_DRIFT_MS, LWW_SOURCE_LOCAL, LwwBatch,
    LwwMerged,
};
pub use record::{PublishKey, Record, RecordError};
pub use replica::{Applied, ApplyRequest, MAX_HLC_DRIFT_MS, RangeRead, RawRecord};
pub use verify::Verify;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgesync_protocol::Origin;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::clock::SharedClock;
pub use crate::model::Publish;

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
/// Replication's retention hold: `(topic, origin, seq, hlc)` → keep it for now.
pub type RetentionHold = Arc<dyn Fn(&str, &Origin, u64, u64) -> bool + Send + Sync>;

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
    /// Damage was found: `kind` is `journal` (batches dropped at open) or `record`
    /// (a record that fails its checksum or cannot be read); `n` how many.
    fn damaged(&self, _kind: &'static str, _n: u64) {}
    /// The store stopped accepting writes (once); `cause` says which write failed and why.
    fn poisoned(&self, _cause: &str) {}
    /// Background durability work failed without poisoning the store: `what` is
    /// `shutdown_fsync`, `shutdown_flush` or `syncer` (bounded label set).
    fn durability_error(&self, _what: &'static str) {}
    /// Housekeeping removed `n` plugin kv tombstones older than their bound.
    fn tombstones_collected(&self, _n: u64) {}
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
    /// Wall clock for HLCs, the dedupe window and retention by age. Default: the system clock.
    pub clock: SharedClock,
    /// Open to look, not to change (`edgesync store check`): no journal rewrite, no
    /// new epoch, no metadata repair written. Appends still work; do not use them.
    pub inspect: bool,
    /// How long a deleted plugin kv key's tombstone is kept after its stamp (module
    /// `lww`, "Tombstones"). Default [`lww::DEFAULT_KV_TOMBSTONE_TTL`] (7 days).
    pub kv_tombstone_ttl: Duration,
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
            clock: crate::clock::system(),
            inspect: false,
            kv_tombstone_ttl: lww::DEFAULT_KV_TOMBSTONE_TTL,
        }
    }
}

/// Store failures, classified for the client reply.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    /// The store stopped accepting writes; the text names the write that failed and
    /// why (a full disk says so), see [`Store::poison_cause`].
    #[error("store stopped accepting writes: {0}; restart the gateway once the cause is fixed")]
    Poisoned(String),
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
    #[error("the journal has {} damaged batch(es); `edgesync store repair` drops them", .0.dropped)]
    JournalDamaged(salvage::Report),
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
    Append(Publish, oneshot::Sender<Result<Ack, StoreError>>),
    /// Appends that go into one group commit together: all durable, or none.
    AppendAll(Vec<Publish>, oneshot::Sender<Result<Vec<Ack>, StoreError>>),
    /// Records of other origins, already identified (the replication seam).
    Apply(
        Vec<replica::ApplyRequest>,
        oneshot::Sender<Result<Vec<replica::Applied>, StoreError>>,
    ),
    Tick,
    /// A read found this record corrupt: keep it on the durable corrupt list.
    NoteCorrupt(u32, u32, u64),
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
    /// The data directory (a write probe there tells a full disk from other failures).
    dir: PathBuf,
    /// Why `poisoned` was set (the first failure only), for errors, logs and `/readyz`.
    poison_cause: parking_lot::Mutex<Option<String>>,
    /// A plugin kv write reached the OS and waits for the next fsync.
    kv_dirty: AtomicBool,
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
    /// Set by replication: records retention must keep for now (peers lack them).
    retention_hold: RwLock<Option<RetentionHold>>,
    /// Bytes the journal replay at open put back into memtables (flushed right after).
    replayed_bytes: u64,
    /// Records reads found corrupt and no apply has repaired yet: (topic, origin, seq).
    corrupt: RwLock<std::collections::BTreeSet<(String, Origin, u64)>>,
    /// Plugin kv as LWW state: stamp clock, digests, the live channel (see `lww`).
    lww: parking_lot::Mutex<lww::LwwState>,
    /// The wall clock (LWW stamps; the writer holds its own handle).
    clock: SharedClock,
    /// Streams whose retention floor moved, for the reclaimer (`housekeeping`):
    /// (topic id, origin id) → floor now, and the floor its tables were last dropped at.
    reclaim: parking_lot::Mutex<housekeeping::Reclaim>,
}

impl Shared {
    fn retention_for(&self, topic: &str) -> Retention {
        let hinted = self.retention_overrides.read().get(topic).copied();
        hinted.unwrap_or_else(|| (self.retention)(topic))
    }
}

/// Create `dir` (and missing parents) 0700, or narrow an existing one to 0700: the
/// payloads under it are no other local user's business (security finding 22). Files
/// inside are created 0600 through the process umask the server sets.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(dir = %dir.display(), from = format!("{:o}", mode & 0o777), "data directory narrowed to 0700");
    }
    Ok(())
}

impl Store {
    /// Open (or create) the store and start its writer thread.
    ///
    /// Returns the handle and the stream of committed batches for the broker.
    ///
    /// # Errors
    /// [`StoreError`] when the directory cannot be opened or its metadata is corrupt.
    pub fn open(opts: StoreOptions) -> Result<(Store, mpsc::Receiver<Committed>), StoreError> {
        private_dir(&opts.dir)?;
        // Drop damaged journal batches before the engine sees them (see `salvage`).
        let salvaged = salvage::salvage(
            &opts.dir.join("store"),
            &opts.dir.join("quarantine"),
            !opts.inspect,
        )?;
        if opts.inspect && !salvaged.is_clean() {
            return Err(StoreError::JournalDamaged(salvaged));
        }
        if !salvaged.is_clean() {
            tracing::error!(
                batches = salvaged.dropped,
                bytes = salvaged.dropped_bytes,
                keys = salvaged.lost.len(),
                quarantine = %salvaged.quarantine.as_deref().unwrap_or(std::path::Path::new("")).display(),
                "store journal damaged: dropped the damaged batches (originals kept in quarantine); the records they held are reported as corrupt gaps"
            );
            opts.observer.damaged("journal", salvaged.dropped as u64);
        }
        let db = Database::builder(opts.dir.join("store"))
            .manual_journal_persist(true)
            .cache_size(opts.cache_bytes)
            .open()?;
        let records = db.keyspace("records", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let dedupe = db.keyspace("dedupe", KeyspaceCreateOptions::default)?;
        let kv = db.keyspace("kv", KeyspaceCreateOptions::default)?;
        // What the journal replay put back into memtables (the engine's experimental
        // write-buffer figure): what a kill -9 left unflushed.
        let replayed_bytes = db.write_buffer_size();
        let recover::Recovered {
            node,
            epoch,
            index,
            new_epoch: reason,
            damaged,
        } = recover(
            &db,
            &records,
            &meta,
            opts.node_id.as_deref(),
            &salvaged.lost,
            opts.inspect,
        )?;
        if !damaged.is_empty() {
            tracing::error!(
                records = damaged.len(),
                "store holds records it cannot serve (corrupt); readers get `corrupt` gaps until a peer repairs them"
            );
            opts.observer.damaged("record", damaged.len() as u64);
        }
        if let Some(r) = &reason {
            tracing::warn!(node = %node, epoch, reason = %r, "store started a new epoch");
        }
        tracing::info!(node = %node, epoch, topics = index.topics.len(), replayed_bytes, dir = %opts.dir.display(), "store open");
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
            poison_cause: parking_lot::Mutex::new(None),
            dir: opts.dir.clone(),
            kv_dirty: AtomicBool::new(false),
            dedupe_window: opts.dedupe_window,
            observer: opts.observer.clone(),
            new_epoch_reason: reason,
            retention_overrides: RwLock::new(HashMap::new()),
            retention_hold: RwLock::new(None),
            retention: opts.retention.clone(),
            corrupt: RwLock::new(damaged.into_iter().collect()),
            replayed_bytes,
            lww: parking_lot::Mutex::new(lww::LwwState::new(opts.kv_tombstone_ttl)),
            clock: opts.clock.clone(),
            reclaim: parking_lot::Mutex::new(housekeeping::Reclaim::default()),
        });
        shared.open_lww(opts.inspect)?;
        if !opts.inspect && replayed_bytes > 0 {
            // Flush what the replay restored, so the next open after another kill -9
            // replays only what was written after this one: replay stays bounded by
            // one run's unflushed writes instead of growing with every crash.
            if let Err(failure) = writer::flush_memtables(&shared, writer::SHUTDOWN_FLUSH_DEADLINE)
            {
                tracing::error!(error = %failure, "flushing the replayed journal at open failed; the next open replays it again");
            }
        }
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let (commit_tx, commit_rx) = mpsc::channel(64);
        let index = shared.index.read().clone();
        let writer = Writer {
            shared: shared.clone(),
            opts: opts.clone(),
            commit_tx,
            clock_last: 0,
            index,
            digests: replica::DigestCache::default(),
            dedupe_budget: housekeeping::DEDUPE_BUDGET_MIN,
            tombstones_from: None,
        };
        std::thread::Builder::new()
            .name("edgesync-store".into())
            .spawn(move || writer.run(rx))?;
        if !opts.inspect {
            housekeeping::spawn_reclaimer(shared.clone(), housekeeping::RECLAIM_EVERY)?;
        }
        if let FsyncPolicy::Interval(every) = opts.fsync {
            spawn_syncer(shared.clone(), every).inspect_err(|e| {
                tracing::error!(error = %e, "could not start the fsync thread of policy `interval`; the store does not open");
            })?;
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

    /// Append several records in one commit (one engine batch, one fsync) and wait
    /// until they are durable: all of them are stored, or none (an atomic batch). The
    /// acks come in the order of `reqs`; a repeated (principal, client, topic, mid)
    /// gets the original ack with `dup`.
    ///
    /// # Errors
    /// As [`Store::append`]; nothing of the batch was stored.
    pub async fn append_all(&self, reqs: Vec<Publish>) -> Result<Vec<Ack>, StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::AppendAll(reqs, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Append one record and wait until it is durable.
    ///
    /// # Errors
    /// [`StoreError::Poisoned`] / [`StoreError::Closed`] / engine errors: nothing was acknowledged.
    pub async fn append(&self, req: Publish) -> Result<Ack, StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
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

    /// Install the replication driver's retention hold: retention keeps a record (and
    /// everything newer in its topic) while `hold(topic, origin, seq, hlc)` says a peer
    /// still lacks it. The hold bounds itself (by age); retention resumes past it.
    pub fn set_retention_hold(&self, hold: RetentionHold) {
        *self.shared.retention_hold.write() = Some(hold);
    }

    /// The retention in force for `topic`: a storage hook's run-time override, else
    /// the configured limits.
    pub fn retention_for(&self, topic: &str) -> Retention {
        self.shared.retention_for(topic)
    }

    /// Ask the writer to run retention and dedupe expiry now (the gateway does every
    /// second; the writer also does at least once a second while it commits).
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

    /// True after a failed write or fsync: nothing more is acknowledged until restart.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Relaxed)
    }

    /// Why the store stopped accepting writes ("a group commit failed: the disk is
    /// full …"), or `None` while it accepts them.
    pub fn poison_cause(&self) -> Option<String> {
        self.shared.poison_cause.lock().clone()
    }

    /// Bytes the journal replay at this open restored into memtables: writes a
    /// crash (kill -9) left unflushed. Open flushes them, so this stays bounded by
    /// what one run left behind.
    pub fn replayed_bytes(&self) -> u64 {
        self.shared.replayed_bytes
    }

    /// Approximate bytes used on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.db.disk_space().unwrap_or(0)
    }
}

impl Shared {
    fn persist(&self) -> Result<(), StoreError> {
        // Everything written before this sync is covered, plugin kv writes included.
        self.kv_dirty.store(false, Ordering::Release);
        let started = std::time::Instant::now();
        let result = self.db.persist(PersistMode::SyncData);
        self.observer.synced(started.elapsed());
        result.map_err(|e| {
            self.poison(
                "writing the journal to disk (flush and fdatasync) failed",
                &e,
            )
        })
    }

    /// Stop accepting writes because `during` failed with `err`: set the flag, keep the
    /// first cause (a full disk is named as such), log it at ERROR, tell the observer.
    /// Returns the error to answer the waiting writers with.
    fn poison(&self, during: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
        let mut cause = format!("{during}: {}", describe_io(err));
        if engine_poisoned(err) {
            // The engine's own background flush failed first and only logged why;
            // a write probe tells a full disk from the rest.
            cause = format!(
                "{cause} (a background flush of the storage engine failed earlier; {})",
                space_probe(&self.dir)
            );
        }
        let first = {
            let mut g = self.poison_cause.lock();
            if g.is_none() {
                *g = Some(cause.clone());
            }
            g.clone().unwrap_or(cause)
        };
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(cause = %first, "store poisoned: no further writes are accepted or acknowledged until restart");
            self.observer.poisoned(&first);
        }
        StoreError::Poisoned(first)
    }

    /// The error to refuse a write with once the store is poisoned.
    fn refusal(&self) -> Option<StoreError> {
        if !self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        let cause = self.poison_cause.lock().clone();
        Some(StoreError::Poisoned(
            cause.unwrap_or_else(|| "an earlier write failed".into()),
        ))
    }
}

/// True when `err` (or a source) is the engine's "poisoned by an earlier failure".
fn engine_poisoned(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if matches!(
            e.downcast_ref::<fjall::Error>(),
            Some(fjall::Error::Poisoned)
        ) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Write and sync 1 MiB in `dir`, then remove it: says whether the disk has room.
fn space_probe(dir: &std::path::Path) -> String {
    use std::io::Write as _;
    const PROBE_BYTES: usize = 1 << 20;
    let path = dir.join(".space-probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(()) => "a 1 MiB write probe in the data directory succeeded; see the engine log".into(),
        Err(e) => format!(
            "a 1 MiB write probe in the data directory failed: {}",
            describe_io(&e)
        ),
    }
}

/// `err` and its sources in one line; a full disk (ENOSPC) or a full quota (EDQUOT)
/// is said in words first, because that is what the operator has to fix.
fn describe_io(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut full = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            full |= matches!(io.raw_os_error(), Some(28 | 122))
                || io.kind() == std::io::ErrorKind::StorageFull;
        }
        if let Some(src) = e.source() {
            let s = src.to_string();
            if !text.contains(&s) {
                text = format!("{text}: {s}");
            }
        }
        cur = e.source();
    }
    if full {
        format!("the disk is full ({text})")
    } else {
        text
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod replica_tests;

#[cfg(test)]
mod lww_tests;
