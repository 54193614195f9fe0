//! `/proc/self/pagemap`: per-page entries, the `PAGEMAP_SCAN` ioctl, and
//! soft-dirty clearing through `/proc/self/clear_refs`.
//!
//! # References
//! - Documentation/admin-guide/mm/pagemap.rst (PAGEMAP_SCAN, Linux 6.7)
//! - Documentation/admin-guide/mm/soft-dirty.rst

use crate::errno::{check, Result};
use crate::mem;
use core::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// `PAGE_IS_*` categories of `PAGEMAP_SCAN`.
pub mod category {
    /// The page is in a range registered for async write-protect.
    pub const WPALLOWED: u64 = 1 << 0;
    /// The page was written since write protection was last set.
    pub const WRITTEN: u64 = 1 << 1;
    /// The page is file-backed.
    pub const FILE: u64 = 1 << 2;
    /// The page is present.
    pub const PRESENT: u64 = 1 << 3;
    /// The page is swapped out.
    pub const SWAPPED: u64 = 1 << 4;
    /// The page is the shared zero page.
    pub const PFNZERO: u64 = 1 << 5;
    /// The page is part of a huge page.
    pub const HUGE: u64 = 1 << 6;
    /// The page is soft-dirty.
    pub const SOFT_DIRTY: u64 = 1 << 7;
}

/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported (get-and-clear).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range is registered with
/// `UFFD_FEATURE_WP_ASYNC`.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region`: a run of pages with the same categories.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First address of the run.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// The categories selected by `return_mask`.
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PmScanArg {
    /// Size of this structure.
    pub size: u64,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Start of the range to scan.
    pub start: u64,
    /// End of the range to scan.
    pub end: u64,
    /// Out: where the walk stopped (the vector filled up, or `max_pages`).
    pub walk_end: u64,
    /// Output vector of [`PageRegion`].
    pub vec: u64,
    /// Its length in elements.
    pub vec_len: u64,
    /// Stop after this many pages (0: no limit).
    pub max_pages: u64,
    /// Categories whose sense is inverted before matching.
    pub category_inverted: u64,
    /// A page must have all of these.
    pub category_mask: u64,
    /// A page must have at least one of these (0: no condition).
    pub category_anyof_mask: u64,
    /// Categories copied into each [`PageRegion`].
    pub return_mask: u64,
}

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Opens `/proc/self/pagemap` for reading.
pub fn open_pagemap() -> Result<OwnedFd> {
    mem::open(c"/proc/self/pagemap", libc::O_RDONLY)
}

/// `ioctl(pagemap, PAGEMAP_SCAN, arg)`—Scans a range, filling `out` with runs
/// of matching pages. Returns how many entries were filled and where the walk
/// ended (`arg.walk_end`): when it ended before `arg.end`, call again from
/// there.
///
/// With [`PM_SCAN_WP_MATCHING`] the kernel write-protects each reported page
/// while it holds the page-table lock, so a write can never fall between the
/// report and the protection.
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    arg: &mut PmScanArg,
    out: &mut [PageRegion],
) -> Result<(usize, u64)> {
    arg.size = size_of::<PmScanArg>() as u64;
    arg.vec = out.as_mut_ptr() as u64;
    arg.vec_len = out.len() as u64;
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points to `out`,
    // valid for writes of `vec_len` entries.
    let n = check(unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN as _,
            arg as *mut PmScanArg,
        )
    })?;
    Ok((n as usize, arg.walk_end))
}

/// Bit 55 of a pagemap entry: the page is soft-dirty.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Bit 63 of a pagemap entry: the page is present.
pub const PM_PRESENT: u64 = 1 << 63;

/// Reads the pagemap entries of `out.len()` pages starting at virtual address
/// `addr`.
pub fn read_entries(pagemap: BorrowedFd<'_>, addr: usize, out: &mut [u64]) -> Result<()> {
    let offset = (addr / mem::page_size()) as u64 * 8;
    // SAFETY: a `[u64]` may be viewed as bytes: u8 has no alignment or
    // validity requirement, and the length is the byte length of `out`.
    let bytes =
        unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 8) };
    let mut done = 0;
    while done < bytes.len() {
        let n = mem::pread(pagemap, &mut bytes[done..], offset + done as u64)?;
        if n == 0 {
            return Err(crate::Errno::EINVAL);
        }
        done += n;
    }
    Ok(())
}

/// Writes "4" to `/proc/self/clear_refs`: clears the soft-dirty bit of every
/// page of the process (the kernel write-protects them to notice the next
/// write).
pub fn clear_soft_dirty() -> Result<()> {
    let fd = mem::open(c"/proc/self/clear_refs", libc::O_WRONLY)?;
    mem::write(fd.as_fd(), b"4").map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_arg_layout_matches_the_kernel() {
        assert_eq!(size_of::<PmScanArg>(), 96);
        assert_eq!(size_of::<PageRegion>(), 24);
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
    }

    #[test]
    fn pagemap_marks_touched_pages_present() {
        let p = mem::page_size();
        let m = mem::mmap_anonymous(4 * p, mem::prot::READ | mem::prot::WRITE, 0).unwrap();
        // SAFETY: in bounds of our fresh mapping.
        unsafe { m.add(2 * p).write_volatile(1) };
        let fd = open_pagemap().unwrap();
        let mut e = [0u64; 4];
        read_entries(fd.as_fd(), m as usize, &mut e).unwrap();
        assert_eq!(e[2] & PM_PRESENT, PM_PRESENT);
        assert_eq!(e[1] & PM_PRESENT, 0);
        // SAFETY: ours, no references.
        unsafe { mem::munmap(m, 4 * p).unwrap() };
    }
}
