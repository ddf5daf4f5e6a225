//! Operations over real sockets: the drain delay load balancers can see (`/readyz` 503 while the
//! listeners keep serving), the admin token for the read endpoints, and one server drained and
//! undrained under traffic without a failed request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use seawall_http::Gateway;

async fn admin_as(
    gw_admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path).header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(gw_admin, req.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_readyz_is_503_and_requests_are_still_served() {
    let origin = Origin::start().await;
    let mut cfg = simple(&[&origin], "");
    cfg.server.drain_delay = Duration::from_secs(3600);
    let gw = start(cfg).await;
    let (addr, admin_addr) = (gw.listen_addr(), gw.admin_addr());
    assert_eq!(get(admin_addr, "/readyz").await.status, StatusCode::OK);
    let (cut, second_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = tokio::spawn(gw.shutdown_after_delay(async move {
        let _ = second_signal.await;
    }));
    eventually(Duration::from_secs(5), "/readyz says 503", || async {
        get(admin_addr, "/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // New connections are still accepted and served, on both engines.
    for engine in ENGINES {
        let answer = ask(engine, addr, engine.get("/during")).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}");
    }
    assert!(!shutdown.is_finished());
    // A second signal cuts the delay: the drain runs and the listener closes.
    cut.send(()).unwrap();
    assert!(bounded(10.0, "the shutdown", shutdown).await.unwrap());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_delay_ends_by_itself() {
    let origin = Origin::start().await;
    let mut cfg = simple(&[&origin], "");
    cfg.server.drain_delay = Duration::from_millis(100);
    let gw = start(cfg).await;
    let addr = gw.listen_addr();
    let drained = bounded(10.0, "the shutdown", gw.shutdown_after_delay(std::future::pending()));
    assert!(drained.await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_endpoints_need_the_token_when_asked_and_the_probes_never_do() {
    let origin = Origin::start().await;
    let cfg = config_with_server(
        "admin_token = \"s3cret\"\nadmin_token_for_reads = true",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            origin.addr
        ),
    );
    let gw = start(cfg).await;
    let at = gw.admin_addr();
    for path in ["/metrics", "/api/v1/state"] {
        let refused = admin_as(at, "GET", path, None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(refused.json()["reason"], "unauthorized", "{path}");
        assert!(!refused.body.contains(&origin.addr.to_string()), "{path}: {}", refused.body);
        let wrong = admin_as(at, "GET", path, Some("guess")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        let allowed = admin_as(at, "GET", path, Some("s3cret")).await;
        assert_eq!(allowed.status, StatusCode::OK, "{path}");
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(admin_as(at, "GET", probe, None).await.status, StatusCode::OK, "{probe}");
    }
    gw.shutdown().await;
    // Without the option, reads stay open.
    let gw = start(config_with_server("admin_token = \"s3cret\"", "")).await;
    assert_eq!(admin_as(gw.admin_addr(), "GET", "/metrics", None).await.status, StatusCode::OK);
    gw.shutdown().await;
}

/// Sends requests through `engine` until `stop`, on new connections, counting the answers in
/// `sent`; returns every status.
fn traffic(
    engine: Engine,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<StatusCode>> {
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(SeqCst) {
            statuses.push(ask(engine, addr, engine.get("/load")).await.status);
            sent.fetch_add(1, SeqCst);
        }
        statuses
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_gets_no_new_request_and_nothing_fails() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let dir = std::env::temp_dir().join(format!("seawall-ops-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seawall.toml");
    let file = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\nadmin_token = \"t\"\n\
             [overload]\ncpu = \"off\"\n[upstreams.app]\nservers = [\"{}\", \"{}\"]\n{extra}\n\
             [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
            a.addr, b.addr
        )
    };
    std::fs::write(&path, file("")).unwrap();
    let gw =
        Gateway::start(seawall_config::load(&path).unwrap(), Some(path.clone())).await.unwrap();
    let (addr, at) = (gw.listen_addr(), gw.admin_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Vec<_> = ENGINES.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let load: Vec<_> = ENGINES
        .iter()
        .zip(&sent)
        .map(|(&e, sent)| traffic(e, addr, Arc::clone(&stop), Arc::clone(sent)))
        .collect();
    eventually(Duration::from_secs(5), "both servers busy", || async {
        a.hits() > 5 && b.hits() > 5
    })
    .await;
    // Slow requests in flight when a is drained (round robin sends them to both) finish.
    let slow = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..2 {
            answers.push(get(addr, "/slow?ms=300").await);
        }
        answers
    });
    let drain = format!("/api/v1/upstreams/app/servers/{}/drain", a.addr);
    assert_eq!(admin_as(at, "POST", &drain, None).await.status, StatusCode::UNAUTHORIZED);
    let drained = admin_as(at, "POST", &drain, Some("t")).await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.body);
    assert_eq!(drained.json()["draining"], true);
    // What was on its way to a when it was drained (one request per client at most) may still
    // arrive; nothing new reaches it.
    let before = a.hits();
    eventually(Duration::from_secs(5), "b takes the traffic", || async { b.hits() > 40 }).await;
    // Both engines go on sending while a is drained.
    let sent_now: Vec<usize> = sent.iter().map(|n| n.load(SeqCst)).collect();
    eventually(Duration::from_secs(5), "more traffic from both engines", || async {
        sent.iter().zip(&sent_now).all(|(n, then)| n.load(SeqCst) > then + 20)
    })
    .await;
    assert!(a.hits() <= before + 3, "a got new requests while drained: {} > {before}", a.hits());
    assert_eq!(server_state(&gw, 0).await["draining"], true);
    let name = format!("seawall_upstream_draining{{upstream=\"app\",server=\"{}\"}}", a.addr);
    let metrics = admin_as(at, "GET", "/metrics", None).await.body;
    assert!(metrics.contains(&format!("{name} 1")), "{metrics}");
    // A reload that keeps the server keeps it drained.
    std::fs::write(&path, file("balance = \"least_request\"")).unwrap();
    gw.shared().reload().unwrap();
    assert_eq!(server_state(&gw, 0).await["draining"], true);
    let after_reload = a.hits();
    // Undrained, it is back in the rotation.
    let undrain = format!("/api/v1/upstreams/app/servers/{}/undrain", a.addr);
    assert_eq!(admin_as(at, "POST", &undrain, Some("t")).await.json()["draining"], false);
    eventually(Duration::from_secs(5), "a gets requests again", || async {
        a.hits() > after_reload + 5
    })
    .await;
    stop.store(true, SeqCst);
    for task in load {
        let statuses = task.await.unwrap();
        assert!(statuses.len() > 20, "{} requests", statuses.len());
        assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    }
    for answer in slow.await.unwrap() {
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "slow"));
    }
    // Unknown names: 404 problem documents.
    for path in [
        "/api/v1/upstreams/nope/servers/x:1/drain",
        "/api/v1/upstreams/app/servers/10.9.9.9:1/drain",
    ] {
        let missing = admin_as(at, "POST", path, Some("t")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(missing.header("content-type"), "application/problem+json");
        assert_eq!(missing.json()["reason"], "not_found");
    }
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
