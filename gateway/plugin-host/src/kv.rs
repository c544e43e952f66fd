//! The plugin kv rules, written once: the value format, versions, expiry,
//! counters, compare-and-swap and scans. The gateway runs them over its store
//! and [`MemoryServices`](crate::testing::MemoryServices) over a map, so tests
//! of plugins against the in-memory services see exactly what production does.
//!
//! # Value format
//!
//! `version u64 BE · expires_ms u64 BE (0 = never) · value bytes`, under the key
//! `p · plugin · 0x00 · key`.
//!
//! # Rules
//!
//! - Every write of a key gets the previous stored version + 1, also when the
//!   previous entry has expired (so a version is never handed out twice while the
//!   key exists); after a delete, versions start again at 1.
//! - An entry whose expiry has passed reads as absent.
//! - `increment` treats an absent (or expired) key as 0 and applies `ttl_ms` only
//!   when it creates the key; an existing counter keeps its expiry. A value that
//!   is not a decimal i64 is [`ServiceError::NotACounter`].
//! - Read-modify-write operations are serialized by one lock per [`Kv`].
//! - Expired entries are removed as writes go (security review, plugin kv): every
//!   [`SWEEP_EVERY`] writes also examine the next [`SWEEP_BATCH`] stored entries of
//!   any plugin, in key order, wrapping around, and delete those whose expiry has
//!   passed. A plugin that writes a key per sender per window (`rate-limit`) then
//!   holds about its live keys, not every key it ever wrote. A swept key is a deleted
//!   one: its versions start again at 1.

use parking_lot::Mutex;

use crate::services::{KvEntry, ServiceError};

/// Writes between two steps of the expiry sweep.
pub const SWEEP_EVERY: u64 = 16;
/// Stored entries one sweep step examines: four per write, amortized, so a pass over
/// the store takes a quarter as many writes as it holds entries, and what expires is
/// gone within about a quarter of the store's size in writes — the stored entries stay
/// within a small multiple of the live ones even when every write makes a new key.
pub const SWEEP_BATCH: usize = 64;

/// Raw key/value pairs, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Raw byte storage under the rules.
pub trait KvBackend: Send + Sync {
    /// The stored bytes of `key`.
    ///
    /// # Errors
    /// The storage failed (reported to the plugin as unavailable).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Store (`Some`) or remove (`None`) `key`.
    ///
    /// # Errors
    /// The storage failed.
    fn put(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
    /// Remove `key`, whose entry the expiry sweep found expired. Unlike a delete, a
    /// backend that replicates need not tell anyone: the entry is expired everywhere.
    /// Default: as `put(key, None)`.
    ///
    /// # Errors
    /// The storage failed.
    fn remove_expired(&self, key: &[u8]) -> Result<(), String> {
        self.put(key, None)
    }
    /// Up to `limit` pairs whose key starts with `prefix` and sorts after `after`
    /// (when given), in key order.
    ///
    /// # Errors
    /// The storage failed.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<KvPairs, String>;
}

/// The storage key of a plugin's key.
pub fn storage_key(plugin: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + plugin.len() + key.len());
    k.push(b'p');
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

struct Raw {
    version: u64,
    expires: u64,
    value: Vec<u8>,
}

fn decode_raw(bytes: &[u8]) -> Option<Raw> {
    let version = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let expires = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(Raw {
        version,
        expires,
        value: bytes[16..].to_vec(),
    })
}

fn live(raw: &Raw, now: u64) -> bool {
    raw.expires == 0 || raw.expires > now
}

fn encode(version: u64, expires: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn expiry(ttl_ms: Option<u64>, now: u64) -> u64 {
    ttl_ms.map_or(0, |t| now.saturating_add(t.max(1)))
}

fn unavailable(e: String) -> ServiceError {
    ServiceError::Unavailable(e)
}

/// The kv operations over one backend. `now` is wall-clock milliseconds.
pub struct Kv<B> {
    backend: B,
    /// Serializes read-modify-write; holds the expiry sweep's position.
    lock: Mutex<Sweep>,
}

/// Where the expiry sweep is.
#[derive(Default)]
struct Sweep {
    /// Writes since the last sweep step.
    writes: u64,
    /// The last storage key examined; `None`: start from the first.
    after: Option<Vec<u8>>,
}

impl<B> std::fmt::Debug for Kv<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl<B: KvBackend> Kv<B> {
    /// The rules over `backend`.
    pub fn new(backend: B) -> Self {
        Kv {
            backend,
            lock: Mutex::new(Sweep::default()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn raw(&self, plugin: &str, key: &str) -> Result<Option<Raw>, ServiceError> {
        Ok(self
            .backend
            .get(&storage_key(plugin, key))
            .map_err(unavailable)?
            .as_deref()
            .and_then(decode_raw))
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        sweep: &mut Sweep,
        plugin: &str,
        key: &str,
        version: u64,
        expires: u64,
        value: &[u8],
        now: u64,
    ) -> Result<(), ServiceError> {
        self.backend
            .put(
                &storage_key(plugin, key),
                Some(&encode(version, expires, value)),
            )
            .map_err(unavailable)?;
        sweep.writes += 1;
        if sweep.writes >= SWEEP_EVERY {
            sweep.writes = 0;
            // Best effort: a failed step is retried with the next writes.
            let _ = self.sweep_step(sweep, now);
        }
        Ok(())
    }

    /// Examine the next [`SWEEP_BATCH`] stored entries and delete the expired ones.
    /// Returns how many were deleted.
    fn sweep_step(&self, sweep: &mut Sweep, now: u64) -> Result<usize, String> {
        let page = self
            .backend
            .scan(b"p", sweep.after.as_deref(), SWEEP_BATCH)?;
        sweep.after = if page.len() < SWEEP_BATCH {
            None // the end: wrap around
        } else {
            page.last().map(|(k, _)| k.clone())
        };
        let mut deleted = 0;
        for (k, v) in page {
            if decode_raw(&v).is_some_and(|r| !live(&r, now)) {
                self.backend.remove_expired(&k)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The live entry of `key`.
    ///
    /// # Errors
    /// The backend failed.
    pub fn get(&self, plugin: &str, key: &str, now: u64) -> Result<Option<KvEntry>, ServiceError> {
        Ok(self
            .raw(plugin, key)?
            .filter(|r| live(r, now))
            .map(|r| KvEntry {
                value: r.value,
                version: r.version,
            }))
    }

    /// Store `value`; the new version.
    ///
    /// # Errors
    /// The backend failed.
    pub fn set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<u64, ServiceError> {
        let mut g = self.lock.lock();
        let version = self.raw(plugin, key)?.map_or(0, |r| r.version) + 1;
        self.put(
            &mut g,
            plugin,
            key,
            version,
            expiry(ttl_ms, now),
            value,
            now,
        )?;
        Ok(version)
    }

    /// Store `value` if the live version is `expected` (`None`: absent).
    ///
    /// # Errors
    /// The backend failed.
    pub fn compare_and_swap(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<Option<u64>, ServiceError> {
        let mut g = self.lock.lock();
        let raw = self.raw(plugin, key)?;
        let current = raw.as_ref().filter(|r| live(r, now)).map(|r| r.version);
        if current != expected {
            return Ok(None);
        }
        let version = raw.map_or(0, |r| r.version) + 1;
        self.put(
            &mut g,
            plugin,
            key,
            version,
            expiry(ttl_ms, now),
            value,
            now,
        )?;
        Ok(Some(version))
    }

    /// Remove `key`; whether a live entry existed.
    ///
    /// # Errors
    /// The backend failed.
    pub fn delete(&self, plugin: &str, key: &str, now: u64) -> Result<bool, ServiceError> {
        let _g = self.lock.lock();
        let Some(raw) = self.raw(plugin, key)? else {
            return Ok(false);
        };
        self.backend
            .put(&storage_key(plugin, key), None)
            .map_err(unavailable)?;
        Ok(live(&raw, now))
    }

    /// Add `delta` to the decimal counter at `key`; the new value.
    ///
    /// # Errors
    /// [`ServiceError::NotACounter`], or the backend failed.
    pub fn increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<i64, ServiceError> {
        let mut g = self.lock.lock();
        let raw = self.raw(plugin, key)?;
        let version = raw.as_ref().map_or(0, |r| r.version) + 1;
        let (value, expires) = match raw.filter(|r| live(r, now)) {
            Some(r) => {
                let n: i64 = std::str::from_utf8(&r.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(ServiceError::NotACounter)?;
                (n.saturating_add(delta), r.expires)
            }
            None => (delta, expiry(ttl_ms, now)),
        };
        self.put(
            &mut g,
            plugin,
            key,
            version,
            expires,
            value.to_string().as_bytes(),
            now,
        )?;
        Ok(value)
    }

    /// Up to `limit` live entries whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// The backend failed.
    pub fn scan_prefix(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
        now: u64,
    ) -> Result<Vec<(String, KvEntry)>, ServiceError> {
        let base = storage_key(plugin, "").len();
        let mut out = Vec::new();
        let want = storage_key(plugin, prefix);
        let page_size = limit.saturating_mul(2).max(16);
        let mut after: Option<Vec<u8>> = None;
        // Expired entries are skipped; page until `limit` live ones or the end.
        loop {
            let page = self
                .backend
                .scan(&want, after.as_deref(), page_size)
                .map_err(unavailable)?;
            let full = page.len() >= page_size;
            let mut last = None;
            for (k, v) in page {
                if let (Some(raw), Ok(name)) =
                    (decode_raw(&v), String::from_utf8(k[base..].to_vec()))
                    && live(&raw, now)
                {
                    out.push((
                        name,
                        KvEntry {
                            value: raw.value,
                            version: raw.version,
                        },
                    ));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
                last = Some(k);
            }
            match last {
                Some(k) if full => after = Some(k),
                _ => return Ok(out),
            }
        }
    }
}

impl<B: KvBackend + Default> Default for Kv<B> {
    fn default() -> Self {
        Kv::new(B::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryKv;

    #[test]
    fn versions_expiry_and_deletes() {
        let kv = Kv::new(MemoryKv::default());
        assert_eq!(kv.set("p", "a", b"1", None, 1000).expect("set"), 1);
        assert_eq!(kv.set("p", "a", b"2", Some(10), 1000).expect("set"), 2);
        assert_eq!(
            kv.get("p", "a", 1009).expect("get").map(|e| e.version),
            Some(2)
        );
        assert_eq!(
            kv.get("p", "a", 1010).expect("get"),
            None,
            "expired at now + ttl"
        );
        // An expired entry still counts for versions, and is absent for CAS.
        assert_eq!(
            kv.compare_and_swap("p", "a", Some(2), b"x", None, 1010)
                .expect("cas"),
            None
        );
        assert_eq!(
            kv.compare_and_swap("p", "a", None, b"x", None, 1010)
                .expect("cas"),
            Some(3)
        );
        assert!(kv.delete("p", "a", 1010).expect("delete"));
        assert!(!kv.delete("p", "a", 1010).expect("delete"));
        assert_eq!(
            kv.set("p", "a", b"y", None, 1010).expect("set"),
            1,
            "restart after delete"
        );
        // Keys are scoped by plugin.
        assert_eq!(kv.get("q", "a", 1010).expect("get"), None);
    }

    #[test]
    fn counters_keep_their_expiry_and_refuse_text() {
        let kv = Kv::new(MemoryKv::default());
        assert_eq!(kv.increment("p", "n", 5, Some(100), 0).expect("inc"), 5);
        assert_eq!(
            kv.increment("p", "n", -2, Some(10_000), 50).expect("inc"),
            3
        );
        assert_eq!(
            kv.get("p", "n", 100).expect("get"),
            None,
            "the first ttl holds"
        );
        assert_eq!(
            kv.increment("p", "n", 1, None, 100).expect("inc"),
            1,
            "expired = 0"
        );
        kv.set("p", "t", b"text", None, 0).expect("set");
        assert!(matches!(
            kv.increment("p", "t", 1, None, 0),
            Err(ServiceError::NotACounter)
        ));
    }

    #[test]
    fn expired_entries_are_swept_as_writes_go() {
        let kv = Kv::new(MemoryKv::default());
        // A rate limiter's pattern: a counter per sender per window, TTL two windows.
        for window in 0..100u64 {
            for sender in 0..10 {
                let now = window * 1000;
                kv.increment("rl", &format!("s{sender}:{window}"), 1, Some(2000), now)
                    .expect("inc");
            }
        }
        let stored = kv.backend().scan(b"p", None, 10_000).expect("scan").len();
        // Live: the last two windows (20 keys). 1000 keys were written; what the sweep
        // has not reached yet is bounded by its pace (4 entries examined per write).
        assert!(stored <= 60, "{stored} entries stored for 20 live ones");
        assert!(stored >= 20);
        // Live entries are never swept.
        for sender in 0..10 {
            assert!(
                kv.get("rl", &format!("s{sender}:99"), 99_000)
                    .expect("get")
                    .is_some()
            );
        }
    }

    #[test]
    fn scans_page_past_expired_entries() {
        let kv = Kv::new(MemoryKv::default());
        for i in 0..50 {
            let ttl = (i % 2 == 0).then_some(1);
            kv.set("p", &format!("k{i:02}"), b"v", ttl, 0).expect("set");
        }
        kv.set("p2", "k00", b"other plugin", None, 0).expect("set");
        let got = kv.scan_prefix("p", "k", 10, 5).expect("scan");
        let names: Vec<String> = got.into_iter().map(|(k, _)| k).collect();
        let want: Vec<String> = (0..50)
            .filter(|i| i % 2 == 1)
            .take(10)
            .map(|i| format!("k{i:02}"))
            .collect();
        assert_eq!(names, want);
        assert_eq!(kv.scan_prefix("p", "k", 100, 5).expect("scan").len(), 25);
    }
}
