//! A route's edge behaviour over real sockets, on both engines: what the origin receives after
//! `strip_prefix` / `prefix_rewrite` and `request_headers`, what the client receives after
//! `response_headers`, `redirect` answers, segment-aware prefixes and the per-route `timeout` —
//! with hostile paths (dot segments in every spelling, encoded slashes, very long paths).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;

/// A gateway in front of `origin` with `routes` (the upstream is `app`).
async fn gateway(origin: &Origin, upstream_extra: &str, routes: &str) -> Gateway {
    let body =
        format!("[upstreams.app]\nservers = [\"{}\"]\n{upstream_extra}\n{routes}", origin.addr);
    start(config(&body)).await
}

async fn get(engine: Engine, gw: &Gateway, path: &str) -> Answer {
    ask(engine, gw.listen_addr(), engine.get(path)).await
}

/// The target the origin received for `path`.
async fn seen_uri(engine: Engine, gw: &Gateway, path: &str) -> String {
    let answer = get(engine, gw, path).await;
    assert_eq!(answer.status, StatusCode::OK, "{engine:?} {path}: {}", answer.body);
    answer.json()["uri"].as_str().unwrap().to_string()
}

const REWRITES: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
prefix_match = "segment"
strip_prefix = true
upstream = "app"

[[routes]]
name = "whole"
path_prefix = "/whole"
prefix_match = "segment"
prefix_rewrite = "/echo"
upstream = "app"

[[routes]]
name = "bytes"
path_prefix = "/pre"
strip_prefix = true
upstream = "app"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_prefix_rewrite_send_an_origin_form_path_and_keep_the_query() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", REWRITES).await;
    for engine in ENGINES {
        for (asked, sent) in [
            ("/api/echo?q=1&r=%2F", "/echo?q=1&r=%2F"),
            // An encoded slash is not a separator: it goes on as the client wrote it.
            ("/api/echo/a%2Fb", "/echo/a%2Fb"),
            // A prefix that is the whole path leaves `/`, never an empty path.
            ("/whole", "/echo"),
            ("/whole?x=1", "/echo?x=1"),
            ("/whole/", "/echo/"),
            ("/whole/deep/er?x", "/echo/deep/er?x"),
            // Byte-wise prefixes strip inside a segment, and a `/` still starts the path.
            ("/pre/echo", "/echo"),
            ("/preecho?z", "/echo?z"),
        ] {
            assert_eq!(seen_uri(engine, &gw, asked).await, sent, "{engine:?} {asked}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_path_with_a_dot_segment_is_refused_before_the_origin() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", REWRITES).await;
    let mut refused = 0.0;
    for engine in ENGINES {
        for hostile in [
            "/api/../admin",
            "/api/./echo",
            "/api/%2e%2e/admin",
            "/api/%2E./admin",
            "/api/..%2Fadmin",
            "/api/echo/..%5cadmin",
            "/api/..",
        ] {
            let answer = get(engine, &gw, hostile).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{engine:?} {hostile}");
            assert_eq!(answer.header("x-seawall-reason"), "bad_request", "{engine:?} {hostile}");
            assert!(answer.body.contains("dot segment"), "{engine:?}: {}", answer.body);
            refused += 1.0;
        }
    }
    assert_eq!(origin.hits(), 0, "nothing hostile reached the origin");
    assert_eq!(metric(&gw, "seawall_rewrite_refusals_total ").await, refused);
    // Dots inside a segment are no dot segment.
    assert_eq!(seen_uri(Engine::Http1, &gw, "/api/echo/...x").await, "/echo/...x");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_long_path_is_rewritten_whole() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", REWRITES).await;
    let long = "a".repeat(6000);
    for engine in ENGINES {
        let uri = seen_uri(engine, &gw, &format!("/whole/{long}?q={long}")).await;
        assert_eq!(uri, format!("/echo/{long}?q={long}"), "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_prefix_does_not_match_a_longer_segment() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", REWRITES).await;
    for engine in ENGINES {
        for matched in ["/api", "/api/", "/api?x=1", "/api/x"] {
            let answer = get(engine, &gw, matched).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?} {matched}");
            assert!(answer.body.starts_with("hello from"), "{engine:?} {matched}");
        }
        for unmatched in ["/apiary", "/api%2Fx", "/wholesale"] {
            let answer = get(engine, &gw, unmatched).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{engine:?} {unmatched}");
            assert_eq!(answer.header("x-seawall-reason"), "no_route", "{engine:?}");
        }
    }
    gw.shutdown().await;
}

const HEADERS: &str = r#"
[[routes]]
name = "edited"
path_prefix = "/"
upstream = "app"
request_headers = { set = { x-env = "prod" }, add = { x-tag = "added" }, remove = ["cookie", "x-drop"] }
response_headers = { set = { cache-control = "no-store" }, add = { x-served-by = "seawall" }, remove = ["x-origin"] }
cache = { ttl = "60s" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_are_set_added_and_removed_on_the_way_upstream() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", HEADERS).await;
    for engine in ENGINES {
        let req = engine
            .request("POST", "/echo")
            .header("x-env", "client")
            .header("X-ENV", "client-again")
            .header("cookie", "session=1")
            .header("x-drop", "1")
            .header("x-kept", "yes")
            .body(full("body"))
            .unwrap();
        let answer = ask(engine, gw.listen_addr(), req).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}");
        let h = &answer.json()["headers"];
        assert_eq!(h["x-env"], "prod", "{engine:?}: set replaces every field of the name: {h}");
        assert_eq!(h["x-tag"], "added", "{engine:?}");
        assert_eq!(h["x-kept"], "yes", "{engine:?}");
        assert_eq!(h["content-length"], "4", "{engine:?}: the framing is Seawall's own");
        for gone in ["cookie", "x-drop"] {
            assert!(h.get(gone).is_none(), "{engine:?}: {gone} must not reach the origin: {h}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_apply_to_proxied_and_cached_answers_not_to_refusals() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", HEADERS).await;
    for engine in ENGINES {
        let path = format!("/cache?cc=max-age=60&engine={engine:?}");
        for (round, cache) in [(0, "MISS"), (1, "HIT")] {
            let answer = get(engine, &gw, &path).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?} {round}");
            assert_eq!(answer.header("x-seawall-cache"), cache, "{engine:?} {round}");
            let cc: Vec<_> = answer.headers.get_all("cache-control").iter().collect();
            assert_eq!(cc, ["no-store"], "{engine:?} {round}: set replaces the origin's");
            assert_eq!(answer.header("x-served-by"), "seawall", "{engine:?} {round}");
            assert!(answer.headers.get("x-origin").is_none(), "{engine:?} {round}: removed");
        }
    }
    assert_eq!(origin.hits(), 2, "the origin's own max-age still drives the cache");
    gw.shutdown().await;
    // Seawall's own answers are not the origin's: they keep their fields.
    let routes = HEADERS.replace("cache = { ttl = \"60s\" }", "");
    let down =
        start(config(&format!("[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n{routes}"))).await;
    for engine in ENGINES {
        let answer = get(engine, &down, "/anything").await;
        assert!(answer.status.is_server_error(), "{engine:?}: {}", answer.status);
        assert!(answer.headers.get("x-served-by").is_none(), "{engine:?}");
        assert_eq!(answer.header("cache-control"), "no-store", "{engine:?}: the problem's own");
    }
    down.shutdown().await;
}

const REDIRECTS: &str = r#"
[rate_limits.once]
key = "header:x-client"
rate = "1/min"

[[routes]]
name = "moved"
path_prefix = "/old"
prefix_match = "segment"
strip_prefix = true
redirect = { status = 308, location = "https://example.com/new/", keep_path = true }

[[routes]]
name = "login"
path = "/login"
redirect = { location = "/signin" }

[[routes]]
name = "limited"
path = "/limited"
rate_limit = "once"
redirect = { status = 301, location = "https://example.com" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_routes_answer_with_a_location_on_both_engines() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "", REDIRECTS).await;
    let mut redirects = 0.0;
    for engine in ENGINES {
        for (asked, status, location) in [
            ("/old/a/b?x=1&y=%2F", 308, "https://example.com/new/a/b?x=1&y=%2F"),
            ("/old", 308, "https://example.com/new/"),
            ("/old?q", 308, "https://example.com/new/?q"),
            ("/login?next=/x", 302, "/signin"),
        ] {
            let answer = get(engine, &gw, asked).await;
            assert_eq!(answer.status.as_u16(), status, "{engine:?} {asked}");
            assert_eq!(answer.header("location"), location, "{engine:?} {asked}");
            assert_eq!(answer.body, "", "{engine:?}");
            redirects += 1.0;
        }
        // A POST's body is read and the connection serves the next request.
        let mut client = Client::connect(engine, gw.listen_addr()).await;
        for _ in 0..2 {
            let req = engine.request("POST", "/login").body(full("a body")).unwrap();
            let response = bounded(5.0, "a redirect", client.send(req)).await.unwrap();
            assert_eq!(response.status(), StatusCode::FOUND, "{engine:?}");
            redirects += 1.0;
        }
        // Redirects go through the policy layer like any route: the second is rate limited.
        let client_key = format!("{engine:?}");
        let limited = |engine: Engine| {
            engine
                .request("GET", "/limited")
                .header("x-client", client_key.as_str())
                .body(empty())
                .unwrap()
        };
        let first = ask(engine, gw.listen_addr(), limited(engine)).await;
        assert_eq!(first.status, StatusCode::MOVED_PERMANENTLY, "{engine:?}");
        assert_eq!(first.header("location"), "https://example.com", "{engine:?}");
        redirects += 1.0;
        let second = ask(engine, gw.listen_addr(), limited(engine)).await;
        assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
    }
    assert_eq!(origin.hits(), 0);
    assert_eq!(metric(&gw, "seawall_redirects_total ").await, redirects);
    let moved = metric(&gw, "seawall_requests_total{route=\"moved\",code=\"308\"} ").await;
    assert_eq!(moved, 6.0, "counted in the route's metrics like any answer");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_overrides_the_upstreams_answer_timeout() {
    let origin = Origin::start().await;
    let routes = r#"
[[routes]]
name = "quick"
path_prefix = "/quick"
strip_prefix = true
timeout = "200ms"
upstream = "app"

[[routes]]
name = "patient"
path_prefix = "/patient"
strip_prefix = true
upstream = "app"
"#;
    let gw = gateway(&origin, "timeout = \"10s\"", routes).await;
    for engine in ENGINES {
        let answer = get(engine, &gw, "/quick/slow?ms=3000").await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
        assert_eq!(answer.header("x-seawall-reason"), "upstream_timeout", "{engine:?}");
        assert!(answer.body.contains("route's timeout (200ms)"), "{engine:?}: {}", answer.body);
        let answer = get(engine, &gw, "/patient/slow?ms=500").await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: the upstream's own 10s holds");
        assert_eq!(answer.body, "slow");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_path_never_makes_a_protocol_relative_location() {
    let origin = Origin::start().await;
    let body = format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"old\"\npath_prefix = \"/old\"\n\
         strip_prefix = true\nredirect = {{ status = 308, location = \"/\", keep_path = true }}\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    );
    let gw = start(config(&body)).await;
    for (target, expected) in
        [("/old//evil.example/x", "/evil.example/x"), ("/old/a?b=1", "/a?b=1"), ("/old", "/")]
    {
        let request = format!("GET {target} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let reply = raw(gw.listen_addr(), request.as_bytes()).await;
        let location = reply.lines().find_map(|l| l.strip_prefix("location: ")).unwrap_or("");
        assert_eq!(location, expected, "{target}: {reply}");
    }
    gw.shutdown().await;
}
