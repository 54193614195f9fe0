//! Stop-the-world semispace copying (Cheney 1970): the baseline.

use crate::config::{Config, GcError};
use crate::copier::Copier;
use crate::heap::{sealed::Engine, Collector};
use crate::los::Los;
use crate::object::Shape;
use crate::semi::{init, Semi};
use crate::stats::{Log, Stats};
use crate::words;
use core::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Stop-the-world copying: when the semispace is full, stop, copy
/// everything reachable to the other one with Cheney's breadth-first scan,
/// and go on. No barriers. New objects are taken from the top of the
/// semispace down, copies fill it from the bottom up.
///
/// # Examples
/// ```
/// use vmprim_gc::{workload, Config, Heap, StwCopy};
///
/// let mut heap = Heap::<StwCopy>::new(&Config::small())?;
/// let check = workload::gcbench(&mut heap, &workload::GcBench::tiny());
/// assert_eq!(check, workload::GcBench::tiny().expected_check());
/// assert!(heap.stats().collections > 0);
/// # Ok::<(), vmprim_gc::GcError>(())
/// ```
#[derive(Debug)]
pub struct StwCopy {
    semi: Semi,
    copier: Copier,
    los: Los,
    los_since: usize,
    /// Allocation takes memory from `alloc` down to `floor` (the end of the
    /// copies).
    alloc: usize,
    floor: usize,
    large: usize,
    log: Log,
}

impl Collector for StwCopy {
    const NAME: &'static str = "stw_copy";
}

impl StwCopy {
    fn alloc_large(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        if self.los_since > self.semi.half {
            self.collect(roots);
        }
        self.los_since += shape.bytes();
        self.los.alloc(shape, false).ok_or(GcError::OutOfMemory {
            requested: shape.bytes(),
            free: 0,
        })
    }
}

impl Engine for StwCopy {
    fn create(cfg: &Config) -> Result<Self, GcError> {
        let semi = Semi::plain(cfg.heap_bytes)?;
        let (alloc, floor) = (semi.hi(0), semi.lo(0));
        Ok(Self {
            copier: Copier::new(0),
            semi,
            los: Los::default(),
            los_since: 0,
            alloc,
            floor,
            large: cfg.large_bytes,
            log: Log::new(cfg.pause_log),
        })
    }

    #[inline]
    fn alloc(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        let bytes = shape.bytes();
        if shape.ptrs == 0 && bytes >= self.large {
            return self.alloc_large(shape, roots);
        }
        if self.alloc - self.floor < bytes {
            self.collect(roots);
            if self.alloc - self.floor < bytes {
                return Err(GcError::OutOfMemory {
                    requested: bytes,
                    free: self.alloc - self.floor,
                });
            }
        }
        self.alloc -= bytes;
        // SAFETY: `alloc..alloc + bytes` lies in the free part of the
        // current semispace.
        unsafe { init(self.alloc, shape) };
        Ok(self.alloc)
    }

    fn collect(&mut self, roots: &mut [usize]) {
        let t0 = Instant::now();
        let (from, to) = (self.semi.cur, 1 - self.semi.cur);
        let c = &mut self.copier;
        c.begin(self.semi.space(from), self.semi.space(to), self.semi.lo(to));
        c.mark_los = true;
        for r in roots.iter_mut() {
            *r = c.forward(*r);
        }
        let mut scan = self.semi.lo(to);
        c.cheney(&mut scan, usize::MAX);
        self.los.sweep();
        self.los_since = 0;
        self.semi.cur = to;
        self.floor = c.free;
        self.alloc = self.semi.hi(to);
        self.log.collections.fetch_add(1, Relaxed);
        self.log.copied_bytes.fetch_add(c.copied as u64, Relaxed);
        self.log.pause(t0);
    }

    fn quiesce(&mut self) {}

    fn peek(&self, addr: usize) -> usize {
        // SAFETY: the verifier only peeks at words `holds` accepted.
        unsafe { words::get(addr) }
    }

    fn holds(&self, addr: usize, bytes: usize) -> bool {
        let cur = self.semi.cur;
        let end = addr.saturating_add(bytes);
        (addr >= self.semi.lo(cur) && end <= self.floor)
            || (addr >= self.alloc && end <= self.semi.hi(cur))
            || self.los.contains(addr)
    }

    fn stats(&self) -> Stats {
        self.log.snapshot()
    }
}
