//! DIRTY with `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN`: the kernel resolves
//! write-protect faults itself and marks pages written; a scan reports them
//! and re-protects them atomically. No signal, no thread switch.

use super::{push_page, Backend, DirtyError, DirtyTracker, PageRun};
use crate::range::page_size;
use crate::uffd::{Delivery, Features, Mode, Uffd};
use crate::{Prot, Region};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use vmprim_sys::pagemap::{self, category, PageRegion, PmScanArg};
use vmprim_sys::Errno;

/// The most runs one `PAGEMAP_SCAN` call returns (1.5 MiB of buffer). The
/// buffer holds the most runs the range can have (every other page), up to
/// this; a larger range is walked in several calls.
const MAX_BATCH: usize = 1 << 16;

#[derive(Debug)]
pub(super) struct WpAsyncTracker {
    _region: Arc<Region>,
    start: usize,
    len: usize,
    uffd: Uffd,
    pagemap: OwnedFd,
    buf: Vec<PageRegion>,
}

impl WpAsyncTracker {
    pub(super) fn new(region: &Arc<Region>, offset: usize, len: usize) -> Result<Self, DirtyError> {
        let uffd = Uffd::new(
            Delivery::Messages,
            Features::WP | Features::WP_ASYNC | Features::WP_UNPOPULATED,
        )?;
        let start = region.as_ptr() as usize + offset;
        let pagemap = pagemap::open_pagemap().map_err(|source| DirtyError::Os {
            op: "open(/proc/self/pagemap)",
            source,
        })?;
        uffd.register(start, len, Mode::WP)?;
        uffd.write_protect(start, len)?;
        let mut t = Self {
            _region: region.clone(),
            start,
            len,
            uffd,
            pagemap,
            buf: vec![PageRegion::default(); (len / page_size()).div_ceil(2).clamp(1, MAX_BATCH)],
        };
        // A first scan both checks PAGEMAP_SCAN exists and starts the interval.
        t.collect()?;
        Ok(t)
    }
}

impl DirtyTracker for WpAsyncTracker {
    fn backend(&self) -> Backend {
        Backend::WpAsync
    }

    fn range(&self) -> (usize, usize) {
        (self.start, self.len)
    }

    fn protect(&mut self, offset: usize, len: usize, prot: Prot) -> Result<(), DirtyError> {
        super::protect_plain(&self._region, self.start, self.len, offset, len, prot)
    }

    fn collect_into(&mut self, out: &mut Vec<PageRun>) -> Result<(), DirtyError> {
        out.clear();
        let shift = page_size().trailing_zeros();
        let end = (self.start + self.len) as u64;
        let mut from = self.start as u64;
        while from < end {
            let mut arg = PmScanArg {
                flags: pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC,
                start: from,
                end,
                category_mask: category::WRITTEN,
                return_mask: category::WRITTEN,
                ..PmScanArg::default()
            };
            let (n, walk_end) =
                pagemap::pagemap_scan(self.pagemap.as_fd(), &mut arg, &mut self.buf)
                    .map_err(scan_error)?;
            // The page size is a power of two: shift, do not divide (a
            // division per run is a measurable part of a scan).
            for r in &self.buf[..n] {
                let first = (r.start as usize - self.start) >> shift;
                push_page(out, first, (r.end - r.start) as usize >> shift);
            }
            if walk_end <= from {
                break;
            }
            from = walk_end;
        }
        Ok(())
    }
}

fn scan_error(source: Errno) -> DirtyError {
    if source == Errno::ENOTTY || source == Errno::EINVAL {
        DirtyError::KernelLacks {
            feature: "PAGEMAP_SCAN",
            needs: "Linux 6.7",
        }
    } else {
        DirtyError::Os {
            op: "ioctl(PAGEMAP_SCAN)",
            source,
        }
    }
}

impl Drop for WpAsyncTracker {
    fn drop(&mut self) {
        let _ = self.uffd.unregister(self.start, self.len);
    }
}
