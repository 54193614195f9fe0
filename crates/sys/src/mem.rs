//! Address-space calls: `mmap`, `munmap`, `mprotect`, `madvise`, `memfd_create`.

use crate::errno::{check, Errno, Result};
use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `MAP_NORESERVE`: do not reserve swap for the mapping.
pub const MAP_NORESERVE: i32 = libc::MAP_NORESERVE;
/// `MAP_POPULATE`: fill the page-table entries at `mmap` time.
pub const MAP_POPULATE: i32 = libc::MAP_POPULATE;

/// Page protection bits, as `mmap(2)` and `mprotect(2)` take them.
pub mod prot {
    /// No access.
    pub const NONE: i32 = libc::PROT_NONE;
    /// Readable.
    pub const READ: i32 = libc::PROT_READ;
    /// Writable.
    pub const WRITE: i32 = libc::PROT_WRITE;
    /// Executable.
    pub const EXEC: i32 = libc::PROT_EXEC;
}

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// `sysconf(_SC_PAGESIZE)`—The size of a page, read once at run time.
///
/// Never assumed: kernels with 16 KiB or 64 KiB pages exist (aarch64,
/// ppc64). The first call asks the kernel; later calls read a cached value
/// and are async-signal-safe.
///
/// # References
/// - [`sysconf(3)`](https://man7.org/linux/man-pages/man3/sysconf.3.html)
pub fn page_size() -> usize {
    let cached = PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = usize::try_from(size).expect("sysconf(_SC_PAGESIZE) failed");
    assert!(
        size.is_power_of_two(),
        "page size {size} is not a power of two"
    );
    PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

/// `mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0)`—Maps
/// fresh zero-filled memory at an address the kernel picks.
///
/// `extra` may add `MAP_NORESERVE`; the function refuses `MAP_FIXED`, which
/// could replace existing mappings.
///
/// # References
/// - [`mmap(2)`](https://man7.org/linux/man-pages/man2/mmap.2.html)
pub fn mmap_anonymous(len: usize, prot: i32, extra: i32) -> Result<*mut u8> {
    if extra & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0 {
        return Err(Errno::EINVAL);
    }
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra;
    // SAFETY: without MAP_FIXED the kernel picks an unused address, so no
    // existing mapping (and no Rust object) is affected.
    let ptr = unsafe { libc::mmap(core::ptr::null_mut(), len, prot, flags, -1, 0) };
    mmap_result(ptr)
}

/// `mmap(NULL, len, prot, MAP_SHARED, fd, offset)`—Maps a view of a file at
/// an address the kernel picks.
///
/// # References
/// - [`mmap(2)`](https://man7.org/linux/man-pages/man2/mmap.2.html)
pub fn mmap_shared(len: usize, prot: i32, fd: BorrowedFd<'_>, offset: u64) -> Result<*mut u8> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    // SAFETY: without MAP_FIXED the kernel picks an unused address.
    let ptr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset,
        )
    };
    mmap_result(ptr)
}

/// `mmap(addr, len, prot, MAP_SHARED | MAP_FIXED, fd, offset)`—Replaces the
/// pages at `addr` with a view of a file.
///
/// # Safety
/// - `addr..addr + len` must be page-aligned memory that the caller owns
///   (mapped by it, e.g. reserved with [`mmap_anonymous`]).
/// - There must be no Rust references into that range: its contents change.
///
/// # References
/// - [`mmap(2)`](https://man7.org/linux/man-pages/man2/mmap.2.html)
pub unsafe fn mmap_shared_fixed(
    addr: *mut u8,
    len: usize,
    prot: i32,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> Result<()> {
    // SAFETY: the caller upholds the same contract.
    unsafe { mmap_shared_fixed_flags(addr, len, prot, fd, offset, 0) }
}

/// [`mmap_shared_fixed`] with `extra` flags added, such as `MAP_POPULATE`
/// (fill the page-table entries now, so the first accesses do not fault).
///
/// # Safety
/// Same as [`mmap_shared_fixed`].
pub unsafe fn mmap_shared_fixed_flags(
    addr: *mut u8,
    len: usize,
    prot: i32,
    fd: BorrowedFd<'_>,
    offset: u64,
    extra: i32,
) -> Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let flags = libc::MAP_SHARED | libc::MAP_FIXED | extra;
    // SAFETY: the caller owns the range and holds no references into it.
    let ptr = unsafe { libc::mmap(addr.cast(), len, prot, flags, fd.as_raw_fd(), offset) };
    mmap_result(ptr).map(|_| ())
}

/// `mmap(addr, len, prot, MAP_PRIVATE | MAP_FIXED, fd, offset)`—Replaces
/// the pages at `addr` with a private view of a file: reads see the file's
/// pages in the page cache, and a write (if `prot` allows one) copies the
/// page privately, never reaching the file.
///
/// # Safety
/// Same as [`mmap_shared_fixed`].
///
/// # References
/// - [`mmap(2)`](https://man7.org/linux/man-pages/man2/mmap.2.html)
pub unsafe fn mmap_private_fixed(
    addr: *mut u8,
    len: usize,
    prot: i32,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let flags = libc::MAP_PRIVATE | libc::MAP_FIXED;
    // SAFETY: the caller owns the range and holds no references into it.
    let ptr = unsafe { libc::mmap(addr.cast(), len, prot, flags, fd.as_raw_fd(), offset) };
    mmap_result(ptr).map(|_| ())
}

/// `mmap(addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)`—
/// Replaces the pages at `addr` with fresh zero-filled memory.
///
/// # Safety
/// Same as [`mmap_shared_fixed`].
pub unsafe fn mmap_anonymous_fixed(addr: *mut u8, len: usize, prot: i32) -> Result<()> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
    // SAFETY: the caller owns the range and holds no references into it.
    let ptr = unsafe { libc::mmap(addr.cast(), len, prot, flags, -1, 0) };
    mmap_result(ptr).map(|_| ())
}

/// `mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
/// MAP_FIXED, -1, 0)`: replaces the pages at `addr` with inaccessible
/// reserved address space.
///
/// # Safety
/// Same as [`mmap_shared_fixed`].
pub unsafe fn mmap_anonymous_fixed_reserve(addr: *mut u8, len: usize) -> Result<()> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE;
    // SAFETY: the caller owns the range and holds no references into it.
    let ptr = unsafe { libc::mmap(addr.cast(), len, libc::PROT_NONE, flags, -1, 0) };
    mmap_result(ptr).map(|_| ())
}

fn mmap_result(ptr: *mut c_void) -> Result<*mut u8> {
    if ptr == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(ptr.cast())
    }
}

/// `munmap(addr, len)`—Removes the mappings of a range.
///
/// # Safety
/// - The range must be memory the caller mapped and owns.
/// - There must be no Rust references referring to that memory, and no
///   further use of it.
///
/// # References
/// - [`munmap(2)`](https://man7.org/linux/man-pages/man2/munmap.2.html)
pub unsafe fn munmap(addr: *mut u8, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range and will not use it again.
    check(unsafe { libc::munmap(addr.cast(), len) }).map(|_| ())
}

/// `mprotect(addr, len, prot)`—Changes the protection of a range.
///
/// Async-signal-safe: this is the PROT1 / PROTN / UNPROT of a fault handler.
///
/// # Safety
/// - The range must be page-aligned memory the caller owns.
/// - Memory Rust code reads or writes through references must not become
///   inaccessible underneath it unless a fault handler resolves the access.
///
/// # References
/// - [`mprotect(2)`](https://man7.org/linux/man-pages/man2/mprotect.2.html)
pub unsafe fn mprotect(addr: *mut u8, len: usize, prot: i32) -> Result<()> {
    // SAFETY: the caller owns the range.
    check(unsafe { libc::mprotect(addr.cast(), len, prot) }).map(|_| ())
}

/// `madvise(addr, len, MADV_DONTNEED)`—Drops the pages of a private anonymous
/// range: the next touch reads zeros.
///
/// # Safety
/// - The range must be page-aligned memory the caller owns.
/// - There must be no Rust references into it: its contents change.
///
/// # References
/// - [`madvise(2)`](https://man7.org/linux/man-pages/man2/madvise.2.html)
pub unsafe fn madvise_dontneed(addr: *mut u8, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range and holds no references into it.
    check(unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) }).map(|_| ())
}

/// `memfd_create(name, MFD_CLOEXEC)`—Creates an anonymous file in memory.
///
/// # References
/// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
pub fn memfd_create(name: &CStr) -> Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ftruncate(fd, len)`—Sets a file's size.
///
/// # References
/// - [`ftruncate(2)`](https://man7.org/linux/man-pages/man2/ftruncate.2.html)
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EINVAL)?;
    // SAFETY: ftruncate has no memory-safety preconditions.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(|_| ())
}

/// `pwrite(fd, buf, offset)`—Writes to a file at an offset. Into a memfd
/// (shmem) this allocates the pages it fills without zeroing them first,
/// unlike a store through a mapping.
///
/// # References
/// - [`pwrite(2)`](https://man7.org/linux/man-pages/man2/pwrite.2.html)
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// `pread(fd, buf, offset)`—Reads from a file at an offset.
///
/// # References
/// - [`pread(2)`](https://man7.org/linux/man-pages/man2/pread.2.html)
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// `read(fd, buf)`—Reads from a descriptor into raw memory.
///
/// Used to show how each DIRTY backend sees writes the kernel makes on the
/// process's behalf.
///
/// # Safety
/// `buf..buf + len` must be memory the caller owns, with no Rust references
/// into it.
///
/// # References
/// - [`read(2)`](https://man7.org/linux/man-pages/man2/read.2.html)
pub unsafe fn read_raw(fd: BorrowedFd<'_>, buf: *mut u8, len: usize) -> Result<usize> {
    // SAFETY: the caller owns the destination range.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.cast(), len) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// `write(fd, buf)`—Writes bytes to a descriptor.
///
/// # References
/// - [`write(2)`](https://man7.org/linux/man-pages/man2/write.2.html)
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// `open(path, flags | O_CLOEXEC)`—Opens a file.
///
/// # References
/// - [`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html)
pub fn open(path: &CStr, flags: i32) -> Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string for the call.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pipe2(O_CLOEXEC)`—Creates a pipe: (read end, write end).
///
/// # References
/// - [`pipe(2)`](https://man7.org/linux/man-pages/man2/pipe.2.html)
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned these descriptors to us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `O_NONBLOCK`, for descriptors read from a poll loop.
pub const O_NONBLOCK: i32 = libc::O_NONBLOCK;

/// `poll([a, b], -1)`—Waits until `a` or `b` is readable (or hung up);
/// returns which.
///
/// # References
/// - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html)
pub fn poll2(a: i32, b: BorrowedFd<'_>) -> Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd.
    check(unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) })?;
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((ready(&fds[0]), ready(&fds[1])))
}

/// Reads the resident-set size of this process from `/proc/self/statm`, in
/// bytes. Not async-signal-safe (it opens a file).
pub fn resident_bytes() -> Result<u64> {
    let fd = open(c"/proc/self/statm", libc::O_RDONLY)?;
    let mut buf = [0u8; 128];
    let n = pread(fd.as_fd(), &mut buf, 0)?;
    let text = core::str::from_utf8(&buf[..n]).map_err(|_| Errno::EINVAL)?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Errno::EINVAL)?;
    Ok(pages * page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_a_power_of_two_and_cached() {
        let p = page_size();
        assert!(p.is_power_of_two() && p >= 4096);
        assert_eq!(page_size(), p);
    }

    #[test]
    fn mmap_anonymous_refuses_fixed() {
        assert_eq!(
            mmap_anonymous(4096, prot::READ, libc::MAP_FIXED),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn mmap_protect_unmap_round_trip() {
        let p = page_size();
        let m = mmap_anonymous(2 * p, prot::READ | prot::WRITE, 0).unwrap();
        // SAFETY: we own the fresh mapping and hold no references into it.
        unsafe {
            m.write(7);
            mprotect(m, p, prot::READ).unwrap();
            assert_eq!(m.read(), 7);
            assert_eq!(mprotect(m.add(1), p, prot::READ), Err(Errno::EINVAL));
            munmap(m, 2 * p).unwrap();
        }
    }

    #[test]
    fn memfd_views_share_pages() {
        let p = page_size();
        let fd = memfd_create(c"test").unwrap();
        ftruncate(fd.as_fd(), p as u64).unwrap();
        let a = mmap_shared(p, prot::READ | prot::WRITE, fd.as_fd(), 0).unwrap();
        let b = mmap_shared(p, prot::READ, fd.as_fd(), 0).unwrap();
        // SAFETY: both views are ours; accesses are raw and in bounds.
        unsafe {
            a.add(10).write_volatile(42);
            assert_eq!(b.add(10).read_volatile(), 42);
            munmap(a, p).unwrap();
            munmap(b, p).unwrap();
        }
    }

    #[test]
    fn resident_bytes_grows_when_pages_are_touched() {
        let p = page_size();
        let n = 4096;
        let m = mmap_anonymous(n * p, prot::READ | prot::WRITE, 0).unwrap();
        let before = resident_bytes().unwrap();
        for i in 0..n {
            // SAFETY: in bounds of our mapping.
            unsafe { m.add(i * p).write_volatile(1) };
        }
        let after = resident_bytes().unwrap();
        assert!(
            after >= before + (n as u64 * p as u64) / 2,
            "{before} -> {after}"
        );
        // SAFETY: ours, no references.
        unsafe { munmap(m, n * p).unwrap() };
    }
}
