//! Micro-benchmarks of the policy primitives on the request path (results: bench/results/core.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use seawall_core::balance::{least_request, HashRing, RoundRobin};
use seawall_core::ejection::{EjectionPolicy, Outlier};
use seawall_core::hash::stable_hash;
use seawall_core::health::HealthCounter;
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

criterion_group!(benches, balance, outliers);
criterion_main!(benches);
