//! Shared by the vm layer's integration tests: the kinds of space to run
//! each test on.

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vmprim_vm::{AddressSpace, Config, Forgetful, FrameStore, HostPmap, VmError};

/// The page size.
pub const P: usize = 4096;

/// The pmaps a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The software page table.
    Sim,
    /// The software page table, forgetting at random.
    ForgetfulSim,
    /// The real MMU.
    Host,
    /// The real MMU, forgetting at random.
    ForgetfulHost,
    /// The real MMU with every downgrade an `mprotect` (the fallback on a
    /// kernel without userfaultfd write protection for shared memory).
    HostMprotect,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Sim,
        Kind::ForgetfulSim,
        Kind::Host,
        Kind::ForgetfulHost,
        Kind::HostMprotect,
    ];

    /// Whether plain loads and stores work on the space.
    pub fn is_host(self) -> bool {
        matches!(self, Kind::Host | Kind::ForgetfulHost | Kind::HostMprotect)
    }

    /// A space of `len` bytes of this kind.
    pub fn space(self, len: usize, config: Config, seed: u64) -> Result<AddressSpace, VmError> {
        match self {
            Kind::Sim => AddressSpace::simulated(len, config),
            Kind::Host => AddressSpace::new(len, config),
            Kind::ForgetfulSim => {
                AddressSpace::with_pmap(len, config, FrameStore::Heap, |pages, _| {
                    Ok(Box::new(Forgetful::new(
                        Box::new(vmprim_vm::SimPmap::new()),
                        pages,
                        seed,
                    )))
                })
            }
            Kind::HostMprotect => {
                AddressSpace::with_pmap(len, config, FrameStore::Host, |pages, frames| {
                    let frames: &Arc<_> = frames.ok_or(VmError::Config("no frames"))?;
                    Ok(Box::new(HostPmap::with_mprotect(pages, frames.clone())?))
                })
            }
            Kind::ForgetfulHost => {
                AddressSpace::with_pmap(len, config, FrameStore::Host, |pages, frames| {
                    let frames: &Arc<_> = frames.ok_or(VmError::Config("no frames"))?;
                    let host = HostPmap::new(pages, frames.clone())?;
                    Ok(Box::new(Forgetful::new(Box::new(host), pages, seed)))
                })
            }
        }
    }
}

/// Reads one byte at `offset` with a plain load.
pub fn load(space: &AddressSpace, offset: usize) -> u8 {
    let base = space.host_base().expect("a host space");
    assert!(offset < space.len());
    // SAFETY: the address lies inside the space's reserved range; a fault is
    // resolved by the vm layer or, if unresolvable, is the test's failure.
    unsafe { base.add(offset).read_volatile() }
}

/// Writes one byte at `offset` with a plain store.
pub fn store(space: &AddressSpace, offset: usize, value: u8) {
    let base = space.host_base().expect("a host space");
    assert!(offset < space.len());
    // SAFETY: as in `load`.
    unsafe { base.add(offset).write_volatile(value) }
}

/// An unlinked temporary file of `pages` pages, byte `b` being `fill(b)`.
pub fn temp_file(pages: usize, fill: impl Fn(usize) -> u8) -> std::fs::File {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "vmprim-vm-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let bytes: Vec<u8> = (0..pages * P).map(fill).collect();
    f.write_all(&bytes).unwrap();
    f
}

/// The whole contents of `f`.
pub fn file_bytes(f: &std::fs::File) -> Vec<u8> {
    let mut f = f.try_clone().unwrap();
    f.rewind().unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}
