//! Appel–Ellis–Li copying with the VM read barrier, incremental
//! ([`VmBarrier`]) and concurrent ([`VmConcurrent`]).
//!
//! At the flip the roots' objects are copied and the pages that receive
//! copies are protected in the mutator's view (PROTN). A mutator touching
//! such a page traps (TRAP): the handler scans that page alone, forwarding
//! its pointer fields, and unprotects it (UNPROT), so the mutator only ever
//! sees to-space pointers. The rest of to-space is scanned page by page in
//! address order, by allocation increments or by a collector thread, and
//! each run of scanned pages is unprotected with one call.
//!
//! The concurrent collector's heap is shared memory mapped twice (MAP2):
//! its thread reads and writes through a view that is never protected,
//! while the mutator runs. The incremental collector needs no second view:
//! all its work runs on the mutator's thread (in an allocation refill or in
//! the trap handler), so it unprotects the pages it is about to scan and
//! the page copies land on, and protects again whatever is still unscanned
//! before the mutator runs on. Its heap is plain anonymous memory, which
//! costs less to fault in than shared memory.
//!
//! Which page a copy lands on is decided under one lock, shared by the
//! handler, the scanner and the mutator's chunk refills; copies that land
//! on a page a trap has opened are scanned before the lock is released, so
//! no object is readable unscanned. See docs/decisions/0004.

use crate::config::{Config, GcError};
use crate::copier::{Copier, CrossMap, Guard};
use crate::heap::{sealed::Engine, Collector};
use crate::los::Los;
use crate::object::{ptr_offset, Shape, WORD};
use crate::semi::{init, Semi};
use crate::stats::{Log, Stats};
use crate::words;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use vmprim_prim::trap::{self, Cause, Fault, Outcome, Registration};
use vmprim_prim::{page_size, Prot};

/// A ticket lock usable from a signal handler: no allocation, no futex
/// wait that could deadlock with the interrupted thread (which never holds
/// it while touching protected memory). Tickets make it fair: the collector
/// thread, which takes it again as soon as it lets go, cannot starve a
/// trapping mutator (an unfair lock let it wait 20 ms).
struct SpinLock<T> {
    next: AtomicU32,
    serving: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

struct Guarded<'a, T>(&'a SpinLock<T>);

impl<T> SpinLock<T> {
    fn new(value: T) -> Self {
        Self {
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    fn lock(&self) -> Guarded<'_, T> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut spins = 0u32;
        while self.serving.load(Ordering::Acquire) != ticket {
            spins += 1;
            if spins < 1 << 14 {
                core::hint::spin_loop();
            } else {
                // A holder sharing our CPU may not get it back from
                // sched_yield for a whole time slice (3 ms measured): sleep,
                // which certainly lets it run. nanosleep is
                // async-signal-safe, and std's sleep allocates nothing.
                std::thread::sleep(core::time::Duration::from_micros(5));
            }
        }
        Guarded(self)
    }
}

impl<T> core::ops::Deref for Guarded<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.0.value.get() }
    }
}

impl<T> core::ops::DerefMut for Guarded<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock, exclusively.
        unsafe { &mut *self.0.value.get() }
    }
}

impl<T> Drop for Guarded<'_, T> {
    fn drop(&mut self) {
        self.0.serving.fetch_add(1, Ordering::Release);
    }
}

impl<T> core::fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SpinLock")
    }
}

/// The collection state, under the lock.
#[derive(Debug)]
struct State {
    copier: Copier,
    /// The cross maps of the two semispaces (one lent to the copier).
    spare_cross: Option<CrossMap>,
    active: bool,
    /// Which semispace is current (to-space while collecting).
    cur: usize,
    /// Pages of to-space scanned by a trap (bit per page).
    scanned: Vec<u64>,
    /// How many bits of `scanned` are set: while none is, Cheney's scan
    /// need not look at them.
    trapped: usize,
    /// Cheney's scan pointer: every object below it is scanned.
    scan: usize,
    /// Within the object at `scan`, the fields below this are scanned (0:
    /// none yet).
    scan_at: usize,
    /// Pages below this are open to the mutator (scanned, and full).
    opened: usize,
    /// Single view: to-space pages `opened..prot_hi` are protected in the
    /// mutator's view, except the ones a trap scanned and the ones exposed
    /// below; pages from `prot_hi` on are writable (fresh, or holding copies
    /// not yet sealed). With two views the copier's guard keeps this bound.
    prot_hi: usize,
    /// Single view: the collector itself is working on `opened..win_hi`,
    /// unprotected until the lock is released.
    win_hi: usize,
    /// Single view: another page exposed for the same time (the page that
    /// holds the header of the first object overlapping a trapped page).
    exposed: Option<usize>,
    /// The page holding the copy frontier, if a trap opened it before it
    /// was full: its end, and how far its objects are scanned. Copies that
    /// land on it are scanned (drained) before the lock is released.
    partial: Option<usize>,
    pscan: usize,
    /// While collecting: chunks may not go below this.
    black_floor: usize,
    /// Single view: bytes of to-space below the black floor, beyond what
    /// the copies can need, still free for padding the copy frontier's
    /// page (see `pad_frontier`).
    pad_left: usize,
    /// The mutator's allocation pointer as of its last refill: the bottom of
    /// the black objects.
    alloc: usize,
    /// Free room kept for the next collection's allocations.
    reserve: usize,
    los: Los,
    los_since: usize,
}

#[derive(Debug)]
struct Shared {
    state: SpinLock<State>,
    log: Log,
    semi: Semi,
    /// Whether the collector works through the mutator's own (only) view:
    /// it unprotects what it touches and protects it again before it lets
    /// the lock go. Otherwise it uses its own view (MAP2), never protected.
    single: bool,
    page: usize,
    /// Concurrent mode: flips counted, for the collector thread to wait on.
    work: Mutex<u64>,
    wake: Condvar,
    shutdown: AtomicBool,
}

impl Shared {
    /// Tells the collector thread a collection has begun.
    fn wake_collector(&self) {
        *self.work.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.wake.notify_one();
    }
}

enum Trapped {
    Scanned,
    Stale,
    Foreign,
}

impl State {
    fn is_scanned(&self, i: usize) -> bool {
        self.scanned[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_scanned(&mut self, i: usize) {
        self.scanned[i / 64] |= 1 << (i % 64);
        self.trapped += 1;
    }

    /// Sets `lo..hi` of the mutator's view to `prot`. Async-signal-safe.
    fn protect(sh: &Shared, lo: usize, hi: usize, prot: Prot) {
        if hi <= lo {
            return;
        }
        if sh.semi.protect(lo, hi - lo, prot).is_err() {
            // The barrier can be neither lifted nor kept: the mutator could
            // never proceed, or would see unscanned objects. (mprotect fails
            // only without memory for VMAs.)
            std::process::abort();
        }
        sh.log.protect_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Unprotects `lo..hi` of the mutator's view. Async-signal-safe.
    fn open(sh: &Shared, lo: usize, hi: usize) {
        Self::protect(sh, lo, hi, Prot::READ_WRITE);
    }

    /// Protects the pages of `lo..hi` no trap has scanned, a run per call.
    fn close_unscanned(&self, sh: &Shared, lo: usize, hi: usize) {
        if self.trapped == 0 {
            Self::protect(sh, lo, hi, Prot::NONE);
            return;
        }
        let to_lo = sh.semi.lo(self.cur);
        let mut run = lo;
        let mut at = lo;
        while at < hi {
            if self.is_scanned((at - to_lo) / sh.page) {
                Self::protect(sh, run, at, Prot::NONE);
                run = at + sh.page;
            }
            at += sh.page;
        }
        Self::protect(sh, run, hi, Prot::NONE);
    }

    /// The end of the protected part of to-space.
    fn prot_hi(&self) -> usize {
        match &self.copier.guard {
            Some(g) => g.prot_hi,
            None => self.prot_hi,
        }
    }

    /// Single view, before the collector copies or scans: unprotects the
    /// copy frontier's page, which holds unscanned copies and receives the
    /// next ones, and the window `opened..stop` the scan will work in (one
    /// call when they meet). Async-signal-safe.
    fn unseal(&mut self, sh: &Shared, stop: usize) {
        if !sh.single || !self.active {
            return;
        }
        self.win_hi = self.opened;
        let f = self.copier.free & !(sh.page - 1);
        let to_lo = sh.semi.lo(self.cur);
        if f >= self.opened && f < self.prot_hi {
            if stop >= f {
                Self::open(sh, self.opened, f + sh.page);
                self.win_hi = f;
            } else if !self.is_scanned((f - to_lo) / sh.page) {
                Self::open(sh, f, f + sh.page);
            }
            self.prot_hi = f;
        }
        // `stop` is a page boundary (or the end of memory).
        let hi = stop.min(self.prot_hi);
        if hi > self.win_hi {
            Self::open(sh, self.win_hi, hi);
            self.win_hi = hi;
        }
    }

    /// Single view: fills the rest of the copy frontier's page with an
    /// object without pointer fields, so the next copies land on a fresh
    /// page above `prot_hi`, writable, and the next increment need not
    /// unprotect the frontier's page again: one `mprotect` call saved per
    /// increment, for under a page of to-space (taken from `pad_left`).
    fn pad_frontier(&mut self, sh: &Shared) {
        let free = self.copier.free;
        let end = free.next_multiple_of(sh.page);
        let gap = end - free;
        if gap == 0 || gap > self.pad_left || end > self.copier.limit {
            return;
        }
        let filler = Shape::new(0, (gap / WORD - 1) as u32);
        // SAFETY: `free..end` is to-space above every copy and below the
        // copier's limit, on the frontier's page, which is writable while
        // the collector holds the lock: above `prot_hi`, or opened by
        // `unseal` or by a trap. Only the header matters: the filler has
        // no pointer fields, and nothing points to it.
        unsafe { words::set(free.wrapping_add(self.copier.delta), filler.header()) };
        self.copier.free = end;
        self.pad_left -= gap;
        // A trap may have opened this page: its objects are scanned (the
        // filler has nothing to scan) before anyone can reach them.
        self.drain();
    }

    /// Single view, before the lock is released: protects again what the
    /// collector exposed and has not scanned, and the pages that received
    /// copies. Async-signal-safe.
    fn seal(&mut self, sh: &Shared) {
        if !sh.single || !self.active {
            return;
        }
        self.pad_frontier(sh);
        let lo = self.opened;
        let end = self.copier.free.next_multiple_of(sh.page);
        if self.win_hi >= self.prot_hi && self.win_hi > lo {
            // The window reached the frontier: one range to close.
            self.close_unscanned(sh, lo, end.max(self.win_hi));
            self.win_hi = lo;
            self.prot_hi = self.prot_hi.max(end);
        }
        if self.win_hi > lo {
            self.close_unscanned(sh, lo, self.win_hi.min(self.prot_hi));
        }
        self.win_hi = lo;
        if let Some(p) = self.exposed.take() {
            if p >= lo && p < self.prot_hi {
                self.close_unscanned(sh, p, p + sh.page);
            }
        }
        let from = self.prot_hi.max(lo);
        if end > from {
            self.close_unscanned(sh, from, end);
        }
        self.prot_hi = self.prot_hi.max(end).max(lo);
    }

    /// The trap: the mutator touched `page`. Async-signal-safe.
    fn trap(&mut self, sh: &Shared, page: usize) -> Trapped {
        let to_lo = sh.semi.lo(self.cur);
        let prot_hi = self.prot_hi();
        if !self.active || page < to_lo || page >= prot_hi {
            return Trapped::Stale; // unprotected since the fault was raised
        }
        let i = (page - to_lo) / sh.page;
        if self.is_scanned(i) {
            return Trapped::Stale;
        }
        if page < self.opened {
            return Trapped::Stale;
        }
        if page >= self.copier.free {
            // Protected but holding no object: the mutator has no pointer
            // here, so this access is not the barrier's.
            return Trapped::Foreign;
        }
        let end = page + sh.page;
        self.unseal(sh, self.opened);
        if sh.single {
            // The page itself, for good (UNPROT before the scan: nobody
            // else runs), and the header of the object reaching into it.
            Self::open(sh, page, end);
            if let Some(first) = self.copier.cross.as_ref().and_then(|c| c.first(page)) {
                let head = first & !(sh.page - 1);
                if head < page && head >= self.opened && head < self.prot_hi() {
                    let i = (head - to_lo) / sh.page;
                    if !self.is_scanned(i) {
                        Self::open(sh, head, head + sh.page);
                        self.exposed = Some(head);
                    }
                }
            }
        }
        self.drain();
        self.copier.scan_slots(page, end);
        if self.copier.free < end {
            // The copy frontier's page: open it scanned up to the frontier,
            // and scan what lands on it later before anyone can reach it.
            self.partial = Some(end);
            self.pscan = self.copier.free;
        }
        self.drain();
        self.set_scanned(i);
        if sh.single {
            self.seal(sh);
        } else {
            Self::open(sh, page, end);
        }
        Trapped::Scanned
    }

    /// Scans the objects copied onto the open frontier page since it was
    /// opened (and what they copy there in turn).
    fn drain(&mut self) {
        if let Some(end) = self.partial {
            while self.pscan < self.copier.free && self.pscan < end {
                self.pscan += self.copier.scan_object(self.pscan);
            }
            if self.pscan >= end {
                self.partial = None;
            }
        }
    }

    /// Whether every page `obj..obj + bytes` touches was scanned by a trap.
    #[inline]
    fn trapped_over(&self, sh: &Shared, obj: usize, bytes: usize) -> bool {
        if self.trapped == 0 {
            return false;
        }
        let to_lo = sh.semi.lo(self.cur);
        let shift = sh.page.trailing_zeros();
        let (a, b) = ((obj - to_lo) >> shift, (obj + bytes - 1 - to_lo) >> shift);
        (a..=b).all(|i| self.is_scanned(i))
    }

    /// Where Cheney's fast scan from `scan` must stop short of `stop`: at
    /// the first page a trap scanned (its objects must not be scanned
    /// twice, nor those overlapping it be skipped). `scan` itself when its
    /// own page was trapped.
    fn untrapped_until(&self, sh: &Shared, stop: usize) -> usize {
        if self.trapped == 0 {
            return stop;
        }
        let to_lo = sh.semi.lo(self.cur);
        let shift = sh.page.trailing_zeros();
        let first = (self.scan - to_lo) >> shift;
        // Pages up to the one holding `stop`'s last byte (or the end of
        // the space) are the only ones this scan may reach.
        let last = ((stop.min(sh.semi.hi(self.cur)) - 1 - to_lo) >> shift).max(first);
        let mut w = first / 64;
        let mut bits = self.scanned[w] & (!0u64 << (first % 64));
        while bits == 0 {
            w += 1;
            if w * 64 > last {
                return stop;
            }
            bits = self.scanned[w];
        }
        let page = w * 64 + bits.trailing_zeros() as usize;
        if page > last {
            stop
        } else {
            (to_lo + (page << shift)).min(stop)
        }
    }

    /// Cheney's scan over whole objects, while each object's fields end by
    /// `stop` (no trapped page lies below it).
    #[inline]
    fn cheney(&mut self, stop: usize) {
        let d = self.copier.delta;
        while self.scan < self.copier.free && self.scan < stop {
            let obj = self.scan;
            // SAFETY: a to-space object below the frontier, read through
            // the collector's view (or inside the single view's window:
            // `obj` is below `stop`).
            let h = unsafe { words::get(obj.wrapping_add(d)) };
            let Some(shape) = Shape::from_header(h) else {
                std::process::abort(); // a to-space object is never forwarded
            };
            if obj + ptr_offset(shape.ptrs as usize) > stop {
                break;
            }
            self.copier.scan_shape(obj, shape);
            self.scan = obj + shape.bytes();
        }
    }

    /// Cheney's scan, in address order, over the next `budget` bytes of
    /// to-space (rounded up to a page; a big object is scanned a slice at a
    /// time, so neither a trapping mutator nor an increment waits for all
    /// of it); opens the pages it has passed. Objects wholly on pages a
    /// trap already scanned are skipped. Returns whether the scan reached
    /// the copy frontier (the tracing is done).
    fn scan_pages(&mut self, sh: &Shared, budget: usize) -> bool {
        let stop = self
            .scan
            .max(self.scan_at)
            .saturating_add(budget)
            .checked_next_multiple_of(sh.page)
            .unwrap_or(usize::MAX);
        self.unseal(sh, stop);
        loop {
            // The objects copied onto a page a trap opened are scanned by
            // `drain`, which may copy more for this scan: stop only when
            // neither has anything left.
            self.drain();
            if self.scan >= self.copier.free || self.scan.max(self.scan_at) >= stop {
                break;
            }
            if self.scan_at == 0 {
                let limit = self.untrapped_until(sh, stop);
                let at = self.scan;
                self.cheney(limit);
                if self.scan != at {
                    continue;
                }
            }
            // An object the fast loop left (its fields run past `stop` or
            // into a trapped page), or one on a trapped page.
            let obj = self.scan;
            // SAFETY: a to-space object below the frontier, read through
            // the collector's view (or inside the single view's window).
            let h = unsafe { words::get(obj.wrapping_add(self.copier.delta)) };
            let Some(shape) = Shape::from_header(h) else {
                std::process::abort(); // a to-space object is never forwarded
            };
            let bytes = shape.bytes();
            if self.trapped_over(sh, obj, bytes) {
                (self.scan, self.scan_at) = (obj + bytes, 0);
                continue;
            }
            let slots_end = obj + ptr_offset(shape.ptrs as usize);
            let from = self.scan_at.max(obj);
            let to = slots_end.min(stop);
            if to > from {
                self.copier.scan_fields(obj, from, to);
            }
            if to >= slots_end {
                (self.scan, self.scan_at) = (obj + bytes, 0);
            } else {
                self.scan_at = to;
            }
        }
        let done = self.scan >= self.copier.free;
        let upto = if done {
            self.copier.free.next_multiple_of(sh.page)
        } else {
            // Below the object being scanned, and below the fields of it
            // scanned so far, every page is scanned.
            self.scan.max(self.scan_at) & !(sh.page - 1)
        };
        if upto > self.opened {
            if sh.single {
                // The window holds what the scan passed, but for the tail
                // of an object without pointer fields past `stop`.
                let hi = upto.min(self.prot_hi);
                if hi > self.win_hi {
                    Self::open(sh, self.win_hi.max(self.opened), hi);
                    self.win_hi = hi;
                }
            } else {
                Self::open(sh, self.opened, upto);
            }
            self.opened = upto;
        }
        self.seal(sh);
        done
    }

    /// Ends the collection: unprotects the pages protected ahead of the
    /// copies, frees unreached large objects.
    fn complete(&mut self, sh: &Shared, scale: usize) {
        Self::open(sh, self.opened, self.prot_hi());
        self.los.sweep();
        self.active = false;
        let to_lo = sh.semi.lo(self.cur);
        let live = self.copier.copied;
        let pages = (self.copier.free - to_lo).div_ceil(sh.page);
        sh.log
            .to_space_pages
            .fetch_add(pages as u64, Ordering::Relaxed);
        sh.log
            .copied_bytes
            .fetch_add(live as u64, Ordering::Relaxed);
        if let Some(g) = &mut self.copier.guard {
            let calls = core::mem::take(&mut g.calls);
            sh.log.protect_calls.fetch_add(calls, Ordering::Relaxed);
        }
        self.copier.limit = sh.semi.hi(self.cur);
        self.reserve = (2 * live / scale)
            .clamp(4 * sh.page, sh.semi.half / 2)
            .next_multiple_of(sh.page);
    }

    /// Finishes the collection in progress, if any.
    fn finish(&mut self, sh: &Shared, scale: usize) {
        if self.active {
            self.scan_pages(sh, usize::MAX);
            self.complete(sh, scale);
        }
    }

    fn flip(&mut self, sh: &Shared, roots: &mut [usize]) {
        let (from, to) = (self.cur, 1 - self.cur);
        let used = (self.copier.free - sh.semi.lo(from)) + (sh.semi.hi(from) - self.alloc);
        let mut cross = self.spare_cross.take().expect("a spare cross map");
        cross.reset();
        self.spare_cross = self.copier.cross.replace(cross);
        let c = &mut self.copier;
        c.begin(sh.semi.space(from), sh.semi.space(to), sh.semi.lo(to));
        c.mark_los = true;
        // Single view: room to pad the copy frontier's page at each seal
        // (under a page per increment), on top of what the copies can need.
        self.pad_left = if sh.single {
            (used / 64 + 4 * sh.page).min(sh.semi.half - used)
        } else {
            0
        };
        self.black_floor = (sh.semi.lo(to) + used + self.pad_left).next_multiple_of(sh.page);
        c.limit = self.black_floor;
        if let Some(g) = &mut c.guard {
            g.prot_hi = sh.semi.lo(to);
        }
        self.prot_hi = sh.semi.lo(to);
        self.win_hi = sh.semi.lo(to);
        self.exposed = None;
        self.scanned.fill(0);
        self.trapped = 0;
        for r in roots.iter_mut() {
            *r = c.forward(*r);
        }
        self.scan = sh.semi.lo(to);
        self.scan_at = 0;
        self.opened = sh.semi.lo(to);
        self.partial = None;
        self.cur = to;
        self.alloc = sh.semi.hi(to);
        self.los_since = 0;
        self.active = true;
        // The roots' copies landed on writable pages: protect them.
        self.seal(sh);
        sh.log.collections.fetch_add(1, Ordering::Relaxed);
    }

    fn fits(&self, alloc: usize, need: usize) -> bool {
        let floor = if self.active {
            self.black_floor
        } else {
            self.copier.free + self.reserve
        };
        alloc >= floor && alloc - floor >= need
    }
}

/// Appel–Ellis–Li copying with the VM read barrier: the mutator faults on
/// unscanned to-space pages, and the handler scans them. `CONCURRENT`
/// selects who scans the rest: the mutator, a slice per allocation chunk
/// ([`VmBarrier`]), or a collector thread ([`VmConcurrent`]).
///
/// Each page of to-space is protected once per collection and traps at
/// most once: [`Stats::traps`] never exceeds [`Stats::to_space_pages`].
///
/// # Examples
/// ```
/// use vmprim_gc::{workload, Config, Heap, VmBarrier};
///
/// let mut heap = Heap::<VmBarrier>::new(&Config::small())?;
/// let check = workload::gcbench(&mut heap, &workload::GcBench::tiny());
/// assert_eq!(check, workload::GcBench::tiny().expected_check());
/// let s = heap.stats();
/// assert!(s.traps <= s.to_space_pages);
/// # Ok::<(), vmprim_gc::GcError>(())
/// ```
#[derive(Debug)]
pub struct Vm<const CONCURRENT: bool> {
    /// New objects come from `alloc` down to `chunk_lo`.
    alloc: usize,
    chunk_lo: usize,
    cfg: Config,
    thread: Option<JoinHandle<()>>,
    /// Dropped before `shared`'s views are unmapped: the handler holds a
    /// reference to them and is waited for.
    registration: Option<Registration>,
    shared: Arc<Shared>,
}

/// [`Vm`] with the mutator doing the scanning, a slice per chunk.
pub type VmBarrier = Vm<false>;

/// [`Vm`] with a collector thread doing the scanning through the
/// collector's view.
///
/// # Examples
/// ```
/// use vmprim_gc::{workload, Config, Heap, VmConcurrent};
///
/// let mut heap = Heap::<VmConcurrent>::new(&Config::small())?;
/// let check = workload::mutate(&mut heap, &workload::Mutate::tiny());
/// assert_eq!(check, workload::Mutate::tiny().expected_check());
/// heap.verify()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type VmConcurrent = Vm<true>;

impl Collector for Vm<false> {
    const NAME: &'static str = "vm_barrier";
}

impl Collector for Vm<true> {
    const NAME: &'static str = "vm_concurrent";
}

impl<const CONCURRENT: bool> Vm<CONCURRENT> {
    /// How much of the last live size the next collection's allocations are
    /// given: the mutator scans `scan_ratio` bytes per byte it allocates;
    /// the collector thread is assumed only as fast as the mutator.
    fn scale(&self) -> usize {
        if CONCURRENT {
            1
        } else {
            self.cfg.scan_ratio
        }
    }

    fn handle(sh: &Shared, f: &Fault) -> Outcome {
        if f.cause != Cause::Protection {
            return Outcome::NotOurs;
        }
        let t0 = Instant::now();
        let r = sh.state.lock().trap(sh, f.page);
        match r {
            Trapped::Scanned => {
                sh.log.traps.fetch_add(1, Ordering::Relaxed);
                sh.log.pause(t0);
                Outcome::Resolved
            }
            Trapped::Stale => {
                // The page was opened while this fault waited for the lock:
                // no trap of ours, but the mutator stood still all the same.
                sh.log.pause(t0);
                Outcome::Resolved
            }
            Trapped::Foreign => Outcome::NotOurs,
        }
    }

    fn collector_thread(sh: Arc<Shared>, batch: usize) {
        let mut seen = 0;
        loop {
            {
                let mut flips = sh.work.lock().unwrap_or_else(|e| e.into_inner());
                while *flips == seen && !sh.shutdown.load(Ordering::Acquire) {
                    flips = sh.wake.wait(flips).unwrap_or_else(|e| e.into_inner());
                }
                if sh.shutdown.load(Ordering::Acquire) {
                    return;
                }
                seen = *flips;
            }
            loop {
                let t0 = Instant::now();
                let mut st = sh.state.lock();
                if !st.active {
                    break;
                }
                let done = st.scan_pages(&sh, batch * sh.page);
                if done {
                    st.complete(&sh, 1);
                }
                drop(st);
                sh.log.work(t0);
                if done {
                    break;
                }
            }
        }
    }

    #[cold]
    fn refill(&mut self, need: usize, roots: &mut [usize]) -> Result<(), GcError> {
        let need = need.max(self.cfg.chunk_bytes).next_multiple_of(page_size());
        let sh = &*self.shared;
        let scale = self.scale();
        let t0 = Instant::now();
        let mut st = sh.state.lock();
        st.alloc = self.alloc;
        let mut paused = false;
        if st.active && !CONCURRENT {
            let budget = self.cfg.scan_ratio * self.cfg.chunk_bytes;
            if st.scan_pages(sh, budget) {
                st.complete(sh, scale);
            }
            paused = true;
        }
        if !st.fits(self.alloc, need) && st.active {
            st.finish(sh, scale);
            paused = true;
        }
        let mut flipped = false;
        if !st.fits(self.alloc, need) {
            st.flip(sh, roots);
            self.alloc = st.alloc;
            flipped = true;
            paused = true;
            if !st.fits(self.alloc, need) {
                st.finish(sh, scale);
                let free = self.alloc - st.copier.free;
                if free < need {
                    drop(st);
                    sh.log.pause(t0);
                    return Err(GcError::OutOfMemory {
                        requested: need,
                        free,
                    });
                }
            }
        }
        self.chunk_lo = self.alloc - need;
        st.alloc = self.chunk_lo;
        let wake = flipped && st.active && CONCURRENT;
        drop(st);
        if paused {
            sh.log.pause(t0);
        }
        if wake {
            sh.wake_collector();
        }
        Ok(())
    }

    fn alloc_large(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError> {
        let half = self.shared.semi.half;
        let mut st = self.shared.state.lock();
        if st.active && st.los_since > half {
            // Large objects advance no increment: past a semispace's worth
            // of them, finish the collection so the unreached ones can go.
            let t0 = Instant::now();
            let scale = self.scale();
            st.finish(&self.shared, scale);
            self.shared.log.pause(t0);
        }
        if !st.active && st.los_since > half {
            st.alloc = self.alloc;
            let t0 = Instant::now();
            st.flip(&self.shared, roots);
            self.alloc = st.alloc;
            self.chunk_lo = self.alloc;
            drop(st);
            self.shared.log.pause(t0);
            if CONCURRENT {
                self.shared.wake_collector();
            }
            st = self.shared.state.lock();
        }
        st.los_since += shape.bytes();
        let black = st.active;
        st.los.alloc(shape, black).ok_or(GcError::OutOfMemory {
            requested: shape.bytes(),
            free: 0,
        })
    }
}

impl<const CONCURRENT: bool> Engine for Vm<CONCURRENT> {
    fn create(cfg: &Config) -> Result<Self, GcError> {
        // Only a collector thread needs a view of its own: the incremental
        // collector works on the mutator's thread, so it can unprotect what
        // it touches and protect it again before the mutator runs, and its
        // heap is plain anonymous memory, which costs less to fault in than
        // shared memory.
        let semi = if CONCURRENT {
            Semi::mapped(cfg.heap_bytes)?
        } else {
            Semi::plain(cfg.heap_bytes)?
        };
        let p = page_size();
        let mut copier = Copier::new(semi.delta);
        copier.free = semi.lo(0);
        copier.limit = semi.hi(0);
        copier.cross = Some(CrossMap::new(semi.lo(0), semi.half));
        copier.guard = semi.mutator_view().map(|view| Guard {
            view: view.clone(),
            prot_hi: semi.lo(0),
            step: cfg.chunk_bytes,
            calls: 0,
        });
        let state = State {
            copier,
            spare_cross: Some(CrossMap::new(semi.lo(1), semi.half)),
            active: false,
            cur: 0,
            scanned: vec![0; (semi.half / p).div_ceil(64)],
            trapped: 0,
            prot_hi: semi.lo(0),
            win_hi: semi.lo(0),
            exposed: None,
            scan: 0,
            scan_at: 0,
            opened: 0,
            partial: None,
            pscan: 0,
            black_floor: 0,
            pad_left: 0,
            alloc: semi.hi(0),
            reserve: (semi.half / 4).next_multiple_of(p),
            los: Los::default(),
            los_since: 0,
        };
        let top = semi.hi(0);
        let (base, len) = (semi.base, 2 * semi.half);
        let shared = Arc::new(Shared {
            state: SpinLock::new(state),
            log: Log::new(cfg.pause_log),
            semi,
            single: !CONCURRENT,
            page: p,
            work: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let registration = trap::register(base, len, move |f| Self::handle(&sh, f))?;
        let thread = if CONCURRENT {
            let sh = shared.clone();
            let batch = cfg.scan_batch_pages;
            Some(
                std::thread::Builder::new()
                    .name("vmprim-gc".into())
                    .spawn(move || Self::collector_thread(sh, batch))?,
            )
        } else {
            None
        };
        Ok(Self {
            alloc: top,
            chunk_lo: top,
            cfg: cfg.clone(),
            thread,
            registration: Some(registration),
            shared,
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
        // SAFETY: inside the chunk the mutator holds: black memory above
        // every copy and every protected page.
        unsafe { init(self.alloc, shape) };
        Ok(self.alloc)
    }

    fn collect(&mut self, roots: &mut [usize]) {
        let sh = &*self.shared;
        let scale = self.scale();
        let t0 = Instant::now();
        let mut st = sh.state.lock();
        st.alloc = self.alloc;
        st.finish(sh, scale);
        st.flip(sh, roots);
        st.finish(sh, scale);
        self.alloc = st.alloc;
        self.chunk_lo = self.alloc;
        drop(st);
        sh.log.pause(t0);
    }

    fn quiesce(&mut self) {
        let sh = &*self.shared;
        let scale = self.scale();
        let mut st = sh.state.lock();
        if st.active {
            let t0 = Instant::now();
            st.finish(sh, scale);
            drop(st);
            sh.log.pause(t0);
        }
    }

    fn peek(&self, addr: usize) -> usize {
        let semi = &self.shared.semi;
        // Semispace words through the collector's view, which is never
        // protected; large objects live in their own mappings.
        let d = if addr.wrapping_sub(semi.base) < 2 * semi.half {
            semi.delta
        } else {
            0
        };
        // SAFETY: the verifier only peeks at words `holds` accepted.
        unsafe { words::get(addr.wrapping_add(d)) }
    }

    fn holds(&self, addr: usize, bytes: usize) -> bool {
        let sh = &*self.shared;
        let st = sh.state.lock();
        let end = addr.saturating_add(bytes);
        (addr >= sh.semi.lo(st.cur) && end <= st.copier.free)
            || (addr >= self.alloc && end <= sh.semi.hi(st.cur))
            || st.los.contains(addr)
    }

    fn stats(&self) -> Stats {
        self.shared.log.snapshot()
    }
}

impl<const CONCURRENT: bool> Drop for Vm<CONCURRENT> {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _flips = self.shared.work.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Unregister (waiting out a running handler) before the views go.
        self.registration.take();
    }
}
