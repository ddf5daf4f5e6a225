//! Upstream connection reuse: pools sized by demand hold any number of requests in flight at once
//! without opening a connection per request, shrink when demand falls, honour a fixed
//! `pool.max_idle`, and show what they hold in `/metrics` — through both engines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::task::JoinSet;

/// The origin holds every request until the test lets them go: an adaptive concurrency limit
/// would rightly see an origin that stopped answering and hold the wave back, so it is off.
fn gateway_config(origin: &GatedOrigin, pool: &str) -> seawall_config::Config {
    // Up to 180 connections are opened at once: on a loaded test machine a dropped SYN is sent
    // again after 1 s, which the default connect_timeout (1 s) would count as a failure.
    config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\npassive = {{ consecutive_failures = 0 }}\n\
         adaptive_concurrency = false\nconnect_timeout = \"5s\"\n{pool}\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    ))
}

/// `n` client connections for HTTP/1.1 (one request each at a time), one for h2c (`n` streams).
async fn clients(engine: Engine, addr: SocketAddr, n: usize) -> Vec<Client> {
    let count = if engine == Engine::H2c { 1 } else { n };
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Client::connect(engine, addr).await);
    }
    clients
}

/// Sends `n` requests at once, waits until the origin holds them all, checks the pool's gauges
/// while they are held, lets them go and checks every answer. Returns the clients for the next
/// wave.
async fn wave(
    engine: Engine,
    gw: &Gateway,
    origin: &GatedOrigin,
    clients: Vec<Client>,
    n: usize,
) -> Vec<Client> {
    let before = origin.arrived.load(SeqCst);
    let mut tasks = JoinSet::new();
    let mut kept = Vec::new();
    match engine {
        Engine::Http1 => {
            for mut client in clients {
                tasks.spawn(async move {
                    let response = client.send(engine.get("/")).await;
                    (Some(client), try_collect(response.unwrap()).await.unwrap().0)
                });
            }
        }
        Engine::H2c => {
            for _ in 0..n {
                let mut h2 = clients[0].h2();
                tasks.spawn(async move {
                    h2.ready().await.unwrap();
                    let response = h2.send_request(engine.get("/")).await;
                    (None, try_collect(response.unwrap()).await.unwrap().0)
                });
            }
            kept = clients;
        }
    }
    eventually(Duration::from_secs(10), "every request reaches the origin", || async {
        origin.arrived.load(SeqCst) == before + n
    })
    .await;
    let busy = format!("seawall_upstream_connections{},state=\"busy\"}}", origin.server());
    assert_eq!(metric(gw, &busy).await, n as f64, "{engine:?}: busy connections while held");
    origin.gate.add_permits(n);
    while let Some(done) = bounded(10.0, "an answer", tasks.join_next()).await {
        let (client, answer) = done.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        kept.extend(client);
    }
    kept
}

async fn idle(gw: &Gateway, origin: &GatedOrigin) -> f64 {
    metric(gw, &format!("seawall_upstream_connections{},state=\"idle\"}}", origin.server())).await
}

async fn opened(gw: &Gateway, origin: &GatedOrigin) -> f64 {
    metric(gw, &format!("seawall_upstream_connections_opened_total{}}}", origin.server())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_at_once_reuse_their_connections_in_the_next_wave() {
    // Beyond the 64 idle connections a fixed pool kept per worker: every worker sees more.
    for (engine, n) in [(Engine::Http1, 180), (Engine::H2c, 100)] {
        let origin = GatedOrigin::start().await;
        let gw = start(gateway_config(&origin, "")).await;
        let clients = clients(engine, gw.listen_addr(), n).await;
        let clients = wave(engine, &gw, &origin, clients, n).await;
        assert_eq!(origin.accepted.load(SeqCst), n, "{engine:?}: one connection per request held");
        eventually(Duration::from_secs(10), "every connection back in its pool", || async {
            idle(&gw, &origin).await == n as f64
        })
        .await;
        let clients = wave(engine, &gw, &origin, clients, n).await;
        assert_eq!(
            origin.accepted.load(SeqCst),
            n,
            "{engine:?}: the second wave found the first wave's connections"
        );
        assert_eq!(opened(&gw, &origin).await, n as f64, "{engine:?}: opened_total");
        assert_eq!(origin.open.load(SeqCst), n, "{engine:?}: none was closed");
        drop(clients);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_max_idle_caps_the_pool_whatever_the_demand() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw = start(gateway_config(&origin, "pool = { max_idle = 3 }")).await;
        let n = 12;
        let clients = clients(engine, gw.listen_addr(), n).await;
        let clients = wave(engine, &gw, &origin, clients, n).await;
        let busy = format!("seawall_upstream_connections{},state=\"busy\"}}", origin.server());
        eventually(Duration::from_secs(3), "every exchange finished", || async {
            metric(&gw, &busy).await == 0.0
        })
        .await;
        // Three per worker at most (h2c: one connection, so one worker).
        let kept = idle(&gw, &origin).await as usize;
        let most = if engine == Engine::H2c { 3 } else { 6 };
        assert!((3..=most).contains(&kept), "{engine:?}: {kept} idle");
        eventually(Duration::from_secs(3), "the surplus closed", || async {
            origin.open.load(SeqCst) == kept
        })
        .await;
        wave(engine, &gw, &origin, clients, n).await;
        assert_eq!(origin.accepted.load(SeqCst), n + (n - kept), "{engine:?}");
        assert_eq!(opened(&gw, &origin).await, (n + n - kept) as f64, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_recent_demand_are_closed() {
    let origin = GatedOrigin::start().await;
    let gw = start(gateway_config(&origin, "")).await;
    let n = 40;
    let clients = clients(Engine::H2c, gw.listen_addr(), n).await;
    let clients = wave(Engine::H2c, &gw, &origin, clients, n).await;
    // Nothing is in flight any more: the pool lets most of them go, and the gauge follows.
    // Five seconds of demand are remembered; then half of the surplus goes each second.
    eventually(Duration::from_secs(15), "the pool shrinks", || async {
        origin.open.load(SeqCst) <= n / 4
    })
    .await;
    let left = origin.open.load(SeqCst) as f64;
    eventually(Duration::from_secs(3), "the gauge agrees", || async {
        idle(&gw, &origin).await <= left
    })
    .await;
    // The next request still works, on a kept connection or a new one.
    wave(Engine::H2c, &gw, &origin, clients, 1).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_server_removed_by_a_reload_are_closed() {
    let (old, new) = (GatedOrigin::start().await, GatedOrigin::start().await);
    let gw = start(gateway_config(&old, "pool = { idle_timeout = \"1h\" }")).await;
    let clients = clients(Engine::H2c, gw.listen_addr(), 5).await;
    let clients = wave(Engine::H2c, &gw, &old, clients, 5).await;
    assert_eq!(old.open.load(SeqCst), 5);
    gw.shared().apply(gateway_config(&new, ""));
    // Sooner than demand would let them go (five seconds and more).
    eventually(Duration::from_secs(3), "the old server's connections closed", || async {
        old.open.load(SeqCst) == 0
    })
    .await;
    wave(Engine::H2c, &gw, &new, clients, 5).await;
    gw.shutdown().await;
}
