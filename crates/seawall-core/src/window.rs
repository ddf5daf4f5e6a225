//! Counts over a sliding time window, kept in ten buckets: "how many calls, failures, retries in
//! the last ten seconds" for breakers and retry budgets. A bucket older than the window is reset
//! when its slot comes round again, so the sum always covers the last `window` (to within one
//! bucket). Not synchronised: the owner keeps it behind its own lock.

/// Buckets per window.
const BUCKETS: usize = 10;

/// `N` counters summed over the last `window_ms`.
#[derive(Debug, Clone)]
pub struct Window<const N: usize> {
    bucket_ms: u64,
    /// Per slot: the bucket number it holds (time / bucket_ms) and its counts.
    slots: [(u64, [u32; N]); BUCKETS],
}

impl<const N: usize> Window<N> {
    /// A window `window_ms` long (at least 10 ms).
    pub fn new(window_ms: u64) -> Window<N> {
        Window { bucket_ms: (window_ms / BUCKETS as u64).max(1), slots: [(0, [0; N]); BUCKETS] }
    }

    /// The window's length.
    pub fn window_ms(&self) -> u64 {
        self.bucket_ms * BUCKETS as u64
    }

    /// Adds `by` to counter `i` at `now_ms`.
    pub fn add(&mut self, now_ms: u64, i: usize, by: u32) {
        let bucket = now_ms / self.bucket_ms;
        let slot = &mut self.slots[(bucket % BUCKETS as u64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, [0; N]);
        }
        slot.1[i] = slot.1[i].saturating_add(by);
    }

    /// Each counter summed over the window ending at `now_ms`.
    pub fn sums(&self, now_ms: u64) -> [u64; N] {
        let bucket = now_ms / self.bucket_ms;
        let mut sums = [0u64; N];
        for (at, counts) in &self.slots {
            if *at + (BUCKETS as u64) > bucket && *at <= bucket {
                for (sum, &c) in sums.iter_mut().zip(counts) {
                    *sum += u64::from(c);
                }
            }
        }
        sums
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.slots = [(0, [0; N]); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_window_bucket_by_bucket() {
        let mut w = Window::<2>::new(10_000);
        assert_eq!(w.window_ms(), 10_000);
        w.add(5_000, 0, 3);
        w.add(9_999, 1, 1);
        w.add(12_000, 0, 1);
        assert_eq!(w.sums(12_000), [4, 1]);
        // At 15.5 s the bucket of 5 s (5.0–5.999) has left the window.
        assert_eq!(w.sums(15_500), [1, 1]);
        assert_eq!(w.sums(18_999), [1, 1]);
        // The window at 19 s covers the buckets of 10–19 s: 9.999 s is out.
        assert_eq!(w.sums(19_000), [1, 0]);
        // Long idle: nothing stale is counted, and reused slots start from zero.
        assert_eq!(w.sums(1_000_000), [0, 0]);
        w.add(1_005_000, 0, 1);
        assert_eq!(w.sums(1_005_000), [1, 0]);
        w.clear();
        assert_eq!(w.sums(1_005_000), [0, 0]);
    }
}
