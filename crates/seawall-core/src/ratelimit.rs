//! A bounded table of rate-limited keys (API keys, client addresses), each holding one GCRA
//! TAT, shared by every worker thread.
//!
//! Bounded without letting anyone escape: a key that owes nothing (its TAT is not after `now`,
//! see [`Gcra::is_free`]) is in the same state as a key never seen, so forgetting it changes no
//! decision. Only such keys are ever evicted — by [`KeyTable::sweep`], and on the spot when a new
//! key finds its shard full. When every key in a full shard is still in debt (a flood of distinct
//! keys inside one interval), the new key is refused ([`Check::TableFull`]) rather than a hot key
//! forgotten: the flood is what gets limited.
//!
//! The table is split into shards, each behind its own mutex, chosen by a randomly seeded hash
//! (a client choosing its keys cannot aim them at one shard); the lock is held for one hash-map
//! lookup. Memory per key is the key's bytes plus about 32 bytes of map slot and table
//! overhead (measured by `cargo bench -p seawall-core`, see bench/results/core.md).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use crate::gcra::{Gcra, Verdict};

/// The most shards a table has; small tables have one, so their bound is exact.
const MAX_SHARDS: usize = 64;
/// Keys per shard below which a table is not split further.
const KEYS_PER_SHARD: usize = 1024;

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Within the key's limit.
    Allow {
        /// Requests the key may still send right now.
        remaining: u32,
        /// Nanoseconds until the key's whole burst is available again.
        reset_ns: u64,
    },
    /// Over the key's limit.
    Deny {
        /// Nanoseconds until one request would pass.
        retry_after_ns: u64,
        /// Nanoseconds until the key's whole burst is available again.
        reset_ns: u64,
    },
    /// A key not in the table, which is full of keys still in debt.
    TableFull {
        /// Nanoseconds until some key in its shard owes nothing and can make room.
        retry_after_ns: u64,
    },
}

struct Shard {
    tats: HashMap<Box<[u8]>, u64, RandomState>,
    /// No key in this shard is free before this time (set when a full shard had none); spares a
    /// scan per new key during a flood.
    none_free_before: u64,
}

/// Keys and their TATs, at most `max_keys` of them.
pub struct KeyTable {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

impl KeyTable {
    /// A table that holds at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> KeyTable {
        let max_keys = max_keys.max(1);
        let shards = (max_keys / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let hasher = RandomState::new();
        let shard = || {
            Mutex::new(Shard { tats: HashMap::with_hasher(hasher.clone()), none_free_before: 0 })
        };
        KeyTable {
            shards: (0..shards).map(|_| shard()).collect(),
            per_shard: max_keys / shards,
            hasher,
        }
    }

    /// The most keys the table holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Decides a request from `key` at `now` (nanoseconds) under `gcra`, and records it when
    /// allowed.
    pub fn check(&self, key: &[u8], gcra: &Gcra, now: u64) -> Check {
        let hash = self.hasher.hash_one(key);
        let index = ((u128::from(hash) * self.shards.len() as u128) >> 64) as usize;
        let mut shard = lock(&self.shards[index]);
        if let Some(tat) = shard.tats.get_mut(key) {
            return match gcra.check(*tat, now) {
                Verdict::Allow { tat: next, remaining, reset_ns } => {
                    *tat = next;
                    Check::Allow { remaining, reset_ns }
                }
                Verdict::Deny { retry_after_ns, reset_ns } => {
                    Check::Deny { retry_after_ns, reset_ns }
                }
            };
        }
        if shard.tats.len() >= self.per_shard && !make_room(&mut shard, self.per_shard, now) {
            return Check::TableFull { retry_after_ns: shard.none_free_before - now };
        }
        match gcra.check(0, now) {
            Verdict::Allow { tat, remaining, reset_ns } => {
                shard.tats.insert(key.into(), tat);
                Check::Allow { remaining, reset_ns }
            }
            // A key never seen has its whole burst (the burst is at least 1).
            Verdict::Deny { retry_after_ns, reset_ns } => Check::Deny { retry_after_ns, reset_ns },
        }
    }

    /// Forgets every key that owes nothing at `now`; returns how many keys remain.
    pub fn sweep(&self, now: u64) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = lock(shard);
                shard.tats.retain(|_, tat| !Gcra::is_free(*tat, now));
                shard.tats.len()
            })
            .sum()
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Evicts the free keys of a shard that holds `per_shard` keys; false when none was free.
fn make_room(shard: &mut Shard, per_shard: usize, now: u64) -> bool {
    if now < shard.none_free_before {
        return false;
    }
    shard.tats.retain(|_, tat| !Gcra::is_free(*tat, now));
    if shard.tats.len() < per_shard {
        return true;
    }
    shard.none_free_before = shard.tats.values().copied().min().unwrap_or(now);
    false
}

/// Locks a shard; a panic elsewhere while it was held leaves a map that is still consistent.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Quota;

    const SEC: u64 = 1_000_000_000;

    fn two_per_second() -> Gcra {
        Gcra::new(Quota { count: 2, period_ns: SEC, burst: 2 })
    }

    #[test]
    fn each_key_has_its_own_limit() {
        let table = KeyTable::new(100);
        let g = two_per_second();
        let now = 10 * SEC;
        assert_eq!(
            table.check(b"alice", &g, now),
            Check::Allow { remaining: 1, reset_ns: SEC / 2 }
        );
        assert_eq!(table.check(b"alice", &g, now), Check::Allow { remaining: 0, reset_ns: SEC });
        assert_eq!(
            table.check(b"alice", &g, now),
            Check::Deny { retry_after_ns: SEC / 2, reset_ns: SEC }
        );
        assert!(matches!(table.check(b"bob", &g, now), Check::Allow { remaining: 1, .. }));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_flood_of_new_keys_is_refused_and_never_frees_a_hot_key() {
        let table = KeyTable::new(4);
        let g = two_per_second();
        let now = 10 * SEC;
        // The hot key spends its burst.
        for _ in 0..2 {
            assert!(matches!(table.check(b"hot", &g, now), Check::Allow { .. }));
        }
        for i in 0..3u8 {
            assert!(matches!(table.check(&[b'k', i], &g, now + 1), Check::Allow { .. }));
        }
        // Full of keys in debt: a new key is refused until the earliest of them is free...
        let flood = table.check(b"new", &g, now + 2);
        assert_eq!(flood, Check::TableFull { retry_after_ns: SEC / 2 - 1 });
        // ...and the hot key is still held to its limit.
        assert!(matches!(table.check(b"hot", &g, now + 3), Check::Deny { .. }));
        // Once the three cold keys owe nothing they make room; the hot key still owes.
        let later = now + SEC / 2 + 1;
        assert!(matches!(table.check(b"new", &g, later), Check::Allow { .. }));
        assert_eq!(table.len(), 2);
        assert!(matches!(table.check(b"hot", &g, later), Check::Allow { remaining: 0, .. }));
        assert!(matches!(table.check(b"hot", &g, later), Check::Deny { .. }));
    }

    #[test]
    fn sweeping_forgets_only_keys_that_owe_nothing() {
        let table = KeyTable::new(10_000);
        let g = two_per_second();
        for i in 0..5000u32 {
            table.check(&i.to_be_bytes(), &g, SEC + u64::from(i));
        }
        assert_eq!(table.len(), 5000);
        // Each key owes half a second from its request: at 1.5 s + 2500 ns, the first 2501 are free.
        assert_eq!(table.sweep(SEC + SEC / 2 + 2500), 2499);
        assert_eq!(table.sweep(3 * SEC), 0);
        assert!(table.is_empty());
    }

    #[test]
    fn large_tables_are_sharded_within_their_bound() {
        let table = KeyTable::new(100_000);
        assert!(table.capacity() <= 100_000 && table.capacity() > 99_000);
        let g = Gcra::new(Quota { count: 1, period_ns: 3600 * SEC, burst: 1 });
        let mut refused = 0;
        for i in 0..120_000u32 {
            if matches!(table.check(&i.to_be_bytes(), &g, SEC), Check::TableFull { .. }) {
                refused += 1;
            }
        }
        assert!(table.len() <= 100_000);
        assert_eq!(refused + table.len(), 120_000);
        assert!(refused >= 20_000);
    }
}
