//! A queue's destination for tests: a real HTTP server that records every call (when, what) and
//! answers from a script (status and `Retry-After`), then with a default status.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One call the destination received.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What it was answered.
    pub status: u16,
}

impl Call {
    pub fn key(&self) -> &str {
        self.headers.get("idempotency-key").map_or("", |v| v.to_str().unwrap_or(""))
    }
}

/// A scripted answer: status and `Retry-After`.
type Scripted = (u16, Option<&'static str>);

#[derive(Clone)]
pub struct Destination {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    default_status: Arc<AtomicU16>,
    /// Woken at every call.
    pub called: Arc<tokio::sync::Notify>,
}

impl Destination {
    pub async fn start() -> Destination {
        Destination::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_at(addr: SocketAddr) -> Destination {
        let listener = TcpListener::bind(addr).await.unwrap();
        let d = Destination {
            addr: listener.local_addr().unwrap(),
            calls: Arc::default(),
            script: Arc::default(),
            default_status: Arc::new(AtomicU16::new(200)),
            called: Arc::default(),
        };
        let server = d.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let d = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| d.clone().answer(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        d
    }

    async fn answer(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let (status, retry_after) = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or((self.default_status.load(SeqCst), None));
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            headers: parts.headers,
            body,
            status,
        });
        self.called.notify_waiters();
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(after) = retry_after {
            r.headers_mut().insert("retry-after", after.parse().unwrap());
        }
        Ok(r)
    }

    /// The next calls are answered these, in order.
    pub fn script(&self, answers: &[Scripted]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }

    /// Calls past the script are answered `status`.
    pub fn answer_with(&self, status: u16) {
        self.default_status.store(status, SeqCst);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The idempotency keys of the calls answered 2xx.
    pub fn delivered(&self) -> std::collections::HashSet<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| (200..300).contains(&c.status))
            .map(|c| c.key().to_string())
            .collect()
    }
}
