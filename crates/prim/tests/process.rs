//! Tests that change process-wide state (signal dispositions, the whole trap
//! registry, alternate stacks) or end the process: each runs in a child
//! process, and the parent checks how the child ended.
//!
//! The child is this test binary again, started with
//! `--exact <test> --nocapture --test-threads=1` and
//! `VMPRIM_CHILD=<scenario>` (usually the test's name); [`run_scenario`] runs
//! the scenario there and reports its start on stderr, so the parent can
//! tell "the scenario ended this way" from "the scenario never ran".

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use vmprim_prim::altstack::AltStack;
use vmprim_prim::trap::{self, Outcome, TrapError, CAPACITY};
use vmprim_prim::{page_size, Prot, Region};
use vmprim_sys::{mem, signal};

const CHILD_ENV: &str = "VMPRIM_CHILD";
const STARTED: &str = "vmprim-child started: ";
/// How long a child may run before it counts as hung.
const HANG: Duration = Duration::from_secs(30);

/// Runs `body` if this process is the child started for `scenario`, and
/// says whether it did. A body that returns lets the child's test pass
/// (exit code 0).
fn run_scenario(scenario: &str, body: impl FnOnce()) -> bool {
    if std::env::var(CHILD_ENV).as_deref() != Ok(scenario) {
        return false;
    }
    no_core_dumps();
    eprintln!("{STARTED}{scenario}");
    body();
    true
}

/// Runs test `test` of this binary in a child process, as `scenario`, and
/// returns its output, after checking that the scenario started.
fn spawn_child(test: &str, scenario: &str) -> Output {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr_ = drain(Box::new(child.stderr.take().unwrap()));
    // Not a speed limit: a broken dispatcher can make a fault recur forever,
    // and a hung child must fail the test rather than hang it.
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().expect("kill the hung child");
            child.wait().expect("reap the hung child");
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = Output {
        status: status.unwrap_or_else(|| ExitStatusExt::from_raw(0)),
        stdout: stdout.join().unwrap(),
        stderr: stderr_.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "scenario {scenario} hung for {HANG:?}\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("{STARTED}{scenario}")),
        "the child never started scenario {scenario}: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    out
}

/// The common case: test `test` has one scenario, named after it. In the
/// child, runs it and returns `None`; in the parent, returns the child's
/// output.
fn in_child(test: &str, body: impl FnOnce()) -> Option<Output> {
    if run_scenario(test, body) {
        return None;
    }
    Some(spawn_child(test, test))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The child died by signal `sig`.
fn assert_killed_by(out: &Output, sig: i32) {
    assert_eq!(
        out.status.signal(),
        Some(sig),
        "expected death by signal {sig}, got {:?}\n{}",
        out.status,
        stderr(out)
    );
}

/// The child exited with `code`.
fn assert_exit_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit code {code}, got {:?}\n{}",
        out.status,
        stderr(out)
    );
}

/// A crashing child must not leave a core file in the crate directory
/// (`core_pattern` may be a plain file name).
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit for the call to read.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    assert_eq!(r, 0, "setrlimit(RLIMIT_CORE, 0)");
}

/// Installs vmprim's dispatcher by registering a range no test touches, whose
/// handler ends the process with code 3 if it is ever (wrongly) called.
fn install_dispatcher() -> (Region, trap::Registration) {
    let p = page_size();
    let unrelated = Region::new(p, Prot::NONE).unwrap();
    let reg = trap::register(unrelated.as_ptr() as usize, p, |_| signal::exit_now(3)).unwrap();
    assert!(trap::is_installed());
    (unrelated, reg)
}

/// Reads the byte at `ptr` (volatile, so the access really happens).
///
/// # Safety
/// `ptr` must be mapped memory that no Rust reference covers; if it is not
/// readable, the fault is the point of the test.
unsafe fn touch(ptr: *const u8) -> u8 {
    // SAFETY: forwarded from the caller.
    unsafe { ptr.read_volatile() }
}

// ---------------------------------------------------------------------------
// a. Faults nobody owns end the process as they would without vmprim.

#[test]
fn an_unowned_segv_kills_the_process_by_sigsegv() {
    let child = in_child("an_unowned_segv_kills_the_process_by_sigsegv", || {
        let _dispatcher = install_dispatcher();
        let target = Region::new(page_size(), Prot::NONE).unwrap();
        let _ = target.read_u8(0);
        eprintln!("survived a read of a PROT_NONE page");
    });
    if let Some(out) = child {
        assert_killed_by(&out, libc::SIGSEGV);
    }
}

#[test]
fn an_unowned_sigbus_kills_the_process_by_sigbus() {
    let child = in_child("an_unowned_sigbus_kills_the_process_by_sigbus", || {
        let _dispatcher = install_dispatcher();
        let p = page_size();
        let fd = mem::memfd_create(c"vmprim-past-eof").unwrap();
        mem::ftruncate(fd.as_fd(), p as u64).unwrap();
        // Two pages of a one-page file: the second lies past end of file.
        let view =
            mem::mmap_shared(2 * p, mem::prot::READ | mem::prot::WRITE, fd.as_fd(), 0).unwrap();
        // SAFETY: the first page is backed by the file; no references exist.
        assert_eq!(unsafe { touch(view) }, 0);
        // SAFETY: mapped, but past end of file: the SIGBUS is the point.
        let _ = unsafe { touch(view.add(p)) };
        eprintln!("survived a read past end of file");
    });
    if let Some(out) = child {
        assert_killed_by(&out, libc::SIGBUS);
    }
}

// ---------------------------------------------------------------------------
// b. Faults vmprim does not resolve reach the handler installed before it.

/// The address the previous handler expects in `si_addr`.
static EXPECTED_ADDR: AtomicUsize = AtomicUsize::new(0);
/// Set by a vmprim handler that declined the fault.
static DECLINED: AtomicBool = AtomicBool::new(false);
/// Whether the previous handler insists on `DECLINED`.
static EXPECT_DECLINED: AtomicBool = AtomicBool::new(false);

/// The handler "installed before vmprim": exits 77 if it sees the expected
/// fault, 78 for a wrong address, 79 if a vmprim handler should have
/// declined first and did not.
extern "C" fn previous_handler(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SIGSEGV handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let code = if addr != EXPECTED_ADDR.load(SeqCst) {
        78
    } else if EXPECT_DECLINED.load(SeqCst) && !DECLINED.load(SeqCst) {
        79
    } else {
        77
    };
    signal::exit_now(code);
}

fn install_previous_segv_handler() {
    assert!(
        !trap::is_installed(),
        "the previous handler must come before vmprim's"
    );
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

#[test]
fn an_unowned_fault_reaches_the_previous_handler() {
    let child = in_child("an_unowned_fault_reaches_the_previous_handler", || {
        install_previous_segv_handler();
        let _dispatcher = install_dispatcher();
        let target = Region::new(page_size(), Prot::NONE).unwrap();
        EXPECTED_ADDR.store(target.as_ptr() as usize + 40, SeqCst);
        let _ = target.read_u8(40);
        eprintln!("survived a read of a PROT_NONE page");
    });
    if let Some(out) = child {
        assert_exit_code(&out, 77);
    }
}

#[test]
fn a_declined_fault_reaches_the_previous_handler() {
    let child = in_child("a_declined_fault_reaches_the_previous_handler", || {
        install_previous_segv_handler();
        let p = page_size();
        let region = Region::new(2 * p, Prot::NONE).unwrap();
        let _reg = trap::register(region.as_ptr() as usize, region.len(), |_| {
            DECLINED.store(true, SeqCst);
            Outcome::NotOurs
        })
        .unwrap();
        EXPECT_DECLINED.store(true, SeqCst);
        EXPECTED_ADDR.store(region.as_ptr() as usize + p + 8, SeqCst);
        let _ = region.write_u8(p + 8, 1);
        eprintln!("survived a write to a PROT_NONE page");
    });
    if let Some(out) = child {
        assert_exit_code(&out, 77);
    }
}

// ---------------------------------------------------------------------------
// c. A SIGSEGV sent with kill() is not a fault: vmprim passes it on.

fn kill_self_with_sigsegv() {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGSEGV) }, 0);
}

#[test]
fn a_sigsegv_sent_by_kill_takes_the_default_action() {
    let child = in_child("a_sigsegv_sent_by_kill_takes_the_default_action", || {
        // A program without Rust's SIGSEGV handler: vmprim's previous action
        // is SIG_DFL, which kills.
        // SAFETY: restoring the default action has no preconditions.
        let old = unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        assert_ne!(old, libc::SIG_ERR);
        let _dispatcher = install_dispatcher();
        kill_self_with_sigsegv();
        eprintln!("survived kill(SIGSEGV)");
    });
    if let Some(out) = child {
        assert_killed_by(&out, libc::SIGSEGV);
    }
}

/// Sends its own thread SIGSEGV twice, saying after each that it survived.
///
/// `raise` (a `tgkill` to the calling thread), not `kill`: `kill` sends to
/// the process, whose main thread may handle it later, and a second
/// `SIGSEGV` sent before then merges with the pending first.
fn raise_twice(with_vmprim: bool) {
    let _dispatcher = with_vmprim.then(install_dispatcher);
    for i in 1..=2 {
        // SAFETY: raise has no memory-safety preconditions.
        assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
        eprintln!("survived raise(SIGSEGV) number {i}");
    }
}

#[test]
fn a_sigsegv_sent_by_a_process_reaches_rusts_handler_as_without_vmprim() {
    // Rust's std installs a SIGSEGV handler at startup, so it is vmprim's
    // previous action here. For a signal that is not a guard-page fault it
    // restores SIG_DFL and returns: a SIGSEGV sent by a process is survived
    // once, and the second kills. Whatever std does, the process must do
    // the same with vmprim installed: compare with a control child without
    // vmprim. (A vmprim that swallowed such signals would survive both.)
    const TEST: &str = "a_sigsegv_sent_by_a_process_reaches_rusts_handler_as_without_vmprim";
    if run_scenario("raise-with-vmprim", || raise_twice(true))
        || run_scenario("raise-without-vmprim", || raise_twice(false))
    {
        return;
    }
    let with = spawn_child(TEST, "raise-with-vmprim");
    let without = spawn_child(TEST, "raise-without-vmprim");
    let survived = |out: &Output| {
        stderr(out)
            .lines()
            .filter(|l| l.starts_with("survived"))
            .count()
    };
    assert_eq!(
        (with.status, survived(&with)),
        (without.status, survived(&without)),
        "with vmprim:\n{}\nwithout:\n{}",
        stderr(&with),
        stderr(&without)
    );
}

// ---------------------------------------------------------------------------
// d. A stack overflow reaches a handler, on the alternate stack.

const THREAD_STACK: usize = 256 * 1024;

/// Recurses until the stack runs out; each frame holds a page the optimizer
/// must keep.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    std::hint::black_box(&mut frame);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(u64::from(frame[7]))
}

/// In a thread with a known stack: registers a trap over the guard below
/// the stack (and the stack's lowest page) that exits 42, then overflows.
fn overflow_in_a_thread(with_altstack: bool) {
    let t = std::thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(move || {
            signal::disable_altstack().unwrap();
            let _alt = with_altstack.then(|| AltStack::install().unwrap());
            let p = page_size();
            let (lo, size, guard) = signal::thread_stack().unwrap();
            assert!(size >= THREAD_STACK, "{size:#x}");
            let below = guard.max(p).next_multiple_of(p);
            let _reg = trap::register(lo - below, below + p, |_| signal::exit_now(42)).unwrap();
            eprintln!("stack {lo:#x}+{size:#x}, guard {guard:#x}: overflowing");
            recurse(0)
        })
        .unwrap();
    let depth = t.join().unwrap();
    eprintln!("the recursion returned ({depth})");
}

#[test]
fn a_stack_overflow_reaches_its_handler_on_the_altstack() {
    let child = in_child(
        "a_stack_overflow_reaches_its_handler_on_the_altstack",
        || overflow_in_a_thread(true),
    );
    if let Some(out) = child {
        assert_exit_code(&out, 42);
    }
}

#[test]
fn without_an_altstack_a_stack_overflow_kills_by_sigsegv() {
    // The control for the test above: the same overflow with no alternate
    // stack cannot run any handler.
    let child = in_child(
        "without_an_altstack_a_stack_overflow_kills_by_sigsegv",
        || overflow_in_a_thread(false),
    );
    if let Some(out) = child {
        assert_killed_by(&out, libc::SIGSEGV);
    }
}

// ---------------------------------------------------------------------------
// e. The registry has CAPACITY slots. Filling them would break concurrently
// running tests, so it happens in a child of its own.

#[test]
fn the_registry_reports_full() {
    let child = in_child("the_registry_reports_full", || {
        let p = page_size();
        let region = Region::reserve((CAPACITY + 1) * p).unwrap();
        let base = region.as_ptr() as usize;
        let mut regs = Vec::new();
        let err = loop {
            match trap::register(base + regs.len() * p, p, |_| Outcome::NotOurs) {
                Ok(r) => regs.push(r),
                Err(e) => break e,
            }
            assert!(regs.len() <= CAPACITY);
        };
        // Nothing else is registered in this process: every slot was free.
        assert_eq!(regs.len(), CAPACITY);
        assert!(
            matches!(err, TrapError::Full { capacity: CAPACITY }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("all {CAPACITY} trap registrations are in use")
        );
        // A dropped registration frees its slot for another range.
        drop(regs.swap_remove(10));
        let last = trap::register(base + CAPACITY * p, p, |_| Outcome::NotOurs).unwrap();
        assert_eq!(last.range(), base + CAPACITY * p..base + (CAPACITY + 1) * p);
        assert!(matches!(
            trap::register(base + 10 * p, p, |_| Outcome::NotOurs),
            Err(TrapError::Full { .. })
        ));
        eprintln!("registry scenario done");
    });
    if let Some(out) = child {
        assert_exit_code(&out, 0);
        assert!(
            stderr(&out).contains("registry scenario done"),
            "{}",
            stderr(&out)
        );
    }
}

/// Installs a seccomp filter that refuses userfaultfd the ways a sandbox
/// does: `userfaultfd(2)` and `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`
/// fail with `EPERM`. Everything else is allowed.
fn refuse_userfaultfd_with_seccomp() {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const USERFAULTFD_IOC_NEW: u32 = 0xAA00;
    // Offsets in struct seccomp_data: nr, arch, ip, args[6]; args[1]'s low
    // word (little-endian) is the ioctl request.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG1_LO: u32 = 24;
    let ld = |k| libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k,
    }; // BPF_LD|BPF_W|BPF_ABS
    let jeq = |k, jt, jf| libc::sock_filter {
        code: 0x15,
        jt,
        jf,
        k,
    }; // BPF_JMP|BPF_JEQ|BPF_K
    let ret = |k| libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k,
    }; // BPF_RET|BPF_K
    let mut prog = [
        ld(ARCH),
        jeq(AUDIT_ARCH, 0, 5), // other arch: allow
        ld(NR),
        jeq(libc::SYS_userfaultfd as u32, 4, 0), // deny
        jeq(libc::SYS_ioctl as u32, 0, 2),       // not ioctl: allow
        ld(ARG1_LO),
        jeq(USERFAULTFD_IOC_NEW, 1, 0), // deny
        ret(RET_ALLOW),
        ret(RET_EPERM),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: NO_NEW_PRIVS takes integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_NO_NEW_PRIVS)");
    // SAFETY: `fprog` points to a valid filter program that outlives the
    // call (the kernel copies it).
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "prctl(PR_SET_SECCOMP)");
}

/// Where userfaultfd is refused, vmprim says so (naming the sysctl), reports
/// the signal mechanisms as the ones in use, and DIRTY falls back to traps.
#[test]
fn where_userfaultfd_is_refused_vmprim_falls_back_to_signals() {
    use std::sync::Arc;
    use vmprim_prim::dirty::{self, Backend, Choice, DirtyError};
    use vmprim_prim::uffd::{Uffd, UffdError};
    const TEST: &str = "where_userfaultfd_is_refused_vmprim_falls_back_to_signals";
    let Some(out) = in_child(TEST, || {
        refuse_userfaultfd_with_seccomp();
        let err = Uffd::available().expect_err("seccomp refuses userfaultfd");
        assert!(matches!(err, UffdError::Refused { .. }), "{err:?}");
        assert!(
            err.to_string().contains("vm.unprivileged_userfaultfd"),
            "{err}"
        );
        let m = vmprim_prim::mechanisms();
        assert!(m.signal.is_yes());
        assert!(!m.uffd_sigbus.is_yes() && !m.uffd_thread.is_yes() && !m.uffd_wp.is_yes());
        assert!(m.to_string().contains("vm.unprivileged_userfaultfd"), "{m}");
        assert_eq!(m.dirty_best, Backend::Trap);

        let p = page_size();
        let region = Arc::new(Region::new(8 * p, Prot::READ_WRITE).unwrap());
        let forced = dirty::track(&region, 0, region.len(), Choice::Force(Backend::WpAsync));
        assert!(
            matches!(forced, Err(DirtyError::Uffd(UffdError::Refused { .. }))),
            "{forced:?}"
        );
        let mut t = dirty::track(&region, 0, region.len(), Choice::Best).unwrap();
        assert_eq!(
            t.backend(),
            Backend::Trap,
            "the fallback says which it uses"
        );
        region.write_u8(5 * p, 1).unwrap();
        let runs = t.collect().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].pages(), 5..6);
    }) else {
        return;
    };
    assert_exit_code(&out, 0);
}
