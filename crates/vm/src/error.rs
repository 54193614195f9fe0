//! Typed errors of the vm layer.

use crate::pager::PagerError;
use thiserror::Error;
use vmprim_prim::trap::Access;
use vmprim_prim::Prot;

/// What went wrong in an [`AddressSpace`](crate::AddressSpace) call.
#[derive(Debug, Error)]
pub enum VmError {
    /// An offset or length is not a multiple of the page size.
    #[error("{what} {value:#x} is not a multiple of the page size")]
    Unaligned {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: usize,
    },
    /// A length of zero.
    #[error("zero-length range")]
    ZeroLength,
    /// The range leaves the address space (or the object).
    #[error("range {offset:#x}+{len:#x} is outside the {limit:#x} bytes of the {of}")]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Its length.
        len: usize,
        /// The size it must fit in.
        limit: usize,
        /// "address space" or "object".
        of: &'static str,
    },
    /// A fixed mapping would cover space that is already mapped.
    #[error("range {offset:#x}+{len:#x} overlaps an existing mapping")]
    Overlap {
        /// Start of the range.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// No free range of this length is left.
    #[error("no free range of {len:#x} bytes in the address space")]
    NoSpace {
        /// The length asked for.
        len: usize,
    },
    /// Part of the range is not mapped.
    #[error("page at {offset:#x} is not mapped")]
    NotMapped {
        /// The first unmapped page.
        offset: usize,
    },
    /// `protect` asked for more than an entry's maximum protection.
    #[error("protection {asked:?} exceeds the maximum {max:?} at {offset:#x}")]
    ExceedsMaxProt {
        /// The protection asked for.
        asked: Prot,
        /// The entry's maximum.
        max: Prot,
        /// Where.
        offset: usize,
    },
    /// A configuration value is unusable.
    #[error("bad configuration: {0}")]
    Config(&'static str),
    /// A pager failed outside a fault (`sync`, `evict`).
    #[error(transparent)]
    Pager(#[from] PagerError),
    /// A fault could not be resolved (reported by `read` and `write`).
    #[error("{0}")]
    Fault(Violation),
    /// The host refused a mapping operation.
    #[error("host: {0}")]
    Host(String),
    /// Every physical page is busy: the budget is smaller than one fault
    /// needs.
    #[error("resident budget exhausted: no page can be evicted")]
    NoMemory,
}

/// Why a fault could not be resolved: what reaches the owner's handler
/// ([`AddressSpace::set_violation_handler`](crate::AddressSpace::set_violation_handler)).
#[derive(Debug, Clone, Error)]
#[error("{kind} on {access:?} at offset {offset:#x}")]
pub struct Violation {
    /// The faulting offset in the address space.
    pub offset: usize,
    /// What the access tried to do.
    pub access: Access,
    /// Why it failed.
    pub kind: ViolationKind,
}

/// The kinds of unresolvable fault.
#[derive(Debug, Clone, Error)]
pub enum ViolationKind {
    /// Nothing is mapped there.
    #[error("unmapped address")]
    Unmapped,
    /// The mapping does not allow the access.
    #[error("protection violation (mapping allows {0:?})")]
    Protection(Prot),
    /// The pager could not supply the page: never a silent zero page.
    #[error("pager failed: {0}")]
    Pager(PagerError),
    /// No physical page could be freed for the fault.
    #[error("no physical page available")]
    NoMemory,
}
