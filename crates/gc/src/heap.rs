//! The mutator's side: [`Heap`], its shadow stack of [`Local`]s, and the
//! [`Collector`] trait the six collectors implement.

use crate::config::{Config, GcError};
use crate::object::{ptr_offset, scalar_offset, Shape};
use crate::stats::Stats;
use crate::verify::{self, Census, VerifyError};
use crate::words;

pub(crate) mod sealed {
    use super::*;

    /// What a collector does for the heap. Sealed: the heap's invariants
    /// (every root and every pointer field is null or a live object of
    /// this collector) rest on these being implemented only here.
    pub trait Engine: Sized {
        /// Makes an empty heap's collector.
        fn create(cfg: &Config) -> Result<Self, GcError>;

        /// Allocates an object of `shape`, header written and fields zero;
        /// may collect first, updating `roots`.
        fn alloc(&mut self, shape: Shape, roots: &mut [usize]) -> Result<usize, GcError>;

        /// Loads the pointer field at `slot` (the read barrier).
        #[inline(always)]
        fn load(&mut self, slot: usize) -> usize {
            // SAFETY: the heap passes only pointer fields of live objects.
            unsafe { words::get(slot) }
        }

        /// Stores `value` into the pointer field at `slot` (the write
        /// barrier).
        #[inline(always)]
        fn store(&mut self, slot: usize, value: usize) {
            // SAFETY: as for `load`.
            unsafe { words::set(slot, value) }
        }

        /// A complete collection: when it returns, no collection is in
        /// progress and every unreachable object is reclaimed.
        fn collect(&mut self, roots: &mut [usize]);

        /// Completes any collection in progress, so the heap holds no
        /// from-space pointers.
        fn quiesce(&mut self);

        /// Reads a heap word without any barrier or trap (through the
        /// collector's view).
        fn peek(&self, addr: usize) -> usize;

        /// Whether an object of `bytes` bytes at `addr` lies wholly inside
        /// memory the heap currently uses for objects (not from-space).
        fn holds(&self, addr: usize, bytes: usize) -> bool;

        /// The counters.
        fn stats(&self) -> Stats;
    }
}

/// A garbage collector for [`Heap`]: one of [`StwCopy`](crate::StwCopy),
/// [`Baker`](crate::Baker), [`VmBarrier`](crate::VmBarrier),
/// [`VmConcurrent`](crate::VmConcurrent), [`GenDirty`](crate::GenDirty),
/// [`GenCards`](crate::GenCards). Sealed.
pub trait Collector: sealed::Engine {
    /// The collector's name in reports (the keys of `vmprim bench gc`).
    const NAME: &'static str;
}

/// A slot of the heap's shadow stack: how the mutator holds an object
/// (or null). The collector updates it when the object moves.
///
/// A `Local` is an index: it stays valid until the [`Heap::release`] or
/// [`Heap::pop`] that removes its slot. Using one after that is a logic
/// error the heap catches (a panic) if the slot no longer exists, and
/// otherwise reads whatever the slot now holds; it never reaches freed
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local(u32);

/// A height of the shadow stack, for [`Heap::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(u32);

/// A garbage-collected heap with precise roots, collected by `C`.
///
/// Every method that may allocate may collect: objects move, and the
/// [`Local`]s follow them. Field indices are checked against the object's
/// [`Shape`] (a panic, never a wild access).
///
/// # Examples
/// A binary tree, its root kept across collections.
/// ```
/// use vmprim_gc::{Config, Heap, Local, Shape, StwCopy};
///
/// const NODE: Shape = Shape::new(2, 0);
/// fn tree(h: &mut Heap<StwCopy>, depth: u32) -> Local {
///     let m = h.mark();
///     let n = h.alloc(NODE);
///     if depth > 0 {
///         let l = tree(h, depth - 1);
///         h.set(n, 0, l);
///         let r = tree(h, depth - 1);
///         h.set(n, 1, r);
///     }
///     h.ret(m, n)
/// }
/// let mut heap = Heap::<StwCopy>::new(&Config::small())?;
/// let t = tree(&mut heap, 10);
/// assert_eq!(heap.roots(), 1);
/// heap.collect();
/// assert_eq!(heap.verify()?.objects, 2047);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Heap<C: Collector> {
    roots: Vec<usize>,
    gc: C,
}

impl<C: Collector> Heap<C> {
    /// An empty heap.
    pub fn new(cfg: &Config) -> Result<Self, GcError> {
        Ok(Self {
            roots: Vec::with_capacity(1024),
            gc: C::create(&cfg.checked()?)?,
        })
    }

    #[inline(always)]
    fn push(&mut self, v: usize) -> Local {
        let i = self.roots.len();
        self.roots.push(v);
        Local(i as u32)
    }

    #[inline(always)]
    fn obj(&self, l: Local) -> usize {
        let o = self.roots[l.0 as usize];
        assert!(o != 0, "null dereference through {l:?}");
        o
    }

    #[inline(always)]
    fn shape_of(&self, o: usize) -> Shape {
        // SAFETY: `o` is a live object (roots hold null or live objects,
        // and `obj` refused null); its header is readable in the mutator's
        // view (a VM collector's barrier may trap first, and scans the page).
        let h = unsafe { words::get(o) };
        match Shape::from_header(h) {
            Some(s) => s,
            None => unreachable!("the mutator holds a from-space object"),
        }
    }

    /// Allocates an object of `shape`, its fields null and zero, in a new
    /// local.
    ///
    /// # Panics
    /// When the heap is out of memory; [`try_alloc`](Self::try_alloc) says
    /// so instead.
    #[inline]
    pub fn alloc(&mut self, shape: Shape) -> Local {
        match self.try_alloc(shape) {
            Ok(l) => l,
            Err(e) => panic!("{} heap: {e}", C::NAME),
        }
    }

    /// Allocates an object of `shape` in a new local, or says why not.
    ///
    /// # Examples
    /// ```
    /// use vmprim_gc::{Config, GcError, Heap, Shape, StwCopy};
    ///
    /// let mut heap = Heap::<StwCopy>::new(&Config::small())?;
    /// let huge = Shape::new(1 << 20, 0); // 8 MiB of pointers: over 1 MiB semispaces
    /// assert!(matches!(heap.try_alloc(huge), Err(GcError::OutOfMemory { .. })));
    /// # Ok::<(), GcError>(())
    /// ```
    #[inline]
    pub fn try_alloc(&mut self, shape: Shape) -> Result<Local, GcError> {
        let o = self.gc.alloc(shape, &mut self.roots)?;
        Ok(self.push(o))
    }

    /// Allocates an object of `shape` into the existing local `dst`.
    #[inline]
    pub fn alloc_to(&mut self, shape: Shape, dst: Local) {
        let l = self.alloc(shape);
        self.roots[dst.0 as usize] = self.roots[l.0 as usize];
        self.roots.pop();
    }

    /// A new local holding null.
    #[inline]
    pub fn null(&mut self) -> Local {
        self.push(0)
    }

    /// A new local holding what `l` holds.
    #[inline]
    pub fn local(&mut self, l: Local) -> Local {
        let v = self.roots[l.0 as usize];
        self.push(v)
    }

    /// Makes `dst` hold what `src` holds.
    #[inline]
    pub fn assign(&mut self, dst: Local, src: Local) {
        self.roots[dst.0 as usize] = self.roots[src.0 as usize];
    }

    /// Makes `dst` hold null.
    #[inline]
    pub fn assign_null(&mut self, dst: Local) {
        self.roots[dst.0 as usize] = 0;
    }

    /// Whether `l` holds null.
    #[inline]
    pub fn is_null(&self, l: Local) -> bool {
        self.roots[l.0 as usize] == 0
    }

    /// Whether `a` and `b` hold the same object (or both null).
    #[inline]
    pub fn same(&self, a: Local, b: Local) -> bool {
        self.roots[a.0 as usize] == self.roots[b.0 as usize]
    }

    /// The current height of the shadow stack.
    #[inline]
    pub fn mark(&self) -> Mark {
        Mark(self.roots.len() as u32)
    }

    /// Drops every local made since `m`.
    #[inline]
    pub fn release(&mut self, m: Mark) {
        self.roots.truncate(m.0 as usize);
    }

    /// Drops every local made since `m`, then returns a new local holding
    /// what `keep` held: a function's return value.
    #[inline]
    pub fn ret(&mut self, m: Mark, keep: Local) -> Local {
        let v = self.roots[keep.0 as usize];
        self.roots.truncate(m.0 as usize);
        self.push(v)
    }

    /// Drops the most recent local.
    #[inline]
    pub fn pop(&mut self) {
        self.roots.pop();
    }

    /// How many locals exist.
    #[inline]
    pub fn roots(&self) -> usize {
        self.roots.len()
    }

    /// The shape of the object `obj` holds.
    ///
    /// # Panics
    /// If `obj` holds null.
    #[inline]
    pub fn shape(&self, obj: Local) -> Shape {
        self.shape_of(self.obj(obj))
    }

    #[inline(always)]
    fn ptr_slot(&self, obj: Local, field: u32) -> usize {
        let o = self.obj(obj);
        let s = self.shape_of(o);
        assert!(field < s.ptrs, "pointer field {field} of a {s:?}");
        o + ptr_offset(field as usize)
    }

    #[inline(always)]
    fn scalar_slot(&self, obj: Local, field: u32) -> usize {
        let o = self.obj(obj);
        let s = self.shape_of(o);
        assert!(field < s.scalars, "scalar field {field} of a {s:?}");
        o + scalar_offset(s, field as usize)
    }

    /// A new local holding pointer field `field` of `obj`.
    ///
    /// # Panics
    /// If `obj` holds null or has no such field.
    #[inline]
    pub fn get(&mut self, obj: Local, field: u32) -> Local {
        let slot = self.ptr_slot(obj, field);
        let v = self.gc.load(slot);
        self.push(v)
    }

    /// Loads pointer field `field` of `obj` into `dst` (which may be `obj`).
    #[inline]
    pub fn get_to(&mut self, obj: Local, field: u32, dst: Local) {
        let slot = self.ptr_slot(obj, field);
        let v = self.gc.load(slot);
        self.roots[dst.0 as usize] = v;
    }

    /// Whether pointer field `field` of `obj` is null.
    #[inline]
    pub fn field_is_null(&mut self, obj: Local, field: u32) -> bool {
        let slot = self.ptr_slot(obj, field);
        self.gc.load(slot) == 0
    }

    /// Stores what `value` holds into pointer field `field` of `obj`.
    #[inline]
    pub fn set(&mut self, obj: Local, field: u32, value: Local) {
        let slot = self.ptr_slot(obj, field);
        let v = self.roots[value.0 as usize];
        self.gc.store(slot, v);
    }

    /// Stores null into pointer field `field` of `obj`.
    #[inline]
    pub fn set_null(&mut self, obj: Local, field: u32) {
        let slot = self.ptr_slot(obj, field);
        self.gc.store(slot, 0);
    }

    /// Scalar field `field` of `obj`.
    #[inline]
    pub fn scalar(&self, obj: Local, field: u32) -> u64 {
        let slot = self.scalar_slot(obj, field);
        // SAFETY: a scalar field of a live object.
        unsafe { words::get(slot) as u64 }
    }

    /// Sets scalar field `field` of `obj`.
    #[inline]
    pub fn set_scalar(&mut self, obj: Local, field: u32, value: u64) {
        let slot = self.scalar_slot(obj, field);
        // SAFETY: a scalar field of a live object.
        unsafe { words::set(slot, value as usize) }
    }

    /// Collects garbage now, completely: when this returns no collection is
    /// in progress.
    pub fn collect(&mut self) {
        self.gc.collect(&mut self.roots);
    }

    /// The collector's counters.
    pub fn stats(&self) -> Stats {
        self.gc.stats()
    }

    /// Checks the heap: from the roots, every reachable object lies in
    /// memory the heap uses (none in from-space), has a well-formed header,
    /// and is counted once. Completes a collection in progress first.
    ///
    /// # Examples
    /// ```
    /// use vmprim_gc::{Config, Heap, Shape, VmConcurrent};
    ///
    /// let mut heap = Heap::<VmConcurrent>::new(&Config::small())?;
    /// let a = heap.alloc(Shape::new(1, 0));
    /// let b = heap.alloc(Shape::new(0, 3));
    /// heap.set(a, 0, b);
    /// heap.pop(); // b: still reachable through a
    /// let _garbage = heap.alloc(Shape::new(0, 100));
    /// heap.pop();
    /// heap.collect();
    /// let census = heap.verify()?;
    /// assert_eq!((census.objects, census.bytes), (2, 16 + 32));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(&mut self) -> Result<Census, VerifyError> {
        self.gc.quiesce();
        verify::walk(&self.gc, &self.roots)
    }

    /// The collector.
    pub fn collector(&self) -> &C {
        &self.gc
    }
}
