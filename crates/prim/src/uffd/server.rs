//! [`Server`]: a thread that serves a userfaultfd's faults.

use super::{Delivery, Uffd, UffdError, UserFault};
use crate::range::page_size;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use vmprim_sys::mem;

/// A thread that reads the faults of a [`Delivery::Messages`] userfaultfd and
/// hands each to a handler, which resolves it (with
/// [`Uffd::copy`], [`Uffd::zeropage`], [`Uffd::write_unprotect`], ...).
///
/// The handler runs in an ordinary thread: it may allocate, lock, block and
/// do I/O. If it returns an error the faulting thread is woken and faults
/// again, so a transient failure is retried; [`errors`](Self::errors) counts
/// them. Dropping the server stops the thread.
pub struct Server {
    thread: Option<JoinHandle<()>>,
    stop: Option<OwnedFd>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    faults: AtomicU64,
    errors: AtomicU64,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("faults", &self.faults())
            .field("errors", &self.errors())
            .finish()
    }
}

impl Server {
    /// Starts a thread serving `uffd`'s faults with `handler`.
    ///
    /// # Panics
    /// If `uffd` was not opened with [`Delivery::Messages`] (its faults would
    /// never be read).
    ///
    /// # Examples
    /// Serve missing pages from a thread. The faulting thread sleeps until the
    /// handler resolves its fault and wakes it
    /// ([`Wake::Yes`](super::Wake::Yes)); unlike a trap handler, this one may
    /// allocate, lock and block.
    /// ```
    /// use std::sync::Arc;
    /// use vmprim_prim::uffd::{Delivery, Features, Mode, Server, Uffd, Wake};
    /// use vmprim_prim::{page_size, Prot, Region};
    ///
    /// let p = page_size();
    /// let region = Region::new(4 * p, Prot::READ_WRITE)?;
    /// let start = region.as_ptr() as usize;
    /// let uffd = Arc::new(Uffd::new(Delivery::Messages, Features::NONE)?);
    /// uffd.register(start, region.len(), Mode::MISSING)?;
    /// let server = Server::spawn(uffd, move |fault, uffd| {
    ///     let contents = vec![1 + ((fault.page - start) / p) as u8; p]; // page i holds i + 1
    ///     uffd.copy(fault.page, &contents, Wake::Yes).map(|_| ())
    /// })?;
    /// assert_eq!(region.read_u8(3 * p)?, 4); // sleeps until the server filled the page
    /// assert_eq!(region.read_u8(p + 9)?, 2);
    /// assert_eq!((server.faults(), server.errors()), (2, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<F>(uffd: Arc<Uffd>, mut handler: F) -> Result<Self, UffdError>
    where
        F: FnMut(&UserFault, &Uffd) -> Result<(), UffdError> + Send + 'static,
    {
        assert_eq!(
            uffd.delivery(),
            Delivery::Messages,
            "a Server serves message delivery"
        );
        let (stop_rx, stop_tx) =
            mem::pipe().map_err(|source| UffdError::Os { op: "pipe", source })?;
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("vmprim-uffd".into())
            .spawn(move || serve(&uffd, &stop_rx, &st, &mut handler))
            .map_err(|e| UffdError::Os {
                op: "spawn",
                source: vmprim_sys::Errno::from_raw(
                    e.raw_os_error().unwrap_or(vmprim_sys::Errno::EAGAIN.raw()),
                ),
            })?;
        Ok(Self {
            thread: Some(thread),
            stop: Some(stop_tx),
            stats,
        })
    }

    /// Faults served so far.
    pub fn faults(&self) -> u64 {
        self.stats.faults.load(Relaxed)
    }

    /// Handler errors so far (each one retried by waking the thread).
    pub fn errors(&self) -> u64 {
        self.stats.errors.load(Relaxed)
    }
}

fn serve<F>(uffd: &Uffd, stop: &OwnedFd, stats: &Stats, handler: &mut F)
where
    F: FnMut(&UserFault, &Uffd) -> Result<(), UffdError>,
{
    loop {
        match mem::poll2(uffd.raw_fd(), stop.as_fd()) {
            Ok((_, true)) => return,
            Ok((false, false)) => continue,
            Ok((true, false)) => {}
            Err(_) => continue, // EINTR
        }
        while let Ok(Some(fault)) = uffd.read_fault() {
            stats.faults.fetch_add(1, Relaxed);
            if handler(&fault, uffd).is_err() {
                stats.errors.fetch_add(1, Relaxed);
                let _ = uffd.wake(fault.page, page_size());
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the write end makes the pipe readable (EOF): the thread
        // sees it in poll and returns.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
