//! A bulkhead: at most `max_concurrency` calls to an upstream group at once, and a bounded queue
//! of callers waiting for a slot, served by priority (every P0 before any P1, then P2; first come
//! first served within a class). When the queue is full, a newcomer evicts the most recent waiter
//! of a less important class, or is refused. A slot freed goes straight to the next waiter, so a
//! newcomer never overtakes the queue.
//!
//! The waiter `W` is whatever wakes the caller (a channel's sending half); this type only decides
//! who gets a slot, and is kept behind its owner's lock.

use std::collections::VecDeque;

use crate::priority::Priority;

/// What [`Bulkhead::enqueue`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued<W> {
    /// Waiting, with this ticket (to [`Bulkhead::cancel`] on timeout); `evicted` lost its place
    /// to make room.
    Waiting {
        /// The caller's place in the queue.
        ticket: u64,
        /// A less important waiter pushed out of the queue.
        evicted: Option<W>,
    },
    /// The queue is full of waiters at least as important: refused.
    Full(W),
}

/// Slots and waiters of one upstream group.
#[derive(Debug)]
pub struct Bulkhead<W> {
    max_concurrency: usize,
    max_queue: usize,
    in_use: usize,
    queues: [VecDeque<(u64, W)>; 3],
    next_ticket: u64,
}

impl<W> Bulkhead<W> {
    /// A bulkhead of `max_concurrency` slots (at least 1) and `max_queue` waiting places.
    pub fn new(max_concurrency: usize, max_queue: usize) -> Bulkhead<W> {
        Bulkhead {
            max_concurrency: max_concurrency.max(1),
            max_queue,
            in_use: 0,
            queues: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            next_ticket: 0,
        }
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&mut self) -> bool {
        if self.in_use < self.max_concurrency {
            self.in_use += 1;
            true
        } else {
            false
        }
    }

    /// Queues a caller that found no free slot.
    pub fn enqueue(&mut self, priority: Priority, waiter: W) -> Enqueued<W> {
        let mut evicted = None;
        if self.queued() >= self.max_queue {
            let lowest = (priority.index() + 1..3).rev().find(|&c| !self.queues[c].is_empty());
            match lowest {
                Some(class) => evicted = self.queues[class].pop_back().map(|(_, w)| w),
                None => return Enqueued::Full(waiter),
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queues[priority.index()].push_back((ticket, waiter));
        Enqueued::Waiting { ticket, evicted }
    }

    /// Gives a slot back: it passes to the most important waiter, returned to be woken (if it
    /// is gone, call `release` again), or is freed when nobody waits.
    pub fn release(&mut self) -> Option<W> {
        for queue in &mut self.queues {
            if let Some((_, waiter)) = queue.pop_front() {
                return Some(waiter);
            }
        }
        self.in_use = self.in_use.saturating_sub(1);
        None
    }

    /// Takes a waiter out of the queue (it timed out or left); false when it is no longer
    /// there (it was given a slot or evicted meanwhile).
    pub fn cancel(&mut self, ticket: u64) -> bool {
        for queue in &mut self.queues {
            if let Some(at) = queue.iter().position(|(t, _)| *t == ticket) {
                queue.remove(at);
                return true;
            }
        }
        false
    }

    /// Slots taken.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Callers waiting.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// The limit on slots.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    #[test]
    fn slots_then_a_queue_served_by_priority() {
        let mut b = Bulkhead::new(2, 10);
        assert!(b.try_acquire() && b.try_acquire());
        assert!(!b.try_acquire());
        for (p, name) in [(P2, "p2-a"), (P1, "p1-a"), (P0, "p0-a"), (P1, "p1-b")] {
            assert!(matches!(b.enqueue(p, name), Enqueued::Waiting { evicted: None, .. }));
        }
        let order: Vec<_> = (0..4).map(|_| b.release().unwrap()).collect();
        assert_eq!(order, ["p0-a", "p1-a", "p1-b", "p2-a"]);
        // Each handed slot stayed taken; now nobody waits and slots are freed.
        assert_eq!(b.in_use(), 2);
        assert_eq!(b.release(), None);
        assert_eq!(b.in_use(), 1);
    }

    #[test]
    fn a_full_queue_evicts_the_newest_less_important_waiter_or_refuses() {
        let mut b = Bulkhead::new(1, 2);
        assert!(b.try_acquire());
        b.enqueue(P2, "p2-old");
        b.enqueue(P2, "p2-new");
        assert_eq!(b.enqueue(P2, "p2-late"), Enqueued::Full("p2-late"));
        let Enqueued::Waiting { evicted, .. } = b.enqueue(P0, "p0") else { panic!() };
        assert_eq!(evicted, Some("p2-new"));
        let Enqueued::Waiting { evicted, .. } = b.enqueue(P1, "p1") else { panic!() };
        assert_eq!(evicted, Some("p2-old"));
        assert_eq!(b.enqueue(P1, "p1-late"), Enqueued::Full("p1-late"));
        assert_eq!(b.queued(), 2);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue_and_no_queue_means_refusal() {
        let mut b = Bulkhead::new(1, 4);
        assert!(b.try_acquire());
        let Enqueued::Waiting { ticket, .. } = b.enqueue(P1, 1) else { panic!() };
        b.enqueue(P1, 2);
        assert!(b.cancel(ticket));
        assert!(!b.cancel(ticket));
        assert_eq!(b.release(), Some(2));
        let mut none = Bulkhead::new(1, 0);
        assert!(none.try_acquire());
        assert_eq!(none.enqueue(P0, 1), Enqueued::Full(1));
    }
}
