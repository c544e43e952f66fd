//! Last-writer-wins state for what is not a log: plugin kv and presence.
//!
//! An [`LwwMap`] holds, per (namespace, key), the winning [`LwwEntry`]: a value
//! or a tombstone, stamped with the writer's HLC and origin. The winner is the
//! greatest by [`LwwEntry::rank`] — (hlc, origin, then the value itself so two
//! entries that tie on the stamp still order the same way everywhere). Merge is
//! "keep the greater", a join on a total order: commutative, associative and
//! idempotent, so every node that has seen the same entries holds the same map,
//! whatever the order and however often they arrived.
//!
//! # Clock drift bound
//!
//! HLCs are the store's format: milliseconds since the Unix epoch shifted left 16
//! bits, plus a logical counter. A remote entry whose physical part is more than
//! `max_drift_ms` ahead of this node's wall clock is **clamped** to
//! `(wall + max_drift) << 16` and counted ([`Merge::Clamped`]): a node with a
//! clock far in the future cannot make its writes win for hours. Clamping keeps
//! convergence: a clamped copy ranks below the original, so wherever both meet
//! the original wins, and where only clamped copies meet the greatest wins.
//!
//! # Sync on a link
//!
//! Digests per (namespace, key bucket) — [`LWW_BUCKETS`] buckets by key hash —
//! are exchanged on every (re)connect; each side then sends its entries of the
//! buckets that differ, and both merge. After that, new local entries and
//! entries that won a merge are sent live. Tombstones are kept (dropping them
//! would let a partitioned node resurrect a deleted key).

use std::collections::BTreeMap;

use bytes::Bytes;
use edgesync_protocol::Origin;
use serde::{Deserialize, Serialize};

use crate::digest::{BucketDigest, origin_hash};

/// Key buckets per namespace for the reconnect digest.
pub const LWW_BUCKETS: u32 = 64;

/// Default bound on how far a remote HLC may run ahead of the local wall clock.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

/// One write: a value (or tombstone) with the stamp that orders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwEntry {
    pub namespace: String,
    pub key: String,
    /// `None` is a tombstone (the key was deleted).
    pub value: Option<Bytes>,
    /// The writer's HLC (`ms << 16 | logical`).
    pub hlc: u64,
    /// The writer.
    pub origin: Origin,
}

impl LwwEntry {
    /// A tombstone stamped below `cutoff` ([`tombstone_cutoff`]): past its bound, it is
    /// collected, never stored again, and only deletes a value it outranks.
    pub fn expired_tombstone(&self, cutoff: u64) -> bool {
        self.value.is_none() && self.hlc < cutoff
    }

    /// The order of writes to one key: greater wins.
    pub fn rank(&self) -> (u64, &Origin, Option<&[u8]>) {
        (self.hlc, &self.origin, self.value.as_deref())
    }

    /// The digest element of this entry (stable across nodes).
    pub fn element(&self) -> u64 {
        let mut h = origin_hash(&self.origin) ^ self.hlc.rotate_left(17);
        for b in self
            .key
            .as_bytes()
            .iter()
            .chain(self.value.as_deref().unwrap_or(b"\xff-tombstone"))
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^ (h >> 29)
    }
}

/// The HLC below which a tombstone is past a bound of `ttl_ms` at wall time `wall_ms`
/// (ms since the Unix epoch).
pub fn tombstone_cutoff(wall_ms: u64, ttl_ms: u64) -> u64 {
    wall_ms.saturating_sub(ttl_ms) << 16
}

/// The digest bucket of a key.
pub fn key_bucket(key: &str) -> u32 {
    let h = crc32c::crc32c(key.as_bytes());
    h % LWW_BUCKETS
}

/// The clamped HLC of an entry whose physical part is more than `max_drift_ms`
/// ahead of `wall_ms` (ms since the Unix epoch): `(wall + max_drift) << 16`.
/// `None` when the HLC is within the bound (kept as it is).
pub fn clamp_hlc(hlc: u64, wall_ms: u64, max_drift_ms: u64) -> Option<u64> {
    let limit = wall_ms.saturating_add(max_drift_ms).saturating_mul(1 << 16);
    (hlc > limit | 0xffff).then_some(limit)
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The entry won and is now stored.
    Applied,
    /// The entry was too far ahead, won after clamping, and is stored clamped.
    Clamped,
    /// The stored entry ranks at or above it: nothing changed.
    Stale,
}

/// The last-writer-wins map of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LwwMap {
    entries: BTreeMap<(String, String), LwwEntry>,
    digests: BTreeMap<(String, u32), BucketDigest>,
}

impl LwwMap {
    pub fn new() -> Self {
        LwwMap::default()
    }

    /// The winning entry of a key (a tombstone when deleted).
    pub fn get(&self, namespace: &str, key: &str) -> Option<&LwwEntry> {
        self.entries.get(&(namespace.to_owned(), key.to_owned()))
    }

    /// Every entry in (namespace, key) order.
    pub fn iter(&self) -> impl Iterator<Item = &LwwEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Merge one entry received from a peer (or written locally), clamping an HLC
    /// more than `max_drift_ms` ahead of `wall_ms` (ms since the Unix epoch).
    pub fn merge(&mut self, mut entry: LwwEntry, wall_ms: u64, max_drift_ms: u64) -> Merge {
        let clamped = clamp_hlc(entry.hlc, wall_ms, max_drift_ms);
        if let Some(limit) = clamped {
            entry.hlc = limit;
        }
        let k = (entry.namespace.clone(), entry.key.clone());
        if let Some(old) = self.entries.get(&k)
            && old.rank() >= entry.rank()
        {
            return Merge::Stale;
        }
        let bucket = (entry.namespace.clone(), key_bucket(&entry.key));
        let d = self.digests.entry(bucket).or_default();
        d.add(entry.element());
        if let Some(old) = self.entries.insert(k, entry) {
            d.remove(old.element());
        }
        if clamped.is_some() {
            Merge::Clamped
        } else {
            Merge::Applied
        }
    }

    /// Remove the tombstones stamped below `cutoff` (an HLC, see [`tombstone_cutoff`]),
    /// with their digest elements; returns how many went. Nodes that collect by the same
    /// stamp bound agree again once each has collected.
    pub fn collect_tombstones(&mut self, cutoff: u64) -> usize {
        let before = self.entries.len();
        let digests = &mut self.digests;
        self.entries.retain(|(ns, k), e| {
            if !e.expired_tombstone(cutoff) {
                return true;
            }
            if let Some(d) = digests.get_mut(&(ns.clone(), key_bucket(k))) {
                d.remove(e.element());
            }
            false
        });
        self.digests.retain(|_, d| !d.is_empty());
        before - self.entries.len()
    }

    /// The digests of every (namespace, bucket) holding entries.
    pub fn digests(&self) -> &BTreeMap<(String, u32), BucketDigest> {
        &self.digests
    }

    /// The entries of one (namespace, bucket).
    pub fn bucket_entries(&self, namespace: &str, bucket: u32) -> Vec<LwwEntry> {
        let lo = (namespace.to_owned(), String::new());
        self.entries
            .range(lo..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|((_, k), _)| key_bucket(k) == bucket)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_entry() -> impl Strategy<Value = LwwEntry> {
        (0u8..2, 0u8..4, prop::option::of(0u8..3), 0u64..6, 0u8..3).prop_map(
            |(ns, key, value, hlc, node)| LwwEntry {
                namespace: format!("ns{ns}"),
                key: format!("k{key}"),
                value: value.map(|v| Bytes::from(vec![v])),
                hlc: hlc << 16,
                origin: Origin::new(format!("n{node}"), 1),
            },
        )
    }

    fn merged(entries: &[LwwEntry]) -> LwwMap {
        let mut m = LwwMap::new();
        for e in entries {
            m.merge(e.clone(), 1_000, 10);
        }
        m
    }

    proptest! {
        #[test]
        fn merge_is_order_and_duplicate_insensitive(entries in prop::collection::vec(any_entry(), 0..30), seed in any::<u64>()) {
            let a = merged(&entries);
            let mut shuffled = entries.clone();
            // Deterministic shuffle from the seed, plus duplicates.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            shuffled.extend(entries.iter().take(5).cloned());
            let b = merged(&shuffled);
            prop_assert_eq!(&a, &b);
            // Merging a map into itself changes nothing (idempotent).
            let mut c = a.clone();
            for e in a.iter() {
                prop_assert_eq!(c.merge(e.clone(), 1_000, 10), Merge::Stale);
            }
            prop_assert_eq!(&c, &a);
        }

        #[test]
        fn digest_is_the_sum_of_entries(entries in prop::collection::vec(any_entry(), 0..30)) {
            let m = merged(&entries);
            let mut expect: BTreeMap<(String, u32), BucketDigest> = BTreeMap::new();
            for e in m.iter() {
                expect.entry((e.namespace.clone(), key_bucket(&e.key))).or_default().add(e.element());
            }
            expect.retain(|_, d| !d.is_empty());
            let mut got = m.digests().clone();
            got.retain(|_, d| !d.is_empty());
            prop_assert_eq!(got, expect);
        }
    }

    #[test]
    fn a_clock_far_ahead_is_clamped_and_the_original_still_wins() {
        let mut m = LwwMap::new();
        let far = LwwEntry {
            namespace: "kv".into(),
            key: "x".into(),
            value: Some(Bytes::from_static(b"future")),
            hlc: 10_000_000 << 16,
            origin: Origin::new("skewed", 1),
        };
        assert_eq!(m.merge(far.clone(), 1_000, 60_000), Merge::Clamped);
        assert_eq!(m.get("kv", "x").map(|e| e.hlc), Some(61_000 << 16));
        let honest = LwwEntry {
            hlc: (61_000 << 16) + 1,
            value: Some(Bytes::from_static(b"now")),
            origin: Origin::new("honest", 1),
            ..far.clone()
        };
        assert_eq!(m.merge(honest, 1_000, 60_000), Merge::Applied);
        // Later, the wall clock has caught up: the original outranks both.
        assert_eq!(m.merge(far, 20_000_000, 60_000), Merge::Applied);
        assert_eq!(m.get("kv", "x").map(|e| e.hlc), Some(10_000_000 << 16));
    }
    #[test]
    fn collected_tombstones_leave_the_digest_of_what_remains() {
        let origin = Origin::new("n1", 1);
        let e = |key: &str, value: Option<&'static [u8]>, hlc: u64| LwwEntry {
            namespace: "ns".into(),
            key: key.into(),
            value: value.map(Bytes::from_static),
            hlc: hlc << 16,
            origin: origin.clone(),
        };
        let mut m = LwwMap::new();
        m.merge(e("old-delete", None, 1), 1_000, 10);
        m.merge(e("new-delete", None, 5), 1_000, 10);
        m.merge(e("value", Some(b"v"), 1), 1_000, 10);
        assert_eq!(m.collect_tombstones(3 << 16), 1);
        assert!(m.get("ns", "old-delete").is_none());
        assert!(m.get("ns", "new-delete").is_some() && m.get("ns", "value").is_some());
        let mut fresh = LwwMap::new();
        fresh.merge(e("new-delete", None, 5), 1_000, 10);
        fresh.merge(e("value", Some(b"v"), 1), 1_000, 10);
        assert_eq!(
            m.digests(),
            fresh.digests(),
            "as if the tombstone never was"
        );
        assert_eq!(m.collect_tombstones(9 << 16), 1);
        assert_eq!(m.collect_tombstones(9 << 16), 0);
    }
}
