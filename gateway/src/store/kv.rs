//! The plugin key/value keyspace. Writes reach the OS at once (they survive a
//! process crash) without an fsync of their own: the writer's next group commit
//! syncs the journal, which holds them (it is sequential), or its one-second tick
//! does when nothing is published. So a kv write made while a message's hooks run
//! is durable before that message is acknowledged, and any kv write is durable
//! within about a second.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use fjall::PersistMode;

use super::*;

impl Store {
    /// Plugin key/value keyspace (durable; written through [`Store::kv_write`]).
    pub fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.shared.kv.get(key)?.map(|v| v.to_vec()))
    }

    /// Apply plugin key/value writes atomically; durable with the next group commit
    /// or tick (see the module docs). Never waits for an fsync.
    ///
    /// # Errors
    /// Engine errors; [`StoreError::Poisoned`] after a failed write or fsync.
    pub fn kv_write(&self, puts: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let mut b = self.shared.db.batch();
        for (k, v) in puts {
            match v {
                Some(v) => b.insert(&self.shared.kv, k.as_slice(), v.as_slice()),
                None => b.remove(&self.shared.kv, k.as_slice()),
            }
        }
        b.commit()?;
        self.shared.db.persist(PersistMode::Buffer)?;
        self.shared.kv_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Plugin key/value entries under `prefix` sorting after `after`, at most `limit`.
    pub fn kv_scan(
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
            .take(limit)
        {
            let (k, v) = g.into_inner()?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}
