//! An upstream group's gate on the request path: the requests in flight to the group, from every
//! worker, stay under a limit — the adaptive one ([`seawall_core::adaptive`], learnt from the
//! group's latency by the overload controller), capped by the bulkhead's `max_concurrency` — and
//! the others wait in a line served by priority ([`seawall_core::bulkhead`]).
//!
//! - A request that finds a slot free (and nobody waiting) takes it with one atomic operation.
//! - A request that would wait behind more others (as important or more) than the group serves
//!   within `overload.max_wait` is refused at once with 503 `overloaded`: a quick refusal beats
//!   a long wait ending in one. A waiter overtaken by more important newcomers keeps its place.
//! - A full line (`max_queue`: the newest less important waiter is evicted to make room), a wait
//!   past `queue_timeout` (or the request's own deadline) refuses with 503 `bulkhead_full`.
//!
//! A slot is held until the answer's body is done, and passes straight to the next waiter.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use seawall_config::Bulkhead as Limits;
use seawall_core::adaptive::{AdaptiveLimit, Settings, Window};
use seawall_core::bulkhead::{Enqueued, WaitQueue};
use seawall_core::overload::LevelControl;
use seawall_core::priority::Priority;
use tokio::sync::oneshot;

use crate::metrics::{Counter, Minimum};
use crate::problem::{Reason, Refusal};

/// Requests refused, by why.
pub struct Rejections {
    pub full: Counter,
    pub timeout: Counter,
    pub evicted: Counter,
    /// Refused (or evicted) because they would have waited longer than `overload.max_wait`.
    pub shed: Counter,
}

/// What the gate measured, for the overload controller: slots given, waits given up (timed out)
/// and the time waited by both, per priority class; answers and their latency.
pub struct Measures {
    pub granted: [Counter; 3],
    pub gave_up: [Counter; 3],
    pub waited_us: [Counter; 3],
    pub answers: Counter,
    pub latency_us: Counter,
    pub min_latency_us: Minimum,
    /// A request found the limit reached since the controller last looked.
    pub limited: AtomicBool,
}

/// What the overload controller keeps of the gate between samples.
pub struct Learning {
    pub adaptive: Option<AdaptiveLimit>,
    /// The window the adaptive limit has not learnt from yet (too few answers so far).
    pub pending: Window,
    /// The totals of [`Measures`] at the last sample.
    pub seen: Totals,
    /// Slots given per second, smoothed over the windows that gave enough to tell.
    pub served_per_second: Option<f64>,
    /// Mean time P0 and P1 requests waited for a slot (s), smoothed.
    pub waits: [f64; 2],
    /// The gate's wait level.
    pub levels: LevelControl,
}

/// A reading of [`Measures`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub granted: [u64; 3],
    pub gave_up: [u64; 3],
    pub waited_us: [u64; 3],
    pub answers: u64,
    pub latency_us: u64,
}

/// A group's gate.
pub struct Gate {
    upstream: String,
    pub limits: Limits,
    /// How the limit adapts (`None`: it is `limits.max_concurrency`).
    pub adaptive: Option<Settings>,
    in_use: AtomicUsize,
    limit: AtomicUsize,
    /// Requests in the queue, or about to look at the slots a last time before joining it.
    waiting: AtomicUsize,
    /// The wait level (see [`crate::overload::sheds`]), set by the controller.
    level: AtomicU8,
    queue: Mutex<WaitQueue<oneshot::Sender<()>>>,
    pub rejections: Arc<Rejections>,
    pub measures: Measures,
    /// Touched by the overload controller only.
    pub learning: Mutex<Learning>,
}

impl Gate {
    /// The gate of upstream `upstream`; a reload that keeps its limits and settings keeps
    /// `previous`. With `adaptive` settings the limit adapts from `initial` (else it is
    /// `limits.max_concurrency`).
    pub fn new(
        upstream: &str,
        limits: Limits,
        adaptive: Option<Settings>,
        previous: Option<&Arc<Gate>>,
        shards: usize,
    ) -> Arc<Gate> {
        if let Some(p) = previous.filter(|p| p.limits == limits && p.adaptive == adaptive) {
            return Arc::clone(p);
        }
        let learner = adaptive.map(AdaptiveLimit::new);
        let rejections = previous.map_or_else(
            || {
                Arc::new(Rejections {
                    full: Counter::new(shards),
                    timeout: Counter::new(shards),
                    evicted: Counter::new(shards),
                    shed: Counter::new(shards),
                })
            },
            |p| Arc::clone(&p.rejections),
        );
        let counters = || [Counter::new(shards), Counter::new(shards), Counter::new(shards)];
        let limit = learner.as_ref().map_or(limits.max_concurrency, AdaptiveLimit::limit);
        Arc::new(Gate {
            upstream: upstream.to_string(),
            queue: Mutex::new(WaitQueue::new(limits.max_queue)),
            limits,
            adaptive,
            in_use: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit.max(1)),
            waiting: AtomicUsize::new(0),
            level: AtomicU8::new(0),
            rejections,
            measures: Measures {
                granted: counters(),
                gave_up: counters(),
                waited_us: counters(),
                answers: Counter::new(shards),
                latency_us: Counter::new(shards),
                min_latency_us: Minimum::new(shards),
                limited: AtomicBool::new(false),
            },
            learning: Mutex::new(Learning {
                adaptive: learner,
                pending: Window::default(),
                seen: Totals::default(),
                served_per_second: None,
                waits: [0.0; 2],
                // The controller gives it the configured dwell and hysteresis at each sample.
                levels: LevelControl::new(0, 0.0),
            }),
        })
    }

    /// Takes a slot if one is free within the limit.
    fn try_take(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        let mut n = self.in_use.load(SeqCst);
        while n < limit {
            match self.in_use.compare_exchange_weak(n, n + 1, SeqCst, Relaxed) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Takes a slot, waiting in the queue for up to `queue_timeout` (or until `deadline`, the
    /// request's own, when that comes first) when none is free.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Slot, Refusal> {
        let class = priority.index();
        if self.waiting.load(SeqCst) == 0 && self.try_take() {
            self.measures.granted[class].add(1);
            return Ok(Slot { gate: Arc::clone(self) });
        }
        self.measures.limited.store(true, Relaxed);
        let since = tokio::time::Instant::now();
        let mut waiting = {
            let mut queue = self.lock();
            // Announced before the last look at the slots: a slot freed meanwhile either shows
            // in that look or finds this request in the queue (see `Slot::drop`).
            self.waiting.fetch_add(1, SeqCst);
            if queue.queued() == 0 && self.try_take() {
                self.waiting.fetch_sub(1, SeqCst);
                self.measures.granted[class].add(1);
                return Ok(Slot { gate: Arc::clone(self) });
            }
            let (tx, rx) = oneshot::channel();
            let ahead = queue.max_ahead();
            match queue.enqueue(priority, tx) {
                Enqueued::Full(_) => {
                    self.waiting.fetch_sub(1, SeqCst);
                    if queue.queued() < self.limits.max_queue {
                        self.rejections.shed.add(1);
                        return Err(self.shed(ahead));
                    }
                    self.rejections.full.add(1);
                    return Err(self.refusal("its queue is full"));
                }
                Enqueued::Waiting { ticket, evicted } => {
                    // An evicted waiter's channel closes: it hears it was pushed out.
                    if evicted.is_some() {
                        self.waiting.fetch_sub(1, SeqCst);
                    }
                    drop(evicted);
                    Waiting { gate: Arc::clone(self), ticket, granted: rx, settled: false }
                }
            }
        };
        let until = tokio::time::Instant::now() + self.limits.queue_timeout;
        let until = deadline.map_or(until, |d| d.min(until));
        let granted = match tokio::time::timeout_at(until, &mut waiting.granted).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                if self.cancel(waiting.ticket) {
                    waiting.settled = true;
                    self.rejections.timeout.add(1);
                    let waited = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.measures.gave_up[class].add(1);
                    self.measures.waited_us[class].add(waited);
                    let waited = self.limits.queue_timeout;
                    return Err(self.refusal(&format!("no slot was free within {waited:?}")));
                }
                // Granted (or evicted) just as the wait ended.
                waiting.granted.try_recv().is_ok()
            }
        };
        waiting.settled = true;
        if !granted {
            self.rejections.evicted.add(1);
            let why = "more important requests took this one's place in its queue";
            return Err(self.refusal(why));
        }
        let waited = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.measures.granted[class].add(1);
        self.measures.waited_us[class].add(waited);
        Ok(Slot { gate: Arc::clone(self) })
    }

    /// An answer's head came `latency` after the request went out.
    pub fn record_answer(&self, latency: Duration) {
        self.measures.answers.add(1);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.measures.latency_us.add(us);
        self.measures.min_latency_us.observe(us);
    }

    /// Slots taken and requests waiting, now.
    pub fn load(&self) -> (usize, usize) {
        (self.in_use.load(Relaxed), self.waiting.load(Relaxed))
    }

    /// The limit on slots now.
    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// Sets the limit (within `max_concurrency`) and how many may wait ahead of anyone; a higher
    /// limit lets waiters in at once.
    pub fn set_limit(&self, limit: usize, max_ahead: usize) {
        self.limit.store(limit.clamp(1, self.limits.max_concurrency), SeqCst);
        let mut queue = self.lock();
        queue.set_max_ahead(max_ahead);
        self.grant(&mut queue);
    }

    /// What [`Measures`] say now.
    pub fn totals(&self) -> Totals {
        let m = &self.measures;
        Totals {
            granted: [0, 1, 2].map(|c| m.granted[c].get()),
            gave_up: [0, 1, 2].map(|c| m.gave_up[c].get()),
            waited_us: [0, 1, 2].map(|c| m.waited_us[c].get()),
            answers: m.answers.get(),
            latency_us: m.latency_us.get(),
        }
    }

    /// The window of `elapsed_ms` since `seen`, for the adaptive limit (whether the limit held
    /// back a request, and the slots held now).
    pub fn window(&self, now: &Totals, seen: &Totals, elapsed_ms: u64) -> Window {
        Window {
            answers: now.answers.saturating_sub(seen.answers),
            latency_sum_us: now.latency_us.saturating_sub(seen.latency_us),
            min_latency_us: self.measures.min_latency_us.take(),
            limited: self.measures.limited.swap(false, Relaxed),
            elapsed_ms,
            inflight: self.in_use.load(Relaxed) as f64,
        }
    }

    /// The wait level now.
    #[inline]
    pub fn level(&self) -> u8 {
        self.level.load(Relaxed)
    }

    /// Sets the wait level (by the controller).
    pub fn set_level(&self, level: u8) {
        self.level.store(level, Relaxed);
    }

    /// Gives free slots to waiters, most important first.
    fn grant(&self, queue: &mut WaitQueue<oneshot::Sender<()>>) {
        while queue.queued() > 0 && self.try_take() {
            let Some(waiter) = queue.pop_next() else { break };
            self.waiting.fetch_sub(1, SeqCst);
            if waiter.send(()).is_err() {
                // It left (its request was dropped): the slot goes to the next.
                self.in_use.fetch_sub(1, SeqCst);
            }
        }
    }

    fn cancel(&self, ticket: u64) -> bool {
        let cancelled = self.lock().cancel(ticket);
        if cancelled {
            self.waiting.fetch_sub(1, SeqCst);
        }
        cancelled
    }

    fn shed(&self, ahead: usize) -> Refusal {
        let detail = format!(
            "upstream {:?} is at its concurrency limit and {ahead} requests as important wait \
             before this one: more than it serves within overload.max_wait",
            self.upstream
        );
        Refusal::new(Reason::Overloaded, detail)
    }

    fn refusal(&self, why: &str) -> Refusal {
        let detail = format!("upstream {:?} is at its concurrency limit: {why}", self.upstream);
        let mut refusal = Refusal::new(Reason::BulkheadFull, detail);
        refusal.retry_after = Some(1);
        refusal
    }

    fn lock(&self) -> MutexGuard<'_, WaitQueue<oneshot::Sender<()>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request waiting for a slot. If it goes away while waiting (its client left, its stream was
/// reset), it leaves the queue, or — when a slot was handed to it meanwhile — passes the slot on.
struct Waiting {
    gate: Arc<Gate>,
    ticket: u64,
    granted: oneshot::Receiver<()>,
    /// The wait ended and its outcome was taken care of.
    settled: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.settled || self.gate.cancel(self.ticket) {
            return;
        }
        if self.granted.try_recv().is_ok() {
            drop(Slot { gate: Arc::clone(&self.gate) });
        }
    }
}

/// A slot of a gate, given back (to the next waiter) when dropped.
pub struct Slot {
    gate: Arc<Gate>,
}

impl Slot {
    /// The gate the slot belongs to.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let gate = &self.gate;
        gate.in_use.fetch_sub(1, SeqCst);
        // After the slot is free: a request about to wait has either seen it or is counted here.
        if gate.waiting.load(SeqCst) > 0 {
            gate.grant(&mut gate.lock());
        }
    }
}
