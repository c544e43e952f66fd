//! Version vectors: per topic, origin → the set of seqs held.
//!
//! A [`VersionVector`] says which records of one topic a node holds (or has
//! covered by a gap marker, or held and then expired by retention): for every
//! origin `(node, epoch)` a [`RangeSet`] of seqs, i.e. the contiguous high-water
//! mark from 1 ([`RangeSet::high_water`]) plus extra ranges above a hole
//! ([`RangeSet::extras`]). The store writes it in the same atomic batch as the
//! records it covers, and it is the replication checkpoint: a receiver's vector
//! is what it will never need again.
//!
//! The lattice: [`VersionVector::join`] is the pointwise union; it is
//! commutative, associative and idempotent (property-tested below), so vectors
//! learned from several peers in any order combine to the same result.

use std::collections::BTreeMap;

use edgesync_protocol::Origin;
use serde::{Deserialize, Serialize};

use crate::ranges::{Range, RangeSet};

/// One topic's version vector. Origins with an empty set are never stored, so
/// `==` is set equality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(Origin, RangeSet)>", into = "Vec<(Origin, RangeSet)>")]
pub struct VersionVector {
    origins: BTreeMap<Origin, RangeSet>,
}

/// A vector with the same origin twice (from a peer or a corrupt file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version vector names origin {0} twice")]
pub struct DuplicateOrigin(pub Origin);

impl TryFrom<Vec<(Origin, RangeSet)>> for VersionVector {
    type Error = DuplicateOrigin;

    fn try_from(list: Vec<(Origin, RangeSet)>) -> Result<Self, DuplicateOrigin> {
        let mut origins = BTreeMap::new();
        for (origin, set) in list {
            if origins.contains_key(&origin) {
                return Err(DuplicateOrigin(origin));
            }
            if !set.is_empty() {
                origins.insert(origin, set);
            }
        }
        Ok(VersionVector { origins })
    }
}

impl From<VersionVector> for Vec<(Origin, RangeSet)> {
    fn from(vv: VersionVector) -> Self {
        vv.origins.into_iter().collect()
    }
}

impl VersionVector {
    /// The empty vector.
    pub fn new() -> Self {
        VersionVector::default()
    }

    /// The seqs held for `origin` (`None` when nothing).
    pub fn get(&self, origin: &Origin) -> Option<&RangeSet> {
        self.origins.get(origin)
    }

    /// Every origin with its seqs, in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (&Origin, &RangeSet)> {
        self.origins.iter()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// True when the vector covers nothing.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The contiguous high-water mark of `origin` (0 when none).
    pub fn high_water(&self, origin: &Origin) -> u64 {
        self.get(origin).map_or(0, RangeSet::high_water)
    }

    /// True when `(origin, seq)` is covered.
    pub fn contains(&self, origin: &Origin, seq: u64) -> bool {
        self.get(origin).is_some_and(|s| s.contains(seq))
    }

    /// Cover one seq; returns true when it was new.
    pub fn insert(&mut self, origin: &Origin, seq: u64) -> bool {
        self.insert_range(origin, seq, seq) == 1
    }

    /// Cover `from..=to`; returns how many seqs were new.
    pub fn insert_range(&mut self, origin: &Origin, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        match self.origins.get_mut(origin) {
            Some(set) => set.insert_range(from, to),
            None => {
                self.origins
                    .insert(origin.clone(), RangeSet::from_range(from, to));
                (to - from).saturating_add(1)
            }
        }
    }

    /// Join the seqs of one origin.
    pub fn join_origin(&mut self, origin: &Origin, set: &RangeSet) {
        if set.is_empty() {
            return;
        }
        match self.origins.get_mut(origin) {
            Some(mine) => mine.union_with(set),
            None => {
                self.origins.insert(origin.clone(), set.clone());
            }
        }
    }

    /// Join: pointwise union with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, set) in &other.origins {
            self.join_origin(origin, set);
        }
    }

    /// The join of two vectors.
    pub fn joined(&self, other: &VersionVector) -> VersionVector {
        let mut out = self.clone();
        out.join(other);
        out
    }

    /// True when `self` covers every seq `other` covers.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other
            .origins
            .iter()
            .all(|(o, set)| self.get(o).is_some_and(|mine| mine.covers(set)))
    }

    /// What `self` has that `other` lacks, per origin (empty origins omitted).
    pub fn missing_from(&self, other: &VersionVector) -> VersionVector {
        let mut out = VersionVector::new();
        for (origin, set) in &self.origins {
            let diff = match other.get(origin) {
                Some(theirs) => set.difference(theirs),
                None => set.clone(),
            };
            if !diff.is_empty() {
                out.origins.insert(origin.clone(), diff);
            }
        }
        out
    }

    /// Forget every seq of `origin` below `floor`.
    pub fn remove_below(&mut self, origin: &Origin, floor: u64) -> u64 {
        let Some(set) = self.origins.get_mut(origin) else {
            return 0;
        };
        let n = set.remove_below(floor);
        if set.is_empty() {
            self.origins.remove(origin);
        }
        n
    }

    /// Forget `from..=to` of `origin` (used by models and by a store that lost
    /// an unsynced tail; a live vector only grows).
    pub fn remove_range(&mut self, origin: &Origin, from: u64, to: u64) -> u64 {
        let Some(set) = self.origins.get_mut(origin) else {
            return 0;
        };
        let n = set.remove_range(from, to);
        if set.is_empty() {
            self.origins.remove(origin);
        }
        n
    }

    /// The ranges of `origin`, or an empty slice.
    pub fn ranges(&self, origin: &Origin) -> &[Range] {
        self.get(origin).map_or(&[], RangeSet::ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn any_vv() -> impl Strategy<Value = VersionVector> {
        prop::collection::vec((0u64..3, 1u64..40, 0u64..5), 0..12).prop_map(|v| {
            let mut vv = VersionVector::new();
            for (o, from, len) in v {
                vv.insert_range(&Origin::new(format!("n{o}"), 1), from, from + len);
            }
            vv
        })
    }

    fn model(vv: &VersionVector) -> BTreeSet<(Origin, u64)> {
        vv.iter()
            .flat_map(|(o, s)| s.iter().map(move |q| (o.clone(), q)))
            .collect()
    }

    proptest! {
        #[test]
        fn join_laws(a in any_vv(), b in any_vv(), c in any_vv()) {
            prop_assert_eq!(a.joined(&b), b.joined(&a));
            prop_assert_eq!(a.joined(&b).joined(&c), a.joined(&b.joined(&c)));
            prop_assert_eq!(a.joined(&a), a.clone());
            prop_assert!(a.joined(&b).covers(&a));
        }

        #[test]
        fn diff_and_covers_agree_with_sets(a in any_vv(), b in any_vv()) {
            let (ma, mb) = (model(&a), model(&b));
            let d = a.missing_from(&b);
            prop_assert_eq!(model(&d), ma.difference(&mb).cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(a.covers(&b), mb.is_subset(&ma));
            prop_assert_eq!(b.joined(&d), b.joined(&a));
        }

        #[test]
        fn serde_round_trips(a in any_vv()) {
            let bytes = rmp_serde::to_vec(&a).unwrap_or_default();
            prop_assert_eq!(rmp_serde::from_slice::<VersionVector>(&bytes).ok(), Some(a));
        }
    }

    #[test]
    fn duplicate_origin_is_refused() {
        let o = Origin::new("a", 1);
        let list = vec![
            (o.clone(), RangeSet::from_range(1, 2)),
            (o, RangeSet::from_range(4, 5)),
        ];
        assert!(VersionVector::try_from(list).is_err());
    }

    #[test]
    fn high_water_and_extras() {
        let o = Origin::new("a", 1);
        let mut vv = VersionVector::new();
        vv.insert_range(&o, 1, 5);
        vv.insert_range(&o, 8, 9);
        assert_eq!(vv.high_water(&o), 5);
        assert_eq!(vv.get(&o).map(RangeSet::extras), Some(&[(8, 9)][..]));
        vv.insert_range(&o, 6, 7);
        assert_eq!(vv.high_water(&o), 9);
        assert_eq!(vv.remove_below(&o, 10), 9);
        assert!(vv.is_empty());
    }
}
