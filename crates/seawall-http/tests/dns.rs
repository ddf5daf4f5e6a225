//! Upstreams that move: a host name in `servers` is resolved against a nameserver the test runs
//! (a tiny UDP DNS server whose answer the test changes); traffic follows the name's addresses
//! on both engines without a failed request, a server whose address stays keeps its state, and
//! a nameserver that fails leaves the last good addresses in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::net::UdpSocket;

/// What the test nameserver answers to an A query: these addresses (TTL 1 s), or SERVFAIL.
#[derive(Clone)]
struct Nameserver {
    addr: SocketAddr,
    answer: Arc<Mutex<Option<Vec<Ipv4Addr>>>>,
}

impl Nameserver {
    async fn start(first: &[Ipv4Addr]) -> Nameserver {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ns = Nameserver {
            addr: socket.local_addr().unwrap(),
            answer: Arc::new(Mutex::new(Some(first.to_vec()))),
        };
        let answer = Arc::clone(&ns.answer);
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
                let current = answer.lock().unwrap().clone();
                if let Some(reply) = reply(&buf[..n], current.as_deref()) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        ns
    }

    fn answer(&self, addrs: Option<&[Ipv4Addr]>) {
        *self.answer.lock().unwrap() = addrs.map(<[Ipv4Addr]>::to_vec);
    }
}

/// The reply to `query`: its question, and for an A query the addresses (none for other types);
/// SERVFAIL when `addrs` is `None`.
fn reply(query: &[u8], addrs: Option<&[Ipv4Addr]>) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += usize::from(query[end]) + 1;
    }
    let question = query.get(12..end + 5)?;
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let answers: &[Ipv4Addr] = match addrs {
        Some(a) if qtype == 1 => a,
        _ => &[],
    };
    let mut out = query[..2].to_vec();
    out.extend_from_slice(if addrs.is_some() { &[0x81, 0x80] } else { &[0x81, 0x82] });
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&u16::try_from(answers.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Two origins on the same port at 127.0.0.2 and 127.0.0.3 (a name's addresses share a port).
async fn two_origins() -> (Origin, Origin) {
    for _ in 0..20 {
        let a = Origin::start_at("127.0.0.2:0".parse().unwrap()).await.unwrap();
        let b_addr = SocketAddr::new([127, 0, 0, 3].into(), a.addr.port());
        if let Ok(b) = Origin::start_at(b_addr).await {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

async fn gateway(ns: &Nameserver, port: u16) -> Gateway {
    start(config(&format!(
        "[dns]\nservers = [\"{}\"]\nresolve_interval = \"100ms\"\n\
         [upstreams.app]\nservers = [\"app.test:{port}\"]\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        ns.addr
    )))
    .await
}

/// The servers of the upstream in `/api/v1/state`: address and the name it came from.
async fn servers(gw: &Gateway) -> Vec<(String, String)> {
    let state = admin(gw, "/api/v1/state").await.json();
    let list = state["upstreams"][0]["servers"].as_array().unwrap().clone();
    list.iter()
        .map(|s| (s["address"].as_str().unwrap().into(), s["host"].as_str().unwrap_or("").into()))
        .collect()
}

/// Sends `n` requests on each engine; every one must succeed.
async fn traffic(gw: &Gateway, n: usize) {
    for _ in 0..n {
        for engine in ENGINES {
            let answer = get_with(engine, gw, "/", &[]).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_names_addresses_and_a_staying_server_keeps_its_state() {
    let (a, b) = two_origins().await;
    let port = a.addr.port();
    let ns = Nameserver::start(&[A]).await;
    let gw = gateway(&ns, port).await;
    let host = format!("app.test:{port}");
    // Resolved before the first request: every request reaches A.
    assert_eq!(servers(&gw).await, [(a.addr.to_string(), host.clone())]);
    traffic(&gw, 5).await;
    assert_eq!((a.hits(), b.hits()), (10, 0));
    let ok_a = format!(
        "seawall_upstream_requests_total{{upstream=\"app\",server=\"{}\",outcome=\"ok\"}}",
        a.addr
    );
    assert_eq!(metric(&gw, &ok_a).await, 10.0);

    // The name gains B: both serve, and A's server is the same one (its counts go on).
    ns.answer(Some(&[A, B]));
    eventually(Duration::from_secs(10), "B joins", || async { servers(&gw).await.len() == 2 })
        .await;
    assert_eq!(
        servers(&gw).await,
        [(a.addr.to_string(), host.clone()), (b.addr.to_string(), host.clone())]
    );
    assert_eq!(metric(&gw, &ok_a).await, 10.0, "A kept its state");
    traffic(&gw, 10).await;
    assert!(a.hits() > 10 && b.hits() > 0, "both serve: {} {}", a.hits(), b.hits());

    // The name moves to B alone: requests keep succeeding meanwhile, then A gets no more.
    ns.answer(Some(&[B]));
    let gw_ref = &gw;
    eventually(Duration::from_secs(10), "A leaves", || async move {
        traffic(gw_ref, 1).await;
        servers(gw_ref).await.len() == 1
    })
    .await;
    assert_eq!(servers(&gw).await, [(b.addr.to_string(), host.clone())]);
    let hits_a = a.hits();
    traffic(&gw, 5).await;
    assert_eq!(a.hits(), hits_a, "no request reaches the address that left");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_nameserver_keeps_the_last_good_addresses() {
    let (a, _b) = two_origins().await;
    let ns = Nameserver::start(&[A]).await;
    let gw = gateway(&ns, a.addr.port()).await;
    traffic(&gw, 2).await;
    ns.answer(None);
    eventually(Duration::from_secs(10), "a failure counted", || async {
        metric(&gw, "seawall_dns_failures_total").await >= 2.0
    })
    .await;
    assert_eq!(servers(&gw).await.len(), 1, "never an empty set");
    traffic(&gw, 3).await;
    assert_eq!(a.hits(), 10);
    // An answer with no address is no better than a failure.
    ns.answer(Some(&[]));
    let before = metric(&gw, "seawall_dns_failures_total").await;
    eventually(Duration::from_secs(10), "an empty answer counted", || async {
        metric(&gw, "seawall_dns_failures_total").await > before
    })
    .await;
    traffic(&gw, 1).await;
    assert_eq!(a.hits(), 12);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_not_resolved_yet_is_never_picked_then_serves_once_resolved() {
    let (a, _b) = two_origins().await;
    let ns = Nameserver::start(&[A]).await;
    ns.answer(None);
    let gw = gateway(&ns, a.addr.port()).await;
    // Unresolved, the server has no address: a refusal, not a request to this machine.
    for engine in ENGINES {
        let answer = get_with(engine, &gw, "/", &[]).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(answer.header("x-seawall-reason"), "upstream_unavailable", "{engine:?}");
    }
    ns.answer(Some(&[A]));
    eventually(Duration::from_secs(10), "the name resolves", || async {
        servers(&gw).await.first().is_some_and(|(address, _)| *address == a.addr.to_string())
    })
    .await;
    traffic(&gw, 2).await;
    assert_eq!(a.hits(), 4);
    gw.shutdown().await;
}
