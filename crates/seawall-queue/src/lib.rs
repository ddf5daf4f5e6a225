//! Seawall's durable queue: a request is stored (and only then answered 202), and delivered
//! later to its topic's upstream at a safe rate — at least once, in no promised order.
//!
//! ```text
//! enqueue ─▶ bounds ─▶ store (embedded: group commit + fsync │ redis: XADD) ─▶ 202
//! delivery (per topic): paused? ▸ held (Retry-After)? ▸ concurrency ▸ rate ▸ lease ▸ attempt ▸ settle
//!                                                    settle: delivered │ retry with backoff │ dead letter
//! ```
//!
//! - [`Queue`] is the front both the gateway and the admin API use; [`Backend`] is where jobs
//!   live: [`embedded::Embedded`] (fjall under `data_dir`, the default) or
//!   [`redis_streams::RedisStreams`] (a fleet).
//! - [`delivery`] runs a topic's deliveries through a [`delivery::Courier`] the gateway provides
//!   (its balancing, pools, health, breaker and retry budget).

pub mod delivery;
pub mod embedded;
mod index;
pub mod job;
pub mod redis_streams;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall_config::QueueBackend;

pub use job::{JobId, Record, Request, State, Status};

/// The store could not do what was asked (an I/O error, a full disk, Redis unreachable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(String),
}

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// A bound is reached: the bound's name.
    #[error("the queue is full ({0})")]
    Full(&'static str),
    /// The topic is not configured.
    #[error("no topic named {0:?}")]
    NoTopic(String),
    /// Nothing was stored.
    #[error("the job could not be stored: {0}")]
    Store(StoreError),
}

/// The bounds a new job is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub topic_jobs: u64,
    pub topic_bytes: u64,
    pub total_jobs: u64,
    pub total_bytes: u64,
}

impl Bounds {
    /// The bound a job of `size` bytes would cross, given what the topic and the whole queue
    /// hold (jobs, bytes).
    pub fn exceeded(
        &self,
        topic: (u64, u64),
        total: (u64, u64),
        size: u64,
    ) -> Option<&'static str> {
        if topic.0 + 1 > self.topic_jobs {
            Some("the topic's max_jobs")
        } else if topic.1 + size > self.topic_bytes {
            Some("the topic's max_bytes")
        } else if total.0 + 1 > self.total_jobs {
            Some("queue.max_jobs")
        } else if total.1 + size > self.total_bytes {
            Some("queue.max_bytes")
        } else {
            None
        }
    }
}

/// A job handed to a delivery: its record (with the request), and the backend's handle on it.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: JobId,
    pub record: Record,
    /// The backend's own reference (the stream entry for Redis).
    pub token: Option<String>,
}

/// What a topic holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Jobs waiting for delivery (being delivered included).
    pub pending: u64,
    /// Bytes held, dead letters included.
    pub bytes: u64,
    pub dead: u64,
    pub in_flight: u64,
    pub oldest_created_ms: Option<u64>,
}

/// Where jobs live.
pub enum Backend {
    Embedded(embedded::Embedded),
    Redis(redis_streams::RedisStreams),
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Backend::Embedded($b) => $e,
            Backend::Redis($b) => $e,
        }
    };
}

impl Backend {
    /// Opens the configured backend.
    pub async fn open(config: &seawall_config::Queue) -> Result<Backend, StoreError> {
        Ok(match &config.backend {
            QueueBackend::Embedded { data_dir } => {
                let dir = data_dir.clone();
                let delay = config.commit_delay;
                let opened =
                    tokio::task::spawn_blocking(move || embedded::Embedded::open(&dir, delay))
                        .await;
                Backend::Embedded(opened.map_err(|e| StoreError::Io(e.to_string()))??)
            }
            QueueBackend::Redis { url, prefix } => Backend::Redis(
                redis_streams::RedisStreams::open(url, prefix, config.lease, config.keep_finished)
                    .await?,
            ),
        })
    }

    pub async fn enqueue(
        &self,
        id: JobId,
        record: &Record,
        bounds: &Bounds,
    ) -> Result<(), EnqueueError> {
        each!(self, b => b.enqueue(id, record, bounds).await)
    }

    pub async fn lease(
        &self,
        topic: &str,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<Leased>, StoreError> {
        match self {
            Backend::Embedded(b) => b.lease(topic, now_ms, max),
            Backend::Redis(b) => b.lease(topic, now_ms, max).await,
        }
    }

    /// When the topic's next job is due, if the backend knows (`None`: look again soon).
    pub fn next_due(&self, topic: &str) -> Option<u64> {
        match self {
            Backend::Embedded(b) => b.next_due(topic),
            Backend::Redis(_) => None,
        }
    }

    pub async fn settle(&self, leased: Leased) -> Result<(), StoreError> {
        each!(self, b => b.settle(leased).await)
    }

    pub async fn status(&self, id: JobId) -> Result<Option<Status>, StoreError> {
        match self {
            Backend::Embedded(b) => b.status(id),
            Backend::Redis(b) => b.status(id).await,
        }
    }

    pub async fn depth(&self, topic: &str) -> Result<Depth, StoreError> {
        match self {
            Backend::Embedded(b) => Ok(b.depth(topic)),
            Backend::Redis(b) => b.depth(topic).await,
        }
    }

    pub async fn dead(&self, topic: &str, limit: usize) -> Result<Vec<Status>, StoreError> {
        match self {
            Backend::Embedded(b) => b.dead(topic, limit),
            Backend::Redis(b) => b.dead(topic, limit).await,
        }
    }

    /// Requeues or purges `topic`'s dead letters (`only`: just this one); returns how many.
    pub async fn revive(
        &self,
        topic: &str,
        only: Option<JobId>,
        requeue: bool,
    ) -> Result<u64, StoreError> {
        each!(self, b => b.revive(topic, only, requeue).await)
    }

    /// Forgets what finished before `before_ms` (Redis keys expire by themselves).
    pub async fn expire(&self, before_ms: u64) -> Result<u64, StoreError> {
        match self {
            Backend::Embedded(b) => b.expire(before_ms).await,
            Backend::Redis(_) => Ok(0),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
        }
    }
}

/// A topic's switches and counters, kept across reloads.
#[derive(Debug, Default)]
pub struct TopicState {
    pub name: String,
    pub paused: AtomicBool,
    /// No delivery starts before this (ms since the epoch): the destination's `Retry-After`.
    pub hold_until_ms: AtomicU64,
    /// Woken when a job arrives, the topic is resumed, or the config changes.
    pub wake: tokio::sync::Notify,
    pub enqueued: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    /// Enqueues refused: a bound, or the store failed.
    pub refused_full: AtomicU64,
    pub refused_error: AtomicU64,
    /// Attempts that ended in a store error when settling (the job is tried again).
    pub settle_errors: AtomicU64,
    /// Jobs Seawall held back without sending (breaker open, no server up, gate full).
    pub not_sent: AtomicU64,
    /// From enqueue to delivery.
    pub latency: Histogram,
}

/// Bucket bounds of the delivery latency, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// The queue: its backend, its configuration (swapped on reload) and its topics' state.
pub struct Queue {
    pub backend: Backend,
    config: Mutex<Arc<seawall_config::Queue>>,
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("backend", &self.backend.name()).finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens the configured backend.
    pub async fn open(config: &seawall_config::Queue) -> Result<Arc<Queue>, StoreError> {
        let backend = Backend::open(config).await?;
        let queue = Queue {
            backend,
            config: Mutex::new(Arc::new(config.clone())),
            topics: Mutex::default(),
        };
        queue.reconfigure(config);
        Ok(Arc::new(queue))
    }

    /// Takes a new configuration (a reload): new topics get their state; the others keep theirs.
    /// The backend is not changed by a reload.
    pub fn reconfigure(&self, config: &seawall_config::Queue) {
        let previous = std::mem::replace(&mut *lock(&self.config), Arc::new(config.clone()));
        let mut topics = lock(&self.topics);
        for t in &config.topics {
            let state = topics.entry(t.name.clone()).or_insert_with(|| {
                let state = TopicState { name: t.name.clone(), ..TopicState::default() };
                state.paused.store(t.paused, Relaxed);
                Arc::new(state)
            });
            // `paused` changed in the file: the file wins; otherwise a pause or resume made
            // through the admin API stands.
            let before = previous.topic(&t.name).map(|i| previous.topics[i].paused);
            if before != Some(t.paused) {
                state.paused.store(t.paused, Relaxed);
            }
        }
        for state in topics.values() {
            state.wake.notify_one();
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<seawall_config::Queue> {
        Arc::clone(&lock(&self.config))
    }

    /// The state of topic `name` (configured now or before).
    pub fn topic(&self, name: &str) -> Option<Arc<TopicState>> {
        lock(&self.topics).get(name).cloned()
    }

    /// Every topic's state, in name order.
    pub fn topics(&self) -> Vec<Arc<TopicState>> {
        let mut all: Vec<_> = lock(&self.topics).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Stores `request` in topic `topic`; returns its id once it is durable.
    pub async fn enqueue(&self, topic: &str, request: Request) -> Result<JobId, EnqueueError> {
        let config = self.config();
        let Some(t) = config.topic(topic).map(|i| &config.topics[i]) else {
            return Err(EnqueueError::NoTopic(topic.to_string()));
        };
        let state = self.topic(topic).ok_or_else(|| EnqueueError::NoTopic(topic.to_string()))?;
        let bounds = Bounds {
            topic_jobs: t.max_jobs,
            topic_bytes: t.max_bytes,
            total_jobs: config.max_jobs,
            total_bytes: config.max_bytes,
        };
        let id = JobId::random().map_err(|e| {
            EnqueueError::Store(StoreError::Io(format!("no randomness for a job id: {e}")))
        })?;
        let record = Record {
            topic: topic.to_string(),
            state: State::Queued,
            attempts: 0,
            created_ms: job::now_ms(),
            next_attempt_ms: 0,
            finished_ms: 0,
            last_error: String::new(),
            request,
        };
        match self.backend.enqueue(id, &record, &bounds).await {
            Ok(()) => {
                state.enqueued.fetch_add(1, Relaxed);
                state.wake.notify_one();
                Ok(id)
            }
            Err(e) => {
                let counter = if matches!(e, EnqueueError::Full(_)) {
                    &state.refused_full
                } else {
                    &state.refused_error
                };
                counter.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// What is known of job `id`.
    pub async fn status(&self, id: JobId) -> Result<Option<Status>, StoreError> {
        self.backend.status(id).await
    }

    /// Pauses or resumes a topic's deliveries; false when there is no such topic.
    pub fn pause(&self, topic: &str, paused: bool) -> bool {
        let Some(state) = self.topic(topic) else { return false };
        state.paused.store(paused, Relaxed);
        if !paused {
            // Resuming is the operator's word: a destination's hold ends too.
            state.hold_until_ms.store(0, Relaxed);
        }
        state.wake.notify_one();
        true
    }

    /// Requeues or purges dead letters of `topic`.
    pub async fn revive(
        &self,
        topic: &str,
        only: Option<JobId>,
        requeue: bool,
    ) -> Result<u64, StoreError> {
        let n = self.backend.revive(topic, only, requeue).await?;
        if let Some(state) = self.topic(topic).filter(|_| requeue && n > 0) {
            state.wake.notify_one();
        }
        Ok(n)
    }

    /// Each topic's depth and state as JSON (for `/api/v1/state`).
    pub async fn state_json(&self) -> serde_json::Value {
        let now = job::now_ms();
        let mut topics = serde_json::Map::new();
        let config = self.config();
        for state in self.topics() {
            let depth = self.backend.depth(&state.name).await;
            let configured = config.topic(&state.name).map(|i| &config.topics[i]);
            let hold = state.hold_until_ms.load(Relaxed);
            let mut doc = serde_json::json!({
                "paused": state.paused.load(Relaxed),
                "configured": configured.is_some(),
                "held_for_ms": hold.saturating_sub(now),
                "enqueued": state.enqueued.load(Relaxed),
                "delivered": state.delivered.load(Relaxed),
                "retried": state.retried.load(Relaxed),
                "dead_total": state.dead.load(Relaxed),
                "refused_full": state.refused_full.load(Relaxed),
                "held_back": state.not_sent.load(Relaxed),
            });
            match depth {
                Ok(d) => {
                    doc["depth"] = d.pending.into();
                    doc["in_flight"] = d.in_flight.into();
                    doc["dead"] = d.dead.into();
                    doc["bytes"] = d.bytes.into();
                    doc["oldest_age_ms"] =
                        d.oldest_created_ms.map(|c| now.saturating_sub(c)).into();
                }
                Err(e) => doc["error"] = e.to_string().into(),
            }
            topics.insert(state.name.clone(), doc);
        }
        serde_json::json!({ "backend": self.backend.name(), "topics": topics })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
