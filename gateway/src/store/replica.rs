//! The replication seam: records that arrive already identified (another node's
//! origin, idempotent apply), version vectors with ranges, gap markers, digests,
//! raw range reads, and the HLC receive-merge. The replication driver (issue 13)
//! reaches the store only through these functions and [`LocalView`].
//!
//! # Apply
//!
//! [`Store::apply`] takes the bytes of records of one (topic, origin), byte for
//! byte as the origin's store wrote them. Each is decoded (CRC checked) and must
//! name that topic and origin; bytes that do not verify are *rejected*, never
//! stored. A seq the topic's version vector already covers is skipped, so applying
//! the same batch twice stores it once. In repair mode a covered seq is also
//! replaced when the held copy is missing, fails its CRC or is a gap marker (never
//! when it is a valid record). Records, gap markers, the topic state and the
//! digest buckets go in **one** atomic batch with one fsync, like a local group
//! commit; only then does the caller get the durable set. [`Store::apply_all`]
//! puts several requests (distinct streams, queued together by one or more peer
//! links) in that one batch: one fsync per round, not one per topic.
//!
//! Records of this node's own current origin are accepted only in repair mode and
//! only below the high-water mark (a peer may give back what a corrupt disk lost;
//! it may never allocate a seq for us).
//!
//! # Out-of-order arrival
//!
//! A stream's vector is `1..=high` plus *extra* ranges above a hole. Records in
//! extras are durable and counted in the vector (so peers do not resend them) but
//! are not readable by clients and not handed to the broker until the hole fills:
//! subscribers see every origin's seqs dense and in order, as for local records.
//! When a record fills the hole, it and every extra it joins go to the broker in
//! seq order.
//!
//! # Gap markers
//!
//! A range a peer can no longer send (its retention removed it) arrives as a gap.
//! A gap that starts at the stream's first seq we lack *below everything held*
//! simply moves the stream's retention floor (`low`) — as if our retention had
//! removed it. A gap inside the stream (records held on both sides) is stored as
//! one gap-marker value under the key of its first seq ([`keys::gap_marker`]):
//! readers report it as a `retention` gap, `read_range` as truncated, and a later
//! repair may still replace it.
//!
//! # Digests
//!
//! Per (topic, origin, 1024-seq bucket) a count and wrapping sum of digest
//! elements (`edgesync_replication::digest`) is kept under the meta key
//! `g` · topic_id · origin_id · bucket, updated in the same batch as the records
//! (local appends included), so restart never rescans the log. Buckets wholly below
//! the retention floor are not compared and are dropped by retention.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use edgesync_protocol::Origin;
use edgesync_replication::digest::{self, BucketDigest, Entry, OriginDigest};
use edgesync_replication::{LocalView, LwwEntry, RangeSet, VersionVector};
use tokio::sync::oneshot;

use super::keys::{decode_gap, digest_key, digest_prefix, gap_marker};
use super::*;

/// How far ahead of this node's wall clock a received HLC may pull the local HLC.
/// A peer with a clock further ahead still has its records stored, but the local
/// clock does not follow it beyond this (one minute).
pub const MAX_HLC_DRIFT_MS: u64 = 60_000;

/// Records of one (topic, origin) to store as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyRequest {
    pub topic: String,
    pub origin: Origin,
    /// Record bytes in the store's format, any order.
    pub records: Vec<Bytes>,
    /// Inclusive seq ranges the sender no longer has (its retention removed them).
    pub gaps: Vec<(u64, u64)>,
    /// Also replace held copies that are missing, corrupt or gap markers.
    pub repair: bool,
}

/// What an apply made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The stream's durable set (its part of the topic's version vector) afterwards.
    pub durable: RangeSet,
    /// Seqs whose bytes failed verification or named another topic/origin: not stored.
    pub rejected: Vec<u64>,
    /// Records newly stored (replacements in repair mode included).
    pub stored: usize,
}

/// One seq's worth of a raw range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub seq: u64,
    pub hlc: u64,
    /// The record's own CRC32C (its first four bytes).
    pub crc: u32,
    pub bytes: Bytes,
}

/// The answer to [`Store::read_range`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRead {
    pub records: Vec<RawRecord>,
    /// Ranges below the retention floor or held as gap markers.
    pub truncated: Vec<(u64, u64)>,
    /// Seqs the vector covers whose record is missing or fails its CRC.
    pub corrupt: Vec<u64>,
    /// The last seq examined (`from - 1` when nothing was).
    pub end: u64,
}

/// The writer's cache of the current digest bucket of each (topic, origin): one
/// bucket per stream, loaded from the meta keyspace on first touch.
#[derive(Default)]
pub(super) struct DigestCache {
    current: HashMap<(u32, u32), (u64, BucketDigest)>,
}

impl DigestCache {
    /// Account for an entry written in `batch` (the bucket is written to the batch too).
    pub(super) fn add(
        &mut self,
        shared: &Shared,
        batch: &mut fjall::OwnedWriteBatch,
        (tid, oid, seq): (u32, u32, u64),
        origin: &Origin,
        entry: Entry,
        sign: bool,
    ) {
        let bucket = digest::bucket_of(seq);
        let slot = self
            .current
            .entry((tid, oid))
            .or_insert((u64::MAX, BucketDigest::default()));
        if slot.0 != bucket {
            let stored = shared
                .meta
                .get(digest_key(tid, oid, bucket))
                .ok()
                .flatten()
                .and_then(|v| decode_bucket(&v))
                .unwrap_or_default();
            *slot = (bucket, stored);
        }
        let e = digest::element(origin, seq, entry);
        if sign {
            slot.1.add(e);
        } else {
            slot.1.remove(e);
        }
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&slot.1.count.to_be_bytes());
        v.extend_from_slice(&slot.1.sum.to_be_bytes());
        batch.insert(&shared.meta, digest_key(tid, oid, bucket).as_slice(), v);
    }

    /// Forget cached buckets (after a failed commit the disk is the truth).
    pub(super) fn clear(&mut self) {
        self.current.clear();
    }
}

fn decode_bucket(v: &[u8]) -> Option<BucketDigest> {
    let count = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let sum = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some(BucketDigest { count, sum })
}

/// The CRC a record carries in its first four bytes.
pub(super) fn record_crc(bytes: &[u8]) -> u32 {
    bytes
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Store {
    /// Store records of another node (or repair our own), idempotently; see the module docs.
    ///
    /// # Errors
    /// [`StoreError::Poisoned`] / [`StoreError::Closed`] / engine errors: nothing was applied.
    pub async fn apply(&self, req: ApplyRequest) -> Result<Applied, StoreError> {
        self.apply_all(vec![req])
            .await?
            .pop()
            .ok_or(StoreError::Closed)
    }

    /// [`Store::apply`] for several requests at once, answered in order: requests
    /// naming distinct (topic, origin) streams share one atomic batch and one fsync
    /// (a peer link applies everything that queued while its last apply ran this way).
    ///
    /// # Errors
    /// As [`Store::apply`]; a failed commit fails every request (when the requests took
    /// two batches, the first may be durable: applies are idempotent, and the failure
    /// poisons the store).
    pub async fn apply_all(&self, reqs: Vec<ApplyRequest>) -> Result<Vec<Applied>, StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Apply(reqs, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A topic's version vector with ranges (`None` when the topic is unknown).
    pub fn vector(&self, topic: &str) -> Option<VersionVector> {
        let idx = self.shared.index.read();
        let t = idx.topics.get(topic)?;
        let mut vv = VersionVector::new();
        for (oid, s) in &t.streams {
            if let Some(origin) = idx.origins.get(oid) {
                vv.join_origin(origin, &s.set());
            }
        }
        Some(vv)
    }

    /// The digest of one (topic, origin): its retention floor and non-empty buckets
    /// at or above it, read from the meta keyspace (no record is read).
    pub fn digest(&self, topic: &str, origin: &Origin) -> Option<OriginDigest> {
        let (tid, oid, low) = {
            let idx = self.shared.index.read();
            let t = idx.topics.get(topic)?;
            let oid = *idx.origin_ids.get(origin)?;
            (t.id, oid, t.streams.get(&oid)?.low)
        };
        let mut d = OriginDigest::new();
        for g in self.shared.meta.prefix(digest_prefix(tid, oid)) {
            let Ok((k, v)) = g.into_inner() else {
                return None;
            };
            let Some(bucket) = k
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            if let Some(b) = decode_bucket(&v).filter(|b| !b.is_empty()) {
                d.buckets.insert(bucket, b);
            }
        }
        d.set_floor(low);
        Some(d)
    }

    /// Read `from..=to` of one (topic, origin) as stored bytes, ascending, CRC
    /// verified, within `max_records` / `max_bytes` (at least one record when any).
    /// Seqs the vector does not cover are skipped (still wanted by whoever asked).
    ///
    /// # Errors
    /// Engine errors.
    pub fn read_range(
        &self,
        topic: &str,
        origin: &Origin,
        from: u64,
        to: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<RangeRead, StoreError> {
        let mut out = RangeRead {
            end: from.saturating_sub(1),
            ..RangeRead::default()
        };
        let (tid, oid, stream) = {
            let idx = self.shared.index.read();
            let Some(t) = idx.topics.get(topic) else {
                return Ok(out);
            };
            let Some(&oid) = idx.origin_ids.get(origin) else {
                return Ok(out);
            };
            let Some(s) = t.streams.get(&oid) else {
                return Ok(out);
            };
            (t.id, oid, s.clone())
        };
        if from > to || from == 0 {
            return Ok(out);
        }
        let mut next = from;
        if next < stream.low {
            let upto = (stream.low - 1).min(to);
            out.truncated.push((next, upto));
            out.end = upto;
            next = upto + 1;
        }
        let mut bytes = 0u64;
        let lo = record_key(tid, oid, next);
        let hi = record_key(tid, oid, to);
        'scan: for guard in self.shared.records.range(lo..=hi) {
            let Ok((key, value)) = guard.into_inner() else {
                // A damaged table block: what the scan cannot reach is corrupt; the
                // next read starts after it.
                tracing::error!(topic, origin = %origin, seq = next, "store read failed; reporting the seq corrupt");
                if stream.covers(next) {
                    out.corrupt.push(next);
                    self.found_corrupt(topic, origin, (tid, oid), next);
                }
                out.end = next;
                return Ok(out);
            };
            let seq = key_seq(&key);
            // Covered seqs with no key below this one: missing, so corrupt.
            while next < seq {
                if stream.covers(next) {
                    out.corrupt.push(next);
                }
                out.end = next;
                next += 1;
            }
            if let Some(gap_to) = decode_gap(&value) {
                let upto = gap_to.min(to);
                out.truncated.push((seq, upto));
                out.end = upto;
                next = upto + 1;
                continue;
            }
            if !out.records.is_empty()
                && (out.records.len() >= max_records || bytes + value.len() as u64 > max_bytes)
            {
                break 'scan;
            }
            match Record::decode(&value) {
                Ok(r) if r.seq == seq && r.topic == topic && r.origin == *origin => {
                    bytes += value.len() as u64;
                    out.records.push(RawRecord {
                        seq,
                        hlc: r.hlc,
                        crc: record_crc(&value),
                        bytes: Bytes::copy_from_slice(&value),
                    });
                }
                _ => {
                    tracing::error!(topic, origin = %origin, seq, "corrupt record not sent to a peer");
                    out.corrupt.push(seq);
                    self.found_corrupt(topic, origin, (tid, oid), seq);
                }
            }
            out.end = seq;
            next = seq + 1;
            if out.records.len() >= max_records {
                break 'scan;
            }
        }
        // Past the last key: covered seqs up to `to` are missing (only when the scan ran out).
        if out.records.len() < max_records.max(1) && bytes <= max_bytes {
            while next <= to && next <= stream.high.max(stream.extra.high_water()) {
                if stream.covers(next) {
                    out.corrupt.push(next);
                }
                out.end = next;
                next += 1;
            }
        }
        Ok(out)
    }

    /// Records this store holds but cannot serve — found corrupt by a read, or lost
    /// with a damaged journal batch — until an apply repairs them. Durable (meta `c`
    /// keys), so a repair is retried after a restart.
    pub fn corrupt_records(&self) -> Vec<(String, Origin, u64)> {
        self.shared.corrupt.read().iter().cloned().collect()
    }
}

impl Store {
    /// A read found a record corrupt: list it (durably, through the writer) and count it.
    pub(super) fn found_corrupt(
        &self,
        topic: &str,
        origin: &Origin,
        (tid, oid): (u32, u32),
        seq: u64,
    ) {
        if self.shared.note_corrupt(topic, origin, seq) {
            self.shared.observer.damaged("record", 1);
            let _ = self.tx.try_send(Request::NoteCorrupt(tid, oid, seq));
        }
    }
}

impl Shared {
    /// Remember a record a read found corrupt (for repair from a peer).
    /// Returns true when it is new to the list.
    pub(super) fn note_corrupt(&self, topic: &str, origin: &Origin, seq: u64) -> bool {
        let mut c = self.corrupt.write();
        c.len() < 100_000 && c.insert((topic.to_string(), origin.clone(), seq))
    }
}

/// The replication core's synchronous view of the durable store.
impl LocalView for Store {
    fn topics(&self) -> Vec<String> {
        self.shared.index.read().topics.keys().cloned().collect()
    }

    fn vector(&self, topic: &str) -> Option<VersionVector> {
        Store::vector(self, topic)
    }

    fn digest(&self, topic: &str, origin: &Origin) -> Option<OriginDigest> {
        Store::digest(self, topic, origin)
    }

    /// Plugin kv's digests (module `lww`), kept in memory.
    fn lww_digests(&self) -> Vec<(String, u32, BucketDigest)> {
        self.lww_digest_list()
    }

    /// A bucket the peer's digest disagrees with: one scan of the namespace. A read
    /// error sends nothing now; the next digest round retries.
    fn lww_bucket(&self, namespace: &str, bucket: u32) -> Vec<LwwEntry> {
        self.lww_bucket_entries(namespace, bucket)
            .unwrap_or_else(|e| {
                tracing::warn!(%namespace, bucket, error = %e, "reading an LWW bucket failed");
                Vec::new()
            })
    }

    fn corrupt(&self) -> Vec<(String, Origin, u64)> {
        self.corrupt_records()
    }
}

/// One apply's batch and bookkeeping while it is being built.
struct ApplyBatch<'a> {
    shared: &'a Shared,
    batch: fjall::OwnedWriteBatch,
    /// topic id, origin id of the stream being applied to.
    ids: (u32, u32),
    origin: &'a Origin,
    topic: &'a str,
    rejected: Vec<u64>,
    stored: usize,
    /// Seq ranges `high` moved over: what becomes deliverable.
    advanced: Vec<(u64, u64)>,
    fresh: BTreeMap<u64, Arc<Record>>,
}

impl ApplyBatch<'_> {
    fn digest(&mut self, digests: &mut DigestCache, seq: u64, entry: Entry, add: bool) {
        let (tid, oid) = self.ids;
        digests.add(
            self.shared,
            &mut self.batch,
            (tid, oid, seq),
            self.origin,
            entry,
            add,
        );
    }

    /// Store one verified record unless the vector covers it (in repair mode:
    /// replace a copy that is missing, corrupt or a gap marker).
    fn record(
        &mut self,
        t: &mut TopicState,
        digests: &mut DigestCache,
        (record, bytes): (Record, Bytes),
        repair: bool,
        local: bool,
    ) -> Result<(), StoreError> {
        let seq = record.seq;
        let (tid, oid) = self.ids;
        let stream = t.streams.entry(oid).or_insert_with(Stream::empty);
        if seq == 0 || (local && seq > stream.high) {
            self.rejected.push(seq);
            return Ok(());
        }
        if local && !repair {
            // Our own record forwarded back by a peer (in a mesh under loss a peer's
            // view of this node can trail): held already. Not a verification failure,
            // which would make the link pull it again.
            return Ok(());
        }
        let key = record_key(tid, oid, seq);
        if stream.covers(seq) {
            if !repair || seq < stream.low {
                return Ok(());
            }
            let held = self.shared.records.get(key)?;
            let held_gap = held.as_ref().and_then(|v| decode_gap(v));
            let valid = held.as_ref().is_some_and(|v| {
                held_gap.is_none()
                    && Record::decode(v).is_ok_and(|r| r.seq == seq && r.topic == self.topic)
            });
            if valid {
                return Ok(());
            }
            match (&held, held_gap) {
                (Some(_), Some(gap_to)) => {
                    // The marker starts here: what follows the repaired seq stays a marker.
                    if gap_to > seq {
                        self.batch.insert(
                            &self.shared.records,
                            record_key(tid, oid, seq + 1).as_slice(),
                            gap_marker(gap_to).as_slice(),
                        );
                    }
                    self.digest(digests, seq, Entry::Gap, false);
                }
                (Some(v), None) => {
                    let crc = record_crc(v);
                    self.digest(digests, seq, Entry::Record { crc }, false);
                }
                (None, _) => {
                    if split_marker_around(self.shared, &mut self.batch, self.ids, seq)? {
                        self.digest(digests, seq, Entry::Gap, false);
                    }
                }
            }
            // A corrupt copy was counted when it was stored; a missing one or a marker was not.
            if held.is_none() || held_gap.is_some() {
                t.count += 1;
                t.bytes += record.payload.len() as u64;
            }
            let listed = (self.topic.to_string(), self.origin.clone(), seq);
            if self.shared.corrupt.write().remove(&listed) {
                self.batch
                    .remove(&self.shared.meta, corrupt_key(tid, oid, seq).as_slice());
            }
        } else {
            t.count += 1;
            t.bytes += record.payload.len() as u64;
            if let Some(r) = stream.insert(seq) {
                self.advanced.push(r);
            }
        }
        self.digest(
            digests,
            seq,
            Entry::Record {
                crc: record_crc(&bytes),
            },
            true,
        );
        self.batch
            .insert(&self.shared.records, key.as_slice(), bytes.as_ref());
        self.fresh.insert(seq, Arc::new(record));
        self.stored += 1;
        Ok(())
    }

    /// A range the sender no longer has: the part the vector lacks moves the floor
    /// (nothing held below it) or becomes a gap marker.
    fn gap(&mut self, t: &mut TopicState, digests: &mut DigestCache, (from, to): (u64, u64)) {
        if from == 0 || from > to {
            return;
        }
        let (tid, oid) = self.ids;
        let stream = t.streams.entry(oid).or_insert_with(Stream::empty);
        let lacking = RangeSet::from_range(from, to).difference(&stream.set());
        for &(f, to) in lacking.ranges() {
            if f == stream.high + 1 && stream.low == stream.high + 1 {
                // Nothing held below: the peer's retention floor becomes ours.
                stream.low = to + 1;
                if let Some(r) = stream.insert_range(f, to) {
                    self.advanced.push(r);
                }
                continue;
            }
            self.batch.insert(
                &self.shared.records,
                record_key(tid, oid, f).as_slice(),
                gap_marker(to).as_slice(),
            );
            if let Some(r) = stream.insert_range(f, to) {
                self.advanced.push(r);
            }
            for seq in f..=to {
                self.digest(digests, seq, Entry::Gap, true);
            }
        }
    }

    /// Records that became contiguous, in seq order (from this batch or held as extras).
    fn deliverable(&self) -> Vec<Arc<Record>> {
        let (tid, oid) = self.ids;
        let mut out = Vec::new();
        for &(lo, hi) in &self.advanced {
            let range = self
                .shared
                .records
                .range(record_key(tid, oid, lo)..=record_key(tid, oid, hi));
            for guard in range {
                let Ok((key, value)) = guard.into_inner() else {
                    break;
                };
                let seq = key_seq(&key);
                if let Some(r) = self.fresh.get(&seq) {
                    out.push(r.clone());
                } else if decode_gap(&value).is_none()
                    && let Ok(r) = Record::decode(&value)
                {
                    out.push(Arc::new(r));
                }
            }
        }
        out
    }
}

/// Decode and check replicated record bytes: `Ok` when they verify and name the
/// expected topic and origin, else the seq (as far as the bytes tell it).
fn verify_record(bytes: Bytes, topic: &str, origin: &Origin) -> Result<(Record, Bytes), u64> {
    match Record::decode(&bytes) {
        Ok(r) if r.topic == topic && r.origin == *origin => Ok((r, bytes)),
        Ok(r) => Err(r.seq),
        Err(e) => {
            let seq = bytes
                .get(5..13)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            tracing::warn!(topic, origin = %origin, seq, error = %e, "replicated record rejected");
            Err(seq)
        }
    }
}

impl Writer {
    /// Merge a received HLC into the local clock (bounded by [`MAX_HLC_DRIFT_MS`]).
    pub(super) fn merge_hlc(&mut self, hlc: u64) {
        let ceiling = (self.opts.clock.unix_ms() + MAX_HLC_DRIFT_MS) << 16;
        if hlc <= ceiling {
            self.clock_last = self.clock_last.max(hlc);
        }
    }

    /// Apply requests in order: one atomic batch and one fsync for as many as name
    /// distinct (topic, origin) streams (a stream named again starts the next batch,
    /// so each request sees the ones before it committed). A failed commit fails them
    /// all, though an earlier batch may be durable (see [`Store::apply_all`]).
    pub(super) fn apply_all(
        &mut self,
        reqs: Vec<ApplyRequest>,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut segment: Vec<ApplyRequest> = Vec::new();
        for req in reqs {
            if segment
                .iter()
                .any(|r| r.topic == req.topic && r.origin == req.origin)
            {
                out.extend(self.apply_segment(std::mem::take(&mut segment))?);
            }
            segment.push(req);
        }
        if !segment.is_empty() {
            out.extend(self.apply_segment(segment)?);
        }
        Ok(out)
    }

    /// Apply requests naming distinct streams in one atomic batch with one fsync.
    fn apply_segment(&mut self, reqs: Vec<ApplyRequest>) -> Result<Vec<Applied>, StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let shared = self.shared.clone();
        let mut index = std::mem::take(&mut self.index);
        let mut digests = std::mem::take(&mut self.digests);
        let mut batch = shared.db.batch();
        let now = self.opts.clock.unix_ms();
        // Publish keys indexed by this batch (two streams may carry the same one).
        let mut written = HashMap::new();
        let mut built: Vec<ApplyBatch<'_>> = Vec::with_capacity(reqs.len());
        let mut result = Ok(());
        for req in &reqs {
            let tid = index.topic_id(&mut batch, &shared, &req.topic);
            let oid = index.origin_id(&shared, &mut batch, &req.origin);
            let mut ab = ApplyBatch {
                shared: &shared,
                batch,
                ids: (tid, oid),
                origin: &req.origin,
                topic: &req.topic,
                rejected: Vec::new(),
                stored: 0,
                advanced: Vec::new(),
                fresh: BTreeMap::new(),
            };
            let mut records = Vec::with_capacity(req.records.len());
            for bytes in &req.records {
                match verify_record(bytes.clone(), &req.topic, &req.origin) {
                    Ok(r) => records.push(r),
                    Err(seq) => ab.rejected.push(seq),
                }
            }
            records.sort_by_key(|(r, _)| r.seq);
            records.dedup_by_key(|(r, _)| r.seq);
            let local = req.origin == shared.local;
            if let Some(t) = index.topics.get_mut(&req.topic) {
                for r in records {
                    result = result.and_then(|()| ab.record(t, &mut digests, r, req.repair, local));
                }
                for &g in &req.gaps {
                    ab.gap(t, &mut digests, g);
                }
                ab.batch
                    .insert(&shared.meta, meta_topic_key(t.id), encode_topic_state(t));
            }
            if result.is_ok() {
                result = index_publish_keys(
                    &shared,
                    &index,
                    &mut ab.batch,
                    (tid, oid),
                    &ab.fresh,
                    (now, &mut written),
                );
            }
            let hlcs: Vec<u64> = ab.fresh.values().map(|r| r.hlc).collect();
            for hlc in hlcs {
                self.merge_hlc(hlc);
            }
            batch = std::mem::replace(&mut ab.batch, shared.db.batch());
            built.push(ab);
        }
        index.max_hlc = self.clock_last;
        batch.insert(
            &shared.meta,
            b"h".as_slice(),
            self.clock_last.to_be_bytes().as_slice(),
        );
        let started = std::time::Instant::now();
        let durable = result.and_then(|()| batch.commit().map_err(StoreError::from));
        if let Err(e) = durable.and_then(|()| shared.persist()) {
            digests.clear();
            self.digests = digests;
            self.index = index;
            return Err(match e {
                StoreError::Engine(e) => shared.poison("writing replicated records failed", &e),
                other => other,
            });
        }
        shared.observer.committed(&CommitStats {
            requests: reqs.len(),
            records: built.iter().map(|ab| ab.stored).sum(),
            elapsed: started.elapsed(),
        });
        let topics: Vec<String> = reqs.iter().map(|r| r.topic.clone()).collect();
        publish_index(&shared, &index, &topics);
        let mut deliver = Vec::new();
        let mut out = Vec::with_capacity(built.len());
        for ab in built {
            let oid = ab.ids.1;
            let set = index
                .topics
                .get(ab.topic)
                .and_then(|t| t.streams.get(&oid))
                .map(Stream::set)
                .unwrap_or_default();
            deliver.extend(ab.deliverable());
            let mut rejected = ab.rejected;
            rejected.sort_unstable();
            out.push(Applied {
                durable: set,
                rejected,
                stored: ab.stored,
            });
        }
        self.digests = digests;
        self.index = index;
        // Hand what became contiguous to the broker, in seq order per stream, before
        // answering: when `apply` returns, the records are on their way to subscribers.
        if !deliver.is_empty() && self.commit_tx.blocking_send(Arc::new(deliver)).is_err() {
            tracing::debug!("broker gone; applied records not fanned out");
        }
        Ok(out)
    }
}

/// Index the publish keys of records just applied, so a publish retried here after
/// a failover is answered with the original ack (G3 across gateways).
///
/// Two records may share a publish key when their origin crashed before the first
/// one replicated and the client retried elsewhere: both are stored (the log is
/// immutable), and the entry names the smaller by (hlc, node, epoch, seq), whatever
/// the order they arrive in — the same answer on every gateway that holds both.
/// A replaced entry keeps its expiry clock (its `w` twin is moved, not left
/// behind to expire the new one early).
fn index_publish_keys(
    shared: &Shared,
    index: &Index,
    batch: &mut fjall::OwnedWriteBatch,
    (topic_id, origin_id): (u32, u32),
    fresh: &BTreeMap<u64, Arc<Record>>,
    (now, written): (u64, &mut HashMap<PublishKey, DedupeEntry>),
) -> Result<(), StoreError> {
    let window_ms = shared.dedupe_window.as_millis() as u64;
    for r in fresh.values() {
        let Some(pk) = r.publish_key else {
            continue;
        };
        let held = match written.get(&pk) {
            Some(e) => Some(*e),
            None => DedupeEntry::read(shared, &dedupe_key(&pk))?,
        };
        let mut entry = DedupeEntry {
            topic_id,
            origin_id,
            seq: r.seq,
            hlc: r.hlc,
            written_ms: now,
        };
        if let Some(h) = held {
            let live = now.saturating_sub(h.written_ms) <= window_ms;
            let earlier = index.origins.get(&h.origin_id).is_some_and(|o| {
                (h.hlc, &o.node, o.epoch, h.seq) <= (r.hlc, &r.origin.node, r.origin.epoch, r.seq)
            });
            if live && earlier {
                continue;
            }
            let mut w = Vec::with_capacity(25);
            w.push(b'w');
            w.extend_from_slice(&h.written_ms.to_be_bytes());
            w.extend_from_slice(&pk);
            batch.remove(&shared.dedupe, w);
            if live {
                entry.written_ms = h.written_ms;
            }
        }
        entry.insert(shared, batch, &pk);
        written.insert(pk, entry);
    }
    Ok(())
}

/// A repaired seq inside a gap marker that starts below it: cut the marker in two.
/// Returns true when `seq` was inside a marker.
fn split_marker_around(
    shared: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    (tid, oid): (u32, u32),
    seq: u64,
) -> Result<bool, StoreError> {
    let lo = record_key(tid, oid, 1);
    let hi = record_key(tid, oid, seq);
    let Some(guard) = shared.records.range(lo..=hi).next_back() else {
        return Ok(false);
    };
    let (key, value) = guard.into_inner()?;
    let Some(gap_to) = decode_gap(&value).filter(|to| *to >= seq) else {
        return Ok(false);
    };
    // start..seq-1 stays a marker; seq+1..gap_to becomes one.
    batch.insert(
        &shared.records,
        key.as_ref(),
        gap_marker(seq - 1).as_slice(),
    );
    if gap_to > seq {
        batch.insert(
            &shared.records,
            record_key(tid, oid, seq + 1).as_slice(),
            gap_marker(gap_to).as_slice(),
        );
    }
    Ok(true)
}
