//! The gateway as a whole: [`Gateway::start`] binds the listeners, starts the workers
//! ([`crate::server`]), the admin API ([`crate::admin`]), the health checks and the overload
//! controller ([`crate::controller`]); the control plane
//! then reloads on request and drains on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use seawall_config::Config;

use crate::metrics::Registry;
use crate::server::spread::Spread;
use crate::server::{self, StartError, WorkerStart};
use crate::snapshot::Snapshot;
use crate::state::{Phase, Running, Shared};

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_task: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    controller: tokio::task::JoinHandle<()>,
    certificates: tokio::task::JoinHandle<()>,
    redirect_addr: Option<SocketAddr>,
    egress_addr: Option<SocketAddr>,
    /// Resolves upstream host names again at their TTL ([`crate::resolve`]).
    resolver: tokio::task::JoinHandle<()>,
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
        let listeners = server::bind_reuseport(config.server.listen, workers)?;
        let listen_addr = listeners[0]
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.server.listen, source })?;
        let (egress_listeners, egress_addr) = match config.server.egress_listen {
            Some(addr) => {
                let listeners = server::bind_reuseport(addr, workers)?;
                let bound = listeners[0]
                    .local_addr()
                    .map_err(|source| StartError::Listen { addr, source })?;
                (listeners.into_iter().map(Some).collect(), Some(bound))
            }
            None => ((0..workers).map(|_| None).collect::<Vec<_>>(), None),
        };
        let admin_listener = tokio::net::TcpListener::bind(config.server.admin)
            .await
            .map_err(|source| StartError::Listen { addr: config.server.admin, source })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.server.admin, source })?;
        let running = Running {
            listen: config.server.listen,
            egress_listen: config.server.egress_listen,
            admin: config.server.admin,
            workers: config.server.workers,
            max_connections: config.server.max_connections,
        };
        let control = tokio::runtime::Handle::current();
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(
                crate::tls::Acceptor::new(tls, config.server.http2, registry.shards())
                    .map_err(StartError::Tls)?,
            )),
            None => None,
        };
        crate::state::log_warnings(&config);
        // Host names are resolved before the first request, so none meets an unresolved server.
        let names = crate::resolve::Names::default();
        let (_, next_resolve) = crate::resolve::resolve_all(&config, &names, &registry).await;
        let config = crate::resolve::expand(config, &names.table());
        let snapshot = Arc::new(Snapshot::build(config, None, &registry));
        // The cache's shared layer is driven from here, the control plane, before any request.
        snapshot.cache.follow_l2(&snapshot.config.cache);
        let access_log =
            crate::access_log::Sink::open(&snapshot.config.log, &registry).map_err(|source| {
                StartError::AccessLog {
                    path: snapshot.config.log.access_log_file.clone().unwrap_or_default(),
                    source,
                }
            })?;
        let queue = match &snapshot.config.queue {
            Some(config) => {
                Some(seawall_queue::Queue::open(config).await.map_err(StartError::Queue)?)
            }
            None => None,
        };
        let mut shared =
            Shared::new(snapshot, registry, config_path, running, tls, control, access_log);
        shared.names = names;
        shared.queue = queue;
        let shared = Arc::new(shared);
        let (spread, inboxes) = Spread::new(Arc::clone(&shared.registry), workers);
        let mut threads = Vec::with_capacity(workers);
        let sockets = listeners.into_iter().zip(egress_listeners);
        for (index, ((listener, egress_listener), inbox)) in sockets.zip(inboxes).enumerate() {
            let (shared, spread) = (Arc::clone(&shared), Arc::clone(&spread));
            let start = WorkerStart { index, listener, egress_listener, shared, spread, inbox };
            threads.push(server::spawn_worker(start)?);
        }
        let admin_task = tokio::spawn(crate::admin::serve(admin_listener, Arc::clone(&shared)));
        let mut redirect_addr = None;
        if let Some(addr) = shared.snapshot.load().config.server.http_redirect {
            let err = |source| StartError::Listen { addr, source };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
            redirect_addr = Some(listener.local_addr().map_err(err)?);
            let port = listen_addr.port();
            tokio::spawn(crate::server::redirect::serve(listener, Arc::clone(&shared), port));
        }
        let sweeper = tokio::spawn(sweep_rate_limits(Arc::clone(&shared)));
        let controller = tokio::spawn(crate::controller::run(Arc::clone(&shared)));
        let certificates = tokio::spawn(follow_certificate_files(Arc::clone(&shared)));
        let resolver = tokio::spawn(crate::resolve::run(Arc::clone(&shared), next_resolve));
        tracing::info!(%listen_addr, %admin_addr, ?egress_addr, workers, "seawall is listening");
        Ok(Gateway {
            shared,
            threads,
            listen_addr,
            admin_addr,
            admin_task,
            sweeper,
            controller,
            certificates,
            redirect_addr,
            egress_addr,
            resolver,
        })
    }

    /// The address the gateway accepts clients on (useful when the config said port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The listener of the egress routes (`server.egress_listen`), if any.
    pub fn egress_addr(&self) -> Option<SocketAddr> {
        self.egress_addr
    }

    /// The plain listener that redirects to `https://` (`server.http_redirect`), if any.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// State shared with the workers (for reloads and inspection).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Shutdown as load balancers can see it (SIGTERM, the Kubernetes preStop convention):
    /// `/readyz` answers 503 at once, the listeners keep accepting and serving for
    /// `server.drain_delay` — or until `cut` completes (a second signal) — and then
    /// [`Gateway::shutdown`] drains. Returns whether everything drained.
    pub async fn shutdown_after_delay(self, cut: impl std::future::Future<Output = ()>) -> bool {
        let delay = self.shared.snapshot.load().config.server.drain_delay;
        self.shared.draining.store(true, Relaxed);
        if !delay.is_zero() {
            tracing::info!(?delay, "not ready: serving on for drain_delay, then draining");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cut => tracing::info!("second signal: draining now"),
            }
        }
        self.shutdown().await
    }

    /// Graceful shutdown: stop accepting, answer `/readyz` with 503, close idle connections and
    /// tunnels, let in-flight requests finish for up to `server.drain_timeout`, then stop the
    /// workers. Returns whether everything drained.
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
        self.sweeper.abort();
        self.controller.abort();
        self.certificates.abort();
        self.resolver.abort();
        shared.stop_health_checks();
        let shared = Arc::clone(shared);
        let _ = tokio::task::spawn_blocking(move || shared.access_log.flush()).await;
        tracing::info!(drained, "stopped");
        drained
    }

    /// Reopens the access log file by its path (what SIGUSR1 does, after logrotate moved it):
    /// lines of requests answered after this returns land in the new file.
    pub async fn reopen_access_log(&self) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.access_log.reopen())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP and whenever the configuration file
    /// changes, reopening the access log on SIGUSR1; then shuts down gracefully after
    /// `server.drain_delay` ([`Gateway::shutdown_after_delay`]; a second signal cuts the delay).
    pub async fn run_until_signal(self) -> std::io::Result<bool> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut watcher = crate::control::FileWatcher::new(self.shared.config_path.clone());
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = Shared::reload_in_background(&self.shared).await;
                }
                _ = usr1.recv() => {
                    if let Err(e) = self.reopen_access_log().await {
                        tracing::error!(error = %e, "SIGUSR1: the access log could not be reopened");
                    }
                }
                _ = watcher.changed() => {
                    tracing::info!("configuration file changed: reloading");
                    let _ = Shared::reload_in_background(&self.shared).await;
                }
            }
        }
        let again = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        Ok(self.shutdown_after_delay(again).await)
    }
}

/// Once a second, rate limiters forget the keys that owe nothing (a key that comes back is in the
/// same state as a new one), so their tables hold only recent clients.
async fn sweep_rate_limits(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = shared.snapshot.load();
        if snapshot.limiters.is_empty() {
            continue;
        }
        let now_ns = seawall_core::clock::ns_at(std::time::Instant::now());
        for limiter in &snapshot.limiters {
            limiter.sweep(now_ns);
        }
    }
}

/// Reads the listener's certificates again when their files change (a renewal by certbot or a
/// secret mounted anew): new handshakes get the new certificates, connections already open keep
/// theirs. Files caught half-written or a key that does not match leave the running certificates
/// in place (logged, counted) until the files are right.
async fn follow_certificate_files(shared: Arc<Shared>) {
    let Some(acceptor) = shared.tls.clone() else { return };
    let mut watcher = crate::control::FilesWatcher::default();
    loop {
        let tls = shared.snapshot.load().config.server.tls.clone();
        let Some(tls) = tls else { return };
        // A reload may name other files: they are looked up again every few seconds, and read
        // once more when they change (they may have been renewed since the reload read them).
        if !watcher.watch(crate::tls::acceptor::files(&tls)) {
            tokio::select! {
                () = watcher.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
            }
        }
        // The files named now (a reload may have changed them meanwhile).
        let snapshot = shared.snapshot.load();
        let Some(tls) = snapshot.config.server.tls.as_ref() else { return };
        let http2 = snapshot.config.server.http2;
        let (acceptor, tls) = (Arc::clone(&acceptor), tls.clone());
        let result = tokio::task::spawn_blocking(move || acceptor.update(&tls, http2)).await;
        match result {
            Ok(Ok(())) => tracing::info!("certificate files changed: certificates reloaded"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "certificate files changed but cannot be used; the running certificates stay");
            }
            Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
        }
    }
}
