//! `HostPmap`'s kernel mappings: copy on write takes write permission with
//! userfaultfd write protection, a bit in the page-table entry, so neither a
//! snapshot nor the writes after it split the kernel's mappings (each
//! `mprotect` of one page in the middle of a mapping would split it in three).

mod common;

use common::{load, store, Kind, P};
use std::ops::Range;
use vmprim_prim::map2::SharedMemory;
use vmprim_prim::uffd::{Features, Uffd};
use vmprim_vm::{AddressSpace, Config, HostPmap, Mapping};

/// The kernel mappings (lines of /proc/self/maps) that overlap `range`.
fn kernel_mappings(range: Range<usize>) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| {
            let span = l.split_whitespace().next().unwrap();
            let (lo, hi) = span.split_once('-').unwrap();
            let lo = usize::from_str_radix(lo, 16).unwrap();
            let hi = usize::from_str_radix(hi, 16).unwrap();
            lo < range.end && range.start < hi
        })
        .count()
}

/// Whether a `HostPmap` here write-protects with userfaultfd (the kernel
/// has write protection on shared memory, across several mappings at once).
/// On CI it must: that machine kind has it, so its absence is a failure.
fn have_uffd_wp() -> bool {
    let frames = SharedMemory::new(P).unwrap();
    let have = HostPmap::new(1, frames).unwrap().uffd_write_protect();
    let features = Uffd::available().is_ok_and(|f| f.contains(Features::WP | Features::WP_SHMEM));
    assert!(
        have || !features || !on_6_4_or_later(),
        "the kernel has it, the pmap does not use it"
    );
    let ci = std::env::var("CI").as_deref() == Ok("true");
    assert!(
        have || !ci,
        "CI=true but userfaultfd write protection is missing"
    );
    if !have {
        eprintln!("skipped: no userfaultfd write protection for shared memory here");
    }
    have
}

/// Writes to pages 5, 17 and 40 of a 64-page mapping after a snapshot, then
/// snapshots again; returns the kernel mappings over the space before the
/// writes, after them and after the second snapshot, checking contents.
fn writes_between_snapshots(space: &AddressSpace) -> [usize; 3] {
    let base = space.host_base().unwrap() as usize;
    let whole = base..base + space.len();
    let at = space.map(Mapping::anonymous(64 * P)).unwrap();
    for i in 0..64 {
        store(space, at + i * P, i as u8);
    }
    let first = space.snapshot(at, 64 * P).unwrap();
    let before = kernel_mappings(whole.clone());
    for i in [5, 17, 40] {
        store(space, at + i * P, 100 + i as u8);
    }
    let written = kernel_mappings(whole.clone());
    let second = space.snapshot(at, 64 * P).unwrap();
    let after = kernel_mappings(whole);
    for i in 0..64 {
        let new = if [5, 17, 40].contains(&i) { 100 + i } else { i } as u8;
        assert_eq!(
            load(space, first + i * P),
            i as u8,
            "first snapshot, page {i}"
        );
        assert_eq!(
            load(space, second + i * P),
            new,
            "second snapshot, page {i}"
        );
        assert_eq!(load(space, at + i * P), new, "original, page {i}");
    }
    [before, written, after]
}

/// Whether the running kernel is Linux 6.4 or later.
fn on_6_4_or_later() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 4)
}

#[test]
fn copy_on_write_splits_no_kernel_mapping() {
    if !have_uffd_wp() {
        return;
    }
    let space = AddressSpace::new(256 * P, Config::default()).unwrap();
    let [before, written, after] = writes_between_snapshots(&space);
    assert_eq!(
        (written, after),
        (before, before),
        "kernel mappings over the space: {before} after the first snapshot, \
         {written} after three writes, {after} after the second snapshot"
    );
}

#[test]
fn the_mprotect_fallback_splits_and_merges_back() {
    // The comparison that shows what the test above measures: with
    // `mprotect`, each written page becomes a mapping of its own.
    let space = Kind::HostMprotect
        .space(256 * P, Config::default(), 1)
        .unwrap();
    let [before, written, after] = writes_between_snapshots(&space);
    assert_eq!(
        (written, after),
        (before + 6, before),
        "{before} {written} {after}"
    );
}
