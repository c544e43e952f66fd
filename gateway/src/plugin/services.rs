//! [`HostServices`] for the gateway: what plugins can do to the world.
//!
//! - **kv**: plugin-scoped keys in the store's `kv` keyspace, value =
//!   version (u64 BE) · expiry ms (u64 BE, 0 = none) · bytes. Read-modify-write
//!   operations are serialized by one lock. A write reaches the OS at once (it
//!   survives a process crash) and the disk with the next group commit or
//!   within a second: any kv write made while a message's hooks run is durable
//!   before that message is acknowledged, because the journal is sequential.
//! - **publish**: through the normal pipeline (hooks, store, fan-out) on a
//!   task; the publishing plugin's own hooks are skipped and a message may
//!   pass through at most [`MAX_HOPS`] plugin publishes (loop protection).
//! - **send** / **close**: one connection, by id; sends are best-effort.

use std::sync::{Arc, Weak};

use edgesync_plugin_host::services::{HostServices, KvEntry, ServiceError};
use edgesync_plugin_host::types::Header;
use edgesync_protocol::ErrorCode;
use parking_lot::Mutex;

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
    store: Store,
    /// Publishes go through the pipeline. Weak: the pipeline holds the plugins, which
    /// hold these services.
    pipeline: Weak<Pipeline>,
    /// `send` and `close` reach connections through the registry.
    conns: Arc<ConnRegistry>,
    clock: SharedClock,
    /// Longest topic a plugin may publish to (`limits.max_topic_bytes`).
    max_topic_bytes: usize,
    kv_lock: Mutex<()>,
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
            store,
            pipeline,
            conns,
            clock,
            max_topic_bytes,
            kv_lock: Mutex::new(()),
            inflight: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_PUBLISHES)),
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

fn kv_key(plugin: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + plugin.len() + key.len());
    k.push(b'p');
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Decode a stored value; `None` when expired or malformed.
fn decode(bytes: &[u8], now: u64) -> Option<KvEntry> {
    if bytes.len() < 16 {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&bytes[..8]);
    let version = u64::from_be_bytes(v);
    v.copy_from_slice(&bytes[8..16]);
    let expires = u64::from_be_bytes(v);
    if expires != 0 && expires <= now {
        return None;
    }
    Some(KvEntry {
        value: bytes[16..].to_vec(),
        version,
    })
}

fn encode(version: u64, ttl_ms: Option<u64>, value: &[u8], now: u64) -> Vec<u8> {
    let expires = ttl_ms.map_or(0, |t| now.saturating_add(t.max(1)));
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(value);
    out
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

    fn current(&self, plugin: &str, key: &str) -> Result<(Option<KvEntry>, u64), ServiceError> {
        let raw = self
            .store
            .kv_get(&kv_key(plugin, key))
            .map_err(unavailable)?;
        let now = self.now_ms();
        Ok((raw.as_deref().and_then(|b| decode(b, now)), now))
    }

    /// The highest version ever written (expired entries keep counting, so versions never repeat).
    fn last_version(&self, plugin: &str, key: &str) -> Result<u64, ServiceError> {
        let raw = self
            .store
            .kv_get(&kv_key(plugin, key))
            .map_err(unavailable)?;
        Ok(raw.filter(|b| b.len() >= 16).map_or(0, |b| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[..8]);
            u64::from_be_bytes(v)
        }))
    }

    fn put(&self, plugin: &str, key: &str, value: Option<Vec<u8>>) -> Result<(), ServiceError> {
        self.store
            .kv_write(&[(kv_key(plugin, key), value)])
            .map_err(unavailable)
    }
}

impl HostServices for GatewayServices {
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<KvEntry>, ServiceError> {
        Ok(self.current(plugin, key)?.0)
    }

    fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, ServiceError> {
        let _g = self.kv_lock.lock();
        let version = self.last_version(plugin, key)? + 1;
        self.put(
            plugin,
            key,
            Some(encode(version, ttl_ms, value, self.now_ms())),
        )?;
        Ok(version)
    }

    fn kv_compare_and_swap(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, ServiceError> {
        let _g = self.kv_lock.lock();
        let (cur, now) = self.current(plugin, key)?;
        if cur.as_ref().map(|e| e.version) != expected {
            return Ok(None);
        }
        let version = self.last_version(plugin, key)? + 1;
        self.put(plugin, key, Some(encode(version, ttl_ms, value, now)))?;
        Ok(Some(version))
    }

    fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, ServiceError> {
        let _g = self.kv_lock.lock();
        let existed = self.current(plugin, key)?.0.is_some();
        if existed {
            self.put(plugin, key, None)?;
        }
        Ok(existed)
    }

    fn kv_increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, ServiceError> {
        let _g = self.kv_lock.lock();
        let (cur, now) = self.current(plugin, key)?;
        let (value, ttl) = match &cur {
            Some(e) => {
                let n: i64 = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(ServiceError::NotACounter)?;
                (n.saturating_add(delta), None)
            }
            None => (delta, ttl_ms),
        };
        // Keep an existing expiry when the counter already exists.
        let raw = self
            .store
            .kv_get(&kv_key(plugin, key))
            .map_err(unavailable)?;
        let keep_expiry = cur
            .as_ref()
            .and(raw.as_deref())
            .filter(|b| b.len() >= 16)
            .map(|b| {
                let mut v = [0u8; 8];
                v.copy_from_slice(&b[8..16]);
                u64::from_be_bytes(v)
            });
        let version = self.last_version(plugin, key)? + 1;
        let mut bytes = encode(version, ttl, value.to_string().as_bytes(), now);
        if let Some(exp) = keep_expiry {
            bytes[8..16].copy_from_slice(&exp.to_be_bytes());
        }
        self.put(plugin, key, Some(bytes))?;
        Ok(value)
    }

    fn kv_scan_prefix(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, KvEntry)>, ServiceError> {
        let base = kv_key(plugin, "");
        let now = self.now_ms();
        let rows = self
            .store
            .kv_scan(&kv_key(plugin, prefix), limit.saturating_mul(2).max(limit))
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let name = String::from_utf8(k.get(base.len()..)?.to_vec()).ok()?;
                Some((name, decode(&v, now)?))
            })
            .take(limit)
            .collect())
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
