//! `vmprim`: benchmarks of vmprim's primitives against the raw kernel
//! mechanisms, measured in the same run.
//!
//! ```text
//! vmprim bench prim            the VM-PUP table, vmprim beside the raw reference
//! vmprim bench prim --json     vmprim's figures as one flat JSON object
//! vmprim bench gc              the collectors beside the Boehm collector
//! vmprim bench vm              the vm layer's faults, snapshots and pageout beside the kernel's
//! vmprim mechanisms            which mechanisms this kernel and process allow
//! ```

mod bench;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: vmprim bench prim [--json] [--reference FILE.c | --no-reference]
       vmprim bench gc [--json] [--plot DIR] [--rounds N] [--quick]
       vmprim bench vm [--json] [--quick]
       vmprim mechanisms

  bench prim     the VM-PUP benchmark (Appel & Li 1991) of every mechanism,
                 beside the raw reference (../shared/reference/vmpup_ref.c,
                 compiled with cc and run in the same invocation) and the ratio
  --json         print vmprim's figures only, as one flat JSON object (ns per
                 operation, medians), with the keys of vmpup_ref.c
  --reference    the reference C source to compile and run
  --no-reference skip the reference
  bench gc       the collectors of vmprim-gc and the Boehm collector (plain
                 and incremental; compiled from crates/cli/peer/gc_boehm.c
                 against libgc-dev) on GCBench and a mutation workload
  --json         an object keyed by workload, then collector (total_ms,
                 gc_ms, max_pause_us, p99_pause_us, traps, to_space_pages,
                 protect_calls, collections)
  --plot DIR     also write the pause distributions as SVG files into DIR
  --rounds N     rounds over all collectors (default 5; medians reported)
  --quick        smaller parameters (seconds instead of a minute)
  bench vm       the vm layer of vmprim-vm on the real MMU (zero-fill, file
                 and copy-on-write faults, snapshots, faults behind long
                 chains, pageout) beside the kernel's own (the raw reference
                 and crates/cli/peer/vm_kernel.c, compiled with cc), with
                 the targets marked [ ok ] or [MISS]
  --json         one flat JSON object of every figure (ns per page, *_ms in
                 milliseconds, null when not measured)
  --quick        3 rounds of smaller sizes (256 MiB snapshots; CI)
  mechanisms     which mechanisms this kernel and process allow, and why not";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if args.iter().any(|a| matches!(*a, "help" | "--help" | "-h")) {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line, without a backtrace: these are
            // answers for a user (a bad option, a missing peer), not bugs.
            eprintln!("vmprim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result<()> {
    match args {
        ["bench", "prim", rest @ ..] => bench::prim::run(&bench::prim::Options::parse(rest)?),
        ["bench", "gc", rest @ ..] => bench::gc::run(&bench::gc::Options::parse(rest)?),
        ["bench", "gc-one", rest @ ..] => bench::gc::run_one(rest),
        ["bench", "vm", rest @ ..] => bench::vm::run(&bench::vm::Options::parse(rest)?),
        ["mechanisms"] => {
            println!("{}", vmprim_prim::mechanisms());
            Ok(())
        }
        _ => bail!("unknown command {:?}\n\n{USAGE}", args.join(" ")),
    }
}
