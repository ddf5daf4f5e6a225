//! Upstream groups over real sockets, through both engines: each balancing policy's
//! distribution, active health checks taking a server out and back, passive ejection and its cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use http::StatusCode;

async fn spread(
    gw: &seawall_http::Gateway,
    engine: Engine,
    n: usize,
    path: &str,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = ask(engine, gw.listen_addr(), engine.get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        *counts.entry(r.header("x-origin").to_string()).or_default() += 1;
    }
    counts
}

fn port(o: &Origin) -> String {
    o.addr.port().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let cfg = config(&format!(
        "[upstreams.app]\nservers = [{{ address = \"{}\", weight = 3 }}, \"{}\"]\nbalance = \"round_robin\"\n[[routes]]\nupstream = \"app\"\n",
        a.addr, b.addr
    ));
    for engine in ENGINES {
        let gw = start(cfg.clone()).await;
        let counts = spread(&gw, engine, 200, "/").await;
        let (ca, cb) = (counts[&port(&a)], counts[&port(&b)]);
        // Each worker runs its own smooth schedule, so the split is 3:1 up to one turn per worker.
        assert!((142..=158).contains(&ca), "{engine:?}: weight 3 got {ca} of 200 ({counts:?})");
        assert_eq!(ca + cb, 200);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_busy_server() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let mut cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{}\", \"{}\"]\nbalance = \"least_request\"\n[[routes]]\nupstream = \"app\"\n",
        a.addr, b.addr
    ));
    // In-flight counts are per worker: one worker makes the outcome exact.
    cfg.server.workers = 1;
    for engine in ENGINES {
        let gw = start(cfg.clone()).await;
        let addr = gw.listen_addr();
        a.hits.store(0, SeqCst);
        b.hits.store(0, SeqCst);
        // Pin one slow request on whichever server takes it, then send quick ones.
        let slow =
            tokio::spawn(async move { ask(engine, addr, engine.get("/slow?ms=1500")).await });
        eventually(Duration::from_secs(5), "the slow request reaches an origin", || async {
            a.hits() + b.hits() == 1
        })
        .await;
        let busy = if a.hits() == 1 { port(&a) } else { port(&b) };
        let counts = spread(&gw, engine, 40, "/").await;
        // With one request outstanding on `busy`, the other is always less loaded while idle.
        assert_eq!(counts.get(&busy).copied().unwrap_or(0), 0, "{engine:?}: {counts:?}");
        assert_eq!(slow.await.unwrap().status, StatusCode::OK);
        // Once both are idle, load spreads over both.
        let counts = spread(&gw, engine, 100, "/").await;
        assert!(counts.values().all(|&c| c >= 25), "{engine:?}: {counts:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_on_their_server() {
    let (a, b, c) = (Origin::start().await, Origin::start().await, Origin::start().await);
    let cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{}\", \"{}\", \"{}\"]\nbalance = \"consistent_hash\"\nhash_on = \"header:x-user\"\n[[routes]]\nupstream = \"app\"\n",
        a.addr, b.addr, c.addr
    ));
    for engine in ENGINES {
        let gw = start(cfg.clone()).await;
        let as_user = |user: usize| {
            engine
                .request("GET", "/")
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap()
        };
        let mut owner = HashMap::new();
        let mut per_server: HashMap<String, usize> = HashMap::new();
        for user in 0..60 {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(
                    ask(engine, gw.listen_addr(), as_user(user))
                        .await
                        .header("x-origin")
                        .to_string(),
                );
            }
            assert!(
                seen.windows(2).all(|w| w[0] == w[1]),
                "{engine:?} user-{user} moved: {seen:?}"
            );
            *per_server.entry(seen[0].clone()).or_default() += 1;
            owner.insert(user, seen[0].clone());
        }
        assert_eq!(per_server.len(), 3, "keys spread over all servers: {per_server:?}");
        assert!(per_server.values().all(|&n| n >= 8), "{per_server:?}");

        // When a server fails its health checks only its keys move.
        gw.shared().snapshot.load().upstreams[0].servers[0].healthy.store(false, SeqCst);
        for user in 0..60 {
            let now =
                ask(engine, gw.listen_addr(), as_user(user)).await.header("x-origin").to_string();
            if owner[&user] != port(&a) {
                assert_eq!(
                    now, owner[&user],
                    "{engine:?} user-{user} moved though its server is fine"
                );
            } else {
                assert_ne!(now, port(&a));
            }
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_server_out_and_bring_it_back() {
    for engine in ENGINES {
        let (a, b) = (Origin::start().await, Origin::start().await);
        let gw = start(simple(
        &[&a, &b],
        "health = { path = \"/healthz\", interval = \"50ms\", timeout = \"50ms\", unhealthy_after = 2, healthy_after = 2 }",
    ))
    .await;
        a.healthy.store(false, SeqCst);
        eventually(Duration::from_secs(5), "server a marked unhealthy", || async {
            server_state(&gw, 0).await["healthy"] == false
        })
        .await;
        let metric_line =
            format!("seawall_upstream_healthy{{upstream=\"app\",server=\"{}\"}}", a.addr);
        assert_eq!(metric(&gw, &metric_line).await, 0.0);
        let before = a.hits();
        let counts = spread(&gw, engine, 20, "/").await;
        assert_eq!(a.hits(), before, "no traffic to an unhealthy server: {counts:?}");

        a.healthy.store(true, SeqCst);
        eventually(Duration::from_secs(5), "server a healthy again", || async {
            server_state(&gw, 0).await["healthy"] == true
        })
        .await;
        assert_eq!(metric(&gw, &metric_line).await, 1.0);
        let counts = spread(&gw, engine, 20, "/").await;
        assert!(counts.get(&port(&a)).copied().unwrap_or(0) > 0, "traffic returns: {counts:?}");

        // Every server down: 503 with Retry-After, not a hang.
        a.healthy.store(false, SeqCst);
        b.healthy.store(false, SeqCst);
        eventually(Duration::from_secs(5), "both unhealthy", || async {
            server_state(&gw, 0).await["healthy"] == false
                && server_state(&gw, 1).await["healthy"] == false
        })
        .await;
        let r = ask(engine, gw.listen_addr(), engine.get("/")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(r.header("x-seawall-reason"), "upstream_unavailable");
        assert_eq!(r.header("retry-after"), "1");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_consecutive_failures_with_a_cap() {
    for engine in ENGINES {
        let (a, b, c) = (Origin::start().await, Origin::start().await, Origin::start().await);
        let gw = start(simple(
        &[&a, &b, &c],
        "balance = \"round_robin\"\npassive = { consecutive_failures = 3, base_ejection = \"30s\", max_ejected_percent = 34 }",
    ))
    .await;
        a.failing.store(true, SeqCst);
        b.failing.store(true, SeqCst);
        // Enough requests for both failing servers to reach the threshold several times over.
        for _ in 0..30 {
            ask(engine, gw.listen_addr(), engine.get("/")).await;
        }
        let states =
            [server_state(&gw, 0).await, server_state(&gw, 1).await, server_state(&gw, 2).await];
        let ejected: Vec<bool> = states.iter().map(|s| s["ejected"] == true).collect();
        assert_eq!(
            ejected.iter().filter(|&&e| e).count(),
            1,
            "34% of 3 servers caps ejection at one: {states:?}"
        );
        assert!(!ejected[2], "the healthy server stays in");
        let ejected_index = ejected.iter().position(|&e| e).unwrap();
        let ejected_origin = [&a, &b][ejected_index];
        let before = ejected_origin.hits();
        for _ in 0..10 {
            ask(engine, gw.listen_addr(), engine.get("/")).await;
        }
        assert_eq!(ejected_origin.hits(), before, "an ejected server gets no traffic");
        let line = format!(
        "seawall_upstream_requests_total{{upstream=\"app\",server=\"{}\",outcome=\"http_5xx\"}}",
        ejected_origin.addr
    );
        assert!(metric(&gw, &line).await >= 3.0);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_is_passed_through_untouched() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    for engine in ENGINES {
        let r = ask(engine, gw.listen_addr(), engine.get("/status/503")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(
            r.header("x-seawall-reason"),
            "",
            "the upstream's own answer is not a Seawall refusal"
        );
    }
    gw.shutdown().await;
}
