//! The benchmark workloads, written against [`Heap`]: GCBench (Ellis,
//! Kovac and Boehm) and a mutation-heavy one. The Boehm peer of
//! `vmprim bench gc` runs the same two, written in C from the same
//! descriptions, and must print the same check values.

use crate::heap::{Collector, Heap, Local};
use crate::object::Shape;

/// GCBench's node: `left`, `right`; `i`, `j`.
pub const NODE: Shape = Shape::new(2, 2);

/// GCBench's parameters.
///
/// # Examples
/// ```
/// use vmprim_gc::workload::GcBench;
///
/// let full = GcBench::full();
/// assert_eq!((full.stretch, full.long_lived, full.array_size), (18, 16, 500_000));
/// assert_eq!(full.expected_check(), (1 << 17) - 1); // nodes of the long-lived tree
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcBench {
    /// Depth of the tree built once to stretch the heap.
    pub stretch: u32,
    /// Depth of the long-lived tree.
    pub long_lived: u32,
    /// Length of the long-lived array of doubles.
    pub array_size: u32,
    /// Shallowest short-lived trees.
    pub min_depth: u32,
    /// Deepest short-lived trees (depths go up by 2).
    pub max_depth: u32,
}

/// Nodes in a full binary tree of depth `d`.
pub const fn tree_size(d: u32) -> u64 {
    (1 << (d + 1)) - 1
}

impl GcBench {
    /// The original parameters: stretch 18, long-lived 16, an array of
    /// 500 000, trees of depth 4 to 16.
    pub const fn full() -> Self {
        Self {
            stretch: 18,
            long_lived: 16,
            array_size: 500_000,
            min_depth: 4,
            max_depth: 16,
        }
    }

    /// A run of a few milliseconds, for tests and examples.
    pub const fn tiny() -> Self {
        Self {
            stretch: 10,
            long_lived: 8,
            array_size: 4000,
            min_depth: 4,
            max_depth: 8,
        }
    }

    /// How many trees of depth `d` each phase builds.
    pub const fn iterations(&self, d: u32) -> u64 {
        2 * tree_size(self.stretch) / tree_size(d)
    }

    /// What [`gcbench`] returns when every object survived intact: the
    /// node count of the long-lived tree.
    pub const fn expected_check(&self) -> u64 {
        tree_size(self.long_lived)
    }
}

fn populate<C: Collector>(h: &mut Heap<C>, depth: u32, node: Local) {
    if depth == 0 {
        return;
    }
    let m = h.mark();
    let t = h.alloc(NODE);
    h.set(node, 0, t);
    h.alloc_to(NODE, t);
    h.set(node, 1, t);
    h.get_to(node, 0, t);
    populate(h, depth - 1, t);
    h.get_to(node, 1, t);
    populate(h, depth - 1, t);
    h.release(m);
}

fn make_tree<C: Collector>(h: &mut Heap<C>, depth: u32) -> Local {
    if depth == 0 {
        return h.alloc(NODE);
    }
    let m = h.mark();
    let l = make_tree(h, depth - 1);
    let r = make_tree(h, depth - 1);
    let n = h.alloc(NODE);
    h.set(n, 0, l);
    h.set(n, 1, r);
    h.ret(m, n)
}

fn count<C: Collector>(h: &mut Heap<C>, node: Local) -> u64 {
    if h.is_null(node) {
        return 0;
    }
    let m = h.mark();
    let l = h.get(node, 0);
    let r = h.get(node, 1);
    let n = 1 + count(h, l) + count(h, r);
    h.release(m);
    n
}

/// Runs GCBench: stretch the heap with a tree of depth `stretch`; build a
/// long-lived tree (top-down) and array; then, for each depth from
/// `min_depth` to `max_depth` by 2, build [`GcBench::iterations`] trees
/// top-down and as many bottom-up, dropping each. Returns the long-lived
/// tree's node count, after checking the array survived.
///
/// # Panics
/// If the long-lived array lost its contents.
pub fn gcbench<C: Collector>(h: &mut Heap<C>, p: &GcBench) -> u64 {
    let base = h.mark();
    make_tree(h, p.stretch);
    h.release(base);

    let long = h.alloc(NODE);
    populate(h, p.long_lived, long);
    let array = h.alloc(Shape::new(0, p.array_size));
    for i in 0..p.array_size / 2 {
        h.set_scalar(array, i, (1.0 / f64::from(i)).to_bits());
    }

    let mut d = p.min_depth;
    while d <= p.max_depth {
        let n = p.iterations(d);
        for _ in 0..n {
            let m = h.mark();
            let t = h.alloc(NODE);
            populate(h, d, t);
            h.release(m);
        }
        for _ in 0..n {
            let m = h.mark();
            make_tree(h, d);
            h.release(m);
        }
        d += 2;
    }

    if p.array_size / 2 > 1000 {
        let v = f64::from_bits(h.scalar(array, 1000));
        assert_eq!(v, 1.0 / 1000.0, "the long-lived array lost its contents");
    }
    let n = count(h, long);
    h.release(base);
    n
}

/// The mutation-heavy workload's parameters.
///
/// # Examples
/// ```
/// use vmprim_gc::workload::Mutate;
///
/// let m = Mutate { table_size: 4, iterations: 0 };
/// assert_eq!(m.expected_check(), 0 + 1 + 2 + 3); // the cells' own numbers
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mutate {
    /// Cells in the long-lived table.
    pub table_size: u32,
    /// Stores of a new object into a random cell.
    pub iterations: u64,
}

/// The workload's random numbers: xorshift64*, seeded the same in the C
/// peer.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

impl Mutate {
    /// 65 536 cells, 4 million stores.
    pub const fn full() -> Self {
        Self {
            table_size: 1 << 16,
            iterations: 4_000_000,
        }
    }

    /// A run of a few milliseconds.
    pub const fn tiny() -> Self {
        Self {
            table_size: 1 << 10,
            iterations: 50_000,
        }
    }

    /// What [`mutate`] returns, computed on plain Rust data.
    pub fn expected_check(&self) -> u64 {
        #[derive(Clone, Copy)]
        struct Cell {
            i: u64,
            left: u64,
            right: u64,
        }
        let n = self.table_size as u64;
        let mut table: Vec<Cell> = (0..n)
            .map(|i| Cell {
                i,
                left: 0,
                right: 0,
            })
            .collect();
        let mut rng = Rng(SEED);
        for it in 0..self.iterations {
            let r = rng.next();
            let c = &mut table[((r >> 16) % n) as usize];
            if r & 1 == 0 {
                c.left = it;
            } else {
                c.right = it;
            }
            if (r >> 8) & 63 == 0 {
                *c = Cell {
                    i: it,
                    left: c.left,
                    right: 0,
                };
            }
        }
        table.iter().fold(0u64, |s, c| {
            s.wrapping_add(c.i)
                .wrapping_add(c.left)
                .wrapping_add(c.right)
        })
    }
}

/// Runs the mutation-heavy workload: a long-lived table of cells (GCBench
/// nodes); then, `iterations` times, a new node stored into the left or
/// right field of a random cell, and one time in 64 the cell replaced by a
/// new one that keeps its left field. Every store of a young object into
/// an old one is what a generational collector's barrier must catch.
/// Returns the sum of the cells' and their children's numbers.
pub fn mutate<C: Collector>(h: &mut Heap<C>, p: &Mutate) -> u64 {
    let base = h.mark();
    let n = p.table_size;
    let table = h.alloc(Shape::new(n, 0));
    let cell = h.null();
    for k in 0..n {
        h.alloc_to(NODE, cell);
        h.set_scalar(cell, 0, u64::from(k));
        h.set(table, k, cell);
    }
    let young = h.null();
    let fresh = h.null();
    let mut rng = Rng(SEED);
    for it in 0..p.iterations {
        let r = rng.next();
        let k = ((r >> 16) % u64::from(n)) as u32;
        h.alloc_to(NODE, young);
        h.set_scalar(young, 0, it);
        h.get_to(table, k, cell);
        h.set(cell, (r & 1) as u32, young);
        if (r >> 8) & 63 == 0 {
            h.alloc_to(NODE, fresh);
            h.set_scalar(fresh, 0, it);
            h.get_to(cell, 0, young);
            h.set(fresh, 0, young);
            h.set(table, k, fresh);
        }
    }
    let mut sum = 0u64;
    for k in 0..n {
        h.get_to(table, k, cell);
        sum = sum.wrapping_add(h.scalar(cell, 0));
        for f in 0..2 {
            h.get_to(cell, f, young);
            if !h.is_null(young) {
                sum = sum.wrapping_add(h.scalar(young, 0));
            }
        }
    }
    h.release(base);
    sum
}
