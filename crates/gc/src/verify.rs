//! The heap verifier: a walk of everything reachable, checking each object
//! lies where live objects may, is well formed, and is counted once.

use crate::heap::sealed::Engine;
use crate::object::{ptr_offset, Shape, WORD};
use std::collections::HashSet;
use thiserror::Error;

/// What [`Heap::verify`](crate::Heap::verify) found reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Reachable objects, each counted once.
    pub objects: usize,
    /// Their bytes, headers included.
    pub bytes: usize,
}

/// A broken heap invariant, with where it was found.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A pointer (in a root, or in a field of `from`) that is not an object
    /// of live memory: into from-space, unaligned, or wild.
    #[error("pointer {pointer:#x} (in {from}) is outside the heap's live memory")]
    Stray {
        /// The bad pointer.
        pointer: usize,
        /// Where it was: `root N` or `object 0x… field N`.
        from: String,
    },
    /// An object whose header is a forwarding pointer: a from-space copy.
    #[error("object {object:#x} is forwarded (to {to:#x})")]
    Forwarded {
        /// The object.
        object: usize,
        /// Its forwarding pointer.
        to: usize,
    },
    /// An object that runs past the end of the memory it starts in.
    #[error("object {object:#x} of {bytes} bytes overruns its space")]
    Overrun {
        /// The object.
        object: usize,
        /// Its size.
        bytes: usize,
    },
}

pub(crate) fn walk<E: Engine>(gc: &E, roots: &[usize]) -> Result<Census, VerifyError> {
    let mut seen = HashSet::new();
    let mut stack = Vec::new();
    let mut census = Census::default();
    let mut visit = |p: usize, from: &dyn Fn() -> String, stack: &mut Vec<usize>| {
        if p == 0 {
            return Ok(());
        }
        if !p.is_multiple_of(WORD) || !gc.holds(p, WORD) {
            return Err(VerifyError::Stray {
                pointer: p,
                from: from(),
            });
        }
        if seen.insert(p) {
            stack.push(p);
        }
        Ok(())
    };
    for (i, &r) in roots.iter().enumerate() {
        visit(r, &|| format!("root {i}"), &mut stack)?;
    }
    while let Some(o) = stack.pop() {
        let h = gc.peek(o);
        let Some(shape) = Shape::from_header(h) else {
            return Err(VerifyError::Forwarded { object: o, to: h });
        };
        if !gc.holds(o, shape.bytes()) {
            return Err(VerifyError::Overrun {
                object: o,
                bytes: shape.bytes(),
            });
        }
        census.objects += 1;
        census.bytes += shape.bytes();
        for f in 0..shape.ptrs as usize {
            let v = gc.peek(o + ptr_offset(f));
            visit(v, &|| format!("object {o:#x} field {f}"), &mut stack)?;
        }
    }
    Ok(census)
}
