//! userfaultfd: the raw ABI of `linux/userfaultfd.h`, and one wrapper per
//! ioctl.
//!
//! The structures are declared here rather than taken from `libc`, so that
//! the features newer than the C library (`WP_ASYNC`, `MOVE`, `POISON`) are
//! available whatever glibc the build machine has. Layouts are checked against
//! the kernel's sizes in the tests below.
//!
//! # References
//! - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
//! - [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! - Documentation/admin-guide/mm/userfaultfd.rst in the kernel tree

use crate::errno::{check, check_long, Errno, Result};
use core::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The only API version the kernel speaks.
pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: handle only faults from user mode (allowed without
/// privilege where `vm.unprivileged_userfaultfd = 0`).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

/// `UFFD_FEATURE_*` bits of [`UffdioApi::features`].
pub mod feature {
    /// Fault messages say whether the fault was a write-protect fault.
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// `fork` events.
    pub const EVENT_FORK: u64 = 1 << 1;
    /// `mremap` events.
    pub const EVENT_REMAP: u64 = 1 << 2;
    /// `madvise(MADV_DONTNEED)` events.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// Missing faults on hugetlbfs.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// Missing faults on shmem / memfd.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// `munmap` events.
    pub const EVENT_UNMAP: u64 = 1 << 6;
    /// Deliver faults as `SIGBUS` to the faulting thread instead of messages.
    pub const SIGBUS: u64 = 1 << 7;
    /// Fault messages carry the faulting thread's id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// Minor faults on hugetlbfs.
    pub const MINOR_HUGETLBFS: u64 = 1 << 9;
    /// Minor faults on shmem / memfd.
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// Fault addresses are not masked to the page.
    pub const EXACT_ADDRESS: u64 = 1 << 11;
    /// Write-protect on hugetlbfs and shmem.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// Write-protect applies to pages not yet populated.
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 14;
    /// Write-protect faults resolve themselves; written pages are found with
    /// `PAGEMAP_SCAN`.
    pub const WP_ASYNC: u64 = 1 << 15;
    /// `UFFDIO_MOVE`.
    pub const MOVE: u64 = 1 << 16;
}

/// `UFFDIO_REGISTER_MODE_*` bits.
pub mod register_mode {
    /// Report faults on pages not present.
    pub const MISSING: u64 = 1 << 0;
    /// Report write faults on write-protected pages.
    pub const WP: u64 = 1 << 1;
    /// Report faults on pages present in the page cache but not mapped.
    pub const MINOR: u64 = 1 << 2;
}

/// `UFFD_EVENT_PAGEFAULT`: the message describes a page fault.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_PAGEFAULT_FLAG_WRITE`: the fault was a write.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `UFFD_PAGEFAULT_FLAG_WP`: the fault hit a write-protected page.
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// `UFFD_PAGEFAULT_FLAG_MINOR`: the fault was a minor fault.
pub const PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// Mode bit for copy / zeropage / continue / writeprotect / poison: do not
/// wake the threads waiting on the range.
pub const MODE_DONTWAKE: u64 = 1 << 0;
/// `UFFDIO_COPY_MODE_WP` / `UFFDIO_CONTINUE_MODE_WP`: map the page write-protected.
pub const MODE_COPY_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: set (not clear) write protection.
pub const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
pub const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioApi {
    /// Must be [`UFFD_API`].
    pub api: u64,
    /// In: the features asked for. Out: the features granted.
    pub features: u64,
    /// Out: the ioctls the descriptor supports (bit `n` = ioctl number `n`).
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRange {
    /// Start address, page-aligned.
    pub start: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioRangeOp {
    range: UffdioRange,
    mode: u64,
    result: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg`, restricted to the page-fault event vmprim reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// For page faults: `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
    /// For page faults: the faulting address.
    pub address: u64,
    /// For page faults with `THREAD_ID`: the faulting thread.
    pub ptid: u32,
    reserved4: u32,
}

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;

/// Ioctl numbers, as `linux/userfaultfd.h` computes them.
pub mod ioctl {
    use super::*;
    /// `UFFDIO_API`.
    pub const API: u64 = ioc(IOC_RW, 0x3F, size_of::<UffdioApi>());
    /// `UFFDIO_REGISTER`.
    pub const REGISTER: u64 = ioc(IOC_RW, 0x00, size_of::<UffdioRegister>());
    /// `UFFDIO_UNREGISTER`.
    pub const UNREGISTER: u64 = ioc(IOC_READ, 0x01, size_of::<UffdioRange>());
    /// `UFFDIO_WAKE`.
    pub const WAKE: u64 = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
    /// `UFFDIO_COPY`.
    pub const COPY: u64 = ioc(IOC_RW, 0x03, size_of::<UffdioCopy>());
    /// `UFFDIO_ZEROPAGE`.
    pub const ZEROPAGE: u64 = ioc(IOC_RW, 0x04, size_of::<UffdioRangeOp>());
    /// `UFFDIO_MOVE`.
    pub const MOVE: u64 = ioc(IOC_RW, 0x05, size_of::<UffdioCopy>());
    /// `UFFDIO_WRITEPROTECT`.
    pub const WRITEPROTECT: u64 = ioc(IOC_RW, 0x06, size_of::<UffdioWriteprotect>());
    /// `UFFDIO_CONTINUE`.
    pub const CONTINUE: u64 = ioc(IOC_RW, 0x07, size_of::<UffdioRangeOp>());
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = ioc(IOC_RW, 0x08, size_of::<UffdioRangeOp>());
    /// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`.
    pub const DEV_NEW: u64 = 0xAA << 8;
}

fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> Result<libc::c_int> {
    // SAFETY: every caller passes the structure whose size is encoded in
    // `request`; the kernel reads and writes only that structure.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) })
}

/// `userfaultfd(flags)`—Creates a userfaultfd with `O_CLOEXEC` and the given
/// extra flags (`O_NONBLOCK`, [`UFFD_USER_MODE_ONLY`]).
pub fn userfaultfd(flags: i32) -> Result<OwnedFd> {
    // SAFETY: the syscall takes an integer and returns a new descriptor.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_userfaultfd, flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW, flags)`—Creates a
/// userfaultfd through the device node, which access to the node permits even
/// where `vm.unprivileged_userfaultfd = 0`.
pub fn userfaultfd_dev(flags: i32) -> Result<OwnedFd> {
    let dev = crate::mem::open(c"/dev/userfaultfd", libc::O_RDWR)?;
    // SAFETY: USERFAULTFD_IOC_NEW takes an integer and returns a new descriptor.
    let fd = check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            ioctl::DEV_NEW as _,
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `UFFDIO_API`—Negotiates the API and features; returns what was granted.
pub fn api(fd: BorrowedFd<'_>, features: u64) -> Result<UffdioApi> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl_ptr(fd, ioctl::API, &mut arg)?;
    Ok(arg)
}

/// `UFFDIO_REGISTER`—Registers a range; returns the ioctls it supports.
pub fn register(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<u64> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    ioctl_ptr(fd, ioctl::REGISTER, &mut arg)?;
    Ok(arg.ioctls)
}

/// `UFFDIO_UNREGISTER`—Unregisters a range.
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    ioctl_ptr(fd, ioctl::UNREGISTER, &mut UffdioRange { start, len }).map(|_| ())
}

/// `UFFDIO_WAKE`—Wakes the threads waiting on a range.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    ioctl_ptr(fd, ioctl::WAKE, &mut UffdioRange { start, len }).map(|_| ())
}

/// `UFFDIO_COPY`—Atomically fills missing pages at `dst` with a copy of `src`.
///
/// Returns the bytes copied; `EAGAIN` means the range changed underneath and
/// the call may be retried for the rest, `EEXIST` that a page was present.
///
/// # Safety
/// `src..src + len` must be readable. (`dst` is checked by the kernel: only
/// missing pages of a registered range are filled.)
pub unsafe fn copy(
    fd: BorrowedFd<'_>,
    dst: u64,
    src: *const u8,
    len: u64,
    mode: u64,
) -> Result<u64> {
    let mut arg = UffdioCopy {
        dst,
        src: src as u64,
        len,
        mode,
        copy: 0,
    };
    let r = ioctl_ptr(fd, ioctl::COPY, &mut arg);
    partial(r, arg.copy)
}

/// `UFFDIO_ZEROPAGE`—Fills missing pages with zeros.
pub fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<u64> {
    let mut arg = UffdioRangeOp {
        range: UffdioRange { start, len },
        mode,
        result: 0,
    };
    let r = ioctl_ptr(fd, ioctl::ZEROPAGE, &mut arg);
    partial(r, arg.result)
}

/// `UFFDIO_CONTINUE`—Maps pages already in the page cache (minor faults).
pub fn continue_(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<u64> {
    let mut arg = UffdioRangeOp {
        range: UffdioRange { start, len },
        mode,
        result: 0,
    };
    let r = ioctl_ptr(fd, ioctl::CONTINUE, &mut arg);
    partial(r, arg.result)
}

/// `UFFDIO_POISON`—Makes future accesses to missing pages raise `SIGBUS`
/// (as a hardware memory error would).
pub fn poison(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<u64> {
    let mut arg = UffdioRangeOp {
        range: UffdioRange { start, len },
        mode,
        result: 0,
    };
    let r = ioctl_ptr(fd, ioctl::POISON, &mut arg);
    partial(r, arg.result)
}

/// `UFFDIO_MOVE`—Moves pages from `src` to missing pages at `dst` without
/// copying.
///
/// # Safety
/// `src..src + len` must be memory the caller owns with no Rust references
/// into it: its pages are taken away.
pub unsafe fn move_(fd: BorrowedFd<'_>, dst: u64, src: u64, len: u64, mode: u64) -> Result<u64> {
    let mut arg = UffdioCopy {
        dst,
        src,
        len,
        mode,
        copy: 0,
    };
    let r = ioctl_ptr(fd, ioctl::MOVE, &mut arg);
    partial(r, arg.copy)
}

/// `UFFDIO_WRITEPROTECT`—Sets or clears write protection on a range.
pub fn writeprotect(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<()> {
    let mut arg = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode,
    };
    ioctl_ptr(fd, ioctl::WRITEPROTECT, &mut arg).map(|_| ())
}

/// The kernel reports partial progress in the structure and an error in
/// errno: keep the progress when there was some.
fn partial(r: Result<libc::c_int>, done: i64) -> Result<u64> {
    match r {
        Ok(_) => Ok(u64::try_from(done).unwrap_or(0)),
        Err(e) if done > 0 => {
            let _ = e;
            Ok(done as u64)
        }
        Err(e) => Err(e),
    }
}

/// `read(fd, &mut msg)`—Reads one event. `EAGAIN` on a non-blocking
/// descriptor means none is pending.
pub fn read_msg(fd: BorrowedFd<'_>) -> Result<UffdMsg> {
    let mut msg = UffdMsg::default();
    // SAFETY: `msg` is valid for writes of its size, which is the size of
    // `struct uffd_msg`.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut msg as *mut UffdMsg).cast(),
            size_of::<UffdMsg>(),
        )
    };
    match usize::try_from(n) {
        Ok(n) if n == size_of::<UffdMsg>() => Ok(msg),
        Ok(_) => Err(Errno::EINVAL),
        Err(_) => Err(Errno::last()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioCopy>(), 40);
        assert_eq!(size_of::<UffdioRangeOp>(), 32);
        assert_eq!(size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(size_of::<UffdMsg>(), 32);
    }

    #[test]
    fn ioctl_numbers_match_the_header() {
        // Values from linux/userfaultfd.h as compiled on x86_64 and aarch64.
        assert_eq!(ioctl::API, 0xC018_AA3F);
        assert_eq!(ioctl::REGISTER, 0xC020_AA00);
        assert_eq!(ioctl::UNREGISTER, 0x8010_AA01);
        assert_eq!(ioctl::COPY, 0xC028_AA03);
        assert_eq!(ioctl::WRITEPROTECT, 0xC018_AA06);
        assert_eq!(ioctl::DEV_NEW, 0xAA00);
    }

    #[test]
    fn partial_progress_wins_over_the_error() {
        assert_eq!(partial(Err(Errno::EAGAIN), 4096), Ok(4096));
        assert_eq!(partial(Err(Errno::EEXIST), 0), Err(Errno::EEXIST));
        assert_eq!(partial(Ok(0), 8192), Ok(8192));
    }
}
