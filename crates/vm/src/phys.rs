//! Physical pages: a pool of page frames with a budget, and who owns each.
//!
//! On the real MMU the frames are the pages of one memfd, mapped once
//! read-write at a private "direct map" address where the vm layer reads and
//! writes them, and mapped into address spaces by [`HostPmap`](crate::HostPmap).
//! Under [`SimPmap`](crate::SimPmap) they are heap buffers. A frame is the
//! unit the pageout clock sweeps.

use crate::error::VmError;
use crate::object::ObjId;
use std::sync::Arc;
use vmprim_prim::map2::{SharedMemory, View};
use vmprim_prim::Prot;

/// A physical page: an index into the frame pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame(pub u32);

/// Who holds a frame in use.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FrameInfo {
    /// The object and page index whose contents it holds; `None` when free.
    pub owner: Option<(ObjId, u64)>,
    /// Touched since the clock hand last passed (a fault mapped it).
    pub referenced: bool,
}

enum Storage {
    Heap(Vec<Option<Box<[u8]>>>),
    Shared { shm: Arc<SharedMemory>, view: View },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Heap(v) => write!(f, "Heap({} frames)", v.len()),
            Self::Shared { shm, .. } => write!(f, "Shared({} bytes)", shm.len()),
        }
    }
}

/// Where a run of frames is mapped readable in an address space, for
/// [`Phys::copy_run`] to read them there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceHint(*const u8);

impl SourceHint {
    /// # Safety
    /// The frames to copy must be mapped, readable, at `at` (a space's
    /// translations to them), and stay so until the copy is done: true while
    /// the vm layer holds its lock, under which translations change. No
    /// thread may write the frames meanwhile: the vm layer's rule for any
    /// frame it copies (no writable translation of it anywhere).
    pub unsafe fn new(at: *const u8) -> Self {
        Self(at)
    }
}

/// The frame pool.
#[derive(Debug)]
pub(crate) struct Phys {
    page: usize,
    storage: Storage,
    pub info: Vec<FrameInfo>,
    free: Vec<u32>,
    capacity: u32,
    in_use: usize,
}

impl Phys {
    /// A pool of at most `capacity` frames in heap buffers.
    pub fn heap(page: usize, capacity: u32) -> Self {
        Self::with(page, capacity, Storage::Heap(Vec::new()))
    }

    /// A pool of at most `capacity` frames in one memfd, which address spaces
    /// map. Its pages take memory only once used.
    pub fn shared(page: usize, capacity: u32) -> Result<Self, VmError> {
        let bytes = capacity as usize * page;
        let shm = SharedMemory::new(bytes).map_err(|e| VmError::Host(e.to_string()))?;
        let view = shm
            .map(Prot::READ_WRITE)
            .map_err(|e| VmError::Host(e.to_string()))?;
        Ok(Self::with(page, capacity, Storage::Shared { shm, view }))
    }

    fn with(page: usize, capacity: u32, storage: Storage) -> Self {
        Self {
            page,
            storage,
            info: Vec::new(),
            free: Vec::new(),
            capacity,
            in_use: 0,
        }
    }

    /// The memfd behind the frames, when they are host memory.
    pub fn shared_memory(&self) -> Option<&Arc<SharedMemory>> {
        match &self.storage {
            Storage::Shared { shm, .. } => Some(shm),
            Storage::Heap(_) => None,
        }
    }

    /// The budget in frames.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Frames in use.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Frames that can be allocated without pageout.
    pub fn available(&self) -> usize {
        self.capacity as usize - self.in_use
    }

    /// A zero-filled frame now owned by `owner`, or `None` at the budget.
    pub fn alloc(&mut self, owner: (ObjId, u64)) -> Option<Frame> {
        let (f, recycled) = match self.free.pop() {
            Some(f) => (f, true),
            None if (self.info.len() as u32) < self.capacity => {
                self.info.push(FrameInfo::default());
                (self.info.len() as u32 - 1, false)
            }
            None => return None,
        };
        self.in_use += 1;
        self.info[f as usize] = FrameInfo {
            owner: Some(owner),
            referenced: true,
        };
        // A never-used frame is already zero: fresh memfd pages read as zeros
        // and heap frames are created zeroed.
        if recycled {
            self.page_mut(Frame(f)).fill(0);
        }
        Some(Frame(f))
    }

    /// `n` consecutive never-used (so zero) frames, the `k`th owned by
    /// `owner(k)`, or `None` if the never-used part of the pool is too
    /// small or the budget too close.
    pub fn alloc_run(&mut self, n: u32, owner: impl Fn(u32) -> (ObjId, u64)) -> Option<Frame> {
        let first = self.info.len() as u32;
        if first.checked_add(n)? > self.capacity
            || self.in_use + n as usize > self.capacity as usize
        {
            return None;
        }
        for k in 0..n {
            self.info.push(FrameInfo {
                owner: Some(owner(k)),
                referenced: true,
            });
        }
        self.in_use += n as usize;
        Some(Frame(first))
    }

    /// Makes the never-used frames `first..first + n` (zero already) take
    /// memory now, cheaply: host frames are filled by one `pwrite(2)` of
    /// zeros, which allocates the memfd's pages without a page fault each
    /// (the faults would cost more than the writes). Heap frames need
    /// nothing.
    pub fn commit_run(&mut self, first: Frame, n: u32) {
        let page = self.page;
        if let Storage::Shared { shm, .. } = &self.storage {
            let (mut at, end) = (first.0 as usize * page, (first.0 + n) as usize * page);
            while at < end {
                let len = (end - at).min(ZERO_PAGE.len());
                // Best effort: a page left unallocated is allocated by its
                // first access instead.
                if shm.write_at(at, &ZERO_PAGE[..len]).is_err() {
                    return;
                }
                at += len;
            }
        }
    }

    /// Returns a frame to the pool. Its contents are dead.
    pub fn free(&mut self, f: Frame) {
        debug_assert!(
            self.info[f.0 as usize].owner.is_some(),
            "double free of {f:?}"
        );
        self.info[f.0 as usize] = FrameInfo::default();
        self.free.push(f.0);
        self.in_use -= 1;
    }

    /// The number of frame slots ever used (the clock's range).
    pub fn slots(&self) -> usize {
        self.info.len()
    }

    /// The contents of a frame.
    pub fn page(&self, f: Frame) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => v
                .get(f.0 as usize)
                .and_then(Option::as_deref)
                .unwrap_or(&ZERO_PAGE[..self.page]),
            Storage::Shared { view, .. } => {
                assert!((f.0 as usize) < self.info.len());
                // SAFETY: the frame lies inside the view (its index is below
                // the capacity the memfd was sized for), the view stays mapped
                // read-write as long as `self`, and the vm layer reads a
                // frame only while no translation lets another thread write
                // it (it removes or write-protects them first), so no write
                // races this shared borrow.
                unsafe {
                    std::slice::from_raw_parts(
                        view.as_ptr().add(f.0 as usize * self.page),
                        self.page,
                    )
                }
            }
        }
    }

    /// The contents of a frame, to fill.
    pub fn page_mut(&mut self, f: Frame) -> &mut [u8] {
        let page = self.page;
        match &mut self.storage {
            Storage::Heap(v) => {
                let i = f.0 as usize;
                if v.len() <= i {
                    v.resize_with(i + 1, || None);
                }
                v[i].get_or_insert_with(|| vec![0u8; page].into_boxed_slice())
            }
            Storage::Shared { view, .. } => {
                assert!((f.0 as usize) < self.info.len());
                // SAFETY: as in `page`; `&mut self` excludes other borrows
                // through this pool, and the vm layer fills a frame before
                // entering any translation of it, or after removing them all.
                unsafe {
                    std::slice::from_raw_parts_mut(view.as_ptr().add(f.0 as usize * page), page)
                }
            }
        }
    }

    /// Copies frames `from..from + n` to frames `to..to + n` (the two runs
    /// must not overlap). Into host frames this is one `pwrite(2)` to the
    /// memfd, which fills fresh pages without zeroing them first and
    /// without a page fault each.
    ///
    /// `seen_at`, when given, is the address of a space where the source
    /// run is mapped, readable, and stays so while the vm layer's lock is
    /// held ([`SourceHint`]). The kernel then reads the source there, where
    /// its page-table entries are likely present (the program just used
    /// them), rather than through the direct map, where a miss costs a
    /// fault and the kernel's fault-around of 16 pages: 4.2 against 9.4 µs
    /// per page pushed at random, measured in C on this VM.
    pub fn copy_run(&mut self, from: Frame, to: Frame, n: u32, seen_at: Option<SourceHint>) {
        let page = self.page;
        let slots = self.info.len();
        let (f, t, n) = (from.0 as usize, to.0 as usize, n as usize);
        assert!(f + n <= slots && t + n <= slots && (f + n <= t || t + n <= f));
        match &mut self.storage {
            Storage::Heap(_) => {
                for k in 0..n {
                    let src = self.page(Frame((f + k) as u32)).to_vec();
                    self.page_mut(Frame((t + k) as u32)).copy_from_slice(&src);
                }
            }
            Storage::Shared { shm, view } => {
                let base = view.as_ptr();
                if let Some(hint) = seen_at {
                    // SAFETY: `SourceHint::new`'s contract: `n` pages
                    // mapped readable at the hint, and left alone while the
                    // vm layer holds its lock, as it does now.
                    let src = unsafe { std::slice::from_raw_parts(hint.0, n * page) };
                    if shm.write_at(t * page, src).is_ok() {
                        return;
                    }
                }
                // SAFETY: the runs lie inside the view (their frames are
                // below the slots in use, which are below the capacity the
                // memfd was sized for); as in `page`, no translation lets
                // another thread write the source now, and the destination
                // run does not overlap it.
                let src = unsafe { std::slice::from_raw_parts(base.add(f * page), n * page) };
                if shm.write_at(t * page, src).is_err() {
                    // Out of memory for the memfd: a plain copy raises the
                    // same condition the way any store to it would.
                    // SAFETY: as above; the runs are distinct.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(t * page), n * page)
                    }
                }
            }
        }
    }
}

static ZERO_PAGE: [u8; 65536] = [0; 65536];
