//! The waiting line of a bulkhead: callers that found an upstream group at its concurrency limit
//! wait here for a slot, served by priority (every P0 before any P1, then P2; first come first
//! served within a class). The slots themselves are counted by the owner.
//!
//! Two bounds keep the line short enough to be worth waiting in:
//!
//! - `max_queue` waiters at most: when full, a newcomer evicts the most recent waiter of a less
//!   important class, or is refused;
//! - `max_ahead`: a newcomer that would wait behind that many others (of its class or more
//!   important) is refused at once — a quick refusal beats a long wait ending in one. A waiter
//!   that more important newcomers overtake keeps its place: it was promised a turn, and a late
//!   answer beats a late refusal (its wait stays bounded by the owner's timeout).
//!
//! The waiter `W` is whatever wakes the caller (a channel's sending half); this type only decides
//! who waits and who is next, and is kept behind its owner's lock.

use std::collections::VecDeque;

use crate::priority::Priority;

/// What [`WaitQueue::enqueue`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued<W> {
    /// Waiting, with this ticket (to [`WaitQueue::cancel`] on timeout); `evicted` lost its place
    /// to make room.
    Waiting {
        /// The caller's place in the queue.
        ticket: u64,
        /// A less important waiter pushed out of a full queue.
        evicted: Option<W>,
    },
    /// The queue is full of waiters at least as important: refused.
    Full(W),
}

/// The waiters of one upstream group.
#[derive(Debug)]
pub struct WaitQueue<W> {
    max_queue: usize,
    max_ahead: usize,
    queues: [VecDeque<(u64, W)>; 3],
    next_ticket: u64,
}

impl<W> WaitQueue<W> {
    /// A queue of at most `max_queue` waiters (and no bound on those ahead until
    /// [`set_max_ahead`](Self::set_max_ahead)).
    pub fn new(max_queue: usize) -> WaitQueue<W> {
        WaitQueue {
            max_queue,
            max_ahead: usize::MAX,
            queues: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            next_ticket: 0,
        }
    }

    /// From now on, nobody waits behind more than `n` others (taken as at least 1).
    pub fn set_max_ahead(&mut self, n: usize) {
        self.max_ahead = n.max(1);
    }

    /// The bound on waiters ahead.
    pub fn max_ahead(&self) -> usize {
        self.max_ahead
    }

    /// Waiters of `class` and every more important class.
    fn up_to(&self, class: usize) -> usize {
        self.queues[..=class].iter().map(VecDeque::len).sum()
    }

    /// Queues a caller that found no free slot.
    pub fn enqueue(&mut self, priority: Priority, waiter: W) -> Enqueued<W> {
        let class = priority.index();
        if self.up_to(class) >= self.max_ahead {
            return Enqueued::Full(waiter);
        }
        let mut evicted = None;
        if self.queued() >= self.max_queue {
            let lowest = (class + 1..3).rev().find(|&c| !self.queues[c].is_empty());
            match lowest {
                Some(c) => evicted = self.queues[c].pop_back().map(|(_, w)| w),
                None => return Enqueued::Full(waiter),
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queues[class].push_back((ticket, waiter));
        Enqueued::Waiting { ticket, evicted }
    }

    /// The most important waiter, out of the queue (to be given a slot).
    pub fn pop_next(&mut self) -> Option<W> {
        self.queues.iter_mut().find_map(|q| q.pop_front()).map(|(_, w)| w)
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

    /// Callers waiting.
    pub fn queued(&self) -> usize {
        self.up_to(2)
    }

    /// Callers waiting, by class.
    pub fn queued_by_class(&self) -> [usize; 3] {
        [self.queues[0].len(), self.queues[1].len(), self.queues[2].len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    fn waiting<W>(e: Enqueued<W>) -> (u64, Option<W>) {
        match e {
            Enqueued::Waiting { ticket, evicted } => (ticket, evicted),
            Enqueued::Full(_) => panic!("refused"),
        }
    }

    #[test]
    fn waiters_are_served_by_priority_then_arrival() {
        let mut q = WaitQueue::new(10);
        for (p, name) in [(P2, "p2-a"), (P1, "p1-a"), (P0, "p0-a"), (P1, "p1-b")] {
            assert!(waiting(q.enqueue(p, name)).1.is_none());
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop_next()).collect();
        assert_eq!(order, ["p0-a", "p1-a", "p1-b", "p2-a"]);
    }

    #[test]
    fn a_full_queue_evicts_the_newest_less_important_waiter_or_refuses() {
        let mut q = WaitQueue::new(2);
        q.enqueue(P2, "p2-old");
        q.enqueue(P2, "p2-new");
        assert_eq!(q.enqueue(P2, "p2-late"), Enqueued::Full("p2-late"));
        assert_eq!(waiting(q.enqueue(P0, "p0")).1, Some("p2-new"));
        assert_eq!(waiting(q.enqueue(P1, "p1")).1, Some("p2-old"));
        assert_eq!(q.enqueue(P1, "p1-late"), Enqueued::Full("p1-late"));
        assert_eq!(q.queued(), 2);
        assert_eq!(WaitQueue::new(0).enqueue(P0, 1), Enqueued::Full(1));
    }

    #[test]
    fn a_newcomer_with_max_ahead_before_it_is_refused_and_waiters_keep_their_places() {
        let mut q = WaitQueue::new(100);
        q.set_max_ahead(3);
        for i in 0..3 {
            waiting(q.enqueue(P2, i));
        }
        // A fourth P2 would wait behind three: refused at once.
        assert_eq!(q.enqueue(P2, 3), Enqueued::Full(3));
        // More important newcomers count only their own classes; they overtake the P2s, which
        // keep their places however far back they are pushed.
        for i in 10..13 {
            assert_eq!(waiting(q.enqueue(P1, i)).1, None);
        }
        assert_eq!(q.enqueue(P1, 13), Enqueued::Full(13));
        assert_eq!(waiting(q.enqueue(P0, 20)).1, None);
        assert_eq!(q.queued_by_class(), [1, 3, 3]);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_next()).collect();
        assert_eq!(order, [20, 10, 11, 12, 0, 1, 2]);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue() {
        let mut q = WaitQueue::new(4);
        let (ticket, _) = waiting(q.enqueue(P1, 1));
        q.enqueue(P1, 2);
        assert!(q.cancel(ticket));
        assert!(!q.cancel(ticket));
        assert_eq!(q.pop_next(), Some(2));
        assert_eq!(q.pop_next(), None);
    }
}
