//! The large object space: big scalar-only objects (arrays of numbers),
//! each in its own mapping, never copied. A full collection marks the ones
//! it reaches (a header bit) and unmaps the rest.

use crate::object::{Shape, MARK};
use crate::words;
use vmprim_prim::{page_size, Prot, Region};

#[derive(Debug, Default)]
pub(crate) struct Los {
    objects: Vec<Region>,
    /// Bytes mapped for live-or-unswept objects.
    pub(crate) bytes: usize,
}

impl Los {
    /// Maps a new object of `shape` (which has no pointer fields), its
    /// header written and its fields zero. `marked` makes it survive the
    /// collection in progress (it is allocated black).
    pub(crate) fn alloc(&mut self, shape: Shape, marked: bool) -> Option<usize> {
        debug_assert_eq!(shape.ptrs, 0);
        let len = shape.bytes().next_multiple_of(page_size());
        let region = Region::new(len, Prot::READ_WRITE).ok()?;
        let addr = region.as_ptr() as usize;
        let header = shape.header() | if marked { MARK } else { 0 };
        // SAFETY: the header word is the first word of a fresh mapping we
        // own (which the kernel zero-filled: the fields are zero already).
        unsafe { words::set(addr, header) };
        self.objects.push(region);
        self.bytes += len;
        Some(addr)
    }

    /// Whether `addr` is the address of one of the objects.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        self.objects.iter().any(|r| r.as_ptr() as usize == addr)
    }

    /// Unmaps every object not marked since the last sweep and clears the
    /// marks of the others. Not async-signal-safe (it frees memory): the
    /// collectors sweep outside signal context.
    pub(crate) fn sweep(&mut self) {
        let mut freed = 0;
        self.objects.retain(|r| {
            let addr = r.as_ptr() as usize;
            // SAFETY: the header of an object we own.
            let h = unsafe { words::get(addr) };
            if h & MARK != 0 {
                // SAFETY: as above.
                unsafe { words::set(addr, h & !MARK) };
                true
            } else {
                freed += r.len();
                false
            }
        });
        self.bytes -= freed;
    }
}

/// Marks the large object at `addr`. Async-signal-safe.
///
/// # Safety
/// `addr` is the address of a live large object.
#[inline]
pub(crate) unsafe fn mark(addr: usize) {
    // SAFETY: the caller promises a live large object's header.
    unsafe { words::or(addr, MARK) };
}
