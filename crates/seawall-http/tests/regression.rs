//! Regression tests for issue 7, one per defect, each named after the bug it pins (ripgrep's
//! `tests/regression.rs` habit). Each asserts what a user would notice: the status, a header, the
//! body, how many requests or connections the origin saw, a metric.
//!
//! Where both engines can see a case it runs through both: the HTTP/1.1 engine (a raw socket
//! writing exact bytes, or hyper's HTTP/1 client) and the hyper engine through h2c (HTTP/2 with
//! prior knowledge). Every HTTP/1.x shape (HTTP/1.0, chunked uploads, `Expect`, upgrades,
//! malformed heads) is written as raw bytes, so it must behave right whichever engine serves it.
//!
//! Fixtures here: a scripted origin that reads requests and plays steps (write exact bytes, pause,
//! stall until the gateway closes, reset), a raw HTTP/1 client that parses responses by hand, and
//! a hyper client for either engine. Waits are bounded: a failing test fails, it never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use seawall_http::Gateway;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------------
// Configurations, metrics
// ---------------------------------------------------------------------------------------------

/// A gateway configuration with one worker (upstream pools are per worker, so what happens to a
/// pooled connection is deterministic), a short drain, and extra `[server]` keys.
fn gateway(server: &str, body: &str) -> seawall_config::Config {
    let mut cfg = config_with_server(&format!("drain_timeout = \"2s\"\n{server}"), body);
    cfg.server.workers = 1;
    cfg
}

/// One upstream `app` of `servers` (with extra upstream keys) behind a catch-all route `all`.
fn proxy_to(servers: &[SocketAddr], upstream: &str, server: &str) -> seawall_config::Config {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    gateway(
        server,
        &format!(
            "[upstreams.app]\nservers = [{}]\n{upstream}\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
            list.join(", ")
        ),
    )
}

/// Passive ejection off, for tests that provoke upstream failures on purpose.
const NO_EJECTION: &str = "passive = { consecutive_failures = 0 }";

/// `seawall_upstream_requests_total` of one server of upstream `app`, for one outcome.
async fn outcome(gw: &Gateway, server: SocketAddr, outcome: &str) -> f64 {
    let line = format!(
        "seawall_upstream_requests_total{{upstream=\"app\",server=\"{server}\",outcome=\"{outcome}\"}}"
    );
    metric(gw, &line).await
}

/// `seawall_requests_total` of route `route` for `code`.
async fn answered(gw: &Gateway, route: &str, code: u16) -> f64 {
    metric(gw, &format!("seawall_requests_total{{route=\"{route}\",code=\"{code}\"}}")).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Access log: one process-wide subscriber capturing `seawall::access` lines as JSON
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access-log lines written so far by every gateway of this test binary that has
/// `access_log = true`. The first call installs the subscriber: call it before starting one.
fn access_log() -> Vec<serde_json::Value> {
    static LOG: OnceLock<Captured> = OnceLock::new();
    let captured = LOG.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("seawall::access=info")
            .with_writer(move || writer.clone())
            .try_init();
        captured
    });
    let text = lossy(&captured.0.lock().unwrap());
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Access-log lines for `path`.
fn logged(path: &str) -> Vec<serde_json::Value> {
    access_log().into_iter().filter(|l| l["path"] == path).collect()
}

// ---------------------------------------------------------------------------------------------
// Clients: hyper over either engine, and a raw HTTP/1 socket
// ---------------------------------------------------------------------------------------------

/// A TCP connection to `addr` from the loopback address `from` (for client-IP hashing).
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    bounded(5.0, "connecting", socket.connect(addr)).await.unwrap()
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
    trailers: String,
}

impl Resp {
    fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).first().copied()
    }

    fn reason(&self) -> &str {
        self.header("x-seawall-reason").unwrap_or("")
    }
}

/// A raw HTTP/1 client connection: exact bytes out, responses parsed by hand so that what the
/// gateway writes is seen as it is.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn open(addr: SocketAddr) -> Wire {
        let stream = bounded(5.0, "connecting", TcpStream::connect(addr)).await.unwrap();
        Wire { stream, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        bounded(5.0, "writing to the gateway", self.stream.write_all(bytes.as_ref()))
            .await
            .unwrap_or_else(|e| panic!("the gateway stopped taking bytes: {e}"));
    }

    /// Reads what comes next (5 s at most); 0 when the connection ended.
    async fn read_more(&mut self) -> usize {
        let mut chunk = vec![0u8; 65536];
        let n =
            bounded(5.0, "bytes from the gateway", self.stream.read(&mut chunk)).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn need(&mut self, what: &str, found: impl Fn(&[u8]) -> Option<usize>) -> usize {
        loop {
            if let Some(at) = found(&self.buf) {
                return at;
            }
            if self.read_more().await == 0 {
                panic!("the connection ended while waiting for {what}; got {:?}", lossy(&self.buf));
            }
        }
    }

    /// Reads until `done` holds for all that was read (kept, and returned).
    async fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.need(what, |b| done(&lossy(b)).then_some(0)).await;
        lossy(&self.buf)
    }

    /// The next response to a request with `method`, an interim (1xx) one included.
    async fn response(&mut self, method: &str) -> Resp {
        let end = self.need("a response head", |b| find(b, b"\r\n\r\n").map(|i| i + 4)).await;
        let head = lossy(&self.buf[..end]);
        self.buf.drain(..end);
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut resp = Resp { status, head, body: String::new(), trailers: String::new() };
        if (100..200).contains(&status) || method == "HEAD" || status == 204 || status == 304 {
            return resp;
        }
        let chunked = resp.headers("transfer-encoding").last().is_some_and(|te| {
            te.rsplit(',').next().unwrap_or("").trim().eq_ignore_ascii_case("chunked")
        });
        let length: Option<usize> = resp.header("content-length").and_then(|v| v.parse().ok());
        let mut body = Vec::new();
        if chunked {
            loop {
                let line = self.need("a chunk size line", |b| find(b, b"\r\n")).await;
                let text = lossy(&self.buf[..line]);
                let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {text:?}"));
                self.buf.drain(..line + 2);
                if size == 0 {
                    let end = self
                        .need("the trailer section", |b| {
                            if b.starts_with(b"\r\n") {
                                Some(2)
                            } else {
                                find(b, b"\r\n\r\n").map(|i| i + 4)
                            }
                        })
                        .await;
                    resp.trailers = lossy(&self.buf[..end]);
                    self.buf.drain(..end);
                    break;
                }
                self.need("chunk data", |b| (b.len() >= size + 2).then_some(0)).await;
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = length {
            self.need("the response body", |b| (b.len() >= len).then_some(0)).await;
            body.extend(self.buf.drain(..len));
        } else {
            while self.read_more().await > 0 {}
            body.append(&mut self.buf);
        }
        resp.body = lossy(&body);
        resp
    }

    /// The final response, with the interim ones that came before it.
    async fn final_response(&mut self, method: &str) -> (Vec<Resp>, Resp) {
        let mut interim = Vec::new();
        loop {
            let resp = self.response(method).await;
            if (100..200).contains(&resp.status) && resp.status != 101 {
                interim.push(resp);
            } else {
                return (interim, resp);
            }
        }
    }

    /// Whether the gateway ends the connection within `secs` (what it sends meanwhile is kept).
    async fn closes_within(&mut self, secs: f64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        let mut chunk = vec![0u8; 65536];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Writes `head` and then `pieces` on a new connection while reading what the gateway answers,
/// until `done` holds for it, the gateway closes, or `secs` pass; returns what was read. The
/// writer stops quietly when the gateway stops taking bytes.
async fn push_and_listen(
    addr: SocketAddr,
    head: String,
    pieces: impl Iterator<Item = Vec<u8>>,
    secs: f64,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let write = async {
        if writer.write_all(head.as_bytes()).await.is_ok() {
            for piece in pieces {
                if writer.write_all(&piece).await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        while !done(&lossy(&got)) {
            match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        lossy(&got)
    };
    tokio::select! {
        got = read => got,
        () = write => unreachable!(),
    }
}

/// `n` pieces of `size` bytes each, as raw bytes or as chunks.
fn pieces(n: usize, size: usize, chunked: bool) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |_| {
        let data = vec![b'u'; size];
        if chunked {
            let mut framed = format!("{size:x}\r\n").into_bytes();
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            framed
        } else {
            data
        }
    })
}

// ---------------------------------------------------------------------------------------------
// A scripted origin: reads requests (head, and a Content-Length or chunked body) and plays steps
// ---------------------------------------------------------------------------------------------

/// A request as the scripted origin received it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// Which connection (from 0) and which request on it (from 0).
    conn: usize,
    nth: usize,
}

impl Seen {
    fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }

    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .collect()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
}

/// What the scripted origin does after reading a request.
enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Closes the connection.
    Close,
    /// Closes the connection with a reset (RST).
    Reset,
    /// Waits up to this long for the gateway to close the connection (noted `closed`, and the
    /// connection ends), then goes on (noted `stall over`).
    Stall(Duration),
    /// Writes this many bytes in 64 KiB pieces.
    Flood(usize),
    Note(&'static str),
}

fn write(text: impl AsRef<[u8]>) -> Step {
    Step::Write(text.as_ref().to_vec())
}

fn ok(body: &str) -> Step {
    write(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()))
}

type Answerer = dyn Fn(&Seen) -> Vec<Step> + Send + Sync;

/// An origin that writes exact bytes. A write that fails is noted `write failed`.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    notes: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(answer: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Scripted {
        Scripted::launch(Arc::new(answer), true).await
    }

    /// Like [`Scripted::start`], but reads request heads only, never bodies.
    async fn heads_only(answer: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Scripted {
        Scripted::launch(Arc::new(answer), false).await
    }

    async fn launch(answer: Arc<Answerer>, bodies: bool) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Scripted {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            connections: Arc::default(),
            notes: Arc::default(),
        };
        let (seen, connections, notes) =
            (origin.seen.clone(), origin.connections.clone(), origin.notes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let conn = connections.fetch_add(1, SeqCst);
                let (seen, notes, answer) = (seen.clone(), notes.clone(), answer.clone());
                tokio::spawn(serve_scripted(stream, conn, bodies, seen, notes, answer));
            }
        });
        origin
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(SeqCst)
    }

    /// How many times `note` was noted.
    fn noted(&self, note: &str) -> usize {
        self.notes.lock().unwrap().iter().filter(|n| *n == note).count()
    }
}

async fn serve_scripted(
    mut stream: TcpStream,
    conn: usize,
    bodies: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    notes: Arc<Mutex<Vec<String>>>,
    answer: Arc<Answerer>,
) {
    let note = |n: &str| notes.lock().unwrap().push(n.to_string());
    let mut pending = Vec::new();
    let mut nth = 0;
    while let Some((head, body)) = read_request(&mut stream, &mut pending, bodies).await {
        let request = Seen { head, body, conn, nth };
        nth += 1;
        seen.lock().unwrap().push(request.clone());
        for step in answer(&request) {
            match step {
                Step::Write(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        note("write failed");
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Close => return,
                Step::Reset => {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::Stall(up_to) => {
                    let mut sink = vec![0u8; 65536];
                    let closed = tokio::time::timeout(up_to, async {
                        while let Ok(n) = stream.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await
                    .is_ok();
                    if closed {
                        note("closed");
                        return;
                    }
                    note("stall over");
                }
                Step::Flood(mut n) => {
                    static ZEROS: [u8; 65536] = [b'z'; 65536];
                    while n > 0 {
                        let take = n.min(ZEROS.len());
                        if stream.write_all(&ZEROS[..take]).await.is_err() {
                            note("write failed");
                            return;
                        }
                        n -= take;
                    }
                }
                Step::Note(n) => note(n),
            }
        }
    }
}

async fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; 65536];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request: its head and (when `bodies`) its body, framed by Content-Length or chunked.
async fn read_request(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    bodies: bool,
) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = find(pending, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, pending).await {
            return None;
        }
    };
    let head = lossy(&pending[..end]);
    pending.drain(..end);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if !bodies {
        return Some((head, body));
    }
    if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        loop {
            let line = loop {
                if let Some(i) = find(pending, b"\r\n") {
                    break i;
                }
                if !fill(stream, pending).await {
                    return None;
                }
            };
            let text = lossy(&pending[..line]);
            let size =
                usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            pending.drain(..line + 2);
            if size == 0 {
                loop {
                    if pending.starts_with(b"\r\n") {
                        pending.drain(..2);
                        break;
                    }
                    if let Some(i) = find(pending, b"\r\n\r\n") {
                        pending.drain(..i + 4);
                        break;
                    }
                    if !fill(stream, pending).await {
                        return None;
                    }
                }
                break;
            }
            while pending.len() < size + 2 {
                if !fill(stream, pending).await {
                    return None;
                }
            }
            body.extend_from_slice(&pending[..size]);
            pending.drain(..size + 2);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while pending.len() < len {
            if !fill(stream, pending).await {
                return None;
            }
        }
        body.extend(pending.drain(..len));
    }
    Some((head, body))
}

/// An origin that hands each accepted connection to `serve`.
async fn bare_origin<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Reads and discards until the peer closes (or errors).
async fn drain_until_closed<R: AsyncRead + Unpin>(stream: &mut R) {
    let mut sink = vec![0u8; 65536];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket tunnels through the gateway to the hyper origin's `/ws` echo
// ---------------------------------------------------------------------------------------------

async fn websocket(addr: SocketAddr) -> Wire {
    let mut wire = Wire::open(addr).await;
    wire.send(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let head = wire.response("GET").await;
    assert_eq!(head.status, 101, "{head:?}");
    wire
}

/// Sends `msg` through the tunnel and waits (3 s at most) for its echo; `Err` with what came
/// instead when the tunnel closed or stayed silent.
async fn echo(wire: &mut Wire, msg: &str) -> Result<(), String> {
    wire.buf.clear();
    wire.stream.write_all(msg.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut chunk = vec![0u8; 4096];
    while !lossy(&wire.buf).contains(msg) {
        match tokio::time::timeout_at(deadline, wire.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => wire.buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err(format!("the tunnel closed; got {:?}", lossy(&wire.buf))),
            Err(_) => return Err(format!("no echo; got {:?}", lossy(&wire.buf))),
        }
    }
    Ok(())
}

// =============================================================================================
// Smuggling and framing
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_content_length_cannot_smuggle_a_request() {
    let origin = Scripted::start(|r| vec![ok(r.path())]).await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let len = smuggled.len();
    let shapes = [
        (
            "HTTP/1.1, Connection: content-length",
            format!("POST /upload HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {len}\r\n\r\n{smuggled}"),
        ),
        (
            "HTTP/1.0 keep-alive, Connection: content-length",
            format!("POST /upload HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, content-length\r\nContent-Length: {len}\r\n\r\n{smuggled}"),
        ),
        (
            "chunked, Connection: transfer-encoding",
            format!("POST /upload HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{smuggled}\r\n0\r\n\r\n"),
        ),
    ];
    for (shape, request) in shapes {
        let before = origin.seen().len();
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(&request).await;
        let answer = client.response("POST").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "/upload"), "{shape}: {answer:?}");
        // A later client, served on the same pooled upstream connection, gets its own answer.
        let mut next = Wire::open(gw.listen_addr()).await;
        next.send("GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let answer = next.response("GET").await;
        assert_eq!(answer.body, "/next", "{shape}: a later client got another's answer");
        let seen = &origin.seen()[before..];
        let paths: Vec<&str> = seen.iter().map(Seen::path).collect();
        assert_eq!(paths, ["/upload", "/next"], "{shape}: what reached the origin");
        assert_eq!(lossy(&seen[0].body), smuggled, "{shape}: the body went with its request");
        if !shape.starts_with("chunked") {
            assert_eq!(seen[0].header("content-length"), Some(len.to_string()), "{shape}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_host_still_sends_a_host() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for version in ["1.1", "1.0"] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client
            .send(format!(
                "GET /host HTTP/{version}\r\nHost: shop.example\r\nConnection: host\r\n\r\n"
            ))
            .await;
        assert_eq!(client.response("GET").await.status, 200);
        let seen = origin.seen().pop().unwrap();
        assert_eq!(seen.headers("host"), ["shop.example"], "HTTP/{version}: {}", seen.head);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_connection_naming_content_length_stays_framed() {
    let origin = Scripted::start(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
        )]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    // HTTP/1.1: two requests on one client connection, each answer framed.
    let mut client = Wire::open(gw.listen_addr()).await;
    for round in 0..2 {
        client.buf.clear();
        client.send("GET /framed HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let got = client.until("the body", |t| t.ends_with("hello")).await;
        let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.contains("content-length: 5"), "round {round}: unframed answer: {got}");
    }
    // h2c.
    let mut client = Client::connect(Engine::H2c, gw.listen_addr()).await;
    for round in 0..2 {
        let response =
            bounded(5.0, "h2c answer", client.send(Engine::H2c.get("/framed"))).await.unwrap();
        let (answer, _) = try_collect(response).await.unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "hello"));
        assert_eq!(answer.header("content-length"), "5", "h2c round {round}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_length_lines_are_forwarded_as_one() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for version in ["1.1", "1.0"] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client
            .send(format!(
                "POST /twice HTTP/{version}\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
            ))
            .await;
        assert_eq!(client.response("POST").await.status, 200, "HTTP/{version}");
        let seen = origin.seen().pop().unwrap();
        assert_eq!(seen.headers("content-length"), ["3"], "HTTP/{version}: {}", seen.head);
        assert_eq!(seen.body, b"abc");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_line_removes_what_it_names() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let lines = "Connection: keep-alive\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 1\r\n";
    for (shape, request) in [
        ("HTTP/1.1", format!("GET /lines HTTP/1.1\r\nHost: a\r\n{lines}\r\n")),
        ("HTTP/1.0", format!("GET /lines HTTP/1.0\r\nHost: a\r\n{lines}\r\n")),
        (
            "chunked upload",
            format!("POST /lines HTTP/1.1\r\nHost: a\r\n{lines}Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
        ),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(&request).await;
        let method = if shape.starts_with("chunked") { "POST" } else { "GET" };
        assert_eq!(client.response(method).await.status, 200, "{shape}");
        let seen = origin.seen().pop().unwrap();
        assert_eq!(seen.header("x-secret"), None, "{shape}: {}", seen.head);
        assert_eq!(seen.header("x-kept").as_deref(), Some("1"), "{shape}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_x_forwarded_host_is_never_forwarded() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for (shape, request, expected) in [
        (
            "HTTP/1.1 with Host",
            "GET /xfh HTTP/1.1\r\nHost: shop\r\nX-Forwarded-Host: evil\r\n\r\n",
            vec!["shop".to_string()],
        ),
        ("HTTP/1.0 without Host", "GET /xfh HTTP/1.0\r\nX-Forwarded-Host: evil\r\n\r\n", vec![]),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(request).await;
        assert_eq!(client.response("GET").await.status, 200, "{shape}");
        let seen = origin.seen().pop().unwrap();
        assert_eq!(seen.headers("x-forwarded-host"), expected, "{shape}: {}", seen.head);
    }
    let req = Engine::H2c
        .request("GET", "/xfh")
        .header("x-forwarded-host", "evil")
        .body(empty())
        .unwrap();
    assert_eq!(ask(Engine::H2c, gw.listen_addr(), req).await.status, StatusCode::OK);
    let seen = origin.seen().pop().unwrap();
    assert_eq!(seen.headers("x-forwarded-host"), ["test.local"], "h2c: {}", seen.head);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_pipelined_behind_a_handed_off_request_is_400() {
    let origin = Scripted::start(|r| vec![ok(r.path())]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let evil = "POST /evil HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for (shape, first, method) in [
        (
            "behind a chunked upload",
            "POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "POST",
        ),
        (
            "behind an HTTP/1.0 keep-alive request",
            "GET /first HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            "GET",
        ),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(format!("{first}{evil}")).await;
        let answer = client.response(method).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "/first"), "{shape}");
        let answer = client.response("POST").await;
        assert_eq!(answer.status, 400, "{shape}: {answer:?}");
        assert_eq!(answer.reason(), "bad_request", "{shape}");
    }
    assert!(origin.seen().iter().all(|s| s.path() != "/evil"), "the ambiguous request got through");
    gw.shutdown().await;
}

// =============================================================================================
// Requests Seawall must refuse itself
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_without_host_or_with_two_are_400() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for request in
        ["GET /nohost HTTP/1.1\r\n\r\n", "GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"]
    {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(request).await;
        let answer = client.response("GET").await;
        assert_eq!((answer.status, answer.reason()), (400, "bad_request"), "{request:?}");
        assert_eq!(answer.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(origin.seen().len(), 0, "refused requests must not reach the origin");
    // HTTP/1.0 needs no Host.
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(client.response("GET").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_and_invalid_content_lengths_are_400_bad_request_problems() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for request in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(request).await;
        let answer = client.response("POST").await;
        assert_eq!(answer.status, 400, "{request:?}: {answer:?}");
        assert_eq!(answer.reason(), "bad_request", "{request:?}: {answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{request:?}");
        assert!(client.closes_within(3.0).await, "{request:?}: the connection closes");
    }
    assert_eq!(origin.seen().len(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_431_header_too_large_counted_and_logged() {
    access_log();
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let mut cfg = proxy_to(&[origin.addr], "", "");
    cfg.log.access_log = true;
    let gw = start(cfg).await;
    let big = "a".repeat(20_000);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    for request in [
        format!("GET /too-big HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
        format!("GET /too-many HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(&request).await;
        let answer = client.response("GET").await;
        assert_eq!(answer.status, 431, "{answer:?}");
        assert_eq!(answer.reason(), "header_too_large", "{answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/problem+json"));
    }
    eventually(Duration::from_secs(3), "both 431s are counted", || async {
        answered(&gw, "unmatched", 431).await == 2.0
    })
    .await;
    let lines: Vec<_> = access_log().into_iter().filter(|l| l["status"] == 431).collect();
    assert_eq!(lines.len(), 2, "one access-log line per 431: {lines:?}");
    assert_eq!(origin.seen().len(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_seawall_and_not_forwarded() {
    let origin = Scripted::start(|r| vec![ok(&r.body.len().to_string())]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client
        .send(
            "POST /expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await;
    let interim = bounded(3.0, "100 Continue", client.response("POST")).await;
    assert!(interim.head.starts_with("HTTP/1.1 100 Continue"), "{interim:?}");
    client.send("hello").await;
    let (_, answer) = client.final_response("POST").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "5"));
    let seen = origin.seen().pop().unwrap();
    assert_eq!(seen.header("expect"), None, "Expect is not forwarded: {}", seen.head);
    assert_eq!(seen.body, b"hello");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_other_than_100_continue_is_417() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client
        .send(
            "POST /expect HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
    let answer = client.response("POST").await;
    assert_eq!((answer.status, answer.reason()), (417, "expectation_failed"), "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/problem+json"));
    assert_eq!(origin.seen().len(), 0);
    gw.shutdown().await;
}

// =============================================================================================
// Upstream responses the gateway must not pass through as they are
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_upstream_connections_with_chunked_framing_are_never_reused() {
    for engine in ENGINES {
        for (shape, response) in [
            (
                "chunked keep-alive",
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            ),
            ("chunked", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ] {
            let origin = Scripted::start(move |_| vec![write(response)]).await;
            let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
            for _ in 0..3 {
                let answer = try_ask(engine, gw.listen_addr(), engine.get("/old")).await;
                let answer = answer.unwrap_or_else(|e| panic!("{engine:?} {shape}: {e}"));
                assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "ok"));
            }
            let seen = origin.seen();
            assert_eq!(seen.len(), 3, "{engine:?} {shape}");
            assert_eq!(origin.connections(), 3, "{engine:?} {shape}: one connection per answer");
            assert!(
                seen.iter().all(|s| s.nth == 0),
                "{engine:?} {shape}: an HTTP/1.0 connection was reused: {:?}",
                seen.iter().map(|s| (s.conn, s.nth)).collect::<Vec<_>>()
            );
            gw.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_keep_alive_answer_with_a_length_may_be_reused() {
    // RFC 9112 §9.3: an HTTP/1.0 response with `Connection: keep-alive` and a length keeps its
    // connection; one without keep-alive does not.
    for (keep_alive, connections) in [(true, 1), (false, 3)] {
        let header = if keep_alive { "Connection: keep-alive\r\n" } else { "" };
        let response = format!("HTTP/1.0 200 OK\r\n{header}Content-Length: 2\r\n\r\nok");
        let origin = Scripted::start(move |_| vec![write(response.clone())]).await;
        let mut cfg = proxy_to(&[origin.addr], NO_EJECTION, "");
        cfg.server.workers = 1;
        let gw = start(cfg).await;
        for _ in 0..3 {
            let answer = ask(Engine::Http1, gw.listen_addr(), Engine::Http1.get("/old")).await;
            assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "ok"));
        }
        assert_eq!(origin.connections(), connections, "keep-alive: {keep_alive}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_outside_100_to_599_is_502_and_an_error() {
    for engine in ENGINES {
        let origin = Scripted::start(|r| {
            let code = &r.path()[1..];
            vec![write(format!("HTTP/1.1 {code} Odd\r\nContent-Length: 0\r\n\r\n")), Step::Close]
        })
        .await;
        let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
        for code in ["000", "099", "999"] {
            let answer = try_ask(engine, gw.listen_addr(), engine.get(&format!("/{code}"))).await;
            let answer = answer.unwrap_or_else(|e| panic!("{engine:?} {code}: no answer: {e}"));
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{engine:?} {code}");
            assert_eq!(answer.header("x-seawall-reason"), "upstream_error", "{engine:?} {code}");
        }
        assert_eq!(outcome(&gw, origin.addr, "error").await, 3.0, "{engine:?}");
        assert_eq!(outcome(&gw, origin.addr, "http_5xx").await, 0.0, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_response_head_over_64_kib_is_502_even_in_one_read() {
    let big = "h".repeat(64 * 1024 + 100);
    let origin = Scripted::start(move |_| {
        vec![write(format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok"))]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    for engine in ENGINES {
        let answer = try_ask(engine, gw.listen_addr(), engine.get("/big-head")).await;
        let answer = answer.unwrap_or_else(|e| panic!("{engine:?}: no answer: {e}"));
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{engine:?}");
        assert_eq!(answer.header("x-seawall-reason"), "upstream_error", "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_reach_http11_clients_but_not_http10_ones() {
    let origin = Scripted::start(|_| {
        vec![
            write("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"),
            Step::Pause(Duration::from_millis(20)),
            ok("ok"),
        ]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /hints HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let (interim, answer) = client.final_response("GET").await;
    assert_eq!(interim.len(), 1, "the 103 is forwarded before the answer");
    assert_eq!(interim[0].status, 103);
    assert_eq!(interim[0].header("link"), Some("</a.css>; rel=preload"));
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));

    let mut old = Wire::open(gw.listen_addr()).await;
    old.send("GET /hints HTTP/1.0\r\nHost: a\r\n\r\n").await;
    let answer = old.response("GET").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "no 1xx for HTTP/1.0");

    let answer = ask(Engine::H2c, gw.listen_addr(), Engine::H2c.get("/hints")).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "ok"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_trailers_reach_a_client_that_sent_te_trailers() {
    let origin = Scripted::start(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
             5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
        )]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n").await;
    let answer = client.response("GET").await;
    assert_eq!(answer.body, "hello");
    assert_eq!(answer.header("trailer"), Some("x-checksum"), "{answer:?}");
    assert!(answer.trailers.contains("x-checksum: 42"), "{answer:?}");
    let seen = origin.seen().pop().unwrap();
    assert_eq!(seen.header("te").as_deref(), Some("trailers"), "HTTP/1.1: {}", seen.head);

    let mut h2 = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let req = Engine::H2c.request("GET", "/trailers").header("te", "trailers").body(empty());
    let response = bounded(5.0, "h2c answer", h2.send(req.unwrap())).await.unwrap();
    let (answer, trailers) = try_collect(response).await.unwrap();
    assert_eq!(answer.body, "hello");
    assert_eq!(answer.header("trailer"), "x-checksum");
    let trailers = trailers.expect("an HTTP/2 trailers frame");
    assert_eq!(trailers.get("x-checksum").map(|v| v.to_str().unwrap()), Some("42"));
    let seen = origin.seen().pop().unwrap();
    assert_eq!(seen.header("te").as_deref(), Some("trailers"), "h2c: {}", seen.head);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_gzip_without_chunked_is_read_until_close() {
    let origin = Scripted::start(|_| {
        vec![write("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nsqueezed-bytes"), Step::Close]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /gzip HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let answer = client.response("GET").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "squeezed-bytes"), "{answer:?}");
    // HTTP/2 has no transfer codings: such a body cannot be passed on, and says so (as nginx).
    let answer = ask(Engine::H2c, gw.listen_addr(), Engine::H2c.get("/gzip")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("x-seawall-reason"), "upstream_error");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_after_a_head_or_204_answer_does_not_poison_the_next_request() {
    let planted = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED";
    let origin = Scripted::start(move |r| {
        let head = match (r.method(), r.path()) {
            ("HEAD", _) => "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
            (_, "/nocontent") => "HTTP/1.1 204 No Content\r\n\r\n",
            _ => return vec![ok(r.path())],
        };
        // A broken origin: a body after an answer that has none.
        vec![
            write(head),
            Step::Pause(Duration::from_millis(30)),
            write(planted),
            Step::Note("planted"),
        ]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    let mut planted_so_far = 0;
    for engine in ENGINES {
        for (method, path) in [("HEAD", "/head"), ("GET", "/nocontent")] {
            let req = engine.request(method, path).body(empty()).unwrap();
            let answer = ask(engine, gw.listen_addr(), req).await;
            assert!(answer.status.is_success(), "{engine:?} {method} {path}");
            planted_so_far += 1;
            eventually(Duration::from_secs(3), "the origin planted its bytes", || async {
                origin.noted("planted") == planted_so_far
            })
            .await;
            let next = format!("/next-{planted_so_far}");
            let answer = ask(engine, gw.listen_addr(), engine.get(&next)).await;
            assert_eq!(answer.body, next, "{engine:?} after {method} {path}: poisoned");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_data_in_the_first_read_is_502_with_one_outcome() {
    for engine in ENGINES {
        let origin = Scripted::start(|_| {
            vec![
                write(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n",
                ),
                Step::Close,
            ]
        })
        .await;
        let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
        let answer = match engine {
            Engine::Http1 => {
                let mut client = Wire::open(gw.listen_addr()).await;
                client.send("GET /broken HTTP/1.1\r\nHost: a\r\n\r\n").await;
                let answer = client.response("GET").await;
                (answer.status, answer.reason().to_string())
            }
            Engine::H2c => {
                let answer = try_ask(engine, gw.listen_addr(), engine.get("/broken")).await;
                let answer = answer.unwrap_or_else(|e| panic!("h2c: no answer: {e}"));
                (answer.status.as_u16(), answer.header("x-seawall-reason").to_string())
            }
        };
        assert_eq!(answer, (502, "upstream_error".to_string()), "{engine:?}");
        eventually(Duration::from_secs(3), "the error is recorded", || async {
            outcome(&gw, origin.addr, "error").await == 1.0
        })
        .await;
        assert_eq!(outcome(&gw, origin.addr, "ok").await, 0.0, "{engine:?}: one outcome only");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_breaking_midway_is_cut_and_records_one_error() {
    for engine in ENGINES {
        let origin = Scripted::start(|_| {
            vec![
                write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
                Step::Pause(Duration::from_millis(100)),
                write("ZZZ\r\nnot a chunk\r\n"),
                Step::Close,
            ]
        })
        .await;
        let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
        match engine {
            Engine::Http1 => {
                let mut client = Wire::open(gw.listen_addr()).await;
                client.send("GET /breaks HTTP/1.1\r\nHost: a\r\n\r\n").await;
                client.until("the first chunk", |t| t.contains("hello")).await;
                assert!(client.closes_within(3.0).await, "the client connection is cut");
                assert!(
                    !lossy(&client.buf).ends_with("0\r\n\r\n"),
                    "a clean end: {:?}",
                    lossy(&client.buf)
                );
            }
            Engine::H2c => {
                let result = try_ask(engine, gw.listen_addr(), engine.get("/breaks")).await;
                assert!(
                    result.is_err(),
                    "h2c: the stream is reset, not ended cleanly: {:?}",
                    result.map(|a| a.body)
                );
            }
        }
        eventually(Duration::from_secs(3), "the error is recorded", || async {
            outcome(&gw, origin.addr, "error").await == 1.0
        })
        .await;
        assert_eq!(outcome(&gw, origin.addr, "ok").await, 0.0, "{engine:?}: one outcome only");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_content_length_beside_chunked_never_truncates_the_body() {
    let origin = Scripted::start(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
             b\r\nhello world\r\n0\r\n\r\n",
        )]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for (shape, request, body) in [
        ("HTTP/1.1", "GET /both HTTP/1.1\r\nHost: a\r\n\r\n", ""),
        ("HTTP/1.0", "GET /both HTTP/1.0\r\nHost: a\r\n\r\n", ""),
        (
            "chunked upload",
            "POST /both HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "",
        ),
        (
            "Expect",
            "POST /both HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "hi",
        ),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(request).await;
        if !body.is_empty() {
            let interim = bounded(3.0, "100 Continue", client.response("POST")).await;
            assert_eq!(interim.status, 100, "{shape}: {interim:?}");
            client.send(body).await;
        }
        let (_, answer) = client.final_response("POST").await;
        assert_eq!(answer.body, "hello world", "{shape}: {answer:?}");
        let length = answer.header("content-length");
        assert!(length.is_none() || length == Some("11"), "{shape}: {answer:?}");
    }
    let answer = ask(Engine::H2c, gw.listen_addr(), Engine::H2c.get("/both")).await;
    assert_eq!(answer.body, "hello world", "h2c");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_before_the_whole_body_reaches_the_client_at_once() {
    // The origin answers as soon as it has the head, and reads no body.
    let origin = bare_origin(|mut stream| async move {
        let mut head = Vec::new();
        while find(&head, b"\r\n\r\n").is_none() {
            if !fill(&mut stream, &mut head).await {
                return;
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo much")
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(8), drain_until_closed(&mut stream)).await;
    })
    .await;
    let gw = start(proxy_to(&[origin], &format!("timeout = \"3s\"\n{NO_EJECTION}"), "")).await;
    let piece = "u".repeat(1000);
    for (shape, request) in [
        (
            "Content-Length",
            format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n{piece}"),
        ),
        (
            "chunked",
            format!("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{piece}\r\n"),
        ),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(&request).await;
        // The client sends no more: the origin's answer must not wait for the rest.
        let answer = bounded(2.5, "the origin's early answer", client.response("POST")).await;
        assert_eq!((answer.status, answer.body.as_str()), (413, "too much"), "{shape}");
    }
    let mut h2 = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let (tx, body) = channel_body();
    tx.send(Bytes::from(piece)).await.unwrap();
    let req = Engine::H2c.request("POST", "/up").body(body).unwrap();
    let response = bounded(2.5, "h2c: the origin's early answer", h2.send(req)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(tx);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_sent_twice_after_a_write_error_on_a_pooled_connection() {
    const BODY: usize = 1 << 20;
    for shape in ["Content-Length", "chunked", "h2c"] {
        // Each connection answers GETs; a POST is reset as soon as its head is in, while the
        // gateway is still writing the body.
        let origin = Scripted::heads_only(|r| {
            if r.method() == "POST" {
                vec![Step::Note("post"), Step::Reset]
            } else {
                vec![ok("warm")]
            }
        })
        .await;
        let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
        // Pooled connections for either engine.
        for engine in ENGINES {
            assert_eq!(ask(engine, gw.listen_addr(), engine.get("/warm")).await.body, "warm");
        }
        match shape {
            "h2c" => {
                let mut h2 = Client::connect(Engine::H2c, gw.listen_addr()).await;
                let req = Engine::H2c.request("POST", "/once").body(full(vec![b'p'; BODY]));
                let _ = bounded(5.0, "h2c answer", h2.send(req.unwrap())).await;
            }
            _ => {
                let chunked = shape == "chunked";
                let head = if chunked {
                    "POST /once HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .to_string()
                } else {
                    format!("POST /once HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n")
                };
                let mut body: Vec<Vec<u8>> = pieces(16, BODY / 16, chunked).collect();
                if chunked {
                    body.push(b"0\r\n\r\n".to_vec());
                }
                push_and_listen(gw.listen_addr(), head, body.into_iter(), 5.0, |t| {
                    t.contains("\r\n\r\n")
                })
                .await;
            }
        }
        assert_eq!(origin.noted("post"), 1, "{shape}: the origin saw the POST more than once");
        gw.shutdown().await;
    }
}

// =============================================================================================
// Clients that leave
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_answer_is_499_and_cancels_the_upstream() {
    access_log();
    let origin = Scripted::start(|_| vec![Step::Stall(Duration::from_secs(8)), ok("late")]).await;
    let mut cfg = proxy_to(&[origin.addr], NO_EJECTION, "");
    cfg.log.access_log = true;
    let gw = start(cfg).await;
    let addr = gw.listen_addr();
    let shapes = [
        "HTTP/1.1 GET, socket closed",
        "HTTP/1.1 POST with Idempotency-Key, socket closed",
        "h2c GET, stream reset",
        "h2c GET, connection dropped",
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        let n = i + 1;
        let arrived = || async { origin.seen().len() == n };
        match i {
            0 | 1 => {
                let mut client = Wire::open(addr).await;
                client
                    .send(if i == 0 {
                        "GET /abandoned HTTP/1.1\r\nHost: a\r\n\r\n"
                    } else {
                        "POST /abandoned HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k-1\r\nContent-Length: 2\r\n\r\nhi"
                    })
                    .await;
                eventually(Duration::from_secs(5), "the request reaches the origin", arrived).await;
                drop(client);
            }
            2 => {
                let client = Client::connect(Engine::H2c, addr).await;
                let mut h2 = client.h2();
                let pending = tokio::spawn(async move {
                    let _ = h2.send_request(Engine::H2c.get("/abandoned")).await;
                });
                eventually(Duration::from_secs(5), "the request reaches the origin", arrived).await;
                // Dropping the response future resets the stream; the connection stays.
                pending.abort();
                eventually(Duration::from_secs(3), "the origin sees the cancel", || async {
                    origin.noted("closed") == n
                })
                .await;
                drop(client);
            }
            _ => {
                // hyper's client keeps its socket while a request is pending, so the connection
                // is cut under it: a second handle to the socket shuts it down both ways.
                let stream = bounded(5.0, "connecting", TcpStream::connect(addr)).await.unwrap();
                let std = stream.into_std().unwrap();
                let cut = std.try_clone().unwrap();
                let client = Client::over(Engine::H2c, TcpStream::from_std(std).unwrap()).await;
                let mut h2 = client.h2();
                let pending = tokio::spawn(async move {
                    let _ = h2.send_request(Engine::H2c.get("/abandoned")).await;
                });
                eventually(Duration::from_secs(5), "the request reaches the origin", arrived).await;
                cut.shutdown(std::net::Shutdown::Both).unwrap();
                eventually(
                    Duration::from_secs(3),
                    "the origin sees its connection closed",
                    || async { origin.noted("closed") == n },
                )
                .await;
                pending.abort();
                client.close();
            }
        }
        eventually(Duration::from_secs(3), "the origin sees its connection closed", || async {
            origin.noted("closed") == n
        })
        .await;
        eventually(Duration::from_secs(3), "counted as 499", || async {
            answered(&gw, "all", 499).await == n as f64
        })
        .await;
        assert_eq!(metric(&gw, "seawall_client_aborts_total").await, n as f64, "{shape}");
    }
    assert_eq!(answered(&gw, "all", 200).await, 0.0);
    let lines = logged("/abandoned");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l["status"] == 499), "{lines:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_post_still_gets_its_answer() {
    let origin =
        Scripted::start(|_| vec![Step::Pause(Duration::from_millis(300)), ok("done")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for (shape, request) in [
        ("HTTP/1.1 Content-Length", "POST /work HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
        (
            "chunked",
            "POST /work HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        ("HTTP/1.0", "POST /work HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
    ] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client.send(request).await;
        client.stream.shutdown().await.unwrap();
        let answer = client.response("POST").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "done"), "{shape}");
    }
    assert_eq!(origin.seen().len(), 3);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_body_closes_the_upstream_promptly() {
    for engine in ENGINES {
        let origin = Scripted::start(|_| {
            vec![
                write("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789"),
                Step::Stall(Duration::from_secs(8)),
            ]
        })
        .await;
        let gw = start(proxy_to(&[origin.addr], "read_timeout = \"30s\"", "")).await;
        match engine {
            Engine::Http1 => {
                let mut client = Wire::open(gw.listen_addr()).await;
                client.send("GET /trickle HTTP/1.1\r\nHost: a\r\n\r\n").await;
                client.until("the first bytes", |t| t.ends_with("0123456789")).await;
                drop(client);
            }
            Engine::H2c => {
                let mut client = Client::connect(engine, gw.listen_addr()).await;
                let response =
                    bounded(5.0, "h2c head", client.send(engine.get("/trickle"))).await.unwrap();
                let mut body = response.into_body();
                bounded(5.0, "the first bytes", body.frame()).await.unwrap().unwrap();
                client.close();
            }
        }
        eventually(Duration::from_secs(3), "the origin sees its connection closed", || async {
            origin.noted("closed") == 1
        })
        .await;
        eventually(Duration::from_secs(3), "no connection left open", || async {
            metric(&gw, "seawall_connections_open").await == 0.0
        })
        .await;
        gw.shutdown().await;
    }
}

// =============================================================================================
// Timeouts once the answer has started, and while bodies stream
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalling_mid_body_is_cut_after_read_timeout() {
    for engine in ENGINES {
        let origin = Scripted::start(|_| {
            vec![
                write("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789"),
                Step::Stall(Duration::from_secs(8)),
            ]
        })
        .await;
        let upstream = format!("read_timeout = \"500ms\"\ntimeout = \"5s\"\n{NO_EJECTION}");
        let gw = start(proxy_to(&[origin.addr], &upstream, "")).await;
        match engine {
            Engine::Http1 => {
                let mut client = Wire::open(gw.listen_addr()).await;
                client.send("GET /trickle HTTP/1.1\r\nHost: a\r\n\r\n").await;
                client.until("the first bytes", |t| t.ends_with("0123456789")).await;
                assert!(client.closes_within(3.0).await, "the answer is cut after read_timeout");
            }
            Engine::H2c => {
                let mut client = Client::connect(engine, gw.listen_addr()).await;
                let response =
                    bounded(5.0, "h2c head", client.send(engine.get("/trickle"))).await.unwrap();
                let mut body = response.into_body();
                let ended = bounded(3.0, "the answer is cut after read_timeout", async {
                    loop {
                        match body.frame().await {
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => break Err(e),
                            None => break Ok(()),
                        }
                    }
                })
                .await;
                assert!(ended.is_err(), "the stream is reset, not ended as if complete");
            }
        }
        eventually(Duration::from_secs(3), "outcome timeout recorded", || async {
            outcome(&gw, origin.addr, "timeout").await == 1.0
        })
        .await;
        eventually(Duration::from_secs(3), "the upstream connection is closed", || async {
            origin.noted("closed") == 1
        })
        .await;
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    const FLOOD: usize = 256 << 20;
    for engine in ENGINES {
        let origin = Scripted::start(|_| {
            vec![
                write(format!("HTTP/1.1 200 OK\r\nContent-Length: {FLOOD}\r\n\r\n")),
                Step::Flood(FLOOD),
            ]
        })
        .await;
        let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "send_timeout = \"500ms\"")).await;
        // The client asks and never reads.
        let _client = match engine {
            Engine::Http1 => {
                let mut client = Wire::open(gw.listen_addr()).await;
                client.send("GET /flood HTTP/1.1\r\nHost: a\r\n\r\n").await;
                (Some(client), None)
            }
            Engine::H2c => {
                let mut client = Client::connect(engine, gw.listen_addr()).await;
                let response =
                    bounded(5.0, "h2c head", client.send(engine.get("/flood"))).await.unwrap();
                (None, Some((client, response)))
            }
        };
        eventually(Duration::from_secs(6), "the send timeout fires", || async {
            metric(&gw, "seawall_client_send_timeouts_total").await == 1.0
        })
        .await;
        eventually(Duration::from_secs(3), "the upstream connection is closed", || async {
            origin.noted("write failed") == 1
        })
        .await;
        if engine == Engine::Http1 {
            eventually(Duration::from_secs(3), "the client connection is closed", || async {
                metric(&gw, "seawall_connections_open").await == 0.0
            })
            .await;
        }
        // The stalled request gives back its place: hyper no longer polls a body whose window
        // stays shut, so it must not be what releases it.
        eventually(Duration::from_secs(3), "the request leaves the in-flight gauge", || async {
            metric(&gw, "seawall_inflight_requests{route=\"all\"}").await == 0.0
        })
        .await;
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_is_504_after_send_timeout() {
    const BODY: usize = 256 << 20;
    // Reads the head, then nothing (no body, no answer) for longer than the test.
    let origin = Scripted::heads_only(|_| vec![Step::Pause(Duration::from_secs(8))]).await;
    let upstream = format!("send_timeout = \"500ms\"\ntimeout = \"5s\"\n{NO_EJECTION}");
    let gw = start(proxy_to(&[origin.addr], &upstream, "max_body_size = 0")).await;
    let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n");
    let started = Instant::now();
    let got =
        push_and_listen(gw.listen_addr(), head, pieces(BODY / 65536, 65536, false), 4.0, |t| {
            t.contains('}')
        })
        .await;
    assert!(got.starts_with("HTTP/1.1 504"), "HTTP/1.1 after {:?}: {got:?}", started.elapsed());
    assert!(got.contains("upstream_timeout"), "{got}");

    let mut h2 = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        for _ in 0..BODY / 65536 {
            if tx.send(Bytes::from_static(&[b'u'; 65536])).await.is_err() {
                break;
            }
        }
    });
    let req = Engine::H2c.request("POST", "/upload").body(body).unwrap();
    let response = bounded(4.0, "h2c: 504 after send_timeout", h2.send(req)).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.headers()["x-seawall-reason"], "upstream_timeout");
    feeder.abort();
    gw.shutdown().await;
}

/// Writes a 10,000-byte upload in ten pieces 300 ms apart (about 3 s) and returns the answer.
async fn slow_upload(addr: SocketAddr, shape: &'static str) -> (u16, String) {
    let pause = Duration::from_millis(300);
    if shape == "h2c" {
        let mut h2 = Client::connect(Engine::H2c, addr).await;
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(pause).await;
                if tx.send(Bytes::from(vec![b'u'; 1000])).await.is_err() {
                    break;
                }
            }
        });
        let req = Engine::H2c.request("POST", "/upload").body(body).unwrap();
        let response = bounded(8.0, "h2c upload answer", h2.send(req)).await.unwrap();
        let (answer, _) = try_collect(response).await.unwrap();
        return (answer.status.as_u16(), answer.body);
    }
    let chunked = shape == "chunked";
    let mut client = Wire::open(addr).await;
    let framing = if chunked { "Transfer-Encoding: chunked" } else { "Content-Length: 10000" };
    let expect = if shape == "expect" { "Expect: 100-continue\r\n" } else { "" };
    client.send(format!("POST /upload HTTP/1.1\r\nHost: a\r\n{expect}{framing}\r\n\r\n")).await;
    if shape == "expect" {
        let interim = bounded(3.0, "100 Continue", client.response("POST")).await;
        assert_eq!(interim.status, 100, "{interim:?}");
    }
    for piece in pieces(10, 1000, chunked) {
        tokio::time::sleep(pause).await;
        client.send(piece).await;
    }
    if chunked {
        client.send("0\r\n\r\n").await;
    }
    let (_, answer) = bounded(8.0, "upload answer", client.final_response("POST")).await;
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_are_not_cut_by_the_upstream_timeout() {
    let origin = Origin::start().await;
    let gw = start(proxy_to(&[origin.addr], &format!("timeout = \"1s\"\n{NO_EJECTION}"), "")).await;
    let addr = gw.listen_addr();
    // The four uploads run at once; each reports its answer or why it has none.
    let shapes = ["Content-Length", "chunked", "expect", "h2c"];
    let uploads: Vec<_> =
        shapes.iter().map(|shape| tokio::spawn(slow_upload(addr, shape))).collect();
    let mut results = Vec::new();
    for (shape, upload) in shapes.iter().zip(uploads) {
        let result = upload.await.map_err(|e| match e.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
            Err(e) => e.to_string(),
        });
        results.push((*shape, result));
    }
    let expected = (200, "10000".to_string());
    assert!(
        results.iter().all(|(_, r)| r.as_ref().is_ok_and(|a| *a == expected)),
        "every slow upload gets the origin's count of 10000 bytes: {results:#?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pausing_past_body_timeout_gets_408_and_never_ejects_the_server() {
    let origin = Origin::start().await;
    let upstream =
        "timeout = \"5s\"\npassive = { consecutive_failures = 1, base_ejection = \"30s\" }";
    let gw = start(proxy_to(&[origin.addr], upstream, "body_timeout = \"500ms\"")).await;
    let addr = gw.listen_addr();
    for shape in ["Content-Length", "chunked", "expect", "h2c"] {
        let (status, reason) = if shape == "h2c" {
            let mut h2 = Client::connect(Engine::H2c, addr).await;
            let (tx, body) = channel_body();
            tx.send(Bytes::from(vec![b'u'; 1000])).await.unwrap();
            let req = Engine::H2c.request("POST", "/upload").body(body).unwrap();
            let response = bounded(3.0, "h2c: 408 after body_timeout", h2.send(req)).await.unwrap();
            drop(tx);
            let reason = response.headers().get("x-seawall-reason").cloned();
            (response.status().as_u16(), reason.map(|r| r.to_str().unwrap().to_string()))
        } else {
            let chunked = shape == "chunked";
            let framing =
                if chunked { "Transfer-Encoding: chunked" } else { "Content-Length: 10000" };
            let expect = if shape == "expect" { "Expect: 100-continue\r\n" } else { "" };
            let mut client = Wire::open(addr).await;
            client
                .send(format!("POST /upload HTTP/1.1\r\nHost: a\r\n{expect}{framing}\r\n\r\n"))
                .await;
            if shape == "expect" {
                let interim = bounded(3.0, "100 Continue", client.response("POST")).await;
                assert_eq!(interim.status, 100, "{interim:?}");
            }
            client.send(pieces(1, 1000, chunked).next().unwrap()).await;
            // ...and nothing more.
            let (_, answer) =
                bounded(3.0, "408 after body_timeout", client.final_response("POST")).await;
            assert!(client.closes_within(3.0).await, "{shape}: the connection closes");
            (answer.status, answer.header("x-seawall-reason").map(str::to_string))
        };
        assert_eq!((status, reason.as_deref()), (408, Some("body_timeout")), "{shape}");
        // The slow client is not the server's fault.
        let answer = get(addr, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{shape}: the server was ejected");
        let state = server_state(&gw, 0).await;
        assert_eq!(state["available"], true, "{shape}: {state}");
    }
    assert_eq!(outcome(&gw, origin.addr, "timeout").await, 0.0);
    assert_eq!(outcome(&gw, origin.addr, "error").await, 0.0);
    gw.shutdown().await;
}

// =============================================================================================
// Upgraded connections (WebSocket tunnels)
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_outlives_the_park_delay_and_the_header_timeout() {
    let origin = Origin::start().await;
    let gw = start(proxy_to(&[origin.addr], "", "header_timeout = \"1s\"")).await;
    let mut tunnel = websocket(gw.listen_addr()).await;
    echo(&mut tunnel, "hello").await.unwrap();
    // Quiet for longer than the park delay (0.25 s) and than header_timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = echo(&mut tunnel, "still here").await;
    assert!(again.is_ok(), "the quiet tunnel died: {again:?}");
    assert!(!lossy(&tunnel.buf).contains("408"), "a 408 in the tunnel: {:?}", lossy(&tunnel.buf));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_in_connections_open_and_max_connections() {
    let origin = Origin::start().await;
    let mut cfg = proxy_to(&[origin.addr], "", "");
    // max_connections is split per worker: one worker makes it exactly one connection.
    cfg.server.max_connections = 1;
    let gw = start(cfg).await;
    let mut tunnel = websocket(gw.listen_addr()).await;
    echo(&mut tunnel, "hello").await.unwrap();
    eventually(Duration::from_secs(3), "the tunnel counts as an open connection", || async {
        metric(&gw, "seawall_connections_open").await == 1.0
    })
    .await;
    // The one slot is the tunnel's: a second client waits in the backlog.
    let mut second = Wire::open(gw.listen_addr()).await;
    second.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let early = tokio::time::timeout(Duration::from_millis(500), second.response("GET")).await;
    assert!(early.is_err(), "answered while the tunnel holds the only slot: {early:?}");
    assert_eq!(metric(&gw, "seawall_connections_total").await, 1.0);
    drop(tunnel);
    let answer = bounded(5.0, "the second client is served", second.response("GET")).await;
    assert_eq!(answer.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_idle_timeout_closes_an_idle_tunnel() {
    let origin = Origin::start().await;
    let gw = start(proxy_to(&[origin.addr], "", "tunnel_idle_timeout = \"500ms\"")).await;
    let mut tunnel = websocket(gw.listen_addr()).await;
    // Traffic every 200 ms for a second: longer than the idle timeout, never idle that long.
    for i in 0..5 {
        echo(&mut tunnel, &format!("tick {i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tunnel.closes_within(3.0).await, "the idle tunnel is closed");
    eventually(Duration::from_secs(3), "counted", || async {
        metric(&gw, "seawall_tunnel_idle_timeouts_total").await == 1.0
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_tunnels() {
    let origin = Origin::start().await;
    let mut cfg = proxy_to(&[origin.addr], "", "");
    // Long enough that waiting the tunnel out instead of closing it shows.
    cfg.server.drain_timeout = Duration::from_secs(5);
    let gw = start(cfg).await;
    let mut tunnel = websocket(gw.listen_addr()).await;
    echo(&mut tunnel, "hello").await.unwrap();
    let shutdown = tokio::spawn(gw.shutdown());
    // The tunnel is busy: only the drain can close it.
    bounded(3.0, "the drain closes the tunnel", async {
        let mut i = 0;
        while echo(&mut tunnel, &format!("busy {i}")).await.is_ok() {
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let drained = bounded(4.0, "the drain ends", shutdown).await.unwrap();
    assert!(drained, "the drain closed the tunnel instead of waiting it out");
}

// =============================================================================================
// Metrics, admin API, health, balancing
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeouts_do_not_count_silent_closes_or_the_drain() {
    let origin = Origin::start().await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    for _ in 0..3 {
        drop(Wire::open(gw.listen_addr()).await);
    }
    eventually(Duration::from_secs(3), "the three connections come and go", || async {
        metric(&gw, "seawall_connections_total").await == 3.0
            && metric(&gw, "seawall_connections_open").await == 0.0
    })
    .await;
    assert_eq!(metric(&gw, "seawall_client_header_timeouts_total").await, 0.0);
    // Connections that sent nothing when the drain begins.
    let _silent = [Wire::open(gw.listen_addr()).await, Wire::open(gw.listen_addr()).await];
    eventually(Duration::from_secs(3), "two silent connections open", || async {
        metric(&gw, "seawall_connections_open").await == 2.0
    })
    .await;
    let shared = Arc::clone(gw.shared());
    gw.shutdown().await;
    assert_eq!(shared.registry.header_timeouts.get(), 0, "closed by the drain, not late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_shows_the_running_listen_and_workers_after_a_reload() {
    let origin = Origin::start().await;
    let dir = std::env::temp_dir().join(format!("seawall-regression-{}-state", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seawall.toml");
    let file = |listen: &str, workers: usize| {
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin = \"127.0.0.1:0\"\nworkers = {workers}\n\
             [overload]\ncpu = \"off\"\n\
             [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
            origin.addr
        )
    };
    std::fs::write(&path, file("127.0.0.1:0", 2)).unwrap();
    let gw =
        Gateway::start(seawall_config::load(&path).unwrap(), Some(path.clone())).await.unwrap();
    let before = admin(&gw, "/api/v1/state").await.json();
    // Both keys need a restart: the reload keeps their running values.
    std::fs::write(&path, file("127.0.0.1:1", 1)).unwrap();
    let reload = send(
        gw.admin_addr(),
        Request::post("/api/v1/reload")
            .header("host", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.body);
    let after = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(after["workers"], 2, "{after}");
    assert_eq!(after["listen"], before["listen"], "{after}");
    assert_ne!(after["listen"], "127.0.0.1:1");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let origin = Origin::start().await;
    let dir =
        std::env::temp_dir().join(format!("seawall-regression-{}-bearer", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seawall.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 1\nadmin_token = \"s3cret\"\n\
             [overload]\ncpu = \"off\"\n\
             [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            origin.addr
        ),
    )
    .unwrap();
    let gw = Gateway::start(seawall_config::load(&path).unwrap(), Some(path)).await.unwrap();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let reload = send(
            gw.admin_addr(),
            Request::post("/api/v1/reload")
                .header("host", "admin")
                .header("authorization", format!("{scheme} s3cret"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(reload.status, StatusCode::OK, "{scheme}: {}", reload.body);
    }
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passively_ejected_server_returns_when_its_health_checks_pass() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let upstream = "balance = \"round_robin\"\n\
        health = { path = \"/healthz\", interval = \"50ms\", timeout = \"50ms\", unhealthy_after = 1, healthy_after = 1 }\n\
        passive = { consecutive_failures = 1, base_ejection = \"30s\", max_ejected_percent = 50 }";
    let gw = start(proxy_to(&[a.addr, b.addr], upstream, "")).await;
    a.failing.store(true, SeqCst);
    eventually(Duration::from_secs(5), "a is ejected", || async {
        get(gw.listen_addr(), "/").await;
        server_state(&gw, 0).await["ejected"] == true
    })
    .await;
    // a goes down, then recovers: its active checks fail, then pass.
    a.healthy.store(false, SeqCst);
    eventually(Duration::from_secs(3), "a fails its checks", || async {
        server_state(&gw, 0).await["healthy"] == false
    })
    .await;
    a.failing.store(false, SeqCst);
    a.healthy.store(true, SeqCst);
    eventually(Duration::from_secs(3), "a is back (30 s before its ejection ends)", || async {
        let state = server_state(&gw, 0).await;
        state["healthy"] == true && state["available"] == true
    })
    .await;
    let before = a.hits();
    for _ in 0..4 {
        assert_eq!(get(gw.listen_addr(), "/").await.status, StatusCode::OK);
    }
    assert!(a.hits() > before, "a takes traffic again");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_hash_header_is_balanced_by_client_ip() {
    let origins = [Origin::start().await, Origin::start().await, Origin::start().await];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let upstream = "balance = \"consistent_hash\"\nhash_on = \"header:x-user\"";
    let gw = start(proxy_to(&addrs, upstream, "")).await;
    for engine in ENGINES {
        let mut by_ip = std::collections::HashSet::new();
        for last in 2..=13 {
            let ip = Ipv4Addr::new(127, 0, 0, last);
            let mut client = Client::over(engine, connect_from(ip, gw.listen_addr()).await).await;
            let without = origin_header(&mut client, engine.get("/")).await;
            let empty_key = engine.request("GET", "/").header("x-user", "").body(empty()).unwrap();
            let with_empty = origin_header(&mut client, empty_key).await;
            assert_eq!(with_empty, without, "{engine:?} from {ip}: an empty key is no key");
            by_ip.insert(without);
        }
        assert!(by_ip.len() > 1, "{engine:?}: client IPs spread: {by_ip:?}");
    }
    gw.shutdown().await;
}

// =============================================================================================
// Tests strengthened (the old ones could not fail, or saw one engine only)
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_duration_covers_a_slow_answer() {
    access_log();
    let origin = Origin::start().await;
    let mut cfg = proxy_to(&[origin.addr], "", "");
    cfg.log.access_log = true;
    let gw = start(cfg).await;
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let answer = ask(engine, gw.listen_addr(), engine.get("/slow?ms=200")).await;
        assert_eq!(answer.status, StatusCode::OK);
        eventually(Duration::from_secs(3), "the access-log line", || async {
            logged("/slow").len() == i + 1
        })
        .await;
        let line = logged("/slow").pop().unwrap();
        let ms = line["duration_ms"].as_f64().unwrap();
        assert!(ms >= 200.0, "{engine:?}: duration_ms {ms} for a 200 ms answer: {line}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_hash_spreads_many_cookies_and_each_sticks() {
    let origins = [Origin::start().await, Origin::start().await, Origin::start().await];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let upstream = "balance = \"consistent_hash\"\nhash_on = \"cookie:session\"";
    let gw = start(proxy_to(&addrs, upstream, "")).await;
    for engine in ENGINES {
        let mut client = Client::connect(engine, gw.listen_addr()).await;
        let mut per_server: std::collections::HashMap<String, usize> = Default::default();
        for user in 0..60 {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let req = engine
                    .request("GET", "/")
                    .header("cookie", format!("theme=dark; session=user-{user}; lang=en"))
                    .body(empty())
                    .unwrap();
                seen.push(origin_header(&mut client, req).await);
            }
            assert!(seen.windows(2).all(|w| w[0] == w[1]), "{engine:?} user-{user}: {seen:?}");
            *per_server.entry(seen[0].clone()).or_default() += 1;
        }
        assert_eq!(per_server.len(), 3, "{engine:?}: cookies spread: {per_server:?}");
        assert!(per_server.values().all(|&n| n >= 8), "{engine:?}: {per_server:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways_on_both_engines() {
    let origin = Scripted::start(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Secret: p\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
        )]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let gone_upstream = ["x-conn-named", "keep-alive", "proxy-authorization"];
    let gone_downstream = ["connection", "x-private", "keep-alive", "proxy-secret"];
    for version in ["1.1", "1.0"] {
        let mut client = Wire::open(gw.listen_addr()).await;
        client
            .send(format!(
                "GET /hop HTTP/{version}\r\nHost: a\r\nConnection: keep-alive, x-conn-named\r\n\
                 X-Conn-Named: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9v\r\n\
                 X-Kept: yes\r\n\r\n"
            ))
            .await;
        let answer = client.response("GET").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
        let seen = origin.seen().pop().unwrap();
        for name in gone_upstream {
            assert_eq!(seen.header(name), None, "HTTP/{version}: {name} reached the origin");
        }
        assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));
        for name in gone_downstream {
            let value = answer.header(name).unwrap_or("");
            let leaked = if name == "connection" {
                value.to_ascii_lowercase().contains("x-private")
            } else {
                !value.is_empty()
            };
            assert!(!leaked, "HTTP/{version}: {name} reached the client: {}", answer.head);
        }
        assert_eq!(answer.header("x-kept"), Some("yes"));
    }
    let req = Engine::H2c
        .request("GET", "/hop")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-kept", "yes")
        .body(empty())
        .unwrap();
    let answer = ask(Engine::H2c, gw.listen_addr(), req).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "ok"));
    let seen = origin.seen().pop().unwrap();
    assert_eq!(seen.header("proxy-authorization"), None, "h2c: {}", seen.head);
    for name in gone_downstream {
        assert_eq!(answer.header(name), "", "h2c: {name} reached the client");
    }
    assert_eq!(answer.header("x-kept"), "yes");
    gw.shutdown().await;
}

// =============================================================================================
// Found by attacking the rewritten request path
// =============================================================================================

/// A gateway whose only route is `/app` (anything else is 404 `no_route`) in front of `origin`.
fn app_only(origin: SocketAddr, upstream: &str) -> seawall_config::Config {
    gateway(
        "",
        &format!(
            "[upstreams.app]\nservers = [\"{origin}\"]\n{upstream}\n[[routes]]\nname = \"app\"\npath_prefix = \"/app\"\nupstream = \"app\"\n"
        ),
    )
}

/// Seawall's own answer to a HEAD request carries the problem document as a body: the client,
/// which reads no body after a HEAD answer, takes those bytes for the start of the next response
/// on the keep-alive connection (response desync; behind a shared front proxy, another user's
/// request gets the wrong answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_to_head_has_no_body_and_the_next_response_starts_clean() {
    let origin = Scripted::start(|_| vec![ok("fine")]).await;
    let gw = start(app_only(origin.addr, "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("HEAD /elsewhere HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let refused = client.response("HEAD").await;
    assert_eq!(refused.status, 404, "{refused:?}");
    assert_eq!(refused.header("connection"), None, "the connection stays open: {refused:?}");
    client.send("GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let got = client.until("the next response", |s| s.contains("fine") || s.len() > 4096).await;
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "the answer to the GET must be the next thing on the wire, got {got:?}"
    );
    gw.shutdown().await;
}

/// Same, for the refusals Seawall writes after trying the upstream (502 here): a HEAD whose
/// upstream cannot be reached gets a 502 with a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_to_head_has_no_body() {
    // A port that refuses connections.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let gw = start(proxy_to(&[dead], NO_EJECTION, "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let refused = client.response("HEAD").await;
    assert_eq!(refused.status, 502, "{refused:?}");
    // Nothing may follow the head of an answer to HEAD.
    client.send("HEAD /y HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let got = client.until("the next response", |s| s.matches("HTTP/1.1 502").count() >= 1).await;
    assert!(got.starts_with("HTTP/1.1 502"), "bytes after a HEAD answer's head: {got:?}");
    gw.shutdown().await;
}

/// An upstream that sends an interim answer (103 Early Hints here; 100 Continue from an origin
/// that always sends it is the same) while the request body is still coming makes Seawall stop
/// sending the body: `send` takes "the upstream is readable" for an early final answer, and the
/// wait for the head never resumes the upload. The origin waits for the body, Seawall for the
/// answer: 504 after `timeout`, and a healthy server is charged a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_answer_during_the_upload_does_not_stop_the_body() {
    let origin = bare_origin(|mut stream| async move {
        let mut got = Vec::new();
        let end = loop {
            if let Some(i) = find(&got, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut stream, &mut got).await {
                return;
            }
        };
        if stream.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n").await.is_err() {
            return;
        }
        while got.len() < end + 10 {
            if !fill(&mut stream, &mut got).await {
                return;
            }
        }
        let body = lossy(&got[end..end + 10]);
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let _ = stream.write_all(answer.as_bytes()).await;
        drain_until_closed(&mut stream).await;
    })
    .await;
    let gw = start(proxy_to(&[origin], "timeout = \"2s\"", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234").await;
    let hints = client.response("POST").await;
    assert_eq!(hints.status, 103, "{hints:?}");
    client.send("56789").await;
    let (_, answer) = bounded(8.0, "the final answer", client.final_response("POST")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "0123456789"),
        "the body must reach the origin after its 103: {answer:?}"
    );
    assert_eq!(outcome(&gw, origin, "timeout").await, 0.0, "the origin did nothing wrong");
    gw.shutdown().await;
}

/// A POST streamed on a pooled connection whose previous answer ended with a read that filled
/// the read buffer exactly: tokio keeps that connection "read ready" (it clears readiness only
/// after a short read), the non-idempotent checkout asks the socket with `peek` (which does not
/// clear it), and `send` takes the stale readiness for an early answer. The body is never
/// sent: 504 after `timeout`, and the healthy server is charged a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_connection_whose_last_read_filled_the_buffer_sends_its_body() {
    // An answer of exactly 16 KiB (the upstream read buffer) in one write.
    let mut exact = String::new();
    for n in 16000..16384 {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
        if head.len() + n == 16384 {
            exact = format!("{head}{}", "b".repeat(n));
            break;
        }
    }
    assert_eq!(exact.len(), 16384);
    let (heads_tx, mut heads_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let exact = Arc::new(exact);
    let origin = bare_origin(move |mut stream| {
        let (exact, heads_tx) = (exact.clone(), heads_tx.clone());
        async move {
            let mut pending = Vec::new();
            loop {
                let end = loop {
                    if let Some(i) = find(&pending, b"\r\n\r\n") {
                        break i + 4;
                    }
                    if !fill(&mut stream, &mut pending).await {
                        return;
                    }
                };
                let head = lossy(&pending[..end]);
                pending.drain(..end);
                let _ = heads_tx.send(head.clone());
                if head.starts_with("GET") {
                    if stream.write_all(exact.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                while pending.len() < 10 {
                    if !fill(&mut stream, &mut pending).await {
                        return;
                    }
                }
                let body = lossy(&pending.drain(..10).collect::<Vec<u8>>());
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{body}");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let gw = start(proxy_to(&[origin], "timeout = \"2s\"", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let big = client.response("GET").await;
    assert_eq!((big.status, big.body.len()), (200, exact_len()), "{}", big.head);
    assert!(bounded(2.0, "the GET reached the origin", heads_rx.recv()).await.is_some());

    let mut poster = Wire::open(gw.listen_addr()).await;
    poster.send("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234").await;
    // The origin has the head (and the first half): Seawall now waits for the second half.
    let head = bounded(2.0, "the POST reached the origin", heads_rx.recv()).await.unwrap();
    assert!(head.starts_with("POST"), "{head}");
    poster.send("56789").await;
    let answer = bounded(8.0, "the answer to the POST", poster.response("POST")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "0123456789"),
        "the rest of the body must be sent: {answer:?}"
    );
    assert_eq!(outcome(&gw, origin, "timeout").await, 0.0, "the origin did nothing wrong");
    gw.shutdown().await;
}

fn exact_len() -> usize {
    let mut n = 16000;
    loop {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
        if head.len() + n == 16384 {
            return n;
        }
        n += 1;
    }
}

/// An absolute-form target with a query and no path (`http://host?x=1`, valid per RFC 9112
/// §3.2.2: an empty path is sent as `/`) is forwarded as `GET ?x=1 HTTP/1.1`, a request line no
/// origin can parse; routing meanwhile saw the path `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_without_a_path_is_forwarded_with_slash() {
    let origin = Scripted::start(|_| vec![ok("fine")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let answer = client.response("GET").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = origin.seen().pop().unwrap();
    assert_eq!(seen.path(), "/?x=1", "request line sent upstream: {:?}", seen.head);
    gw.shutdown().await;
}

/// `server.max_headers` is enforced by the HTTP/1.1 engine only: the same request over h2c is
/// forwarded with all its fields (the upstream gets what the gateway promises to stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_headers_holds_on_both_engines() {
    let origin = Scripted::start(|_| vec![ok("fine")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "max_headers = 10")).await;
    for engine in ENGINES {
        let mut req = engine.request("GET", "/many");
        for i in 0..20 {
            req = req.header(format!("x-h{i}"), "v");
        }
        let answer = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{engine:?}");
    }
    assert_eq!(origin.seen().len(), 0, "no request with too many fields reaches the origin");
    gw.shutdown().await;
}

/// An origin that reads one chunked request (body bytes counted, never kept), then answers with
/// the number of bytes it read after the head.
async fn chunked_counting_origin() -> SocketAddr {
    bare_origin(|mut stream| async move {
        let mut window: Vec<u8> = Vec::new();
        let mut head_done = false;
        let mut after_head = 0usize;
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            window.extend_from_slice(&chunk[..n]);
            if !head_done {
                if let Some(i) = find(&window, b"\r\n\r\n") {
                    head_done = true;
                    after_head = window.len() - (i + 4);
                    window.drain(..i + 4);
                }
            } else {
                after_head += n;
            }
            if head_done && window.ends_with(b"\r\n0\r\n\r\n") {
                let body = after_head.to_string();
                let answer =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            if window.len() > 16 {
                let keep = window.len() - 16;
                window.drain(..keep);
            }
        }
    })
    .await
}

/// A chunked upload made of 1-byte chunks costs the HTTP/1.1 engine one upstream `writev` (and,
/// with `TCP_NODELAY`, one TCP segment to the origin) per chunk, plus a `Vec::remove(0)` over
/// the runs found in the buffer: 6 bytes from the client buy ~10 µs of worker CPU. 1.5 MiB sent
/// this way holds a worker for seconds (every other connection on it waits); the same bytes as
/// one Content-Length body take milliseconds. A few clients at ~2 MB/s pin every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_chunks_do_not_cost_a_write_per_chunk() {
    let origin = chunked_counting_origin().await;
    let gw = start(proxy_to(&[origin], "timeout = \"60s\"", "")).await;
    let wire = 1_572_864; // 1.5 MiB of "1\r\nx\r\n"
    let mut body = Vec::with_capacity(wire + 5);
    while body.len() + 6 <= wire {
        body.extend_from_slice(b"1\r\nx\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let answered = |s: &str| s.split_once("\r\n\r\n").is_some_and(|(_, b)| !b.is_empty());

    // The same number of bytes in one Content-Length body, through the same gateway.
    let plain = Scripted::start(|r| vec![ok(&r.body.len().to_string())]).await;
    let baseline_gw = start(proxy_to(&[plain.addr], "", "")).await;
    let started = Instant::now();
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len());
    let got = push_and_listen(
        baseline_gw.listen_addr(),
        head,
        std::iter::once(body.clone()),
        30.0,
        answered,
    )
    .await;
    let baseline = started.elapsed();
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");

    let started = Instant::now();
    let head = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    let got = push_and_listen(gw.listen_addr(), head, std::iter::once(body), 60.0, answered).await;
    let took = started.elapsed();
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(
        took < baseline * 20 + Duration::from_secs(1),
        "1.5 MiB in 1-byte chunks took {took:?}; as one Content-Length body {baseline:?}"
    );
    baseline_gw.shutdown().await;
    gw.shutdown().await;
}

/// An upstream status line without a reason phrase (`HTTP/1.1 200\r\n`, which httparse accepts
/// and many small servers send): httparse reports the reason as the static `""`, whose address is
/// not in the connection's buffer, and `response::range` subtracts the buffer's address from it.
/// Debug builds panic there ("attempt to subtract with overflow", both engines); release builds
/// store a wrapped offset and panic when the HTTP/1 engine renders the reason (slice index out of
/// range). The connection task dies: the client gets no answer, `seawall_connections_open`
/// never comes back down, and a graceful shutdown waits out its whole drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_line_without_a_reason_phrase_is_relayed() {
    let origin =
        Scripted::start(|_| vec![write("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /bare HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while !lossy(&got).ends_with("ok") {
            match client.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let got = lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "HTTP/1.1 engine: {got:?}");
    drop(client);
    let answer = try_ask(Engine::H2c, gw.listen_addr(), Engine::H2c.get("/bare")).await;
    assert!(
        answer.as_ref().is_ok_and(|a| a.status == StatusCode::OK && a.body == "ok"),
        "h2c: {:?}",
        answer.map(|a| (a.status, a.body))
    );
    eventually(Duration::from_secs(3), "every connection is accounted closed", || async {
        metric(&gw, "seawall_connections_open").await == 0.0
    })
    .await;
    assert!(gw.shutdown().await, "the drain completes");
}

/// A protocol switch is accounted only when its tunnel closes, with the tunnel's whole life as
/// the request's duration: while a WebSocket is open its 101 is in no metric and no access-log
/// line, and when it closes, `seawall_request_duration_seconds` ("request head received to
/// response head sent") records minutes or hours for an answer that took milliseconds — one
/// chat client wrecks the route's latency percentiles and alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_accounted_when_its_101_goes_out() {
    let origin = Origin::start().await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut tunnel = websocket(gw.listen_addr()).await;
    echo(&mut tunnel, "hello").await.unwrap();
    assert_eq!(answered(&gw, "all", 101).await, 1.0, "the 101 was answered: count it");
    // The tunnel lives a while (the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echo(&mut tunnel, "still there").await.unwrap();
    drop(tunnel);
    eventually(Duration::from_secs(3), "the 101 is counted", || async {
        answered(&gw, "all", 101).await == 1.0
    })
    .await;
    let sum = metric(&gw, "seawall_request_duration_seconds_sum{route=\"all\"}").await;
    assert!(sum < 1.0, "the 101 went out at once, yet its duration is {sum} s");
    gw.shutdown().await;
}

/// The HTTP/1.1 engine refuses a host with characters no host has (`valid_host`: userinfo, `/`,
/// spaces...); the hyper engine takes `:authority` (and `host`) as they come, routes on them and
/// forwards them as `Host` and `X-Forwarded-Host`: the same request is 400 on one engine and
/// reaches the origin with a Host it never should see on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_with_userinfo_is_refused_on_both_engines() {
    let origin = Scripted::start(|_| vec![ok("fine")]).await;
    let gw = start(proxy_to(&[origin.addr], "", "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET http://evil@test.local/x HTTP/1.1\r\nHost: test.local\r\n\r\n").await;
    let h1 = client.response("GET").await;
    assert_eq!(h1.status, 400, "HTTP/1.1 engine: {h1:?}");
    let req = Request::builder().uri("http://evil@test.local/x").body(empty()).unwrap();
    let h2 = ask(Engine::H2c, gw.listen_addr(), req).await;
    let seen: Vec<String> = origin.seen().iter().map(|s| s.head.clone()).collect();
    assert_eq!(h2.status, StatusCode::BAD_REQUEST, "h2c reached the origin as {seen:?}");
    gw.shutdown().await;
}

/// The resident memory of this process (the gateway runs in it), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The chunked scanner accepts a chunk extension (or a trailer line) of any length, and while
/// it lasts no data run is found, so `ClientBody` never advances past it: every byte stays in the
/// connection's buffer, which `make_room` keeps growing. One client sending `1;` and then
/// megabytes without a CR makes the gateway hold all of it in memory (the body limit counts only
/// data, `body_timeout` only pauses). The design promises bounded memory per request whatever
/// the body; here 64 MiB per connection are taken and held, and the client gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chunk_extension_or_trailer_is_refused_not_buffered() {
    let origin = Scripted::heads_only(|_| vec![Step::Stall(Duration::from_secs(20))]).await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    for (shape, start_of_body) in [("trailer line", "0\r\nx-t: "), ("chunk extension", "1;ext=")] {
        let before = rss_mib();
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{start_of_body}"
        );
        let pieces = (0..64).map(|_| vec![b'a'; 1 << 20]);
        let got = push_and_listen(gw.listen_addr(), head, pieces, 5.0, |s| !s.is_empty()).await;
        let grown = rss_mib() - before;
        assert!(
            got.starts_with("HTTP/1.1 4"),
            "{shape}: no refusal within 5 s (the process grew by {grown:.0} MiB meanwhile): {got:?}"
        );
    }
    gw.shutdown().await;
}

// =============================================================================================
// Found by reviewing the rewritten request path
// =============================================================================================

/// A listener whose accept queue is full: connecting to it hangs until the connect timeout.
fn blackhole() -> (socket2::Socket, SocketAddr, Vec<std::net::TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let fillers = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (socket, addr, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_spent_connecting_to_dead_servers_is_not_charged_to_the_live_one() {
    // Two servers whose connects hang for 600 ms each, then one that answers in 300 ms: the
    // request's `timeout` (1 s) starts when the live server has it, not when the client asked.
    let (_a, dead_a, _fa) = blackhole();
    let (_b, dead_b, _fb) = blackhole();
    let live =
        Scripted::start(|_| vec![Step::Pause(Duration::from_millis(300)), ok("late but fine")])
            .await;
    let upstream = format!(
        "balance = \"round_robin\"\nconnect_timeout = \"600ms\"\ntimeout = \"1s\"\n{NO_EJECTION}"
    );
    let gw = start(proxy_to(&[dead_a, dead_b, live.addr], &upstream, "")).await;
    // Round robin starts with the first server: a request that meets both dead ones first.
    let answer = ask(Engine::Http1, gw.listen_addr(), Engine::Http1.get("/after-dead")).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "late but fine"));
    assert_eq!(outcome(&gw, live.addr, "timeout").await, 0.0, "the live server did nothing wrong");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_found_late_still_ejects_its_server() {
    // The body stalls past read_timeout (1.5 s), longer than the ejection (1 s) the failure
    // brings: the ejection must run from when the failure was found, not from the request.
    let origin = Scripted::start(|_| {
        vec![
            write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"),
            Step::Stall(Duration::from_secs(5)),
        ]
    })
    .await;
    let passive = "passive = { consecutive_failures = 1, base_ejection = \"1s\" }";
    let other = Scripted::start(|_| vec![ok("other")]).await;
    let upstream = format!("read_timeout = \"1500ms\"\n{passive}");
    let gw = start(proxy_to(&[origin.addr, other.addr], &upstream, "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /stalls HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(client.closes_within(5.0).await, "the stalled answer is cut");
    eventually(Duration::from_secs(3), "the timeout is recorded", || async {
        outcome(&gw, origin.addr, "timeout").await == 1.0
    })
    .await;
    let state = admin(&gw, "/api/v1/state").await.json();
    let server = state["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == origin.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(server["ejected"], true, "{server}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_leaving_mid_body_is_counted_as_an_abort() {
    let origin = Scripted::start(|_| {
        vec![
            write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"),
            Step::Stall(Duration::from_secs(5)),
        ]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    let mut client = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let response = bounded(5.0, "h2c head", client.send(Engine::H2c.get("/stalls"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The client resets the stream: it drops the body half-way.
    drop(response);
    eventually(Duration::from_secs(3), "the origin sees its connection closed", || async {
        origin.noted("closed") == 1
    })
    .await;
    eventually(Duration::from_secs(3), "the abort is counted", || async {
        metric(&gw, "seawall_client_aborts_total").await == 1.0
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_never_states_a_length() {
    let origin =
        Scripted::start(|_| vec![write("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")])
            .await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    for engine in ENGINES {
        let answer = ask(engine, gw.listen_addr(), engine.get("/none")).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{engine:?}");
        assert_eq!(answer.header("content-length"), "", "{engine:?}: RFC 9110 §8.6");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_cut_by_send_timeout() {
    // The client takes 1 MiB every 100 ms: every write makes progress within send_timeout
    // (500 ms), though the whole answer takes seconds.
    const BODY: usize = 24 << 20;
    let origin = Scripted::start(|_| {
        vec![write(format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n")), Step::Flood(BODY)]
    })
    .await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "send_timeout = \"500ms\"")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    let read_all = async {
        loop {
            let mut got = 0;
            while got < chunk.len() {
                match client.stream.read(&mut chunk[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            received += got;
            if received >= BODY {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    bounded(20.0, "the whole body", read_all).await;
    assert!(received >= BODY, "cut after {received} bytes");
    assert_eq!(metric(&gw, "seawall_client_send_timeouts_total").await, 0.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_refused_by_the_parser_gets_no_body() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client.send("HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n").await;
    assert!(client.closes_within(5.0).await);
    let got = lossy(&client.buf);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.ends_with("\r\n\r\n"), "no body after the head: {got:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_twins_of_forwarding_fields_are_not_forwarded() {
    let origin = Scripted::start(|_| vec![ok("x")]).await;
    let gw = start(proxy_to(&[origin.addr], NO_EJECTION, "")).await;
    let mut client = Wire::open(gw.listen_addr()).await;
    client
        .send("GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Host: evil\r\nX_Ok: yes\r\n\r\n")
        .await;
    assert_eq!(client.response("GET").await.status, 200);
    let seen = origin.seen().pop().unwrap();
    assert!(!seen.head.contains("6.6.6.6") && !seen.head.contains("evil"), "{}", seen.head);
    assert_eq!(seen.header("x_ok").as_deref(), Some("yes"), "other underscored names pass");
    gw.shutdown().await;
}
