//! DIRTY with soft-dirty bits: `/proc/self/clear_refs` clears them for the
//! whole process, bit 55 of `/proc/self/pagemap` reads them.

use super::{pages_of, push_page, Backend, DirtyError, DirtyTracker, PageRun};
use crate::range::page_size;
use crate::{Prot, Region};
use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use vmprim_sys::pagemap;

static IN_USE: AtomicBool = AtomicBool::new(false);
const BATCH: usize = 512;

/// Whether this kernel keeps soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`),
/// detected once by clearing the bits, writing a page and reading its bit.
///
/// The probe clears the soft-dirty bits of the whole process, as any
/// soft-dirty collection does.
pub fn soft_dirty_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| probe().unwrap_or(false))
}

fn probe() -> Result<bool, DirtyError> {
    let region =
        Region::new(page_size(), Prot::READ_WRITE).map_err(|e| super::region_os(e, "mmap"))?;
    let _ = region.write_u8(0, 1);
    let os = |op| move |source| DirtyError::Os { op, source };
    let fd = pagemap::open_pagemap().map_err(os("open(/proc/self/pagemap)"))?;
    pagemap::clear_soft_dirty().map_err(os("write(/proc/self/clear_refs)"))?;
    let mut e = [0u64];
    pagemap::read_entries(fd.as_fd(), region.as_ptr() as usize, &mut e)
        .map_err(os("pread(pagemap)"))?;
    let cleared = e[0] & pagemap::PM_SOFT_DIRTY == 0;
    let _ = region.write_u8(0, 2);
    pagemap::read_entries(fd.as_fd(), region.as_ptr() as usize, &mut e)
        .map_err(os("pread(pagemap)"))?;
    Ok(cleared && e[0] & pagemap::PM_SOFT_DIRTY != 0)
}

#[derive(Debug)]
pub(super) struct SoftDirtyTracker {
    _region: Arc<Region>,
    start: usize,
    len: usize,
    pagemap: OwnedFd,
    entries: Vec<u64>,
}

impl SoftDirtyTracker {
    pub(super) fn new(region: &Arc<Region>, offset: usize, len: usize) -> Result<Self, DirtyError> {
        if !soft_dirty_available() {
            return Err(DirtyError::KernelLacks {
                feature: "soft-dirty bits",
                needs: "CONFIG_MEM_SOFT_DIRTY",
            });
        }
        if IN_USE.swap(true, SeqCst) {
            return Err(DirtyError::SoftDirtyBusy);
        }
        let pagemap = match pagemap::open_pagemap() {
            Ok(fd) => fd,
            Err(source) => {
                IN_USE.store(false, SeqCst);
                return Err(DirtyError::Os {
                    op: "open(/proc/self/pagemap)",
                    source,
                });
            }
        };
        let start = region.as_ptr() as usize + offset;
        let mut t = Self {
            _region: region.clone(),
            start,
            len,
            pagemap,
            entries: vec![0; BATCH],
        };
        t.collect()?;
        Ok(t)
    }
}

impl DirtyTracker for SoftDirtyTracker {
    fn backend(&self) -> Backend {
        Backend::SoftDirty
    }

    fn range(&self) -> (usize, usize) {
        (self.start, self.len)
    }

    fn protect(&mut self, offset: usize, len: usize, prot: Prot) -> Result<(), DirtyError> {
        super::protect_plain(&self._region, self.start, self.len, offset, len, prot)
    }

    fn collect_into(&mut self, out: &mut Vec<PageRun>) -> Result<(), DirtyError> {
        out.clear();
        let pages = pages_of(self.len);
        let p = page_size();
        let mut first = 0;
        while first < pages {
            let n = BATCH.min(pages - first);
            pagemap::read_entries(
                self.pagemap.as_fd(),
                self.start + first * p,
                &mut self.entries[..n],
            )
            .map_err(|source| DirtyError::Os {
                op: "pread(/proc/self/pagemap)",
                source,
            })?;
            for (i, e) in self.entries[..n].iter().enumerate() {
                if e & pagemap::PM_SOFT_DIRTY != 0 {
                    push_page(out, first + i, 1);
                }
            }
            first += n;
        }
        pagemap::clear_soft_dirty().map_err(|source| DirtyError::Os {
            op: "write(/proc/self/clear_refs)",
            source,
        })
    }
}

impl Drop for SoftDirtyTracker {
    fn drop(&mut self) {
        IN_USE.store(false, SeqCst);
    }
}
