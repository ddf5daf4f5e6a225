//! The embedded store's view of its jobs in memory: per topic, the jobs due (by time), those
//! being delivered, the dead letters, and the counts and bytes the bounds are checked against.
//! Rebuilt from the store at start; the store holds the truth, this only orders it.

use std::collections::{BTreeSet, HashMap};

use crate::job::{JobId, State};

/// One topic's jobs.
#[derive(Debug, Default)]
pub struct TopicIndex {
    /// Jobs waiting, by the time they are due.
    pub ready: BTreeSet<(u64, JobId)>,
    /// Jobs being delivered, with their size.
    pub leased: HashMap<JobId, u64>,
    /// Pending jobs (ready and leased) by creation time: the first is the oldest.
    pub created: BTreeSet<(u64, JobId)>,
    /// Dead letters by the time they died.
    pub dead: BTreeSet<(u64, JobId)>,
    /// Pending jobs and their bytes (with the reservations of enqueues not committed yet).
    pub pending: u64,
    pub pending_bytes: u64,
    pub dead_bytes: u64,
    /// Sizes of every job held (pending or dead), to release what a settled job held.
    pub sizes: HashMap<JobId, u64>,
}

impl TopicIndex {
    /// Jobs held (pending and dead): what the bounds count.
    pub fn held(&self) -> (u64, u64) {
        (self.pending + self.dead.len() as u64, self.pending_bytes + self.dead_bytes)
    }

    /// A job found in the store at start, or just committed.
    pub fn insert(
        &mut self,
        id: JobId,
        state: State,
        due_ms: u64,
        created_ms: u64,
        size: u64,
        finished_ms: u64,
    ) {
        self.sizes.insert(id, size);
        match state {
            State::Queued | State::Delivering | State::Failed => {
                self.ready.insert((due_ms, id));
                self.created.insert((created_ms, id));
                self.pending += 1;
                self.pending_bytes += size;
            }
            State::Dead => {
                self.dead.insert((finished_ms, id));
                self.dead_bytes += size;
            }
            State::Delivered => {}
        }
    }

    /// Takes the first job due at `now_ms`.
    pub fn take_due(&mut self, now_ms: u64) -> Option<JobId> {
        let &(due, id) = self.ready.first()?;
        if due > now_ms {
            return None;
        }
        self.ready.remove(&(due, id));
        self.leased.insert(id, self.sizes.get(&id).copied().unwrap_or(0));
        Some(id)
    }

    /// When the next job is due.
    pub fn next_due(&self) -> Option<u64> {
        self.ready.first().map(|&(due, _)| due)
    }

    /// A leased job goes back to wait until `due_ms`.
    pub fn release(&mut self, id: JobId, due_ms: u64) {
        if self.leased.remove(&id).is_some() {
            self.ready.insert((due_ms, id));
        }
    }

    /// A leased job is done with (delivered, or dead when `died_at` is given).
    pub fn settle(&mut self, id: JobId, created_ms: u64, died_at: Option<u64>) {
        let size = self.leased.remove(&id).unwrap_or(0);
        self.created.remove(&(created_ms, id));
        self.pending = self.pending.saturating_sub(1);
        self.pending_bytes = self.pending_bytes.saturating_sub(size);
        match died_at {
            Some(at) => {
                self.dead.insert((at, id));
                self.dead_bytes += size;
            }
            None => {
                self.sizes.remove(&id);
            }
        }
    }

    /// A dead letter leaves the dead (purged, or requeued when `requeue` is given: due now).
    pub fn undead(&mut self, died_at: u64, id: JobId, requeue: Option<(u64, u64)>) -> bool {
        if !self.dead.remove(&(died_at, id)) {
            return false;
        }
        let size = self.sizes.get(&id).copied().unwrap_or(0);
        self.dead_bytes = self.dead_bytes.saturating_sub(size);
        match requeue {
            Some((now_ms, created_ms)) => {
                self.ready.insert((now_ms, id));
                self.created.insert((created_ms, id));
                self.pending += 1;
                self.pending_bytes += size;
            }
            None => {
                self.sizes.remove(&id);
            }
        }
        true
    }

    /// The creation time of the oldest pending job.
    pub fn oldest_created(&self) -> Option<u64> {
        self.created.first().map(|&(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> JobId {
        JobId([n; 16])
    }

    #[test]
    fn jobs_come_out_when_due_and_in_due_order() {
        let mut t = TopicIndex::default();
        t.insert(id(1), State::Queued, 50, 1, 10, 0);
        t.insert(id(2), State::Failed, 20, 2, 10, 0);
        assert_eq!(t.take_due(10), None);
        assert_eq!(t.next_due(), Some(20));
        assert_eq!(t.take_due(60), Some(id(2)));
        assert_eq!(t.take_due(60), Some(id(1)));
        assert_eq!(t.take_due(60), None);
        assert_eq!(t.held(), (2, 20));
        t.release(id(2), 100);
        t.settle(id(1), 1, None);
        assert_eq!(t.held(), (1, 10));
        assert_eq!(t.oldest_created(), Some(2));
        assert_eq!(t.take_due(100), Some(id(2)));
        t.settle(id(2), 2, Some(500));
        assert_eq!((t.pending, t.dead.len()), (0, 1));
        assert_eq!(t.held(), (1, 10));
        assert!(t.undead(500, id(2), Some((600, 2))));
        assert_eq!(t.take_due(600), Some(id(2)));
    }
}
