//! Passive outlier ejection: a server that fails `consecutive_failures` requests in a row (connect
//! failures or 5xx answers) is taken out of rotation for a while, longer each time it happens again,
//! and never so many at once that the upstream loses more than `max_ejected_percent` of its servers.
//!
//! The state is three atomics so every worker thread can record outcomes without a lock; a success
//! only writes when there is something to reset, so the common path reads a shared line and leaves it.
//! Only the decision to eject, which must count the upstream's other ejected servers and then act,
//! takes the upstream's [`EjectionGate`]: two workers ejecting two servers at the same moment would
//! otherwise both see room under the cap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// The knobs of passive ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Failures in a row that eject a server (0 turns passive ejection off).
    pub consecutive_failures: u32,
    /// How long the first ejection lasts, in ms; the n-th lasts n times as long.
    pub base_ms: u64,
    /// The longest an ejection may last, in ms.
    pub max_ms: u64,
    /// The most servers of one upstream that may be ejected at once, in percent (at least one
    /// server may always be ejected when the upstream has two or more).
    pub max_ejected_percent: u32,
}

impl EjectionPolicy {
    /// How long the `times`-th ejection (1-based) lasts.
    pub fn ejection_ms(&self, times: u32) -> u64 {
        self.base_ms.saturating_mul(u64::from(times.max(1))).min(self.max_ms)
    }

    /// Whether one more server may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        if total < 2 {
            return false;
        }
        let cap = (total * self.max_ejected_percent as usize / 100).max(1);
        ejected < cap
    }
}

/// Shared by the servers of one upstream: ejection decisions are taken one at a time.
#[derive(Debug, Default)]
pub struct EjectionGate {
    deciding: Mutex<()>,
}

/// Per-server outlier state.
#[derive(Debug, Default)]
pub struct Outlier {
    failures: AtomicU32,
    /// Deadline (clock ms) until which the server is out; 0 = not ejected.
    ejected_until: AtomicU64,
    /// How many times the server has been ejected recently; drives the growing ejection time.
    ejections: AtomicU32,
}

/// The outcome of recording a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; the server stays in rotation.
    Counted,
    /// The server was ejected until the given clock ms.
    Ejected {
        /// When it comes back.
        until_ms: u64,
    },
    /// The threshold was reached but the cap on ejected servers kept it in.
    CapReached,
}

impl Outlier {
    /// Whether the server is ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && now_ms < until
    }

    /// Consecutive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// How many times the server has been ejected since it last stayed healthy for long.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// Records a good answer. After a server has been back for `policy.max_ms` without being
    /// ejected again, its ejection count is forgiven.
    pub fn record_success(&self, now_ms: u64, policy: &EjectionPolicy) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        let until = self.ejected_until.load(Relaxed);
        if until != 0 && now_ms >= until.saturating_add(policy.max_ms) {
            self.ejected_until.store(0, Relaxed);
            self.ejections.store(0, Relaxed);
        }
    }

    /// Records a failure; `ejected_now` counts the upstream's servers that are ejected at this
    /// moment (called only when the threshold is reached, under `gate`) and `total` its size.
    pub fn record_failure(
        &self,
        now_ms: u64,
        policy: &EjectionPolicy,
        gate: &EjectionGate,
        ejected_now: impl FnOnce() -> usize,
        total: usize,
    ) -> FailureOutcome {
        if policy.consecutive_failures == 0 {
            return FailureOutcome::Counted;
        }
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures < policy.consecutive_failures || self.is_ejected(now_ms) {
            return FailureOutcome::Counted;
        }
        let _deciding = gate.deciding.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_ejected(now_ms) {
            // Another worker ejected this server while we waited.
            return FailureOutcome::Counted;
        }
        if !policy.may_eject(ejected_now(), total) {
            return FailureOutcome::CapReached;
        }
        let times = self.ejections.fetch_add(1, Relaxed) + 1;
        let until_ms = now_ms + policy.ejection_ms(times);
        self.ejected_until.store(until_ms, Relaxed);
        self.failures.store(0, Relaxed);
        FailureOutcome::Ejected { until_ms }
    }

    /// Takes the server back into rotation at `now_ms` (its active health checks show it
    /// recovered); returns whether it was ejected. Its count of ejections stays, so a relapse soon
    /// is ejected for longer, and is forgiven as after any ejection that ran its course.
    pub fn uneject(&self, now_ms: u64) -> bool {
        if !self.is_ejected(now_ms) {
            return false;
        }
        self.failures.store(0, Relaxed);
        // The ejection ends now: the forgiveness clock of `record_success` runs from here.
        self.ejected_until.store(now_ms.max(1), Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> EjectionGate {
        EjectionGate::default()
    }

    fn policy() -> EjectionPolicy {
        EjectionPolicy {
            consecutive_failures: 3,
            base_ms: 1000,
            max_ms: 5000,
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_with_growing_time() {
        let p = policy();
        let o = Outlier::default();
        assert_eq!(o.record_failure(10, &p, &gate(), || 0, 4), FailureOutcome::Counted);
        o.record_success(11, &p);
        assert_eq!(o.record_failure(12, &p, &gate(), || 0, 4), FailureOutcome::Counted);
        assert_eq!(o.record_failure(13, &p, &gate(), || 0, 4), FailureOutcome::Counted);
        assert_eq!(
            o.record_failure(14, &p, &gate(), || 0, 4),
            FailureOutcome::Ejected { until_ms: 1014 }
        );
        assert!(o.is_ejected(500));
        assert!(!o.is_ejected(1014));
        for t in 1015..1017 {
            assert_eq!(o.record_failure(t, &p, &gate(), || 0, 4), FailureOutcome::Counted);
        }
        // Second ejection lasts twice as long.
        assert_eq!(
            o.record_failure(1017, &p, &gate(), || 0, 4),
            FailureOutcome::Ejected { until_ms: 3017 }
        );
    }

    #[test]
    fn cap_keeps_servers_in() {
        let p = policy();
        let o = Outlier::default();
        for t in 0..2 {
            o.record_failure(t, &p, &gate(), || 1, 2);
        }
        assert_eq!(o.record_failure(3, &p, &gate(), || 1, 2), FailureOutcome::CapReached);
        assert!(!o.is_ejected(4));
        // A lone server is never ejected: there is nowhere else to go.
        assert!(!p.may_eject(0, 1));
    }

    #[test]
    fn ejection_time_is_capped_and_forgiven() {
        let p = policy();
        assert_eq!(p.ejection_ms(9), 5000);
        let o = Outlier::default();
        for t in 0..3 {
            o.record_failure(t, &p, &gate(), || 0, 4);
        }
        assert_eq!(o.ejections(), 1);
        o.record_success(1002 + 5000, &p);
        assert_eq!(o.ejections(), 0);
    }

    #[test]
    fn concurrent_ejections_respect_the_cap() {
        // Two servers reach their threshold on two threads at once; with a cap of one, exactly one
        // may leave. Each thread, while it counts the ejected servers, waits (briefly) for the
        // other to be counting too: without the gate both would count zero and both would leave.
        use std::sync::atomic::AtomicUsize;
        use std::time::{Duration, Instant};
        let p = EjectionPolicy { consecutive_failures: 1, ..policy() };
        for _ in 0..3 {
            let gate = EjectionGate::default();
            let servers = [Outlier::default(), Outlier::default()];
            let counting = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for me in 0..2 {
                    let (servers, gate, counting, p) = (&servers, &gate, &counting, &p);
                    s.spawn(move || {
                        let count = || {
                            counting.fetch_add(1, Relaxed);
                            let deadline = Instant::now() + Duration::from_millis(50);
                            while counting.load(Relaxed) < 2 && Instant::now() < deadline {
                                std::hint::spin_loop();
                            }
                            servers.iter().filter(|o| o.is_ejected(1)).count()
                        };
                        servers[me].record_failure(1, p, gate, count, 2);
                    });
                }
            });
            assert_eq!(servers.iter().filter(|o| o.is_ejected(1)).count(), 1);
        }
    }

    #[test]
    fn uneject_brings_a_server_back_and_keeps_its_history() {
        let p = EjectionPolicy { consecutive_failures: 1, ..policy() };
        let o = Outlier::default();
        assert!(matches!(
            o.record_failure(1, &p, &gate(), || 0, 4),
            FailureOutcome::Ejected { .. }
        ));
        assert!(o.uneject(2));
        assert!(!o.is_ejected(2));
        assert!(!o.uneject(3), "nothing to undo twice");
        // The next ejection is the second one: twice as long.
        assert_eq!(
            o.record_failure(10, &p, &gate(), || 0, 4),
            FailureOutcome::Ejected { until_ms: 2010 }
        );
        // Back again, and well behaved for max_ms: the count is forgiven.
        assert!(o.uneject(11));
        o.record_success(11 + p.max_ms, &p);
        assert_eq!(o.ejections(), 0);
    }
}
