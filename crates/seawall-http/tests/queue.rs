//! The durable queue through the gateway, on both engines and both backends (the embedded store in
//! a folder of the test's own, and Redis Streams on 127.0.0.1:6379 under a fresh prefix): a queue
//! route answers 202 once the job is stored and delivers it with its `Idempotency-Key`; failed
//! attempts are retried with backoff, a destination's `Retry-After` holds the whole topic, jobs
//! out of attempts are dead letters the admin API lists, requeues and purges; bounds answer
//! `queue_full` and keep what was accepted; `on_failure = "queue"` takes the writes an upstream
//! cannot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use seawall_http::Gateway;

/// Where the queue keeps its jobs in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Embedded,
    Redis,
}

/// The backends a test runs on: Redis only when it is there (or required).
fn stores() -> Vec<Store> {
    let mut stores = vec![Store::Embedded];
    if redis_at("127.0.0.1:6379") {
        stores.push(Store::Redis);
    }
    stores
}

/// The `[queue]` keys that choose `store`, in a place no other test uses.
fn backend(store: Store) -> String {
    match store {
        Store::Embedded => data_dir_line(),
        Store::Redis => format!(
            "backend = \"redis\"\nredis = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{}\"\n",
            fresh_prefix()
        ),
    }
}

/// A gateway with a topic `emails` delivered to `dest`, routed at `/emails`; `queue`, `topic`
/// and `rest` add keys to `[queue]`, `[queue.topics.emails]` and the end of the file.
async fn gateway(
    store: Store,
    dest: &Destination,
    queue: &str,
    topic: &str,
    rest: &str,
) -> Gateway {
    // Quick retries unless the test sets its own.
    let backoff =
        if topic.contains("backoff") { "" } else { "backoff = \"20ms\"\nmax_backoff = \"50ms\"\n" };
    let body = format!(
        "[queue]\n{}{queue}\n[queue.topics.emails]\n{backoff}{topic}\n\
         [upstreams.mailer]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n{rest}",
        backend(store),
        dest.addr
    );
    start(config(&body)).await
}

fn post(engine: Engine, path: &str, body: &'static str) -> Request<TestBody> {
    engine
        .request("POST", path)
        .header("content-type", "application/json")
        .header("authorization", "Bearer secret-of-the-client")
        .header("x-request-id", "order-42")
        .body(full(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_answered_202_once_stored_and_delivered_with_its_idempotency_key() {
    for store in stores() {
        for engine in ENGINES {
            let dest = Destination::start().await;
            let gw = gateway(store, &dest, "", "", "").await;
            let answer = ask(
                engine,
                gw.listen_addr(),
                post(engine, "/emails/send?to=a%40b", "{\"to\":\"a@b\"}"),
            )
            .await;
            let id = job_id(&answer);
            let status = until_status(&gw, &id, "delivered").await;
            assert_eq!(status["attempts"], 1, "{store:?} {engine:?}");
            assert!(status["finished"].is_string());
            let calls = dest.calls();
            assert_eq!(calls.len(), 1, "{store:?} {engine:?}: delivered once");
            let call = &calls[0];
            assert_eq!(
                (call.method.as_str(), call.target.as_str()),
                ("POST", "/emails/send?to=a%40b")
            );
            assert_eq!(call.body, Bytes::from_static(b"{\"to\":\"a@b\"}"));
            assert_eq!(call.key(), id, "Idempotency-Key is the job id");
            assert_eq!(call.headers["content-type"], "application/json");
            assert_eq!(call.headers["x-request-id"], "order-42", "the request's id goes along");
            // A queue route's destination is addressed by its own name, not the client's host.
            assert_eq!(call.headers["host"], dest.addr.to_string(), "{store:?} {engine:?}");
            // Not in queue.headers: credentials are not stored unless asked for.
            assert!(call.headers.get("authorization").is_none(), "{store:?} {engine:?}");
            gw.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_answering_429_with_retry_after_is_not_called_again_sooner() {
    for store in stores() {
        let dest = Destination::start().await;
        dest.script(&[(429, Some("2"))]);
        let topic = "backoff = \"20ms\"\nmax_backoff = \"10s\"\n";
        let gw = gateway(store, &dest, "", topic, "").await;
        let first = job_id(
            &ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "1")).await,
        );
        // Wait for the 429, then queue more: they wait too.
        eventually(Duration::from_secs(5), "the first call", || async { !dest.calls().is_empty() })
            .await;
        let mut ids = vec![first];
        for engine in ENGINES {
            ids.push(job_id(&ask(engine, gw.listen_addr(), post(engine, "/emails", "2")).await));
        }
        let held = until_status(&gw, &ids[0], "failed").await;
        assert_eq!(held["last_error"], "the destination answered 429");
        assert!(held["next_attempt"].is_string());
        for id in &ids {
            until_status(&gw, id, "delivered").await;
        }
        let calls = dest.calls();
        assert_eq!(calls[0].status, 429);
        for later in &calls[1..] {
            let after = later.at - calls[0].at;
            assert!(
                after >= Duration::from_millis(1990),
                "{store:?}: called again after {after:?}"
            );
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jobs_are_retried_then_dead_and_the_admin_api_requeues_and_purges_them() {
    for store in stores() {
        let dest = Destination::start().await;
        dest.answer_with(503);
        let gw = gateway(store, &dest, "", "max_attempts = 3\n", "").await;
        let id =
            job_id(&ask(Engine::H2c, gw.listen_addr(), post(Engine::H2c, "/emails", "x")).await);
        let dead = until_status(&gw, &id, "dead").await;
        assert_eq!(dead["attempts"], 3, "{store:?}");
        assert_eq!(dead["last_error"], "the destination answered 503");
        assert_eq!(dest.calls().len(), 3);
        assert!(dest.calls().iter().all(|c| c.key() == id), "the same key on every attempt");
        // A refusal that will not change: dead at once.
        dest.answer_with(400);
        let refused = job_id(
            &ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "y")).await,
        );
        let status = until_status(&gw, &refused, "dead").await;
        assert_eq!(status["attempts"], 1);

        let listed = admin_call(&gw, "GET", "/api/v1/queue/emails/dead").await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        let dead_ids: Vec<String> = listed.json()["dead"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(dead_ids.len(), 2, "{store:?}: {dead_ids:?}");
        assert!(dead_ids.contains(&id) && dead_ids.contains(&refused));
        assert_eq!(metric(&gw, "seawall_queue_dead{topic=\"emails\"}").await, 2.0);

        // Requeued after the destination is mended: delivered.
        dest.answer_with(200);
        let requeued =
            admin_call(&gw, "POST", &format!("/api/v1/queue/emails/dead/{id}/requeue")).await;
        assert_eq!(requeued.json()["requeued"], 1, "{}", requeued.body);
        let delivered = until_status(&gw, &id, "delivered").await;
        assert_eq!(delivered["attempts"], 1, "attempts start again");
        // Purged: gone.
        let purged = admin_call(&gw, "DELETE", "/api/v1/queue/emails/dead").await;
        assert_eq!(purged.json()["purged"], 1, "{}", purged.body);
        let gone = get(gw.listen_addr(), &format!("/jobs/{refused}")).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{store:?}: {}", gone.body);
        assert_eq!(metric(&gw, "seawall_queue_dead{topic=\"emails\"}").await, 0.0);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_bounds_the_queue_answers_queue_full_and_keeps_what_it_accepted() {
    for store in stores() {
        let dest = Destination::start().await;
        let gw = gateway(store, &dest, "", "max_jobs = 2\npaused = true\n", "").await;
        let mut ids = Vec::new();
        for engine in ENGINES {
            ids.push(job_id(&ask(engine, gw.listen_addr(), post(engine, "/emails", "kept")).await));
        }
        for engine in ENGINES {
            let full = ask(engine, gw.listen_addr(), post(engine, "/emails", "over")).await;
            assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "{store:?} {engine:?}");
            assert_eq!(full.header("x-seawall-reason"), "queue_full");
            assert_eq!(full.header("retry-after"), "5");
            assert!(full.body.contains("max_jobs"), "{}", full.body);
        }
        let state = admin(&gw, "/api/v1/state").await.json();
        let topic = &state["queue"]["topics"]["emails"];
        assert_eq!(topic["depth"], 2, "{state}");
        assert_eq!(topic["paused"], true);
        assert_eq!(topic["refused_full"], 2);
        assert!(dest.calls().is_empty(), "paused: nothing delivered");
        let resumed = admin_call(&gw, "POST", "/api/v1/queue/emails/resume").await;
        assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
        for id in &ids {
            until_status(&gw, id, "delivered").await;
        }
        assert_eq!(dest.delivered().len(), 2);
        // Room again.
        job_id(
            &ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "again")).await,
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_is_refused_413_and_nothing_is_stored() {
    let dest = Destination::start().await;
    let gw = gateway(Store::Embedded, &dest, "max_body = 16\n", "", "").await;
    for engine in ENGINES {
        let big = engine.request("POST", "/emails").body(full(vec![b'x'; 64])).unwrap();
        let answer = ask(engine, gw.listen_addr(), big).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{engine:?}: {}", answer.body);
        // A streamed body over the cap too.
        let (tx, body) = channel_body();
        let req = engine.request("POST", "/emails").body(body).unwrap();
        let sending = tokio::spawn(async move {
            for _ in 0..4 {
                if tx.send(Bytes::from_static(&[b'y'; 10])).await.is_err() {
                    break;
                }
            }
        });
        let answer = ask(engine, gw.listen_addr(), req).await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{engine:?} streamed: {}",
            answer.body
        );
        let _ = sending.await;
    }
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["queue"]["topics"]["emails"]["enqueued"], 0, "{state}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_queue_stores_the_writes_an_upstream_cannot_take() {
    // An address nothing listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let body = format!(
        "[queue]\n{}\n[queue.topics.payments]\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n\
         [upstreams.payments]\nservers = [\"{addr}\"]\nconnect_timeout = \"200ms\"\nbreaker = {{ min_requests = 1000 }}\n\
         [[routes]]\nname = \"payments\"\npath_prefix = \"/pay\"\nupstream = \"payments\"\non_failure = \"queue\"\n",
        backend(Store::Embedded)
    );
    let gw = start(config(&body)).await;
    let mut ids = Vec::new();
    for engine in ENGINES {
        let answer =
            ask(engine, gw.listen_addr(), post(engine, "/pay/charge", "{\"cents\":100}")).await;
        ids.push(job_id(&answer));
    }
    // A read is not queued: the client wants its answer now.
    let read = get(gw.listen_addr(), "/pay/status").await;
    assert_eq!(read.status, StatusCode::BAD_GATEWAY, "{}", read.body);
    // The provider comes back: the stored writes reach it.
    let dest = Destination::start_at(addr).await;
    for id in &ids {
        until_status(&gw, id, "delivered").await;
    }
    let calls = dest.calls();
    assert!(calls.iter().all(|c| c.target == "/pay/charge" && c.body == "{\"cents\":100}"));
    // The route preserves the host (the default): so does its queued delivery.
    assert!(calls.iter().all(|c| c.headers["host"] == "test.local"), "{calls:?}");
    // With the provider up, writes go straight through.
    let direct =
        ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/pay/charge", "now")).await;
    assert_eq!(direct.status, StatusCode::OK, "{}", direct.body);
    // Its breaker forced open: queued again.
    let req = Request::post("/api/v1/upstreams/payments/breaker").header("host", "admin");
    let forced =
        send(gw.admin_addr(), req.body(Full::new(Bytes::from("{\"state\":\"open\"}"))).unwrap())
            .await;
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.body);
    let queued =
        ask(Engine::H2c, gw.listen_addr(), post(Engine::H2c, "/pay/charge", "later")).await;
    job_id(&queued);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_endpoint_answers_404_for_unknown_ids_leaves_other_paths_and_is_rate_limited() {
    let dest = Destination::start().await;
    let rest = "[rate_limits.jobs]\nkey = \"ip\"\nrate = \"3/min\"\n";
    let gw = gateway(Store::Embedded, &dest, "jobs_rate_limit = \"jobs\"\n", "", rest).await;
    for engine in ENGINES {
        let unknown =
            ask(engine, gw.listen_addr(), engine.get("/jobs/0123456789abcdef0123456789abcdef"))
                .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{engine:?}");
        assert_eq!(unknown.header("x-seawall-reason"), "job_not_found");
    }
    // Not an id: the jobs endpoint leaves it to the routes (an application's own /jobs/42).
    let malformed = get(gw.listen_addr(), "/jobs/../../etc/passwd").await;
    assert_eq!(malformed.status, StatusCode::NOT_FOUND);
    assert_eq!(malformed.header("x-seawall-reason"), "no_route");
    let third = get(gw.listen_addr(), "/jobs/0123456789ABCDEF0123456789abcdef").await;
    assert_eq!(third.header("x-seawall-reason"), "job_not_found", "ids in either case");
    let limited = get(gw.listen_addr(), "/jobs/0123456789abcdef0123456789abcdef").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{}", limited.body);
    assert!(!limited.header("retry-after").is_empty());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_rate_spaces_its_deliveries() {
    let dest = Destination::start().await;
    let gw = gateway(Store::Embedded, &dest, "", "rate = \"4/s\"\npaused = true\n", "").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(job_id(
            &ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "r")).await,
        ));
    }
    admin_call(&gw, "POST", "/api/v1/queue/emails/resume").await;
    for id in &ids {
        until_status(&gw, id, "delivered").await;
    }
    // A burst of 4 at once, then one every 250 ms: the 8th is at least 1 s after the first.
    let calls = dest.calls();
    let spread = calls[7].at - calls[0].at;
    assert!(spread >= Duration::from_millis(950), "8 deliveries at 4/s took {spread:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_show_in_state_and_metrics() {
    let dest = Destination::start().await;
    let gw = gateway(Store::Embedded, &dest, "", "", "").await;
    let id =
        job_id(&ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "m")).await);
    until_status(&gw, &id, "delivered").await;
    assert_eq!(metric(&gw, "seawall_queue_enqueued_total{topic=\"emails\"}").await, 1.0);
    assert_eq!(metric(&gw, "seawall_queue_delivered_total{topic=\"emails\"}").await, 1.0);
    assert_eq!(metric(&gw, "seawall_queue_delivery_seconds_count{topic=\"emails\"}").await, 1.0);
    assert_eq!(metric(&gw, "seawall_queue_depth{topic=\"emails\"}").await, 0.0);
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["queue"]["backend"], "embedded");
    assert_eq!(state["queue"]["topics"]["emails"]["delivered"], 1);
    let route = &state["routes"][0];
    assert_eq!(
        (route["action"].as_str(), route["topic"].as_str()),
        (Some("queue"), Some("emails"))
    );
    let paused = admin_call(&gw, "POST", "/api/v1/queue/emails/pause").await;
    assert_eq!(paused.json()["paused"], true);
    let unknown = admin_call(&gw, "POST", "/api/v1/queue/nope/pause").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_shed_by_overload_control_is_queued_on_an_on_failure_route() {
    let origin = Origin::start().await;
    // No test process fits in 2 MiB: overload level 2 at once, P1 shed.
    let body = format!(
        "[overload]\ncpu = \"off\"\nmemory_budget = \"2MiB\"\n\
         [queue]\n{}\n[queue.topics.orders]\npaused = true\n\
         [upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"app\"\non_failure = \"queue\"\n",
        data_dir_line(),
        origin.addr
    );
    let gw = start(config(&body)).await;
    eventually(Duration::from_secs(10), "overload level 2", || async {
        metric(&gw, "seawall_overload_level").await == 2.0
    })
    .await;
    for engine in ENGINES {
        let stored = ask(engine, gw.listen_addr(), post(engine, "/orders", "{\"sku\":1}")).await;
        job_id(&stored);
        // A read on the same route is shed as before: nobody wants its answer later.
        let shed = ask(engine, gw.listen_addr(), engine.get("/orders/1")).await;
        assert_eq!(shed.header("x-seawall-reason"), "overloaded", "{engine:?}");
    }
    assert_eq!(origin.hits(), 0);
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["queue"]["topics"]["orders"]["depth"], 2, "{state}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_answers_queue_full_never_202() {
    let Some(mut redis) = OwnRedis::start() else { return };
    let dest = Destination::start().await;
    let body = format!(
        "[queue]\nbackend = \"redis\"\nredis = \"redis://{}\"\n\
         [upstreams.mailer]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n",
        redis.addr, dest.addr
    );
    let gw = start(config(&body)).await;
    job_id(&ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "before")).await);
    redis.stop();
    for engine in ENGINES {
        let refused = ask(engine, gw.listen_addr(), post(engine, "/emails", "during")).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}: {}", refused.body);
        assert_eq!(refused.header("x-seawall-reason"), "queue_full");
        assert!(refused.body.contains("could not be stored"), "{}", refused.body);
        assert!(!refused.header("retry-after").is_empty());
    }
    assert_eq!(metric(&gw, "seawall_queue_refused_error_total{topic=\"emails\"}").await, 2.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_body_gets_408_and_stores_nothing_on_both_engines() {
    let dest = Destination::start().await;
    let body = format!(
        "[queue]\n{}\n[upstreams.mailer]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n",
        data_dir_line(),
        dest.addr
    );
    let gw = start(config_with_server("body_timeout = \"300ms\"", &body)).await;
    // HTTP/1.1: 4 of 10 bytes, then silence (the connection stays open).
    let mut stalled = tokio::net::TcpStream::connect(gw.listen_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stalled,
        b"POST /emails HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabcd",
    )
    .await
    .unwrap();
    let answer = bounded(5.0, "the 408", read_to_close(&mut stalled)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    // h2c: part of a streamed body, then silence (the stream stays open).
    let (tx, streamed) = channel_body();
    tx.send(Bytes::from_static(b"part")).await.unwrap();
    let req = Engine::H2c.request("POST", "/emails").body(streamed).unwrap();
    let answer = ask(Engine::H2c, gw.listen_addr(), req).await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT, "{}", answer.body);
    drop(tx);
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["queue"]["topics"]["emails"]["enqueued"], 0, "{state}");
    assert!(dest.calls().is_empty());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_half_closes_or_vanishes_without_answering_is_retried_then_dead() {
    // Reads each request, then either half-closes (no answer) or drops the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            if n.is_multiple_of(2) {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            }
        }
    });
    let body = format!(
        "[queue]\n{}\n[queue.topics.emails]\nmax_attempts = 3\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n\
         [upstreams.mailer]\nservers = [\"{addr}\"]\npassive = {{ consecutive_failures = 0 }}\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n",
        data_dir_line()
    );
    let gw = start(config(&body)).await;
    for engine in ENGINES {
        let id = job_id(&ask(engine, gw.listen_addr(), post(engine, "/emails", "x")).await);
        let dead = until_status(&gw, &id, "dead").await;
        assert_eq!(dead["attempts"], 3, "{engine:?}: {dead}");
        let error = dead["last_error"].as_str().unwrap();
        assert!(error.starts_with("upstream_error"), "{engine:?}: {error}");
    }
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 6);
    gw.shutdown().await;
}
