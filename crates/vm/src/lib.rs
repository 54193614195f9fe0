//! The Mach-style VM system in user space (seed 003), on vmprim's
//! primitives.
//!
//! An [`AddressSpace`] is a range of virtual memory whose meaning the
//! program controls. Its map ([`AddressSpace::map`], [`unmap`](AddressSpace::unmap),
//! [`protect`](AddressSpace::protect) with a maximum, [`Inheritance`] for
//! [`fork`](AddressSpace::fork)) sends each range to a window of a
//! [`VmObject`]: zero-fill memory, a file, or any [`Pager`](pager::Pager).
//! Copy-on-write uses Mach's objects: a private mapping writes into a
//! *shadow* over the object, and a [`snapshot`](AddressSpace::snapshot)
//! gets a *copy object* into which the original pushes a page's old
//! contents before its first write (the asymmetric strategy). Chains
//! collapse when an object's last other reference goes, so the live mapping
//! keeps a one-object chain however many snapshots were taken.
//!
//! Physical pages are a pool of frames with a budget; a clock pages out
//! (dirty pages to their pager, anonymous ones to a swap file) when a fault
//! needs a frame and none is free. Every part above the [`Pmap`] is
//! machine-independent; the pmap is a lazy cache of translations that may
//! forget any of them: [`HostPmap`] on the real MMU (plain loads and stores,
//! faults through vmprim's TRAP), [`SimPmap`] a software page table for
//! tests, [`Forgetful`] one that forgets at random.
//!
//! Pageout runs on the faulting thread when the pool is full: no fault ever
//! waits for another thread (a wake-up across vCPUs costs more than a
//! fault).
//!
//! Design notes: `docs/decisions/0005-vm-layer.md`.

mod error;
mod host;
mod map;
mod object;
pub mod pager;
mod phys;
mod pmap;
mod runset;
mod space;

pub use error::{Violation, ViolationKind, VmError};
pub use host::HostPmap;
pub use map::Inheritance;
pub use object::ObjectKind;
pub use phys::Frame;
pub use pmap::{DirectSource, Forgetful, Pmap, SimPmap, Target, Translations};
pub use space::{
    AddressSpace, Config, FrameStore, Mapping, Resolution, Share, Stats, VmObject, MIN_BUDGET,
};
pub use vmprim_prim::trap::Access;
pub use vmprim_prim::Prot;
