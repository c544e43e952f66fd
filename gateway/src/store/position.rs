//! Bridge positions: small durable entries a bridge keeps about its own progress
//! (the export version vector per topic, the import floor per stream), under meta
//! `b` keys. Written like plugin kv — to the OS at once (they survive a process
//! crash), synced by the writer's next group commit or one-second tick — and
//! checked with a CRC32C on read, so a damaged entry is an error, never a wrong
//! position.

use std::sync::atomic::Ordering;

use fjall::PersistMode;

use super::*;

/// The meta key of one entry: `b` · bridge (u32 BE length · bytes) · key.
fn position_key(bridge: &str, key: &[u8]) -> Vec<u8> {
    let mut k = position_prefix(bridge);
    k.extend_from_slice(key);
    k
}

fn position_prefix(bridge: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + bridge.len());
    k.push(b'b');
    k.extend_from_slice(&(bridge.len() as u32).to_be_bytes());
    k.extend_from_slice(bridge.as_bytes());
    k
}

impl Store {
    /// One entry of `bridge`'s positions.
    ///
    /// # Errors
    /// Engine errors; [`StoreError::CorruptMeta`] when the entry fails its CRC.
    pub fn position_get(&self, bridge: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.shared.meta.get(position_key(bridge, key))? else {
            return Ok(None);
        };
        decode_checked(&v)
            .map(Some)
            .ok_or_else(|| StoreError::CorruptMeta {
                what: format!("bridge {bridge:?} position"),
                detail: "checksum mismatch".into(),
            })
    }

    /// Every entry of `bridge`'s positions, keys without the bridge prefix. Entries
    /// that fail their CRC are left out and logged (the bridge then starts that
    /// part from the beginning: the remote's duplicate detection absorbs the resend).
    ///
    /// # Errors
    /// Engine errors.
    pub fn positions(&self, bridge: &str) -> Result<Vec<KvPair>, StoreError> {
        let prefix = position_prefix(bridge);
        let mut out = Vec::new();
        for g in self.shared.meta.prefix(&prefix) {
            let (k, v) = g.into_inner()?;
            match decode_checked(&v) {
                Some(body) => out.push((k[prefix.len()..].to_vec(), body)),
                None => tracing::error!(bridge, "a bridge position fails its checksum; ignored"),
            }
        }
        Ok(out)
    }

    /// Write entries of `bridge`'s positions atomically (`None` removes one).
    ///
    /// # Errors
    /// Engine errors; [`StoreError::Poisoned`] after a failed write or fsync.
    pub fn position_put(
        &self,
        bridge: &str,
        entries: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        let mut b = self.shared.db.batch();
        for (k, v) in entries {
            let key = position_key(bridge, k);
            match v {
                Some(v) => {
                    let mut value = crc32c::crc32c(v).to_le_bytes().to_vec();
                    value.extend_from_slice(v);
                    b.insert(&self.shared.meta, key, value);
                }
                None => b.remove(&self.shared.meta, key),
            }
        }
        b.commit()?;
        self.shared.db.persist(PersistMode::Buffer)?;
        self.shared.kv_dirty.store(true, Ordering::Release);
        Ok(())
    }
}

fn decode_checked(v: &[u8]) -> Option<Vec<u8>> {
    let (crc, body) = v.split_at_checked(4)?;
    let stored = u32::from_le_bytes(crc.try_into().ok()?);
    (crc32c::crc32c(body) == stored).then(|| body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn positions_survive_reopen_and_stay_apart_per_bridge() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("open");
            store
                .position_put("a", &[(b"x1".to_vec(), Some(b"one".to_vec()))])
                .expect("put");
            store
                .position_put("ab", &[(b"x1".to_vec(), Some(b"two".to_vec()))])
                .expect("put");
            store.shutdown().await;
        }
        let (store, _rx) = Store::open(StoreOptions::new(dir.path())).expect("reopen");
        assert_eq!(
            store.position_get("a", b"x1").expect("get"),
            Some(b"one".to_vec())
        );
        assert_eq!(
            store.positions("ab").expect("scan"),
            vec![(b"x1".to_vec(), b"two".to_vec())]
        );
        store
            .position_put("a", &[(b"x1".to_vec(), None)])
            .expect("remove");
        assert_eq!(store.position_get("a", b"x1").expect("get"), None);
        assert_eq!(decode_checked(b"\0\0\0\0x"), None, "a bad CRC is refused");
    }
}
