//! The DIRTY conformance suite, run for every backend this kernel has.

use super::*;
use crate::Prot;

pub(crate) fn usable(b: Backend) -> bool {
    match b {
        Backend::SoftDirty => soft_dirty_available(),
        Backend::Trap => true,
        _ => crate::mechanisms()
            .dirty
            .iter()
            .any(|(x, a)| *x == b && a.is_yes()),
    }
}

fn pages(runs: &[PageRun]) -> Vec<usize> {
    runs.iter().flat_map(PageRun::pages).collect()
}

fn setup(b: Backend, n: usize) -> (Arc<Region>, Box<dyn DirtyTracker>) {
    let region = Arc::new(Region::new(n * page_size(), Prot::READ_WRITE).unwrap());
    let t = track(&region, 0, region.len(), Choice::Force(b)).unwrap();
    (region, t)
}

fn each_backend(f: impl Fn(Backend)) {
    for b in Backend::ALL {
        if usable(b) {
            f(b);
        } else {
            assert!(
                std::env::var_os("CI").is_none() || b == Backend::SoftDirty,
                "{b} must be available on CI"
            );
        }
    }
}

#[test]
fn writes_are_reported_once() {
    each_backend(|b| {
        let (r, mut t) = setup(b, 100);
        assert_eq!(t.backend(), b);
        assert!(t.collect().unwrap().is_empty(), "{b}: nothing written yet");
        for i in [3, 4, 5, 50, 99] {
            r.write_u8(i * page_size() + 1, 1).unwrap();
        }
        assert_eq!(pages(&t.collect().unwrap()), [3, 4, 5, 50, 99], "{b}");
        assert!(t.collect().unwrap().is_empty(), "{b}: cleared");
        r.write_u8(4 * page_size(), 2).unwrap();
        assert_eq!(
            t.collect().unwrap(),
            [PageRun { first: 4, count: 1 }],
            "{b}"
        );
        assert_eq!(r.read_u8(4 * page_size()).unwrap(), 2, "{b}: data intact");
        assert_eq!(
            r.read_u8(3 * page_size() + 1).unwrap(),
            1,
            "{b}: data intact"
        );
    });
}

#[test]
fn reads_are_not_writes() {
    each_backend(|b| {
        let (r, mut t) = setup(b, 8);
        for i in 0..8 {
            assert_eq!(r.read_u8(i * page_size()).unwrap(), 0);
        }
        assert!(t.collect().unwrap().is_empty(), "{b}");
    });
}

#[test]
fn a_subrange_is_tracked_alone() {
    each_backend(|b| {
        let p = page_size();
        let region = Arc::new(Region::new(16 * p, Prot::READ_WRITE).unwrap());
        let mut t = track(&region, 4 * p, 8 * p, Choice::Force(b)).unwrap();
        assert_eq!(t.range(), (region.as_ptr() as usize + 4 * p, 8 * p));
        region.write_u8(0, 1).unwrap(); // outside
        region.write_u8(5 * p, 1).unwrap(); // page 1 of the tracked range
        region.write_u8(15 * p, 1).unwrap(); // outside
        assert_eq!(pages(&t.collect().unwrap()), [1], "{b}");
    });
}

#[test]
fn tracking_ends_cleanly() {
    each_backend(|b| {
        let (r, t) = setup(b, 4);
        drop(t);
        r.write_u8(0, 7).unwrap(); // writable, no handler needed
        assert_eq!(r.read_u8(0).unwrap(), 7);
    });
}

#[test]
fn best_picks_the_fastest_available() {
    let region = Arc::new(Region::new(4 * page_size(), Prot::READ_WRITE).unwrap());
    let t = track(&region, 0, region.len(), Choice::Best).unwrap();
    assert_eq!(t.backend(), crate::mechanisms().dirty_best);
    if std::env::var_os("CI").is_some() {
        assert_eq!(t.backend(), Backend::WpAsync, "CI machines have WP_ASYNC");
    }
}

#[test]
fn overlapping_trackers_are_refused() {
    for b in [Backend::Trap, Backend::UffdWp] {
        if !usable(b) {
            continue;
        }
        let (r, _t) = setup(b, 4);
        assert!(matches!(
            track(&r, 0, page_size(), Choice::Force(b)),
            Err(DirtyError::Trap(crate::trap::TrapError::Overlap { .. }))
        ));
    }
}

#[test]
fn bad_ranges_are_refused() {
    let region = Arc::new(Region::new(4 * page_size(), Prot::READ_WRITE).unwrap());
    assert!(matches!(
        track(&region, 0, 0, Choice::Best),
        Err(DirtyError::Range(RangeError::ZeroLength))
    ));
    assert!(matches!(
        track(&region, 0, 5 * page_size(), Choice::Best),
        Err(DirtyError::Range(RangeError::OutOfRange { .. }))
    ));
}

#[test]
fn soft_dirty_says_what_the_kernel_lacks() {
    let region = Arc::new(Region::new(page_size(), Prot::READ_WRITE).unwrap());
    match track(&region, 0, page_size(), Choice::Force(Backend::SoftDirty)) {
        Ok(t) => assert!(soft_dirty_available() && t.backend() == Backend::SoftDirty),
        Err(e) => {
            assert!(!soft_dirty_available());
            assert!(e.to_string().contains("CONFIG_MEM_SOFT_DIRTY"), "{e}");
        }
    }
}

/// Kernel writes: `read(2)` from a pipe into a clean tracked page.
#[test]
fn kernel_writes_behave_as_documented() {
    each_backend(|b| {
        let (r, mut t) = setup(b, 2);
        let (rx, tx) = vmprim_sys::mem::pipe().unwrap();
        use std::os::fd::AsFd;
        vmprim_sys::mem::write(tx.as_fd(), b"hello").unwrap();
        // SAFETY: the destination is inside our region; no references exist.
        let got = unsafe { vmprim_sys::mem::read_raw(rx.as_fd(), r.as_ptr().add(page_size()), 5) };
        match b {
            Backend::Trap | Backend::UffdWp => {
                assert_eq!(got, Err(Errno::EFAULT), "{b}: the kernel gets no trap");
                assert!(t.collect().unwrap().is_empty(), "{b}");
                // Once the page is dirty (writable), kernel writes succeed.
                r.write_u8(page_size(), 0).unwrap();
                // SAFETY: as above.
                let got = unsafe {
                    vmprim_sys::mem::read_raw(rx.as_fd(), r.as_ptr().add(page_size()), 5)
                };
                assert_eq!(got, Ok(5), "{b}");
                assert_eq!(pages(&t.collect().unwrap()), [1], "{b}");
            }
            Backend::WpAsync | Backend::SoftDirty => {
                assert_eq!(got, Ok(5), "{b}");
                assert_eq!(
                    pages(&t.collect().unwrap()),
                    [1],
                    "{b}: kernel write recorded"
                );
            }
        }
        assert_eq!(r.read_u8(page_size()).unwrap(), b'h', "{b}");
    });
}

/// Writers race collections; every page's last write must be reported by a
/// collection that ended after it.
#[test]
fn no_write_is_lost_to_a_racing_collection() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    each_backend(|b| {
        if b == Backend::SoftDirty {
            return; // documented: needs paused writers
        }
        let n = 8;
        let writes_each = 50_000;
        let (r, mut t) = setup(b, n);
        let clock = Arc::new(AtomicU64::new(1));
        let last_write: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (r, clock, last) = (r.clone(), clock.clone(), last_write.clone());
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ w;
                    for _ in 0..writes_each {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let page = (x % n as u64) as usize;
                        let at = clock.fetch_add(1, SeqCst);
                        r.write_u64(page * page_size() + 8 * w as usize, at)
                            .unwrap();
                        last[page].fetch_max(at, SeqCst);
                    }
                })
            })
            .collect();
        let mut reported_at = vec![0u64; n];
        let mut runs = Vec::new();
        let collect =
            |t: &mut Box<dyn DirtyTracker>, runs: &mut Vec<PageRun>, reported_at: &mut [u64]| {
                t.collect_into(runs).unwrap();
                let end = clock.fetch_add(1, SeqCst);
                for p in runs.iter().flat_map(PageRun::pages) {
                    reported_at[p] = end;
                }
            };
        while !writers.iter().all(|w| w.is_finished()) {
            collect(&mut t, &mut runs, &mut reported_at);
        }
        for w in writers {
            w.join().unwrap();
        }
        collect(&mut t, &mut runs, &mut reported_at);
        for p in 0..n {
            let lw = last_write[p].load(SeqCst);
            assert!(
                lw == 0 || reported_at[p] > lw,
                "{b}: page {p} written at {lw}, last reported at {}",
                reported_at[p]
            );
        }
    });
}

mod model {
    //! Random protect / unprotect / write / read / collect sequences, checked
    //! against a model (page contents, protections, dirty set) for every
    //! backend.
    use super::*;
    use proptest::prelude::*;

    const PAGES: usize = 24;

    #[derive(Clone, Debug)]
    enum Op {
        Write(usize, u8),
        Read(usize),
        Protect(usize, usize, Prot),
        Collect,
    }

    fn op() -> impl Strategy<Value = Op> {
        let prot = prop_oneof![Just(Prot::NONE), Just(Prot::READ), Just(Prot::READ_WRITE)];
        prop_oneof![
            6 => (0..PAGES, any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
            2 => (0..PAGES).prop_map(Op::Read),
            2 => (0..PAGES, 1..6usize, prot).prop_map(|(p, n, prot)| Op::Protect(p, n.min(PAGES - p), prot)),
            1 => Just(Op::Collect),
        ]
    }

    fn run(b: Backend, ops: &[Op]) -> Result<(), TestCaseError> {
        let (r, mut t) = setup(b, PAGES);
        let mut data = [0u8; PAGES];
        let mut prot = [Prot::READ_WRITE; PAGES];
        let mut dirty = [false; PAGES];
        let at = |p: usize| p * page_size() + 9;
        for o in ops {
            match *o {
                // Only accesses the protection allows: others are not the
                // tracker's and would end the process.
                Op::Write(p, v) if prot[p] == Prot::READ_WRITE => {
                    r.write_u8(at(p), v).unwrap();
                    data[p] = v;
                    dirty[p] = true;
                }
                Op::Read(p) if prot[p].contains(Prot::READ) => {
                    prop_assert_eq!(r.read_u8(at(p)).unwrap(), data[p], "{}: page {}", b, p)
                }
                Op::Write(..) | Op::Read(_) => {}
                Op::Protect(p, n, pr) => {
                    t.protect(p * page_size(), n * page_size(), pr).unwrap();
                    prot[p..p + n].fill(pr);
                }
                Op::Collect => {
                    let want: Vec<usize> = (0..PAGES).filter(|&p| dirty[p]).collect();
                    prop_assert_eq!(pages(&t.collect().unwrap()), want, "{}", b);
                    dirty.fill(false);
                }
            }
        }
        // Back to read-write: every page's data is intact.
        t.protect(0, PAGES * page_size(), Prot::READ_WRITE).unwrap();
        for (p, &want) in data.iter().enumerate() {
            prop_assert_eq!(
                r.read_u8(at(p)).unwrap(),
                want,
                "{}: page {} at the end",
                b,
                p
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn every_backend_matches_the_model(ops in proptest::collection::vec(op(), 0..80)) {
            for b in Backend::ALL {
                if usable(b) {
                    run(b, &ops)?;
                }
            }
        }
    }
}

#[test]
fn protect_checks_its_range() {
    each_backend(|b| {
        let (_r, mut t) = setup(b, 4);
        assert!(matches!(
            t.protect(0, 5 * page_size(), Prot::READ),
            Err(DirtyError::Range(RangeError::OutOfRange { .. }))
        ));
        assert!(matches!(
            t.protect(1, page_size(), Prot::READ),
            Err(DirtyError::Range(RangeError::NotPageAligned { .. }))
        ));
    });
}

/// A page the program made read-only and then writable again is still
/// tracked (a plain mprotect would have made it writable and clean).
#[test]
fn protect_then_unprotect_keeps_tracking() {
    each_backend(|b| {
        let (r, mut t) = setup(b, 4);
        t.protect(0, 4 * page_size(), Prot::READ).unwrap();
        t.protect(0, 4 * page_size(), Prot::READ_WRITE).unwrap();
        r.write_u8(2 * page_size(), 1).unwrap();
        assert_eq!(pages(&t.collect().unwrap()), [2], "{b}");
        t.protect(2 * page_size(), page_size(), Prot::NONE).unwrap();
        t.protect(2 * page_size(), page_size(), Prot::READ_WRITE)
            .unwrap();
        r.write_u8(2 * page_size(), 2).unwrap();
        assert_eq!(pages(&t.collect().unwrap()), [2], "{b}");
    });
}
