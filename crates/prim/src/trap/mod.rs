//! TRAP: process-wide dispatch of page faults to the owners of address
//! ranges.
//!
//! One `SIGSEGV` and one `SIGBUS` handler serve the whole process. A fault
//! inside a range [`register`]ed here runs that range's handler on the
//! faulting thread, in signal context; a fault anywhere else goes to the
//! handler that was installed before vmprim (or to the default action, so
//! the process dies by the same signal it would have died by without
//! vmprim). The same dispatch serves both trap mechanisms that run on the
//! faulting thread:
//!
//! - `SIGSEGV` on pages protected with [`Region::protect`](crate::Region::protect)
//!   (cause [`Cause::Protection`]);
//! - `SIGBUS` from a userfaultfd range opened with
//!   [`Delivery::Sigbus`](crate::uffd::Delivery::Sigbus) (cause
//!   [`Cause::BusAddress`]), which the handler resolves with a
//!   [`Uffd`](crate::uffd::Uffd) ioctl.
//!
//! The third mechanism, faults served by a handler thread, is
//! [`uffd::Server`](crate::uffd::Server): its handlers may block.
//!
//! # The registry
//! A fixed array of [`CAPACITY`] slots, scanned without locks by the signal
//! handler. Writers ([`register`], dropping a [`Registration`]) serialise on
//! a mutex that the handler never takes. Each slot has an `active` count of
//! handlers running in it: the handler raises it before it loads the slot's
//! entry, and unregistering clears the entry and then waits for the count to
//! fall to zero before freeing the entry. A `SeqCst` fence on each side
//! between its write and its read (a Dekker pattern) means a handler either
//! sees the entry cleared or is waited for, so an entry is never freed under
//! a running handler. `tests/loom_slot.rs` checks the protocol
//! (`slot.rs`, compiled with loom's atomics) under every interleaving. Unregistering while other
//! threads fault is therefore safe; a handler must not drop its own
//! registration (it would wait for itself).
//!
//! # Handlers run in signal context
//! A handler may only do async-signal-safe work: atomics, the vmprim calls
//! documented as async-signal-safe ([`Region::protect`](crate::Region::protect),
//! [`Uffd`](crate::uffd::Uffd) resolution), raw memory access. It must not
//! allocate, take a lock the interrupted code may hold, or print. A panic in a
//! handler aborts the process.

use crate::range::{check_addr_range, page_size, RangeError};
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::Mutex;
use thiserror::Error;
use vmprim_sys::signal::{self as sys, Action};
use vmprim_sys::Errno;

pub use vmprim_sys::signal::Access;

/// How many ranges may be registered at once.
pub const CAPACITY: usize = 1024;

/// What a handler decided about a fault.
///
/// # Examples
/// Return [`Resolved`](Self::Resolved) only once the access can succeed: the
/// instruction runs again, and faults again if it still cannot. Here a read
/// fault opens the page for reads and a write fault for writes, as a tracker
/// of written pages would.
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
/// use std::sync::Arc;
/// use vmprim_prim::trap::{self, Access, Outcome};
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Arc::new(Region::new(p, Prot::NONE)?);
/// let faults = Arc::new(AtomicUsize::new(0));
/// let (r, n) = (region.clone(), faults.clone());
/// let _reg = trap::register(region.as_ptr() as usize, p, move |fault| {
///     n.fetch_add(1, Relaxed);
///     let prot = if fault.access == Access::Read { Prot::READ } else { Prot::READ_WRITE };
///     match r.protect(0, p, prot) {
///         Ok(()) => Outcome::Resolved,
///         Err(_) => Outcome::NotOurs, // to the previous handler, or the default action
///     }
/// })?;
/// assert_eq!(region.read_u8(0)?, 0); // fault 1: readable now
/// region.write_u8(0, 1)?; // fault 2: writable now
/// region.write_u8(0, 2)?; // no fault
/// assert_eq!(faults.load(Relaxed), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handler made the access possible: the faulting instruction runs
    /// again.
    Resolved,
    /// Not this handler's fault: pass it to the handler installed before
    /// vmprim, or to the default action.
    NotOurs,
}

/// Which signal delivered a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `SIGSEGV`: a protection violation or an unmapped address.
    Segv,
    /// `SIGBUS`: a userfaultfd range in `SIGBUS` mode, a file mapping past
    /// its end, or a poisoned page.
    Bus,
}

/// Why the kernel raised the signal (`si_code`).
///
/// # Examples
/// The cause tells a handler which mechanism to answer with. A page that is
/// both protected and registered with userfaultfd faults twice on one
/// access: first for its protection (answered with
/// [`Region::unprot`](crate::Region::unprot)), then because it has no
/// contents (answered with [`Uffd::zeropage`](crate::uffd::Uffd::zeropage)).
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
/// use std::sync::Arc;
/// use vmprim_prim::trap::{self, Cause, Outcome};
/// use vmprim_prim::uffd::{Delivery, Features, Mode, Uffd, Wake};
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Arc::new(Region::new(p, Prot::NONE)?);
/// let base = region.as_ptr() as usize;
/// let uffd = Arc::new(Uffd::new(Delivery::Sigbus, Features::NONE)?);
/// let faults = Arc::new(AtomicUsize::new(0));
/// let (r, u, n) = (region.clone(), uffd.clone(), faults.clone());
/// let _reg = trap::register(base, p, move |f| {
///     n.fetch_add(1, Relaxed);
///     let fixed = match f.cause {
///         Cause::Protection => r.unprot(0, p).is_ok(),
///         Cause::BusAddress => u.zeropage(base, p, Wake::No).is_ok(),
///         _ => false,
///     };
///     if fixed { Outcome::Resolved } else { Outcome::NotOurs }
/// })?;
/// uffd.register(base, p, Mode::MISSING)?;
/// assert_eq!(region.read_u8(0)?, 0);
/// assert_eq!(faults.load(Relaxed), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `SEGV_ACCERR`: the page is mapped but its protection forbids the access.
    Protection,
    /// `SEGV_MAPERR`: nothing is mapped at the address.
    Unmapped,
    /// `BUS_ADRERR`: the page has no backing: a userfaultfd range with
    /// `UFFD_FEATURE_SIGBUS`, or a file mapping past end of file (or a
    /// poisoned page, on kernels without `CONFIG_MEMORY_FAILURE`).
    BusAddress,
    /// `BUS_MCEERR_*`: the page is poisoned (hardware error, `UFFDIO_POISON`;
    /// needs a kernel with `CONFIG_MEMORY_FAILURE`).
    Poisoned,
    /// Any other kernel-generated code.
    Other(i32),
}

/// A fault being dispatched, as its handler sees it.
///
/// # Examples
/// A handler may not allocate, so it copies what it needs out of the
/// `Fault` into storage prepared beforehand, here atomics.
/// ```
/// use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
/// use std::sync::Arc;
/// use vmprim_prim::trap::{self, Access, Cause, Outcome, Signal};
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Arc::new(Region::new(2 * p, Prot::READ)?);
/// let base = region.as_ptr() as usize;
/// let addrs = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]); // addr, page
/// let write = Arc::new(AtomicBool::new(false));
/// let (r, a, w) = (region.clone(), addrs.clone(), write.clone());
/// let _reg = trap::register(base, region.len(), move |f| {
///     a[0].store(f.addr, Relaxed);
///     a[1].store(f.page, Relaxed);
///     let segv_write = f.signal == Signal::Segv && f.access == Access::Write;
///     w.store(segv_write && f.cause == Cause::Protection, Relaxed);
///     r.unprot(f.page - base, p).map_or(Outcome::NotOurs, |()| Outcome::Resolved)
/// })?;
/// region.write_u8(p + 12, 1)?;
/// assert_eq!([addrs[0].load(Relaxed), addrs[1].load(Relaxed)], [base + p + 12, base + p]);
/// assert!(write.load(Relaxed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Fault {
    /// The faulting address.
    pub addr: usize,
    /// The start of the page holding `addr`.
    pub page: usize,
    /// What the instruction tried to do, decoded from the machine context.
    pub access: Access,
    /// The signal that delivered it.
    pub signal: Signal,
    /// Why the kernel raised it.
    pub cause: Cause,
    ctx: *mut c_void,
}

impl Fault {
    /// The `ucontext_t` the kernel saved for the faulting thread: what a
    /// handler edits to resume somewhere other than the faulting instruction
    /// (the seed's "change the registers in the sigcontext").
    ///
    /// # Safety
    /// The pointer is valid only while the handler runs. Changing the
    /// context changes how the interrupted thread resumes: the caller answers
    /// for the result.
    pub unsafe fn ucontext(&self) -> *mut c_void {
        self.ctx
    }
}

/// What went wrong registering a range.
#[derive(Debug, Error)]
pub enum TrapError {
    /// The range is unusable.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The range overlaps one already registered.
    #[error(
        "range {start:#x}..{end:#x} overlaps registered range {other_start:#x}..{other_end:#x}"
    )]
    Overlap {
        /// Start of the range asked for.
        start: usize,
        /// End of the range asked for.
        end: usize,
        /// Start of the range already registered.
        other_start: usize,
        /// End of the range already registered.
        other_end: usize,
    },
    /// Every slot is taken.
    #[error("all {capacity} trap registrations are in use")]
    Full {
        /// [`CAPACITY`].
        capacity: usize,
    },
    /// The signal handler could not be installed.
    #[error("sigaction({signal}) failed")]
    Install {
        /// The signal's name.
        signal: &'static str,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
}

type HandlerFn = dyn Fn(&Fault) -> Outcome + Send + Sync;

struct Entry {
    start: usize,
    end: usize,
    handler: Box<HandlerFn>,
}

impl slot::Ranged for Entry {
    fn range(&self) -> (usize, usize) {
        (self.start, self.end)
    }
}

mod slot;
use slot::Slot;

/// The atomics the slot protocol uses (loom's, in `tests/loom_slot.rs`).
mod sync {
    pub(crate) use core::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};
    pub(crate) use std::thread::yield_now;
}

static SLOTS: [Slot<Entry>; CAPACITY] = [const {
    Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        entry: AtomicPtr::new(core::ptr::null_mut()),
        active: AtomicUsize::new(0),
    }
}; CAPACITY];
/// One past the highest slot ever used: the handler scans `SLOTS[..HIGH]`.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Serialises writers of `SLOTS` and the installation of the handlers.
static WRITERS: Mutex<()> = Mutex::new(());

/// The actions that were installed before vmprim's, written once before
/// vmprim's handler is installed and only read afterwards.
struct Previous {
    action: UnsafeCell<Option<Action>>,
}
// SAFETY: `action` is written only by `install_locked`, under `WRITERS`,
// before `INSTALLED` is set and before vmprim's handler can run; afterwards
// it is only read.
unsafe impl Sync for Previous {}

static PREV_SEGV: Previous = Previous {
    action: UnsafeCell::new(None),
};
static PREV_BUS: Previous = Previous {
    action: UnsafeCell::new(None),
};
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Registers `handler` for faults in `start..start + len` and installs the
/// process-wide dispatcher if it is not yet installed.
///
/// The handler runs in signal context on the faulting thread: see the
/// [module docs](self) for what it may do. The range must be page-aligned,
/// non-empty and must not overlap another registration. Dropping the
/// returned [`Registration`] unregisters the range, waiting for handlers
/// running in it on other threads.
///
/// # Examples
/// Fill pages on first touch: every page starts inaccessible, and the
/// handler makes the touched page writable and stores its first contents
/// before the access runs again. The handler runs in signal context: it
/// calls only async-signal-safe methods and must not allocate or print.
/// ```
/// use std::sync::Arc;
/// use vmprim_prim::trap::{self, Cause, Outcome};
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Arc::new(Region::new(4 * p, Prot::NONE)?);
/// let (r, base) = (region.clone(), region.as_ptr() as usize);
/// let _reg = trap::register(base, region.len(), move |fault| {
///     if fault.cause != Cause::Protection {
///         return Outcome::NotOurs;
///     }
///     let offset = fault.page - base;
///     let first = 100 + (offset / p) as u64; // the page's initial contents
///     let filled = r.unprot(offset, p).and_then(|()| r.write_u64(offset, first));
///     filled.map_or(Outcome::NotOurs, |()| Outcome::Resolved)
/// })?;
/// assert_eq!(region.read_u64(3 * p)?, 103);
/// assert_eq!(region.read_u64(p)?, 101);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn register<F>(start: usize, len: usize, handler: F) -> Result<Registration, TrapError>
where
    F: Fn(&Fault) -> Outcome + Send + Sync + 'static,
{
    let end = check_addr_range(start, len)?;
    let entry = Box::into_raw(Box::new(Entry {
        start,
        end,
        handler: Box::new(handler),
    }));
    let guard = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = match install_locked().and_then(|()| claim_slot_locked(start, end)) {
        Ok(slot) => slot,
        Err(e) => {
            drop(guard);
            // SAFETY: `entry` came from Box::into_raw above and was never
            // published.
            drop(unsafe { Box::from_raw(entry) });
            return Err(e);
        }
    };
    // SAFETY: `entry` is a fresh Box that only `Registration::drop` frees,
    // after `retire`; WRITERS is held and `claim_slot_locked` found the slot
    // free.
    unsafe { SLOTS[slot].publish(entry) };
    HIGH.fetch_max(slot + 1, SeqCst);
    Ok(Registration { slot, start, end })
}

/// Finds a free slot and checks for overlaps.
///
/// Preconditions: `WRITERS` is held.
fn claim_slot_locked(start: usize, end: usize) -> Result<usize, TrapError> {
    let mut free = None;
    for (i, s) in SLOTS.iter().enumerate() {
        let e = s.peek();
        if e.is_null() {
            free = free.or(Some(i));
            continue;
        }
        // SAFETY: non-null entries stay alive until their slot is cleared,
        // which only happens under WRITERS, which we hold.
        let (os, oe) = unsafe { ((*e).start, (*e).end) };
        if start < oe && os < end {
            return Err(TrapError::Overlap {
                start,
                end,
                other_start: os,
                other_end: oe,
            });
        }
    }
    free.ok_or(TrapError::Full { capacity: CAPACITY })
}

/// Installs the dispatcher for `SIGSEGV` and `SIGBUS` once.
///
/// Preconditions: `WRITERS` is held.
fn install_locked() -> Result<(), TrapError> {
    if INSTALLED.load(SeqCst) {
        return Ok(());
    }
    page_size(); // cache it: the handler must not call sysconf.
    for (sig, name, prev) in [
        (sys::SIGSEGV, "SIGSEGV", &PREV_SEGV),
        (sys::SIGBUS, "SIGBUS", &PREV_BUS),
    ] {
        let old = sys::current(sig).map_err(|source| TrapError::Install {
            signal: name,
            source,
        })?;
        // SAFETY: under WRITERS and before our handler is installed for
        // `sig`, nothing reads this cell.
        unsafe { *prev.action.get() = Some(old) };
        sys::install(sig, on_fault).map_err(|source| TrapError::Install {
            signal: name,
            source,
        })?;
    }
    INSTALLED.store(true, SeqCst);
    Ok(())
}

/// Whether vmprim's dispatcher is the installed handler for both signals.
pub fn is_installed() -> bool {
    INSTALLED.load(SeqCst)
        && sys::is_installed(sys::SIGSEGV, on_fault)
        && sys::is_installed(sys::SIGBUS, on_fault)
}

/// A registered range. Dropping it unregisters the range.
///
/// Drop it from any thread but a handler of its own range: dropping waits
/// for the handlers running in the range, so a handler would wait for itself.
///
/// # Examples
/// ```
/// use vmprim_prim::trap::{self, Outcome, TrapError};
/// use vmprim_prim::{page_size, Prot, Region};
///
/// let p = page_size();
/// let region = Region::new(2 * p, Prot::READ_WRITE)?;
/// let start = region.as_ptr() as usize;
/// let reg = trap::register(start, 2 * p, |_| Outcome::NotOurs)?;
/// assert_eq!(reg.range(), start..start + 2 * p);
/// let overlap = trap::register(start + p, p, |_| Outcome::NotOurs);
/// assert!(matches!(overlap, Err(TrapError::Overlap { .. })));
/// drop(reg); // the range is free again
/// let _again = trap::register(start + p, p, |_| Outcome::NotOurs)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Registration {
    slot: usize,
    start: usize,
    end: usize,
}

impl Registration {
    /// The registered range, as addresses.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.start..self.end
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registration({:#x}..{:#x})", self.start, self.end)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _guard = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        let entry = SLOTS[self.slot].retire();
        debug_assert!(!entry.is_null());
        // SAFETY: the entry was published by `register` from Box::into_raw;
        // it is unpublished now and no handler is running with it (active
        // is zero after the swap), so we hold the only pointer.
        drop(unsafe { Box::from_raw(entry) });
    }
}

/// Runs the handler whose range holds `fault.addr`, if any.
fn dispatch(fault: &Fault) -> Outcome {
    let high = HIGH.load(Acquire);
    SLOTS[..high]
        .iter()
        .find_map(|s| s.with(fault.addr, |e| (e.handler)(fault)))
        .unwrap_or(Outcome::NotOurs)
}

extern "C" fn on_fault(sig: i32, info: *mut sys::siginfo_t, ctx: *mut c_void) {
    let errno = Errno::last();
    // SAFETY: the kernel passes a valid siginfo for this signal.
    let (addr, code) = unsafe { sys::fault_info(info) };
    // Codes <= 0 were sent by a process (kill, sigqueue): no fault to serve.
    if code > 0 {
        let fault = Fault {
            addr,
            page: addr & !(page_size() - 1),
            // SAFETY: the kernel passes a valid ucontext for this handler.
            access: unsafe { sys::access_kind(ctx) },
            signal: if sig == sys::SIGBUS {
                Signal::Bus
            } else {
                Signal::Segv
            },
            cause: cause(sig, code),
            ctx,
        };
        if dispatch(&fault) == Outcome::Resolved {
            errno.set_last();
            return;
        }
    }
    let prev = if sig == sys::SIGBUS {
        &PREV_BUS
    } else {
        &PREV_SEGV
    };
    // SAFETY: written before this handler was installed, read-only since.
    let action = unsafe { (*prev.action.get()).unwrap_or_else(Action::default_action) };
    // SAFETY: `info` and `ctx` are the kernel's for this running handler.
    unsafe { action.chain(sig, info, ctx) };
    errno.set_last();
}

fn cause(sig: i32, code: i32) -> Cause {
    match (sig, code) {
        (sys::SIGSEGV, sys::SEGV_ACCERR) => Cause::Protection,
        (sys::SIGSEGV, sys::SEGV_MAPERR) => Cause::Unmapped,
        (sys::SIGBUS, sys::BUS_ADRERR) => Cause::BusAddress,
        (sys::SIGBUS, 4 | 5) => Cause::Poisoned,
        (_, code) => Cause::Other(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Prot, Region};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn unprotect_on_fault(region: &Arc<Region>, count: &Arc<AtomicU64>) -> Registration {
        let (r, c) = (region.clone(), count.clone());
        register(region.as_ptr() as usize, region.len(), move |f| {
            c.fetch_add(1, Relaxed);
            let off = f.page - r.as_ptr() as usize;
            match r.unprot(off, page_size()) {
                Ok(()) => Outcome::Resolved,
                Err(_) => Outcome::NotOurs,
            }
        })
        .unwrap()
    }

    #[test]
    fn a_protected_page_traps_once_and_reports_the_access() {
        let p = page_size();
        let region = Arc::new(Region::new(4 * p, Prot::NONE).unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let (r, s) = (region.clone(), seen.clone());
        let _reg = register(region.as_ptr() as usize, region.len(), move |f| {
            let code = match (f.access, f.cause, f.signal) {
                (Access::Write, Cause::Protection, Signal::Segv) => 2,
                (Access::Read, Cause::Protection, Signal::Segv) => 1,
                _ => 99,
            };
            s.fetch_add(code, Relaxed);
            r.unprot(f.page - r.as_ptr() as usize, page_size()).unwrap();
            Outcome::Resolved
        })
        .unwrap();
        region.write_u8(p + 3, 1).unwrap();
        assert_eq!(seen.load(Relaxed), 2);
        assert_eq!(region.read_u8(2 * p).unwrap(), 0);
        assert_eq!(seen.load(Relaxed), 3);
        region.write_u8(p + 4, 1).unwrap(); // already unprotected: no trap
        assert_eq!(seen.load(Relaxed), 3);
    }

    #[test]
    fn overlapping_registrations_are_refused() {
        let p = page_size();
        let region = Region::new(4 * p, Prot::READ_WRITE).unwrap();
        let a = region.as_ptr() as usize;
        let _r1 = register(a, 2 * p, |_| Outcome::NotOurs).unwrap();
        let err = register(a + p, 2 * p, |_| Outcome::NotOurs).unwrap_err();
        assert!(
            matches!(err, TrapError::Overlap { start, other_start, .. } if start == a + p && other_start == a),
            "{err}"
        );
        let _r2 = register(a + 2 * p, 2 * p, |_| Outcome::NotOurs).unwrap();
    }

    #[test]
    fn bad_ranges_are_refused() {
        let p = page_size();
        assert!(matches!(
            register(p + 1, p, |_| Outcome::NotOurs),
            Err(TrapError::Range(RangeError::NotPageAligned { .. }))
        ));
        assert!(matches!(
            register(p, 0, |_| Outcome::NotOurs),
            Err(TrapError::Range(RangeError::ZeroLength))
        ));
        assert!(matches!(
            register(usize::MAX - p + 1, 2 * p, |_| Outcome::NotOurs),
            Err(TrapError::Range(RangeError::Overflow { .. }))
        ));
    }

    #[test]
    fn a_dropped_registration_frees_its_slot_and_range() {
        let p = page_size();
        let region = Region::new(p, Prot::READ_WRITE).unwrap();
        let a = region.as_ptr() as usize;
        let r = register(a, p, |_| Outcome::NotOurs).unwrap();
        assert_eq!(r.range(), a..a + p);
        drop(r);
        let _again = register(a, p, |_| Outcome::NotOurs).unwrap();
    }

    #[test]
    fn threads_fault_on_same_and_different_pages_without_loss() {
        let p = page_size();
        let pages = 64;
        let region = Arc::new(Region::new(pages * p, Prot::NONE).unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let _reg = unprotect_on_fault(&region, &count);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = region.clone();
                std::thread::spawn(move || {
                    for i in 0..pages {
                        // Threads 0 and 1 share pages; 2 and 3 go backwards.
                        let page = if t < 2 { i } else { pages - 1 - i };
                        r.write_u64(page * p + t * 8, (t * 1000 + i) as u64)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for page in 0..pages {
            for t in 0..4 {
                let i = if t < 2 { page } else { pages - 1 - page };
                assert_eq!(
                    region.read_u64(page * p + t * 8).unwrap(),
                    (t * 1000 + i) as u64
                );
            }
        }
        let traps = count.load(Relaxed);
        assert!(
            traps >= pages as u64,
            "every page traps at least once: {traps}"
        );
        assert!(
            traps <= 4 * pages as u64,
            "at most once per thread and page: {traps}"
        );
    }

    #[test]
    fn unregistering_while_other_threads_fault_is_safe() {
        let p = page_size();
        for _ in 0..20 {
            let region = Arc::new(Region::new(8 * p, Prot::NONE).unwrap());
            let count = Arc::new(AtomicU64::new(0));
            let reg = unprotect_on_fault(&region, &count);
            let (r, c) = (region.clone(), count.clone());
            let faulter = std::thread::spawn(move || {
                for i in 0..8 {
                    r.write_u8(i * p, 1).unwrap();
                }
                c.load(Relaxed)
            });
            // Drop only after the faulter is done, or it would crash; the
            // race under test is drop vs. a handler still returning.
            while count.load(Relaxed) < 8 {
                std::thread::yield_now();
            }
            drop(reg);
            assert_eq!(faulter.join().unwrap(), 8);
        }
    }

    #[test]
    fn causes_decode() {
        assert_eq!(cause(sys::SIGSEGV, 1), Cause::Unmapped);
        assert_eq!(cause(sys::SIGSEGV, 2), Cause::Protection);
        assert_eq!(cause(sys::SIGBUS, 2), Cause::BusAddress);
        assert_eq!(cause(sys::SIGBUS, 4), Cause::Poisoned);
        assert_eq!(cause(sys::SIGSEGV, 4), Cause::Other(4));
    }
}
