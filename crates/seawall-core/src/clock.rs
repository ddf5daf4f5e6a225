//! A monotonic clock in milliseconds (or nanoseconds) since process start.
//!
//! Policies store deadlines as plain `u64` milliseconds so that they fit in one atomic and can be
//! compared without locks; callers pass `now` in, which keeps the primitives free of I/O and lets
//! tests drive time by hand.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds elapsed since the first call in this process (never 0 after start-up work).
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] for an instant already read, which spares a clock read on hot paths.
pub fn ms_at(at: Instant) -> u64 {
    // +1 so that 0 can mean "never" in atomics that hold deadlines.
    at.saturating_duration_since(origin()).as_millis() as u64 + 1
}

/// Nanoseconds since the first call in this process (never 0), for rate limits: at thousands of
/// requests a second a millisecond is too coarse a step.
pub fn ns_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// Converts a duration into whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
