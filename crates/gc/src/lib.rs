//! Garbage collectors built on vmprim's primitives: the first application of
//! Appel & Li's "Virtual Memory Primitives for User Programs".
//!
//! One object model and mutator API ([`Heap`]), six collectors behind it:
//!
//! | type | algorithm | barrier |
//! |---|---|---|
//! | [`StwCopy`] | stop-the-world semispace copying (Cheney) | none |
//! | [`Baker`] | Baker's incremental copying | software read barrier on every pointer load |
//! | [`VmBarrier`] | Appel–Ellis–Li incremental copying | VM read barrier: to-space pages are protected at the flip (PROTN), a touch traps (TRAP), the handler scans the page and unprotects it (UNPROT) |
//! | [`VmConcurrent`] | the same, with a collector thread scanning through a second, unprotected view of the heap (MAP2) | VM read barrier |
//! | [`GenDirty`] | generational: a nursery promoted into a semispace old generation | none: old-to-young pointers are found on the pages DIRTY reports |
//! | [`GenCards`] | the same | software card marking on every pointer store |
//!
//! Objects have a header word, pointer fields and scalar fields
//! ([`Shape`]). Roots are precise: the mutator names objects only through
//! [`Local`]s, slots of a shadow stack the collector updates when it moves
//! objects.
//!
//! # Examples
//! A list built and collected: the objects move, the locals follow them.
//! ```
//! use vmprim_gc::{Config, Heap, Shape, VmBarrier};
//!
//! let cell = Shape::new(1, 1); // next; value
//! let mut heap = Heap::<VmBarrier>::new(&Config::small())?;
//! let head = heap.null();
//! for v in 0..1000 {
//!     let c = heap.alloc(cell);
//!     heap.set_scalar(c, 0, v);
//!     heap.set(c, 0, head);
//!     heap.assign(head, c);
//!     heap.pop(); // c
//! }
//! heap.collect();
//! let mut sum = 0;
//! let at = heap.local(head);
//! while !heap.is_null(at) {
//!     sum += heap.scalar(at, 0);
//!     heap.get_to(at, 0, at);
//! }
//! assert_eq!(sum, 999 * 1000 / 2);
//! heap.verify()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod baker;
mod config;
mod copier;
mod gen;
mod heap;
mod los;
mod object;
mod semi;
mod stats;
mod stw;
mod verify;
mod vm;
mod words;
pub mod workload;

pub use baker::Baker;
pub use config::{Config, GcError};
pub use gen::{Cards, DirtyPages, Gen, GenCards, GenDirty, Remember};
pub use heap::{Collector, Heap, Local, Mark};
pub use object::{Shape, WORD};
pub use stats::Stats;
pub use stw::StwCopy;
pub use verify::{Census, VerifyError};
pub use vm::{Vm, VmBarrier, VmConcurrent};
