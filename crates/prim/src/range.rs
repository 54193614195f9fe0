//! Page-granular lengths and the validation of ranges against a region.

use thiserror::Error;

/// The page size of this machine, read from the kernel at run time.
///
/// Async-signal-safe after the first call (every vmprim constructor makes
/// that first call).
pub fn page_size() -> usize {
    vmprim_sys::mem::page_size()
}

/// A range was unusable: the domain reason, with the numbers.
///
/// Ranges are checked before any system call, so a refused range changed
/// nothing. The error is `Copy` and carries no heap data: a trap handler can
/// receive and inspect it.
///
/// # Examples
/// ```
/// use vmprim_prim::{page_size, Prot, RangeError, Region, RegionError};
///
/// let p = page_size();
/// let region = Region::new(2 * p, Prot::READ_WRITE)?;
/// let err = region.protect(p, 2 * p, Prot::READ).unwrap_err();
/// let RegionError::Range(range) = err else { panic!("not a range error: {err}") };
/// assert_eq!(range, RangeError::OutOfRange { offset: p, len: 2 * p, limit: 2 * p });
/// assert!(range.to_string().contains("reaches past the end"));
/// assert!(matches!(
///     region.protect(1, p, Prot::READ),
///     Err(RegionError::Range(RangeError::NotPageAligned { what: "offset", value: 1, .. }))
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RangeError {
    /// An address or length is not a multiple of the page size.
    #[error("{what} {value:#x} is not a multiple of the page size ({page:#x})")]
    NotPageAligned {
        /// Which number: "offset", "length", "address".
        what: &'static str,
        /// The number.
        value: usize,
        /// The page size.
        page: usize,
    },
    /// A range of zero bytes.
    #[error("the range is empty (length 0)")]
    ZeroLength,
    /// `start + len` overflows the address space.
    #[error("range {start:#x} + {len:#x} overflows usize")]
    Overflow {
        /// Start of the range.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// The range reaches past the end of what it must lie in.
    #[error("range {offset:#x}..{end:#x} reaches past the end ({limit:#x})", end = offset.wrapping_add(*len))]
    OutOfRange {
        /// Start of the range (an offset, or an address).
        offset: usize,
        /// Its length.
        len: usize,
        /// The end it must not pass.
        limit: usize,
    },
}

/// A byte count that is a non-zero multiple of the page size.
///
/// # Examples
/// Check a length once, where it comes in, and carry the proof in the type:
/// ```
/// use vmprim_prim::{page_size, PageLen, RangeError};
///
/// let len = PageLen::new(3 * page_size())?;
/// assert_eq!((len.bytes(), len.pages()), (3 * page_size(), 3));
/// assert_eq!(PageLen::new(0), Err(RangeError::ZeroLength));
/// assert!(matches!(
///     PageLen::new(page_size() + 1),
///     Err(RangeError::NotPageAligned { what: "length", .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageLen(usize);

impl PageLen {
    /// Checks that `bytes` is a non-zero multiple of the page size.
    pub fn new(bytes: usize) -> Result<Self, RangeError> {
        if bytes == 0 {
            return Err(RangeError::ZeroLength);
        }
        check_aligned("length", bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps `bytes` without the check, which is only `debug_assert`ed.
    ///
    /// For values derived from another `PageLen` or from the page size; a
    /// wrong value is a bug, not undefined behaviour: the kernel refuses
    /// unaligned lengths.
    pub fn new_unchecked(bytes: usize) -> Self {
        debug_assert!(
            bytes != 0 && bytes.is_multiple_of(page_size()),
            "{bytes:#x}"
        );
        Self(bytes)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> usize {
        self.0
    }

    /// The number of pages.
    pub fn pages(self) -> usize {
        self.0 / page_size()
    }
}

pub(crate) fn check_aligned(what: &'static str, value: usize) -> Result<(), RangeError> {
    let page = page_size();
    if value.is_multiple_of(page) {
        Ok(())
    } else {
        Err(RangeError::NotPageAligned { what, value, page })
    }
}

/// Checks that `offset..offset + len` is a non-empty, page-aligned range
/// inside `0..limit`.
pub(crate) fn check_within(offset: usize, len: usize, limit: usize) -> Result<(), RangeError> {
    if len == 0 {
        return Err(RangeError::ZeroLength);
    }
    check_aligned("offset", offset)?;
    check_aligned("length", len)?;
    let end = offset
        .checked_add(len)
        .ok_or(RangeError::Overflow { start: offset, len })?;
    if end > limit {
        return Err(RangeError::OutOfRange { offset, len, limit });
    }
    Ok(())
}

/// Checks an absolute address range: non-empty, page-aligned, no overflow.
pub(crate) fn check_addr_range(start: usize, len: usize) -> Result<usize, RangeError> {
    if len == 0 {
        return Err(RangeError::ZeroLength);
    }
    check_aligned("address", start)?;
    check_aligned("length", len)?;
    start
        .checked_add(len)
        .ok_or(RangeError::Overflow { start, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_len_rejects_zero_and_unaligned() {
        let p = page_size();
        assert_eq!(PageLen::new(0), Err(RangeError::ZeroLength));
        assert!(
            matches!(PageLen::new(p + 1), Err(RangeError::NotPageAligned { value, .. }) if value == p + 1)
        );
        assert_eq!(PageLen::new(3 * p).unwrap().pages(), 3);
    }

    #[test]
    fn within_checks_every_edge() {
        let p = page_size();
        assert_eq!(check_within(0, p, p), Ok(()));
        assert_eq!(
            check_within(p, p, p),
            Err(RangeError::OutOfRange {
                offset: p,
                len: p,
                limit: p
            })
        );
        assert_eq!(check_within(0, 0, p), Err(RangeError::ZeroLength));
        assert!(matches!(
            check_within(1, p, 4 * p),
            Err(RangeError::NotPageAligned { what: "offset", .. })
        ));
        let huge = usize::MAX - p + 1;
        assert_eq!(
            check_within(huge, p, usize::MAX),
            Err(RangeError::Overflow {
                start: huge,
                len: p
            })
        );
    }

    #[test]
    fn addr_range_checks_overflow() {
        let p = page_size();
        assert_eq!(check_addr_range(p, p), Ok(2 * p));
        assert!(matches!(
            check_addr_range(usize::MAX - p + 1, 2 * p),
            Err(RangeError::Overflow { .. })
        ));
    }

    #[test]
    fn messages_carry_the_numbers() {
        let e = check_within(0, 2 * page_size(), page_size()).unwrap_err();
        assert!(e.to_string().contains("reaches past the end"), "{e}");
    }
}
