//! The pmap: the machine-dependent cache of translations (seed 003).
//!
//! The vm layer tells the pmap about every translation it wants
//! ([`Pmap::enter`], on a fault) and every change of meaning
//! ([`Pmap::remove`], [`Pmap::protect`]), and asks which pages map a frame
//! ([`Pmap::pages_of`]). The
//! pmap may also forget any translation at any time, for its own reasons
//! (too many host mappings, memory pressure): the vm layer never relies on
//! one existing, only on none existing that it did not allow. That is what
//! makes the pmap lazy, and what [`Forgetful`] tests.
//!
//! A translation leads to a frame, or, for a pager whose pages are the
//! bytes of a file ([`Mappable`](crate::pager::Mappable)), straight to a
//! page of that file: read-only, from the kernel's page cache, with no
//! frame and no copy ([`Pmap::enter_direct`], [`Target::Direct`]).

use crate::error::VmError;
use crate::object::PageMap;
use crate::phys::Frame;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use vmprim_prim::map2::SharedMemory;
use vmprim_prim::Prot;

/// What a translation leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A frame of the pool.
    Frame(Frame),
    /// Page `page` of the file behind the pager of source `source` (a name
    /// the vm layer picks), mapped read-only from the page cache.
    Direct {
        /// Which file.
        source: u32,
        /// Which page of it.
        page: u64,
    },
}

impl Hash for Target {
    // One word, so the page-number hasher stays one multiply.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match *self {
            Self::Frame(f) => state.write_u64(u64::from(f.0)),
            Self::Direct { source, page } => {
                state.write_u64((1 << 63) ^ (u64::from(source) << 40) ^ page)
            }
        }
    }
}

/// A file whose pages a pmap may map directly: its descriptor, and the
/// name the vm layer gives it in [`Target::Direct`].
#[derive(Clone, Copy, Debug)]
pub struct DirectSource<'a> {
    /// The vm layer's name for the file.
    pub source: u32,
    /// The file; page `k` is bytes `k * page_size ..`.
    pub fd: BorrowedFd<'a>,
}

/// A cache of virtual-to-physical translations for one address space,
/// addressed by virtual page number (page index in the space).
pub trait Pmap: Send + fmt::Debug {
    /// Maps page `vpn` to `frame` with `prot`, replacing any translation.
    fn enter(&mut self, vpn: u64, frame: Frame, prot: Prot) -> Result<(), VmError>;
    /// Maps pages `vpn..vpn + n` to frames `first..first + n` with `prot`
    /// (pages without a translation).
    fn enter_run(&mut self, vpn: u64, first: Frame, n: u64, prot: Prot) -> Result<(), VmError> {
        for k in 0..n {
            self.enter(vpn + k, Frame(first.0 + k as u32), prot)?;
        }
        Ok(())
    }
    /// Maps pages `vpn..vpn + n` straight to pages `first..first + n` of
    /// the file `src`, read-only whatever `prot` says, replacing any
    /// translations. Returns `Ok(false)` if this pmap cannot (the vm layer
    /// then brings the pages into frames); the default.
    fn enter_direct(
        &mut self,
        vpn: u64,
        src: DirectSource<'_>,
        first: u64,
        n: u64,
        prot: Prot,
    ) -> Result<bool, VmError> {
        let _ = (vpn, src, first, n, prot);
        Ok(false)
    }
    /// Drops every translation of pages in `vpns`.
    fn remove(&mut self, vpns: Range<u64>);
    /// Lowers the translations of pages in `vpns` to at most `prot`.
    fn protect(&mut self, vpns: Range<u64>, prot: Prot);
    /// Takes write permission from the translations of pages in `vpns`,
    /// leaving the rest, for copy on write: the mappings still allow
    /// writes, so the next write to one of these pages must reach the vm
    /// layer's fault path and nothing else. (On the real MMU it may arrive
    /// as a userfaultfd write-protect fault rather than a protection fault.)
    fn write_protect(&mut self, vpns: Range<u64>) {
        self.protect(vpns, ALL_BUT_WRITE);
    }
    /// The pages translated to `target` (Mach's pv list).
    fn pages_of(&self, target: Target) -> Vec<u64>;
    /// The translation of `vpn`, if the pmap has one.
    fn extract(&self, vpn: u64) -> Option<(Target, Prot)>;
    /// How many translations it holds.
    fn translations(&self) -> usize;
    /// A new, empty pmap of the same kind for a space of `pages` pages whose
    /// frames are `frames` (for a forked address space).
    fn create(
        &self,
        pages: u64,
        frames: Option<&Arc<SharedMemory>>,
    ) -> Result<Box<dyn Pmap>, VmError>;
    /// The host address of page 0, when the translations are real ones that
    /// plain loads and stores use.
    fn host_base(&self) -> Option<usize> {
        None
    }
}

/// The mask that takes write permission and nothing else.
pub(crate) const ALL_BUT_WRITE: Prot =
    Prot::from_bits_truncate(Prot::READ.bits() | Prot::EXEC.bits());

/// A run of consecutive pages and the protection they now have.
pub type ProtRun = (Range<u64>, Prot);

/// The bookkeeping every pmap keeps: translations by page, the writable
/// ones (so write-protecting a range costs what was written, not its size),
/// and the pages that map each target (Mach's pv lists).
///
/// Translations sit in a two-level table, as in a hardware page table:
/// leaves of 512 consecutive pages, each with a bitmap of its writable
/// pages, found through a small ordered map of the leaves in use. A lookup
/// is one search of that map (one entry per 2 MiB of translated space, so it
/// stays in cache) and one index; a range walks its leaves in order.
#[derive(Debug, Default)]
pub struct Translations {
    leaves: BTreeMap<u64, Box<Leaf>>,
    len: usize,
    first: PageMap<Target, u64>,
    more: PageMap<Target, Vec<u64>>,
}

/// Pages per leaf of [`Translations`].
const LEAF: usize = 512;

/// One leaf of [`Translations`]: pages `key * LEAF ..`.
#[derive(Debug)]
struct Leaf {
    /// `LEAF` slots, allocated on the heap directly: a leaf is made in the
    /// fault handler, which runs on a small signal stack.
    slots: Box<[Option<(Target, Prot)>]>,
    /// Bit `i`: slot `i` is writable.
    writable: [u64; LEAF / 64],
    used: usize,
}

impl Leaf {
    fn new() -> Box<Self> {
        Box::new(Self {
            slots: vec![None; LEAF].into_boxed_slice(),
            writable: [0; LEAF / 64],
            used: 0,
        })
    }

    fn set_writable(&mut self, i: usize, on: bool) {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if on {
            self.writable[w] |= bit;
        } else {
            self.writable[w] &= !bit;
        }
    }

    /// The writable slots in `lo..hi`, in order.
    fn writable_in(&self, lo: usize, hi: usize) -> impl Iterator<Item = usize> + '_ {
        (lo / 64..hi.div_ceil(64)).flat_map(move |w| {
            let mut bits = self.writable[w];
            // Keep only the bits of `lo..hi` in this word.
            let base = w * 64;
            if lo > base {
                bits &= !0u64 << (lo - base);
            }
            if hi < base + 64 {
                bits &= (1u64 << (hi - base)) - 1;
            }
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    base + i
                })
            })
        })
    }
}

/// The leaf holding page `vpn`, and its slot there.
fn leaf_key(vpn: u64) -> (u64, usize) {
    (vpn / LEAF as u64, (vpn % LEAF as u64) as usize)
}

impl Translations {
    /// Records `vpn -> (frame, prot)`, returning the translation it replaced.
    pub fn insert(&mut self, vpn: u64, frame: Target, prot: Prot) -> Option<(Target, Prot)> {
        let (key, i) = leaf_key(vpn);
        let leaf = self.leaves.entry(key).or_insert_with(Leaf::new);
        let old = leaf.slots[i].replace((frame, prot));
        leaf.set_writable(i, prot.contains(Prot::WRITE));
        if old.is_none() {
            leaf.used += 1;
            self.len += 1;
        }
        match old {
            Some((f, _)) if f == frame => {}
            Some((f, _)) => {
                self.unlink(f, vpn);
                self.link(frame, vpn);
            }
            None => self.link(frame, vpn),
        }
        old
    }

    /// The translation of `vpn`.
    pub fn get(&self, vpn: u64) -> Option<(Target, Prot)> {
        let (key, i) = leaf_key(vpn);
        self.leaves.get(&key).and_then(|l| l.slots[i])
    }

    /// How many translations there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The leaves that hold pages of `vpns`, each with the slots inside
    /// `vpns`: `(key, lo..hi)`.
    fn spans(&self, vpns: &Range<u64>) -> Vec<(u64, Range<usize>)> {
        if vpns.is_empty() {
            return Vec::new();
        }
        let (first, lo) = leaf_key(vpns.start);
        let (last, hi) = leaf_key(vpns.end - 1);
        self.leaves
            .range(first..=last)
            .map(|(&k, _)| {
                let from = if k == first { lo } else { 0 };
                let to = if k == last { hi + 1 } else { LEAF };
                (k, from..to)
            })
            .collect()
    }

    /// Removes the translations in `vpns`; returns the runs of consecutive
    /// pages removed.
    pub fn remove_range(&mut self, vpns: Range<u64>) -> Vec<Range<u64>> {
        let mut gone: Vec<(u64, Target)> = Vec::new();
        for (key, slots) in self.spans(&vpns) {
            let leaf = self
                .leaves
                .get_mut(&key)
                .expect("spans lists leaves in use");
            let before = gone.len();
            for i in slots {
                if let Some((f, _)) = leaf.slots[i].take() {
                    leaf.set_writable(i, false);
                    gone.push((key * LEAF as u64 + i as u64, f));
                }
            }
            leaf.used -= gone.len() - before;
            if leaf.used == 0 {
                self.leaves.remove(&key);
            }
        }
        self.len -= gone.len();
        for &(v, f) in &gone {
            self.unlink(f, v);
        }
        runs(gone.into_iter().map(|(v, _)| v))
    }

    /// Lowers the translations in `vpns` to at most `prot`; returns the runs
    /// of pages changed, each with its new protection, and the runs removed
    /// (all of them, when `prot` has no read).
    pub fn protect_range(
        &mut self,
        vpns: Range<u64>,
        prot: Prot,
    ) -> (Vec<ProtRun>, Vec<Range<u64>>) {
        if !prot.contains(Prot::READ) {
            return (Vec::new(), self.remove_range(vpns));
        }
        // When `prot` takes write and nothing else, only writable pages
        // change: the common case (copy on write) costs what was written.
        let only_write = !prot.contains(Prot::WRITE) && prot.contains(ALL_BUT_WRITE);
        let mut changed: Vec<ProtRun> = Vec::new();
        for (key, slots) in self.spans(&vpns) {
            let leaf = self
                .leaves
                .get_mut(&key)
                .expect("spans lists leaves in use");
            let candidates: Vec<usize> = if only_write {
                leaf.writable_in(slots.start, slots.end).collect()
            } else {
                slots.collect()
            };
            for i in candidates {
                let Some((_, p)) = leaf.slots[i].as_mut() else {
                    continue;
                };
                let new = *p & prot;
                if new == *p {
                    continue;
                }
                *p = new;
                leaf.set_writable(i, new.contains(Prot::WRITE));
                let v = key * LEAF as u64 + i as u64;
                match changed.last_mut() {
                    Some((r, p)) if r.end == v && *p == new => r.end += 1,
                    _ => changed.push((v..v + 1, new)),
                }
            }
        }
        (changed, Vec::new())
    }

    /// The pages that map `target`.
    pub fn pages_of(&self, target: Target) -> Vec<u64> {
        let mut v: Vec<u64> = self.first.get(&target).copied().into_iter().collect();
        if let Some(m) = self.more.get(&target) {
            v.extend_from_slice(m);
        }
        v
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn link(&mut self, f: Target, vpn: u64) {
        if let Some(&first) = self.first.get(&f) {
            debug_assert_ne!(first, vpn);
            self.more.entry(f).or_default().push(vpn);
        } else {
            self.first.insert(f, vpn);
        }
    }

    fn unlink(&mut self, f: Target, vpn: u64) {
        if self.first.get(&f) == Some(&vpn) {
            match self.more.get_mut(&f).and_then(Vec::pop) {
                Some(next) => {
                    self.first.insert(f, next);
                    if self.more.get(&f).is_some_and(Vec::is_empty) {
                        self.more.remove(&f);
                    }
                }
                None => {
                    self.first.remove(&f);
                }
            }
        } else if let Some(m) = self.more.get_mut(&f) {
            m.retain(|&v| v != vpn);
            if m.is_empty() {
                self.more.remove(&f);
            }
        }
    }
}

/// Groups an increasing sequence of page numbers into runs.
pub(crate) fn runs(pages: impl Iterator<Item = u64>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for v in pages {
        match out.last_mut() {
            Some(r) if r.end == v => r.end += 1,
            _ => out.push(v..v + 1),
        }
    }
    out
}

/// A software page table: the whole vm layer runs on it without a single
/// hardware fault. Accesses go through
/// [`AddressSpace::read`](crate::AddressSpace::read) and
/// [`write`](crate::AddressSpace::write), which fault into the vm layer
/// whenever the table lacks a translation allowing them.
#[derive(Debug, Default)]
pub struct SimPmap {
    t: Translations,
}

impl SimPmap {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Pmap for SimPmap {
    fn enter(&mut self, vpn: u64, frame: Frame, prot: Prot) -> Result<(), VmError> {
        self.t.insert(vpn, Target::Frame(frame), prot);
        Ok(())
    }
    fn enter_direct(
        &mut self,
        vpn: u64,
        src: DirectSource<'_>,
        first: u64,
        n: u64,
        prot: Prot,
    ) -> Result<bool, VmError> {
        let prot = prot.without(Prot::WRITE);
        for k in 0..n {
            let page = first + k;
            let t = Target::Direct {
                source: src.source,
                page,
            };
            self.t.insert(vpn + k, t, prot);
        }
        Ok(true)
    }
    fn remove(&mut self, vpns: Range<u64>) {
        self.t.remove_range(vpns);
    }
    fn protect(&mut self, vpns: Range<u64>, prot: Prot) {
        self.t.protect_range(vpns, prot);
    }
    fn pages_of(&self, target: Target) -> Vec<u64> {
        self.t.pages_of(target)
    }
    fn extract(&self, vpn: u64) -> Option<(Target, Prot)> {
        self.t.get(vpn)
    }
    fn translations(&self) -> usize {
        self.t.len()
    }
    fn create(
        &self,
        _pages: u64,
        _frames: Option<&Arc<SharedMemory>>,
    ) -> Result<Box<dyn Pmap>, VmError> {
        Ok(Box::new(Self::new()))
    }
}

/// A pmap that forgets: wraps another and, after its calls, drops
/// translations at random (sometimes the one just entered, sometimes a
/// neighbourhood, now and then all of them). The vm layer must stay correct
/// on it; the tests run the model on it.
#[derive(Debug)]
pub struct Forgetful {
    inner: Box<dyn Pmap>,
    pages: u64,
    state: u64,
}

impl Forgetful {
    /// Wraps `inner`, a pmap for `pages` pages, with a seeded generator.
    pub fn new(inner: Box<dyn Pmap>, pages: u64, seed: u64) -> Self {
        Self {
            inner,
            pages: pages.max(1),
            state: seed | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn forget(&mut self, just: Option<u64>) {
        let r = self.next();
        match r % 64 {
            0 => self.inner.remove(0..self.pages),
            1..=8 => {
                if let Some(v) = just {
                    self.inner.remove(v..v + 1);
                }
            }
            9..=16 => {
                let v = (r >> 8) % self.pages;
                self.inner
                    .remove(v.saturating_sub(8)..(v + 8).min(self.pages));
            }
            _ => {}
        }
    }
}

impl Pmap for Forgetful {
    fn enter(&mut self, vpn: u64, frame: Frame, prot: Prot) -> Result<(), VmError> {
        self.inner.enter(vpn, frame, prot)?;
        self.forget(Some(vpn));
        Ok(())
    }
    fn enter_run(&mut self, vpn: u64, first: Frame, n: u64, prot: Prot) -> Result<(), VmError> {
        self.inner.enter_run(vpn, first, n, prot)?;
        self.forget(Some(vpn + n - 1));
        Ok(())
    }
    fn enter_direct(
        &mut self,
        vpn: u64,
        src: DirectSource<'_>,
        first: u64,
        n: u64,
        prot: Prot,
    ) -> Result<bool, VmError> {
        let done = self.inner.enter_direct(vpn, src, first, n, prot)?;
        self.forget(Some(vpn + n - 1));
        Ok(done)
    }
    fn remove(&mut self, vpns: Range<u64>) {
        self.inner.remove(vpns);
        self.forget(None);
    }
    fn protect(&mut self, vpns: Range<u64>, prot: Prot) {
        self.inner.protect(vpns, prot);
        self.forget(None);
    }
    fn write_protect(&mut self, vpns: Range<u64>) {
        self.inner.write_protect(vpns);
        self.forget(None);
    }
    fn pages_of(&self, target: Target) -> Vec<u64> {
        self.inner.pages_of(target)
    }
    fn extract(&self, vpn: u64) -> Option<(Target, Prot)> {
        self.inner.extract(vpn)
    }
    fn translations(&self) -> usize {
        self.inner.translations()
    }
    fn create(
        &self,
        pages: u64,
        frames: Option<&Arc<SharedMemory>>,
    ) -> Result<Box<dyn Pmap>, VmError> {
        let inner = self.inner.create(pages, frames)?;
        Ok(Box::new(Self::new(
            inner,
            pages,
            self.state.rotate_left(17),
        )))
    }
    fn host_base(&self) -> Option<usize> {
        self.inner.host_base()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translations_track_frames_and_writable_pages() {
        let f = |n| Target::Frame(Frame(n));
        let mut t = Translations::default();
        t.insert(1, f(7), Prot::READ_WRITE);
        t.insert(2, f(7), Prot::READ);
        t.insert(5, f(8), Prot::READ_WRITE);
        assert_eq!(t.pages_of(f(7)), vec![1, 2]);
        let (changed, removed) = t.protect_range(0..10, Prot::READ);
        assert_eq!(
            (changed, removed),
            (vec![(1..2, Prot::READ), (5..6, Prot::READ)], vec![])
        );
        assert_eq!(t.get(1), Some((f(7), Prot::READ)));
        assert!(t.leaves.values().all(|l| l.writable == [0; LEAF / 64]));
        assert_eq!(t.remove_range(1..3), vec![1..3]);
        assert!(t.pages_of(f(7)).is_empty());
        t.insert(5, f(9), Prot::READ);
        assert!(t.pages_of(f(8)).is_empty());
        assert_eq!(t.pages_of(f(9)), vec![5]);
        assert_eq!(t.len(), 1);
    }

    proptest::proptest! {
        // Under Miri every case is slow: a few still cover the leaf edges.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]

        /// The two-level table against a plain map, with ranges that cross
        /// leaves.
        #[test]
        fn translations_match_a_plain_map(
            ops in proptest::collection::vec((0u8..3, 0u64..3 * LEAF as u64, 0u64..2 * LEAF as u64, 0u32..8, 0u8..4), 0..60),
        ) {
            let prots = [Prot::READ, Prot::READ_WRITE, Prot::NONE, Prot::READ | Prot::EXEC];
            let mut t = Translations::default();
            let mut model: BTreeMap<u64, (Target, Prot)> = BTreeMap::new();
            for (op, at, n, frame, p) in ops {
                let (r, prot) = (at..at + n, prots[p as usize]);
                match op {
                    0 => {
                        let tgt = Target::Frame(Frame(frame));
                        let prot = if prot == Prot::NONE { Prot::READ } else { prot };
                        proptest::prop_assert_eq!(t.insert(at, tgt, prot), model.insert(at, (tgt, prot)));
                    }
                    1 => {
                        let gone: Vec<u64> = model.range(r.clone()).map(|(&v, _)| v).collect();
                        for v in &gone {
                            model.remove(v);
                        }
                        proptest::prop_assert_eq!(t.remove_range(r), runs(gone.into_iter()));
                    }
                    _ => {
                        let (changed, removed) = t.protect_range(r.clone(), prot);
                        if prot.contains(Prot::READ) {
                            proptest::prop_assert!(removed.is_empty());
                            let mut want = Vec::new();
                            for (&v, e) in model.range_mut(r) {
                                if e.1 & prot != e.1 {
                                    e.1 = e.1 & prot;
                                    want.push(v);
                                }
                            }
                            let got: Vec<u64> = changed.iter().flat_map(|(r, _)| r.clone()).collect();
                            proptest::prop_assert_eq!(got, want);
                        } else {
                            let gone: Vec<u64> = model.range(r.clone()).map(|(&v, _)| v).collect();
                            for v in &gone {
                                model.remove(v);
                            }
                            proptest::prop_assert_eq!(removed, runs(gone.into_iter()));
                        }
                    }
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                for v in at.saturating_sub(2)..at + n + 2 {
                    proptest::prop_assert_eq!(t.get(v), model.get(&v).copied());
                }
            }
            // The whole table, the writable bitmaps and the pv lists agree
            // with the map.
            let all: Vec<(u64, (Target, Prot))> = t
                .leaves
                .iter()
                .flat_map(|(&k, l)| {
                    l.slots.iter().enumerate().filter_map(move |(i, s)| s.map(|e| (k * LEAF as u64 + i as u64, e)))
                })
                .collect();
            proptest::prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
            for (&k, l) in &t.leaves {
                proptest::prop_assert!(l.used > 0);
                for i in 0..LEAF {
                    let w = l.writable[i / 64] >> (i % 64) & 1 == 1;
                    proptest::prop_assert_eq!(w, l.slots[i].is_some_and(|(_, p)| p.contains(Prot::WRITE)));
                    if let Some((tgt, _)) = l.slots[i] {
                        proptest::prop_assert!(t.pages_of(tgt).contains(&(k * LEAF as u64 + i as u64)));
                    }
                }
            }
        }
    }

    #[test]
    fn direct_translations_have_their_own_pv_lists() {
        let d = |source, page| Target::Direct { source, page };
        let mut t = Translations::default();
        t.insert(3, d(1, 40), Prot::READ);
        t.insert(9, d(1, 40), Prot::READ);
        t.insert(4, d(2, 40), Prot::READ);
        t.insert(5, Target::Frame(Frame(40)), Prot::READ);
        assert_eq!(t.pages_of(d(1, 40)), vec![3, 9]);
        assert_eq!(t.pages_of(d(2, 40)), vec![4]);
        assert_eq!(t.pages_of(Target::Frame(Frame(40))), vec![5]);
        // Replacing a direct translation by a frame moves the page's pv entry.
        t.insert(9, Target::Frame(Frame(40)), Prot::READ);
        assert_eq!(t.pages_of(d(1, 40)), vec![3]);
        assert_eq!(t.pages_of(Target::Frame(Frame(40))), vec![5, 9]);
        assert_eq!(t.remove_range(0..10), vec![3..6, 9..10]);
        assert!(t.is_empty() && t.pages_of(d(1, 40)).is_empty());
    }

    #[test]
    fn runs_group_consecutive_pages() {
        assert_eq!(
            runs([1, 2, 3, 7, 9, 10].into_iter()),
            vec![1..4, 7..8, 9..11]
        );
        assert!(runs(std::iter::empty()).is_empty());
    }
}
