//! DIRTY by userfaultfd write-protect, faults delivered as `SIGBUS` to the
//! writing thread.

use super::bitmap::Bitmap;
use super::{pages_of, Backend, DirtyError, DirtyTracker, PageRun};
use crate::range::page_size;
use crate::trap::{self, Cause, Outcome, Registration};
use crate::uffd::{Delivery, Features, Mode, Uffd, Wake};
use crate::{Prot, Region};
use std::sync::Arc;

#[derive(Debug)]
pub(super) struct UffdWpTracker {
    _region: Arc<Region>,
    start: usize,
    len: usize,
    uffd: Arc<Uffd>,
    bits: Arc<Bitmap>,
    reg: Option<Registration>,
}

impl UffdWpTracker {
    pub(super) fn new(region: &Arc<Region>, offset: usize, len: usize) -> Result<Self, DirtyError> {
        let available = Uffd::available()?;
        let unpopulated = available.contains(Features::WP_UNPOPULATED);
        let features = if unpopulated {
            Features::WP | Features::WP_UNPOPULATED
        } else {
            Features::WP
        };
        let uffd = Arc::new(Uffd::new(Delivery::Sigbus, features)?);
        let start = region.as_ptr() as usize + offset;
        let bits = Arc::new(Bitmap::new(pages_of(len)));
        let (u, b) = (uffd.clone(), bits.clone());
        let reg = trap::register(start, len, move |f| {
            if f.cause != Cause::BusAddress {
                return Outcome::NotOurs;
            }
            // Unprotect, then record (see the module docs).
            if u.write_unprotect(f.page, page_size(), Wake::No).is_err() {
                return Outcome::NotOurs;
            }
            b.set((f.page - start) / page_size());
            Outcome::Resolved
        })?;
        if !unpopulated {
            // Without WP_UNPOPULATED, protection only sticks to present
            // pages: map every page (reads map the zero page).
            for i in 0..pages_of(len) {
                let _ = region.read_u8(offset + i * page_size());
            }
        }
        uffd.register(start, len, Mode::WP)?;
        uffd.write_protect(start, len)?;
        Ok(Self {
            _region: region.clone(),
            start,
            len,
            uffd,
            bits,
            reg: Some(reg),
        })
    }
}

impl DirtyTracker for UffdWpTracker {
    fn backend(&self) -> Backend {
        Backend::UffdWp
    }

    fn range(&self) -> (usize, usize) {
        (self.start, self.len)
    }

    fn protect(&mut self, offset: usize, len: usize, prot: Prot) -> Result<(), DirtyError> {
        super::protect_plain(&self._region, self.start, self.len, offset, len, prot)
    }

    fn collect_into(&mut self, out: &mut Vec<PageRun>) -> Result<(), DirtyError> {
        out.clear();
        self.bits.take_into(out);
        let p = page_size();
        for run in out.iter() {
            self.uffd
                .write_protect(self.start + run.first * p, run.count * p)?;
        }
        Ok(())
    }
}

impl Drop for UffdWpTracker {
    fn drop(&mut self) {
        // Unregistering clears the protection; then no SIGBUS can arrive.
        let _ = self.uffd.unregister(self.start, self.len);
        self.reg.take();
    }
}
