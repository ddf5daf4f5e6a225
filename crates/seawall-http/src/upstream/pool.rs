//! Per-worker upstream connections: keep-alive pools and in-flight counts, indexed by server id.
//!
//! Each worker thread owns one [`WorkerPools`] (behind an `Rc`, no locks): a request checks out an
//! idle HTTP/1.1 connection to its server or opens a new one, and the response body puts it back
//! when the upstream's answer has been read to the end. Connections are hyper's low-level
//! `client::conn::http1`, driven by a task on the same thread, for requests served by hyper; the
//! HTTP/1.1 engine (`crate::h1`) keeps [`RawConn`]s of its own, which it drives itself.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::metrics::Registry;
use crate::timer::LazyTimer;

/// The sending half of an upstream connection, with the timer that bounds each exchange on it.
pub struct UpstreamSender {
    send: SendRequest<RequestBody>,
    /// Reused across requests; see [`LazyTimer`] for why that is cheaper than a timeout each.
    timer: LazyTimer,
}

/// What one exchange on an upstream connection came to.
pub type Exchange = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>;

impl UpstreamSender {
    fn new(send: SendRequest<RequestBody>) -> Self {
        UpstreamSender { send, timer: LazyTimer::new(Instant::now() + Duration::from_secs(3600)) }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Whether the connection can take a request now.
    pub fn is_ready(&self) -> bool {
        self.send.is_ready()
    }

    /// Waits until the connection can take a request (an error means it closed).
    pub async fn ready(&mut self) -> hyper::Result<()> {
        self.send.ready().await
    }

    /// Sends `request` and waits at most `timeout` for the head of the answer; `None` when the
    /// time ran out.
    pub async fn send_within(
        &mut self,
        request: Request<RequestBody>,
        timeout: Duration,
    ) -> Option<Exchange> {
        let UpstreamSender { send, timer } = self;
        timer.set(Instant::now() + timeout);
        let mut exchange = std::pin::pin!(send.try_send_request(request));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            timer.poll_expired(cx).map(|()| None)
        })
        .await
    }
}

struct Idle {
    sender: UpstreamSender,
    expires_ms: u64,
}

/// An upstream connection of the HTTP/1.1 engine: the socket and its read buffer.
pub struct RawConn {
    pub stream: TcpStream,
    pub buf: bytes::BytesMut,
}

/// Read buffer of a raw upstream connection; it grows for a larger response head.
const RAW_BUFFER: usize = 16 * 1024;

impl RawConn {
    fn new(stream: TcpStream) -> Self {
        RawConn { stream, buf: bytes::BytesMut::with_capacity(RAW_BUFFER) }
    }

    /// Whether an idle connection can carry a request: the server has neither closed it nor sent
    /// anything unasked. Costs a system call only when the socket has signalled readiness.
    fn still_open(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

struct RawIdle {
    conn: RawConn,
    expires_ms: u64,
}

#[derive(Default)]
struct ServerLocal {
    idle: Vec<Idle>,
    raw_idle: Vec<RawIdle>,
    inflight: u32,
}

/// One worker's connections and in-flight counts for every upstream server.
pub struct WorkerPools {
    servers: RefCell<Vec<ServerLocal>>,
    registry: Arc<Registry>,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl WorkerPools {
    /// Empty pools for one worker.
    pub fn new(registry: Arc<Registry>) -> Self {
        WorkerPools { servers: RefCell::new(Vec::new()), registry }
    }

    fn with<R>(&self, id: usize, f: impl FnOnce(&mut ServerLocal) -> R) -> R {
        let mut servers = self.servers.borrow_mut();
        if servers.len() <= id {
            servers.resize_with(id + 1, ServerLocal::default);
        }
        f(&mut servers[id])
    }

    /// This worker's in-flight requests to server `id`.
    pub fn inflight(&self, id: usize) -> u32 {
        self.servers.borrow().get(id).map_or(0, |s| s.inflight)
    }

    /// A request to server `id` starts.
    pub fn begin(&self, id: usize) {
        self.with(id, |s| s.inflight += 1);
    }

    /// A request to server `id` is over.
    pub fn end(&self, id: usize) {
        self.with(id, |s| s.inflight = s.inflight.saturating_sub(1));
    }

    /// An idle connection to server `id` that is still open, newest first.
    pub fn checkout(&self, id: usize, now_ms: u64) -> Option<UpstreamSender> {
        self.with(id, |s| {
            while let Some(idle) = s.idle.pop() {
                if idle.expires_ms > now_ms && !idle.sender.is_closed() {
                    return Some(idle.sender);
                }
            }
            None
        })
    }

    /// Returns a connection whose last exchange is complete; dropped when the pool is full.
    pub fn checkin(&self, id: usize, sender: UpstreamSender, max_idle: usize, expires_ms: u64) {
        if sender.is_closed() || max_idle == 0 {
            return;
        }
        self.with(id, |s| {
            if s.idle.len() < max_idle {
                s.idle.push(Idle { sender, expires_ms });
            }
        });
    }

    /// An idle raw connection to server `id` that is still open, newest first.
    pub fn checkout_raw(&self, id: usize, now_ms: u64) -> Option<RawConn> {
        self.with(id, |s| {
            while let Some(idle) = s.raw_idle.pop() {
                if idle.expires_ms > now_ms && idle.conn.still_open() {
                    let mut conn = idle.conn;
                    conn.buf.reserve(RAW_BUFFER);
                    return Some(conn);
                }
            }
            None
        })
    }

    /// Returns a raw connection whose last exchange is complete; dropped when the pool is full.
    pub fn checkin_raw(&self, id: usize, mut conn: RawConn, max_idle: usize, expires_ms: u64) {
        // An idle connection holds no buffer: a crisis can leave many of them in the pools.
        conn.buf = bytes::BytesMut::new();
        self.with(id, |s| {
            if s.raw_idle.len() < max_idle {
                s.raw_idle.push(RawIdle { conn, expires_ms });
            }
        });
    }

    /// Opens a new raw connection to `address` for the HTTP/1.1 engine.
    pub async fn connect_raw(
        &self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<RawConn, ConnectError> {
        Ok(RawConn::new(self.open(address, timeout).await?))
    }

    /// Opens a TCP connection to an upstream server, counted in the registry.
    async fn open(
        &self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        stream.set_nodelay(true)?;
        self.registry.upstream_connects.add(1);
        Ok(stream)
    }

    /// Closes idle connections that expired or that the server closed.
    pub fn sweep(&self, now_ms: u64) {
        for s in self.servers.borrow_mut().iter_mut() {
            s.idle.retain(|i| i.expires_ms > now_ms && !i.sender.is_closed());
            s.raw_idle.retain(|i| i.expires_ms > now_ms && i.conn.still_open());
        }
    }

    /// Opens a new HTTP/1.1 connection to `address`; its driver runs on this worker's thread.
    pub async fn connect(
        &self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<UpstreamSender, ConnectError> {
        let stream = self.open(address, timeout).await?;
        let (send, conn) = Builder::new().handshake(TokioIo::new(stream)).await?;
        let sender = UpstreamSender::new(send);
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Counts a request to a server as in flight (for least-request balancing) until dropped.
pub struct Inflight {
    pools: Rc<WorkerPools>,
    server_id: usize,
}

impl Inflight {
    /// A request to server `server_id` starts.
    pub fn begin(pools: &Rc<WorkerPools>, server_id: usize) -> Self {
        pools.begin(server_id);
        Inflight { pools: Rc::clone(pools), server_id }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.pools.end(self.server_id);
    }
}

/// Hands a connection back to its worker's pool once the response has been read to the end. A
/// connection not handed back by [`PoolReturn::reuse`] is dropped with the return, which closes
/// it: its response was not read to the end, so its state is unknown.
pub struct PoolReturn {
    pub pools: Rc<WorkerPools>,
    pub server_id: usize,
    pub sender: Option<UpstreamSender>,
    pub max_idle: usize,
    pub idle_timeout_ms: u64,
    /// The request counts against the server until the response is done.
    pub inflight: Inflight,
}

impl PoolReturn {
    /// The exchange finished cleanly: the connection may serve another request.
    pub fn reuse(&mut self) {
        if let Some(mut sender) = self.sender.take() {
            let expires = seawall_core::clock::now_ms() + self.idle_timeout_ms;
            if sender.is_ready() {
                self.pools.checkin(self.server_id, sender, self.max_idle, expires);
            } else if !sender.is_closed() {
                // The connection is still finishing the exchange (e.g. the upstream answered
                // before reading the whole request body): return it once it says it is ready.
                let (pools, id, max_idle) = (self.pools.clone(), self.server_id, self.max_idle);
                tokio::task::spawn_local(async move {
                    let ready = tokio::time::timeout(Duration::from_secs(5), sender.ready()).await;
                    if matches!(ready, Ok(Ok(()))) {
                        pools.checkin(id, sender, max_idle, expires);
                    }
                });
            }
        }
    }
}
