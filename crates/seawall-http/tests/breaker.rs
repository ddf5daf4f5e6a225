//! Circuit breakers as clients and operators meet them, through both engines: an upstream that
//! keeps failing is refused at once (503 `circuit_open`, `Retry-After`) without being touched,
//! probes close the breaker again or reopen it for longer, an operator forces it either way, the
//! state survives a reload — and the cascading-failure scenario: a hung payment upstream does not
//! slow the other routes, and fails fast once its breaker opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use seawall_http::Gateway;
use tokio::task::JoinSet;

/// A gateway whose catch-all route goes to `origin` through a breaker with `breaker` keys.
fn guarded(origin: &Origin, breaker: &str) -> seawall_config::Config {
    config_with_server(
        "admin_token = \"s3cret\"",
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\npassive = {{ consecutive_failures = 0 }}\nbreaker = {{ {breaker} }}\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
            origin.addr
        ),
    )
}

async fn get_via(engine: Engine, gw: &Gateway, path: &str) -> Answer {
    ask(engine, gw.listen_addr(), engine.get(path)).await
}

async fn force(gw: &Gateway, upstream: &str, body: &str, token: Option<&str>) -> Answer {
    let mut req =
        Request::post(format!("/api/v1/upstreams/{upstream}/breaker")).header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(gw.admin_addr(), req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

async fn breaker_state(gw: &Gateway) -> serde_json::Value {
    admin(gw, "/api/v1/state").await.json()["upstreams"][0]["breaker"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_keeps_failing_is_refused_at_once_without_being_touched() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = start(guarded(&origin, "consecutive_failures = 3, failure_rate = 0.0")).await;
        for _ in 0..3 {
            assert_eq!(
                get_via(engine, &gw, "/status/500").await.status,
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
        let refused = get_via(engine, &gw, "/status/500").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(refused.header("x-seawall-reason"), "circuit_open");
        assert_eq!(refused.json()["reason"], "circuit_open");
        assert_eq!(refused.header("retry-after"), "30", "{engine:?}: open for 30 s");
        // Healthy paths are refused too: the breaker guards the upstream, not a path.
        assert_eq!(get_via(engine, &gw, "/hi").await.header("x-seawall-reason"), "circuit_open");
        assert_eq!(origin.hits(), 3, "{engine:?}: nothing reached the origin once open");
        let state = breaker_state(&gw).await;
        assert_eq!(state["state"], "open", "{state}");
        assert_eq!(state["trips"], 1);
        let text = admin(&gw, "/metrics").await.body;
        for line in [
            "seawall_breaker_state{upstream=\"app\"} 1",
            "seawall_breaker_transitions_total{upstream=\"app\",to=\"open\"} 1",
            "seawall_breaker_refused_total{upstream=\"app\"} 2",
            "seawall_requests_total{route=\"all\",code=\"503\"} 2",
        ] {
            assert!(text.contains(line), "{engine:?}: no {line:?} in\n{text}");
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_probe_closes_it_and_a_failed_one_reopens_it_for_longer() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let breaker = "consecutive_failures = 2, failure_rate = 0.0, open_for = \"300ms\", max_open_for = \"10s\"";
        let gw = start(guarded(&origin, breaker)).await;
        for _ in 0..2 {
            get_via(engine, &gw, "/status/502").await;
        }
        assert_eq!(breaker_state(&gw).await["state"], "open");
        // Once the open time is over, one request goes through as a probe; it succeeds.
        eventually(Duration::from_secs(5), "a probe passes", || async {
            get_via(engine, &gw, "/hi").await.status == StatusCode::OK
        })
        .await;
        let state = breaker_state(&gw).await;
        assert_eq!(
            (state["state"].as_str(), state["trips"].as_u64()),
            (Some("closed"), Some(0)),
            "{state}"
        );
        // Tripped again, and the probe fails: open again, for twice as long.
        for _ in 0..2 {
            get_via(engine, &gw, "/status/502").await;
        }
        eventually(Duration::from_secs(5), "a probe passes", || async {
            get_via(engine, &gw, "/status/503").await.status == StatusCode::SERVICE_UNAVAILABLE
                && breaker_state(&gw).await["trips"] == 2
        })
        .await;
        let state = breaker_state(&gw).await;
        assert_eq!(state["state"], "open", "{state}");
        assert!(state["open_for_ms"].as_u64().unwrap() > 300, "{state}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_forces_it_open_or_closed_and_gives_it_back() {
    let origin = Origin::start().await;
    let gw = start(guarded(&origin, "consecutive_failures = 3, failure_rate = 0.0")).await;
    let token = Some("s3cret");
    assert_eq!(
        force(&gw, "app", r#"{"state":"open"}"#, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = force(&gw, "app", r#"{"state":"open"}"#, token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["state"], "open");
    for engine in ENGINES {
        let answer = get_via(engine, &gw, "/hi").await;
        assert_eq!(answer.header("x-seawall-reason"), "circuit_open", "{engine:?}");
    }
    assert_eq!(origin.hits(), 0);
    assert_eq!(breaker_state(&gw).await["forced"], "open");
    // Forced closed: failures pass and nothing trips.
    force(&gw, "app", r#"{"state":"closed"}"#, token).await;
    for _ in 0..5 {
        assert_eq!(
            get_via(Engine::Http1, &gw, "/status/500").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    // Back to the rules, which counted those failures all along.
    force(&gw, "app", r#"{"state":"auto"}"#, token).await;
    assert_eq!(
        get_via(Engine::H2c, &gw, "/status/500").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(get_via(Engine::H2c, &gw, "/hi").await.header("x-seawall-reason"), "circuit_open");
    // What an operator gets wrong is answered plainly.
    let bad = force(&gw, "app", r#"{"state":"half"}"#, token).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(force(&gw, "app", "not json", token).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        force(&gw, "nope", r#"{"state":"open"}"#, token).await.status,
        StatusCode::NOT_FOUND
    );
    gw.shutdown().await;

    let plain = start(simple(&[&origin], "")).await;
    let r = force(&plain, "app", r#"{"state":"open"}"#, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.json()["reason"], "no_breaker");
    plain.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stays_open_across_a_reload() {
    let origin = Origin::start().await;
    let config = guarded(&origin, "consecutive_failures = 1, failure_rate = 0.0");
    let gw = start(config.clone()).await;
    get_via(Engine::Http1, &gw, "/status/500").await;
    gw.shared().apply(config);
    assert_eq!(get_via(Engine::Http1, &gw, "/hi").await.header("x-seawall-reason"), "circuit_open");
    assert_eq!(breaker_state(&gw).await["trips"], 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_payment_upstream_fails_fast_once_its_breaker_opens_and_other_routes_carry_on() {
    for engine in ENGINES {
        let (app, payments) = (Origin::start().await, Origin::start().await);
        let gw = start(config(&format!(
            "[upstreams.app]\nservers = [\"{}\"]\n\
             [upstreams.payments]\nservers = [\"{}\"]\ntimeout = \"300ms\"\npassive = {{ consecutive_failures = 0 }}\n\
             breaker = {{ consecutive_failures = 2, failure_rate = 0.0, open_for = \"30s\" }}\n\
             [[routes]]\nname = \"payments\"\nhost = \"pay.local\"\nupstream = \"payments\"\n\
             [[routes]]\nname = \"shop\"\nupstream = \"app\"\n",
            app.addr, payments.addr
        )))
        .await;
        // While checkout hangs, browsing keeps answering.
        let mut checkouts = JoinSet::new();
        for _ in 0..2 {
            let req = engine.request_at("pay.local", "GET", "/slow?ms=5000").body(empty()).unwrap();
            let addr = gw.listen_addr();
            checkouts.spawn(async move { ask(engine, addr, req).await });
        }
        for _ in 0..20 {
            assert_eq!(get_via(engine, &gw, "/hi").await.status, StatusCode::OK, "{engine:?}");
        }
        while let Some(answer) = checkouts.join_next().await {
            let answer = answer.unwrap();
            assert_eq!(answer.header("x-seawall-reason"), "upstream_timeout", "{engine:?}");
        }
        // The breaker is open: checkout now fails at once (long before the upstream's 300 ms
        // timeout, let alone its 5 s hang), and the hung upstream is spared.
        let before = payments.hits();
        let req = engine.request_at("pay.local", "GET", "/slow?ms=5000").body(empty()).unwrap();
        let answer = bounded(2.0, "an immediate refusal", ask(engine, gw.listen_addr(), req)).await;
        assert_eq!(answer.header("x-seawall-reason"), "circuit_open", "{engine:?}");
        assert_eq!(payments.hits(), before, "{engine:?}");
        assert_eq!(get_via(engine, &gw, "/hi").await.status, StatusCode::OK);
        gw.shutdown().await;
    }
}
