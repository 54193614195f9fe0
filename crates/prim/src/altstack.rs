//! Alternate signal stacks: a fault handler must run even when the faulting
//! thread has no stack left (a stack overflow into a guard page).
//!
//! The kernel delivers a signal on the thread's alternate stack when the
//! handler was installed with `SA_ONSTACK` (vmprim's are) and the thread has
//! one. Each thread needs its own: [`AltStack::install`] gives the calling
//! thread one for as long as the guard lives; [`ensure`] gives it one for
//! the rest of its life unless it already has one.

use crate::range::page_size;
use core::cell::RefCell;
use core::marker::PhantomData;
use thiserror::Error;
use vmprim_sys::{mem, signal, Errno};

/// The default size: room for a handler that calls into ordinary Rust code.
pub const DEFAULT_SIZE: usize = 256 * 1024;

/// What went wrong setting up an alternate stack.
#[derive(Debug, Error)]
pub enum AltStackError {
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        /// The call.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
}

/// The calling thread's alternate signal stack, with a guard page below it
/// (a handler that overflows it faults instead of corrupting memory).
/// Dropping it puts back the thread's previous alternate stack.
///
/// Not `Send`: an alternate stack belongs to one thread.
#[derive(Debug)]
pub struct AltStack {
    mapping: *mut u8,
    mapping_len: usize,
    previous: Option<(*mut u8, usize)>,
    _not_send: PhantomData<*mut u8>,
}

impl AltStack {
    /// Installs a [`DEFAULT_SIZE`] alternate stack for the calling thread.
    ///
    /// # Examples
    /// Each thread installs its own, and keeps the guard alive while it may
    /// fault. A trap handler then runs on that stack: here it records where
    /// a local of its frame lies (an atomic store, as signal context allows).
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    /// use std::sync::Arc;
    /// use vmprim_prim::altstack::AltStack;
    /// use vmprim_prim::{page_size, trap, Prot, Region};
    ///
    /// std::thread::spawn(|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ///     let stack = AltStack::install()?;
    ///     let p = page_size();
    ///     let region = Arc::new(Region::new(p, Prot::NONE)?);
    ///     let (r, frame) = (region.clone(), Arc::new(AtomicUsize::new(0)));
    ///     let f = frame.clone();
    ///     let _reg = trap::register(region.as_ptr() as usize, region.len(), move |_| {
    ///         let local = 0u8;
    ///         f.store((&raw const local).addr(), Relaxed);
    ///         r.unprot(0, p).map_or(trap::Outcome::NotOurs, |()| trap::Outcome::Resolved)
    ///     })?;
    ///     region.write_u8(0, 1)?;
    ///     let (base, size) = stack.stack();
    ///     assert!((base as usize..base as usize + size).contains(&frame.load(Relaxed)));
    ///     Ok(())
    /// })
    /// .join()
    /// .expect("the thread panicked")?;
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn install() -> Result<Self, AltStackError> {
        Self::with_size(DEFAULT_SIZE)
    }

    /// Installs an alternate stack of at least `size` bytes (rounded up to
    /// pages) for the calling thread.
    pub fn with_size(size: usize) -> Result<Self, AltStackError> {
        let p = page_size();
        let size = size.max(signal_min_size()).div_ceil(p) * p;
        let mapping_len = size + p;
        let mapping = mem::mmap_anonymous(mapping_len, mem::prot::READ | mem::prot::WRITE, 0)
            .map_err(|source| AltStackError::Os {
                op: "mmap(altstack)",
                source,
            })?;
        let unmap = |source| {
            // SAFETY: the fresh mapping is ours and not yet in use.
            let _ = unsafe { mem::munmap(mapping, mapping_len) };
            AltStackError::Os {
                op: "altstack setup",
                source,
            }
        };
        // SAFETY: the guard page is the first page of our fresh mapping.
        unsafe { mem::mprotect(mapping, p, mem::prot::NONE) }.map_err(unmap)?;
        // SAFETY: the stack stays mapped until Drop, which first takes it out
        // of use as the altstack.
        let previous = unsafe { signal::set_altstack(mapping.add(p), size) }.map_err(unmap)?;
        Ok(Self {
            mapping,
            mapping_len,
            previous,
            _not_send: PhantomData,
        })
    }

    /// The usable stack (above the guard page): base and size.
    pub fn stack(&self) -> (*mut u8, usize) {
        let p = page_size();
        // SAFETY: the mapping is one guard page plus the stack.
        (unsafe { self.mapping.add(p) }, self.mapping_len - p)
    }
}

fn signal_min_size() -> usize {
    64 * 1024
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // Only restore if ours is still the current one.
        if signal::altstack().ok().flatten() == Some(self.stack()) {
            let _ = match self.previous {
                // SAFETY: the previous stack was installed by its owner, who
                // keeps it alive for as long as the thread may use it.
                Some((base, size)) => unsafe { signal::set_altstack(base, size) }.map(|_| ()),
                None => signal::disable_altstack(),
            };
        } else {
            // Someone replaced it: leave the mapping (it may still be in use).
            return;
        }
        // SAFETY: no longer the thread's altstack; nothing else uses it.
        let _ = unsafe { mem::munmap(self.mapping, self.mapping_len) };
    }
}

thread_local! {
    static THREAD_STACK: RefCell<Option<AltStack>> = const { RefCell::new(None) };
}

/// Gives the calling thread an alternate stack of at least `size` bytes for
/// the rest of its life, unless it already has one at least that large.
/// Returns the stack in use.
///
/// # Examples
/// Call it first thing in each thread that may fault where its stack could
/// have run out; the stack stays until the thread exits.
/// ```
/// use vmprim_prim::altstack::{self, AltStackError};
///
/// std::thread::spawn(|| -> Result<(), AltStackError> {
///     let (base, size) = altstack::ensure(128 * 1024)?;
///     assert!(!base.is_null() && size >= 128 * 1024);
///     assert_eq!(altstack::ensure(64 * 1024)?, (base, size)); // large enough: kept
///     Ok(())
/// })
/// .join()
/// .expect("the thread panicked")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn ensure(size: usize) -> Result<(*mut u8, usize), AltStackError> {
    if let Some((base, have)) = signal::altstack().map_err(|source| AltStackError::Os {
        op: "sigaltstack",
        source,
    })? {
        if have >= size {
            return Ok((base, have));
        }
    }
    THREAD_STACK.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stack = AltStack::with_size(size)?;
        let s = stack.stack();
        // Keep the old guard alive: a smaller stack it replaced may still be
        // someone's; dropping it would only restore it.
        if let Some(old) = slot.replace(stack) {
            core::mem::forget(old);
        }
        Ok(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_and_drop_restore_the_previous_stack() {
        std::thread::spawn(|| {
            let before = signal::altstack().unwrap();
            {
                let s = AltStack::install().unwrap();
                assert_eq!(signal::altstack().unwrap(), Some(s.stack()));
                assert!(s.stack().1 >= DEFAULT_SIZE);
            }
            assert_eq!(signal::altstack().unwrap(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn ensure_keeps_a_large_enough_stack() {
        std::thread::spawn(|| {
            signal::disable_altstack().unwrap();
            let a = ensure(128 * 1024).unwrap();
            assert_eq!(ensure(64 * 1024).unwrap(), a);
            assert_eq!(signal::altstack().unwrap(), Some(a));
        })
        .join()
        .unwrap();
    }
}
