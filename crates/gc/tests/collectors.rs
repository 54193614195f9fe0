//! Targeted tests of every collector through the mutator API: typed
//! configuration and out-of-memory errors, the large object space, lists
//! long enough to outrun a page-at-a-time scan, the VM read barrier's trap
//! bound, and the benchmark workloads' check values on a small heap and on
//! one just big enough.
//!
//! Each test runs in its own child process (see `common`): a collector
//! that aborts or faults fails that test alone.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use vmprim_gc::workload::{self, GcBench, Mutate};
use vmprim_gc::{
    Baker, Collector, Config, GcError, GenCards, GenDirty, Heap, Shape, StwCopy, VmBarrier,
    VmConcurrent, WORD,
};
use vmprim_prim::page_size;

/// `Heap::<C>::new(cfg)`'s error, which must be a configuration error
/// whose message names `field`.
fn config_error<C: Collector>(cfg: &Config, field: &str) {
    match Heap::<C>::new(cfg) {
        Err(GcError::Config(msg)) => assert!(
            msg.contains(field),
            "{}: the message {msg:?} does not name {field}",
            C::NAME
        ),
        Err(e) => panic!("{}: {cfg:?}: not GcError::Config: {e:?}", C::NAME),
        Ok(_) => panic!("{}: {cfg:?} was accepted", C::NAME),
    }
}

fn config_errors_are_typed<C: Collector>() {
    let p = page_size();
    let small = Config::small;
    let c = |f: &dyn Fn(&mut Config)| {
        let mut c = small();
        f(&mut c);
        c
    };
    config_error::<C>(&c(&|c| c.heap_bytes = 7 * c.chunk_bytes), "heap_bytes");
    config_error::<C>(&c(&|c| c.heap_bytes = 0), "heap_bytes");
    config_error::<C>(&c(&|c| c.nursery_bytes = p / 2), "nursery_bytes");
    config_error::<C>(&c(&|c| c.nursery_bytes = 0), "nursery_bytes");
    config_error::<C>(&c(&|c| c.nursery_bytes = c.heap_bytes + p), "nursery_bytes");
    config_error::<C>(&c(&|c| c.heap_bytes = 1 << 45), "heap_bytes");
    config_error::<C>(&c(&|c| c.scan_ratio = 0), "scan_ratio");
    config_error::<C>(&c(&|c| c.scan_batch_pages = 0), "scan_batch_pages");
    // Sizes that are no whole number of pages are rounded up, not refused:
    // exactly 8 chunks after rounding is enough.
    let tight = Config {
        chunk_bytes: 1,
        heap_bytes: 8 * p - 1,
        nursery_bytes: 1,
        ..small()
    };
    let mut h = Heap::<C>::new(&tight).unwrap_or_else(|e| panic!("{}: {tight:?}: {e}", C::NAME));
    let a = h.alloc(Shape::new(1, 1));
    h.set(a, 0, a);
    h.collect();
    assert_eq!(h.verify().expect("verify").objects, 1);
}
each_collector!(config_errors_are_typed);

fn absurd_sizes_are_config_errors_not_panics<C: Collector>() {
    // Sizes so large that rounding them to pages, or multiplying them,
    // overflows: still a configuration error.
    let p = page_size();
    for (cfg, field) in [
        (
            Config {
                heap_bytes: usize::MAX,
                ..Config::small()
            },
            "heap_bytes",
        ),
        (
            Config {
                heap_bytes: usize::MAX - p + 2,
                ..Config::small()
            },
            "heap_bytes",
        ),
        (
            Config {
                chunk_bytes: usize::MAX,
                ..Config::small()
            },
            "chunk_bytes",
        ),
        (
            Config {
                nursery_bytes: usize::MAX,
                ..Config::small()
            },
            "nursery_bytes",
        ),
    ] {
        let r = catch_unwind(|| config_error::<C>(&cfg, field));
        assert!(
            r.is_ok(),
            "{}: {cfg:?} panicked instead of returning GcError::Config",
            C::NAME
        );
    }
}
each_collector!(absurd_sizes_are_config_errors_not_panics);

// ---------------------------------------------------------------------------
// Out of memory

/// A list that keeps growing: each cell is live. `try_alloc` must end it
/// with a typed `OutOfMemory`, with the live data no bigger than the heap,
/// and the heap must stay usable.
fn live_data_over_the_heap_is_out_of_memory<C: Collector>() {
    let cfg = Config {
        heap_bytes: 256 << 10,
        nursery_bytes: 32 << 10,
        chunk_bytes: 4 << 10,
        ..Config::small()
    };
    let cell = Shape::new(1, 3);
    let mut h = Heap::<C>::new(&cfg).expect("heap");
    let list = h.null();
    let mut n: u64 = 0;
    let err = loop {
        match h.try_alloc(cell) {
            Ok(c) => {
                h.set_scalar(c, 0, n);
                h.set(c, 0, list);
                h.assign(list, c);
                h.pop();
                n += 1;
            }
            Err(e) => break e,
        }
        assert!(
            n as usize * cell.bytes() <= 2 * cfg.heap_bytes + cfg.nursery_bytes,
            "{}: {n} cells live ({} bytes) and still no OutOfMemory",
            C::NAME,
            n as usize * cell.bytes()
        );
    };
    let GcError::OutOfMemory { requested, free } = err else {
        panic!("{}: not OutOfMemory: {err:?}", C::NAME);
    };
    assert!(
        requested >= cell.bytes(),
        "{}: requested {requested}",
        C::NAME
    );
    assert!(free < requested, "{}: {free} free of {requested}", C::NAME);
    let live = n as usize * cell.bytes();
    // The most live data: a semispace, or the old generation (and a
    // nursery's worth not yet promoted).
    let most = if C::NAME.starts_with("gen") {
        cfg.heap_bytes + cfg.nursery_bytes
    } else {
        cfg.heap_bytes
    };
    assert!(
        live <= most,
        "{}: {live} bytes live in a {}-byte heap",
        C::NAME,
        cfg.heap_bytes
    );
    assert!(
        live >= cfg.heap_bytes / 4,
        "{}: out of memory with only {live} bytes live",
        C::NAME
    );
    // Everything allocated is still there.
    assert_eq!(h.verify().expect("verify").objects as u64, n, "{}", C::NAME);
    let at = h.local(list);
    let mut k = n;
    while !h.is_null(at) {
        k -= 1;
        assert_eq!(h.scalar(at, 0), k, "{}", C::NAME);
        h.get_to(at, 0, at);
    }
    assert_eq!(k, 0);
    // Dropping the list makes room again.
    h.assign_null(list);
    h.collect();
    let c = h.try_alloc(cell).expect("room after dropping the list");
    h.set_scalar(c, 2, 7);
    assert_eq!(h.verify().expect("verify").objects, 1);
}
each_collector!(live_data_over_the_heap_is_out_of_memory);

/// One object bigger than the whole heap is refused at once.
fn an_object_bigger_than_the_heap_is_out_of_memory<C: Collector>() {
    let cfg = Config::small();
    let mut h = Heap::<C>::new(&cfg).expect("heap");
    let keep = h.alloc(Shape::new(1, 1));
    let ptrs = (cfg.heap_bytes + cfg.nursery_bytes) / WORD + 1;
    match h.try_alloc(Shape::new(ptrs as u32, 0)) {
        Err(GcError::OutOfMemory { requested, .. }) => {
            assert!(requested > cfg.heap_bytes, "{}: {requested}", C::NAME);
        }
        other => panic!("{}: {other:?}", C::NAME),
    }
    assert_eq!(
        h.roots(),
        1,
        "{}: a failed allocation adds no local",
        C::NAME
    );
    h.set_scalar(keep, 0, 5);
    h.collect();
    assert_eq!(h.scalar(keep, 0), 5);
    assert_eq!(h.verify().expect("verify").objects, 1);
}
each_collector!(an_object_bigger_than_the_heap_is_out_of_memory);

// ---------------------------------------------------------------------------
// The large object space

/// The process's virtual size, from `/proc/self/status`.
fn vm_size() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmSize in kB");
    kb << 10
}

/// A large object (scalar-only, over `large_bytes`) outlives collections
/// while reachable, with its contents, and is counted by `verify`.
fn live_large_objects_survive_and_are_verified<C: Collector>() {
    let cfg = Config::small();
    let big = Shape::new(0, (cfg.large_bytes / WORD) as u32 + 100);
    let mut h = Heap::<C>::new(&cfg).expect("heap");
    let holder = h.alloc(Shape::new(2, 0));
    let a = h.alloc(big);
    let last = big.scalars - 1;
    h.set_scalar(a, 0, 11);
    h.set_scalar(a, last, 12);
    h.set(holder, 1, a);
    h.pop();
    for round in 0..3 {
        for _ in 0..20_000 {
            h.alloc(Shape::new(2, 2));
            h.pop();
        }
        h.collect();
        let a = h.get(holder, 1);
        assert_eq!(h.shape(a), big, "{} round {round}", C::NAME);
        assert_eq!(
            (h.scalar(a, 0), h.scalar(a, last)),
            (11, 12),
            "{} round {round}",
            C::NAME
        );
        h.pop();
    }
    let census = h.verify().expect("verify");
    assert_eq!(
        (census.objects, census.bytes),
        (2, Shape::new(2, 0).bytes() + big.bytes()),
        "{}",
        C::NAME
    );
}
each_collector!(live_large_objects_survive_and_are_verified);

/// Large objects dropped as soon as they are made: their memory is given
/// back, by the collections their own allocation paces, so the process
/// does not grow by what was allocated. (Observed through the process's
/// virtual size: each large object is its own mapping.)
fn unreachable_large_objects_are_freed<C: Collector>() {
    const EACH: usize = 4 << 20;
    const COUNT: usize = 256; // 1 GiB in all
    let cfg = Config::small();
    let shape = Shape::new(0, (EACH / WORD) as u32 - 1);
    let mut h = Heap::<C>::new(&cfg).expect("heap");
    let keep = h.alloc(shape);
    h.set_scalar(keep, 1, 99);
    let before = vm_size();
    let mut peak = before;
    for i in 0..COUNT {
        let o = h.alloc(shape);
        h.set_scalar(o, 0, i as u64);
        h.pop();
        peak = peak.max(vm_size());
    }
    h.collect();
    let after = vm_size();
    let grown = peak.saturating_sub(before);
    assert!(
        grown < (COUNT * EACH) / 4,
        "{}: the process grew by {} MiB while {} MiB of large objects were made and dropped",
        C::NAME,
        grown >> 20,
        (COUNT * EACH) >> 20
    );
    assert!(
        after <= before + 2 * EACH + (64 << 20),
        "{}: {} MiB before, {} MiB after the last collection",
        C::NAME,
        before >> 20,
        after >> 20
    );
    assert_eq!(h.scalar(keep, 1), 99, "{}: the live one was freed", C::NAME);
}
each_collector!(unreachable_large_objects_are_freed);

// ---------------------------------------------------------------------------
// Deep structures

/// A singly linked list: each collection reaches one more cell per cell
/// scanned, the worst case for a collector that scans (and opens) to-space
/// a page at a time. Collected explicitly, then during the mutator's own
/// walk of it while garbage keeps flipping the heap.
fn a_long_list_survives_collections<C: Collector>() {
    const N: u64 = 10_000; // 320 KB of cells in 1 MiB semispaces
    let cell = Shape::new(1, 2);
    let mut h = Heap::<C>::new(&Config::small()).expect("heap");
    let head = h.null();
    for v in 0..N {
        let c = h.alloc(cell);
        h.set_scalar(c, 0, v);
        h.set(c, 0, head);
        h.assign(head, c);
        h.pop();
    }
    h.collect();
    let mut sum = 0;
    let at = h.local(head);
    while !h.is_null(at) {
        sum += h.scalar(at, 0);
        h.get_to(at, 0, at);
        // Garbage, so that collections start while the walk goes on.
        h.alloc(Shape::new(0, 30));
        h.pop();
    }
    assert_eq!(sum, N * (N - 1) / 2, "{}", C::NAME);
    h.pop();
    assert_eq!(h.verify().expect("verify").objects as u64, N, "{}", C::NAME);
    assert!(h.stats().collections > 1, "{}", C::NAME);
}
each_collector!(a_long_list_survives_collections);

/// The doc example of the crate, for every collector: a 1000-cell list,
/// one explicit collection.
fn a_short_list_survives_one_collection<C: Collector>() {
    let cell = Shape::new(1, 1);
    let mut h = Heap::<C>::new(&Config::small()).expect("heap");
    let head = h.null();
    for v in 0..1000 {
        let c = h.alloc(cell);
        h.set_scalar(c, 0, v);
        h.set(c, 0, head);
        h.assign(head, c);
        h.pop();
    }
    h.collect();
    let mut sum = 0;
    let at = h.local(head);
    while !h.is_null(at) {
        sum += h.scalar(at, 0);
        h.get_to(at, 0, at);
    }
    assert_eq!(sum, 999 * 1000 / 2, "{}", C::NAME);
    assert_eq!(h.verify().expect("verify").objects, 1000, "{}", C::NAME);
}
each_collector!(a_short_list_survives_one_collection);

// ---------------------------------------------------------------------------
// The VM read barrier's bound

fn vm_traps_are_bounded_by_to_space_pages<C: Collector>() {
    let mut h = Heap::<C>::new(&Config::small()).expect("heap");
    let g = GcBench::tiny();
    assert_eq!(
        workload::gcbench(&mut h, &g),
        g.expected_check(),
        "{}",
        C::NAME
    );
    let m = Mutate::tiny();
    assert_eq!(
        workload::mutate(&mut h, &m),
        m.expected_check(),
        "{}",
        C::NAME
    );
    let s = h.stats();
    assert!(s.collections > 1, "{}: {s:?}", C::NAME);
    assert!(s.to_space_pages > 0, "{}: {s:?}", C::NAME);
    assert!(
        s.traps <= s.to_space_pages,
        "{}: {} traps over {} to-space pages",
        C::NAME,
        s.traps,
        s.to_space_pages
    );
    h.verify().expect("verify");
}

isolated_test!(
    fn vm_barrier_traps_are_bounded_by_to_space_pages() {
        vm_traps_are_bounded_by_to_space_pages::<VmBarrier>();
    }
);
isolated_test!(
    fn vm_concurrent_traps_are_bounded_by_to_space_pages() {
        vm_traps_are_bounded_by_to_space_pages::<VmConcurrent>();
    }
);

/// The incremental VM collector pads the copy frontier's page at each
/// increment, so the next increment's copies land on writable pages and
/// the frontier's page is not unprotected again: an increment costs two
/// `mprotect` calls (open the pages it scans, protect the copies it made),
/// not three. Traps and flips cost a few more; together, at most two per
/// pause on average. (Without the padding GCBench needs 2.7 per pause.)
fn vm_barrier_protects_twice_per_increment() {
    let cfg = Config {
        heap_bytes: 4 << 20,
        chunk_bytes: 8 << 10,
        ..Config::default()
    };
    let g = GcBench {
        stretch: 14,
        long_lived: 14,
        array_size: 4000,
        min_depth: 4,
        max_depth: 14,
    };
    let mut h = Heap::<VmBarrier>::new(&cfg).expect("heap");
    assert_eq!(workload::gcbench(&mut h, &g), g.expected_check());
    let s = h.stats();
    let pauses = s.pauses_ns.len() as u64;
    assert!(s.collections > 1 && pauses > 50, "{s:?}");
    assert!(
        s.protect_calls <= 2 * pauses,
        "{} mprotect calls for {pauses} pauses ({} traps, {} collections)",
        s.protect_calls,
        s.traps,
        s.collections
    );
    h.verify().expect("verify");
}

isolated_test!(
    fn vm_barrier_makes_two_protect_calls_per_increment() {
        vm_barrier_protects_twice_per_increment();
    }
);

/// The other collectors have no VM barrier: no traps, no to-space pages.
fn no_traps_without_the_vm_barrier<C: Collector>() {
    let mut h = Heap::<C>::new(&Config::small()).expect("heap");
    let g = GcBench::tiny();
    assert_eq!(
        workload::gcbench(&mut h, &g),
        g.expected_check(),
        "{}",
        C::NAME
    );
    let s = h.stats();
    assert!(s.collections > 0, "{}", C::NAME);
    assert_eq!(s.traps, 0, "{}", C::NAME);
}

isolated_test!(
    fn stw_copy_baker_and_gen_take_no_traps() {
        no_traps_without_the_vm_barrier::<StwCopy>();
        no_traps_without_the_vm_barrier::<Baker>();
        no_traps_without_the_vm_barrier::<GenCards>();
        no_traps_without_the_vm_barrier::<GenDirty>();
    }
);

// ---------------------------------------------------------------------------
// The workloads

/// Both workloads on `Config::small()`: their check values, a clean
/// `verify`, and nothing left reachable.
fn workloads_check_on_a_small_heap<C: Collector>() {
    let mut h = Heap::<C>::new(&Config::small()).expect("heap");
    let g = GcBench::tiny();
    assert_eq!(
        workload::gcbench(&mut h, &g),
        g.expected_check(),
        "{}",
        C::NAME
    );
    assert_eq!(h.roots(), 0, "{}", C::NAME);
    let m = Mutate::tiny();
    assert_eq!(
        workload::mutate(&mut h, &m),
        m.expected_check(),
        "{}",
        C::NAME
    );
    assert_eq!(h.roots(), 0, "{}", C::NAME);
    assert_eq!(h.verify().expect("verify").objects, 0, "{}", C::NAME);
    let s = h.stats();
    assert!(s.collections > 0, "{}: {s:?}", C::NAME);
    if s.minor_collections > 0 {
        assert!(C::NAME.starts_with("gen"), "{}: minor collections", C::NAME);
    }
}
each_collector!(workloads_check_on_a_small_heap);

/// A configuration with `pages` pages of heap: page-sized chunks, a
/// 32 KiB nursery.
fn tight(pages: usize) -> Config {
    let p = page_size();
    Config {
        heap_bytes: pages * p,
        nursery_bytes: 32 << 10,
        chunk_bytes: p,
        ..Config::small()
    }
}

/// Whether `run` completes on a `Heap<C>` with `pages` pages, returning
/// its check value; `None` if the heap runs out of memory (`alloc`
/// panics saying so). Any other panic is passed on.
fn attempt<C: Collector>(pages: usize, run: &dyn Fn(&mut Heap<C>) -> u64) -> Option<u64> {
    let mut h = Heap::<C>::new(&tight(pages)).expect("heap");
    match catch_unwind(AssertUnwindSafe(|| run(&mut h))) {
        Ok(r) => {
            h.verify().expect("verify");
            Some(r)
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if msg.contains("out of memory") {
                None
            } else {
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// The fewest pages of heap with which `run` completes, searched between
/// 8 pages and `max` (where it must complete); then its check value there
/// must be `want`. The heap is then "just big enough": collections are as
/// frequent, and reserves as thin, as they get. Also bounds that size by
/// `bound` pages, so a collector cannot pass by needing any heap at all.
fn just_big_enough<C: Collector>(
    what: &str,
    run: &dyn Fn(&mut Heap<C>) -> u64,
    want: u64,
    max: usize,
    bound: usize,
) {
    let top = attempt::<C>(max, run);
    let (mut lo, mut hi) = (8, max); // fails at lo (or lo is the least), completes at hi
    while top.is_some() && hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if attempt::<C>(mid, run).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    assert_eq!(top, Some(want), "{} {what}: {max} pages", C::NAME);
    let got = attempt::<C>(hi, run);
    assert_eq!(
        got,
        Some(want),
        "{} {what}: {hi} pages, just big enough",
        C::NAME
    );
    eprintln!("{} {what}: {hi} pages are just big enough", C::NAME);
    assert!(
        hi <= bound,
        "{} {what}: needs {hi} pages, over {bound}",
        C::NAME
    );
}

fn workloads_check_on_a_heap_just_big_enough<C: Collector>() {
    let p = page_size();
    let g = GcBench::tiny();
    // The stretch tree is all live at once: 2047 nodes of 40 bytes.
    let stretch = workload::tree_size(g.stretch) as usize * workload::NODE.bytes();
    just_big_enough::<C>(
        "gcbench",
        &|h| workload::gcbench(h, &g),
        g.expected_check(),
        (8 * stretch).div_ceil(p),
        (2 * stretch).div_ceil(p),
    );
    let m = Mutate::tiny();
    // The table, its cells and up to two children each.
    let table =
        Shape::new(m.table_size, 0).bytes() + 3 * m.table_size as usize * workload::NODE.bytes();
    just_big_enough::<C>(
        "mutate",
        &|h| workload::mutate(h, &m),
        m.expected_check(),
        (8 * table).div_ceil(p),
        (2 * table).div_ceil(p),
    );
}
each_collector!(workloads_check_on_a_heap_just_big_enough);

/// A large object whose only reference the mutator takes out of an object
/// the collection in progress has copied but not scanned, then erases
/// there, survives the collection: the collector must see the mutator's
/// copy of the pointer (Baker's read barrier marks it as it is loaded; the
/// VM barrier scans the object before the mutator can read it).
fn a_large_object_taken_from_an_unscanned_object_survives<C: Collector>() {
    let cfg = Config {
        heap_bytes: 1 << 20,
        chunk_bytes: 4 << 10,
        scan_ratio: 1,
        ..Config::small()
    };
    let mut h = Heap::<C>::new(&cfg).expect("heap");
    let large = Shape::new(0, (cfg.large_bytes / WORD) as u32 + 1);
    let holder = h.alloc(Shape::new(1, 0));
    let big = h.alloc(large);
    h.set_scalar(big, 0, 0xB16);
    h.set(holder, 0, big);
    h.pop(); // `big` is reachable only through `holder` now
             // Allocate garbage until a collection begins: the flip copies `holder`
             // (a root) without scanning it.
    let before = h.stats().collections;
    let mark = h.mark();
    while h.stats().collections == before {
        h.alloc(Shape::new(0, 6));
        h.pop();
    }
    h.release(mark);
    let taken = h.get(holder, 0);
    h.set_null(holder, 0);
    h.collect(); // ends the collection in progress (its sweep), and another
    h.verify().expect("the large object survived");
    assert_eq!(h.scalar(taken, 0), 0xB16, "{}", C::NAME);
}
each_collector!(a_large_object_taken_from_an_unscanned_object_survives);
