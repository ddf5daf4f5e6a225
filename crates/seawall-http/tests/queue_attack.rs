//! Attacks on the durable queue (issue 13) through the gateway, as a hostile client, origin and
//! operator. Each test states what should hold; the ones named in the report fail while their
//! defect is there. The last ones check what held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use seawall_http::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Topic `emails` (embedded store) delivered to `dest`, routed at `/emails`.
async fn gateway(dest: &Destination, queue: &str, topic: &str) -> Gateway {
    let body = format!(
        "[queue]\n{}{queue}\n[queue.topics.emails]\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n{topic}\n\
         [upstreams.mailer]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n",
        data_dir_line(),
        dest.addr
    );
    start(config(&body)).await
}

fn post(engine: Engine, path: &str, body: &'static str) -> Request<TestBody> {
    engine
        .request("POST", path)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Defects
// ---------------------------------------------------------------------------------------------

/// An HTTP/2 client sends its whole request, then resets the stream while the job's commit is
/// waiting (`commit_delay`). hyper drops the handler's future: `Embedded::enqueue` never runs
/// what follows its `.await` — the writer commits the job, but the index never learns of it and
/// the reservation is never given back. The job is on disk yet never delivered (until a
/// restart), and the topic (`max_jobs = 1`) answers `queue_full` to everyone from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_resetting_during_the_commit_neither_strands_its_job_nor_fills_the_topic() {
    let dest = Destination::start().await;
    let gw = gateway(&dest, "commit_delay = \"100ms\"\n", "max_jobs = 1\n").await;
    let mut client = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let req = post(Engine::H2c, "/emails", "{\"to\":\"a@b\"}");
    // The request and its body go out; the answer is not waited for: RST_STREAM (CANCEL).
    let gave_up = tokio::time::timeout(Duration::from_millis(40), client.send(req)).await;
    assert!(gave_up.is_err(), "no answer within 40 ms: the commit waits 100 ms");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Whatever was stored gets delivered; then there is room again.
    let delivered = tokio::time::timeout(Duration::from_secs(5), async {
        while dest.calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let state = admin(&gw, "/api/v1/state").await.json();
    let topic = state["queue"]["topics"]["emails"].clone();
    let next = ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "{}")).await;
    assert!(
        delivered.is_ok() || topic["depth"] == 0,
        "the reset request's job is stored (depth {}) but never delivered: {topic}",
        topic["depth"]
    );
    assert_eq!(
        next.status,
        StatusCode::ACCEPTED,
        "the topic stays full for ever after one reset request: {} {topic}",
        next.body
    );
    client.close();
    gw.shutdown().await;
}

/// `on_failure = "queue"` on a route that rewrites its path (`strip_prefix`): live traffic reaches
/// the upstream at `/charge`, but the job stores the client's target and the courier sends it
/// unchanged (`edits: None`, no `crate::edge::target`): the provider gets `/pay/charge`, answers
/// 404, and the job is a dead letter at its first attempt. The write is lost to the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_queue_delivers_to_the_path_the_route_rewrites_to() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let body = format!(
        "[queue]\n{}\n[queue.topics.payments]\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\n\
         [upstreams.payments]\nservers = [\"{addr}\"]\nconnect_timeout = \"200ms\"\nbreaker = {{ min_requests = 1000 }}\n\
         [[routes]]\nname = \"payments\"\npath_prefix = \"/pay\"\nprefix_match = \"segment\"\nstrip_prefix = true\n\
         upstream = \"payments\"\non_failure = \"queue\"\n\
         request_headers = {{ set = {{ x-tenant = \"acme\" }} }}\n",
        data_dir_line()
    );
    let gw = start(config(&body)).await;
    let mut ids = Vec::new();
    for engine in ENGINES {
        let answer =
            ask(engine, gw.listen_addr(), post(engine, "/pay/charge", "{\"cents\":100}")).await;
        ids.push(job_id(&answer));
    }
    let dest = Destination::start_at(addr).await;
    // What the route sends live, for comparison.
    let live =
        ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/pay/charge", "live")).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.body);
    for id in &ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = job(&gw, id).await;
            if s["status"] == "delivered" || s["status"] == "dead" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let calls = dest.calls();
    let seen: Vec<(String, String, u16)> = calls
        .iter()
        .map(|c| {
            let tenant = c.headers.get("x-tenant").map_or("-", |v| v.to_str().unwrap());
            (c.target.clone(), tenant.to_string(), c.status)
        })
        .collect();
    let live_call = calls.iter().find(|c| c.body == "live").expect("the live call");
    assert_eq!(live_call.target, "/charge", "the live request is rewritten");
    for c in calls.iter().filter(|c| c.body != "live") {
        assert_eq!(
            c.target, "/charge",
            "a queued write is delivered to another path than the route sends it to: {seen:?}"
        );
        assert_eq!(
            c.headers.get("x-tenant").map(|v| v.to_str().unwrap()),
            Some("acme"),
            "a queued write is delivered without the route's request_headers: {seen:?}"
        );
    }
    gw.shutdown().await;
}

/// A hostile (or broken) destination answers `503` with `Retry-After: 18446744073709551615`.
/// `retry_after` gives `Duration::from_secs(u64::MAX)`; `as_millis() as u64` wraps, and
/// `now + asked` (seawall-queue/src/delivery.rs:178) overflows: a panic in the attempt's task
/// (debug and test builds — DESIGN: "never a panic"). The task dies before it settles: the job
/// stays leased for ever and `in_flight` is never given back. In release builds the addition
/// wraps instead. Either way a `Retry-After` must be bounded (by `max_backoff`, here 50 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_u64_max_neither_panics_nor_strands_the_job() {
    let dest = Destination::start().await;
    dest.script(&[(503, Some("18446744073709551615"))]);
    let gw = gateway(&dest, "", "").await;
    let id =
        job_id(&ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "1")).await);
    let s = until_status_within(&gw, &id, "delivered", Duration::from_secs(10)).await;
    assert_eq!(s["attempts"], 2, "{s}");
    gw.shutdown().await;
}

/// `Retry-After: 100000000` (three years) holds the whole topic for three years: nothing caps it,
/// and the operator's `resume` does not lift a hold (only `paused` is switched) — the job's own
/// `next_attempt` is three years away too. One answer of one destination stops a topic until
/// the process restarts (and the job's next attempt survives the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_cannot_hold_a_topic_for_years_and_resume_lifts_a_hold() {
    let dest = Destination::start().await;
    dest.script(&[(429, Some("100000000"))]);
    let gw = gateway(&dest, "", "").await;
    let id =
        job_id(&ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "1")).await);
    let failed = until_status_within(&gw, &id, "failed", Duration::from_secs(10)).await;
    let state = admin(&gw, "/api/v1/state").await.json();
    let held = state["queue"]["topics"]["emails"]["held_for_ms"].as_u64().unwrap();
    let paused = admin_call(&gw, "POST", "/api/v1/queue/emails/pause").await;
    assert_eq!(paused.status, StatusCode::OK);
    let resumed = admin_call(&gw, "POST", "/api/v1/queue/emails/resume").await;
    assert_eq!(resumed.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = job(&gw, &id).await;
        if s["status"] == "delivered" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "held for {held} ms (next attempt {}) and still held after pause+resume: {s}",
            failed["next_attempt"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}

/// `Expect: 100-continue` with a `Content-Length` over `queue.max_body` (but under the route's
/// body limit, which is all admission checks): the HTTP/1.1 engine answers `100 Continue`,
/// invites and reads `max_body` bytes, and only then refuses 413. The length was known from the
/// head: it should be refused before the body is invited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_over_queue_max_body_is_refused_before_the_body_is_invited() {
    let dest = Destination::start().await;
    let gw = gateway(&dest, "max_body = 16\n", "").await;
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /emails HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("an answer to the head")
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.starts_with("HTTP/1.1 413"), "the body is invited first: {first:?}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// What held
// ---------------------------------------------------------------------------------------------

/// Pipelined on one HTTP/1.1 connection: a chunked POST (with a trailer), a POST with
/// `Content-Length`, a HEAD and a GET of the jobs endpoint (id in upper case), then one more
/// POST. Each gets its own answer, in order, nothing is taken for the next request, and the
/// stored bodies are the decoded ones with no framing fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_around_a_202_stay_in_step() {
    let dest = Destination::start().await;
    let gw = gateway(&dest, "headers = [\"content-type\", \"x-keep\"]\n", "paused = true\n").await;
    let mut stream = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let first =
        b"POST /emails/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX-Keep: 1\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
                  POST /emails/b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
    stream.write_all(first).await.unwrap();
    // Read the two 202s.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while String::from_utf8_lossy(&got).matches("HTTP/1.1 202").count() < 2 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let ids: Vec<String> = text
        .match_indices("\"job\":\"")
        .map(|(i, m)| text[i + m.len()..i + m.len() + 32].to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    let upper = ids[0].to_ascii_uppercase();
    let second = format!(
        "HEAD /jobs/{upper} HTTP/1.1\r\nHost: t\r\n\r\nGET /jobs/{upper} HTTP/1.1\r\nHost: t\r\n\r\n\
         POST /emails/c HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    );
    stream.write_all(second.as_bytes()).await.unwrap();
    let rest = read_to_close(&mut stream).await;
    // A body has no line end of its own: the next status line follows it directly.
    let statuses: Vec<&str> =
        rest.match_indices("HTTP/1.1 ").map(|(i, _)| &rest[i..i + 12]).collect();
    assert_eq!(statuses.len(), 3, "{rest}");
    assert!(statuses[0].starts_with("HTTP/1.1 200"), "{rest}");
    assert!(statuses[1].starts_with("HTTP/1.1 200"), "{rest}");
    assert!(statuses[2].starts_with("HTTP/1.1 202"), "{rest}");
    // Deliver and look at what the destination got.
    let resumed = admin_call(&gw, "POST", "/api/v1/queue/emails/resume").await;
    assert_eq!(resumed.status, StatusCode::OK);
    eventually(Duration::from_secs(10), "three deliveries", || async { dest.calls().len() >= 3 })
        .await;
    let calls = dest.calls();
    let a = calls.iter().find(|c| c.target == "/emails/a").unwrap();
    assert_eq!(a.body, "hello world");
    assert_eq!(a.headers.get("x-keep").unwrap(), "1");
    assert!(a.headers.get("transfer-encoding").is_none() && a.headers.get("x-trailer").is_none());
    assert_eq!(a.headers.get("content-length").unwrap(), "11");
    let b = calls.iter().find(|c| c.target == "/emails/b").unwrap();
    assert_eq!(b.body, "abc");
    gw.shutdown().await;
}

/// Admin: topics that do not exist, percent-encoded names, bad ids, and no token... (the test
/// gateway's admin listener has no token: only the shapes are checked here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_queue_endpoints_refuse_unknown_topics_and_bad_ids() {
    let dest = Destination::start().await;
    let gw = gateway(&dest, "", "").await;
    let unknown = admin_call(&gw, "POST", "/api/v1/queue/nope/pause").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    let traversal = admin_call(&gw, "POST", "/api/v1/queue/..%2Femails/pause").await;
    assert_eq!(traversal.status, StatusCode::NOT_FOUND, "{}", traversal.body);
    let bad = admin_call(&gw, "POST", "/api/v1/queue/emails/dead/xyz/requeue").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let encoded = admin_call(&gw, "POST", "/api/v1/queue/%65mails/pause").await;
    assert_eq!(encoded.status, StatusCode::OK, "{}", encoded.body);
    let jobs = get(gw.listen_addr(), "/jobs/../admin").await;
    assert_eq!(jobs.status, StatusCode::NOT_FOUND, "{}", jobs.body);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Reloads and configuration
// ---------------------------------------------------------------------------------------------

fn queue_config(dest: &Destination, dir: &str, topic: &str) -> seawall_config::Config {
    config(&format!(
        "[queue]\n{dir}\n[queue.topics.emails]\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 3\n{topic}\n\
         [upstreams.mailer]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n",
        dest.addr
    ))
}

/// A reload that removes `[queue]` says "its jobs stay stored, undelivered, until it comes
/// back" (state.rs). But `Queue::reconfigure` is not called, so the queue keeps its old
/// configuration: the delivery loops go on, and the courier — which reads the *snapshot's*
/// queue, now `None` — answers every attempt "topic has no destination" (a `Retry`). After
/// `max_attempts` of them every pending job is a dead letter, never having been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_queue_on_a_reload_keeps_the_jobs_instead_of_killing_them() {
    let dest = Destination::start().await;
    let dir = data_dir_line();
    let gw = start(queue_config(&dest, &dir, "paused = true\n")).await;
    let id =
        job_id(&ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "1")).await);
    // The operator takes the queue out for a while: the route goes with it.
    let without = config(&format!(
        "[upstreams.mailer]\nservers = [\"{}\"]\n[[routes]]\nname = \"rest\"\nupstream = \"mailer\"\n",
        dest.addr
    ));
    gw.shared().apply(without);
    // The topic (still known to the admin API) is resumed.
    let resumed = admin_call(&gw, "POST", "/api/v1/queue/emails/resume").await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead = admin(&gw, "/api/v1/queue/emails/dead").await;
    let dead = dead.json();
    assert!(
        dead["dead"].as_array().unwrap().is_empty(),
        "job {id} was killed while [queue] was out of the configuration (never sent: {} calls): {dead}",
        dest.calls().len()
    );
    gw.shutdown().await;
}

/// A reload that writes `paused = true` for an existing topic changes nothing:
/// `Queue::reconfigure` only reads `paused` for topics it has not seen (`or_insert_with`).
/// The operator's "stop delivering" in the file is silently ignored until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_pauses_a_topic_pauses_it() {
    let dest = Destination::start().await;
    let dir = data_dir_line();
    let gw = start(queue_config(&dest, &dir, "")).await;
    gw.shared().apply(queue_config(&dest, &dir, "paused = true\n"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = admin(&gw, "/api/v1/state").await.json();
    let _ = ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "1")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        dest.calls().is_empty(),
        "delivered although the reloaded configuration pauses the topic: {}",
        state["queue"]["topics"]["emails"]
    );
    gw.shutdown().await;
}

/// The jobs endpoint is answered before the routes, at `/jobs/` unless configured. Adding any
/// queue to a gateway whose application has its own `GET /jobs/...` silently takes those
/// requests from it (404 `job_not_found`); the configuration neither refuses nor warns about a
/// route that `jobs_path` shadows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_endpoint_does_not_silently_shadow_an_applications_own_jobs_path() {
    let origin = Origin::start().await;
    let dest = Destination::start().await;
    let src = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\n[overload]\ncpu = \"off\"\n\
         [queue]\n{}\n[queue.topics.emails]\n\
         [upstreams.mailer]\nservers = [\"{}\"]\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n\
         [[routes]]\nname = \"app\"\nupstream = \"app\"\n",
        data_dir_line(),
        dest.addr,
        origin.addr
    );
    let parsed = seawall_config::parse(&src, "test.toml");
    let Ok(cfg) = parsed else { return };
    let gw = start(cfg).await;
    let answer = get(gw.listen_addr(), "/jobs/42").await;
    assert_ne!(
        answer.header("x-seawall-reason"),
        "job_not_found",
        "the application's GET /jobs/42 is answered by the queue: {} {}",
        answer.status,
        answer.body
    );
    gw.shutdown().await;
}

/// A field the client names in `Connection` is hop-by-hop (RFC 9110 §7.6.1): the live proxy
/// drops it, but `job_request` keeps every field `queue.headers` allows without looking at
/// `Connection`, and the courier replays it to the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_the_client_names_in_connection_is_not_replayed_to_the_destination() {
    let dest = Destination::start().await;
    let gw = gateway(&dest, "headers = [\"content-type\", \"x-hop\"]\n", "").await;
    let answer = raw(
        gw.listen_addr(),
        b"POST /emails HTTP/1.1\r\nHost: t\r\nConnection: close, x-hop\r\nX-Hop: secret-for-the-next-hop\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    eventually(Duration::from_secs(10), "the delivery", || async { !dest.calls().is_empty() })
        .await;
    let call = &dest.calls()[0];
    assert!(
        call.headers.get("x-hop").is_none(),
        "a hop-by-hop field reached the destination: {:?}",
        call.headers
    );
    gw.shutdown().await;
}

/// The operator forces the destination's breaker open (to protect it). Each delivery attempt is
/// refused by Seawall itself (`circuit_open`) — nothing is sent — yet counts as an attempt: after
/// `max_attempts` such non-attempts the job is a dead letter. The same holds for Seawall's own
/// shedding of deliveries (gate / overload at P2): a busy gateway kills its queued jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seawalls_own_refusals_do_not_use_up_a_jobs_attempts() {
    let dest = Destination::start().await;
    let gw = start(config(&format!(
        "[queue]\n{}\n[queue.topics.emails]\nbackoff = \"20ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 3\npaused = true\n\
         [upstreams.mailer]\nservers = [\"{}\"]\nbreaker = {{ min_requests = 1000 }}\n\
         [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n",
        data_dir_line(),
        dest.addr
    )))
    .await;
    let id =
        job_id(&ask(Engine::Http1, gw.listen_addr(), post(Engine::Http1, "/emails", "1")).await);
    let req = Request::post("/api/v1/upstreams/mailer/breaker").header("host", "admin");
    let forced =
        send(gw.admin_addr(), req.body(Full::new(Bytes::from("{\"state\":\"open\"}"))).unwrap())
            .await;
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.body);
    let resumed = admin_call(&gw, "POST", "/api/v1/queue/emails/resume").await;
    assert_eq!(resumed.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = job(&gw, &id).await;
    assert_ne!(
        s["status"],
        "dead",
        "killed by the gateway's own breaker without one call to the destination ({} calls): {s}",
        dest.calls().len()
    );
    gw.shutdown().await;
}

/// `on_failure = "queue"` with `queue = { topic = "x", deliver_to = "archive" }` on a proxy
/// route: `route_queue` takes only the topic, and the topic is delivered to the route's
/// upstream. The written `deliver_to` is silently ignored — no error, no warning.
#[test]
fn an_on_failure_routes_deliver_to_is_honoured_or_refused() {
    let src = "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
               [upstreams.live]\nservers = [\"127.0.0.1:1\"]\n\
               [upstreams.archive]\nservers = [\"127.0.0.1:2\"]\n\
               [[routes]]\nname = \"w\"\npath_prefix = \"/w\"\nupstream = \"live\"\non_failure = \"queue\"\n\
               queue = { topic = \"x\", deliver_to = \"archive\" }\n";
    let Ok(cfg) = seawall_config::parse(src, "test.toml") else { return };
    let q = cfg.queue.as_ref().unwrap();
    let t = &q.topics[q.topic("x").unwrap()];
    let to = &cfg.upstreams[t.deliver_to].name;
    assert_eq!(
        to, "archive",
        "deliver_to = \"archive\" was accepted and ignored (warnings: {:?})",
        cfg.warnings
    );
}

/// Held: a client that vanishes mid-body (HTTP/1.1) or resets its stream mid-body (h2) stores
/// nothing and leaves the bounds as they were; `Expect: 100-continue` within `max_body` is
/// invited, stored and answered 202 on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_stores_nothing_and_takes_no_room() {
    let dest = Destination::start().await;
    let gw = gateway(&dest, "", "max_jobs = 1\npaused = true\n").await;
    // HTTP/1.1: half a body, then gone.
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(b"POST /emails HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabcd")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
    // h2: a streamed body, reset before its end.
    let mut client = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let (tx, body) = channel_body();
    let req = Engine::H2c.request("POST", "/emails").body(body).unwrap();
    tx.send(Bytes::from_static(b"part")).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(100), client.send(req)).await;
    // The connection goes while the body is still open (dropping `tx` first would end the body
    // normally, and the request would rightly be stored).
    client.close();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tx);
    // Expect: 100-continue within max_body.
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(b"POST /emails HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").await.unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "the one slot is free: {answer}");
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["queue"]["topics"]["emails"]["depth"], 1, "{state}");
    gw.shutdown().await;
}
