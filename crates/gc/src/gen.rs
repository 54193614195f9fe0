//! Generational collection: a nursery promoted wholesale into a semispace
//! old generation, with old-to-young pointers found by card marking
//! ([`GenCards`]) or by DIRTY ([`GenDirty`]).

use crate::config::{Config, GcError};
use crate::copier::{Copier, CrossMap};
use crate::heap::{sealed::Engine, Collector};
use crate::los::Los;
use crate::object::Shape;
use crate::semi::init;
use crate::stats::{Log, Stats};
use crate::words;
use core::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use vmprim_prim::dirty::{self, DirtyTracker, PageRun};
use vmprim_prim::{page_size, Prot, Region};

mod private {
    /// Seals [`Remember`](super::Remember).
    pub trait Sealed {}
}

/// How a generational collector finds the old objects that may point into
/// the nursery: [`Cards`] or [`DirtyPages`]. Sealed.
pub trait Remember: private::Sealed + Sized + core::fmt::Debug {
    /// The collector's name in reports.
    const NAME: &'static str;

    #[doc(hidden)]
    fn create(
        heap: &Arc<Region>,
        halves: [(usize, usize); 2],
        cfg: &Config,
    ) -> Result<Self, GcError>;

    /// The write barrier: `slot` (a pointer field) was just stored to.
    #[doc(hidden)]
    fn record(&mut self, slot: usize);

    /// Appends to `out` the address ranges of old half `half`, within
    /// `lo..hi`, written since the last `take` or `clean` of that half.
    #[doc(hidden)]
    fn take(&mut self, half: usize, lo: usize, hi: usize, out: &mut Vec<(usize, usize)>);

    /// Forgets the writes to old half `half` so far (the collector's own).
    #[doc(hidden)]
    fn clean(&mut self, half: usize);
}

/// Card marking: every pointer store marks the 512-byte card holding the
/// field, unconditionally (one shift and one byte store, Hölzle's
/// barrier); a minor collection scans the marked cards of the old
/// generation.
#[derive(Debug)]
pub struct Cards {
    base: usize,
    table: Vec<u8>,
}

const CARD_SHIFT: u32 = 9;

impl private::Sealed for Cards {}

impl Remember for Cards {
    const NAME: &'static str = "gen_cards";

    fn create(heap: &Arc<Region>, _: [(usize, usize); 2], _: &Config) -> Result<Self, GcError> {
        Ok(Self {
            base: heap.as_ptr() as usize,
            table: vec![0; heap.len() >> CARD_SHIFT],
        })
    }

    #[inline(always)]
    fn record(&mut self, slot: usize) {
        let i = slot.wrapping_sub(self.base) >> CARD_SHIFT;
        if let Some(c) = self.table.get_mut(i) {
            *c = 1;
        }
    }

    fn take(&mut self, _: usize, lo: usize, hi: usize, out: &mut Vec<(usize, usize)>) {
        let first = (lo - self.base) >> CARD_SHIFT;
        let last = (hi - self.base).div_ceil(1 << CARD_SHIFT);
        let mut i = first;
        while i < last {
            // Skip clean cards eight at a time.
            if i.is_multiple_of(8) && i + 8 <= last {
                let w = u64::from_ne_bytes(self.table[i..i + 8].try_into().unwrap_or([0; 8]));
                if w == 0 {
                    i += 8;
                    continue;
                }
            }
            if self.table[i] != 0 {
                let start = i;
                while i < last && self.table[i] != 0 {
                    self.table[i] = 0;
                    i += 1;
                }
                let a = self.base + (start << CARD_SHIFT);
                let b = (self.base + (i << CARD_SHIFT)).min(hi);
                out.push((a.max(lo), b));
            } else {
                i += 1;
            }
        }
    }

    fn clean(&mut self, _: usize) {}
}

/// DIRTY: no write barrier at all. Each old half is tracked with the
/// primitives layer's best (or chosen, [`Config::dirty`]) backend; a minor
/// collection scans the pages written since the previous one.
#[derive(Debug)]
pub struct DirtyPages {
    trackers: [Box<dyn DirtyTracker>; 2],
    starts: [usize; 2],
    runs: Vec<PageRun>,
}

impl DirtyPages {
    /// The backend in use.
    pub fn backend(&self) -> dirty::Backend {
        self.trackers[0].backend()
    }
}

impl private::Sealed for DirtyPages {}

impl Remember for DirtyPages {
    const NAME: &'static str = "gen_dirty";

    fn create(
        heap: &Arc<Region>,
        halves: [(usize, usize); 2],
        cfg: &Config,
    ) -> Result<Self, GcError> {
        let base = heap.as_ptr() as usize;
        let t0 = dirty::track(heap, halves[0].0 - base, halves[0].1, cfg.dirty)?;
        let t1 = dirty::track(heap, halves[1].0 - base, halves[1].1, cfg.dirty)?;
        Ok(Self {
            trackers: [t0, t1],
            starts: [halves[0].0, halves[1].0],
            runs: Vec::new(),
        })
    }

    #[inline(always)]
    fn record(&mut self, _: usize) {}

    fn take(&mut self, half: usize, lo: usize, hi: usize, out: &mut Vec<(usize, usize)>) {
        if self.trackers[half].collect_into(&mut self.runs).is_err() {
            // A tracker that cannot report has lost nothing yet: scan the
            // whole generation, which is always correct.
            out.push((lo, hi));
            return;
        }
        let p = page_size();
        for r in &self.runs {
            let a = self.starts[half] + r.first * p;
            let b = a + r.count * p;
            let (a, b) = (a.max(lo), b.min(hi));
            if a < b {
                out.push((a, b));
            }
        }
    }

    fn clean(&mut self, half: usize) {
        let _ = self.trackers[half].collect_into(&mut self.runs);
    }
}

/// A generational collector: objects are born in a nursery; a minor
/// collection copies the nursery's survivors (reached from the roots or
/// from old objects that `R` says were written) to the end of the old
/// generation, all of them at once. When the old generation fills, a major
/// collection copies everything live into its other half.
///
/// # Examples
/// ```
/// use vmprim_gc::{workload, Config, GenCards, GenDirty, Heap};
///
/// let mut cards = Heap::<GenCards>::new(&Config::small())?;
/// let mut dirty = Heap::<GenDirty>::new(&Config::small())?;
/// let m = workload::Mutate::tiny();
/// assert_eq!(workload::mutate(&mut cards, &m), m.expected_check());
/// assert_eq!(workload::mutate(&mut dirty, &m), m.expected_check());
/// assert!(dirty.stats().minor_collections > 0);
/// # Ok::<(), vmprim_gc::GcError>(())
/// ```
#[derive(Debug)]
pub struct Gen<R: Remember> {
    /// The nursery: allocation bumps `bump` up to `nursery_hi`.
    bump: usize,
    nursery_hi: usize,
    remember: R,
    nursery_lo: usize,
    /// Old halves: `old[i]..old[i] + old_len`; the current one is `cur`.
    old: [usize; 2],
    old_len: usize,
    cur: usize,
    /// End of the objects in the current old half.
    old_free: usize,
    /// Most bytes the old generation may use before a major collection.
    old_budget: usize,
    cross: [Option<CrossMap>; 2],
    copier: Copier,
    ranges: Vec<(usize, usize)>,
    los: Los,
    los_since: usize,
    large: usize,
    log: Log,
    _memory: Arc<Region>,
}

/// Generational with card marking.
pub type GenCards = Gen<Cards>;

/// Generational with DIRTY.
pub type GenDirty = Gen<DirtyPages>;

impl<R: Remember> Collector for Gen<R> {
    const NAME: &'static str = R::NAME;
}

impl<R: Remember> Gen<R> {
    /// How old-to-young pointers are found.
    pub fn remember(&self) -> &R {
        &self.remember
    }

    fn old_used(&self) -> usize {
        self.old_free - self.old[self.cur]
    }

    fn minor(&mut self, roots: &mut [usize]) {
        if self.old_used() + (self.bump - self.nursery_lo) > self.old_budget
            || self.los_since > self.old_budget
        {
            return self.major(roots);
        }
        let t0 = Instant::now();
        let cur = self.cur;
        let (old_lo, before) = (self.old[cur], self.old_free);
        self.ranges.clear();
        self.remember.take(cur, old_lo, before, &mut self.ranges);
        let c = &mut self.copier;
        c.begin(
            (self.nursery_lo, self.nursery_hi - self.nursery_lo),
            (old_lo, self.old_len),
            before,
        );
        c.mark_los = false;
        c.cross = self.cross[cur].take();
        for r in roots.iter_mut() {
            *r = c.forward(*r);
        }
        for &(lo, hi) in &self.ranges {
            c.scan_slots(lo, hi);
        }
        let mut scan = before;
        c.cheney(&mut scan, usize::MAX);
        self.cross[cur] = c.cross.take();
        self.old_free = c.free;
        self.bump = self.nursery_lo;
        self.remember.clean(cur);
        self.log.collections.fetch_add(1, Relaxed);
        self.log.minor_collections.fetch_add(1, Relaxed);
        self.log.copied_bytes.fetch_add(c.copied as u64, Relaxed);
        self.log.pause(t0);
    }

    fn major(&mut self, roots: &mut [usize]) {
        let t0 = Instant::now();
        let (from, to) = (self.cur, 1 - self.cur);
        // The old half being left and the nursery are adjacent: one range.
        let lo = self.old[from].min(self.nursery_lo);
        let len = self.old_len + (self.nursery_hi - self.nursery_lo);
        let c = &mut self.copier;
        c.begin((lo, len), (self.old[to], self.old_len), self.old[to]);
        c.mark_los = true;
        let mut cross = self.cross[to].take().expect("cross map");
        cross.reset();
        c.cross = Some(cross);
        for r in roots.iter_mut() {
            *r = c.forward(*r);
        }
        let mut scan = self.old[to];
        c.cheney(&mut scan, usize::MAX);
        self.cross[to] = c.cross.take();
        self.los.sweep();
        self.los_since = 0;
        self.cur = to;
        self.old_free = c.free;
        self.bump = self.nursery_lo;
        self.remember.clean(0);
        self.remember.clean(1);
        self.log.collections.fetch_add(1, Relaxed);
        self.log.copied_bytes.fetch_add(c.copied as u64, Relaxed);
        self.log.pause(t0);
    }

    /// An object too big for the nursery goes straight to the old
    /// generation, its fields null.
    fn alloc_old(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        let bytes = shape.bytes();
        if self.old_used() + bytes > self.old_budget {
            self.major(roots);
            if self.old_used() + bytes > self.old_budget {
                return Err(GcError::OutOfMemory {
                    requested: bytes,
                    free: self.old_budget.saturating_sub(self.old_used()),
                });
            }
        }
        let o = self.old_free;
        // SAFETY: free memory at the end of the current old half.
        unsafe { init(o, shape) };
        self.old_free += bytes;
        if let Some(c) = &mut self.cross[self.cur] {
            c.note(o, bytes);
        }
        Ok(o)
    }
}

impl<R: Remember> Engine for Gen<R> {
    fn create(cfg: &Config) -> Result<Self, GcError> {
        // [old 0 | nursery | old 1]: a major collection evacuates the
        // current old half and the nursery as one range. Each old half has
        // room for a full old generation plus a full nursery's promotion.
        let (n, budget) = (cfg.nursery_bytes, cfg.heap_bytes);
        let old_len = budget + n;
        let memory = Arc::new(Region::new(2 * old_len + n, Prot::READ_WRITE)?);
        let base = memory.as_ptr() as usize;
        let old = [base, base + old_len + n];
        let remember = R::create(&memory, [(old[0], old_len), (old[1], old_len)], cfg)?;
        Ok(Self {
            bump: base + old_len,
            nursery_hi: base + old_len + n,
            remember,
            nursery_lo: base + old_len,
            old,
            old_len,
            cur: 0,
            old_free: old[0],
            old_budget: budget,
            cross: [
                Some(CrossMap::new(old[0], old_len)),
                Some(CrossMap::new(old[1], old_len)),
            ],
            copier: Copier::new(0),
            ranges: Vec::new(),
            los: Los::default(),
            los_since: 0,
            large: cfg.large_bytes,
            log: Log::new(cfg.pause_log),
            _memory: memory,
        })
    }

    #[inline]
    fn alloc(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        let bytes = shape.bytes();
        if shape.ptrs == 0 && bytes >= self.large {
            if self.los_since > self.old_budget {
                self.major(roots);
            }
            self.los_since += bytes;
            return self.los.alloc(shape, false).ok_or(GcError::OutOfMemory {
                requested: bytes,
                free: 0,
            });
        }
        if self.nursery_hi - self.bump < bytes {
            if bytes > (self.nursery_hi - self.nursery_lo) / 2 {
                return self.alloc_old(shape, roots);
            }
            self.minor(roots);
            if self.old_used() > self.old_budget {
                // Even a major collection left more live data than the old
                // generation may hold: another would not fit its half.
                return Err(GcError::OutOfMemory {
                    requested: bytes,
                    free: 0,
                });
            }
        }
        let o = self.bump;
        self.bump += bytes;
        // SAFETY: free nursery memory.
        unsafe { init(o, shape) };
        Ok(o)
    }

    #[inline(always)]
    fn store(&mut self, slot: usize, value: usize) {
        // SAFETY: a pointer field of a live object.
        unsafe { words::set(slot, value) };
        self.remember.record(slot);
    }

    fn collect(&mut self, roots: &mut [usize]) {
        self.major(roots);
    }

    fn quiesce(&mut self) {}

    fn peek(&self, addr: usize) -> usize {
        // SAFETY: the verifier only peeks at words `holds` accepted.
        unsafe { words::get(addr) }
    }

    fn holds(&self, addr: usize, bytes: usize) -> bool {
        let end = addr.saturating_add(bytes);
        (addr >= self.nursery_lo && end <= self.bump)
            || (addr >= self.old[self.cur] && end <= self.old_free)
            || self.los.contains(addr)
    }

    fn stats(&self) -> Stats {
        self.log.snapshot()
    }
}
