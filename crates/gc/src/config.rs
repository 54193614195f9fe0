//! Heap configuration and the errors of making and growing a heap.

use thiserror::Error;
use vmprim_prim::dirty::{Choice, DirtyError};
use vmprim_prim::map2::Map2Error;
use vmprim_prim::trap::TrapError;
use vmprim_prim::{page_size, RegionError};

/// How big a heap is and how its collector paces itself.
///
/// # Examples
/// ```
/// use vmprim_gc::{Config, GcError, Heap, StwCopy};
///
/// let cfg = Config { heap_bytes: 8 << 20, ..Config::default() };
/// assert!(Heap::<StwCopy>::new(&cfg).is_ok());
/// let tiny = Config { heap_bytes: 4096, ..Config::default() };
/// assert!(matches!(Heap::<StwCopy>::new(&tiny), Err(GcError::Config(_))));
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// Bytes of each semispace (copying collectors), or of the old
    /// generation (generational ones): the most live data the heap holds.
    pub heap_bytes: usize,
    /// Bytes of the nursery (generational collectors only).
    pub nursery_bytes: usize,
    /// The allocation chunk: the mutator takes memory from the collector in
    /// chunks this big, and the incremental collectors do a slice of work
    /// per chunk.
    pub chunk_bytes: usize,
    /// Incremental collectors: bytes of to-space scanned per byte allocated
    /// while a collection is in progress.
    pub scan_ratio: usize,
    /// Objects without pointer fields of at least this many bytes live in
    /// the large object space and are never copied.
    pub large_bytes: usize,
    /// How many pauses [`Stats`](crate::Stats) keeps.
    pub pause_log: usize,
    /// The DIRTY backend of [`GenDirty`](crate::GenDirty).
    pub dirty: Choice,
    /// [`VmConcurrent`](crate::VmConcurrent): pages the collector thread
    /// scans per turn of its lock (a trapping mutator waits at most one
    /// turn).
    pub scan_batch_pages: usize,
}

impl Default for Config {
    /// 64 MiB semispaces (or old generation), a 4 MiB nursery, 64 KiB
    /// chunks, scanning 4 bytes per byte allocated.
    fn default() -> Self {
        Self {
            heap_bytes: 64 << 20,
            nursery_bytes: 4 << 20,
            chunk_bytes: 64 << 10,
            scan_ratio: 4,
            large_bytes: 64 << 10,
            pause_log: 1 << 18,
            dirty: Choice::Best,
            scan_batch_pages: 8,
        }
    }
}

impl Config {
    /// A small heap for tests and examples: 1 MiB semispaces, 128 KiB
    /// nursery, 16 KiB chunks. Collections are frequent.
    pub fn small() -> Self {
        Self {
            heap_bytes: 1 << 20,
            nursery_bytes: 128 << 10,
            chunk_bytes: 16 << 10,
            scan_ratio: 2,
            large_bytes: 16 << 10,
            pause_log: 1 << 14,
            dirty: Choice::Best,
            scan_batch_pages: 4,
        }
    }

    /// Checks the sizes and rounds them up to whole pages.
    pub(crate) fn checked(&self) -> Result<Self, GcError> {
        let p = page_size();
        let mut c = self.clone();
        let pages = |v: usize, field: &str| {
            v.checked_next_multiple_of(p)
                .ok_or_else(|| GcError::Config(format!("{field} {v} is too large")))
        };
        c.chunk_bytes = pages(c.chunk_bytes.max(p), "chunk_bytes")?;
        c.heap_bytes = pages(c.heap_bytes, "heap_bytes")?;
        c.nursery_bytes = pages(c.nursery_bytes, "nursery_bytes")?;
        if c.heap_bytes < c.chunk_bytes.saturating_mul(8) {
            return Err(GcError::Config(format!(
                "heap_bytes {} is under 8 chunks of {} bytes",
                self.heap_bytes, c.chunk_bytes
            )));
        }
        if c.nursery_bytes < c.chunk_bytes || c.nursery_bytes > c.heap_bytes {
            return Err(GcError::Config(format!(
                "nursery_bytes {} must lie between one chunk ({}) and heap_bytes ({})",
                self.nursery_bytes, c.chunk_bytes, c.heap_bytes
            )));
        }
        if c.heap_bytes.checked_mul(3).is_none_or(|b| b >= 1 << 46) {
            return Err(GcError::Config(format!(
                "heap_bytes {} is too large",
                self.heap_bytes
            )));
        }
        if c.scan_ratio == 0 || c.scan_batch_pages == 0 {
            return Err(GcError::Config(
                "scan_ratio and scan_batch_pages must be at least 1".into(),
            ));
        }
        c.large_bytes = c.large_bytes.max(2 * crate::WORD);
        Ok(c)
    }
}

/// What went wrong making a heap or allocating in it.
#[derive(Debug, Error)]
pub enum GcError {
    /// The configuration is unusable; the message says which field.
    #[error("bad heap configuration: {0}")]
    Config(String),
    /// Reserving the heap's memory failed.
    #[error("heap memory: {0}")]
    Memory(#[from] RegionError),
    /// Mapping the heap's two views failed.
    #[error("heap views: {0}")]
    Views(#[from] Map2Error),
    /// Registering the read barrier's fault handler failed.
    #[error("read barrier: {0}")]
    Trap(#[from] TrapError),
    /// Starting DIRTY tracking of the old generation failed.
    #[error("dirty tracking: {0}")]
    Dirty(#[from] DirtyError),
    /// Starting the collector thread failed.
    #[error("collector thread: {0}")]
    Thread(#[from] std::io::Error),
    /// Live data and the new object do not fit, even after a full
    /// collection.
    #[error("out of memory: {requested} bytes requested, {free} free after a full collection")]
    OutOfMemory {
        /// The allocation's size.
        requested: usize,
        /// What a full collection left free.
        free: usize,
    },
}
