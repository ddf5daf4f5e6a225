//! The embedded backend: a fjall keyspace under `data_dir` (an LSM tree: a commit is one append
//! to its journal), written by one thread that commits in groups — every write waiting when a
//! commit starts shares it, and an enqueue is acknowledged only after the commit that holds it
//! was synced to disk (`fsync`). Updates that may be lost in a crash (an attempt's count, a
//! delivery) ride along without a sync of their own: losing one means a job is tried again,
//! which at-least-once allows; they are synced with the next enqueue, or within half a second.
//!
//! fjall was chosen over redb by measurement (`bench/results/queue.md`): redb rewrites B-tree
//! pages on every commit, fjall appends to a journal — 3.6× the acknowledgements per second.
//!
//! One process owns a folder (a lock on `data_dir/LOCK`). Jobs being delivered when the process
//! died are due again at start: the lease of the embedded store is the life of its process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use tokio::sync::oneshot;

use crate::index::TopicIndex;
use crate::job::{now_ms, JobId, Record, State, Status};
use crate::{Bounds, EnqueueError, Leased, StoreError};

/// At most this many writes share one commit.
const MAX_GROUP: usize = 4096;

/// A write for the writer thread.
enum Write {
    Put { id: JobId, bytes: Vec<u8> },
    Remove { id: JobId },
}

/// Writes that share one commit, and who waits for it.
struct Batch {
    writes: Vec<Write>,
    durable: bool,
    /// What the index learns once the commit is done (whether it succeeded): run by the writer,
    /// so that it happens even when the caller stopped waiting (an HTTP/2 client that reset its
    /// stream mid-commit must not leave a stored job out of the index).
    then: Option<Then>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// An index update that follows a commit.
type Then = Box<dyn FnOnce(&mut Index, bool) + Send>;

/// What the writer did: commits (synced or not), the writes they held, and the time spent.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub synced: AtomicU64,
    pub writes: AtomicU64,
    pub micros: AtomicU64,
}

impl CommitStats {
    fn record(&self, writes: u64, synced: bool, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.synced.fetch_add(u64::from(synced), Relaxed);
        self.writes.fetch_add(writes, Relaxed);
        self.micros.fetch_add(took.as_micros() as u64, Relaxed);
    }
}

/// The embedded store.
pub struct Embedded {
    /// The writer's commits.
    pub stats: Arc<CommitStats>,
    db: Arc<Store>,
    /// Held while the store is open: one process per folder.
    _lock: std::fs::File,
    writer: Mutex<mpsc::Sender<Batch>>,
    index: Arc<Mutex<Index>>,
}

/// The keyspace and its one partition, `jobs`: job id → [`Record`].
struct Store {
    keyspace: Keyspace,
    jobs: PartitionHandle,
}

impl Store {
    fn get(&self, id: JobId) -> Result<Option<Record>, StoreError> {
        let found = self.jobs.get(id.0).map_err(io)?;
        Ok(found.and_then(|v| Record::decode(&v).ok()))
    }
}

#[derive(Default)]
pub(crate) struct Index {
    topics: HashMap<String, TopicIndex>,
    /// Delivered jobs by when they were delivered: their status is forgotten after
    /// `keep_finished`.
    finished: std::collections::VecDeque<(u64, JobId)>,
    /// Records that could not be read at start (skipped).
    damaged: u64,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl Embedded {
    /// Opens (or creates) the store in `dir` and indexes what it holds; `commit_delay` is how
    /// long the writer waits for company before a commit.
    pub fn open(dir: &Path, commit_delay: Duration) -> Result<Embedded, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let lock = lock_folder(dir)?;
        let keyspace = fjall::Config::new(dir.join("store")).open().map_err(|e| {
            StoreError::Io(format!("cannot open the queue in {}: {e}", dir.display()))
        })?;
        let jobs =
            keyspace.open_partition("jobs", PartitionCreateOptions::default()).map_err(io)?;
        let db = Arc::new(Store { keyspace, jobs });
        let mut index = Index::default();
        let mut finished = Vec::new();
        for item in db.jobs.iter() {
            let (key, value) = item.map_err(io)?;
            let Some(id) = key_id(&key) else {
                index.damaged += 1;
                continue;
            };
            let Ok(record) = Record::decode(&value) else {
                index.damaged += 1;
                continue;
            };
            if record.state == State::Delivered {
                finished.push((record.finished_ms, id));
                continue;
            }
            let topic = index.topics.entry(record.topic.clone()).or_default();
            // A job that was being delivered when the process stopped is due again.
            let due = if record.state == State::Failed { record.next_attempt_ms } else { 0 };
            let size = record.request.size();
            topic.load(id, record.state, due, record.created_ms, size, record.finished_ms);
        }
        finished.sort_unstable();
        index.finished = finished.into();
        for t in index.topics.values_mut() {
            t.loaded();
        }
        if index.damaged > 0 {
            tracing::warn!(
                damaged = index.damaged,
                "queue: job records that cannot be read were skipped"
            );
        }
        let (tx, rx) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        let index = Arc::new(Mutex::new(index));
        let writer_index = Arc::clone(&index);
        let stats = Arc::new(CommitStats::default());
        let writer_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("seawall-queue-writer".into())
            .spawn(move || write_loop(&writer_db, &writer_index, &rx, commit_delay, &writer_stats))
            .map_err(|e| StoreError::Io(format!("cannot start the queue's writer: {e}")))?;
        Ok(Embedded { stats, db, _lock: lock, writer: Mutex::new(tx), index })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn commit(
        &self,
        writes: Vec<Write>,
        durable: bool,
        then: Option<Then>,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Batch { writes, durable, then, done });
        if sent.is_err() {
            return Err(StoreError::Io("the queue's writer has stopped".into()));
        }
        wait.await.unwrap_or_else(|_| Err(StoreError::Io("the queue's writer has stopped".into())))
    }

    /// Reserves room for a job of `size` bytes in `topic` within `bounds`; `Err` names the
    /// bound that is full.
    fn reserve(&self, topic: &str, size: u64, bounds: &Bounds) -> Result<(), &'static str> {
        let mut index = self.index();
        let (total_jobs, total_bytes) = index.topics.values().fold((0, 0), |(j, b), t| {
            let (tj, tb) = t.held();
            (j + tj, b + tb)
        });
        let t = index.topics.entry(topic.to_string()).or_default();
        let (jobs, bytes) = t.held();
        if let Some(which) = bounds.exceeded((jobs, bytes), (total_jobs, total_bytes), size) {
            return Err(which);
        }
        t.pending += 1;
        t.pending_bytes += size;
        Ok(())
    }

    /// Stores a new job durably, within `bounds`; returns once the commit holding it is on
    /// disk.
    pub async fn enqueue(
        &self,
        id: JobId,
        record: &Record,
        bounds: &Bounds,
    ) -> Result<(), EnqueueError> {
        let size = record.request.size();
        self.reserve(&record.topic, size, bounds).map_err(EnqueueError::Full)?;
        let bytes = record.encode();
        let (topic, created) = (record.topic.clone(), record.created_ms);
        let then: Then = Box::new(move |index, ok| {
            let t = index.topics.entry(topic).or_default();
            // The reservation becomes the job, or is given back.
            if ok {
                t.push_new(id, created);
            } else {
                t.pending = t.pending.saturating_sub(1);
                t.pending_bytes = t.pending_bytes.saturating_sub(size);
            }
        });
        let result = self.commit(vec![Write::Put { id, bytes }], true, Some(then)).await;
        result.map_err(EnqueueError::Store)
    }

    /// Up to `max` jobs of `topic` due at `now_ms`, leased to the caller.
    pub fn lease(&self, topic: &str, now_ms: u64, max: usize) -> Result<Vec<Leased>, StoreError> {
        let ids: Vec<JobId> = {
            let mut index = self.index();
            let Some(t) = index.topics.get_mut(topic) else { return Ok(Vec::new()) };
            std::iter::from_fn(|| t.take_due(now_ms)).take(max).collect()
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut leased = Vec::with_capacity(ids.len());
        for id in ids {
            match self.db.get(id) {
                Ok(Some(record)) => leased.push(Leased { id, record, token: None }),
                Ok(None) => {
                    // Gone or unreadable: nothing to deliver (its size is not known: counted).
                    let mut index = self.index();
                    index.damaged += 1;
                    if let Some(t) = index.topics.get_mut(topic) {
                        t.settle(id, 0, None);
                    }
                }
                Err(e) => {
                    // The store could not be read now: the job waits a second and is tried again.
                    tracing::warn!(topic, error = %e, "queue: a job could not be read for delivery");
                    if let Some(t) = self.index().topics.get_mut(topic) {
                        t.release(id, now_ms.saturating_add(1000));
                    }
                }
            }
        }
        Ok(leased)
    }

    /// When `topic`'s next job is due (ms since the epoch).
    pub fn next_due(&self, topic: &str) -> Option<u64> {
        self.index().topics.get(topic).and_then(TopicIndex::next_due)
    }

    /// Records the outcome of a leased job: `record` is its new state (delivered, failed with a
    /// next attempt, or dead).
    pub async fn settle(&self, leased: Leased) -> Result<(), StoreError> {
        let Leased { id, mut record, .. } = leased;
        let size = record.request.size();
        if record.state == State::Delivered {
            // Only the status is kept.
            record.request = crate::job::Request::default();
        }
        let durable = record.state == State::Dead;
        let bytes = record.encode();
        let then: Then = Box::new(move |index, ok| {
            let t = index.topics.entry(record.topic.clone()).or_default();
            match record.state {
                // Not recorded: the job is due again (it may be delivered twice: at least once).
                _ if !ok => t.release(id, 0),
                State::Delivered => {
                    t.settle(id, size, None);
                    index.finished.push_back((record.finished_ms, id));
                }
                State::Dead => t.settle(id, size, Some(record.finished_ms)),
                _ => t.release(id, record.next_attempt_ms),
            }
        });
        self.commit(vec![Write::Put { id, bytes }], durable, Some(then)).await
    }

    /// What is known of job `id`; `delivering` says whether the caller holds it now.
    pub fn status(&self, id: JobId) -> Result<Option<Status>, StoreError> {
        let Some(record) = self.db.get(id)? else { return Ok(None) };
        let mut status = Status::of(id, &record);
        let leased =
            self.index().topics.get(&record.topic).is_some_and(|t| t.leased.contains_key(&id));
        if leased {
            status.state = State::Delivering;
            status.next_attempt_ms = None;
        }
        Ok(Some(status))
    }

    /// Pending jobs, their bytes, dead letters, and the oldest pending job's creation time, of
    /// `topic`.
    pub fn depth(&self, topic: &str) -> crate::Depth {
        let index = self.index();
        index.topics.get(topic).map_or_else(crate::Depth::default, |t| crate::Depth {
            pending: t.pending,
            bytes: t.pending_bytes + t.dead_bytes,
            dead: t.dead.len() as u64,
            in_flight: t.leased.len() as u64,
            oldest_created_ms: t.oldest_created(),
        })
    }

    /// Topics that hold jobs (some may no longer be configured).
    pub fn topics(&self) -> Vec<String> {
        self.index().topics.keys().cloned().collect()
    }

    /// Up to `limit` dead letters of `topic`, oldest death first.
    pub fn dead(&self, topic: &str, limit: usize) -> Result<Vec<Status>, StoreError> {
        let ids: Vec<JobId> = {
            let index = self.index();
            let Some(t) = index.topics.get(topic) else { return Ok(Vec::new()) };
            t.dead.keys().take(limit).map(|&(_, id)| id).collect()
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(record) = self.db.get(id)? {
                out.push(Status::of(id, &record));
            }
        }
        Ok(out)
    }

    /// Requeues (`requeue`) or purges the dead letters of `topic` (`only`: just this one);
    /// returns how many.
    pub async fn revive(
        &self,
        topic: &str,
        only: Option<JobId>,
        requeue: bool,
    ) -> Result<u64, StoreError> {
        let dead: Vec<(u64, JobId)> = {
            let index = self.index();
            let Some(t) = index.topics.get(topic) else { return Ok(0) };
            t.dead.keys().filter(|(_, id)| only.is_none_or(|o| o == *id)).copied().collect()
        };
        if dead.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut writes = Vec::with_capacity(dead.len());
        let mut created = HashMap::new();
        {
            for &(_, id) in &dead {
                if !requeue {
                    writes.push(Write::Remove { id });
                    continue;
                }
                let Some(mut record) = self.db.get(id)? else {
                    continue;
                };
                record.state = State::Queued;
                record.attempts = 0;
                record.next_attempt_ms = 0;
                record.finished_ms = 0;
                created.insert(id, record.created_ms);
                writes.push(Write::Put { id, bytes: record.encode() });
            }
        }
        let topic = topic.to_string();
        let count = Arc::new(AtomicU64::new(0));
        let n_out = Arc::clone(&count);
        let then: Then = Box::new(move |index, ok| {
            if !ok {
                return;
            }
            let t = index.topics.entry(topic).or_default();
            for (at, id) in dead {
                let again = created.get(&id).map(|&c| (now, c));
                if (!requeue || again.is_some()) && t.undead(at, id, again) {
                    n_out.fetch_add(1, Relaxed);
                }
            }
        });
        self.commit(writes, true, Some(then)).await?;
        let n = count.load(Relaxed);
        Ok(n)
    }

    /// Forgets delivered jobs finished before `before_ms`; returns how many.
    pub async fn expire(&self, before_ms: u64) -> Result<u64, StoreError> {
        let ids: Vec<JobId> = {
            let mut index = self.index();
            let mut ids = Vec::new();
            while index.finished.front().is_some_and(|&(at, _)| at < before_ms)
                && ids.len() < MAX_GROUP
            {
                if let Some((_, id)) = index.finished.pop_front() {
                    ids.push(id);
                }
            }
            ids
        };
        let n = ids.len() as u64;
        if n > 0 {
            let writes = ids.into_iter().map(|id| Write::Remove { id }).collect();
            self.commit(writes, false, None).await?;
        }
        Ok(n)
    }

    /// Records that could not be read back.
    pub fn damaged(&self) -> u64 {
        self.index().damaged
    }
}

fn key_id(key: &[u8]) -> Option<JobId> {
    Some(JobId(key.try_into().ok()?))
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The writer thread: takes every batch waiting, commits them together (durably when any asks
/// for it), then answers each. Ends when the store is dropped.
fn write_loop(
    db: &Store,
    index: &Mutex<Index>,
    rx: &mpsc::Receiver<Batch>,
    commit_delay: Duration,
    stats: &CommitStats,
) {
    // Commits without a sync are made durable by the next durable one; one comes at least this
    // often so that they do not pile up.
    const SYNC_EVERY: Duration = Duration::from_millis(500);
    let mut unsynced_since: Option<std::time::Instant> = None;
    loop {
        let first = match unsynced_since {
            None => match rx.recv() {
                Ok(b) => b,
                Err(_) => return,
            },
            Some(since) => match rx.recv_timeout(SYNC_EVERY.saturating_sub(since.elapsed())) {
                Ok(b) => b,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = commit(db, Vec::new(), true);
                    unsynced_since = None;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        if !commit_delay.is_zero() && first.durable {
            std::thread::sleep(commit_delay);
        }
        let mut group = vec![first];
        let mut writes = group[0].writes.len();
        while writes < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => {
                    writes += b.writes.len();
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        let durable = group.iter().any(|b| b.durable)
            || unsynced_since.is_some_and(|s| s.elapsed() >= SYNC_EVERY);
        let all: Vec<Write> =
            group.iter_mut().flat_map(|b| std::mem::take(&mut b.writes)).collect();
        let started = std::time::Instant::now();
        let result = commit(db, all, durable);
        stats.record(writes as u64, durable, started.elapsed());
        if result.is_ok() {
            unsynced_since = if durable {
                None
            } else {
                unsynced_since.or_else(|| Some(std::time::Instant::now()))
            };
        } else {
            tracing::error!(error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "queue: a commit failed");
        }
        {
            let mut index = index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for b in &mut group {
                if let Some(then) = b.then.take() {
                    then(&mut index, result.is_ok());
                }
            }
        }
        for b in group {
            let _ = b.done.send(result.clone());
        }
    }
}

fn commit(db: &Store, writes: Vec<Write>, durable: bool) -> Result<(), StoreError> {
    if writes.is_empty() {
        return if durable {
            db.keyspace.persist(PersistMode::SyncData).map_err(io)
        } else {
            Ok(())
        };
    }
    let mut batch = db.keyspace.batch().durability(durable.then_some(PersistMode::SyncData));
    for w in writes {
        match w {
            Write::Put { id, bytes } => batch.insert(&db.jobs, id.0, bytes),
            Write::Remove { id } => batch.remove(&db.jobs, id.0),
        }
    }
    batch.commit().map_err(io)
}

/// Takes the folder's lock, or says that another process has it.
fn lock_folder(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Io(format!(
            "{} is in use by another process (one Seawall per queue.data_dir)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Io(format!("cannot lock {}: {e}", path.display())))
        }
    }
}
