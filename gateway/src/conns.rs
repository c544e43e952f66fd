//! The registry of live client connections: connection ids, the admin listing, and
//! reaching one connection by id (plugin `send` and `close`).
//!
//! A session registers itself when it starts and is removed when its [`ConnGuard`]
//! drops. The registry holds only a weak reference to each connection's outbox, so a
//! connection's memory goes with its session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use edgesync_protocol::{ErrorCode, ServerFrame};
use parking_lot::Mutex;
use serde::Serialize;

use crate::broker::ConnOut;
use crate::clock::SharedClock;
use crate::model::{ConnId, ConnInfo, Transport};

/// A connection as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ConnSummary {
    pub id: ConnId,
    pub remote: String,
    pub transport: Transport,
    pub client_id: Option<String>,
    pub connected_at_ms: u64,
}

struct Entry {
    summary: ConnSummary,
    /// The session's outbox (plugin `send` / `close` reach the connection through it).
    out: Weak<ConnOut>,
}

/// Live connections, by id.
pub struct ConnRegistry {
    next: AtomicU64,
    conns: Mutex<HashMap<ConnId, Entry>>,
    clock: SharedClock,
}

impl std::fmt::Debug for ConnRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnRegistry")
            .field("open", &self.conns.lock().len())
            .finish()
    }
}

/// Removes a connection from the registry when its session ends.
pub struct ConnGuard {
    registry: Arc<ConnRegistry>,
    id: ConnId,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.id);
    }
}

impl ConnRegistry {
    pub fn new(clock: SharedClock) -> Arc<Self> {
        Arc::new(ConnRegistry {
            next: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            clock,
        })
    }

    /// A fresh connection id (never reused while the gateway runs).
    pub fn next_id(&self) -> ConnId {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// List connection `id`, reachable through `out`, until the guard drops.
    pub fn register(
        self: &Arc<Self>,
        id: ConnId,
        info: &ConnInfo,
        out: &Arc<ConnOut>,
    ) -> ConnGuard {
        let summary = ConnSummary {
            id,
            remote: info.remote.to_string(),
            transport: info.transport,
            client_id: None,
            connected_at_ms: self.clock.unix_ms(),
        };
        self.conns.lock().insert(
            id,
            Entry {
                summary,
                out: Arc::downgrade(out),
            },
        );
        ConnGuard {
            registry: self.clone(),
            id,
        }
    }

    /// Record the client id a connection announced in `connect`.
    pub fn set_client(&self, id: ConnId, client: &str) {
        if let Some(c) = self.conns.lock().get_mut(&id) {
            c.summary.client_id = Some(client.to_string());
        }
    }

    /// Current connections, by id.
    pub fn list(&self) -> Vec<ConnSummary> {
        let mut v: Vec<_> = self
            .conns
            .lock()
            .values()
            .map(|e| e.summary.clone())
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The outbox of connection `id`, if it is still open.
    pub fn outbox(&self, id: ConnId) -> Option<Arc<ConnOut>> {
        self.conns.lock().get(&id).and_then(|c| c.out.upgrade())
    }

    /// Queue `frame` (a control push) on every open connection; how many got it.
    pub fn broadcast(&self, frame: &ServerFrame) -> usize {
        let outs: Vec<Arc<ConnOut>> = self
            .conns
            .lock()
            .values()
            .filter_map(|c| c.out.upgrade())
            .collect();
        for out in &outs {
            out.outbox.push_reply(frame);
        }
        outs.len()
    }

    /// Close connection `id` with `code` and `reason`. False when it does not exist.
    pub fn close(&self, id: ConnId, code: ErrorCode, reason: &str) -> bool {
        match self.outbox(id) {
            Some(out) => {
                out.outbox.close(code, reason);
                true
            }
            None => false,
        }
    }
}
