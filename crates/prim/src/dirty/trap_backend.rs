//! DIRTY by traps: clean pages read-only, a `SIGSEGV` handler that records
//! the write and gives the page back its write access.
//!
//! The tracker keeps each page's protection as the program set it (through
//! [`DirtyTracker::protect`]); a clean page gets that protection less write
//! access. Write faults on pages the program itself made unwritable are not
//! the tracker's.

use super::bitmap::Bitmap;
use super::{pages_of, region_os, Backend, DirtyError, DirtyTracker, PageRun};
use crate::range::{check_within, page_size};
use crate::trap::{self, Access, Cause, Outcome, Registration};
use crate::{Prot, Region};
use core::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Arc;

/// What the handler and the collector share.
#[derive(Debug)]
struct State {
    /// First address of the tracked range.
    start: usize,
    bits: Bitmap,
    /// Each page's protection as the program set it (`Prot` bits).
    user: Box<[AtomicU8]>,
}

impl State {
    fn user_prot(&self, page: usize) -> Prot {
        Prot::from_bits_truncate(i32::from(self.user[page].load(SeqCst)))
    }

    /// The protection page `page` should have now.
    fn effective(&self, page: usize) -> Prot {
        let user = self.user_prot(page);
        if self.bits.is_set(page) {
            user
        } else {
            user.without(Prot::WRITE)
        }
    }
}

#[derive(Debug)]
pub(super) struct TrapTracker {
    region: Arc<Region>,
    /// Offset of the tracked range in `region`.
    offset: usize,
    len: usize,
    state: Arc<State>,
    reg: Option<Registration>,
}

impl TrapTracker {
    pub(super) fn new(region: &Arc<Region>, offset: usize, len: usize) -> Result<Self, DirtyError> {
        let pages = pages_of(len);
        let start = region.as_ptr() as usize + offset;
        let rw = Prot::READ_WRITE.bits() as u8;
        let state = Arc::new(State {
            start,
            bits: Bitmap::new(pages),
            user: (0..pages).map(|_| AtomicU8::new(rw)).collect(),
        });
        let (r, s) = (region.clone(), state.clone());
        let reg = trap::register(start, len, move |f| on_write_fault(&r, &s, f))?;
        region
            .protect(offset, len, Prot::READ)
            .map_err(|e| region_os(e, "mprotect(PROT_READ)"))?;
        Ok(Self {
            region: region.clone(),
            offset,
            len,
            state,
            reg: Some(reg),
        })
    }

    /// Applies each page's effective protection to `pages`, one `mprotect`
    /// per run of equal protections.
    fn apply(&self, pages: core::ops::Range<usize>) -> Result<(), DirtyError> {
        let p = page_size();
        let mut run_start = pages.start;
        while run_start < pages.end {
            let prot = self.state.effective(run_start);
            let mut run_end = run_start + 1;
            while run_end < pages.end && self.state.effective(run_end) == prot {
                run_end += 1;
            }
            self.region
                .protect(self.offset + run_start * p, (run_end - run_start) * p, prot)
                .map_err(|e| region_os(e, "mprotect"))?;
            run_start = run_end;
        }
        Ok(())
    }
}

/// The handler: runs in signal context.
fn on_write_fault(region: &Region, state: &State, f: &trap::Fault) -> Outcome {
    if f.cause != Cause::Protection || !matches!(f.access, Access::Write | Access::Unknown) {
        return Outcome::NotOurs;
    }
    let p = page_size();
    let page = (f.page - state.start) / p;
    let user = state.user_prot(page);
    if !user.contains(Prot::WRITE) {
        return Outcome::NotOurs; // the program's own protection
    }
    let offset = f.page - region.as_ptr() as usize;
    // Order matters (see the module docs): write access first, then record.
    if region.protect(offset, p, user).is_err() {
        return Outcome::NotOurs;
    }
    state.bits.set(page);
    // The program may have changed the page's protection meanwhile: honour
    // the latest.
    let now = state.user_prot(page);
    if now != user && region.protect(offset, p, now).is_err() {
        return Outcome::NotOurs;
    }
    Outcome::Resolved
}

impl DirtyTracker for TrapTracker {
    fn backend(&self) -> Backend {
        Backend::Trap
    }

    fn range(&self) -> (usize, usize) {
        (self.state.start, self.len)
    }

    fn protect(&mut self, offset: usize, len: usize, prot: Prot) -> Result<(), DirtyError> {
        check_within(offset, len, self.len)?;
        let p = page_size();
        let pages = offset / p..(offset + len) / p;
        for i in pages.clone() {
            self.state.user[i].store(prot.bits() as u8, SeqCst);
        }
        self.apply(pages)
    }

    fn collect_into(&mut self, out: &mut Vec<PageRun>) -> Result<(), DirtyError> {
        out.clear();
        // Take the bits first, then take write access from what was taken.
        self.state.bits.take_into(out);
        for run in out.iter() {
            self.apply(run.pages())?;
        }
        Ok(())
    }
}

impl Drop for TrapTracker {
    fn drop(&mut self) {
        // The program's protections back first, so no tracking fault arrives
        // after the handler goes.
        for i in 0..pages_of(self.len) {
            self.state.bits.set(i);
        }
        let _ = self.apply(0..pages_of(self.len));
        self.reg.take();
    }
}
