//! Benchmark suites, their statistics, and the progress display.

pub mod boehm;
pub mod gc;
pub mod prim;
mod reference;
pub mod svg;
pub mod vm;

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// The median of `runs` measurements of `f`, each a figure in ns per
/// operation (or any unit: the median does not care).
pub fn median(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut v = (0..runs)
        .map(|_| f())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Nanoseconds per operation for `ops` operations timed from `t0`.
pub fn per_op(t0: Instant, ops: usize) -> f64 {
    t0.elapsed().as_nanos() as f64 / ops as f64
}

/// Progress on stderr: one line rewritten in place on a terminal, plain
/// lines otherwise.
pub struct Progress {
    total: usize,
    done: usize,
    tty: bool,
    started: Instant,
}

impl Progress {
    /// A display for `total` steps.
    pub fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        let line = format!(
            "[{:>2}/{}] {:5.1}s  {what}",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    /// Ends the display.
    pub fn finish(&self) {
        let mut e = std::io::stderr().lock();
        let secs = self.started.elapsed().as_secs_f64();
        if self.tty {
            let _ = writeln!(e, "\r\x1b[2Kdone in {secs:.1}s");
        } else {
            let _ = writeln!(e, "done in {secs:.1}s");
        }
    }
}
