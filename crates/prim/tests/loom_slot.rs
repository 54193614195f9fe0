//! The trap registry's slot protocol under every interleaving loom finds:
//! the same source file as the library's (`src/trap/slot.rs`), compiled here
//! with loom's atomics.
//!
//! What must hold: a reader never runs with an entry that a writer has
//! retired, and a reader only ever runs with an entry whose range holds the
//! faulting address (even while the slot is retired and reused).

use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

mod sync {
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};
    pub(crate) use loom::thread::yield_now;
}

#[allow(dead_code, reason = "the library's module, used here in part")]
#[path = "../src/trap/slot.rs"]
mod slot;
use slot::{Ranged, Slot};

struct Entry {
    start: usize,
    end: usize,
    /// Cleared by the writer once `retire` returned the entry.
    alive: AtomicBool,
    /// Readers that ran with this entry.
    runs: AtomicUsize,
}

impl Ranged for Entry {
    fn range(&self) -> (usize, usize) {
        (self.start, self.end)
    }
}

fn entry(start: usize, end: usize) -> *mut Entry {
    Box::into_raw(Box::new(Entry {
        start,
        end,
        alive: AtomicBool::new(true),
        runs: AtomicUsize::new(0),
    }))
}

fn slot() -> Arc<Slot<Entry>> {
    Arc::new(Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        entry: AtomicPtr::new(core::ptr::null_mut()),
        active: AtomicUsize::new(0),
    })
}

/// A reader that checks the entry it runs with is alive and holds `addr`.
fn reader(s: Arc<Slot<Entry>>, addr: usize) -> thread::JoinHandle<bool> {
    thread::spawn(move || {
        s.with(addr, |e| {
            assert!(e.alive.load(SeqCst), "ran with a retired entry");
            assert!(
                e.start <= addr && addr < e.end,
                "ran with an entry not holding the address"
            );
            e.runs.fetch_add(1, SeqCst);
        })
        .is_some()
    })
}

#[test]
fn a_retired_entry_is_never_run() {
    loom::model(|| {
        let s = slot();
        let e = entry(0x1000, 0x2000);
        // SAFETY: a fresh entry, freed below only after `retire` returned it.
        unsafe { s.publish(e) };
        let r = reader(s.clone(), 0x1800);
        let old = s.retire();
        assert_eq!(old, e);
        // SAFETY: retired: no reader runs with it any more.
        unsafe { (*old).alive.store(false, SeqCst) };
        r.join().unwrap();
        // SAFETY: retired and every reader joined.
        drop(unsafe { Box::from_raw(old) });
    });
}

#[test]
fn a_reused_slot_never_serves_the_wrong_range() {
    loom::model(|| {
        let s = slot();
        let first = entry(0x1000, 0x2000);
        // SAFETY: fresh entries, freed after retire and join.
        unsafe { s.publish(first) };
        let r = reader(s.clone(), 0x1800);
        let old = s.retire();
        // SAFETY: retired: no reader runs with it.
        unsafe { (*old).alive.store(false, SeqCst) };
        let second = entry(0x5000, 0x6000);
        // SAFETY: as above; the slot is free again.
        unsafe { s.publish(second) };
        r.join().unwrap();
        // SAFETY: the second entry is live until retired below.
        let second_runs = unsafe { (*second).runs.load(SeqCst) };
        assert_eq!(second_runs, 0, "the reader's address is not the second's");
        let last = s.retire();
        // SAFETY: both retired, all readers joined.
        unsafe {
            drop(Box::from_raw(old));
            drop(Box::from_raw(last));
        }
    });
}

#[test]
fn a_published_entry_is_found_by_a_later_reader() {
    loom::model(|| {
        let s = slot();
        let e = entry(0x1000, 0x2000);
        // SAFETY: fresh entry, freed after retire and join.
        unsafe { s.publish(e) };
        let r1 = reader(s.clone(), 0x1000);
        let r2 = reader(s.clone(), 0x2000); // one past the end
        assert!(
            r1.join().unwrap(),
            "an address in range is served while published"
        );
        assert!(!r2.join().unwrap(), "the end is exclusive");
        let old = s.retire();
        // SAFETY: retired, readers joined.
        drop(unsafe { Box::from_raw(old) });
    });
}
