//! The switches an operator flips during a crisis that act on the request path: routes turned
//! off (503 `feature_disabled`, or the route's degraded answer) and the gateway in read-only mode
//! (writes get 503 `read_only`; reads keep flowing). They live beside the snapshot and outlive
//! reloads (a disabled route stays disabled while a route of that name exists).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Read-only mode and the disabled routes.
#[derive(Debug, Default)]
pub struct Switches {
    read_only: AtomicBool,
    /// Whether any route is disabled: the common case reads this one flag.
    any_disabled: AtomicBool,
    disabled: Mutex<BTreeSet<String>>,
}

impl Switches {
    /// Whether the gateway refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only.load(Relaxed)
    }

    /// Turns read-only mode on or off; returns what it was.
    pub fn set_read_only(&self, on: bool) -> bool {
        self.read_only.swap(on, Relaxed)
    }

    /// Whether route `name` is disabled.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.any_disabled.load(Relaxed) && self.lock().contains(name)
    }

    /// Disables (`true`) or enables route `name`; returns whether it was disabled before.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> bool {
        let mut set = self.lock();
        let was = if disabled { !set.insert(name.to_string()) } else { set.remove(name) };
        self.any_disabled.store(!set.is_empty(), Relaxed);
        was
    }

    /// The disabled routes, in name order.
    pub fn disabled(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.disabled.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
