//! The cache's shared layer (L2) against a real Redis: two Seawall instances share an entry, and
//! a Redis that stops mid-test costs nothing but its hits — every request is still answered (from
//! L1 or the origin), none waits on it. Needs Redis on 127.0.0.1:6379 and `redis-server`; without
//! them the tests say so and pass, unless SEAWALL_REQUIRE_SERVICES=1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;

/// How many keys match `pattern` (an inline `KEYS` command: the test's own prefix only).
fn keys(addr: &str, pattern: &str) -> usize {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(format!("KEYS {pattern}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim().trim_start_matches('*').parse().unwrap()
}

async fn instance(origin: SocketAddr, redis: &str, prefix: &str) -> Gateway {
    start(config(&format!(
        "[cache]\nredis = \"redis://{redis}\"\nl2_prefix = \"{prefix}\"\nl2_timeout = \"200ms\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         cache = {{ ttl = \"60s\" }}\n"
    )))
    .await
}

async fn l2(gw: &Gateway, event: &str) -> f64 {
    metric(gw, &format!("seawall_cache_l2_total{{event=\"{event}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_an_entry_through_redis() {
    if !redis_at("127.0.0.1:6379") {
        return;
    }
    let origin = Origin::start().await;
    let prefix = fresh_prefix();
    let a = instance(origin.addr, "127.0.0.1:6379", &prefix).await;
    let b = instance(origin.addr, "127.0.0.1:6379", &prefix).await;
    for engine in ENGINES {
        let path = format!("/cache?engine={engine:?}");
        let want = l2(&a, "store").await + 1.0;
        let first = ask(engine, a.listen_addr(), engine.get(&path)).await;
        assert_eq!(first.header("x-seawall-cache"), "MISS");
        eventually(Duration::from_secs(5), "the answer stored in Redis", || async {
            l2(&a, "store").await >= want
        })
        .await;
        let hits = origin.hits();
        let other = ask(engine, b.listen_addr(), engine.get(&path)).await;
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(other.header("x-seawall-cache"), "HIT", "{engine:?}: from the shared layer");
        assert_eq!(other.body, first.body, "{engine:?}: the same answer");
        assert_eq!(origin.hits(), hits, "{engine:?}: the origin was not asked again");
    }
    assert!(l2(&b, "hit").await >= 2.0);
    let by_route = "seawall_cache_total{route=\"pages\",layer=\"l2\",event=\"hit\"}";
    assert_eq!(metric(&b, by_route).await, 2.0, "the route's hits from the shared layer");
    // A purge on one instance reaches Redis, and the other instance's L1.
    let b_had = ask(Engine::Http1, b.listen_addr(), Engine::Http1.get("/cache?engine=Http1")).await;
    assert_eq!(b_had.header("x-seawall-cache"), "HIT");
    assert_eq!(keys("127.0.0.1:6379", &format!("{prefix}*")), 2);
    let purge = http::Request::builder()
        .method("POST")
        .uri("/api/v1/cache/purge")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"prefix": "/cache"}"#)))
        .unwrap();
    assert_eq!(send(a.admin_addr(), purge).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the purge reaching Redis", || async {
        keys("127.0.0.1:6379", &format!("{prefix}*")) == 0
    })
    .await;
    let purged_at_b = "the purge reaching the other instance's L1";
    eventually(Duration::from_secs(5), purged_at_b, || async {
        let answer =
            ask(Engine::Http1, b.listen_addr(), Engine::Http1.get("/cache?engine=Http1")).await;
        answer.header("x-seawall-cache") == "MISS"
    })
    .await;
    for gw in [a, b] {
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_costs_its_hits_and_nothing_else() {
    let Some(mut redis) = OwnRedis::start() else { return };
    let origin = Origin::start().await;
    let gw = instance(origin.addr, &redis.addr, &fresh_prefix()).await;
    for engine in ENGINES {
        let first = ask(engine, gw.listen_addr(), engine.get("/cache?kept=1")).await;
        assert_eq!(first.status, StatusCode::OK);
    }
    eventually(Duration::from_secs(5), "the answer stored in Redis", || async {
        l2(&gw, "store").await >= 1.0
    })
    .await;
    redis.stop();
    // Kept in L1: still a hit. New keys: the origin answers, after at most l2_timeout.
    for engine in ENGINES {
        let kept = ask(engine, gw.listen_addr(), engine.get("/cache?kept=1")).await;
        assert_eq!((kept.status, kept.header("x-seawall-cache")), (StatusCode::OK, "HIT"));
        for i in 0..10 {
            let started = std::time::Instant::now();
            let path = format!("/cache?new={i}&engine={engine:?}");
            let fresh = ask(engine, gw.listen_addr(), engine.get(&path)).await;
            assert_eq!(fresh.status, StatusCode::OK, "{engine:?}: {}", fresh.body);
            assert_eq!(fresh.header("x-seawall-cache"), "MISS");
            // Generous for a loaded test machine; what matters is that nothing hangs on Redis.
            assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        }
    }
    assert!(l2(&gw, "error").await >= 1.0, "the failures are counted");
    assert!(l2(&gw, "skipped").await >= 1.0, "and L2 is skipped while its breaker is open");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stalls_holds_a_request_up_no_longer_than_l2_timeout() {
    // Accepts, reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let origin = Origin::start().await;
    let gw = instance(origin.addr, &addr.to_string(), &fresh_prefix()).await;
    for engine in ENGINES {
        for i in 0..4 {
            let started = std::time::Instant::now();
            let path = format!("/cache?stalled={i}&engine={engine:?}");
            let answer = ask(engine, gw.listen_addr(), engine.get(&path)).await;
            assert_eq!((answer.status, answer.header("x-seawall-cache")), (StatusCode::OK, "MISS"));
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{engine:?}: {:?}",
                started.elapsed()
            );
        }
    }
    assert!(l2(&gw, "error").await >= 3.0, "each stalled lookup is a failure");
    assert!(l2(&gw, "skipped").await >= 1.0, "then L2 is skipped");
    assert_eq!(metric(&gw, "seawall_cache_l2_up").await, 0.0);
    gw.shutdown().await;
}
