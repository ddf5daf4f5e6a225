//! State shared by the workers and the control plane: the current [`Snapshot`] (swapped whole on
//! reload), the metrics registry, the gateway's phase (running, draining, stopped) and the
//! reload procedure. Engines reach it through their [`Worker`](crate::worker::Worker).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use seawall_config::{Config, ConfigErrors};
use tokio::sync::{watch, Notify};

use crate::metrics::Registry;
use crate::snapshot::Snapshot;
use crate::upstream::health::HealthChecks;

/// The life of the gateway, as the workers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; finish what is in flight.
    Draining,
    /// Exit now.
    Stopped,
}

/// The settings that only a restart changes, as the gateway runs them (a reloaded file may say
/// otherwise until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub listen: SocketAddr,
    /// `server.egress_listen` (bound at start, like `listen`).
    pub egress_listen: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
}

/// State shared by the workers and the control plane.
pub struct Shared {
    /// The configuration and live state that requests use; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Bumped after each swap of `snapshot`: workers compare it (one atomic load) before they
    /// pay for loading the snapshot itself.
    pub generation: AtomicU64,
    pub registry: Arc<Registry>,
    /// The file the configuration came from, for reloads.
    pub config_path: Option<PathBuf>,
    /// True once shutdown has begun (`/readyz` answers 503).
    pub draining: AtomicBool,
    pub running: Running,
    /// TLS termination on the client listener (`server.tls`; turned on or off by a restart).
    pub tls: Option<Arc<crate::tls::Acceptor>>,
    pub(crate) phase: watch::Sender<Phase>,
    /// Open client connections allowed per worker: `server.max_connections` split evenly (each
    /// worker has its own accept queue, so one shared cap could leave a connection waiting in a
    /// queue whose worker has no permit while another worker holds a free one).
    pub(crate) connections_per_worker: usize,
    /// Woken each time a client connection closes (the drain waits on it).
    pub(crate) connection_closed: Notify,
    /// Where access-log lines go (chosen at start: a new `log.access_log_file` takes a restart).
    pub access_log: crate::access_log::Sink,
    /// Serialises reloads so two cannot interleave.
    reload_lock: Mutex<()>,
    health: Mutex<HealthChecks>,
    control: tokio::runtime::Handle,
    /// The last good addresses of the upstreams' host names: every configuration made current
    /// is expanded with them ([`crate::resolve`]).
    pub names: crate::resolve::Names,
    /// The durable queue, opened at start when the configuration has one (adding one later
    /// takes a restart).
    pub queue: Option<Arc<seawall_queue::Queue>>,
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
    /// Shared state for a gateway starting with `snapshot`; health checks run on `control`.
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        registry: Arc<Registry>,
        config_path: Option<PathBuf>,
        running: Running,
        tls: Option<Arc<crate::tls::Acceptor>>,
        control: tokio::runtime::Handle,
        access_log: crate::access_log::Sink,
    ) -> Self {
        let workers = running.workers.max(1);
        let (phase, _) = watch::channel(Phase::Running);
        Shared {
            health: Mutex::new(HealthChecks::spawn(&control, &snapshot.upstreams)),
            names: crate::resolve::Names::default(),
            queue: None,
            connections_per_worker: (running.max_connections / workers).max(1),
            snapshot: ArcSwap::new(snapshot),
            generation: AtomicU64::new(0),
            registry,
            config_path,
            draining: AtomicBool::new(false),
            running,
            tls,
            phase,
            connection_closed: Notify::new(),
            access_log,
            reload_lock: Mutex::new(()),
            control,
        }
    }

    /// Re-reads the configuration file and, if it is valid, makes it current.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        match seawall_config::load(path)
            .and_then(|config| self.update_tls(&config).map(|()| config))
        {
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

    /// Reads the certificates `config` names into the TLS listener (before the configuration
    /// is applied: a reload whose certificates cannot be read is refused as a whole).
    fn update_tls(&self, config: &Config) -> Result<(), ConfigErrors> {
        let (Some(acceptor), Some(tls)) = (&self.tls, &config.server.tls) else {
            if self.tls.is_some() != config.server.tls.is_some() {
                tracing::warn!("turning server.tls on or off takes effect only after a restart");
            }
            return Ok(());
        };
        acceptor.update(tls, config.server.http2).map_err(|message| {
            let file = self.config_path.as_ref().map(|p| p.display().to_string());
            let key = "server.tls".to_string();
            let error = seawall_config::ConfigError {
                file: file.unwrap_or_default(),
                line: 0,
                column: 0,
                key,
                message,
            };
            ConfigErrors(vec![error])
        })
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
        log_warnings(&config);
        let config = crate::resolve::expand(config, &self.names.table());
        let previous = self.snapshot.load_full();
        let new = &config.server;
        let running = self.running;
        if running.listen != new.listen
            || running.egress_listen != new.egress_listen
            || running.admin != new.admin
            || running.workers != new.workers
            || running.max_connections != new.max_connections
        {
            tracing::warn!("server.listen, server.egress_listen, server.admin, server.workers and server.max_connections take effect only after a restart");
        }
        self.names.follow(&config);
        match (&self.queue, &config.queue) {
            (Some(queue), Some(new)) => {
                let old = queue.config();
                if old.backend != new.backend {
                    tracing::warn!("queue.backend, queue.data_dir and queue.redis take effect only after a restart");
                }
                if (old.lease, old.keep_finished, old.commit_delay)
                    != (new.lease, new.keep_finished, new.commit_delay)
                {
                    tracing::warn!("queue.lease, queue.keep_finished and queue.commit_delay take effect only after a restart");
                }
                queue.reconfigure(new);
            }
            (Some(queue), None) => {
                // No topic: deliveries stop, the jobs stay stored.
                let mut kept = (*queue.config()).clone();
                kept.topics.clear();
                queue.reconfigure(&kept);
                tracing::warn!("[queue] was removed: its jobs stay stored, undelivered, until it comes back");
            }
            (None, Some(_)) => tracing::warn!("[queue] was added: the queue starts only after a restart; its routes answer 503 until then"),
            (None, None) => {}
        }
        self.swap(config, &previous);
        self.registry.config_reloads.add(1);
        tracing::info!("configuration reloaded");
    }

    /// Makes the current configuration current again with the upstreams' host names expanded
    /// to their addresses now (see [`crate::resolve`]): servers are kept, added and dropped as
    /// on a reload.
    pub fn apply_resolved(&self) {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.snapshot.load_full();
        let config = crate::resolve::expand(previous.config.clone(), &self.names.table());
        self.swap(config, &previous);
    }

    /// Builds the snapshot of `config` from `previous`, restarts the health checks on its
    /// servers and makes it current.
    fn swap(&self, config: Config, previous: &Snapshot) {
        let snapshot = Arc::new(Snapshot::build(config, Some(previous), &self.registry));
        {
            let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            *health = HealthChecks::spawn(&self.control, &snapshot.upstreams);
        }
        self.snapshot.store(snapshot);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Stops the health checks (at shutdown).
    pub(crate) fn stop_health_checks(&self) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).stop();
    }
}

/// Logs what the configuration's validation warned about (see `seawall check`).
pub(crate) fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration");
    }
}
