//! A bitmap of dirty pages shared between fault handlers (which set bits)
//! and the collector (which takes them).

use super::{push_page, PageRun};
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// One bit per page. Handlers set bits from signal context; the collector
/// swaps whole words to zero.
#[derive(Debug)]
pub(super) struct Bitmap {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl Bitmap {
    pub(super) fn new(pages: usize) -> Self {
        Self {
            words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    /// Marks page `i` dirty. Async-signal-safe.
    pub(super) fn set(&self, i: usize) {
        debug_assert!(i < self.pages);
        self.words[i / 64].fetch_or(1 << (i % 64), SeqCst);
    }

    /// Whether page `i` is marked dirty.
    pub(super) fn is_set(&self, i: usize) -> bool {
        self.words[i / 64].load(SeqCst) & (1 << (i % 64)) != 0
    }

    /// Takes every set bit, clearing it, and appends the runs to `out` in
    /// page order.
    pub(super) fn take_into(&self, out: &mut Vec<PageRun>) {
        for (w, word) in self.words.iter().enumerate() {
            if word.load(SeqCst) == 0 {
                continue;
            }
            let mut bits = word.swap(0, SeqCst);
            while bits != 0 {
                let start = bits.trailing_zeros() as usize;
                let count = (!(bits >> start)).trailing_zeros() as usize;
                push_page(out, w * 64 + start, count);
                bits &= if start + count == 64 {
                    0
                } else {
                    !0 << (start + count)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_across_words_and_clear() {
        let b = Bitmap::new(200);
        for i in [0, 1, 2, 63, 64, 65, 130, 199] {
            b.set(i);
        }
        let mut out = Vec::new();
        b.take_into(&mut out);
        let want =
            [(0, 3), (63, 3), (130, 1), (199, 1)].map(|(first, count)| PageRun { first, count });
        assert_eq!(out, want);
        out.clear();
        b.take_into(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_full_word_is_one_run() {
        let b = Bitmap::new(128);
        (0..128).for_each(|i| b.set(i));
        let mut out = Vec::new();
        b.take_into(&mut out);
        assert_eq!(
            out,
            [PageRun {
                first: 0,
                count: 128
            }]
        );
    }
}
