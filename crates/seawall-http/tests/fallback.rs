//! Fallback providers, through both engines: when the primary upstream's breaker is open, none of
//! its servers is up or reachable, or (for requests safe to repeat) it failed or answered 5xx, the
//! request goes to each `fallback` group in turn — the "Stripe → Razorpay → PayPal" case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::net::TcpListener;

/// `primary` with `extra` keys falls back to `backup` then `last`; one catch-all route.
async fn chain(primary: &str, extra: &str, backup: &str, last: &str) -> Gateway {
    start(config(&format!(
        "[upstreams.primary]\nservers = [\"{primary}\"]\npassive = {{ consecutive_failures = 0 }}\n{extra}\nfallback = [\"backup\", \"last\"]\n\
         [upstreams.backup]\nservers = [\"{backup}\"]\n\
         [upstreams.last]\nservers = [\"{last}\"]\n\
         [[routes]]\nname = \"pay\"\nupstream = \"primary\"\n"
    )))
    .await
}

async fn dead() -> String {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string()
}

async fn fallbacks(gw: &Gateway, upstream: &str) -> f64 {
    metric(gw, &format!("seawall_upstream_fallback_requests_total{{upstream=\"{upstream}\"}}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_sends_every_method_to_the_next_provider_that_answers() {
    let last = Origin::start().await;
    let gw = chain(&dead().await, "", &dead().await, &last.addr.to_string()).await;
    for engine in ENGINES {
        for method in ["GET", "POST"] {
            let req = engine.request(method, "/charge").body(full("amount=5")).unwrap();
            let answer = ask(engine, gw.listen_addr(), req).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?} {method}: {}", answer.body);
            assert_eq!(answer.header("x-origin"), last.addr.port().to_string());
        }
    }
    assert_eq!(fallbacks(&gw, "backup").await, 4.0);
    assert_eq!(fallbacks(&gw, "last").await, 4.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_sends_requests_to_the_fallback_at_once() {
    let (primary, backup) = (Origin::start().await, Origin::start().await);
    let breaker = "breaker = { consecutive_failures = 1, failure_rate = 0.0 }";
    let gw =
        chain(&primary.addr.to_string(), breaker, &backup.addr.to_string(), &dead().await).await;
    // A POST's 500 is passed on (it may have taken effect), and trips the breaker.
    let post = Engine::Http1.request("POST", "/status/500").body(full("x")).unwrap();
    assert_eq!(
        ask(Engine::Http1, gw.listen_addr(), post).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    for engine in ENGINES {
        let post = engine.request("POST", "/charge").body(full("x")).unwrap();
        let answer = ask(engine, gw.listen_addr(), post).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        assert_eq!(answer.header("x-origin"), backup.addr.port().to_string(), "{engine:?}");
    }
    assert_eq!(primary.hits(), 1, "the primary was spared once its breaker opened");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_from_the_primary_falls_back_only_for_requests_safe_to_repeat() {
    let (primary, backup) = (Origin::start().await, Origin::start().await);
    let gw = chain(&primary.addr.to_string(), "", &backup.addr.to_string(), &dead().await).await;
    for engine in ENGINES {
        let get = ask(engine, gw.listen_addr(), engine.get("/status/503")).await;
        // The backup is the same kind of origin: it answers the same path with the same 503,
        // but it is the one that answered.
        assert_eq!(get.header("x-origin"), backup.addr.port().to_string(), "{engine:?}");
        let post = engine.request("POST", "/status/503").body(full("x")).unwrap();
        let post = ask(engine, gw.listen_addr(), post).await;
        assert_eq!(post.header("x-origin"), primary.addr.port().to_string(), "{engine:?}");
        // An Idempotency-Key means nothing to another provider: the charge is not repeated there.
        let keyed = engine.request("POST", "/status/503").header("idempotency-key", "k1");
        let keyed = ask(engine, gw.listen_addr(), keyed.body(full("x")).unwrap()).await;
        assert_eq!(keyed.header("x-origin"), primary.addr.port().to_string(), "{engine:?}");
    }
    gw.shutdown().await;
}
