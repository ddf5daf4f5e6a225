//! The worker threads: listeners, connections, parked idle connections, and each worker's part in
//! the drain.
//!
//! Layout (decided for CPU per request, see `bench/`): one single-threaded tokio runtime per worker
//! thread, each with its own `SO_REUSEPORT` listener, its own upstream connection pools and its own
//! metric shards. A request never leaves the thread that accepted its connection, so there are no
//! cross-thread wake-ups and no shared locks on the request path. The control plane (admin API,
//! health checks, reloads, signals) runs on the runtime that started the
//! [`Gateway`](crate::Gateway).
//!
//! A connection is served by the HTTP/1 engine ([`crate::h1`]) or, when it opens with the HTTP/2
//! preface, by hyper ([`crate::h2`]); an idle HTTP/1 connection parks in its worker's lot. A
//! worker that serves clearly more connections than another hands new ones over ([`spread`]).

pub mod conn;
pub mod lot;
pub mod proxy_protocol;
pub mod redirect;
pub mod spread;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::h1;
use crate::h2::{self, io::ClientIo, Active};
use crate::metrics::set_worker_shard;
use crate::signal::LocalSignal;
use crate::state::{Phase, Shared};
use crate::worker::Worker;
use conn::ClientConn;
use lot::{Parked, ParkingLot};
use spread::{Handed, Spread};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot open the queue: {0}")]
    Queue(seawall_queue::StoreError),
}

/// Binds `workers` listeners to the same address with `SO_REUSEPORT` so the kernel spreads
/// connections across workers. With port 0, the first socket picks the port and the rest join it.
pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let err = |source| StartError::Listen { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        socket.set_reuse_address(true).map_err(err)?;
        socket.set_reuse_port(true).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        socket.set_nodelay(true).map_err(err)?;
        socket.bind(&addr.into()).map_err(err)?;
        socket.listen(4096).map_err(err)?;
        let listener: std::net::TcpListener = socket.into();
        if addr.port() == 0 {
            addr = listener.local_addr().map_err(err)?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Waits until the phase is `target`. Unlike holding `wait_for`'s guard, this releases the
/// channel's lock at once, so the control thread can move the phase on.
async fn reaches(rx: &mut watch::Receiver<Phase>, target: Phase) {
    let _ = rx.wait_for(|p| *p == target).await.map(drop);
}

/// Waits until the phase is no longer `current`.
async fn leaves(rx: &mut watch::Receiver<Phase>, current: Phase) {
    let _ = rx.wait_for(|p| *p != current).await.map(drop);
}

/// Runs hyper's HTTP/2 tasks on the worker's own thread.
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// What the server keeps per worker thread, beside the engines' [`Worker`].
struct Host {
    index: usize,
    worker: Rc<Worker>,
    /// This worker's idle (parked) client connections.
    lot: Rc<ParkingLot>,
    spread: Arc<Spread>,
    /// This worker's share of `max_connections`: a connection holds a permit while it is open.
    permits: Arc<Semaphore>,
}

/// How a connection comes to [`serve_connection`].
#[derive(Debug, Clone, Copy)]
struct Resumed {
    /// From the parking lot: it was HTTP/1 and has bytes waiting.
    resumed: bool,
    /// Accepted on the egress listener.
    egress: bool,
}

/// What a worker thread starts with.
pub(crate) struct WorkerStart {
    pub index: usize,
    pub listener: std::net::TcpListener,
    /// This worker's socket of `server.egress_listen`, when there is one.
    pub egress_listener: Option<std::net::TcpListener>,
    pub shared: Arc<Shared>,
    pub spread: Arc<Spread>,
    /// Connections other workers hand to this one.
    pub inbox: mpsc::UnboundedReceiver<Handed>,
}

/// Starts a worker on a thread of its own.
pub(crate) fn spawn_worker(start: WorkerStart) -> Result<std::thread::JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(format!("seawall-worker-{}", start.index))
        .spawn(move || run_worker(start))
        .map_err(StartError::Thread)
}

fn run_worker(start: WorkerStart) {
    let WorkerStart { index, listener, egress_listener, shared, spread, inbox } = start;
    set_worker_shard(index);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, worker = index, "cannot start worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, worker = index, "cannot register listener");
                return;
            }
        };
        let worker = Rc::new(Worker::new(Arc::clone(&shared), index));
        let lot = Rc::new(ParkingLot::new(Arc::clone(&shared.registry)));
        let permits = Arc::new(Semaphore::new(shared.connections_per_worker));
        let host = Rc::new(Host {
            index,
            worker: Rc::clone(&worker),
            lot: Rc::clone(&lot),
            spread,
            permits,
        });
        tokio::task::spawn_local(receive_handed(Rc::clone(&host), inbox, shared.phase.subscribe()));
        tokio::task::spawn_local(housekeeping(Rc::clone(&worker), shared.phase.subscribe()));
        let workers = shared.running.workers.max(1);
        let phase = shared.phase.subscribe();
        tokio::task::spawn_local(crate::queue::deliveries(
            Rc::clone(&worker),
            index,
            workers,
            phase,
        ));
        let lot_host = Rc::clone(&host);
        tokio::task::spawn_local(async move {
            let resume = |conn: Parked| {
                let Parked { stream, peer, permit, egress } = conn;
                let resumed = Resumed { resumed: true, egress };
                tokio::task::spawn_local(serve_connection(
                    Rc::clone(&lot_host),
                    stream,
                    peer,
                    permit,
                    resumed,
                ));
            };
            let close = |conn: Parked, expired: bool| {
                if expired {
                    lot_host.worker.shared.registry.idle_timeouts.add(1);
                }
                drop(conn);
                connection_closed(&lot_host.worker);
            };
            lot::run(Rc::clone(&lot_host.lot), &lot_host.worker.drain, resume, close).await;
        });
        let mut phase = shared.phase.subscribe();
        if let Some(egress) = egress_listener {
            match tokio::net::TcpListener::from_std(egress) {
                Ok(egress) => {
                    let (host, mut phase) = (Rc::clone(&host), shared.phase.subscribe());
                    tokio::task::spawn_local(async move {
                        accept_loop(&host, &egress, &mut phase, true).await;
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "cannot register egress listener");
                }
            }
        }
        accept_loop(&host, &listener, &mut phase, false).await;
        drop(listener);
        reaches(&mut phase, Phase::Stopped).await;
    });
    // Dropping the LocalSet here cancels whatever the drain did not finish.
}

/// Accepts connections on `listener` while the gateway runs; those of the egress listener
/// (`egress`) are served by the worker that accepted them, the others spread over the workers.
async fn accept_loop(
    host: &Rc<Host>,
    listener: &tokio::net::TcpListener,
    phase: &mut watch::Receiver<Phase>,
    egress: bool,
) {
    // A worker waits for a permit before it accepts; beyond its share, new connections wait in
    // the kernel's backlog.
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&host.permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = leaves(phase, Phase::Running) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = leaves(phase, Phase::Running) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let to = if egress {
                    host.spread.keep(host.index)
                } else {
                    host.spread.assign(host.index)
                };
                let stream =
                    if to == host.index { Some(stream) } else { hand_over(host, to, stream, peer) };
                if let Some(stream) = stream {
                    tokio::task::spawn_local(serve_connection(
                        Rc::clone(host),
                        ClientConn::Plain(stream),
                        peer,
                        permit,
                        Resumed { resumed: false, egress },
                    ));
                }
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Hands a connection this worker accepted to worker `to`; returns it when it is to be served
/// here after all (`to` is draining).
fn hand_over(host: &Host, to: usize, stream: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            // The socket could not leave this worker's poller: it is closed.
            tracing::warn!(error = %e, "cannot hand a connection over");
            host.spread.lost(to);
            return None;
        }
    };
    let handed = host.spread.hand_over(host.index, to, Handed { stream, peer }).err()?;
    match TcpStream::from_std(handed.stream) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "cannot register a connection");
            connection_closed(&host.worker);
            None
        }
    }
}

/// Serves the connections other workers hand to this one, each with a permit of this worker's
/// own share. When the gateway drains, those still on their way are closed, as those waiting in
/// the kernel's backlog are.
async fn receive_handed(
    host: Rc<Host>,
    mut inbox: mpsc::UnboundedReceiver<Handed>,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let handed = tokio::select! {
            h = inbox.recv() => match h { Some(h) => h, None => return },
            _ = leaves(&mut phase, Phase::Running) => break,
        };
        let permit = tokio::select! {
            p = Arc::clone(&host.permits).acquire_owned() => p.ok(),
            _ = leaves(&mut phase, Phase::Running) => None,
        };
        let Some(permit) = permit else {
            connection_closed(&host.worker);
            break;
        };
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => {
                tokio::task::spawn_local(serve_connection(
                    Rc::clone(&host),
                    ClientConn::Plain(stream),
                    handed.peer,
                    permit,
                    Resumed { resumed: false, egress: false },
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a handed connection");
                connection_closed(&host.worker);
            }
        }
    }
    inbox.close();
    while let Ok(handed) = inbox.try_recv() {
        drop(handed);
        connection_closed(&host.worker);
    }
}

/// What the client did while the connection had no session.
enum Wait {
    /// Bytes are ready; `http2` when they start with the HTTP/2 preface.
    Data { http2: bool },
    /// The client closed (or the socket failed).
    Closed,
    /// Nothing came within the header timeout.
    TimedOut,
    /// The gateway is draining.
    Draining,
}

/// Waits on the bare socket for the client's first bytes. No buffer is held meanwhile: `peek`
/// reads into a few bytes of this future's own state.
async fn wait_for_data(
    stream: &TcpStream,
    timeout: Duration,
    drain: &LocalSignal,
    allow_h2: bool,
) -> Wait {
    let mut head = [0u8; 3];
    let mut sleep = std::pin::pin!(tokio::time::sleep(timeout));
    let mut drained = std::pin::pin!(drain.wait());
    std::future::poll_fn(|cx| {
        let mut buf = tokio::io::ReadBuf::new(&mut head);
        match stream.poll_peek(cx, &mut buf) {
            // "PRI" starts the HTTP/2 connection preface (RFC 9113 §3.4) and no HTTP/1 method;
            // the HTTP/2 session checks the rest of the preface itself. A request already sent
            // is served even when the drain has begun (its answer closes the connection).
            Poll::Ready(Ok(n)) if n > 0 => {
                Poll::Ready(Wait::Data { http2: allow_h2 && head[..n] == *b"PRI" })
            }
            Poll::Ready(_) => Poll::Ready(Wait::Closed),
            Poll::Pending if drained.as_mut().poll(cx).is_ready() => Poll::Ready(Wait::Draining),
            Poll::Pending => sleep.as_mut().poll(cx).map(|()| Wait::TimedOut),
        }
    })
    .await
}

/// Waits, within `timeout`, until a TLS client sends request bytes (not only records without
/// data); false when it did not, left, or the gateway drains.
async fn first_bytes(stream: &mut ClientConn, timeout: Duration, drain: &LocalSignal) -> bool {
    let peek = std::future::poll_fn(|cx| crate::io::Transport::poll_peek(stream, cx));
    tokio::select! {
        r = tokio::time::timeout(timeout, peek) => matches!(r, Ok(Ok(n)) if n > 0),
        () = drain.wait() => false,
    }
}

/// Serves one client connection: a session (the HTTP/1 engine, or hyper's HTTP/2) runs while
/// requests come; an HTTP/1 connection that goes idle parks — its session ends and frees its
/// buffers, its socket goes to the worker's parking lot and this task ends — and the lot starts
/// a new task (`resumed`) when the client sends again. On a TLS listener the handshake runs once
/// the client's first bytes are there (a connection that never speaks costs no TLS state), and
/// ALPN chooses the engine. A connection to the egress listener is plain HTTP, without the PROXY
/// protocol.
async fn serve_connection(
    host: Rc<Host>,
    mut stream: ClientConn,
    mut peer: SocketAddr,
    mut permit: OwnedSemaphorePermit,
    how: Resumed,
) {
    let Resumed { mut resumed, egress } = how;
    let worker = &host.worker;
    let registry = &worker.shared.registry;
    if !resumed {
        // Counted open when it was assigned to this worker (see `spread`).
        registry.connections_total.add(1);
        let _ = stream.tcp().set_nodelay(true);
    }
    let mut open = OpenConnection { worker, parked: false };
    if let (false, false, ClientConn::Plain(tcp)) = (resumed, egress, &mut stream) {
        // The PROXY protocol's address stands for the peer from here on (a parked connection
        // keeps it, and resumes without a header). It comes before any TLS handshake.
        match proxied_peer(worker, tcp).await {
            Ok(Some(client)) => peer = client,
            Ok(None) => {}
            Err(()) => return,
        }
    }
    loop {
        // A new connection must start a request within the header timeout. A resumed one has
        // bytes waiting and was HTTP/1 (HTTP/2 sessions do not park).
        let http2 = if resumed {
            false
        } else {
            let (wait, allow_h2) = {
                let snapshot = worker.snapshot();
                (snapshot.config.server.header_timeout, snapshot.config.server.http2)
            };
            let tls = worker.shared.tls.as_ref().filter(|_| !egress);
            match wait_for_data(stream.tcp(), wait, &worker.drain, allow_h2 && tls.is_none()).await
            {
                Wait::Data { http2 } => match (tls, stream) {
                    (Some(acceptor), ClientConn::Plain(tcp)) => {
                        let timeout = worker
                            .snapshot()
                            .config
                            .server
                            .tls
                            .as_ref()
                            .map_or(wait, |t| t.handshake_timeout);
                        match Box::pin(acceptor.accept(tcp, timeout)).await {
                            Ok(tls) => {
                                let h2 = crate::tls::acceptor::negotiated_h2(&tls);
                                stream = ClientConn::Tls(Box::new(tls));
                                // The first request, like a plain connection's, must start
                                // within the header timeout (HTTP/2 has its own keep-alive).
                                if !h2 && !first_bytes(&mut stream, wait, &worker.drain).await {
                                    if !worker.drain.fired() {
                                        registry.header_timeouts.add(1);
                                    }
                                    break;
                                }
                                h2
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                break;
                            }
                        }
                    }
                    (_, plain) => {
                        stream = plain;
                        http2
                    }
                },
                Wait::TimedOut => {
                    registry.header_timeouts.add(1);
                    break;
                }
                Wait::Closed | Wait::Draining => break,
            }
        };
        if http2 {
            h2_session(worker, stream, peer, egress).await;
            break;
        }
        // Sessions are boxed: this task's own state stays small.
        let Some(socket) = (match Box::pin(h1::serve(Rc::clone(worker), stream, peer, egress)).await
        {
            h1::End::Parked(parked) => Some(parked),
            h1::End::Closed => None,
        }) else {
            break;
        };
        if worker.drain.fired() {
            break;
        }
        let keepalive =
            worker.snapshot().config.server.keepalive_timeout.saturating_sub(h1::PARK_AFTER);
        match host.lot.park(Parked { stream: socket, peer, permit, egress }, keepalive) {
            None => {
                // The lot holds it now, and closes its books when it closes it.
                open.parked = true;
                return;
            }
            // The client has already sent more (or left): go on here.
            Some(conn) => {
                (stream, permit, resumed) = (conn.stream, conn.permit, true);
            }
        }
    }
}

/// With `server.proxy_protocol`, reads the header a new connection starts with: the client
/// address it states (`None`: keep the TCP peer's), or `Err` when the connection is to close.
async fn proxied_peer(worker: &Worker, stream: &mut TcpStream) -> Result<Option<SocketAddr>, ()> {
    let timeout = {
        let snapshot = worker.snapshot();
        let server = &snapshot.config.server;
        if !server.clients.proxy_protocol {
            return Ok(None);
        }
        server.header_timeout
    };
    let read = tokio::select! {
        r = proxy_protocol::read_header(stream, timeout) => r,
        () = worker.drain.wait() => return Err(()),
    };
    read.map_err(|refused| {
        tracing::debug!(?refused, "connection closed: no valid PROXY protocol header");
        worker.shared.registry.proxy_protocol_refused.add(1);
    })
}

/// A client connection's place in the books while a task serves it: when the task ends — by
/// returning, by the worker's end, or by a panic — the connection is accounted closed, unless it
/// went to the parking lot.
struct OpenConnection<'w> {
    worker: &'w Worker,
    parked: bool,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if !self.parked {
            connection_closed(self.worker);
        }
    }
}

/// Accounts for a client connection that closed.
fn connection_closed(worker: &Worker) {
    worker.shared.registry.connections_open.add(-1);
    worker.shared.connection_closed.notify_waiters();
}

/// A hyper HTTP/2 session on `stream`, until the connection is done.
fn h2_session(
    worker: &Rc<Worker>,
    stream: ClientConn,
    peer: SocketAddr,
    egress: bool,
) -> Pin<Box<dyn Future<Output = ()>>> {
    let worker = Rc::clone(worker);
    Box::pin(async move {
        let snapshot = worker.snapshot();
        let server = &snapshot.config.server;
        let active = Arc::new(Active::default());
        let https = stream.is_tls();
        let io = ClientIo::new(
            stream,
            Arc::clone(&active),
            Arc::clone(&worker.shared.registry),
            server.keepalive_timeout,
            server.send_timeout,
        );
        let service_worker = Rc::clone(&worker);
        let service = hyper::service::service_fn(move |req| {
            let hop = h2::Hop { peer, https, egress };
            h2::handle(Rc::clone(&service_worker), Arc::clone(&active), hop, req)
        });
        let conn = hyper::server::conn::http2::Builder::new(LocalExec)
            .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(io), service);
        drop(snapshot);
        let mut conn = Box::pin(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = worker.drain.wait() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    })
}

static HOUSEKEEPING_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets a function every worker calls once a second on its own thread (the binary uses it to
/// return freed memory to the system). The first call wins.
pub fn set_housekeeping_hook(hook: fn()) {
    let _ = HOUSEKEEPING_HOOK.set(hook);
}

/// Once a second: close expired upstream connections, run the housekeeping hook. Fires the
/// worker's drain signal when the gateway starts draining.
async fn housekeeping(worker: Rc<Worker>, mut phase: watch::Receiver<Phase>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut running = phase.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // The key each slot holds in the configuration now.
                let snapshot = worker.snapshot();
                let mut current = Vec::new();
                for s in snapshot.upstreams.iter().flat_map(|g| &g.servers) {
                    if current.len() <= s.slot {
                        current.resize(s.slot + 1, 0);
                    }
                    current[s.slot] = s.key;
                }
                let is_current = |slot: usize, key: u64| current.get(slot) == Some(&key);
                worker.pools.sweep(seawall_core::clock::now_ms(), is_current);
                if let Some(hook) = HOUSEKEEPING_HOOK.get() {
                    hook();
                }
            }
            _ = leaves(&mut running, Phase::Running), if !worker.drain.fired() => worker.drain.fire(),
            _ = reaches(&mut phase, Phase::Stopped) => return,
        }
    }
}
