//! Two semispaces in one mapping, seen through one view (the plain
//! collectors) or two (the VM collectors: the mutator's, which the read
//! barrier protects, and the collector's, always writable: MAP2).

use crate::config::GcError;
use crate::object::Shape;
use crate::words;
use std::sync::Arc;
use vmprim_prim::map2::{SharedMemory, View};
use vmprim_prim::{Prot, Region};

#[derive(Debug)]
enum Memory {
    Plain(Region),
    Views {
        mutator: Arc<View>,
        #[allow(dead_code, reason = "owns the collector's mapping")]
        collector: View,
    },
}

#[derive(Debug)]
pub(crate) struct Semi {
    /// First byte of the mutator's view of semispace 0; semispace 1 follows.
    pub(crate) base: usize,
    pub(crate) half: usize,
    /// The semispace objects are allocated in (to-space while collecting).
    pub(crate) cur: usize,
    /// From a mutator address to the collector's view of it.
    pub(crate) delta: usize,
    memory: Memory,
}

impl Semi {
    /// Two semispaces of `half` bytes, one view.
    pub(crate) fn plain(half: usize) -> Result<Self, GcError> {
        let region = Region::new(2 * half, Prot::READ_WRITE)?;
        Ok(Self {
            base: region.as_ptr() as usize,
            half,
            cur: 0,
            delta: 0,
            memory: Memory::Plain(region),
        })
    }

    /// Two semispaces of `half` bytes, in shared memory mapped twice.
    pub(crate) fn mapped(half: usize) -> Result<Self, GcError> {
        let shm = SharedMemory::new(2 * half)?;
        let mutator = Arc::new(shm.map(Prot::READ_WRITE)?);
        let collector = shm.map(Prot::READ_WRITE)?;
        let base = mutator.as_ptr() as usize;
        Ok(Self {
            base,
            half,
            cur: 0,
            delta: (collector.as_ptr() as usize).wrapping_sub(base),
            memory: Memory::Views { mutator, collector },
        })
    }

    /// The mutator's view, if the memory has two.
    pub(crate) fn mutator_view(&self) -> Option<&Arc<View>> {
        match &self.memory {
            Memory::Plain(_) => None,
            Memory::Views { mutator, .. } => Some(mutator),
        }
    }

    /// Sets the protection of `len` bytes at the mutator's address `addr`
    /// (page-aligned, inside both semispaces). Async-signal-safe. Fails
    /// only when the kernel has no memory left for the mapping's split.
    pub(crate) fn protect(&self, addr: usize, len: usize, prot: Prot) -> Result<(), GcError> {
        let offset = addr.wrapping_sub(self.base);
        match &self.memory {
            Memory::Plain(region) => region.protect(offset, len, prot)?,
            Memory::Views { mutator, .. } => mutator.protect(offset, len, prot)?,
        }
        Ok(())
    }

    pub(crate) fn lo(&self, i: usize) -> usize {
        self.base + i * self.half
    }

    pub(crate) fn hi(&self, i: usize) -> usize {
        self.lo(i) + self.half
    }

    /// The semispace `i`, as (start, length).
    pub(crate) fn space(&self, i: usize) -> (usize, usize) {
        (self.lo(i), self.half)
    }
}

/// Writes the header of a new object of `shape` at `addr` and zeroes its
/// fields.
///
/// # Safety
/// `addr..addr + shape.bytes()` is unused, writable heap memory the caller
/// owns.
#[inline(always)]
pub(crate) unsafe fn init(addr: usize, shape: Shape) {
    // SAFETY: the caller promises the whole object's memory.
    unsafe {
        words::set(addr, shape.header());
        words::zero(addr + crate::WORD, shape.words() - 1);
    }
}
