//! A page that several mappings share occupies one physical page: the
//! process's proportional set size (`Pss` in /proc/self/smaps_rollup, which
//! charges a page mapped N times 1/N per mapping) grows by one copy of the
//! data, not one per mapping, while the plain resident set counts every
//! mapping; and the frame pool's memfd holds one page per copy (its
//! allocated blocks count pages no mapping shows yet, such as old contents
//! pushed into a snapshot's copy object). One test per binary: the figures
//! are process-wide.

mod common;

use common::{load, store, P};
use vmprim_vm::{AddressSpace, Config, Mapping};

fn rollup(field: &str) -> usize {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup"));
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Bytes allocated to the frame pools' memfds (the vm layer's physical
/// pages), found through /proc/self/fd.
fn frame_bytes() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:vmprim-map2"))
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn shared_pages_and_unwritten_snapshot_pages_take_one_physical_page() {
    const PAGES: usize = 8192; // 32 MiB
    let bytes = PAGES * P;
    let space = AddressSpace::new(8 * bytes, Config::default()).unwrap();
    let obj = space.create_anonymous(bytes).unwrap();
    let a = space.map(Mapping::object(&obj, 0, bytes)).unwrap();
    let b = space.map(Mapping::object(&obj, 0, bytes)).unwrap();
    let (pss0, rss0, frames0) = (rollup("Pss"), rollup("Rss"), frame_bytes());
    for i in 0..PAGES {
        store(&space, a + i * P, i as u8);
    }
    for i in 0..PAGES {
        assert_eq!(load(&space, b + i * P), i as u8, "the same page");
    }
    let (pss1, rss1) = (rollup("Pss"), rollup("Rss"));
    let grew = pss1 as f64 - pss0 as f64;
    assert!(
        grew < 1.15 * bytes as f64 && grew > 0.85 * bytes as f64,
        "two shared mappings of {bytes} bytes grew Pss by {grew}"
    );
    assert!(
        rss1 - rss0 > bytes * 18 / 10,
        "Rss counts both mappings: {}",
        rss1 - rss0
    );
    let frames1 = frame_bytes();
    let grew = (frames1 - frames0) as f64;
    assert!(
        grew < 1.15 * bytes as f64 && grew > 0.85 * bytes as f64,
        "two shared mappings of {bytes} bytes took {grew} bytes of frames"
    );
    // A snapshot read on both sides before either writes: still one copy.
    let snap = space.snapshot(a, bytes).unwrap();
    for i in 0..PAGES {
        assert_eq!(load(&space, snap + i * P), i as u8);
        assert_eq!(load(&space, a + i * P), i as u8);
    }
    let grew = rollup("Pss") as f64 - pss1 as f64;
    assert!(
        grew < 0.15 * bytes as f64,
        "reading a snapshot grew Pss by {grew}"
    );
    assert!(
        frame_bytes() - frames1 < bytes as u64 / 10,
        "reading a snapshot took frames"
    );
    // Writing one side copies only what is written (the old contents go
    // to the snapshot's copy object, mapped nowhere yet).
    for i in 0..PAGES / 4 {
        store(&space, a + i * P, 0xEE);
    }
    let grew = (frame_bytes() - frames1) as f64;
    let quarter = (bytes / 4) as f64;
    assert!(
        grew > 0.8 * quarter && grew < 1.3 * quarter,
        "writing a quarter took {grew} bytes of frames"
    );
    // Map-around may push up to one window of pages past the written ones.
    let resident = space.stats().resident_pages;
    let around = Config::default().fault_around;
    assert!(
        (PAGES + PAGES / 4..=PAGES + PAGES / 4 + around).contains(&resident),
        "{resident} frames"
    );
}
