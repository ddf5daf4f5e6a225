//! Micro-benchmarks of the policy primitives on the request path (results: bench/results/core.md),
//! and the bytes a rate-limit key costs (counted by a wrapping allocator, printed first).
#![allow(unsafe_code)] // the counting allocator

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use seawall_core::adaptive::{AdaptiveLimit, Settings, Window};
use seawall_core::balance::{least_request, HashRing, RoundRobin};
use seawall_core::breaker::{Breaker, BreakerPolicy};
use seawall_core::budget::RetryBudget;
use seawall_core::ejection::{EjectionPolicy, Outlier};
use seawall_core::gcra::{Gcra, Quota};
use seawall_core::hash::stable_hash;
use seawall_core::health::HealthCounter;
use seawall_core::overload::{LevelControl, Thresholds};
use seawall_core::ratelimit::KeyTable;
use seawall_core::rng::FastRng;

fn balance(c: &mut Criterion) {
    let weights = [3, 1, 1, 1];
    let rr = RoundRobin::new(&weights);
    let mut cursor = 0;
    c.bench_function("round_robin pick (4 servers, weighted)", |b| {
        b.iter(|| rr.pick(&mut cursor, |i| black_box(i) != 7))
    });
    let mut rng = FastRng::new(1);
    let loads = [3u32, 1, 4, 1];
    c.bench_function("least_request pick (power of two choices, 4 servers)", |b| {
        b.iter(|| least_request(&weights, &mut rng, |i| loads[i], |i| black_box(i) != 7))
    });
    let ids: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:8080")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let ring = HashRing::new(&id_refs, &[1; 10]);
    let mut key = 0u64;
    c.bench_function("consistent_hash pick (10 servers, 1000 points)", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
            ring.pick(key, |i| black_box(i) != 11)
        })
    });
    c.bench_function("stable_hash (16-byte key)", |b| {
        b.iter(|| stable_hash(black_box(b"session=abcdef12")))
    });
}

fn outliers(c: &mut Criterion) {
    let policy = EjectionPolicy {
        consecutive_failures: 5,
        base_ms: 10_000,
        max_ms: 300_000,
        max_ejected_percent: 50,
    };
    let outlier = Outlier::default();
    c.bench_function("ejection record_success", |b| {
        b.iter(|| outlier.record_success(black_box(1000), &policy))
    });
    c.bench_function("ejection is_ejected", |b| b.iter(|| outlier.is_ejected(black_box(1000))));
    let mut health = HealthCounter::new(true, 2, 2);
    let mut flip = false;
    c.bench_function("health observe", |b| {
        b.iter(|| {
            flip = !flip;
            health.observe(black_box(flip))
        })
    });
}

fn protections(c: &mut Criterion) {
    const SEC: u64 = 1_000_000_000;
    let gcra = Gcra::new(Quota { count: 1_000_000, period_ns: SEC, burst: 1000 });
    let mut now = SEC;
    let mut tat = 0;
    c.bench_function("gcra check", |b| {
        b.iter(|| {
            now += 1500;
            if let seawall_core::gcra::Verdict::Allow { tat: t, .. } =
                gcra.check(black_box(tat), now)
            {
                tat = t;
            }
        })
    });
    let table = KeyTable::new(100_000);
    let keys: Vec<String> = (0..10_000).map(|i| format!("api-key-{i:08}")).collect();
    let mut i = 0;
    c.bench_function("rate limit table check (10,000 keys, 16-byte key)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 150;
            table.check(black_box(keys[i].as_bytes()), &gcra, now)
        })
    });
    let breaker = Breaker::new(BreakerPolicy {
        failure_rate: 0.5,
        min_requests: 20,
        window_ms: 10_000,
        consecutive_failures: 0,
        slow_call_ms: 0,
        open_ms: 30_000,
        max_open_ms: 300_000,
        half_open_probes: 1,
    });
    let mut ms = 1000;
    c.bench_function("breaker admit (closed)", |b| b.iter(|| breaker.admit(black_box(ms))));
    c.bench_function("breaker record (success)", |b| {
        b.iter(|| {
            ms += 1;
            breaker.record(ms, black_box(false), 3, false)
        })
    });
    let budget = RetryBudget::new(10_000);
    c.bench_function("retry budget record_request", |b| {
        b.iter(|| {
            ms += 1;
            budget.record_request(black_box(ms))
        })
    });
    let mut limit = AdaptiveLimit::new(Settings {
        min: 1,
        max: 1_000,
        initial: 100,
        tolerance: 2.0,
        slack_us: 5_000,
        max_latency_us: 0,
        probe_every_ms: 30_000,
    });
    c.bench_function("adaptive limit update (once per window)", |b| {
        b.iter(|| {
            ms += 100;
            let window = Window {
                answers: 50,
                latency_sum_us: black_box(50 * 20_000),
                min_latency_us: Some(20_000),
                limited: true,
                elapsed_ms: 100,
                inflight: 40.0,
            };
            limit.update(ms, window)
        })
    });
    let mut levels = LevelControl::new(2_000, 0.1);
    let cpu = Thresholds([0.8, 0.9, 0.95]);
    c.bench_function("overload level observe (once per sample)", |b| {
        b.iter(|| {
            ms += 100;
            levels.observe(ms, &[(black_box(0.85), cpu)])
        })
    });
}

/// Counts the bytes allocated and not yet freed.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes a rate-limit table holds per key, for 100,000 keys of 16 bytes (what callers see as
/// memory, allocator rounding aside).
fn bytes_per_key() {
    let gcra = Gcra::new(Quota { count: 100, period_ns: 60_000_000_000, burst: 100 });
    let before = LIVE.load(Relaxed);
    let table = KeyTable::new(100_000);
    for i in 0..100_000u32 {
        table.check(format!("api-key-{i:08}").as_bytes(), &gcra, 1);
    }
    let after = LIVE.load(Relaxed);
    println!(
        "rate limit table bytes per key (100,000 keys of 16 bytes): {}",
        (after - before) / 100_000
    );
    drop(table);
}

criterion_group!(benches, balance, outliers, protections);

fn main() {
    bytes_per_key();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
