//! Address spaces, and the machine-independent state behind them: objects,
//! frames, swap, the fault path, snapshots, collapse and pageout.

use crate::error::{Violation, ViolationKind, VmError};
use crate::host::HostPmap;
use crate::map::{Entry, Inheritance, Map};
use crate::object::{ObjId, Object, ObjectKind, Objects, PageState};
use crate::pager::{FilePager, Mappable, Pager, PagerError, Swap};
use crate::phys::{Frame, Phys, SourceHint};
use crate::pmap::{DirectSource, Pmap, SimPmap, Target};
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use vmprim_prim::map2::SharedMemory;
use vmprim_prim::trap::{self, Access, Outcome, Registration};
use vmprim_prim::{page_size, Prot};

/// Settings of a family of address spaces (one space and its forks).
#[derive(Clone, Debug)]
pub struct Config {
    /// The most physical pages the family may use at once. Past it, pageout
    /// writes pages to their pager or the swap file. `None`: no budget but
    /// [`max_frames`](Self::max_frames).
    pub budget_pages: Option<usize>,
    /// Where the swap file goes (it is unlinked at once). Default: the
    /// system's temporary directory.
    pub swap_dir: Option<PathBuf>,
    /// The frame pool's size when there is no budget (address space only:
    /// frames take memory when used).
    pub max_frames: usize,
    /// The most pages one write fault zero-fills and maps at once when
    /// faults walk forward through fresh anonymous memory (1: never more
    /// than the faulting page). The window doubles with each fault that
    /// lands where the last one ended, like readahead, and falls back to
    /// one page on any other fault, so random access never fills a page it
    /// did not touch.
    pub fault_around: usize,
    /// Whether a read fault on a page of a file ([`Mappable`] pager) that
    /// no object above the file holds maps the file's page itself,
    /// read-only, from the kernel's page cache: no frame, no copy, and the
    /// pages around it in the same call (16 on a lone fault, up to 256 as
    /// faults walk forward; one when `fault_around` is 1), as the kernel
    /// does for its own file mappings. The first write brings the page into
    /// a frame. Such pages are the kernel's and not counted in the budget.
    /// Only pmaps that can map files do it ([`HostPmap`], [`SimPmap`]).
    /// `false`: every file page is read into a frame.
    pub direct_reads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            budget_pages: None,
            swap_dir: None,
            max_frames: 1 << 22,
            fault_around: 16,
            direct_reads: true,
        }
    }
}

impl Config {
    /// No budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// A resident budget of `pages` pages.
    pub fn budget(mut self, pages: usize) -> Self {
        self.budget_pages = Some(pages);
        self
    }
}

/// The smallest budget: one fault may need three free frames (swap in, push
/// to a copy, copy up), and the clock needs room to work.
pub const MIN_BUDGET: usize = 16;

/// How a mapping relates to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Share {
    /// Writes go to the object, and every mapping of it sees them.
    Shared,
    /// A copy of the object's window as of the moment of mapping, made
    /// lazily: writes go to a private shadow, and later writes to the
    /// object through other mappings push the old contents aside first, so
    /// this mapping never sees them (Mach's copy semantics; POSIX leaves
    /// that case of `MAP_PRIVATE` unspecified). Changes made to a file
    /// behind vmprim's back (`write(2)`) are not caught.
    #[default]
    Private,
}

/// What a fault handler decided about a [`Violation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The handler changed the space (mapped or unprotected something): run
    /// the access again.
    Retry,
    /// Let the fault through: on the real MMU the process gets the signal
    /// as it would without vmprim; `read` and `write` return the error.
    Fail,
}

type Handler = dyn Fn(&Violation) -> Resolution + Send + Sync;

/// A range to map: what, where, and with which rights.
///
/// # Examples
/// ```
/// use vmprim_vm::{Inheritance, Mapping, Prot};
///
/// let m = Mapping::anonymous(1 << 20).at(0).prot(Prot::READ).inheritance(Inheritance::Share);
/// assert_eq!(m.len, 1 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct Mapping<'a> {
    /// Where in the space (an offset); `None`: the lowest free range.
    pub at: Option<usize>,
    /// Length in bytes.
    pub len: usize,
    /// The object; `None`: fresh zero-fill memory.
    pub object: Option<&'a VmObject>,
    /// Byte offset of the mapping's start in the object.
    pub offset: usize,
    /// Access allowed now.
    pub prot: Prot,
    /// The most [`AddressSpace::protect`] may ever allow.
    pub max_prot: Prot,
    /// What a fork gets.
    pub inheritance: Inheritance,
    /// Shared or copy-on-write.
    pub share: Share,
}

impl<'a> Mapping<'a> {
    /// `len` bytes of fresh zero-fill memory, read-write.
    pub fn anonymous(len: usize) -> Self {
        Self {
            at: None,
            len,
            object: None,
            offset: 0,
            prot: Prot::READ_WRITE,
            max_prot: Prot::READ_WRITE | Prot::EXEC,
            inheritance: Inheritance::Copy,
            share: Share::Private,
        }
    }

    /// `len` bytes of `object` from byte `offset`, shared, read-write.
    pub fn object(object: &'a VmObject, offset: usize, len: usize) -> Self {
        Self {
            object: Some(object),
            offset,
            share: Share::Shared,
            ..Self::anonymous(len)
        }
    }

    /// At this offset of the space.
    pub fn at(mut self, offset: usize) -> Self {
        self.at = Some(offset);
        self
    }

    /// With this protection.
    pub fn prot(mut self, prot: Prot) -> Self {
        self.prot = prot;
        self
    }

    /// With this maximum protection.
    pub fn max_prot(mut self, max: Prot) -> Self {
        self.max_prot = max;
        self
    }

    /// With this inheritance.
    pub fn inheritance(mut self, i: Inheritance) -> Self {
        self.inheritance = i;
        self
    }

    /// Copy-on-write ([`Share::Private`]).
    pub fn private(mut self) -> Self {
        self.share = Share::Private;
        self
    }
}

/// A family's counters and sizes, and one space's map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries in this space's map.
    pub entries: usize,
    /// Live objects in the family.
    pub objects: usize,
    /// The longest object chain behind an entry of this space.
    pub max_depth: usize,
    /// Physical pages in use by the family.
    pub resident_pages: usize,
    /// Pages held only in the swap file.
    pub swapped_pages: usize,
    /// The resident budget, in pages.
    pub budget_pages: usize,
    /// Translations this space's pmap holds.
    pub translations: usize,
    /// Faults the vm layer resolved.
    pub faults: u64,
    /// Pages filled with zeros.
    pub zero_fills: u64,
    /// Pages read from a pager into frames.
    pub page_ins: u64,
    /// File pages mapped straight from the page cache, read-only (see
    /// [`Config::direct_reads`]).
    pub direct_pages: u64,
    /// Pages read back from swap.
    pub swap_ins: u64,
    /// Copy-on-write copies into a shadow.
    pub cow_copies: u64,
    /// Old contents pushed into a copy object before a write.
    pub pushes: u64,
    /// Pages evicted by pageout or `evict`.
    pub pageouts: u64,
    /// Dirty pages written to a pager (pageout and `sync`).
    pub writebacks: u64,
    /// Objects merged into the one shadowing them.
    pub collapses: u64,
}

#[derive(Debug, Default)]
struct Counters {
    faults: u64,
    zero_fills: u64,
    page_ins: u64,
    direct_pages: u64,
    swap_ins: u64,
    cow_copies: u64,
    pushes: u64,
    pageouts: u64,
    writebacks: u64,
    collapses: u64,
}

struct Space {
    map: Map,
    pmap: Box<dyn Pmap>,
    pages: u64,
    handler: Option<Arc<Handler>>,
    /// Where the next fault lands if faults walk forward.
    next_seq: u64,
    /// The current fault-around window, in pages.
    window: u64,
}

/// An entry and the object pages `(lo, hi)` it shows inside a range.
type EntryWindow = (Entry, (u64, u64));

/// Everything behind one family of spaces, under one lock.
struct State {
    page: usize,
    spaces: Vec<Option<Space>>,
    objects: Objects,
    phys: Phys,
    swap: Option<Swap>,
    swap_dir: Option<PathBuf>,
    hand: usize,
    fault_around: u64,
    direct_reads: bool,
    n: Counters,
}

pub(crate) struct Machine {
    state: Mutex<State>,
}

impl Machine {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which memory backs the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStore {
    /// A memfd that host pmaps map: needed by [`HostPmap`].
    Host,
    /// Heap buffers: for pmaps that never reach the MMU, such as [`SimPmap`].
    Heap,
}

/// A range of virtual memory whose meaning the program controls (seed 003
/// in user space): which object backs each part, copy-on-write snapshots,
/// and how much physical memory it may use.
///
/// On the real MMU ([`AddressSpace::new`]) the space is an ordinary range
/// of the process's addresses: plain loads and stores work, and the faults
/// they raise run the vm layer's fault path on the faulting thread.
///
/// # Examples
/// ```
/// use vmprim_vm::{AddressSpace, Config, Mapping};
///
/// let space = AddressSpace::new(1 << 30, Config::default())?;
/// let at = space.map(Mapping::anonymous(1 << 20))?;
/// let base = space.host_base().unwrap();
/// // SAFETY: `at` is mapped read-write and nothing else uses it.
/// unsafe { *base.add(at + 4096) = 7 }; // a plain store: zero-fill on fault
/// let snap = space.snapshot(at, 1 << 20)?; // copy-on-write, both writable
/// unsafe { *base.add(at + 4096) = 8 };
/// let mut b = [0u8; 1];
/// space.read(snap + 4096, &mut b)?;
/// assert_eq!(b[0], 7); // the snapshot kept the old contents
/// # Ok::<(), vmprim_vm::VmError>(())
/// ```
pub struct AddressSpace {
    // Dropped first: no fault runs once the space is gone.
    registration: Option<Registration>,
    machine: Arc<Machine>,
    id: usize,
    len: usize,
    base: Option<usize>,
    store: FrameStore,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A memory object: a source of pages that mappings show (a file, a pager,
/// or zero-fill memory). Several mappings of one object, in one space or
/// several of a family, share its pages.
pub struct VmObject {
    machine: Arc<Machine>,
    id: ObjId,
    len: usize,
}

impl std::fmt::Debug for VmObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmObject")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl VmObject {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether its size is zero (never: objects have at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes every dirty resident page to the pager (nothing for
    /// anonymous objects), as `msync` does for a file.
    pub fn sync(&self) -> Result<(), VmError> {
        let mut st = self.machine.lock();
        let pages: Vec<u64> = st.objects.get(self.id).pages.keys().copied().collect();
        for i in pages {
            st.clean(self.id, i)?;
        }
        Ok(())
    }
}

impl Drop for VmObject {
    fn drop(&mut self) {
        let mut st = self.machine.lock();
        st.objects.get_mut(self.id).handle_refs -= 1;
        st.release(self.id);
    }
}

fn check_aligned(what: &'static str, value: usize, page: usize) -> Result<(), VmError> {
    if !value.is_multiple_of(page) {
        return Err(VmError::Unaligned { what, value });
    }
    Ok(())
}

impl AddressSpace {
    /// A space of `len` bytes on the real MMU ([`HostPmap`]).
    pub fn new(len: usize, config: Config) -> Result<Self, VmError> {
        Self::with_pmap(len, config, FrameStore::Host, |pages, frames| {
            let frames = frames.ok_or(VmError::Config("host frames missing"))?;
            Ok(Box::new(HostPmap::new(pages, frames.clone())?))
        })
    }

    /// A space of `len` bytes on a software page table ([`SimPmap`]): no
    /// hardware fault, accesses through [`read`](Self::read) and
    /// [`write`](Self::write).
    pub fn simulated(len: usize, config: Config) -> Result<Self, VmError> {
        Self::with_pmap(len, config, FrameStore::Heap, |_, _| {
            Ok(Box::new(SimPmap::new()))
        })
    }

    /// A space of `len` bytes on the pmap `make` builds (given the page count
    /// and, for [`FrameStore::Host`], the frames' memfd).
    pub fn with_pmap(
        len: usize,
        config: Config,
        store: FrameStore,
        make: impl FnOnce(u64, Option<&Arc<SharedMemory>>) -> Result<Box<dyn Pmap>, VmError>,
    ) -> Result<Self, VmError> {
        let page = page_size();
        if len == 0 {
            return Err(VmError::ZeroLength);
        }
        check_aligned("length", len, page)?;
        let capacity = match config.budget_pages {
            Some(b) if b < MIN_BUDGET => {
                return Err(VmError::Config("budget below MIN_BUDGET pages"))
            }
            Some(b) => b,
            None => config.max_frames.max(MIN_BUDGET),
        };
        let capacity = u32::try_from(capacity).map_err(|_| VmError::Config("too many frames"))?;
        let phys = match store {
            FrameStore::Host => Phys::shared(page, capacity)?,
            FrameStore::Heap => Phys::heap(page, capacity),
        };
        let pages = (len / page) as u64;
        let pmap = make(pages, phys.shared_memory())?;
        let state = State {
            page,
            spaces: Vec::new(),
            objects: Objects::default(),
            phys,
            swap: None,
            swap_dir: config.swap_dir.clone(),
            hand: 0,
            fault_around: config.fault_around.clamp(1, 512) as u64,
            direct_reads: config.direct_reads,
            n: Counters::default(),
        };
        let machine = Arc::new(Machine {
            state: Mutex::new(state),
        });
        Self::attach(machine, pmap, len, store)
    }

    fn attach(
        machine: Arc<Machine>,
        pmap: Box<dyn Pmap>,
        len: usize,
        store: FrameStore,
    ) -> Result<Self, VmError> {
        let base = pmap.host_base();
        let id = {
            let mut st = machine.lock();
            let space = Space {
                map: Map::default(),
                pmap,
                pages: (len / st.page) as u64,
                handler: None,
                next_seq: u64::MAX,
                window: 1,
            };
            match st.spaces.iter().position(Option::is_none) {
                Some(i) => {
                    st.spaces[i] = Some(space);
                    i
                }
                None => {
                    st.spaces.push(Some(space));
                    st.spaces.len() - 1
                }
            }
        };
        let mut me = Self {
            registration: None,
            machine,
            id,
            len,
            base,
            store,
        };
        if let Some(base) = base {
            let m = me.machine.clone();
            let reg = trap::register(base, len, move |f| host_fault(&m, id, base, f))
                .map_err(|e| VmError::Host(e.to_string()))?;
            me.registration = Some(reg);
        }
        Ok(me)
    }

    /// The address of offset 0 on the real MMU (`None` for a simulated
    /// space). Loads and stores at `host_base() + offset` behave as the
    /// mapping at `offset` says.
    pub fn host_base(&self) -> Option<*mut u8> {
        self.base.map(|b| b as *mut u8)
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn page(&self) -> usize {
        page_size()
    }

    fn pages_of(&self, offset: usize, len: usize) -> Result<Range<u64>, VmError> {
        let p = self.page();
        check_aligned("offset", offset, p)?;
        check_aligned("length", len, p)?;
        if len == 0 {
            return Err(VmError::ZeroLength);
        }
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(VmError::OutOfRange {
                offset,
                len,
                limit: self.len,
                of: "address space",
            });
        }
        Ok((offset / p) as u64..((offset + len) / p) as u64)
    }

    /// A zero-fill object of `len` bytes, to map shared in several places.
    pub fn create_anonymous(&self, len: usize) -> Result<VmObject, VmError> {
        self.create(len, ObjectKind::Anonymous, None)
    }

    /// An object whose pages are the file's; its size is the file's length
    /// rounded up to pages.
    pub fn create_file(&self, file: File) -> Result<VmObject, VmError> {
        let pager = FilePager::new(file).map_err(|e| VmError::Host(e.to_string()))?;
        let len = (pager.len() as usize).div_ceil(self.page()) * self.page();
        self.create(len, ObjectKind::Paged, Some(Arc::new(pager)))
    }

    /// An object of `len` bytes whose pages come from `pager`.
    pub fn create_paged(&self, pager: Arc<dyn Pager>, len: usize) -> Result<VmObject, VmError> {
        self.create(len, ObjectKind::Paged, Some(pager))
    }

    fn create(
        &self,
        len: usize,
        kind: ObjectKind,
        pager: Option<Arc<dyn Pager>>,
    ) -> Result<VmObject, VmError> {
        if len == 0 {
            return Err(VmError::ZeroLength);
        }
        check_aligned("object length", len, self.page())?;
        let mut o = Object::new(kind, (len / self.page()) as u64, pager);
        o.handle_refs = 1;
        let id = self.machine.lock().objects.insert(o);
        Ok(VmObject {
            machine: self.machine.clone(),
            id,
            len,
        })
    }

    /// Maps `m`; returns the offset where it went.
    pub fn map(&self, m: Mapping<'_>) -> Result<usize, VmError> {
        let p = self.page();
        if m.len == 0 {
            return Err(VmError::ZeroLength);
        }
        check_aligned("length", m.len, p)?;
        check_aligned("object offset", m.offset, p)?;
        if !m.max_prot.contains(m.prot) {
            return Err(VmError::ExceedsMaxProt {
                asked: m.prot,
                max: m.max_prot,
                offset: m.at.unwrap_or(0),
            });
        }
        if let Some(o) = m.object {
            if !Arc::ptr_eq(&o.machine, &self.machine) {
                return Err(VmError::Config(
                    "the object belongs to another family of spaces",
                ));
            }
            if m.offset.checked_add(m.len).is_none_or(|end| end > o.len) {
                return Err(VmError::OutOfRange {
                    offset: m.offset,
                    len: m.len,
                    limit: o.len,
                    of: "object",
                });
            }
        }
        let pages = (m.len / p) as u64;
        let mut st = self.machine.lock();
        let start = match m.at {
            Some(at) => {
                let r = self.pages_of(at, m.len)?;
                if !st.space(self.id).map.is_free(r.clone()) {
                    return Err(VmError::Overlap {
                        offset: at,
                        len: m.len,
                    });
                }
                r.start
            }
            None => {
                let sp = st.space(self.id);
                sp.map
                    .find_free(pages, sp.pages)
                    .ok_or(VmError::NoSpace { len: m.len })?
            }
        };
        let object = match (m.object, m.share) {
            (None, _) => st
                .objects
                .insert(Object::new(ObjectKind::Anonymous, pages, None)),
            (Some(o), Share::Shared) => o.id,
            (Some(o), Share::Private) => {
                let first = (m.offset / p) as u64;
                st.copy_of(o.id, first..first + pages)
            }
        };
        st.objects.get_mut(object).entry_refs += 1;
        st.space_mut(self.id).map.insert(Entry {
            start,
            end: start + pages,
            object,
            offset: (m.offset / p) as u64,
            prot: m.prot,
            max_prot: m.max_prot,
            inheritance: m.inheritance,
        });
        st.merge(self.id, start..start + pages);
        Ok(start as usize * p)
    }

    /// Unmaps `offset..offset + len`, which must be mapped throughout.
    pub fn unmap(&self, offset: usize, len: usize) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        st.covered(self.id, r.clone())?;
        st.split_ends(self.id, r.clone());
        let gone = st.space_mut(self.id).map.remove_range(r.clone());
        st.space_mut(self.id).pmap.remove(r);
        for e in gone {
            st.objects.get_mut(e.object).entry_refs -= 1;
            st.release(e.object);
        }
        Ok(())
    }

    /// Sets the protection of a mapped range; fails, changing nothing, if
    /// `prot` exceeds some entry's maximum.
    pub fn protect(&self, offset: usize, len: usize, prot: Prot) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        st.covered(self.id, r.clone())?;
        if let Some(e) = st
            .space(self.id)
            .map
            .overlapping(r.clone())
            .find(|e| !e.max_prot.contains(prot))
        {
            return Err(VmError::ExceedsMaxProt {
                asked: prot,
                max: e.max_prot,
                offset: e.start.max(r.start) as usize * self.page(),
            });
        }
        st.split_ends(self.id, r.clone());
        st.space_mut(self.id)
            .map
            .update(r.clone(), |e| e.prot = prot);
        st.space_mut(self.id).pmap.protect(r.clone(), prot);
        st.merge(self.id, r);
        Ok(())
    }

    /// Lowers the maximum protection of a mapped range (and its protection
    /// with it). It can never be raised again.
    pub fn limit_max_prot(&self, offset: usize, len: usize, max: Prot) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        st.covered(self.id, r.clone())?;
        st.split_ends(self.id, r.clone());
        st.space_mut(self.id).map.update(r.clone(), |e| {
            e.max_prot = e.max_prot & max;
            e.prot = e.prot & max;
        });
        st.space_mut(self.id).pmap.protect(r.clone(), max);
        st.merge(self.id, r);
        Ok(())
    }

    /// Sets what a [`fork`](Self::fork) gets of a mapped range.
    pub fn set_inheritance(
        &self,
        offset: usize,
        len: usize,
        inheritance: Inheritance,
    ) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        st.covered(self.id, r.clone())?;
        st.split_ends(self.id, r.clone());
        st.space_mut(self.id)
            .map
            .update(r.clone(), |e| e.inheritance = inheritance);
        st.merge(self.id, r);
        Ok(())
    }

    /// A copy-on-write snapshot of a mapped range: a new mapping (at the
    /// lowest free offset, returned) that keeps the contents as of now,
    /// while both it and the original stay writable. It costs what was
    /// written since the last snapshot, not the size of the range: the
    /// original's written pages lose their write access, and each page is
    /// copied once, by the first side to write it.
    pub fn snapshot(&self, offset: usize, len: usize) -> Result<usize, VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        st.covered(self.id, r.clone())?;
        let sp = st.space(self.id);
        let dest = sp
            .map
            .find_free(r.end - r.start, sp.pages)
            .ok_or(VmError::NoSpace { len })?;
        st.split_ends(self.id, r.clone());
        let entries: Vec<Entry> = st
            .space(self.id)
            .map
            .overlapping(r.clone())
            .cloned()
            .collect();
        for e in entries {
            let at = dest + (e.start - r.start);
            st.copy_entry(&e, self.id, at);
        }
        st.merge(self.id, r.clone());
        st.merge(self.id, dest..dest + (r.end - r.start));
        Ok(dest as usize * self.page())
    }

    /// A new space of the same family and size, whose entries follow each
    /// range's [`Inheritance`]: shared, copied on write, or left out.
    pub fn fork(&self) -> Result<AddressSpace, VmError> {
        let pmap = {
            let st = self.machine.lock();
            let sp = st.space(self.id);
            sp.pmap.create(sp.pages, st.phys.shared_memory())?
        };
        let child = Self::attach(self.machine.clone(), pmap, self.len, self.store)?;
        let mut st = self.machine.lock();
        let entries: Vec<Entry> = st.space(self.id).map.iter().cloned().collect();
        for e in entries {
            match e.inheritance {
                Inheritance::None => {}
                Inheritance::Share => {
                    st.objects.get_mut(e.object).entry_refs += 1;
                    st.space_mut(child.id).map.insert(e.clone());
                }
                Inheritance::Copy => st.copy_entry(&e, child.id, e.start),
            }
        }
        let all = 0..st.space(self.id).pages;
        st.merge(child.id, all.clone());
        st.merge(self.id, all);
        Ok(child)
    }

    /// Writes the dirty pages of the objects mapped shared in the range to
    /// their pagers (`msync`). Private and anonymous pages stay.
    pub fn sync(&self, offset: usize, len: usize) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        for (e, (lo, hi)) in st.windows(self.id, r)? {
            let pages: Vec<u64> = st
                .objects
                .get(e.object)
                .pages
                .keys()
                .copied()
                .filter(|i| (lo..hi).contains(i))
                .collect();
            for i in pages {
                st.clean(e.object, i)?;
            }
        }
        Ok(())
    }

    /// Pages out every resident page visible in the range (through every
    /// object of its chains), as pageout would under memory pressure.
    pub fn evict(&self, offset: usize, len: usize) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        let mut st = self.machine.lock();
        for (e, (lo, hi)) in st.windows(self.id, r)? {
            let mut o = Some(e.object);
            while let Some(id) = o {
                let frames: Vec<Frame> = st
                    .objects
                    .get(id)
                    .pages
                    .iter()
                    .filter(|(i, _)| (lo..hi).contains(*i))
                    .filter_map(|(_, s)| match s {
                        PageState::Resident { frame, .. } => Some(*frame),
                        PageState::Swapped(_) => None,
                    })
                    .collect();
                for f in frames {
                    st.evict(f)?;
                }
                o = st.objects.get(id).backing;
            }
        }
        Ok(())
    }

    /// Makes the pmap forget every translation in the range, as it may at
    /// any time on its own: the next access to each page faults and is
    /// resolved again. Nothing else changes.
    pub fn forget_translations(&self, offset: usize, len: usize) -> Result<(), VmError> {
        let r = self.pages_of(offset, len)?;
        self.machine.lock().space_mut(self.id).pmap.remove(r);
        Ok(())
    }

    /// Installs the handler for faults the vm layer cannot resolve (unmapped,
    /// protection, pager failure). On the real MMU it runs in signal context
    /// on the faulting thread, without the vm layer's lock: it may call this
    /// space's methods (to map what was missing, say) and must not touch
    /// the faulting page itself. Without a handler such a fault kills the
    /// process the way it would without vmprim.
    pub fn set_violation_handler(
        &self,
        handler: impl Fn(&Violation) -> Resolution + Send + Sync + 'static,
    ) {
        self.machine.lock().space_mut(self.id).handler = Some(Arc::new(handler));
    }

    /// Reads `buf.len()` bytes at `offset` through the fault path (the way a
    /// load would, on any pmap).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), VmError> {
        self.access(offset, buf.len(), Access::Read, |frame, src| {
            let (at, n) = (frame.0, frame.1);
            buf[at..at + n].copy_from_slice(src);
            None
        })
    }

    /// Writes `data` at `offset` through the fault path (the way a store
    /// would, on any pmap).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), VmError> {
        self.access(offset, data.len(), Access::Write, |frame, _| {
            let (at, n) = (frame.0, frame.1);
            Some(&data[at..at + n])
        })
    }

    /// Runs `f` on each page piece of `offset..offset + len` once a
    /// translation allows `access`: `f` gets (position in the buffer,
    /// length) and the frame's bytes, and returns bytes to store, if any.
    fn access<'d>(
        &self,
        offset: usize,
        len: usize,
        access: Access,
        mut f: impl FnMut((usize, usize), &[u8]) -> Option<&'d [u8]>,
    ) -> Result<(), VmError> {
        let p = self.page();
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(VmError::OutOfRange {
                offset,
                len,
                limit: self.len,
                of: "address space",
            });
        }
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let (vpn, in_page) = ((at / p) as u64, at % p);
            let n = (p - in_page).min(len - done);
            let mut tries = 0;
            loop {
                let mut st = self.machine.lock();
                let need = if access == Access::Write {
                    Prot::READ_WRITE
                } else {
                    Prot::READ
                };
                let found = st
                    .space(self.id)
                    .pmap
                    .extract(vpn)
                    .filter(|(_, pr)| pr.contains(need));
                if let Some((Target::Direct { source, page }, _)) = found {
                    // A file page straight from the page cache: never
                    // writable, and no frame has it (the vm layer removes
                    // direct translations before a page enters a frame), so
                    // the file holds its contents.
                    debug_assert_eq!(access, Access::Read);
                    let pager = st.objects.get(source).pager.clone();
                    let pager = pager.expect("direct translations lead to pager objects");
                    let mut bytes = vec![0u8; p];
                    if let Err(e) = pager.page_in(page, &mut bytes) {
                        let kind = ViolationKind::Pager(e);
                        return Err(VmError::Fault(Violation {
                            offset: at,
                            access,
                            kind,
                        }));
                    }
                    f((done, n), &bytes[in_page..in_page + n]);
                    break;
                }
                if let Some((Target::Frame(frame), prot)) = found {
                    debug_assert!(prot.contains(need));
                    st.phys.info[frame.0 as usize].referenced = true;
                    let src = &st.phys.page(frame)[in_page..in_page + n];
                    if let Some(data) = f((done, n), src) {
                        st.phys.page_mut(frame)[in_page..in_page + n].copy_from_slice(data);
                    }
                    break;
                }
                match st.fault(self.id, vpn, access) {
                    Ok(()) => {}
                    Err(kind) => {
                        let handler = st.space(self.id).handler.clone();
                        drop(st);
                        let v = Violation {
                            offset: at,
                            access,
                            kind,
                        };
                        match handler.map(|h| h(&v)) {
                            Some(Resolution::Retry) if tries < 64 => {}
                            _ => return Err(VmError::Fault(v)),
                        }
                    }
                }
                tries += 1;
            }
            done += n;
        }
        Ok(())
    }

    /// The kinds of the objects a fault at `offset` would look through,
    /// top first (for example shadow, copy, anonymous behind a snapshot).
    pub fn chain(&self, offset: usize) -> Result<Vec<ObjectKind>, VmError> {
        let r = self.pages_of(offset - offset % self.page(), self.page())?;
        let st = self.machine.lock();
        let e = st
            .space(self.id)
            .map
            .lookup(r.start)
            .ok_or(VmError::NotMapped { offset })?;
        let mut kinds = Vec::new();
        let mut o = Some(e.object);
        while let Some(id) = o {
            kinds.push(st.objects.get(id).kind);
            o = st.objects.get(id).backing;
        }
        Ok(kinds)
    }

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        let st = self.machine.lock();
        let sp = st.space(self.id);
        Stats {
            entries: sp.map.len(),
            objects: st.objects.live(),
            max_depth: sp
                .map
                .iter()
                .map(|e| st.objects.depth(e.object))
                .max()
                .unwrap_or(0),
            resident_pages: st.phys.in_use(),
            swapped_pages: st.swap.as_ref().map_or(0, Swap::used),
            budget_pages: st.phys.capacity(),
            translations: sp.pmap.translations(),
            faults: st.n.faults,
            zero_fills: st.n.zero_fills,
            page_ins: st.n.page_ins,
            direct_pages: st.n.direct_pages,
            swap_ins: st.n.swap_ins,
            cow_copies: st.n.cow_copies,
            pushes: st.n.pushes,
            pageouts: st.n.pageouts,
            writebacks: st.n.writebacks,
            collapses: st.n.collapses,
        }
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // Unregistering waits for handlers running in the range to finish.
        drop(self.registration.take());
        let mut st = self.machine.lock();
        let gone: Vec<Entry> = st.space(self.id).map.iter().cloned().collect();
        st.spaces[self.id] = None;
        for e in gone {
            st.objects.get_mut(e.object).entry_refs -= 1;
            st.release(e.object);
        }
    }
}

/// The real MMU's fault entry: runs in signal context on the faulting
/// thread. It takes the family's lock, which no code holding it ever gives
/// up to touch a space's addresses (the vm layer reaches frames through the
/// pool's own mapping), so the lock is never held by the interrupted code
/// for a fault the vm layer raised itself. The program must likewise not
/// fault on a space while inside one of its pagers.
///
/// A `SIGBUS` is the vm layer's only when it is a userfaultfd write-protect
/// fault ([`HostPmap`]'s copy-on-write downgrade): an address error from a
/// write. A hardware memory error, or a load from a page mapped straight
/// from a file that was truncated under the mapping, reaches the process as
/// it would without vmprim.
fn host_fault(m: &Arc<Machine>, id: usize, base: usize, f: &trap::Fault) -> Outcome {
    let (addr, access) = (f.addr, f.access);
    if f.signal == trap::Signal::Bus && f.cause != trap::Cause::BusAddress {
        return Outcome::NotOurs;
    }
    let mut st = m.lock();
    let p = st.page;
    let vpn = ((addr - base) / p) as u64;
    if f.signal == trap::Signal::Bus
        && access != Access::Write
        && matches!(
            st.space(id).pmap.extract(vpn),
            Some((Target::Direct { .. }, _))
        )
    {
        return Outcome::NotOurs;
    }
    let access = match access {
        Access::Unknown => {
            // No error code: a readable translation means the store failed.
            let readable = st.space(id).pmap.extract(vpn).is_some();
            if readable {
                Access::Write
            } else {
                Access::Read
            }
        }
        a => a,
    };
    let kind = match st.fault(id, vpn, access) {
        Ok(()) => return Outcome::Resolved,
        Err(kind) => kind,
    };
    let handler = st.space(id).handler.clone();
    drop(st);
    let v = Violation {
        offset: addr - base,
        access,
        kind,
    };
    match handler.map(|h| h(&v)) {
        Some(Resolution::Retry) => Outcome::Resolved,
        _ => Outcome::NotOurs,
    }
}

impl State {
    fn space(&self, id: usize) -> &Space {
        self.spaces[id].as_ref().expect("live space")
    }

    fn space_mut(&mut self, id: usize) -> &mut Space {
        self.spaces[id].as_mut().expect("live space")
    }

    fn covered(&self, id: usize, r: Range<u64>) -> Result<(), VmError> {
        match self.space(id).map.first_hole(r) {
            Some(v) => Err(VmError::NotMapped {
                offset: v as usize * self.page,
            }),
            None => Ok(()),
        }
    }

    /// The entries covering `r` (which must be mapped throughout), each
    /// with the object pages `lo..hi` that the part inside `r` shows.
    fn windows(&self, id: usize, r: Range<u64>) -> Result<Vec<EntryWindow>, VmError> {
        self.covered(id, r.clone())?;
        Ok(self
            .space(id)
            .map
            .overlapping(r.clone())
            .map(|e| {
                (
                    e.clone(),
                    (e.index(e.start.max(r.start)), e.index(e.end.min(r.end))),
                )
            })
            .collect())
    }

    fn split_ends(&mut self, id: usize, r: Range<u64>) {
        for v in [r.start, r.end] {
            if let Some(o) = self.space_mut(id).map.split(v) {
                self.objects.get_mut(o).entry_refs += 1;
            }
        }
    }

    fn merge(&mut self, id: usize, r: Range<u64>) {
        for o in self.space_mut(id).map.merge(r) {
            self.objects.get_mut(o).entry_refs -= 1;
        }
    }

    /// Removes the translations of `f` in every space, except `keep`.
    fn unmap_frame(&mut self, f: Frame, keep: Option<(usize, u64)>) {
        self.unmap_target(Target::Frame(f), keep);
    }

    /// Removes the direct translations of page `i` of the file behind `o`
    /// in every space: the page is entering a frame, which from now on
    /// holds its contents.
    fn unmap_direct(&mut self, o: ObjId, i: u64) {
        let t = Target::Direct { source: o, page: i };
        self.unmap_target(t, None);
    }

    fn unmap_target(&mut self, t: Target, keep: Option<(usize, u64)>) {
        for (sid, sp) in self.spaces.iter_mut().enumerate() {
            let Some(sp) = sp else { continue };
            for v in sp.pmap.pages_of(t) {
                if keep != Some((sid, v)) {
                    sp.pmap.remove(v..v + 1);
                }
            }
        }
    }

    /// Lowers every translation of `f` to read-only.
    fn write_protect_frame(&mut self, f: Frame) {
        for sp in self.spaces.iter_mut().flatten() {
            for v in sp.pmap.pages_of(Target::Frame(f)) {
                sp.pmap.write_protect(v..v + 1);
            }
        }
    }

    /// Maps the entry `e` copy-on-write at page `at` of space `dst`.
    fn copy_entry(&mut self, e: &Entry, dst: usize, at: u64) {
        let s = self.copy_of(e.object, e.window());
        self.objects.get_mut(s).entry_refs += 1;
        self.space_mut(dst).map.insert(Entry {
            start: at,
            end: at + (e.end - e.start),
            object: s,
            ..e.clone()
        });
    }

    /// A copy-on-write view of pages `window` of `t` as they are now: a new
    /// copy object keeps them (it receives each page's old contents before
    /// `t` changes it), and a new private shadow over the copy, returned
    /// with no references yet, takes the view's own writes.
    fn copy_of(&mut self, t: ObjId, window: Range<u64>) -> ObjId {
        let size = self.objects.get(t).size;
        let mut c = Object::new(ObjectKind::Copy, size, None);
        c.backing = Some(t);
        c.keeps = window;
        let c = self.objects.insert(c);
        if let Some(old) = self.objects.get(t).copy {
            // The older copy now reads what it lacks through the new one,
            // which holds the same contents for every page unchanged since.
            let old_keeps = self.objects.get(old).keeps.clone();
            self.objects.get_mut(old).backing = Some(c);
            self.objects.get_mut(t).shadowed_by.retain(|&x| x != old);
            let co = self.objects.get_mut(c);
            co.shadowed_by.push(old);
            co.keeps = co.keeps.start.min(old_keeps.start)..co.keeps.end.max(old_keeps.end);
        }
        let keeps = self.objects.get(c).keeps.clone();
        let to = self.objects.get_mut(t);
        to.copy = Some(c);
        to.shadowed_by.push(c);
        let mut s = Object::new(ObjectKind::Shadow, size, None);
        s.backing = Some(c);
        let s = self.objects.insert(s);
        self.objects.get_mut(c).shadowed_by.push(s);
        // Nothing may write `t`'s kept pages in place any more without
        // faulting first: lower every writable translation of them, in
        // every mapping of `t`. Only pages written since the last snapshot
        // are writable, so this costs what was written.
        for sp in self.spaces.iter_mut().flatten() {
            let ranges: Vec<Range<u64>> = sp
                .map
                .iter()
                .filter(|x| x.object == t)
                .filter_map(|x| {
                    let w = x.window();
                    let (lo, hi) = (w.start.max(keeps.start), w.end.min(keeps.end));
                    (lo < hi).then(|| x.start + (lo - x.offset)..x.start + (hi - x.offset))
                })
                .collect();
            for r in ranges {
                sp.pmap.write_protect(r);
            }
        }
        s
    }

    /// Frees frames until `n` are available, by the clock.
    fn reserve(&mut self, n: usize) -> Result<(), ViolationKind> {
        let mut sweeps = 0;
        while self.phys.available() < n {
            let slots = self.phys.slots();
            if slots == 0 || sweeps > 3 * slots {
                return Err(ViolationKind::NoMemory);
            }
            sweeps += 1;
            self.hand = (self.hand + 1) % slots;
            let f = Frame(self.hand as u32);
            let info = self.phys.info[self.hand];
            if info.owner.is_none() {
                continue;
            }
            if info.referenced {
                // Second chance: clear the bit and drop the translations, so
                // the next access faults and sets it again.
                self.phys.info[self.hand].referenced = false;
                self.unmap_frame(f, None);
                continue;
            }
            if self.evict(f).is_err() {
                self.phys.info[self.hand].referenced = true;
            }
        }
        Ok(())
    }

    fn alloc(&mut self, owner: (ObjId, u64)) -> Frame {
        self.phys
            .alloc(owner)
            .expect("frames reserved before the fault looked anything up")
    }

    /// Writes page `i` of `o` to its pager if it is dirty, and makes it clean.
    fn clean(&mut self, o: ObjId, i: u64) -> Result<(), VmError> {
        let obj = self.objects.get(o);
        let Some(pager) = obj.pager.clone() else {
            return Ok(());
        };
        let Some(&PageState::Resident {
            frame,
            dirty: true,
            slot,
        }) = obj.pages.get(&i)
        else {
            return Ok(());
        };
        // Further writes must fault, to dirty the page again.
        self.write_protect_frame(frame);
        pager.page_out(i, self.phys.page(frame))?;
        self.n.writebacks += 1;
        self.objects.get_mut(o).pages.insert(
            i,
            PageState::Resident {
                frame,
                dirty: false,
                slot,
            },
        );
        Ok(())
    }

    /// Evicts frame `f`: writes it to its pager or swap if it must be kept,
    /// and frees it.
    fn evict(&mut self, f: Frame) -> Result<(), VmError> {
        let Some((o, i)) = self.phys.info[f.0 as usize].owner else {
            return Ok(());
        };
        self.unmap_frame(f, None);
        let obj = self.objects.get(o);
        let Some(&PageState::Resident { dirty, slot, .. }) = obj.pages.get(&i) else {
            unreachable!("frame owner out of date");
        };
        let next = match (&obj.pager, dirty, slot) {
            (Some(pager), true, _) => {
                pager.page_out(i, self.phys.page(f))?;
                self.n.writebacks += 1;
                None
            }
            (Some(_), false, _) => None,
            // A clean anonymous page without a swap copy is a zero page
            // filled where nothing below could show through.
            (None, false, None) => None,
            (None, false, Some(s)) => Some(PageState::Swapped(s)),
            (None, true, old) => {
                let swap = match &mut self.swap {
                    Some(s) => s,
                    None => self.swap.insert(
                        Swap::create(self.swap_dir.as_deref())
                            .map_err(|e| VmError::Host(format!("swap file: {e}")))?,
                    ),
                };
                let slot = swap
                    .put(self.phys.page(f))
                    .map_err(|e| PagerError::page_out(i, format!("swap: {e}")))?;
                if let Some(s) = old {
                    swap.free(s);
                }
                Some(PageState::Swapped(slot))
            }
        };
        let pages = &mut self.objects.get_mut(o).pages;
        match next {
            Some(s) => pages.insert(i, s),
            None => pages.remove(&i),
        };
        self.phys.free(f);
        self.n.pageouts += 1;
        Ok(())
    }

    /// Finds page `i` as object `top` shows it, bringing it into a frame:
    /// from swap, from the pager at the bottom of the chain, or zero-filled
    /// into `top`. Returns the object holding it and its frame.
    fn resolve(&mut self, top: ObjId, i: u64) -> Result<(ObjId, Frame), ViolationKind> {
        let mut o = top;
        loop {
            let obj = self.objects.get(o);
            match obj.pages.get(&i) {
                Some(&PageState::Resident { frame, .. }) => return Ok((o, frame)),
                Some(&PageState::Swapped(slot)) => {
                    let f = self.alloc((o, i));
                    let swap = self.swap.as_ref().expect("swapped pages imply a swap file");
                    if let Err(e) = swap.get(slot, self.phys.page_mut(f)) {
                        self.phys.free(f);
                        return Err(ViolationKind::Pager(PagerError::page_in(
                            i,
                            format!("swap: {e}"),
                        )));
                    }
                    self.n.swap_ins += 1;
                    let page = PageState::Resident {
                        frame: f,
                        dirty: false,
                        slot: Some(slot),
                    };
                    self.objects.get_mut(o).pages.insert(i, page);
                    return Ok((o, f));
                }
                None => match obj.backing {
                    Some(b) => o = b,
                    None => break,
                },
            }
        }
        if let Some(pager) = self.objects.get(o).pager.clone() {
            let f = self.alloc((o, i));
            if let Err(e) = pager.page_in(i, self.phys.page_mut(f)) {
                self.phys.free(f);
                return Err(ViolationKind::Pager(e));
            }
            self.n.page_ins += 1;
            let page = PageState::Resident {
                frame: f,
                dirty: false,
                slot: None,
            };
            self.objects.get_mut(o).pages.insert(i, page);
            self.unmap_direct(o, i);
            return Ok((o, f));
        }
        let f = self.alloc((top, i));
        self.n.zero_fills += 1;
        // Over a backing object, dropping this page would let the backing
        // show through: it must be kept like a written one.
        let dirty = self.objects.get(top).backing.is_some();
        let page = PageState::Resident {
            frame: f,
            dirty,
            slot: None,
        };
        self.objects.get_mut(top).pages.insert(i, page);
        Ok((top, f))
    }

    /// Whether page `i` of `t` is in no object of its chain and no copy
    /// awaits its old contents: then `Some` of the bottom object if it has
    /// a pager (the page must be paged in), `Some(None)` if the page is
    /// fresh zero-fill memory.
    fn fresh(&self, t: ObjId, i: u64) -> Option<Option<ObjId>> {
        let o = self.bottom_lacking(t, i)?;
        if self.push_pending(t, i).is_some() {
            return None;
        }
        Some(self.objects.get(o).pager.is_some().then_some(o))
    }

    /// The bottom object of `t`'s chain if no object of the chain has page
    /// `i` (resident or swapped).
    fn bottom_lacking(&self, t: ObjId, i: u64) -> Option<ObjId> {
        let mut o = t;
        loop {
            let obj = self.objects.get(o);
            if obj.pages.contains_key(&i) {
                return None;
            }
            match obj.backing {
                Some(b) => o = b,
                None => return Some(o),
            }
        }
    }

    /// A read of page `i` of `t` that only the file at the bottom of the
    /// chain has: maps the file's pages from there on (those the chain
    /// still lacks, untranslated, inside the entry ending at `end` and the
    /// file) straight from the page cache, read-only. Returns whether it
    /// did; if not (no file, the pmap cannot, the page is past the file's
    /// end), the fault goes on through frames.
    fn direct_run(&mut self, sid: usize, vpn: u64, t: ObjId, i: u64, end: u64, prot: Prot) -> bool {
        const MOST: u64 = 256;
        let Some(b) = self.bottom_lacking(t, i) else {
            return false;
        };
        let Some(pager) = self.objects.get(b).pager.clone() else {
            return false;
        };
        let Some(Mappable { fd, len }) = pager.mappable() else {
            return false;
        };
        let in_file = len.div_ceil(self.page as u64);
        if i >= in_file {
            return false;
        }
        let window = if self.fault_around <= 1 {
            1
        } else {
            (self.space(sid).window * 16).min(MOST)
        };
        let window = window.min(end - vpn).min(in_file - i);
        let mut n = 1;
        while n < window
            && self.space(sid).pmap.extract(vpn + n).is_none()
            && self.bottom_lacking(t, i + n) == Some(b)
        {
            n += 1;
        }
        let src = DirectSource { source: b, fd };
        match self.space_mut(sid).pmap.enter_direct(vpn, src, i, n, prot) {
            Ok(true) => {
                self.n.direct_pages += n;
                self.space_mut(sid).next_seq = vpn + n;
                true
            }
            Ok(false) | Err(_) => false,
        }
    }

    /// Read-ahead for reads walking forward through pages only the pager
    /// `b` (the bottom of `t`'s chain) has: pages in up to the window's
    /// pages into consecutive frames and maps them read-only with one pmap
    /// call. Stops at the first page-in failure (that page's own fault will
    /// report it); `None` if even the faulting page failed or there is no
    /// room, so the one-page path runs and reports.
    fn page_in_run(
        &mut self,
        sid: usize,
        vpn: u64,
        (t, b): (ObjId, ObjId),
        i: u64,
        end: u64,
        prot: Prot,
    ) -> Option<u64> {
        let window = self.space(sid).window.min(end - vpn);
        let mut n = 1;
        while n < window
            && self.space(sid).pmap.extract(vpn + n).is_none()
            && self.fresh(t, i + n) == Some(Some(b))
        {
            n += 1;
        }
        if self.phys.available() < n as usize + 3 {
            return None;
        }
        let first = self.phys.alloc_run(n as u32, |k| (b, i + u64::from(k)))?;
        let pager = self.objects.get(b).pager.clone()?;
        let mut got = n;
        for k in 0..n {
            let f = Frame(first.0 + k as u32);
            if pager.page_in(i + k, self.phys.page_mut(f)).is_err() {
                got = k;
                break;
            }
        }
        for k in got..n {
            self.phys.free(Frame(first.0 + k as u32));
        }
        if got == 0 {
            return None;
        }
        for k in 0..got {
            let frame = Frame(first.0 + k as u32);
            let page = PageState::Resident {
                frame,
                dirty: false,
                slot: None,
            };
            self.objects.get_mut(b).pages.insert(i + k, page);
            self.unmap_direct(b, i + k);
        }
        self.n.page_ins += got;
        self.space_mut(sid)
            .pmap
            .enter_run(vpn, first, got, prot.without(Prot::WRITE))
            .ok()?;
        Some(got)
    }

    /// Fault-around for a write walking forward through fresh memory: fills
    /// up to the space's window of pages from `vpn` (those still fresh and
    /// untranslated, before the entry's `end`) with consecutive zero frames
    /// and maps them writable with one pmap call. The pages count as dirty:
    /// writes to them no longer fault. Returns how many pages it mapped, or
    /// `None` to take the one-page path (no room, or no run of frames).
    fn zero_fill_run(
        &mut self,
        sid: usize,
        vpn: u64,
        t: ObjId,
        i: u64,
        end: u64,
        prot: Prot,
    ) -> Result<Option<u64>, ViolationKind> {
        let window = self.space(sid).window.min(end - vpn);
        let mut n = 1;
        while n < window
            && self.space(sid).pmap.extract(vpn + n).is_none()
            && self.fresh(t, i + n) == Some(None)
        {
            n += 1;
        }
        // Speculative pages never push others out.
        if self.phys.available() < n as usize + 3 {
            return Ok(None);
        }
        let Some(first) = self.phys.alloc_run(n as u32, |k| (t, i + u64::from(k))) else {
            return Ok(None);
        };
        self.phys.commit_run(first, n as u32);
        let pages = &mut self.objects.get_mut(t).pages;
        for k in 0..n {
            let frame = Frame(first.0 + k as u32);
            pages.insert(
                i + k,
                PageState::Resident {
                    frame,
                    dirty: true,
                    slot: None,
                },
            );
        }
        self.n.zero_fills += n;
        self.space_mut(sid)
            .pmap
            .enter_run(vpn, first, n, prot)
            .map_err(|_| ViolationKind::NoMemory)?;
        Ok(Some(n))
    }

    /// Whether writing page `i` of `t` must first push its old contents
    /// into `t`'s copy object.
    fn push_pending(&self, t: ObjId, i: u64) -> Option<ObjId> {
        let c = self.objects.get(t).copy?;
        let co = self.objects.get(c);
        (co.keeps.contains(&i) && !co.pages.contains_key(&i)).then_some(c)
    }

    /// The fault path (seed 003): find the entry, check the access, walk
    /// the object chain, page in, copy on write, tell the pmap.
    fn fault(&mut self, sid: usize, vpn: u64, access: Access) -> Result<(), ViolationKind> {
        let sp = self.space(sid);
        let e = sp.map.lookup(vpn).ok_or(ViolationKind::Unmapped)?;
        let need = match access {
            Access::Write => Prot::WRITE,
            Access::Exec => Prot::EXEC,
            _ => Prot::READ,
        };
        if !e.prot.contains(need) {
            return Err(ViolationKind::Protection(e.prot));
        }
        if let Some((_, have)) = sp.pmap.extract(vpn) {
            if have.contains(need) {
                // Another thread resolved it first.
                return Ok(());
            }
        }
        let (t, i, prot, end) = (e.object, e.index(vpn), e.prot, e.end);
        self.n.faults += 1;
        let most = self.fault_around;
        let sp = self.space_mut(sid);
        sp.window = if vpn == sp.next_seq {
            (sp.window * 2).min(most)
        } else {
            1
        };
        sp.next_seq = vpn + 1;
        if access == Access::Read && self.direct_reads && self.direct_run(sid, vpn, t, i, end, prot)
        {
            return Ok(());
        }
        if self.space(sid).window > 1 {
            let run = match (self.fresh(t, i), access) {
                (Some(None), Access::Write) => self.zero_fill_run(sid, vpn, t, i, end, prot)?,
                (Some(Some(b)), Access::Read) => self.page_in_run(sid, vpn, (t, b), i, end, prot),
                _ => None,
            };
            if let Some(n) = run {
                self.space_mut(sid).next_seq = vpn + n;
                return Ok(());
            }
        }
        self.reserve(3)?;
        let (h, mut f) = self.resolve(t, i)?;
        if access == Access::Write {
            if let Some(c) = self.push_pending(t, i) {
                self.push(c, i, f, (sid, vpn));
            }
            if h != t {
                f = self.copy_page(t, i, f, (sid, vpn));
                self.n.cow_copies += 1;
            } else {
                self.make_dirty(t, i);
            }
            return self.map_run(sid, (vpn, t, i, end), f, prot, true);
        }
        let dirty = matches!(
            self.objects.get(h).pages.get(&i),
            Some(PageState::Resident { dirty: true, .. })
        );
        let writable = h == t && dirty && self.push_pending(t, i).is_none();
        let prot = if writable {
            prot
        } else {
            prot.without(Prot::WRITE)
        };
        self.map_run(sid, (vpn, t, i, end), f, prot, false)
    }

    /// The resident page `i` as `t` shows it, without paging anything in:
    /// its holder, frame and dirtiness.
    fn peek(&self, t: ObjId, i: u64) -> Option<(ObjId, Frame, bool)> {
        let mut o = t;
        loop {
            let obj = self.objects.get(o);
            match obj.pages.get(&i) {
                Some(&PageState::Resident { frame, dirty, .. }) => return Some((o, frame, dirty)),
                Some(PageState::Swapped(_)) => return None,
                None => o = obj.backing?,
            }
        }
    }

    /// Enters the faulting page `vpn` (page `i` of `t`, in an entry ending
    /// at `end`) as frame `f` with `prot`, and, when faults walk forward,
    /// the following pages too where that costs no I/O and no pageout
    /// (map-around): pages already resident in the next frames, with the
    /// same rights. For a write they are made dirty, pushing to a copy
    /// first where one waits, as the fault would; so one pmap call serves
    /// the run.
    fn map_run(
        &mut self,
        sid: usize,
        (vpn, t, i, end): (u64, ObjId, u64, u64),
        f: Frame,
        prot: Prot,
        write: bool,
    ) -> Result<(), ViolationKind> {
        let window = self.space(sid).window.min(end - vpn);
        let mut n = 1;
        // Pushes the run needs, done together before it becomes writable.
        let mut pushes: Vec<(ObjId, u64, Frame, u64)> = Vec::new();
        while n < window {
            let (v, j, g) = (vpn + n, i + n, Frame(f.0 + n as u32));
            match self.space(sid).pmap.extract(v) {
                None => {}
                Some((have, _)) if have == Target::Frame(g) => {}
                Some(_) => break,
            }
            let Some((h, frame, dirty)) = self.peek(t, j) else {
                break;
            };
            if frame != g {
                break;
            }
            let pending = self.push_pending(t, j);
            if write {
                let room = self.phys.available() >= 4 + pushes.len();
                if h != t || (pending.is_some() && !room) {
                    break;
                }
                if let Some(c) = pending {
                    pushes.push((c, j, g, v));
                }
                self.make_dirty(t, j);
            } else {
                let writable = h == t && dirty && pending.is_none();
                if (if writable {
                    prot
                } else {
                    prot.without(Prot::WRITE)
                }) != prot
                {
                    break;
                }
            }
            self.phys.info[g.0 as usize].referenced = true;
            n += 1;
        }
        self.phys.info[f.0 as usize].referenced = true;
        self.push_run(sid, &pushes);
        self.space_mut(sid).next_seq = vpn + n;
        self.space_mut(sid)
            .pmap
            .enter_run(vpn, f, n, prot)
            .map_err(|_| ViolationKind::NoMemory)
    }

    /// Does the pushes `(copy, page, frame, vpn)` of a run of faulting
    /// pages in space `sid`: runs of consecutive pages into one copy object
    /// get consecutive fresh frames filled by one copy (one `pwrite` on the
    /// real MMU) where the pool has them, and one by one otherwise.
    fn push_run(&mut self, sid: usize, pushes: &[(ObjId, u64, Frame, u64)]) {
        let mut rest = pushes;
        while let Some(&(c, j, g, _)) = rest.first() {
            let m = rest
                .iter()
                .enumerate()
                .take_while(|&(k, &(c2, j2, g2, _))| {
                    c2 == c && j2 == j + k as u64 && g2.0 == g.0 + k as u32
                })
                .count();
            let (run, next) = rest.split_at(m);
            rest = next;
            let dst = self.phys.alloc_run(m as u32, |k| (c, j + u64::from(k)));
            let Some(dst) = dst else {
                for &(c, j, g, v) in run {
                    self.push(c, j, g, (sid, v));
                }
                continue;
            };
            let hint = self.seen_at(sid, run[0].3, g, m as u64);
            self.phys.copy_run(g, dst, m as u32, hint);
            for (k, &(c, j, g, v)) in run.iter().enumerate() {
                self.adopt_copy(c, j, Frame(dst.0 + k as u32), g, (sid, v));
                self.n.pushes += 1;
            }
        }
    }

    /// Pushes frame `f` (page `i` of the object `c` copies) into `c`.
    fn push(&mut self, c: ObjId, i: u64, f: Frame, keep: (usize, u64)) {
        self.copy_page(c, i, f, keep);
        self.n.pushes += 1;
    }

    /// Gives object `o` its own dirty copy of frame `f` as page `i`, and
    /// returns the new frame. Mappings that saw `f` through `o` must now see
    /// the copy, so `f`'s translations go, except `keep`'s (the faulting
    /// page, which is entered again at once).
    fn copy_page(&mut self, o: ObjId, i: u64, f: Frame, keep: (usize, u64)) -> Frame {
        let g = self.alloc((o, i));
        let hint = self.seen_at(keep.0, keep.1, f, 1);
        self.phys.copy_run(f, g, 1, hint);
        self.adopt_copy(o, i, g, f, keep);
        g
    }

    /// Where frames `f..f + n` are mapped read-only at pages `vpn..vpn + n`
    /// of space `sid` on the real MMU, for a copy to read them there.
    fn seen_at(&self, sid: usize, vpn: u64, f: Frame, n: u64) -> Option<SourceHint> {
        let pmap = &self.space(sid).pmap;
        let base = pmap.host_base()?;
        let mapped = (0..n).all(|k| {
            matches!(
                pmap.extract(vpn + k),
                Some((Target::Frame(g), p))
                    if g.0 == f.0 + k as u32 && p.contains(Prot::READ) && !p.contains(Prot::WRITE)
            )
        });
        // SAFETY: the pages were just found mapped to these frames,
        // readable; `&self` is the state under the family's lock, which
        // every change of a translation takes, so they stay so for the copy
        // that follows under the same lock. That no thread writes the frames
        // meanwhile is the vm layer's rule for any frame it copies (none has
        // a writable translation anywhere), which the direct map's path
        // relies on as well; this translation is checked read-only too.
        mapped.then(|| unsafe { SourceHint::new((base + vpn as usize * self.page) as *const u8) })
    }

    /// Makes `g`, just filled with a copy of `f`, object `o`'s dirty page
    /// `i`, and removes `f`'s translations except `keep`'s.
    fn adopt_copy(&mut self, o: ObjId, i: u64, g: Frame, f: Frame, keep: (usize, u64)) {
        let page = PageState::Resident {
            frame: g,
            dirty: true,
            slot: None,
        };
        self.objects.get_mut(o).pages.insert(i, page);
        self.unmap_frame(f, Some(keep));
    }

    /// Marks page `i` of `t` (resident) dirty; its swap copy is stale.
    fn make_dirty(&mut self, t: ObjId, i: u64) {
        if let Some(PageState::Resident { dirty, slot, .. }) =
            self.objects.get_mut(t).pages.get_mut(&i)
        {
            *dirty = true;
            if let Some(s) = slot.take() {
                self.swap.as_mut().expect("slot implies swap").free(s);
            }
        }
    }

    /// Called after a reference to `o` went away: frees it when none is
    /// left, and collapses it into the one object shadowing it when that is
    /// its only reference, so chains do not grow with history.
    fn release(&mut self, o: ObjId) {
        let obj = self.objects.get(o);
        if obj.refs() == 0 {
            return self.free_object(o);
        }
        if obj.entry_refs == 0
            && obj.handle_refs == 0
            && obj.shadowed_by.len() == 1
            && obj.pager.is_none()
        {
            let r = obj.shadowed_by[0];
            self.collapse(o, r);
        }
    }

    /// Merges `o` into `r`, its only reference (`r.backing == o`): `r` takes
    /// the pages it lacks, and backs onto what `o` backed onto.
    fn collapse(&mut self, o: ObjId, r: ObjId) {
        let obj = self.objects.remove(o);
        debug_assert_eq!(self.objects.get(r).backing, Some(o));
        for (i, page) in obj.pages {
            if self.objects.get(r).pages.contains_key(&i) {
                self.drop_page(page);
                continue;
            }
            if let PageState::Resident { frame, .. } = page {
                self.phys.info[frame.0 as usize].owner = Some((r, i));
            }
            self.objects.get_mut(r).pages.insert(i, page);
        }
        let ro = self.objects.get_mut(r);
        ro.backing = obj.backing;
        ro.keeps = ro.keeps.start.min(obj.keeps.start)..ro.keeps.end.max(obj.keeps.end);
        if let Some(b) = obj.backing {
            let bo = self.objects.get_mut(b);
            for x in bo.shadowed_by.iter_mut().filter(|x| **x == o) {
                *x = r;
            }
            if bo.copy == Some(o) {
                bo.copy = Some(r);
            }
        }
        self.n.collapses += 1;
    }

    fn drop_page(&mut self, page: PageState) {
        match page {
            PageState::Resident { frame, slot, .. } => {
                self.unmap_frame(frame, None);
                self.phys.free(frame);
                if let Some(s) = slot {
                    self.swap.as_mut().expect("slot implies swap").free(s);
                }
            }
            PageState::Swapped(s) => self.swap.as_mut().expect("slot implies swap").free(s),
        }
    }

    fn free_object(&mut self, o: ObjId) {
        // A file's dirty pages reach the file before the object goes.
        if self.objects.get(o).pager.is_some() {
            let pages: Vec<u64> = self.objects.get(o).pages.keys().copied().collect();
            for i in pages {
                // Best effort: nobody is left to report a failure to.
                let _ = self.clean(o, i);
            }
        }
        let obj = self.objects.remove(o);
        for (_, page) in obj.pages {
            self.drop_page(page);
        }
        if let Some(b) = obj.backing {
            let bo = self.objects.get_mut(b);
            bo.shadowed_by.retain(|&x| x != o);
            if bo.copy == Some(o) {
                bo.copy = None;
            }
            self.release(b);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The machine-independent layer on the software pmap, small enough for
    //! Miri (`cargo +nightly miri test -p vmprim-vm --lib`).

    use super::*;
    use crate::pager::MemPager;

    #[test]
    fn snapshots_private_mappings_pageout_and_collapse_on_the_software_pmap() {
        let p = page_size();
        let space = AddressSpace::simulated(64 * p, Config::default().budget(MIN_BUDGET)).unwrap();
        let store = Arc::new(MemPager::new());
        let obj = space.create_paged(store.clone(), 8 * p).unwrap();
        let shared = space.map(Mapping::object(&obj, 0, 8 * p)).unwrap();
        let anon = space.map(Mapping::anonymous(24 * p)).unwrap();
        for i in 0..24 {
            space.write(anon + i * p + 3, &[i as u8; 2]).unwrap();
        }
        for i in 0..8 {
            space.write(shared + i * p, &[0xA0 + i as u8]).unwrap();
        }
        let private = space
            .map(Mapping::object(&obj, 0, 8 * p).private())
            .unwrap();
        let snap = space.snapshot(anon, 24 * p).unwrap();
        space.write(shared, &[1]).unwrap();
        space.write(anon + 5 * p + 3, &[0xFF]).unwrap();
        let mut b = [0u8; 2];
        space.read(private, &mut b[..1]).unwrap();
        assert_eq!(
            b[0], 0xA0,
            "the private mapping is a copy as of mapping time"
        );
        for i in 0..24 {
            space.read(snap + i * p + 3, &mut b).unwrap();
            assert_eq!(b, [i as u8; 2], "snapshot page {i}");
        }
        space.read(anon + 5 * p + 3, &mut b).unwrap();
        assert_eq!(b, [0xFF, 5]);
        let s = space.stats();
        assert!(
            s.resident_pages <= MIN_BUDGET && s.pageouts > 0 && s.swapped_pages > 0,
            "{s:?}"
        );
        assert!(s.pushes >= 2, "{s:?}");
        space.unmap(snap, 24 * p).unwrap();
        space.unmap(private, 8 * p).unwrap();
        assert_eq!(space.chain(anon).unwrap(), vec![ObjectKind::Anonymous]);
        space.sync(shared, 8 * p).unwrap();
        let mut page = vec![0u8; p];
        store.page_in(3, &mut page).unwrap();
        assert_eq!(page[0], 0xA3, "sync reached the pager");
        drop(obj);
        space.unmap(shared, 8 * p).unwrap();
        assert_eq!(space.stats().objects, 1);
    }
}
