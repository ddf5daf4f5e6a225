//! Bulkheads as clients meet them, through both engines: no more than `max_concurrency` requests
//! at the upstream at once, the rest waiting in a bounded queue served by priority (a full queue
//! evicts the newest less important waiter), and 503 `bulkhead_full` with `Retry-After` for a
//! request that finds no room or waits too long.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::task::JoinHandle;

/// A gateway in front of `origin` with `bulkhead` on the upstream; `/p0…` is a P0 route and
/// `/p2…` a P2 route, the rest P1.
async fn bulkheaded(origin: &GatedOrigin, bulkhead: &str) -> Gateway {
    start(config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\nbulkhead = {{ {bulkhead} }}\n\
         [[routes]]\nname = \"critical\"\npath_prefix = \"/p0\"\nupstream = \"app\"\npriority = \"P0\"\n\
         [[routes]]\nname = \"sheddable\"\npath_prefix = \"/p2\"\nupstream = \"app\"\npriority = \"P2\"\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    )))
    .await
}

/// Sends a GET of `path` in the background.
fn spawn_get(engine: Engine, gw: &Gateway, path: &str) -> JoinHandle<Answer> {
    let (addr, req) = (gw.listen_addr(), engine.get(path));
    tokio::spawn(async move { ask(engine, addr, req).await })
}

async fn gauge(gw: &Gateway, name: &str) -> f64 {
    metric(gw, &format!("{name}{{upstream=\"app\"}}")).await
}

async fn until(gw: &Gateway, name: &str, value: f64) {
    eventually(Duration::from_secs(5), name, || async { gauge(gw, name).await == value }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limit_and_the_queue_a_request_is_refused_at_once() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw = bulkheaded(&origin, "max_concurrency = 2, max_queue = 0").await;
        let held = [spawn_get(engine, &gw, "/a"), spawn_get(engine, &gw, "/b")];
        eventually(Duration::from_secs(5), "two requests at the origin", || async {
            origin.arrived.load(SeqCst) == 2
        })
        .await;
        assert_eq!(gauge(&gw, "seawall_upstream_inflight").await, 2.0);
        let refused = ask(engine, gw.listen_addr(), engine.get("/c")).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(refused.header("x-seawall-reason"), "bulkhead_full");
        assert_eq!(refused.header("retry-after"), "1");
        assert_eq!(
            origin.arrived.load(SeqCst),
            2,
            "{engine:?}: the third never reached the origin"
        );
        origin.release(2);
        for h in held {
            assert_eq!(h.await.unwrap().status, StatusCode::OK, "{engine:?}");
        }
        until(&gw, "seawall_upstream_inflight", 0.0).await;
        let full =
            metric(&gw, "seawall_bulkhead_rejected_total{upstream=\"app\",why=\"full\"}").await;
        assert_eq!(full, 1.0);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_by_priority_and_a_full_queue_evicts_the_least_important() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw = bulkheaded(&origin, "max_concurrency = 1, max_queue = 2, queue_timeout = \"10s\"")
            .await;
        let first = spawn_get(engine, &gw, "/first");
        eventually(Duration::from_secs(5), "the first at the origin", || async {
            origin.arrived.load(SeqCst) == 1
        })
        .await;
        // Two sheddable requests wait; a critical one arrives and takes the newest one's place.
        let p2_old = spawn_get(engine, &gw, "/p2-old");
        until(&gw, "seawall_upstream_queued", 1.0).await;
        let p2_new = spawn_get(engine, &gw, "/p2-new");
        until(&gw, "seawall_upstream_queued", 2.0).await;
        let p0 = spawn_get(engine, &gw, "/p0");
        let evicted = p2_new.await.unwrap();
        assert_eq!(evicted.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(evicted.header("x-seawall-reason"), "bulkhead_full");
        // Freed one at a time, the slot goes to the critical request before the older sheddable one.
        origin.release(3);
        for h in [first, p0, p2_old] {
            assert_eq!(h.await.unwrap().status, StatusCode::OK, "{engine:?}");
        }
        let paths = origin.paths.lock().unwrap().clone();
        assert_eq!(paths, ["/first", "/p0", "/p2-old"], "{engine:?}");
        let evictions =
            metric(&gw, "seawall_bulkhead_rejected_total{upstream=\"app\",why=\"evicted\"}").await;
        assert_eq!(evictions, 1.0);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_no_longer_than_queue_timeout() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw =
            bulkheaded(&origin, "max_concurrency = 1, max_queue = 5, queue_timeout = \"200ms\"")
                .await;
        let held = spawn_get(engine, &gw, "/held");
        eventually(Duration::from_secs(5), "held at the origin", || async {
            origin.arrived.load(SeqCst) == 1
        })
        .await;
        let waited =
            bounded(5.0, "the queue timeout", ask(engine, gw.listen_addr(), engine.get("/late")))
                .await;
        assert_eq!(waited.header("x-seawall-reason"), "bulkhead_full", "{engine:?}");
        assert!(waited.json()["detail"].as_str().unwrap().contains("200ms"), "{}", waited.body);
        assert_eq!(
            gauge(&gw, "seawall_upstream_queued").await,
            0.0,
            "{engine:?}: it left the queue"
        );
        origin.release(1);
        assert_eq!(held.await.unwrap().status, StatusCode::OK);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_tier_raised_a_class_waits_ahead_of_free_traffic_on_the_same_route() {
    let origin = GatedOrigin::start().await;
    let gw = start(config(&format!(
        "[rate_limits.plans]\nkey = \"header:x-api-key\"\ntier_header = \"x-plan\"\n\
         tiers = {{ free = \"1000/s\", paid = {{ rate = \"1000/s\", priority = \"raise\" }} }}\ndefault_tier = \"free\"\n\
         [upstreams.app]\nservers = [\"{}\"]\nbulkhead = {{ max_concurrency = 1, max_queue = 10, queue_timeout = \"10s\" }}\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\npriority = \"P2\"\nrate_limit = \"plans\"\n",
        origin.addr
    )))
    .await;
    let get = |path: &str, plan: &str| {
        let req =
            Engine::Http1.request("GET", path).header("x-api-key", path).header("x-plan", plan);
        let (addr, req) = (gw.listen_addr(), req.body(empty()).unwrap());
        tokio::spawn(async move { ask(Engine::Http1, addr, req).await })
    };
    let first = get("/first", "free");
    eventually(Duration::from_secs(5), "the first at the origin", || async {
        origin.arrived.load(SeqCst) == 1
    })
    .await;
    let free = get("/free", "free");
    until(&gw, "seawall_upstream_queued", 1.0).await;
    let paid = get("/paid", "paid");
    until(&gw, "seawall_upstream_queued", 2.0).await;
    origin.release(3);
    for h in [first, free, paid] {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    let paths = origin.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        ["/first", "/paid", "/free"],
        "the paid request (P1) went before the free one (P2)"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_goes_away_gives_its_place_and_any_slot_it_was_handed_back() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw =
            bulkheaded(&origin, "max_concurrency = 1, max_queue = 10, queue_timeout = \"10s\"")
                .await;
        let held = spawn_get(engine, &gw, "/held");
        eventually(Duration::from_secs(5), "held at the origin", || async {
            origin.arrived.load(SeqCst) == 1
        })
        .await;
        // Waiters whose clients give up: their connections close.
        let mut gone = Vec::new();
        for _ in 0..5 {
            let mut client = Client::connect(engine, gw.listen_addr()).await;
            let connection = client.task.abort_handle();
            let request = tokio::spawn(async move { client.send(engine.get("/gone")).await });
            gone.push((request, connection));
        }
        until(&gw, "seawall_upstream_queued", 5.0).await;
        for (request, connection) in gone {
            request.abort();
            connection.abort();
        }
        until(&gw, "seawall_upstream_queued", 0.0).await;
        origin.release(1);
        assert_eq!(held.await.unwrap().status, StatusCode::OK);
        until(&gw, "seawall_upstream_inflight", 0.0).await;
        // The slot is still there for the next requests, one at a time.
        for _ in 0..3 {
            let next = spawn_get(engine, &gw, "/next");
            origin.release(1);
            assert_eq!(next.await.unwrap().status, StatusCode::OK, "{engine:?}");
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gives_up_a_read_but_keeps_its_place_for_a_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = GatedOrigin::start().await;
    let gw =
        bulkheaded(&origin, "max_concurrency = 1, max_queue = 10, queue_timeout = \"10s\"").await;
    let held = spawn_get(Engine::Http1, &gw, "/held");
    eventually(Duration::from_secs(5), "held at the origin", || async {
        origin.arrived.load(SeqCst) == 1
    })
    .await;
    // A GET whose client shuts its sending side while queued: cancelled, its place given up.
    let mut reader = tokio::net::TcpStream::connect(gw.listen_addr()).await.unwrap();
    reader.write_all(b"GET /read HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    until(&gw, "seawall_upstream_queued", 1.0).await;
    reader.shutdown().await.unwrap();
    until(&gw, "seawall_upstream_queued", 0.0).await;
    // A POST half-closed the same way may have a reader still: it keeps its place and its answer.
    let mut writer = tokio::net::TcpStream::connect(gw.listen_addr()).await.unwrap();
    writer
        .write_all(b"POST /write HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    until(&gw, "seawall_upstream_queued", 1.0).await;
    writer.shutdown().await.unwrap();
    origin.release(2);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    let mut answer = String::new();
    bounded(5.0, "the POST's answer", writer.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(*origin.paths.lock().unwrap(), ["/held", "/write"]);
    gw.shutdown().await;
}
