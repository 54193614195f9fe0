//! The VM read barrier under a mutator that keeps touching the pages the
//! collector is working on: [`VmConcurrent`] (a collector thread scanning
//! to-space while the mutator traps on it) and [`VmBarrier`], alone and
//! with several heaps on several threads at once (the fault handler
//! registry is process-wide), and heaps dropped in the middle of a
//! collection.
//!
//! Each test runs in its own child process (see `common`).

mod common;

use vmprim_gc::{
    workload, Collector, Config, GenDirty, Heap, Local, Shape, Stats, VmBarrier, VmConcurrent,
};
use vmprim_prim::dirty::{Backend, Choice};

/// xorshift64*: the tests' random numbers, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A cell of the live table: `link` (another cell), `young` (a recent
/// object); its index, its value.
const CELL: Shape = Shape::new(2, 2);
/// A young object: a number.
const YOUNG: Shape = Shape::new(0, 1);
/// Garbage: 128 bytes.
const GARBAGE: Shape = Shape::new(1, 14);

/// How big the hammering is.
#[derive(Clone, Copy, Debug)]
struct Hammer {
    seed: u64,
    cells: usize,
    hot: usize,
    iterations: usize,
    heap_bytes: usize,
}

impl Hammer {
    /// 20 000 cells (about 1.3 MB live with their young objects) in 4 MiB
    /// semispaces, 8 hot cells, 150 000 iterations (about 80 MB of
    /// garbage: a dozen collections or more).
    fn big(seed: u64) -> Self {
        Self {
            seed,
            cells: 20_000,
            hot: 8,
            iterations: 150_000,
            heap_bytes: 4 << 20,
        }
    }

    /// A quarter of that, for several heaps at once.
    fn medium(seed: u64) -> Self {
        Self {
            cells: 8_000,
            iterations: 60_000,
            heap_bytes: 2 << 20,
            ..Self::big(seed)
        }
    }

    fn link(&self, k: usize) -> usize {
        (k * 7 + 1) % self.cells
    }
}

/// What the mutator knows of the table, in plain Rust.
struct Shadow {
    value: Vec<u64>,
    young: Vec<Option<u64>>,
}

/// Checks cell `c` is cell `k` as `s` has it, through its link and young
/// object too (`tmp` is scratch).
fn check_cell<C: Collector>(
    h: &mut Heap<C>,
    p: &Hammer,
    s: &Shadow,
    c: Local,
    k: usize,
    tmp: Local,
) {
    assert_eq!(h.scalar(c, 0), k as u64, "{}: cell index", C::NAME);
    assert_eq!(h.scalar(c, 1), s.value[k], "{}: cell {k} value", C::NAME);
    h.get_to(c, 0, tmp);
    assert_eq!(
        h.scalar(tmp, 0),
        p.link(k) as u64,
        "{}: cell {k} link",
        C::NAME
    );
    h.get_to(c, 1, tmp);
    match s.young[k] {
        None => assert!(h.is_null(tmp), "{}: cell {k} young", C::NAME),
        Some(v) => assert_eq!(h.scalar(tmp, 0), v, "{}: cell {k} young", C::NAME),
    }
}

/// Builds the table, then hammers it: each iteration reads and writes the
/// hot cells (held in locals across every collection), reads and writes a
/// random cell, checks it, its link and its young object, sometimes gives
/// it a new young object, and allocates garbage. Ends by checking every
/// cell and the census. Returns the counters.
fn hammer<C: Collector>(cfg: &Config, p: &Hammer) -> Stats {
    let mut h = Heap::<C>::new(cfg).expect("heap");
    let mut rng = Rng(p.seed | 1);
    let table = h.alloc(Shape::new(p.cells as u32, 0));
    let c = h.null();
    for k in 0..p.cells {
        h.alloc_to(CELL, c);
        h.set_scalar(c, 0, k as u64);
        h.set(table, k as u32, c);
    }
    let tmp = h.null();
    for k in 0..p.cells {
        h.get_to(table, k as u32, c);
        h.get_to(table, p.link(k) as u32, tmp);
        h.set(c, 0, tmp);
    }
    let mut s = Shadow {
        value: vec![0; p.cells],
        young: vec![None; p.cells],
    };
    let hot_ids: Vec<usize> = (0..p.hot).map(|i| (i * 997) % p.cells).collect();
    let hot: Vec<Local> = hot_ids.iter().map(|&k| h.get(table, k as u32)).collect();
    let g = h.null();
    for it in 0..p.iterations as u64 {
        for (&l, &k) in hot.iter().zip(&hot_ids) {
            assert_eq!(h.scalar(l, 1), s.value[k], "{}: hot cell {k}", C::NAME);
            s.value[k] += 1;
            h.set_scalar(l, 1, s.value[k]);
        }
        let k = rng.below(p.cells);
        h.get_to(table, k as u32, c);
        check_cell(&mut h, p, &s, c, k, tmp);
        s.value[k] = it;
        h.set_scalar(c, 1, it);
        if it % 4 == 0 {
            h.alloc_to(YOUNG, tmp);
            h.set_scalar(tmp, 0, it);
            h.set(c, 1, tmp);
            s.young[k] = Some(it);
        }
        for _ in 0..4 {
            h.alloc_to(GARBAGE, g);
            h.set(g, 0, c);
        }
    }
    h.assign_null(g);
    for k in 0..p.cells {
        h.get_to(table, k as u32, c);
        check_cell(&mut h, p, &s, c, k, tmp);
    }
    let young = s.young.iter().flatten().count();
    let census = h.verify().expect("verify");
    assert_eq!(census.objects, 1 + p.cells + young, "{}: census", C::NAME);
    let s = h.stats();
    eprintln!(
        "{}: {} collections ({} minor), {} traps over {} to-space pages, max pause {} us",
        C::NAME,
        s.collections,
        s.minor_collections,
        s.traps,
        s.to_space_pages,
        s.max_pause_ns() / 1000
    );
    s
}

fn config(p: &Hammer) -> Config {
    Config {
        heap_bytes: p.heap_bytes,
        ..Config::small()
    }
}

/// The counters a VM collector must show after a hammering: many
/// collections, traps (the mutator did touch to-space during them), and
/// never more traps than to-space pages.
fn assert_vm_stats(name: &str, s: &Stats) {
    assert!(s.collections >= 5, "{name}: {} collections", s.collections);
    assert!(
        s.traps > 0,
        "{name}: no traps in {} collections",
        s.collections
    );
    assert!(
        s.traps <= s.to_space_pages,
        "{name}: {} traps over {} to-space pages",
        s.traps,
        s.to_space_pages
    );
}

isolated_test!(
    fn vm_concurrent_survives_a_mutator_hammering_its_pages() {
        let p = Hammer::big(1);
        let s = hammer::<VmConcurrent>(&config(&p), &p);
        assert_vm_stats("vm_concurrent", &s);
    }
);

isolated_test!(
    fn vm_barrier_survives_a_mutator_hammering_its_pages() {
        let p = Hammer::big(2);
        let s = hammer::<VmBarrier>(&config(&p), &p);
        assert_vm_stats("vm_barrier", &s);
    }
);

isolated_test!(
    fn vm_concurrent_with_one_page_per_turn_survives_the_hammering() {
        // The collector thread gives up its lock after every page: the
        // mutator's traps interleave with its scan as finely as they can.
        let p = Hammer::medium(3);
        let cfg = Config {
            scan_batch_pages: 1,
            ..config(&p)
        };
        let s = hammer::<VmConcurrent>(&cfg, &p);
        assert_vm_stats("vm_concurrent", &s);
    }
);

isolated_test!(
    fn two_concurrent_heaps_on_two_threads() {
        let threads: Vec<_> = (0..2)
            .map(|i| {
                std::thread::spawn(move || {
                    let p = Hammer::medium(10 + i);
                    hammer::<VmConcurrent>(&config(&p), &p)
                })
            })
            .collect();
        for t in threads {
            let s = t.join().expect("a mutator thread panicked");
            assert_vm_stats("vm_concurrent", &s);
        }
    }
);

isolated_test!(
    fn every_trapping_heap_at_once_on_its_own_thread() {
        // VmBarrier, VmConcurrent and GenDirty on its SIGSEGV backend all
        // take faults through the one process-wide dispatcher.
        let vm = std::thread::spawn(|| {
            let p = Hammer::medium(20);
            hammer::<VmBarrier>(&config(&p), &p)
        });
        let vmc = std::thread::spawn(|| {
            let p = Hammer::medium(21);
            hammer::<VmConcurrent>(&config(&p), &p)
        });
        let gen = std::thread::spawn(|| {
            let p = Hammer::medium(22);
            let cfg = Config {
                dirty: Choice::Force(Backend::Trap),
                nursery_bytes: 256 << 10,
                ..config(&p)
            };
            hammer::<GenDirty>(&cfg, &p)
        });
        assert_vm_stats("vm_barrier", &vm.join().expect("vm_barrier mutator"));
        assert_vm_stats("vm_concurrent", &vmc.join().expect("vm_concurrent mutator"));
        let s = gen.join().expect("gen_dirty mutator");
        assert!(s.minor_collections >= 5, "gen_dirty: {s:?}");
    }
);

/// Starts a collection on a heap with a large live structure (so the
/// collection is still running: the collector thread mid-scan, to-space
/// protected) and drops the heap right away; many times. Then the process
/// still runs a workload correctly on a new heap.
fn dropping_heaps_mid_collection<C: Collector>() {
    let cfg = Config {
        heap_bytes: 2 << 20,
        ..Config::small()
    };
    for round in 0..20 {
        let mut h = Heap::<C>::new(&cfg).expect("heap");
        let table = h.alloc(Shape::new(8_000, 0));
        let c = h.null();
        for k in 0..8_000 {
            h.alloc_to(CELL, c);
            h.set(table, k, c);
        }
        let before = h.stats().collections;
        while h.stats().collections == before {
            h.alloc_to(GARBAGE, c);
        }
        // Mid-collection: touch a few objects (some trap), then drop.
        for k in 0..round * 50 {
            h.get_to(table, k, c);
            h.set_scalar(c, 1, 1);
        }
        drop(h);
    }
    let mut h = Heap::<C>::new(&Config::small()).expect("heap");
    let m = workload::Mutate::tiny();
    assert_eq!(
        workload::mutate(&mut h, &m),
        m.expected_check(),
        "{}",
        C::NAME
    );
    h.verify().expect("verify");
}

isolated_test!(
    fn vm_concurrent_heaps_dropped_mid_collection() {
        dropping_heaps_mid_collection::<VmConcurrent>();
    }
);

isolated_test!(
    fn vm_barrier_heaps_dropped_mid_collection() {
        dropping_heaps_mid_collection::<VmBarrier>();
    }
);
