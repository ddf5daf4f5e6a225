//! The demo origin's capacity mode (`seawall origin --slots N --service-time T`): at most N
//! requests are served at once, each taking T; the others wait inside the origin, first come first
//! served, so past its capacity (N / T requests a second) its latency rises for every request
//! alike — an application whose database became the bottleneck. `POST /_origin/service-time?ms=`
//! changes T while it runs (the "database suddenly slow" drill); `GET /_origin/stats` tells what
//! it served and the most requests it held at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;

/// The origin's slots and what went through them.
pub struct Capacity {
    slots: usize,
    workers: Semaphore,
    service_us: AtomicU64,
    served: AtomicUsize,
    inside: AtomicUsize,
    peak: AtomicUsize,
}

impl Capacity {
    pub fn new(slots: usize, service: Duration) -> Capacity {
        let slots = slots.max(1);
        Capacity {
            slots,
            workers: Semaphore::new(slots),
            service_us: AtomicU64::new(service.as_micros() as u64),
            served: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Serves one request: waits for a slot, holds it for the service time. A request whose
    /// client leaves meanwhile stops counting as inside (and is not counted as served).
    pub async fn serve(&self) {
        let now = self.inside.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(now, Relaxed);
        let _inside = Inside(&self.inside);
        if let Ok(_slot) = self.workers.acquire().await {
            let us = self.service_us.load(Relaxed);
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        self.served.fetch_add(1, Relaxed);
    }

    /// Sets the service time of the requests that start from now.
    pub fn set_service_time(&self, service: Duration) {
        self.service_us.store(service.as_micros() as u64, Relaxed);
    }

    /// What it served, holds now and held at most, as JSON; `reset` starts the peak again.
    pub fn stats(&self, reset: bool) -> String {
        let service_us = self.service_us.load(Relaxed);
        let peak = if reset {
            self.peak.swap(self.inside.load(Relaxed), Relaxed)
        } else {
            self.peak.load(Relaxed)
        };
        serde_json::json!({
            "slots": self.slots,
            "service_ms": service_us as f64 / 1000.0,
            "capacity_per_second": self.slots as f64 * 1e6 / service_us.max(1) as f64,
            "served": self.served.load(Relaxed),
            "inside": self.inside.load(Relaxed),
            "peak_inside": peak,
        })
        .to_string()
    }
}

/// Counts a request out of the origin however its future ends.
struct Inside<'a>(&'a AtomicUsize);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
