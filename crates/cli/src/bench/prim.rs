//! `vmprim bench prim`: Appel & Li's VM-PUP benchmark and the mechanisms
//! Linux adds, through vmprim's public API, beside the raw reference.
//!
//! Every figure follows the definition in `vmpup_ref.c` (same page counts,
//! rounds and repetitions), so the two can be divided.

use super::{median, per_op, reference, Progress};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use vmprim_prim::dirty::{self, Backend, Choice, PageRun};
use vmprim_prim::map2::SharedMemory;
use vmprim_prim::trap::{self, Cause, Outcome};
use vmprim_prim::uffd::{Delivery, Features, Mode, Server, Uffd, Wake};
use vmprim_prim::{page_size, Prot, Region};

const PAGES: usize = 100;
const ROUNDS: usize = 100;
const REPS: usize = 7;
/// No page to protect (the handler's `please_protect` is empty).
const NO_PAGE: usize = usize::MAX;

/// Command-line options of `bench prim`.
#[derive(Debug)]
pub struct Options {
    json: bool,
    /// The reference source, if found or given.
    reference: Option<PathBuf>,
    /// `--no-reference` was given.
    skip_reference: bool,
}

impl Options {
    /// Parses the arguments after `bench prim`.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Options {
            json: false,
            reference: reference::default_source(),
            skip_reference: false,
        };
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            match a {
                "--json" => o.json = true,
                "--no-reference" => o.skip_reference = true,
                "--reference" => {
                    o.reference = Some(it.next().context("--reference needs a file")?.into())
                }
                _ => bail!("unknown option {a:?} (see vmprim --help)"),
            }
        }
        Ok(o)
    }
}

/// vmprim's figures, ns per operation, with the keys of `vmpup_ref.c`.
#[derive(Debug, Default)]
struct Figures {
    trap: f64,
    prot1_trap_unprot: f64,
    protn_trap_unprot: f64,
    vmpup_rating: f64,
    uffd_sigbus_wp: f64,
    uffd_thread_wp: f64,
    uffd_sigbus_copy: f64,
    demand_zero: f64,
    dirty_trap_page: f64,
    dirty_async_page: f64,
    dirty_scan_page: f64,
    map2_alias: f64,
}

/// Runs the suite and prints the table (or the JSON object).
pub fn run(o: &Options) -> Result<()> {
    let with_ref = !o.json && !o.skip_reference && o.reference.is_some();
    // Beside the reference, alternate two rounds (reference, vmprim,
    // reference, vmprim) and keep each side's lower median per figure:
    // this VM's speed drifts over seconds, and one round of each puts that
    // drift into the ratio.
    let rounds = if with_ref { ROUNDS_WITH_REFERENCE } else { 1 };
    let mut progress = Progress::new(rounds * (12 + usize::from(with_ref)));
    let mut raw: Option<serde_json::Map<String, serde_json::Value>> = None;
    let mut best: Option<Figures> = None;
    for _ in 0..rounds {
        if let (Some(src), true) = (&o.reference, with_ref) {
            progress.step("raw reference (vmpup_ref.c)");
            let r = reference::run(src)?;
            raw = Some(match raw {
                None => r,
                Some(prev) => lower_of(prev, r),
            });
        }
        let f = measure(&mut progress)?;
        best = Some(match best {
            None => f,
            Some(prev) => prev.lower(&f),
        });
    }
    progress.finish();
    let f = best.expect("at least one round");
    if o.json {
        println!("{}", json(&f));
    } else {
        print_table(&f, raw.as_ref(), o.skip_reference, rounds);
    }
    Ok(())
}

/// Rounds of the reference and of vmprim, alternated, for the table.
const ROUNDS_WITH_REFERENCE: usize = 2;

fn rating(p1: f64, pn: f64, trap: f64) -> f64 {
    3000.0 / ((p1 + pn + trap) / 1000.0)
}

/// The lower of two reference results, figure by figure; the rating is
/// recomputed from the figures kept.
fn lower_of(
    mut a: serde_json::Map<String, serde_json::Value>,
    b: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    for (k, v) in b {
        let (Some(x), Some(y)) = (a.get(&k).and_then(|v| v.as_f64()), v.as_f64()) else {
            continue;
        };
        // -1 marks a figure the reference could not measure.
        if y > 0.0 && (x <= 0.0 || y < x) {
            a.insert(k, v);
        }
    }
    let get = |k: &str| a.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let r = rating(
        get("prot1_trap_unprot"),
        get("protn_trap_unprot"),
        get("trap"),
    );
    if let Some(n) = serde_json::Number::from_f64(r) {
        a.insert("vmpup_rating".into(), serde_json::Value::Number(n));
    }
    a
}

impl Figures {
    /// The lower of two measurements, figure by figure.
    fn lower(&self, o: &Self) -> Self {
        let mut f = Figures {
            trap: self.trap.min(o.trap),
            prot1_trap_unprot: self.prot1_trap_unprot.min(o.prot1_trap_unprot),
            protn_trap_unprot: self.protn_trap_unprot.min(o.protn_trap_unprot),
            vmpup_rating: 0.0,
            uffd_sigbus_wp: self.uffd_sigbus_wp.min(o.uffd_sigbus_wp),
            uffd_thread_wp: self.uffd_thread_wp.min(o.uffd_thread_wp),
            uffd_sigbus_copy: self.uffd_sigbus_copy.min(o.uffd_sigbus_copy),
            demand_zero: self.demand_zero.min(o.demand_zero),
            dirty_trap_page: self.dirty_trap_page.min(o.dirty_trap_page),
            dirty_async_page: self.dirty_async_page.min(o.dirty_async_page),
            dirty_scan_page: self.dirty_scan_page.min(o.dirty_scan_page),
            map2_alias: self.map2_alias.min(o.map2_alias),
        };
        f.vmpup_rating = rating(f.prot1_trap_unprot, f.protn_trap_unprot, f.trap);
        f
    }
}

fn measure(progress: &mut Progress) -> Result<Figures> {
    let mut f = Figures::default();
    let vmpup = Vmpup::new()?;
    progress.step("protN+trap+unprot");
    f.protn_trap_unprot = median(REPS, || vmpup.protn_trap_unprot())?;
    progress.step("prot1+trap+unprot");
    f.prot1_trap_unprot = median(REPS, || vmpup.prot1_trap_unprot())?;
    progress.step("trap");
    f.trap = median(REPS, || vmpup.trap_only())?;
    drop(vmpup);
    f.vmpup_rating = rating(f.prot1_trap_unprot, f.protn_trap_unprot, f.trap);
    progress.step("uffd in-thread write-protect fault");
    f.uffd_sigbus_wp = median(REPS, uffd_sigbus_wp)?;
    progress.step("uffd in-thread missing fault + copy");
    f.uffd_sigbus_copy = median(REPS, uffd_sigbus_copy)?;
    progress.step("uffd handler-thread write-protect fault");
    f.uffd_thread_wp = median(3, uffd_thread_wp)?;
    progress.step("kernel demand-zero fault");
    f.demand_zero = median(REPS, demand_zero)?;
    progress.step("DIRTY by traps");
    f.dirty_trap_page = median(REPS, dirty_trap_page)?;
    progress.step("DIRTY by WP_ASYNC: writes");
    f.dirty_async_page = median(REPS, || dirty_async().map(|(w, _)| w))?;
    progress.step("DIRTY by WP_ASYNC: PAGEMAP_SCAN");
    f.dirty_scan_page = median(REPS, || dirty_async().map(|(_, s)| s))?;
    progress.step("MAP2 alias");
    f.map2_alias = median(REPS, map2_alias)?;
    Ok(f)
}

/// The VM-PUP state: a region of `PAGES + 1` pages and one trap handler
/// that, like the paper's, counts, protects the page it is told to and
/// unprotects the faulting one.
struct Vmpup {
    region: Arc<Region>,
    state: Arc<VmpupState>,
    perm: [usize; PAGES],
    _reg: trap::Registration,
}

struct VmpupState {
    count: AtomicI64,
    please_protect: AtomicUsize,
    please_unprotect: AtomicUsize,
}

impl Vmpup {
    fn new() -> Result<Self> {
        let p = page_size();
        let region = Arc::new(Region::new((PAGES + 1) * p, Prot::READ_WRITE)?);
        for i in 0..PAGES {
            region.write_u8(i * p, 20)?;
        }
        let state = Arc::new(VmpupState {
            count: AtomicI64::new(0),
            please_protect: AtomicUsize::new(NO_PAGE),
            please_unprotect: AtomicUsize::new(0),
        });
        let (r, s) = (region.clone(), state.clone());
        let reg = trap::register(region.as_ptr() as usize, region.len(), move |_| {
            if s.count.fetch_add(1, Relaxed) + 1 >= 0 {
                let protect = s.please_protect.load(Relaxed);
                if protect != NO_PAGE && r.prot1(protect, Prot::NONE).is_err() {
                    return Outcome::NotOurs;
                }
                if r.unprot(s.please_unprotect.load(Relaxed), page_size())
                    .is_err()
                {
                    return Outcome::NotOurs;
                }
            }
            Outcome::Resolved
        })?;
        Ok(Self {
            region,
            state,
            perm: permutation(),
            _reg: reg,
        })
    }

    fn touch(&self, offset: usize) -> Result<()> {
        self.region.write_u8(offset, 10)?;
        Ok(())
    }

    fn protn_trap_unprot(&self) -> Result<f64> {
        let (p, s) = (page_size(), &self.state);
        s.count.store(0, Relaxed);
        let t0 = Instant::now();
        for _ in 0..ROUNDS {
            self.region.protn(0, PAGES * p, Prot::NONE)?;
            for &j in &self.perm {
                s.please_unprotect.store(j * p, Relaxed);
                s.please_protect.store(NO_PAGE, Relaxed);
                self.touch(j * p)?;
            }
        }
        Ok(per_op(t0, ROUNDS * PAGES))
    }

    fn prot1_trap_unprot(&self) -> Result<f64> {
        let (p, s) = (page_size(), &self.state);
        s.count.store(0, Relaxed);
        let last = self.perm[PAGES - 1] * p;
        self.region.protn(0, PAGES * p, Prot::NONE)?;
        self.region.unprot(last, p)?;
        s.please_protect.store(last, Relaxed);
        self.region.write_u8(last, 0)?;
        let t0 = Instant::now();
        for _ in 0..ROUNDS {
            for &j in &self.perm {
                s.please_unprotect.store(j * p, Relaxed);
                self.touch(j * p)?;
                s.please_protect.store(j * p, Relaxed);
            }
        }
        Ok(per_op(t0, ROUNDS * PAGES))
    }

    fn trap_only(&self) -> Result<f64> {
        const TRAPS: i64 = 5000;
        let (p, s) = (page_size(), &self.state);
        self.region.protn(0, PAGES * p, Prot::NONE)?;
        s.please_protect.store(NO_PAGE, Relaxed);
        s.please_unprotect.store(self.perm[0] * p, Relaxed);
        s.count.store(-TRAPS, Relaxed);
        let t0 = Instant::now();
        // The handler only counts until the count reaches zero; the access
        // repeats until then: TRAPS traps, one access.
        self.touch(self.perm[0] * p)?;
        Ok(per_op(t0, TRAPS as usize))
    }
}

/// A fixed pseudo-random order of the pages (the paper touches them in
/// random order so no prefetch or TLB pattern helps).
fn permutation() -> [usize; PAGES] {
    let mut perm = core::array::from_fn(|i| i);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..PAGES).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        perm.swap(i, (x % (i as u64 + 1)) as usize);
    }
    perm
}

/// Touches every page of `region` (writes `value` to its first byte).
fn touch_all(region: &Region, value: u8) -> Result<()> {
    for i in 0..region.pages() {
        region.write_u8(i * page_size(), value)?;
    }
    Ok(())
}

fn uffd_sigbus_wp() -> Result<f64> {
    const N: usize = 20_000;
    let region = Region::new(N * page_size(), Prot::READ_WRITE)?;
    touch_all(&region, 1)?;
    let uffd = Arc::new(Uffd::new(Delivery::Sigbus, Features::WP)?);
    let start = region.as_ptr() as usize;
    uffd.register(start, region.len(), Mode::WP)?;
    uffd.write_protect(start, region.len())?;
    let u = uffd.clone();
    let _reg = trap::register(start, region.len(), move |f| {
        match f.cause == Cause::BusAddress
            && u.write_unprotect(f.page, page_size(), Wake::No).is_ok()
        {
            true => Outcome::Resolved,
            false => Outcome::NotOurs,
        }
    })?;
    let t0 = Instant::now();
    touch_all(&region, 2)?;
    Ok(per_op(t0, N))
}

fn uffd_sigbus_copy() -> Result<f64> {
    const N: usize = 20_000;
    let region = Region::new(N * page_size(), Prot::READ_WRITE)?;
    let uffd = Arc::new(Uffd::new(Delivery::Sigbus, Features::NONE)?);
    let start = region.as_ptr() as usize;
    uffd.register(start, region.len(), Mode::MISSING)?;
    let fill = vec![0u8; page_size()].into_boxed_slice();
    let u = uffd.clone();
    let _reg = trap::register(start, region.len(), move |f| {
        match f.cause == Cause::BusAddress && u.copy(f.page, &fill, Wake::No).is_ok() {
            true => Outcome::Resolved,
            false => Outcome::NotOurs,
        }
    })?;
    let t0 = Instant::now();
    let mut sum = 0u8;
    for i in 0..N {
        sum = sum.wrapping_add(region.read_u8(i * page_size())?);
    }
    let r = per_op(t0, N);
    std::hint::black_box(sum);
    Ok(r)
}

fn uffd_thread_wp() -> Result<f64> {
    const N: usize = 5000;
    let region = Region::new(N * page_size(), Prot::READ_WRITE)?;
    touch_all(&region, 1)?;
    let uffd = Arc::new(Uffd::new(Delivery::Messages, Features::NONE)?);
    let start = region.as_ptr() as usize;
    uffd.register(start, region.len(), Mode::WP)?;
    uffd.write_protect(start, region.len())?;
    let server = Server::spawn(uffd.clone(), |f, u| {
        u.write_unprotect(f.page, page_size(), Wake::Yes)
    })?;
    let t0 = Instant::now();
    touch_all(&region, 2)?;
    let r = per_op(t0, N);
    anyhow::ensure!(
        server.faults() == N as u64,
        "the server saw {} faults, not {N}",
        server.faults()
    );
    Ok(r)
}

fn demand_zero() -> Result<f64> {
    const N: usize = 20_000;
    let region = Region::new(N * page_size(), Prot::READ_WRITE)?;
    let t0 = Instant::now();
    touch_all(&region, 1)?;
    Ok(per_op(t0, N))
}

fn dirty_trap_page() -> Result<f64> {
    const N: usize = 20_000;
    let region = Arc::new(Region::new(N * page_size(), Prot::READ_WRITE)?);
    touch_all(&region, 1)?;
    let mut t = dirty::track(&region, 0, region.len(), Choice::Force(Backend::Trap))?;
    let t0 = Instant::now();
    touch_all(&region, 2)?;
    let r = per_op(t0, N);
    anyhow::ensure!(
        t.collect()?.iter().map(|r| r.count).sum::<usize>() == N,
        "trap DIRTY lost pages"
    );
    Ok(r)
}

/// Writes every 4th page of 256 MiB under WP_ASYNC, then collects: (ns per
/// write, ns per reported page of the scan).
fn dirty_async() -> Result<(f64, f64)> {
    const N: usize = 65_536;
    const STEP: usize = 4;
    let region = Arc::new(Region::new(N * page_size(), Prot::READ_WRITE)?);
    touch_all(&region, 1)?;
    let mut t = dirty::track(&region, 0, region.len(), Choice::Force(Backend::WpAsync))?;
    let written = N / STEP;
    let t0 = Instant::now();
    for i in (0..N).step_by(STEP) {
        region.write_u8(i * page_size(), 2)?;
    }
    let write = per_op(t0, written);
    // A collector reuses its vector: warm it, as reuse would.
    let mut runs = vec![PageRun { first: 0, count: 0 }; written];
    runs.clear();
    let t0 = Instant::now();
    t.collect_into(&mut runs)?;
    let pages: usize = runs.iter().map(|r| r.count).sum();
    let scan = per_op(t0, pages.max(1));
    anyhow::ensure!(
        pages == written,
        "PAGEMAP_SCAN reported {pages} pages, {written} were written"
    );
    Ok((write, scan))
}

fn map2_alias() -> Result<f64> {
    const N: usize = 2000;
    let p = page_size();
    let shm = SharedMemory::new(N * p)?;
    let a = shm.map(Prot::READ_WRITE)?;
    for i in 0..N {
        a.write_u8(i * p, 1)?;
    }
    let b = Region::reserve(N * p)?;
    let t0 = Instant::now();
    for i in 0..N {
        shm.map_into(&b, i * p, i * p, p, Prot::READ)?;
    }
    Ok(per_op(t0, N))
}

fn json(f: &Figures) -> String {
    format!(
        "{{\"page_size\": {}, \"trap\": {:.0}, \"prot1_trap_unprot\": {:.0}, \"protn_trap_unprot\": {:.0}, \
         \"vmpup_rating\": {:.1}, \"uffd_sigbus_wp\": {:.0}, \"uffd_thread_wp\": {:.0}, \"uffd_sigbus_copy\": {:.0}, \
         \"demand_zero\": {:.0}, \"dirty_trap_page\": {:.0}, \"dirty_async_page\": {:.0}, \"dirty_scan_page\": {:.1}, \
         \"map2_alias\": {:.0}}}",
        page_size(),
        f.trap,
        f.prot1_trap_unprot,
        f.protn_trap_unprot,
        f.vmpup_rating,
        f.uffd_sigbus_wp,
        f.uffd_thread_wp,
        f.uffd_sigbus_copy,
        f.demand_zero,
        f.dirty_trap_page,
        f.dirty_async_page,
        f.dirty_scan_page,
        f.map2_alias
    )
}

/// One table row: label, key in the reference, vmprim's figure, the 1991
/// figure if the paper has one.
struct Row {
    label: &'static str,
    key: &'static str,
    ours: f64,
    sun: &'static str,
}

fn print_table(
    f: &Figures,
    raw: Option<&serde_json::Map<String, serde_json::Value>>,
    skipped: bool,
    rounds: usize,
) {
    let m = vmprim_prim::mechanisms();
    println!(
        "vmprim bench prim: {} ({}-byte pages)",
        machine(),
        page_size()
    );
    println!(
        "ns per operation, median of {REPS} runs (3 for the handler thread), the lower of {rounds} \
         alternated round(s) of each side; ratio = vmprim / raw\n"
    );
    let rows = [
        Row {
            label: "trap (SIGSEGV)",
            key: "trap",
            ours: f.trap,
            sun: "760 us",
        },
        Row {
            label: "prot1+trap+unprot",
            key: "prot1_trap_unprot",
            ours: f.prot1_trap_unprot,
            sun: "1238 us",
        },
        Row {
            label: "protN+trap+unprot (N=100)",
            key: "protn_trap_unprot",
            ours: f.protn_trap_unprot,
            sun: "1016 us",
        },
        Row {
            label: "uffd in-thread WP fault",
            key: "uffd_sigbus_wp",
            ours: f.uffd_sigbus_wp,
            sun: "",
        },
        Row {
            label: "uffd handler-thread WP fault",
            key: "uffd_thread_wp",
            ours: f.uffd_thread_wp,
            sun: "",
        },
        Row {
            label: "uffd in-thread missing + COPY",
            key: "uffd_sigbus_copy",
            ours: f.uffd_sigbus_copy,
            sun: "",
        },
        Row {
            label: "kernel demand-zero fault",
            key: "demand_zero",
            ours: f.demand_zero,
            sun: "",
        },
        Row {
            label: "DIRTY trap: write fault",
            key: "dirty_trap_page",
            ours: f.dirty_trap_page,
            sun: "",
        },
        Row {
            label: "DIRTY wp-async: write",
            key: "dirty_async_page",
            ours: f.dirty_async_page,
            sun: "",
        },
        Row {
            label: "DIRTY wp-async: scan per page",
            key: "dirty_scan_page",
            ours: f.dirty_scan_page,
            sun: "",
        },
        Row {
            label: "MAP2 alias (mmap a view page)",
            key: "map2_alias",
            ours: f.map2_alias,
            sun: "",
        },
    ];
    println!(
        "{:<32} {:>10} {:>10} {:>7}   {:>16}",
        "primitive", "vmprim", "raw", "ratio", "Sun 3/60, 1991"
    );
    for r in &rows {
        let rawv = raw
            .and_then(|m| m.get(r.key))
            .and_then(serde_json::Value::as_f64)
            .filter(|v| *v > 0.0);
        print_row(r.label, r.ours, rawv, r.sun, 0);
    }
    let raw_rating = raw
        .and_then(|m| m.get("vmpup_rating"))
        .and_then(serde_json::Value::as_f64);
    print_row(
        "VM-PUP rating (Sun 3/60 = 1.00)",
        f.vmpup_rating,
        raw_rating,
        "1.00",
        1,
    );
    let best = (f.dirty_async_page + f.dirty_scan_page) / f.dirty_trap_page;
    println!("\nDIRTY best backend ({}), write + collect per page / trap backend: {best:.2} (target <= 0.25)", m.dirty_best);
    println!("\nmechanisms on this machine:\n{m}");
    match (raw, skipped) {
        (None, true) => println!("\n(raw reference skipped: --no-reference)"),
        (None, false) => println!(
            "\n(raw reference not found: looked for ../shared/reference/vmpup_ref.c; give --reference FILE)"
        ),
        _ => {}
    }
}

fn print_row(label: &str, ours: f64, raw: Option<f64>, sun: &str, decimals: usize) {
    let fmt = |v: f64| format!("{v:.decimals$}");
    let (rawtxt, ratio) = match raw {
        Some(r) => (fmt(r), format!("{:.2}", ours / r)),
        None => ("-".into(), "-".into()),
    };
    println!(
        "{label:<32} {:>10} {rawtxt:>10} {ratio:>7}   {sun:>16}",
        fmt(ours)
    );
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "Linux {} {}, {cpus} CPUs",
        kernel.trim(),
        std::env::consts::ARCH
    )
}
