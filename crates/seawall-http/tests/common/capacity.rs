//! An origin of limited capacity: `slots` requests served at once, each taking the service time;
//! the others wait inside it, first come first served — so, past its capacity, its latency rises
//! for everyone, the important and the unimportant alike. It counts what it served and the most
//! requests it held at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::next_head;

#[derive(Clone)]
pub struct CapacityOrigin {
    pub addr: SocketAddr,
    pub slots: usize,
    /// Each request's service time, in ms (may change while it runs).
    pub service_ms: Arc<AtomicU64>,
    pub served: Arc<AtomicUsize>,
    /// Requests inside now (served or waiting), and the most at once.
    pub inside: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
}

impl CapacityOrigin {
    pub async fn start(slots: usize, service: Duration) -> CapacityOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = CapacityOrigin {
            addr: listener.local_addr().unwrap(),
            slots,
            service_ms: Arc::new(AtomicU64::new(service.as_millis() as u64)),
            served: Arc::default(),
            inside: Arc::default(),
            peak: Arc::default(),
        };
        let workers = Arc::new(Semaphore::new(slots));
        let o = origin.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (o, workers) = (o.clone(), Arc::clone(&workers));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while next_head(&mut stream, &mut buf).await.is_some() {
                        let now = o.inside.fetch_add(1, SeqCst) + 1;
                        o.peak.fetch_max(now, SeqCst);
                        {
                            let _slot = workers.acquire().await.unwrap();
                            let ms = o.service_ms.load(SeqCst);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        o.inside.fetch_sub(1, SeqCst);
                        o.served.fetch_add(1, SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        origin
    }

    /// Requests per second it serves at most.
    pub fn capacity(&self) -> f64 {
        self.slots as f64 * 1000.0 / self.service_ms.load(SeqCst) as f64
    }
}
