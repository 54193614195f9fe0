//! DIRTY by traps: read-only pages, a `SIGSEGV` handler that records the
//! write and unprotects the page.

use super::bitmap::Bitmap;
use super::{pages_of, Backend, DirtyError, DirtyTracker, PageRun};
use crate::range::page_size;
use crate::trap::{self, Access, Cause, Outcome, Registration};
use crate::{Prot, Region};
use std::sync::Arc;

#[derive(Debug)]
pub(super) struct TrapTracker {
    region: Arc<Region>,
    offset: usize,
    len: usize,
    bits: Arc<Bitmap>,
    reg: Option<Registration>,
}

impl TrapTracker {
    pub(super) fn new(region: &Arc<Region>, offset: usize, len: usize) -> Result<Self, DirtyError> {
        let bits = Arc::new(Bitmap::new(pages_of(len)));
        let start = region.as_ptr() as usize + offset;
        let (r, b) = (region.clone(), bits.clone());
        let reg = trap::register(start, len, move |f| {
            // Only write faults on our read-only pages are ours; anything
            // else (a read of a page the program itself made PROT_NONE) is
            // passed on.
            if f.cause != Cause::Protection || !matches!(f.access, Access::Write | Access::Unknown)
            {
                return Outcome::NotOurs;
            }
            // Order matters (see the module docs): unprotect, then record.
            if r.unprot(f.page - r.as_ptr() as usize, page_size()).is_err() {
                return Outcome::NotOurs;
            }
            b.set((f.page - start) / page_size());
            Outcome::Resolved
        })?;
        region
            .protect(offset, len, Prot::READ)
            .map_err(|e| region_os(e, "mprotect(PROT_READ)"))?;
        Ok(Self {
            region: region.clone(),
            offset,
            len,
            bits,
            reg: Some(reg),
        })
    }
}

pub(super) fn region_os(e: crate::RegionError, op: &'static str) -> DirtyError {
    match e {
        crate::RegionError::Range(r) => DirtyError::Range(r),
        crate::RegionError::Os { source, .. } => DirtyError::Os { op, source },
    }
}

impl DirtyTracker for TrapTracker {
    fn backend(&self) -> Backend {
        Backend::Trap
    }

    fn range(&self) -> (usize, usize) {
        (self.region.as_ptr() as usize + self.offset, self.len)
    }

    fn collect_into(&mut self, out: &mut Vec<PageRun>) -> Result<(), DirtyError> {
        out.clear();
        // Take the bits first, then protect what was taken.
        self.bits.take_into(out);
        let p = page_size();
        for run in out.iter() {
            self.region
                .protect(self.offset + run.first * p, run.count * p, Prot::READ)
                .map_err(|e| region_os(e, "mprotect(PROT_READ)"))?;
        }
        Ok(())
    }
}

impl Drop for TrapTracker {
    fn drop(&mut self) {
        // Writable again first, so no fault arrives after the handler goes.
        let _ = self.region.unprot(self.offset, self.len);
        self.reg.take();
    }
}
