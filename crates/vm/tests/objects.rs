//! Objects and their relations: files, pagers (and their conformance
//! suite), failing pagers, snapshot chains and their collapse, fork
//! inheritance, and the typed errors of bad input.

mod common;

use common::{file_bytes, load, store, temp_file, Kind, P};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use vmprim_vm::pager::{conformance, FilePager, MemPager, Pager, PagerError};
use vmprim_vm::{
    AddressSpace, Config, Inheritance, Mapping, ObjectKind, Prot, Resolution, ViolationKind,
    VmError,
};

#[test]
fn every_pager_passes_the_conformance_suite() {
    conformance(&MemPager::new(), P, 0, |_| vec![0; P]).unwrap();
    conformance(&MemPager::new(), P, 1 << 40, |_| vec![0; P]).unwrap();
    let file = temp_file(16, |b| (b / P) as u8 ^ 0x5A);
    let fresh = |i: u64| vec![i as u8 ^ 0x5A; P];
    conformance(&FilePager::new(file).unwrap(), P, 3, fresh).unwrap();
    // A pager that forgets what it is given fails the suite.
    #[derive(Debug)]
    struct Forgets;
    impl Pager for Forgets {
        fn page_in(&self, _: u64, page: &mut [u8]) -> Result<(), PagerError> {
            page.fill(0);
            Ok(())
        }
        fn page_out(&self, _: u64, _: &[u8]) -> Result<(), PagerError> {
            Ok(())
        }
    }
    assert!(conformance(&Forgets, P, 0, |_| vec![0; P]).is_err());
}

#[test]
fn a_file_object_survives_unmap_and_remap_with_its_writes() {
    for kind in Kind::ALL {
        let file = temp_file(8, |b| b as u8);
        let check = file.try_clone().unwrap();
        let space = kind.space(64 * P, Config::default().budget(16), 1).unwrap();
        let obj = space.create_file(file).unwrap();
        assert_eq!(obj.len(), 8 * P);
        let at = space.map(Mapping::object(&obj, 0, 8 * P)).unwrap();
        let mut b = [0u8; 4];
        space.read(at + 3 * P + 10, &mut b).unwrap();
        assert_eq!(b, [10, 11, 12, 13], "{kind:?}: pages come from the file");
        space.write(at + 5 * P, b"vmprim").unwrap();
        // A private mapping of the same file neither changes the file nor
        // sees writes made after it was mapped.
        let private = space
            .map(Mapping::object(&obj, 0, 8 * P).private())
            .unwrap();
        space.write(private + 5 * P, b"PRIVATE").unwrap();
        space.write(at + 6 * P, b"later").unwrap();
        space.read(private + 6 * P, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3], "{kind:?}");
        space.unmap(at, 8 * P).unwrap();
        space.unmap(private, 8 * P).unwrap();
        let again = space.map(Mapping::object(&obj, 0, 8 * P)).unwrap();
        let mut s = [0u8; 6];
        space.read(again + 5 * P, &mut s).unwrap();
        assert_eq!(&s, b"vmprim", "{kind:?}: the object kept the write");
        space.sync(again, 8 * P).unwrap();
        let bytes = file_bytes(&check);
        assert_eq!(
            &bytes[5 * P..5 * P + 6],
            b"vmprim",
            "{kind:?}: sync wrote it to the file"
        );
        assert_eq!(&bytes[6 * P..6 * P + 5], b"later", "{kind:?}");
        // Written again after the sync: the page must be dirty again.
        space.write(again + 7 * P, b"again").unwrap();
        drop(obj);
        space.unmap(again, 8 * P).unwrap();
        let bytes = file_bytes(&check);
        assert_eq!(
            &bytes[7 * P..7 * P + 5],
            b"again",
            "{kind:?}: the last reference wrote it back"
        );
        assert_eq!(bytes.len(), 8 * P, "the file never grows");
    }
}

#[test]
fn dirty_file_pages_are_written_back_by_pageout() {
    let file = temp_file(64, |_| 0);
    let check = file.try_clone().unwrap();
    let space = AddressSpace::new(128 * P, Config::default().budget(16)).unwrap();
    let obj = space.create_file(file).unwrap();
    let at = space.map(Mapping::object(&obj, 0, 64 * P)).unwrap();
    for i in 0..64 {
        store(&space, at + i * P + 1, i as u8 + 1);
    }
    let s = space.stats();
    assert!(s.writebacks >= 64 - 16, "{s:?}");
    let bytes = file_bytes(&check);
    let on_disk = (0..64).filter(|&i| bytes[i * P + 1] == i as u8 + 1).count();
    assert!(on_disk >= 64 - 16, "{on_disk} pages reached the file");
    for i in 0..64 {
        assert_eq!(load(&space, at + i * P + 1), i as u8 + 1);
    }
}

/// Fails page-in of the pages in `bad` until `fixed` is set.
#[derive(Debug, Default)]
struct Flaky {
    fails: AtomicUsize,
    fixed: std::sync::atomic::AtomicBool,
}

impl Pager for Flaky {
    fn page_in(&self, index: u64, page: &mut [u8]) -> Result<(), PagerError> {
        if index == 2 && !self.fixed.load(Relaxed) {
            self.fails.fetch_add(1, Relaxed);
            return Err(PagerError::page_in(index, "disk on fire"));
        }
        page.fill(index as u8 + 100);
        Ok(())
    }
    fn page_out(&self, index: u64, _: &[u8]) -> Result<(), PagerError> {
        Err(PagerError::page_out(index, "read-only"))
    }
}

#[test]
fn a_pager_failure_reaches_the_handler_never_a_zero_page() {
    for kind in Kind::ALL {
        let pager = Arc::new(Flaky::default());
        let space = kind.space(16 * P, Config::default(), 3).unwrap();
        let obj = space.create_paged(pager.clone(), 4 * P).unwrap();
        let at = space.map(Mapping::object(&obj, 0, 4 * P)).unwrap();
        let mut b = [0u8; 1];
        match space.read(at + 2 * P, &mut b) {
            Err(VmError::Fault(v)) => {
                assert!(
                    matches!(&v.kind, ViolationKind::Pager(e) if e.message == "disk on fire"),
                    "{v}"
                );
                assert_eq!(v.offset, at + 2 * P);
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        space.read(at + P, &mut b).unwrap();
        assert_eq!(b[0], 101);
        // Reading forward, read-ahead stops at the failing page, whose own
        // fault then reports the failure.
        space.forget_translations(at, 4 * P).unwrap();
        for page in 0..2 {
            space.read(at + page * P, &mut b).unwrap();
            assert_eq!(b[0], 100 + page as u8);
        }
        assert!(
            matches!(space.read(at + 2 * P, &mut b), Err(VmError::Fault(_))),
            "{kind:?}"
        );
        // The handler sees the failure, repairs the store, and retries.
        let seen = Arc::new(AtomicUsize::new(0));
        let (p, s) = (pager.clone(), seen.clone());
        space.set_violation_handler(move |v| {
            s.fetch_add(1, Relaxed);
            assert!(matches!(v.kind, ViolationKind::Pager(_)));
            p.fixed.store(true, Relaxed);
            Resolution::Retry
        });
        if kind.is_host() {
            assert_eq!(load(&space, at + 2 * P + 9), 102, "{kind:?}: a plain load");
        } else {
            space.read(at + 2 * P + 9, &mut b).unwrap();
            assert_eq!(b[0], 102);
        }
        assert_eq!(seen.load(Relaxed), 1, "{kind:?}");
    }
}

#[test]
fn the_live_mapping_keeps_a_short_chain_and_dropped_snapshots_collapse() {
    for kind in Kind::ALL {
        let space = kind.space(256 * P, Config::default(), 4).unwrap();
        let at = space.map(Mapping::anonymous(4 * P)).unwrap();
        let mut snaps = Vec::new();
        for round in 0..10u8 {
            space
                .write(at + (round as usize % 4) * P, &[round])
                .unwrap();
            snaps.push((round, space.snapshot(at, 4 * P).unwrap()));
        }
        assert_eq!(
            space.chain(at).unwrap(),
            vec![ObjectKind::Anonymous],
            "{kind:?}"
        );
        assert_eq!(
            space.chain(snaps[9].1).unwrap().len(),
            3,
            "shadow, copy, original"
        );
        assert_eq!(
            space.chain(snaps[0].1).unwrap().len(),
            12,
            "the oldest reads through every copy"
        );
        let check = |space: &AddressSpace, snaps: &[(u8, usize)]| {
            for &(round, s) in snaps {
                for page in 0..4usize {
                    // The value of page `page` at snapshot `round`: the
                    // last round <= `round` that wrote it.
                    let want = (0..=round)
                        .rev()
                        .find(|r| *r as usize % 4 == page)
                        .unwrap_or(0);
                    let mut b = [0u8];
                    space.read(s + page * P, &mut b).unwrap();
                    assert_eq!(b[0], want, "{kind:?}: snapshot {round} page {page}");
                }
            }
        };
        check(&space, &snaps);
        // Drop every other snapshot, newest included: their copies collapse
        // into the older ones, which still read the same.
        let before = space.stats();
        for &(_, s) in snaps.iter().filter(|(r, _)| r % 2 == 1) {
            space.unmap(s, 4 * P).unwrap();
        }
        snaps.retain(|(r, _)| r % 2 == 0);
        let after = space.stats();
        assert!(after.collapses >= before.collapses + 5, "{after:?}");
        assert_eq!(space.chain(snaps[0].1).unwrap().len(), 7, "{kind:?}");
        check(&space, &snaps);
        for &(_, s) in &snaps {
            space.unmap(s, 4 * P).unwrap();
        }
        let s = space.stats();
        assert_eq!(
            (s.objects, s.entries, s.max_depth),
            (1, 1, 1),
            "{kind:?}: {s:?}"
        );
        assert!(s.resident_pages <= 4, "{kind:?}: frames leaked: {s:?}");
    }
}

#[test]
fn fork_follows_inheritance() {
    for kind in Kind::ALL {
        let parent = kind.space(64 * P, Config::default(), 5).unwrap();
        let copy = parent.map(Mapping::anonymous(2 * P).at(0)).unwrap();
        let share = parent
            .map(
                Mapping::anonymous(2 * P)
                    .at(4 * P)
                    .inheritance(Inheritance::Share),
            )
            .unwrap();
        let none = parent
            .map(
                Mapping::anonymous(2 * P)
                    .at(8 * P)
                    .inheritance(Inheritance::None),
            )
            .unwrap();
        for at in [copy, share, none] {
            parent.write(at, b"parent").unwrap();
        }
        let child = parent.fork().unwrap();
        assert_eq!(child.is_empty(), parent.is_empty());
        child.write(copy, b"CHILD!").unwrap();
        child.write(share, b"shared").unwrap();
        let mut b = [0u8; 6];
        parent.read(copy, &mut b).unwrap();
        assert_eq!(&b, b"parent", "{kind:?}: a copied range is private");
        parent.read(share, &mut b).unwrap();
        assert_eq!(&b, b"shared", "{kind:?}: a shared range is one object");
        assert!(
            matches!(child.read(none, &mut b), Err(VmError::Fault(_))),
            "{kind:?}"
        );
        parent.write(copy, b"later!").unwrap();
        child.read(copy, &mut b).unwrap();
        assert_eq!(&b, b"CHILD!", "{kind:?}");
        if kind.is_host() {
            assert_ne!(child.host_base(), parent.host_base());
            assert_eq!(load(&child, share), b's');
        }
        drop(parent);
        child.read(share, &mut b).unwrap();
        assert_eq!(&b, b"shared", "{kind:?}: the child outlives the parent");
    }
}

#[test]
fn bad_input_gets_typed_errors() {
    let space = AddressSpace::simulated(16 * P, Config::default()).unwrap();
    let at = space
        .map(
            Mapping::anonymous(4 * P)
                .at(4 * P)
                .max_prot(Prot::READ_WRITE),
        )
        .unwrap();
    assert!(matches!(
        space.map(Mapping::anonymous(P + 1)),
        Err(VmError::Unaligned { .. })
    ));
    assert!(matches!(
        space.map(Mapping::anonymous(P).at(1)),
        Err(VmError::Unaligned { .. })
    ));
    assert!(matches!(
        space.map(Mapping::anonymous(0)),
        Err(VmError::ZeroLength)
    ));
    assert!(matches!(
        space.map(Mapping::anonymous(2 * P).at(15 * P)),
        Err(VmError::OutOfRange { .. })
    ));
    assert!(matches!(
        space.map(Mapping::anonymous(2 * P).at(7 * P)),
        Err(VmError::Overlap { .. })
    ));
    assert!(matches!(
        space.map(Mapping::anonymous(17 * P)),
        Err(VmError::NoSpace { .. })
    ));
    assert!(matches!(
        space.map(
            Mapping::anonymous(P)
                .prot(Prot::READ_WRITE)
                .max_prot(Prot::READ)
        ),
        Err(VmError::ExceedsMaxProt { .. })
    ));
    assert!(
        matches!(space.unmap(2 * P, 4 * P), Err(VmError::NotMapped { offset }) if offset == 2 * P)
    );
    assert!(matches!(
        space.unmap(at, usize::MAX - P + 1),
        Err(VmError::OutOfRange { .. })
    ));
    assert!(matches!(
        space.protect(at, P, Prot::READ_WRITE | Prot::EXEC),
        Err(VmError::ExceedsMaxProt { .. })
    ));
    space.limit_max_prot(at, P, Prot::READ).unwrap();
    assert!(matches!(
        space.protect(at, 2 * P, Prot::READ_WRITE),
        Err(VmError::ExceedsMaxProt { .. })
    ));
    assert!(
        matches!(space.write(at, &[1]), Err(VmError::Fault(v)) if matches!(v.kind, ViolationKind::Protection(_)))
    );
    space.write(at + P, &[1]).unwrap();
    assert!(
        matches!(space.write(0, &[1]), Err(VmError::Fault(v)) if matches!(v.kind, ViolationKind::Unmapped))
    );
    assert!(matches!(
        space.snapshot(0, P),
        Err(VmError::NotMapped { .. })
    ));
    let obj = space.create_anonymous(2 * P).unwrap();
    assert!(matches!(
        space.map(Mapping::object(&obj, P, 2 * P)),
        Err(VmError::OutOfRange { of: "object", .. })
    ));
    let other = AddressSpace::simulated(16 * P, Config::default()).unwrap();
    assert!(matches!(
        other.map(Mapping::object(&obj, 0, P)),
        Err(VmError::Config(_))
    ));
    assert!(matches!(
        AddressSpace::simulated(P, Config::default().budget(2)),
        Err(VmError::Config(_))
    ));
    assert!(matches!(
        AddressSpace::new(P + 3, Config::default()),
        Err(VmError::Unaligned { .. })
    ));
    // Entries split by protect merge back when their rights agree again.
    space.protect(at + P, P, Prot::READ).unwrap();
    assert_eq!(space.stats().entries, 3);
    space.protect(at, 4 * P, Prot::READ).unwrap();
    space
        .set_inheritance(at, 4 * P, Inheritance::Share)
        .unwrap();
    assert_eq!(
        space.stats().entries,
        2,
        "max_prot still differs on the first page"
    );
}

#[test]
fn file_reads_map_the_page_cache_until_a_write() {
    for kind in Kind::ALL {
        let file = temp_file(64, |b| (b / P) as u8);
        let space = kind
            .space(256 * P, Config::default().budget(16), 3)
            .unwrap();
        let obj = space.create_file(file).unwrap();
        let len = 64 * P;
        let ro = space
            .map(Mapping::object(&obj, 0, len).prot(Prot::READ))
            .unwrap();
        let rw = space.map(Mapping::object(&obj, 0, len)).unwrap();
        let private = space.map(Mapping::object(&obj, 0, len).private()).unwrap();
        let byte = |at: usize| {
            let mut b = [0u8; 1];
            space.read(at, &mut b).unwrap();
            if kind.is_host() {
                assert_eq!(load(&space, at), b[0], "{kind:?}: plain load at {at}");
            }
            b[0]
        };
        // Four times the budget read through three mappings: no frame.
        for i in 0..64 {
            for m in [ro, rw, private] {
                assert_eq!(byte(m + i * P + 9), i as u8, "{kind:?}: page {i}");
            }
        }
        let s = space.stats();
        assert_eq!((s.resident_pages, s.page_ins), (0, 0), "{kind:?}: {s:?}");
        assert!(s.direct_pages >= 3 * 64, "{kind:?}: {s:?}");
        // A write through the shared mapping brings that page into a frame
        // (and its old contents into a second, for the private mapping's
        // copy object); the other shared mapping sees it, the private one
        // keeps the file's contents as of its mapping.
        space.write(rw + 7 * P, b"new").unwrap();
        let s = space.stats();
        let got = (s.resident_pages, s.page_ins, s.pushes);
        assert_eq!(got, (2, 1, 1), "{kind:?}: {s:?}");
        assert_eq!(byte(ro + 7 * P), b'n', "{kind:?}");
        assert_eq!(byte(private + 7 * P), 7, "{kind:?}");
        assert_eq!(byte(private + 8 * P), 8, "{kind:?}");
        // A write to the private mapping stays there.
        space.write(private + 9 * P, b"mine").unwrap();
        assert_eq!(byte(ro + 9 * P), 9, "{kind:?}");
        assert_eq!(byte(private + 9 * P), b'm', "{kind:?}");
    }
}

#[test]
fn without_direct_reads_file_pages_come_through_frames() {
    for kind in Kind::ALL {
        let file = temp_file(8, |b| (b / P) as u8 + 1);
        let config = Config {
            direct_reads: false,
            ..Config::default()
        };
        let space = kind.space(16 * P, config, 5).unwrap();
        let obj = space.create_file(file).unwrap();
        let at = space.map(Mapping::object(&obj, 0, 8 * P)).unwrap();
        for i in 0..8 {
            let mut b = [0u8; 1];
            space.read(at + i * P, &mut b).unwrap();
            assert_eq!(b[0], i as u8 + 1, "{kind:?}");
        }
        let s = space.stats();
        assert_eq!(s.direct_pages, 0, "{kind:?}: {s:?}");
        assert!(s.page_ins >= 8 && s.resident_pages > 0, "{kind:?}: {s:?}");
    }
}
