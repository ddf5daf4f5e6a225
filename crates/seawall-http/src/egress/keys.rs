//! One API key's live state — its calls in the current period, whether it rests after a 429 or
//! was refused by the provider — shared by every snapshot that keeps the key, and the [`Grant`]
//! a call holds while it uses the key.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use seawall_core::calls::{CallQuota, Day};

/// What a key has done and may do. Shared (`Arc`) by every group, entry and snapshot that sends
/// the same value to the same provider URL ([`super::Keys`]): one key, one quota.
pub(super) struct KeyLive {
    pub quota: CallQuota,
    /// The limits `quota` enforces (rate with its margin, daily cap).
    pub limits: (Option<seawall_core::gcra::Quota>, Option<u64>),
    /// Until when (monotonic ms) it is not used: the provider answered 429.
    pub parked_until: u64,
    /// The status that disabled it (401/403, confirmed by another key's answer).
    pub disabled: Option<u16>,
    /// Calls sent with it.
    pub calls: u64,
    /// Its 429s.
    pub throttled: u64,
    /// Its 401s and 403s (those that disabled it and those that did not).
    pub refused: u64,
}

impl KeyLive {
    pub fn new(
        quota: CallQuota,
        limits: (Option<seawall_core::gcra::Quota>, Option<u64>),
    ) -> KeyLive {
        KeyLive {
            quota,
            limits,
            parked_until: 0,
            disabled: None,
            calls: 0,
            throttled: 0,
            refused: 0,
        }
    }

    /// When it may be used next (monotonic ms; `now_ms` or earlier: now).
    pub fn next_at(&mut self, now_ms: u64, day: Day) -> u64 {
        self.quota.next_at(now_ms, day).max(self.parked_until)
    }
}

/// A key as its group holds it.
pub(super) struct KeyState {
    /// The environment variable it came from; empty for a provider without keys.
    pub env: String,
    pub fingerprint: String,
    pub live: Arc<Mutex<KeyLive>>,
}

impl KeyState {
    pub fn lock(&self) -> MutexGuard<'_, KeyLive> {
        lock(&self.live)
    }
}

pub(super) fn lock(live: &Mutex<KeyLive>) -> MutexGuard<'_, KeyLive> {
    // A panic while holding the lock leaves counters, never broken invariants.
    live.lock().unwrap_or_else(|e| e.into_inner())
}

/// A provider's counters, shared like its keys.
#[derive(Default)]
pub(super) struct ProviderCounters {
    /// Calls sent to it because an earlier provider had no quota left.
    pub spilled: AtomicU64,
    /// Calls sent to it after an earlier one failed them.
    pub fell_back: AtomicU64,
    /// Attempts that failed here (breaker open, gate full, no connection, TLS, timeout, 5xx).
    pub failures: AtomicU64,
}

/// A call's use of one key of one provider, its quota taken. Dropped without being settled (the
/// call was cancelled while it may have been on its way), it counts as sent.
pub(crate) struct Grant {
    pub provider: usize,
    pub key: usize,
    pub(super) live: Arc<Mutex<KeyLive>>,
    pub(super) counters: Arc<ProviderCounters>,
    /// When its quota was taken (monotonic ms, and the UTC day's number).
    pub(super) taken: (u64, u64),
    /// The provider is not the first: earlier ones had no quota.
    pub(super) spilled: bool,
    settled: bool,
}

impl Grant {
    pub(super) fn new(
        (provider, key): (usize, usize),
        live: Arc<Mutex<KeyLive>>,
        counters: Arc<ProviderCounters>,
        taken: (u64, u64),
        spilled: bool,
    ) -> Grant {
        Grant { provider, key, live, counters, taken, spilled, settled: false }
    }

    /// The call may have reached the provider: it counts from now.
    pub fn sent(mut self) {
        self.settle_sent();
    }

    fn settle_sent(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut live = lock(&self.live);
        live.quota.settle(seawall_core::clock::now_ms());
        live.calls += 1;
        drop(live);
        if self.spilled {
            self.counters.spilled.fetch_add(1, Relaxed);
        }
    }

    /// Nothing reached the provider: its quota is given back (the group wakes its line).
    pub(super) fn give_back(mut self) {
        self.settled = true;
        lock(&self.live).quota.give_back(self.taken.0, self.taken.1);
    }

    /// The provider answered 429: the key rests until `until_ms` (the call counts as sent).
    pub fn park(&self, until_ms: u64) {
        let mut live = lock(&self.live);
        live.parked_until = live.parked_until.max(until_ms);
        live.throttled += 1;
    }

    /// The provider refused the key (401/403): counted, and suspected — disabled once another
    /// key is accepted for the same request ([`Suspect::confirm`]).
    pub fn refused(&self, status: u16) -> Suspect {
        lock(&self.live).refused += 1;
        Suspect { live: Arc::clone(&self.live), status }
    }
}

/// A key its provider refused for one request, not yet known to be the problem.
pub(crate) struct Suspect {
    live: Arc<Mutex<KeyLive>>,
    status: u16,
}

impl Suspect {
    /// Another key was accepted for the same request: this one is disabled.
    pub fn confirm(self) {
        lock(&self.live).disabled = Some(self.status);
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.settle_sent();
    }
}
