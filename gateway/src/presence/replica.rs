//! Presence across a cluster: last-writer-wins entries in the namespace
//! [`PRESENCE_NAMESPACE`], one per (topic, client, node) — a value (principal,
//! connections, since) while the client is present on that gateway, a tombstone once
//! it left. Held in memory (presence is not durable), merged with
//! `edgesync_replication::LwwMap`, exchanged by the peer links like plugin kv.
//!
//! - A gateway's own entries are the truth of its own members: an entry of this node
//!   that a peer holds and this node does not (its previous run's members, after a
//!   restart) is answered with a fresh entry stating the truth (a tombstone), stamped
//!   above it. So a restarted node's old members leave everywhere once it links.
//! - Members of a peer to which no link has been up for [`REMOTE_HIDE_AFTER_MS`] are
//!   hidden from listings (their gateway may be gone with them); they show again when
//!   a link comes back. Hiding sends no `leave` push.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use edgesync_replication::{BucketDigest, LwwEntry, LwwMap, Merge};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::store::{LWW_MAX_DRIFT_MS, LWW_SOURCE_LOCAL, LwwBatch, LwwMerged};

/// The LWW namespace of presence entries.
pub const PRESENCE_NAMESPACE: &str = "presence";
/// A peer's members are hidden once no link to it has been up this long (30 s).
pub const REMOTE_HIDE_AFTER_MS: u64 = 30_000;
/// Batches of new presence entries the live channel holds for a slow link.
const CHANNEL: usize = 4096;
/// A presence tombstone (a member left) is kept this long after its stamp (10 min),
/// then collected. Enough: only a member's own gateway writes its entries, and it
/// answers a stale entry of its own with a fresh tombstone whenever a peer shows it
/// one (above), so a resurrected "present" is corrected at the next link; a gone
/// gateway's members are hidden anyway.
pub const PRESENCE_TOMBSTONE_TTL_MS: u64 = 10 * 60 * 1000;
/// How often (at most) the tombstones are swept: on a write or merge this long after
/// the last sweep (one pass over the map).
const COLLECT_EVERY_MS: u64 = 10_000;

/// What a present entry says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberValue {
    pub principal: Option<String>,
    pub connections: u32,
    pub since: u64,
}

/// The replicated side of presence (inside the presence lock).
#[derive(Debug)]
pub(super) struct Replica {
    map: LwwMap,
    last_hlc: u64,
    /// topic → (client, node) → member, from winning entries of other nodes.
    pub(super) remote: HashMap<String, BTreeMap<(String, String), MemberValue>>,
    /// node → since when no link to it is up (ms).
    down_since: HashMap<String, u64>,
    tx: broadcast::Sender<LwwBatch>,
    /// Wall time (ms) of the last tombstone sweep.
    collected_at: u64,
}

impl Default for Replica {
    fn default() -> Self {
        Replica {
            map: LwwMap::new(),
            last_hlc: 0,
            remote: HashMap::new(),
            down_since: HashMap::new(),
            tx: broadcast::channel(CHANNEL).0,
            collected_at: 0,
        }
    }
}

/// Tombstones stamped below this HLC are past [`PRESENCE_TOMBSTONE_TTL_MS`].
fn tombstone_cutoff(wall_ms: u64) -> u64 {
    edgesync_replication::lww::tombstone_cutoff(wall_ms, PRESENCE_TOMBSTONE_TTL_MS)
}

impl Replica {
    pub(super) fn subscribe(&self) -> broadcast::Receiver<LwwBatch> {
        self.tx.subscribe()
    }

    pub(super) fn digests(&self) -> Vec<(String, u32, BucketDigest)> {
        self.map
            .digests()
            .iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|((ns, b), d)| (ns.clone(), *b, *d))
            .collect()
    }

    pub(super) fn bucket(&self, bucket: u32) -> Vec<LwwEntry> {
        self.map.bucket_entries(PRESENCE_NAMESPACE, bucket)
    }

    /// Whether members of `node` are hidden now.
    pub(super) fn hidden(&self, node: &str, now_ms: u64) -> bool {
        self.down_since
            .get(node)
            .is_some_and(|since| now_ms.saturating_sub(*since) >= REMOTE_HIDE_AFTER_MS)
    }

    pub(super) fn peer_up(&mut self, node: &str) {
        self.down_since.remove(node);
    }

    pub(super) fn peer_down(&mut self, node: &str, now_ms: u64) {
        self.down_since.entry(node.to_string()).or_insert(now_ms);
    }

    /// Sweep tombstones past [`PRESENCE_TOMBSTONE_TTL_MS`], at most every
    /// [`COLLECT_EVERY_MS`]; returns how many went.
    pub(super) fn collect(&mut self, wall_ms: u64) -> usize {
        if wall_ms.saturating_sub(self.collected_at) < COLLECT_EVERY_MS {
            return 0;
        }
        self.collected_at = wall_ms;
        self.map.collect_tombstones(tombstone_cutoff(wall_ms))
    }

    /// Entries held (members and tombstones), for tests.
    #[cfg(test)]
    pub(super) fn held_len(&self) -> usize {
        self.map.len()
    }

    /// A new entry of this node for (topic, client), stamped above `floor`, stored and
    /// sent to every link.
    pub(super) fn write_local(
        &mut self,
        origin: &edgesync_protocol::Origin,
        (topic, client): (&str, &str),
        value: Option<&MemberValue>,
        wall_ms: u64,
        floor: u64,
    ) {
        self.last_hlc = (wall_ms << 16).max(self.last_hlc + 1).max(floor + 1);
        let entry = LwwEntry {
            namespace: PRESENCE_NAMESPACE.into(),
            key: key(topic, client, &origin.node),
            value: value.and_then(|v| serde_json::to_vec(v).ok().map(bytes::Bytes::from)),
            hlc: self.last_hlc,
            origin: origin.clone(),
        };
        self.map.merge(entry.clone(), wall_ms, LWW_MAX_DRIFT_MS);
        self.collect(wall_ms);
        let _ = self.tx.send(LwwBatch {
            source: LWW_SOURCE_LOCAL,
            entries: Arc::new(vec![entry]),
        });
    }

    /// The entry held for `key`.
    pub(super) fn held(&self, key: &str) -> Option<&LwwEntry> {
        self.map.get(PRESENCE_NAMESPACE, key)
    }

    /// Merge an entry of another node; `Some(value or None)` when it won (the member's
    /// new state), `None` when stale. Counts into `out`.
    pub(super) fn merge_remote(
        &mut self,
        entry: LwwEntry,
        wall_ms: u64,
        out: &mut LwwMerged,
    ) -> Option<Option<MemberValue>> {
        let (ns, k) = (entry.namespace.clone(), entry.key.clone());
        self.collect(wall_ms);
        let held_value = self.map.get(&ns, &k).is_some_and(|e| e.value.is_some());
        if entry.expired_tombstone(tombstone_cutoff(wall_ms)) && !held_value {
            // A tombstone past the bound with no member to remove: collected here.
            out.stale += 1;
            return None;
        }
        match self.map.merge(entry, wall_ms, LWW_MAX_DRIFT_MS) {
            Merge::Stale => {
                out.stale += 1;
                None
            }
            m => {
                if m == Merge::Clamped {
                    out.clamped += 1;
                }
                let stored = self.map.get(&ns, &k)?.clone();
                self.last_hlc = self.last_hlc.max(stored.hlc);
                let value = stored
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice(v).ok());
                out.winners.push(stored);
                Some(value)
            }
        }
    }

    /// Send entries that won a merge to every link but `source`.
    pub(super) fn forward(&self, source: u64, entries: Vec<LwwEntry>) {
        if !entries.is_empty() {
            let _ = self.tx.send(LwwBatch {
                source,
                entries: Arc::new(entries),
            });
        }
    }
}

/// The key of (topic, client, node): NUL-separated (no part holds a NUL).
pub(super) fn key(topic: &str, client: &str, node: &str) -> String {
    format!("{topic}\0{client}\0{node}")
}

/// (topic, client, node) of a key.
pub(super) fn parse_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.splitn(3, '\0');
    let topic = parts.next()?;
    let client = parts.next()?;
    let node = parts.next()?;
    (!topic.is_empty() && !client.is_empty() && !node.is_empty()).then_some((topic, client, node))
}
