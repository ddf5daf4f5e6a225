//! Shedding driven by the machine, end to end: the gateway's own CPU past `p2_at` sheds P2 with
//! 503 `overloaded` (reason `cpu`) while P1 and P0 flow, and when the CPU is calm again the level
//! comes back down after its dwell time; memory past its hard watermark serves only P0. The
//! gateway runs in this test's process, so a thread spinning here is the gateway's CPU; in a
//! binary of its own, nothing else adds much to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_cpu_past_p2_at_sheds_p2_until_it_is_calm_again() {
    let origin = Origin::start().await;
    let gw = start(config(&format!(
        "[overload]\ncpu = \"process\"\np2_at = 0.3\np1_at = 0.99\np0_at = 1.0\nmin_dwell = \"300ms\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"recommend\"\npath_prefix = \"/p2\"\nupstream = \"app\"\npriority = \"P2\"\n\
         [[routes]]\nname = \"browse\"\nupstream = \"app\"\n",
        origin.addr
    )))
    .await;
    // One core of two kept busy: half the CPU this process may use.
    let spinning = Arc::new(AtomicBool::new(true));
    let spinner = {
        let spinning = Arc::clone(&spinning);
        std::thread::spawn(move || {
            while spinning.load(SeqCst) {
                std::hint::spin_loop();
            }
        })
    };
    eventually(Duration::from_secs(10), "overload level 1", || async {
        metric(&gw, "seawall_overload_level").await == 1.0
    })
    .await;
    for engine in ENGINES {
        let shed = ask(engine, gw.listen_addr(), engine.get("/p2/feed")).await;
        assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(shed.header("x-seawall-reason"), "overloaded");
        assert!(shed.json()["detail"].as_str().unwrap().contains("CPU"), "{}", shed.body);
        let after: u32 = shed.header("retry-after").parse().unwrap();
        assert!((3..=8).contains(&after), "retry-after {after}");
        let flows = ask(engine, gw.listen_addr(), engine.get("/browse")).await;
        assert_eq!(flows.status, StatusCode::OK, "{engine:?}: P1 is not shed at level 1");
    }
    let counted =
        metric(&gw, "seawall_shed_total{route=\"recommend\",priority=\"P2\",reason=\"cpu\"}").await;
    assert_eq!(counted, 2.0);
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["overload"]["cause"], "cpu");
    assert_eq!(state["overload"]["crisis"], true, "crisis mode follows level 1");
    spinning.store(false, SeqCst);
    spinner.join().unwrap();
    eventually(Duration::from_secs(10), "overload level back to 0", || async {
        metric(&gw, "seawall_overload_level").await == 0.0
    })
    .await;
    let back = ask(Engine::Http1, gw.listen_addr(), Engine::Http1.get("/p2/feed")).await;
    assert_eq!(back.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_past_its_hard_watermark_serves_only_p0() {
    let origin = Origin::start().await;
    // No test process fits in 2 MiB: the memory signal is past its hard watermark at once.
    let gw = start(config(&format!(
        "[overload]\ncpu = \"off\"\nmemory_budget = \"2MiB\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"login\"\npath_prefix = \"/login\"\nupstream = \"app\"\npriority = \"P0\"\n\
         [[routes]]\nname = \"browse\"\nupstream = \"app\"\n",
        origin.addr
    )))
    .await;
    eventually(Duration::from_secs(10), "overload level 2", || async {
        metric(&gw, "seawall_overload_level").await == 2.0
    })
    .await;
    assert!(metric(&gw, "seawall_overload_signal{signal=\"memory\"}").await > 1.0);
    for engine in ENGINES {
        let critical = ask(engine, gw.listen_addr(), engine.get("/login")).await;
        assert_eq!(critical.status, StatusCode::OK, "{engine:?}: P0 is served");
        let shed = ask(engine, gw.listen_addr(), engine.get("/browse")).await;
        assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert_eq!(shed.header("x-seawall-reason"), "overloaded");
        assert!(shed.json()["detail"].as_str().unwrap().contains("memory"), "{}", shed.body);
    }
    let counted =
        metric(&gw, "seawall_shed_total{route=\"browse\",priority=\"P1\",reason=\"memory\"}").await;
    assert_eq!(counted, 2.0);
    // The memory guard keeps a quarter of the cache (64 MiB by default) past the hard watermark.
    let capacity = metric(&gw, "seawall_cache_capacity_bytes{layer=\"l1\"}").await;
    assert_eq!(capacity, (16u64 << 20) as f64);
    gw.shutdown().await;
}
