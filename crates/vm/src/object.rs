//! Memory objects: the pages of one source of data, and how objects stack.
//!
//! An object holds the resident and swapped pages it owns, indexed by page
//! number. Three relations link objects (seed 003, with Mach's asymmetric
//! copy strategy):
//!
//! - `backing`: an object that lacks a page reads it from its backing object.
//!   A private mapping's *shadow* backs onto the mapped object; a *copy*
//!   object backs onto the object it preserves. Every object in a chain has
//!   the same page numbering (backing offsets are always zero).
//! - `copy`: the newest copy object of this object. Before a page of this
//!   object changes, its old contents are *pushed* into the copy (when the
//!   copy covers the page and lacks it), so the copy keeps the contents as of
//!   its creation. A copy object is never written otherwise.
//! - `shadowed_by`: the objects whose backing this is, so a chain can be
//!   collapsed when an object loses its last other reference.

use crate::pager::Pager;
use crate::phys::Frame;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::Arc;

/// An object's slot in the table.
pub(crate) type ObjId = u32;

/// A multiplicative hash for page numbers: the keys are small integers, and
/// SipHash would cost more than the rest of a lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ self.0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// A map keyed by page number (or frame number).
pub(crate) type PageMap<K, V> = HashMap<K, V, BuildHasherDefault<PageHasher>>;

/// Where an object's page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageState {
    /// In a frame. `slot` is a swap slot holding the same contents (clean
    /// anonymous page read back from swap).
    Resident {
        frame: Frame,
        dirty: bool,
        slot: Option<u64>,
    },
    /// Only in the swap file.
    Swapped(u64),
}

/// What an object is, for statistics and for the rules that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// Zero-fill memory; its pages go to the swap file.
    Anonymous,
    /// Pages from a [`Pager`] (a file, or the program's own).
    Paged,
    /// The private layer of a copy-on-write mapping.
    Shadow,
    /// Keeps another object's contents as of a snapshot.
    Copy,
}

#[derive(Debug)]
pub(crate) struct Object {
    pub kind: ObjectKind,
    pub pages: PageMap<u64, PageState>,
    pub backing: Option<ObjId>,
    pub copy: Option<ObjId>,
    /// For a copy object: the page numbers it preserves.
    pub keeps: Range<u64>,
    pub pager: Option<Arc<dyn Pager>>,
    /// Size in pages.
    pub size: u64,
    /// Map entries that map this object.
    pub entry_refs: usize,
    /// [`VmObject`](crate::VmObject) handles.
    pub handle_refs: usize,
    pub shadowed_by: Vec<ObjId>,
}

impl Object {
    pub fn new(kind: ObjectKind, size: u64, pager: Option<Arc<dyn Pager>>) -> Self {
        Self {
            kind,
            pages: PageMap::default(),
            backing: None,
            copy: None,
            keeps: 0..0,
            pager,
            size,
            entry_refs: 0,
            handle_refs: 0,
            shadowed_by: Vec::new(),
        }
    }

    /// References that keep the object alive.
    pub fn refs(&self) -> usize {
        self.entry_refs + self.handle_refs + self.shadowed_by.len()
    }
}

/// The table of live objects.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    slots: Vec<Option<Object>>,
    free: Vec<ObjId>,
    live: usize,
}

impl Objects {
    pub fn insert(&mut self, o: Object) -> ObjId {
        self.live += 1;
        match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(o);
                id
            }
            None => {
                self.slots.push(Some(o));
                (self.slots.len() - 1) as ObjId
            }
        }
    }

    pub fn remove(&mut self, id: ObjId) -> Object {
        let o = self.slots[id as usize].take().expect("object freed twice");
        self.free.push(id);
        self.live -= 1;
        o
    }

    pub fn get(&self, id: ObjId) -> &Object {
        self.slots[id as usize]
            .as_ref()
            .expect("dangling object id")
    }

    pub fn get_mut(&mut self, id: ObjId) -> &mut Object {
        self.slots[id as usize]
            .as_mut()
            .expect("dangling object id")
    }

    pub fn live(&self) -> usize {
        self.live
    }

    /// How many objects a lookup of this object may visit.
    pub fn depth(&self, mut id: ObjId) -> usize {
        let mut d = 1;
        while let Some(b) = self.get(id).backing {
            d += 1;
            id = b;
        }
        d
    }
}
