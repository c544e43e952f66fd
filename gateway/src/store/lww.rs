//! Plugin kv as last-writer-wins state (issue 13, item 8): every plugin kv write is
//! stamped with an HLC and this node's origin, and entries from peers are merged by
//! rank (`edgesync_replication::lww`: (hlc, origin, value), greater wins).
//!
//! # Stored value
//!
//! A plugin key (`p` · plugin · 0x00 · key in the `kv` keyspace) holds
//!
//! `0xE5 · hlc u64 BE · epoch u64 BE · node length u16 BE · node · kind u8 · value`
//!
//! where kind is 1 for a value and 0 for a tombstone (a delete, kept so a
//! partitioned node cannot resurrect the key; see "Tombstones"), and value is the kv rules' bytes
//! (`edgesync_plugin_host::kv`: version, expiry, the plugin's value), opaque here.
//! Reads through [`Store::plugin_kv_get`] and [`Store::plugin_kv_scan`] strip the
//! stamp and skip tombstones, so plugins see the plain value. A value that does not
//! start with 0xE5 was written before stamps: it reads as it is, and the first open
//! of a store holding such values stamps them once (meta `Lv` marks it done). No
//! unstamped value starts with 0xE5: the rules' bytes start with a version u64 BE,
//! and no version reaches 0xE5 << 56.
//!
//! # LWW namespaces
//!
//! A plugin's keys are the namespace `kv/<plugin>`, the entry key is the plugin's key.
//!
//! # Digests: incremental and persisted
//!
//! Per (namespace, [`key_bucket`]) the count and wrapping sum of the entries'
//! digest elements live under meta `l` · namespace · 0x00 · bucket u32 BE, written
//! in the same batch as the entry, and in memory (loaded at open: at most 64 per
//! namespace, never a scan of the keys). A digest round therefore costs nothing
//! per key; only a mismatched bucket is read, by one scan of its namespace. The
//! highest stamp handed out or merged is kept under meta `Lh`, so stamps keep
//! growing across restarts even when the wall clock steps back.
//!
//! # Tombstones
//!
//! A tombstone is kept for `StoreOptions::kv_tombstone_ttl` (config
//! `store.kv_tombstone_secs`, default 7 days) after its stamp, then collected by the
//! writer's housekeeping ([`Shared::collect_tombstones`], a bounded slice of the keys
//! per pass, resuming where the last pass stopped). Every gateway collects by the stamp,
//! not by arrival, so their digests agree again once each sweep has passed. A tombstone
//! older than the bound that arrives from a peer is not stored; when it outranks a
//! stored value it still deletes it. The price, stated in docs/replication.md: a
//! gateway cut off for longer than the bound can bring a deleted key back.
//!
//! # Clock and durability
//!
//! Stamps come from the store's wall clock in the store's HLC format, on a counter
//! of their own (kv writes do not pass through the writer thread) that starts above
//! every record HLC and every stamp this store has seen, and follows merged stamps
//! (within the drift bound) so a write made after a merge outranks it. A merged
//! entry more than [`LWW_MAX_DRIFT_MS`] ahead of the wall clock is clamped and
//! counted. Writes and merges are durable like every kv write (module `kv`): one
//! atomic batch that reaches the OS at once and the disk with the next group commit
//! or tick.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use edgesync_protocol::Origin;
use edgesync_replication::BucketDigest;
use edgesync_replication::LwwEntry;
use edgesync_replication::lww::{DEFAULT_MAX_DRIFT_MS, clamp_hlc, key_bucket, tombstone_cutoff};
use fjall::PersistMode;
use tokio::sync::broadcast;

use super::*;

/// How far ahead of this node's wall clock a merged stamp may be before it is clamped.
pub const LWW_MAX_DRIFT_MS: u64 = DEFAULT_MAX_DRIFT_MS;
/// The namespace prefix of plugin kv: `kv/<plugin>`.
pub const KV_NAMESPACE_PREFIX: &str = "kv/";
/// The `source` of entries written on this node (links use their id, never 0).
pub const LWW_SOURCE_LOCAL: u64 = 0;
/// Batches of new winners the live channel holds for a slow link.
const LWW_CHANNEL: usize = 4096;
/// Values a migration batch stamps at once.
const MIGRATE_CHUNK: usize = 1024;
/// Plugin kv keys one housekeeping pass looks at for expired tombstones.
pub(super) const TOMBSTONE_SWEEP_BUDGET: usize = 4096;
/// The default of `StoreOptions::kv_tombstone_ttl`: 7 days.
pub const DEFAULT_KV_TOMBSTONE_TTL: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

const STAMP_TAG: u8 = 0xE5;
const META_DIGEST: u8 = b'l';
const META_MAX_HLC: &[u8] = b"Lh";
pub(super) const META_MIGRATED: &[u8] = b"Lv";

/// Entries that became the winners of their keys here, for the links to send.
#[derive(Debug, Clone)]
pub struct LwwBatch {
    /// Who made them win: [`LWW_SOURCE_LOCAL`] for local writes, else the merging link's id
    /// (that link does not send them back).
    pub source: u64,
    pub entries: Arc<Vec<LwwEntry>>,
}

/// What [`Store::lww_merge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LwwMerged {
    /// Entries now stored (clamped ones with their clamped stamp).
    pub winners: Vec<LwwEntry>,
    /// Winners that were clamped first.
    pub clamped: usize,
    /// Entries ranked at or below what is stored: nothing changed.
    pub stale: usize,
    /// Entries of a namespace this store does not hold (not `kv/<plugin>`), or a bad name.
    pub refused: usize,
}

/// The store's LWW bookkeeping (behind one lock: a write reads the old entry, stamps,
/// writes and updates the digest as one step).
pub(super) struct LwwState {
    /// The last stamp handed out or merged.
    pub(super) last_hlc: u64,
    /// (namespace, bucket) → digest of the stored entries.
    digests: BTreeMap<(String, u32), BucketDigest>,
    tx: broadcast::Sender<LwwBatch>,
    /// How long a tombstone is kept after its stamp, ms.
    tombstone_ttl_ms: u64,
}

impl LwwState {
    pub(super) fn new(tombstone_ttl: std::time::Duration) -> Self {
        LwwState {
            last_hlc: 0,
            digests: BTreeMap::new(),
            tx: broadcast::channel(LWW_CHANNEL).0,
            tombstone_ttl_ms: u64::try_from(tombstone_ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Tombstones stamped below this HLC are past the bound.
    fn tombstone_cutoff(&self, wall_ms: u64) -> u64 {
        tombstone_cutoff(wall_ms, self.tombstone_ttl_ms)
    }
}

/// A stored plugin value, decoded.
enum Stored {
    /// Written before stamps: the rules' bytes.
    Legacy(Vec<u8>),
    Stamped(LwwEntry),
}

impl Store {
    /// The plain value of a plugin kv key (`None` when absent or deleted).
    ///
    /// # Errors
    /// Engine errors.
    pub fn plugin_kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(raw) = self.shared.kv.get(key)? else {
            return Ok(None);
        };
        Ok(plain(key, &raw))
    }

    /// Write (`Some`) or delete (`None`) a plugin kv key, stamped with a fresh HLC and
    /// this node's origin; the new entry goes to every peer link. Durable like
    /// [`Store::kv_write`].
    ///
    /// # Errors
    /// Engine errors; [`StoreError::Poisoned`] after a failed write or fsync.
    pub fn plugin_kv_put(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let Some((namespace, name)) = entry_name(key) else {
            // Not a `p` · plugin · 0x00 · UTF-8 key: not replicated.
            return self.kv_write(&[(key.to_vec(), value.map(<[u8]>::to_vec))]);
        };
        let mut st = self.shared.lww.lock();
        let old = self.stored(key)?;
        let absent = match &old {
            None => true,
            Some(Stored::Stamped(e)) => e.value.is_none(),
            Some(Stored::Legacy(_)) => false,
        };
        if value.is_none() && absent {
            return Ok(()); // deleting what is not there
        }
        let wall = self.shared.clock.unix_ms() << 16;
        st.last_hlc = wall.max(st.last_hlc + 1);
        let entry = LwwEntry {
            namespace,
            key: name,
            value: value.map(Bytes::copy_from_slice),
            hlc: st.last_hlc,
            origin: self.shared.local.clone(),
        };
        let old = match old {
            Some(Stored::Stamped(e)) => Some(e),
            _ => None,
        };
        self.write_winners(&mut st, vec![(key.to_vec(), entry.clone(), old)])?;
        let _ = st.tx.send(LwwBatch {
            source: LWW_SOURCE_LOCAL,
            entries: Arc::new(vec![entry]),
        });
        Ok(())
    }

    /// Remove a plugin kv entry the expiry sweep found expired: no tombstone and
    /// nothing sent (expiry is by absolute time, so every gateway's sweep removes its own
    /// copy). Keeps the sweep from turning every expired key into a tombstone kept
    /// forever (a rate limiter writes a key per sender per window).
    ///
    /// # Errors
    /// Engine errors; [`StoreError::Poisoned`].
    pub fn plugin_kv_remove_expired(&self, key: &[u8]) -> Result<(), StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let mut st = self.shared.lww.lock();
        let mut touched = BTreeMap::new();
        match self.stored(key)? {
            None => return Ok(()),
            Some(Stored::Stamped(e)) if e.value.is_none() => return Ok(()),
            Some(Stored::Legacy(_)) => {}
            Some(Stored::Stamped(e)) => {
                let slot = (e.namespace.clone(), key_bucket(&e.key));
                let mut d = st.digests.get(&slot).copied().unwrap_or_default();
                d.remove(e.element());
                touched.insert(slot, d);
            }
        }
        let mut b = self.shared.db.batch();
        b.remove(&self.shared.kv, key);
        self.shared.commit_lww(&mut st, b, touched)
    }

    /// Plain plugin kv entries under `prefix` sorting after `after`, at most `limit`
    /// (deleted keys skipped, stamps stripped).
    ///
    /// # Errors
    /// Engine errors.
    pub fn plugin_kv_scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::new();
        for g in self
            .shared
            .kv
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = g.into_inner()?;
            if !k.starts_with(prefix) {
                break;
            }
            if let Some(v) = plain(&k, &v) {
                out.push((k.to_vec(), v));
            }
        }
        Ok(out)
    }

    /// Merge entries received from a peer: each is clamped when its stamp runs more than
    /// [`LWW_MAX_DRIFT_MS`] ahead of the wall clock, and stored when it outranks the
    /// stored entry of its key. The winners are written in one atomic batch (durable like
    /// kv writes), go to every link but `source`, and are returned.
    ///
    /// # Errors
    /// Engine errors; [`StoreError::Poisoned`]. Nothing was stored then.
    pub fn lww_merge(&self, entries: Vec<LwwEntry>, source: u64) -> Result<LwwMerged, StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let mut out = LwwMerged::default();
        let mut st = self.shared.lww.lock();
        let wall_ms = self.shared.clock.unix_ms();
        let cutoff = st.tombstone_cutoff(wall_ms);
        // Key → (entry, what it replaces): later entries of one key meet earlier winners.
        let mut pending: BTreeMap<Vec<u8>, (LwwEntry, Option<LwwEntry>)> = BTreeMap::new();
        let mut clamped_keys = std::collections::BTreeSet::new();
        for mut entry in entries {
            let Some(key) = storage_key(&entry.namespace, &entry.key) else {
                out.refused += 1;
                continue;
            };
            let clamped = clamp_hlc(entry.hlc, wall_ms, LWW_MAX_DRIFT_MS);
            if let Some(limit) = clamped {
                entry.hlc = limit;
            }
            let current = match pending.get(&key) {
                Some((e, _)) => Some(e.clone()),
                None => match self.stored(&key)? {
                    Some(Stored::Stamped(e)) => Some(e),
                    Some(Stored::Legacy(_)) | None => None,
                },
            };
            if current.as_ref().is_some_and(|c| c.rank() >= entry.rank()) {
                out.stale += 1;
                continue;
            }
            if entry.expired_tombstone(cutoff) && current.as_ref().is_none_or(|c| c.value.is_none())
            {
                // Past the bound and nothing to delete: collected here already.
                out.stale += 1;
                continue;
            }
            st.last_hlc = st.last_hlc.max(entry.hlc);
            if clamped.is_some() {
                clamped_keys.insert(key.clone());
            } else {
                clamped_keys.remove(&key);
            }
            let replaces = match pending.remove(&key) {
                Some((_, replaces)) => replaces,
                None => current,
            };
            pending.insert(key, (entry, replaces));
        }
        if pending.is_empty() {
            return Ok(out);
        }
        out.clamped = clamped_keys.len();
        let writes: Vec<_> = pending
            .into_iter()
            .map(|(k, (e, old))| (k, e, old))
            .collect();
        out.winners = writes.iter().map(|(_, e, _)| e.clone()).collect();
        self.write_winners(&mut st, writes)?;
        let _ = st.tx.send(LwwBatch {
            source,
            entries: Arc::new(out.winners.clone()),
        });
        Ok(out)
    }

    /// New winners (local writes and merges), for peer links.
    pub fn subscribe_lww(&self) -> broadcast::Receiver<LwwBatch> {
        self.shared.lww.lock().tx.subscribe()
    }

    /// The non-empty LWW digests: (namespace, bucket, digest).
    pub fn lww_digest_list(&self) -> Vec<(String, u32, BucketDigest)> {
        let st = self.shared.lww.lock();
        st.digests
            .iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|((ns, b), d)| (ns.clone(), *b, *d))
            .collect()
    }

    /// The stored entries of one (namespace, bucket), tombstones included: one scan
    /// of the namespace's keys.
    ///
    /// # Errors
    /// Engine errors.
    pub fn lww_bucket_entries(
        &self,
        namespace: &str,
        bucket: u32,
    ) -> Result<Vec<LwwEntry>, StoreError> {
        let Some(prefix) = storage_key(namespace, "") else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for g in self.shared.kv.prefix(&prefix) {
            let (k, v) = g.into_inner()?;
            if let Some(Stored::Stamped(e)) = decode(&k, &v)
                && key_bucket(&e.key) == bucket
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn stored(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        Ok(self.shared.kv.get(key)?.and_then(|v| decode(key, &v)))
    }

    /// Write entries that won (with the entries they replace, for the digests) in one
    /// batch with their digest buckets and the highest stamp.
    fn write_winners(
        &self,
        st: &mut LwwState,
        writes: Vec<(Vec<u8>, LwwEntry, Option<LwwEntry>)>,
    ) -> Result<(), StoreError> {
        let mut b = self.shared.db.batch();
        let mut touched: BTreeMap<(String, u32), BucketDigest> = BTreeMap::new();
        let cutoff = st.tombstone_cutoff(self.shared.clock.unix_ms());
        for (key, entry, old) in &writes {
            let slot = (entry.namespace.clone(), key_bucket(&entry.key));
            let d = touched
                .entry(slot.clone())
                .or_insert_with(|| st.digests.get(&slot).copied().unwrap_or_default());
            if let Some(old) = old {
                d.remove(old.element());
            }
            if entry.expired_tombstone(cutoff) {
                // A delete older than the bound: the key goes, no tombstone stays.
                b.remove(&self.shared.kv, key.as_slice());
                continue;
            }
            d.add(entry.element());
            b.insert(&self.shared.kv, key.as_slice(), encode(entry));
        }
        b.insert(&self.shared.meta, META_MAX_HLC, st.last_hlc.to_be_bytes());
        self.shared.commit_lww(st, b, touched)
    }
}

impl Shared {
    /// Commit a plugin kv batch with the digest buckets it changed (a bucket left empty
    /// is removed), reaching the OS at once and the disk with the next group commit or
    /// tick, then adopt the buckets in memory.
    fn commit_lww(
        &self,
        st: &mut LwwState,
        mut b: fjall::OwnedWriteBatch,
        touched: BTreeMap<(String, u32), BucketDigest>,
    ) -> Result<(), StoreError> {
        for ((ns, bucket), d) in &touched {
            let k = digest_key(ns, *bucket);
            if d.is_empty() {
                b.remove(&self.meta, k);
            } else {
                b.insert(&self.meta, k, encode_digest(d));
            }
        }
        b.commit()?;
        self.db.persist(PersistMode::Buffer)?;
        self.kv_dirty.store(true, Ordering::Release);
        st.digests.extend(touched);
        Ok(())
    }

    /// Collect expired plugin kv tombstones (see "Tombstones" above): look at up to
    /// [`TOMBSTONE_SWEEP_BUDGET`] plugin keys after `from` (the last pass's end; `None`
    /// starts over), remove the tombstones stamped more than the bound ago with their
    /// digests, and leave `from` where the next pass resumes. Returns how many went.
    ///
    /// # Errors
    /// Engine errors (nothing removed then).
    pub(super) fn collect_tombstones(
        &self,
        from: &mut Option<Vec<u8>>,
    ) -> Result<usize, StoreError> {
        let mut st = self.lww.lock();
        let cutoff = st.tombstone_cutoff(self.clock.unix_ms());
        let start = match from.take() {
            Some(k) => Bound::Excluded(k),
            None => Bound::Included(b"p".to_vec()),
        };
        let mut b = self.db.batch();
        let mut touched: BTreeMap<(String, u32), BucketDigest> = BTreeMap::new();
        let (mut seen, mut removed, mut last) = (0usize, 0usize, None);
        for g in self.kv.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = g.into_inner()?;
            if !k.starts_with(b"p") {
                break;
            }
            if let Some(Stored::Stamped(e)) = decode(&k, &v)
                && e.expired_tombstone(cutoff)
            {
                let slot = (e.namespace.clone(), key_bucket(&e.key));
                touched
                    .entry(slot.clone())
                    .or_insert_with(|| st.digests.get(&slot).copied().unwrap_or_default())
                    .remove(e.element());
                b.remove(&self.kv, k.to_vec());
                removed += 1;
            }
            seen += 1;
            if seen == TOMBSTONE_SWEEP_BUDGET {
                last = Some(k.to_vec());
                break;
            }
        }
        *from = last;
        if removed == 0 {
            return Ok(0);
        }
        self.commit_lww(&mut st, b, touched)?;
        Ok(removed)
    }

    /// Load the LWW state at open: digests and the highest stamp from meta; on the
    /// first open of a store with unstamped plugin values, stamp them (once).
    pub(super) fn open_lww(&self, inspect: bool) -> Result<(), StoreError> {
        let mut st = self.lww.lock();
        st.last_hlc = self.index.read().max_hlc;
        if let Some(v) = self.meta.get(META_MAX_HLC)? {
            let stored = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            st.last_hlc = st.last_hlc.max(stored.unwrap_or(0));
        }
        for g in self.meta.prefix([META_DIGEST]) {
            let (k, v) = g.into_inner()?;
            let parsed = decode_digest_key(&k).zip(decode_digest(&v));
            let Some(((ns, bucket), d)) = parsed else {
                return Err(StoreError::CorruptMeta {
                    what: "lww digest".into(),
                    detail: format!("key {k:?}"),
                });
            };
            st.digests.insert((ns, bucket), d);
        }
        if !inspect && self.meta.get(META_MIGRATED)?.is_none() {
            self.migrate_lww(&mut st)?;
        }
        Ok(())
    }

    /// Stamp every unstamped plugin value (chunked; each chunk one batch with its
    /// digests, so a crash midway resumes where it stopped).
    fn migrate_lww(&self, st: &mut LwwState) -> Result<(), StoreError> {
        let mut stamped = 0usize;
        loop {
            let mut chunk = Vec::new();
            for g in self.kv.prefix(b"p") {
                let (k, v) = g.into_inner()?;
                if let (Some(Stored::Legacy(value)), Some((ns, key))) =
                    (decode(&k, &v), entry_name(&k))
                {
                    chunk.push((k.to_vec(), ns, key, value));
                    if chunk.len() == MIGRATE_CHUNK {
                        break;
                    }
                }
            }
            let done = chunk.len() < MIGRATE_CHUNK;
            let mut b = self.db.batch();
            let mut touched: BTreeMap<(String, u32), BucketDigest> = BTreeMap::new();
            for (k, namespace, key, value) in chunk {
                st.last_hlc = (self.clock.unix_ms() << 16).max(st.last_hlc + 1);
                let entry = LwwEntry {
                    namespace,
                    key,
                    value: Some(Bytes::from(value)),
                    hlc: st.last_hlc,
                    origin: self.local.clone(),
                };
                let slot = (entry.namespace.clone(), key_bucket(&entry.key));
                touched
                    .entry(slot.clone())
                    .or_insert_with(|| st.digests.get(&slot).copied().unwrap_or_default())
                    .add(entry.element());
                b.insert(&self.kv, k, encode(&entry));
                stamped += 1;
            }
            for ((ns, bucket), d) in &touched {
                b.insert(&self.meta, digest_key(ns, *bucket), encode_digest(d));
            }
            b.insert(&self.meta, META_MAX_HLC, st.last_hlc.to_be_bytes());
            if done {
                b.insert(&self.meta, META_MIGRATED, [1u8]);
            }
            b.commit()?;
            st.digests.extend(touched);
            if done {
                break;
            }
        }
        self.db.persist(PersistMode::SyncAll)?;
        if stamped > 0 {
            tracing::info!(
                entries = stamped,
                "plugin kv stamped for last-writer-wins replication"
            );
        }
        Ok(())
    }
}

/// The LWW name of a plugin storage key: (`kv/<plugin>`, key).
fn entry_name(storage_key: &[u8]) -> Option<(String, String)> {
    let rest = storage_key.strip_prefix(b"p")?;
    let split = rest.iter().position(|b| *b == 0)?;
    let plugin = std::str::from_utf8(&rest[..split]).ok()?;
    let key = std::str::from_utf8(&rest[split + 1..]).ok()?;
    if plugin.is_empty() {
        return None;
    }
    Some((format!("{KV_NAMESPACE_PREFIX}{plugin}"), key.to_owned()))
}

/// The storage key of an LWW name (`None` for a namespace that is not plugin kv).
fn storage_key(namespace: &str, key: &str) -> Option<Vec<u8>> {
    let plugin = namespace.strip_prefix(KV_NAMESPACE_PREFIX)?;
    if plugin.is_empty() || plugin.contains('\0') {
        return None;
    }
    let mut k = Vec::with_capacity(2 + plugin.len() + key.len());
    k.push(b'p');
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    Some(k)
}

/// The plain value a plugin reads (`None` for a tombstone or a malformed stamp).
fn plain(key: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
    if raw.first() != Some(&STAMP_TAG) {
        return Some(raw.to_vec());
    }
    match decode(key, raw)? {
        Stored::Legacy(v) => Some(v),
        Stored::Stamped(e) => e.value.map(|v| v.to_vec()),
    }
}

fn encode(e: &LwwEntry) -> Vec<u8> {
    let node = e.origin.node.as_bytes();
    let value = e.value.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(20 + node.len() + value.len());
    out.push(STAMP_TAG);
    out.extend_from_slice(&e.hlc.to_be_bytes());
    out.extend_from_slice(&e.origin.epoch.to_be_bytes());
    // Node ids are short (certificate names); a longer one is cut, never wrapped.
    let len = u16::try_from(node.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&node[..usize::from(len)]);
    out.push(u8::from(e.value.is_some()));
    out.extend_from_slice(value);
    out
}

/// Decode a stored plugin value of `key` (`None`: a malformed stamp, or a key that is
/// not a plugin key while the value is stamped).
fn decode(key: &[u8], raw: &[u8]) -> Option<Stored> {
    if raw.first() != Some(&STAMP_TAG) {
        return Some(Stored::Legacy(raw.to_vec()));
    }
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(raw.get(at..at + 8)?.try_into().ok()?))
    };
    let hlc = u64_at(1)?;
    let epoch = u64_at(9)?;
    let len = usize::from(u16::from_be_bytes(raw.get(17..19)?.try_into().ok()?));
    let node = std::str::from_utf8(raw.get(19..19 + len)?).ok()?;
    let kind = *raw.get(19 + len)?;
    let value = raw.get(20 + len..)?;
    let (namespace, key) = entry_name(key)?;
    Some(Stored::Stamped(LwwEntry {
        namespace,
        key,
        value: (kind == 1).then(|| Bytes::copy_from_slice(value)),
        hlc,
        origin: Origin::new(node.to_owned(), epoch),
    }))
}

fn digest_key(namespace: &str, bucket: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + namespace.len());
    k.push(META_DIGEST);
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

fn decode_digest_key(k: &[u8]) -> Option<(String, u32)> {
    let rest = k.strip_prefix(&[META_DIGEST])?;
    let (ns, bucket) = rest.split_at_checked(rest.len().checked_sub(5)?)?;
    let (zero, bucket) = bucket.split_first()?;
    if *zero != 0 {
        return None;
    }
    let ns = std::str::from_utf8(ns).ok()?.to_owned();
    Some((ns, u32::from_be_bytes(bucket.try_into().ok()?)))
}

fn encode_digest(d: &BucketDigest) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&d.count.to_be_bytes());
    v[8..].copy_from_slice(&d.sum.to_be_bytes());
    v
}

fn decode_digest(v: &[u8]) -> Option<BucketDigest> {
    let count = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let sum = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some(BucketDigest { count, sum })
}
