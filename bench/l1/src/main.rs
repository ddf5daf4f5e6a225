//! The hit path of L1's two candidates, as Seawall uses it: a text key, an `Arc`'d answer of
//! 1 KiB, entries weighed by bytes, lookups from 2 threads (Seawall's workers) over a working set
//! that fits. Prints ns per hit for each, median of 5 runs.
//!
//! `cargo run --release --manifest-path bench/l1/Cargo.toml`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

const ENTRIES: usize = 10_000;
const LOOKUPS: usize = 2_000_000;
const THREADS: usize = 2;
const CAPACITY: u64 = 64 << 20;

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Box<str>, Arc<Bytes>> for Weigh {
    fn weight(&self, key: &Box<str>, value: &Arc<Bytes>) -> u64 {
        (key.len() + value.len() + 256) as u64
    }
}

fn keys() -> Vec<String> {
    (0..ENTRIES).map(|i| format!("pages\nexample.com\n/products/{i}\n?color=red")).collect()
}

/// ns per lookup over `THREADS` threads, each walking the keys with its own stride.
fn run(get: impl Fn(&str) -> bool + Sync) -> f64 {
    let keys = keys();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (keys, get) = (&keys, &get);
            s.spawn(move || {
                let mut i = t * 7919;
                let mut found = 0usize;
                for _ in 0..LOOKUPS {
                    i = (i + 104_729) % ENTRIES;
                    // The key is built per request, as Seawall builds it from the request.
                    let key = keys[i].clone();
                    found += usize::from(get(&key));
                }
                assert_eq!(found, LOOKUPS);
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (LOOKUPS * THREADS) as f64 * THREADS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let body = Arc::new(Bytes::from(vec![b'x'; 1024]));
    let quick: quick_cache::sync::Cache<Box<str>, Arc<Bytes>, Weigh> =
        quick_cache::sync::Cache::with_weighter(ENTRIES, CAPACITY, Weigh);
    let moka: moka::sync::Cache<Box<str>, Arc<Bytes>> = moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .weigher(|k: &Box<str>, v: &Arc<Bytes>| (k.len() + v.len() + 256) as u32)
        .build();
    for key in keys() {
        quick.insert(key.clone().into(), Arc::clone(&body));
        moka.insert(key.into(), Arc::clone(&body));
    }
    moka.run_pending_tasks();
    let mut q = Vec::new();
    let mut m = Vec::new();
    for _ in 0..5 {
        q.push(run(|k| quick.get(k).is_some()));
        m.push(run(|k| moka.get(k).is_some()));
    }
    println!("quick_cache: {:.0} ns per hit (CPU time over {THREADS} threads)", median(q));
    println!("moka:        {:.0} ns per hit (CPU time over {THREADS} threads)", median(m));
}
