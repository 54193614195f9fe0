//! TRAP through the public API, in this process: registrations and their
//! handlers on threads of their own.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmprim_prim::trap::{self, Outcome};
use vmprim_prim::{page_size, Prot, Region};

/// Handlers entered, for the test below. Statics rather than captures, so a
/// broken unregister that frees the handler under it does not also free
/// what it reads.
static ENTERED: AtomicUsize = AtomicUsize::new(0);
/// Lets the handler below return.
static RELEASE: AtomicBool = AtomicBool::new(false);
/// The page the handler below unprotects.
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// Waits (yielding) until `done`, failing after a generous time instead of
/// hanging.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn dropping_a_registration_waits_for_its_running_handler() {
    let p = page_size();
    let region = Arc::new(Region::new(p, Prot::NONE).unwrap());
    PAGE.store(region.as_ptr() as usize, SeqCst);
    let reg = trap::register(region.as_ptr() as usize, p, |f| {
        ENTERED.fetch_add(1, SeqCst);
        while !RELEASE.load(SeqCst) {
            std::hint::spin_loop();
        }
        let page = PAGE.load(SeqCst);
        if f.page != page {
            return Outcome::NotOurs;
        }
        // SAFETY: the page is the test's region, which outlives the faulting
        // thread; it is accessed through raw pointers only.
        match unsafe {
            vmprim_sys::mem::mprotect(page as *mut u8, page_size(), Prot::READ_WRITE.bits())
        } {
            Ok(()) => Outcome::Resolved,
            Err(_) => Outcome::NotOurs,
        }
    })
    .unwrap();

    let r = region.clone();
    let faulter = std::thread::spawn(move || r.write_u8(5, 7).unwrap());
    wait_until("the handler runs", || ENTERED.load(SeqCst) == 1);

    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let dropper = std::thread::spawn(move || {
        drop(reg);
        d.store(true, SeqCst);
    });
    // The handler is still running: the drop must be waiting for it.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !dropped.load(SeqCst),
        "the registration was dropped under a running handler"
    );

    RELEASE.store(true, SeqCst);
    faulter.join().unwrap();
    dropper.join().unwrap();
    assert!(dropped.load(SeqCst));
    assert_eq!(region.read_u8(5).unwrap(), 7, "the write landed");
    assert_eq!(ENTERED.load(SeqCst), 1, "one fault, one handler run");
}
