//! A circuit breaker for a group of servers: after enough failures it refuses calls at once for a
//! while instead of letting every request wait on something broken, then lets a few probes
//! through and closes again when they succeed.
//!
//! Closed → open when, over a sliding window (see [`crate::window`]), failures reach
//! `failure_rate` of at least `min_requests` calls, or `consecutive_failures` fail in a row; a
//! call at least `slow_call_ms` long counts as a failure. Open for `open_ms`, doubled on each trip
//! that follows a failed probe, up to `max_open_ms`. Then half-open: `half_open_probes` calls pass
//! as probes and others are refused; one failed probe opens it again, all succeeding close it.
//! An operator may force it open or closed, and give it back to the automatic rules.
//!
//! Written by hand (it is small). Admission reads one atomic while the breaker is closed; the
//! outcome of each call takes a mutex for a few arithmetic operations.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::window::Window;

/// The knobs of a breaker; a zero turns its rule off.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Failures over calls in the window that trip it (0 < rate ≤ 1; 0 = rule off).
    pub failure_rate: f64,
    /// Calls in the window before `failure_rate` is judged.
    pub min_requests: u32,
    /// The window's length.
    pub window_ms: u64,
    /// Failures in a row that trip it (0 = rule off).
    pub consecutive_failures: u32,
    /// Calls at least this long count as failures (0 = rule off).
    pub slow_call_ms: u64,
    /// How long the first trip keeps it open.
    pub open_ms: u64,
    /// The longest it stays open, however often it trips again.
    pub max_open_ms: u64,
    /// Calls let through while half-open (at least 1).
    pub half_open_probes: u32,
}

/// The breaker's state, as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Calls pass.
    Closed,
    /// Calls are refused until it half-opens.
    Open,
    /// A few probes pass; others are refused.
    HalfOpen,
}

impl Mode {
    /// "closed", "open" or "half_open".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::HalfOpen => "half_open",
        }
    }
}

/// What an operator set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forced {
    /// The rules decide.
    #[default]
    Auto,
    /// Always open.
    Open,
    /// Always closed (outcomes are still counted, nothing trips).
    Closed,
}

impl Forced {
    /// "auto", "open" or "closed".
    pub fn as_str(self) -> &'static str {
        match self {
            Forced::Auto => "auto",
            Forced::Open => "open",
            Forced::Closed => "closed",
        }
    }
}

/// May a call go ahead?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Pass,
    /// Yes, as a probe of a half-open breaker: its outcome must be recorded with `probe = true`
    /// (or given back with [`Breaker::abandon_probe`]).
    Probe,
    /// No; worth trying again after this long.
    Refuse {
        /// Milliseconds until the breaker half-opens (or a probe slot may be free).
        retry_after_ms: u64,
    },
}

/// A change of state worth logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Tripped (from closed, or by a failed probe).
    Opened {
        /// How long it stays open.
        for_ms: u64,
    },
    /// Open time over: probing.
    HalfOpened,
    /// Every probe succeeded.
    Closed,
}

/// What [`Breaker::view`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The state calls meet now (a forced state included).
    pub mode: Mode,
    /// What an operator set.
    pub forced: Forced,
    /// Calls and failures in the window.
    pub calls: u64,
    /// Failures (slow calls included) in the window.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Trips since it last closed normally.
    pub trips: u32,
    /// Milliseconds until it half-opens (when open).
    pub open_for_ms: u64,
}

const CALLS: usize = 0;
const FAILURES: usize = 1;
/// The wait suggested to calls refused while probes are out.
const PROBING_RETRY_MS: u64 = 1000;

#[derive(Debug)]
struct Inner {
    forced: Forced,
    mode: Mode,
    window: Window<2>,
    consecutive: u32,
    trips: u32,
    open_until: u64,
    probes_out: u32,
    probes_ok: u32,
}

/// One breaker, shared by every worker.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    /// False only while calls simply pass (closed and not forced open): the common case costs
    /// one load.
    guarding: AtomicBool,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let inner = Inner {
            forced: Forced::Auto,
            mode: Mode::Closed,
            window: Window::new(policy.window_ms),
            consecutive: 0,
            trips: 0,
            open_until: 0,
            probes_out: 0,
            probes_ok: 0,
        };
        Breaker { policy, guarding: AtomicBool::new(false), inner: Mutex::new(inner) }
    }

    /// The policy it follows.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// A breaker with a new policy and this one's state: a reload that keeps the upstream's name
    /// keeps its breaker's history (the window's counts too, unless its length changed).
    pub fn carried_over(&self, policy: BreakerPolicy) -> Breaker {
        let inner = self.lock();
        let mut carried = Inner { window: inner.window.clone(), ..*inner };
        if carried.mode == Mode::HalfOpen {
            // Probes in flight report to the old breaker: this one probes afresh.
            carried.mode = Mode::Open;
            carried.probes_out = 0;
            carried.probes_ok = 0;
        }
        let window = Window::new(policy.window_ms);
        if window.window_ms() != carried.window.window_ms() {
            carried.window = window;
        }
        let guarding = AtomicBool::new(self.guarding.load(Relaxed));
        Breaker { policy, guarding, inner: Mutex::new(carried) }
    }

    /// Whether a call may go ahead at `now_ms`; may half-open the breaker.
    pub fn admit(&self, now_ms: u64) -> (Admission, Option<Transition>) {
        if !self.guarding.load(Relaxed) {
            return (Admission::Pass, None);
        }
        let mut inner = self.lock();
        match inner.forced {
            Forced::Open => {
                return (Admission::Refuse { retry_after_ms: self.policy.open_ms.max(1000) }, None)
            }
            Forced::Closed => return (Admission::Pass, None),
            Forced::Auto => {}
        }
        let mut transition = None;
        match inner.mode {
            Mode::Closed => return (Admission::Pass, None),
            Mode::Open if now_ms < inner.open_until => {
                return (Admission::Refuse { retry_after_ms: inner.open_until - now_ms }, None)
            }
            Mode::Open => {
                inner.mode = Mode::HalfOpen;
                inner.probes_out = 0;
                inner.probes_ok = 0;
                transition = Some(Transition::HalfOpened);
            }
            Mode::HalfOpen => {}
        }
        if inner.probes_out < self.policy.half_open_probes.max(1) {
            inner.probes_out += 1;
            (Admission::Probe, transition)
        } else {
            (Admission::Refuse { retry_after_ms: PROBING_RETRY_MS }, transition)
        }
    }

    /// Records a call's outcome at `now_ms`: whether it failed and how long it took. `probe` says
    /// whether [`Breaker::admit`] let it through as a probe.
    pub fn record(
        &self,
        now_ms: u64,
        failed: bool,
        took_ms: u64,
        probe: bool,
    ) -> Option<Transition> {
        let failed =
            failed || (self.policy.slow_call_ms > 0 && took_ms >= self.policy.slow_call_ms);
        let mut inner = self.lock();
        if probe {
            if inner.mode != Mode::HalfOpen || inner.forced != Forced::Auto {
                return None;
            }
            if failed {
                return Some(self.trip(&mut inner, now_ms));
            }
            inner.probes_ok += 1;
            if inner.probes_ok < self.policy.half_open_probes.max(1) {
                return None;
            }
            self.close(&mut inner);
            return Some(Transition::Closed);
        }
        if inner.mode != Mode::Closed {
            // A call let through before the trip: the breaker already knows.
            return None;
        }
        inner.window.add(now_ms, CALLS, 1);
        if !failed {
            inner.consecutive = 0;
            return None;
        }
        inner.window.add(now_ms, FAILURES, 1);
        inner.consecutive = inner.consecutive.saturating_add(1);
        if inner.forced != Forced::Auto || !self.should_trip(&inner, now_ms) {
            return None;
        }
        Some(self.trip(&mut inner, now_ms))
    }

    /// Gives back a probe slot whose call ended without an outcome (the client left first).
    pub fn abandon_probe(&self) {
        let mut inner = self.lock();
        if inner.mode == Mode::HalfOpen {
            inner.probes_out = inner.probes_out.saturating_sub(1);
        }
    }

    /// Sets what an operator wants. Given back to the rules after being forced open (or while it
    /// was not closed), the breaker half-opens: probes decide whether the upstream is back.
    pub fn force(&self, forced: Forced, now_ms: u64) {
        let mut inner = self.lock();
        // Back to the rules from a forced state: unless it was simply closed, it probes first
        // (probes let through before were not counted while it was forced).
        let leaving = forced == Forced::Auto && inner.forced != Forced::Auto;
        if leaving && (inner.forced == Forced::Open || inner.mode != Mode::Closed) {
            inner.mode = Mode::Open;
            inner.open_until = now_ms;
            inner.probes_out = 0;
            inner.probes_ok = 0;
        }
        inner.forced = forced;
        self.update_guarding(&inner);
    }

    /// The state now.
    pub fn view(&self, now_ms: u64) -> View {
        let inner = self.lock();
        let [calls, failures] = inner.window.sums(now_ms);
        let mode = match inner.forced {
            Forced::Open => Mode::Open,
            Forced::Closed => Mode::Closed,
            Forced::Auto => inner.mode,
        };
        View {
            mode,
            forced: inner.forced,
            calls,
            failures,
            consecutive_failures: inner.consecutive,
            trips: inner.trips,
            open_for_ms: if inner.mode == Mode::Open {
                inner.open_until.saturating_sub(now_ms)
            } else {
                0
            },
        }
    }

    fn should_trip(&self, inner: &Inner, now_ms: u64) -> bool {
        let p = &self.policy;
        if p.consecutive_failures > 0 && inner.consecutive >= p.consecutive_failures {
            return true;
        }
        if p.failure_rate <= 0.0 {
            return false;
        }
        let [calls, failures] = inner.window.sums(now_ms);
        calls >= u64::from(p.min_requests.max(1))
            && failures as f64 >= p.failure_rate * calls as f64
    }

    fn trip(&self, inner: &mut Inner, now_ms: u64) -> Transition {
        inner.trips = inner.trips.saturating_add(1);
        let doublings = (inner.trips - 1).min(32);
        let for_ms = self
            .policy
            .open_ms
            .saturating_mul(1u64 << doublings)
            .min(self.policy.max_open_ms.max(self.policy.open_ms));
        inner.mode = Mode::Open;
        inner.open_until = now_ms.saturating_add(for_ms);
        inner.consecutive = 0;
        self.update_guarding(inner);
        Transition::Opened { for_ms }
    }

    fn close(&self, inner: &mut Inner) {
        inner.mode = Mode::Closed;
        inner.window.clear();
        inner.consecutive = 0;
        inner.trips = 0;
        self.update_guarding(inner);
    }

    fn update_guarding(&self, inner: &Inner) {
        let passes = inner.forced == Forced::Closed
            || (inner.forced == Forced::Auto && inner.mode == Mode::Closed);
        self.guarding.store(!passes, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            min_requests: 10,
            window_ms: 10_000,
            consecutive_failures: 0,
            slow_call_ms: 0,
            open_ms: 30_000,
            max_open_ms: 100_000,
            half_open_probes: 2,
        }
    }

    fn call(b: &Breaker, now: u64, failed: bool) -> Option<Transition> {
        let (admission, _) = b.admit(now);
        assert_eq!(admission, Admission::Pass, "at {now}");
        b.record(now, failed, 1, false)
    }

    #[test]
    fn trips_on_the_failure_rate_only_after_enough_calls() {
        let b = Breaker::new(policy());
        // Nine failures are not enough calls to judge.
        for i in 0..9 {
            assert_eq!(call(&b, 1000 + i, true), None);
        }
        // The tenth call is a success: 9 of 10 failed, but only a failure can trip it...
        assert_eq!(call(&b, 1010, false), None);
        // ...and the next failure does.
        assert_eq!(call(&b, 1011, true), Some(Transition::Opened { for_ms: 30_000 }));
        assert_eq!(b.admit(1012).0, Admission::Refuse { retry_after_ms: 29_999 });
        assert_eq!(b.view(1012).mode, Mode::Open);
    }

    #[test]
    fn a_low_failure_rate_or_old_failures_do_not_trip_it() {
        let b = Breaker::new(policy());
        for i in 0..100 {
            assert_eq!(call(&b, 1000 + i * 10, i % 3 == 0), None, "call {i}");
        }
        // Eight failures, then four more after the first ones left the window.
        let b = Breaker::new(policy());
        for i in 0..8 {
            call(&b, 1000 + i, true);
        }
        for i in 0..4 {
            assert_eq!(call(&b, 20_000 + i, true), None, "the old failures left the window");
        }
    }

    #[test]
    fn consecutive_failures_and_slow_calls_trip_it() {
        let b = Breaker::new(BreakerPolicy {
            failure_rate: 0.0,
            consecutive_failures: 3,
            slow_call_ms: 500,
            ..policy()
        });
        call(&b, 1, true);
        call(&b, 2, false);
        call(&b, 3, true);
        call(&b, 4, true);
        b.admit(5);
        // A success that took 600 ms counts as the third failure in a row.
        assert_eq!(b.record(5, false, 600, false), Some(Transition::Opened { for_ms: 30_000 }));
    }

    #[test]
    fn half_open_lets_probes_through_and_closes_when_all_succeed() {
        let b = Breaker::new(BreakerPolicy { consecutive_failures: 1, ..policy() });
        call(&b, 0, true);
        assert_eq!(b.admit(30_000), (Admission::Probe, Some(Transition::HalfOpened)));
        assert_eq!(b.admit(30_001), (Admission::Probe, None));
        assert_eq!(b.admit(30_002).0, Admission::Refuse { retry_after_ms: 1000 });
        assert_eq!(b.record(30_010, false, 1, true), None);
        assert_eq!(b.record(30_011, false, 1, true), Some(Transition::Closed));
        assert_eq!(b.admit(30_012), (Admission::Pass, None));
        assert_eq!(b.view(30_012).trips, 0);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_longer_up_to_the_cap() {
        let b = Breaker::new(BreakerPolicy { consecutive_failures: 1, ..policy() });
        assert_eq!(call(&b, 0, true), Some(Transition::Opened { for_ms: 30_000 }));
        let mut now = 30_000;
        for expected in [60_000, 100_000, 100_000] {
            assert_eq!(b.admit(now).0, Admission::Probe);
            assert_eq!(b.record(now, true, 1, true), Some(Transition::Opened { for_ms: expected }));
            assert_eq!(b.admit(now + expected - 1).0, Admission::Refuse { retry_after_ms: 1 });
            now += expected;
        }
        // A probe that never reports gives its slot back.
        assert_eq!(b.admit(now).0, Admission::Probe);
        assert_eq!(b.admit(now).0, Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.admit(now).0, Admission::Probe);
    }

    #[test]
    fn calls_in_flight_when_it_trips_do_not_count_twice() {
        let b = Breaker::new(BreakerPolicy { consecutive_failures: 2, ..policy() });
        call(&b, 0, true);
        call(&b, 1, true);
        assert_eq!(b.record(2, true, 1, false), None);
        assert_eq!(b.view(2).trips, 1);
    }

    #[test]
    fn an_operator_can_force_it_either_way_and_give_it_back() {
        let b = Breaker::new(BreakerPolicy { consecutive_failures: 1, ..policy() });
        b.force(Forced::Open, 0);
        assert_eq!(b.admit(1).0, Admission::Refuse { retry_after_ms: 30_000 });
        assert_eq!(b.view(1).mode, Mode::Open);
        // Back to auto: it probes before trusting the upstream again.
        b.force(Forced::Auto, 2);
        assert_eq!(b.admit(3).0, Admission::Probe);
        assert_eq!(b.record(3, false, 1, true), None);
        assert_eq!(b.admit(3).0, Admission::Probe);
        assert_eq!(b.record(3, false, 1, true), Some(Transition::Closed));
        // Forced closed: failures are counted but nothing trips.
        b.force(Forced::Closed, 4);
        for i in 0..5 {
            assert_eq!(call(&b, 5 + i, true), None);
        }
        assert_eq!(b.view(10).failures, 5);
        b.force(Forced::Auto, 11);
        assert_eq!(call(&b, 12, true), Some(Transition::Opened { for_ms: 30_000 }));
    }

    #[test]
    fn leaving_a_forced_state_or_reloading_while_half_open_never_strands_its_probes() {
        let b = Breaker::new(BreakerPolicy {
            consecutive_failures: 1,
            half_open_probes: 1,
            ..policy()
        });
        call(&b, 0, true);
        assert_eq!(b.admit(30_000).0, Admission::Probe);
        // Forced closed while the probe is out; the probe's report is ignored.
        b.force(Forced::Closed, 30_001);
        assert_eq!(b.record(30_002, false, 1, true), None);
        b.force(Forced::Auto, 30_003);
        assert_eq!(b.admit(30_004).0, Admission::Probe, "a fresh probe, not a refusal forever");
        // A reload while that probe is out: the new breaker probes afresh too.
        let reloaded = b.carried_over(b.policy().clone());
        assert_eq!(reloaded.admit(30_005).0, Admission::Probe);
        assert_eq!(reloaded.record(30_006, false, 1, true), Some(Transition::Closed));
    }

    #[test]
    fn a_reload_keeps_its_state() {
        let b = Breaker::new(BreakerPolicy { consecutive_failures: 1, ..policy() });
        call(&b, 0, true);
        let reloaded = b.carried_over(BreakerPolicy { open_ms: 5_000, ..b.policy().clone() });
        assert_eq!(reloaded.admit(10).0, Admission::Refuse { retry_after_ms: 29_990 });
        assert_eq!(reloaded.view(10).trips, 1);
    }
}
