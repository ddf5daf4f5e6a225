//! The response cache through both engines, against a real origin: what is stored and served
//! (HIT, MISS, BYPASS), what is not (RFC 9111's rules), one upstream request for many concurrent
//! misses, stale answers when the origin is down or the request would be shed, 304s for clients
//! whose copy is current, variants, crisis TTLs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;

async fn cached_gateway(origin: std::net::SocketAddr, cache: &str) -> Gateway {
    start(config(&format!(
        "[upstreams.app]\nservers = [\"{origin}\"]\n\
         [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         cache = {{ {cache} }}\n"
    )))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_is_served_from_memory_and_says_so() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\"").await;
        let first = get_with(engine, &gw, "/cache?x=1", &[]).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.header("x-seawall-cache"), "MISS", "{engine:?}");
        let second = get_with(engine, &gw, "/cache?x=1", &[]).await;
        assert_eq!(second.header("x-seawall-cache"), "HIT", "{engine:?}");
        assert_eq!(second.body, first.body, "{engine:?}: the stored body");
        assert!(second.header("age").parse::<u64>().is_ok(), "{engine:?}: an Age");
        assert_eq!(second.header("x-origin"), first.header("x-origin"), "the origin's fields");
        assert_eq!(origin.hits(), 1, "{engine:?}: one trip to the origin");
        // HEAD is answered from the GET's entry, without a body.
        let head = ask(
            engine,
            gw.listen_addr(),
            engine.request("HEAD", "/cache?x=1").body(empty()).unwrap(),
        )
        .await;
        assert_eq!(head.header("x-seawall-cache"), "HIT");
        assert_eq!(head.header("content-length"), first.body.len().to_string());
        assert!(head.body.is_empty());
        // A client asking only for what is stored gets it, or 504 without reaching the origin.
        let only = [("cache-control", "only-if-cached")];
        assert_eq!(
            get_with(engine, &gw, "/cache?x=1", &only).await.header("x-seawall-cache"),
            "HIT"
        );
        let none = get_with(engine, &gw, "/cache?x=3", &only).await;
        assert_eq!(none.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
        assert_eq!(none.header("x-seawall-reason"), "not_cached");
        assert_eq!(origin.hits(), 1);
        // Another query is another entry.
        let other = get_with(engine, &gw, "/cache?x=2", &[]).await;
        assert_eq!(other.header("x-seawall-cache"), "MISS");
        assert_eq!(origin.hits(), 2);
        let hits =
            metric(&gw, "seawall_cache_total{route=\"pages\",layer=\"l1\",event=\"hit\"}").await;
        assert_eq!(hits, 3.0, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_origin_or_the_client_forbids_is_not_shared() {
    // (origin fields, request fields, served from the cache the second time?)
    type Case = (&'static str, &'static [(&'static str, &'static str)], bool);
    let table: [Case; 9] = [
        ("cc=max-age=60", &[], true),
        ("cc=no-store", &[], false),
        ("cc=private,max-age=60", &[], false),
        ("cookie=session=1", &[], false),
        ("cc=max-age=60", &[("authorization", "Bearer x")], false),
        // An authorized request is never answered with a stored answer (unless the route says
        // share_authorized); what it fetched is kept for others when the origin says public.
        ("cc=public,max-age=60", &[("authorization", "Bearer x")], false),
        ("vary=*", &[], false),
        ("cc=max-age=60", &[("cache-control", "no-store")], false),
        ("lm=Thu,%2001%20Jan%202026%2000:00:00%20GMT", &[], true),
    ];
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\"").await;
        for (i, (fields, request, stored)) in table.iter().enumerate() {
            let path = format!("/cache?{fields}&case={i}");
            get_with(engine, &gw, &path, request).await;
            let before = origin.hits();
            let again = get_with(engine, &gw, &path, request).await;
            let went = origin.hits() > before;
            assert_eq!(
                !went, *stored,
                "{engine:?}: {fields} {request:?}: {} {}",
                again.status, again.body
            );
            let no_store = request.iter().any(|(_, v)| *v == "no-store");
            let expected = match (*stored, no_store) {
                (true, _) => "HIT",
                (false, true) => "BYPASS",
                (false, false) => "MISS",
            };
            assert_eq!(
                again.header("x-seawall-cache"),
                expected,
                "{engine:?}: {fields} {request:?}"
            );
        }
        // The public answer fetched with credentials serves an anonymous request.
        let public = get_with(engine, &gw, "/cache?cc=public,max-age=60&case=5", &[]).await;
        assert_eq!(public.header("x-seawall-cache"), "HIT", "{engine:?}");
        let private = get_with(engine, &gw, "/cache?cc=max-age=60&case=4", &[]).await;
        assert_eq!(private.header("x-seawall-cache"), "MISS", "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_upstream_request() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\", coalesce_wait = \"30s\"").await;
        let addr = gw.listen_addr();
        let asks: Vec<_> = (0..1_000)
            .map(|_| tokio::spawn(try_ask(engine, addr, engine.get("/popular"))))
            .collect();
        let waiting = "seawall_cache_total{route=\"pages\",layer=\"l1\",event=\"coalesced\"}";
        eventually(Duration::from_secs(20), "999 requests waiting for the first", || async {
            metric(&gw, waiting).await == 999.0
        })
        .await;
        assert_eq!(origin.arrived.load(SeqCst), 1, "{engine:?}");
        origin.gate.add_permits(1);
        let mut statuses = std::collections::BTreeMap::new();
        for ask in asks {
            let answer = ask.await.unwrap().unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{engine:?}");
            assert_eq!(answer.body, "ok");
            *statuses.entry(answer.header("x-seawall-cache").to_string()).or_insert(0) += 1;
        }
        assert_eq!(origin.arrived.load(SeqCst), 1, "{engine:?}: exactly one upstream request");
        assert_eq!(statuses.get("MISS"), Some(&1), "{engine:?}: {statuses:?}");
        assert_eq!(statuses.get("HIT"), Some(&999), "{engine:?}: {statuses:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_stands_in_when_the_origin_fails_or_is_gone() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        // Stale at once (max-age=0), and usable stale for an hour if the origin fails.
        let gw = cached_gateway(origin.addr, "ttl = \"60s\", stale_if_error = \"1h\"").await;
        let first = get_with(engine, &gw, "/cache?cc=max-age=0", &[]).await;
        assert_eq!(first.header("x-seawall-cache"), "MISS");
        // Stale but the origin answers: it is asked again.
        let fresh = get_with(engine, &gw, "/cache?cc=max-age=0", &[]).await;
        assert_eq!(fresh.header("x-seawall-cache"), "MISS");
        assert_eq!(origin.hits(), 2);
        // The origin fails with 500: the stored answer stands in.
        origin.failing.store(true, SeqCst);
        let stale = get_with(engine, &gw, "/cache?cc=max-age=0", &[]).await;
        assert_eq!(stale.status, StatusCode::OK, "{engine:?}");
        assert_eq!(stale.header("x-seawall-cache"), "STALE", "{engine:?}");
        assert_eq!(stale.body, fresh.body);
        // Nothing stored: the origin's failure passes through.
        let none = get_with(engine, &gw, "/cache?cc=max-age=0&other=1", &[]).await;
        assert_eq!(none.status, StatusCode::INTERNAL_SERVER_ERROR);
        gw.shutdown().await;
    }
}

/// An origin that answers one request (cacheable, stale at once), then is gone: its port is held
/// bound but not listening, so that connecting is refused (and no other test can take it).
fn one_answer_then_gone() -> (std::net::SocketAddr, std::thread::JoinHandle<socket2::Socket>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let answer = "HTTP/1.1 200 OK\r\ncache-control: max-age=0\r\ncontent-length: 5\r\n\
                      connection: close\r\n\r\nhello";
        stream.write_all(answer.as_bytes()).unwrap();
        drop(stream);
        drop(listener);
        let held =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        held.set_reuse_address(true).unwrap();
        held.bind(&addr.into()).unwrap();
        held
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_stands_in_when_the_origin_cannot_be_reached() {
    for engine in ENGINES {
        let (addr, served) = one_answer_then_gone();
        let gw = start(config(&format!(
            "[upstreams.app]\nservers = [\"{addr}\"]\nretry = {{ attempts = 1 }}\n\
             passive = {{ consecutive_failures = 0 }}\n\
             [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             cache = {{ stale_if_error = \"1h\" }}\n"
        )))
        .await;
        let first = get_with(engine, &gw, "/page", &[]).await;
        assert_eq!((first.status, first.body.as_str()), (StatusCode::OK, "hello"));
        let _held = served.join().unwrap();
        let stale = get_with(engine, &gw, "/page", &[]).await;
        assert_eq!(stale.status, StatusCode::OK, "{engine:?}: {}", stale.body);
        assert_eq!(stale.header("x-seawall-cache"), "STALE", "{engine:?}");
        assert_eq!(stale.body, "hello");
        // Without a stored answer the failure is Seawall's 502.
        let none = get_with(engine, &gw, "/other", &[]).await;
        assert_eq!(none.status, StatusCode::BAD_GATEWAY, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_copy_is_current_gets_304() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\"").await;
        let path = "/cache?etag=%22v1%22&lm=Thu,%2001%20Jan%202026%2000:00:00%20GMT";
        let first = get_with(engine, &gw, path, &[]).await;
        assert_eq!(first.header("etag"), "\"v1\"");
        let current = get_with(engine, &gw, path, &[("if-none-match", "W/\"v1\"")]).await;
        assert_eq!(current.status, StatusCode::NOT_MODIFIED, "{engine:?}");
        assert!(current.body.is_empty());
        assert_eq!(current.header("etag"), "\"v1\"");
        let changed = get_with(engine, &gw, path, &[("if-none-match", "\"v0\"")]).await;
        assert_eq!(changed.status, StatusCode::OK);
        let since =
            get_with(engine, &gw, path, &[("if-modified-since", "Fri, 02 Jan 2026 00:00:00 GMT")])
                .await;
        assert_eq!(since.status, StatusCode::NOT_MODIFIED, "{engine:?}");
        assert_eq!(origin.hits(), 1);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_named_by_vary_are_kept_apart() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\"").await;
        let path = "/cache?vary=accept-language";
        let en = get_with(engine, &gw, path, &[("accept-language", "en")]).await;
        let fr = get_with(engine, &gw, path, &[("accept-language", "fr")]).await;
        assert_ne!(en.body, fr.body, "{engine:?}: two answers");
        let en_again = get_with(engine, &gw, path, &[("accept-language", "en")]).await;
        let fr_again = get_with(engine, &gw, path, &[("accept-language", "fr")]).await;
        assert_eq!(
            (en_again.header("x-seawall-cache"), en_again.body.as_str()),
            ("HIT", en.body.as_str())
        );
        assert_eq!(
            (fr_again.header("x-seawall-cache"), fr_again.body.as_str()),
            ("HIT", fr.body.as_str())
        );
        assert_eq!(origin.hits(), 2, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crisis_mode_stretches_freshness_to_the_routes_crisis_ttl() {
    let origin = Origin::start().await;
    let gw = start(config_with_server(
        "admin_token = \"t0ken\"\n",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             cache = {{ ttl = \"60s\", crisis_ttl = \"10m\" }}\n",
            origin.addr
        ),
    ))
    .await;
    let path = "/cache?cc=max-age=0";
    get_with(Engine::Http1, &gw, path, &[]).await;
    assert_eq!(get_with(Engine::Http1, &gw, path, &[]).await.header("x-seawall-cache"), "MISS");
    let req = http::Request::builder()
        .method("PUT")
        .uri("/api/v1/mode")
        .header("host", "admin")
        .header("authorization", "Bearer t0ken")
        .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"crisis": "on"}"#)))
        .unwrap();
    assert_eq!(send(gw.admin_addr(), req).await.status, StatusCode::OK);
    let hits = origin.hits();
    for engine in ENGINES {
        let answer = get_with(engine, &gw, path, &[]).await;
        assert_eq!(answer.header("x-seawall-cache"), "HIT", "{engine:?}");
    }
    assert_eq!(origin.hits(), hits, "in a crisis the origin is spared");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_purges_one_path_or_a_prefix() {
    let origin = Origin::start().await;
    let gw = start(config_with_server(
        "admin_token = \"t0ken\"\n",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\nname = \"pages\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             cache = {{ ttl = \"60s\", key = [\"host\", \"path\", \"query\"] }}\n",
            origin.addr
        ),
    ))
    .await;
    let paths = ["/cache?p=1", "/cache?p=2", "/cache/other"];
    for engine in ENGINES {
        for path in paths {
            get_with(engine, &gw, path, &[]).await;
        }
    }
    let purge = |body: &'static str, token: &'static str| {
        let req = http::Request::builder()
            .method("POST")
            .uri("/api/v1/cache/purge")
            .header("host", "admin")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        send(gw.admin_addr(), req)
    };
    assert_eq!(purge(r#"{"key": "/cache?p=1"}"#, "wrong").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(purge(r#"{"key": 1}"#, "t0ken").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(purge(r#"{}"#, "t0ken").await.status, StatusCode::BAD_REQUEST);
    let one = purge(r#"{"key": "/cache?p=1"}"#, "t0ken").await;
    assert_eq!(one.json()["purged"], 1, "{}", one.body);
    let gw_ref = &gw;
    let status = |path: &'static str| async move {
        get_with(Engine::Http1, gw_ref, path, &[]).await.header("x-seawall-cache").to_string()
    };
    assert_eq!(status("/cache?p=1").await, "MISS");
    assert_eq!(status("/cache?p=2").await, "HIT");
    let prefix = purge(r#"{"prefix": "/cache"}"#, "t0ken").await;
    assert_eq!(prefix.json()["purged"], 3, "{}", prefix.body);
    assert_eq!(status("/cache/other").await, "MISS");
    let state = admin(&gw, "/api/v1/state").await.json();
    assert!(state["cache"]["l1"]["entries"].as_u64().unwrap() >= 1, "{state}");
    assert!(metric(&gw, "seawall_cache_bytes{layer=\"l1\"}").await > 0.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_with_a_validator_is_revalidated_with_the_origin() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\"").await;
        // Stale at once, with an ETag: the next request asks the origin whether it changed.
        let path = "/cache?cc=max-age=0&etag=%22v1%22";
        let first = get_with(engine, &gw, path, &[]).await;
        assert_eq!(first.header("x-seawall-cache"), "MISS");
        let again = get_with(engine, &gw, path, &[]).await;
        assert_eq!(again.status, StatusCode::OK, "{engine:?}");
        assert_eq!(again.header("x-seawall-cache"), "REVALIDATED", "{engine:?}");
        assert_eq!(again.body, first.body, "{engine:?}: the stored body, the origin sent none");
        assert_eq!(origin.hits(), 2, "{engine:?}: one conditional request");
        let revalidated = "seawall_cache_total{route=\"pages\",layer=\"l1\",event=\"revalidated\"}";
        assert_eq!(metric(&gw, revalidated).await, 1.0);
        // A client's own conditional request passes through: the origin's 304 is its answer.
        let own = get_with(engine, &gw, path, &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(own.status, StatusCode::NOT_MODIFIED, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_is_served_at_once_while_it_is_refreshed_in_the_background() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw =
            cached_gateway(origin.addr, "ttl = \"60s\", stale_while_revalidate = \"60s\"").await;
        // Stale at once; every fetch after the first takes the origin 3 s.
        let path = "/cache?cc=max-age=0&slow_after=1";
        let first = get_with(engine, &gw, path, &[]).await;
        assert_eq!((first.header("x-seawall-cache"), first.body.as_str()), ("MISS", "answer 1"));
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let stale = get_with(engine, &gw, path, &[]).await;
            assert_eq!(stale.header("x-seawall-cache"), "STALE", "{engine:?}");
            assert_eq!(stale.body, "answer 1", "{engine:?}: the stored answer, at once");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{engine:?}: not held by the refresh"
            );
        }
        eventually(Duration::from_secs(5), "the refresh reaching the origin", || async {
            origin.hits() >= 2
        })
        .await;
        assert_eq!(origin.hits(), 2, "{engine:?}: one refresh for all of them");
        eventually(Duration::from_secs(10), "the refreshed answer", || async {
            get_with(engine, &gw, path, &[]).await.body == "answer 2"
        })
        .await;
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overriding_the_origin_never_shares_one_users_answer() {
    // `override = true` replaces the origin's freshness, not the rule that an answer to an
    // authorized request is that user's alone (unless the origin says it is public).
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = cached_gateway(origin.addr, "ttl = \"60s\", override = true").await;
        let user = [("authorization", "Bearer alice")];
        get_with(engine, &gw, "/cache?me=1", &user).await;
        let other = get_with(engine, &gw, "/cache?me=1", &[]).await;
        assert_eq!(other.header("x-seawall-cache"), "MISS", "{engine:?}: alice's answer served");
        assert_eq!(origin.hits(), 2, "{engine:?}");
        get_with(engine, &gw, "/cache?cc=public&shared=1", &user).await;
        let shared = get_with(engine, &gw, "/cache?cc=public&shared=1", &[]).await;
        assert_eq!(shared.header("x-seawall-cache"), "HIT", "{engine:?}: said public");
        gw.shutdown().await;
    }
}
