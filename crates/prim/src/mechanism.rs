//! Which mechanisms this kernel and process allow, and why not the others.

use crate::dirty::{self, Backend};
use crate::uffd::{Features, Uffd};
use core::fmt;

/// Whether a mechanism can be used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// It works.
    Yes,
    /// It does not, and this is why.
    No(String),
}

impl Availability {
    /// Whether it works.
    pub fn is_yes(&self) -> bool {
        matches!(self, Availability::Yes)
    }
}

/// The mechanisms behind each primitive on this machine.
#[derive(Clone, Debug)]
pub struct Mechanisms {
    /// `SIGSEGV` traps on `mprotect`ed pages (always).
    pub signal: Availability,
    /// userfaultfd, resolved in the faulting thread (`SIGBUS`).
    pub uffd_sigbus: Availability,
    /// userfaultfd served by a handler thread.
    pub uffd_thread: Availability,
    /// userfaultfd write-protect.
    pub uffd_wp: Availability,
    /// The features userfaultfd offers (empty if refused).
    pub uffd_features: Features,
    /// DIRTY backends, best first.
    pub dirty: Vec<(Backend, Availability)>,
    /// The DIRTY backend [`dirty::Choice::Best`] picks.
    pub dirty_best: Backend,
}

/// Detects what this kernel and process allow.
///
/// Call it outside signal handlers (it allocates). The first call probes
/// userfaultfd and soft-dirty bits, which clears the soft-dirty bits of the
/// whole process; later calls reuse the answers.
///
/// # Examples
/// ```
/// use vmprim_prim::{mechanisms, Availability};
///
/// let m = mechanisms();
/// assert!(m.signal.is_yes()); // SIGSEGV traps work everywhere
/// if let Availability::No(why) = &m.uffd_sigbus {
///     eprintln!("no in-thread userfaultfd here: {why}");
/// }
/// let best = m.dirty.iter().find(|(backend, _)| *backend == m.dirty_best);
/// assert!(best.is_some_and(|(_, available)| available.is_yes()));
/// assert!(m.to_string().contains(&format!("DIRTY  best: {}", m.dirty_best)));
/// ```
pub fn mechanisms() -> Mechanisms {
    let uffd = Uffd::available();
    let features = uffd.as_ref().copied().unwrap_or_default();
    let need = |f: Features| match &uffd {
        Err(e) => Availability::No(e.to_string()),
        Ok(have) => match have.first_missing(f) {
            None => Availability::Yes,
            Some((feature, needs)) => {
                Availability::No(format!("kernel lacks {feature} (Linux {needs})"))
            }
        },
    };
    let dirty: Vec<_> = Backend::ALL
        .iter()
        .map(|&b| {
            let a = match b {
                Backend::Trap => Availability::Yes,
                Backend::UffdWp => need(Features::WP | Features::SIGBUS),
                Backend::WpAsync => {
                    need(Features::WP | Features::WP_ASYNC | Features::WP_UNPOPULATED)
                }
                Backend::SoftDirty if dirty::soft_dirty_available() => Availability::Yes,
                Backend::SoftDirty => {
                    Availability::No("kernel lacks soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)".into())
                }
            };
            (b, a)
        })
        .collect();
    let dirty_best = dirty
        .iter()
        .find(|(b, a)| a.is_yes() && *b != Backend::SoftDirty)
        .map_or(Backend::Trap, |(b, _)| *b);
    Mechanisms {
        signal: Availability::Yes,
        uffd_sigbus: need(Features::SIGBUS),
        uffd_thread: need(Features::NONE),
        uffd_wp: need(Features::WP),
        uffd_features: features,
        dirty,
        dirty_best,
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Availability::Yes => f.write_str("yes"),
            Availability::No(why) => write!(f, "no: {why}"),
        }
    }
}

impl fmt::Display for Mechanisms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "TRAP   signal (SIGSEGV + mprotect): {}", self.signal)?;
        writeln!(
            f,
            "TRAP   userfaultfd in-thread (SIGBUS): {}",
            self.uffd_sigbus
        )?;
        writeln!(f, "TRAP   userfaultfd handler thread: {}", self.uffd_thread)?;
        writeln!(f, "PROT   userfaultfd write-protect: {}", self.uffd_wp)?;
        writeln!(f, "uffd   features: {:?}", self.uffd_features)?;
        for (b, a) in &self.dirty {
            writeln!(f, "DIRTY  {b}: {a}")?;
        }
        write!(f, "DIRTY  best: {}", self.dirty_best)
    }
}
