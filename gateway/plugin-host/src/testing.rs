//! [`MemoryServices`]: an in-memory [`HostServices`] for this crate's tests
//! and benches (and the gateway's unit tests). Not durable: the gateway
//! supplies the store-backed implementation.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::bindings::types::Header;
use crate::kv::{Kv, KvBackend, KvPairs};
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

/// The in-memory kv backend: a sorted map of raw keys and values.
#[derive(Debug, Default)]
pub struct MemoryKv(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

impl KvBackend for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().get(key).cloned())
    }

    fn put(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let mut m = self.0.lock();
        match value {
            Some(v) => m.insert(key.to_vec(), v.to_vec()),
            None => m.remove(key),
        };
        Ok(())
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<KvPairs, String> {
        let m = self.0.lock();
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(m.range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// In-memory services: kv in a map (with TTL), publishes and connection
/// actions recorded for inspection.
#[derive(Debug, Default)]
pub struct MemoryServices {
    kv: Kv<MemoryKv>,
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
}

impl HostServices for MemoryServices {
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<KvEntry>, ServiceError> {
        self.kv.get(plugin, key, now_ms())
    }

    fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, ServiceError> {
        self.kv.set(plugin, key, value, ttl_ms, now_ms())
    }

    fn kv_compare_and_swap(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, ServiceError> {
        self.kv
            .compare_and_swap(plugin, key, expected, value, ttl_ms, now_ms())
    }

    fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, ServiceError> {
        self.kv.delete(plugin, key, now_ms())
    }

    fn kv_increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, ServiceError> {
        self.kv.increment(plugin, key, delta, ttl_ms, now_ms())
    }

    fn kv_scan_prefix(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, KvEntry)>, ServiceError> {
        self.kv.scan_prefix(plugin, prefix, limit, now_ms())
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
