//! Exponential backoff with full jitter: before retry `n` (1-based), wait a random time between 0
//! and `base × 2^(n−1)`, capped. Spreading retries over the whole interval keeps clients that
//! failed together from coming back together (AWS Architecture Blog, "Exponential Backoff And
//! Jitter").

use crate::rng::FastRng;

/// The wait before retry `retry` (1-based), in milliseconds.
pub fn full_jitter(base_ms: u64, cap_ms: u64, retry: u32, rng: &mut FastRng) -> u64 {
    let ceiling = base_ms.saturating_mul(1u64 << retry.saturating_sub(1).min(32)).min(cap_ms);
    if ceiling == 0 {
        return 0;
    }
    rng.next_u64() % (ceiling + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_each_retry_up_to_the_cap_and_are_spread() {
        let mut rng = FastRng::new(7);
        for (retry, ceiling) in [(1, 50), (2, 100), (3, 200), (4, 300), (40, 300)] {
            let waits: Vec<u64> =
                (0..2000).map(|_| full_jitter(50, 300, retry, &mut rng)).collect();
            assert!(waits.iter().all(|&w| w <= ceiling), "retry {retry}");
            // Spread over the whole interval, not bunched at its end.
            assert!(waits.iter().any(|&w| w < ceiling / 10), "retry {retry}");
            assert!(waits.iter().any(|&w| w > ceiling * 9 / 10), "retry {retry}");
        }
        assert_eq!(full_jitter(0, 300, 3, &mut rng), 0);
    }
}
