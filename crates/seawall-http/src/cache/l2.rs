//! The shared layer (L2): stored answers in Redis, for every Seawall instance of a fleet. It
//! never holds a response up: a lookup waits at most `cache.l2_timeout`, a store is sent in the
//! background, and after `FAILURES_TO_OPEN` failures in a row L2 is skipped for `OPEN_FOR`, then
//! tried again by itself (its own breaker). The Redis client is `redis`'s connection manager
//! (one multiplexed, pipelining connection that reconnects), driven from the control plane.
//!
//! Purges reach the whole fleet: the instance that is asked removes the entries from Redis and
//! publishes the purge on `<l2_prefix>purge`; every instance listens there (a subscription the
//! control plane keeps open, reconnecting after a second) and purges its own L1.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;

use super::codec;
use super::Stored;

/// Failures in a row that open L2's breaker.
const FAILURES_TO_OPEN: u32 = 3;

/// How long an open breaker skips L2.
const OPEN_FOR: Duration = Duration::from_secs(5);

/// What L2 counts.
#[derive(Default)]
pub struct L2Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    /// Lookups and stores not tried: the breaker was open.
    pub skipped: AtomicU64,
    pub stores: AtomicU64,
}

/// The Redis layer.
pub struct L2 {
    url: String,
    prefix: String,
    timeout: Duration,
    client: redis::Client,
    manager: OnceLock<ConnectionManager>,
    /// The control plane's runtime: stores run there.
    runtime: tokio::runtime::Handle,
    failures: AtomicU32,
    /// While now (ms, [`seawall_core::clock`]) is before this, L2 is skipped.
    open_until_ms: AtomicU64,
    pub counters: L2Counters,
    /// Tells this instance's purges from other instances'.
    instance: u64,
    /// The subscription to other instances' purges (ended with L2).
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A purge as instances tell each other: which entries, and who purged.
#[derive(serde::Serialize, serde::Deserialize)]
struct PurgeMessage {
    key: Option<String>,
    prefix: Option<String>,
    from: u64,
}

impl Drop for L2 {
    fn drop(&mut self) {
        if let Some(task) =
            self.listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        {
            task.abort();
        }
    }
}

impl L2 {
    /// L2 at `url` (checked when the configuration was read); must be called on the control
    /// plane's runtime, which drives the connection.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Option<Arc<L2>> {
        let client = match redis::Client::open(url) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(url, error = %e, "cache: the Redis URL is not usable; no L2");
                return None;
            }
        };
        Some(Arc::new(L2 {
            url: url.to_string(),
            prefix: prefix.to_string(),
            timeout,
            client,
            manager: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            counters: L2Counters::default(),
            // Random per process (std's hasher keys are): no two instances share it.
            instance: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::process::id(),
            ),
            listener: std::sync::Mutex::new(None),
        }))
    }

    /// Listens for other instances' purges and applies them with `apply` (this instance's L1).
    pub fn listen_for_purges(
        self: &Arc<Self>,
        apply: impl Fn(Option<&str>, Option<&str>) + Send + 'static,
    ) {
        let (client, channel, me) = (self.client.clone(), self.channel(), self.instance);
        let task = self.runtime.spawn(async move {
            use futures_util::StreamExt;
            loop {
                if let Ok(mut pubsub) = client.get_async_pubsub().await {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Ok(purge) =
                                serde_json::from_slice::<PurgeMessage>(message.get_payload_bytes())
                            else {
                                continue;
                            };
                            if purge.from != me {
                                apply(purge.key.as_deref(), purge.prefix.as_deref());
                            }
                        }
                    }
                }
                // Redis went away: listen again in a while.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let old =
            self.listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }

    fn channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// Whether this is L2 at `url` with `prefix` and `timeout`.
    pub fn is(&self, url: &str, prefix: &str, timeout: Duration) -> bool {
        self.url == url && self.prefix == prefix && self.timeout == timeout
    }

    /// Whether L2 is being skipped now (its breaker is open).
    pub fn is_open(&self) -> bool {
        seawall_core::clock::now_ms() < self.open_until_ms.load(Relaxed)
    }

    fn manager(&self) -> Option<ConnectionManager> {
        if let Some(m) = self.manager.get() {
            return Some(m.clone());
        }
        let _in = self.runtime.enter();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(m) => Some(self.manager.get_or_init(|| m).clone()),
            Err(e) => {
                tracing::warn!(error = %e, "cache: cannot set up the Redis connection");
                None
            }
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.counters.errors.fetch_add(1, Relaxed);
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures >= FAILURES_TO_OPEN {
            let until = seawall_core::clock::now_ms() + OPEN_FOR.as_millis() as u64;
            if self.open_until_ms.swap(until, Relaxed) < seawall_core::clock::now_ms() {
                tracing::warn!(what, error = %error, "cache: Redis (L2) failing; skipped for {OPEN_FOR:?}");
            }
            self.failures.store(0, Relaxed);
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, Relaxed);
    }

    /// The answer stored under `key`, if Redis has it within `timeout`.
    pub async fn get(&self, key: &str) -> Option<Stored> {
        if self.is_open() {
            self.counters.skipped.fetch_add(1, Relaxed);
            return None;
        }
        let mut conn = self.manager()?;
        let cmd = redis::cmd("GET").arg(self.key(key)).to_owned();
        let asked =
            tokio::time::timeout(self.timeout, cmd.query_async::<Option<Vec<u8>>>(&mut conn));
        match asked.await {
            Ok(Ok(Some(bytes))) => {
                self.succeeded();
                match codec::decode(&Bytes::from(bytes)) {
                    Some(stored) => {
                        self.counters.hits.fetch_add(1, Relaxed);
                        Some(stored)
                    }
                    None => {
                        // Another version's or a stranger's bytes: a miss.
                        self.counters.misses.fetch_add(1, Relaxed);
                        None
                    }
                }
            }
            Ok(Ok(None)) => {
                self.succeeded();
                self.counters.misses.fetch_add(1, Relaxed);
                None
            }
            Ok(Err(e)) => {
                self.failed("get", &e);
                None
            }
            Err(_) => {
                self.failed("get", &"timed out");
                None
            }
        }
    }

    /// Stores `stored` under `key` for `ttl` seconds, in the background.
    pub fn put(self: &Arc<Self>, key: &str, stored: &Stored, ttl: u64) {
        if self.is_open() {
            self.counters.skipped.fetch_add(1, Relaxed);
            return;
        }
        let Some(mut conn) = self.manager() else { return };
        let bytes = codec::encode(stored);
        let cmd =
            redis::cmd("SET").arg(self.key(key)).arg(bytes).arg("EX").arg(ttl.max(1)).to_owned();
        let l2 = Arc::clone(self);
        self.runtime.spawn(async move {
            let sent = tokio::time::timeout(l2.timeout * 4, cmd.query_async::<()>(&mut conn)).await;
            match sent {
                Ok(Ok(())) => {
                    l2.succeeded();
                    l2.counters.stores.fetch_add(1, Relaxed);
                }
                Ok(Err(e)) => l2.failed("set", &e),
                Err(_) => l2.failed("set", &"timed out"),
            }
        });
    }

    /// Removes the answers for `path` (every host and variant), or whose path starts with
    /// `prefix`, in the background; the keys are found with `SCAN`.
    pub fn purge(
        self: &Arc<Self>,
        path: Option<&str>,
        prefix: Option<&str>,
        then: impl Fn() + Send + 'static,
    ) {
        let Some(mut conn) = self.manager() else { return };
        // Keys hold the path after a newline; glob characters in it are escaped.
        let escaped = |s: &str| {
            s.chars().fold(String::new(), |mut out, c| {
                if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                    out.push('\\');
                }
                out.push(c);
                out
            })
        };
        // Keys hold each part after a newline (see `key.rs`): the path, then the query.
        let (pattern, wanted) = match (path, prefix) {
            (Some(p), _) => {
                let (path, query) =
                    p.split_once('?').map_or((p, String::new()), |(a, b)| (a, format!("?{b}")));
                // No newline after the path: a key may end with it (a route keyed without the
                // query); `matches` below keeps only the exact ones.
                let pattern = format!("{}*\n{}*", escaped(&self.prefix), escaped(path));
                (pattern, Some((path.to_string(), query)))
            }
            (None, Some(p)) => (format!("{}*\n{}*", escaped(&self.prefix), escaped(p)), None),
            (None, None) => return,
        };
        // A path's key: the part after the path is its query (empty without one).
        let matches = move |key: &str| match &wanted {
            None => true,
            Some((path, query)) => {
                let parts: Vec<&str> = key.split('\n').collect();
                parts.windows(2).any(|w| w[0] == path && w[1] == query)
                    || (query.is_empty() && parts.last() == Some(&path.as_str()))
            }
        };
        let message = PurgeMessage {
            key: path.map(str::to_string),
            prefix: prefix.map(str::to_string),
            from: self.instance,
        };
        let publish = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(serde_json::to_vec(&message).unwrap_or_default())
            .to_owned();
        let l2 = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut cursor: u64 = 0;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .to_owned();
                let Ok(Ok((next, keys))) = tokio::time::timeout(
                    Duration::from_secs(5),
                    scan.query_async::<(u64, Vec<String>)>(&mut conn),
                )
                .await
                else {
                    l2.counters.errors.fetch_add(1, Relaxed);
                    break;
                };
                let keys: Vec<String> = keys.into_iter().filter(|k| matches(k)).collect();
                if !keys.is_empty() {
                    let del = redis::cmd("UNLINK").arg(&keys).to_owned();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        del.query_async::<()>(&mut conn),
                    )
                    .await;
                    // What was fetched back from Redis before these went goes too.
                    then();
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // Only then the other instances purge their own L1 (earlier, they could fetch the
            // entries back from Redis).
            let told =
                tokio::time::timeout(Duration::from_secs(5), publish.query_async::<i64>(&mut conn));
            if !matches!(told.await, Ok(Ok(_))) {
                l2.counters.errors.fetch_add(1, Relaxed);
            }
        });
    }
}
