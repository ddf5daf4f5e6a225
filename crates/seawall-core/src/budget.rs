//! A retry budget: retries may add at most `ratio` to the requests an upstream group receives
//! (over a sliding window), plus a small floor so that a quiet upstream can still be retried.
//! When an upstream fails, every request would otherwise be tried `attempts` times and an outage
//! would multiply its own load; with a budget of 0.2 it grows by a fifth at most.

use std::sync::{Mutex, PoisonError};

use crate::window::Window;

const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// Requests and retries over a window, shared by every worker. The budget's terms are given with
/// each [`RetryBudget::try_retry`], so a reload that changes them keeps the counts.
#[derive(Debug)]
pub struct RetryBudget {
    window: Mutex<Window<2>>,
}

impl RetryBudget {
    /// Counts over the last `window_ms`.
    pub fn new(window_ms: u64) -> RetryBudget {
        RetryBudget { window: Mutex::new(Window::new(window_ms)) }
    }

    /// Counts a request (its first attempt) at `now_ms`.
    pub fn record_request(&self, now_ms: u64) {
        self.lock().add(now_ms, REQUESTS, 1);
    }

    /// Takes one retry at `now_ms` from a budget of `ratio` of the requests in the window plus
    /// `min_per_sec` retries a second; false when the budget is spent.
    pub fn try_retry(&self, now_ms: u64, ratio: f64, min_per_sec: u32) -> bool {
        let mut window = self.lock();
        let floor = u64::from(min_per_sec) * window.window_ms() / 1000;
        let [requests, retries] = window.sums(now_ms);
        let allowed = (ratio.max(0.0) * requests as f64) as u64 + floor;
        if retries >= allowed {
            return false;
        }
        window.add(now_ms, RETRIES, 1);
        true
    }

    /// Requests and retries in the window ending at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> (u64, u64) {
        let [requests, retries] = self.lock().sums(now_ms);
        (requests, retries)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window<2>> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_ratio_plus_the_floor() {
        let budget = RetryBudget::new(10_000);
        for i in 0..1000 {
            budget.record_request(1000 + i);
        }
        // 20 % of 1,000 requests, plus 1 a second over 10 s.
        let granted = (0..1000).filter(|&i| budget.try_retry(2000 + i, 0.2, 1)).count();
        assert_eq!(granted, 210);
        assert_eq!(budget.counts(3000), (1000, 210));
        // Once the requests leave the window, only the floor remains.
        let later = 20_000;
        let granted = (0..100).filter(|_| budget.try_retry(later, 0.2, 1)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn a_zero_budget_allows_only_the_floor() {
        let budget = RetryBudget::new(10_000);
        budget.record_request(1);
        assert!(!budget.try_retry(1, 0.0, 0));
    }
}
