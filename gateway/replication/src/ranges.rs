//! Sets of sequence numbers as sorted, disjoint, inclusive ranges.
//!
//! A [`RangeSet`] is the building block of version vectors: one per (topic,
//! origin). Sequence numbers are dense per (topic, origin) and start at 1, so a
//! healthy stream is a single range `1..=hwm`; out-of-order arrival (a repair, a
//! pull from a second peer) adds extra ranges above a hole until the hole fills.
//!
//! Invariant (checked by [`RangeSet::is_canonical`] and every constructor): the
//! ranges are sorted, each has `from <= to`, and two neighbours are neither
//! overlapping nor adjacent (`prev.to + 1 < next.from`). So two sets hold the
//! same seqs exactly when their range lists are equal, which makes `==` and the
//! digest of a vector meaningful.
//!
//! Cost: `insert` at the end (the common case: records arrive in order) is O(1);
//! elsewhere O(log r + r) for r ranges. Set operations are O(r₁ + r₂).

use serde::{Deserialize, Serialize};

/// An inclusive range of sequence numbers `from..=to` (`from <= to`).
pub type Range = (u64, u64);

/// A set of sequence numbers, stored as canonical inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<Range>", into = "Vec<Range>")]
pub struct RangeSet {
    ranges: Vec<Range>,
}

/// A range list that is not canonical (from a peer or a corrupt file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range {from}..={to} is reversed")]
    Reversed { from: u64, to: u64 },
    #[error("range starting at {from} overlaps or touches the previous one ending at {prev_to}")]
    NotDisjoint { prev_to: u64, from: u64 },
}

impl TryFrom<Vec<Range>> for RangeSet {
    type Error = RangeError;

    fn try_from(ranges: Vec<Range>) -> Result<Self, RangeError> {
        let mut prev: Option<u64> = None;
        for &(from, to) in &ranges {
            if from > to {
                return Err(RangeError::Reversed { from, to });
            }
            if let Some(prev_to) = prev
                && from <= prev_to.saturating_add(1)
            {
                return Err(RangeError::NotDisjoint { prev_to, from });
            }
            prev = Some(to);
        }
        Ok(RangeSet { ranges })
    }
}

impl From<RangeSet> for Vec<Range> {
    fn from(set: RangeSet) -> Self {
        set.ranges
    }
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// The set `from..=to` (empty when `from > to`).
    pub fn from_range(from: u64, to: u64) -> Self {
        let mut s = RangeSet::new();
        s.insert_range(from, to);
        s
    }

    /// The canonical ranges, in ascending order.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// True when the set holds no seq.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of seqs in the set (saturating at `u64::MAX`).
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |n, &(a, b)| n.saturating_add(b - a).saturating_add(1))
    }

    /// Smallest seq, if any.
    pub fn first(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.0)
    }

    /// Largest seq, if any.
    pub fn last(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    /// The contiguous high-water mark from 1: the largest `n` such that every seq
    /// in `1..=n` is in the set (0 when seq 1 is missing).
    pub fn high_water(&self) -> u64 {
        match self.ranges.first() {
            Some(&(from, to)) if from <= 1 => to,
            _ => 0,
        }
    }

    /// The ranges above the high-water mark (out-of-order arrivals).
    pub fn extras(&self) -> &[Range] {
        match self.ranges.first() {
            Some(&(from, _)) if from <= 1 => &self.ranges[1..],
            _ => &self.ranges,
        }
    }

    /// True when `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.find(seq).is_ok()
    }

    /// True when every seq of `from..=to` is in the set (true for an empty range).
    pub fn contains_range(&self, from: u64, to: u64) -> bool {
        if from > to {
            return true;
        }
        match self.find(from) {
            Ok(i) => self.ranges[i].1 >= to,
            Err(_) => false,
        }
    }

    /// True when every seq of `other` is in `self`.
    pub fn covers(&self, other: &RangeSet) -> bool {
        other.ranges.iter().all(|&(a, b)| self.contains_range(a, b))
    }

    /// Add one seq; returns true when it was not there before.
    pub fn insert(&mut self, seq: u64) -> bool {
        self.insert_range(seq, seq) == 1
    }

    /// Add `from..=to`; returns how many seqs were new (saturating).
    pub fn insert_range(&mut self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        // Fast path: appending at or after the end (records arrive in order).
        if let Some(last) = self.ranges.last_mut() {
            if from > last.1.saturating_add(1) {
                self.ranges.push((from, to));
                return (to - from).saturating_add(1);
            }
            if from > last.0 && from <= last.1.saturating_add(1) && to >= last.1 {
                let added = to - last.1;
                last.1 = to;
                return added;
            }
        } else {
            self.ranges.push((from, to));
            return (to - from).saturating_add(1);
        }
        // General case: merge every range that overlaps or touches from..=to.
        let start = self
            .ranges
            .partition_point(|&(_, b)| b.saturating_add(1) < from);
        let end = self
            .ranges
            .partition_point(|&(a, _)| a <= to.saturating_add(1));
        let before: u64 = self.ranges[start..end]
            .iter()
            .fold(0u64, |n, &(a, b)| n.saturating_add(b - a + 1));
        let mut lo = from;
        let mut hi = to;
        if start < end {
            lo = lo.min(self.ranges[start].0);
            hi = hi.max(self.ranges[end - 1].1);
        }
        self.ranges.splice(start..end, std::iter::once((lo, hi)));
        (hi - lo).saturating_add(1).saturating_sub(before)
    }

    /// Remove `from..=to`; returns how many seqs were removed (saturating).
    pub fn remove_range(&mut self, from: u64, to: u64) -> u64 {
        if from > to || self.is_empty() {
            return 0;
        }
        let start = self.ranges.partition_point(|&(_, b)| b < from);
        let end = self.ranges.partition_point(|&(a, _)| a <= to);
        if start >= end {
            return 0;
        }
        let mut keep: Vec<Range> = Vec::with_capacity(2);
        let mut removed = 0u64;
        for &(a, b) in &self.ranges[start..end] {
            if a < from {
                keep.push((a, from - 1));
            }
            if b > to {
                keep.push((to + 1, b));
            }
            removed = removed.saturating_add(b.min(to) - a.max(from) + 1);
        }
        self.ranges.splice(start..end, keep);
        removed
    }

    /// Remove every seq below `floor` (retention).
    pub fn remove_below(&mut self, floor: u64) -> u64 {
        if floor == 0 {
            return 0;
        }
        self.remove_range(0, floor - 1)
    }

    /// Join: add every seq of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.ranges = other.ranges.clone();
            return;
        }
        let mut out: Vec<Range> = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() || j < other.ranges.len() {
            let next = match (self.ranges.get(i), other.ranges.get(j)) {
                (Some(&a), Some(&b)) if a.0 <= b.0 => {
                    i += 1;
                    a
                }
                (_, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, None) => break,
            };
            match out.last_mut() {
                Some(last) if next.0 <= last.1.saturating_add(1) => last.1 = last.1.max(next.1),
                _ => out.push(next),
            }
        }
        self.ranges = out;
    }

    /// The join of two sets.
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    /// What `self` has that `other` lacks (`self − other`).
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out: Vec<Range> = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.ranges {
            let mut lo = a;
            while j < other.ranges.len() && other.ranges[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < other.ranges.len() && other.ranges[k].0 <= b {
                let (oa, ob) = other.ranges[k];
                if oa > lo {
                    out.push((lo, oa - 1));
                }
                if ob >= b {
                    done = true;
                    break;
                }
                lo = ob + 1;
                k += 1;
            }
            if !done {
                out.push((lo, b));
            }
        }
        RangeSet { ranges: out }
    }

    /// The seqs of `self` within `from..=to`.
    pub fn intersect_range(&self, from: u64, to: u64) -> RangeSet {
        if from > to {
            return RangeSet::new();
        }
        let start = self.ranges.partition_point(|&(_, b)| b < from);
        let ranges = self.ranges[start..]
            .iter()
            .take_while(|&&(a, _)| a <= to)
            .map(|&(a, b)| (a.max(from), b.min(to)))
            .collect();
        RangeSet { ranges }
    }

    /// Iterate every seq (use on small sets only: tests and the simulation).
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
    }

    /// True when the internal invariant holds (sorted, disjoint, non-adjacent).
    pub fn is_canonical(&self) -> bool {
        RangeSet::try_from(self.ranges.clone()).is_ok()
    }

    /// `Ok(index)` of the range holding `seq`, or `Err(insertion point)`.
    fn find(&self, seq: u64) -> Result<usize, usize> {
        let i = self.ranges.partition_point(|&(_, b)| b < seq);
        match self.ranges.get(i) {
            Some(&(a, _)) if a <= seq => Ok(i),
            _ => Err(i),
        }
    }
}

impl FromIterator<u64> for RangeSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut s = RangeSet::new();
        for seq in iter {
            s.insert(seq);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn small_set() -> impl Strategy<Value = BTreeSet<u64>> {
        prop::collection::btree_set(0u64..80, 0..40)
    }

    fn model(s: &RangeSet) -> BTreeSet<u64> {
        s.iter().collect()
    }

    proptest! {
        #[test]
        fn insert_and_contains_agree_with_btreeset(ops in prop::collection::vec((0u64..100, 0u64..6, any::<bool>()), 0..60)) {
            let mut s = RangeSet::new();
            let mut m = BTreeSet::new();
            for (from, len, remove) in ops {
                let to = from + len;
                if remove {
                    let n = s.remove_range(from, to);
                    let before = m.len();
                    m.retain(|x| *x < from || *x > to);
                    prop_assert_eq!(n as usize, before - m.len());
                } else {
                    let n = s.insert_range(from, to);
                    let before = m.len();
                    m.extend(from..=to);
                    prop_assert_eq!(n as usize, m.len() - before);
                }
                prop_assert!(s.is_canonical(), "{:?}", s);
                prop_assert_eq!(model(&s), m.clone());
                prop_assert_eq!(s.len() as usize, m.len());
            }
            for x in 0..110 {
                prop_assert_eq!(s.contains(x), m.contains(&x));
            }
        }

        #[test]
        fn set_algebra_agrees_with_btreeset(a in small_set(), b in small_set(), lo in 0u64..80, span in 0u64..30) {
            let (sa, sb): (RangeSet, RangeSet) = (a.iter().copied().collect(), b.iter().copied().collect());
            prop_assert_eq!(model(&sa.union(&sb)), a.union(&b).copied().collect::<BTreeSet<_>>());
            let d = sa.difference(&sb);
            prop_assert!(d.is_canonical());
            prop_assert_eq!(model(&d), a.difference(&b).copied().collect::<BTreeSet<_>>());
            prop_assert_eq!(sa.covers(&sb), b.is_subset(&a));
            let hi = lo + span;
            prop_assert_eq!(sa.contains_range(lo, hi), (lo..=hi).all(|x| a.contains(&x)));
            prop_assert_eq!(model(&sa.intersect_range(lo, hi)), a.range(lo..=hi).copied().collect::<BTreeSet<_>>());
            let mut below = sa.clone();
            below.remove_below(lo);
            prop_assert_eq!(model(&below), a.range(lo..).copied().collect::<BTreeSet<_>>());
        }

        #[test]
        fn join_is_commutative_associative_idempotent(a in small_set(), b in small_set(), c in small_set()) {
            let (sa, sb, sc): (RangeSet, RangeSet, RangeSet) =
                (a.into_iter().collect(), b.into_iter().collect(), c.into_iter().collect());
            prop_assert_eq!(sa.union(&sb), sb.union(&sa));
            prop_assert_eq!(sa.union(&sb).union(&sc), sa.union(&sb.union(&sc)));
            prop_assert_eq!(sa.union(&sa), sa.clone());
        }

        #[test]
        fn high_water_is_the_contiguous_prefix_from_one(a in prop::collection::btree_set(1u64..80, 0..40)) {
            let s: RangeSet = a.iter().copied().collect();
            let mut hwm = 0;
            while a.contains(&(hwm + 1)) {
                hwm += 1;
            }
            prop_assert_eq!(s.high_water(), hwm);
            let extra: BTreeSet<u64> = s.extras().iter().flat_map(|&(x, y)| x..=y).collect();
            prop_assert_eq!(extra, a.iter().copied().filter(|x| *x > hwm).collect::<BTreeSet<_>>());
        }

        #[test]
        fn serde_round_trips_and_rejects_non_canonical(a in small_set(), raw in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6)) {
            let s: RangeSet = a.into_iter().collect();
            let bytes = rmp_serde::to_vec(&s).unwrap_or_default();
            prop_assert_eq!(rmp_serde::from_slice::<RangeSet>(&bytes).ok(), Some(s));
            let bytes = rmp_serde::to_vec(&raw).unwrap_or_default();
            if let Ok(s) = rmp_serde::from_slice::<RangeSet>(&bytes) {
                prop_assert!(s.is_canonical());
            }
        }
    }

    #[test]
    fn edges_at_u64_max_do_not_overflow() {
        let mut s = RangeSet::new();
        s.insert_range(u64::MAX - 2, u64::MAX);
        s.insert_range(0, 3);
        assert_eq!(s.len(), 7);
        assert_eq!(s.remove_range(u64::MAX, u64::MAX), 1);
        assert_eq!(
            s.difference(&RangeSet::from_range(0, u64::MAX)),
            RangeSet::new()
        );
        assert!(RangeSet::try_from(vec![(5, 4)]).is_err());
        assert!(RangeSet::try_from(vec![(1, 4), (5, 6)]).is_err());
    }
}
