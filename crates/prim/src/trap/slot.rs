//! One slot of the trap registry: an entry is published, run from any
//! thread (in signal context), and retired only once no thread runs with it.
//!
//! This file is compiled twice: by the library, with `super::sync` being
//! `core`'s atomics, and by `tests/loom_slot.rs`, with `super::sync` being
//! loom's, which checks the protocol under every interleaving.

use super::sync::{fence, yield_now, AtomicPtr, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

/// An entry that knows its address range.
pub(crate) trait Ranged {
    /// `start..end` of the addresses this entry serves.
    fn range(&self) -> (usize, usize);
}

/// A slot: a published entry (or null) and the count of readers using it.
pub(crate) struct Slot<T> {
    /// Hints for a cheap first test; the entry's own range decides.
    pub(crate) start: AtomicUsize,
    /// End hint.
    pub(crate) end: AtomicUsize,
    /// The entry, or null when the slot is free.
    pub(crate) entry: AtomicPtr<T>,
    /// Readers between raising the count and lowering it.
    pub(crate) active: AtomicUsize,
}

impl<T: Ranged> Slot<T> {
    /// Publishes `entry` in this free slot.
    ///
    /// # Safety
    /// - `entry` is valid, and stays valid and unaliased by `&mut` until
    ///   [`retire`](Self::retire) returns it.
    /// - The caller serialises writers, and the slot is free.
    pub(crate) unsafe fn publish(&self, entry: *mut T) {
        // SAFETY: the caller passes a valid entry.
        let (start, end) = unsafe { (*entry).range() };
        self.start.store(start, SeqCst);
        self.end.store(end, SeqCst);
        self.entry.store(entry, SeqCst);
    }

    /// The published entry, for a writer (who serialises with other writers).
    pub(crate) fn peek(&self) -> *mut T {
        self.entry.load(SeqCst)
    }

    /// Runs `f` with the entry if its range holds `addr`. Lock-free and
    /// async-signal-safe: the reader side.
    pub(crate) fn with<R>(&self, addr: usize, f: impl FnOnce(&T) -> R) -> Option<R> {
        if addr < self.start.load(Relaxed) || addr >= self.end.load(Relaxed) {
            return None;
        }
        self.active.fetch_add(1, SeqCst);
        // Dekker: raise `active`, fence, read `entry`; `retire` clears
        // `entry`, fences, reads `active`. The two fences are ordered, so at
        // least one side sees the other's write.
        fence(SeqCst);
        let e = self.entry.load(SeqCst);
        // SAFETY: an entry loaded after raising `active` (and the fence) is
        // not returned by `retire`, so not freed, until `active` falls back:
        // if `retire`'s fence came first we would have loaded null.
        let out = unsafe { e.as_ref() }
            .filter(|e| {
                let (start, end) = e.range();
                start <= addr && addr < end
            })
            .map(f);
        self.active.fetch_sub(1, SeqCst);
        out
    }

    /// Unpublishes the entry and waits until no reader runs with it; the
    /// caller may then free it. Returns null if the slot was free.
    ///
    /// Preconditions: the caller serialises writers, and is not itself a
    /// reader of this slot (it would wait for itself).
    pub(crate) fn retire(&self) -> *mut T {
        let entry = self.entry.swap(core::ptr::null_mut(), SeqCst);
        self.start.store(0, SeqCst);
        self.end.store(0, SeqCst);
        fence(SeqCst);
        while self.active.load(SeqCst) != 0 {
            yield_now();
        }
        entry
    }
}
