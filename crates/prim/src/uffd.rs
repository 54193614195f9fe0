//! A safe userfaultfd: feature detection, registration, the resolution
//! ioctls, and a [`Server`] thread for handlers that must block.
//!
//! Two deliveries ([`Delivery`]):
//! - [`Delivery::Sigbus`] (`UFFD_FEATURE_SIGBUS`): a fault raises `SIGBUS` in
//!   the faulting thread, which [`trap`](crate::trap) dispatches to the
//!   range's handler; the handler resolves it with an ioctl here. No thread
//!   switch: this is the fast path.
//! - [`Delivery::Messages`]: the faulting thread sleeps in the kernel while a
//!   [`Server`] thread reads the fault and resolves it. Handlers may block,
//!   lock and do I/O; each fault costs a wake-up of another thread.
//!
//! Where the kernel refuses userfaultfd (`vm.unprivileged_userfaultfd = 0`
//! without access to `/dev/userfaultfd`, a seccomp filter), [`Uffd::new`]
//! says so with [`UffdError::Refused`], naming the sysctl, and
//! [`mechanisms`](crate::mechanisms) reports the signal mechanisms as the
//! ones in use.
//!
//! The resolution calls ([`zeropage`](Uffd::zeropage), [`copy`](Uffd::copy),
//! [`write_protect`](Uffd::write_protect), ...) are async-signal-safe: one
//! ioctl, no allocation, errors without heap data.
//!
//! # References
//! - Documentation/admin-guide/mm/userfaultfd.rst
//! - [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)

use crate::range::{check_addr_range, page_size, RangeError};
use core::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use thiserror::Error;
use vmprim_sys::uffd as sys;
use vmprim_sys::Errno;

/// A set of userfaultfd features (`UFFD_FEATURE_*`).
///
/// # Examples
/// [`first_missing`](Self::first_missing) turns a feature check into an error
/// a user can act on: the feature's name and the kernel that brought it.
/// ```
/// use vmprim_prim::uffd::Features;
///
/// let wanted = Features::WP | Features::SIGBUS;
/// assert!(wanted.contains(Features::SIGBUS));
/// assert_eq!(wanted.names().collect::<Vec<_>>(), ["WP (write-protect)", "SIGBUS"]);
/// let old_kernel = Features::SIGBUS | Features::THREAD_ID;
/// assert_eq!(old_kernel.first_missing(wanted), Some(("WP (write-protect)", "5.7")));
/// assert_eq!(old_kernel.first_missing(Features::SIGBUS), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u64);

macro_rules! features {
    ($($name:ident = $bit:ident, $text:literal, $since:literal;)*) => {
        impl Features {
            $(
                #[doc = concat!("`UFFD_FEATURE_", stringify!($bit), "` (Linux ", $since, ").")]
                pub const $name: Self = Self(sys::feature::$bit);
            )*
            const TABLE: &'static [(Features, &'static str, &'static str)] =
                &[$((Self::$name, $text, $since)),*];
        }
    };
}

features! {
    WP = PAGEFAULT_FLAG_WP, "WP (write-protect)", "5.7";
    SIGBUS = SIGBUS, "SIGBUS", "4.14";
    THREAD_ID = THREAD_ID, "THREAD_ID", "4.14";
    MISSING_SHMEM = MISSING_SHMEM, "MISSING_SHMEM", "4.11";
    MINOR = MINOR_SHMEM, "MINOR (shmem)", "5.14";
    EXACT_ADDRESS = EXACT_ADDRESS, "EXACT_ADDRESS", "5.18";
    WP_SHMEM = WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM", "5.19";
    WP_UNPOPULATED = WP_UNPOPULATED, "WP_UNPOPULATED", "6.4";
    POISON = POISON, "POISON", "6.6";
    WP_ASYNC = WP_ASYNC, "WP_ASYNC", "6.7";
    MOVE = MOVE, "MOVE", "6.8";
}

impl Features {
    /// No features.
    pub const NONE: Self = Self(0);

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every feature of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The first feature of `wanted` missing from `self`, with the kernel
    /// version that introduced it.
    pub fn first_missing(self, wanted: Self) -> Option<(&'static str, &'static str)> {
        Self::TABLE
            .iter()
            .find(|(f, _, _)| wanted.contains(*f) && !self.contains(*f))
            .map(|&(_, name, since)| (name, since))
    }

    /// The names of the features in the set.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::TABLE
            .iter()
            .filter(move |(f, _, _)| self.contains(*f))
            .map(|&(_, n, _)| n)
    }
}

impl core::ops::BitOr for Features {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// What went wrong with userfaultfd.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum UffdError {
    /// The kernel refused to create a userfaultfd for this process.
    #[error(
        "userfaultfd is refused ({source}): set the sysctl vm.unprivileged_userfaultfd=1, \
         give this user access to /dev/userfaultfd (Linux 6.1+), or run with CAP_SYS_PTRACE; \
         a seccomp filter may also forbid it"
    )]
    Refused {
        /// The kernel's last answer.
        #[source]
        source: Errno,
    },
    /// This kernel does not have a feature.
    #[error("this kernel lacks userfaultfd feature {feature} (needs Linux {needs})")]
    KernelLacks {
        /// The feature.
        feature: &'static str,
        /// The first kernel version that has it.
        needs: &'static str,
    },
    /// A range is unusable.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The range overlaps a range already registered on this userfaultfd.
    #[error("range {start:#x}..{end:#x} overlaps a range already registered")]
    Overlap {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
    },
    /// The range was never registered on this userfaultfd.
    #[error("range {start:#x}..{end:#x} is not registered on this userfaultfd")]
    NotRegistered {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
    },
    /// An ioctl failed.
    #[error("{op} failed")]
    Os {
        /// The operation.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
}

/// How faults on a userfaultfd's ranges reach their handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// `SIGBUS` in the faulting thread, dispatched by [`trap`](crate::trap).
    Sigbus,
    /// Messages read by another thread (see [`Server`]).
    Messages,
}

/// What faults a registered range reports (`UFFDIO_REGISTER_MODE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(u64);

impl Mode {
    /// Faults on pages not present (anonymous memory never touched).
    pub const MISSING: Self = Self(sys::register_mode::MISSING);
    /// Write faults on pages write-protected with [`Uffd::write_protect`].
    pub const WP: Self = Self(sys::register_mode::WP);
    /// Faults on pages present in the page cache but not mapped (shmem).
    pub const MINOR: Self = Self(sys::register_mode::MINOR);
}

impl core::ops::BitOr for Mode {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Whether a resolution wakes the threads waiting on the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Wake them (the usual choice).
    Yes,
    /// Leave them asleep (wake later with [`Uffd::wake`]).
    No,
}

impl Wake {
    fn dontwake_bit(self, bit: u64) -> u64 {
        match self {
            Wake::Yes => 0,
            Wake::No => bit,
        }
    }
}

/// Which faults a userfaultfd can report for the kernel's own accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Faults from user code and from the kernel acting for the process
    /// (`read(2)` into a registered page).
    All,
    /// Only faults from user code (`UFFD_USER_MODE_ONLY`): the mode the
    /// kernel allows unprivileged users under `vm.unprivileged_userfaultfd = 0`.
    /// A kernel access to an unresolved page fails with `EFAULT`.
    UserOnly,
}

/// A userfaultfd with negotiated features.
pub struct Uffd {
    fd: OwnedFd,
    /// The features enabled on this descriptor.
    features: Features,
    /// Every feature the kernel offers (what `UFFDIO_API` reports, whatever
    /// was enabled): what the ioctls of [`need`](Self::need) require.
    kernel: Features,
    delivery: Delivery,
    scope: Scope,
    ranges: Mutex<Vec<(usize, usize)>>,
}

impl fmt::Debug for Uffd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uffd")
            .field("fd", &self.fd.as_raw_fd())
            .field("features", &self.features)
            .field("delivery", &self.delivery)
            .field("scope", &self.scope)
            .finish()
    }
}

static PROBE: OnceLock<Result<(Features, Scope), UffdError>> = OnceLock::new();

impl Uffd {
    /// The features this kernel offers to this process, detected once (by
    /// opening a userfaultfd and asking `UFFDIO_API` with no features).
    pub fn available() -> Result<Features, UffdError> {
        Self::probe().map(|(f, _)| f)
    }

    fn probe() -> Result<(Features, Scope), UffdError> {
        *PROBE.get_or_init(|| {
            let (fd, scope) = open_fd(0)?;
            let api = sys::api(fd.as_fd(), 0).map_err(|source| UffdError::Os {
                op: "UFFDIO_API",
                source,
            })?;
            Ok((Features(api.features), scope))
        })
    }

    /// Opens a userfaultfd with `features` (plus `SIGBUS` for
    /// [`Delivery::Sigbus`]). Fails with [`UffdError::KernelLacks`] naming
    /// the first feature this kernel does not have.
    ///
    /// # Examples
    /// In-thread resolution: with [`Delivery::Sigbus`] a touch of a missing
    /// page raises `SIGBUS` in the touching thread, and the range's
    /// [`trap`](crate::trap) handler fills the page. The handler runs in signal
    /// context, so the page's contents are prepared before any fault.
    /// ```
    /// use std::sync::Arc;
    /// use vmprim_prim::trap::{self, Cause, Outcome};
    /// use vmprim_prim::uffd::{Delivery, Features, Mode, Uffd, Wake};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::new(4 * p, Prot::READ_WRITE)?;
    /// let start = region.as_ptr() as usize;
    /// let uffd = Arc::new(Uffd::new(Delivery::Sigbus, Features::NONE)?);
    /// let (u, contents) = (uffd.clone(), vec![7u8; p]); // allocated before any fault
    /// let _reg = trap::register(start, region.len(), move |f| {
    ///     if f.cause != Cause::BusAddress {
    ///         return Outcome::NotOurs;
    ///     }
    ///     // No thread sleeps on a SIGBUS fault: nothing to wake.
    ///     u.copy(f.page, &contents, Wake::No).map_or(Outcome::NotOurs, |_| Outcome::Resolved)
    /// })?;
    /// uffd.register(start, region.len(), Mode::MISSING)?; // once the handler is in place
    /// assert_eq!(region.read_u8(2 * p + 5)?, 7);
    /// region.write_u8(3 * p, 1)?; // a write is filled first too
    /// assert_eq!((region.read_u8(3 * p)?, region.read_u8(3 * p + 1)?), (1, 7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(delivery: Delivery, features: Features) -> Result<Self, UffdError> {
        let (available, _) = Self::probe()?;
        let wanted = match delivery {
            Delivery::Sigbus => features | Features::SIGBUS,
            Delivery::Messages => features,
        };
        if let Some((feature, needs)) = available.first_missing(wanted) {
            return Err(UffdError::KernelLacks { feature, needs });
        }
        let (fd, scope) = open_fd(vmprim_sys::mem::O_NONBLOCK)?;
        let api = sys::api(fd.as_fd(), wanted.0).map_err(|source| UffdError::Os {
            op: "UFFDIO_API",
            source,
        })?;
        // The kernel turns on WP_UNPOPULATED with WP_ASYNC.
        let granted = if wanted.contains(Features::WP_ASYNC) {
            wanted | Features::WP_UNPOPULATED
        } else {
            wanted
        };
        Ok(Self {
            fd,
            features: granted,
            kernel: Features(api.features),
            delivery,
            scope,
            ranges: Mutex::new(Vec::new()),
        })
    }

    /// The features granted to this userfaultfd.
    pub fn features(&self) -> Features {
        self.features
    }

    /// How faults are delivered.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Whether the kernel's own accesses are reported too.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Registers `start..start + len` for the faults of `mode`.
    ///
    /// The range must be mapped (anonymous, shmem or hugetlbfs memory) and
    /// must not overlap a range already registered here.
    pub fn register(&self, start: usize, len: usize, mode: Mode) -> Result<(), UffdError> {
        let end = check_addr_range(start, len)?;
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        if ranges.iter().any(|&(s, e)| start < e && s < end) {
            return Err(UffdError::Overlap { start, end });
        }
        sys::register(self.fd.as_fd(), start as u64, len as u64, mode.0).map_err(|source| {
            UffdError::Os {
                op: "UFFDIO_REGISTER",
                source,
            }
        })?;
        ranges.push((start, end));
        Ok(())
    }

    /// Registers the mappings in `start..start + len` as they are now, for
    /// the faults of `mode`, without recording the range: for an owner that
    /// keeps replacing the mappings of a range it manages (a pmap), each
    /// replacement dropping the registration of what it replaced. It may
    /// be called again over pages already registered here; the kernel
    /// merges neighbouring registered mappings. [`register`](Self::register)
    /// and [`unregister`](Self::unregister) do not see these ranges.
    ///
    /// # Examples
    /// A mapping made over a registered page is not registered; covering
    /// the range again registers it, and write protection holds on it.
    /// ```
    /// use vmprim_prim::uffd::{Delivery, Features, Mode, Uffd};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::new(2 * p, Prot::READ_WRITE)?;
    /// let (start, len) = (region.as_ptr() as usize, region.len());
    /// let uffd = Uffd::new(Delivery::Sigbus, Features::WP)?;
    /// uffd.cover(start, len, Mode::WP)?;
    /// region.reset(p, p)?; // a new mapping of page 1: no longer registered
    /// region.unprot(p, p)?;
    /// assert!(uffd.write_protect(start, len).is_err());
    /// uffd.cover(start, len, Mode::WP)?; // page 0 again, page 1 anew
    /// uffd.write_protect(start, len)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cover(&self, start: usize, len: usize, mode: Mode) -> Result<(), UffdError> {
        check_addr_range(start, len)?;
        sys::register(self.fd.as_fd(), start as u64, len as u64, mode.0)
            .map(drop)
            .map_err(|source| UffdError::Os {
                op: "UFFDIO_REGISTER",
                source,
            })
    }

    /// Unregisters a range registered with [`register`](Self::register)
    /// (exactly that range).
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let end = check_addr_range(start, len)?;
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        let i = ranges
            .iter()
            .position(|&r| r == (start, end))
            .ok_or(UffdError::NotRegistered { start, end })?;
        sys::unregister(self.fd.as_fd(), start as u64, len as u64).map_err(|source| {
            UffdError::Os {
                op: "UFFDIO_UNREGISTER",
                source,
            }
        })?;
        ranges.swap_remove(i);
        Ok(())
    }

    /// Resolves missing faults on `start..start + len` with zero pages.
    /// Async-signal-safe. Returns the bytes filled; `EEXIST` means a page was
    /// already there (another thread resolved it), which is success too.
    pub fn zeropage(&self, start: usize, len: usize, wake: Wake) -> Result<usize, UffdError> {
        check_addr_range(start, len)?;
        let mode = wake.dontwake_bit(sys::MODE_DONTWAKE);
        resolved(
            sys::zeropage(self.fd.as_fd(), start as u64, len as u64, mode),
            "UFFDIO_ZEROPAGE",
        )
    }

    /// Resolves missing faults at `dst` with a copy of `src` (whose length is
    /// a multiple of the page size). Async-signal-safe; `EEXIST` counts as
    /// success, as for [`zeropage`](Self::zeropage).
    pub fn copy(&self, dst: usize, src: &[u8], wake: Wake) -> Result<usize, UffdError> {
        check_addr_range(dst, src.len())?;
        let mode = wake.dontwake_bit(sys::MODE_DONTWAKE);
        // SAFETY: `src` is readable for its length.
        let r = unsafe {
            sys::copy(
                self.fd.as_fd(),
                dst as u64,
                src.as_ptr(),
                src.len() as u64,
                mode,
            )
        };
        resolved(r, "UFFDIO_COPY")
    }

    /// Sets write protection on `start..start + len` (a range registered with
    /// [`Mode::WP`]). Async-signal-safe.
    ///
    /// # Examples
    /// Count the first write to each protected page. Without
    /// [`Features::WP_UNPOPULATED`] protection only holds on pages that are
    /// present, so the example writes them first.
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    /// use std::sync::Arc;
    /// use vmprim_prim::trap::{self, Outcome};
    /// use vmprim_prim::uffd::{Delivery, Features, Mode, Uffd, Wake};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::new(2 * p, Prot::READ_WRITE)?;
    /// let (start, len) = (region.as_ptr() as usize, region.len());
    /// let uffd = Arc::new(Uffd::new(Delivery::Sigbus, Features::WP)?);
    /// let (u, writes) = (uffd.clone(), Arc::new(AtomicUsize::new(0)));
    /// let w = writes.clone();
    /// let _reg = trap::register(start, len, move |f| {
    ///     w.fetch_add(1, Relaxed); // in signal context: an atomic, one ioctl
    ///     u.write_unprotect(f.page, p, Wake::No).map_or(Outcome::NotOurs, |()| Outcome::Resolved)
    /// })?;
    /// region.write_u8(0, 1)?;
    /// region.write_u8(p, 1)?;
    /// uffd.register(start, len, Mode::WP)?;
    /// uffd.write_protect(start, len)?;
    /// assert_eq!(region.read_u8(p)?, 1); // reads are not affected
    /// region.write_u8(p, 2)?; // traps
    /// region.write_u8(p, 3)?; // does not: the handler un-protected the page
    /// assert_eq!((writes.load(Relaxed), region.read_u8(p)?), (1, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_protect(&self, start: usize, len: usize) -> Result<(), UffdError> {
        self.writeprotect(start, len, sys::WRITEPROTECT_MODE_WP)
    }

    /// Clears write protection on `start..start + len`, waking the threads
    /// waiting on it as `wake` says. Async-signal-safe: this is how a handler
    /// resolves a write-protect fault.
    ///
    /// # Examples
    /// With [`Delivery::Messages`] the writer sleeps in the kernel until a
    /// [`Server`] thread un-protects the page, so the call must wake it
    /// ([`Wake::Yes`]).
    /// ```
    /// use std::sync::{mpsc, Arc};
    /// use vmprim_prim::uffd::{Delivery, Features, Mode, Server, Uffd, Wake};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::new(p, Prot::READ_WRITE)?;
    /// let start = region.as_ptr() as usize;
    /// region.write_u8(0, 1)?; // present, so that the protection holds
    /// let uffd = Arc::new(Uffd::new(Delivery::Messages, Features::WP)?);
    /// uffd.register(start, p, Mode::WP)?;
    /// uffd.write_protect(start, p)?;
    /// let (tx, faults) = mpsc::channel();
    /// let _server = Server::spawn(uffd, move |fault, uffd| {
    ///     let _ = tx.send(*fault);
    ///     uffd.write_unprotect(fault.page, p, Wake::Yes)
    /// })?;
    /// region.write_u8(0, 2)?; // sleeps until the server un-protects the page
    /// let fault = faults.try_recv()?;
    /// assert!(fault.wp && fault.write && fault.page == start);
    /// assert_eq!(region.read_u8(0)?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_unprotect(&self, start: usize, len: usize, wake: Wake) -> Result<(), UffdError> {
        self.writeprotect(
            start,
            len,
            wake.dontwake_bit(sys::WRITEPROTECT_MODE_DONTWAKE),
        )
    }

    fn writeprotect(&self, start: usize, len: usize, mode: u64) -> Result<(), UffdError> {
        check_addr_range(start, len)?;
        sys::writeprotect(self.fd.as_fd(), start as u64, len as u64, mode).map_err(|source| {
            UffdError::Os {
                op: "UFFDIO_WRITEPROTECT",
                source,
            }
        })
    }

    /// Resolves minor faults by mapping the pages already in the page cache.
    /// Async-signal-safe.
    pub fn continue_(&self, start: usize, len: usize, wake: Wake) -> Result<usize, UffdError> {
        check_addr_range(start, len)?;
        self.need(Features::MINOR)?;
        let mode = wake.dontwake_bit(sys::MODE_DONTWAKE);
        resolved(
            sys::continue_(self.fd.as_fd(), start as u64, len as u64, mode),
            "UFFDIO_CONTINUE",
        )
    }

    /// Marks missing pages poisoned: touching them raises `SIGBUS`, whatever
    /// the delivery. Async-signal-safe.
    ///
    /// The cause is [`Cause::Poisoned`](crate::trap::Cause::Poisoned) on
    /// kernels built with `CONFIG_MEMORY_FAILURE`; without it the kernel
    /// reports `BUS_ADRERR` ([`Cause::BusAddress`](crate::trap::Cause::BusAddress)),
    /// as for a missing page under [`Delivery::Sigbus`]. Filling a poisoned
    /// page fails with `EEXIST`, which [`zeropage`](Self::zeropage) and
    /// [`copy`](Self::copy) report as success: a handler that fills it
    /// faults again.
    pub fn poison(&self, start: usize, len: usize, wake: Wake) -> Result<usize, UffdError> {
        check_addr_range(start, len)?;
        self.need(Features::POISON)?;
        let mode = wake.dontwake_bit(sys::MODE_DONTWAKE);
        resolved(
            sys::poison(self.fd.as_fd(), start as u64, len as u64, mode),
            "UFFDIO_POISON",
        )
    }

    /// Moves the pages at `src` to the missing pages at `dst`, without
    /// copying. Async-signal-safe.
    ///
    /// # Safety
    /// `src..src + len` must be private anonymous memory the caller owns,
    /// with no Rust references into it: its pages are taken away and it
    /// reads as missing afterwards.
    pub unsafe fn move_(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        wake: Wake,
    ) -> Result<usize, UffdError> {
        check_addr_range(dst, len)?;
        check_addr_range(src, len)?;
        self.need(Features::MOVE)?;
        let mode = wake.dontwake_bit(sys::MODE_DONTWAKE);
        // SAFETY: the caller gives up `src`.
        resolved(
            unsafe { sys::move_(self.fd.as_fd(), dst as u64, src as u64, len as u64, mode) },
            "UFFDIO_MOVE",
        )
    }

    /// Wakes the threads waiting on `start..start + len`.
    pub fn wake(&self, start: usize, len: usize) -> Result<(), UffdError> {
        check_addr_range(start, len)?;
        sys::wake(self.fd.as_fd(), start as u64, len as u64).map_err(|source| UffdError::Os {
            op: "UFFDIO_WAKE",
            source,
        })
    }

    /// Reads the next fault, if one is pending ([`Delivery::Messages`]).
    pub fn read_fault(&self) -> Result<Option<UserFault>, UffdError> {
        loop {
            match sys::read_msg(self.fd.as_fd()) {
                Ok(msg) if msg.event == sys::EVENT_PAGEFAULT => {
                    return Ok(Some(UserFault::from_msg(&msg)))
                }
                Ok(_) => continue, // events vmprim did not ask for
                Err(e) if e == Errno::EAGAIN => return Ok(None),
                Err(e) if e == Errno::EINTR => continue,
                Err(source) => {
                    return Err(UffdError::Os {
                        op: "read(userfaultfd)",
                        source,
                    })
                }
            }
        }
    }

    fn need(&self, f: Features) -> Result<(), UffdError> {
        match self.kernel.first_missing(f) {
            None => Ok(()),
            Some((feature, needs)) => Err(UffdError::KernelLacks { feature, needs }),
        }
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Opens a userfaultfd: the syscall, then `/dev/userfaultfd`, then the
/// user-mode-only syscall that `vm.unprivileged_userfaultfd = 0` still allows.
fn open_fd(flags: i32) -> Result<(OwnedFd, Scope), UffdError> {
    let first = match sys::userfaultfd(flags) {
        Ok(fd) => return Ok((fd, Scope::All)),
        Err(e) if e == Errno::ENOSYS => {
            return Err(UffdError::KernelLacks {
                feature: "userfaultfd",
                needs: "4.3 with CONFIG_USERFAULTFD",
            })
        }
        Err(e) => e,
    };
    if let Ok(fd) = sys::userfaultfd_dev(flags) {
        return Ok((fd, Scope::All));
    }
    match sys::userfaultfd(flags | sys::UFFD_USER_MODE_ONLY) {
        Ok(fd) => Ok((fd, Scope::UserOnly)),
        Err(_) => Err(UffdError::Refused { source: first }),
    }
}

/// `EEXIST` from a fill means another thread filled the page first: the
/// fault is resolved all the same.
fn resolved(r: Result<u64, Errno>, op: &'static str) -> Result<usize, UffdError> {
    match r {
        Ok(n) => Ok(n as usize),
        Err(e) if e == Errno::EEXIST => Ok(0),
        Err(source) => Err(UffdError::Os { op, source }),
    }
}

/// A fault read from a userfaultfd ([`Delivery::Messages`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserFault {
    /// The faulting address (page-aligned unless `EXACT_ADDRESS` was asked).
    pub addr: usize,
    /// The start of its page.
    pub page: usize,
    /// The access was a write.
    pub write: bool,
    /// The page was write-protected (a [`Mode::WP`] fault).
    pub wp: bool,
    /// A minor fault (page in the page cache, not mapped).
    pub minor: bool,
    /// The faulting thread, with [`Features::THREAD_ID`].
    pub tid: Option<u32>,
}

impl UserFault {
    fn from_msg(m: &sys::UffdMsg) -> Self {
        let addr = m.address as usize;
        Self {
            addr,
            page: addr & !(page_size() - 1),
            write: m.flags & sys::PAGEFAULT_FLAG_WRITE != 0,
            wp: m.flags & sys::PAGEFAULT_FLAG_WP != 0,
            minor: m.flags & sys::PAGEFAULT_FLAG_MINOR != 0,
            tid: (m.ptid != 0).then_some(m.ptid),
        }
    }
}

mod server;
pub use server::Server;
