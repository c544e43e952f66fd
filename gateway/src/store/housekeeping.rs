//! Housekeeping on the writer thread: dedupe expiry and retention, bounded per pass.

use fjall::PersistMode;

use super::*;

/// Dedupe entries expired per housekeeping pass when there is no backlog.
pub(super) const DEDUPE_BUDGET_MIN: usize = 10_000;
/// Most dedupe entries expired in one pass: bounds how long one pass holds the
/// writer, with room for about 260 k publishes/s at one pass a second (the durable
/// bench commits about 155 k/s). Deleted in batches of [`DEDUPE_BUDGET_MIN`], so a
/// pass never holds more than that many keys in memory.
pub(super) const DEDUPE_BUDGET_MAX: usize = 1 << 18;

/// How often the reclaimer looks for record tables wholly below a retention floor.
pub(super) const RECLAIM_EVERY: Duration = Duration::from_secs(10);
/// A stream's floor must have moved this many seqs since its tables were last
/// dropped before the reclaimer tries again (each try writes the engine's manifest).
pub(super) const RECLAIM_MIN_SEQS: u64 = 4096;

/// Retention floors the reclaimer has not acted on yet; see [`Shared::reclaim`].
#[derive(Default)]
pub(super) struct Reclaim {
    /// (topic id, origin id) → (floor now, floor at the last drop).
    floors: HashMap<(u32, u32), (u64, u64)>,
}

impl Reclaim {
    /// Retention moved a stream's floor to `low`.
    pub(super) fn moved(&mut self, ids: (u32, u32), low: u64) {
        let e = self.floors.entry(ids).or_insert((low, 1));
        e.0 = e.0.max(low);
    }

    /// Streams worth a drop now; each is marked dropped at its current floor.
    fn due(&mut self) -> Vec<((u32, u32), u64)> {
        let mut out = Vec::new();
        for (ids, (low, dropped)) in &mut self.floors {
            if *low >= dropped.saturating_add(RECLAIM_MIN_SEQS) {
                *dropped = *low;
                out.push((*ids, *low));
            }
        }
        out
    }
}

impl Shared {
    /// Give back the disk space of records retention removed: drop the record tables
    /// that lie wholly below a stream's floor. Retention deletes with tombstones, and
    /// the engine's leveled compaction reclaims a log trimmed at its head only slowly
    /// (the one-hour soak grew the data directory by the ingest rate with a ten-minute
    /// age limit); a table wholly below the floor holds nothing a reader may see, so
    /// dropping it is a manifest edit. Keys below a floor that stay behind in tables
    /// straddling it are never read (every read starts at the floor) and go when a
    /// later drop or compaction takes their table. Returns how many streams were tried.
    ///
    /// # Errors
    /// Engine errors (the next pass tries again when the floor moves on).
    pub(super) fn reclaim(&self) -> Result<usize, StoreError> {
        use fjall::AbstractTree as _;
        let due = self.reclaim.lock().due();
        for &((tid, oid), low) in &due {
            self.records
                .tree
                .drop_range(record_key(tid, oid, 0)..record_key(tid, oid, low))
                .map_err(fjall::Error::from)?;
        }
        Ok(due.len())
    }
}

/// The reclaimer thread: every `every`, [`Shared::reclaim`]. Off the writer thread,
/// because dropping tables waits for the engine's running compaction to finish.
pub(super) fn spawn_reclaimer(shared: Arc<Shared>, every: Duration) -> std::io::Result<()> {
    spawn_periodic(shared, "edgesync-reclaim", every, |s| {
        if s.poisoned.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        if let Err(e) = s.reclaim() {
            tracing::warn!(error = %e, "dropping record tables below retention floors failed");
        }
        true
    })
}

impl Writer {
    /// Retention, dedupe expiry and plugin kv tombstones; bounded work per call.
    pub(super) fn housekeeping(&mut self) {
        if let Err(e) = self.expire_dedupe().and_then(|_| self.apply_retention()) {
            tracing::warn!(error = %e, "store housekeeping failed");
        }
        match self.shared.collect_tombstones(&mut self.tombstones_from) {
            Ok(0) => {}
            Ok(n) => self.shared.observer.tombstones_collected(n as u64),
            Err(e) => tracing::warn!(error = %e, "collecting plugin kv tombstones failed"),
        }
    }

    /// Drop dedupe entries older than the window, oldest first, at most
    /// `dedupe_budget` per pass. The budget follows the backlog: a pass that used it
    /// all doubles it (up to [`DEDUPE_BUDGET_MAX`]), one that caught up halves it
    /// (down to [`DEDUPE_BUDGET_MIN`]). So expiry keeps up with any publish rate the
    /// writer can take (every client publish carries a `mid`), while a quiet store
    /// spends little of the writer's time here. Returns how many entries went.
    pub(super) fn expire_dedupe(&mut self) -> Result<usize, StoreError> {
        let cutoff = self
            .opts
            .clock
            .unix_ms()
            .saturating_sub(self.shared.dedupe_window.as_millis() as u64);
        let budget = self
            .dedupe_budget
            .clamp(DEDUPE_BUDGET_MIN, DEDUPE_BUDGET_MAX);
        let mut b = self.shared.db.batch();
        let mut n = 0;
        for g in self.shared.dedupe.prefix(b"w").take(budget) {
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
            if n % DEDUPE_BUDGET_MIN == 0 {
                std::mem::replace(&mut b, self.shared.db.batch()).commit()?;
            }
        }
        if n % DEDUPE_BUDGET_MIN != 0 {
            b.commit()?;
        }
        self.dedupe_budget = if n >= budget {
            (budget * 2).min(DEDUPE_BUDGET_MAX)
        } else {
            (budget / 2).max(DEDUPE_BUDGET_MIN)
        };
        Ok(n)
    }

    pub(super) fn apply_retention(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let mut index = std::mem::take(&mut self.index);
        let result = self.retention_pass(&shared, &mut index);
        self.index = index;
        result
    }

    pub(super) fn retention_pass(
        &mut self,
        shared: &Shared,
        index: &mut Index,
    ) -> Result<(), StoreError> {
        let mut batch = shared.db.batch();
        let mut budget = 50_000usize;
        let now = self.opts.clock.unix_ms();
        let mut changed = Vec::new();
        let hold = shared.retention_hold.read().clone();
        let index_origins = match hold {
            Some(_) => index.origins.clone(),
            None => Default::default(),
        };
        for (name, t) in index.topics.iter_mut() {
            let policy = shared.retention_for(name);
            if policy.is_unlimited() {
                continue;
            }
            let before = t.count;
            let lows: Vec<u64> = t.streams.values().map(|s| s.low).collect();
            let age_cutoff = policy
                .max_age
                .map(|a| now.saturating_sub(a.as_millis() as u64) << 16);
            while budget > 0 {
                let over_count = policy.max_messages.is_some_and(|m| t.count > m);
                let over_bytes = policy.max_bytes.is_some_and(|m| t.bytes > m);
                // Oldest record across this topic's streams.
                // (origin, seq, hlc, len, last seq the key covers: a gap marker covers a range)
                let mut oldest: Option<(u32, u64, u64, u64, Option<u64>)> = None;
                for (oid, s) in &t.streams {
                    if s.low > s.high {
                        continue;
                    }
                    let Some(v) = shared.records.get(record_key(t.id, *oid, s.low))? else {
                        continue;
                    };
                    let gap = super::keys::decode_gap(&v);
                    let (hlc, len) = Record::decode(&v)
                        .map(|r| (r.hlc, r.payload.len() as u64))
                        .unwrap_or((0, 0));
                    if oldest.is_none_or(|o| hlc < o.2) {
                        oldest = Some((*oid, s.low, hlc, len, gap));
                    }
                }
                let Some((oid, seq, hlc, len, gap)) = oldest else {
                    break;
                };
                if let Some(to) = gap {
                    // A gap marker at the floor holds no message: drop it with the floor.
                    batch.remove(&shared.records, record_key(t.id, oid, seq).as_slice());
                    if let Some(s) = t.streams.get_mut(&oid) {
                        s.low = to.min(s.high) + 1;
                    }
                    budget -= 1;
                    continue;
                }
                let too_old = age_cutoff.is_some_and(|c| hlc < c);
                if !(over_count || over_bytes || too_old) {
                    break;
                }
                // Replication: a peer still lacks it (within the hold's bound): keep it
                // and everything newer of this topic for now.
                if let (Some(hold), Some(origin)) = (&hold, index_origins.get(&oid))
                    && hold(name, origin, seq, hlc)
                {
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
            if t.count != before || lows != t.streams.values().map(|s| s.low).collect::<Vec<_>>() {
                // Digest buckets wholly below a stream's new floor are never compared again.
                for (oid, s) in &t.streams {
                    let first_kept = edgesync_replication::digest::bucket_of(s.low);
                    for g in shared.meta.prefix(super::keys::digest_prefix(t.id, *oid)) {
                        let (k, _) = g.into_inner()?;
                        let bucket = k
                            .get(9..17)
                            .and_then(|b| b.try_into().ok())
                            .map_or(u64::MAX, u64::from_be_bytes);
                        if bucket >= first_kept {
                            break;
                        }
                        batch.remove(&shared.meta, k.to_vec());
                    }
                }
                batch.insert(&shared.meta, meta_topic_key(t.id), encode_topic_state(t));
                changed.push(name.clone());
            }
        }
        if !changed.is_empty() {
            // Readers see the new floors before the records go: a reader that finds a
            // hole then finds the floor above it and reports `retention`, never
            // `corrupt` (the other order left a window where a trimmed range looked
            // like damage: `store::tests::a_retention_race_is_never_reported_as_corruption`).
            // If the commit fails, the records below the floor stay on disk unserved,
            // reported as removed by retention: nothing is served twice or wrongly.
            publish_index(shared, index, &changed);
            batch.commit()?;
            shared.db.persist(PersistMode::Buffer)?;
            let mut reclaim = shared.reclaim.lock();
            for t in changed.iter().filter_map(|name| index.topics.get(name)) {
                for (oid, s) in &t.streams {
                    reclaim.moved((t.id, *oid), s.low);
                }
            }
            tracing::debug!(topics = changed.len(), "retention applied");
        }
        Ok(())
    }
}
