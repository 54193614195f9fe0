//! [`RunSet`]: a set of page numbers kept as disjoint runs.

use std::collections::BTreeMap;
use std::ops::Range;

/// A set of page numbers stored as maximal runs (start → end), so that a
/// range of any length costs one entry. Adjacent runs are merged, so the
/// representation of a set is unique.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RunSet {
    runs: BTreeMap<u64, u64>,
}

impl RunSet {
    /// Adds every page of `r`.
    pub(crate) fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut lo, mut hi) = (r.start, r.end);
        // A run starting at or before `lo` that reaches it absorbs the range.
        if let Some((&s, &e)) = self.runs.range(..=lo).next_back() {
            if e >= lo {
                lo = s;
                hi = hi.max(e);
            }
        }
        // Runs starting inside (or right at the end of) the range merge in.
        while let Some((&s, &e)) = self.runs.range(lo + 1..=hi).next() {
            self.runs.remove(&s);
            hi = hi.max(e);
        }
        self.runs.insert(lo, hi);
    }

    /// Removes every page of `r`.
    pub(crate) fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let hits: Vec<(u64, u64)> = self.overlapping(r.clone()).collect();
        for (s, e) in hits {
            self.runs.remove(&s);
            if s < r.start {
                self.runs.insert(s, r.start);
            }
            if e > r.end {
                self.runs.insert(r.end, e);
            }
        }
    }

    /// Whether page `v` is in the set.
    #[cfg(test)]
    pub(crate) fn contains(&self, v: u64) -> bool {
        self.runs
            .range(..=v)
            .next_back()
            .is_some_and(|(_, &e)| e > v)
    }

    /// Whether every page of `r` is in the set.
    pub(crate) fn covers(&self, r: Range<u64>) -> bool {
        r.is_empty()
            || self
                .runs
                .range(..=r.start)
                .next_back()
                .is_some_and(|(_, &e)| e >= r.end)
    }

    /// The parts of `r` in the set, in order.
    pub(crate) fn within(&self, r: Range<u64>) -> Vec<Range<u64>> {
        self.overlapping(r.clone())
            .map(|(s, e)| s.max(r.start)..e.min(r.end))
            .filter(|part| !part.is_empty())
            .collect()
    }

    /// The parts of `r` not in the set, in order.
    pub(crate) fn gaps(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for part in self.within(r.clone()) {
            if part.start > at {
                out.push(at..part.start);
            }
            at = part.end;
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }

    /// Empties the set.
    pub(crate) fn clear(&mut self) {
        self.runs.clear();
    }

    /// The runs `(start, end)` that share a page with `r`.
    fn overlapping(&self, r: Range<u64>) -> impl Iterator<Item = (u64, u64)> + '_ {
        let before = self
            .runs
            .range(..r.start)
            .next_back()
            .filter(|(_, &e)| e > r.start);
        before
            .into_iter()
            .chain(self.runs.range(r.start..r.end))
            .map(|(&s, &e)| (s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn pages(s: &RunSet) -> BTreeSet<u64> {
        s.runs.iter().flat_map(|(&a, &b)| a..b).collect()
    }

    #[test]
    fn runs_merge_and_split() {
        let mut s = RunSet::default();
        s.insert(4..6);
        s.insert(8..10);
        s.insert(6..8);
        assert_eq!(s.runs.len(), 1, "{s:?}");
        assert!(s.covers(4..10) && !s.covers(3..10) && !s.covers(4..11));
        s.remove(5..7);
        assert_eq!(s.within(0..20), vec![4..5, 7..10]);
        assert_eq!(s.gaps(3..9), vec![3..4, 5..7]);
        assert!(s.contains(4) && !s.contains(5) && s.contains(9) && !s.contains(10));
        s.clear();
        assert!(s.runs.is_empty());
    }

    proptest! {
        // Under Miri every case is slow: a few still cover the leaf edges.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]

        #[test]
        fn behaves_as_a_set_of_pages(
            ops in prop::collection::vec((any::<bool>(), 0u64..64, 0u64..16), 0..40),
            probe in (0u64..64, 0u64..16),
        ) {
            let (mut s, mut model) = (RunSet::default(), BTreeSet::new());
            for (add, at, n) in ops {
                if add {
                    s.insert(at..at + n);
                    model.extend(at..at + n);
                } else {
                    s.remove(at..at + n);
                    model.retain(|v| !(at..at + n).contains(v));
                }
                prop_assert_eq!(pages(&s), model.clone());
                // Maximal runs: no two touch.
                let v: Vec<(u64, u64)> = s.runs.iter().map(|(&a, &b)| (a, b)).collect();
                prop_assert!(v.iter().all(|&(a, b)| a < b));
                prop_assert!(v.windows(2).all(|w| w[0].1 < w[1].0));
            }
            let r = probe.0..probe.0 + probe.1;
            prop_assert!(s.within(r.clone()).iter().all(|p| !p.is_empty()));
            prop_assert!(s.gaps(r.clone()).iter().all(|p| !p.is_empty()));
            let inside: BTreeSet<u64> = s.within(r.clone()).into_iter().flatten().collect();
            let outside: BTreeSet<u64> = s.gaps(r.clone()).into_iter().flatten().collect();
            prop_assert_eq!(&inside, &r.clone().filter(|v| model.contains(v)).collect());
            prop_assert_eq!(&outside, &r.clone().filter(|v| !model.contains(v)).collect());
            prop_assert_eq!(s.covers(r.clone()), outside.is_empty());
            for v in r {
                prop_assert_eq!(s.contains(v), model.contains(&v));
            }
        }
    }
}
