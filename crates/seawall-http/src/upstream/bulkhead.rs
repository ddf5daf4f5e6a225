//! An upstream group's bulkhead on the request path (the queue discipline is
//! [`seawall_core::bulkhead`]): at most `max_concurrency` requests at once, from every worker;
//! others wait up to `queue_timeout` in a queue of `max_queue`, served by priority, and a full
//! queue makes room for a more important request by evicting the newest less important one. A
//! request refused (queue full, timed out, evicted) gets 503 `bulkhead_full`. A slot is held
//! until the answer's body is done, and passes straight to the next waiter.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use seawall_config::Bulkhead as Limits;
use seawall_core::bulkhead::{Bulkhead, Enqueued};
use seawall_core::priority::Priority;
use tokio::sync::oneshot;

use crate::metrics::Counter;
use crate::problem::{Reason, Refusal};

/// Requests refused, by why.
pub struct Rejections {
    pub full: Counter,
    pub timeout: Counter,
    pub evicted: Counter,
}

/// A group's bulkhead.
pub struct Gate {
    upstream: String,
    pub limits: Limits,
    queue: Mutex<Bulkhead<oneshot::Sender<()>>>,
    pub rejections: Arc<Rejections>,
}

impl Gate {
    /// The bulkhead of upstream `upstream`; a reload that keeps its limits keeps `previous`.
    pub fn new(
        upstream: &str,
        limits: Limits,
        previous: Option<&Arc<Gate>>,
        shards: usize,
    ) -> Arc<Gate> {
        if let Some(p) = previous.filter(|p| p.limits == limits) {
            return Arc::clone(p);
        }
        let rejections = previous.map_or_else(
            || {
                Arc::new(Rejections {
                    full: Counter::new(shards),
                    timeout: Counter::new(shards),
                    evicted: Counter::new(shards),
                })
            },
            |p| Arc::clone(&p.rejections),
        );
        let queue = Mutex::new(Bulkhead::new(limits.max_concurrency, limits.max_queue));
        Arc::new(Gate { upstream: upstream.to_string(), limits, queue, rejections })
    }

    /// Takes a slot, waiting in the queue for up to `queue_timeout` (or until `deadline`, the
    /// request's own, when that comes first) when none is free.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Slot, Refusal> {
        let mut waiting = {
            let mut queue = self.lock();
            if queue.try_acquire() {
                return Ok(Slot { gate: Arc::clone(self) });
            }
            let (tx, rx) = oneshot::channel();
            match queue.enqueue(priority, tx) {
                Enqueued::Full(_) => {
                    self.rejections.full.add(1);
                    return Err(self.refusal("its queue is full"));
                }
                // The evicted waiter's channel closes: it hears it was pushed out.
                Enqueued::Waiting { ticket, evicted } => {
                    drop(evicted);
                    Waiting { gate: Arc::clone(self), ticket, granted: rx, settled: false }
                }
            }
        };
        let until = tokio::time::Instant::now() + self.limits.queue_timeout;
        let until = deadline.map_or(until, |d| d.min(until));
        match tokio::time::timeout_at(until, &mut waiting.granted).await {
            Ok(Ok(())) => {
                waiting.settled = true;
                Ok(Slot { gate: Arc::clone(self) })
            }
            Ok(Err(_)) => {
                waiting.settled = true;
                self.rejections.evicted.add(1);
                Err(self.refusal("a more important request took this one's place in its queue"))
            }
            Err(_) => {
                waiting.settled = true;
                if self.lock().cancel(waiting.ticket) {
                    self.rejections.timeout.add(1);
                    let waited = self.limits.queue_timeout;
                    return Err(self.refusal(&format!("no slot was free within {waited:?}")));
                }
                // Granted (or evicted) just as the wait ended.
                match waiting.granted.try_recv() {
                    Ok(()) => Ok(Slot { gate: Arc::clone(self) }),
                    Err(_) => {
                        self.rejections.evicted.add(1);
                        Err(self.refusal("a more important request took this one's place"))
                    }
                }
            }
        }
    }

    /// Slots taken and requests waiting, now.
    pub fn load(&self) -> (usize, usize) {
        let queue = self.lock();
        (queue.in_use(), queue.queued())
    }

    fn refusal(&self, why: &str) -> Refusal {
        let detail = format!("upstream {:?} is at its concurrency limit: {why}", self.upstream);
        let mut refusal = Refusal::new(Reason::BulkheadFull, detail);
        refusal.retry_after = Some(1);
        refusal
    }

    fn lock(&self) -> MutexGuard<'_, Bulkhead<oneshot::Sender<()>>> {
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
        if self.settled || self.gate.lock().cancel(self.ticket) {
            return;
        }
        if self.granted.try_recv().is_ok() {
            drop(Slot { gate: Arc::clone(&self.gate) });
        }
    }
}

/// A slot of a bulkhead, given back (to the next waiter) when dropped.
pub struct Slot {
    gate: Arc<Gate>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut queue = self.gate.lock();
        // A waiter that left (its request was dropped) passes the slot on.
        while let Some(waiter) = queue.release() {
            if waiter.send(()).is_ok() {
                break;
            }
        }
    }
}
