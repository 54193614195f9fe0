//! What the integration tests share: running a test in a child process,
//! and one such test per collector.
//!
//! The collectors end the process on a broken invariant (`abort`), and a
//! broken barrier can fault; either would take every other test of the
//! binary down with it. So a test runs its body in a child: this test
//! binary again, started with `--exact <test> --nocapture
//! --test-threads=1` and `VMPRIM_GC_CHILD=<scenario>`, and the parent checks
//! how the child ended, as `crates/prim/tests/process.rs` does.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "VMPRIM_GC_CHILD";
const STARTED: &str = "vmprim-gc child started: ";
/// How long a child may run before it counts as hung (a fault the barrier
/// keeps resolving without progress would loop forever).
const HANG: Duration = Duration::from_secs(120);

/// Whether this process is the child started for `scenario`.
pub fn is_child(scenario: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(scenario)
}

/// Runs `body` if this process is the child started for `scenario`, and
/// says whether it did. A body that returns lets the child's test pass.
pub fn run_scenario(scenario: &str, body: impl FnOnce()) -> bool {
    if !is_child(scenario) {
        return false;
    }
    no_core_dumps();
    eprintln!("{STARTED}{scenario}");
    body();
    true
}

/// The test's name as the harness knows it: `path` without the crate.
pub fn test_name(path: &str) -> &str {
    path.split_once("::").map_or(path, |(_, rest)| rest)
}

/// Runs test `test` of this binary in a child process as `scenario`, and
/// returns its output after checking the scenario started (and did not
/// hang).
pub fn spawn_child(test: &str, scenario: &str) -> Output {
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
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr_ = drain(Box::new(child.stderr.take().expect("piped stderr")));
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
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = Output {
        status: status.unwrap_or_else(|| ExitStatus::from_raw(0)),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr_.join().expect("stderr reader"),
    };
    assert!(
        status.is_some(),
        "scenario {scenario} hung for {HANG:?}\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("{STARTED}{scenario}")),
        "the child never started scenario {scenario}: {}\n{}",
        out.status,
        stderr(&out)
    );
    out
}

/// Runs `body` in a child process (when this is the parent) or here (when
/// this is that child), and fails unless the child passed. `path` is the
/// test's path, `concat!(module_path!(), "::", name)`.
pub fn isolated(path: &str, body: impl FnOnce()) {
    let test = test_name(path);
    if run_scenario(test, body) {
        return;
    }
    let out = spawn_child(test, test);
    assert!(
        out.status.success(),
        "{test} failed in its child process ({})\n--- child's stdout:\n{}\n--- child's stderr:\n{}",
        describe(out.status),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// "exit code N" or "killed by signal N (NAME)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => {
            let name = match s {
                libc::SIGABRT => "SIGABRT: a collector aborted",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGBUS => "SIGBUS",
                libc::SIGKILL => "SIGKILL",
                _ => "?",
            };
            format!("killed by signal {s} ({name})")
        }
        _ => format!("{status:?}"),
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A crashing child must not leave a core file behind.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit for the call to read.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    assert_eq!(r, 0, "setrlimit(RLIMIT_CORE, 0)");
}

/// A `#[test]` whose body runs in its own child process.
#[macro_export]
macro_rules! isolated_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::common::isolated(concat!(module_path!(), "::", stringify!($name)), || $body);
        }
    };
}

/// A module `$name` of `#[test]`s, one per collector, each running the
/// generic function `$name::<C>()` of the enclosing module in its own child
/// process (`GenDirty` with the best DIRTY backend).
#[macro_export]
macro_rules! each_collector {
    ($name:ident) => {
        mod $name {
            use vmprim_gc::{Baker, GenCards, GenDirty, StwCopy, VmBarrier, VmConcurrent};

            $crate::isolated_test!(
                fn stw_copy() {
                    super::$name::<StwCopy>()
                }
            );
            $crate::isolated_test!(
                fn baker() {
                    super::$name::<Baker>()
                }
            );
            $crate::isolated_test!(
                fn vm_barrier() {
                    super::$name::<VmBarrier>()
                }
            );
            $crate::isolated_test!(
                fn vm_concurrent() {
                    super::$name::<VmConcurrent>()
                }
            );
            $crate::isolated_test!(
                fn gen_cards() {
                    super::$name::<GenCards>()
                }
            );
            $crate::isolated_test!(
                fn gen_dirty() {
                    super::$name::<GenDirty>()
                }
            );
        }
    };
}
