//! The copying engine every collector shares: forwarding, Cheney scanning,
//! and scanning the slots of one page (the VM read barrier's unit, and the
//! remembered set's).

use crate::los;
use crate::object::{ptr_offset, Shape, WORD};
use crate::words;
use std::sync::Arc;
use vmprim_prim::map2::View;
use vmprim_prim::{page_size, Prot};

const NONE: u32 = u32::MAX;

/// For each page of a space, the first object that overlaps it: where a
/// scan of that page alone starts. Kept for spaces filled in address order,
/// contiguously from their page-aligned start, so the first object of a
/// page is the one that covers the page's first byte.
#[derive(Debug)]
pub(crate) struct CrossMap {
    base: usize,
    shift: u32,
    first: Vec<u32>,
    /// Pages `0..touched` may be set.
    touched: usize,
}

impl CrossMap {
    pub(crate) fn new(base: usize, len: usize) -> Self {
        let p = page_size();
        Self {
            base,
            shift: p.trailing_zeros(),
            first: vec![NONE; len.div_ceil(p)],
            touched: 0,
        }
    }

    /// Forgets every object (for a space about to be refilled from its
    /// start).
    pub(crate) fn reset(&mut self) {
        self.first[..self.touched].fill(NONE);
        self.touched = 0;
    }

    /// Records an object of `bytes` bytes at `obj`, which begins where the
    /// objects recorded so far end. Most objects cover no page's first byte
    /// and cost one comparison.
    #[inline]
    pub(crate) fn note(&mut self, obj: usize, bytes: usize) {
        let off = obj - self.base;
        let first = (off + (1 << self.shift) - 1) >> self.shift;
        let last = (off + bytes - 1) >> self.shift;
        if first <= last {
            let word = (off / WORD) as u32;
            for p in first..=last {
                self.first[p] = word;
            }
            self.touched = last + 1;
        }
    }

    /// The first object overlapping the page that holds `addr`.
    pub(crate) fn first(&self, addr: usize) -> Option<usize> {
        let p = (addr - self.base) >> self.shift;
        match self.first[p] {
            NONE => None,
            w => Some(self.base + w as usize * WORD),
        }
    }
}

/// Keeps the pages copies land on protected from the mutator, ahead of the
/// copying (the VM read barrier's to-space, when the collector writes
/// through a view of its own; with one view the collector seals them
/// itself).
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) view: Arc<View>,
    /// Protected: `to_lo..prot_hi` (mutator addresses).
    pub(crate) prot_hi: usize,
    /// How far to protect ahead, in bytes.
    pub(crate) step: usize,
    /// `mprotect` calls made, for the collector's statistics.
    pub(crate) calls: u64,
}

impl Guard {
    fn cover(&mut self, end: usize, limit: usize) {
        let view_base = self.view.as_ptr() as usize;
        let hi = (end.next_multiple_of(page_size()) + self.step).min(limit);
        if hi > self.prot_hi {
            let r = self
                .view
                .protect(self.prot_hi - view_base, hi - self.prot_hi, Prot::NONE);
            if r.is_err() {
                // Out of memory for page tables or VMAs: the barrier cannot
                // be kept, and continuing would show unscanned objects.
                std::process::abort();
            }
            self.calls += 1;
            self.prot_hi = hi;
        }
    }
}

/// One collection's copying state.
#[derive(Debug)]
pub(crate) struct Copier {
    /// The evacuated range: objects here are copied.
    pub(crate) ev_lo: usize,
    pub(crate) ev_len: usize,
    /// The space copies go to: `to_lo..to_lo + to_len`.
    pub(crate) to_lo: usize,
    pub(crate) to_len: usize,
    /// Where the next copy goes.
    pub(crate) free: usize,
    /// Copies must end at or below this.
    pub(crate) limit: usize,
    /// Added to an address to reach the collector's writable view of it.
    pub(crate) delta: usize,
    /// Mark large objects reached (a full collection).
    pub(crate) mark_los: bool,
    pub(crate) cross: Option<CrossMap>,
    pub(crate) guard: Option<Guard>,
    /// Bytes copied since [`Copier::begin`].
    pub(crate) copied: usize,
}

impl Copier {
    pub(crate) fn new(delta: usize) -> Self {
        Self {
            ev_lo: 0,
            ev_len: 0,
            to_lo: 0,
            to_len: 0,
            free: 0,
            limit: 0,
            delta,
            mark_los: false,
            cross: None,
            guard: None,
            copied: 0,
        }
    }

    /// Starts a collection evacuating `ev` into `to`, copying from `free`.
    pub(crate) fn begin(&mut self, ev: (usize, usize), to: (usize, usize), free: usize) {
        (self.ev_lo, self.ev_len) = ev;
        (self.to_lo, self.to_len) = to;
        self.free = free;
        self.limit = to.0 + to.1;
        self.copied = 0;
    }

    /// Whether `p` lies in the evacuated range.
    #[inline(always)]
    pub(crate) fn evacuated(&self, p: usize) -> bool {
        p.wrapping_sub(self.ev_lo) < self.ev_len
    }

    /// The to-space address of the object `p` refers to, copying it there
    /// first if this is the first reference seen. Null and objects outside
    /// the evacuated range stay where they are (a full collection marks the
    /// large objects among them). Async-signal-safe.
    #[inline]
    pub(crate) fn forward(&mut self, p: usize) -> usize {
        if !self.evacuated(p) {
            if self.mark_los && p != 0 && p.wrapping_sub(self.to_lo) >= self.to_len {
                // SAFETY: a non-null pointer outside every space is a large
                // object (the heap's invariant), live as it is reachable.
                unsafe { los::mark(p) };
            }
            return p;
        }
        let d = self.delta;
        // SAFETY: `p` is an object in the evacuated range, mapped in the
        // collector's view.
        let h = unsafe { words::get(p.wrapping_add(d)) };
        let Some(shape) = Shape::from_header(h) else {
            return h; // already copied: the forwarding pointer
        };
        let bytes = shape.bytes();
        let new = self.free;
        let end = new + bytes;
        if end > self.limit {
            // The collectors reserve room for every possible copy before a
            // collection begins; reaching here is a bug, and carrying on
            // would overwrite live objects.
            std::process::abort();
        }
        if let Some(g) = &mut self.guard {
            if end > g.prot_hi {
                g.cover(end, self.limit);
            }
        }
        // SAFETY: source and destination are whole objects in two disjoint
        // spaces of this collector; nothing writes from-space now.
        unsafe {
            words::copy(p.wrapping_add(d), new.wrapping_add(d), shape.words());
            words::set(p.wrapping_add(d), new);
        }
        self.free = end;
        self.copied += bytes;
        if let Some(c) = &mut self.cross {
            c.note(new, bytes);
        }
        new
    }

    /// Forwards every pointer field of the object at `obj` (in to-space);
    /// returns its size in bytes.
    #[inline]
    pub(crate) fn scan_object(&mut self, obj: usize) -> usize {
        self.scan_fields(obj, 0, usize::MAX)
    }

    /// Forwards the pointer fields of the object at `obj` whose addresses
    /// lie in `lo..hi`; returns the object's size in bytes.
    #[inline]
    pub(crate) fn scan_fields(&mut self, obj: usize, lo: usize, hi: usize) -> usize {
        // SAFETY: `obj` is an object of a space this collector owns.
        let h = unsafe { words::get(obj.wrapping_add(self.delta)) };
        let Some(shape) = Shape::from_header(h) else {
            std::process::abort(); // a to-space object is never forwarded
        };
        let first = (obj + ptr_offset(0)).max(lo.next_multiple_of(WORD));
        let end = (obj + ptr_offset(shape.ptrs as usize)).min(hi);
        self.forward_slots(first, end);
        shape.bytes()
    }

    /// Forwards every pointer field of the object at `obj` (in to-space),
    /// whose header the caller read: `shape`.
    #[inline]
    pub(crate) fn scan_shape(&mut self, obj: usize, shape: Shape) {
        self.forward_slots(obj + ptr_offset(0), obj + ptr_offset(shape.ptrs as usize));
    }

    /// Forwards the pointer fields at `first..end` (word-aligned slot
    /// addresses of one to-space object).
    #[inline(always)]
    fn forward_slots(&mut self, first: usize, end: usize) {
        let d = self.delta;
        let mut slot = first;
        while slot < end {
            // SAFETY: a pointer field of a to-space object, in the
            // collector's view.
            let v = unsafe { words::get(slot.wrapping_add(d)) };
            let n = self.forward(v);
            if n != v {
                // SAFETY: as above.
                unsafe { words::set(slot.wrapping_add(d), n) };
            }
            slot += WORD;
        }
    }

    /// Cheney's scan: forwards the fields of objects from `*scan` on, until
    /// it reaches `free` or has scanned `budget` bytes. Returns whether it
    /// reached `free` (the collection's tracing is done).
    pub(crate) fn cheney(&mut self, scan: &mut usize, budget: usize) -> bool {
        let stop = scan.saturating_add(budget);
        while *scan < self.free {
            if *scan >= stop {
                return false;
            }
            *scan += self.scan_object(*scan);
        }
        true
    }

    /// Forwards every pointer field whose address lies in `lo..hi`, among
    /// the objects copied (or promoted) into the space below `free`. Needs
    /// the cross map. Objects copied while this runs are scanned too if
    /// their fields lie in the range.
    pub(crate) fn scan_slots(&mut self, lo: usize, hi: usize) {
        let Some(mut obj) = self.cross.as_ref().and_then(|c| c.first(lo)) else {
            return;
        };
        while obj < hi && obj < self.free {
            obj += self.scan_fields(obj, lo, hi);
        }
    }
}
