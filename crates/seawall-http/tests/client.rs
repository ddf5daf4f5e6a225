//! The real client over real sockets, on both engines: PROXY protocol v1 and v2 headers (TCP4,
//! TCP6, LOCAL, UNKNOWN; split, followed by a request in the same segment, malformed, partial,
//! slow), `X-Forwarded-For` from trusted and untrusted peers with spoofed entries, and rate
//! limits keyed on the client those give.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` (0 LOCAL, 1 PROXY), family byte and address block.
fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_tcp4(src: [u8; 4], tlvs: &[u8]) -> Vec<u8> {
    let mut body = src.to_vec();
    body.extend_from_slice(&[127, 0, 0, 1, 0x30, 0x39, 0, 80]);
    body.extend_from_slice(tlvs);
    v2(1, 0x11, &body)
}

fn v2_tcp6(src: std::net::Ipv6Addr) -> Vec<u8> {
    let mut body = src.octets().to_vec();
    body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&[0x30, 0x39, 0, 80]);
    v2(1, 0x21, &body)
}

/// A gateway in front of `origin` with `server` keys and, when `limit` is set, a per-address
/// rate limit of `limit` on the catch-all route.
async fn gateway(origin: &Origin, server: &str, limit: Option<&str>) -> Gateway {
    let (limits, route) = match limit {
        Some(rate) => (format!("[rate_limits.ip]\nrate = \"{rate}\"\n"), "rate_limit = \"ip\"\n"),
        None => (String::new(), ""),
    };
    let body = format!(
        "{limits}[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n{route}",
        origin.addr
    );
    start(config_with_server(server, &body)).await
}

/// Connects, sends `header` in pieces of `piece` bytes (each its own write), then asks `req`
/// through `engine` on the same connection.
async fn ask_behind(
    engine: Engine,
    gw: &Gateway,
    header: &[u8],
    piece: usize,
    headers: &[(&str, &str)],
) -> Answer {
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for part in header.chunks(piece.max(1)) {
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut client = Client::over(engine, stream).await;
    let mut req = engine.request("GET", "/echo");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = bounded(10.0, "an answer", client.send(req.body(empty()).unwrap())).await;
    let (answer, _) = try_collect(response.unwrap()).await.unwrap();
    answer
}

/// The `X-Forwarded-For` the origin saw.
fn forwarded_for(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()["headers"]["x-forwarded-for"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_name_the_client_on_both_engines() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "proxy_protocol = true", None).await;
    let cases: [(&str, Vec<u8>, &str); 8] = [
        ("v1 TCP4", b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n".to_vec(), "203.0.113.7"),
        ("v1 TCP6", b"PROXY TCP6 2001:db8::7 ::1 5000 80\r\n".to_vec(), "2001:db8::7"),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        ("v2 TCP4", v2_tcp4([198, 51, 100, 4], &[]), "198.51.100.4"),
        // A TLV (PP2_TYPE_AUTHORITY) is skipped.
        ("v2 TCP4 + TLV", v2_tcp4([198, 51, 100, 5], b"\x02\x00\x03abc"), "198.51.100.5"),
        ("v2 TCP6", v2_tcp6("2001:db8::9".parse().unwrap()), "2001:db8::9"),
        ("v2 LOCAL", v2(0, 0x00, &[]), "127.0.0.1"),
        ("v2 LOCAL with addresses", v2(0, 0x11, &[9; 12]), "127.0.0.1"),
    ];
    for engine in ENGINES {
        for (what, header, client) in &cases {
            // Whole, then one byte per write: a header split over segments reads the same.
            for piece in [header.len(), 1] {
                let answer = ask_behind(engine, &gw, header, piece, &[]).await;
                assert_eq!(forwarded_for(&answer), *client, "{engine:?} {what} in {piece}s");
            }
        }
    }
    assert_eq!(metric(&gw, "seawall_proxy_protocol_refused_total").await, 0.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_the_same_segment_as_the_header_is_served() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "proxy_protocol = true", None).await;
    let request = b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    for header in
        [b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n".to_vec(), v2_tcp4([203, 0, 113, 8], &[])]
    {
        let mut segment = header.clone();
        segment.extend_from_slice(request);
        let answer = raw(gw.listen_addr(), &segment).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let xff =
            &serde_json::from_str::<serde_json::Value>(seen).unwrap()["headers"]["x-forwarded-for"];
        assert!(xff == "203.0.113.7" || xff == "203.0.113.8", "{xff}");
    }
    // Keep-alive: the second request on the connection needs (and gets) no second header.
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n").await.unwrap();
    let mut client = Client::over(Engine::Http1, stream).await;
    for _ in 0..2 {
        let response = client.send(Engine::Http1.get("/echo")).await.unwrap();
        let answer = try_collect(response).await.unwrap().0;
        assert_eq!(forwarded_for(&answer), "203.0.113.7");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_partial_and_slow_headers_close_the_connection() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "proxy_protocol = true\nheader_timeout = \"300ms\"", None).await;
    let closed_at_once: [&[u8]; 6] = [
        b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5000\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 2001:db8::1 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x13\x11\x00\x0cGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for bytes in closed_at_once {
        let answer = bounded(5.0, "the close", raw(gw.listen_addr(), bytes)).await;
        assert_eq!(answer, "", "nothing is answered to {:?}", lossy(bytes));
    }
    let mut too_long = b"PROXY UNKNOWN ".to_vec();
    too_long.resize(200, b'x');
    assert_eq!(bounded(5.0, "the close", raw(gw.listen_addr(), &too_long)).await, "");
    let refused = closed_at_once.len() as f64 + 1.0;
    // A partial header, then silence: closed at the header timeout, not held open.
    for partial in [&b"PROXY TCP4 203.0.1"[..], &V2_SIGNATURE[..7]] {
        let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
        stream.write_all(partial).await.unwrap();
        assert_eq!(bounded(5.0, "the close", read_to_close(&mut stream)).await, "");
    }
    // Nothing at all: the same.
    let mut silent = TcpStream::connect(gw.listen_addr()).await.unwrap();
    assert_eq!(bounded(5.0, "the close", read_to_close(&mut silent)).await, "");
    // A client that leaves mid-header.
    let mut gone = TcpStream::connect(gw.listen_addr()).await.unwrap();
    gone.write_all(b"PROXY TCP4").await.unwrap();
    drop(gone);
    let expected = refused + 3.0;
    eventually(Duration::from_secs(5), "every refusal counted", || async {
        metric(&gw, "seawall_proxy_protocol_refused_total").await >= expected
    })
    .await;
    assert_eq!(origin.hits(), 0, "no request got through without a header");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_peer_names_the_client() {
    let origin = Origin::start().await;
    let trusted = "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]";
    let gw = gateway(&origin, trusted, Some("2/min")).await;
    for engine in ENGINES {
        let client = match engine {
            Engine::Http1 => "203.0.113.7",
            Engine::H2c => "203.0.113.8",
        };
        // Seawall passes the list on and appends the peer it saw.
        let spoofed = format!("6.6.6.6, {client}, 10.1.1.1");
        let answer = get_with(engine, &gw, "/echo", &[("x-forwarded-for", &spoofed)]).await;
        assert_eq!(forwarded_for(&answer), format!("{spoofed}, 127.0.0.1"), "{engine:?}");
        // The client is the right-most untrusted entry whatever is claimed left of it: both
        // requests spend its quota.
        let other_spoof = format!("7.7.7.7, {client}");
        let second = get_with(engine, &gw, "/echo", &[("x-forwarded-for", &other_spoof)]).await;
        assert_eq!(second.status, StatusCode::OK, "{engine:?}");
        let third = get_with(engine, &gw, "/echo", &[("x-forwarded-for", client)]).await;
        assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
        // Another client behind the same proxy has its own.
        let other = format!("{client}0");
        let fourth = get_with(engine, &gw, "/echo", &[("x-forwarded-for", &other)]).await;
        assert_eq!(fourth.status, StatusCode::OK, "{engine:?}");
        // A malformed entry stops the walk: the trusted hop right of it is the client.
        let garbled = format!("{client}, unknown, 10.9.9.{}", engine as u8);
        let fifth = get_with(engine, &gw, "/echo", &[("x-forwarded-for", &garbled)]).await;
        assert_eq!(fifth.status, StatusCode::OK, "{engine:?}: not {client}'s quota");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_replaced_or_appended() {
    let origin = Origin::start().await;
    let spoofed = ("x-forwarded-for", "203.0.113.7");
    for engine in ENGINES {
        // One gateway per engine: the one peer has one quota.
        let gw = gateway(&origin, "trusted_proxies = [\"10.0.0.0/8\"]", Some("2/min")).await;
        let answer = get_with(engine, &gw, "/echo", &[spoofed]).await;
        assert_eq!(forwarded_for(&answer), "127.0.0.1", "{engine:?}: the claim is dropped");
        // The claims do not make new clients: one quota for the one peer.
        let second = ("x-forwarded-for", "203.0.113.8");
        assert_eq!(get_with(engine, &gw, "/echo", &[second]).await.status, StatusCode::OK);
        let third = get_with(engine, &gw, "/echo", &[("x-forwarded-for", "203.0.113.9")]).await;
        assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
        gw.shutdown().await;
    }
    let gw = gateway(&origin, "forwarded_for = \"append\"", None).await;
    for engine in ENGINES {
        let answer = get_with(engine, &gw, "/echo", &[spoofed]).await;
        assert_eq!(forwarded_for(&answer), "203.0.113.7, 127.0.0.1", "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_key_on_the_proxy_protocol_client() {
    let origin = Origin::start().await;
    let server = "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]";
    let gw = gateway(&origin, server, Some("1/min")).await;
    for engine in ENGINES {
        // Distinct clients per engine: the quotas are the gateway's, not the engine's.
        let (a, b) = match engine {
            Engine::Http1 => ("203.0.113.1", "203.0.113.2"),
            Engine::H2c => ("203.0.113.3", "203.0.113.4"),
        };
        let header = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 5000 80\r\n").into_bytes();
        assert_eq!(ask_behind(engine, &gw, &header(a), 64, &[]).await.status, StatusCode::OK);
        let again = ask_behind(engine, &gw, &header(a), 64, &[]).await;
        assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
        assert_eq!(ask_behind(engine, &gw, &header(b), 64, &[]).await.status, StatusCode::OK);
        // A trusted load balancer (10.x in the PROXY header) vouches for X-Forwarded-For.
        let lb = header(match engine {
            Engine::Http1 => "10.0.0.1",
            Engine::H2c => "10.0.0.2",
        });
        let behind = match engine {
            Engine::Http1 => "198.51.100.1",
            Engine::H2c => "198.51.100.2",
        };
        let xff = [("x-forwarded-for", behind)];
        let first = ask_behind(engine, &gw, &lb, 64, &xff).await;
        assert_eq!(first.status, StatusCode::OK, "{engine:?}");
        assert_eq!(forwarded_for(&first), format!("{behind}, {}", &lb_ip(&lb)));
        let second = ask_behind(engine, &gw, &lb, 64, &xff).await;
        assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
        // The load balancer's own requests are its own client.
        assert_eq!(ask_behind(engine, &gw, &lb, 64, &[]).await.status, StatusCode::OK);
    }
    gw.shutdown().await;
}

/// The source address of a v1 header.
fn lb_ip(header: &[u8]) -> String {
    lossy(header).split(' ').nth(2).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keys_on_the_client_behind_a_trusted_proxy() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    let body = format!(
        "[upstreams.app]\nservers = [\"{}\", \"{}\"]\nbalance = \"consistent_hash\"\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        a.addr, b.addr
    );
    let gw = start(config_with_server("trusted_proxies = [\"127.0.0.1/32\"]", &body)).await;
    let mut origins = std::collections::BTreeSet::new();
    for engine in ENGINES {
        for i in 0..20 {
            let xff = format!("198.51.100.{i}");
            let first = get_with(engine, &gw, "/", &[("x-forwarded-for", &xff)]).await;
            let again = get_with(engine, &gw, "/", &[("x-forwarded-for", &xff)]).await;
            let origin = first.header("x-origin").to_string();
            assert_eq!(again.header("x-origin"), origin, "{engine:?}: {xff} stays on its server");
            origins.insert(origin);
        }
    }
    // Keyed on the one peer (127.0.0.1), every request would reach one server.
    assert_eq!(origins.len(), 2, "clients spread over both servers");
    gw.shutdown().await;
}
