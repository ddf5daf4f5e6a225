//! Attacks on the queue's backends (issue 13): what a cancelled enqueue leaves behind in the
//! embedded store, and what Redis does with a lease whose attempt is still running.
//! Each test states the behaviour that should hold; they fail while the defect is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use seawall_queue::embedded::Embedded;
use seawall_queue::job::now_ms;
use seawall_queue::redis_streams::RedisStreams;
use seawall_queue::{Backend, Bounds, JobId, Record, Request, State};

fn unique() -> String {
    JobId::random().expect("randomness").to_string()
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
        request: Request {
            method: "POST".into(),
            target: "/x".into(),
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: body.as_bytes().to_vec(),
        },
    }
}

const ONE_JOB: Bounds =
    Bounds { topic_jobs: 1, topic_bytes: 1 << 30, total_jobs: 1000, total_bytes: 1 << 30 };

/// An enqueue whose caller goes away while the commit is on its way (an HTTP/2 client resets
/// its stream, a connection drops, the worker drains) still commits the job — the writer thread
/// does not know — but `Embedded::enqueue` never gets to run the lines after its `.await`:
/// the reservation is not given back and the stored job is never put in the index. The job is
/// on disk and counted, yet no lease ever hands it out (until a restart), and with a bound of 1
/// the topic answers `queue_full` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_cancelled_during_its_commit_leaves_a_job_that_is_stored_but_never_leased() {
    let dir = std::env::temp_dir().join(format!("seawall-queue-attack-{}", unique()));
    // A commit waits 50 ms for company: a window a departing client easily hits.
    let store = Embedded::open(&dir, Duration::from_millis(50)).expect("opens");
    let b = Backend::Embedded(store);
    let id = JobId::random().unwrap();
    let r = record("t", "hello");
    let cancelled = tokio::time::timeout(Duration::from_millis(5), b.enqueue(id, &r, &ONE_JOB));
    assert!(cancelled.await.is_err(), "the enqueue is still waiting for its commit");
    // The writer goes on and commits it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = b.status(id).await.expect("status answers");
    assert!(stored.is_some(), "the job was committed all the same");
    let depth = b.depth("t").await.unwrap();
    let leased = b.lease("t", now_ms() + 1000, 10).await.expect("lease answers");
    // What should hold: a stored job is delivered (at least once).
    assert_eq!(
        leased.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![id],
        "the stored job is never handed out for delivery; depth = {depth:?} (the reservation \
         of the cancelled enqueue is still counted as pending)"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same cancellation, bounds side: after the cancelled enqueue's job is delivered and settled,
/// the topic must have room again. The leaked reservation keeps `pending` at 1 for ever: every
/// later enqueue is refused as full until the process restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_cancelled_during_its_commit_does_not_fill_the_topic_for_ever() {
    let dir = std::env::temp_dir().join(format!("seawall-queue-attack-{}", unique()));
    let store = Embedded::open(&dir, Duration::from_millis(50)).expect("opens");
    let b = Backend::Embedded(store);
    let bounds = Bounds { topic_jobs: 2, ..ONE_JOB };
    // Two cancelled enqueues: two reservations that are never given back.
    for _ in 0..2 {
        let id = JobId::random().unwrap();
        let r = record("t", "x");
        let cancelled = tokio::time::timeout(Duration::from_millis(5), b.enqueue(id, &r, &bounds));
        assert!(cancelled.await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Whatever could be leased is delivered.
    for mut l in b.lease("t", now_ms() + 1000, 10).await.unwrap() {
        l.record.state = State::Delivered;
        l.record.attempts = 1;
        l.record.finished_ms = now_ms();
        b.settle(l).await.unwrap();
    }
    let depth = b.depth("t").await.unwrap();
    let again = b.enqueue(JobId::random().unwrap(), &record("t", "y"), &bounds).await;
    assert!(
        again.is_ok(),
        "the topic stays full after what it holds was delivered: {again:?}, depth = {depth:?}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis: a lease whose attempt is still running (a slow destination, an attempt longer than
/// `queue.lease`) is taken again by XAUTOCLAIM at the next `lease` call — by the very instance
/// that is still delivering it. With `concurrency` > 1 the delivery loop calls `lease` while the
/// first attempt runs, so the job goes out twice at the same time (and then a third time...),
/// past the topic's `concurrency`. Nothing renews a lease while its attempt is alive, and the
/// configuration does not require `lease` to exceed the upstream's timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_does_not_hand_out_again_a_lease_this_instance_is_still_working_on() {
    let url =
        std::env::var("SEAWALL_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let prefix = format!("seawall-attack:{}:", unique());
    let Ok(Ok(r)) = tokio::time::timeout(
        Duration::from_secs(5),
        RedisStreams::open(&url, &prefix, Duration::from_millis(200), Duration::from_secs(60)),
    )
    .await
    else {
        eprintln!("skipped: no Redis at {url}");
        return;
    };
    let b = Backend::Redis(r);
    let roomy = Bounds { topic_jobs: 100, ..ONE_JOB };
    let id = JobId::random().unwrap();
    b.enqueue(id, &record("slow", "x"), &roomy).await.expect("stored");
    let first = b.lease("slow", now_ms(), 1).await.unwrap();
    assert_eq!(first.len(), 1);
    // The attempt is still running (the destination is slow) when the loop looks for more work.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = b.lease("slow", now_ms(), 1).await.unwrap();
    let again: Vec<_> = second.iter().map(|l| l.id).collect();
    // Clean up the keys before asserting.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut con).unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query(&mut con);
    }
    assert!(
        again.is_empty(),
        "job {id} handed out a second time while its first attempt still runs, to the same \
         instance: {again:?}"
    );
}
