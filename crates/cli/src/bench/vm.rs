//! `vmprim bench vm`: the user-space vm layer of `vmprim-vm` (faults,
//! snapshots, chains, pageout) beside the kernel doing the same thing, in
//! the same run.
//!
//! ```text
//! figure              vmprim (HostPmap, plain loads/stores)     kernel side
//! zero_fill_fault     first store to each anonymous page        kernel_demand_zero, uffd_sigbus_copy
//!                                                               (vmpup_ref.c)
//! file_fault          first read of each page of a warm file    kernel_file_fault  (vm_kernel.c)
//! cow_fault           first store to each page after snapshot() kernel_cow_fault   (vm_kernel.c)
//! snapshot_1g_ms      snapshot() of 1 GiB, 1% written since     fork_1g_ms         (vm_kernel.c)
//! fault_depth1, _64   reads after forgetting the translations,  -
//!                     after 1 / 64 snapshots (and the oldest
//!                     snapshot's: fault_depth64_oldest)
//! pageout_fault       faults with a working set of 4x budget,   -
//!                     every word read back and checked
//! ```
//!
//! Figures are nanoseconds per page (milliseconds for `*_ms`; per fault for
//! `pageout_fault`), walking the pages in order. The vm layer maps several
//! pages per fault when faults walk forward, as the kernel does for file
//! pages, so the table also gives the faults each figure took, and an
//! extra figure (not in `--json`): zero fill in a random order, one fault
//! per page.
//!
//! Each figure is the median of several rounds; in every round each vmprim
//! measurement and its kernel peer run back to back, in alternating order,
//! so the host's drift affects both alike. Every vmprim measurement but
//! the snapshot one gets a fresh [`AddressSpace`]; the snapshot one keeps
//! one space with a resident 1 GiB mapping across rounds and takes one
//! snapshot per round. Every measurement checks what it read. The kernel's
//! figures come from two C programs compiled with `cc` in the same
//! invocation: the raw reference `vmpup_ref.c` (see [`reference`](mod@super::reference)) and the
//! peer `peer/vm_kernel.c` (embedded in this binary), run as children. If
//! either cannot be built, the table says so and vmprim's figures still
//! print.

use super::{per_op, reference, Progress};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;
use vmprim_prim::page_size;
use vmprim_vm::{AddressSpace, Config, Mapping, Prot};

/// The peer's source, embedded so that `vmprim` works from any directory.
const PEER_SOURCE: &str = include_str!("../../peer/vm_kernel.c");

/// What page `i` of the file holds in its first 8 bytes, XORed with `i`
/// (little-endian). Must match `FILE_TAG` in `vm_kernel.c`.
const FILE_TAG: u64 = 0x766d_7072_696d_4631;

/// Snapshots taken in the deep-chain measurement.
const DEEP: usize = 64;

/// The address space of the snapshot measurement: each snapshot maps
/// another copy of the range (lazily), and they stay mapped.
const SNAPSHOT_SPACE: usize = 64 << 30;

/// The JSON keys, in output order.
const KEYS: [&str; 14] = [
    "zero_fill_fault",
    "kernel_demand_zero",
    "uffd_sigbus_copy",
    "file_fault",
    "kernel_file_fault",
    "cow_fault",
    "kernel_cow_fault",
    "snapshot_1g_ms",
    "fork_1g_ms",
    "fault_depth1",
    "fault_depth64",
    "fault_depth64_oldest",
    "pageout_fault",
    "pageout_ratio",
];

/// Command-line options of `bench vm`.
#[derive(Debug)]
pub struct Options {
    json: bool,
    quick: bool,
}

impl Options {
    /// Parses the arguments after `bench vm`.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Options {
            json: false,
            quick: false,
        };
        for &a in args {
            match a {
                "--json" => o.json = true,
                "--quick" => o.quick = true,
                _ => bail!("unknown option {a:?} (see vmprim --help)"),
            }
        }
        Ok(o)
    }
}

/// Sizes and counts of one run.
#[derive(Clone, Copy, Debug)]
struct Params {
    /// Rounds; each figure is the median over them.
    rounds: usize,
    /// Rounds that also run the raw reference (the first ones).
    reference_rounds: usize,
    /// Pages of the zero-fill, file and copy-on-write measurements.
    fault_pages: usize,
    /// Pages of the snapshot and fork measurements (1 GiB of 4 KiB pages).
    snapshot_pages: usize,
    /// Pages of the chain-depth measurements.
    depth_pages: usize,
    /// The pageout budget in pages; the working set is four times that.
    budget: usize,
    /// Verified passes over the working set under pageout.
    passes: usize,
    /// Whether to measure the extra random-order zero fill.
    random_order: bool,
}

impl Params {
    fn new(quick: bool) -> Self {
        let gib_pages = (1 << 30) / page_size();
        if quick {
            Params {
                rounds: 3,
                reference_rounds: 1,
                fault_pages: 16384,
                snapshot_pages: gib_pages / 4,
                depth_pages: 8192,
                budget: 1024,
                passes: 2,
                random_order: false,
            }
        } else {
            Params {
                rounds: 5,
                reference_rounds: 5,
                fault_pages: 16384,
                snapshot_pages: gib_pages,
                depth_pages: 16384,
                budget: 4096,
                passes: 3,
                random_order: true,
            }
        }
    }
}

/// Runs the suite and prints the table (or the JSON object).
pub fn run(o: &Options) -> Result<()> {
    let par = Params::new(o.quick);
    let mut reference_src = reference::default_source().ok_or_else(|| {
        "raw reference not found: looked for ../shared/reference/vmpup_ref.c".to_string()
    });
    let peer = Peer::build()?;
    let per_round = 7 + usize::from(par.random_order) + if peer.is_ok() { 3 } else { 0 };
    let ref_steps = if reference_src.is_ok() {
        par.reference_rounds
    } else {
        0
    };
    let mut progress = Progress::new(2 + par.rounds * per_round + ref_steps);

    progress.step("write and warm the file of the file-fault figures");
    let file = TempFile::create(par.fault_pages)?;
    progress.step(&format!(
        "write {} resident for the snapshot figure",
        size_name(par.snapshot_pages)
    ));
    let mut snaps = Snapshots::new(par.snapshot_pages)?;

    let mut s = Samples::default();
    let mut notes = Notes::default();
    for round in 0..par.rounds {
        let tag = round as u64 + 1;
        let what = |w: &str| format!("round {}/{}: {w}", round + 1, par.rounds);
        // Alternate which side goes first, so neither always runs warm.
        let kernel_first = round % 2 == 1;
        if round < par.reference_rounds {
            if let Ok(src) = &reference_src {
                progress.step(&what("raw reference (vmpup_ref.c)"));
                match reference::run(src) {
                    Ok(r) => {
                        for (key, theirs) in [
                            ("kernel_demand_zero", "demand_zero"),
                            ("uffd_sigbus_copy", "uffd_sigbus_copy"),
                        ] {
                            if let Some(v) = r.get(theirs).and_then(Value::as_f64) {
                                if v > 0.0 {
                                    s.push(key, v);
                                }
                            }
                        }
                    }
                    Err(e) => reference_src = Err(format!("raw reference failed: {e:#}")),
                }
            }
        }
        progress.step(&what("zero-fill faults"));
        s.measured("zero_fill_fault", zero_fill(par.fault_pages, None)?);
        if par.random_order {
            progress.step(&what("zero-fill faults in random order (extra)"));
            let order = Rng::new(tag).shuffled(par.fault_pages);
            s.measured(
                "zero_fill_random",
                zero_fill(par.fault_pages, Some(&order))?,
            );
        }

        let mut ours = |progress: &mut Progress, s: &mut Samples| -> Result<()> {
            progress.step(&what("file faults"));
            s.measured("file_fault", file_fault(&file.path, par.fault_pages)?);
            Ok(())
        };
        let mut theirs = |progress: &mut Progress, s: &mut Samples| -> Result<()> {
            if let Ok(peer) = &peer {
                progress.step(&what("kernel file faults (vm_kernel.c)"));
                let path = file
                    .path
                    .to_str()
                    .context("a temporary path that is not UTF-8")?;
                let r = peer.run(&["file", path, &par.fault_pages.to_string()])?;
                s.push("kernel_file_fault", r.value);
                notes.kernel_file_faults = Some((r.faults, r.pages));
            }
            Ok(())
        };
        both(kernel_first, &mut progress, &mut s, &mut ours, &mut theirs)?;

        let mut ours = |progress: &mut Progress, s: &mut Samples| -> Result<()> {
            progress.step(&what("copy-on-write faults after snapshot()"));
            s.measured("cow_fault", cow_fault(par.fault_pages)?);
            Ok(())
        };
        let mut theirs = |progress: &mut Progress, s: &mut Samples| -> Result<()> {
            if let Ok(peer) = &peer {
                progress.step(&what(
                    "kernel copy-on-write faults after fork (vm_kernel.c)",
                ));
                let r = peer.run(&["cow", &par.fault_pages.to_string()])?;
                s.push("kernel_cow_fault", r.value);
            }
            Ok(())
        };
        both(kernel_first, &mut progress, &mut s, &mut ours, &mut theirs)?;

        let mut ours = |progress: &mut Progress, s: &mut Samples| -> Result<()> {
            progress.step(&what("snapshot() after writing 1%"));
            s.push("snapshot_1g_ms", snaps.round(tag)?);
            Ok(())
        };
        let mut theirs = |progress: &mut Progress, s: &mut Samples| -> Result<()> {
            if let Ok(peer) = &peer {
                progress.step(&what("kernel fork (vm_kernel.c)"));
                let r = peer.run(&["fork", &par.snapshot_pages.to_string()])?;
                s.push("fork_1g_ms", r.value);
            }
            Ok(())
        };
        both(kernel_first, &mut progress, &mut s, &mut ours, &mut theirs)?;

        progress.step(&what("read faults after 1 snapshot"));
        let d1 = depth(par.depth_pages, 1, tag)?;
        s.measured("fault_depth1", d1.original);
        progress.step(&what(&format!("read faults after {DEEP} snapshots")));
        let d64 = depth(par.depth_pages, DEEP, tag)?;
        s.measured("fault_depth64", d64.original);
        s.measured("fault_depth64_oldest", d64.oldest);
        notes.depth = Some(d64);

        progress.step(&what("faults under pageout (verified)"));
        let po = pageout(par.budget, par.passes, tag)?;
        s.push("pageout_fault", po.ns_per_fault);
        s.push("pageout_ratio", po.ratio);
        notes.pageout = Some(po);
    }
    progress.finish();
    notes.first_snapshot_ms = snaps.first_ms;
    notes.snapshots = snaps.taken.len();
    drop(snaps);
    drop(file);

    let f = Figures::from(&s);
    if o.json {
        // Say on stderr why figures are null: stdout holds only the object.
        for why in reference_src
            .as_ref()
            .err()
            .into_iter()
            .chain(peer.as_ref().err())
        {
            eprintln!("vmprim bench vm: {why}; its figures are null");
        }
        println!("{}", f.json());
    } else {
        print_table(
            &f,
            &s,
            &par,
            &notes,
            reference_src.err(),
            peer.err(),
            o.quick,
        );
    }
    Ok(())
}

/// A step of a round: vmprim's or the kernel's measurement of one figure.
type Step<'a> = dyn FnMut(&mut Progress, &mut Samples) -> Result<()> + 'a;

/// Runs vmprim's step and the kernel's, in the order the round asks.
fn both(
    kernel_first: bool,
    progress: &mut Progress,
    s: &mut Samples,
    ours: &mut Step<'_>,
    theirs: &mut Step<'_>,
) -> Result<()> {
    if kernel_first {
        theirs(progress, s)?;
        ours(progress, s)
    } else {
        ours(progress, s)?;
        theirs(progress, s)
    }
}

/// Every round's value of every figure, and the vm layer's fault counts
/// behind vmprim's.
#[derive(Debug, Default)]
struct Samples {
    values: Vec<(&'static str, f64)>,
    /// The last round's vm faults and pages of each vmprim figure.
    faults: Vec<(&'static str, u64, usize)>,
}

impl Samples {
    fn push(&mut self, key: &'static str, v: f64) {
        self.values.push((key, v));
    }

    /// Records a vmprim measurement: its time per page, and its faults.
    fn measured(&mut self, key: &'static str, m: Measured) {
        self.push(key, m.ns);
        self.faults.retain(|(k, ..)| *k != key);
        self.faults.push((key, m.faults, m.pages));
    }

    /// "N vm faults for M pages" for a vmprim figure.
    fn fault_note(&self, key: &str) -> String {
        self.faults
            .iter()
            .find(|(k, ..)| *k == key)
            .map_or(String::new(), |(_, f, p)| {
                format!("{f} vm faults for {p} pages")
            })
    }

    /// The median of the rounds' values of `key`, if any.
    fn median(&self, key: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .values
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|&(_, v)| v)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// Every round's value of `key`, in round order.
    fn all(&self, key: &str) -> Vec<f64> {
        self.values
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|&(_, v)| v)
            .collect()
    }

    /// How many rounds measured `key`.
    fn count(&self, key: &str) -> usize {
        self.values.iter().filter(|(k, _)| *k == key).count()
    }
}

/// The medians, by key; `None`: not measured.
#[derive(Debug)]
struct Figures {
    values: Vec<(&'static str, Option<f64>)>,
    /// Rounds that measured the reference's figures.
    reference_rounds: usize,
}

impl Figures {
    fn from(s: &Samples) -> Self {
        Figures {
            values: KEYS.iter().map(|&k| (k, s.median(k))).collect(),
            reference_rounds: s.count("kernel_demand_zero"),
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|x| x.1)
    }

    /// One flat JSON object, in [`KEYS`] order; `null` for a figure not
    /// measured.
    fn json(&self) -> String {
        let fields: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Some(v) if k.ends_with("_ms") => format!("{v:.3}"),
                    Some(v) => format!("{v:.1}"),
                    None => "null".into(),
                };
                format!("{}: {v}", Value::String((*k).into()))
            })
            .collect();
        format!("{{{}}}", fields.join(", "))
    }
}

/// What the table says beside the figures.
#[derive(Debug, Default)]
struct Notes {
    /// The kernel's minor faults and pages in its file measurement.
    kernel_file_faults: Option<(u64, u64)>,
    /// The last deep-chain measurement.
    depth: Option<Depth>,
    /// The last pageout measurement.
    pageout: Option<Pageout>,
    /// The first snapshot of the fully written range, in milliseconds.
    first_snapshot_ms: f64,
    /// Snapshots of the range taken in all.
    snapshots: usize,
}

/// A vmprim measurement over pages: nanoseconds per page, and the faults
/// the vm layer counted (fewer than the pages where it maps several pages
/// per fault).
#[derive(Clone, Copy, Debug)]
struct Measured {
    ns: f64,
    faults: u64,
    pages: usize,
}

/// Plain loads and stores at offsets of a space on the real MMU: what a
/// program using the space does. A missing or too weak translation faults,
/// and the vm layer resolves it on this thread in its `SIGSEGV` handler.
struct Mem<'a> {
    base: *mut u8,
    len: usize,
    _space: PhantomData<&'a AddressSpace>,
}

impl<'a> Mem<'a> {
    fn of(space: &'a AddressSpace) -> Result<Self> {
        Ok(Mem {
            base: space
                .host_base()
                .context("the address space has no host addresses")?,
            len: space.len(),
            _space: PhantomData,
        })
    }

    fn check(&self, off: usize) {
        assert!(
            off.is_multiple_of(8) && off.checked_add(8).is_some_and(|e| e <= self.len),
            "offset {off:#x} outside the space or unaligned"
        );
    }

    /// Stores `v` at byte `off`, which the caller mapped writable.
    fn store(&self, off: usize, v: u64) {
        self.check(off);
        // SAFETY: `off..off + 8` is 8-aligned and inside the space's host
        // range (checked above), which stays reserved while `self` borrows
        // the space. No Rust reference points into that range (the vm
        // layer reaches frames through its own view), so a volatile store
        // aliases nothing. Callers store only where they mapped read-write:
        // a missing or read-only translation faults, and the vm layer's
        // handler resolves the fault on this thread before the store is
        // retried.
        unsafe { self.base.add(off).cast::<u64>().write_volatile(v) }
    }

    /// Loads the word at byte `off`, which the caller mapped readable.
    fn load(&self, off: usize) -> u64 {
        self.check(off);
        // SAFETY: as in `store`: in range, aligned, aliased by no Rust
        // reference, and mapped readable by the caller, so a fault is
        // resolved by the vm layer before the load is retried.
        unsafe { self.base.add(off).cast::<u64>().read_volatile() }
    }
}

/// xorshift64*: the benchmark's seeded choices of pages.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `k` distinct pages of `0..n`, in random order.
    fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + self.below(n - i);
            v.swap(i, j);
        }
        v.truncate(k);
        v
    }

    /// `0..n` in random order.
    fn shuffled(&mut self, n: usize) -> Vec<usize> {
        self.pick(n, n)
    }
}

/// One percent of `pages`, at least one page.
fn one_percent(pages: usize) -> usize {
    (pages / 100).max(1)
}

/// A fresh space on the real MMU of `pages` pages, with `config`.
fn space(pages: usize, config: Config) -> Result<AddressSpace> {
    AddressSpace::new(pages * page_size(), config)
        .with_context(|| format!("create an address space of {pages} pages"))
}

/// `zero_fill_fault`: the first store to each page of a fresh anonymous
/// mapping, in order, or in `order` (the extra random-order figure).
fn zero_fill(pages: usize, order: Option<&[usize]>) -> Result<Measured> {
    let p = page_size();
    let space = space(pages, Config::default())?;
    let at = space
        .map(Mapping::anonymous(pages * p))
        .context("map anonymous memory")?;
    let mem = Mem::of(&space)?;
    let in_order: Vec<usize>;
    let order = match order {
        Some(o) => o,
        None => {
            in_order = (0..pages).collect();
            &in_order
        }
    };
    let before = space.stats();
    let t0 = Instant::now();
    for &i in order {
        mem.store(at + i * p, i as u64 + 1);
    }
    let ns = per_op(t0, pages);
    let after = space.stats();
    ensure!(
        after.zero_fills - before.zero_fills == pages as u64,
        "zero fill: {} zero fills for {pages} pages",
        after.zero_fills - before.zero_fills
    );
    for i in 0..pages {
        let v = mem.load(at + i * p);
        ensure!(v == i as u64 + 1, "zero fill: page {i} reads {v:#x}");
    }
    Ok(Measured {
        ns,
        faults: after.faults - before.faults,
        pages,
    })
}

/// The file of the file-fault figures: page `i` starts with `i ^ FILE_TAG`.
/// Deleted on drop.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Writes the file and reads it back once, so its pages are in the
    /// page cache for both sides.
    fn create(pages: usize) -> Result<Self> {
        let p = page_size();
        let path = temp_path("vm-file");
        let me = TempFile { path };
        let f = File::create(&me.path).with_context(|| format!("create {}", me.path.display()))?;
        let mut w = BufWriter::new(f);
        let mut page = vec![0u8; p];
        for i in 0..pages {
            page[..8].copy_from_slice(&(i as u64 ^ FILE_TAG).to_le_bytes());
            w.write_all(&page)
                .with_context(|| format!("write {}", me.path.display()))?;
        }
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("write {}", me.path.display()))?;
        let mut all = Vec::with_capacity(pages * p);
        File::open(&me.path)
            .and_then(|mut f| f.read_to_end(&mut all))
            .with_context(|| format!("read {}", me.path.display()))?;
        ensure!(all.len() == pages * p, "{} is short", me.path.display());
        Ok(me)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `file_fault`: the first read of each page of a shared, read-only
/// mapping of the warm file. Nanoseconds per page.
fn file_fault(path: &Path, pages: usize) -> Result<Measured> {
    let p = page_size();
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let space = space(pages, Config::default())?;
    let object = space
        .create_file(file)
        .with_context(|| format!("create a file object of {}", path.display()))?;
    let at = space
        .map(Mapping::object(&object, 0, pages * p).prot(Prot::READ))
        .context("map the file object")?;
    let mem = Mem::of(&space)?;
    let before = space.stats();
    let mut bad = 0u64;
    let t0 = Instant::now();
    for i in 0..pages {
        bad |= mem.load(at + i * p) ^ (i as u64 ^ FILE_TAG);
    }
    let ns = per_op(t0, pages);
    if bad != 0 {
        for i in 0..pages {
            let v = mem.load(at + i * p);
            ensure!(
                v == i as u64 ^ FILE_TAG,
                "file fault: page {i} reads {v:#x}, the file holds {:#x}",
                i as u64 ^ FILE_TAG
            );
        }
    }
    let after = space.stats();
    let served = (after.page_ins - before.page_ins) + (after.direct_pages - before.direct_pages);
    ensure!(
        served == pages as u64,
        "file fault: {served} pages paged in or mapped from the file for {pages} pages"
    );
    Ok(Measured {
        ns,
        faults: after.faults - before.faults,
        pages,
    })
}

/// `cow_fault`: every page of an anonymous mapping written, a snapshot,
/// then the first store to each page of the original (each pushes the old
/// page into the copy object). Nanoseconds per page; the snapshot is then
/// checked to hold the old contents.
fn cow_fault(pages: usize) -> Result<Measured> {
    let p = page_size();
    let space = space(2 * pages, Config::default())?;
    let at = space
        .map(Mapping::anonymous(pages * p))
        .context("map anonymous memory")?;
    let mem = Mem::of(&space)?;
    for i in 0..pages {
        mem.store(at + i * p, 2 * i as u64 + 1);
    }
    let snap = space.snapshot(at, pages * p).context("snapshot")?;
    let before = space.stats();
    let t0 = Instant::now();
    for i in 0..pages {
        mem.store(at + i * p, 2 * i as u64 + 2);
    }
    let ns = per_op(t0, pages);
    let after = space.stats();
    ensure!(
        after.pushes - before.pushes == pages as u64,
        "copy on write: {} pushes for {pages} pages",
        after.pushes - before.pushes
    );
    for i in 0..pages {
        let (old, new) = (mem.load(snap + i * p), mem.load(at + i * p));
        ensure!(
            old == 2 * i as u64 + 1 && new == 2 * i as u64 + 2,
            "copy on write: page {i} reads {new:#x}, its snapshot {old:#x}"
        );
    }
    Ok(Measured {
        ns,
        faults: after.faults - before.faults,
        pages,
    })
}

/// The snapshot measurement's state: one space with a resident range, and
/// the snapshots taken so far (kept mapped).
struct Snapshots {
    space: AddressSpace,
    at: usize,
    pages: usize,
    /// What each page of the original holds.
    contents: Vec<u64>,
    rng: Rng,
    taken: Vec<usize>,
    /// The first snapshot, of the fully written range: milliseconds.
    first_ms: f64,
}

impl Snapshots {
    /// Maps `pages` pages, writes every one, and takes the first snapshot.
    fn new(pages: usize) -> Result<Self> {
        let p = page_size();
        let space = AddressSpace::new(SNAPSHOT_SPACE.max(pages * p * 16), Config::default())
            .context("create the snapshot measurement's address space")?;
        let at = space
            .map(Mapping::anonymous(pages * p))
            .context("map anonymous memory")?;
        let contents: Vec<u64> = (0..pages as u64).map(|i| i << 8).collect();
        {
            let mem = Mem::of(&space)?;
            for (i, &v) in contents.iter().enumerate() {
                mem.store(at + i * p, v);
            }
        }
        let t0 = Instant::now();
        let first = space.snapshot(at, pages * p).context("snapshot")?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Snapshots {
            space,
            at,
            pages,
            contents,
            rng: Rng::new(0x5eed),
            taken: vec![first],
            first_ms,
        })
    }

    /// Writes 1% of the pages (random ones), then times one snapshot:
    /// milliseconds. The new snapshot is checked to hold what was written.
    fn round(&mut self, tag: u64) -> Result<f64> {
        let p = page_size();
        let mem = Mem::of(&self.space)?;
        let written = self.rng.pick(self.pages, one_percent(self.pages));
        for &i in &written {
            self.contents[i] = (i as u64) << 8 | tag;
            mem.store(self.at + i * p, self.contents[i]);
        }
        let t0 = Instant::now();
        let snap = self
            .space
            .snapshot(self.at, self.pages * p)
            .context("snapshot")?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        self.taken.push(snap);
        for &i in &written {
            let v = mem.load(snap + i * p);
            ensure!(
                v == self.contents[i],
                "snapshot: page {i} of snapshot {} reads {v:#x}, not {:#x}",
                self.taken.len(),
                self.contents[i]
            );
        }
        Ok(ms)
    }
}

/// One chain-depth measurement.
#[derive(Clone, Debug)]
struct Depth {
    /// Reading every page of the original mapping.
    original: Measured,
    /// Reading every page of the oldest snapshot's mapping.
    oldest: Measured,
    /// Objects in the oldest snapshot's chain.
    oldest_chain: usize,
    /// The space's longest chain (`Stats::max_depth`).
    max_depth: usize,
}

/// `fault_depth<k>`: a resident mapping, `k` rounds of writing 1% of it
/// and snapshotting it, then the translations of the original forgotten
/// and every page read; then every page of the oldest snapshot read.
/// Every value read is checked.
fn depth(pages: usize, k: usize, tag: u64) -> Result<Depth> {
    let p = page_size();
    let space = space((k + 1) * pages, Config::default())?;
    let at = space
        .map(Mapping::anonymous(pages * p))
        .context("map anonymous memory")?;
    let mem = Mem::of(&space)?;
    let mut contents: Vec<u64> = (0..pages as u64).map(|i| i << 16 | tag).collect();
    for (i, &v) in contents.iter().enumerate() {
        mem.store(at + i * p, v);
    }
    let mut rng = Rng::new(tag ^ k as u64);
    let mut oldest = None;
    for r in 0..k {
        for i in rng.pick(pages, one_percent(pages)) {
            contents[i] = (i as u64) << 16 | (r as u64 + 1) << 8 | tag;
            mem.store(at + i * p, contents[i]);
        }
        let snap = space.snapshot(at, pages * p).context("snapshot")?;
        oldest.get_or_insert((snap, contents.clone()));
    }
    let (oldest_at, oldest_contents) = oldest.context("no snapshot taken")?;
    space
        .forget_translations(at, pages * p)
        .context("forget translations")?;
    let before = space.stats().faults;
    let t0 = Instant::now();
    let bad = read_all(&mem, at, &contents);
    let original = Measured {
        ns: per_op(t0, pages),
        faults: space.stats().faults - before,
        pages,
    };
    check_read(bad, &mem, at, &contents, "the original")?;

    let before = space.stats().faults;
    let t0 = Instant::now();
    let bad = read_all(&mem, oldest_at, &oldest_contents);
    let oldest = Measured {
        ns: per_op(t0, pages),
        faults: space.stats().faults - before,
        pages,
    };
    check_read(
        bad,
        &mem,
        oldest_at,
        &oldest_contents,
        "the oldest snapshot",
    )?;
    Ok(Depth {
        original,
        oldest,
        oldest_chain: space.chain(oldest_at).context("chain")?.len(),
        max_depth: space.stats().max_depth,
    })
}

/// Loads the first word of every page of the mapping at `at`; returns the
/// OR of their differences from `contents` (0: all as expected).
fn read_all(mem: &Mem<'_>, at: usize, contents: &[u64]) -> u64 {
    let p = page_size();
    contents
        .iter()
        .enumerate()
        .fold(0, |bad, (i, &want)| bad | (mem.load(at + i * p) ^ want))
}

/// Fails, naming the first wrong page, if [`read_all`] found one.
fn check_read(bad: u64, mem: &Mem<'_>, at: usize, contents: &[u64], what: &str) -> Result<()> {
    if bad == 0 {
        return Ok(());
    }
    let p = page_size();
    for (i, &want) in contents.iter().enumerate() {
        let v = mem.load(at + i * p);
        ensure!(
            v == want,
            "depth: page {i} of {what} reads {v:#x}, not {want:#x}"
        );
    }
    bail!("depth: {what} read wrong, then right")
}

/// One pageout measurement.
#[derive(Clone, Debug)]
struct Pageout {
    ns_per_fault: f64,
    /// Working set over budget, when every word read back right.
    ratio: f64,
    working_set: usize,
    budget: usize,
    passes: usize,
    faults: u64,
    swap_ins: u64,
    pageouts: u64,
}

/// The word `w` of page `i` in round `tag`.
fn pattern(i: usize, w: usize, tag: u64) -> u64 {
    ((i as u64) << 32 | tag) ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `pageout_fault`: a working set of four times the budget, every word of
/// every page written with [`pattern`], then `passes` passes reading every
/// word of every page in a shuffled order, each checked. Nanoseconds per
/// fault counted during the passes.
fn pageout(budget: usize, passes: usize, tag: u64) -> Result<Pageout> {
    let p = page_size();
    let words = p / 8;
    let ws = 4 * budget;
    let space = space(ws, Config::default().budget(budget))?;
    let at = space
        .map(Mapping::anonymous(ws * p))
        .context("map anonymous memory")?;
    let mem = Mem::of(&space)?;
    for i in 0..ws {
        for w in 0..words {
            mem.store(at + i * p + w * 8, pattern(i, w, tag));
        }
    }
    let mut rng = Rng::new(tag.wrapping_add(0x0b0e));
    let orders: Vec<Vec<usize>> = (0..passes).map(|_| rng.shuffled(ws)).collect();
    let before = space.stats();
    let t0 = Instant::now();
    for (pass, order) in orders.iter().enumerate() {
        for &i in order {
            for w in 0..words {
                let (v, want) = (mem.load(at + i * p + w * 8), pattern(i, w, tag));
                if v != want {
                    bail!(
                        "pageout: page {i} word {w} reads {v:#018x}, not {want:#018x} \
                         (pass {}, budget {budget} pages, working set {ws} pages)",
                        pass + 1
                    );
                }
            }
        }
    }
    let elapsed = t0.elapsed();
    let after = space.stats();
    let faults = after.faults - before.faults;
    ensure!(faults > 0, "pageout: no fault in {passes} passes");
    ensure!(
        after.swap_ins > before.swap_ins,
        "pageout: nothing was read back from swap"
    );
    ensure!(
        after.resident_pages <= budget,
        "pageout: {} pages resident, budget {budget}",
        after.resident_pages
    );
    Ok(Pageout {
        ns_per_fault: elapsed.as_nanos() as f64 / faults as f64,
        ratio: ws as f64 / after.budget_pages as f64,
        working_set: ws,
        budget: after.budget_pages,
        passes,
        faults,
        swap_ins: after.swap_ins - before.swap_ins,
        pageouts: after.pageouts - before.pageouts,
    })
}

/// What the peer printed.
#[derive(Clone, Copy, Debug)]
struct PeerOut {
    /// Nanoseconds per page, or milliseconds for `fork`.
    value: f64,
    /// The kernel's minor faults in the timed part.
    faults: u64,
    /// Pages measured.
    pages: u64,
}

/// The built peer `vm_kernel.c`: an executable in the temporary directory,
/// deleted on drop.
#[derive(Debug)]
struct Peer {
    exe: PathBuf,
}

impl Peer {
    /// Builds the peer; `Ok(Err(why))` when `cc` is missing or fails (the
    /// benchmark then says so), `Err` on any other failure.
    fn build() -> Result<Result<Peer, String>> {
        let exe = temp_path("vm_kernel");
        let src = exe.with_extension("c");
        std::fs::write(&src, PEER_SOURCE).with_context(|| format!("write {}", src.display()))?;
        let out = Command::new("cc")
            .arg("-O2")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output();
        let _ = std::fs::remove_file(&src);
        Ok(match out {
            Ok(out) if out.status.success() => Ok(Peer { exe }),
            Ok(out) => Err(format!(
                "no kernel peer: cc cannot build peer/vm_kernel.c ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
                "no kernel peer: cannot run the C compiler `cc` ({e}); install build-essential"
            )),
            Err(e) => return Err(e).context("run cc"),
        })
    }

    /// Runs the peer with `args` and parses its JSON object.
    fn run(&self, args: &[&str]) -> Result<PeerOut> {
        let what = format!("the kernel peer (vm_kernel {})", args.join(" "));
        let out = Command::new(&self.exe)
            .args(args)
            .output()
            .with_context(|| format!("run {what} at {}", self.exe.display()))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parse the JSON of {what}"))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .with_context(|| format!("{what}: no number {k:?}"))
        };
        Ok(PeerOut {
            value: num("value")?,
            faults: num("faults")? as u64,
            pages: num("pages")? as u64,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.exe);
    }
}

/// A fresh path in the temporary directory, unique across processes (the
/// pid) and within one (a counter).
fn temp_path(stem: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vmprim-{stem}-{}-{n}", std::process::id()))
}

/// "1 GiB", "256 MiB": the size of `pages` pages.
fn size_name(pages: usize) -> String {
    let bytes = pages * page_size();
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// One line of the table: a vmprim figure beside what it is compared with.
struct Row<'a> {
    key: &'a str,
    ours: Option<f64>,
    /// The figure compared with: its key and value.
    against: Option<(&'a str, Option<f64>)>,
    note: String,
}

/// Prints the table of figures, the notes and the targets.
fn print_table(
    f: &Figures,
    s: &Samples,
    par: &Params,
    notes: &Notes,
    reference_missing: Option<String>,
    peer_missing: Option<String>,
    quick: bool,
) {
    let size = size_name(par.snapshot_pages);
    println!(
        "vmprim bench vm: {} ({}-byte pages){}",
        machine(),
        page_size(),
        if quick { ", --quick" } else { "" }
    );
    println!(
        "medians of {} rounds (the raw reference: {} round(s)); vmprim and the kernel alternate \
         in each round;\nns per page unless the name ends in _ms; ratio = vmprim / the figure \
         beside it; vm faults: the last round's\n",
        par.rounds, f.reference_rounds
    );
    let g = |k: &str| f.get(k);
    let kernel_file = match notes.kernel_file_faults {
        Some((faults, pages)) => {
            format!("; kernel: MAP_PRIVATE, {faults} faults for {pages} pages (its fault-around)")
        }
        None => String::new(),
    };
    let (chain, oldest_faults) = match &notes.depth {
        Some(d) => (
            format!(
                "; chain of {} objects (max_depth {})",
                d.oldest_chain, d.max_depth
            ),
            s.fault_note("fault_depth64_oldest"),
        ),
        None => (String::new(), String::new()),
    };
    let pageout = notes.pageout.as_ref().map_or(String::new(), |po| {
        format!(
            "{} vm faults, {} swap-ins, {} pageouts in {} passes (ns per fault)",
            po.faults, po.swap_ins, po.pageouts, po.passes
        )
    });
    let rows = [
        Row {
            key: "zero_fill_fault",
            ours: g("zero_fill_fault"),
            against: Some(("kernel_demand_zero", g("kernel_demand_zero"))),
            note: s.fault_note("zero_fill_fault"),
        },
        Row {
            key: "zero_fill_fault",
            ours: g("zero_fill_fault"),
            against: Some(("uffd_sigbus_copy", g("uffd_sigbus_copy"))),
            note: "uffd missing fault + UFFDIO_COPY in the faulting thread".into(),
        },
        Row {
            key: if par.random_order {
                "  random order"
            } else {
                ""
            },
            ours: s.median("zero_fill_random"),
            against: Some(("kernel_demand_zero", g("kernel_demand_zero"))),
            note: format!(
                "{} (extra, not in --json)",
                s.fault_note("zero_fill_random")
            ),
        },
        Row {
            key: "file_fault",
            ours: g("file_fault"),
            against: Some(("kernel_file_fault", g("kernel_file_fault"))),
            note: format!("{}{kernel_file}", s.fault_note("file_fault")),
        },
        Row {
            key: "cow_fault",
            ours: g("cow_fault"),
            against: Some(("kernel_cow_fault", g("kernel_cow_fault"))),
            note: format!(
                "{}; kernel: first write after fork",
                s.fault_note("cow_fault")
            ),
        },
        Row {
            key: "snapshot_1g_ms",
            ours: g("snapshot_1g_ms"),
            against: Some(("fork_1g_ms", g("fork_1g_ms"))),
            note: format!(
                "{size} resident, 1% written since the last snapshot; rounds: {} ms",
                s.all("snapshot_1g_ms")
                    .iter()
                    .map(|v| format!("{v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Row {
            key: "fault_depth1",
            ours: g("fault_depth1"),
            against: None,
            note: format!(
                "{}; read after forget_translations",
                s.fault_note("fault_depth1")
            ),
        },
        Row {
            key: "fault_depth64",
            ours: g("fault_depth64"),
            against: Some(("fault_depth1", g("fault_depth1"))),
            note: s.fault_note("fault_depth64"),
        },
        Row {
            key: "fault_depth64_oldest",
            ours: g("fault_depth64_oldest"),
            against: Some(("fault_depth1", g("fault_depth1"))),
            note: format!("{oldest_faults}{chain}"),
        },
        Row {
            key: "pageout_fault",
            ours: g("pageout_fault"),
            against: None,
            note: pageout,
        },
    ];
    println!(
        "{:<22} {:>9}  {:<19} {:>9} {:>6}  note",
        "figure", "vmprim", "beside", "", "ratio"
    );
    let show = |v: Option<f64>, key: &str| match v {
        Some(v) if key.ends_with("_ms") => format!("{v:.2}"),
        Some(v) => format!("{v:.0}"),
        None if key.is_empty() => String::new(),
        None => "-".into(),
    };
    for r in rows.iter().filter(|r| !r.key.is_empty()) {
        let (name, theirs) = r.against.unwrap_or(("", None));
        let ratio = match (r.ours, theirs) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<22} {:>9}  {:<19} {:>9} {:>6}  {}",
            r.key,
            show(r.ours, r.key),
            name,
            show(theirs, name),
            ratio,
            r.note
        );
    }
    let ratio = g("pageout_ratio");
    match &notes.pageout {
        Some(po) => println!(
            "{:<22} {:>9}  working set {} pages / budget {} pages; every word of every page \
             read back right",
            "pageout_ratio",
            ratio.map_or("-".into(), |v| format!("{v:.1}")),
            po.working_set,
            po.budget
        ),
        None => println!("{:<22} {:>9}", "pageout_ratio", "-"),
    }
    println!(
        "\nthe first snapshot of the {size} range, every page written since: {:.2} ms; \
         {} snapshots of it taken",
        notes.first_snapshot_ms, notes.snapshots
    );

    println!("\ntargets:");
    let target = |what: &str, ours: &str, theirs: &str, factor: f64| match (g(ours), g(theirs)) {
        (Some(a), Some(b)) => verdict(
            what,
            a <= factor * b,
            format!(
                "{} vs {} (ratio {:.2})",
                show(Some(a), ours),
                show(Some(b), theirs),
                a / b
            ),
        ),
        _ => println!("  [ -- ] {what}: not measured"),
    };
    target(
        "zero_fill_fault <= 1.25 x uffd_sigbus_copy",
        "zero_fill_fault",
        "uffd_sigbus_copy",
        1.25,
    );
    target(
        "zero_fill_fault <= 3 x kernel_demand_zero",
        "zero_fill_fault",
        "kernel_demand_zero",
        3.0,
    );
    target(
        "file_fault <= 3 x kernel_file_fault",
        "file_fault",
        "kernel_file_fault",
        3.0,
    );
    target(
        "cow_fault <= 3 x kernel_cow_fault",
        "cow_fault",
        "kernel_cow_fault",
        3.0,
    );
    target(
        &format!("snapshot_1g_ms <= 0.25 x fork_1g_ms ({size})"),
        "snapshot_1g_ms",
        "fork_1g_ms",
        0.25,
    );
    target(
        "fault_depth64 <= 1.2 x fault_depth1",
        "fault_depth64",
        "fault_depth1",
        1.2,
    );
    match ratio {
        Some(r) => verdict(
            "pageout_ratio >= 4 with contents verified",
            r >= 4.0,
            format!("{r:.1}, every word verified"),
        ),
        None => println!("  [ -- ] pageout_ratio >= 4 with contents verified: not measured"),
    }
    for why in reference_missing.iter().chain(&peer_missing) {
        println!("\n({why}; the figures that need it are not measured)");
    }
}

fn verdict(what: &str, ok: bool, detail: String) {
    println!("  [{}] {what}: {detail}", if ok { " ok " } else { "MISS" });
}

/// The kernel, architecture and CPU count, for the table's heading.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "Linux {} {}, {cpus} CPUs",
        kernel.trim(),
        std::env::consts::ARCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_key_in_order_and_null_when_not_measured() {
        let mut s = Samples::default();
        for v in [3.0, 1.0, 2.0] {
            s.push("zero_fill_fault", v);
        }
        s.push("snapshot_1g_ms", 1.23456);
        s.push("pageout_ratio", 4.0);
        let f = Figures::from(&s);
        let v: Value = serde_json::from_str(&f.json()).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), KEYS.len());
        let text = f.json();
        let mut last = 0;
        for k in KEYS {
            let at = text.find(&format!("\"{k}\":")).unwrap();
            assert!(at >= last, "{k} out of order");
            last = at;
        }
        assert_eq!(m["zero_fill_fault"], 2.0);
        assert_eq!(m["snapshot_1g_ms"], 1.235);
        assert_eq!(m["pageout_ratio"], 4.0);
        assert!(m["fork_1g_ms"].is_null());
    }

    #[test]
    fn pick_gives_distinct_pages_in_range() {
        let mut rng = Rng::new(7);
        let mut v = rng.pick(1000, 100);
        assert_eq!(v.len(), 100);
        assert!(v.iter().all(|&i| i < 1000));
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 100);
        let mut all = rng.shuffled(50);
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn patterns_differ_by_page_word_and_round() {
        assert_ne!(pattern(1, 0, 1), pattern(2, 0, 1));
        assert_ne!(pattern(1, 0, 1), pattern(1, 1, 1));
        assert_ne!(pattern(1, 0, 1), pattern(1, 0, 2));
    }

    #[test]
    fn options_reject_unknown_flags() {
        let o = Options::parse(&["--json", "--quick"]).unwrap();
        assert!(o.json && o.quick);
        assert!(Options::parse(&["--rounds"]).is_err());
    }
}
