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
use std::collections::{BTreeMap, BTreeSet};
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

/// A run of consecutive pages and the protection they now have.
pub type ProtRun = (Range<u64>, Prot);

/// The bookkeeping every pmap keeps: translations by page, the writable
/// ones (so write-protecting a range costs what was written, not its size),
/// and the pages that map each target (Mach's pv lists).
#[derive(Debug, Default)]
pub struct Translations {
    map: BTreeMap<u64, (Target, Prot)>,
    writable: BTreeSet<u64>,
    first: PageMap<Target, u64>,
    more: PageMap<Target, Vec<u64>>,
}

impl Translations {
    /// Records `vpn -> (frame, prot)`, returning the translation it replaced.
    pub fn insert(&mut self, vpn: u64, frame: Target, prot: Prot) -> Option<(Target, Prot)> {
        let old = self.map.insert(vpn, (frame, prot));
        if let Some((f, _)) = old {
            if f != frame {
                self.unlink(f, vpn);
                self.link(frame, vpn);
            }
        } else {
            self.link(frame, vpn);
        }
        if prot.contains(Prot::WRITE) {
            self.writable.insert(vpn);
        } else {
            self.writable.remove(&vpn);
        }
        old
    }

    /// The translation of `vpn`.
    pub fn get(&self, vpn: u64) -> Option<(Target, Prot)> {
        self.map.get(&vpn).copied()
    }

    /// How many translations there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes the translations in `vpns`; returns the runs of consecutive
    /// pages removed.
    pub fn remove_range(&mut self, vpns: Range<u64>) -> Vec<Range<u64>> {
        let gone: Vec<(u64, Target)> = self.map.range(vpns).map(|(&v, &(f, _))| (v, f)).collect();
        for &(v, f) in &gone {
            self.map.remove(&v);
            self.writable.remove(&v);
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
        let candidates: Vec<u64> = if prot.contains(Prot::WRITE) {
            self.map.range(vpns).map(|(&v, _)| v).collect()
        } else {
            self.writable.range(vpns).copied().collect()
        };
        let mut changed: Vec<ProtRun> = Vec::new();
        for v in candidates {
            let (f, old) = self.map[&v];
            let new = old & prot;
            if new == old {
                continue;
            }
            self.insert(v, f, new);
            match changed.last_mut() {
                Some((r, p)) if r.end == v && *p == new => r.end += 1,
                _ => changed.push((v..v + 1, new)),
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
        assert!(t.writable.is_empty());
        assert_eq!(t.remove_range(1..3), vec![1..3]);
        assert!(t.pages_of(f(7)).is_empty());
        t.insert(5, f(9), Prot::READ);
        assert!(t.pages_of(f(8)).is_empty());
        assert_eq!(t.pages_of(f(9)), vec![5]);
        assert_eq!(t.len(), 1);
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
