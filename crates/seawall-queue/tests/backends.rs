//! The queue's backends against one suite: each case is written once against [`Backend`] and run
//! for the embedded store (in a fresh folder) and for Redis Streams (under a fresh key prefix,
//! deleted afterwards). Redis is expected on `SEAWALL_REDIS_URL` (default 127.0.0.1:6379); when
//! it cannot be reached the Redis half prints why and is skipped, unless
//! `SEAWALL_REQUIRE_SERVICES=1`, where it fails.

use std::path::PathBuf;
use std::time::Duration;

use seawall_queue::embedded::Embedded;
use seawall_queue::job::now_ms;
use seawall_queue::redis_streams::RedisStreams;
use seawall_queue::{
    Backend, Bounds, Depth, EnqueueError, JobId, Leased, Record, Request, State, Status,
};

/// The Redis lease: short, because one case waits for it to run out.
const LEASE: Duration = Duration::from_millis(200);
const KEEP: Duration = Duration::from_secs(60);
const ROOMY: Bounds =
    Bounds { topic_jobs: 1000, topic_bytes: 1 << 30, total_jobs: 1000, total_bytes: 1 << 30 };

/// A backend under test, and what it takes to restart it and clean up after it.
struct Harness {
    backend: Option<Backend>,
    kind: Kind,
}

enum Kind {
    Embedded { dir: PathBuf },
    Redis { url: String, prefix: String },
}

fn unique() -> String {
    JobId::random().expect("randomness").to_string()
}

fn redis_url() -> String {
    std::env::var("SEAWALL_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

impl Harness {
    fn embedded() -> Harness {
        let dir = std::env::temp_dir().join(format!("seawall-queue-test-{}", unique()));
        let store = Embedded::open(&dir, Duration::ZERO).expect("the embedded store opens");
        Harness { backend: Some(Backend::Embedded(store)), kind: Kind::Embedded { dir } }
    }

    /// `None` (after saying why) when Redis cannot be reached and is not required.
    async fn redis() -> Option<Harness> {
        let url = redis_url();
        let prefix = format!("seawall-test:{}:", unique());
        // A quick look first: the connection manager retries a refused connection for seconds.
        let reachable = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        let opened = match reachable {
            Ok(_) => open_redis(&url, &prefix).await,
            Err(e) => Err(e.to_string()),
        };
        let why = match opened {
            Ok(r) => {
                let backend = Some(Backend::Redis(r));
                return Some(Harness { backend, kind: Kind::Redis { url, prefix } });
            }
            Err(why) => why,
        };
        if std::env::var("SEAWALL_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("Redis at {url} is required (SEAWALL_REQUIRE_SERVICES=1): {why}");
        }
        eprintln!("skipped: Redis at {url} cannot be reached: {why}");
        None
    }

    fn b(&self) -> &Backend {
        self.backend.as_ref().expect("a backend is open")
    }

    fn is_redis(&self) -> bool {
        matches!(self.kind, Kind::Redis { .. })
    }

    /// The process holding the backend dies and another takes its place. Embedded: the store is
    /// closed and opened again. Redis: a new instance (a new consumer) connects, and the old
    /// one's leases run out (a real wait of `LEASE`).
    async fn restart(&mut self) {
        match &self.kind {
            Kind::Embedded { dir } => {
                drop(self.backend.take());
                // The closed store's writer thread lets go of the files as it ends: a new open
                // is refused until then, which takes milliseconds.
                let mut tries = 0;
                let store = loop {
                    match Embedded::open(dir, Duration::ZERO) {
                        Ok(s) => break s,
                        Err(_) if tries < 200 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => panic!("the embedded store does not open again: {e}"),
                    }
                };
                self.backend = Some(Backend::Embedded(store));
            }
            Kind::Redis { url, prefix } => {
                let next = open_redis(url, prefix).await.expect("Redis is still there");
                drop(self.backend.replace(Backend::Redis(next)));
                tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
            }
        }
    }

    /// Puts bytes that are not a job where the backend keeps `topic`'s jobs; false when the
    /// backend gives no way to (the embedded store's file format is its own business).
    fn damage(&self, topic: &str) -> bool {
        let Kind::Redis { url, prefix } = &self.kind else { return false };
        let mut con = sync_redis(url);
        let stream = format!("{prefix}{topic}:stream");
        let added: Result<String, _> = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("id")
            .arg(unique())
            .arg("job")
            .arg(&b"\x01\x00not a record"[..])
            .query(&mut con);
        added.expect("a damaged entry is written");
        // And an entry with no job at all.
        let added: Result<String, _> =
            redis::cmd("XADD").arg(&stream).arg("*").arg("junk").arg("1").query(&mut con);
        added.expect("a foreign entry is written");
        true
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.backend.take());
        match &self.kind {
            Kind::Embedded { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Kind::Redis { url, prefix } => {
                let mut con = sync_redis(url);
                let mut cursor = 0u64;
                loop {
                    let page: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(1000)
                        .query(&mut con);
                    let Ok((next, keys)) = page else { break };
                    if !keys.is_empty() {
                        let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query(&mut con);
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
    }
}

async fn open_redis(url: &str, prefix: &str) -> Result<RedisStreams, String> {
    let open = RedisStreams::open(url, prefix, LEASE, KEEP);
    match tokio::time::timeout(Duration::from_secs(5), open).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no connection within 5 s".into()),
    }
}

fn sync_redis(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("a valid Redis url");
    client.get_connection_with_timeout(Duration::from_secs(2)).expect("Redis answers")
}

/// Runs each case once per backend: `case::embedded` and `case::redis`.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn embedded() {
                let mut h = super::Harness::embedded();
                super::$case(&mut h).await;
            }

            #[tokio::test]
            async fn redis() {
                let Some(mut h) = super::Harness::redis().await else { return };
                super::$case(&mut h).await;
            }
        }
    )*};
}

on_both!(
    a_job_goes_from_queued_to_delivering_to_delivered,
    a_failed_attempt_is_not_leased_before_its_next_attempt,
    a_dead_letter_is_listed_requeued_and_purged,
    the_topics_max_jobs_refuses_and_accepts_again_after_a_delivery,
    the_queues_max_bytes_counts_every_topic_and_dead_letters,
    an_unsettled_lease_is_handed_out_again_after_its_holder_dies,
    damaged_bytes_do_not_stop_other_jobs,
);

fn request(body: &str) -> Request {
    Request {
        method: "POST".into(),
        target: "/emails?to=a%40b".into(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: body.as_bytes().to_vec(),
    }
}

fn record(topic: &str, body: &str) -> Record {
    Record {
        topic: topic.into(),
        state: State::Queued,
        attempts: 0,
        created_ms: now_ms(),
        next_attempt_ms: 0,
        finished_ms: 0,
        last_error: String::new(),
        request: request(body),
    }
}

async fn put(b: &Backend, topic: &str, body: &str, bounds: &Bounds) -> Result<JobId, EnqueueError> {
    let id = JobId::random().expect("randomness");
    b.enqueue(id, &record(topic, body), bounds).await.map(|()| id)
}

async fn status(b: &Backend, id: JobId) -> Status {
    b.status(id).await.expect("status answers").expect("the job is known")
}

async fn depth(b: &Backend, topic: &str) -> Depth {
    b.depth(topic).await.expect("depth answers")
}

async fn lease(b: &Backend, topic: &str, now: u64) -> Vec<Leased> {
    b.lease(topic, now, 10).await.expect("lease answers")
}

async fn lease_one(b: &Backend, topic: &str) -> Leased {
    let mut got = lease(b, topic, now_ms()).await;
    assert_eq!(got.len(), 1, "one job is due");
    got.remove(0)
}

/// An attempt's outcome, as the delivery loop writes it.
fn outcome(mut l: Leased, state: State, next_attempt_ms: u64, error: &str) -> Leased {
    l.record.attempts += 1;
    l.record.state = state;
    l.record.last_error = error.into();
    match state {
        State::Failed => l.record.next_attempt_ms = next_attempt_ms,
        _ => l.record.finished_ms = now_ms(),
    }
    l
}

async fn a_job_goes_from_queued_to_delivering_to_delivered(h: &mut Harness) {
    let b = h.b();
    let before = now_ms();
    let id = put(b, "emails", "{\"to\":\"a@b\"}", &ROOMY).await.expect("accepted");
    let s = status(b, id).await;
    assert_eq!((s.state, s.topic.as_str(), s.attempts), (State::Queued, "emails", 0));
    assert!(s.created_ms >= before && s.finished_ms.is_none() && s.next_attempt_ms.is_none());
    let size = request("{\"to\":\"a@b\"}").size();
    let d = depth(b, "emails").await;
    assert_eq!((d.pending, d.in_flight, d.dead, d.bytes), (1, 0, 0, size));
    assert_eq!(d.oldest_created_ms, Some(s.created_ms));

    let leased = lease_one(b, "emails").await;
    assert_eq!(leased.id, id);
    assert_eq!(leased.record.request, request("{\"to\":\"a@b\"}"));
    assert_eq!(status(b, id).await.state, State::Delivering);
    let d = depth(b, "emails").await;
    assert_eq!((d.pending, d.in_flight), (1, 1));
    assert!(lease(b, "emails", now_ms()).await.is_empty(), "a leased job is not handed out twice");

    b.settle(outcome(leased, State::Delivered, 0, "")).await.expect("settled");
    let s = status(b, id).await;
    assert_eq!((s.state, s.attempts), (State::Delivered, 1));
    assert!(s.finished_ms.is_some_and(|f| f >= before));
    assert_eq!(depth(b, "emails").await, Depth::default());
    assert!(lease(b, "emails", now_ms()).await.is_empty());
    assert!(lease(b, "other-topic", now_ms()).await.is_empty());
}

async fn a_failed_attempt_is_not_leased_before_its_next_attempt(h: &mut Harness) {
    let b = h.b();
    let id = put(b, "hooks", "ping", &ROOMY).await.expect("accepted");
    let now = now_ms();
    let next = now + 60_000;
    let leased = lease_one(b, "hooks").await;
    b.settle(outcome(leased, State::Failed, next, "upstream answered 503")).await.expect("settled");

    let s = status(b, id).await;
    assert_eq!((s.state, s.attempts, s.next_attempt_ms), (State::Failed, 1, Some(next)));
    assert_eq!(s.last_error.as_deref(), Some("upstream answered 503"));
    let d = depth(b, "hooks").await;
    assert_eq!((d.pending, d.in_flight), (1, 0));

    assert!(lease(b, "hooks", now).await.is_empty(), "not due yet");
    assert!(lease(b, "hooks", next - 1).await.is_empty(), "not due a millisecond early");
    let mut again = lease(b, "hooks", next).await;
    assert_eq!(again.len(), 1, "due at its next attempt");
    let again = again.remove(0);
    assert_eq!((again.id, again.record.attempts), (id, 1));
    assert_eq!(again.record.last_error, "upstream answered 503");
    assert_eq!(again.record.request, request("ping"));

    b.settle(outcome(again, State::Delivered, 0, "")).await.expect("settled");
    assert_eq!(status(b, id).await.attempts, 2);
    assert_eq!(depth(b, "hooks").await.pending, 0);
}

async fn a_dead_letter_is_listed_requeued_and_purged(h: &mut Harness) {
    let b = h.b();
    let size = request("charge").size();
    let id = put(b, "payments", "charge", &ROOMY).await.expect("accepted");
    let leased = lease_one(b, "payments").await;
    b.settle(outcome(leased, State::Dead, 0, "upstream answered 400")).await.expect("settled");

    let s = status(b, id).await;
    assert_eq!((s.state, s.attempts), (State::Dead, 1));
    assert_eq!(s.last_error.as_deref(), Some("upstream answered 400"));
    let dead = b.dead("payments", 10).await.expect("dead answers");
    assert_eq!(dead.iter().map(|s| (s.id, s.state)).collect::<Vec<_>>(), [(id, State::Dead)]);
    assert!(b.dead("payments", 0).await.expect("dead answers").is_empty());
    let d = depth(b, "payments").await;
    assert_eq!((d.pending, d.dead, d.bytes), (0, 1, size), "a dead letter holds its bytes");
    assert!(lease(b, "payments", now_ms() + 3_600_000).await.is_empty(), "the dead stay dead");

    let other = JobId::random().expect("randomness");
    assert_eq!(b.revive("payments", Some(other), true).await.expect("revive answers"), 0);
    assert_eq!(b.revive("payments", Some(id), true).await.expect("revive answers"), 1);
    let s = status(b, id).await;
    assert_eq!((s.state, s.attempts), (State::Queued, 0));
    assert!(b.dead("payments", 10).await.expect("dead answers").is_empty());
    let again = lease_one(b, "payments").await;
    assert_eq!((again.id, again.record.attempts), (id, 0));
    assert_eq!(again.record.request, request("charge"));
    b.settle(outcome(again, State::Dead, 0, "still 400")).await.expect("settled");

    assert_eq!(b.revive("payments", None, false).await.expect("revive answers"), 1);
    assert!(b.dead("payments", 10).await.expect("dead answers").is_empty());
    assert_eq!(b.status(id).await.expect("status answers"), None, "a purged job is forgotten");
    assert_eq!(depth(b, "payments").await, Depth::default());
    assert_eq!(b.revive("payments", None, false).await.expect("revive answers"), 0);
}

async fn the_topics_max_jobs_refuses_and_accepts_again_after_a_delivery(h: &mut Harness) {
    let b = h.b();
    let bounds = Bounds { topic_jobs: 2, ..ROOMY };
    put(b, "sms", "1", &bounds).await.expect("the first fits");
    put(b, "sms", "2", &bounds).await.expect("the second fits");
    let refused = put(b, "sms", "3", &bounds).await;
    assert_eq!(refused, Err(EnqueueError::Full("the topic's max_jobs")));
    assert_eq!(depth(b, "sms").await.pending, 2, "nothing of the refused job is kept");
    put(b, "other", "x", &bounds).await.expect("another topic has its own bound");

    let leased = lease(b, "sms", now_ms()).await;
    assert_eq!(leased.len(), 2);
    let mut leased = leased.into_iter();
    let first = leased.next().expect("two leased");
    b.settle(outcome(first, State::Delivered, 0, "")).await.expect("settled");
    put(b, "sms", "3", &bounds).await.expect("a delivery makes room");
    assert_eq!(put(b, "sms", "4", &bounds).await, Err(EnqueueError::Full("the topic's max_jobs")));
    let second = leased.next().expect("two leased");
    b.settle(outcome(second, State::Failed, now_ms(), "503")).await.expect("settled");
    assert_eq!(
        put(b, "sms", "4", &bounds).await,
        Err(EnqueueError::Full("the topic's max_jobs")),
        "a job waiting for a retry still counts"
    );
}

async fn the_queues_max_bytes_counts_every_topic_and_dead_letters(h: &mut Harness) {
    let b = h.b();
    let size = request("0123456789").size();
    let bounds = Bounds { total_bytes: 2 * size, ..ROOMY };
    put(b, "a", "0123456789", &bounds).await.expect("fits");
    put(b, "b", "0123456789", &bounds).await.expect("fits");
    let full = Err(EnqueueError::Full("queue.max_bytes"));
    assert_eq!(put(b, "c", "0123456789", &bounds).await, full);
    assert!(put(b, "c", "", &bounds).await.is_err(), "no room for even a small job");

    let leased = lease_one(b, "a").await;
    b.settle(outcome(leased, State::Dead, 0, "gone")).await.expect("settled");
    assert_eq!(put(b, "c", "0123456789", &bounds).await, full, "a dead letter holds its bytes");
    assert_eq!(b.revive("a", None, false).await.expect("revive answers"), 1);
    put(b, "c", "0123456789", &bounds).await.expect("a purge makes room");
    assert_eq!(put(b, "a", "0123456789", &bounds).await, full);

    let leased = lease_one(b, "b").await;
    b.settle(outcome(leased, State::Delivered, 0, "")).await.expect("settled");
    put(b, "a", "0123456789", &bounds).await.expect("a delivery makes room");
}

async fn an_unsettled_lease_is_handed_out_again_after_its_holder_dies(h: &mut Harness) {
    let id = put(h.b(), "reports", "build", &ROOMY).await.expect("accepted");
    let first = lease_one(h.b(), "reports").await;
    assert_eq!(first.id, id);
    assert!(lease(h.b(), "reports", now_ms()).await.is_empty(), "the lease holds");

    h.restart().await;
    let b = h.b();
    let again = lease_one(b, "reports").await;
    assert_eq!((again.id, again.record.request.clone()), (id, request("build")));
    assert_eq!(status(b, id).await.state, State::Delivering);
    assert!(lease(b, "reports", now_ms()).await.is_empty(), "the new lease holds");
    b.settle(outcome(again, State::Delivered, 0, "")).await.expect("settled");
    assert_eq!(status(b, id).await.state, State::Delivered);
    assert_eq!(depth(b, "reports").await, Depth::default());
}

async fn damaged_bytes_do_not_stop_other_jobs(h: &mut Harness) {
    if !h.damage("orders") {
        eprintln!("skipped: this backend's stored bytes cannot be damaged from outside");
        return;
    }
    let b = h.b();
    let id = put(b, "orders", "good", &ROOMY).await.expect("accepted");
    let got = lease(b, "orders", now_ms()).await;
    assert_eq!(got.iter().map(|l| l.id).collect::<Vec<_>>(), [id], "the good job comes through");
    if let Backend::Redis(r) = b {
        assert_eq!(r.damaged(), 2);
    }
    let d = depth(b, "orders").await;
    assert_eq!((d.pending, d.in_flight), (1, 1), "the damaged entries are gone");
    let mut got = got;
    b.settle(outcome(got.remove(0), State::Delivered, 0, "")).await.expect("settled");
    assert!(lease(b, "orders", now_ms()).await.is_empty());
}

// Redis only: what a fleet adds.

#[tokio::test]
async fn redis_a_late_settle_of_a_lease_taken_over_changes_nothing() {
    let Some(mut h) = Harness::redis().await else { return };
    assert!(h.is_redis());
    let bounds = Bounds { topic_jobs: 1, ..ROOMY };
    let id = put(h.b(), "t", "x", &bounds).await.expect("accepted");
    let stale = lease_one(h.b(), "t").await;
    h.restart().await;
    let taken = lease_one(h.b(), "t").await;
    assert_eq!(taken.id, id);
    h.b().settle(outcome(taken, State::Delivered, 0, "")).await.expect("settled");
    // The first holder was only slow: its outcome comes after the job was delivered.
    h.b().settle(outcome(stale, State::Failed, now_ms(), "timeout")).await.expect("answered");
    assert_eq!(status(h.b(), id).await.state, State::Delivered);
    assert!(lease(h.b(), "t", now_ms() + 3_600_000).await.is_empty(), "no retry was scheduled");
    assert_eq!(depth(h.b(), "t").await, Depth::default());
    put(h.b(), "t", "y", &bounds).await.expect("the topic is empty");
    assert_eq!(
        put(h.b(), "t", "z", &bounds).await,
        Err(EnqueueError::Full("the topic's max_jobs"))
    );
}

#[tokio::test]
async fn redis_two_instances_share_a_topic_and_each_job_goes_to_one() {
    let Some(h) = Harness::redis().await else { return };
    let Kind::Redis { url, prefix } = &h.kind else { return };
    let other = Backend::Redis(open_redis(url, prefix).await.expect("a second instance"));
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(put(h.b(), "shared", &n.to_string(), &ROOMY).await.expect("accepted"));
    }
    let mine = h.b().lease("shared", now_ms(), 2).await.expect("lease answers");
    let theirs = lease(&other, "shared", now_ms()).await;
    assert_eq!((mine.len(), theirs.len()), (2, 2));
    let mut seen: Vec<JobId> = mine.iter().chain(&theirs).map(|l| l.id).collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every job once, to one instance");
    assert_eq!(depth(&other, "shared").await.in_flight, 4);
    for l in theirs {
        other.settle(outcome(l, State::Delivered, 0, "")).await.expect("settled");
    }
    for l in mine {
        h.b().settle(outcome(l, State::Delivered, 0, "")).await.expect("settled");
    }
    assert_eq!(depth(h.b(), "shared").await, Depth::default());
}
