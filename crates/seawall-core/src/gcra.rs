//! GCRA (the generic cell rate algorithm): a rate limit kept as one number per key.
//!
//! A quota of `count` requests per `period` spaces requests `interval = period / count` apart and
//! lets `burst` of them arrive at once. The only state is the key's *theoretical arrival time*
//! (TAT): when the next request would be due if the key had used its quota evenly. A request at
//! `now` passes when `TAT - now` (the key's debt) leaves room for one more within the burst, and
//! then moves the TAT one interval on. A key whose TAT is not after `now` owes nothing: it is in
//! exactly the state of a key never seen, which is what lets a table of keys forget idle ones
//! without letting anyone exceed a limit (see [`crate::ratelimit`]). Written by hand: it is a few
//! lines of arithmetic, and the same arithmetic will run as a Lua script in Redis for a fleet.
//!
//! Times are nanoseconds on any monotonic clock the caller chooses (see [`crate::clock`]).

/// A quota: `count` requests per `period_ns`, `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per period (at least 1).
    pub count: u32,
    /// The period in nanoseconds (at least 1).
    pub period_ns: u64,
    /// Requests that may arrive at once (at least 1; usually `count`).
    pub burst: u32,
}

/// A [`Quota`] turned into GCRA's two constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    quota: Quota,
    /// Time between requests at the sustained rate.
    interval: u64,
    /// How far ahead of `now` the TAT may be for a request to pass: `interval × (burst − 1)`.
    tolerance: u64,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; store `tat` for the key.
    Allow {
        /// The key's new TAT.
        tat: u64,
        /// Requests the key may still send right now.
        remaining: u32,
        /// Nanoseconds until the key's whole burst is available again.
        reset_ns: u64,
    },
    /// Over the limit; the key's state is unchanged.
    Deny {
        /// Nanoseconds until one request would pass.
        retry_after_ns: u64,
        /// Nanoseconds until the key's whole burst is available again.
        reset_ns: u64,
    },
}

impl Gcra {
    /// The constants for `quota` (zero fields are taken as 1).
    pub fn new(quota: Quota) -> Gcra {
        let quota = Quota {
            count: quota.count.max(1),
            period_ns: quota.period_ns.max(1),
            burst: quota.burst.max(1),
        };
        let interval = (quota.period_ns / u64::from(quota.count)).max(1);
        let tolerance = interval.saturating_mul(u64::from(quota.burst - 1));
        Gcra { quota, interval, tolerance }
    }

    /// The quota these constants came from.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Decides a request at `now` for a key whose stored TAT is `tat` (0 for a key never seen).
    pub fn check(&self, tat: u64, now: u64) -> Verdict {
        let due = tat.max(now);
        let debt = due - now;
        if debt > self.tolerance {
            return Verdict::Deny { retry_after_ns: debt - self.tolerance, reset_ns: debt };
        }
        let tat = due.saturating_add(self.interval);
        let debt = tat - now;
        let room = self.tolerance.saturating_add(self.interval) - debt;
        let remaining = u32::try_from(room / self.interval).unwrap_or(u32::MAX);
        Verdict::Allow { tat, remaining, reset_ns: debt }
    }

    /// Whether a key with this TAT owes nothing at `now` (and may be forgotten).
    pub fn is_free(tat: u64, now: u64) -> bool {
        tat <= now
    }
}

/// Whole seconds, rounded up, for `Retry-After` and the `RateLimit` field: a client told to wait
/// 0 s for something 0.2 s away would come back too early.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn per_minute(count: u32, burst: u32) -> Gcra {
        Gcra::new(Quota { count, period_ns: 60 * SEC, burst })
    }

    /// Sends requests at `now` until one is denied; returns how many passed and the new TAT.
    fn drain(g: &Gcra, mut tat: u64, now: u64) -> (u32, u64) {
        let mut passed = 0;
        while let Verdict::Allow { tat: next, .. } = g.check(tat, now) {
            tat = next;
            passed += 1;
        }
        (passed, tat)
    }

    #[test]
    fn a_fresh_key_gets_its_burst_then_one_request_per_interval() {
        let g = per_minute(100, 100);
        let start = 1000 * SEC;
        let (passed, tat) = drain(&g, 0, start);
        assert_eq!(passed, 100);
        // The next request is due one interval (0.6 s) later.
        match g.check(tat, start) {
            Verdict::Deny { retry_after_ns, reset_ns } => {
                assert_eq!(retry_after_ns, 600_000_000);
                assert_eq!(reset_ns, 60 * SEC);
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(drain(&g, tat, start + 600_000_000).0, 1);
        // After a whole period the key has its burst again, and owes nothing.
        assert!(Gcra::is_free(tat, start + 60 * SEC));
        assert_eq!(drain(&g, tat, start + 60 * SEC).0, 100);
    }

    #[test]
    fn remaining_and_reset_count_down_with_each_request() {
        let g = per_minute(10, 3);
        let now = 5 * SEC;
        let first = g.check(0, now);
        assert_eq!(first, Verdict::Allow { tat: now + 6 * SEC, remaining: 2, reset_ns: 6 * SEC });
        let Verdict::Allow { tat, .. } = first else { unreachable!() };
        let second = g.check(tat, now);
        assert_eq!(
            second,
            Verdict::Allow { tat: now + 12 * SEC, remaining: 1, reset_ns: 12 * SEC }
        );
    }

    #[test]
    fn a_steady_client_at_the_rate_is_never_denied_and_one_above_it_is_held_to_it() {
        let g = per_minute(60, 1);
        let (mut tat, mut allowed) = (0, 0);
        // One request a second for ten minutes: exactly the rate.
        for s in 0..600 {
            match g.check(tat, (s + 1) * SEC) {
                Verdict::Allow { tat: t, .. } => (tat, allowed) = (t, allowed + 1),
                v => panic!("second {s}: {v:?}"),
            }
        }
        assert_eq!(allowed, 600);
        // Ten a second for a minute: 60 pass, whatever the order.
        let (mut tat, mut allowed) = (0, 0);
        for tenth in 0..600u64 {
            if let Verdict::Allow { tat: t, .. } = g.check(tat, 1 + tenth * SEC / 10) {
                (tat, allowed) = (t, allowed + 1);
            }
        }
        assert_eq!(allowed, 60);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(SEC), 1);
        assert_eq!(ceil_secs(SEC + 1), 2);
        assert_eq!(ceil_secs(0), 0);
    }

    #[test]
    fn degenerate_quotas_are_made_valid() {
        let g = Gcra::new(Quota { count: 0, period_ns: 0, burst: 0 });
        assert!(matches!(g.check(0, 10), Verdict::Allow { .. }));
        // Huge rates do not overflow.
        let g = Gcra::new(Quota { count: u32::MAX, period_ns: 1, burst: u32::MAX });
        assert!(matches!(g.check(u64::MAX - 1, u64::MAX - 2), Verdict::Allow { .. }));
    }
}
