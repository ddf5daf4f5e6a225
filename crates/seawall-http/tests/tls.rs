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
    let origin = https_origin(&leaf, None).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_an_upstream_that_asks() {
    let ca = TestCa::new("mtls");
    let leaf = ca.leaf("origin", &["origin.internal"]);
    let client = ca.leaf("client", &["seawall.internal"]);
    let origin = https_origin(&leaf, Some(&ca)).await;
    let base = format!("server_name = \"origin.internal\", ca_file = {:?}", ca.ca_file());
    let with_cert =
        format!("{base}, client_cert = {:?}, client_key = {:?}", client.cert, client.key);
    let gw = upstream_tls_gateway(origin, &with_cert).await;
    for engine in ENGINES {
        let answer = ask(engine, gw.listen_addr(), engine.get("/mtls")).await;
        assert_eq!(answer.status, 200, "{engine:?}: {}", answer.body);
    }
    gw.shutdown().await;
    // Without it the origin refuses the connection: a 502, never its answer.
    let gw = upstream_tls_gateway(origin, &base).await;
    let answer = ask(Engine::Http1, gw.listen_addr(), Engine::Http1.get("/mtls")).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_its_handshake_is_cut_at_the_header_timeout() {
    let ca = TestCa::new("silent");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let gw = tls_gateway(
        &origin,
        &[&leaf],
        "",
        "header_timeout = \"300ms\"\nkeepalive_timeout = \"60s\"",
    )
    .await;
    let mut stream =
        tls_connect(gw.listen_addr(), "site.test", &ca.client(&["http/1.1"])).await.unwrap();
    let mut sink = Vec::new();
    // Closed at the header timeout, not after the keep-alive time.
    let _ = bounded(5.0, "the silent TLS client is cut", stream.read_to_end(&mut sink)).await;
    assert!(sink.is_empty(), "{}", lossy(&sink));
    assert!(metric(&gw, "seawall_client_header_timeouts_total ").await >= 1.0);
    gw.shutdown().await;
}

/// An origin that answers every request head with `reply` (and keeps the connection).
async fn scripted_origin(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if tcp.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_with_the_connection_ends_with_close_notify() {
    let ca = TestCa::new("notify");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = scripted_origin(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let server = server_tls(&[&leaf], "");
    let body = format!("[upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n");
    let gw = start(config_with_server(&server, &body)).await;
    for (what, req) in [
        // An HTTP/1.0 client gets a body that ends with the connection.
        ("HTTP/1.0", &b"GET /x HTTP/1.0\r\nhost: site.test\r\n\r\n"[..]),
        ("HTTP/1.1 close", &b"GET /x HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n"[..]),
    ] {
        let mut stream =
            tls_connect(gw.listen_addr(), "site.test", &ca.client(&["http/1.1"])).await.unwrap();
        stream.write_all(req).await.unwrap();
        let mut answer = Vec::new();
        let read = bounded(5.0, "the answer", stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{what}: cut without close_notify: {read:?}");
        assert!(lossy(&answer).ends_with("hello") || lossy(&answer).contains("hello"), "{what}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_reads_proxy_protocol_headers_too() {
    let ca = TestCa::new("redirect-pp");
    let leaf = ca.leaf("site", &["site.test"]);
    let origin = Origin::start().await;
    let server = "proxy_protocol = true\nhttp_redirect = \"127.0.0.1:0\"";
    let gw = tls_gateway(&origin, &[&leaf], "", server).await;
    let reply = raw(
        gw.redirect_addr().unwrap(),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET /cart HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 308"), "{reply}");
    let reply =
        raw(gw.redirect_addr().unwrap(), b"GET /cart HTTP/1.1\r\nhost: site.test\r\n\r\n").await;
    assert!(!reply.contains("308"), "without its PROXY header: {reply}");
    gw.shutdown().await;
}

/// Starts a gateway from a file written with `src`, so that it can reload.
async fn from_file(
    dir: &std::path::Path,
    src: &str,
) -> (seawall_http::Gateway, std::path::PathBuf) {
    let file = dir.join("seawall.toml");
    std::fs::write(&file, src).unwrap();
    let config = seawall_config::load(&file).unwrap();
    (seawall_http::Gateway::start(config, Some(file.clone())).await.unwrap(), file)
}

const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_bundle_replaced_in_place_is_used_after_a_reload() {
    let ca = TestCa::new("ca-swap");
    let wrong = TestCa::new("ca-swap-wrong");
    let leaf = ca.leaf("origin", &["origin.internal"]);
    let origin = https_origin(&leaf, None).await;
    let ca_path = ca.dir.join("trusted.pem");
    std::fs::copy(wrong.ca_file(), &ca_path).unwrap();
    let src = format!(
        "{SERVER}[overload]\ncpu = \"off\"\n[upstreams.secure]\nservers = [\"{origin}\"]\n\
         tls = {{ server_name = \"origin.internal\", ca_file = {ca_path:?} }}\n\
         [[routes]]\nname = \"all\"\nupstream = \"secure\"\n"
    );
    let (gw, _) = from_file(&ca.dir, &src).await;
    assert_eq!(get(gw.listen_addr(), "/x").await.status, 502);
    std::fs::copy(ca.ca_file(), &ca_path).unwrap();
    gw.shared().reload().unwrap();
    let answer = get(gw.listen_addr(), "/x").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_named_by_a_reload_are_followed() {
    let ca = TestCa::new("follow");
    let (a, b, c) =
        (ca.leaf("a", &["site.test"]), ca.leaf("b", &["site.test"]), ca.leaf("c", &["site.test"]));
    let origin = Origin::start().await;
    let src = |leaf: &Leaf| {
        format!(
            "{SERVER}{}\n[overload]\ncpu = \"off\"\n[upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
            server_tls(&[leaf], ""),
            origin.addr
        )
    };
    let (gw, file) = from_file(&ca.dir, &src(&a)).await;
    assert_eq!(served_cert(gw.listen_addr(), &ca, "site.test").await, a.der.as_ref());
    std::fs::write(&file, src(&b)).unwrap();
    gw.shared().reload().unwrap();
    assert_eq!(served_cert(gw.listen_addr(), &ca, "site.test").await, b.der.as_ref());
    // b's files renewed in place (with c's certificate and key).
    std::fs::copy(&c.key, &b.key).unwrap();
    std::fs::copy(&c.cert, &b.cert).unwrap();
    eventually(Duration::from_secs(15), "the renewed certificate is served", || async {
        served_cert(gw.listen_addr(), &ca, "site.test").await == c.der.as_ref()
    })
    .await;
    gw.shutdown().await;
}
