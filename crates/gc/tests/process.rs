//! Faults that are not the collectors' while their handlers are installed:
//! they must reach the handler the process had before (or kill it, if it
//! had none), even in the middle of a collection, with to-space protected.
//!
//! Each scenario changes process-wide signal state and ends the process, so
//! it runs in a child (this test binary again, see `common`) and the parent
//! checks how the child ended.

mod common;

use common::{describe, run_scenario, spawn_child, stderr};
use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use vmprim_gc::{Collector, Config, GenDirty, Heap, Local, Shape, VmBarrier, VmConcurrent};
use vmprim_prim::dirty::{Backend, Choice};
use vmprim_prim::{page_size, Prot, Region};

/// What the previous handler writes before it exits.
const MARKER: &[u8] = b"previous SIGSEGV handler reached\n";
/// The previous handler's exit code for the expected fault.
const EXPECTED: i32 = 42;
/// Its exit code for a fault at another address.
const WRONG_ADDRESS: i32 = 43;

/// The address the previous handler expects in `si_addr`.
static EXPECTED_ADDR: AtomicUsize = AtomicUsize::new(0);

/// The handler installed before any heap: writes [`MARKER`] and exits.
/// Async-signal-safe: `write` and `_exit` only.
extern "C" fn previous_handler(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let code = if addr == EXPECTED_ADDR.load(SeqCst) {
        EXPECTED
    } else {
        WRONG_ADDRESS
    };
    // SAFETY: MARKER is a valid buffer of its length; write and _exit are
    // async-signal-safe and have no other preconditions.
    unsafe {
        libc::write(2, MARKER.as_ptr().cast(), MARKER.len());
        libc::_exit(code);
    }
}

/// Installs [`previous_handler`] for `SIGSEGV` with a plain `sigaction`.
fn install_previous_handler() {
    // SAFETY: an all-zero sigaction is valid (SIG_DFL, empty mask); we fill
    // in a three-argument handler with SA_SIGINFO, as its signature needs.
    let r = unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = previous_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSEGV, &sa, core::ptr::null_mut())
    };
    assert_eq!(r, 0, "sigaction(SIGSEGV)");
}

/// Makes `SIGSEGV`'s action the default (no handler: not even Rust's).
fn default_action() {
    // SAFETY: restoring the default action has no preconditions.
    let old = unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    assert_ne!(old, libc::SIG_ERR);
}

const CELL: Shape = Shape::new(2, 2);

/// A heap with a table of `cells` live cells, and the table's local.
fn heap_with_table<C: Collector>(cfg: &Config, cells: u32) -> (Heap<C>, Local) {
    let mut h = Heap::<C>::new(cfg).expect("heap");
    let table = h.alloc(Shape::new(cells, 0));
    let c = h.null();
    for k in 0..cells {
        h.alloc_to(CELL, c);
        h.set_scalar(c, 0, u64::from(k));
        h.set(table, k, c);
    }
    h.pop();
    (h, table)
}

/// Whether touching the table right after a flip must trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// It must: nothing scans to-space until the mutator's next refill.
    MustTrap,
    /// It may not: a collector thread may have scanned the table's pages
    /// first.
    MayTrap,
}

/// Allocates garbage until a collection begins and is still in progress
/// when this returns (it has not yet counted its to-space pages). With
/// `MustTrap`, the mutator's touch of the table must also have trapped:
/// the barrier is armed.
fn mid_collection<C: Collector>(h: &mut Heap<C>, table: Local, probe: Probe) {
    for _ in 0..100 {
        let s = h.stats();
        while h.stats().collections == s.collections {
            h.alloc(Shape::new(0, 14));
            h.pop();
        }
        h.get(table, 1); // the table was copied at the flip: a trap
        h.pop();
        let now = h.stats();
        let trapped = now.traps > s.traps || probe == Probe::MayTrap;
        if now.to_space_pages == s.to_space_pages && trapped {
            return;
        }
    }
    panic!("{}: never caught a collection in progress", C::NAME);
}

/// The heaps the scenarios hold while the foreign fault happens: both VM
/// collectors in the middle of a collection, and a DIRTY tracker on its
/// SIGSEGV backend.
struct Heaps {
    vm: (Heap<VmBarrier>, Local),
    vmc: (Heap<VmConcurrent>, Local),
    gen: Heap<GenDirty>,
}

fn heaps_mid_collection() -> Heaps {
    let cfg = Config {
        heap_bytes: 4 << 20,
        ..Config::small()
    };
    let mut vm = heap_with_table::<VmBarrier>(&cfg, 20_000);
    let mut vmc = heap_with_table::<VmConcurrent>(&cfg, 40_000);
    let gen_cfg = Config {
        dirty: Choice::Force(Backend::Trap),
        ..Config::small()
    };
    let (mut gen, _) = heap_with_table::<GenDirty>(&gen_cfg, 1000);
    gen.collect(); // the table is old: its pages are write-protected
    mid_collection(&mut vm.0, vm.1, Probe::MustTrap);
    mid_collection(&mut vmc.0, vmc.1, Probe::MayTrap);
    Heaps { vm, vmc, gen }
}

/// Touches a `PROT_NONE` page no heap knows (the previous handler expects
/// its address), and says so if the touch returns.
fn touch_a_foreign_page() {
    let target = Region::new(page_size(), Prot::NONE).expect("a PROT_NONE page");
    EXPECTED_ADDR.store(target.as_ptr() as usize + 8, SeqCst);
    let _ = target.read_u8(8);
    eprintln!("survived a read of a PROT_NONE page");
}

fn assert_exit_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit code {code}, got {}\n{}",
        describe(out.status),
        stderr(out)
    );
}

fn assert_killed_by(out: &Output, sig: i32) {
    assert_eq!(
        out.status.signal(),
        Some(sig),
        "expected death by signal {sig}, got {}\n{}",
        describe(out.status),
        stderr(out)
    );
}

#[test]
fn a_foreign_fault_mid_collection_reaches_the_previous_handler() {
    const TEST: &str = "a_foreign_fault_mid_collection_reaches_the_previous_handler";
    if run_scenario(TEST, || {
        install_previous_handler();
        let heaps = heaps_mid_collection();
        touch_a_foreign_page();
        drop(heaps);
    }) {
        return;
    }
    let out = spawn_child(TEST, TEST);
    assert_exit_code(&out, EXPECTED);
    assert!(stderr(&out).contains(std::str::from_utf8(MARKER).unwrap()));
}

#[test]
fn a_foreign_fault_after_the_heaps_are_gone_reaches_the_previous_handler() {
    const TEST: &str = "a_foreign_fault_after_the_heaps_are_gone_reaches_the_previous_handler";
    if run_scenario(TEST, || {
        install_previous_handler();
        drop(heaps_mid_collection());
        touch_a_foreign_page();
    }) {
        return;
    }
    let out = spawn_child(TEST, TEST);
    assert_exit_code(&out, EXPECTED);
}

#[test]
fn a_foreign_fault_mid_collection_without_a_previous_handler_kills_by_sigsegv() {
    const TEST: &str = "a_foreign_fault_mid_collection_without_a_previous_handler_kills_by_sigsegv";
    if run_scenario(TEST, || {
        default_action();
        let heaps = heaps_mid_collection();
        touch_a_foreign_page();
        drop(heaps);
    }) {
        return;
    }
    let out = spawn_child(TEST, TEST);
    assert_killed_by(&out, libc::SIGSEGV);
    assert!(!stderr(&out).contains("survived"), "{}", stderr(&out));
}

#[test]
fn the_heaps_still_work_in_the_control_scenario() {
    // The scenarios above end at the foreign touch; this one does not touch
    // and checks the heaps it set up were sound (so the exits above are the
    // touch's doing, not a broken heap's).
    const TEST: &str = "the_heaps_still_work_in_the_control_scenario";
    if run_scenario(TEST, || {
        install_previous_handler();
        let mut heaps = heaps_mid_collection();
        check_table(&mut heaps.vm.0, heaps.vm.1, 20_000);
        check_table(&mut heaps.vmc.0, heaps.vmc.1, 40_000);
        heaps.gen.verify().expect("gen verify");
    }) {
        return;
    }
    let out = spawn_child(TEST, TEST);
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(out.status),
        stderr(&out)
    );
}

fn check_table<C: Collector>(h: &mut Heap<C>, table: Local, cells: u32) {
    let c = h.null();
    for k in 0..cells {
        h.get_to(table, k, c);
        assert_eq!(h.scalar(c, 0), u64::from(k), "{}", C::NAME);
    }
    h.pop();
    assert_eq!(
        h.verify().expect("verify").objects,
        1 + cells as usize,
        "{}",
        C::NAME
    );
}
