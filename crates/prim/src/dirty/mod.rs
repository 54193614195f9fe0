//! DIRTY: which pages were written since the last look, with get-and-clear
//! semantics, through every mechanism Linux offers.
//!
//! | [`Backend`] | how a write is noticed | cost of a write | kernel writes (`read(2)` into a tracked page) |
//! |---|---|---|---|
//! | [`Trap`](Backend::Trap) | page read-only; `SIGSEGV` handler records it and unprotects | a trap and an `mprotect` | the first to a clean page fails with `EFAULT` (the kernel raises no signal for its own access); to a page already dirty it succeeds |
//! | [`UffdWp`](Backend::UffdWp) | userfaultfd write-protect; `SIGBUS` handler records and un-protects | a trap and an ioctl, no VMA split | as for `Trap`: `EFAULT` on a clean page |
//! | [`WpAsync`](Backend::WpAsync) | `UFFD_FEATURE_WP_ASYNC`: the kernel resolves the fault itself and marks the page written; `PAGEMAP_SCAN` reads and re-protects | a minor fault in the kernel, no signal | recorded like any other write |
//! | [`SoftDirty`](Backend::SoftDirty) | `/proc/self/clear_refs` + pagemap bit 55 | a minor fault in the kernel | recorded like any other write |
//!
//! [`track`] with [`Choice::Best`] takes the first of `WpAsync`, `UffdWp`,
//! `Trap` that this kernel and process allow; any backend can be forced.
//! [`DirtyTracker::backend`] says which one is in use.
//!
//! # No write is missed
//! A write that races a collection is reported by that collection or by the
//! next. For `WpAsync` the kernel guarantees it: `PAGEMAP_SCAN` with
//! `PM_SCAN_WP_MATCHING` reports and re-protects each page under its
//! page-table lock. For the two trap backends the handler and the collector
//! keep an order: the handler first un-protects the page and then sets its
//! bit; the collector first clears a bit (atomic swap of a word) and then
//! re-protects the pages it took. So a page is writable with a clear bit only
//! while a handler is between its two steps (its bit is about to be set) or a
//! collector is between its two steps (the page is in the set that collector
//! is about to report). `SoftDirty` cannot promise this: the kernel has no
//! atomic read-and-clear for soft-dirty bits, so writes made while
//! [`collect`](DirtyTracker::collect) runs may be missed; use it only with
//! writers paused, and it is never chosen by [`Choice::Best`].

mod bitmap;
mod soft_dirty;
mod trap_backend;
mod uffd_wp;
mod wp_async;

use crate::range::{check_within, page_size, RangeError};
use crate::trap::TrapError;
use crate::uffd::UffdError;
use crate::Region;
use core::fmt;
use std::sync::Arc;
use thiserror::Error;
use vmprim_sys::Errno;

pub use soft_dirty::soft_dirty_available;

/// A run of dirty pages: `count` pages starting at page `first` of the
/// tracked range.
///
/// # Examples
/// Page indices count from the start of the tracked range, not of the
/// region: page `i` of a range tracked from `offset` is at region offset
/// `offset + i * page_size()`.
/// ```
/// use vmprim_prim::dirty::PageRun;
/// use vmprim_prim::page_size;
///
/// let (p, offset) = (page_size(), 16 * page_size());
/// let runs = [PageRun { first: 1, count: 2 }, PageRun { first: 7, count: 1 }];
/// let pages = runs.iter().flat_map(PageRun::pages);
/// let offsets: Vec<usize> = pages.map(|i| offset + i * p).collect();
/// assert_eq!(offsets, [17 * p, 18 * p, 23 * p]);
/// assert_eq!(runs[0].pages(), 1..3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRun {
    /// Index of the first page, counted from the start of the tracked range.
    pub first: usize,
    /// Number of pages (at least one).
    pub count: usize,
}

impl PageRun {
    /// The page indices of the run.
    pub fn pages(&self) -> core::ops::Range<usize> {
        self.first..self.first + self.count
    }
}

/// A DIRTY mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Read-only pages and a `SIGSEGV` handler (works everywhere).
    Trap,
    /// userfaultfd write-protect with `SIGBUS` delivery (Linux 5.7).
    UffdWp,
    /// `UFFD_FEATURE_WP_ASYNC` with `PAGEMAP_SCAN` (Linux 6.7): no trap at all.
    WpAsync,
    /// Soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`); writers must be paused
    /// during a collection.
    SoftDirty,
}

impl Backend {
    /// Every backend, best first.
    pub const ALL: [Backend; 4] = [
        Backend::WpAsync,
        Backend::UffdWp,
        Backend::Trap,
        Backend::SoftDirty,
    ];

    /// The backend's name, as the benchmark prints it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Trap => "trap",
            Backend::UffdWp => "uffd-wp",
            Backend::WpAsync => "wp-async",
            Backend::SoftDirty => "soft-dirty",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which backend [`track`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The best this kernel and process allow: `WpAsync`, else `UffdWp`,
    /// else `Trap`.
    Best,
    /// Exactly this one, or an error saying why not.
    Force(Backend),
}

/// What went wrong tracking dirty pages.
#[derive(Debug, Error)]
pub enum DirtyError {
    /// The range is unusable.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The trap registration failed (for instance, the range overlaps one
    /// already tracked).
    #[error(transparent)]
    Trap(#[from] TrapError),
    /// userfaultfd failed or is unavailable.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The kernel lacks what the backend needs.
    #[error("this kernel lacks {feature} (needs {needs})")]
    KernelLacks {
        /// The feature.
        feature: &'static str,
        /// What provides it.
        needs: &'static str,
    },
    /// Only one soft-dirty tracker may exist: clearing soft-dirty bits is
    /// process-wide.
    #[error("a soft-dirty tracker already exists in this process")]
    SoftDirtyBusy,
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

/// Tracks the pages written in a range: DIRTY.
///
/// The pages must be committed read-write when tracking starts; trackers
/// over overlapping ranges are refused.
pub trait DirtyTracker: Send + fmt::Debug {
    /// The mechanism in use.
    fn backend(&self) -> Backend;

    /// The tracked range: its first address and length in bytes.
    fn range(&self) -> (usize, usize);

    /// Get-and-clear: replaces `out`'s contents with the runs of pages written
    /// since the previous collection (or since tracking began), in address
    /// order, and starts a new interval.
    fn collect_into(&mut self, out: &mut Vec<PageRun>) -> Result<(), DirtyError>;

    /// Sets the protection of `offset..offset + len` of the tracked range
    /// (offsets from its start) to `prot`, as
    /// [`Region::protect`](crate::Region::protect) would, without breaking
    /// tracking.
    ///
    /// While a range is tracked, change its protection only through this:
    /// the trap backend keeps clean pages read-only itself, and a plain
    /// `mprotect` that made one writable would let its writes go unseen.
    /// (The userfaultfd backends keep their write protection apart from
    /// `mprotect`, so for them this is a plain protect.) A write to a page
    /// whose protection forbids it is not the tracker's: it goes to the
    /// handler installed before vmprim, or kills the process.
    ///
    /// # Examples
    /// With the trap backend, a plain `region.unprot` here would make the
    /// page writable for good and its writes would go unseen; through the
    /// tracker they are still reported.
    /// ```
    /// use std::sync::Arc;
    /// use vmprim_prim::dirty::{self, Backend, Choice, PageRun};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Arc::new(Region::new(4 * p, Prot::READ_WRITE)?);
    /// let mut tracker = dirty::track(&region, 0, region.len(), Choice::Force(Backend::Trap))?;
    /// tracker.protect(p, p, Prot::READ)?; // the program's own read-only page
    /// assert_eq!(region.read_u8(p)?, 0);
    /// tracker.protect(p, p, Prot::READ_WRITE)?; // writable again, and still tracked
    /// region.write_u8(p, 1)?;
    /// assert_eq!(tracker.collect()?, [PageRun { first: 1, count: 1 }]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn protect(&mut self, offset: usize, len: usize, prot: crate::Prot) -> Result<(), DirtyError>;

    /// [`collect_into`](Self::collect_into) a new vector.
    ///
    /// # Examples
    /// Get-and-clear: each collection reports the pages written since the
    /// previous one, however often they were written. (A loop that collects
    /// often can reuse one vector with [`collect_into`](Self::collect_into).)
    /// ```
    /// use std::sync::Arc;
    /// use vmprim_prim::dirty::{self, Choice, PageRun};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Arc::new(Region::new(4 * p, Prot::READ_WRITE)?);
    /// let mut tracker = dirty::track(&region, 0, region.len(), Choice::Best)?;
    /// region.write_u8(2 * p, 1)?;
    /// region.write_u8(2 * p + 1, 1)?;
    /// assert_eq!(tracker.collect()?, [PageRun { first: 2, count: 1 }]);
    /// assert!(tracker.collect()?.is_empty()); // nothing written since
    /// region.write_u8(2 * p, 2)?;
    /// assert_eq!(tracker.collect()?, [PageRun { first: 2, count: 1 }]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn collect(&mut self) -> Result<Vec<PageRun>, DirtyError> {
        let mut out = Vec::new();
        self.collect_into(&mut out)?;
        Ok(out)
    }
}

/// Starts tracking writes to `offset..offset + len` of `region`.
///
/// # Examples
/// [`Choice::Best`] picks the cheapest backend this kernel and process
/// allow; collections report runs of adjacent written pages, in order.
/// ```
/// use std::sync::Arc;
/// use vmprim_prim::dirty::{self, Choice, PageRun};
/// use vmprim_prim::{mechanisms, page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Arc::new(Region::new(8 * p, Prot::READ_WRITE)?);
/// let mut tracker = dirty::track(&region, 0, region.len(), Choice::Best)?;
/// assert_eq!(tracker.backend(), mechanisms().dirty_best);
/// for offset in [2 * p, 3 * p + 9, 6 * p] {
///     region.write_u8(offset, 1)?;
/// }
/// let runs = tracker.collect()?;
/// assert_eq!(runs, [PageRun { first: 2, count: 2 }, PageRun { first: 6, count: 1 }]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`Choice::Force`] insists on one backend. Here the trap backend tracks
/// part of a region; page indices count from the start of the tracked part.
/// With it, the first write the kernel makes for the program into a clean
/// page (`read(2)` into it) fails with `EFAULT`: the kernel raises no signal
/// for its own accesses.
/// ```
/// use std::sync::Arc;
/// use vmprim_prim::dirty::{self, Backend, Choice, PageRun};
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Arc::new(Region::new(4 * p, Prot::READ_WRITE)?);
/// let mut tracker = dirty::track(&region, p, 2 * p, Choice::Force(Backend::Trap))?;
/// assert_eq!(tracker.backend(), Backend::Trap);
/// region.write_u8(0, 1)?; // outside the tracked part: not reported
/// region.write_u8(2 * p, 1)?; // page 1 of the tracked part
/// assert_eq!(tracker.collect()?, [PageRun { first: 1, count: 1 }]);
/// assert!(tracker.collect()?.is_empty()); // collecting cleared it
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn track(
    region: &Arc<Region>,
    offset: usize,
    len: usize,
    choice: Choice,
) -> Result<Box<dyn DirtyTracker>, DirtyError> {
    check_within(offset, len, region.len())?;
    match choice {
        Choice::Force(b) => start(b, region, offset, len),
        Choice::Best => {
            let mut last = None;
            for b in [Backend::WpAsync, Backend::UffdWp, Backend::Trap] {
                match start(b, region, offset, len) {
                    Ok(t) => return Ok(t),
                    Err(e @ (DirtyError::Uffd(_) | DirtyError::KernelLacks { .. })) => {
                        last = Some(e)
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.expect("the trap backend returned"))
        }
    }
}

fn start(
    b: Backend,
    region: &Arc<Region>,
    offset: usize,
    len: usize,
) -> Result<Box<dyn DirtyTracker>, DirtyError> {
    Ok(match b {
        Backend::Trap => Box::new(trap_backend::TrapTracker::new(region, offset, len)?),
        Backend::UffdWp => Box::new(uffd_wp::UffdWpTracker::new(region, offset, len)?),
        Backend::WpAsync => Box::new(wp_async::WpAsyncTracker::new(region, offset, len)?),
        Backend::SoftDirty => Box::new(soft_dirty::SoftDirtyTracker::new(region, offset, len)?),
    })
}

/// Appends the run `first..first + count` to `out`, extending the last run
/// when they are adjacent.
fn push_page(out: &mut Vec<PageRun>, first: usize, count: usize) {
    match out.last_mut() {
        Some(last) if last.first + last.count == first => last.count += count,
        _ => out.push(PageRun { first, count }),
    }
}

/// A Region error as a DIRTY error, naming the operation DIRTY attempted.
fn region_os(e: crate::RegionError, op: &'static str) -> DirtyError {
    match e {
        crate::RegionError::Range(r) => DirtyError::Range(r),
        crate::RegionError::Os { source, .. } => DirtyError::Os { op, source },
        // DIRTY maps no files; were it to, the kernel's answer would be this.
        crate::RegionError::WritableFileView => DirtyError::Os {
            op,
            source: vmprim_sys::Errno::EINVAL,
        },
    }
}

fn pages_of(len: usize) -> usize {
    len / page_size()
}

/// `protect` for backends whose write tracking is independent of
/// `mprotect`: checks the range against the tracked one and protects.
fn protect_plain(
    region: &Region,
    start: usize,
    len: usize,
    offset: usize,
    plen: usize,
    prot: crate::Prot,
) -> Result<(), DirtyError> {
    check_within(offset, plen, len)?;
    let region_offset = start - region.as_ptr() as usize + offset;
    region
        .protect(region_offset, plen, prot)
        .map_err(|e| region_os(e, "mprotect"))
}

#[cfg(test)]
mod tests;
