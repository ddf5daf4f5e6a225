//! One worker thread's view of the gateway: its upstream pools, its random generator, its drain
//! signal and the snapshot it last loaded. Shared by the connections of that thread through an
//! `Rc`; nothing here is touched by another thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use seawall_core::rng::FastRng;

use crate::signal::LocalSignal;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::upstream::pool::WorkerPools;

/// One worker thread's state.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pools: Rc<WorkerPools>,
    pub rng: RefCell<FastRng>,
    /// Request ids, seeded apart from `rng` (whose seed is fixed, for balancing).
    pub ids: crate::request_id::IdSource,
    /// Fires when the gateway starts draining (idle connections and tunnels then close).
    pub drain: LocalSignal,
    /// The generation and snapshot this worker last loaded.
    current: RefCell<(u64, Rc<Pinned>)>,
}

impl Worker {
    /// A worker's state.
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        let generation = shared.generation.load(Ordering::Acquire);
        let current = (generation, Rc::new(Pinned(shared.snapshot.load_full())));
        Worker {
            pools: Rc::default(),
            rng: RefCell::new(FastRng::new(0x5EA_3A11 + index as u64 * 0x9E37_79B9)),
            ids: crate::request_id::IdSource::default(),
            drain: LocalSignal::default(),
            current: RefCell::new(current),
            shared,
        }
    }

    /// The current snapshot. A worker only loads the shared pointer (and pays for an atomic
    /// reference-count update) when a reload has bumped the generation since it last looked.
    pub fn snapshot(&self) -> Rc<Pinned> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let mut current = self.current.borrow_mut();
        if current.0 != generation {
            *current = (generation, Rc::new(Pinned(self.shared.snapshot.load_full())));
        }
        Rc::clone(&current.1)
    }
}

/// The snapshot a worker holds; shared by that worker's requests through a cheap `Rc`, so a request
/// does not touch the snapshot's atomic reference count.
pub struct Pinned(Arc<Snapshot>);

impl std::ops::Deref for Pinned {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}
