//! vmprim-prim: the six virtual-memory primitives of Appel & Li (ASPLOS
//! 1991) for Rust programs, with every mechanism today's Linux offers.
//!
//! ```text
//!  apps   gc · checkpoint · store · dsm
//!  vm     AddressSpace ─ MapEntry ─▶ VmObject ─shadow─▶ VmObject ─▶ Pager
//!  pmap   HostPmap · SimPmap
//!  prim   Region · Prot · trap · dirty · map2 · uffd          ◀── this crate
//!  sys    mmap · mprotect · memfd · userfaultfd · PAGEMAP_SCAN · sigaction
//! ```
//!
//! | primitive | here | mechanisms |
//! |---|---|---|
//! | TRAP | [`trap::register`] | `SIGSEGV` on protected pages; userfaultfd `SIGBUS` resolved in the faulting thread; userfaultfd served by a thread ([`uffd::Server`]) |
//! | PROT1 / PROTN / UNPROT | [`Region::prot1`], [`Region::protn`], [`Region::unprot`], [`Region::protect`] | `mprotect`; userfaultfd write-protect ([`uffd::Uffd::write_protect`]) |
//! | DIRTY | [`dirty::track`] | traps; userfaultfd write-protect; `WP_ASYNC` + `PAGEMAP_SCAN`; soft-dirty |
//! | MAP2 | [`map2::SharedMemory`] | memfd views at several addresses |
//!
//! [`mechanisms`] tells which mechanisms this kernel and process allow, and
//! why the others are not available.
//!
//! # Signal context
//! Trap handlers run inside a signal handler on the faulting thread. They
//! may only do async-signal-safe work: no allocation, no locks that the
//! interrupted code could hold, no printing. The methods documented as
//! *async-signal-safe* ([`Region::protect`] and friends, the
//! [`uffd::Uffd`] resolution calls, atomics) are what a handler is for.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use vmprim_prim::{trap, Prot, Region};
//!
//! let region = Arc::new(Region::new(16 * vmprim_prim::page_size(), Prot::READ_WRITE)?);
//! region.protect(0, region.len(), Prot::NONE)?;           // PROTN
//! let faults = Arc::new(AtomicUsize::new(0));
//! let (r, f) = (region.clone(), faults.clone());
//! let _reg = trap::register(region.as_ptr() as usize, region.len(), move |fault| {
//!     f.fetch_add(1, Ordering::Relaxed);
//!     let offset = fault.page - r.as_ptr() as usize;
//!     match r.unprot(offset, vmprim_prim::page_size()) {   // UNPROT
//!         Ok(()) => trap::Outcome::Resolved,
//!         Err(_) => trap::Outcome::NotOurs,
//!     }
//! })?;                                                       // TRAP
//! region.write_u8(5 * vmprim_prim::page_size(), 42)?;
//! assert_eq!(region.read_u8(5 * vmprim_prim::page_size())?, 42);
//! assert_eq!(faults.load(Ordering::Relaxed), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg(target_os = "linux")]

pub mod altstack;
pub mod dirty;
pub mod map2;
mod mechanism;
mod prot;
mod range;
mod region;
pub mod trap;
pub mod uffd;

pub use mechanism::{mechanisms, Availability, Mechanisms};
pub use prot::Prot;
pub use range::{page_size, PageLen, RangeError};
pub use region::{Region, RegionError};
pub use vmprim_sys::Errno;
