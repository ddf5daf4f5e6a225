//! Clients for both engines: hyper over HTTP/1.1 (Seawall's own engine) or over h2c (the hyper
//! engine), with small request bodies, bounded waits and collected answers. A behaviour test
//! loops over [`ENGINES`] to run through both.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Answer;

/// Awaits `fut`; the test fails (instead of hanging) when it takes longer than `secs`.
pub async fn bounded<F: Future>(secs: f64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs_f64(secs), fut).await {
        Ok(out) => out,
        Err(_) => panic!("not within {secs} s: {what}"),
    }
}

pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A request body fed piece by piece through a channel (a slow or stalling uploader).
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|piece| piece.map(|b| Ok(Frame::data(b))))
    }
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

/// The engine a request reaches: Seawall's HTTP/1.1 engine, or hyper through h2c.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Http1,
    H2c,
}

pub const ENGINES: [Engine; 2] = [Engine::Http1, Engine::H2c];

impl Engine {
    pub fn request(self, method: &str, path: &str) -> http::request::Builder {
        match self {
            Engine::Http1 => {
                Request::builder().method(method).uri(path).header("host", "test.local")
            }
            Engine::H2c => {
                Request::builder().method(method).uri(format!("http://test.local{path}"))
            }
        }
    }

    /// A request to `host` (the `Host` field, or the `:authority` on HTTP/2).
    pub fn request_at(self, host: &str, method: &str, path: &str) -> http::request::Builder {
        match self {
            Engine::Http1 => Request::builder().method(method).uri(path).header("host", host),
            Engine::H2c => Request::builder().method(method).uri(format!("http://{host}{path}")),
        }
    }

    pub fn get(self, path: &str) -> Request<TestBody> {
        self.request("GET", path).body(empty()).unwrap()
    }
}

pub enum Sender {
    Http1(http1::SendRequest<TestBody>),
    H2c(http2::SendRequest<TestBody>),
}

/// A hyper client connection to the gateway. [`Client::close`] drops the connection.
pub struct Client {
    pub sender: Sender,
    pub task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(engine: Engine, addr: SocketAddr) -> Client {
        let stream = bounded(5.0, "connecting", TcpStream::connect(addr)).await.unwrap();
        Client::over(engine, stream).await
    }

    pub async fn over<S>(engine: Engine, stream: S) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let io = TokioIo::new(stream);
        match engine {
            Engine::Http1 => {
                let (sender, conn) = http1::handshake(io).await.unwrap();
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Client { sender: Sender::Http1(sender), task }
            }
            Engine::H2c => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Client { sender: Sender::H2c(sender), task }
            }
        }
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2c(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// A second handle on an h2c connection (to send from another task).
    pub fn h2(&self) -> http2::SendRequest<TestBody> {
        match &self.sender {
            Sender::H2c(s) => s.clone(),
            Sender::Http1(_) => panic!("not an h2c client"),
        }
    }

    /// Drops the connection (the socket closes).
    pub fn close(self) {
        self.task.abort();
    }
}

/// The collected answer, or why there is none (an error from the connection or the body).
pub async fn try_collect(
    response: Response<Incoming>,
) -> Result<(Answer, Option<HeaderMap>), String> {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body: {e:?}"))?;
    let trailers = collected.trailers().cloned();
    let answer =
        Answer { status: parts.status, headers: parts.headers, body: lossy(&collected.to_bytes()) };
    Ok((answer, trailers))
}

/// One request through `engine` on a new connection: the answer, or why there is none.
pub async fn try_ask(
    engine: Engine,
    addr: SocketAddr,
    req: Request<TestBody>,
) -> Result<Answer, String> {
    bounded(10.0, "an answer", async move {
        let mut client = Client::connect(engine, addr).await;
        let response = client.send(req).await.map_err(|e| format!("{e:?}"))?;
        Ok(try_collect(response).await?.0)
    })
    .await
}

/// A GET of `path` with `headers` through `engine`.
pub async fn get_with(
    engine: Engine,
    gw: &seawall_http::Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = engine.request("GET", path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await
}

pub async fn ask(engine: Engine, addr: SocketAddr, req: Request<TestBody>) -> Answer {
    try_ask(engine, addr, req).await.unwrap_or_else(|e| panic!("{engine:?}: no answer: {e}"))
}

/// The `x-origin` header of the answer to `req` on `client`.
pub async fn origin_header(client: &mut Client, req: Request<TestBody>) -> String {
    let response = bounded(5.0, "an answer", client.send(req)).await.unwrap();
    try_collect(response).await.unwrap().0.header("x-origin").to_string()
}
