//! Per-worker upstream connections: keep-alive pools sized by demand, and in-flight counts,
//! indexed by server slot.
//!
//! Each worker thread owns one [`WorkerPools`] (behind an `Rc`, no locks): a request checks out an
//! idle connection to its server or opens a new one, and the proxy puts it back when the
//! upstream's answer has been read to the end and the connection is known to be clean. Both
//! engines use the same raw HTTP/1.1 connections ([`RawConn`]), driven by the task that serves the
//! request — no task or channel per connection.
//!
//! A pool keeps as many connections as its server's busiest moment of the last five seconds
//! needed on this worker (the most requests in flight at once), so that under steady load, at any
//! concurrency, a request finds a connection its predecessor left: a fixed cap closes every
//! connection beyond it when its request ends and opens a new one for the next request. When
//! demand falls, the surplus is closed half at a time, once a second (bursts that come back within
//! five seconds find their connections); `pool.max_idle`, when set, caps the pool whatever the
//! demand.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::stream::UpstreamStream;
use super::ServerState;
use crate::fields::Field;

/// Read buffer of a raw upstream connection; it grows for a larger response head.
pub const READ_BUFFER: usize = 16 * 1024;

/// An upstream connection: the socket, its read buffer and the scratch space of its responses.
pub struct RawConn {
    pub stream: UpstreamStream,
    pub buf: BytesMut,
    /// Header fields of the response being read (kept with the connection to spare an
    /// allocation per response).
    pub fields: Vec<Field>,
    /// The last answer had no body (HEAD, 204, 304): a broken server may still send one, so the
    /// socket is checked with a system call before the next request is written.
    pub check_before_reuse: bool,
    /// The server, whose connection gauges count this connection until it closes.
    server: Arc<ServerState>,
}

impl RawConn {
    fn new(stream: UpstreamStream, server: &Arc<ServerState>) -> Self {
        server.metrics.connection(1);
        RawConn {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            fields: Vec::new(),
            check_before_reuse: false,
            server: Arc::clone(server),
        }
    }

    /// Whether an idle connection can carry a request: the server has neither closed it nor sent
    /// anything unasked. Without `thorough`, this trusts the runtime's readiness state (no system
    /// call unless the socket has signalled); with it, the socket itself is asked.
    fn is_clean(&mut self, thorough: bool) -> bool {
        self.stream.is_quiet(thorough || self.check_before_reuse)
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        self.server.metrics.connection(-1);
    }
}

struct Idle {
    conn: RawConn,
    expires_ms: u64,
}

/// One worker's state for one server slot.
#[derive(Default)]
struct ServerLocal {
    /// The key of the server this entry belongs to (a reused slot starts over).
    key: u64,
    /// Idle connections, the oldest first: the newest is taken first, so that a surplus ages
    /// at the front.
    idle: Vec<Idle>,
    inflight: u32,
    /// The most requests in flight at once since the last sweep, and in each of the seconds
    /// before it (a ring, `window` the oldest): what the pool is sized for.
    peak: u32,
    earlier_peaks: [u32; DEMAND_SECONDS - 1],
    window: usize,
}

/// How many seconds of demand a pool is sized for.
const DEMAND_SECONDS: usize = 5;

impl ServerLocal {
    /// Takes idle connections `range` out of the pool (they close when dropped).
    fn remove_idle(&mut self, range: std::ops::Range<usize>) {
        let Some(first) = self.idle.get(range.start) else { return };
        let server = Arc::clone(&first.conn.server);
        let removed = self.idle.drain(range).count();
        server.metrics.idle(-(removed as i64));
    }

    /// Closes expired connections, those the server closed, and half of the idle connections
    /// beyond what the last five seconds' demand needs (the oldest first).
    fn sweep(&mut self, now_ms: u64) {
        let mut gone = 0i64;
        let mut server = None;
        self.idle.retain_mut(|i| {
            let keep = i.expires_ms > now_ms && i.conn.is_clean(false);
            if !keep {
                gone += 1;
                server.get_or_insert_with(|| Arc::clone(&i.conn.server));
            }
            keep
        });
        if let Some(server) = server {
            server.metrics.idle(-gone);
        }
        let demand = self.earlier_peaks.iter().fold(self.peak, |a, &b| a.max(b));
        let wanted = demand.saturating_sub(self.inflight) as usize;
        let surplus = self.idle.len().saturating_sub(wanted);
        self.remove_idle(0..surplus.div_ceil(2));
        self.earlier_peaks[self.window] = self.peak;
        self.window = (self.window + 1) % self.earlier_peaks.len();
        self.peak = self.inflight;
    }
}

/// Read buffers kept for reuse per worker: idle connections hold none (a crisis can leave many
/// of them in the pools), and taking one back here spares an allocation per request.
const SPARE_BUFFERS: usize = 64;

/// One worker's connections and in-flight counts for every upstream server.
#[derive(Default)]
pub struct WorkerPools {
    servers: RefCell<Vec<ServerLocal>>,
    /// Read buffers of connections that went idle, for the next checkout.
    spare: RefCell<Vec<BytesMut>>,
    /// Checkouts since the last sweep: a worker with none lets its spare buffers go.
    checkouts: Cell<u64>,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed: the certificate is not trusted or not for this name, or the
    /// server does not speak TLS.
    #[error("TLS handshake with the upstream failed: {0}")]
    Tls(String),
}

impl WorkerPools {
    fn with<R>(&self, slot: usize, key: u64, f: impl FnOnce(&mut ServerLocal) -> R) -> R {
        let mut servers = self.servers.borrow_mut();
        if servers.len() <= slot {
            servers.resize_with(slot + 1, ServerLocal::default);
        }
        let local = &mut servers[slot];
        if local.key != key {
            local.remove_idle(0..local.idle.len());
            *local = ServerLocal { key, ..ServerLocal::default() };
        }
        f(local)
    }

    /// This worker's in-flight requests to `server`.
    pub fn inflight(&self, server: &ServerState) -> u32 {
        self.servers
            .borrow()
            .get(server.slot)
            .filter(|s| s.key == server.key)
            .map_or(0, |s| s.inflight)
    }

    /// An idle connection to `server` that is still clean, newest first. `thorough` asks each
    /// candidate's socket directly (for requests that must not land on a connection the server
    /// is closing: they cannot be retried).
    pub fn checkout(&self, server: &ServerState, now_ms: u64, thorough: bool) -> Option<RawConn> {
        let mut conn = self.with(server.slot, server.key, |s| {
            let mut taken = 0;
            let found = loop {
                let Some(mut idle) = s.idle.pop() else { break None };
                taken += 1;
                if idle.expires_ms > now_ms && idle.conn.is_clean(thorough) {
                    break Some(idle.conn);
                }
            };
            if taken > 0 {
                server.metrics.idle(-taken);
            }
            found
        })?;
        conn.buf = self.spare.borrow_mut().pop().unwrap_or_default();
        conn.buf.reserve(READ_BUFFER);
        self.checkouts.set(self.checkouts.get() + 1);
        Some(conn)
    }

    /// Returns a connection whose last exchange is complete; dropped (closed) when the pool
    /// holds `max_idle` connections already.
    pub fn checkin(
        &self,
        server: &ServerState,
        mut conn: RawConn,
        max_idle: Option<usize>,
        expires_ms: u64,
    ) {
        // An idle connection holds no buffer: a crisis can leave many of them in the pools. Its
        // buffer waits for the next checkout instead, a bounded number of them.
        let mut buf = std::mem::take(&mut conn.buf);
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            buf.clear();
            spare.push(buf);
        }
        drop(spare);
        if conn.check_before_reuse {
            // Acknowledge the answer at once: a server holding stray bytes back (Nagle's
            // algorithm waits for our delayed acknowledgement) sends them now, where the check
            // before reuse sees them, instead of after our next request.
            let _ = socket2::SockRef::from(conn.stream.tcp()).set_quickack(true);
        }
        self.with(server.slot, server.key, |s| {
            if max_idle.is_none_or(|max| s.idle.len() < max) {
                s.idle.push(Idle { conn, expires_ms });
                server.metrics.idle(1);
            }
        });
    }

    /// Opens a new connection to `server` (with its TLS handshake, when the upstream has
    /// `tls`), counted in its metrics; `timeout` bounds both.
    pub async fn connect(
        &self,
        server: &Arc<ServerState>,
        timeout: Duration,
    ) -> Result<RawConn, ConnectError> {
        let open = open_stream(server);
        let stream = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        Ok(RawConn::new(stream, server))
    }

    /// Once a second: closes idle connections that expired, that the server closed, that
    /// demand no longer needs, or whose server is no longer configured (`is_current(slot,
    /// key)` is false); lets the spare buffers go when the worker had no use for them since the
    /// last sweep.
    pub fn sweep(&self, now_ms: u64, is_current: impl Fn(usize, u64) -> bool) {
        for (slot, s) in self.servers.borrow_mut().iter_mut().enumerate() {
            if is_current(slot, s.key) {
                s.sweep(now_ms);
            } else {
                s.remove_idle(0..s.idle.len());
            }
        }
        // A quiet worker keeps no spare buffers (their memory goes back with the rest).
        if self.checkouts.replace(0) == 0 {
            self.spare.borrow_mut().clear();
        }
    }
}

/// Opens a connection to `server`: TCP, then its TLS handshake when the upstream has `tls`.
pub async fn open_stream(server: &ServerState) -> Result<UpstreamStream, ConnectError> {
    let stream = TcpStream::connect(server.address).await?;
    stream.set_nodelay(true)?;
    let Some(tls) = server.tls.load_full() else { return Ok(UpstreamStream::Plain(stream)) };
    let (connector, name) = tls.connect.as_ref().map_err(|e| ConnectError::Tls(e.clone()))?;
    match connector.connect(name.clone(), stream).await {
        Ok(stream) => Ok(UpstreamStream::Tls(Box::new(stream))),
        Err(e) => Err(ConnectError::Tls(e.to_string())),
    }
}

/// Counts a request to a server as in flight (for least-request balancing) until dropped.
pub struct Inflight {
    pools: Rc<WorkerPools>,
    slot: usize,
    key: u64,
}

impl Inflight {
    /// A request to `server` starts.
    pub fn begin(pools: &Rc<WorkerPools>, server: &ServerState) -> Self {
        pools.with(server.slot, server.key, |s| {
            s.inflight += 1;
            s.peak = s.peak.max(s.inflight);
        });
        Inflight { pools: Rc::clone(pools), slot: server.slot, key: server.key }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut servers = self.pools.servers.borrow_mut();
        if let Some(s) = servers.get_mut(self.slot).filter(|s| s.key == self.key) {
            s.inflight = s.inflight.saturating_sub(1);
        }
    }
}
