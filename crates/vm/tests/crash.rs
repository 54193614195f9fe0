//! A fault the vm layer cannot resolve, with no handler, kills the process
//! the way it would without vmprim. Each case runs in a child process (this
//! test binary, re-run with an environment variable naming the case).

mod common;

use common::{load, store, temp_file, P};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmprim_vm::{AddressSpace, Config, Mapping, Prot};

const CASE: &str = "VMPRIM_VM_CRASH_CASE";

fn child(case: &str) {
    let space = AddressSpace::new(16 * P, Config::default()).unwrap();
    let at = space.map(Mapping::anonymous(P).prot(Prot::READ)).unwrap();
    assert_eq!(load(&space, at), 0);
    match case {
        "unmapped" => {
            load(&space, 8 * P);
        }
        "protection" => store(&space, at, 1),
        "protected_after_snapshot" => {
            // A page write-protected for copy on write (through userfaultfd
            // where the kernel has it), then protected by the program: the
            // store is a protection violation, as it would be without vmprim.
            let rw = space.map(Mapping::anonymous(P)).unwrap();
            store(&space, rw, 1);
            space.snapshot(rw, P).unwrap();
            space.protect(rw, P, Prot::READ).unwrap();
            assert_eq!(load(&space, rw), 1);
            store(&space, rw, 2);
        }
        "reprotected_after_snapshot" => {
            // The same, then write permission given back: the store goes
            // through (no write-protect bit was left behind).
            let rw = space.map(Mapping::anonymous(P)).unwrap();
            store(&space, rw, 1);
            let snap = space.snapshot(rw, P).unwrap();
            space.protect(rw, P, Prot::READ).unwrap();
            space.protect(rw, P, Prot::READ_WRITE).unwrap();
            store(&space, rw, 2);
            assert_eq!((load(&space, rw), load(&space, snap)), (2, 1));
        }
        "truncated_file" => {
            // A page mapped straight from a file that shrank under it: the
            // kernel's SIGBUS, as for any file mapping.
            let file = temp_file(2, |_| 7);
            let obj = space.create_file(file.try_clone().unwrap()).unwrap();
            let f = space.map(Mapping::object(&obj, 0, 2 * P)).unwrap();
            assert_eq!(load(&space, f + P), 7);
            file.set_len(0).unwrap();
            load(&space, f + P);
        }
        _ => unreachable!(),
    }
    // Not reached: the fault above killed the process.
    std::process::exit(0);
}

/// Runs `case` in a child; one still running after a minute (a fault
/// answered as resolved that keeps recurring) is killed, with `SIGKILL`.
fn run(case: &str) -> std::process::ExitStatus {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture"])
        .env(CASE, case)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn crash_child() {
    if let Ok(case) = std::env::var(CASE) {
        child(&case);
    }
}

#[test]
fn unresolvable_faults_die_by_sigsegv() {
    for case in ["unmapped", "protection", "protected_after_snapshot"] {
        let status = run(case);
        assert_eq!(status.signal(), Some(11), "{case}: {status:?}");
    }
}

#[test]
fn write_permission_given_back_after_a_snapshot_works() {
    let status = run("reprotected_after_snapshot");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_file_truncated_under_a_direct_mapping_raises_sigbus() {
    let status = run("truncated_file");
    assert_eq!(status.signal(), Some(7), "{status:?}");
}
