//! [`HostServices`]: what the gateway provides to plugins — durable kv,
//! publish / send / close. The plugin host never touches the store or the
//! broker itself; each capability module validates a guest's arguments and
//! then calls these methods.
//!
//! The methods are synchronous and run on the tokio worker that runs the
//! hook (inside the hook's wall-clock timeout, outside its CPU budget).
//! They must not block for long: enqueue (bounded) and return, and report
//! backpressure as an error rather than waiting.

use crate::bindings::types::Header;

/// A stored kv value with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value.
    pub value: Vec<u8>,
    /// Incremented on every write of the key; starts at 1.
    pub version: u64,
}

/// A failure of a service call, reported to the guest as an error value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The backing store or broker failed or is overloaded; retry may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The plugin's kv quota is exhausted.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// `kv_increment` on a value that is not a decimal i64.
    #[error("not a counter")]
    NotACounter,
    /// Unknown connection id (send/close).
    #[error("no such connection: {0}")]
    NoSuchConnection(u64),
    /// The gateway refused (e.g. invalid topic, loop protection).
    #[error("refused: {0}")]
    Refused(String),
}

/// Services the gateway implements for plugins. `plugin` is the calling
/// plugin's name: kv keys are scoped by it, publishes are attributed to it.
///
/// Keys and values arrive already validated (key ≤ 256 bytes, value ≤
/// 64 KiB, topic well formed, payload ≤ 1 MiB, scan limit ≤ 1000).
pub trait HostServices: Send + Sync + 'static {
    /// The value of `key`, if present and not expired.
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<KvEntry>, ServiceError>;
    /// Stores `value`; returns the new version. `ttl_ms`: expire after.
    fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, ServiceError>;
    /// Stores `value` only if the current version is `expected` (`None`:
    /// key absent). Returns the new version, or `None` on mismatch.
    fn kv_compare_and_swap(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, ServiceError>;
    /// Removes `key`; returns whether it existed.
    fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, ServiceError>;
    /// Adds `delta` to the decimal counter at `key` (absent = 0), stores it
    /// (`ttl_ms` applies when the key is created) and returns it.
    fn kv_increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, ServiceError>;
    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    fn kv_scan_prefix(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, KvEntry)>, ServiceError>;

    /// Publishes through the normal pipeline (the gateway applies loop
    /// protection: a plugin's publish must not re-enter that plugin forever).
    fn publish(
        &self,
        plugin: &str,
        topic: &str,
        headers: &[Header],
        payload: &[u8],
    ) -> Result<(), ServiceError>;
    /// Delivers directly to one connection (no subscription, no storage).
    fn send(
        &self,
        plugin: &str,
        conn_id: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), ServiceError>;
    /// Closes a connection with a reason.
    fn close(&self, plugin: &str, conn_id: u64, reason: &str) -> Result<(), ServiceError>;

    /// Unix time in milliseconds for `timers.now` (override for simulation).
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
