//! The in-memory index of the meta keyspace: topics, origins, version vectors.

use std::collections::{BTreeMap, HashMap};

use edgesync_protocol::Origin;

use edgesync_replication::RangeSet;
use serde::{Deserialize, Serialize};

use super::*;

/// In-memory view of the meta keyspace, updated only after a durable commit.
#[derive(Default, Clone)]
pub(super) struct Index {
    pub(super) topics: HashMap<String, TopicState>,
    pub(super) origin_ids: HashMap<Origin, u32>,
    pub(super) origins: HashMap<u32, Origin>,
    pub(super) next_topic_id: u32,
    pub(super) next_origin_id: u32,
    pub(super) max_hlc: u64,
}

/// Persisted per-topic state: the version vector and retention bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct TopicState {
    pub(super) id: u32,
    /// origin_id → stream.
    pub(super) streams: BTreeMap<u32, Stream>,
    pub(super) count: u64,
    pub(super) bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Stream {
    /// First retained seq (high + 1 when the stream is empty).
    pub(super) low: u64,
    /// Highest contiguous seq stored.
    pub(super) high: u64,
    /// Seqs held beyond `high + 1` (replicated records that arrived out of order, or
    /// gap markers): durable and in the version vector, but readers and the broker
    /// see them only once the hole below them fills and `high` moves past them.
    /// Empty for local streams. (Absent in topic states written before replication:
    /// `serde(default)` reads those as empty.)
    #[serde(default)]
    pub(super) extra: RangeSet,
}

impl Stream {
    /// A new, empty stream.
    pub(super) fn empty() -> Self {
        Stream {
            low: 1,
            high: 0,
            extra: RangeSet::new(),
        }
    }

    /// True when the version vector covers `seq` (held, retained away, or a gap marker).
    pub(super) fn covers(&self, seq: u64) -> bool {
        seq <= self.high || self.extra.contains(seq)
    }

    /// Mark `seq` held. Returns the seqs that became contiguous (`high` moved past
    /// them), in order: `seq` itself and any extras it joined.
    pub(super) fn insert(&mut self, seq: u64) -> Option<(u64, u64)> {
        self.insert_range(seq, seq)
    }

    /// Mark `from..=to` held (the caller checked none of it is covered). Returns the
    /// range `high` moved over, if it moved.
    pub(super) fn insert_range(&mut self, from: u64, to: u64) -> Option<(u64, u64)> {
        if from > self.high.saturating_add(1) {
            self.extra.insert_range(from, to);
            return None;
        }
        let start = self.high + 1;
        self.high = self.high.max(to);
        // Absorb extras that now touch the contiguous prefix.
        while let Some(&(f, t)) = self.extra.ranges().first() {
            if f > self.high + 1 {
                break;
            }
            self.high = self.high.max(t);
            self.extra.remove_range(f, t);
        }
        (self.high >= start).then_some((start, self.high))
    }

    /// The version vector's set of this stream: `1..=high` plus the extras.
    pub(super) fn set(&self) -> RangeSet {
        let mut s = self.extra.clone();
        if self.high > 0 {
            s.insert_range(1, self.high);
        }
        s
    }
}

impl Index {
    pub(super) fn vv(&self, t: &TopicState) -> BTreeMap<Origin, u64> {
        t.streams
            .iter()
            .filter_map(|(oid, s)| Some((self.origins.get(oid)?.clone(), s.high)))
            .collect()
    }
}

/// Copy what a durable commit changed from the writer's index into the shared one.
pub(super) fn publish_index(shared: &Shared, index: &Index, topics: &[String]) {
    let mut s = shared.index.write();
    for name in topics {
        if let Some(t) = index.topics.get(name) {
            s.topics.insert(name.clone(), t.clone());
        }
    }
    if s.origins.len() != index.origins.len() {
        s.origins = index.origins.clone();
        s.origin_ids = index.origin_ids.clone();
    }
    s.next_topic_id = index.next_topic_id;
    s.next_origin_id = index.next_origin_id;
    s.max_hlc = index.max_hlc;
}

impl Index {
    pub(super) fn vv_of(&self, topic: &str) -> BTreeMap<Origin, u64> {
        self.topics
            .get(topic)
            .map(|t| self.vv(t))
            .unwrap_or_default()
    }

    pub(super) fn topic_id(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        shared: &Shared,
        topic: &str,
    ) -> u32 {
        if let Some(t) = self.topics.get(topic) {
            return t.id;
        }
        let id = self.next_topic_id;
        self.next_topic_id += 1;
        let mut k = b"t".to_vec();
        k.extend_from_slice(topic.as_bytes());
        batch.insert(&shared.meta, k, id.to_be_bytes().as_slice());
        self.topics.insert(
            topic.to_string(),
            TopicState {
                id,
                ..TopicState::default()
            },
        );
        id
    }

    pub(super) fn origin_id(
        &mut self,
        shared: &Shared,
        batch: &mut fjall::OwnedWriteBatch,
        origin: &Origin,
    ) -> u32 {
        if let Some(id) = self.origin_ids.get(origin) {
            return *id;
        }
        let id = self.next_origin_id;
        self.next_origin_id += 1;
        let mut k = b"o".to_vec();
        k.extend_from_slice(&id.to_be_bytes());
        let mut v = origin.epoch.to_be_bytes().to_vec();
        v.extend_from_slice(origin.node.as_bytes());
        batch.insert(&shared.meta, k, v);
        self.origin_ids.insert(origin.clone(), id);
        self.origins.insert(id, origin.clone());
        id
    }
}
