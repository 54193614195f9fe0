//! A fault the vm layer cannot resolve, with no handler, kills the process
//! the way it would without vmprim. Each case runs in a child process (this
//! test binary, re-run with an environment variable naming the case).

mod common;

use common::{load, store, P};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
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
        _ => unreachable!(),
    }
    // Not reached: the fault above killed the process.
    std::process::exit(0);
}

fn run(case: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture"])
        .env(CASE, case)
        .output()
        .unwrap()
        .status
}

#[test]
fn crash_child() {
    if let Ok(case) = std::env::var(CASE) {
        child(&case);
    }
}

#[test]
fn unresolvable_faults_die_by_sigsegv() {
    for case in ["unmapped", "protection"] {
        let status = run(case);
        assert_eq!(status.signal(), Some(11), "{case}: {status:?}");
    }
}
