//! Raw access to heap words: the one place this crate dereferences heap
//! addresses.
//!
//! Every access is a relaxed atomic (a plain `mov` on x86-64 and a plain
//! `ldr`/`str` on aarch64): the concurrent collector and the mutator touch
//! disjoint words by construction (docs/decisions/0004), and atomics keep
//! even a misuse of that protocol from being undefined behaviour in Rust's
//! model. Copies of whole objects use `memcpy`: they read from-space, which
//! nothing else writes once a collection has begun.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Reads the word at `addr`.
///
/// # Safety
/// `addr` is 8-aligned, mapped readable, and inside memory a collector owns
/// for as long as the call lasts.
#[inline(always)]
pub(crate) unsafe fn get(addr: usize) -> usize {
    // SAFETY: the caller promises an aligned, mapped, owned word.
    unsafe { AtomicUsize::from_ptr(addr as *mut usize) }.load(Relaxed)
}

/// Writes `value` to the word at `addr`.
///
/// # Safety
/// As for [`get`], and the word is mapped writable.
#[inline(always)]
pub(crate) unsafe fn set(addr: usize, value: usize) {
    // SAFETY: the caller promises an aligned, mapped, owned, writable word.
    unsafe { AtomicUsize::from_ptr(addr as *mut usize) }.store(value, Relaxed)
}

/// Sets bits in the word at `addr`, returning its previous value.
///
/// # Safety
/// As for [`set`].
#[inline(always)]
pub(crate) unsafe fn or(addr: usize, bits: usize) -> usize {
    // SAFETY: as for `set`.
    unsafe { AtomicUsize::from_ptr(addr as *mut usize) }.fetch_or(bits, Relaxed)
}

/// Copies `words` words from `src` to `dst`.
///
/// # Safety
/// Both ranges are aligned, mapped (`dst` writable), owned by the caller's
/// collector, do not overlap, and `src` is not being written concurrently.
#[inline(always)]
pub(crate) unsafe fn copy(src: usize, dst: usize, words: usize) {
    // SAFETY: the caller promises valid, disjoint, quiescent ranges.
    unsafe { core::ptr::copy_nonoverlapping(src as *const usize, dst as *mut usize, words) }
}

/// Zeroes `words` words at `dst`.
///
/// # Safety
/// As for [`set`], for the whole range.
#[inline(always)]
pub(crate) unsafe fn zero(dst: usize, words: usize) {
    // SAFETY: the caller promises a valid, owned, writable range.
    unsafe { core::ptr::write_bytes(dst as *mut usize, 0, words) }
}
