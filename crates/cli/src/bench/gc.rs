//! `vmprim bench gc`: the six collectors of vmprim-gc and the Boehm–Demers–
//! Weiser collector (plain and incremental) on GCBench and the mutation
//! workload, in the same run.
//!
//! Every run is a fresh process: vmprim's collectors through
//! `vmprim bench gc-one` (this same executable), Boehm's through the peer
//! compiled from `crates/cli/peer/gc_boehm.c`. Runs go round-robin over
//! all collectors, so the host's drift spreads over all of them, and each
//! figure is the median over the rounds.

use super::boehm::{self, Mode, Peer, Workload};
use super::{svg, Progress};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use vmprim_gc::workload::{self, GcBench, Mutate};
use vmprim_gc::{
    Baker, Collector, Config, GenCards, GenDirty, Heap, StwCopy, VmBarrier, VmConcurrent,
};

/// The collectors, in report order; the last two are the peer's.
const COLLECTORS: [&str; 8] = [
    "stw_copy",
    "baker_sw",
    "vm_barrier",
    "vm_concurrent",
    "gen_cards",
    "gen_dirty",
    "boehm",
    "boehm_incremental",
];
const WORKLOADS: [&str; 2] = ["gcbench", "mutate"];
const FIELDS: [&str; 8] = [
    "total_ms",
    "gc_ms",
    "max_pause_us",
    "p99_pause_us",
    "traps",
    "to_space_pages",
    "protect_calls",
    "collections",
];

/// Command-line options of `bench gc`.
#[derive(Debug)]
pub struct Options {
    json: bool,
    plot: Option<PathBuf>,
    rounds: usize,
    quick: bool,
}

impl Options {
    /// Parses the arguments after `bench gc`.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Options {
            json: false,
            plot: None,
            rounds: 5,
            quick: false,
        };
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            match a {
                "--json" => o.json = true,
                "--quick" => o.quick = true,
                "--plot" => o.plot = Some(it.next().context("--plot needs a directory")?.into()),
                "--rounds" => {
                    o.rounds = it
                        .next()
                        .context("--rounds needs a number")?
                        .parse()
                        .context("--rounds needs a number")?;
                    if o.rounds == 0 {
                        bail!("--rounds must be at least 1");
                    }
                }
                _ => bail!("unknown option {a:?} (see vmprim --help)"),
            }
        }
        Ok(o)
    }
}

/// The heap every vmprim collector gets: 64 MiB semispaces (or old
/// generation) and a 4 MiB nursery; 8 MiB and 1 MiB with `--quick`.
fn config(quick: bool) -> Config {
    if quick {
        Config {
            heap_bytes: 8 << 20,
            nursery_bytes: 1 << 20,
            ..Config::default()
        }
    } else {
        Config::default()
    }
}

fn params(quick: bool) -> (GcBench, Mutate) {
    if quick {
        (
            GcBench {
                stretch: 14,
                long_lived: 12,
                array_size: 100_000,
                min_depth: 4,
                max_depth: 12,
            },
            Mutate {
                table_size: 1 << 14,
                iterations: 500_000,
            },
        )
    } else {
        (GcBench::full(), Mutate::full())
    }
}

/// One run's figures.
#[derive(Clone, Debug)]
struct Run {
    figures: Map<String, Value>,
    pauses_us: Vec<f64>,
}

/// `vmprim bench gc-one WORKLOAD COLLECTOR [--quick]`: one run in this
/// process; prints its JSON.
pub fn run_one(args: &[&str]) -> Result<()> {
    let (w, c, quick) = match args {
        [w, c] => (*w, *c, false),
        [w, c, "--quick"] => (*w, *c, true),
        _ => bail!("usage: vmprim bench gc-one WORKLOAD COLLECTOR [--quick]"),
    };
    let v = match c {
        "stw_copy" => one::<StwCopy>(w, quick),
        "baker_sw" => one::<Baker>(w, quick),
        "vm_barrier" => one::<VmBarrier>(w, quick),
        "vm_concurrent" => one::<VmConcurrent>(w, quick),
        "gen_cards" => one::<GenCards>(w, quick),
        "gen_dirty" => one::<GenDirty>(w, quick),
        _ => bail!("unknown collector {c:?}"),
    }?;
    println!("{v}");
    Ok(())
}

fn one<C: Collector>(w: &str, quick: bool) -> Result<Value> {
    let (g, m) = params(quick);
    let t0 = Instant::now();
    let mut heap = Heap::<C>::new(&config(quick))?;
    let (check, expected) = match w {
        "gcbench" => (workload::gcbench(&mut heap, &g), g.expected_check()),
        "mutate" => (workload::mutate(&mut heap, &m), m.expected_check()),
        _ => bail!("unknown workload {w:?}"),
    };
    let total = t0.elapsed();
    if check != expected {
        bail!("{} {w}: check {check}, expected {expected}", C::NAME);
    }
    let s = heap.stats();
    if s.pauses_dropped > 0 {
        bail!("{} {w}: the pause log overflowed", C::NAME);
    }
    Ok(json!({
        "total_ms": total.as_secs_f64() * 1e3,
        "gc_ms": s.gc_ns as f64 / 1e6,
        "max_pause_us": s.max_pause_ns() as f64 / 1e3,
        "p99_pause_us": s.p99_pause_ns() as f64 / 1e3,
        "traps": s.traps,
        "to_space_pages": s.to_space_pages,
        "protect_calls": s.protect_calls,
        "collections": s.collections,
        "check": check.to_string(),
        "pauses_us": s.pauses_ns.iter().map(|&p| p as f64 / 1e3).collect::<Vec<_>>(),
    }))
}

fn run_ours(w: &str, c: &str, quick: bool) -> Result<Run> {
    let exe = std::env::current_exe().context("find the vmprim executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "gc-one", w, c]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().context("run vmprim bench gc-one")?;
    if !out.status.success() {
        bail!(
            "{c} on {w} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parse gc-one's JSON")?;
    let Value::Object(mut figures) = v else {
        bail!("gc-one printed no object");
    };
    let pauses_us = match figures.remove("pauses_us") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
        _ => Vec::new(),
    };
    Ok(Run { figures, pauses_us })
}

fn run_peer(peer: &Peer, w: &str, c: &str, quick: bool) -> Result<Run> {
    let (g, m) = params(quick);
    let workload = match w {
        "gcbench" => Workload::GcBench {
            stretch: g.stretch,
            long_lived: g.long_lived,
            array_size: g.array_size,
            min_depth: g.min_depth,
            max_depth: g.max_depth,
        },
        _ => Workload::Mutate {
            table_size: m.table_size,
            iterations: m.iterations,
        },
    };
    let expected = match w {
        "gcbench" => g.expected_check(),
        _ => m.expected_check(),
    };
    let mode = if c == "boehm" {
        Mode::Plain
    } else {
        Mode::Incremental
    };
    let r = peer.run(&workload, mode)?;
    if r.check != expected {
        bail!("{c} on {w}: check {}, expected {expected}", r.check);
    }
    let mut figures = Map::new();
    figures.insert("total_ms".into(), json!(r.total_ms));
    figures.insert("gc_ms".into(), json!(r.gc_ms));
    figures.insert("max_pause_us".into(), json!(r.max_pause_us()));
    figures.insert("p99_pause_us".into(), json!(r.p99_pause_us()));
    figures.insert("traps".into(), json!(0));
    figures.insert("to_space_pages".into(), json!(0));
    figures.insert("protect_calls".into(), json!(0));
    figures.insert("collections".into(), json!(r.collections));
    Ok(Run {
        figures,
        pauses_us: r.pauses_us,
    })
}

fn median(runs: &[Run], field: &str) -> f64 {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.figures.get(field).and_then(Value::as_f64))
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The run whose total is the median: its pauses go to the plot.
fn median_run(runs: &[Run]) -> &Run {
    let mut idx: Vec<usize> = (0..runs.len()).collect();
    idx.sort_by(|&a, &b| {
        let t = |i: usize| runs[i].figures["total_ms"].as_f64().unwrap_or(0.0);
        t(a).total_cmp(&t(b))
    });
    &runs[idx[idx.len() / 2]]
}

/// Runs the benchmark and prints the table (or the JSON object).
pub fn run(o: &Options) -> Result<()> {
    let peer = boehm::build()?;
    let present: Vec<&str> = COLLECTORS
        .iter()
        .copied()
        .filter(|c| !c.starts_with("boehm") || peer.is_ok())
        .collect();
    let mut progress = Progress::new(o.rounds * WORKLOADS.len() * present.len());
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); COLLECTORS.len()]; WORKLOADS.len()];
    for round in 0..o.rounds {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            for (ci, c) in COLLECTORS.iter().enumerate() {
                if !present.contains(c) {
                    continue;
                }
                progress.step(&format!("round {}/{}: {w} on {c}", round + 1, o.rounds));
                let r = match &peer {
                    Ok(p) if c.starts_with("boehm") => run_peer(p, w, c, o.quick)?,
                    _ => run_ours(w, c, o.quick)?,
                };
                runs[wi][ci].push(r);
            }
        }
    }
    progress.finish();

    let mut top = Map::new();
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let mut by = Map::new();
        for (ci, c) in COLLECTORS.iter().enumerate() {
            let v = if runs[wi][ci].is_empty() {
                let why = peer
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                json!({ "missing": why })
            } else {
                let mut m = Map::new();
                for f in FIELDS {
                    m.insert(f.into(), json!(median(&runs[wi][ci], f)));
                }
                Value::Object(m)
            };
            by.insert((*c).into(), v);
        }
        top.insert((*w).into(), Value::Object(by));
    }

    if let Some(dir) = &o.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for (wi, w) in WORKLOADS.iter().enumerate() {
            let series: Vec<(&str, &[f64])> = COLLECTORS
                .iter()
                .enumerate()
                .filter(|(ci, _)| !runs[wi][*ci].is_empty())
                .map(|(ci, c)| (*c, median_run(&runs[wi][ci]).pauses_us.as_slice()))
                .collect();
            let path = dir.join(format!("pauses-{w}.svg"));
            let title = format!("{w}: GC pause distribution (median run of {})", o.rounds);
            std::fs::write(&path, svg::pause_plot(&title, &series))
                .with_context(|| format!("write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }

    if o.json {
        println!("{}", Value::Object(top));
        return Ok(());
    }
    print_table(&top, o, peer.as_ref().err().map(ToString::to_string));
    Ok(())
}

fn get(top: &Map<String, Value>, w: &str, c: &str, f: &str) -> Option<f64> {
    top.get(w)?.get(c)?.get(f)?.as_f64()
}

fn print_table(top: &Map<String, Value>, o: &Options, missing: Option<String>) {
    println!(
        "vmprim bench gc: medians of {} rounds, each run a fresh process{}",
        o.rounds,
        if o.quick { " (--quick parameters)" } else { "" }
    );
    for w in WORKLOADS {
        println!();
        println!(
            "{w:<18} {:>9} {:>9} {:>11} {:>11} {:>7} {:>9} {:>6}",
            "total ms", "gc ms", "max pause", "p99 pause", "traps", "to-space", "GCs"
        );
        for c in COLLECTORS {
            let Some(total) = get(top, w, c, "total_ms") else {
                println!(
                    "{c:<18} peer missing: {}",
                    missing.as_deref().unwrap_or("?")
                );
                continue;
            };
            let f = |k| get(top, w, c, k).unwrap_or(f64::NAN);
            println!(
                "{c:<18} {total:>9.1} {:>9.1} {:>9.0}us {:>9.0}us {:>7.0} {:>9.0} {:>6.0}",
                f("gc_ms"),
                f("max_pause_us"),
                f("p99_pause_us"),
                f("traps"),
                f("to_space_pages"),
                f("collections"),
            );
        }
    }
    println!();
    println!("targets (issue 4):");
    let t = |c: &str, f: &str| get(top, "gcbench", c, f);
    if let (Some(vm), Some(baker)) = (t("vm_barrier", "total_ms"), t("baker_sw", "total_ms")) {
        verdict(
            "gcbench: vm_barrier total <= baker_sw total",
            vm <= baker,
            format!("{vm:.1} vs {baker:.1} ms (ratio {:.2})", vm / baker),
        );
    }
    let mut worst = 0.0f64;
    for w in WORKLOADS {
        for c in ["vm_barrier", "vm_concurrent"] {
            if let (Some(tr), Some(pg)) =
                (get(top, w, c, "traps"), get(top, w, c, "to_space_pages"))
            {
                if pg > 0.0 {
                    worst = worst.max(tr / pg);
                }
            }
        }
    }
    verdict(
        "every VM collector: traps <= to-space pages",
        worst <= 1.0,
        format!("highest traps/pages {worst:.3}"),
    );
    if let (Some(vc), Some(b)) = (
        t("vm_concurrent", "max_pause_us"),
        t("boehm", "max_pause_us"),
    ) {
        verdict(
            "gcbench: vm_concurrent max pause <= 0.1 x boehm's",
            vc <= 0.1 * b,
            format!("{vc:.0} vs {b:.0} us (ratio {:.3})", vc / b),
        );
    } else {
        println!("  [ -- ] gcbench: vm_concurrent max pause vs boehm: the peer is missing");
    }
    let fastest = COLLECTORS[..6]
        .iter()
        .filter_map(|c| t(c, "total_ms").map(|v| (v, *c)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some((best, c)), Some(b)) = (fastest, t("boehm", "total_ms")) {
        verdict(
            "gcbench: fastest vmprim collector total <= boehm's",
            best <= b,
            format!("{c} {best:.1} vs {b:.1} ms (ratio {:.2})", best / b),
        );
    } else {
        println!("  [ -- ] gcbench: fastest vmprim collector vs boehm: the peer is missing");
    }
}

fn verdict(what: &str, ok: bool, detail: String) {
    println!("  [{}] {what}: {detail}", if ok { " ok " } else { "MISS" });
}
