//! The response cache against hostile clients and origins: what a stored answer must not lose or
//! gain on its way back out, what must never be stored, and what must not hold other requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a raw origin does on one connection: the bytes it writes, then how long it keeps the
/// connection open before closing it.
type Script = (Vec<u8>, Duration);

/// An origin that answers each connection's first request head with the bytes `script` makes of
/// (connection number from 0, the request head as text).
struct RawOrigin {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

async fn raw_origin<F>(script: F) -> RawOrigin
where
    F: Fn(usize, &str) -> Script + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&conns);
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let script = Arc::clone(&script);
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let n = counted.fetch_add(1, SeqCst);
                let (bytes, hold) = script(n, &String::from_utf8_lossy(&head));
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    RawOrigin { addr, conns }
}

/// Every value of request field `name` in `head`, joined with ", " as a server would read them.
fn joined(head: &str, name: &str) -> String {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn answer_with(fields: &str, body: &str) -> Script {
    let text = format!(
        "HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    (text.into_bytes(), Duration::ZERO)
}

async fn gateway(origin: SocketAddr, upstream_extra: &str, cache: &str) -> Gateway {
    gateway_with(origin, "", upstream_extra, cache).await
}

async fn gateway_with(origin: SocketAddr, top: &str, upstream_extra: &str, cache: &str) -> Gateway {
    start(config(&format!(
        "{top}[upstreams.app]\nservers = [\"{origin}\"]\n{upstream_extra}\n\
         [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         cache = {{ {cache} }}\n"
    )))
    .await
}

/// `Transfer-Encoding: gzip, chunked`: the gzip bytes could only be replayed as a plain body
/// (the field that says they are gzip goes with the framing), so such an answer is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_transfer_coded_answer_is_not_replayed_as_plain_bytes() {
    let origin = raw_origin(|_, _| {
        let text = "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                    transfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n\
                    8\r\n\x1f\x0bGZIP!!\r\n0\r\n\r\n";
        (text.as_bytes().to_vec(), Duration::ZERO)
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        // An HTTP/1.1 client can be sent the coded body as it is.
        let first = get_with(Engine::Http1, &gw, "/coded", &[]).await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(first.header("transfer-encoding").contains("gzip"), "{:?}", first.headers);
        let again = get_with(engine, &gw, "/coded", &[]).await;
        let coded = again.header("transfer-encoding").contains("gzip")
            || again.header("content-encoding").contains("gzip");
        assert!(
            again.header("x-seawall-cache") != "HIT" || coded,
            "{engine:?}: gzip bytes served as a plain body: {:?} {:?}",
            again.headers,
            again.body
        );
        gw.shutdown().await;
    }
}

/// RFC 9111 §4.2.3 / §5.1: the Age a cache sends counts the age the answer arrived with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_states_the_age_the_answer_arrived_with() {
    let origin =
        raw_origin(|_, _| answer_with("cache-control: max-age=600\r\nage: 100\r\n", "ok")).await;
    for engine in ENGINES {
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let first = get_with(engine, &gw, "/aged", &[]).await;
        assert_eq!(first.header("age"), "100", "{engine:?}: the origin's Age passes on a miss");
        let hit = get_with(engine, &gw, "/aged", &[]).await;
        assert_eq!(hit.header("x-seawall-cache"), "HIT", "{engine:?}");
        let age: u64 = hit.header("age").parse().unwrap();
        assert!(
            age >= 100,
            "{engine:?}: a hit says Age {age}, the answer was 100 s old when it arrived: a \
             downstream cache keeps it 100 s longer than max-age allows"
        );
        gw.shutdown().await;
    }
}

/// RFC 9111 §4.2.4 / §5.2.2.4: an answer the origin marked `no-cache` is never served without
/// asking the origin — not even stale when the origin fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_cache_answer_is_not_served_stale_when_the_origin_fails() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = gateway(origin.addr, "", "ttl = \"60s\", stale_if_error = \"1h\"").await;
        let first = get_with(engine, &gw, "/cache?cc=no-cache", &[]).await;
        assert_eq!(first.status, StatusCode::OK);
        origin.failing.store(true, SeqCst);
        let failed = get_with(engine, &gw, "/cache?cc=no-cache", &[]).await;
        assert_eq!(
            (failed.status, failed.header("x-seawall-cache")),
            (StatusCode::INTERNAL_SERVER_ERROR, "MISS"),
            "{engine:?}: a no-cache answer was served stale: {}",
            failed.body
        );
        gw.shutdown().await;
    }
}

/// quick_cache splits `cache.memory` between shards and refuses an entry heavier than a
/// shard's share: the cache has few enough shards for an answer under `max_object_size` to fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_under_max_object_size_is_served_from_memory() {
    let origin = Origin::start().await;
    let gw = gateway_with(
        origin.addr,
        "[cache]\nmemory = \"1MiB\"\n",
        "",
        "ttl = \"60s\", max_object_size = \"1MiB\"",
    )
    .await;
    let path = "/bytes?n=409600";
    let first = get_with(Engine::Http1, &gw, path, &[]).await;
    assert_eq!(first.body.len(), 409_600);
    let stored =
        metric(&gw, "seawall_cache_total{route=\"pages\",layer=\"l1\",event=\"stored\"}").await;
    assert_eq!(stored, 1.0, "counted stored");
    let again = get_with(Engine::Http1, &gw, path, &[]).await;
    assert_eq!(
        again.header("x-seawall-cache"),
        "HIT",
        "a 400 KiB answer in a 1 MiB cache (max_object_size 1 MiB) was not kept"
    );
    assert_eq!(origin.hits(), 1);
    gw.shutdown().await;
}

/// RFC 9111 §4.1: a variant matches on the values of every field line the `Vary` names,
/// combined — not the first line alone. Otherwise a client sending two lines stores, under the
/// first value, an answer made for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_accept_language_line_cannot_poison_the_variant_of_the_first() {
    let origin = raw_origin(|_, head| {
        let body = format!("lang: {}", joined(head, "accept-language"));
        answer_with("cache-control: max-age=60\r\nvary: accept-language\r\n", &body)
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let attack = engine
            .request("GET", "/page")
            .header("accept-language", "en")
            .header("accept-language", "fr")
            .body(empty())
            .unwrap();
        let attacked = ask(engine, gw.listen_addr(), attack).await;
        assert_eq!(attacked.body, "lang: en, fr", "{engine:?}: both lines reach the origin");
        let victim = get_with(engine, &gw, "/page", &[("accept-language", "en")]).await;
        assert_eq!(
            victim.body,
            "lang: en",
            "{engine:?}: a client asking for en got the answer made for en+fr ({})",
            victim.header("x-seawall-cache")
        );
        gw.shutdown().await;
    }
}

/// The same for a `header:NAME` part of the route's key: every line counts, not the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_key_header_line_cannot_poison_the_entry_of_the_first() {
    let origin = raw_origin(|_, head| {
        let body = format!("tenant: {}", joined(head, "x-tenant"));
        answer_with("cache-control: max-age=60\r\n", &body)
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(
            origin.addr,
            "",
            "ttl = \"60s\", key = [\"host\", \"path\", \"query\", \"header:x-tenant\"]",
        )
        .await;
        let attack = engine
            .request("GET", "/page")
            .header("x-tenant", "a")
            .header("x-tenant", "b")
            .body(empty())
            .unwrap();
        let attacked = ask(engine, gw.listen_addr(), attack).await;
        assert_eq!(attacked.body, "tenant: a, b", "{engine:?}");
        let victim = get_with(engine, &gw, "/page", &[("x-tenant", "a")]).await;
        assert_eq!(
            victim.body,
            "tenant: a",
            "{engine:?}: tenant a got the answer made for a+b ({})",
            victim.header("x-seawall-cache")
        );
        gw.shutdown().await;
    }
}

/// A leader whose chunked body outgrows `max_object_size` will store nothing: the requests
/// waiting for it go to the origin at once, not after `coalesce_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_do_not_wait_for_a_body_too_large_to_store() {
    for engine in ENGINES {
        let origin = raw_origin(|n, _| {
            if n == 0 {
                // Cacheable, chunked, over max_object_size at once, then the rest takes its time.
                let mut bytes = b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                                  transfer-encoding: chunked\r\nconnection: close\r\n\r\n1000\r\n"
                    .to_vec();
                bytes.extend_from_slice(&[b'x'; 0x1000]);
                bytes.extend_from_slice(b"\r\n");
                (bytes, Duration::from_secs(5))
            } else {
                answer_with("cache-control: max-age=60\r\n", "small")
            }
        })
        .await;
        let gw = gateway(
            origin.addr,
            "read_timeout = \"30s\"\n",
            "ttl = \"60s\", max_object_size = \"1KiB\", coalesce_wait = \"10s\"",
        )
        .await;
        let mut leader = Client::connect(engine, gw.listen_addr()).await;
        let response = leader.send(engine.get("/big")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let frame =
            bounded(5.0, "the first body bytes", http_body_util::BodyExt::frame(&mut body)).await;
        assert!(frame.is_some());
        let too_large =
            metric(&gw, "seawall_cache_total{route=\"pages\",layer=\"l1\",event=\"too_large\"}")
                .await;
        assert_eq!(too_large, 1.0, "{engine:?}: the fill gave up");
        let started = std::time::Instant::now();
        let other = tokio::time::timeout(
            Duration::from_secs(4),
            try_ask(engine, gw.listen_addr(), engine.get("/big")),
        )
        .await;
        assert!(
            matches!(&other, Ok(Ok(a)) if a.body == "small"),
            "{engine:?}: a second request for the key was held {:?} for a fill that had \
             already given up",
            started.elapsed()
        );
        assert_eq!(origin.conns.load(SeqCst), 2, "{engine:?}: it went to the origin itself");
        leader.close();
        gw.shutdown().await;
    }
}

/// An origin's `Age` near u64::MAX with a `Date` in the past: the age saturates (no panic, no
/// age wrapped round to young).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_age_from_the_origin_is_answered_and_counts_as_old() {
    let origin = raw_origin(|_, _| {
        answer_with(
            "cache-control: max-age=60\r\nage: 18446744073709551615\r\n\
             date: Thu, 01 Jan 2026 00:00:00 GMT\r\n",
            "ok",
        )
    })
    .await;
    for engine in ENGINES {
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let first = try_ask(engine, gw.listen_addr(), engine.get("/old")).await;
        assert!(
            matches!(&first, Ok(a) if a.status == StatusCode::OK && a.body == "ok"),
            "{engine:?}: {:?}",
            first.as_ref().map(|a| a.status)
        );
        let again = get_with(engine, &gw, "/old", &[]).await;
        assert_ne!(again.header("x-seawall-cache"), "HIT", "{engine:?}: it was stale on arrival");
        gw.shutdown().await;
    }
}

/// A GET with a body is keyed without it, so it bypasses the cache: the answer to one body is
/// never served for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_not_answered_with_what_another_body_fetched() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let send = |body: &'static str| {
            let req = engine.request("GET", "/upload").body(full(body)).unwrap();
            ask(engine, gw.listen_addr(), req)
        };
        assert_eq!(send("abc").await.body, "3", "{engine:?}: the origin reads the body");
        let other = send("abcdef").await;
        assert_eq!(
            other.body,
            "6",
            "{engine:?}: served the answer to another request's body ({})",
            other.header("x-seawall-cache")
        );
        gw.shutdown().await;
    }
}
