//! Pagers: where a memory object's pages come from and go to.
//!
//! A [`Pager`] has two calls, as in Mach's external memory managers: page
//! in (fill a page) and page out (keep a page's contents). The vm layer calls
//! them with its lock held, from whatever thread faulted (in signal context on
//! the real MMU), so a pager must not touch the address space it serves and
//! should not block for long. [`conformance`] is the suite every pager runs.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use thiserror::Error;
use vmprim_prim::{Prot, Region};

/// A pager's failure. It reaches the faulting program as
/// [`ViolationKind::Pager`](crate::ViolationKind::Pager), and `sync` or
/// `evict` callers as [`VmError::Pager`](crate::VmError::Pager).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("page {op} of page {index} failed: {message}")]
pub struct PagerError {
    /// "in" or "out".
    pub op: &'static str,
    /// The page index in the object.
    pub index: u64,
    /// What the pager said.
    pub message: String,
}

impl PagerError {
    /// A page-in failure of page `index`.
    pub fn page_in(index: u64, cause: impl fmt::Display) -> Self {
        Self {
            op: "in",
            index,
            message: cause.to_string(),
        }
    }

    /// A page-out failure of page `index`.
    pub fn page_out(index: u64, cause: impl fmt::Display) -> Self {
        Self {
            op: "out",
            index,
            message: cause.to_string(),
        }
    }
}

/// The source and sink of a memory object's pages.
///
/// # Examples
/// A pager whose pages hold their own index, which it never stores:
/// ```
/// use vmprim_vm::pager::{Pager, PagerError};
///
/// #[derive(Debug)]
/// struct Counting;
/// impl Pager for Counting {
///     fn page_in(&self, index: u64, page: &mut [u8]) -> Result<(), PagerError> {
///         page.fill(0);
///         page[..8].copy_from_slice(&index.to_le_bytes());
///         Ok(())
///     }
///     fn page_out(&self, index: u64, _page: &[u8]) -> Result<(), PagerError> {
///         Err(PagerError::page_out(index, "read-only pager"))
///     }
/// }
/// let mut page = vec![0u8; 4096];
/// Counting.page_in(7, &mut page)?;
/// assert_eq!(page[0], 7);
/// # Ok::<(), PagerError>(())
/// ```
pub trait Pager: Send + Sync + fmt::Debug {
    /// Fills `page` (one page) with the contents of page `index`. A page
    /// never written reads as the pager's initial contents (zeros for a
    /// fresh store).
    fn page_in(&self, index: u64, page: &mut [u8]) -> Result<(), PagerError>;
    /// Keeps `page` as the contents of page `index`.
    fn page_out(&self, index: u64, page: &[u8]) -> Result<(), PagerError>;
    /// The file this pager's pages are, when they are exactly its bytes:
    /// page `i` is bytes `i * page_size ..` of [`Mappable::fd`], page-in
    /// reads them from there and page-out writes them there, so between
    /// the two the kernel's page cache holds each page's contents. The vm
    /// layer may then map those pages straight into an address space for
    /// reading (no frame, no copy: what the kernel does for its own
    /// `MAP_PRIVATE` file mappings), and brings a page into a frame only to
    /// write it. `None`, the default: every page goes through
    /// [`page_in`](Self::page_in).
    fn mappable(&self) -> Option<Mappable<'_>> {
        None
    }
}

/// A file whose bytes a [`Pager`]'s pages are (see [`Pager::mappable`]).
#[derive(Clone, Copy, Debug)]
pub struct Mappable<'a> {
    /// The file, open for reading.
    pub fd: BorrowedFd<'a>,
    /// Its length in bytes: pages starting at or past it are never mapped
    /// (touching them would raise `SIGBUS`); they go through page-in.
    pub len: u64,
}

/// The pages of a file: page `i` is bytes `i * page_size ..` of the file.
/// Pages past the end read as zeros; page-out writes only the bytes inside
/// the file's length when the pager was made, so the file never grows.
#[derive(Debug)]
pub struct FilePager {
    file: File,
    len: u64,
}

impl FilePager {
    /// A pager over `file`, whose current length fixes the object size.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Pager for FilePager {
    fn page_in(&self, index: u64, page: &mut [u8]) -> Result<(), PagerError> {
        let at = index * page.len() as u64;
        let mut done = 0;
        while done < page.len() {
            match self.file.read_at(&mut page[done..], at + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PagerError::page_in(index, e)),
            }
        }
        page[done..].fill(0);
        Ok(())
    }

    fn page_out(&self, index: u64, page: &[u8]) -> Result<(), PagerError> {
        let at = index * page.len() as u64;
        let n = self.len.saturating_sub(at).min(page.len() as u64) as usize;
        self.file
            .write_all_at(&page[..n], at)
            .map_err(|e| PagerError::page_out(index, e))
    }

    fn mappable(&self) -> Option<Mappable<'_>> {
        Some(Mappable {
            fd: self.file.as_fd(),
            len: self.len,
        })
    }
}

/// Pages kept in the heap: a pager for tests and for objects that must not
/// reach the disk.
#[derive(Debug, Default)]
pub struct MemPager {
    pages: Mutex<std::collections::HashMap<u64, Box<[u8]>>>,
}

impl MemPager {
    /// An empty store: every page reads as zeros.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Pager for MemPager {
    fn page_in(&self, index: u64, page: &mut [u8]) -> Result<(), PagerError> {
        let pages = self
            .pages
            .lock()
            .map_err(|e| PagerError::page_in(index, e))?;
        match pages.get(&index) {
            Some(p) => page.copy_from_slice(p),
            None => page.fill(0),
        }
        Ok(())
    }

    fn page_out(&self, index: u64, page: &[u8]) -> Result<(), PagerError> {
        let mut pages = self
            .pages
            .lock()
            .map_err(|e| PagerError::page_out(index, e))?;
        pages.insert(index, page.into());
        Ok(())
    }
}

/// The swap area for anonymous pages: a file of page-sized slots, unlinked
/// as soon as it is opened so it disappears with the process.
#[derive(Debug)]
pub(crate) struct Swap {
    file: File,
    free: Vec<u64>,
    next: u64,
    used: usize,
}

impl Swap {
    /// A swap file in `dir` (the system's temporary directory by default).
    pub(crate) fn create(dir: Option<&Path>) -> io::Result<Self> {
        let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let mut last = None;
        for attempt in 0..64u32 {
            let path = dir.join(format!("vmprim-swap-{}-{attempt}", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    std::fs::remove_file(&path)?;
                    return Ok(Self {
                        file,
                        free: Vec::new(),
                        next: 0,
                        used: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no swap file name left")))
    }

    /// Slots in use.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Writes `page` to a new slot.
    pub(crate) fn put(&mut self, page: &[u8]) -> io::Result<u64> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        match self.file.write_all_at(page, slot * page.len() as u64) {
            Ok(()) => {
                self.used += 1;
                Ok(slot)
            }
            Err(e) => {
                self.free.push(slot);
                Err(e)
            }
        }
    }

    /// Reads slot `slot` into `page`; the slot stays allocated.
    pub(crate) fn get(&self, slot: u64, page: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(page, slot * page.len() as u64)
    }

    /// Frees a slot.
    pub(crate) fn free(&mut self, slot: u64) {
        self.used -= 1;
        self.free.push(slot);
    }
}

/// The conformance suite every [`Pager`] runs: checks that pages round-trip
/// through page-out and page-in, that pages are independent, that a later
/// page-out replaces an earlier one, and that a fresh page reads as
/// `fresh(index)` (zeros for a new store, the file's bytes for a file), and,
/// for a [`Mappable`] pager, that its file mapped shows what page-in reads.
/// Pages `first..first + 8` are used. Returns the first broken rule.
///
/// # Examples
/// ```
/// use vmprim_vm::pager::{conformance, MemPager};
///
/// conformance(&MemPager::new(), 4096, 0, |_| vec![0; 4096])?;
/// # Ok::<(), String>(())
/// ```
pub fn conformance(
    pager: &dyn Pager,
    page_size: usize,
    first: u64,
    fresh: impl Fn(u64) -> Vec<u8>,
) -> Result<(), String> {
    let pattern = |index: u64, round: u8| -> Vec<u8> {
        (0..page_size)
            .map(|b| (b as u64 ^ index.wrapping_mul(31)) as u8 ^ round)
            .collect()
    };
    let mut page = vec![0xAAu8; page_size];
    for i in first..first + 8 {
        pager.page_in(i, &mut page).map_err(|e| e.to_string())?;
        if page != fresh(i) {
            return Err(format!("page {i} did not read as its initial contents"));
        }
    }
    for i in (first..first + 8).step_by(2) {
        pager
            .page_out(i, &pattern(i, 1))
            .map_err(|e| e.to_string())?;
    }
    pager
        .page_out(first, &pattern(first, 2))
        .map_err(|e| e.to_string())?;
    for i in first..first + 8 {
        page.fill(0x55);
        pager.page_in(i, &mut page).map_err(|e| e.to_string())?;
        let want = match i - first {
            0 => pattern(i, 2),
            k if k % 2 == 0 => pattern(i, 1),
            _ => fresh(i),
        };
        if page != want {
            return Err(format!("page {i} read back wrong after page-out"));
        }
        if let Some(m) = pager.mappable() {
            if i * (page_size as u64) < m.len && mapped(m, i, page_size)? != want {
                return Err(format!(
                    "page {i} of the mappable file differs from its page-in"
                ));
            }
        }
    }
    Ok(())
}

/// Page `i` of a mappable pager's file, read through a mapping of it.
fn mapped(m: Mappable<'_>, i: u64, page_size: usize) -> Result<Vec<u8>, String> {
    let region = Region::reserve(page_size).map_err(|e| e.to_string())?;
    region
        .map_file(0, page_size, m.fd, i * page_size as u64, Prot::READ)
        .map_err(|e| format!("mapping page {i} of the file: {e}"))?;
    (0..page_size)
        .map(|b| region.read_u8(b).map_err(|e| e.to_string()))
        .collect()
}
