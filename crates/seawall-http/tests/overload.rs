//! Overload control as a crisis meets it, through both engines: a scaled-down version of
//! `bench/overload.sh`'s drill. An origin that serves 100 requests a second (2 slots × 20 ms)
//! gets five times that, open-loop (requests leave on schedule whatever came back), in a mix of
//! critical (P0), normal (P1) and sheddable (P2) routes. Seawall must keep P0 whole, give what
//! is left to P1, and shed P2 with 503 `overloaded` — nothing else may fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;

/// What came back for one class.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    ok: usize,
    /// Refusals by `x-seawall-reason` (or status when there is none).
    refused: BTreeMap<String, usize>,
    /// The `Retry-After` values of the refusals.
    retry_after: Vec<u32>,
}

async fn gateway(origin: &CapacityOrigin) -> Gateway {
    start(config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"checkout\"\npath_prefix = \"/p0\"\nupstream = \"app\"\npriority = \"P0\"\n\
         [[routes]]\nname = \"browse\"\npath_prefix = \"/p1\"\nupstream = \"app\"\npriority = \"P1\"\n\
         [[routes]]\nname = \"recommend\"\npath_prefix = \"/p2\"\nupstream = \"app\"\npriority = \"P2\"\n",
        origin.addr
    )))
    .await
}

/// Sends `rates` (path, requests per second) for `seconds`, each request on schedule in a task
/// of its own, and tallies the answers per path.
async fn open_loop(
    engine: Engine,
    gw: &Gateway,
    rates: &[(&'static str, f64)],
    seconds: f64,
) -> BTreeMap<&'static str, Tally> {
    let addr = gw.listen_addr();
    let begin = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut sent = vec![0usize; rates.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while begin.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        let due = begin.elapsed().as_secs_f64();
        for (i, (path, rate)) in rates.iter().enumerate() {
            while (sent[i] as f64) < due * rate {
                sent[i] += 1;
                let req = engine.get(path);
                tasks.push((*path, tokio::spawn(try_ask(engine, addr, req))));
            }
        }
    }
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for (path, task) in tasks {
        let tally = tallies.entry(path).or_default();
        tally.sent += 1;
        match task.await.unwrap() {
            Ok(answer) if answer.status == StatusCode::OK => tally.ok += 1,
            Ok(answer) => {
                let reason = match answer.header("x-seawall-reason") {
                    "" => answer.status.to_string(),
                    reason => format!("{} {reason}", answer.status.as_u16()),
                };
                if reason == "503 overloaded" {
                    tally.retry_after.extend(answer.header("retry-after").parse::<u32>().ok());
                }
                *tally.refused.entry(reason).or_default() += 1;
            }
            Err(e) => *tally.refused.entry(format!("no answer: {e}")).or_default() += 1,
        }
    }
    tallies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_times_capacity_keeps_p0_whole_gives_p1_the_rest_and_sheds_p2() {
    for engine in ENGINES {
        let origin = CapacityOrigin::start(2, Duration::from_millis(20)).await;
        let gw = gateway(&origin).await;
        let capacity = origin.capacity();
        // P0 30% of capacity, P1 1.2×, P2 3.5×: five times what the origin serves.
        let rates = [("/p0", 0.3 * capacity), ("/p1", 1.2 * capacity), ("/p2", 3.5 * capacity)];
        let tallies = open_loop(engine, &gw, &rates, 3.0).await;
        let (p0, p1, p2) = (&tallies["/p0"], &tallies["/p1"], &tallies["/p2"]);
        assert_eq!(p0.ok, p0.sent, "{engine:?}: every P0 request succeeds: {tallies:?}");
        assert!(p1.ok > 0, "{engine:?}: P1 gets the capacity P0 leaves: {tallies:?}");
        assert!(p2.ok * 4 < p2.sent, "{engine:?}: P2 is shed: {tallies:?}");
        // Nothing fails but by being shed or bulkheaded: no 502, 504 or lost request.
        for (path, tally) in &tallies {
            for reason in tally.refused.keys() {
                let shed = reason == "503 overloaded" || reason == "503 bulkhead_full";
                assert!(shed, "{engine:?}: {path} got {reason}: {tallies:?}");
            }
        }
        let shed =
            metric(&gw, "seawall_shed_total{route=\"recommend\",priority=\"P2\",reason=\"queue\"}")
                .await;
        assert!(shed > 0.0, "{engine:?}: shed P2 requests are counted");
        // The adaptive limit came down from its calm start towards what the origin serves.
        let limit = metric(&gw, "seawall_upstream_concurrency_limit{upstream=\"app\"}").await;
        assert!(limit < 100.0, "{engine:?}: limit {limit}");
        assert!(origin.served.load(SeqCst) > 0);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_carries_a_jittered_retry_after_and_a_degraded_route_serves_its_stand_in() {
    let origin = CapacityOrigin::start(1, Duration::from_millis(20)).await;
    let gw = start(config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"checkout\"\npath_prefix = \"/p0\"\nupstream = \"app\"\npriority = \"P0\"\n\
         [[routes]]\nname = \"recommend\"\npath_prefix = \"/p2\"\nupstream = \"app\"\npriority = \"P2\"\n\
         degrade = {{ status = 200, body = '{{\"items\":[]}}' }}\n\
         [[routes]]\nname = \"feed\"\npath_prefix = \"/feed\"\nupstream = \"app\"\npriority = \"P2\"\n",
        origin.addr
    )))
    .await;
    let capacity = origin.capacity();
    let rates = [("/p0", 0.5 * capacity), ("/feed", 4.0 * capacity), ("/p2", 4.0 * capacity)];
    let tallies = open_loop(Engine::Http1, &gw, &rates, 2.0).await;
    // The degraded route answers its stand-in instead of a refusal.
    assert!(tallies["/p2"].refused.is_empty(), "{tallies:?}");
    assert!(tallies["/feed"].refused.contains_key("503 overloaded"), "{tallies:?}");
    // Each refusal says when to come back: 5 s by default, drawn from 2.5 to 7.5 s so that
    // refused clients do not return in step.
    let after = &tallies["/feed"].retry_after;
    assert!(after.iter().all(|s| (3..=8).contains(s)), "{after:?}");
    let distinct: std::collections::BTreeSet<_> = after.iter().collect();
    assert!(distinct.len() >= 3, "{distinct:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_sheds_its_own_traffic_not_that_of_an_upstream_that_keeps_up() {
    let slow = CapacityOrigin::start(1, Duration::from_millis(20)).await;
    let fast = Origin::start().await;
    let gw = start(config(&format!(
        "[upstreams.slow]\nservers = [\"{}\"]\n[upstreams.fast]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"slow-p1\"\npath_prefix = \"/slow/p1\"\nupstream = \"slow\"\npriority = \"P1\"\n\
         [[routes]]\nname = \"slow-p2\"\npath_prefix = \"/slow/p2\"\nupstream = \"slow\"\npriority = \"P2\"\n\
         [[routes]]\nname = \"fast-p2\"\npath_prefix = \"/fast/p2\"\nupstream = \"fast\"\npriority = \"P2\"\n",
        slow.addr, fast.addr
    )))
    .await;
    let capacity = slow.capacity();
    let rates = [("/slow/p1", 4.0 * capacity), ("/slow/p2", 2.0 * capacity), ("/fast/p2", 50.0)];
    let tallies = open_loop(Engine::Http1, &gw, &rates, 2.5).await;
    let fast_p2 = &tallies["/fast/p2"];
    assert_eq!(
        fast_p2.ok, fast_p2.sent,
        "P2 to an upstream that keeps up is not shed: {tallies:?}"
    );
    let slow_p2 = &tallies["/slow/p2"];
    assert!(slow_p2.ok * 2 < slow_p2.sent, "the slow upstream's P2 is shed: {tallies:?}");
    let shed_for_waiting =
        metric(&gw, "seawall_shed_total{route=\"slow-p2\",priority=\"P2\",reason=\"wait\"}").await;
    assert!(shed_for_waiting > 0.0, "its P1 waiting sheds its P2 at admission: {tallies:?}");
    assert_eq!(metric(&gw, "seawall_upstream_overload_level{upstream=\"fast\"}").await, 0.0);
    assert_eq!(metric(&gw, "seawall_overload_level").await, 0.0, "the gateway itself is calm");
    gw.shutdown().await;
}

/// What the hostile origin of the next test does with each request.
const FAIL_AT_ONCE: u8 = 0;
const GARBAGE: u8 = 1;
const ANSWER_IN_20MS: u8 = 2;

/// An origin that answers 503 at once, or bytes that are not HTTP, or 200 after 20 ms, as `mode`
/// says at the time each request arrives.
async fn moody_origin(mode: std::sync::Arc<std::sync::atomic::AtomicU8>) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mode = std::sync::Arc::clone(&mode);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while next_head(&mut stream, &mut buf).await.is_some() {
                    let answer: &[u8] = match mode.load(SeqCst) {
                        FAIL_AT_ONCE => {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                        }
                        GARBAGE => b"\x16\x03\x01 not http at all\r\n\r\n",
                        _ => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        }
                    };
                    if stream.write_all(answer).await.is_err() || answer[0] != b'H' {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_failures_and_garbage_from_an_origin_teach_its_adaptive_limit_nothing() {
    for engine in ENGINES {
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(FAIL_AT_ONCE));
        let addr = moody_origin(std::sync::Arc::clone(&mode)).await;
        let gw = start(config(&format!(
            "[upstreams.app]\nservers = [\"{addr}\"]\npassive = {{ consecutive_failures = 0 }}\n\
             [[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"app\"\n"
        )))
        .await;
        let baseline = "seawall_upstream_latency_baseline_seconds{upstream=\"app\"}";
        let burst = |n: usize| {
            let addr = gw.listen_addr();
            async move {
                let asks: Vec<_> =
                    (0..n).map(|_| tokio::spawn(try_ask(engine, addr, engine.get("/x")))).collect();
                let mut answers = Vec::new();
                for ask in asks {
                    answers.push(ask.await.unwrap());
                }
                answers
            }
        };
        // Answers in microseconds, but 503s: an origin failing fast is not an idle one.
        for answer in burst(40).await {
            assert_eq!(answer.unwrap().status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        }
        mode.store(GARBAGE, SeqCst);
        for answer in burst(40).await {
            assert_eq!(answer.unwrap().status, StatusCode::BAD_GATEWAY, "{engine:?}");
        }
        // Two samples of the controller later it has seen all that: still no baseline.
        let samples = "seawall_overload_samples_total";
        let seen = metric(&gw, samples).await;
        eventually(Duration::from_secs(5), "two controller samples", || async {
            metric(&gw, samples).await >= seen + 2.0
        })
        .await;
        assert_eq!(metric(&gw, baseline).await, 0.0, "{engine:?}: nothing was learnt");
        assert_eq!(metric(&gw, "seawall_upstream_concurrency_limit{upstream=\"app\"}").await, 20.0);
        // Real answers, 20 ms each, set the baseline: near 20 ms, not the failures' microseconds.
        mode.store(ANSWER_IN_20MS, SeqCst);
        eventually(Duration::from_secs(10), "a baseline from the real answers", || async {
            for answer in burst(10).await {
                assert_eq!(answer.unwrap().status, StatusCode::OK, "{engine:?}");
            }
            metric(&gw, baseline).await > 0.0
        })
        .await;
        let learnt = metric(&gw, baseline).await;
        assert!(learnt >= 0.015, "{engine:?}: baseline {learnt} s");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stalls_holds_its_slots_only_until_its_timeout() {
    for engine in ENGINES {
        let origin = GatedOrigin::start().await;
        let gw = start(config(&format!(
            "[upstreams.app]\nservers = [\"{}\"]\ntimeout = \"300ms\"\n\
             passive = {{ consecutive_failures = 0 }}\n\
             [[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
            origin.addr
        )))
        .await;
        // 30 requests against a limit of 20: the origin never answers; 20 wait for it until
        // the timeout, 10 wait in Seawall for their slots and then as long.
        let addr = gw.listen_addr();
        let asks: Vec<_> =
            (0..30).map(|_| tokio::spawn(try_ask(engine, addr, engine.get("/stuck")))).collect();
        for ask in asks {
            let answer = bounded(10.0, "a timeout", ask).await.unwrap().unwrap();
            assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
            assert_eq!(answer.header("x-seawall-reason"), "upstream_timeout");
        }
        assert_eq!(origin.arrived.load(SeqCst), 30, "{engine:?}: each went once");
        // Every slot came back; nothing was learnt from requests never answered.
        let inflight = "seawall_upstream_inflight{upstream=\"app\"}";
        assert_eq!(metric(&gw, inflight).await, 0.0, "{engine:?}");
        assert_eq!(metric(&gw, "seawall_upstream_queued{upstream=\"app\"}").await, 0.0);
        assert_eq!(metric(&gw, "seawall_upstream_concurrency_limit{upstream=\"app\"}").await, 20.0);
        // The origin comes back: so does the traffic.
        origin.gate.add_permits(1_000);
        let answer = ask(engine, addr, engine.get("/again")).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}");
        gw.shutdown().await;
    }
}
