//! The plugin key/value keyspace.

use std::sync::atomic::Ordering;

use super::*;

impl Store {
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
