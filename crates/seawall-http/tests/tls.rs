//! TLS termination and TLS to upstreams, with certificates the tests make: the certificate
//! chosen by SNI, ALPN choosing the engine, idle TLS connections parking, certificates reloaded
//! under load, resumption, hostile handshakes, upstreams verified against a private CA, and the
//! plain listener that redirects to https.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway terminating TLS with `leaves` in front of one plain origin.
async fn tls_gateway(
    origin: &Origin,
    leaves: &[&Leaf],
    tls_extra: &str,
    server: &str,
) -> seawall_http::Gateway {
    let server = format!("{}\n{server}", server_tls(leaves, tls_extra));
    let body = format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    );
    start(config_with_server(&server, &body)).await
}

/// The leaf certificate the gateway presents to a client asking for `name`.
async fn served_cert(addr: std::net::SocketAddr, ca: &TestCa, name: &str) -> Vec<u8> {
    let stream = tls_connect(addr, name, &ca.client(&["http/1.1"])).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_follows_the_name_the_client_asks_for() {
    let ca = TestCa::new("sni");
    let shop = ca.leaf("shop", &["shop.test"]);
    let wild = ca.leaf("wild", &["*.api.test", "api.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&shop, &wild], "", "").await;
    let addr = gw.listen_addr();
    assert_eq!(served_cert(addr, &ca, "shop.test").await, shop.der.as_ref());
    assert_eq!(served_cert(addr, &ca, "api.test").await, wild.der.as_ref());
    assert_eq!(served_cert(addr, &ca, "eu.api.test").await, wild.der.as_ref());
    assert_eq!(served_cert(addr, &ca, "SHOP.test").await, shop.der.as_ref());
    // An unknown name gets the first certificate (the client then refuses it: wrong name).
    let err = tls_connect(addr, "unknown.test", &ca.client(&["http/1.1"])).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_the_engine_and_the_origin_learns_it_was_https() {
    let ca = TestCa::new("alpn");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&leaf], "", "").await;
    for engine in ENGINES {
        let mut client = tls_client(engine, gw.listen_addr(), &ca, "site.test").await;
        for _ in 0..3 {
            let response = bounded(5.0, "an answer", client.send(engine.get("/echo"))).await;
            let (answer, _) = try_collect(response.unwrap()).await.unwrap();
            assert_eq!(answer.status, 200, "{engine:?}: {}", answer.body);
            let seen = answer.json();
            assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{engine:?}: {seen}");
        }
        client.close();
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_parks_and_serves_again() {
    let ca = TestCa::new("park");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&leaf], "", "").await;
    let mut client = tls_client(Engine::Http1, gw.listen_addr(), &ca, "site.test").await;
    let first = client.send(Engine::Http1.get("/a")).await.unwrap();
    assert_eq!(try_collect(first).await.unwrap().0.status, 200);
    eventually(Duration::from_secs(5), "the TLS connection parks", || async {
        metric(&gw, "seawall_connections_parked ").await >= 1.0
    })
    .await;
    for path in ["/b", "/c"] {
        let again = bounded(5.0, "an answer after parking", client.send(Engine::Http1.get(path)));
        let (answer, _) = try_collect(again.await.unwrap()).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    client.close();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_tls_both_ways() {
    let ca = TestCa::new("large");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&leaf], "", "").await;
    for engine in ENGINES {
        let mut client = tls_client(engine, gw.listen_addr(), &ca, "site.test").await;
        let size = 3 << 20;
        let req = engine.request("POST", "/upload").body(full(vec![b'x'; size])).unwrap();
        let response = bounded(20.0, "an upload", client.send(req)).await.unwrap();
        let (answer, _) = try_collect(response).await.unwrap();
        assert_eq!(answer.status, 200, "{engine:?}");
        assert_eq!(answer.body, size.to_string(), "{engine:?}: the upload arrived whole");
        let req = engine.get(&format!("/bytes?n={size}"));
        let response = bounded(20.0, "a download", client.send(req)).await.unwrap();
        let (answer, _) = try_collect(response).await.unwrap();
        assert_eq!(answer.body.len(), size, "{engine:?}: the download arrived whole");
        client.close();
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume() {
    let ca = TestCa::new("resume");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&leaf], "", "").await;
    let client = ca.client(&["http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut stream = tls_connect(gw.listen_addr(), "site.test", &client).await.unwrap();
        // TLS 1.3 tickets come after the handshake: one exchange takes them in.
        stream
            .write_all(b"GET /r HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", lossy(&answer));
        kinds.push(stream.get_ref().1.handshake_kind());
    }
    assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
    assert_eq!(kinds[2], Some(rustls::HandshakeKind::Resumed), "{kinds:?}");
    assert!(metric(&gw, "seawall_tls_resumed_total ").await >= 1.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_are_cut_and_counted() {
    let ca = TestCa::new("hostile");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&leaf], ", handshake_timeout = \"300ms\"", "").await;
    let addr = gw.listen_addr();
    // Plain HTTP on the TLS port: no answer in clear text, the connection closes.
    let reply =
        bounded(5.0, "plain HTTP refused", raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")).await;
    assert!(!reply.contains("HTTP/1.1"), "{reply}");
    // A ClientHello cut short, then silence: closed after the handshake timeout.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await.unwrap();
    let mut sink = Vec::new();
    let closed = bounded(5.0, "a stalled handshake is cut", stalled.read_to_end(&mut sink)).await;
    assert!(closed.is_ok() || closed.is_err());
    // Random bytes.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let _ = bounded(5.0, "garbage refused", raw(addr, &garbage)).await;
    assert!(metric(&gw, "seawall_tls_handshake_timeouts_total ").await >= 1.0);
    assert!(metric(&gw, "seawall_tls_handshake_failures_total ").await >= 2.0);
    // The gateway still serves.
    let mut client = tls_client(Engine::Http1, addr, &ca, "site.test").await;
    let ok = client.send(Engine::Http1.get("/after")).await.unwrap();
    assert_eq!(try_collect(ok).await.unwrap().0.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_under_load_without_a_failed_request() {
    let ca = TestCa::new("reload");
    let old = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&old], "", "").await;
    let addr = gw.listen_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, done, client) = (Arc::clone(&stop), Arc::clone(&done), ca.client(&["http/1.1"]));
        load.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                // A new connection (a full handshake) for each request.
                let mut s = tls_connect(addr, "site.test", &client).await.expect("handshake");
                s.write_all(b"GET /l HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer).await;
                assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", lossy(&answer));
                done.fetch_add(1, SeqCst);
            }
        }));
    }
    eventually(Duration::from_secs(5), "load runs", || async { done.load(SeqCst) > 10 }).await;
    // The files are replaced by a new certificate with a new key (as a renewal does).
    let new = ca.leaf("renewed", &["site.test"]);
    std::fs::copy(&new.key, &old.key).unwrap();
    std::fs::copy(&new.cert, &old.cert).unwrap();
    eventually(Duration::from_secs(10), "the new certificate is served", || async {
        served_cert(addr, &ca, "site.test").await == new.der.as_ref()
    })
    .await;
    let before = done.load(SeqCst);
    eventually(Duration::from_secs(5), "load goes on", || async {
        done.load(SeqCst) > before + 10
    })
    .await;
    stop.store(true, SeqCst);
    for task in load {
        task.await.expect("no request failed during the reload");
    }
    assert!(metric(&gw, "seawall_tls_certificate_reloads_total ").await >= 1.0);
    // A broken key is refused: the running certificate stays.
    std::fs::write(&old.key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        .unwrap();
    eventually(Duration::from_secs(10), "the bad key is refused", || async {
        metric(&gw, "seawall_tls_certificate_reload_failures_total ").await >= 1.0
    })
    .await;
    assert_eq!(served_cert(addr, &ca, "site.test").await, new.der.as_ref());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https() {
    let ca = TestCa::new("redirect");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(&origin, &[&leaf], "", "http_redirect = \"127.0.0.1:0\"").await;
    let redirect = gw.redirect_addr().unwrap();
    let reply =
        raw(redirect, b"GET /cart?id=7 HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n")
            .await;
    assert!(reply.starts_with("HTTP/1.1 308"), "{reply}");
    let location = format!("location: https://site.test:{}/cart?id=7", gw.listen_addr().port());
    assert!(reply.to_ascii_lowercase().contains(&location), "{reply}");
    let reply = raw(redirect, b"GET / HTTP/1.1\r\nhost: a b\r\nconnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(origin.hits(), 0);
    gw.shutdown().await;
}

/// A gateway in front of an HTTPS origin whose upstream has `tls`.
async fn upstream_tls_gateway(origin: std::net::SocketAddr, tls: &str) -> seawall_http::Gateway {
    let body = format!(
        "[upstreams.secure]\nservers = [\"{origin}\"]\ntls = {{ {tls} }}\nhealth = {{ path = \"/healthz\", interval = \"100ms\" }}\n\
         [[routes]]\nname = \"all\"\nupstream = \"secure\"\n"
    );
    start(config(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_reached_over_verified_tls() {
    let ca = TestCa::new("upstream");
    let leaf = ca.leaf("origin", &["origin.internal"]);
    let origin = https_origin(&leaf).await;
    let good = format!("server_name = \"origin.internal\", ca_file = {:?}", ca.ca_file());
    let gw = upstream_tls_gateway(origin, &good).await;
    for engine in ENGINES {
        for _ in 0..3 {
            let answer = ask(engine, gw.listen_addr(), engine.get("/over-tls")).await;
            assert_eq!(answer.status, 200, "{engine:?}: {}", answer.body);
            assert_eq!(answer.body, "tls origin saw /over-tls");
        }
    }
    // Health checks go over TLS too: the server stays healthy.
    eventually(Duration::from_secs(5), "health checks ran", || async {
        server_state(&gw, 0).await["healthy"] == true
    })
    .await;
    gw.shutdown().await;

    // The wrong name, and a CA that did not sign the certificate: a clear 502.
    let other = TestCa::new("other");
    for tls in [
        format!("server_name = \"elsewhere.internal\", ca_file = {:?}", ca.ca_file()),
        format!("server_name = \"origin.internal\", ca_file = {:?}", other.ca_file()),
        // The built-in web roots do not know a private CA.
        "server_name = \"origin.internal\"".to_string(),
    ] {
        let gw = upstream_tls_gateway(origin, &tls).await;
        for engine in ENGINES {
            let answer = ask(engine, gw.listen_addr(), engine.get("/x")).await;
            assert_eq!(answer.status, 502, "{tls}: {}", answer.body);
            let problem = answer.json();
            assert_eq!(problem["reason"], "upstream_tls_failed", "{problem}");
            assert!(problem["detail"].as_str().unwrap().contains("certificate"), "{problem}");
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_server_behind_an_upstream_with_tls_is_a_tls_failure() {
    let ca = TestCa::new("plain-up");
    let origin = Origin::start().await;
    let tls = format!("server_name = \"origin.internal\", ca_file = {:?}", ca.ca_file());
    let gw = upstream_tls_gateway(origin.addr, &tls).await;
    let answer = ask(Engine::Http1, gw.listen_addr(), Engine::Http1.get("/x")).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.json()["reason"], "upstream_tls_failed");
    gw.shutdown().await;
}
