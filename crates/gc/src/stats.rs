//! What a collector reports: pauses, work, traps.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// A collector's counters since its heap was made.
///
/// # Examples
/// ```
/// use vmprim_gc::{Config, Heap, Shape, StwCopy};
///
/// let mut heap = Heap::<StwCopy>::new(&Config::small())?;
/// let _keep = heap.alloc(Shape::new(0, 1));
/// heap.collect();
/// let s = heap.stats();
/// assert_eq!(s.collections, 1);
/// assert_eq!(s.pauses_ns.len(), 1); // stop-the-world: one pause per collection
/// assert!(s.copied_bytes >= 16);
/// assert_eq!(s.traps, 0);
/// # Ok::<(), vmprim_gc::GcError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Collections begun (full and minor).
    pub collections: u64,
    /// Of those, minor (nursery) collections.
    pub minor_collections: u64,
    /// Time spent doing collection work, on every thread, in ns.
    pub gc_ns: u64,
    /// Every time the mutator stood still for the collector, in ns, in
    /// order: whole collections, flips, increments, trap handlers, waits.
    pub pauses_ns: Vec<u64>,
    /// Pauses that happened but did not fit in the log (see
    /// [`Config::pause_log`](crate::Config::pause_log)).
    pub pauses_dropped: u64,
    /// Faults the VM read barrier took (one scanned page each).
    pub traps: u64,
    /// Pages of to-space that held copied objects, summed over collections:
    /// the most traps a VM collector could take.
    pub to_space_pages: u64,
    /// Bytes copied by collections.
    pub copied_bytes: u64,
    /// `mprotect` calls the VM read barrier made on the heap (PROTN and
    /// UNPROT): with the pages they changed, what the barrier costs.
    pub protect_calls: u64,
}

impl Stats {
    /// The longest pause, in ns (0 if none).
    pub fn max_pause_ns(&self) -> u64 {
        self.pauses_ns.iter().copied().max().unwrap_or(0)
    }

    /// The nearest-rank 99th percentile pause, in ns (0 if none).
    pub fn p99_pause_ns(&self) -> u64 {
        percentile(&self.pauses_ns, 99)
    }
}

/// The nearest-rank `pct`th percentile of `v` (0 for an empty slice).
pub(crate) fn percentile(v: &[u64], pct: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = (pct * s.len()).div_ceil(100).max(1);
    s[rank - 1]
}

/// A preallocated, async-signal-safe log of pauses and counters, shared by
/// the mutator, its fault handler and a collector thread.
#[derive(Debug)]
pub(crate) struct Log {
    pauses: Box<[AtomicU64]>,
    len: AtomicUsize,
    pub(crate) collections: AtomicU64,
    pub(crate) minor_collections: AtomicU64,
    pub(crate) gc_ns: AtomicU64,
    pub(crate) traps: AtomicU64,
    pub(crate) to_space_pages: AtomicU64,
    pub(crate) copied_bytes: AtomicU64,
    pub(crate) protect_calls: AtomicU64,
}

impl Log {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            pauses: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            len: AtomicUsize::new(0),
            collections: AtomicU64::new(0),
            minor_collections: AtomicU64::new(0),
            gc_ns: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            to_space_pages: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            protect_calls: AtomicU64::new(0),
        }
    }

    /// Records a pause that began at `t0` and counts it as collection work.
    /// Async-signal-safe: no allocation, no locks.
    pub(crate) fn pause(&self, t0: Instant) {
        let ns = t0.elapsed().as_nanos() as u64;
        self.gc_ns.fetch_add(ns, Relaxed);
        let i = self.len.fetch_add(1, Relaxed);
        if let Some(slot) = self.pauses.get(i) {
            slot.store(ns, Relaxed);
        }
    }

    /// Counts collection work done while the mutator ran on (a collector
    /// thread's), which is not a pause.
    pub(crate) fn work(&self, t0: Instant) {
        self.gc_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let n = self.len.load(Relaxed);
        let kept = n.min(self.pauses.len());
        Stats {
            collections: self.collections.load(Relaxed),
            minor_collections: self.minor_collections.load(Relaxed),
            gc_ns: self.gc_ns.load(Relaxed),
            pauses_ns: self.pauses[..kept]
                .iter()
                .map(|p| p.load(Relaxed))
                .collect(),
            pauses_dropped: (n - kept) as u64,
            traps: self.traps.load(Relaxed),
            to_space_pages: self.to_space_pages.load(Relaxed),
            copied_bytes: self.copied_bytes.load(Relaxed),
            protect_calls: self.protect_calls.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[], 99), 0);
        assert_eq!(percentile(&[7], 99), 7);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
        let v: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(percentile(&v, 99), 990);
    }

    #[test]
    fn a_full_log_counts_what_it_drops() {
        let log = Log::new(2);
        for _ in 0..5 {
            log.pause(Instant::now());
        }
        let s = log.snapshot();
        assert_eq!((s.pauses_ns.len(), s.pauses_dropped), (2, 3));
    }
}
