//! The proxy over real sockets: headers, routing, refusals, limits and timeouts, upgrades, h2c.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_and_adds_forwarded_headers_and_strips_hop_by_hop() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let req = Request::get("/echo?q=1")
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-conn-named")
        .header("x-conn-named", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "deflate")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(gw.listen_addr(), req).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = answer.json();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/echo?q=1");
    assert_eq!(h["host"], "shop.example", "Host is preserved by default");
    // The client's own X-Forwarded-For is not passed on from a peer nobody trusts.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["via"], "1.1 seawall");
    assert_eq!(h["x-kept"], "yes");
    // TE is hop-by-hop: only `trailers`, which Seawall can honour, is asked of the upstream.
    for gone in ["x-conn-named", "keep-alive", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} must not reach the upstream: {h}");
    }
    assert_eq!(answer.header("via"), "1.1 seawall");
    assert_eq!(answer.header("proxy-secret"), "", "Proxy-* response headers are hop-by-hop");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_can_be_rewritten_to_the_server() {
    let origin = Origin::start().await;
    let mut cfg = simple(&[&origin], "");
    cfg.routes[0].preserve_host = false;
    let gw = start(cfg).await;
    for engine in ENGINES {
        let seen = ask(engine, gw.listen_addr(), engine.get("/echo")).await.json();
        assert_eq!(seen["headers"]["host"], origin.addr.to_string(), "{engine:?}");
        assert_eq!(seen["headers"]["x-forwarded-host"], "test.local", "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_method_and_header_in_file_order() {
    let (a, b, c, d) = (
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
    );
    let cfg = config(&format!(
        r#"
[upstreams.a]
servers = ["{}"]
[upstreams.b]
servers = ["{}"]
[upstreams.c]
servers = ["{}"]
[upstreams.d]
servers = ["{}"]
[[routes]]
name = "wild"
host = "*.example.com"
upstream = "a"
[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
upstream = "b"
[[routes]]
name = "canary"
path_prefix = "/api/"
header = {{ name = "x-canary", value = "1" }}
upstream = "c"
[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "d"
"#,
        a.addr, b.addr, c.addr, d.addr
    ));
    let origin_of = |answer: &Answer| answer.header("x-origin").parse::<u16>().unwrap_or(0);
    for engine in ENGINES {
        let gw = start(cfg.clone()).await;
        let addr = gw.listen_addr();
        let at = |host: &str, method: &str, path: &str| engine.request_at(host, method, path);
        let r =
            ask(engine, addr, at("shop.example.com:8080", "GET", "/api/x").body(empty()).unwrap())
                .await;
        assert_eq!(origin_of(&r), a.addr.port(), "{engine:?}");
        let r = ask(engine, addr, at("example.com", "POST", "/login").body(empty()).unwrap()).await;
        assert_eq!(origin_of(&r), b.addr.port(), "{engine:?}");
        let canary = at("example.com", "GET", "/api/x").header("x-canary", "1");
        let r = ask(engine, addr, canary.body(empty()).unwrap()).await;
        assert_eq!(origin_of(&r), c.addr.port(), "{engine:?}");
        let r = ask(engine, addr, at("example.com", "GET", "/api/x").body(empty()).unwrap()).await;
        assert_eq!(origin_of(&r), d.addr.port(), "{engine:?}");

        // GET /login matches no route: 404 problem+json.
        let r = ask(engine, addr, at("example.com", "GET", "/login").body(empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{engine:?}");
        assert_eq!(r.header("content-type"), "application/problem+json");
        assert_eq!(r.header("x-seawall-reason"), "no_route");
        assert_eq!(r.json()["reason"], "no_route");
        let unmatched = "seawall_requests_total{route=\"unmatched\",code=\"404\"}";
        assert_eq!(metric(&gw, unmatched).await, 1.0, "{engine:?}");
        let api = "seawall_requests_total{route=\"api\",code=\"200\"}";
        assert_eq!(metric(&gw, api).await, 1.0, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_400_and_closes() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let out = raw(
        gw.listen_addr(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("x-seawall-reason: bad_request"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(origin.hits(), 0, "an ambiguous request must not reach the upstream");
    // A request line that is not HTTP at all gets 400 from the parser.
    let out = raw(gw.listen_addr(), b"GARBAGE\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let big = "a".repeat(20_000);
    let out = raw(
        gw.listen_addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{}", &out[..out.len().min(200)]);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out =
        raw(gw.listen_addr(), format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{}", &out[..out.len().min(200)]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_declared_or_streamed() {
    let origin = Origin::start().await;
    let cfg = config_with_server(
        "max_body_size = 1000",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            origin.addr
        ),
    );
    let gw = start(cfg).await;
    let addr = gw.listen_addr();
    for engine in ENGINES {
        let upload =
            |n: usize| engine.request("POST", "/upload").body(full(vec![b'x'; n])).unwrap();
        let r = ask(engine, addr, upload(1001)).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{engine:?}");
        assert_eq!(r.header("x-seawall-reason"), "body_too_large");
        assert_eq!(origin.hits(), 0, "a declared oversize body is refused before the upstream");
        let r = ask(engine, addr, upload(1000)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "1000"), "{engine:?}");
        origin.hits.store(0, std::sync::atomic::Ordering::SeqCst);
    }
    // HTTP/2 without a declared length: cut off once the limit is passed.
    let (tx, body) = channel_body();
    let mut h2 = Client::connect(Engine::H2c, addr).await;
    let pending = tokio::spawn(async move {
        let req = Engine::H2c.request("POST", "/upload").body(body).unwrap();
        h2.send(req).await.map(|r| r.status())
    });
    for _ in 0..3 {
        if tx.send(Bytes::from(vec![b'x'; 600])).await.is_err() {
            break;
        }
    }
    let status = bounded(5.0, "the 413", pending).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, no length declared: cut off once the limit is passed.
    let out = raw(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n"
            .iter()
            .chain(vec![b'x'; 2000].iter())
            .chain(b"\r\n0\r\n\r\n".iter())
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408_and_idle_connection_is_closed() {
    let origin = Origin::start().await;
    let cfg = config_with_server(
        "header_timeout = \"200ms\"\nkeepalive_timeout = \"300ms\"",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            origin.addr
        ),
    );
    let gw = start(cfg).await;
    // Slowloris: a partial head, then nothing.
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let out = read_to_close(&mut stream).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(out.contains("header_timeout"));
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually(Duration::from_secs(5), "the header timeout counted", || async {
        metric(&gw, "seawall_client_header_timeouts_total").await == 1.0
    })
    .await;

    // A keep-alive connection that finished a request and sends nothing more is closed quietly.
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let out = read_to_close(&mut stream).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // (The status line, not any "408": the origin's port in `x-origin` may hold one.)
    let answers = out.matches("HTTP/1.1 ").count();
    assert!(
        answers == 1 && !out.contains("HTTP/1.1 408"),
        "an idle connection is closed without an answer: {out}"
    );
    // Counted as the connection's task ends, which may be just after the client sees the close.
    eventually(Duration::from_secs(5), "the idle timeout counted", || async {
        metric(&gw, "seawall_client_idle_timeouts_total").await == 1.0
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_within_the_timeout() {
    let origin = Origin::start().await;
    let gw =
        start(simple(&[&origin], "timeout = \"200ms\"\npassive = { consecutive_failures = 0 }"))
            .await;
    for (n, engine) in ENGINES.into_iter().enumerate() {
        let started = std::time::Instant::now();
        let r = ask(engine, gw.listen_addr(), engine.get("/slow?ms=3000")).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
        assert_eq!(r.header("x-seawall-reason"), "upstream_timeout");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        let timeouts = format!(
            "seawall_upstream_requests_total{{upstream=\"app\",server=\"{}\",outcome=\"timeout\"}}",
            origin.addr
        );
        assert_eq!(metric(&gw, &timeouts).await, (n + 1) as f64, "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_502_and_another_server_is_tried() {
    let origin = Origin::start().await;
    // A port with nothing listening: bound but never listened on, and held for the whole test so
    // no other test running beside it can take it (connections to it are refused).
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let dead = held.local_addr().unwrap().as_socket().unwrap();
    let cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{dead}\", \"{}\"]\nbalance = \"round_robin\"\n[upstreams.dead]\nservers = [\"{dead}\"]\n[[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"dead\"\n[[routes]]\nupstream = \"app\"\n",
        origin.addr
    ));
    let gw = start(cfg).await;
    for engine in ENGINES {
        for _ in 0..4 {
            let r = ask(engine, gw.listen_addr(), engine.get("/")).await;
            assert_eq!(r.status, StatusCode::OK, "{engine:?}: the live server answers");
        }
        let r = ask(engine, gw.listen_addr(), engine.get("/dead")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{engine:?}");
        assert_eq!(r.header("x-seawall-reason"), "upstream_connect_failed");
        assert_eq!(r.header("content-type"), "application/problem+json");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_enforced() {
    // A listener whose accept queue is full drops further SYNs, so connecting hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let blackhole = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(blackhole)).await
        {
            fillers.push(s);
        }
    }
    let cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{blackhole}\"]\nconnect_timeout = \"200ms\"\n[[routes]]\nupstream = \"app\"\n"
    ));
    let gw = start(cfg).await;
    for engine in ENGINES {
        let started = std::time::Instant::now();
        let r = ask(engine, gw.listen_addr(), engine.get("/")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{engine:?}");
        assert!(r.json()["detail"].as_str().unwrap().contains("timed out"), "{}", r.body);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
    gw.shutdown().await;
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"through the seawall"] {
        stream.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
    drop(stream);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://h2.example/echo").body(Full::new(Bytes::new())).unwrap();
        sender.ready().await.unwrap();
        let r = collect(sender.send_request(req).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK);
        let seen = r.json();
        assert_eq!(seen["headers"]["host"], "h2.example");
        // Via names the protocol each hop received: HTTP/2 from the client, HTTP/1.1 from the
        // upstream.
        assert_eq!(seen["headers"]["via"], "2 seawall");
        assert_eq!(r.header("via"), "1.1 seawall");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_to_the_upstream_are_reused() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..20 {
        let req = request("/bytes?n=5000").body(Full::new(Bytes::new())).unwrap();
        sender.ready().await.unwrap();
        let r = sender.send_request(req).await.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        let r = collect(r).await;
        assert_eq!(r.body.len(), 5000);
    }
    assert_eq!(
        metric(
            &gw,
            &format!(
                "seawall_upstream_connections_opened_total{{upstream=\"app\",server=\"{}\"}}",
                origin.addr
            )
        )
        .await,
        1.0,
        "one client connection on one worker needs one upstream connection"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_parks_and_serves_again() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for round in 0..3 {
        stream.write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut got = String::new();
        while !got.ends_with(&format!("hello from {}", origin.addr.port())) {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "round {round}: the connection closed");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        // Stay idle long enough for the session to be released.
        let parks = round as f64 + 1.0;
        eventually(Duration::from_secs(5), "the idle connection parks", || async {
            metric(&gw, "seawall_client_parks_total").await >= parks
        })
        .await;
        assert_eq!(
            metric(&gw, "seawall_connections_open").await,
            1.0,
            "parking keeps the connection"
        );
    }
    gw.shutdown().await;
}

async fn exchange(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let origin = Origin::start().await;
    let mut cfg = simple(&[&origin], "");
    // The limit is split between workers; one worker makes it exactly one connection.
    cfg.server.workers = 1;
    cfg.server.max_connections = 1;
    let gw = start(cfg).await;
    let mut first = TcpStream::connect(gw.listen_addr()).await.unwrap();
    assert!(exchange(&mut first).await.starts_with("HTTP/1.1 200"));
    // The second client connects (the kernel completes the handshake) but is not accepted.
    let mut second = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut pending = tokio::spawn(async move { exchange(&mut second).await });
    // While the first holds the only slot, the second's request is not answered (a bounded wait
    // for something that must not happen).
    let early = tokio::time::timeout(Duration::from_millis(300), &mut pending).await;
    assert!(early.is_err(), "answered beyond max_connections: {early:?}");
    assert_eq!(metric(&gw, "seawall_connections_total").await, 1.0);
    assert_eq!(metric(&gw, "seawall_connections_open").await, 1.0);
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(metric(&gw, "seawall_connections_total").await, 2.0);
    gw.shutdown().await;
}
