//! The Redis Streams backend, for a fleet: every Seawall instance enqueues into and delivers from
//! the same streams, one per topic, read through one consumer group so that each job goes to one
//! instance at a time.
//!
//! ```text
//! enqueue ─▶ Lua: bounds ▸ XADD stream ▸ counters ▸ status hash ─▶ 202
//! lease   ─▶ Lua: due retries → XADD │ XAUTOCLAIM (leases idle > lease) │ XREADGROUP >
//! settle  ─▶ Lua: XACK (first settle wins) ▸ XDEL ▸ delivered │ delayed (ZADD) │ dead (HSET)
//! ```
//!
//! Keys, under the configured prefix `P` (default `seawall:queue:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{topic}:stream` | stream, group `seawall` | jobs due: fields `id` (32 hex digits) and `job` ([`Record::encode`]) |
//! | `P{topic}:delayed` | sorted set | retries not yet due: score = due ms, member = id hex + encoded record |
//! | `P{topic}:dead` | hash | dead letters: field = id hex, value = encoded record |
//! | `P{topic}:count` | hash | `jobs`, `bytes` the topic holds (dead letters included): its bounds |
//! | `Ptotal` | hash | `jobs`, `bytes` of every topic: the queue's bounds |
//! | `Pjob:{id}` | hash | the status: `state topic attempts created next finished last_error` |
//!
//! Every write that must be all-or-nothing (the bounds and the XADD of an enqueue, the XACK and
//! what follows of a settle, a retry becoming due, a revive) is one Lua script, so a crash of
//! Seawall between two commands cannot leave a job counted twice or lost. The scripts touch keys of
//! several topics (the total) and so need one Redis, not a Redis Cluster.
//!
//! Durability is Redis's: an enqueue is answered once Redis has answered the script. With
//! `appendonly yes` and `appendfsync always`, Redis writes and fsyncs the AOF before it answers,
//! which gives "fsync before ack" like the embedded store; the default `appendfsync everysec` may
//! lose the last second of jobs in a power cut.
//!
//! A lease is the consumer group's pending entry: a job leased by an instance that died (or that
//! never settled it) is taken by the next `lease` call of any instance once it has been idle longer
//! than `lease` (XAUTOCLAIM). Settling acknowledges the entry first; a settle whose entry was
//! already acknowledged (the job was taken over and settled by another instance) changes nothing.
//! Delivery is at least once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

use crate::job::{JobId, Record, State, Status};
use crate::{Bounds, Depth, EnqueueError, Leased, StoreError};

/// The consumer group every instance reads through.
const GROUP: &str = "seawall";

/// How many due retries one lease moves into the stream at most (bounds the script's time).
const MOVE_AT_MOST: usize = 1000;

/// Jobs in Redis Streams.
pub struct RedisStreams {
    /// Reconnects by itself; cloned (cheaply) for each call.
    con: ConnectionManager,
    prefix: String,
    /// This instance's consumer name in the group: `host-pid-random`, so that a restarted
    /// instance never claims to be the one that died.
    consumer: String,
    /// How long a leased job may stay unsettled before another instance takes it.
    lease_ms: u64,
    /// How long a delivered job's status is kept.
    keep_ms: u64,
    /// Topics whose consumer group is known to exist (created at first use).
    groups: Mutex<HashSet<String>>,
    /// Stream entries that could not be read (dropped).
    damaged: AtomicU64,
    /// Stream entries this instance is delivering now: an attempt slower than the lease must
    /// not be handed out again here (XAUTOCLAIM also takes back this consumer's own entries).
    in_flight: Mutex<HashSet<String>>,
}

/// The scripts, hashed once (they are sent by hash, and in full only when Redis lacks them).
static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: Script::new(ENQUEUE),
    promote: Script::new(PROMOTE),
    settle: Script::new(SETTLE),
    requeue: Script::new(REQUEUE),
    purge: Script::new(PURGE),
    depth: Script::new(DEPTH),
});

struct Scripts {
    enqueue: Script,
    promote: Script,
    settle: Script,
    requeue: Script,
    purge: Script,
    depth: Script,
}

impl std::fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreams")
            .field("prefix", &self.prefix)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// KEYS: topic count, total, stream, status. ARGV: size, topic_jobs, topic_bytes, total_jobs,
/// total_bytes, id, job bytes, topic, created. Answers {0} when stored, or {1, topic jobs, topic
/// bytes, total jobs, total bytes} when a bound is full (the caller names it).
const ENQUEUE: &str = r"
local tj = tonumber(redis.call('HGET', KEYS[1], 'jobs') or '0')
local tb = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local aj = tonumber(redis.call('HGET', KEYS[2], 'jobs') or '0')
local ab = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local size = tonumber(ARGV[1])
if tj + 1 > tonumber(ARGV[2]) or tb + size > tonumber(ARGV[3])
  or aj + 1 > tonumber(ARGV[4]) or ab + size > tonumber(ARGV[5]) then
  return {1, tj, tb, aj, ab}
end
redis.call('XADD', KEYS[3], '*', 'id', ARGV[6], 'job', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'jobs', 1)
redis.call('HINCRBY', KEYS[1], 'bytes', size)
redis.call('HINCRBY', KEYS[2], 'jobs', 1)
redis.call('HINCRBY', KEYS[2], 'bytes', size)
redis.call('HSET', KEYS[4], 'state', 'queued', 'topic', ARGV[8], 'attempts', 0,
  'created', ARGV[9], 'next', 0, 'finished', 0, 'last_error', '')
return {0}
";

/// KEYS: delayed, stream. ARGV: now ms, at most. Moves the retries due into the stream.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('XADD', KEYS[2], '*', 'id', string.sub(m, 1, 32), 'job', string.sub(m, 33))
end
return #due
";

/// KEYS: stream, topic count, total, status, delayed, dead. ARGV: entry, mode (delivered, retry,
/// dead), id hex, size, keep ms, payload (retry: the delayed member; dead: the record), due ms,
/// then the status fields and values. Answers 0 when the entry was no longer pending.
const SETTLE: &str = r"
if redis.call('XACK', KEYS[1], 'seawall', ARGV[1]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[1])
local mode = ARGV[2]
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
if mode == 'delivered' then
  local size = tonumber(ARGV[4])
  redis.call('HINCRBY', KEYS[2], 'jobs', -1)
  redis.call('HINCRBY', KEYS[2], 'bytes', -size)
  redis.call('HINCRBY', KEYS[3], 'jobs', -1)
  redis.call('HINCRBY', KEYS[3], 'bytes', -size)
  redis.call('HSET', KEYS[4], unpack(fields))
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
elseif mode == 'retry' then
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
  redis.call('HSET', KEYS[4], unpack(fields))
else
  redis.call('HSET', KEYS[6], ARGV[3], ARGV[6])
  redis.call('HSET', KEYS[4], unpack(fields))
end
return 1
";

/// KEYS: dead, stream, status. ARGV: id hex, record (reset). Answers 0 when it was not dead.
const REQUEUE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'job', ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'queued', 'attempts', 0, 'next', 0, 'finished', 0)
return 1
";

/// KEYS: dead, topic count, total, status. ARGV: id hex, size. Answers 0 when it was not dead.
const PURGE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local size = tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[2], 'jobs', -1)
redis.call('HINCRBY', KEYS[2], 'bytes', -size)
redis.call('HINCRBY', KEYS[3], 'jobs', -1)
redis.call('HINCRBY', KEYS[3], 'bytes', -size)
redis.call('DEL', KEYS[4])
return 1
";

/// KEYS: stream, delayed, dead, topic count. Answers {stream length, delayed, in flight, dead,
/// bytes, first stream record or '', first delayed member or ''}.
const DEPTH: &str = r"
local inflight = 0
local p = redis.pcall('XPENDING', KEYS[1], 'seawall')
if type(p) == 'table' and p.err == nil and p[1] then inflight = p[1] end
local first = ''
local e = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if e[1] then
  local f = e[1][2]
  for i = 1, #f, 2 do if f[i] == 'job' then first = f[i + 1] end end
end
local d = redis.call('ZRANGE', KEYS[2], 0, 0)
return {redis.call('XLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), inflight,
  redis.call('HLEN', KEYS[3]), tonumber(redis.call('HGET', KEYS[4], 'bytes') or '0'),
  first, d[1] or ''}
";

impl RedisStreams {
    /// Connects to `url`; keys are made under `prefix`. A job leased and not settled within
    /// `lease` is handed out again; a delivered job's status is kept for `keep_finished`.
    pub async fn open(
        url: &str,
        prefix: &str,
        lease: Duration,
        keep_finished: Duration,
    ) -> Result<RedisStreams, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Io(format!("redis: the url {url:?} is not valid: {e}")))?;
        // Redis down must fail an enqueue fast (503 queue_full), not hold the client: one quick
        // reconnection attempt per command, short timeouts.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StoreError::Io(format!("redis: cannot connect to {url}: {e}")))?;
        let mut random = [0u8; 4];
        getrandom::fill(&mut random)
            .map_err(|e| StoreError::Io(format!("no randomness for a consumer name: {e}")))?;
        let consumer =
            format!("{}-{}-{:08x}", hostname(), std::process::id(), u32::from_le_bytes(random));
        Ok(RedisStreams {
            con,
            prefix: prefix.to_string(),
            consumer,
            lease_ms: lease.as_millis().try_into().unwrap_or(u64::MAX),
            // Redis refuses an expiry past its clock's range: a century is "forever" here.
            keep_ms: keep_finished.as_millis().min(100 * 365 * 86_400_000) as u64,
            groups: Mutex::default(),
            damaged: AtomicU64::new(0),
            in_flight: Mutex::default(),
        })
    }

    fn key(&self, topic: &str, what: &str) -> String {
        format!("{}{topic}:{what}", self.prefix)
    }

    fn total_key(&self) -> String {
        format!("{}total", self.prefix)
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// This instance's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Stream entries that could not be read back (acknowledged and dropped).
    pub fn damaged(&self) -> u64 {
        self.damaged.load(Relaxed)
    }

    /// Stores a new job within `bounds`; returns once Redis has answered.
    pub async fn enqueue(
        &self,
        id: JobId,
        record: &Record,
        bounds: &Bounds,
    ) -> Result<(), EnqueueError> {
        let topic = &record.topic;
        let size = record.request.size();
        let mut con = self.con.clone();
        let answer: Vec<u64> = SCRIPTS
            .enqueue
            .key(self.key(topic, "count"))
            .key(self.total_key())
            .key(self.key(topic, "stream"))
            .key(self.job_key(id))
            .arg(size)
            .arg(bounds.topic_jobs)
            .arg(bounds.topic_bytes)
            .arg(bounds.total_jobs)
            .arg(bounds.total_bytes)
            .arg(id.to_string())
            .arg(record.encode())
            .arg(topic)
            .arg(record.created_ms)
            .invoke_async(&mut con)
            .await
            .map_err(|e| EnqueueError::Store(failed("enqueue", &e)))?;
        match answer.as_slice() {
            [0] => Ok(()),
            &[1, tj, tb, aj, ab] => {
                // The script checked the same bounds in the same order; the name comes from the
                // one definition of them.
                let which = bounds.exceeded((tj, tb), (aj, ab), size).unwrap_or("queue.max_jobs");
                Err(EnqueueError::Full(which))
            }
            other => Err(EnqueueError::Store(StoreError::Io(format!(
                "redis: enqueue answered {other:?}"
            )))),
        }
    }

    /// Creates `topic`'s consumer group (and stream) unless known to exist.
    async fn ensure_group(&self, topic: &str) -> Result<(), StoreError> {
        if lock(&self.groups).contains(topic) {
            return Ok(());
        }
        let mut con = self.con.clone();
        let made: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key(topic, "stream"))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match made {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(failed("create the consumer group", &e)),
        }
        lock(&self.groups).insert(topic.to_string());
        Ok(())
    }

    /// Up to `max` jobs of `topic` due at `now_ms`, leased to this instance: retries that became
    /// due are moved into the stream, then jobs whose lease expired are taken over, then new
    /// entries are read.
    pub async fn lease(
        &self,
        topic: &str,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<Leased>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.ensure_group(topic).await?;
        let stream = self.key(topic, "stream");
        let mut con = self.con.clone();
        let _moved: u64 = SCRIPTS
            .promote
            .key(self.key(topic, "delayed"))
            .key(&stream)
            .arg(now_ms)
            .arg(MOVE_AT_MOST)
            .invoke_async(&mut con)
            .await
            .map_err(|e| failed("move due retries", &e))?;
        let claimed: Value = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.lease_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut con)
            .await
            .map_err(|e| self.group_lost(topic, "take over expired leases", e))?;
        let mut entries = match claimed {
            Value::Array(mut parts) if parts.len() >= 2 => entries(parts.swap_remove(1)),
            _ => Vec::new(),
        };
        // Our own attempts slower than the lease come back in the claim: they do not take the
        // room of new jobs.
        let ours = {
            let in_flight =
                self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            entries.iter().filter(|e| in_flight.contains(&format!("{stream} {}", e.entry))).count()
        };
        if entries.len() - ours < max {
            let read: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max - (entries.len() - ours))
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut con)
                .await
                .map_err(|e| self.group_lost(topic, "read new jobs", e))?;
            // Nil when nothing is new; else [[stream, [entries]]] (a map in RESP3).
            let streams = match read {
                Value::Array(s) => s,
                Value::Map(m) => m.into_iter().map(|(k, v)| Value::Array(vec![k, v])).collect(),
                _ => Vec::new(),
            };
            for s in streams {
                if let Value::Array(mut pair) = s {
                    if pair.len() == 2 {
                        entries.extend(self::entries(pair.swap_remove(1)));
                    }
                }
            }
        }
        let mut leased = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        {
            let mut in_flight =
                self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for entry in entries {
                // Entry ids are per stream: the stream's key makes them unique.
                if !in_flight.insert(format!("{stream} {}", entry.entry)) {
                    // Ours, still being delivered: the claim renewed its lease, nothing more.
                    continue;
                }
                let job = entry.id.as_deref().and_then(JobId::parse);
                match (job, entry.job.as_deref().map(Record::decode)) {
                    (Some(id), Some(Ok(record))) => {
                        leased.push(Leased { id, record, token: Some(entry.entry) })
                    }
                    _ => bad.push(entry.entry),
                }
            }
            for entry in &bad {
                in_flight.remove(&format!("{stream} {entry}"));
            }
        }
        let mut pipe = redis::pipe();
        for l in &leased {
            pipe.hset(self.job_key(l.id), "state", State::Delivering.as_str()).ignore();
        }
        if !bad.is_empty() {
            tracing::warn!(topic, entries = ?bad, "queue: damaged stream entries dropped");
            self.damaged.fetch_add(bad.len() as u64, Relaxed);
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(&bad).ignore();
            pipe.cmd("XDEL").arg(&stream).arg(&bad).ignore();
        }
        if !leased.is_empty() || !bad.is_empty() {
            // The lease is the entry in the group's pending list; the status is only what
            // GET /jobs/ID shows: a failure here must not drop the jobs just taken.
            if let Err(e) = pipe.query_async::<()>(&mut con).await {
                tracing::warn!(topic, error = %e, "queue: jobs taken for delivery could not be marked delivering");
            }
        }
        Ok(leased)
    }

    /// A NOGROUP error means the stream was deleted under us: the group is made again at the
    /// next call.
    fn group_lost(&self, topic: &str, what: &str, e: RedisError) -> StoreError {
        if e.code() == Some("NOGROUP") {
            lock(&self.groups).remove(topic);
        }
        failed(what, &e)
    }

    /// Records the outcome of a leased job: delivered, failed with a next attempt, or dead (any
    /// other state gives the job back, due at `next_attempt_ms`).
    pub async fn settle(&self, leased: Leased) -> Result<(), StoreError> {
        let Leased { id, mut record, token } = leased;
        let Some(entry) = token else {
            return Err(StoreError::Io(format!("job {id} was not leased from Redis")));
        };
        let topic = record.topic.clone();
        let in_flight = format!("{} {entry}", self.key(&topic, "stream"));
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&in_flight);
        let size = record.request.size();
        let (mode, payload) = match record.state {
            State::Delivered => {
                record.request = crate::job::Request::default();
                ("delivered", Vec::new())
            }
            State::Dead => ("dead", record.encode()),
            State::Queued | State::Delivering | State::Failed => {
                if record.state == State::Delivering {
                    record.state = State::Queued;
                }
                let mut member = id.to_string().into_bytes();
                member.extend_from_slice(&record.encode());
                ("retry", member)
            }
        };
        let mut con = self.con.clone();
        let mut call = SCRIPTS.settle.prepare_invoke();
        call.key(self.key(&topic, "stream"))
            .key(self.key(&topic, "count"))
            .key(self.total_key())
            .key(self.job_key(id))
            .key(self.key(&topic, "delayed"))
            .key(self.key(&topic, "dead"))
            .arg(&entry)
            .arg(mode)
            .arg(id.to_string())
            .arg(size)
            .arg(self.keep_ms.max(1))
            .arg(payload)
            .arg(record.next_attempt_ms);
        for (field, value) in status_fields(&record) {
            call.arg(field).arg(value);
        }
        let done: i64 = call.invoke_async(&mut con).await.map_err(|e| failed("settle", &e))?;
        if done == 0 {
            tracing::debug!(job = %id, entry, "queue: the lease was settled elsewhere first");
        }
        Ok(())
    }

    /// What is known of job `id`.
    pub async fn status(&self, id: JobId) -> Result<Option<Status>, StoreError> {
        let mut con = self.con.clone();
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.job_key(id))
            .query_async(&mut con)
            .await
            .map_err(|e| failed("read a job's status", &e))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| {
            fields.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str()).unwrap_or_default()
        };
        let num = |name: &str| get(name).parse::<u64>().unwrap_or(0);
        let state = match get("state") {
            "queued" => State::Queued,
            "delivering" => State::Delivering,
            "failed" => State::Failed,
            "delivered" => State::Delivered,
            "dead" => State::Dead,
            // Not a status this backend wrote.
            _ => return Ok(None),
        };
        let next = num("next");
        let finished = num("finished");
        let last_error = get("last_error");
        Ok(Some(Status {
            id,
            topic: get("topic").to_string(),
            state,
            attempts: u32::try_from(num("attempts")).unwrap_or(u32::MAX),
            created_ms: num("created"),
            next_attempt_ms: (state == State::Failed).then_some(next),
            finished_ms: (finished > 0).then_some(finished),
            last_error: (!last_error.is_empty()).then(|| last_error.to_string()),
        }))
    }

    /// What `topic` holds. `oldest_created_ms` is approximate: the older of the first job in the
    /// stream and the first retry waiting (a retry re-added to the stream, or one due later, can
    /// be older than both).
    pub async fn depth(&self, topic: &str) -> Result<Depth, StoreError> {
        let mut con = self.con.clone();
        let answer: Value = SCRIPTS
            .depth
            .key(self.key(topic, "stream"))
            .key(self.key(topic, "delayed"))
            .key(self.key(topic, "dead"))
            .key(self.key(topic, "count"))
            .invoke_async(&mut con)
            .await
            .map_err(|e| failed("read a topic's depth", &e))?;
        let Value::Array(parts) = answer else {
            return Err(StoreError::Io(format!("redis: depth answered {answer:?}")));
        };
        let int = |i: usize| match parts.get(i) {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let bytes = |i: usize| match parts.get(i) {
            Some(Value::BulkString(b)) if !b.is_empty() => Some(b.as_slice()),
            _ => None,
        };
        let first_stream = bytes(5).and_then(|b| Record::decode(b).ok()).map(|r| r.created_ms);
        let first_delayed =
            bytes(6).and_then(|b| Record::decode(b.get(32..)?).ok()).map(|r| r.created_ms);
        let oldest = match (first_stream, first_delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Depth {
            pending: int(0) + int(1),
            in_flight: int(2),
            dead: int(3),
            bytes: int(4),
            oldest_created_ms: oldest,
        })
    }

    /// Up to `limit` dead letters of `topic`, oldest death first among those read.
    pub async fn dead(&self, topic: &str, limit: usize) -> Result<Vec<Status>, StoreError> {
        let mut out: Vec<Status> = self
            .dead_records(topic, limit)
            .await?
            .into_iter()
            .filter_map(|(id, record)| Some(Status::of(id, &record.ok()?)))
            .collect();
        out.sort_by_key(|s| (s.finished_ms, s.id));
        Ok(out)
    }

    /// Up to `limit` entries of `topic`'s dead-letter hash (a damaged record is an `Err`).
    async fn dead_records(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<(JobId, Result<Record, crate::job::Damaged>)>, StoreError> {
        let key = self.key(topic, "dead");
        let mut con = self.con.clone();
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(limit.clamp(10, 1000))
                .query_async(&mut con)
                .await
                .map_err(|e| failed("read dead letters", &e))?;
            for (field, bytes) in page {
                if out.len() >= limit {
                    return Ok(out);
                }
                if let Some(id) = JobId::parse(&field) {
                    out.push((id, Record::decode(&bytes)));
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Requeues (`requeue`: due now, attempts reset) or purges the dead letters of `topic`
    /// (`only`: just this one); returns how many.
    pub async fn revive(
        &self,
        topic: &str,
        only: Option<JobId>,
        requeue: bool,
    ) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let dead = match only {
            Some(id) => {
                let bytes: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg(self.key(topic, "dead"))
                    .arg(id.to_string())
                    .query_async(&mut con)
                    .await
                    .map_err(|e| failed("read a dead letter", &e))?;
                bytes.map(|b| vec![(id, Record::decode(&b))]).unwrap_or_default()
            }
            None => self.dead_records(topic, usize::MAX).await?,
        };
        let mut n = 0;
        for (id, record) in dead {
            let done: i64 = if requeue {
                // A damaged letter cannot be delivered: it stays for a purge.
                let Ok(mut record) = record else { continue };
                record.state = State::Queued;
                record.attempts = 0;
                record.next_attempt_ms = 0;
                record.finished_ms = 0;
                SCRIPTS
                    .requeue
                    .key(self.key(topic, "dead"))
                    .key(self.key(topic, "stream"))
                    .key(self.job_key(id))
                    .arg(id.to_string())
                    .arg(record.encode())
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| failed("requeue a dead letter", &e))?
            } else {
                // A damaged letter's size is unknown: its job is given back, not its bytes.
                let size = record.map_or(0, |r| r.request.size());
                SCRIPTS
                    .purge
                    .key(self.key(topic, "dead"))
                    .key(self.key(topic, "count"))
                    .key(self.total_key())
                    .key(self.job_key(id))
                    .arg(id.to_string())
                    .arg(size)
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| failed("purge a dead letter", &e))?
            };
            n += u64::from(done == 1);
        }
        Ok(n)
    }
}

/// The status hash's fields for `record`.
fn status_fields(record: &Record) -> [(&'static str, String); 7] {
    [
        ("state", record.state.as_str().to_string()),
        ("topic", record.topic.clone()),
        ("attempts", record.attempts.to_string()),
        ("created", record.created_ms.to_string()),
        ("next", record.next_attempt_ms.to_string()),
        ("finished", record.finished_ms.to_string()),
        ("last_error", record.last_error.clone()),
    ]
}

/// One stream entry as read: its id and the fields this backend writes.
struct Entry {
    entry: String,
    id: Option<String>,
    job: Option<Vec<u8>>,
}

/// The entries of an XREADGROUP or XAUTOCLAIM reply: `[[id, [field, value, ...]], ...]`.
fn entries(value: Value) -> Vec<Entry> {
    let Value::Array(items) = value else { return Vec::new() };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else { continue };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let Some(entry) = pair.pop().and_then(text) else { continue };
        let mut e = Entry { entry, id: None, job: None };
        // A deleted entry still pending comes back with nil fields: it is damaged too.
        if let Some(Value::Array(fields)) = fields {
            let mut it = fields.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                match (text(name).as_deref(), value) {
                    (Some("id"), v) => e.id = text(v),
                    (Some("job"), Value::BulkString(b)) => e.job = Some(b),
                    _ => {}
                }
            }
        }
        out.push(e);
    }
    out
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn failed(what: &str, e: &RedisError) -> StoreError {
    StoreError::Io(format!("redis: cannot {what}: {e}"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "seawall".to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
