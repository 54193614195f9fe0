//! Random programs of map / unmap / protect / snapshot / read / write /
//! evict / sync / forget against a plain byte-array model, on every pmap:
//! the software table, the real MMU, and both forgetting translations at
//! random, with a resident budget small enough that pageout and swap run
//! all the time.

mod common;

use common::{file_bytes, load, store, temp_file, Kind, P};
use proptest::prelude::*;
use std::sync::Arc;
use vmprim_vm::pager::MemPager;
use vmprim_vm::{AddressSpace, Config, Mapping, Prot, ViolationKind, VmError, VmObject};

const PAGES: usize = 16;
const OBJ_PAGES: usize = 8;
const BUDGET: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    MapAnon { at: usize, len: usize },
    MapShared { at: usize, len: usize, off: usize },
    MapPrivate { at: usize, len: usize, off: usize },
    Unmap { at: usize, len: usize },
    Protect { at: usize, len: usize, write: bool },
    Snapshot { at: usize, len: usize },
    Write { page: usize, off: usize, val: u8 },
    Sweep { page: usize, n: usize, val: u8 },
    Read { page: usize },
    Evict { at: usize, len: usize },
    Forget { at: usize, len: usize },
    Sync { at: usize, len: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..PAGES, 1..5usize);
    prop_oneof![
        2 => range.clone().prop_map(|(at, len)| Op::MapAnon { at, len }),
        1 => (range.clone(), 0..OBJ_PAGES).prop_map(|((at, len), off)| Op::MapShared { at, len, off }),
        1 => (range.clone(), 0..OBJ_PAGES).prop_map(|((at, len), off)| Op::MapPrivate { at, len, off }),
        1 => range.clone().prop_map(|(at, len)| Op::Unmap { at, len }),
        1 => (range.clone(), any::<bool>()).prop_map(|((at, len), write)| Op::Protect { at, len, write }),
        2 => range.clone().prop_map(|(at, len)| Op::Snapshot { at, len }),
        8 => (0..PAGES, 0..P - 8, any::<u8>()).prop_map(|(page, off, val)| Op::Write { page, off, val }),
        4 => (0..PAGES).prop_map(|page| Op::Read { page }),
        3 => (0..PAGES, 2..12usize, any::<u8>()).prop_map(|(page, n, val)| Op::Sweep { page, n, val }),
        1 => range.clone().prop_map(|(at, len)| Op::Evict { at, len }),
        1 => range.clone().prop_map(|(at, len)| Op::Forget { at, len }),
        1 => range.prop_map(|(at, len)| Op::Sync { at, len }),
    ]
}

/// The model: each mapped page names a cell (a page of contents) and whether
/// it is writable; shared mappings name the object's cells.
struct Model {
    pages: Vec<Option<(usize, bool)>>,
    cells: Vec<Vec<u8>>,
    obj: Vec<usize>,
}

/// What backs the object the program maps shared and private.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Zero-fill memory (pages go to swap).
    Anonymous,
    /// A pager in the heap.
    Mem,
    /// A file (read faults map its pages straight from the page cache).
    File,
}

/// The object's initial byte `b` of page `k`, for a file.
fn initial(k: usize, b: usize) -> u8 {
    (k * 31 + b % 251) as u8 | 1
}

impl Model {
    fn new(source: Source) -> Self {
        let mut m = Self {
            pages: vec![None; PAGES],
            cells: Vec::new(),
            obj: Vec::new(),
        };
        m.obj = (0..OBJ_PAGES)
            .map(|k| match source {
                Source::File => m.fresh((0..P).map(|b| initial(k, b)).collect()),
                _ => m.fresh(vec![0; P]),
            })
            .collect();
        m
    }

    fn fresh(&mut self, contents: Vec<u8>) -> usize {
        self.cells.push(contents);
        self.cells.len() - 1
    }

    fn free(&self, at: usize, len: usize) -> bool {
        self.pages[at..at + len].iter().all(Option::is_none)
    }

    fn mapped(&self, at: usize, len: usize) -> bool {
        self.pages[at..at + len].iter().all(Option::is_some)
    }

    fn lowest_free(&self, len: usize) -> Option<usize> {
        (0..=PAGES - len).find(|&s| self.free(s, len))
    }
}

fn fits(at: usize, len: usize) -> bool {
    at + len <= PAGES
}

fn run(kind: Kind, source: Source, ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
    let space = kind
        .space(PAGES * P, Config::default().budget(BUDGET), seed)
        .unwrap();
    let mut file = None;
    let obj: VmObject = match source {
        Source::Mem => space
            .create_paged(Arc::new(MemPager::new()), OBJ_PAGES * P)
            .unwrap(),
        Source::Anonymous => space.create_anonymous(OBJ_PAGES * P).unwrap(),
        Source::File => {
            let f = temp_file(OBJ_PAGES, |b| initial(b / P, b % P));
            file = Some(f.try_clone().unwrap());
            space.create_file(f).unwrap()
        }
    };
    let mut m = Model::new(source);
    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step}: {op:?} on {kind:?}");
        match *op {
            Op::MapAnon { at, len }
            | Op::MapShared { at, len, .. }
            | Op::MapPrivate { at, len, .. } => {
                let (mapping, off) = match *op {
                    Op::MapAnon { .. } => (Mapping::anonymous(len * P), None),
                    Op::MapShared { off, .. } => {
                        (Mapping::object(&obj, off * P, len * P), Some((off, true)))
                    }
                    Op::MapPrivate { off, .. } => (
                        Mapping::object(&obj, off * P, len * P).private(),
                        Some((off, false)),
                    ),
                    _ => unreachable!(),
                };
                let got = space.map(mapping.at(at * P));
                if !fits(at, len) {
                    prop_assert!(
                        matches!(got, Err(VmError::OutOfRange { .. })),
                        "{ctx}: {got:?}"
                    );
                } else if off.is_some_and(|(o, _)| o + len > OBJ_PAGES) {
                    prop_assert!(
                        matches!(got, Err(VmError::OutOfRange { of: "object", .. })),
                        "{ctx}: {got:?}"
                    );
                } else if !m.free(at, len) {
                    prop_assert!(
                        matches!(got, Err(VmError::Overlap { .. })),
                        "{ctx}: {got:?}"
                    );
                } else {
                    prop_assert_eq!(got.ok(), Some(at * P), "{}", ctx);
                    for k in 0..len {
                        let cell = match off {
                            None => m.fresh(vec![0; P]),
                            Some((o, true)) => m.obj[o + k],
                            Some((o, false)) => {
                                let c = m.cells[m.obj[o + k]].clone();
                                m.fresh(c)
                            }
                        };
                        m.pages[at + k] = Some((cell, true));
                    }
                }
            }
            Op::Unmap { at, len }
            | Op::Protect { at, len, .. }
            | Op::Evict { at, len }
            | Op::Sync { at, len } => {
                let got = match *op {
                    Op::Unmap { .. } => space.unmap(at * P, len * P),
                    Op::Protect { write, .. } => space.protect(
                        at * P,
                        len * P,
                        if write { Prot::READ_WRITE } else { Prot::READ },
                    ),
                    Op::Evict { .. } => space.evict(at * P, len * P),
                    _ => space.sync(at * P, len * P),
                };
                if !fits(at, len) {
                    prop_assert!(
                        matches!(got, Err(VmError::OutOfRange { .. })),
                        "{ctx}: {got:?}"
                    );
                } else if !m.mapped(at, len) {
                    prop_assert!(
                        matches!(got, Err(VmError::NotMapped { .. })),
                        "{ctx}: {got:?}"
                    );
                } else {
                    prop_assert!(got.is_ok(), "{ctx}: {got:?}");
                    for k in at..at + len {
                        match *op {
                            Op::Unmap { .. } => m.pages[k] = None,
                            Op::Protect { write, .. } => m.pages[k].as_mut().unwrap().1 = write,
                            _ => {}
                        }
                    }
                }
            }
            Op::Forget { at, len } => {
                let got = space.forget_translations(at * P, len * P);
                prop_assert_eq!(got.is_ok(), fits(at, len), "{}", ctx);
            }
            Op::Snapshot { at, len } => {
                let got = space.snapshot(at * P, len * P);
                if !fits(at, len) {
                    prop_assert!(
                        matches!(got, Err(VmError::OutOfRange { .. })),
                        "{ctx}: {got:?}"
                    );
                } else if !m.mapped(at, len) {
                    prop_assert!(
                        matches!(got, Err(VmError::NotMapped { .. })),
                        "{ctx}: {got:?}"
                    );
                } else {
                    match m.lowest_free(len) {
                        None => prop_assert!(
                            matches!(got, Err(VmError::NoSpace { .. })),
                            "{ctx}: {got:?}"
                        ),
                        Some(d) => {
                            prop_assert_eq!(got.ok(), Some(d * P), "{}", ctx);
                            for k in 0..len {
                                let (cell, w) = m.pages[at + k].unwrap();
                                let c = m.cells[cell].clone();
                                m.pages[d + k] = Some((m.fresh(c), w));
                            }
                        }
                    }
                }
            }
            Op::Write { page, off, val } => {
                write(&space, &mut m, kind, (page, off, val), step % 2 == 0, &ctx)?
            }
            Op::Sweep { page, n, val } => {
                // Forward through consecutive pages: the fault-around path.
                for p in page..(page + n).min(PAGES) {
                    write(&space, &mut m, kind, (p, 8, val), step % 2 == 0, &ctx)?;
                }
            }
            Op::Read { page } => check_page(&space, &m, kind, page, &ctx)?,
        }
        let s = space.stats();
        prop_assert!(s.resident_pages <= BUDGET, "{ctx}: {s:?}");
    }
    for page in 0..PAGES {
        check_page(&space, &m, kind, page, "final")?;
    }
    if let Some(file) = file {
        // The last references write the shared writes back, and only those.
        drop(obj);
        drop(space);
        let bytes = file_bytes(&file);
        prop_assert_eq!(bytes.len(), OBJ_PAGES * P, "the file never grows");
        for (k, &cell) in m.obj.iter().enumerate() {
            prop_assert!(
                bytes[k * P..(k + 1) * P] == m.cells[cell][..],
                "file page {} differs from the model's object",
                k
            );
        }
    }
    Ok(())
}

fn write(
    space: &AddressSpace,
    m: &mut Model,
    kind: Kind,
    (page, off, val): (usize, usize, u8),
    plain: bool,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let bytes = [val, val ^ 1, val ^ 2, val ^ 3, val, val, val, !val];
    let plain = kind.is_host() && plain;
    let expect = m.pages[page];
    if plain && expect.is_some_and(|(_, w)| w) {
        for (k, b) in bytes.iter().enumerate() {
            store(space, page * P + off + k, *b);
        }
    } else {
        let got = space.write(page * P + off, &bytes);
        match expect {
            None => prop_assert!(
                matches!(&got, Err(VmError::Fault(v)) if matches!(v.kind, ViolationKind::Unmapped)),
                "{ctx}: {got:?}"
            ),
            Some((_, false)) => prop_assert!(
                matches!(&got, Err(VmError::Fault(v)) if matches!(v.kind, ViolationKind::Protection(_))),
                "{ctx}: {got:?}"
            ),
            Some(_) => prop_assert!(got.is_ok(), "{ctx}: {got:?}"),
        }
    }
    if let Some((cell, true)) = expect {
        m.cells[cell][off..off + 8].copy_from_slice(&bytes);
    }
    Ok(())
}

fn check_page(
    space: &AddressSpace,
    m: &Model,
    kind: Kind,
    page: usize,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let mut buf = vec![0u8; P];
    let got = space.read(page * P, &mut buf);
    match m.pages[page] {
        None => prop_assert!(
            matches!(&got, Err(VmError::Fault(v)) if matches!(v.kind, ViolationKind::Unmapped)),
            "{ctx}: page {page}: {got:?}"
        ),
        Some((cell, _)) => {
            prop_assert!(got.is_ok(), "{ctx}: page {page}: {got:?}");
            prop_assert!(
                buf == m.cells[cell],
                "{ctx}: page {page} differs from the model"
            );
            if kind.is_host() {
                for off in [0, 1, 777, P - 1] {
                    prop_assert_eq!(
                        load(space, page * P + off),
                        m.cells[cell][off],
                        "{} page {} +{} (plain load)",
                        ctx,
                        page,
                        off
                    );
                }
            }
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn simulated_paged(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::Sim, Source::Mem, &ops, seed)?;
    }

    #[test]
    fn simulated_forgetful_anonymous(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::ForgetfulSim, Source::Anonymous, &ops, seed)?;
    }

    #[test]
    fn simulated_file(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::Sim, Source::File, &ops, seed)?;
    }

    #[test]
    fn host_anonymous(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::Host, Source::Anonymous, &ops, seed)?;
    }

    #[test]
    fn host_forgetful_paged(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::ForgetfulHost, Source::Mem, &ops, seed)?;
    }

    #[test]
    fn host_file(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::Host, Source::File, &ops, seed)?;
    }

    #[test]
    fn host_mprotect_anonymous(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::HostMprotect, Source::Anonymous, &ops, seed)?;
    }

    #[test]
    fn host_forgetful_file(ops in prop::collection::vec(op(), 1..120), seed in any::<u64>()) {
        run(Kind::ForgetfulHost, Source::File, &ops, seed)?;
    }
}
