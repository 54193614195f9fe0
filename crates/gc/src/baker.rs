//! Baker's incremental copying (1978) with a software read barrier.

use crate::config::{Config, GcError};
use crate::copier::Copier;
use crate::heap::{sealed::Engine, Collector};
use crate::los::{self, Los};
use crate::object::Shape;
use crate::semi::{init, Semi};
use crate::stats::{Log, Stats};
use crate::words;
use core::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use vmprim_prim::page_size;

/// Baker's incremental copying collector with a software read barrier.
///
/// The flip copies only what the roots point to; each allocation chunk
/// then scans [`Config::scan_ratio`] times its size of to-space. The
/// mutator never sees a from-space pointer: every pointer load checks
/// whether the loaded value lies in from-space and, if so, copies the
/// object (or follows its forwarding pointer) and heals the field; while a
/// collection is in progress it also marks a large object it loads. That
/// check on every load is the cost the VM read barrier removes.
///
/// New objects are allocated black at the top of to-space. A flip starts
/// when the free room falls to what the next collection will need for
/// its own allocations (twice the last live size over the scan ratio);
/// if the mutator runs out of room anyway, it finishes the collection in
/// one pause.
///
/// # Examples
/// ```
/// use vmprim_gc::{workload, Baker, Config, Heap};
///
/// let mut heap = Heap::<Baker>::new(&Config::small())?;
/// let check = workload::gcbench(&mut heap, &workload::GcBench::tiny());
/// assert_eq!(check, workload::GcBench::tiny().expected_check());
/// heap.verify()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Baker {
    /// The barrier's from-space, as (start, length): length 0 when no
    /// collection is in progress. First, for the barrier's cache line.
    bar_lo: usize,
    bar_len: usize,
    copier: Copier,
    /// New objects come from `alloc` down to `chunk_lo`.
    alloc: usize,
    chunk_lo: usize,
    /// The Cheney scan pointer of the collection in progress.
    scan: usize,
    /// While collecting: chunks may not go below this (the copies may
    /// need everything under it).
    black_floor: usize,
    /// Free room kept for the next collection's allocations.
    reserve: usize,
    semi: Semi,
    los: Los,
    los_since: usize,
    cfg: Config,
    log: Log,
}

impl Collector for Baker {
    const NAME: &'static str = "baker_sw";
}

impl Baker {
    fn active(&self) -> bool {
        self.bar_len != 0
    }

    fn flip(&mut self, roots: &mut [usize]) {
        let t0 = Instant::now();
        let (from, to) = (self.semi.cur, 1 - self.semi.cur);
        let used = (self.copier.free - self.semi.lo(from)) + (self.semi.hi(from) - self.alloc);
        let c = &mut self.copier;
        c.begin(self.semi.space(from), self.semi.space(to), self.semi.lo(to));
        c.mark_los = true;
        self.black_floor = (self.semi.lo(to) + used).next_multiple_of(page_size());
        c.limit = self.black_floor;
        for r in roots.iter_mut() {
            *r = c.forward(*r);
        }
        self.scan = self.semi.lo(to);
        (self.bar_lo, self.bar_len) = self.semi.space(from);
        self.semi.cur = to;
        self.alloc = self.semi.hi(to);
        self.chunk_lo = self.alloc;
        self.los_since = 0;
        self.log.collections.fetch_add(1, Relaxed);
        self.log.pause(t0);
    }

    /// One increment: scan `budget` bytes, completing the collection if
    /// that reaches the end.
    fn step(&mut self, budget: usize) {
        let t0 = Instant::now();
        if self.copier.cheney(&mut self.scan, budget) {
            self.complete();
        }
        self.log.pause(t0);
    }

    fn complete(&mut self) {
        self.los.sweep();
        self.bar_len = 0;
        let live = self.copier.copied;
        self.copier.limit = self.semi.hi(self.semi.cur);
        self.reserve = (2 * live / self.cfg.scan_ratio)
            .clamp(4 * self.cfg.chunk_bytes, self.semi.half / 2)
            .next_multiple_of(page_size());
        self.log.copied_bytes.fetch_add(live as u64, Relaxed);
    }

    /// Whether a chunk of `need` bytes may be taken below `alloc`.
    fn fits(&self, need: usize) -> bool {
        let floor = if self.active() {
            self.black_floor
        } else {
            self.copier.free + self.reserve
        };
        self.alloc >= floor && self.alloc - floor >= need
    }

    #[cold]
    fn refill(&mut self, need: usize, roots: &mut [usize]) -> Result<(), GcError> {
        let need = need.max(self.cfg.chunk_bytes).next_multiple_of(page_size());
        if self.active() {
            self.step(self.cfg.scan_ratio * self.cfg.chunk_bytes);
        }
        if !self.fits(need) && self.active() {
            self.step(usize::MAX);
        }
        if !self.fits(need) {
            self.flip(roots);
            if !self.fits(need) {
                self.step(usize::MAX);
                let free = self.alloc - self.copier.free;
                if free < need {
                    return Err(GcError::OutOfMemory {
                        requested: need,
                        free,
                    });
                }
            }
        }
        self.chunk_lo = self.alloc - need;
        Ok(())
    }

    fn alloc_large(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        // Large objects advance no increment: past a semispace's worth of
        // them, finish the collection so the unreached ones can go.
        if self.active() && self.los_since > self.semi.half {
            self.step(usize::MAX);
        }
        if !self.active() && self.los_since > self.semi.half {
            self.flip(roots);
        }
        self.los_since += shape.bytes();
        let black = self.active();
        self.los.alloc(shape, black).ok_or(GcError::OutOfMemory {
            requested: shape.bytes(),
            free: 0,
        })
    }
}

impl Engine for Baker {
    fn create(cfg: &Config) -> Result<Self, GcError> {
        let semi = Semi::plain(cfg.heap_bytes)?;
        let mut copier = Copier::new(0);
        copier.free = semi.lo(0);
        copier.limit = semi.hi(0);
        let top = semi.hi(0);
        Ok(Self {
            bar_lo: 0,
            bar_len: 0,
            copier,
            alloc: top,
            chunk_lo: top,
            scan: 0,
            black_floor: 0,
            reserve: (semi.half / 4).next_multiple_of(page_size()),
            semi,
            los: Los::default(),
            los_since: 0,
            cfg: cfg.clone(),
            log: Log::new(cfg.pause_log),
        })
    }

    #[inline]
    fn alloc(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        let bytes = shape.bytes();
        if shape.ptrs == 0 && bytes >= self.cfg.large_bytes {
            return self.alloc_large(shape, roots);
        }
        if self.alloc - self.chunk_lo < bytes {
            self.refill(bytes, roots)?;
        }
        self.alloc -= bytes;
        // SAFETY: inside the chunk the mutator holds, above every copy.
        unsafe { init(self.alloc, shape) };
        Ok(self.alloc)
    }

    #[inline(always)]
    fn load(&mut self, slot: usize) -> usize {
        // SAFETY: `slot` is a pointer field of a live to-space object.
        let v = unsafe { words::get(slot) };
        if v.wrapping_sub(self.bar_lo) < self.bar_len {
            self.heal(slot, v)
        } else {
            if self.bar_len != 0
                && v != 0
                && v.wrapping_sub(self.copier.to_lo) >= self.copier.to_len
            {
                // A large object, loaded from an object the scan may not
                // have reached: the mutator could erase that reference and
                // keep this one only in a root or a black object, which
                // the collection will not scan. Mark it now.
                // SAFETY: a non-null pointer outside both semispaces is a
                // large object (the heap's invariant), alive: just loaded.
                unsafe { los::mark(v) };
            }
            v
        }
    }

    fn collect(&mut self, roots: &mut [usize]) {
        if self.active() {
            self.step(usize::MAX);
        }
        self.flip(roots);
        self.step(usize::MAX);
    }

    fn quiesce(&mut self) {
        if self.active() {
            self.step(usize::MAX);
        }
    }

    fn peek(&self, addr: usize) -> usize {
        // SAFETY: the verifier only peeks at words `holds` accepted.
        unsafe { words::get(addr) }
    }

    fn holds(&self, addr: usize, bytes: usize) -> bool {
        let cur = self.semi.cur;
        let end = addr.saturating_add(bytes);
        (addr >= self.semi.lo(cur) && end <= self.copier.free)
            || (addr >= self.alloc && end <= self.semi.hi(cur))
            || self.los.contains(addr)
    }

    fn stats(&self) -> Stats {
        self.log.snapshot()
    }
}

impl Baker {
    /// The barrier's slow path: `v`, loaded from `slot`, is in from-space.
    #[cold]
    #[inline(never)]
    fn heal(&mut self, slot: usize, v: usize) -> usize {
        let n = self.copier.forward(v);
        // SAFETY: as in `load`.
        unsafe { words::set(slot, n) };
        n
    }
}
