//! An origin that holds every request until the test lets it go: to hold requests in flight at
//! the upstream (pools, bulkheads) without timing. It counts connections and requests and keeps
//! the order in which request paths arrived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// An origin that holds every request until the test lets it go, and counts its connections.
#[derive(Clone)]
pub struct GatedOrigin {
    pub addr: SocketAddr,
    /// Requests that reached the origin.
    pub arrived: Arc<AtomicUsize>,
    /// Connections accepted, and open now.
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub gate: Arc<Semaphore>,
    /// The paths of the requests, in the order they arrived.
    pub paths: Arc<Mutex<Vec<String>>>,
}

impl GatedOrigin {
    pub async fn start() -> GatedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = GatedOrigin {
            addr: listener.local_addr().unwrap(),
            arrived: Arc::default(),
            accepted: Arc::default(),
            open: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            paths: Arc::default(),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                o.accepted.fetch_add(1, SeqCst);
                o.open.fetch_add(1, SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(head) = next_head(&mut stream, &mut buf).await {
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        o.paths.lock().unwrap().push(path);
                        o.arrived.fetch_add(1, SeqCst);
                        o.gate.acquire().await.unwrap().forget();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    o.open.fetch_sub(1, SeqCst);
                });
            }
        });
        origin
    }

    pub fn server(&self) -> String {
        format!("{{upstream=\"app\",server=\"{}\"", self.addr)
    }

    /// Lets `n` held requests go.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

/// The next request head on `stream` (bytes beyond it stay in `buf`); `None` once the client
/// closed. The test origins take bodiless GETs only: a head is one request.
pub async fn next_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(head)
}
