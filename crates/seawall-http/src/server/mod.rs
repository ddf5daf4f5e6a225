//! The gateway process: worker threads, listeners, connections, reload and graceful shutdown.
//!
//! Layout (decided for CPU per request, see `bench/`): one single-threaded tokio runtime per worker
//! thread, each with its own `SO_REUSEPORT` listener, its own upstream connection pools and its own
//! metric shards. A request never leaves the thread that accepted its connection, so there are no
//! cross-thread wake-ups and no shared locks on the request path. The control plane (admin API,
//! health checks, reloads, signals) runs on the runtime that called [`Gateway::start`].

pub mod io;
pub mod lot;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use seawall_config::{Config, ConfigErrors};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::h1;
use crate::metrics::{set_worker_shard, Registry};
use crate::pipeline::{self, Worker};
use crate::signal::LocalSignal;
use crate::snapshot::Snapshot;
use crate::upstream::health::HealthChecks;
use io::{ClientIo, ConnShared};
use lot::Parked;

/// The life of the gateway, as the workers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; finish what is in flight.
    Draining,
    /// Exit now.
    Stopped,
}

/// State shared by the workers and the control plane.
pub struct Shared {
    /// The configuration and live state that requests use; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Bumped after each swap of `snapshot`: workers compare it (one atomic load) before they
    /// pay for loading the snapshot itself.
    pub generation: std::sync::atomic::AtomicU64,
    pub registry: Arc<Registry>,
    /// The file the configuration came from, for reloads.
    pub config_path: Option<PathBuf>,
    /// True once shutdown has begun (`/readyz` answers 503).
    pub draining: AtomicBool,
    phase: watch::Sender<Phase>,
    /// Open client connections allowed per worker: `server.max_connections` split evenly (each
    /// worker has its own accept queue, so one shared cap could leave a connection waiting in a
    /// queue whose worker has no permit while another worker holds a free one).
    connections_per_worker: usize,
    /// Woken each time a client connection closes (the drain waits on it).
    connection_closed: Notify,
    /// Serialises reloads so two cannot interleave.
    reload_lock: Mutex<()>,
    health: Mutex<HealthChecks>,
    control: tokio::runtime::Handle,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload from")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("the reload did not complete: {0}")]
    Interrupted(String),
}

impl Shared {
    /// Re-reads the configuration file and, if it is valid, makes it current.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        match seawall_config::load(path) {
            Ok(config) => {
                self.apply(config);
                Ok(())
            }
            Err(errors) => {
                self.registry.config_reload_failures.add(1);
                for e in &errors.0 {
                    tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                }
                Err(ReloadError::Invalid(errors))
            }
        }
    }

    /// [`Shared::reload`] on a blocking thread: reading the file and resolving server names may
    /// block, and the control runtime also serves the admin API and health checks.
    pub async fn reload_in_background(shared: &Arc<Shared>) -> Result<(), ReloadError> {
        let shared = Arc::clone(shared);
        match tokio::task::spawn_blocking(move || shared.reload()).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload task failed");
                Err(ReloadError::Interrupted(e.to_string()))
            }
        }
    }

    /// Makes a validated configuration current, keeping the state of what survives.
    pub fn apply(&self, config: Config) {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.snapshot.load_full();
        let old = &previous.config.server;
        let new = &config.server;
        if old.listen != new.listen
            || old.admin != new.admin
            || old.workers != new.workers
            || old.max_connections != new.max_connections
        {
            tracing::warn!("server.listen, server.admin, server.workers and server.max_connections take effect only after a restart");
        }
        let snapshot = Arc::new(Snapshot::build(config, Some(&previous), &self.registry));
        self.restart_health_checks(&snapshot);
        self.snapshot.store(snapshot);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.registry.config_reloads.add(1);
        tracing::info!("configuration reloaded");
    }

    fn restart_health_checks(&self, snapshot: &Arc<Snapshot>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        *health = HealthChecks::spawn(&self.control, snapshot);
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Binds the listeners and starts the workers, the admin API and health checks. Must be called
    /// from within a tokio runtime, which then runs the control plane.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Gateway, StartError> {
        let workers = config.server.workers.max(1);
        let registry = Arc::new(Registry::new(workers));
        let listeners = bind_reuseport(config.server.listen, workers)?;
        let listen_addr = listeners[0]
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.server.listen, source })?;
        let admin_listener = tokio::net::TcpListener::bind(config.server.admin)
            .await
            .map_err(|source| StartError::Listen { addr: config.server.admin, source })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.server.admin, source })?;
        let control = tokio::runtime::Handle::current();
        let snapshot = Arc::new(Snapshot::build(config, None, &registry));
        let (phase, _) = watch::channel(Phase::Running);
        let shared = Arc::new(Shared {
            health: Mutex::new(HealthChecks::spawn(&control, &snapshot)),
            connections_per_worker: (snapshot.config.server.max_connections / workers).max(1),
            snapshot: ArcSwap::new(snapshot),
            generation: std::sync::atomic::AtomicU64::new(0),
            registry,
            config_path,
            draining: AtomicBool::new(false),
            phase,
            connection_closed: Notify::new(),
            reload_lock: Mutex::new(()),
            control,
        });
        let mut threads = Vec::with_capacity(workers);
        for (index, listener) in listeners.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("seawall-worker-{index}"))
                .spawn(move || run_worker(index, listener, shared))
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        let admin_task = tokio::spawn(crate::admin::serve(admin_listener, Arc::clone(&shared)));
        tracing::info!(%listen_addr, %admin_addr, workers, "seawall is listening");
        Ok(Gateway { shared, threads, listen_addr, admin_addr, admin_task })
    }

    /// The address the gateway accepts clients on (useful when the config said port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// State shared with the workers (for reloads and inspection).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful shutdown: stop accepting, answer `/readyz` with 503, let in-flight requests finish
    /// for up to `server.drain_timeout`, then stop the workers. Returns whether everything drained.
    pub async fn shutdown(self) -> bool {
        let shared = &self.shared;
        let drain_timeout = shared.snapshot.load().config.server.drain_timeout;
        shared.draining.store(true, Relaxed);
        shared.phase.send_replace(Phase::Draining);
        tracing::info!(open = shared.registry.connections_open.get(), ?drain_timeout, "draining");
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let drained = loop {
            let closed = shared.connection_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if shared.registry.connections_open.get() <= 0 {
                break true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                break false;
            }
        };
        if !drained {
            tracing::warn!(
                open = shared.registry.connections_open.get(),
                "drain timeout reached; closing the remaining connections"
            );
        }
        shared.phase.send_replace(Phase::Stopped);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.admin_task.abort();
        shared.health.lock().unwrap_or_else(|p| p.into_inner()).stop();
        tracing::info!(drained, "stopped");
        drained
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP and whenever the configuration file
    /// changes; then shuts down gracefully.
    pub async fn run_until_signal(self) -> std::io::Result<bool> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut watcher = crate::control::FileWatcher::new(self.shared.config_path.clone());
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = Shared::reload_in_background(&self.shared).await;
                }
                _ = watcher.changed() => {
                    tracing::info!("configuration file changed: reloading");
                    let _ = Shared::reload_in_background(&self.shared).await;
                }
            }
        }
        Ok(self.shutdown().await)
    }
}

/// Binds `workers` listeners to the same address with `SO_REUSEPORT` so the kernel spreads
/// connections across workers. With port 0, the first socket picks the port and the rest join it.
fn bind_reuseport(
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

fn run_worker(index: usize, listener: std::net::TcpListener, shared: Arc<Shared>) {
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
        tokio::task::spawn_local(housekeeping(Rc::clone(&worker), shared.phase.subscribe()));
        tokio::task::spawn_local(lot::run(Rc::clone(&worker)));
        let mut phase = shared.phase.subscribe();
        accept_loop(&worker, &listener, &mut phase).await;
        drop(listener);
        reaches(&mut phase, Phase::Stopped).await;
    });
    // Dropping the LocalSet here cancels whatever the drain did not finish.
}

async fn accept_loop(
    worker: &Rc<Worker>,
    listener: &tokio::net::TcpListener,
    phase: &mut watch::Receiver<Phase>,
) {
    // A worker waits for a permit before it accepts; beyond its share, new connections wait in
    // the kernel's backlog.
    let permits = Arc::new(Semaphore::new(worker.shared.connections_per_worker));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = leaves(phase, Phase::Running) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = leaves(phase, Phase::Running) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::task::spawn_local(serve_connection(
                    Rc::clone(worker),
                    stream,
                    peer,
                    permit,
                    false,
                ));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the client did while the connection had no session.
enum Wait {
    /// Bytes are ready; `http2` when they start with the HTTP/2 preface.
    Data { http2: bool },
    /// The client closed, the timeout passed, or the gateway is draining.
    Close,
}

/// Waits on the bare socket for the client's next bytes. No buffer is held meanwhile: `peek`
/// reads into a few bytes of this future's own state.
async fn wait_for_data(
    stream: &TcpStream,
    timeout: Duration,
    drain: &LocalSignal,
    allow_h2: bool,
) -> Wait {
    // Every idle connection holds this future, so it is kept small: one `poll_fn` over the bare
    // socket (`poll_peek` parks the waker in the socket's own slot, where a `peek` future would
    // carry a waiter node of its own), the timer and the worker's drain signal.
    let mut head = [0u8; 3];
    let mut sleep = std::pin::pin!(tokio::time::sleep(timeout));
    let mut drained = std::pin::pin!(drain.wait());
    std::future::poll_fn(|cx| {
        if drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wait::Close);
        }
        let mut buf = tokio::io::ReadBuf::new(&mut head);
        match stream.poll_peek(cx, &mut buf) {
            // "PRI" starts the HTTP/2 connection preface (RFC 9113 §3.4) and no HTTP/1 method;
            // the HTTP/2 session checks the rest of the preface itself.
            Poll::Ready(Ok(n)) if n > 0 => {
                Poll::Ready(Wait::Data { http2: allow_h2 && head[..n] == *b"PRI" })
            }
            Poll::Ready(_) => Poll::Ready(Wait::Close),
            Poll::Pending => sleep.as_mut().poll(cx).map(|()| Wait::Close),
        }
    })
    .await
}

/// Serves one client connection: a session (the HTTP/1.1 engine, or hyper's HTTP/1 or HTTP/2
/// state) runs while requests come; an HTTP/1 connection that goes idle parks — its session ends
/// and frees its buffers, its socket goes to the worker's parking lot and this task ends — and the
/// lot starts a new task (`resumed`) when the client sends again.
async fn serve_connection(
    worker: Rc<Worker>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut permit: OwnedSemaphorePermit,
    mut resumed: bool,
) {
    let registry = &worker.shared.registry;
    if !resumed {
        registry.connections_open.add(1);
        registry.connections_total.add(1);
        let _ = stream.set_nodelay(true);
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
            match wait_for_data(&stream, wait, &worker.drain, allow_h2).await {
                Wait::Data { http2 } => http2,
                Wait::Close => {
                    registry.header_timeouts.add(1);
                    break;
                }
            }
        };
        // Sessions are boxed: this task's own state stays small.
        let parked = if http2 {
            hyper_session(&worker, stream, peer, bytes::Bytes::new(), true).await
        } else {
            match Box::pin(h1::serve(Rc::clone(&worker), stream, peer)).await {
                h1::End::Parked(parked) => Some(parked),
                h1::End::Closed => None,
                h1::End::HandOff(handed, read) => {
                    hyper_session(&worker, handed, peer, read, false).await
                }
            }
        };
        let Some(socket) = parked else { break };
        if worker.drain.fired() {
            break;
        }
        let keepalive =
            worker.snapshot().config.server.keepalive_timeout.saturating_sub(io::PARK_AFTER);
        match worker.lot.park(Parked { stream: socket, peer, permit }, keepalive) {
            None => return,
            // The client has already sent more (or left): go on here.
            Some(conn) => {
                (stream, permit, resumed) = (conn.stream, conn.permit, true);
            }
        }
    }
    connection_closed(&worker);
}

/// Accounts for a client connection that closed.
fn connection_closed(worker: &Worker) {
    worker.shared.registry.connections_open.add(-1);
    worker.shared.connection_closed.notify_waiters();
}

/// Serves a parked connection whose client sent again, in a task of its own.
fn resume(worker: &Rc<Worker>, conn: Parked) {
    let Parked { stream, peer, permit } = conn;
    tokio::task::spawn_local(serve_connection(Rc::clone(worker), stream, peer, permit, true));
}

/// Closes a parked connection: its client left, its keep-alive time is over (`expired`), or the
/// gateway drains.
fn close_parked(worker: &Worker, conn: Parked, expired: bool) {
    if expired {
        worker.shared.registry.idle_timeouts.add(1);
    }
    drop(conn);
    connection_closed(worker);
}

/// A hyper session on `stream` (HTTP/2, or HTTP/1 starting with the bytes in `prefix`); resolves to
/// the socket when an HTTP/1 session parked, `None` when the connection is done.
fn hyper_session(
    worker: &Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    prefix: bytes::Bytes,
    http2: bool,
) -> Pin<Box<dyn Future<Output = Option<TcpStream>>>> {
    let worker = Rc::clone(worker);
    Box::pin(async move {
        let snapshot = worker.snapshot();
        let server = &snapshot.config.server;
        let registry = Arc::clone(&worker.shared.registry);
        let shared_state = Arc::new(ConnShared::default());
        let io = ClientIo::new(
            stream,
            Arc::clone(&shared_state),
            registry,
            http2,
            server.header_timeout,
            server.keepalive_timeout,
        )
        .with_prefix(prefix);
        let service_worker = Rc::clone(&worker);
        let service = hyper::service::service_fn(move |req| {
            pipeline::handle(Rc::clone(&service_worker), Arc::clone(&shared_state), peer, req)
        });
        if http2 {
            let conn = hyper::server::conn::http2::Builder::new(LocalExec)
                .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX))
                .serve_connection(TokioIo::new(io), service);
            drop(snapshot);
            let drained = drive(Box::pin(conn), &worker.drain, |c| c.as_mut().graceful_shutdown());
            log_end(peer, drained.await.0);
            return None;
        }
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(server.max_header_size)
            .max_headers(server.max_headers)
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        drop(snapshot);
        let (result, conn) = drive(conn, &worker.drain, |c| Pin::new(c).graceful_shutdown()).await;
        let ok = result.is_ok();
        log_end(peer, result);
        match conn.into_parts() {
            Some(parts) if ok && parts.io.inner().parked() && parts.read_buf.is_empty() => {
                Some(parts.io.into_inner().into_stream())
            }
            _ => None,
        }
    })
}

/// Runs a session to its end; when the gateway starts draining, asks it to finish gracefully.
async fn drive<C, T>(
    mut conn: C,
    drain: &LocalSignal,
    graceful: impl FnOnce(&mut C),
) -> (hyper::Result<T>, C)
where
    C: Future<Output = hyper::Result<T>> + Unpin,
{
    let result = tokio::select! {
        r = &mut conn => r,
        () = drain.wait() => {
            graceful(&mut conn);
            (&mut conn).await
        }
    };
    (result, conn)
}

fn log_end<T>(peer: SocketAddr, result: hyper::Result<T>) {
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
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
                worker.pools.sweep(seawall_core::clock::now_ms());
                if let Some(hook) = HOUSEKEEPING_HOOK.get() {
                    hook();
                }
            }
            _ = leaves(&mut running, Phase::Running), if !worker.drain.fired() => worker.drain.fire(),
            _ = reaches(&mut phase, Phase::Stopped) => return,
        }
    }
}
