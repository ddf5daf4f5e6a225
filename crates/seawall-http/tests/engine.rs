//! The HTTP/1 engine against a scripted origin that writes exact bytes: response framings
//! (length, chunked with trailers, until close, none), interim responses, pipelining, upstream
//! connection reuse and loss, broken upstreams, and the shapes it now serves itself (chunked
//! uploads, HTTP/1.0) or refuses itself (smuggling shapes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted origin does after a request.
struct Reply {
    bytes: Vec<u8>,
    /// Close the connection after writing.
    close: bool,
}

fn reply(bytes: &str, close: bool) -> Reply {
    Reply { bytes: bytes.as_bytes().to_vec(), close }
}

/// An origin that answers each request (head and `Content-Length` body read) with fixed bytes.
struct Scripted {
    addr: SocketAddr,
    /// Each request as received: head and body.
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    /// `answer` gets each request and its number on its connection (from 0).
    async fn start(answer: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Scripted {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            connections: Arc::default(),
        };
        let (requests, connections) = (origin.requests.clone(), origin.connections.clone());
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                connections.fetch_add(1, SeqCst);
                let (requests, answer) = (requests.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut count = 0;
                    while let Some(request) = read_request(&mut stream, &mut pending).await {
                        requests.lock().unwrap().push(request.clone());
                        let Reply { bytes, close } = answer(&request, count);
                        count += 1;
                        if stream.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        origin
    }

    fn connections(&self) -> usize {
        self.connections.load(SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request: its head and a `Content-Length` body.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + length {
                let request: Vec<u8> = pending.drain(..end + 4 + length).collect();
                return Some(String::from_utf8_lossy(&request).into_owned());
            }
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

async fn gateway(origin: &Scripted) -> seawall_http::Gateway {
    let cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\ntimeout = \"2s\"\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    ));
    start(cfg).await
}

/// Sends `request` on `stream` and reads until `done` says the answer is complete.
async fn ask(stream: &mut TcpStream, request: &str, done: impl Fn(&str) -> bool) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !done(&String::from_utf8_lossy(&got)) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the answer came in time")
            .unwrap();
        assert!(n > 0, "connection closed early; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

const GET: &str = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_pass_through_with_trailers_and_the_connection_is_reused() {
    let body = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
    let origin = Scripted::start(move |_, _| {
        reply(&format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}"), false)
    })
    .await;
    let gw = gateway(&origin).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    for _ in 0..3 {
        let got =
            ask(&mut client, GET, |t| t.ends_with("\r\n\r\n") && t.contains("x-checksum")).await;
        let (head, rest) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        assert!(head.contains("via: 1.1 seawall"), "{head}");
        assert_eq!(rest, body);
    }
    assert_eq!(origin.connections(), 1, "the upstream connection is reused");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_ends_when_the_upstream_closes_reaches_the_client_as_chunks() {
    let origin = Scripted::start(|_, _| reply("HTTP/1.0 200 OK\r\n\r\nuntil the end", true)).await;
    let gw = gateway(&origin).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    for round in 1..=2 {
        let got = ask(&mut client, GET, |t| t.ends_with("0\r\n\r\n")).await;
        let (head, rest) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(rest, "d\r\nuntil the end\r\n0\r\n\r\n");
        assert_eq!(origin.connections(), round, "such a connection cannot be reused");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_and_interim_responses() {
    let origin = Scripted::start(|request, _| {
        if request.starts_with("HEAD") {
            reply("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", false)
        } else {
            reply(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                false,
            )
        }
    })
    .await;
    let gw = gateway(&origin).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let got =
        ask(&mut client, "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", |t| t.ends_with("\r\n\r\n")).await;
    assert!(got.contains("content-length: 1000"), "HEAD keeps the length of the GET: {got}");
    // The same connection goes on: no body was expected after the HEAD answer.
    let got = ask(&mut client, GET, |t| t.ends_with("ok")).await;
    assert!(
        got.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n"),
        "the 103 is passed on (RFC 9110 §15.2): {got}"
    );
    assert!(got.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"), "then the answer: {got}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let origin = Scripted::start(|request, _| {
        let path = request.split(' ').nth(1).unwrap_or("").to_string();
        reply(&format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len()), false)
    })
    .await;
    let gw = gateway(&origin).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let three = "GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\n\
                 Content-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: a\r\n\r\n";
    let got = ask(&mut client, three, |t| t.ends_with("/three")).await;
    let bodies: Vec<&str> =
        got.split("\r\n\r\n").skip(1).map(|s| &s[..s.find("HTTP").unwrap_or(s.len())]).collect();
    assert_eq!(bodies, ["/one", "/two", "/three"]);
    assert!(origin.requests()[1].ends_with("\r\n\r\nabc"), "the body went with its request");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_that_close_are_not_reused() {
    // One origin says so (and would go on if asked); the other closes silently after each answer.
    let says = Scripted::start(|_, _| {
        reply("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", false)
    })
    .await;
    let silent =
        Scripted::start(|_, _| reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true)).await;
    for origin in [&says, &silent] {
        let gw = gateway(origin).await;
        let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
        for _ in 0..3 {
            let got =
                ask(&mut client, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", |t| t.ends_with("ok")).await;
            assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
            assert!(
                !got.to_ascii_lowercase().contains("connection: close"),
                "the client connection stays: {got}"
            );
        }
        assert_eq!(origin.connections(), 3);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstream_answers_are_502_or_cut_the_client_connection() {
    let origin = Scripted::start(|request, _| {
        if request.starts_with("GET /garbage") {
            reply("SPLAT\r\n\r\n", true)
        } else if request.starts_with("GET /silent") {
            reply("", true)
        } else {
            reply("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", true)
        }
    })
    .await;
    let gw = gateway(&origin).await;
    for path in ["/garbage", "/silent"] {
        let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
        let got = ask(&mut client, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"), |t| {
            t.contains("}")
        })
        .await;
        assert!(got.starts_with("HTTP/1.1 502"), "{path}: {got}");
        assert!(got.contains("x-seawall-reason: upstream_error"), "{path}: {got}");
    }
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    client.write_all(b"GET /short HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_to_close(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("only ten b"), "{got}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_http10_are_served_by_this_engine() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    let hello = format!("hello from {}", origin.addr.port());
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    // A chunked upload, then a plain GET on the same connection.
    let upload = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let got = ask(&mut client, upload, |t| t.ends_with("\r\n\r\n5") || t.ends_with("\r\n5")).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let got =
        ask(&mut client, "GET /hi HTTP/1.1\r\nHost: a\r\n\r\n", |t| t.ends_with(&hello)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // HTTP/1.0 without keep-alive is answered (in the highest version Seawall speaks, RFC 9110
    // §2.5) and closed.
    let mut old = TcpStream::connect(gw.listen_addr()).await.unwrap();
    old.write_all(b"GET /hi HTTP/1.0\r\n\r\n").await.unwrap();
    let got = read_to_close(&mut old).await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with(&hello), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_its_body_here_keeps_the_connection() {
    let origin = Origin::start().await;
    let cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\n",
        origin.addr
    ));
    let gw = start(cfg).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let got = ask(
        &mut client,
        "POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody",
        |t| t.contains('}'),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    assert!(got.contains("x-seawall-reason: no_route"), "{got}");
    let hello = format!("hello from {}", origin.addr.port());
    let got =
        ask(&mut client, "GET /api HTTP/1.1\r\nHost: a\r\n\r\n", |t| t.ends_with(&hello)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_lost_before_answering_is_replaced_for_idempotent_requests() {
    // Each connection answers its first request and drops the second unanswered: what a server
    // closing an idle keep-alive connection looks like when a request crosses the close.
    let origin = Scripted::start(|_, count| {
        if count == 0 {
            reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false)
        } else {
            reply("", true)
        }
    })
    .await;
    let gw = gateway(&origin).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    for _ in 0..3 {
        let got = ask(&mut client, GET, |t| t.ends_with("ok")).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(origin.connections(), 3, "each lost connection was replaced once");
    // A POST may have been acted on: it is not sent twice.
    let got = ask(&mut client, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", |t| {
        t.contains('}')
    })
    .await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_beyond_the_configured_header_count_are_431() {
    let origin = Origin::start().await;
    let mut cfg = simple(&[&origin], "");
    cfg.server.max_headers = 5;
    let gw = start(cfg).await;
    let many: String = (0..8).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    client.write_all(format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).await.unwrap();
    let got = read_to_close(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert_eq!(origin.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_through_and_the_pipelined_request_after_it_is_kept() {
    let origin = Scripted::start(|request, _| {
        let body_len = request.split_once("\r\n\r\n").map_or(0, |(_, body)| body.len());
        reply(
            &format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body_len}",
                body_len.to_string().len()
            ),
            false,
        )
    })
    .await;
    let gw = gateway(&origin).await;
    let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let body = "b".repeat(300_000);
    let both = format!(
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
        body.len()
    );
    let got = ask(&mut client, &both, |t| {
        t.matches("HTTP/1.1 200").count() == 2 && t.ends_with("\r\n\r\n0")
    })
    .await;
    assert!(got.contains("\r\n\r\n300000HTTP/1.1 200"), "{got}");
    let requests = origin.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].starts_with("GET /after"), "{}", requests[1]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_before_reaching_the_upstream() {
    let origin = Origin::start().await;
    let gw = start(simple(&[&origin], "")).await;
    for head in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    ] {
        let mut client = TcpStream::connect(gw.listen_addr()).await.unwrap();
        client.write_all(head.as_bytes()).await.unwrap();
        let got = read_to_close(&mut client).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{head:?}: {got}");
        assert!(got.contains("x-seawall-reason: bad_request\r\n"), "{head:?}: {got}");
        assert!(got.contains("connection: close\r\n"), "{head:?}: {got}");
    }
    assert_eq!(origin.hits(), 0);
    let refused = metric(&gw, "seawall_requests_total{route=\"unmatched\",code=\"400\"}").await;
    assert_eq!(refused, 4.0, "each refusal is counted");
    gw.shutdown().await;
}
