//! Several threads faulting on one host address space at once: the same
//! pages and different pages, with pageout running under them, and
//! snapshots taken while they write.

mod common;

use common::{load, store, P};
use std::sync::Barrier;
use vmprim_vm::{AddressSpace, Config, Mapping};

#[test]
fn two_threads_fault_the_same_and_different_pages() {
    const PAGES: usize = 512;
    let space = AddressSpace::new(2 * PAGES * P, Config::default().budget(64)).unwrap();
    let at = space.map(Mapping::anonymous(PAGES * P)).unwrap();
    let go = Barrier::new(2);
    std::thread::scope(|s| {
        for t in 0..2usize {
            let (space, go) = (&space, &go);
            s.spawn(move || {
                go.wait();
                for round in 0..4u8 {
                    for i in 0..PAGES {
                        // Both threads write every page (byte `t`) and
                        // each its own half (byte 8 + t).
                        store(space, at + i * P + t, round + t as u8);
                        if i % 2 == t {
                            store(space, at + i * P + 8 + t, round ^ 0x40);
                        }
                        assert_eq!(load(space, at + i * P + t), round + t as u8);
                    }
                }
            });
        }
    });
    for i in 0..PAGES {
        assert_eq!(load(&space, at + i * P), 3);
        assert_eq!(load(&space, at + i * P + 1), 4);
        let t = i % 2;
        assert_eq!(load(&space, at + i * P + 8 + t), 3 ^ 0x40, "page {i}");
    }
    let s = space.stats();
    assert!(s.pageouts > 0 && s.swap_ins > 0, "{s:?}");
}

#[test]
fn snapshots_taken_while_another_thread_writes_are_consistent_per_page() {
    const PAGES: usize = 64;
    let space = AddressSpace::new(64 * PAGES * P, Config::default()).unwrap();
    let at = space.map(Mapping::anonymous(PAGES * P)).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (space, done) = (&space, &done);
        s.spawn(move || {
            let mut v = 0u8;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                v = v.wrapping_add(1);
                for i in 0..PAGES {
                    // The same value in two places of the page: a
                    // snapshot must never see them differ.
                    store(space, at + i * P, v);
                    store(space, at + i * P + P - 1, v);
                }
            }
        });
        for _ in 0..20 {
            let snap = space.snapshot(at, PAGES * P).unwrap();
            for i in 0..PAGES {
                let (a, b) = (load(space, snap + i * P), load(space, snap + i * P + P - 1));
                // The writer stores byte 0 first, so a snapshot between its
                // two stores sees byte 0 one step ahead.
                assert!(a == b || a == b.wrapping_add(1), "page {i}: {a} {b}");
            }
            let first = load(space, snap);
            std::thread::yield_now();
            assert_eq!(load(space, snap), first, "a snapshot never changes");
            space.unmap(snap, PAGES * P).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let s = space.stats();
    assert_eq!((s.objects, s.max_depth), (1, 1), "{s:?}");
}
