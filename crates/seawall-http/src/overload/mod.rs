//! Overload control on the request path: the level the controller ([`crate::controller`]) last decided,
//! read with one atomic load per request, and what it sheds.
//!
//! | level | sheds | when |
//! |---|---|---|
//! | 0 | nothing | calm |
//! | 1 | P2 | CPU past `p2_at`, memory past `memory_soft` |
//! | 2 | P1 and P2 | CPU past `p1_at`, memory past `memory_hard` |
//! | 3 | P1, P2, and P0 beyond the rate the gateway served before level 3 | CPU past `p0_at` |
//!
//! Each upstream has a wait level of its own ([`sheds`]): its P1 requests waiting for a slot
//! shed its P2, its P0 requests waiting shed its P1 — a slow upstream sheds its own traffic, not
//! the traffic of upstreams that keep up.
//!
//! A shed request gets 503 `overloaded` with a jittered `Retry-After` (so refused clients do not
//! come back in step), or its route's degraded answer. Crisis mode ([`Crisis`]) is on from level 1
//! or at any upstream's wait level 1 (or by hand): routes with `disable_in_crisis` answer their
//! degraded answer.

pub mod signals;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

pub use seawall_core::overload::ShedCause;
use seawall_core::priority::Priority;
use seawall_core::rng::FastRng;

use crate::metrics::Counter;
use crate::problem::{Reason, Refusal};

/// Crisis mode as an operator set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crisis {
    /// On from overload level 1.
    Auto,
    On,
    Off,
}

impl Crisis {
    pub fn as_str(self) -> &'static str {
        match self {
            Crisis::Auto => "auto",
            Crisis::On => "on",
            Crisis::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Crisis> {
        [Crisis::Auto, Crisis::On, Crisis::Off].into_iter().find(|c| c.as_str() == s)
    }
}

/// The last sampled signals, for `/metrics` and `/api/v1/state` (f64 bits).
#[derive(Debug, Default)]
pub struct Readings {
    pub cpu_process: AtomicU64,
    pub cpu_host: AtomicU64,
    pub memory: AtomicU64,
    pub resident_bytes: AtomicU64,
    /// Samples the controller took (it is alive when this moves).
    pub samples: AtomicU64,
}

impl Readings {
    pub fn get(cell: &AtomicU64) -> f64 {
        f64::from_bits(cell.load(Relaxed))
    }

    pub fn set(cell: &AtomicU64, value: f64) {
        cell.store(value.to_bits(), Relaxed);
    }
}

/// The overload state every request reads; kept from snapshot to snapshot.
#[derive(Debug)]
pub struct Overload {
    level: AtomicU8,
    cause: AtomicU8,
    /// The highest wait level of any upstream (see [`sheds`]).
    upstream_level: AtomicU8,
    crisis: AtomicU8,
    /// Level 3: P0 requests pass at most one per `p0_interval_ns` (with a burst of
    /// `p0_tolerance_ns`); `p0_tat` is the GCRA state.
    p0_tat: AtomicU64,
    p0_interval_ns: AtomicU64,
    p0_tolerance_ns: AtomicU64,
    /// Requests admitted past overload control, for the serving rate.
    pub admitted: Counter,
    pub readings: Readings,
}

impl Overload {
    pub fn new(shards: usize) -> Overload {
        Overload {
            level: AtomicU8::new(0),
            cause: AtomicU8::new(0),
            upstream_level: AtomicU8::new(0),
            crisis: AtomicU8::new(0),
            p0_tat: AtomicU64::new(0),
            p0_interval_ns: AtomicU64::new(0),
            p0_tolerance_ns: AtomicU64::new(0),
            admitted: Counter::new(shards),
            readings: Readings::default(),
        }
    }

    /// The level now (0–3).
    #[inline]
    pub fn level(&self) -> u8 {
        self.level.load(Relaxed)
    }

    /// What holds the level.
    pub fn cause(&self) -> ShedCause {
        ShedCause::ALL[usize::from(self.cause.load(Relaxed)).min(ShedCause::ALL.len() - 1)]
    }

    /// Sets the level (by the controller); entering level 3 limits P0 to `serving_per_second`.
    pub fn set_level(&self, level: u8, cause: ShedCause, serving_per_second: f64) {
        let was = self.level.swap(level, Relaxed);
        self.cause.store(cause as u8, Relaxed);
        if level == 3 && was < 3 {
            let rate = serving_per_second.max(1.0);
            let interval = (1e9 / rate) as u64;
            self.p0_interval_ns.store(interval, Relaxed);
            // A tenth of a second's worth may come at once.
            self.p0_tolerance_ns.store((rate / 10.0).floor() as u64 * interval, Relaxed);
            self.p0_tat.store(0, Relaxed);
        }
    }

    /// Sets the highest wait level of any upstream (by the controller).
    pub fn set_upstream_level(&self, level: u8) {
        self.upstream_level.store(level, Relaxed);
    }

    /// The highest wait level of any upstream.
    pub fn upstream_level(&self) -> u8 {
        self.upstream_level.load(Relaxed)
    }

    /// Why a request of `priority` is shed now, if it is.
    #[inline]
    pub fn shed(&self, priority: Priority) -> Option<ShedCause> {
        let level = self.level();
        if level == 0 {
            return None;
        }
        let shed = match priority {
            Priority::P2 => true,
            Priority::P1 => level >= 2,
            Priority::P0 => level >= 3 && !self.p0_passes(),
        };
        shed.then(|| self.cause())
    }

    /// GCRA at the serving rate, shared by all workers.
    fn p0_passes(&self) -> bool {
        let now = seawall_core::clock::ns_at(std::time::Instant::now());
        let interval = self.p0_interval_ns.load(Relaxed);
        let tolerance = self.p0_tolerance_ns.load(Relaxed);
        let mut tat = self.p0_tat.load(Relaxed);
        loop {
            let due = tat.max(now);
            if due - now > tolerance {
                return false;
            }
            match self.p0_tat.compare_exchange_weak(tat, due + interval, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Crisis mode as set.
    pub fn crisis_mode(&self) -> Crisis {
        [Crisis::Auto, Crisis::On, Crisis::Off][usize::from(self.crisis.load(Relaxed)).min(2)]
    }

    /// Sets crisis mode; returns what it was.
    pub fn set_crisis(&self, mode: Crisis) -> Crisis {
        let was = self.crisis_mode();
        self.crisis.store(mode as u8, Relaxed);
        was
    }

    /// Whether the gateway is in crisis mode now.
    #[inline]
    pub fn in_crisis(&self) -> bool {
        match self.crisis_mode() {
            Crisis::Auto => self.level() >= 1 || self.upstream_level() >= 1,
            Crisis::On => true,
            Crisis::Off => false,
        }
    }
}

/// Whether an upstream's wait level sheds `priority`: level 1 sheds P2, level 2 P1 too (P0 is
/// never shed for waiting: its own line is bounded by `max_wait` at the gate).
#[inline]
pub fn sheds(level: u8, priority: Priority) -> bool {
    match priority {
        Priority::P2 => level >= 1,
        Priority::P1 => level >= 2,
        Priority::P0 => false,
    }
}

/// The refusal of a request shed for `cause`.
pub fn refusal(cause: ShedCause, priority: Priority, retry_after: Duration) -> Refusal {
    let detail = match cause {
        ShedCause::Queue => {
            return with_jitter(
                Refusal::new(Reason::Overloaded, queue_detail(priority)),
                retry_after,
            )
        }
        ShedCause::Cpu => "the gateway's CPU is overloaded",
        ShedCause::Memory => "the gateway is short of memory",
        ShedCause::Wait => "requests are waiting too long for their upstream",
    };
    let detail = format!("{detail}: {priority} requests are shed for now");
    with_jitter(Refusal::new(Reason::Overloaded, detail), retry_after)
}

fn queue_detail(priority: Priority) -> String {
    format!("the upstream cannot serve more {priority} requests within overload.max_wait")
}

/// Gives an `overloaded` refusal a `Retry-After` drawn from half to one and a half `retry_after`
/// (at least 1 s), so refused clients do not come back in step.
pub fn with_jitter(mut refusal: Refusal, retry_after: Duration) -> Refusal {
    thread_local! {
        static RNG: RefCell<FastRng> = RefCell::new(FastRng::new(seed()));
    }
    let base = retry_after.as_millis().max(1) as u64;
    let drawn = RNG.with(|r| r.borrow_mut().next_u64()) % base.max(1);
    let seconds = (base / 2 + drawn).div_ceil(1000).max(1);
    refusal.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
    refusal
}

fn seed() -> u64 {
    let addr = &seed as *const _ as u64;
    seawall_core::clock::ns_at(std::time::Instant::now()) ^ addr.rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_shed_classes_in_order_and_level_3_limits_p0_to_the_serving_rate() {
        let o = Overload::new(1);
        assert_eq!(o.shed(Priority::P2), None);
        o.set_level(1, ShedCause::Cpu, 0.0);
        assert_eq!(o.shed(Priority::P2), Some(ShedCause::Cpu));
        assert_eq!(o.shed(Priority::P1), None);
        o.set_level(2, ShedCause::Memory, 0.0);
        assert_eq!(o.shed(Priority::P1), Some(ShedCause::Memory));
        assert_eq!(o.shed(Priority::P0), None);
        // 100 per second: ten at once (a tenth of a second's worth), then refused.
        o.set_level(3, ShedCause::Cpu, 100.0);
        let passed = (0..50).filter(|_| o.shed(Priority::P0).is_none()).count();
        assert!((10..=12).contains(&passed), "{passed} passed");
    }

    #[test]
    fn crisis_follows_the_level_unless_set_by_hand() {
        let o = Overload::new(1);
        assert!(!o.in_crisis());
        o.set_level(1, ShedCause::Wait, 0.0);
        assert!(o.in_crisis());
        assert_eq!(o.set_crisis(Crisis::Off), Crisis::Auto);
        assert!(!o.in_crisis());
        o.set_level(0, ShedCause::Wait, 0.0);
        o.set_crisis(Crisis::On);
        assert!(o.in_crisis());
        assert_eq!(Crisis::parse("auto"), Some(Crisis::Auto));
        assert_eq!(Crisis::parse("maybe"), None);
    }

    #[test]
    fn retry_after_is_jittered_around_the_setting() {
        let seen: std::collections::BTreeSet<u32> = (0..200)
            .map(|_| {
                let r = refusal(ShedCause::Cpu, Priority::P2, Duration::from_secs(10));
                r.retry_after.unwrap()
            })
            .collect();
        assert!(seen.iter().all(|s| (5..=15).contains(s)), "{seen:?}");
        assert!(seen.len() >= 5, "{seen:?}");
        let short = refusal(ShedCause::Queue, Priority::P1, Duration::from_millis(100));
        assert_eq!(short.retry_after, Some(1));
        assert_eq!(short.reason, Reason::Overloaded);
    }
}
