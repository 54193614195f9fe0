//! [`Prot`]: what a page allows.

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};
use vmprim_sys::mem::prot;

/// Page protection: a set of read, write and execute permissions.
///
/// # Examples
/// Protections combine like flags and print like `ls -l`. The hardware
/// cannot make a page writable but not readable (on x86 and arm64): a page
/// given [`WRITE`](Self::WRITE) alone can be read too.
/// ```
/// use vmprim_prim::Prot;
///
/// let rw = Prot::READ | Prot::WRITE;
/// assert_eq!(rw, Prot::READ_WRITE);
/// assert!(rw.contains(Prot::READ) && !rw.contains(Prot::EXEC));
/// assert_eq!(rw.without(Prot::WRITE), Prot::READ);
/// assert_eq!(rw & (Prot::READ | Prot::EXEC), Prot::READ);
/// assert_eq!(format!("{:?}", rw | Prot::EXEC), "rwx");
/// assert_eq!(Prot::from_bits_truncate(rw.bits() | 0x100), rw); // unknown bits dropped
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(i32);

impl Prot {
    /// No access: every touch traps.
    pub const NONE: Self = Self(prot::NONE);
    /// Loads allowed.
    pub const READ: Self = Self(prot::READ);
    /// Stores allowed (x86 and arm64 imply reads).
    pub const WRITE: Self = Self(prot::WRITE);
    /// Instruction fetches allowed.
    pub const EXEC: Self = Self(prot::EXEC);
    /// Loads and stores: ordinary data memory.
    pub const READ_WRITE: Self = Self(prot::READ | prot::WRITE);

    /// The bits as `mprotect(2)` takes them.
    pub const fn bits(self) -> i32 {
        self.0
    }

    /// `self` without the permissions of `other`.
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The protection with these `mprotect(2)` bits (read, write, exec;
    /// others are dropped).
    pub const fn from_bits_truncate(bits: i32) -> Self {
        Self(bits & (prot::READ | prot::WRITE | prot::EXEC))
    }

    /// Whether every permission of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Prot {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitAnd for Prot {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl BitOrAssign for Prot {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |p: Self, c: char| if self.contains(p) { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            flag(Self::READ, 'r'),
            flag(Self::WRITE, 'w'),
            flag(Self::EXEC, 'x')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_reads_like_ls() {
        assert_eq!(format!("{:?}", Prot::READ_WRITE), "rw-");
        assert_eq!(format!("{:?}", Prot::NONE), "---");
        assert_eq!(format!("{:?}", Prot::READ | Prot::EXEC), "r-x");
    }

    #[test]
    fn without_and_from_bits() {
        assert_eq!(Prot::READ_WRITE.without(Prot::WRITE), Prot::READ);
        assert_eq!(
            Prot::from_bits_truncate(0x7 | 0x100),
            Prot::READ_WRITE | Prot::EXEC
        );
    }

    #[test]
    fn contains_is_subset() {
        assert!(Prot::READ_WRITE.contains(Prot::READ));
        assert!(!Prot::READ.contains(Prot::WRITE));
        assert!(Prot::READ.contains(Prot::NONE));
    }
}
