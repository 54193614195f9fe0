//! [`HostPmap`]: translations on the real MMU.
//!
//! The address space is a reserved, inaccessible range. Entering a
//! translation maps one page of the frame pool's memfd there
//! (`mmap(MAP_SHARED | MAP_FIXED)`, through
//! [`SharedMemory::map_into`]) with the protection the vm layer chose; so a
//! frame mapped at two addresses is one physical page. Removing one puts
//! reserved space back ([`Region::reset`]); lowering one is `mprotect`,
//! except the lowering that copy on write asks for
//! ([`Pmap::write_protect`]): where the kernel offers userfaultfd write
//! protection on shared memory, that is a bit in each page-table entry
//! (`UFFDIO_WRITEPROTECT`), which splits no kernel mapping and costs about
//! a quarter of an `mprotect` of one page in the middle of a mapping; the
//! write that follows arrives as `SIGBUS` from userfaultfd, and the vm
//! layer answers it like any write fault.
//!
//! A direct translation ([`Pmap::enter_direct`]) maps a page of a file
//! privately and read-only (`mmap(MAP_PRIVATE | MAP_FIXED)` through
//! [`Region::map_file`]), so loads read the kernel's page cache, and the
//! kernel's own fault-around fills the run's page-table entries.
//!
//! Every translation may become a kernel VMA, and the kernel caps their
//! number (`vm.max_map_count`). Frames are handed out in order, so pages
//! touched in order get consecutive frames and the kernel merges their
//! mappings; what it cannot merge is counted, and past a quarter of the cap
//! the pmap forgets every translation of its space at once (one `mmap`),
//! which the vm layer allows at any time.

use crate::error::VmError;
use crate::phys::Frame;
use crate::pmap::{DirectSource, Pmap, ProtRun, Target, Translations, ALL_BUT_WRITE};
use crate::runset::RunSet;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use vmprim_prim::map2::SharedMemory;
use vmprim_prim::uffd::{Delivery, Features, Mode, Uffd, Wake};
use vmprim_prim::{page_size, Prot, Region};

/// The real MMU as a pmap: plain loads and stores on the space's addresses
/// use its translations, and a missing one is a `SIGSEGV` that the vm layer
/// answers.
#[derive(Debug)]
pub struct HostPmap {
    region: Region,
    frames: Arc<SharedMemory>,
    t: Translations,
    page: usize,
    unmerged: usize,
    limit: usize,
    flushes: u64,
    wp: Option<WriteProtect>,
}

/// Write protection for copy on write through userfaultfd: a bit in the
/// page-table entry rather than a protection of the kernel mapping.
///
/// Invariants: a page in `protected` is in `registered` and has a frame
/// translation whose protection is its kernel mapping's without write;
/// every other page's kernel mapping has its translation's protection, and
/// its page-table entry no write-protect bit. A mapping the pmap replaces
/// (a new `mmap` over it) loses both, as the kernel forgets both.
#[derive(Debug)]
struct WriteProtect {
    uffd: Uffd,
    /// Pages whose kernel mapping is registered with `uffd` for
    /// write-protect faults.
    registered: RunSet,
    /// Pages write-protected through `uffd`.
    protected: RunSet,
}

impl WriteProtect {
    /// A userfaultfd for write protection of shared memory, delivering its
    /// faults as `SIGBUS` to the faulting thread; `None` if the kernel
    /// lacks either feature or refuses userfaultfd.
    fn open() -> Option<Self> {
        let uffd = Uffd::new(Delivery::Sigbus, Features::WP | Features::WP_SHMEM).ok()?;
        if !*SPANS_MAPPINGS.get_or_init(|| spans_mappings(&uffd)) {
            return None;
        }
        Some(Self {
            uffd,
            registered: RunSet::default(),
            protected: RunSet::default(),
        })
    }

    /// The kernel mapping of `pages` was replaced.
    fn forget(&mut self, pages: Range<u64>) {
        self.registered.remove(pages.clone());
        self.protected.remove(pages);
    }
}

/// Whether one `UFFDIO_WRITEPROTECT` may cover several kernel mappings
/// (Linux 6.4+; before, a range had to lie in one, and the pmap's runs
/// rarely do), probed once.
static SPANS_MAPPINGS: OnceLock<bool> = OnceLock::new();

/// Maps two pages of a memfd in reverse order (two mappings that cannot
/// merge), registers both and write-protects across them.
fn spans_mappings(uffd: &Uffd) -> bool {
    let p = page_size();
    let probe = || -> Option<()> {
        let shm = SharedMemory::new(2 * p).ok()?;
        let region = Region::reserve(2 * p).ok()?;
        shm.map_into(&region, 0, p, p, Prot::READ_WRITE).ok()?;
        shm.map_into(&region, p, 0, p, Prot::READ_WRITE).ok()?;
        let start = region.as_ptr() as usize;
        uffd.cover(start, 2 * p, Mode::WP).ok()?;
        uffd.write_protect(start, 2 * p).ok()
        // Dropping the region unmaps both, and their registration with them.
    };
    probe().is_some()
}

impl HostPmap {
    /// Reserves `pages` pages of address space for translations to pages of
    /// `frames`. Copy-on-write downgrades use userfaultfd write protection
    /// when the kernel offers it for shared memory across several mappings
    /// at once (Linux 6.4+, and userfaultfd allowed to this process),
    /// `mprotect` otherwise.
    pub fn new(pages: u64, frames: Arc<SharedMemory>) -> Result<Self, VmError> {
        let mut me = Self::with_mprotect(pages, frames)?;
        me.wp = WriteProtect::open();
        Ok(me)
    }

    /// As [`new`](Self::new), but every downgrade is an `mprotect`, which
    /// splits the kernel's mapping around the page: the fallback, and the
    /// comparison for the userfaultfd path.
    pub fn with_mprotect(pages: u64, frames: Arc<SharedMemory>) -> Result<Self, VmError> {
        let page = page_size();
        let region =
            Region::reserve(pages as usize * page).map_err(|e| VmError::Host(e.to_string()))?;
        let cap = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65530);
        Ok(Self {
            region,
            frames,
            t: Translations::default(),
            page,
            unmerged: 0,
            limit: (cap / 4).max(64),
            flushes: 0,
            wp: None,
        })
    }

    /// Whether copy-on-write downgrades use userfaultfd write protection.
    pub fn uffd_write_protect(&self) -> bool {
        self.wp.is_some()
    }

    /// How many times the pmap forgot everything to stay under the kernel's
    /// mapping cap.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// Forgets every translation. Returns `false` if even that failed, in
    /// which case the host mappings may disagree with the vm layer.
    fn flush(&mut self) -> bool {
        self.flushes += 1;
        self.t.clear();
        self.unmerged = 0;
        if let Some(wp) = &mut self.wp {
            wp.registered.clear();
            wp.protected.clear();
        }
        self.region.reset(0, self.region.len()).is_ok()
    }

    fn must_flush(&mut self, what: &str) {
        if !self.flush() {
            // A translation the vm layer removed may still be live: going on
            // could expose a page to the wrong address. Nothing is safe but
            // stopping.
            eprintln!("vmprim-vm: cannot {what} or reset the address space; aborting");
            std::process::abort();
        }
    }

    fn reset_runs(&mut self, runs: Vec<Range<u64>>) {
        for r in runs {
            let (off, len) = self.span(&r);
            if let Some(wp) = &mut self.wp {
                wp.forget(r);
            }
            if self.region.reset(off, len).is_err() {
                return self.must_flush("remove a translation");
            }
        }
    }

    fn protect_runs(&mut self, runs: Vec<ProtRun>) {
        for (r, prot) in runs {
            let (off, len) = self.span(&r);
            self.unmerged += 2;
            if self.region.protect(off, len, prot).is_err() {
                return self.must_flush("lower a translation");
            }
        }
    }

    /// The offset and length in the region of pages `r`.
    fn span(&self, r: &Range<u64>) -> (usize, usize) {
        (
            r.start as usize * self.page,
            (r.end - r.start) as usize * self.page,
        )
    }

    /// Takes the userfaultfd write protection off `r` (pages in
    /// `protected`), whose kernel mappings already have the protection
    /// their translations want. Forgets everything if the kernel refuses,
    /// as a write-protect bit left behind would trap writes forever.
    /// Returns `false` if it forgot everything.
    fn unprotect_wp(&mut self, r: Range<u64>) -> bool {
        let (off, len) = self.span(&r);
        let base = self.region.as_ptr() as usize;
        let Some(wp) = &mut self.wp else { return true };
        wp.protected.remove(r);
        if wp.uffd.write_unprotect(base + off, len, Wake::No).is_err() {
            self.must_flush("clear write protection");
            return false;
        }
        true
    }

    /// Whether every page of `r` is write-protected through userfaultfd.
    fn is_protected(&self, r: Range<u64>) -> bool {
        self.wp.as_ref().is_some_and(|wp| wp.protected.covers(r))
    }

    /// Write-protects the frame translations `r`, which were writable,
    /// through userfaultfd; `false` if it cannot (then no page of `r` is
    /// write-protected, or the pmap forgot everything).
    fn protect_wp(&mut self, r: &Range<u64>) -> bool {
        let (off, len) = self.span(r);
        let base = self.region.as_ptr() as usize;
        let Some(wp) = &mut self.wp else {
            return false;
        };
        let gaps = if wp.registered.covers(r.clone()) {
            Vec::new()
        } else {
            wp.registered.gaps(r.clone())
        };
        for gap in gaps {
            let (o, l) = (
                gap.start as usize * self.page,
                (gap.end - gap.start) as usize * self.page,
            );
            if wp.uffd.cover(base + o, l, Mode::WP).is_err() {
                return false;
            }
            // Registration changes the kernel mappings' flags: it may split
            // them where it stops.
            self.unmerged += 2;
            wp.registered.insert(gap);
        }
        if wp.uffd.write_protect(base + off, len).is_err() {
            // The kernel may have protected part of the run: clear it all,
            // since a write-protect bit the pmap does not know of would trap
            // writes forever; failing that, forget everything.
            if wp.uffd.write_unprotect(base + off, len, Wake::No).is_err() {
                self.must_flush("clear write protection");
            }
            return false;
        }
        wp.protected.insert(r.clone());
        true
    }

    /// Whether a mapping of `n` pages from `vpn` to the targets from
    /// `first` on continues a neighbour's (so the kernel merges the two).
    fn merges(&self, vpn: u64, first: Target, n: u64, prot: Prot) -> bool {
        let step = |t: Target, by: i64| match t {
            Target::Frame(f) => Target::Frame(Frame(f.0.wrapping_add(by as u32))),
            Target::Direct { source, page } => Target::Direct {
                source,
                page: page.wrapping_add(by as u64),
            },
        };
        let before = vpn.checked_sub(1).and_then(|v| self.t.get(v));
        let after = self.t.get(vpn + n);
        before == Some((step(first, -1), prot)) || after == Some((step(first, n as i64), prot))
    }
}

impl Pmap for HostPmap {
    fn enter(&mut self, vpn: u64, frame: Frame, prot: Prot) -> Result<(), VmError> {
        let off = vpn as usize * self.page;
        if off >= self.region.len() {
            return Err(VmError::Host(format!("page {vpn} is outside the space")));
        }
        if self.unmerged >= self.limit {
            self.must_flush("forget translations");
        }
        let target = Target::Frame(frame);
        let old = self.t.get(vpn);
        if let Some((_, was)) = old.filter(|&(f, _)| f == target) {
            let protected = self.is_protected(vpn..vpn + 1);
            if !(protected && prot == was | Prot::WRITE) {
                self.unmerged += 2;
                if self.region.protect(off, self.page, prot).is_err() {
                    self.must_flush("change a translation");
                    return self.enter(vpn, frame, prot);
                }
            }
            if protected && !self.unprotect_wp(vpn..vpn + 1) {
                return self.enter(vpn, frame, prot);
            }
        } else {
            if !self.merges(vpn, target, 1, prot) {
                self.unmerged += 1;
            }
            let at = frame.0 as usize * self.page;
            if let Err(e) = self.frames.map_into(&self.region, off, at, self.page, prot) {
                if self.t.is_empty() {
                    return Err(VmError::Host(e.to_string()));
                }
                self.must_flush("enter a translation");
                return self.enter(vpn, frame, prot);
            }
            if let Some(wp) = &mut self.wp {
                wp.forget(vpn..vpn + 1);
            }
        }
        self.t.insert(vpn, target, prot);
        Ok(())
    }

    fn enter_run(&mut self, vpn: u64, first: Frame, n: u64, prot: Prot) -> Result<(), VmError> {
        let (off, len) = (vpn as usize * self.page, n as usize * self.page);
        // One mapping replaces the run when each page has no translation or
        // one to its own frame (an upgrade).
        let same = |k: u64| {
            self.t
                .get(vpn + k)
                .is_none_or(|(f, _)| f == Target::Frame(Frame(first.0 + k as u32)))
        };
        if off + len > self.region.len() || !(0..n).all(same) {
            return (0..n).try_for_each(|k| self.enter(vpn + k, Frame(first.0 + k as u32), prot));
        }
        if self.unmerged >= self.limit {
            self.must_flush("forget translations");
        }
        // Every page already maps its frame: an upgrade, which `mprotect`
        // does in place, keeping the page-table entries a new mapping would
        // drop (each would then fault again).
        let upgrade = (0..n).all(|k| self.t.get(vpn + k).is_some());
        if upgrade {
            let run = vpn..vpn + n;
            // Pages write-protected by userfaultfd for copy on write only
            // need the bit cleared: their kernel mapping allows the write.
            let parts = self
                .wp
                .as_ref()
                .map_or_else(Vec::new, |wp| wp.protected.within(run.clone()));
            let only_wp = parts.len() == 1
                && parts[0] == run
                && (0..n).all(|k| {
                    self.t
                        .get(vpn + k)
                        .is_some_and(|(_, p)| p | Prot::WRITE == prot)
                });
            let mapped = only_wp || {
                self.unmerged += 2;
                self.region.protect(off, len, prot).is_ok()
            };
            if mapped && parts.into_iter().all(|r| self.unprotect_wp(r)) {
                for k in 0..n {
                    self.t
                        .insert(vpn + k, Target::Frame(Frame(first.0 + k as u32)), prot);
                }
                return Ok(());
            }
            if self.t.is_empty() {
                // Forgotten while clearing a write protection: map afresh.
                return self.enter_run(vpn, first, n, prot);
            }
        }
        if !self.merges(vpn, Target::Frame(first), n, prot) {
            self.unmerged += 1;
        }
        let at = first.0 as usize * self.page;
        // A run is entered for pages about to be used (fault-around): fill
        // their page-table entries now rather than fault on each.
        if self
            .frames
            .map_into_with(&self.region, off, at, len, prot, true)
            .is_err()
        {
            // The old mappings may still be there, write-protect bits and
            // all: the pages go one by one, through what the pmap knows.
            return (0..n).try_for_each(|k| self.enter(vpn + k, Frame(first.0 + k as u32), prot));
        }
        // New mappings: neither registered nor write-protected.
        if let Some(wp) = &mut self.wp {
            wp.forget(vpn..vpn + n);
        }
        for k in 0..n {
            self.t
                .insert(vpn + k, Target::Frame(Frame(first.0 + k as u32)), prot);
        }
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
        let (off, len) = (vpn as usize * self.page, n as usize * self.page);
        if off + len > self.region.len() {
            return Err(VmError::Host(format!(
                "pages {vpn}+{n} are outside the space"
            )));
        }
        let prot = prot.without(Prot::WRITE);
        let target = |k: u64| Target::Direct {
            source: src.source,
            page: first + k,
        };
        if self.unmerged >= self.limit {
            self.must_flush("forget translations");
        }
        if !self.merges(vpn, target(0), n, prot) {
            self.unmerged += 1;
        }
        let at = first * self.page as u64;
        if let Err(e) = self.region.map_file(off, len, src.fd, at, prot) {
            // Whatever was there may be gone: forget it, as a pmap may.
            self.remove(vpn..vpn + n);
            return Err(VmError::Host(e.to_string()));
        }
        if let Some(wp) = &mut self.wp {
            wp.forget(vpn..vpn + n);
        }
        for k in 0..n {
            self.t.insert(vpn + k, target(k), prot);
        }
        Ok(true)
    }

    fn remove(&mut self, vpns: Range<u64>) {
        let runs = self.t.remove_range(vpns);
        self.reset_runs(runs);
    }

    fn protect(&mut self, vpns: Range<u64>, prot: Prot) {
        let (changed, removed) = self.t.protect_range(vpns.clone(), prot);
        let flushes = self.flushes;
        self.reset_runs(removed);
        if self.flushes != flushes {
            // Everything is forgotten: `changed` is no longer mapped.
            return;
        }
        let parts = self
            .wp
            .as_ref()
            .map_or_else(Vec::new, |wp| wp.protected.within(vpns));
        if parts.is_empty() {
            return self.protect_runs(changed);
        }
        let wp = self.wp.as_ref().expect("parts come from it");
        if prot.contains(Prot::WRITE) {
            // The mapping may still be written: write-protected pages keep
            // their bit, and their kernel mappings keep write on top of the
            // new protection.
            let mut runs: Vec<ProtRun> = Vec::new();
            for (r, p) in changed {
                runs.extend(wp.protected.gaps(r.clone()).into_iter().map(|g| (g, p)));
                let kept = wp.protected.within(r).into_iter();
                runs.extend(kept.map(|w| (w, p | Prot::WRITE)));
            }
            runs.sort_by_key(|(r, _)| r.start);
            return self.protect_runs(runs);
        }
        // The mapping's own protection changes: a write the translation
        // refuses must now be a protection fault, as it would be without
        // vmprim, not a write-protect fault. So pages write-protected for
        // copy on write get their translation's protection on the kernel
        // mapping, then lose the write-protect bit.
        let mut runs: Vec<ProtRun> = Vec::new();
        for (r, p) in changed {
            runs.extend(wp.protected.gaps(r).into_iter().map(|g| (g, p)));
        }
        for part in &parts {
            for v in part.clone() {
                let (_, p) = self.t.get(v).expect("a write-protected page is translated");
                match runs.last_mut() {
                    Some((r, q)) if r.end == v && *q == p => r.end += 1,
                    _ => runs.push((v..v + 1, p)),
                }
            }
        }
        self.protect_runs(runs);
        for part in parts {
            if self.flushes != flushes || !self.unprotect_wp(part) {
                break;
            }
        }
    }

    fn write_protect(&mut self, vpns: Range<u64>) {
        if self.wp.is_none() {
            return self.protect(vpns, ALL_BUT_WRITE);
        }
        let (changed, _) = self.t.protect_range(vpns, ALL_BUT_WRITE);
        let flushes = self.flushes;
        let mut fallback: Vec<ProtRun> = Vec::new();
        for (r, p) in changed {
            if !self.protect_wp(&r) {
                if self.flushes != flushes {
                    return;
                }
                fallback.push((r, p));
            }
        }
        self.protect_runs(fallback);
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
        pages: u64,
        frames: Option<&Arc<SharedMemory>>,
    ) -> Result<Box<dyn Pmap>, VmError> {
        let frames = frames.ok_or(VmError::Config("a host pmap needs host frames"))?;
        Ok(Box::new(Self::new(pages, frames.clone())?))
    }

    fn host_base(&self) -> Option<usize> {
        Some(self.region.as_ptr() as usize)
    }
}
