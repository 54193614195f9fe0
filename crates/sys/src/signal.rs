//! Signals: `sigaction`, chaining to a previous action, `sigaltstack`, and
//! decoding the access kind of a fault from the machine context.
//!
//! Everything here is async-signal-safe: it runs inside fault handlers.
//!
//! # References
//! - [`sigaction(2)`](https://man7.org/linux/man-pages/man2/sigaction.2.html)
//! - [`sigaltstack(2)`](https://man7.org/linux/man-pages/man2/sigaltstack.2.html)

use crate::errno::{check, Result};
use core::ffi::c_void;
use core::mem::MaybeUninit;

pub use libc::{siginfo_t, SIGBUS, SIGSEGV};

/// The signature of an `SA_SIGINFO` handler.
pub type Handler = extern "C" fn(i32, *mut siginfo_t, *mut c_void);

/// A saved `struct sigaction`, as returned by [`install`].
#[derive(Clone, Copy)]
pub struct Action(libc::sigaction);

impl core::fmt::Debug for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Action")
            .field("handler", &self.0.sa_sigaction)
            .field("flags", &self.0.sa_flags)
            .finish()
    }
}

/// What [`Action::chain`] did with a signal it was handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chained {
    /// A previous handler ran; returning resumes the program.
    Called,
    /// The previous action is the default (or ignore): it has been restored,
    /// so returning re-runs the faulting instruction and the process gets
    /// the default action, as it would have without vmprim.
    DefaultRestored,
}

impl Action {
    /// The default action (`SIG_DFL`).
    pub fn default_action() -> Self {
        // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
        Self(unsafe { MaybeUninit::zeroed().assume_init() })
    }

    /// Whether this is `SIG_DFL` or `SIG_IGN` (no handler function).
    pub fn is_default_or_ignore(&self) -> bool {
        self.0.sa_sigaction == libc::SIG_DFL || self.0.sa_sigaction == libc::SIG_IGN
    }

    /// Hands a signal to this (previous) action, as if vmprim were not there.
    ///
    /// A handler function is called with the arguments the kernel gave us
    /// (`SA_SIGINFO` or the one-argument form, as it was installed). For
    /// `SIG_DFL` / `SIG_IGN` the default action is restored for `sig`; a
    /// hardware fault then recurs on return and takes the default action
    /// (for `SIGSEGV`/`SIGBUS`, the kernel does not let a fault be ignored).
    /// A signal sent by a process (`kill`) does not recur, so it is raised
    /// again.
    ///
    /// # Safety
    /// `info` and `ctx` must be the pointers the kernel passed to the running
    /// handler for `sig`.
    pub unsafe fn chain(&self, sig: i32, info: *mut siginfo_t, ctx: *mut c_void) -> Chained {
        if self.is_default_or_ignore() {
            let _ = set(sig, &Self::default_action());
            // SAFETY: the caller passes the kernel's siginfo.
            let code = unsafe { (*info).si_code };
            if code <= 0 {
                // Sent by kill/tgkill/sigqueue: it will not recur by itself.
                // SAFETY: raise is async-signal-safe; our handler is gone, so
                // the default action runs.
                unsafe { libc::raise(sig) };
            }
            return Chained::DefaultRestored;
        }
        if self.0.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: with SA_SIGINFO, sa_sigaction holds a three-argument
            // handler that its owner installed for this signal.
            let f: Handler = unsafe { core::mem::transmute(self.0.sa_sigaction) };
            f(sig, info, ctx);
        } else {
            // SAFETY: without SA_SIGINFO, sa_sigaction holds a one-argument
            // handler that its owner installed for this signal.
            let f: extern "C" fn(i32) = unsafe { core::mem::transmute(self.0.sa_sigaction) };
            f(sig);
        }
        Chained::Called
    }
}

/// `sigaction(sig, handler, &old)`—Installs an `SA_SIGINFO | SA_ONSTACK |
/// SA_NODEFER` handler and returns the action it replaced.
///
/// `SA_NODEFER` lets a handler fault on another managed page (a nested fault
/// is handled rather than killing the process); `SA_ONSTACK` lets it run when
/// the thread's stack has overflowed, on the thread's alternate stack.
pub fn install(sig: i32, handler: Handler) -> Result<Action> {
    let mut new = Action::default_action();
    new.0.sa_sigaction = handler as usize;
    new.0.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
    let mut old = Action::default_action();
    // SAFETY: both pointers are valid sigaction structures; the handler is an
    // `extern "C"` function with the SA_SIGINFO signature.
    check(unsafe { libc::sigaction(sig, &new.0, &mut old.0) })?;
    Ok(old)
}

/// `sigaction(sig, action, NULL)`—Puts back a saved action.
pub fn set(sig: i32, action: &Action) -> Result<()> {
    // SAFETY: `action` is a valid sigaction previously returned by the kernel.
    check(unsafe { libc::sigaction(sig, &action.0, core::ptr::null_mut()) }).map(|_| ())
}

/// `sigaction(sig, NULL, &cur)`—Reads the current action for `sig`.
pub fn current(sig: i32) -> Result<Action> {
    let mut cur = Action::default_action();
    // SAFETY: `cur` is a valid sigaction for the kernel to fill.
    check(unsafe { libc::sigaction(sig, core::ptr::null(), &mut cur.0) })?;
    Ok(cur)
}

/// Whether the installed action for `sig` is `handler`.
pub fn is_installed(sig: i32, handler: Handler) -> bool {
    current(sig).is_ok_and(|a| a.0.sa_sigaction == handler as usize)
}

/// The faulting address (`si_addr`) and cause (`si_code`) of a signal.
///
/// # Safety
/// `info` must be the kernel's siginfo for a running handler.
pub unsafe fn fault_info(info: *const siginfo_t) -> (usize, i32) {
    // SAFETY: the caller passes a valid siginfo; for SIGSEGV / SIGBUS the
    // union holds the fault address.
    unsafe { ((*info).si_addr() as usize, (*info).si_code) }
}

/// `si_code` of a `SIGSEGV` for an unmapped address.
pub const SEGV_MAPERR: i32 = 1;
/// `si_code` of a `SIGSEGV` for a protection violation.
pub const SEGV_ACCERR: i32 = 2;
/// `si_code` of a `SIGBUS` from a userfaultfd range (`UFFD_FEATURE_SIGBUS`).
pub const BUS_ADRERR: i32 = 2;
/// `si_code` of a `SIGBUS` from a poisoned page.
pub const BUS_MCEERR_AR: i32 = 4;

/// What the faulting instruction tried to do, from the machine context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Exec,
    /// The context does not say.
    Unknown,
}

/// Decodes the access kind of a fault from the `ucontext_t` the kernel passed.
///
/// x86-64: the page-fault error code (`REG_ERR`; bit 1 write, bit 4 fetch).
/// aarch64: the exception syndrome (ESR) record in the signal frame (EC
/// instruction abort, or WnR of a data abort).
///
/// # Safety
/// `ctx` must be the kernel's `ucontext_t` for a running fault handler.
pub unsafe fn access_kind(ctx: *const c_void) -> Access {
    // SAFETY: forwarded from the caller.
    unsafe { arch::access_kind(ctx) }
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use super::Access;
    use core::ffi::c_void;

    const PF_WRITE: i64 = 1 << 1;
    const PF_INSTR: i64 = 1 << 4;

    pub(super) unsafe fn access_kind(ctx: *const c_void) -> Access {
        // SAFETY: the caller passes the kernel's ucontext_t, whose gregs hold
        // the trap's error code at REG_ERR.
        let err =
            unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_ERR as usize] };
        decode(err)
    }

    pub(super) fn decode(err: i64) -> Access {
        if err & PF_INSTR != 0 {
            Access::Exec
        } else if err & PF_WRITE != 0 {
            Access::Write
        } else {
            Access::Read
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use super::Access;
    use core::ffi::c_void;

    const ESR_MAGIC: u32 = 0x4553_5201;
    const EC_IABT_LOW: u64 = 0x20;
    const EC_DABT_LOW: u64 = 0x24;
    const WNR: u64 = 1 << 6;

    pub(super) unsafe fn access_kind(ctx: *const c_void) -> Access {
        // SAFETY: the caller passes the kernel's ucontext_t. Its mcontext
        // ends in a 16-byte-aligned __reserved area of {magic, size} records,
        // terminated by a zero magic, laid out by the kernel.
        unsafe {
            let mc = core::ptr::addr_of!((*ctx.cast::<libc::ucontext_t>()).uc_mcontext);
            let after_pstate = core::ptr::addr_of!((*mc).pstate).cast::<u8>().add(8);
            let mut rec = after_pstate.add(after_pstate.align_offset(16));
            let end = mc
                .cast::<u8>()
                .add(core::mem::size_of::<libc::mcontext_t>());
            while rec.add(8) <= end {
                let magic = rec.cast::<u32>().read();
                let size = rec.add(4).cast::<u32>().read() as usize;
                if magic == 0 || size < 8 {
                    break;
                }
                if magic == ESR_MAGIC {
                    return decode(rec.add(8).cast::<u64>().read());
                }
                rec = rec.add(size);
            }
        }
        Access::Unknown
    }

    pub(super) fn decode(esr: u64) -> Access {
        match esr >> 26 {
            EC_IABT_LOW => Access::Exec,
            EC_DABT_LOW if esr & WNR != 0 => Access::Write,
            EC_DABT_LOW => Access::Read,
            _ => Access::Unknown,
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod arch {
    use super::Access;
    use core::ffi::c_void;

    pub(super) unsafe fn access_kind(_ctx: *const c_void) -> Access {
        Access::Unknown
    }
}

/// `sigaltstack(new, &old)`—Sets the calling thread's alternate signal stack
/// to `base..base + size`, returning the previous one (`None` if disabled).
///
/// # Safety
/// `base..base + size` must stay mapped and unused by anything else for as
/// long as it is the thread's alternate stack.
pub unsafe fn set_altstack(base: *mut u8, size: usize) -> Result<Option<(*mut u8, usize)>> {
    let new = libc::stack_t {
        ss_sp: base.cast(),
        ss_flags: 0,
        ss_size: size,
    };
    let mut old = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: both are valid stack_t; the caller keeps the stack alive.
    check(unsafe { libc::sigaltstack(&new, &mut old) })?;
    Ok(stack_of(&old))
}

/// `sigaltstack(NULL, &cur)`—The calling thread's alternate stack, if any.
pub fn altstack() -> Result<Option<(*mut u8, usize)>> {
    let mut cur = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: `cur` is a valid stack_t for the kernel to fill.
    check(unsafe { libc::sigaltstack(core::ptr::null(), &mut cur) })?;
    Ok(stack_of(&cur))
}

/// `sigaltstack({SS_DISABLE})`—Turns off the calling thread's alternate stack.
pub fn disable_altstack() -> Result<()> {
    let new = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: a valid stack_t asking to disable the alternate stack.
    check(unsafe { libc::sigaltstack(&new, core::ptr::null_mut()) }).map(|_| ())
}

fn stack_of(s: &libc::stack_t) -> Option<(*mut u8, usize)> {
    (s.ss_flags & libc::SS_DISABLE == 0).then_some((s.ss_sp.cast(), s.ss_size))
}

/// `_exit(code)`—Ends the process at once. Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// The lowest address of the calling thread's stack and the size of its guard
/// region, from `pthread_getattr_np`. Not async-signal-safe.
pub fn thread_stack() -> Result<(usize, usize, usize)> {
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initializes `attr` on success.
    let r = unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) };
    if r != 0 {
        return Err(crate::Errno::from_raw(r));
    }
    let mut addr = core::ptr::null_mut();
    let (mut size, mut guard) = (0, 0);
    // SAFETY: `attr` was initialized above and is destroyed once, here.
    unsafe {
        libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_getguardsize(attr.as_ptr(), &mut guard);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
    }
    Ok((addr as usize, size, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_error_codes_decode() {
        assert_eq!(arch::decode(0b00101), Access::Read); // present, user
        assert_eq!(arch::decode(0b00111), Access::Write);
        assert_eq!(arch::decode(0b10101), Access::Exec);
        assert_eq!(arch::decode(0b00110), Access::Write); // not present
    }

    #[test]
    fn altstack_round_trip() {
        std::thread::spawn(|| {
            let size = 64 * 1024;
            let base = crate::mem::mmap_anonymous(
                size,
                crate::mem::prot::READ | crate::mem::prot::WRITE,
                0,
            )
            .unwrap();
            // SAFETY: the stack stays mapped until after it is disabled below.
            unsafe { set_altstack(base, size).unwrap() };
            assert_eq!(altstack().unwrap(), Some((base, size)));
            disable_altstack().unwrap();
            assert_eq!(altstack().unwrap(), None);
            // SAFETY: no longer the altstack; ours.
            unsafe { crate::mem::munmap(base, size).unwrap() };
        })
        .join()
        .unwrap();
    }

    #[test]
    fn thread_stack_contains_a_local() {
        let local = 0u8;
        let (lo, size, _guard) = thread_stack().unwrap();
        let at = &local as *const u8 as usize;
        assert!(lo <= at && at < lo + size, "{lo:#x}+{size:#x} vs {at:#x}");
    }
}
