//! The in-memory index of the meta keyspace: topics, origins, version vectors.

use std::collections::{BTreeMap, HashMap};

use edgesync_protocol::Origin;

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Stream {
    /// First retained seq (high + 1 when the stream is empty).
    pub(super) low: u64,
    /// Highest contiguous seq stored.
    pub(super) high: u64,
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
