//! Test fixtures: a real origin server, a gateway built from TOML, and small HTTP clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod capacity;
mod destination;
mod engines;
mod gated;
mod jobs;
mod provider;
mod redis;
mod tls;
#[allow(unused_imports)]
pub use capacity::*;
#[allow(unused_imports)]
pub use destination::*;
#[allow(unused_imports)]
pub use engines::*;
#[allow(unused_imports)]
pub use gated::*;
#[allow(unused_imports)]
pub use jobs::*;
#[allow(unused_imports)]
pub use provider::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use tls::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use seawall_http::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A generated body of `remaining` bytes, produced in 64 KiB chunks without holding it.
pub struct Generated {
    pub remaining: u64,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n as usize])))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A real HTTP origin with switches for health and failure.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    pub failing: Arc<AtomicBool>,
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_at("127.0.0.1:0".parse().unwrap()).await.unwrap()
    }

    /// An origin listening on `addr` (another loopback address than 127.0.0.1, a given port).
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = TcpListener::bind(addr).await?;
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            failing: Arc::default(),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let o = o.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(o.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(origin)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn answer(o: Origin, mut req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let status =
            if o.healthy.load(SeqCst) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return Ok(reply(&o, status, Full::new(Bytes::from_static(b"health")).boxed()));
    }
    o.hits.fetch_add(1, SeqCst);
    if o.failing.load(SeqCst) {
        return Ok(reply(
            &o,
            StatusCode::INTERNAL_SERVER_ERROR,
            Full::new(Bytes::from_static(b"boom")).boxed(),
        ));
    }
    let body: OriginBody = match path.as_str() {
        // `/echo/...` too: what a rewritten path arrived as.
        p if p == "/echo" || p.starts_with("/echo/") => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let json = serde_json::json!({"method": req.method().as_str(), "uri": req.uri().to_string(), "headers": headers});
            Full::new(Bytes::from(json.to_string())).boxed()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
            Full::new(Bytes::from_static(b"slow")).boxed()
        }
        "/bytes" => Generated { remaining: query(&req, "n").unwrap_or(0) }.boxed(),
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Full::new(Bytes::from(total.to_string())).boxed()
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = reply(&o, StatusCode::SWITCHING_PROTOCOLS, Full::new(Bytes::new()).boxed());
            r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut().insert("connection", "upgrade".parse().unwrap());
            return Ok(r);
        }
        // An answer whose caching fields the query sets: `cc` (Cache-Control), `etag`, `vary`,
        // `lm` (Last-Modified), `cookie=1` (a Set-Cookie), `rid` (an X-Request-Id of its own); its
        // body names the hit it was.
        "/cache" => {
            let n = o.hits.load(SeqCst);
            // `slow_after=N`: every hit after the Nth takes 3 s.
            if query(&req, "slow_after").is_some_and(|after| n as u64 > after) {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut r =
                reply(&o, StatusCode::OK, Full::new(Bytes::from(format!("answer {n}"))).boxed());
            let pairs: Vec<(String, String)> = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            for (k, v) in pairs {
                let name = match k.as_str() {
                    "cc" => "cache-control",
                    "etag" => "etag",
                    "vary" => "vary",
                    "lm" => "last-modified",
                    "cookie" => "set-cookie",
                    "rid" => "x-request-id",
                    _ => continue,
                };
                let v = v.replace("%22", "\"").replace("%20", " ");
                r.headers_mut().append(name, v.parse().unwrap());
            }
            // A conditional request whose tag matches gets 304, with the same fields.
            let etag = r.headers().get("etag").cloned();
            if etag.is_some() && req.headers().get("if-none-match") == etag.as_ref() {
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                *r.body_mut() = Full::new(Bytes::new()).boxed();
            }
            return Ok(r);
        }
        p if p.starts_with("/status/") => {
            let code: u16 = p["/status/".len()..].parse().unwrap_or(400);
            return Ok(reply(
                &o,
                StatusCode::from_u16(code).unwrap(),
                Full::new(Bytes::new()).boxed(),
            ));
        }
        _ => Full::new(Bytes::from(format!("hello from {}", o.addr.port()))).boxed(),
    };
    Ok(reply(&o, StatusCode::OK, body))
}

fn reply(o: &Origin, status: StatusCode, body: OriginBody) -> Response<OriginBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert("x-origin", o.addr.port().into());
    r.headers_mut().insert("proxy-secret", "must-not-leak".parse().unwrap());
    r
}

/// Builds a configuration listening on ephemeral ports with two workers.
pub fn config(body: &str) -> seawall_config::Config {
    config_with_server("", body)
}

/// Like [`config`], with extra `[server]` keys. The CPU does not drive overload levels unless
/// `body` has an `[overload]` table of its own: tests running side by side keep the machine busy.
pub fn config_with_server(server: &str, body: &str) -> seawall_config::Config {
    let quiet = if body.contains("[overload]") { "" } else { "[overload]\ncpu = \"off\"\n" };
    let src = format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\n{server}\n{quiet}{body}");
    seawall_config::parse(&src, "test.toml").unwrap_or_else(|e| panic!("{e}\n{src}"))
}

/// A single-upstream, catch-all configuration in front of `servers`.
pub fn simple(servers: &[&Origin], upstream_extra: &str) -> seawall_config::Config {
    let list: Vec<String> = servers.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    config(&format!(
        "[upstreams.app]\nservers = [{}]\n{upstream_extra}\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        list.join(", ")
    ))
}

pub async fn start(config: seawall_config::Config) -> Gateway {
    Gateway::start(config, None).await.unwrap()
}

/// A collected response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Answer
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    collect(response).await
}

pub async fn collect(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub fn request(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "test.local")
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, request(path).body(Full::new(Bytes::new())).unwrap()).await
}

/// Writes raw bytes and reads until the server closes (or 10 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn admin(gw: &Gateway, path: &str) -> Answer {
    get(gw.admin_addr(), path).await
}

/// `POST` to the admin API, without a body (the tests' gateways have no admin token).
pub async fn admin_post(gw: &Gateway, path: &str) -> Answer {
    let req = request(path).method("POST").body(Full::new(Bytes::new())).unwrap();
    send(gw.admin_addr(), req).await
}

/// Polls `check` every 10 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `upstreams[0].servers[i]` entry of `/api/v1/state`.
pub async fn server_state(gw: &Gateway, i: usize) -> serde_json::Value {
    admin(gw, "/api/v1/state").await.json()["upstreams"][0]["servers"][i].clone()
}

/// A metric's value from `/metrics` (0 when absent).
pub async fn metric(gw: &Gateway, line_prefix: &str) -> f64 {
    let text = admin(gw, "/metrics").await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}
