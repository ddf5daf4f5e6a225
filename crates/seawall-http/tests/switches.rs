//! The crisis switches and what follows from them, through both engines: a route turned off (503
//! `feature_disabled`, or its degraded answer), read-only mode by hand or because an upstream has
//! no server left (writes refused, reads flowing), reads sent to replicas, and a degraded answer
//! when every upstream failed — all surviving reloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use seawall_http::Gateway;

const TOKEN: &str = "s3cret";

fn with_token(body: &str) -> seawall_config::Config {
    config_with_server(&format!("admin_token = \"{TOKEN}\""), body)
}

async fn call(gw: &Gateway, method: Method, path: &str, body: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(gw.admin_addr(), req).await
}

async fn request(engine: Engine, gw: &Gateway, method: &str, path: &str) -> Answer {
    let req =
        engine.request(method, path).body(full(if method == "GET" { "" } else { "x" })).unwrap();
    ask(engine, gw.listen_addr(), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_turned_off_answers_503_or_its_degraded_answer_until_turned_on() {
    let origin = Origin::start().await;
    let cfg = with_token(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"recommendations\"\npath_prefix = \"/recs\"\nupstream = \"app\"\n\
         degrade = {{ status = 200, body = \"[]\", content_type = \"application/json\" }}\n\
         [[routes]]\nname = \"search\"\npath_prefix = \"/search\"\nupstream = \"app\"\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    ));
    let gw = start(cfg.clone()).await;
    for route in ["recommendations", "search"] {
        let r = call(&gw, Method::POST, &format!("/api/v1/routes/{route}/disable"), "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // Survives a reload that keeps the routes.
    gw.shared().apply(cfg);
    for engine in ENGINES {
        let off = request(engine, &gw, "GET", "/search?q=x").await;
        assert_eq!(off.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(off.header("x-seawall-reason"), "feature_disabled");
        assert_eq!(off.header("retry-after"), "30");
        let degraded = request(engine, &gw, "GET", "/recs").await;
        assert_eq!((degraded.status, degraded.body.as_str()), (StatusCode::OK, "[]"), "{engine:?}");
        assert_eq!(degraded.header("content-type"), "application/json");
        assert_eq!(degraded.header("x-seawall-degraded"), "feature_disabled");
        assert_eq!(request(engine, &gw, "GET", "/hi").await.status, StatusCode::OK, "{engine:?}");
    }
    assert_eq!(origin.hits(), 2, "only the route still on reached the origin");
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["routes"][1]["disabled"], true, "{state}");
    assert_eq!(metric(&gw, "seawall_route_disabled{route=\"search\"}").await, 1.0);
    assert_eq!(
        metric(&gw, "seawall_requests_total{route=\"recommendations\",code=\"200\"}").await,
        2.0
    );
    call(&gw, Method::POST, "/api/v1/routes/search/enable", "").await;
    assert_eq!(request(Engine::H2c, &gw, "GET", "/search").await.status, StatusCode::OK);
    let unknown = call(&gw, Method::POST, "/api/v1/routes/nope/disable", "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_refuses_writes_and_keeps_reads_flowing() {
    let origin = Origin::start().await;
    let gw = start(with_token(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"export\"\npath_prefix = \"/export\"\nupstream = \"app\"\nwrites = true\n\
         [[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    )))
    .await;
    let r = call(&gw, Method::PUT, "/api/v1/mode", r#"{"read_only": true}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for engine in ENGINES {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let refused = request(engine, &gw, method, "/orders").await;
            assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?} {method}");
            assert_eq!(refused.header("x-seawall-reason"), "read_only");
            assert!(refused.header("retry-after").parse::<u32>().unwrap() > 0);
        }
        // A route that writes whatever its method is refused too; reads flow.
        assert_eq!(
            request(engine, &gw, "GET", "/export").await.header("x-seawall-reason"),
            "read_only"
        );
        assert_eq!(
            request(engine, &gw, "GET", "/orders").await.status,
            StatusCode::OK,
            "{engine:?}"
        );
        assert_eq!(
            request(engine, &gw, "HEAD", "/orders").await.status,
            StatusCode::OK,
            "{engine:?}"
        );
    }
    assert_eq!(metric(&gw, "seawall_read_only").await, 1.0);
    assert_eq!(admin(&gw, "/api/v1/state").await.json()["read_only"], true);
    call(&gw, Method::PUT, "/api/v1/mode", r#"{"read_only": false}"#).await;
    assert_eq!(request(Engine::Http1, &gw, "POST", "/orders").await.status, StatusCode::OK);
    let bad = call(&gw, Method::PUT, "/api/v1/mode", r#"{"read_only": "yes"}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&gw, Method::POST, "/api/v1/mode", "{}").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_with_no_server_left_makes_writes_read_only_and_reads_go_to_replicas() {
    let (primary, replica) = (Origin::start().await, Origin::start().await);
    let health = "health = { path = \"/healthz\", interval = \"50ms\", timeout = \"50ms\", unhealthy_after = 1, healthy_after = 1 }";
    let gw = start(config(&format!(
        "[upstreams.primary]\nservers = [\"{}\"]\n{health}\n\
         [upstreams.replicas]\nservers = [\"{}\"]\n{health}\n\
         [[routes]]\nname = \"db\"\nupstream = \"primary\"\nread_upstream = \"replicas\"\n",
        primary.addr, replica.addr
    )))
    .await;
    for engine in ENGINES {
        let read = request(engine, &gw, "GET", "/items").await;
        assert_eq!(
            read.header("x-origin"),
            replica.addr.port().to_string(),
            "{engine:?}: reads go to replicas"
        );
        let write = request(engine, &gw, "POST", "/items").await;
        assert_eq!(
            write.header("x-origin"),
            primary.addr.port().to_string(),
            "{engine:?}: writes to the primary"
        );
    }
    // The primary dies: writes are refused as read-only, reads carry on from the replicas.
    primary.healthy.store(false, SeqCst);
    eventually(Duration::from_secs(5), "writes refused", || async {
        request(Engine::Http1, &gw, "POST", "/items").await.header("x-seawall-reason")
            == "read_only"
    })
    .await;
    for engine in ENGINES {
        assert_eq!(
            request(engine, &gw, "POST", "/items").await.header("x-seawall-reason"),
            "read_only"
        );
        assert_eq!(
            request(engine, &gw, "GET", "/items").await.status,
            StatusCode::OK,
            "{engine:?}"
        );
    }
    // Then the replicas die while the primary comes back: reads fall back to the primary.
    primary.healthy.store(true, SeqCst);
    replica.healthy.store(false, SeqCst);
    eventually(Duration::from_secs(5), "reads on the primary", || async {
        request(Engine::H2c, &gw, "GET", "/items").await.header("x-origin")
            == primary.addr.port().to_string()
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_upstream_fails_the_route_serves_its_degraded_answer() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let gw = start(config(&format!(
        "[upstreams.recs]\nservers = [\"{dead}\"]\n\
         [[routes]]\nname = \"recs\"\nupstream = \"recs\"\n\
         degrade = {{ status = 200, body = \"{{\\\"items\\\":[]}}\", content_type = \"application/json\" }}\n"
    )))
    .await;
    for engine in ENGINES {
        let answer = request(engine, &gw, "GET", "/recs").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "{\"items\":[]}"),
            "{engine:?}"
        );
        assert_eq!(answer.header("x-seawall-degraded"), "upstream_connect_failed", "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crisis_mode_turns_routes_marked_for_it_to_their_degraded_answer() {
    let origin = Origin::start().await;
    let gw = start(with_token(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"recommend\"\npath_prefix = \"/recommend\"\nupstream = \"app\"\n\
         disable_in_crisis = true\ndegrade = {{ status = 200, body = '{{\"items\":[]}}' }}\n\
         [[routes]]\nname = \"export\"\npath_prefix = \"/export\"\nupstream = \"app\"\ndisable_in_crisis = true\n\
         [[routes]]\nname = \"checkout\"\nupstream = \"app\"\n",
        origin.addr
    )))
    .await;
    for engine in ENGINES {
        // Calm, and crisis mode follows the overload level (0): everything flows.
        let calm = request(engine, &gw, "GET", "/recommend").await;
        assert_eq!((calm.status, calm.header("x-seawall-degraded")), (StatusCode::OK, ""));
        let r = call(&gw, Method::PUT, "/api/v1/mode", r#"{"crisis": "on"}"#).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["crisis"], true);
        assert_eq!(r.json()["crisis_mode"], "on");
        let degraded = request(engine, &gw, "GET", "/recommend").await;
        assert_eq!(degraded.status, StatusCode::OK, "{engine:?}");
        assert_eq!(degraded.body, r#"{"items":[]}"#);
        assert_eq!(degraded.header("x-seawall-degraded"), "feature_disabled");
        let refused = request(engine, &gw, "POST", "/export").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(refused.header("x-seawall-reason"), "feature_disabled");
        assert!(refused.json()["detail"].as_str().unwrap().contains("crisis mode"));
        // Routes not marked for it keep flowing.
        assert_eq!(request(engine, &gw, "POST", "/pay").await.status, StatusCode::OK);
        assert_eq!(metric(&gw, "seawall_crisis{mode=\"on\"}").await, 1.0);
        let r = call(&gw, Method::PUT, "/api/v1/mode", r#"{"crisis": "auto"}"#).await;
        assert_eq!(r.json()["crisis"], false);
        let back = request(engine, &gw, "GET", "/recommend").await;
        assert_eq!((back.status, back.header("x-seawall-degraded")), (StatusCode::OK, ""));
    }
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["overload"]["crisis_mode"], "auto");
    assert_eq!(state["overload"]["level"], 0);
    assert_eq!(state["routes"][0]["disable_in_crisis"], true);
    for bad in [r#"{"crisis": "maybe"}"#, r#"{"crisis": true}"#, "{}"] {
        let r = call(&gw, Method::PUT, "/api/v1/mode", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    gw.shutdown().await;
}
