//! The single writer thread: sequence allocation, HLC, group commit, idempotent publish.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// The single writer: sequence allocation, group commit, retention, dedupe expiry.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) opts: StoreOptions,
    pub(super) commit_tx: mpsc::Sender<Committed>,
    pub(super) clock_last: u64,
    /// The writer's authoritative copy of the index; the shared copy is updated
    /// from it after each durable commit (touched topics only).
    pub(super) index: Index,
    /// The current digest bucket per (topic, origin).
    pub(super) digests: super::replica::DigestCache,
    /// Dedupe entries the next housekeeping pass may expire (follows the backlog).
    pub(super) dedupe_budget: usize,
    /// Where the next plugin kv tombstone sweep resumes (`None`: from the start).
    pub(super) tombstones_from: Option<Vec<u8>>,
}

/// Where the writer answers an apply.
type ApplyReply = oneshot::Sender<Result<Vec<super::replica::Applied>, StoreError>>;

/// Apply messages (each from one peer link's round) committed together at most.
const MAX_APPLIES_TOGETHER: usize = 16;

/// An append waiting in the current batch.
pub(super) struct Pending {
    pub(super) reply: oneshot::Sender<Result<Ack, StoreError>>,
    pub(super) ack: Ack,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        self.clock_last = self.shared.index.read().max_hlc;
        let mut last_tick = std::time::Instant::now();
        // A request read while gathering applies that belongs to the next round.
        let mut carried: Option<Request> = None;
        while let Some(first) = carried.take().or_else(|| rx.blocking_recv()) {
            // Woken by the first append of a batch: give its producers (often on the
            // same core) the chance to queue the rest before committing, so a commit
            // carries many appends instead of one per wake-up.
            if rx.is_empty() {
                std::thread::yield_now();
            }
            let mut appends = Vec::new();
            let mut together = Vec::new();
            let mut applies: Vec<(Vec<super::replica::ApplyRequest>, ApplyReply)> = Vec::new();
            let mut shutdown = None;
            let mut bytes = 0usize;
            let mut ticked = false;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append(a, reply) => {
                        bytes += a.payload.len();
                        appends.push((a, reply));
                    }
                    Request::AppendAll(reqs, reply) => {
                        // Never split: the whole batch joins this commit.
                        let mut acks = Vec::with_capacity(reqs.len());
                        for a in reqs {
                            bytes += a.payload.len();
                            let (tx, rx) = oneshot::channel();
                            appends.push((a, tx));
                            acks.push(rx);
                        }
                        together.push((acks, reply));
                    }
                    Request::Tick => ticked = true,
                    Request::NoteCorrupt(tid, oid, seq) => {
                        // Rare; its own small write (made durable with the next commit's fsync).
                        let key = super::keys::corrupt_key(tid, oid, seq);
                        if let Err(e) = self.shared.meta.insert(key, b"") {
                            tracing::warn!(error = %e, "could not record a corrupt record on the list");
                        }
                    }
                    Request::Apply(reqs, reply) => {
                        // Appends queued before it commit first: commit order is queue
                        // order. Applies queued right behind it (other peer links) join
                        // its batch; anything else waits for the next round.
                        applies.push((reqs, reply));
                        while applies.len() < MAX_APPLIES_TOGETHER {
                            match rx.try_recv() {
                                Ok(Request::Apply(reqs, reply)) => applies.push((reqs, reply)),
                                Ok(other) => {
                                    carried = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        break;
                    }
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
            // `commit` answered every append before returning.
            for (acks, reply) in together {
                let all: Result<Vec<Ack>, StoreError> = acks
                    .into_iter()
                    .map(|mut rx| rx.try_recv().unwrap_or(Err(StoreError::Closed)))
                    .collect();
                let _ = reply.send(all);
            }
            if !applies.is_empty() {
                self.apply_queued(applies);
            }
            // On the gateway's one-second tick, and at least once a second while
            // publishes keep the writer busy.
            if ticked || last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = std::time::Instant::now();
                self.housekeeping();
            }
            // Plugin kv writes with no group commit since: sync them now (at most about
            // a second after they were made, since the gateway ticks every second).
            if self.shared.kv_dirty.load(Ordering::Acquire)
                && self.opts.fsync == FsyncPolicy::Always
                && let Err(e) = self.shared.persist()
            {
                tracing::error!(error = %e, "fsync of plugin kv writes failed");
            }
            if let Some(done) = shutdown {
                self.close();
                let _ = done.send(());
                tracing::info!("store writer stopped");
                return;
            }
        }
        // Every handle dropped without a shutdown request: make it durable, but leave
        // the flush to the next open (which does it), so the engine closes at once
        // and the directory can be reopened right away.
        if let Err(e) = self.shared.db.persist(PersistMode::SyncAll) {
            self.shared.observer.durability_error("shutdown_fsync");
            let e = self.shared.poison("the final fsync at close failed", &e);
            tracing::error!(error = %e, "acknowledged messages written since the last successful fsync may be lost on power failure");
        }
    }

    /// The last fsync and the memtable flush, each failure reported (ERROR log,
    /// observer) rather than dropped. Bounded in time: the engine waits for a failed
    /// background flush forever (a full disk), and shutdown must end within its grace.
    fn close(&self) {
        let shared = &self.shared;
        if let Some(cause) = shared.poison_cause.lock().clone() {
            tracing::error!(
                cause = %cause,
                "store closed while poisoned: everything acknowledged before the failure is durable; nothing after it was acknowledged"
            );
            return;
        }
        if let Err(e) = shared.db.persist(PersistMode::SyncAll) {
            shared.observer.durability_error("shutdown_fsync");
            let e = shared.poison("the final fsync at shutdown failed", &e);
            tracing::error!(error = %e, policy = ?self.opts.fsync, "acknowledged messages written since the last successful fsync may be lost on power failure");
            return;
        }
        if self.opts.inspect {
            return;
        }
        // Write memtables out so the next open replays a short journal, not all of it.
        if let Err(failure) = flush_memtables(shared, SHUTDOWN_FLUSH_DEADLINE) {
            shared.observer.durability_error("shutdown_flush");
            tracing::error!(
                error = %failure,
                "memtable flush at shutdown failed; nothing acknowledged is lost (the journal is durable), the next open replays it"
            );
        }
    }

    /// Apply the queued apply messages in one commit where their streams are
    /// distinct, and answer each with its own results.
    fn apply_queued(&mut self, applies: Vec<(Vec<super::replica::ApplyRequest>, ApplyReply)>) {
        let counts: Vec<usize> = applies.iter().map(|(reqs, _)| reqs.len()).collect();
        let (reqs, replies): (Vec<_>, Vec<_>) = applies.into_iter().unzip();
        match self.apply_all(reqs.into_iter().flatten().collect()) {
            Ok(all) => {
                let mut all = all.into_iter();
                for (n, reply) in counts.into_iter().zip(replies) {
                    let _ = reply.send(Ok(all.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                // The first gets the error itself; the others the store's refusal it
                // caused, or its text.
                let text = e.to_string();
                let mut e = Some(e);
                for reply in replies {
                    let err = e.take().unwrap_or_else(|| {
                        self.shared
                            .refusal()
                            .unwrap_or_else(|| StoreError::Io(std::io::Error::other(text.clone())))
                    });
                    let _ = reply.send(Err(err));
                }
            }
        }
    }

    pub(super) fn tick_hlc(&mut self) -> u64 {
        let wall = self.opts.clock.unix_ms() << 16;
        self.clock_last = wall.max(self.clock_last + 1);
        self.clock_last
    }

    /// Write one group-commit batch; acknowledge and hand to the broker only after it is durable.
    pub(super) fn commit(
        &mut self,
        appends: Vec<(Publish, oneshot::Sender<Result<Ack, StoreError>>)>,
    ) {
        if let Some(StoreError::Poisoned(cause)) = self.shared.refusal() {
            for (_, reply) in appends {
                let _ = reply.send(Err(StoreError::Poisoned(cause.clone())));
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
        let mut in_batch: HashMap<PublishKey, Ack> = HashMap::new();
        let mut touched: HashMap<String, ()> = HashMap::new();
        let now = self.opts.clock.unix_ms();
        let local = shared.local.clone();
        let local_id = index.origin_id(&shared, &mut batch, &local);
        for (req, reply) in appends {
            // Idempotent publish: a (principal, client, topic, mid) seen within the window
            // gets the original ack.
            let publish_key = req.mid.as_deref().map(|mid| publish_key(&req, mid));
            if let Some(pk) = &publish_key {
                if let Some(ack) = in_batch.get(pk) {
                    pending.push(Pending {
                        reply,
                        ack: Ack {
                            dup: true,
                            ..ack.clone()
                        },
                    });
                    continue;
                }
                match self.lookup_dedupe(&index, &dedupe_key(pk), now) {
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
            let stream = t.streams.entry(local_id).or_insert_with(Stream::empty);
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
                publish_key,
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
            let crc = super::replica::record_crc(&bytes);
            self.digests.add(
                &shared,
                &mut batch,
                (topic_id, local_id, seq),
                &local,
                edgesync_replication::digest::Entry::Record { crc },
                true,
            );
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
            if let Some(pk) = publish_key {
                let entry = DedupeEntry {
                    topic_id,
                    origin_id: local_id,
                    seq,
                    hlc,
                    written_ms: now,
                };
                entry.insert(&shared, &mut batch, &pk);
                in_batch.insert(pk, ack.clone());
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
                let cause = match e {
                    StoreError::Poisoned(cause) => cause,
                    other => match shared.poison("a group commit failed", &other) {
                        StoreError::Poisoned(cause) => cause,
                        other => other.to_string(),
                    },
                };
                self.digests.clear();
                for p in pending {
                    let _ = p.reply.send(Err(StoreError::Poisoned(cause.clone())));
                }
                self.index = index;
            }
        }
    }

    pub(super) fn lookup_dedupe(
        &self,
        index: &Index,
        key: &[u8],
        now: u64,
    ) -> Result<Option<Ack>, StoreError> {
        let Some(DedupeEntry {
            origin_id,
            seq,
            hlc,
            written_ms: written,
            ..
        }) = DedupeEntry::read(&self.shared, key)?
        else {
            return Ok(None);
        };
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
}

/// A dedupe entry: where the first record of a publish key is, and when the entry
/// was written (its expiry clock). Value: topic_id u32 · origin_id u32 · seq u64 ·
/// hlc u64 · written_ms u64, all BE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DedupeEntry {
    pub topic_id: u32,
    pub origin_id: u32,
    pub seq: u64,
    pub hlc: u64,
    pub written_ms: u64,
}

impl DedupeEntry {
    /// The entry under `key` (a [`dedupe_key`]), if any and well formed.
    pub(super) fn read(shared: &Shared, key: &[u8]) -> Result<Option<DedupeEntry>, StoreError> {
        let Some(v) = shared.dedupe.get(key)? else {
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
        Ok(Some(DedupeEntry {
            topic_id: u32_at(0),
            origin_id: u32_at(4),
            seq: u64_at(8),
            hlc: u64_at(16),
            written_ms: u64_at(24),
        }))
    }

    /// Write the entry and its expiry-order twin into `batch`.
    pub(super) fn insert(
        &self,
        shared: &Shared,
        batch: &mut fjall::OwnedWriteBatch,
        key: &PublishKey,
    ) {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.topic_id.to_be_bytes());
        v.extend_from_slice(&self.origin_id.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.hlc.to_be_bytes());
        v.extend_from_slice(&self.written_ms.to_be_bytes());
        let mut w = Vec::with_capacity(25);
        w.push(b'w');
        w.extend_from_slice(&self.written_ms.to_be_bytes());
        w.extend_from_slice(key);
        batch.insert(&shared.dedupe, w, b"".as_slice());
        batch.insert(&shared.dedupe, dedupe_key(key).as_slice(), v);
    }
}

/// How long shutdown (and open, after a replay) waits for the memtable flush before
/// leaving it to the next open's journal replay.
pub(super) const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Write every keyspace's memtable out to tables, waiting at most `deadline`: the
/// engine waits forever for a flush that failed (a full disk), so the wait runs on a
/// helper thread that is left behind when it overruns.
///
/// # Errors
/// Why the flush failed or did not finish, in words.
pub(super) fn flush_memtables(shared: &Shared, deadline: Duration) -> Result<(), String> {
    let keyspaces = [
        shared.records.clone(),
        shared.meta.clone(),
        shared.dedupe.clone(),
        shared.kv.clone(),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("edgesync-store-flush".into())
        .spawn(move || {
            let result = keyspaces
                .iter()
                .try_for_each(|ks| ks.rotate_memtable_and_wait());
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(describe_io(&e));
    }
    match rx.recv_timeout(deadline) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(describe_io(&e)),
        Err(_) => Err(format!(
            "did not finish within {} s (a full disk makes the engine's flush fail and wait forever)",
            deadline.as_secs()
        )),
    }
}

/// Start the fsync thread of policy `interval`.
///
/// # Errors
/// The thread could not be started: the store would never fsync, so it must not open.
pub(super) fn spawn_syncer(shared: Arc<Shared>, every: Duration) -> std::io::Result<()> {
    spawn_periodic(shared, "edgesync-fsync", every, |s| {
        if s.persist().is_err() {
            // `persist` poisoned the store and logged the cause at ERROR: no
            // more acknowledgements, so there is nothing left to sync.
            s.observer.durability_error("syncer");
            return false;
        }
        true
    })
}

/// A thread that runs `tick` every `every` while the store is open (it holds only a
/// weak handle) and `tick` returns true.
pub(super) fn spawn_periodic(
    shared: Arc<Shared>,
    name: &str,
    every: Duration,
    mut tick: impl FnMut(&Shared) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let weak = Arc::downgrade(&shared);
    drop(shared);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(s) = weak.upgrade() else { return };
                if !tick(&s) {
                    return;
                }
            }
        })
        .map(drop)
}
