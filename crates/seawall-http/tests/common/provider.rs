//! A fake third-party API over TLS, as strict as a real one: it takes its API key from a header
//! (`x-api-key`) or the query (`key`), allows each key `limit` calls in any `window` and answers
//! 429 with `Retry-After` beyond, answers 401 to the keys it is told to refuse, and can be told
//! to fail (503) or to throttle one key whatever its use. It records every call it gets.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::tls::{tls_acceptor, Leaf};

static ENV: std::sync::Once = std::sync::Once::new();

/// Sets the API keys' environment variables, once per test binary: every test of a binary that
/// uses keys calls this first with the same list, before anything reads the environment (a
/// gateway's configuration, a name lookup), so no variable is set while another thread reads.
pub fn keys_in_env(keys: &[(&str, &str)]) {
    ENV.call_once(|| {
        for (name, value) in keys {
            std::env::set_var(name, value);
        }
    });
}

/// One call the provider got.
#[derive(Debug, Clone)]
pub struct Call {
    /// The key it carried (empty: none).
    pub key: String,
    /// Path and query, the key parameter removed.
    pub target: String,
    pub host: String,
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
struct Rules {
    refused: HashSet<String>,
    throttled: HashSet<String>,
    failing: bool,
}

/// The fake provider; clones share its state.
#[derive(Clone)]
pub struct Provider {
    pub addr: SocketAddr,
    pub name: &'static str,
    limit: usize,
    window: Duration,
    calls: Arc<Mutex<Vec<Call>>>,
    rules: Arc<Mutex<Rules>>,
}

impl Provider {
    /// A provider serving `leaf` over TLS, allowing each key `limit` calls per `window`.
    pub async fn start(
        name: &'static str,
        leaf: &Leaf,
        limit: usize,
        window: Duration,
    ) -> Provider {
        let acceptor = tls_acceptor(leaf, None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = Provider {
            addr: listener.local_addr().unwrap(),
            name,
            limit,
            window,
            calls: Arc::default(),
            rules: Arc::default(),
        };
        let p = provider.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, p) = (acceptor.clone(), p.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let p = p.clone();
                        async move { Ok::<_, Infallible>(p.answer(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        provider
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let now = Instant::now();
        let header_key = req.headers().get("x-api-key").map(|v| v.to_str().unwrap().to_string());
        let mut query_key = None;
        let mut kept = Vec::new();
        for param in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            match param.strip_prefix("key=") {
                Some(k) => query_key = Some(k.to_string()),
                None => kept.push(param),
            }
        }
        let key = header_key.or(query_key).unwrap_or_default();
        let mut target = req.uri().path().to_string();
        if !kept.is_empty() {
            target = format!("{target}?{}", kept.join("&"));
        }
        let host = req.headers().get("host").map_or("", |h| h.to_str().unwrap()).to_string();
        let mut calls = self.calls.lock().unwrap();
        let rules = self.rules.lock().unwrap();
        let recent = calls
            .iter()
            .filter(|c| c.key == key && c.status != 429 && now.duration_since(c.at) < self.window)
            .count();
        let status = if rules.failing {
            503
        } else if rules.refused.contains(&key) {
            401
        } else if rules.throttled.contains(&key) || recent >= self.limit {
            429
        } else {
            200
        };
        calls.push(Call { key, target: target.clone(), host, at: now, status });
        let body = format!("{} answered {target}", self.name);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if status == 429 {
            let after = self.window.as_secs().max(1).to_string();
            response.headers_mut().insert("retry-after", after.parse().unwrap());
        }
        response
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls by key.
    pub fn by_key(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for c in self.calls() {
            *counts.entry(c.key).or_insert(0) += 1;
        }
        counts
    }

    /// 429s it answered.
    pub fn throttled(&self) -> usize {
        self.calls().iter().filter(|c| c.status == 429).count()
    }

    /// The most calls any key made in any `window` (429s aside).
    pub fn busiest_window(&self) -> usize {
        let calls = self.calls();
        let mut most = 0;
        for (i, c) in calls.iter().enumerate() {
            let within = calls[i..]
                .iter()
                .filter(|d| {
                    d.key == c.key && d.status != 429 && d.at.duration_since(c.at) < self.window
                })
                .count();
            most = most.max(within);
        }
        most
    }

    /// Answers 401 to `key` from now on.
    pub fn refuse(&self, key: &str) {
        self.rules.lock().unwrap().refused.insert(key.to_string());
    }

    /// Accepts `key` again.
    pub fn unrefuse(&self, key: &str) {
        self.rules.lock().unwrap().refused.remove(key);
    }

    /// Answers 429 to `key` from now on, whatever its use.
    pub fn throttle(&self, key: &str) {
        self.rules.lock().unwrap().throttled.insert(key.to_string());
    }

    /// Answers 503 to everything (or stops).
    pub fn fail(&self, failing: bool) {
        self.rules.lock().unwrap().failing = failing;
    }

    /// `https://localhost:PORT` (the name its certificate is for).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}
