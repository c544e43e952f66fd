//! [`MemoryServices`]: an in-memory [`HostServices`] for this crate's tests
//! and benches (and the gateway's unit tests). Not durable: the gateway
//! supplies the store-backed implementation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::bindings::types::Header;
use crate::services::{HostServices, KvEntry, ServiceError};

/// A message a plugin published.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The publishing plugin.
    pub plugin: String,
    /// Topic.
    pub topic: String,
    /// Headers.
    pub headers: Vec<Header>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A direct send or close a plugin asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnAction {
    /// `pubsub.send`
    Send {
        /// Target connection.
        conn_id: u64,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// `pubsub.close`
    Close {
        /// Target connection.
        conn_id: u64,
        /// Reason.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Stored {
    entry: KvEntry,
    expires: Option<Instant>,
}

/// In-memory services: kv in a map (with TTL), publishes and connection
/// actions recorded for inspection.
#[derive(Debug, Default)]
pub struct MemoryServices {
    kv: Mutex<BTreeMap<(String, String), Stored>>,
    published: Mutex<Vec<Published>>,
    actions: Mutex<Vec<ConnAction>>,
}

impl MemoryServices {
    /// Empty services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<Published> {
        self.published.lock().clone()
    }

    /// Sends and closes so far.
    pub fn actions(&self) -> Vec<ConnAction> {
        self.actions.lock().clone()
    }

    fn live(&self, plugin: &str, key: &str) -> Option<KvEntry> {
        let mut kv = self.kv.lock();
        let k = (plugin.to_string(), key.to_string());
        match kv.get(&k) {
            Some(s) if s.expires.is_some_and(|e| e <= Instant::now()) => {
                kv.remove(&k);
                None
            }
            Some(s) => Some(s.entry.clone()),
            None => None,
        }
    }

    fn put(
        &self,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        keep_ttl: bool,
    ) -> u64 {
        let mut kv = self.kv.lock();
        let k = (plugin.to_string(), key.to_string());
        let (version, old_expiry) = kv
            .get(&k)
            .map_or((1, None), |s| (s.entry.version + 1, s.expires));
        let expires = match ttl_ms {
            Some(ms) if !keep_ttl || old_expiry.is_none() => {
                Some(Instant::now() + Duration::from_millis(ms))
            }
            _ if keep_ttl => old_expiry,
            _ => None,
        };
        kv.insert(
            k,
            Stored {
                entry: KvEntry { value, version },
                expires,
            },
        );
        version
    }
}

impl HostServices for MemoryServices {
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<KvEntry>, ServiceError> {
        Ok(self.live(plugin, key))
    }

    fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, ServiceError> {
        Ok(self.put(plugin, key, value.to_vec(), ttl_ms, false))
    }

    fn kv_compare_and_swap(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, ServiceError> {
        let current = self.live(plugin, key).map(|e| e.version);
        if current != expected {
            return Ok(None);
        }
        Ok(Some(self.put(plugin, key, value.to_vec(), ttl_ms, false)))
    }

    fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, ServiceError> {
        let existed = self.live(plugin, key).is_some();
        self.kv
            .lock()
            .remove(&(plugin.to_string(), key.to_string()));
        Ok(existed)
    }

    fn kv_increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, ServiceError> {
        let current = match self.live(plugin, key) {
            Some(e) => std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or(ServiceError::NotACounter)?,
            None => 0,
        };
        let next = current.saturating_add(delta);
        self.put(plugin, key, next.to_string().into_bytes(), ttl_ms, true);
        Ok(next)
    }

    fn kv_scan_prefix(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, KvEntry)>, ServiceError> {
        let now = Instant::now();
        let kv = self.kv.lock();
        Ok(kv
            .range((plugin.to_string(), prefix.to_string())..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .filter(|(_, s)| s.expires.is_none_or(|e| e > now))
            .take(limit)
            .map(|((_, k), s)| (k.clone(), s.entry.clone()))
            .collect())
    }

    fn publish(
        &self,
        plugin: &str,
        topic: &str,
        headers: &[Header],
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        self.published.lock().push(Published {
            plugin: plugin.to_string(),
            topic: topic.to_string(),
            headers: headers.to_vec(),
            payload: payload.to_vec(),
        });
        Ok(())
    }

    fn send(
        &self,
        _plugin: &str,
        conn_id: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        self.actions.lock().push(ConnAction::Send {
            conn_id,
            topic: topic.to_string(),
            payload: payload.to_vec(),
        });
        Ok(())
    }

    fn close(&self, _plugin: &str, conn_id: u64, reason: &str) -> Result<(), ServiceError> {
        self.actions.lock().push(ConnAction::Close {
            conn_id,
            reason: reason.to_string(),
        });
        Ok(())
    }
}
