//! `replicated(k)` acks: a publish on such a topic is acknowledged once `k` peers
//! report it durable (REPLICATION.md §3), never earlier.
//!
//! The replication driver reports each peer's durable set of this node's own origin
//! ([`ReplicaAcks::peer_durable`], from the core's `PeerDurable` actions, which come
//! from the peer's acks: sent after its fsync). [`ReplicaAcks::wait`] resolves when `k`
//! distinct peers (by node id, however many links) hold a seq, or fails after the
//! timeout with how many did: the client gets a retryable error and may publish again
//! with the same `mid` (the dedupe window answers with the original record, which is
//! then waited for again).
//!
//! The same acks drive the retention hold: a record of this node's origin that a peer
//! receiving its topic has not acked is kept by retention ([`ReplicaAcks::peer_lacks`]),
//! within `cluster.retention_hold_secs`.
//!
//! Bounded: one range set per (topic, peer) — what the peer acked of this node's
//! origin, joined, so its size is the peer's holes, not its records — and one waiter
//! per publish in flight (each session bounds those by `limits.max_inflight_publishes`).

use std::collections::HashMap;
use std::time::Duration;

use edgesync_replication::RangeSet;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// What `k` peers hold of this node's origin, and who waits for it.
#[derive(Debug, Default)]
pub struct ReplicaAcks {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// topic → peer node id → its durable set of this node's origin.
    durable: HashMap<String, HashMap<String, RangeSet>>,
    /// Peers this node sends records to, with the topic patterns of the link (since
    /// this process started): whose lack of a record holds retention.
    receivers: HashMap<String, Vec<String>>,
    /// topic → publishes waiting.
    waiters: HashMap<String, Vec<Waiter>>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    seq: u64,
    k: usize,
    tx: oneshot::Sender<()>,
}

impl ReplicaAcks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Peer `peer` holds `durable` of this node's origin in `topic` (cumulative: joined
    /// with what it reported before).
    pub fn peer_durable(&self, peer: &str, topic: &str, durable: &RangeSet) {
        let mut inner = self.inner.lock();
        let set = inner
            .durable
            .entry(topic.to_string())
            .or_default()
            .entry(peer.to_string())
            .or_default();
        set.union_with(durable);
        let Some(waiting) = inner.waiters.remove(topic) else {
            return;
        };
        let (done, keep): (Vec<Waiter>, Vec<Waiter>) = waiting
            .into_iter()
            .partition(|w| holders(&inner.durable, topic, w.seq) >= w.k);
        for w in done {
            // The waiter may have timed out and gone: nothing to tell then.
            let _ = w.tx.send(());
        }
        if !keep.is_empty() {
            inner.waiters.insert(topic.to_string(), keep);
        }
    }

    /// Wait until `k` peers hold `seq` of this node's origin in `topic`.
    ///
    /// # Errors
    /// After `timeout`: how many peers held it then (fewer than `k`).
    pub async fn wait(
        &self,
        topic: &str,
        seq: u64,
        k: usize,
        timeout: Duration,
    ) -> Result<(), usize> {
        let (id, rx) = {
            let mut inner = self.inner.lock();
            if holders(&inner.durable, topic, seq) >= k {
                return Ok(());
            }
            inner.next_id += 1;
            let id = inner.next_id;
            let (tx, rx) = oneshot::channel();
            inner
                .waiters
                .entry(topic.to_string())
                .or_default()
                .push(Waiter { id, seq, k, tx });
            (id, rx)
        };
        if let Ok(Ok(())) = tokio::time::timeout(timeout, rx).await {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        if let Some(w) = inner.waiters.get_mut(topic) {
            w.retain(|w| w.id != id);
            if w.is_empty() {
                inner.waiters.remove(topic);
            }
        }
        match holders(&inner.durable, topic, seq) {
            n if n >= k => Ok(()),
            n => Err(n),
        }
    }

    /// Peer `peer` receives this node's records of topics matching `patterns` (a link
    /// to it came up; remembered while the process runs).
    pub fn peer_receives(&self, peer: &str, patterns: &[String]) {
        self.inner
            .lock()
            .receivers
            .insert(peer.to_string(), patterns.to_vec());
    }

    /// True when a peer that receives `topic` has not acked `seq` of this node's origin
    /// as durable (retention holds the record for it).
    pub fn peer_lacks(&self, topic: &str, seq: u64) -> bool {
        let inner = self.inner.lock();
        let held = inner.durable.get(topic);
        inner.receivers.iter().any(|(peer, patterns)| {
            patterns
                .iter()
                .any(|p| edgesync_protocol::topic::matches(p, topic))
                && !held
                    .and_then(|h| h.get(peer))
                    .is_some_and(|s| s.contains(seq))
        })
    }

    /// Publishes waiting (a gauge for tests and status).
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiters.values().map(Vec::len).sum()
    }
}

/// How many peers hold `seq` of `topic`.
fn holders(durable: &HashMap<String, HashMap<String, RangeSet>>, topic: &str, seq: u64) -> usize {
    durable.get(topic).map_or(0, |peers| {
        peers.values().filter(|s| s.contains(seq)).count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(from: u64, to: u64) -> RangeSet {
        RangeSet::from_range(from, to)
    }

    #[tokio::test(start_paused = true)]
    async fn acks_after_k_distinct_peers_never_before() {
        let acks = std::sync::Arc::new(ReplicaAcks::new());
        let a = acks.clone();
        let wait = tokio::spawn(async move { a.wait("t", 5, 2, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        acks.peer_durable("p1", "t", &set(1, 10));
        // The same peer again (a second link) does not count twice; another topic neither.
        acks.peer_durable("p1", "t", &set(1, 20));
        acks.peer_durable("p2", "other", &set(1, 20));
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "one peer is not two");
        acks.peer_durable("p2", "t", &set(3, 4));
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "p2 does not hold seq 5");
        acks.peer_durable("p2", "t", &set(5, 5));
        assert_eq!(wait.await.expect("join"), Ok(()));
        assert_eq!(acks.waiting(), 0);
        // Already held: at once.
        assert_eq!(acks.wait("t", 4, 1, Duration::from_secs(1)).await, Ok(()));
    }

    #[test]
    fn a_receiving_peer_that_lacks_a_record_holds_it() {
        let acks = ReplicaAcks::new();
        assert!(!acks.peer_lacks("sensors.a", 1), "no receiver, no hold");
        acks.peer_receives("p1", &["sensors.>".to_string()]);
        assert!(acks.peer_lacks("sensors.a", 1));
        assert!(!acks.peer_lacks("other.a", 1), "p1 does not carry it");
        acks.peer_durable("p1", "sensors.a", &set(1, 5));
        assert!(!acks.peer_lacks("sensors.a", 5));
        assert!(acks.peer_lacks("sensors.a", 6));
        acks.peer_receives("p2", &[">".to_string()]);
        assert!(acks.peer_lacks("sensors.a", 5), "p2 lacks it");
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_peers_time_out_with_the_count() {
        let acks = ReplicaAcks::new();
        acks.peer_durable("p1", "t", &set(1, 3));
        assert_eq!(acks.wait("t", 3, 2, Duration::from_secs(5)).await, Err(1));
        assert_eq!(acks.wait("t", 9, 1, Duration::from_secs(5)).await, Err(0));
        assert_eq!(acks.waiting(), 0, "timed-out waiters are removed");
    }
}
