//! MAP2: the same physical pages at several virtual addresses, each view
//! with its own protection.
//!
//! The seed's use: one thread works on memory through an unprotected view
//! while other threads trap on a protected view of the same pages (a
//! concurrent collector scanning to-space, a checkpointer copying pages the
//! program may not yet write). Pages are those of a `memfd_create(2)` file:
//! shared memory that lives as long as a view or the [`SharedMemory`] does.

use crate::range::{check_within, PageLen, RangeError};
use crate::{Prot, Region};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use thiserror::Error;
use vmprim_sys::{mem, Errno};

/// What went wrong with shared memory or a view of it.
#[derive(Debug, Error)]
pub enum Map2Error {
    /// A range is unusable.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        /// The call.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
}

/// Memory that can be mapped at several addresses: a memfd of fixed length.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    len: PageLen,
}

impl SharedMemory {
    /// Creates `len` bytes (a multiple of the page size) of zero-filled
    /// shared memory.
    ///
    /// # Examples
    /// Two views at two addresses show the same pages:
    /// ```
    /// use vmprim_prim::map2::{Map2Error, SharedMemory};
    /// use vmprim_prim::{page_size, Prot, RangeError};
    ///
    /// let p = page_size();
    /// let shm = SharedMemory::new(2 * p)?;
    /// let (a, b) = (shm.map(Prot::READ_WRITE)?, shm.map(Prot::READ)?);
    /// assert_ne!(a.as_ptr(), b.as_ptr());
    /// a.write_u8(p + 3, 42)?;
    /// assert_eq!(b.read_u8(p + 3)?, 42);
    /// assert!(matches!(
    ///     SharedMemory::new(p + 1),
    ///     Err(Map2Error::Range(RangeError::NotPageAligned { .. }))
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(len: usize) -> Result<Arc<Self>, Map2Error> {
        let len = PageLen::new(len)?;
        let fd = mem::memfd_create(c"vmprim-map2").map_err(|source| Map2Error::Os {
            op: "memfd_create",
            source,
        })?;
        mem::ftruncate(fd.as_fd(), len.bytes() as u64).map_err(|source| Map2Error::Os {
            op: "ftruncate",
            source,
        })?;
        Ok(Arc::new(Self { fd, len }))
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len.bytes()
    }

    /// Always false: shared memory has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes `data` at byte `offset` with `pwrite(2)`, bypassing every
    /// view. A page it fills whole and that held nothing yet is allocated
    /// without being zeroed first, which a store through a view cannot
    /// avoid: the cheaper way to fill fresh pages. `data` may lie in a view
    /// of this same memory (a copy between pages), but not overlap the
    /// range written.
    ///
    /// # Examples
    /// ```
    /// use vmprim_prim::map2::SharedMemory;
    /// use vmprim_prim::{page_size, Prot};
    ///
    /// let shm = SharedMemory::new(2 * page_size())?;
    /// shm.write_at(page_size(), &[5; 3])?;
    /// let view = shm.map(Prot::READ)?;
    /// assert_eq!(view.read_u8(page_size() + 2)?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), Map2Error> {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len())
        {
            return Err(Map2Error::Range(RangeError::OutOfRange {
                offset,
                len: data.len(),
                limit: self.len(),
            }));
        }
        let mut done = 0;
        while done < data.len() {
            match mem::pwrite(self.fd.as_fd(), &data[done..], (offset + done) as u64) {
                Ok(0) => {
                    return Err(Map2Error::Os {
                        op: "pwrite",
                        source: Errno::ENOSPC,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e == Errno::EINTR => {}
                Err(source) => {
                    return Err(Map2Error::Os {
                        op: "pwrite",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Maps all of it at an address the kernel picks, with protection `prot`.
    ///
    /// # Examples
    /// A view keeps the memory alive: the handle can go at once.
    /// ```
    /// use vmprim_prim::map2::SharedMemory;
    /// use vmprim_prim::{page_size, Prot};
    ///
    /// let view = SharedMemory::new(page_size())?.map(Prot::READ_WRITE)?;
    /// assert_eq!((view.len(), view.read_u8(0)?), (page_size(), 0)); // zero-filled
    /// view.write_u8(0, 1)?;
    /// assert_eq!(view.read_u8(0)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map(self: &Arc<Self>, prot: Prot) -> Result<View, Map2Error> {
        let ptr =
            mem::mmap_shared(self.len(), prot.bits(), self.fd.as_fd(), 0).map_err(|source| {
                Map2Error::Os {
                    op: "mmap(MAP_SHARED)",
                    source,
                }
            })?;
        Ok(View {
            ptr,
            len: self.len(),
            _memory: self.clone(),
        })
    }

    /// Maps `object_offset..object_offset + len` of this memory over
    /// `region_offset..` of `region`, replacing what the region had there.
    ///
    /// The region keeps owning the address range (and unmaps it when
    /// dropped); the pages it shows there are this memory's until replaced
    /// again. Async-signal-safe: a fault handler may call it.
    ///
    /// # Examples
    /// Show page 1 of the memory at page 4 of a reserved region:
    /// ```
    /// use vmprim_prim::map2::SharedMemory;
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::reserve(8 * p)?;
    /// let shm = SharedMemory::new(2 * p)?;
    /// let view = shm.map(Prot::READ_WRITE)?;
    /// view.write_u8(p, 9)?;
    /// shm.map_into(&region, 4 * p, p, p, Prot::READ)?;
    /// assert_eq!(region.read_u8(4 * p)?, 9);
    /// view.write_u8(p, 10)?;
    /// assert_eq!(region.read_u8(4 * p)?, 10); // the same page, not a copy
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_into(
        &self,
        region: &Region,
        region_offset: usize,
        object_offset: usize,
        len: usize,
        prot: Prot,
    ) -> Result<(), Map2Error> {
        self.map_into_with(region, region_offset, object_offset, len, prot, false)
    }

    /// [`map_into`](Self::map_into), and, with `populate`, the page-table
    /// entries filled at once (`MAP_POPULATE`; pages not yet in the memory
    /// are allocated), so the first access to each page does not fault.
    /// Worth it for pages about to be used.
    ///
    /// # Examples
    /// ```
    /// use vmprim_prim::map2::SharedMemory;
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let shm = SharedMemory::new(4 * p)?;
    /// let region = Region::reserve(4 * p)?;
    /// shm.map_into_with(&region, 0, 0, 4 * p, Prot::READ_WRITE, true)?;
    /// region.write_u8(3 * p, 1)?; // no fault: the entry is there
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_into_with(
        &self,
        region: &Region,
        region_offset: usize,
        object_offset: usize,
        len: usize,
        prot: Prot,
        populate: bool,
    ) -> Result<(), Map2Error> {
        check_within(region_offset, len, region.len())?;
        check_within(object_offset, len, self.len())?;
        let extra = if populate { mem::MAP_POPULATE } else { 0 };
        // SAFETY: the range lies inside `region`, which owns it and hands out
        // no references into it.
        unsafe {
            mem::mmap_shared_fixed_flags(
                region.as_ptr().add(region_offset),
                len,
                prot.bits(),
                self.fd.as_fd(),
                object_offset as u64,
                extra,
            )
        }
        .map_err(|source| Map2Error::Os {
            op: "mmap(MAP_SHARED | MAP_FIXED)",
            source,
        })
    }
}

/// One view of a [`SharedMemory`]. Dropping it unmaps the view; the memory
/// lives on while other views or the `SharedMemory` do.
#[derive(Debug)]
pub struct View {
    ptr: *mut u8,
    len: usize,
    _memory: Arc<SharedMemory>,
}

// SAFETY: a View is an owned mapping accessed only through raw pointers and
// volatile operations; it has no thread-local state.
unsafe impl Send for View {}
// SAFETY: `&View` methods only make system calls on the owned range or do
// volatile accesses.
unsafe impl Sync for View {}

impl View {
    /// The first byte of the view.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Sets the protection of `offset..offset + len` of this view only; other
    /// views keep theirs. Async-signal-safe.
    ///
    /// # Examples
    /// The seed's use of MAP2: one view stays writable for the thread doing
    /// the work, while touches through a protected view trap. The handler
    /// runs in signal context and only protects and counts.
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    /// use std::sync::Arc;
    /// use vmprim_prim::map2::SharedMemory;
    /// use vmprim_prim::{page_size, trap, Prot};
    ///
    /// let p = page_size();
    /// let shm = SharedMemory::new(p)?;
    /// let (work, guarded) = (shm.map(Prot::READ_WRITE)?, Arc::new(shm.map(Prot::READ_WRITE)?));
    /// guarded.protect(0, p, Prot::NONE)?; // this view only
    /// let (g, traps) = (guarded.clone(), Arc::new(AtomicUsize::new(0)));
    /// let t = traps.clone();
    /// let _reg = trap::register(guarded.as_ptr() as usize, p, move |_| {
    ///     t.fetch_add(1, Relaxed);
    ///     g.protect(0, p, Prot::READ).map_or(trap::Outcome::NotOurs, |()| trap::Outcome::Resolved)
    /// })?;
    /// work.write_u8(0, 5)?; // no trap
    /// assert_eq!(traps.load(Relaxed), 0);
    /// assert_eq!(guarded.read_u8(0)?, 5); // traps once, then sees the write
    /// assert_eq!(traps.load(Relaxed), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn protect(&self, offset: usize, len: usize, prot: Prot) -> Result<(), Map2Error> {
        check_within(offset, len, self.len)?;
        // SAFETY: inside our mapping; no references into it exist.
        unsafe { mem::mprotect(self.ptr.add(offset), len, prot.bits()) }.map_err(|source| {
            Map2Error::Os {
                op: "mprotect",
                source,
            }
        })
    }

    /// Reads the byte at `offset` (volatile).
    pub fn read_u8(&self, offset: usize) -> Result<u8, Map2Error> {
        check_byte(offset, self.len)?;
        // SAFETY: in bounds; volatile because other views change it.
        Ok(unsafe { self.ptr.add(offset).read_volatile() })
    }

    /// Writes the byte at `offset` (volatile).
    pub fn write_u8(&self, offset: usize, value: u8) -> Result<(), Map2Error> {
        check_byte(offset, self.len)?;
        // SAFETY: in bounds; accessed only through raw pointers.
        unsafe { self.ptr.add(offset).write_volatile(value) };
        Ok(())
    }
}

fn check_byte(offset: usize, limit: usize) -> Result<(), RangeError> {
    if offset < limit {
        Ok(())
    } else {
        Err(RangeError::OutOfRange {
            offset,
            len: 1,
            limit,
        })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the view is ours, holds no references, and is not used after.
        let _ = unsafe { mem::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_size;

    #[test]
    fn a_write_through_one_view_is_seen_through_the_others() {
        let p = page_size();
        let shm = SharedMemory::new(4 * p).unwrap();
        let a = shm.map(Prot::READ_WRITE).unwrap();
        let b = shm.map(Prot::READ).unwrap();
        let region = Region::reserve(8 * p).unwrap();
        shm.map_into(&region, 2 * p, p, 2 * p, Prot::READ).unwrap();
        a.write_u8(p + 7, 99).unwrap();
        assert_eq!(b.read_u8(p + 7).unwrap(), 99);
        assert_eq!(region.read_u8(2 * p + 7).unwrap(), 99);
    }

    #[test]
    fn views_keep_independent_protections() {
        let p = page_size();
        let shm = SharedMemory::new(2 * p).unwrap();
        let a = shm.map(Prot::READ_WRITE).unwrap();
        let b = shm.map(Prot::READ_WRITE).unwrap();
        b.protect(0, p, Prot::NONE).unwrap();
        a.write_u8(0, 5).unwrap(); // a stays writable
        b.protect(0, p, Prot::READ).unwrap();
        assert_eq!(b.read_u8(0).unwrap(), 5);
    }

    #[test]
    fn memory_outlives_the_handle_while_a_view_lives() {
        let p = page_size();
        let shm = SharedMemory::new(p).unwrap();
        let a = shm.map(Prot::READ_WRITE).unwrap();
        drop(shm);
        a.write_u8(1, 1).unwrap();
        assert_eq!(a.read_u8(1).unwrap(), 1);
    }

    #[test]
    fn bad_ranges_are_typed_errors() {
        let p = page_size();
        assert!(matches!(
            SharedMemory::new(0),
            Err(Map2Error::Range(RangeError::ZeroLength))
        ));
        let shm = SharedMemory::new(2 * p).unwrap();
        let region = Region::reserve(2 * p).unwrap();
        assert!(matches!(
            shm.map_into(&region, 0, p, 2 * p, Prot::READ),
            Err(Map2Error::Range(RangeError::OutOfRange { .. }))
        ));
        assert!(matches!(
            shm.map_into(&region, p, 0, 2 * p, Prot::READ),
            Err(Map2Error::Range(RangeError::OutOfRange { .. }))
        ));
        let v = shm.map(Prot::READ).unwrap();
        assert!(matches!(
            v.protect(1, p, Prot::NONE),
            Err(Map2Error::Range(RangeError::NotPageAligned { .. }))
        ));
        assert!(v.read_u8(2 * p).is_err());
    }
}
