//! [`Region`]: page-aligned memory this process reserves, commits and
//! protects: the unit every primitive works on.

use crate::range::{check_within, page_size, PageLen, RangeError};
use crate::Prot;
use core::ptr::NonNull;
use std::os::fd::BorrowedFd;
use thiserror::Error;
use vmprim_sys::{mem, Errno};

/// What went wrong with a [`Region`] operation.
#[derive(Debug, Error)]
pub enum RegionError {
    /// The range given is unusable.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The kernel refused the call.
    #[error("{op} failed")]
    Os {
        /// The system call, with its arguments.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
    /// A file view was asked for with write access
    /// ([`Region::map_file`] maps files read-only).
    #[error("a file view cannot be writable")]
    WritableFileView,
}

/// A page-aligned range of this process's virtual memory, owned by this value
/// and unmapped when it is dropped.
///
/// A `Region` never hands out Rust references into its memory: its pages
/// can be protected, trapped on and changed behind the program's back (by a
/// fault handler, by a second view), which references do not allow. Access is
/// through raw pointers ([`as_ptr`](Self::as_ptr)) or the volatile helpers
/// ([`read_u8`](Self::read_u8), [`write_u8`](Self::write_u8), ...).
///
/// PROT1, PROTN and UNPROT are [`prot1`](Self::prot1),
/// [`protn`](Self::protn) and [`unprot`](Self::unprot); [`protect`](Self::protect)
/// sets any protection on any page range. All four are async-signal-safe:
/// they are one `mprotect(2)` and return an [`Errno`]-carrying error without
/// allocating.
///
/// # Examples
/// Reserve address space, commit part of it, and use it through the volatile
/// helpers. The helpers check bounds, not protection: touching a page whose
/// protection forbids the access raises `SIGSEGV`, which kills the process
/// unless a [`trap`](crate::trap) handler resolves it.
/// ```
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Region::reserve(4 * p)?; // address space only: no access
/// region.commit(p, 2 * p, Prot::READ_WRITE)?; // pages 1 and 2 become usable
/// assert_eq!(region.read_u64(p)?, 0); // zero-filled
/// region.write_u64(p, 0xfeed)?;
/// region.protect(p, p, Prot::READ)?; // read-only from now on
/// assert_eq!(region.read_u64(p)?, 0xfeed);
/// assert_eq!(region.offset_of(region.as_ptr() as usize + p + 8), Some(p + 8));
/// assert!(region.write_u8(4 * p, 1).is_err()); // past the end: refused, no access
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: PageLen,
}

// SAFETY: a Region is an address range plus ownership of its mapping; it
// holds no references and no thread-local state. Concurrent access to the
// memory goes through raw pointers and volatile operations, which callers
// synchronise.
unsafe impl Send for Region {}
// SAFETY: `&Region` methods only make system calls on the owned range or
// perform volatile accesses; none mutates the `Region` value.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `len` bytes of address space with no access and no memory
    /// committed (`PROT_NONE`, `MAP_NORESERVE`). [`commit`](Self::commit)
    /// parts of it before use.
    pub fn reserve(len: usize) -> Result<Self, RegionError> {
        Self::map(len, Prot::NONE, mem::MAP_NORESERVE)
    }

    /// Maps `len` bytes of zero-filled memory with protection `prot`. Pages
    /// take physical memory when first touched.
    pub fn new(len: usize, prot: Prot) -> Result<Self, RegionError> {
        Self::map(len, prot, 0)
    }

    fn map(len: usize, prot: Prot, extra: i32) -> Result<Self, RegionError> {
        let len = PageLen::new(len)?;
        let ptr = mem::mmap_anonymous(len.bytes(), prot.bits(), extra).map_err(|source| {
            RegionError::Os {
                op: "mmap(anonymous)",
                source,
            }
        })?;
        let base = NonNull::new(ptr).expect("mmap returned NULL without MAP_FIXED");
        Ok(Self { base, len })
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len.bytes()
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The number of pages.
    pub fn pages(&self) -> usize {
        self.len.pages()
    }

    /// The offset of `addr` in this region, if it lies inside.
    pub fn offset_of(&self, addr: usize) -> Option<usize> {
        addr.checked_sub(self.base.as_ptr() as usize)
            .filter(|&o| o < self.len())
    }

    /// Makes `offset..offset + len` usable with protection `prot` (an alias of
    /// [`protect`](Self::protect) that reads as the reserve / commit pair).
    pub fn commit(&self, offset: usize, len: usize, prot: Prot) -> Result<(), RegionError> {
        self.protect(offset, len, prot)
    }

    /// Returns the pages of `offset..offset + len` to the kernel and makes
    /// them inaccessible; a later commit reads zeros.
    pub fn decommit(&self, offset: usize, len: usize) -> Result<(), RegionError> {
        check_within(offset, len, self.len())?;
        // SAFETY: the range lies inside this region, which owns it and hands
        // out no references into it.
        unsafe {
            mem::mprotect(self.at(offset), len, Prot::NONE.bits()).map_err(|source| {
                RegionError::Os {
                    op: "mprotect(PROT_NONE)",
                    source,
                }
            })?;
            mem::madvise_dontneed(self.at(offset), len).map_err(|source| RegionError::Os {
                op: "madvise(MADV_DONTNEED)",
                source,
            })
        }
    }

    /// Replaces whatever is mapped at `offset..offset + len` (for example a
    /// [`SharedMemory`](crate::map2::SharedMemory) view put there with
    /// [`map_into`](crate::map2::SharedMemory::map_into)) with fresh
    /// inaccessible reserved address space, as [`reserve`](Self::reserve)
    /// left it. Unlike [`decommit`](Self::decommit) this also drops a
    /// shared mapping, so the next access faults even where the shared
    /// page still exists.
    ///
    /// # Examples
    /// ```
    /// use vmprim_prim::map2::SharedMemory;
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::reserve(2 * p)?;
    /// let shm = SharedMemory::new(p)?;
    /// shm.map_into(&region, p, 0, p, Prot::READ_WRITE)?;
    /// region.write_u8(p, 7)?;
    /// region.reset(p, p)?; // the view is gone; the shared page is not
    /// shm.map_into(&region, 0, 0, p, Prot::READ)?;
    /// assert_eq!(region.read_u8(0)?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reset(&self, offset: usize, len: usize) -> Result<(), RegionError> {
        check_within(offset, len, self.len())?;
        // SAFETY: the range lies inside this region, which owns it and hands
        // out no references into it.
        unsafe { mem::mmap_anonymous_fixed_reserve(self.at(offset), len) }.map_err(|source| {
            RegionError::Os {
                op: "mmap(PROT_NONE | MAP_NORESERVE | MAP_FIXED)",
                source,
            }
        })
    }

    /// Maps `len` bytes of the file `fd`, from byte `file_offset`, at
    /// `offset..offset + len` of the region, privately (`MAP_PRIVATE`) and
    /// without write access: loads read the file's pages straight from the
    /// kernel's page cache, with no copy, and see later changes to the file
    /// until the range is replaced. Pages wholly past the file's end raise
    /// `SIGBUS` when touched, as any file mapping does. `prot` must not
    /// include [`Prot::WRITE`] (the file could never be written through it
    /// anyway, but a private copy would silently diverge from it).
    ///
    /// # Examples
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsFd;
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let mut file = tempfile_in_tmp()?;
    /// file.write_all(&vec![9u8; 2 * p])?;
    /// let region = Region::reserve(2 * p)?;
    /// region.map_file(0, 2 * p, file.as_fd(), 0, Prot::READ)?;
    /// assert_eq!(region.read_u8(p + 5)?, 9);
    /// # fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    /// #     let path = std::env::temp_dir().join(format!("vmprim-doc-{}", std::process::id()));
    /// #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    /// #     std::fs::remove_file(&path)?;
    /// #     Ok(f)
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_file(
        &self,
        offset: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        prot: Prot,
    ) -> Result<(), RegionError> {
        check_within(offset, len, self.len())?;
        if prot.contains(Prot::WRITE) {
            return Err(RegionError::WritableFileView);
        }
        // SAFETY: the range lies inside this region, which owns it and hands
        // out no references into it.
        unsafe { mem::mmap_private_fixed(self.at(offset), len, prot.bits(), fd, file_offset) }
            .map_err(|source| RegionError::Os {
                op: "mmap(MAP_PRIVATE | MAP_FIXED) of a file",
                source,
            })
    }

    /// Sets the protection of `offset..offset + len`. Async-signal-safe.
    pub fn protect(&self, offset: usize, len: usize, prot: Prot) -> Result<(), RegionError> {
        check_within(offset, len, self.len())?;
        // SAFETY: the range lies inside this region, which owns it and hands
        // out no references into it (a fault on it is an ordinary trap).
        unsafe { mem::mprotect(self.at(offset), len, prot.bits()) }.map_err(|source| {
            RegionError::Os {
                op: "mprotect",
                source,
            }
        })
    }

    /// PROT1: lowers the protection of the one page at `offset` to `prot`.
    ///
    /// # Examples
    /// After PROT1 the first write to the page traps, once: the handler gives
    /// the page its write access back. It runs in signal context, so it only
    /// counts with an atomic and calls [`unprot`](Self::unprot).
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    /// use std::sync::Arc;
    /// use vmprim_prim::{page_size, trap, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Arc::new(Region::new(4 * p, Prot::READ_WRITE)?);
    /// let traps = Arc::new(AtomicUsize::new(0));
    /// let (r, t, base) = (region.clone(), traps.clone(), region.as_ptr() as usize);
    /// let _reg = trap::register(base, region.len(), move |f| {
    ///     t.fetch_add(1, Relaxed);
    ///     r.unprot(f.page - base, p).map_or(trap::Outcome::NotOurs, |()| trap::Outcome::Resolved)
    /// })?;
    /// region.prot1(2 * p, Prot::READ)?;
    /// assert_eq!(region.read_u8(2 * p)?, 0); // reads are still allowed
    /// region.write_u8(p, 1)?; // other pages keep their access
    /// assert_eq!(traps.load(Relaxed), 0);
    /// region.write_u8(2 * p, 1)?; // traps; the handler unprotects; the write runs again
    /// region.write_u8(2 * p, 2)?;
    /// assert_eq!(traps.load(Relaxed), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prot1(&self, offset: usize, prot: Prot) -> Result<(), RegionError> {
        self.protect(offset, page_size(), prot)
    }

    /// PROTN: lowers the protection of `len` bytes of pages at `offset` to
    /// `prot` with one call.
    ///
    /// # Examples
    /// The collector's pattern: protect many pages with one call, then
    /// unprotect each page in the trap handler (in signal context) when the
    /// program first touches it.
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    /// use std::sync::Arc;
    /// use vmprim_prim::{page_size, trap, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Arc::new(Region::new(8 * p, Prot::READ_WRITE)?);
    /// let traps = Arc::new(AtomicUsize::new(0));
    /// let (r, t, base) = (region.clone(), traps.clone(), region.as_ptr() as usize);
    /// let _reg = trap::register(base, region.len(), move |f| {
    ///     t.fetch_add(1, Relaxed);
    ///     r.unprot(f.page - base, p).map_or(trap::Outcome::NotOurs, |()| trap::Outcome::Resolved)
    /// })?;
    /// region.protn(0, 8 * p, Prot::NONE)?; // one mprotect for all eight pages
    /// for page in [1, 5, 6, 5] {
    ///     assert_eq!(region.read_u8(page * p)?, 0);
    /// }
    /// assert_eq!(traps.load(Relaxed), 3); // one trap per page touched
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn protn(&self, offset: usize, len: usize, prot: Prot) -> Result<(), RegionError> {
        self.protect(offset, len, prot)
    }

    /// UNPROT: makes `offset..offset + len` readable and writable again.
    ///
    /// Async-signal-safe: it is what a trap handler usually calls (see
    /// [`prot1`](Self::prot1)).
    ///
    /// # Examples
    /// Pages left protected still kill the process when touched without a
    /// trap handler: this example dies of `SIGSEGV` if UNPROT does not work.
    /// ```
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::new(4 * p, Prot::NONE)?; // every access would fault
    /// region.unprot(p, 2 * p)?;
    /// region.write_u8(2 * p + 1, 7)?;
    /// assert_eq!(region.read_u8(2 * p + 1)?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unprot(&self, offset: usize, len: usize) -> Result<(), RegionError> {
        self.protect(offset, len, Prot::READ_WRITE)
    }

    /// Reads the byte at `offset` (volatile: it may be trapped on).
    pub fn read_u8(&self, offset: usize) -> Result<u8, RegionError> {
        self.check_byte(offset)?;
        // SAFETY: in bounds of our mapping; volatile because the page may
        // change underneath (second views, handlers).
        Ok(unsafe { self.at(offset).read_volatile() })
    }

    /// Writes the byte at `offset` (volatile: it may be trapped on).
    pub fn write_u8(&self, offset: usize, value: u8) -> Result<(), RegionError> {
        self.check_byte(offset)?;
        // SAFETY: in bounds of our mapping, accessed only through raw pointers.
        unsafe { self.at(offset).write_volatile(value) };
        Ok(())
    }

    /// Reads the aligned `u64` at `offset` (volatile).
    pub fn read_u64(&self, offset: usize) -> Result<u64, RegionError> {
        self.check_word(offset)?;
        // SAFETY: in bounds and 8-aligned (checked; the base is page-aligned).
        Ok(unsafe { self.at(offset).cast::<u64>().read_volatile() })
    }

    /// Writes the aligned `u64` at `offset` (volatile).
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<(), RegionError> {
        self.check_word(offset)?;
        // SAFETY: in bounds and 8-aligned (checked; the base is page-aligned).
        unsafe { self.at(offset).cast::<u64>().write_volatile(value) };
        Ok(())
    }

    fn check_byte(&self, offset: usize) -> Result<(), RangeError> {
        if offset < self.len() {
            Ok(())
        } else {
            Err(RangeError::OutOfRange {
                offset,
                len: 1,
                limit: self.len(),
            })
        }
    }

    fn check_word(&self, offset: usize) -> Result<(), RangeError> {
        match offset.checked_add(8) {
            Some(end) if end <= self.len() && offset.is_multiple_of(8) => Ok(()),
            _ => Err(RangeError::OutOfRange {
                offset,
                len: 8,
                limit: self.len(),
            }),
        }
    }

    /// The address of `offset`, which the caller has checked.
    fn at(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset <= self.len());
        // SAFETY: `offset` is within (or one past) the mapping.
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; no references into it exist (the type
        // never hands any out) and after drop nothing can reach it.
        let r = unsafe { mem::munmap(self.base.as_ptr(), self.len()) };
        debug_assert!(r.is_ok(), "munmap of an owned region failed: {r:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_bad_lengths() {
        assert!(matches!(
            Region::new(0, Prot::READ),
            Err(RegionError::Range(RangeError::ZeroLength))
        ));
        assert!(matches!(
            Region::new(page_size() + 1, Prot::READ),
            Err(RegionError::Range(RangeError::NotPageAligned { .. }))
        ));
    }

    #[test]
    fn memory_is_zero_filled_and_writable() {
        let r = Region::new(4 * page_size(), Prot::READ_WRITE).unwrap();
        assert_eq!(r.read_u64(3 * page_size()).unwrap(), 0);
        r.write_u64(3 * page_size(), 0xfeed).unwrap();
        assert_eq!(r.read_u64(3 * page_size()).unwrap(), 0xfeed);
    }

    #[test]
    fn protect_checks_the_range() {
        let p = page_size();
        let r = Region::new(4 * p, Prot::READ_WRITE).unwrap();
        assert!(matches!(
            r.protect(0, 5 * p, Prot::READ),
            Err(RegionError::Range(RangeError::OutOfRange { .. }))
        ));
        assert!(matches!(
            r.protect(1, p, Prot::READ),
            Err(RegionError::Range(RangeError::NotPageAligned { .. }))
        ));
        assert!(matches!(
            r.protect(p, 0, Prot::READ),
            Err(RegionError::Range(RangeError::ZeroLength))
        ));
        assert!(matches!(
            r.protect(usize::MAX - p + 1, 2 * p, Prot::READ),
            Err(RegionError::Range(RangeError::Overflow { .. }))
        ));
        r.prot1(p, Prot::READ).unwrap();
        r.protn(2 * p, 2 * p, Prot::NONE).unwrap();
        r.unprot(0, 4 * p).unwrap();
    }

    #[test]
    fn accessors_check_bounds() {
        let r = Region::new(page_size(), Prot::READ_WRITE).unwrap();
        assert!(r.read_u8(page_size()).is_err());
        assert!(r.write_u64(page_size() - 4, 1).is_err());
        assert!(r.read_u64(3).is_err());
        assert_eq!(r.offset_of(r.as_ptr() as usize + 5), Some(5));
        assert_eq!(r.offset_of(r.as_ptr() as usize + page_size()), None);
    }

    #[test]
    fn decommit_returns_zeros() {
        let p = page_size();
        let r = Region::reserve(2 * p).unwrap();
        r.commit(0, 2 * p, Prot::READ_WRITE).unwrap();
        r.write_u8(p, 9).unwrap();
        r.decommit(p, p).unwrap();
        r.commit(p, p, Prot::READ_WRITE).unwrap();
        assert_eq!(r.read_u8(p).unwrap(), 0);
    }

    #[test]
    fn page_size_is_read_at_run_time() {
        // SAFETY: sysconf has no preconditions.
        let expected = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        assert_eq!(page_size(), expected);
    }
}
