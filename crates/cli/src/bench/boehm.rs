//! The Boehm–Demers–Weiser peer of `vmprim bench gc`: `peer/gc_boehm.c`,
//! compiled with the system C compiler against libgc (Debian's `libgc-dev`,
//! 8.2) and run in the same invocation, so vmprim's collectors and libgc
//! face the same two workloads.
//!
//! ```text
//! Peer::build()      cc -O2 -o $TMPDIR/vmprim-gc_boehm-<pid>-<n> gc_boehm.c -lgc
//!    │                 (the source is embedded in this binary)
//!    ▼
//! Peer::run(w, mode) $TMPDIR/vmprim-gc_boehm-<pid>-<n> gcbench|mutate plain|incremental ...
//!    │                 one JSON object on stdout
//!    ▼
//! Record             total_ms, gc_ms, collections, check, pauses_us
//! ```
//!
//! # How the peer measures pauses
//!
//! The peer has one thread, and libgc collects in the thread that allocates,
//! so a pause is the time an allocation call spends in the collector. libgc
//! 8.2 reports progress through `GC_set_on_collection_event`; its source
//! (`alloc.c` at v8.2.2) shows which events bracket that time:
//!
//! - [`Mode::Plain`]: every collection is `GC_try_to_collect_inner`, which
//!   emits `GC_EVENT_START` on entry and `GC_EVENT_END` on exit, around the
//!   world-stopped mark and the start of the sweep. A pause is `START ..
//!   END`, measured in the callback with `CLOCK_MONOTONIC`.
//! - [`Mode::Incremental`]: no event brackets the whole pause.
//!   `GC_maybe_gc`'s incremental branch emits no `START`/`END`, and sweeps
//!   the rest of the heap (`GC_reclaim_all`) before its first event,
//!   `GC_EVENT_PRE_STOP_WORLD`; the mark increments that
//!   `GC_collect_a_little_inner` runs inside allocation, when a time limit
//!   makes marking incremental, emit no event at all. So the peer times
//!   the allocator's slow path instead: it defines `GC_generic_malloc_many`
//!   (public, `gc/gc_inline.h`), through which libgc's thread-local
//!   allocator refills its free lists via the PLT, and calls libgc's own
//!   through `dlsym(RTLD_NEXT)`. A refill, or one of the two large
//!   allocations, is one pause when the collector worked in it: an event
//!   fired during it, or a mark phase was under way when it began. Events
//!   outside those calls (libgc serves the first few allocations of each
//!   size without a refill) fall back to the bracket `PRE_STOP_WORLD ..
//!   RECLAIM_END`. Reading the clock twice per refill (about one per 80
//!   allocations) costs about 3% of `total_ms`; plain mode does not pay it.
//!   The peer exits with an error if the interposition did not take effect.
//!
//! Lazy sweeping in refills without a collection is allocation in both
//! modes, part of `total_ms` but of no pause. Debian builds libgc with
//! parallel marking, which makes the default time limit
//! `GC_TIME_UNLIMITED`: incremental mode is then generational (one
//! world-stopped mark per collection, mostly partial). The environment is
//! passed through, so `GC_PAUSE_TIME_TARGET=<ms>` makes it truly
//! incremental, and its increments are measured as above. The top of
//! `gc_boehm.c` gives the details.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The peer's source, embedded so that `vmprim` works from any directory.
const SOURCE: &str = include_str!("../../peer/gc_boehm.c");

/// The least program that needs libgc's header and library: what a failed
/// build of [`SOURCE`] is checked against to tell a missing libgc from a
/// broken peer.
const PROBE: &str = "#include <gc.h>\nint main(void) { GC_INIT(); return 0; }\n";

/// How libgc collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Stop-the-world mark-sweep: `GC_INIT()` only.
    Plain,
    /// `GC_enable_incremental()` right after `GC_INIT()`: generational with
    /// Debian's libgc, incremental if a time limit is set (see the module
    /// documentation).
    Incremental,
}

impl Mode {
    /// The peer's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Incremental => "incremental",
        }
    }
}

/// A workload of the peer, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// GCBench (Ellis, Kovac, Boehm): a stretch tree of depth `stretch`, a
    /// long-lived tree of depth `long_lived` and an array of `array_size`
    /// doubles that live throughout, then short-lived trees of depth
    /// `min_depth`, `min_depth + 2`, ... `max_depth`, built top-down and
    /// bottom-up. The check is the node count of the long-lived tree,
    /// `2^(long_lived + 1) - 1`.
    GcBench {
        /// Depth of the stretch tree; also sets the iteration counts.
        stretch: u32,
        /// Depth of the tree kept to the end.
        long_lived: u32,
        /// Length of the pointer-free array kept to the end (over 2001).
        array_size: u32,
        /// Depth of the first short-lived trees.
        min_depth: u32,
        /// Depth of the last short-lived trees.
        max_depth: u32,
    },
    /// mutate: a table of `table_size` nodes, then `iterations` times a new
    /// node hung under a random table entry, which is now and then replaced
    /// by a new node (xorshift64* random numbers). The check is a wrapping
    /// sum over the table's nodes and their children.
    Mutate {
        /// Number of table entries (at least 1).
        table_size: u32,
        /// Number of mutations.
        iterations: u64,
    },
}

impl Workload {
    /// The peer's name for the workload.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::GcBench { .. } => "gcbench",
            Workload::Mutate { .. } => "mutate",
        }
    }

    /// The parameters on the peer's command line.
    fn args(&self) -> Vec<String> {
        match *self {
            Workload::GcBench {
                stretch,
                long_lived,
                array_size,
                min_depth,
                max_depth,
            } => [stretch, long_lived, array_size, min_depth, max_depth]
                .map(|n| n.to_string())
                .to_vec(),
            Workload::Mutate {
                table_size,
                iterations,
            } => vec![table_size.to_string(), iterations.to_string()],
        }
    }
}

/// One run of the peer.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Wall time of the workload, from after `GC_INIT` (and
    /// `GC_enable_incremental`) to its end, in milliseconds.
    pub total_ms: f64,
    /// Time in pauses: the sum of `pauses_us`, in milliseconds.
    pub gc_ms: f64,
    /// Collections libgc completed during the workload.
    pub collections: u64,
    /// The workload's check figure (see [`Workload`]).
    pub check: u64,
    /// Every pause, in microseconds, in the order they happened.
    pub pauses_us: Vec<f64>,
}

impl Record {
    /// The longest pause in microseconds; 0 without pauses.
    pub fn max_pause_us(&self) -> f64 {
        self.pauses_us.iter().copied().fold(0.0, f64::max)
    }

    /// The 99th percentile of the pauses in microseconds, by nearest rank
    /// (the smallest pause at least 99% of pauses do not exceed); 0 without
    /// pauses.
    pub fn p99_pause_us(&self) -> f64 {
        let mut sorted = self.pauses_us.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (sorted.len() * 99).div_ceil(100);
        rank.checked_sub(1).map_or(0.0, |i| sorted[i])
    }

    /// Parses the peer's JSON object.
    fn parse(json: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(json)?;
        let field = |key: &str| v.get(key).with_context(|| format!("no {key:?}"));
        let number = |key: &str| {
            field(key)?
                .as_f64()
                .with_context(|| format!("{key:?} is not a number"))
        };
        let check = field("check")?
            .as_str()
            .context("\"check\" is not a string")?;
        let pauses = field("pauses_us")?
            .as_array()
            .context("\"pauses_us\" is not an array")?;
        Ok(Record {
            total_ms: number("total_ms")?,
            gc_ms: number("gc_ms")?,
            collections: field("collections")?
                .as_u64()
                .context("\"collections\" is not a count")?,
            check: check
                .parse()
                .with_context(|| format!("\"check\" is not a u64: {check:?}"))?,
            pauses_us: pauses
                .iter()
                .map(|p| p.as_f64().context("a pause is not a number"))
                .collect::<Result<_>>()?,
        })
    }
}

/// Why the peer cannot be built on this machine: the benchmark says so
/// rather than leaving libgc out silently.
#[derive(Debug)]
pub enum Missing {
    /// The C compiler, `cc`, is not on the `PATH`.
    NoCompiler(io::Error),
    /// `cc` runs but cannot build a program with `<gc.h>` and `-lgc`.
    NoLibgc {
        /// What `cc` said.
        cc_says: String,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::NoCompiler(e) => write!(
                f,
                "no Boehm GC peer: cannot run the C compiler `cc` ({e}); \
                 install Debian's build-essential and libgc-dev"
            ),
            Missing::NoLibgc { cc_says } => write!(
                f,
                "no Boehm GC peer: cc cannot build against libgc (gc.h, -lgc); \
                 install Debian's libgc-dev\ncc said:\n{}",
                cc_says.trim_end()
            ),
        }
    }
}

impl std::error::Error for Missing {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Missing::NoCompiler(e) => Some(e),
            Missing::NoLibgc { .. } => None,
        }
    }
}

/// The built peer: an executable in the temporary directory, deleted on
/// drop.
#[derive(Debug)]
pub struct Peer {
    exe: PathBuf,
}

/// Builds the peer; `Ok(Err(_))` says what this machine lacks, `Err(_)` is
/// any other failure (including a peer that no longer compiles).
pub fn build() -> Result<Result<Peer, Missing>> {
    let exe = temp_path("gc_boehm");
    Ok(match compile(SOURCE, &exe)? {
        Cc::Built => Ok(Peer { exe }),
        Cc::Absent(e) => Err(Missing::NoCompiler(e)),
        Cc::Failed(peer_says) => Err(diagnose(&peer_says)?),
    })
}

/// Tells a machine without libgc from a peer that no longer compiles (an
/// error), once `cc` has failed on the peer saying `peer_says`.
fn diagnose(peer_says: &str) -> Result<Missing> {
    let probe = temp_path("gc_probe");
    let outcome = compile(PROBE, &probe)?;
    let _ = std::fs::remove_file(&probe);
    match outcome {
        Cc::Built => bail!("cc cannot build the Boehm GC peer gc_boehm.c:\n{peer_says}"),
        Cc::Failed(cc_says) => Ok(Missing::NoLibgc { cc_says }),
        Cc::Absent(e) => Ok(Missing::NoCompiler(e)),
    }
}

impl Peer {
    /// Runs workload `w` in mode `m` and returns what the peer measured.
    pub fn run(&self, w: &Workload, m: Mode) -> Result<Record> {
        let what = format!("the Boehm GC peer ({} {})", w.name(), m.name());
        let out = Command::new(&self.exe)
            .arg(w.name())
            .arg(m.name())
            .args(w.args())
            .output()
            .with_context(|| format!("run {what} at {}", self.exe.display()))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Record::parse(&out.stdout).with_context(|| format!("parse the JSON of {what}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.exe);
    }
}

/// What became of a compilation.
enum Cc {
    Built,
    /// `cc` ran and failed; what it said.
    Failed(String),
    /// `cc` could not be found.
    Absent(io::Error),
}

/// Compiles C `source` into `exe` with `cc -O2 ... -lgc`, through a source
/// file beside `exe` that is deleted afterwards.
fn compile(source: &str, exe: &Path) -> Result<Cc> {
    let src = exe.with_extension("c");
    std::fs::write(&src, source).with_context(|| format!("write {}", src.display()))?;
    let out = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(exe)
        .arg(&src)
        .arg("-lgc")
        .output();
    let _ = std::fs::remove_file(&src);
    match out {
        Ok(out) if out.status.success() => Ok(Cc::Built),
        Ok(out) => Ok(Cc::Failed(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cc::Absent(e)),
        Err(e) => Err(e).context("run cc"),
    }
}

/// A fresh path in the temporary directory, unique across processes (the
/// pid) and within one (a counter: tests build peers concurrently).
fn temp_path(stem: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vmprim-{stem}-{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the tests run on CI, where a missing libgc is a failure.
    fn on_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
    }

    /// The peer; `None`, after saying why, when this machine lacks libgc
    /// outside CI.
    fn peer() -> Option<Peer> {
        match build().expect("build the Boehm GC peer") {
            Ok(peer) => Some(peer),
            Err(missing) if on_ci() => panic!("{missing}"),
            Err(missing) => {
                eprintln!("skipped: {missing}");
                None
            }
        }
    }

    /// Runs `w` in both modes, checks what every record must satisfy and
    /// its check figure, and prints the figures.
    fn run_both_modes(peer: &Peer, w: &Workload, check: u64) {
        for m in [Mode::Plain, Mode::Incremental] {
            let r = peer.run(w, m).unwrap();
            println!(
                "{} {}: total {:.3} ms, gc {:.3} ms, {} collections, {} pauses, \
                 max {:.1} µs, p99 {:.1} µs, check {}",
                w.name(),
                m.name(),
                r.total_ms,
                r.gc_ms,
                r.collections,
                r.pauses_us.len(),
                r.max_pause_us(),
                r.p99_pause_us(),
                r.check
            );
            assert_eq!(r.check, check, "{} {}", w.name(), m.name());
            assert_sane(&r, m);
        }
    }

    fn assert_sane(r: &Record, m: Mode) {
        assert!(r.total_ms.is_finite() && r.total_ms > 0.0, "{r:?}");
        assert!(
            r.pauses_us.iter().all(|p| p.is_finite() && *p > 0.0),
            "{r:?}"
        );
        let sum_ms = r.pauses_us.iter().sum::<f64>() / 1e3;
        // Pauses are printed to the ns, gc_ms to the ns: rounding only.
        let rounding = 1e-6 * (r.pauses_us.len() as f64 + 2.0);
        assert!(
            (r.gc_ms - sum_ms).abs() <= rounding,
            "{} vs {sum_ms}",
            r.gc_ms
        );
        assert!(r.gc_ms <= r.total_ms, "{r:?}");
        match m {
            // One START .. END per collection.
            Mode::Plain => {
                assert!(r.collections > 0, "{r:?}");
                assert_eq!(r.pauses_us.len() as u64, r.collections);
            }
            // At least the world-stopped mark that completes each one.
            Mode::Incremental => assert!(r.pauses_us.len() as u64 >= r.collections),
        }
    }

    #[test]
    fn gcbench_checks_and_measures_pauses() {
        let Some(peer) = peer() else { return };
        let w = Workload::GcBench {
            stretch: 10,
            long_lived: 8,
            array_size: 10_000,
            min_depth: 4,
            max_depth: 8,
        };
        run_both_modes(&peer, &w, (1 << 9) - 1);
    }

    #[test]
    fn mutate_checks_and_measures_pauses() {
        let Some(peer) = peer() else { return };
        let (table_size, iterations) = (4096, 100_000);
        let w = Workload::Mutate {
            table_size,
            iterations,
        };
        run_both_modes(&peer, &w, mutate_model(table_size as usize, iterations));
    }

    /// A node of the model: children are indices into the arena.
    #[derive(Clone, Copy, Default)]
    struct Node {
        left: Option<usize>,
        right: Option<usize>,
        i: u64,
    }

    /// The mutate workload on a `Vec` arena; returns its check.
    fn mutate_model(table_size: usize, iterations: u64) -> u64 {
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut nodes: Vec<Node> = (0..table_size as u64)
            .map(|i| Node {
                i,
                ..Node::default()
            })
            .collect();
        let mut table: Vec<usize> = (0..table_size).collect();
        for it in 0..iterations {
            let r = next();
            let k = ((r >> 16) % table_size as u64) as usize;
            let c = table[k];
            nodes.push(Node {
                i: it,
                ..Node::default()
            });
            let y = Some(nodes.len() - 1);
            if r & 1 == 0 {
                nodes[c].left = y;
            } else {
                nodes[c].right = y;
            }
            if (r >> 8) & 63 == 0 {
                let left = nodes[c].left;
                nodes.push(Node {
                    left,
                    i: it,
                    ..Node::default()
                });
                table[k] = nodes.len() - 1;
            }
        }
        let i = |n: Option<usize>| n.map_or(0, |n| nodes[n].i);
        table.iter().fold(0u64, |sum, &c| {
            let n = nodes[c];
            sum.wrapping_add(n.i)
                .wrapping_add(i(n.left))
                .wrapping_add(i(n.right))
        })
    }

    #[test]
    fn the_model_matches_a_known_figure() {
        // Computed independently (a Python transcription of the workload),
        // and printed by the peer for the same parameters.
        assert_eq!(mutate_model(4096, 100_000), 816_652_604);
    }

    fn record(pauses_us: Vec<f64>) -> Record {
        Record {
            total_ms: 1.0,
            gc_ms: pauses_us.iter().sum::<f64>() / 1e3,
            collections: pauses_us.len() as u64,
            check: 0,
            pauses_us,
        }
    }

    #[test]
    fn max_and_p99_by_nearest_rank() {
        let none = record(vec![]);
        assert_eq!((none.max_pause_us(), none.p99_pause_us()), (0.0, 0.0));
        let one = record(vec![7.5]);
        assert_eq!((one.max_pause_us(), one.p99_pause_us()), (7.5, 7.5));
        let hundred = record((1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (hundred.max_pause_us(), hundred.p99_pause_us()),
            (100.0, 99.0)
        );
        let thousand = record((1..=1000).map(f64::from).collect());
        assert_eq!(thousand.p99_pause_us(), 990.0);
        let ten = record((1..=10).map(f64::from).collect());
        assert_eq!(ten.p99_pause_us(), 10.0);
    }

    #[test]
    fn parses_the_peers_json() {
        let json = br#"{"total_ms":12.5,"gc_ms":0.003500,"collections":2,
            "check":"18446744073709551615","pauses_us":[1.250,2.250]}"#;
        let r = Record::parse(json).unwrap();
        assert_eq!(
            r,
            Record {
                total_ms: 12.5,
                gc_ms: 0.0035,
                collections: 2,
                check: u64::MAX,
                pauses_us: vec![1.25, 2.25],
            }
        );
        assert!(Record::parse(br#"{"total_ms":1}"#).is_err());
        assert!(Record::parse(
            br#"{"total_ms":1,"gc_ms":0,"collections":0,"check":"-1","pauses_us":[]}"#
        )
        .is_err());
    }

    #[test]
    fn workloads_pass_their_parameters_in_order() {
        let gcbench = Workload::GcBench {
            stretch: 18,
            long_lived: 16,
            array_size: 500_000,
            min_depth: 4,
            max_depth: 16,
        };
        let mutate = Workload::Mutate {
            table_size: 65_536,
            iterations: 4_000_000,
        };
        assert_eq!(gcbench.args(), ["18", "16", "500000", "4", "16"]);
        assert_eq!(mutate.args(), ["65536", "4000000"]);
    }

    #[test]
    fn missing_libgc_says_what_to_install() {
        let m = Missing::NoLibgc {
            cc_says: "fatal error: gc.h: No such file or directory\n".into(),
        };
        assert!(m.to_string().contains("install Debian's libgc-dev"));
        assert!(m.to_string().contains("gc.h: No such file"));
    }
}
