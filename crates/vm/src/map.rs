//! The address map: a sorted set of entries, each a page range mapped to a
//! window of one object, split and merged as ranges change.

use crate::object::ObjId;
use std::collections::BTreeMap;
use std::ops::Range;
use vmprim_prim::Prot;

/// What a forked address space gets of a range (Mach's inheritance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Inheritance {
    /// The child maps the same object: writes on either side are seen by both.
    Share,
    /// The child gets a copy-on-write snapshot (the default).
    #[default]
    Copy,
    /// The child has nothing there.
    None,
}

/// One map entry: pages `start..end` show the object's pages
/// `offset..offset + (end - start)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub start: u64,
    pub end: u64,
    pub object: ObjId,
    pub offset: u64,
    pub prot: Prot,
    pub max_prot: Prot,
    pub inheritance: Inheritance,
}

impl Entry {
    /// The object page behind virtual page `vpn`.
    pub fn index(&self, vpn: u64) -> u64 {
        self.offset + (vpn - self.start)
    }

    /// The object pages this entry shows.
    pub fn window(&self) -> Range<u64> {
        self.offset..self.offset + (self.end - self.start)
    }

    fn continues(&self, next: &Self) -> bool {
        self.end == next.start
            && self.object == next.object
            && self.offset + (self.end - self.start) == next.offset
            && self.prot == next.prot
            && self.max_prot == next.max_prot
            && self.inheritance == next.inheritance
    }
}

/// The entries of one address space, keyed by start page.
#[derive(Debug, Default)]
pub(crate) struct Map {
    entries: BTreeMap<u64, Entry>,
}

impl Map {
    /// The entry holding `vpn`.
    pub fn lookup(&self, vpn: u64) -> Option<&Entry> {
        self.entries
            .range(..=vpn)
            .next_back()
            .map(|(_, e)| e)
            .filter(|e| vpn < e.end)
    }

    /// Entries overlapping `r`, in order.
    pub fn overlapping(&self, r: Range<u64>) -> impl Iterator<Item = &Entry> {
        let first = self.lookup(r.start).map_or(r.start, |e| e.start);
        self.entries.range(first..r.end).map(|(_, e)| e)
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The first page of `r` not covered by an entry.
    pub fn first_hole(&self, r: Range<u64>) -> Option<u64> {
        let mut at = r.start;
        for e in self.overlapping(r.clone()) {
            if e.start > at {
                return Some(at);
            }
            at = e.end;
        }
        (at < r.end).then_some(at)
    }

    /// Whether no entry overlaps `r`.
    pub fn is_free(&self, r: Range<u64>) -> bool {
        self.overlapping(r).next().is_none()
    }

    /// The lowest free range of `pages` pages inside `0..limit`.
    pub fn find_free(&self, pages: u64, limit: u64) -> Option<u64> {
        let mut at = 0;
        for e in self.entries.values() {
            if e.start >= at + pages {
                break;
            }
            at = at.max(e.end);
        }
        (at + pages <= limit).then_some(at)
    }

    /// Splits the entry strictly containing `vpn` in two at `vpn`; returns
    /// the object whose reference count the new entry adds to.
    pub fn split(&mut self, vpn: u64) -> Option<ObjId> {
        let e = self.lookup(vpn).filter(|e| e.start < vpn)?.clone();
        let right = Entry {
            start: vpn,
            offset: e.index(vpn),
            ..e.clone()
        };
        self.entries
            .get_mut(&e.start)
            .expect("entry just found")
            .end = vpn;
        self.entries.insert(vpn, right);
        Some(e.object)
    }

    /// Inserts an entry over free space.
    pub fn insert(&mut self, e: Entry) {
        debug_assert!(self.is_free(e.start..e.end));
        self.entries.insert(e.start, e);
    }

    /// Removes and returns the entries inside `r` (split at its ends first).
    pub fn remove_range(&mut self, r: Range<u64>) -> Vec<Entry> {
        let keys: Vec<u64> = self
            .entries
            .range(r.start..r.end)
            .map(|(&k, _)| k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.entries.remove(&k))
            .collect()
    }

    /// Applies `f` to every entry inside `r` (split at its ends first).
    pub fn update(&mut self, r: Range<u64>, mut f: impl FnMut(&mut Entry)) {
        for (_, e) in self.entries.range_mut(r.start..r.end) {
            f(e);
        }
    }

    /// Merges entries around `r` that continue each other; returns the
    /// objects that lost an entry reference.
    pub fn merge(&mut self, r: Range<u64>) -> Vec<ObjId> {
        let first = self
            .entries
            .range(..r.start)
            .next_back()
            .map_or(r.start, |(&k, _)| k);
        let keys: Vec<u64> = self.entries.range(first..=r.end).map(|(&k, _)| k).collect();
        let mut dropped = Vec::new();
        let mut keep = None::<u64>;
        for k in keys {
            let Some(prev) = keep else {
                keep = Some(k);
                continue;
            };
            let (p, n) = (&self.entries[&prev], &self.entries[&k]);
            if p.continues(n) {
                let end = n.end;
                dropped.push(n.object);
                self.entries.remove(&k);
                self.entries.get_mut(&prev).expect("kept entry").end = end;
            } else {
                keep = Some(k);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64, object: ObjId, offset: u64) -> Entry {
        Entry {
            start,
            end,
            object,
            offset,
            prot: Prot::READ_WRITE,
            max_prot: Prot::READ_WRITE,
            inheritance: Inheritance::Copy,
        }
    }

    #[test]
    fn split_then_merge_restores_one_entry() {
        let mut m = Map::default();
        m.insert(entry(10, 20, 1, 100));
        assert_eq!(m.split(15), Some(1));
        assert_eq!(m.split(15), None, "already a boundary");
        assert_eq!(m.split(25), None, "outside every entry");
        assert_eq!(
            m.lookup(17).map(|e| (e.start, e.index(17))),
            Some((15, 107))
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.merge(10..20), vec![1]);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![&entry(10, 20, 1, 100)]);
    }

    #[test]
    fn holes_and_free_ranges() {
        let mut m = Map::default();
        m.insert(entry(2, 4, 1, 0));
        m.insert(entry(6, 8, 2, 0));
        assert_eq!(m.first_hole(2..8), Some(4));
        assert_eq!(m.first_hole(2..4), None);
        assert_eq!(m.first_hole(0..3), Some(0));
        assert_eq!(m.find_free(2, 100), Some(0));
        assert_eq!(m.find_free(3, 100), Some(8));
        assert_eq!(m.find_free(3, 10), None);
        assert!(m.is_free(4..6) && !m.is_free(3..5));
        assert_eq!(m.overlapping(3..7).count(), 2);
    }

    #[test]
    fn entries_of_different_objects_or_windows_do_not_merge() {
        let mut m = Map::default();
        m.insert(entry(0, 2, 1, 0));
        m.insert(entry(2, 4, 1, 5));
        m.insert(entry(4, 6, 2, 4));
        assert!(m.merge(0..6).is_empty());
        assert_eq!(m.len(), 3);
        assert_eq!(m.remove_range(2..6).len(), 2);
        assert_eq!(m.len(), 1);
    }
}
