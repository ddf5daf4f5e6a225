//! The embedded store's view of its jobs in memory: per topic, the jobs due now (in arrival
//! order), those waiting for a retry (by time), those being delivered, the dead letters, and the
//! counts and bytes the bounds are checked against. Rebuilt from the store at start; the store
//! holds the truth, this only orders it.
//!
//! New jobs go to the back of a FIFO, which costs nothing however many wait; only retries, which
//! wait for a time, are kept ordered (a B-tree), and only jobs out of the FIFO (retries, jobs
//! being delivered) are in the creation-time tree that finds the oldest.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::job::{JobId, State};

/// One topic's jobs.
#[derive(Debug, Default)]
pub struct TopicIndex {
    /// Jobs due now, oldest first: (created, id).
    fresh: VecDeque<(u64, JobId)>,
    /// Retries, by the time they are due: (due, id) → created.
    delayed: BTreeMap<(u64, JobId), u64>,
    /// Creation times of the pending jobs that are not in `fresh`.
    created: BTreeSet<(u64, JobId)>,
    /// Jobs being delivered, with their creation time.
    pub leased: HashMap<JobId, u64>,
    /// Dead letters by the time they died, with their size.
    pub dead: BTreeMap<(u64, JobId), u64>,
    /// Pending jobs and their bytes (with the reservations of enqueues not committed yet).
    pub pending: u64,
    pub pending_bytes: u64,
    pub dead_bytes: u64,
}

impl TopicIndex {
    /// Jobs held (pending and dead): what the bounds count.
    pub fn held(&self) -> (u64, u64) {
        (self.pending + self.dead.len() as u64, self.pending_bytes + self.dead_bytes)
    }

    /// A job just stored (its room was reserved: `pending` counts it already).
    pub fn push_new(&mut self, id: JobId, created_ms: u64) {
        self.fresh.push_back((created_ms, id));
    }

    /// A job found in the store at start; [`TopicIndex::loaded`] once all are in.
    pub fn load(
        &mut self,
        id: JobId,
        state: State,
        due_ms: u64,
        created_ms: u64,
        size: u64,
        finished_ms: u64,
    ) {
        match state {
            // A job that was being delivered when the process stopped is due again.
            State::Queued | State::Delivering => self.fresh.push_back((created_ms, id)),
            State::Failed => {
                self.delayed.insert((due_ms, id), created_ms);
                self.created.insert((created_ms, id));
            }
            State::Dead => {
                self.dead.insert((finished_ms, id), size);
                self.dead_bytes += size;
                return;
            }
            State::Delivered => return,
        }
        self.pending += 1;
        self.pending_bytes += size;
    }

    /// Puts the jobs found at start in arrival order.
    pub fn loaded(&mut self) {
        self.fresh.make_contiguous().sort_unstable();
    }

    /// Takes the next job due at `now_ms`: a retry that is due, else the oldest new job.
    pub fn take_due(&mut self, now_ms: u64) -> Option<JobId> {
        let (id, created) = match self.delayed.first_key_value() {
            Some((&(due, id), &created)) if due <= now_ms => {
                self.delayed.remove(&(due, id));
                (id, created)
            }
            _ => {
                let (created, id) = self.fresh.pop_front()?;
                self.created.insert((created, id));
                (id, created)
            }
        };
        self.leased.insert(id, created);
        Some(id)
    }

    /// When the next job is due (0: one is due now).
    pub fn next_due(&self) -> Option<u64> {
        if self.fresh.is_empty() {
            self.delayed.first_key_value().map(|(&(due, _), _)| due)
        } else {
            Some(0)
        }
    }

    /// A leased job goes back to wait until `due_ms`.
    pub fn release(&mut self, id: JobId, due_ms: u64) {
        if let Some(created) = self.leased.remove(&id) {
            self.delayed.insert((due_ms, id), created);
        }
    }

    /// A leased job of `size` bytes is done with: delivered, or dead when `died_at` is given.
    pub fn settle(&mut self, id: JobId, size: u64, died_at: Option<u64>) {
        if let Some(created) = self.leased.remove(&id) {
            self.created.remove(&(created, id));
        }
        self.pending = self.pending.saturating_sub(1);
        self.pending_bytes = self.pending_bytes.saturating_sub(size);
        if let Some(at) = died_at {
            self.dead.insert((at, id), size);
            self.dead_bytes += size;
        }
    }

    /// A dead letter leaves the dead: purged, or requeued (due at `now`) when `requeue` gives
    /// (now, created). False when it is not a dead letter of this topic.
    pub fn undead(&mut self, died_at: u64, id: JobId, requeue: Option<(u64, u64)>) -> bool {
        let Some(size) = self.dead.remove(&(died_at, id)) else { return false };
        self.dead_bytes = self.dead_bytes.saturating_sub(size);
        if let Some((now_ms, created_ms)) = requeue {
            self.delayed.insert((now_ms, id), created_ms);
            self.created.insert((created_ms, id));
            self.pending += 1;
            self.pending_bytes += size;
        }
        true
    }

    /// The creation time of the oldest pending job.
    pub fn oldest_created(&self) -> Option<u64> {
        let fresh = self.fresh.front().map(|&(at, _)| at);
        let others = self.created.first().map(|&(at, _)| at);
        match (fresh, others) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> JobId {
        JobId([n; 16])
    }

    #[test]
    fn new_jobs_come_out_in_arrival_order_and_retries_when_due() {
        let mut t = TopicIndex::default();
        t.load(id(1), State::Queued, 0, 5, 10, 0);
        t.load(id(2), State::Failed, 50, 1, 10, 0);
        t.load(id(3), State::Queued, 0, 2, 10, 0);
        t.loaded();
        assert_eq!(t.oldest_created(), Some(1));
        assert_eq!(t.next_due(), Some(0));
        assert_eq!(t.take_due(10), Some(id(3)), "the older new job first");
        assert_eq!(t.take_due(10), Some(id(1)));
        assert_eq!(t.take_due(10), None, "the retry is not due yet");
        assert_eq!(t.next_due(), Some(50));
        assert_eq!(t.take_due(60), Some(id(2)));
        assert_eq!(t.held(), (3, 30));
        t.release(id(3), 100);
        t.settle(id(1), 10, None);
        assert_eq!(t.held(), (2, 20));
        assert_eq!(t.oldest_created(), Some(1));
        t.settle(id(2), 10, Some(500));
        assert_eq!(t.oldest_created(), Some(2));
        assert_eq!((t.pending, t.dead.len()), (1, 1));
        assert_eq!(t.held(), (2, 20), "dead letters count against the bounds");
        assert!(t.undead(500, id(2), Some((600, 1))));
        assert!(!t.undead(500, id(2), None), "no longer dead");
        t.push_new(id(4), 700);
        assert_eq!(t.take_due(600), Some(id(3)), "retries that are due go before new jobs");
        assert_eq!(t.take_due(600), Some(id(2)));
        assert_eq!(t.take_due(600), Some(id(4)));
        assert_eq!(t.take_due(600), None);
    }
}
