//! The cache's revalidation, shared layer (L2), fleet-wide purge and background refresh against
//! hostile origins, clients and Redis. The Redis tests need Redis on 127.0.0.1:6379 (and
//! `redis-server` for the one with its own); without them they say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An origin that answers each connection's first request head with what `script` makes of
/// (connection number from 0, the head as text); it keeps every head it was sent.
struct RawOrigin {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn raw_origin<F>(script: F) -> RawOrigin
where
    F: Fn(usize, &str) -> Vec<u8> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (counted, kept) = (Arc::clone(&conns), Arc::clone(&heads));
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let (script, counted, kept) =
                (Arc::clone(&script), Arc::clone(&counted), Arc::clone(&kept));
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                kept.lock().unwrap().push(text.clone());
                let n = counted.fetch_add(1, SeqCst);
                let bytes = script(n, &text);
                let _ = stream.write_all(&bytes).await;
            });
        }
    });
    RawOrigin { addr, conns, heads }
}

fn ok(fields: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn not_modified(fields: &str) -> Vec<u8> {
    format!("HTTP/1.1 304 Not Modified\r\n{fields}connection: close\r\n\r\n").into_bytes()
}

fn asks_conditionally(head: &str) -> bool {
    head.to_ascii_lowercase().contains("\r\nif-none-match:")
}

async fn gateway(origin: SocketAddr, top: &str, cache: &str) -> Gateway {
    start(config(&format!(
        "{top}[upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         cache = {{ {cache} }}\n"
    )))
    .await
}

// ---- revalidation -------------------------------------------------------------------------

/// A client that sent no validator must never get a 304: it has no copy to keep. With
/// `Authorization` (not shared by the route) the request is a refresh, the cache adds the stored
/// entry's ETag, the origin says 304, the 304 may not be stored for an authorized request — the
/// client still gets the stored answer the 304 vouches for, not the bare 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_client_that_sent_no_validator_never_gets_a_bare_304() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let path = "/cache?etag=%22v1%22";
        let first = get_with(engine, &gw, path, &[]).await;
        assert_eq!((first.status, first.header("x-seawall-cache")), (StatusCode::OK, "MISS"));
        let authorized = get_with(engine, &gw, path, &[("authorization", "Bearer alice")]).await;
        assert_eq!(
            authorized.status,
            StatusCode::OK,
            "{engine:?}: an unconditional GET answered {} (x-seawall-cache {:?}, body {:?})",
            authorized.status,
            authorized.header("x-seawall-cache"),
            authorized.body
        );
        gw.shutdown().await;
    }
}

/// The same from an origin whose 304 says `no-store`: the cache cannot store it, so the
/// entry is not refreshed — but the client (which asked `no-cache`, no validators) gets the
/// answer the 304 vouches for, not the bare 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_the_cache_may_not_store_is_not_passed_to_a_client_that_did_not_ask() {
    for engine in ENGINES {
        let origin = raw_origin(|_, head| {
            if asks_conditionally(head) {
                not_modified("etag: \"v1\"\r\ncache-control: no-store\r\n")
            } else {
                ok("etag: \"v1\"\r\ncache-control: max-age=60\r\n", "one")
            }
        })
        .await;
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let first = get_with(engine, &gw, "/p", &[]).await;
        assert_eq!(first.body, "one");
        let again = get_with(engine, &gw, "/p", &[("cache-control", "no-cache")]).await;
        assert_eq!(
            (again.status, again.body.as_str()),
            (StatusCode::OK, "one"),
            "{engine:?}: an unconditional GET got {} ({:?})",
            again.status,
            again.header("x-seawall-cache")
        );
        gw.shutdown().await;
    }
}

/// RFC 9111 §4.3.4: a 304 whose strong ETag is not the stored answer's vouches for another
/// representation — it must not update the stored one (which would serve body "one", ETag v1,
/// relabelled v2 from then on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_with_another_etag_does_not_relabel_the_stored_body() {
    for engine in ENGINES {
        let origin = raw_origin(|_, head| {
            if asks_conditionally(head) {
                not_modified("etag: \"v2\"\r\ncache-control: max-age=60\r\n")
            } else {
                ok("etag: \"v1\"\r\ncache-control: max-age=60\r\n", "one")
            }
        })
        .await;
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let first = get_with(engine, &gw, "/p", &[]).await;
        assert_eq!((first.body.as_str(), first.header("etag")), ("one", "\"v1\""));
        let again = get_with(engine, &gw, "/p", &[("cache-control", "no-cache")]).await;
        let later = get_with(engine, &gw, "/p", &[]).await;
        for answer in [&again, &later] {
            assert!(
                !(answer.body == "one" && answer.header("etag") == "\"v2\""),
                "{engine:?}: the body of v1 is served as ETag v2 ({})",
                answer.header("x-seawall-cache")
            );
        }
        gw.shutdown().await;
    }
}

/// The stored body is the bytes the origin sent with no `Content-Encoding`; a 304 (same ETag)
/// claiming `Content-Encoding: gzip` must not relabel them (RFC 9111 §3.2: fields the stored
/// response depends on are not updated) — clients would fail to decode plain text as gzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_cannot_make_a_plain_stored_body_claim_to_be_gzip() {
    for engine in ENGINES {
        let origin = raw_origin(|_, head| {
            if asks_conditionally(head) {
                not_modified(
                    "etag: \"v1\"\r\ncache-control: max-age=60\r\ncontent-encoding: gzip\r\n",
                )
            } else {
                ok("etag: \"v1\"\r\ncache-control: max-age=60\r\n", "plain text")
            }
        })
        .await;
        let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
        let first = get_with(engine, &gw, "/p", &[]).await;
        assert_eq!(first.body, "plain text");
        let _ = get_with(engine, &gw, "/p", &[("cache-control", "no-cache")]).await;
        let hit = get_with(engine, &gw, "/p", &[]).await;
        assert_eq!(hit.body, "plain text");
        assert_eq!(
            hit.header("content-encoding"),
            "",
            "{engine:?}: plain bytes served as gzip ({})",
            hit.header("x-seawall-cache")
        );
        gw.shutdown().await;
    }
}

// ---- background refresh -------------------------------------------------------------------

/// RFC 9110 §7.6.1: the fields a request's `Connection` names are hop-by-hop. The request path
/// drops them, and so does the background refresh (built from the captured request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_does_not_forward_connection_named_fields() {
    let origin = raw_origin(|n, _| {
        ok("cache-control: max-age=1, stale-while-revalidate=60\r\n", &format!("answer {n}"))
    })
    .await;
    let gw = gateway(origin.addr, "", "ttl = \"60s\"").await;
    let hop = [("connection", "x-hop-secret"), ("x-hop-secret", "for-the-first-hop-only")];
    let first = get_with(Engine::Http1, &gw, "/p", &hop).await;
    assert_eq!(first.body, "answer 0");
    assert!(
        !origin.heads.lock().unwrap()[0].to_ascii_lowercase().contains("x-hop-secret:"),
        "the request path drops it"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get_with(Engine::Http1, &gw, "/p", &hop).await;
    assert_eq!(stale.header("x-seawall-cache"), "STALE");
    eventually(Duration::from_secs(5), "the background refresh", || async {
        origin.conns.load(SeqCst) >= 2
    })
    .await;
    let refresh = origin.heads.lock().unwrap()[1].clone();
    assert!(
        !refresh.to_ascii_lowercase().contains("x-hop-secret:"),
        "the refresh forwarded a field the client's Connection named:\n{refresh}"
    );
    gw.shutdown().await;
}

// ---- the shared layer (L2) and fleet-wide purge -------------------------------------------

async fn redis_conn(addr: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn redis_keys(addr: &str, pattern: &str) -> Vec<String> {
    let mut conn = redis_conn(addr).await;
    redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap()
}

async fn l2_instance(origin: SocketAddr, redis: &str, prefix: &str, cache: &str) -> Gateway {
    start(config(&format!(
        "[cache]\nredis = \"redis://{redis}\"\nl2_prefix = \"{prefix}\"\nl2_timeout = \"500ms\"\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         cache = {{ {cache} }}\n"
    )))
    .await
}

async fn l2_stores(gw: &Gateway) -> f64 {
    metric(gw, "seawall_cache_l2_total{event=\"store\"}").await
}

async fn purge(gw: &Gateway, json: &str) {
    let purge = http::Request::builder()
        .method("POST")
        .uri("/api/v1/cache/purge")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::from(json.to_string())))
        .unwrap();
    assert_eq!(send(gw.admin_addr(), purge).await.status, StatusCode::OK);
}

/// A route keyed on host and path only (the query ignored) stores `<route>\n<host>\n<path>` —
/// nothing after the path: the purge's SCAN pattern must still find it, or Redis would keep the
/// purged answer and every instance would fetch it straight back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_path_reaches_redis_when_the_route_key_has_no_query() {
    let redis = "127.0.0.1:6379";
    if !redis_at(redis) {
        return;
    }
    let origin = Origin::start().await;
    let prefix = fresh_prefix();
    let cache = "ttl = \"60s\", key = [\"host\", \"path\"]";
    let a = l2_instance(origin.addr, redis, &prefix, cache).await;
    let first = get_with(Engine::Http1, &a, "/cache", &[]).await;
    assert_eq!(first.header("x-seawall-cache"), "MISS");
    eventually(Duration::from_secs(5), "the answer stored in Redis", || async {
        l2_stores(&a).await >= 1.0
    })
    .await;
    assert_eq!(redis_keys(redis, &format!("{prefix}*")).await.len(), 1);
    purge(&a, r#"{"key": "/cache"}"#).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = redis_keys(redis, &format!("{prefix}*")).await;
    let b = l2_instance(origin.addr, redis, &prefix, cache).await;
    let other = get_with(Engine::Http1, &b, "/cache", &[]).await;
    assert!(
        left.is_empty() && other.body != first.body,
        "the purged answer is still in Redis ({left:?}) and another instance serves it: {} {:?}",
        other.header("x-seawall-cache"),
        other.body
    );
    for gw in [a, b] {
        gw.shutdown().await;
    }
}

/// The purge empties this instance's L1 at once and Redis in the background (SCAN over the
/// whole keyspace, then UNLINK). A request in between misses L1 and finds the old answer in
/// Redis: L1 is purged again once Redis has let go of it, so it does not outlive the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_not_undone_by_a_request_while_redis_is_scanned() {
    let Some(redis) = OwnRedis::start() else { return };
    {
        // Other tenants' keys: the SCAN walks them all. Writing them takes seconds on a busy
        // machine: longer than the client's default wait for an answer.
        let mut conn = redis_conn(&redis.addr).await;
        conn.set_response_timeout(Duration::from_secs(120));
        let _: () = redis::cmd("DEBUG")
            .arg("POPULATE")
            .arg(400_000)
            .arg("other-tenant")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let origin = Origin::start().await;
    let prefix = fresh_prefix();
    let gw = l2_instance(origin.addr, &redis.addr, &prefix, "ttl = \"60s\"").await;
    let first = get_with(Engine::Http1, &gw, "/cache", &[]).await;
    assert_eq!(first.header("x-seawall-cache"), "MISS");
    eventually(Duration::from_secs(5), "the answer stored in Redis", || async {
        l2_stores(&gw).await >= 1.0
    })
    .await;
    purge(&gw, r#"{"key": "/cache"}"#).await;
    // A client checking the purge at once.
    let _ = get_with(Engine::Http1, &gw, "/cache", &[]).await;
    eventually(Duration::from_secs(20), "the purge reaching Redis", || async {
        redis_keys(&redis.addr, &format!("{prefix}*")).await.is_empty()
    })
    .await;
    let after = get_with(Engine::Http1, &gw, "/cache", &[]).await;
    assert!(
        after.body != first.body,
        "the purged answer is served again after the purge completed ({}, {:?})",
        after.header("x-seawall-cache"),
        after.body
    );
    gw.shutdown().await;
}

/// A stored answer as the L2 codec lays it out (format SWCACHE1), with `fields`.
fn encoded(fields: &[(&str, &str)], body: &str, path: &str) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut out = b"SWCACHE1".to_vec();
    out.extend_from_slice(&200u16.to_be_bytes());
    bytes(&mut out, b"OK");
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for (name, value) in fields {
        bytes(&mut out, name.as_bytes());
        bytes(&mut out, value.as_bytes());
    }
    out.extend_from_slice(&now.as_secs().to_be_bytes()); // received_at
    out.extend_from_slice(&0u64.to_be_bytes()); // initial_age
    out.extend_from_slice(&600u64.to_be_bytes()); // fresh
    out.extend_from_slice(&0u64.to_be_bytes()); // while_revalidate
    out.extend_from_slice(&0u64.to_be_bytes()); // if_error
    out.push(0); // flags
    out.push(0); // no etag
    out.push(0); // no last-modified
    out.extend_from_slice(&0u32.to_be_bytes()); // no vary
    bytes(&mut out, path.as_bytes());
    bytes(&mut out, b"pages");
    bytes(&mut out, body.as_bytes());
    out
}

/// "Decoding takes nothing on trust": a value under our key whose field holds CR LF would split
/// an HTTP/1 head (here a `Set-Cookie` of the attacker's) for every client of the fleet; it is
/// read as a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_in_redis_cannot_inject_header_lines() {
    let redis = "127.0.0.1:6379";
    if !redis_at(redis) {
        return;
    }
    let origin = Origin::start().await;
    for engine in ENGINES {
        let prefix = fresh_prefix();
        let path = format!("/inject-{engine:?}");
        let fields = [("x-note", "hello\r\nset-cookie: session=attacker")];
        let key = format!("{prefix}pages\ntest.local\n{path}\n");
        let mut conn = redis_conn(redis).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(encoded(&fields, "planted", &path))
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await
            .unwrap();
        let gw = l2_instance(origin.addr, redis, &prefix, "ttl = \"60s\"").await;
        let answer = get_with(engine, &gw, &path, &[]).await;
        assert_eq!(
            answer.header("x-seawall-cache"),
            "MISS",
            "{engine:?}: a value that could not be ours is a miss: {}",
            answer.body
        );
        assert_eq!(
            answer.header("set-cookie"),
            "",
            "{engine:?}: a field value from Redis injected a header line"
        );
        gw.shutdown().await;
    }
}
