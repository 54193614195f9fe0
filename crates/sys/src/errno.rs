//! [`Errno`]: an OS error code that needs no allocation.

use core::fmt;

/// An error number returned by the kernel.
///
/// Unlike [`std::io::Error`] it is `Copy`, carries nothing but the number, and
/// can be created and returned in a signal handler.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

/// The result of a system call wrapper.
pub type Result<T> = core::result::Result<T, Errno>;

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Self = Self(libc::EPERM);
    /// No such file or directory.
    pub const ENOENT: Self = Self(libc::ENOENT);
    /// Interrupted system call.
    pub const EINTR: Self = Self(libc::EINTR);
    /// Try again.
    pub const EAGAIN: Self = Self(libc::EAGAIN);
    /// Out of memory.
    pub const ENOMEM: Self = Self(libc::ENOMEM);
    /// Permission denied.
    pub const EACCES: Self = Self(libc::EACCES);
    /// Bad address.
    pub const EFAULT: Self = Self(libc::EFAULT);
    /// Device or resource busy.
    pub const EBUSY: Self = Self(libc::EBUSY);
    /// File exists (a page is already mapped there).
    pub const EEXIST: Self = Self(libc::EEXIST);
    /// Invalid argument.
    pub const EINVAL: Self = Self(libc::EINVAL);
    /// Function not implemented.
    pub const ENOSYS: Self = Self(libc::ENOSYS);
    /// Inappropriate ioctl for device.
    pub const ENOTTY: Self = Self(libc::ENOTTY);
    /// No such process or thread (the faulting thread is gone).
    pub const ESRCH: Self = Self(libc::ESRCH);
    /// No space left on device (a write that made no progress).
    pub const ENOSPC: Self = Self(libc::ENOSPC);

    /// Wraps a raw error number.
    pub const fn from_raw(raw: i32) -> Self {
        Self(raw)
    }

    /// The raw error number.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// Sets the calling thread's `errno` (a signal handler puts back the
    /// value it found, so the interrupted code never sees a change).
    pub fn set_last(self) {
        // SAFETY: `__errno_location` returns a valid pointer to the calling
        // thread's errno for the life of the thread.
        unsafe { *libc::__errno_location() = self.0 };
    }

    /// The calling thread's `errno`, read right after a failed call.
    pub fn last() -> Self {
        // SAFETY: `__errno_location` returns a valid pointer to the calling
        // thread's errno for the life of the thread.
        Self(unsafe { *libc::__errno_location() })
    }
}

/// Turns a C return value into a `Result`: `-1` means "look at errno".
pub(crate) fn check(ret: libc::c_int) -> Result<libc::c_int> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// [`check`] for calls that return a `long` (raw `syscall`, `ioctl` counts).
pub(crate) fn check_long(ret: libc::c_long) -> Result<libc::c_long> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            std::io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&std::io::Error::from_raw_os_error(self.0), f)
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_maps_minus_one_to_errno() {
        assert_eq!(check(3), Ok(3));
        // SAFETY: closing an invalid descriptor only sets errno.
        let r = unsafe { libc::close(-1) };
        assert_eq!(check(r), Err(Errno::from_raw(libc::EBADF)));
    }

    #[test]
    fn display_names_the_error() {
        assert!(Errno::EINVAL.to_string().contains("Invalid argument"));
        assert!(format!("{:?}", Errno::ENOMEM).contains("12"));
    }
}
