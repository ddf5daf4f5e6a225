//! Storage acknowledgements per second through [`seawall_queue::Queue::enqueue`]: `producers`
//! tasks each store a ~300-byte job and wait for its acknowledgement (durable: fsync'd for the
//! embedded store, `appendfsync` as Redis is set for Redis), in a loop. Used by
//! `bench/queue.sh`.
//!
//! `cargo run --release -p seawall-queue --example acks -- embedded DIR [producers] [seconds]`
//! `cargo run --release -p seawall-queue --example acks -- redis redis://127.0.0.1:6379 [producers] [seconds]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seawall_config::{Queue as QueueConfig, QueueBackend, Topic};
use seawall_queue::{Queue, Request};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (kind, place) = (args[1].as_str(), args[2].clone());
    let producers: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(4).and_then(|n| n.parse().ok()).unwrap_or(10);
    let backend = match kind {
        "embedded" => QueueBackend::Embedded { data_dir: place.into() },
        _ => QueueBackend::Redis {
            url: place,
            prefix: format!("seawall-bench:{}:", std::process::id()),
        },
    };
    let config = QueueConfig {
        backend,
        jobs_path: "/jobs/".into(),
        jobs_rate_limit: None,
        max_jobs: u64::MAX,
        max_bytes: u64::MAX,
        max_body: 1 << 20,
        headers: Vec::new(),
        keep_finished: Duration::from_secs(3600),
        lease: Duration::from_secs(30),
        retry_after: Duration::from_secs(5),
        commit_delay: Duration::from_micros(
            std::env::var("COMMIT_DELAY_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        ),
        topics: vec![Topic {
            name: "bench".into(),
            deliver_to: 0,
            via_route: None,
            max_jobs: u64::MAX,
            max_bytes: u64::MAX,
            concurrency: 1,
            rate: None,
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            paused: true,
        }],
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let queue = Queue::open(&config).await.expect("the queue opens");
        let (acks, latency_us, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let (queue, acks, latency_us, stop) =
                (Arc::clone(&queue), Arc::clone(&acks), Arc::clone(&latency_us), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Relaxed) {
                    let request = Request {
                        method: "POST".into(),
                        target: "/emails/send".into(),
                        headers: vec![("content-type".into(), b"application/json".to_vec())],
                        body: vec![b'x'; 240],
                    };
                    let started = Instant::now();
                    queue.enqueue("bench", request).await.expect("stored");
                    let took = started.elapsed().as_micros() as u64;
                    latency_us.fetch_add(took, Relaxed);
                    acks.fetch_add(1, Relaxed);
                    seen.push(took);
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a0, l0, t0) = (acks.load(Relaxed), latency_us.load(Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (a1, l1, elapsed) = (acks.load(Relaxed), latency_us.load(Relaxed), t0.elapsed());
        stop.store(true, Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort_unstable();
        let at = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
        let tail = format!("\tp99_ack_us={}\tmax_ack_us={}", at(0.99), all.last().copied().unwrap_or(0));
        let n = (a1 - a0).max(1);
        let batches = match &queue.backend {
            seawall_queue::Backend::Embedded(store) => {
                let commits = store.stats.commits.load(Relaxed).max(1);
                format!(
                    "\tmean_batch={:.1}\tmean_commit_us={:.0}",
                    store.stats.writes.load(Relaxed) as f64 / commits as f64,
                    store.stats.micros.load(Relaxed) as f64 / commits as f64
                )
            }
            seawall_queue::Backend::Redis(_) => String::new(),
        };
        println!(
            "RESULT\t{kind}\tacks_per_s={:.0}\tmean_ack_us={:.0}\tproducers={producers}{batches}{tail}",
            n as f64 / elapsed.as_secs_f64(),
            (l1 - l0) as f64 / n as f64
        );
    });
}
