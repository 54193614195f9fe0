//! vmprim-sys: the only code in vmprim that calls the kernel.
//!
//! ```text
//!  apps   gc · checkpoint · store · dsm
//!  vm     AddressSpace ─ MapEntry ─▶ VmObject ─shadow─▶ VmObject ─▶ Pager
//!  pmap   HostPmap · SimPmap
//!  prim   Region · Prot · trap · dirty · map2 · uffd
//!  sys    mmap · mprotect · memfd · userfaultfd · PAGEMAP_SCAN · sigaction   ◀── this crate
//! ```
//!
//! Every function here is a thin wrapper named after the system call it
//! makes. None allocates, none takes a lock, and every one reports failure as
//! an [`Errno`], so every function is async-signal-safe unless its doc says
//! otherwise: fault handlers call them from signal context.
//!
//! Functions that can break Rust's memory model (unmapping, mapping over a
//! fixed address, copying into memory the kernel fills) are `unsafe` and say
//! what the caller must uphold; functions whose worst outcome is a fault
//! (changing a protection) are safe.

#![cfg(target_os = "linux")]

mod errno;
pub mod mem;
pub mod pagemap;
pub mod signal;
pub mod uffd;

pub use errno::{Errno, Result};
