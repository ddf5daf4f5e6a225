//! Load-balancing algorithms over a list of weighted servers.
//!
//! The gateway keeps the servers of an upstream in a slice and asks these functions for an index.
//! Whether a server may be chosen (healthy, not ejected) and how loaded it is are passed in as
//! closures, so the algorithms know nothing about sockets or threads. Each worker thread keeps its
//! own cursor and random generator: choosing a server never writes to memory another core reads.

use crate::hash::{mix, stable_hash};
use crate::rng::FastRng;

/// Smooth weighted round robin, precomputed: the order nginx's algorithm produces for these weights
/// (e.g. weights 5,1,1 give `a a b a c a a`, not `a a a a a b c`), stored once per upstream so each
/// pick is an array read and a cursor increment.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    schedule: Vec<u32>,
}

/// The longest schedule we precompute; weights are scaled down beyond it.
const MAX_SCHEDULE: u64 = 65_536;

impl RoundRobin {
    /// Builds the schedule for `weights` (each ≥ 1).
    pub fn new(weights: &[u32]) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let scale = if total > MAX_SCHEDULE { total.div_ceil(MAX_SCHEDULE) } else { 1 };
        let weights: Vec<i64> =
            weights.iter().map(|&w| (u64::from(w.max(1)) / scale).max(1) as i64).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        RoundRobin { schedule }
    }

    /// Picks the next available server after `cursor`, advancing it; `None` if none is available.
    pub fn pick(&self, cursor: &mut usize, available: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        for _ in 0..len {
            let slot = *cursor % len;
            *cursor = slot + 1;
            let server = self.schedule[slot] as usize;
            if available(server) {
                return Some(server);
            }
        }
        None
    }
}

/// "Power of two choices": draw two distinct available servers at random and keep the one with the
/// lower load relative to its weight. Near least-loaded balance with O(1) work and no global view.
pub fn least_request(
    weights: &[u32],
    rng: &mut FastRng,
    load: impl Fn(usize) -> u32,
    available: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = weights.len();
    let first = random_available(n, rng, &available, None)?;
    let Some(second) = random_available(n, rng, &available, Some(first)) else {
        return Some(first);
    };
    // Compare load/weight without division: a/wa < b/wb  <=>  a*wb < b*wa.
    let cost = |i: usize, other: usize| {
        u64::from(load(i)).saturating_add(1) * u64::from(weights[other].max(1))
    };
    let (a, b) = (cost(first, second), cost(second, first));
    Some(if a <= b { first } else { second })
}

/// A random available index other than `except`: a random start, then a linear scan.
fn random_available(
    n: usize,
    rng: &mut FastRng,
    available: &impl Fn(usize) -> bool,
    except: Option<usize>,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = rng.below(n);
    (0..n).map(|k| (start + k) % n).find(|&i| Some(i) != except && available(i))
}

/// A consistent-hash ring: each server owns `weight × VNODES_PER_WEIGHT` points, a key goes to the
/// first point clockwise from its hash, and if that server is unavailable, to the next one. Adding
/// or removing a server moves only the keys that server owned.
#[derive(Debug, Clone)]
pub struct HashRing {
    points: Vec<(u64, u32)>,
    servers: usize,
}

/// Points per unit of weight: 100 keeps the spread within a few percent for small fleets.
pub const VNODES_PER_WEIGHT: u32 = 100;

impl HashRing {
    /// Builds the ring; `ids` name the servers stably (their addresses), so a server keeps its
    /// points when others come and go.
    pub fn new(ids: &[&str], weights: &[u32]) -> Self {
        let mut points = Vec::new();
        for (i, (id, &w)) in ids.iter().zip(weights).enumerate() {
            let base = stable_hash(id.as_bytes());
            for v in 0..w.max(1).saturating_mul(VNODES_PER_WEIGHT) {
                points.push((mix(base ^ mix(u64::from(v) + 1)), i as u32));
            }
        }
        points.sort_unstable();
        HashRing { points, servers: ids.len() }
    }

    /// The server for `key_hash`, skipping unavailable servers clockwise.
    pub fn pick(&self, key_hash: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(h, _)| h < key_hash);
        let mut tried = 0usize;
        let mut last = u32::MAX;
        for k in 0..self.points.len() {
            let (_, server) = self.points[(start + k) % self.points.len()];
            if server == last {
                continue;
            }
            last = server;
            if available(server as usize) {
                return Some(server as usize);
            }
            tried += 1;
            if tried > self.servers * 4 {
                // Every server has been seen unavailable several times over: stop scanning.
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let mut cursor = 0;
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&mut cursor, |_| true).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_unavailable_and_reports_none() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut cursor = 0;
        for _ in 0..6 {
            assert_ne!(rr.pick(&mut cursor, |i| i != 1), Some(1));
        }
        assert_eq!(rr.pick(&mut cursor, |_| false), None);
    }

    #[test]
    fn least_request_prefers_less_loaded() {
        let mut rng = FastRng::new(7);
        let loads = [10u32, 0];
        for _ in 0..100 {
            assert_eq!(least_request(&[1, 1], &mut rng, |i| loads[i], |_| true), Some(1));
        }
        assert_eq!(least_request(&[1, 1], &mut rng, |i| loads[i], |i| i == 0), Some(0));
        assert_eq!(least_request(&[1, 1], &mut rng, |_| 0, |_| false), None);
    }

    #[test]
    fn least_request_spreads_equal_load() {
        let mut rng = FastRng::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[least_request(&[1; 4], &mut rng, |_| 0, |_| true).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn ring_is_stable_and_moves_few_keys() {
        let three = HashRing::new(&["a:1", "b:1", "c:1"], &[1, 1, 1]);
        let two = HashRing::new(&["a:1", "b:1"], &[1, 1]);
        let mut moved = 0;
        let mut counts = [0u32; 3];
        for k in 0..3000u32 {
            let h = stable_hash(&k.to_le_bytes());
            let s3 = three.pick(h, |_| true).unwrap();
            counts[s3] += 1;
            let s2 = two.pick(h, |_| true).unwrap();
            if s3 != 2 && s3 != s2 {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of surviving servers must not move");
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn ring_fails_over_clockwise() {
        let ring = HashRing::new(&["a", "b", "c"], &[1, 1, 1]);
        let h = stable_hash(b"key");
        let first = ring.pick(h, |_| true).unwrap();
        let next = ring.pick(h, |i| i != first).unwrap();
        assert_ne!(first, next);
        assert_eq!(ring.pick(h, |_| false), None);
    }
}
