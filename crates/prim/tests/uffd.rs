//! userfaultfd through the public API: in-thread faults (`SIGBUS`, dispatched
//! by [`trap`]), faults served by a [`Server`] thread, the resolution ioctls,
//! and the typed errors.
//!
//! Where userfaultfd (or a feature a test needs) is unavailable, a test
//! prints a note and returns, except on CI (`CI=true`), where it fails.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use vmprim_prim::trap::{self, Cause, Outcome, Signal};
use vmprim_prim::uffd::{Delivery, Features, Mode, Server, Uffd, UffdError, Wake};
use vmprim_prim::{page_size, Errno, Prot, RangeError, Region};

fn on_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether this process may use userfaultfd with `needed`: fails on CI if
/// not, prints a note elsewhere.
fn have(test: &str, needed: Features) -> bool {
    let why = match Uffd::available() {
        Ok(features) => match features.first_missing(needed) {
            None => return true,
            Some((feature, since)) => {
                format!("the kernel lacks userfaultfd feature {feature} (Linux {since})")
            }
        },
        Err(e) => format!("userfaultfd is unavailable: {e}"),
    };
    assert!(!on_ci(), "{test}: on CI userfaultfd must work: {why}");
    eprintln!("note: {test} skipped: {why}");
    false
}

/// Gives up on a fault that keeps coming back (a resolution that did not
/// resolve): declining it crashes the test binary instead of looping.
const MAX_FAULTS: usize = 1000;

/// A byte of the pattern for `page`: never zero, different per page.
fn pattern(page: usize, byte: usize) -> u8 {
    (1 + (page * 7 + byte) % 250) as u8
}

/// Runs `f` on another thread and waits for it, failing (rather than
/// hanging) if it does not finish: a lost userfaultfd fault sleeps forever.
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what} failed or did not finish: {e}"))
}

/// A fresh region of `pages` read-write pages, registered on a new
/// userfaultfd for `mode`.
fn registered(
    pages: usize,
    delivery: Delivery,
    features: Features,
    mode: Mode,
) -> (Region, Arc<Uffd>) {
    let region = Region::new(pages * page_size(), Prot::READ_WRITE).unwrap();
    let uffd = Arc::new(Uffd::new(delivery, features).unwrap());
    uffd.register(region.as_ptr() as usize, region.len(), mode)
        .unwrap();
    (region, uffd)
}

// ---------------------------------------------------------------------------
// Features

/// A trap handler for `region` that resolves missing faults in-thread with
/// zero pages and counts them (declining after `MAX_FAULTS`, so a runaway
/// fails instead of looping).
fn zero_fill_counting(region: &Region, uffd: &Arc<Uffd>) -> (trap::Registration, Arc<AtomicUsize>) {
    let faults = Arc::new(AtomicUsize::new(0));
    let (u, n) = (uffd.clone(), faults.clone());
    let reg = trap::register(region.as_ptr() as usize, region.len(), move |fault| {
        if fault.cause != Cause::BusAddress || n.fetch_add(1, SeqCst) >= MAX_FAULTS {
            return Outcome::NotOurs;
        }
        match u.zeropage(fault.page, page_size(), Wake::No) {
            Ok(_) => Outcome::Resolved,
            Err(_) => Outcome::NotOurs,
        }
    })
    .unwrap();
    (reg, faults)
}

#[test]
fn this_kernel_offers_the_features_vmprim_uses() {
    if !have(
        "this_kernel_offers_the_features_vmprim_uses",
        Features::NONE,
    ) {
        return;
    }
    let features = Uffd::available().unwrap();
    for (f, name) in [
        (Features::SIGBUS, "SIGBUS"),
        (Features::WP, "WP"),
        (Features::WP_ASYNC, "WP_ASYNC"),
        (Features::WP_UNPOPULATED, "WP_UNPOPULATED"),
        (Features::MOVE, "MOVE"),
        (Features::POISON, "POISON"),
    ] {
        let required = on_ci() || kernel_at_least(6, 8);
        if !features.contains(f) {
            assert!(
                !required,
                "Uffd::available() lacks {name} on Linux 6.8+: {features:?}"
            );
            eprintln!("note: this kernel lacks {name}");
        }
    }
}

/// Whether the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

#[test]
fn a_uffd_reports_the_features_it_was_opened_with() {
    if !have(
        "a_uffd_reports_the_features_it_was_opened_with",
        Features::SIGBUS | Features::WP,
    ) {
        return;
    }
    let messages = Uffd::new(Delivery::Messages, Features::WP).unwrap();
    assert!(
        messages.features().contains(Features::WP),
        "{:?}",
        messages.features()
    );
    assert!(
        !messages.features().contains(Features::SIGBUS),
        "{:?}",
        messages.features()
    );
    assert_eq!(messages.delivery(), Delivery::Messages);
    let sigbus = Uffd::new(Delivery::Sigbus, Features::NONE).unwrap();
    assert!(
        sigbus.features().contains(Features::SIGBUS),
        "{:?}",
        sigbus.features()
    );
    assert!(
        !sigbus.features().contains(Features::WP),
        "{:?}",
        sigbus.features()
    );
    assert_eq!(sigbus.delivery(), Delivery::Sigbus);
}

#[test]
fn features_name_themselves_and_their_first_kernel() {
    let have = Features::WP | Features::SIGBUS;
    assert_eq!(
        have.names().collect::<Vec<_>>(),
        ["WP (write-protect)", "SIGBUS"]
    );
    assert_eq!(format!("{have:?}"), r#"{"WP (write-protect)", "SIGBUS"}"#);
    assert_eq!(format!("{:?}", Features::NONE), "{}");
    assert!(have.contains(Features::WP) && have.contains(Features::NONE));
    assert!(!have.contains(Features::WP | Features::MOVE));
    assert_eq!(have.first_missing(Features::WP), None);
    assert_eq!(have.first_missing(Features::NONE), None);
    assert_eq!(
        have.first_missing(Features::MOVE | Features::SIGBUS),
        Some(("MOVE", "6.8"))
    );
    // The first missing in table order, not in the order asked.
    assert_eq!(
        have.first_missing(Features::MOVE | Features::POISON),
        Some(("POISON", "6.6"))
    );
    assert_eq!(
        Features::NONE.first_missing(Features::WP_ASYNC),
        Some(("WP_ASYNC", "6.7"))
    );
    assert_eq!(have.bits(), Features::WP.bits() | Features::SIGBUS.bits());
    assert_eq!(have, Features::WP.union(Features::SIGBUS));
}

// ---------------------------------------------------------------------------
// Errors

#[test]
fn error_messages_say_what_to_do() {
    let refused = UffdError::Refused {
        source: Errno::EPERM,
    };
    assert!(
        refused.to_string().contains("vm.unprivileged_userfaultfd"),
        "{refused}"
    );
    let (feature, needs) = Features::SIGBUS
        .first_missing(Features::WP_UNPOPULATED)
        .unwrap();
    let lacks = UffdError::KernelLacks { feature, needs };
    assert_eq!(
        lacks.to_string(),
        "this kernel lacks userfaultfd feature WP_UNPOPULATED (needs Linux 6.4)"
    );
}

#[test]
fn register_and_unregister_refuse_bad_ranges() {
    if !have("register_and_unregister_refuse_bad_ranges", Features::NONE) {
        return;
    }
    let p = page_size();
    let region = Region::new(4 * p, Prot::READ_WRITE).unwrap();
    let a = region.as_ptr() as usize;
    let uffd = Uffd::new(Delivery::Messages, Features::NONE).unwrap();
    uffd.register(a, 2 * p, Mode::MISSING).unwrap();

    let overlap = uffd.register(a + p, 2 * p, Mode::MISSING).unwrap_err();
    assert_eq!(
        overlap,
        UffdError::Overlap {
            start: a + p,
            end: a + 3 * p
        }
    );
    assert!(matches!(
        uffd.register(a + 1, p, Mode::MISSING),
        Err(UffdError::Range(RangeError::NotPageAligned {
            what: "address",
            ..
        }))
    ));
    assert!(matches!(
        uffd.register(a + 2 * p, p + 1, Mode::MISSING),
        Err(UffdError::Range(RangeError::NotPageAligned {
            what: "length",
            ..
        }))
    ));
    assert_eq!(
        uffd.register(a + 2 * p, 0, Mode::MISSING),
        Err(UffdError::Range(RangeError::ZeroLength))
    );
    assert_eq!(
        uffd.zeropage(a, 0, Wake::Yes),
        Err(UffdError::Range(RangeError::ZeroLength))
    );
    assert!(matches!(
        uffd.copy(a, &[0; 100], Wake::Yes),
        Err(UffdError::Range(RangeError::NotPageAligned { .. }))
    ));

    // Unregister takes exactly a registered range.
    let never = uffd.unregister(a + 2 * p, p).unwrap_err();
    assert_eq!(
        never,
        UffdError::NotRegistered {
            start: a + 2 * p,
            end: a + 3 * p
        }
    );
    assert_eq!(
        uffd.unregister(a, p),
        Err(UffdError::NotRegistered {
            start: a,
            end: a + p
        })
    );
    assert!(never.to_string().contains("not registered"), "{never}");
    uffd.unregister(a, 2 * p).unwrap();
    assert_eq!(
        uffd.unregister(a, 2 * p),
        Err(UffdError::NotRegistered {
            start: a,
            end: a + 2 * p
        })
    );
    // ... and frees the range for a new registration.
    uffd.register(a + p, 2 * p, Mode::MISSING).unwrap();
    // Unregistered pages are ordinary memory again.
    region.write_u8(0, 1).unwrap();
    assert_eq!(region.read_u8(0).unwrap(), 1);
}

// ---------------------------------------------------------------------------
// Faults resolved in the faulting thread (Delivery::Sigbus)

#[test]
fn missing_pages_are_filled_by_copy_in_the_faulting_thread() {
    if !have(
        "missing_pages_are_filled_by_copy_in_the_faulting_thread",
        Features::SIGBUS,
    ) {
        return;
    }
    let (p, pages) = (page_size(), 8);
    let (region, uffd) = registered(pages, Delivery::Sigbus, Features::NONE, Mode::MISSING);
    let base = region.as_ptr() as usize;
    // Prepared here: the handler must not allocate.
    let fill: Arc<[u8]> = (0..pages * p).map(|i| pattern(i / p, i % p)).collect();
    let faults = Arc::new(AtomicUsize::new(0));
    let (u, f, n) = (uffd.clone(), fill.clone(), faults.clone());
    let _reg = trap::register(base, region.len(), move |fault| {
        if fault.signal != Signal::Bus
            || fault.cause != Cause::BusAddress
            || n.fetch_add(1, SeqCst) >= MAX_FAULTS
        {
            return Outcome::NotOurs;
        }
        let i = (fault.page - base) / page_size();
        match u.copy(
            fault.page,
            &f[i * page_size()..(i + 1) * page_size()],
            Wake::No,
        ) {
            Ok(_) => Outcome::Resolved,
            Err(_) => Outcome::NotOurs,
        }
    })
    .unwrap();

    for (page, byte) in [(1, 0), (3, 100), (6, p - 1), (3, 7)] {
        assert_eq!(
            region.read_u8(page * p + byte).unwrap(),
            pattern(page, byte),
            "page {page} byte {byte}"
        );
    }
    assert_eq!(faults.load(SeqCst), 3, "one fault per page touched");
    region.write_u8(6 * p, 0xee).unwrap();
    assert_eq!(region.read_u8(6 * p).unwrap(), 0xee);
    assert_eq!(faults.load(SeqCst), 3, "filled pages are ordinary memory");
}

#[test]
fn missing_pages_are_filled_by_zeropage_in_the_faulting_thread() {
    if !have(
        "missing_pages_are_filled_by_zeropage_in_the_faulting_thread",
        Features::SIGBUS,
    ) {
        return;
    }
    let (p, pages) = (page_size(), 4);
    let (region, uffd) = registered(pages, Delivery::Sigbus, Features::NONE, Mode::MISSING);
    let (_reg, faults) = zero_fill_counting(&region, &uffd);

    assert_eq!(region.read_u64(2 * p + 64).unwrap(), 0);
    assert_eq!(faults.load(SeqCst), 1);
    // A write to a zero page copies it on write: no userfault.
    region.write_u64(2 * p + 64, 0x1234).unwrap();
    assert_eq!(region.read_u64(2 * p + 64).unwrap(), 0x1234);
    region.write_u64(3 * p, 5).unwrap();
    assert_eq!(region.read_u64(3 * p).unwrap(), 5);
    assert_eq!(faults.load(SeqCst), 2, "one fault per page touched");
}

#[test]
fn write_protect_faults_are_resolved_in_the_faulting_thread() {
    if !have(
        "write_protect_faults_are_resolved_in_the_faulting_thread",
        Features::SIGBUS | Features::WP,
    ) {
        return;
    }
    let (p, pages) = (page_size(), 4);
    let region = Region::new(pages * p, Prot::READ_WRITE).unwrap();
    let base = region.as_ptr() as usize;
    for i in 0..pages {
        region.write_u64(i * p, 0x11).unwrap(); // present pages
    }
    let uffd = Arc::new(Uffd::new(Delivery::Sigbus, Features::WP).unwrap());
    uffd.register(base, region.len(), Mode::WP).unwrap();
    uffd.write_protect(base, region.len()).unwrap();
    let faults = Arc::new(AtomicUsize::new(0));
    let (u, n) = (uffd.clone(), faults.clone());
    let _reg = trap::register(base, region.len(), move |fault| {
        if fault.cause != Cause::BusAddress || n.fetch_add(1, SeqCst) >= MAX_FAULTS {
            return Outcome::NotOurs;
        }
        match u.write_unprotect(fault.page, page_size(), Wake::No) {
            Ok(()) => Outcome::Resolved,
            Err(_) => Outcome::NotOurs,
        }
    })
    .unwrap();

    for i in 0..pages {
        assert_eq!(region.read_u64(i * p).unwrap(), 0x11);
    }
    assert_eq!(
        faults.load(SeqCst),
        0,
        "reads of write-protected pages do not fault"
    );
    region.write_u64(p, 0x22).unwrap();
    region.write_u64(p + 8, 0x33).unwrap();
    region.write_u64(3 * p, 0x44).unwrap();
    assert_eq!(faults.load(SeqCst), 2, "one fault per page written");
    assert_eq!(
        [0, p, p + 8, 3 * p].map(|o| region.read_u64(o).unwrap()),
        [0x11, 0x22, 0x33, 0x44],
        "the writes landed"
    );
    // Protecting again makes writes fault again.
    uffd.write_protect(base + p, p).unwrap();
    region.write_u64(p, 0x55).unwrap();
    assert_eq!(faults.load(SeqCst), 3);
    assert_eq!(region.read_u64(p).unwrap(), 0x55);
}

/// The cause a poisoned page reports. The kernel reports `BUS_MCEERR_AR`
/// only when built with `CONFIG_MEMORY_FAILURE` (which registers the
/// `vm.memory_failure_recovery` sysctl); without it, a poisoned page raises
/// a plain `BUS_ADRERR`.
fn poison_cause() -> Cause {
    if std::path::Path::new("/proc/sys/vm/memory_failure_recovery").exists() {
        Cause::Poisoned
    } else {
        Cause::BusAddress
    }
}

/// Records the cause of a trap as a number (0 for none yet).
fn cause_code(c: Cause) -> usize {
    match c {
        Cause::Protection => 1,
        Cause::Unmapped => 2,
        Cause::BusAddress => 3,
        Cause::Poisoned => 4,
        Cause::Other(_) => 5,
    }
}

#[test]
fn a_poisoned_page_raises_sigbus_in_the_touching_thread() {
    if !have(
        "a_poisoned_page_raises_sigbus_in_the_touching_thread",
        Features::POISON,
    ) {
        return;
    }
    let p = page_size();
    // Message delivery: a page that is merely missing goes to the server (a
    // message, no signal); only a poisoned page raises SIGBUS.
    let (region, uffd) = registered(2, Delivery::Messages, Features::POISON, Mode::MISSING);
    let region = Arc::new(region);
    let base = region.as_ptr() as usize;
    let server = Server::spawn(uffd.clone(), |fault, uffd| {
        uffd.zeropage(fault.page, page_size(), Wake::Yes)
            .map(|_| ())
    })
    .unwrap();
    assert_eq!(uffd.poison(base + p, p, Wake::No).unwrap(), p);
    let traps = Arc::new(AtomicUsize::new(0));
    let cause = Arc::new(AtomicUsize::new(0));
    let (t, c) = (traps.clone(), cause.clone());
    let _reg = trap::register(base, region.len(), move |fault| {
        if fault.signal != Signal::Bus
            || fault.page != base + page_size()
            || t.fetch_add(1, SeqCst) >= MAX_FAULTS
        {
            return Outcome::NotOurs;
        }
        c.store(cause_code(fault.cause), SeqCst);
        // A poisoned page cannot be filled: replace it with fresh anonymous
        // memory, which no userfaultfd watches.
        // SAFETY: the page belongs to the test's region, which hands out no
        // references into its memory.
        let r = unsafe {
            vmprim_sys::mem::mmap_anonymous_fixed(
                fault.page as *mut u8,
                page_size(),
                Prot::READ_WRITE.bits(),
            )
        };
        if r.is_ok() {
            Outcome::Resolved
        } else {
            Outcome::NotOurs
        }
    })
    .unwrap();

    let r = region.clone();
    assert_eq!(
        finishes("the read of the poisoned page", move || r
            .read_u8(p + 3)
            .unwrap()),
        0
    );
    assert_eq!(
        traps.load(SeqCst),
        1,
        "the poisoned page raised SIGBUS once"
    );
    assert_eq!(
        cause.load(SeqCst),
        cause_code(poison_cause()),
        "expected {:?}",
        poison_cause()
    );
    assert_eq!(server.faults(), 0, "a poisoned page is not a missing page");
    let r = region.clone();
    assert_eq!(
        finishes("the read of the missing page", move || r
            .read_u8(3)
            .unwrap()),
        0
    );
    assert_eq!(
        (traps.load(SeqCst), server.faults()),
        (1, 1),
        "its neighbour is merely missing"
    );
}

#[test]
fn move_takes_pages_from_the_source_into_missing_pages() {
    if !have(
        "move_takes_pages_from_the_source_into_missing_pages",
        Features::SIGBUS | Features::MOVE,
    ) {
        return;
    }
    let (p, pages) = (page_size(), 4);
    let source = Region::new(pages * p, Prot::READ_WRITE).unwrap();
    for i in 0..pages {
        for byte in [0, 1, p / 2, p - 1] {
            source.write_u8(i * p + byte, pattern(i, byte)).unwrap();
        }
    }
    let (dest, uffd) = registered(pages, Delivery::Sigbus, Features::MOVE, Mode::MISSING);
    let base = dest.as_ptr() as usize;
    // Faults on the destination would mean the move did not happen: count
    // them, and resolve with zeros so the test fails by assertion.
    let (_reg, faults) = zero_fill_counting(&dest, &uffd);

    // Pages 1 and 2 move; 0 and 3 stay missing.
    // SAFETY: `source` is private anonymous memory this test owns, reached
    // only through raw pointers.
    let moved =
        unsafe { uffd.move_(base + p, source.as_ptr() as usize + p, 2 * p, Wake::No) }.unwrap();
    assert_eq!(moved, 2 * p);
    for i in 1..3 {
        for byte in [0, 1, p / 2, p - 1] {
            assert_eq!(
                dest.read_u8(i * p + byte).unwrap(),
                pattern(i, byte),
                "page {i} byte {byte}"
            );
        }
    }
    assert_eq!(faults.load(SeqCst), 0, "moved pages are present");
    for i in 1..3 {
        assert_eq!(
            source.read_u8(i * p).unwrap(),
            0,
            "the source page {i} is gone"
        );
    }
    assert_eq!(
        source.read_u8(0).unwrap(),
        pattern(0, 0),
        "pages not moved stay"
    );
    assert_eq!(dest.read_u8(0).unwrap(), 0);
    assert_eq!(faults.load(SeqCst), 1, "pages not moved into stay missing");
}

// ---------------------------------------------------------------------------
// Faults served by a thread (Delivery::Messages, Server)

#[test]
fn a_server_resolves_write_protect_faults_and_stops_when_dropped() {
    if !have(
        "a_server_resolves_write_protect_faults_and_stops_when_dropped",
        Features::WP,
    ) {
        return;
    }
    let (p, pages) = (page_size(), 6);
    let region = Arc::new(Region::new(pages * p, Prot::READ_WRITE).unwrap());
    let base = region.as_ptr() as usize;
    for i in 0..pages {
        region.write_u64(i * p, 1).unwrap(); // present pages
    }
    let uffd = Arc::new(Uffd::new(Delivery::Messages, Features::WP).unwrap());
    uffd.register(base, region.len(), Mode::WP).unwrap();
    uffd.write_protect(base, region.len()).unwrap();
    let flags_seen = Arc::new(AtomicBool::new(true));
    let seen = flags_seen.clone();
    let server = Server::spawn(uffd.clone(), move |fault, uffd| {
        if !(fault.wp && fault.write && fault.page == fault.addr & !(page_size() - 1)) {
            seen.store(false, SeqCst);
        }
        uffd.write_unprotect(fault.page, page_size(), Wake::Yes)
    })
    .unwrap();

    let r = region.clone();
    finishes("the writes", move || {
        for i in [0, 2, 5] {
            r.write_u64(i * p + 8, 10 + i as u64).unwrap();
        }
    });
    assert_eq!(server.faults(), 3, "one fault per page written");
    assert_eq!(server.errors(), 0);
    assert!(
        flags_seen.load(SeqCst),
        "faults were reported as write-protect writes"
    );
    for i in [0, 2, 5] {
        assert_eq!(region.read_u64(i * p + 8).unwrap(), 10 + i as u64);
    }

    assert_eq!(
        Arc::strong_count(&uffd),
        2,
        "the server thread holds the other reference"
    );
    finishes("dropping the server", move || drop(server));
    assert_eq!(
        Arc::strong_count(&uffd),
        1,
        "the server thread is gone, and its handler with it"
    );
}

#[test]
fn a_server_fills_missing_pages_by_copy() {
    if !have("a_server_fills_missing_pages_by_copy", Features::NONE) {
        return;
    }
    let (p, pages) = (page_size(), 8);
    let (region, uffd) = registered(pages, Delivery::Messages, Features::NONE, Mode::MISSING);
    let region = Arc::new(region);
    let base = region.as_ptr() as usize;
    let server = Server::spawn(uffd.clone(), move |fault, uffd| {
        let i = (fault.page - base) / page_size();
        let page: Vec<u8> = (0..page_size()).map(|b| pattern(i, b)).collect(); // may allocate
        uffd.copy(fault.page, &page, Wake::Yes).map(|_| ())
    })
    .unwrap();

    let r = region.clone();
    let read = finishes("the reads", move || {
        [(0, 0), (4, 1), (7, p - 1), (4, 2)]
            .map(|(i, b)| (r.read_u8(i * p + b).unwrap(), pattern(i, b)))
    });
    for (got, want) in read {
        assert_eq!(got, want);
    }
    assert_eq!(server.faults(), 3, "one fault per page touched");
    assert_eq!(server.errors(), 0);
}

#[test]
fn a_server_loses_no_fault_when_threads_fault_together() {
    if !have(
        "a_server_loses_no_fault_when_threads_fault_together",
        Features::NONE,
    ) {
        return;
    }
    let (p, pages, threads) = (page_size(), 32, 4);
    let (region, uffd) = registered(pages, Delivery::Messages, Features::NONE, Mode::MISSING);
    let region = Arc::new(region);
    let fill: Vec<u8> = (0..p).map(|b| if b < 64 { 0 } else { 0xab }).collect();
    let server = Server::spawn(uffd.clone(), move |fault, uffd| {
        uffd.copy(fault.page, &fill, Wake::Yes).map(|_| ())
    })
    .unwrap();

    let start = Arc::new(Barrier::new(threads));
    let r = region.clone();
    finishes("the faulting threads", move || {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (r, start) = (r.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..pages {
                        // Threads 0 and 1 fault on the same pages at once; 2
                        // and 3 go backwards, meeting them half-way.
                        let page = if t < 2 { i } else { pages - 1 - i };
                        r.write_u64(page * p + t * 8, (t * 1000 + page) as u64)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    for page in 0..pages {
        for t in 0..threads {
            assert_eq!(
                region.read_u64(page * p + t * 8).unwrap(),
                (t * 1000 + page) as u64,
                "page {page} thread {t}"
            );
        }
        assert_eq!(
            region.read_u8(page * p + 64).unwrap(),
            0xab,
            "page {page} was filled once"
        );
    }
    let faults = server.faults() as usize;
    assert!(
        (pages..=threads * pages).contains(&faults),
        "every page faults, at most once per thread: {faults}"
    );
    assert_eq!(server.errors(), 0);
}

#[test]
fn a_server_retries_a_fault_its_handler_failed() {
    if !have(
        "a_server_retries_a_fault_its_handler_failed",
        Features::NONE,
    ) {
        return;
    }
    let p = page_size();
    let (region, uffd) = registered(2, Delivery::Messages, Features::NONE, Mode::MISSING);
    let region = Arc::new(region);
    let mut failed = HashSet::new();
    let server = Server::spawn(uffd.clone(), move |fault, uffd| {
        if failed.insert(fault.page) {
            return Err(UffdError::Os {
                op: "a transient failure",
                source: Errno::EAGAIN,
            });
        }
        uffd.zeropage(fault.page, page_size(), Wake::Yes)
            .map(|_| ())
    })
    .unwrap();

    let r = region.clone();
    finishes("the faulting write", move || {
        r.write_u64(p + 16, 99).unwrap()
    });
    assert_eq!(region.read_u64(p + 16).unwrap(), 99);
    assert_eq!(server.errors(), 1);
    assert_eq!(server.faults(), 2, "the failed fault came back once");
}
