//! The object layout: one header word, then the pointer fields, then the
//! scalar fields, all 8-byte words.
//!
//! A header has its low bit set. A from-space object that has been copied
//! has its header replaced by its new address (8-aligned, so its low bit is
//! clear): the forwarding pointer. Bit 1 marks a live large object during a
//! full collection.

/// Bytes per word: every field is one word.
pub const WORD: usize = 8;

const TAG: usize = 1;
/// Set in a large object's header when a full collection reaches it.
pub(crate) const MARK: usize = 2;
const PTR_SHIFT: u32 = 2;
const SCALAR_SHIFT: u32 = 32;
const PTR_MASK: usize = (1 << (SCALAR_SHIFT - PTR_SHIFT)) - 1;

/// How many pointer and scalar fields an object has.
///
/// # Examples
/// ```
/// use vmprim_gc::Shape;
///
/// let node = Shape::new(2, 2); // left, right; i, j
/// assert_eq!(node.words(), 5); // header + 4 fields
/// assert_eq!(node.bytes(), 40);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Pointer fields: null or another object of the same heap.
    pub ptrs: u32,
    /// Scalar fields: 64 bits each, never traced.
    pub scalars: u32,
}

impl Shape {
    /// The most pointer fields an object can have (2^30 - 1).
    pub const MAX_PTRS: u32 = PTR_MASK as u32;

    /// An object shape.
    ///
    /// # Panics
    /// If `ptrs` exceeds [`Shape::MAX_PTRS`].
    pub const fn new(ptrs: u32, scalars: u32) -> Self {
        assert!(ptrs <= Self::MAX_PTRS, "too many pointer fields");
        Self { ptrs, scalars }
    }

    /// Words the object occupies, its header included.
    pub const fn words(self) -> usize {
        1 + self.ptrs as usize + self.scalars as usize
    }

    /// Bytes the object occupies, its header included.
    pub const fn bytes(self) -> usize {
        self.words() * WORD
    }

    pub(crate) const fn header(self) -> usize {
        TAG | (self.ptrs as usize) << PTR_SHIFT | (self.scalars as usize) << SCALAR_SHIFT
    }

    /// The shape a header word describes, or `None` for a forwarding
    /// pointer.
    pub(crate) const fn from_header(h: usize) -> Option<Self> {
        if h & TAG == 0 {
            None
        } else {
            Some(Self {
                ptrs: ((h >> PTR_SHIFT) & PTR_MASK) as u32,
                scalars: (h >> SCALAR_SHIFT) as u32,
            })
        }
    }
}

/// Byte offset of pointer field `i` from the object's address.
#[inline(always)]
pub(crate) const fn ptr_offset(i: usize) -> usize {
    WORD * (1 + i)
}

/// Byte offset of scalar field `i` of an object of shape `s`.
#[inline(always)]
pub(crate) const fn scalar_offset(s: Shape, i: usize) -> usize {
    WORD * (1 + s.ptrs as usize + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_is_never_a_forwarding_pointer() {
        for s in [
            Shape::new(0, 0),
            Shape::new(2, 2),
            Shape::new(Shape::MAX_PTRS, u32::MAX),
            Shape::new(1, 0),
        ] {
            assert_eq!(Shape::from_header(s.header()), Some(s));
            assert_eq!(Shape::from_header(s.header() | MARK), Some(s));
        }
        assert_eq!(Shape::from_header(0x1000), None);
    }

    #[test]
    fn field_offsets_follow_the_header_pointers_then_scalars() {
        let s = Shape::new(3, 2);
        assert_eq!(ptr_offset(0), 8);
        assert_eq!(ptr_offset(2), 24);
        assert_eq!(scalar_offset(s, 0), 32);
        assert_eq!(scalar_offset(s, 1), 40);
        assert_eq!(scalar_offset(s, 1) + WORD, s.bytes());
    }
}
