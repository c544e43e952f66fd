//! [`HostServices`] for the gateway: what plugins can do to the world.
//!
//! - **kv**: plugin-scoped keys in the store's `kv` keyspace, under the rules of
//!   `edgesync_plugin_host::kv` (value format, versions, expiry, counters — the
//!   same code the in-memory test services run), each write stamped and replicated
//!   last-writer-wins to peer gateways (`store::lww`). A write never waits for an
//!   fsync: it reaches the OS at once (it survives a process crash) and the disk
//!   with the next group commit or within about a second; any kv write made while
//!   a message's hooks run is durable before that message is acknowledged,
//!   because the journal is sequential.
//! - **publish**: through the normal pipeline (hooks, store, fan-out) on a
//!   task; the publishing plugin's own hooks are skipped and a message may
//!   pass through at most [`MAX_HOPS`] plugin publishes (loop protection).
//! - **send** / **close**: one connection, by id; sends are best-effort.

use std::sync::{Arc, Weak};

use edgesync_plugin_host::kv::{Kv, KvBackend, KvPairs};
use edgesync_plugin_host::services::{HostServices, KvEntry, ServiceError};
use edgesync_plugin_host::types::Header;
use edgesync_protocol::ErrorCode;

use super::{MAX_HOPS, Sender};
use crate::clock::SharedClock;
use crate::conns::ConnRegistry;
use crate::model::Publish;
use crate::pipeline::Pipeline;
use crate::store::Store;

tokio::task_local! {
    /// Plugin-publish hops of the message whose hooks are running on this task.
    pub static HOPS: u32;
}

/// Most plugin publishes in flight at once (beyond: `unavailable`, retry later).
const MAX_INFLIGHT_PUBLISHES: usize = 1024;

/// The gateway's implementation, built with the handles it needs.
pub struct GatewayServices {
    /// Plugin kv lives in the store's `kv` keyspace.
    kv: Kv<StoreKv>,
    /// Publishes go through the pipeline. Weak: the pipeline holds the plugins, which
    /// hold these services.
    pipeline: Weak<Pipeline>,
    /// `send` and `close` reach connections through the registry.
    conns: Arc<ConnRegistry>,
    clock: SharedClock,
    /// Longest topic a plugin may publish to (`limits.max_topic_bytes`).
    max_topic_bytes: usize,
    inflight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for GatewayServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServices").finish_non_exhaustive()
    }
}

impl GatewayServices {
    pub fn new(
        store: Store,
        pipeline: Weak<Pipeline>,
        conns: Arc<ConnRegistry>,
        clock: SharedClock,
        max_topic_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(GatewayServices {
            kv: Kv::new(StoreKv(store)),
            pipeline,
            conns,
            clock,
            max_topic_bytes,
            inflight: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_PUBLISHES)),
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

/// The store as the kv rules' backend.
struct StoreKv(Store);

impl KvBackend for StoreKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.plugin_kv_get(key).map_err(|e| e.to_string())
    }

    /// Stamped for last-writer-wins replication (`store::lww`); sent to peers.
    fn put(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.0.plugin_kv_put(key, value).map_err(|e| e.to_string())
    }

    /// Removed without a tombstone: expiry is by absolute time, so every gateway's
    /// sweep removes its own copy.
    fn remove_expired(&self, key: &[u8]) -> Result<(), String> {
        self.0
            .plugin_kv_remove_expired(key)
            .map_err(|e| e.to_string())
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<KvPairs, String> {
        self.0
            .plugin_kv_scan(prefix, after, limit)
            .map_err(|e| e.to_string())
    }
}

impl GatewayServices {
    fn pipeline(&self) -> Result<Arc<Pipeline>, ServiceError> {
        self.pipeline
            .upgrade()
            .ok_or_else(|| unavailable("gateway not running"))
    }

    fn now_ms(&self) -> u64 {
        self.clock.unix_ms()
    }
}

impl HostServices for GatewayServices {
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<KvEntry>, ServiceError> {
        self.kv.get(plugin, key, self.now_ms())
    }

    fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, ServiceError> {
        self.kv.set(plugin, key, value, ttl_ms, self.now_ms())
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
            .compare_and_swap(plugin, key, expected, value, ttl_ms, self.now_ms())
    }

    fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, ServiceError> {
        self.kv.delete(plugin, key, self.now_ms())
    }

    fn kv_increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, ServiceError> {
        self.kv.increment(plugin, key, delta, ttl_ms, self.now_ms())
    }

    fn kv_scan_prefix(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, KvEntry)>, ServiceError> {
        self.kv.scan_prefix(plugin, prefix, limit, self.now_ms())
    }

    fn publish(
        &self,
        plugin: &str,
        topic: &str,
        headers: &[Header],
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        let pipeline = self.pipeline()?;
        let hops = HOPS.try_with(|h| *h).unwrap_or(0) + 1;
        if hops > MAX_HOPS {
            return Err(ServiceError::Refused(format!(
                "loop protection: more than {MAX_HOPS} plugin publishes in a chain"
            )));
        }
        edgesync_protocol::topic::validate_topic(topic, self.max_topic_bytes)
            .map_err(|e| ServiceError::Refused(e.to_string()))?;
        let permit = self
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| unavailable("too many plugin publishes in flight"))?;
        let sender = Sender {
            conn_id: 0,
            client_id: format!("$plugin.{plugin}"),
            principal: None,
            plugin: Some(plugin.to_string()),
        };
        let headers = edgesync_protocol::Headers(
            headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        );
        let req = Publish {
            topic: topic.to_string(),
            client: sender.client_id.clone(),
            principal: None,
            mid: None,
            headers,
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        let handle = tokio::runtime::Handle::try_current().map_err(unavailable)?;
        handle.spawn(HOPS.scope(hops, async move {
            let _permit = permit;
            if let Err(r) = pipeline.publish(&sender, req).await {
                tracing::debug!(plugin = %sender.client_id, code = %r.code, msg = %r.message, "plugin publish refused");
            }
        }));
        Ok(())
    }

    fn send(
        &self,
        _plugin: &str,
        conn_id: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        let pipeline = self.pipeline()?;
        let out = self
            .conns
            .outbox(conn_id)
            .ok_or(ServiceError::NoSuchConnection(conn_id))?;
        pipeline.deliver_direct(&out, topic, payload);
        Ok(())
    }

    fn close(&self, plugin: &str, conn_id: u64, reason: &str) -> Result<(), ServiceError> {
        let reason = format!("closed by plugin {plugin}: {reason}");
        if self.conns.close(conn_id, ErrorCode::Forbidden, &reason) {
            Ok(())
        } else {
            Err(ServiceError::NoSuchConnection(conn_id))
        }
    }
}
