//! Upstream faults logged at `warn`, at most a few lines per second per worker: a dead upstream
//! under load must not turn the log into a second outage. Lines held back are counted and the
//! count is reported with the next line that goes out.

use std::cell::Cell;
use std::time::Instant;

/// Lines allowed per worker and second.
const PER_SECOND: u32 = 5;

thread_local! {
    /// The current second's start, lines logged in it, lines held back since the last one out.
    static WINDOW: Cell<(Option<Instant>, u32, u64)> = const { Cell::new((None, 0, 0)) };
}

/// Whether a line may go out now; `Some(n)` carries the number of lines held back before it.
pub fn admit() -> Option<u64> {
    WINDOW.with(|w| {
        let (start, count, held) = w.get();
        let now = Instant::now();
        let (start, count) = match start {
            Some(s) if now.duration_since(s).as_secs() < 1 => (s, count),
            _ => (now, 0),
        };
        if count < PER_SECOND {
            w.set((Some(start), count + 1, 0));
            Some(held)
        } else {
            w.set((Some(start), count, held + 1));
            None
        }
    })
}

/// Logs an upstream fault at `warn`, rate-limited.
pub fn upstream_fault(upstream: &str, server: &str, what: &str) {
    if let Some(held_back) = admit() {
        tracing::warn!(%upstream, %server, held_back, "upstream fault: {what}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_burst_is_cut_to_the_allowance_and_the_rest_counted() {
        let admitted = (0..100).filter(|_| super::admit().is_some()).count();
        assert_eq!(admitted, super::PER_SECOND as usize);
    }
}
