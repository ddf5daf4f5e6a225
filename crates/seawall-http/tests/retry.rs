//! Retries and deadlines as a client meets them, through both engines: a failed connection, a
//! connection that breaks before answering and an answer in `retry.on_status` are tried again —
//! the request's body included — but only when that is safe (idempotent, or nothing was sent),
//! within the retry budget, the upstream's `Retry-After` cap, `total_timeout` and the client's own
//! deadline, which the upstream hears as the time left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the flaky origin does with the next request.
#[derive(Clone, Copy)]
enum Next {
    /// 503, with this `Retry-After` if any.
    Unavailable(Option<u32>),
    /// Closes the connection without answering.
    Close,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Starts an answer's head, then says nothing more.
    Stall,
}

/// An origin that follows a script for its first requests, then answers 200 with the size of the
/// body it received (`got N`); it records every request's method and body size.
#[derive(Clone)]
struct Flaky {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Next>>>,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
    /// Every request head, lower-cased, and its body.
    heads: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Flaky {
    async fn start(script: &[Next]) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flaky = Flaky {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            seen: Arc::default(),
            heads: Arc::default(),
            bodies: Arc::default(),
        };
        let origin = flaky.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(origin.clone().serve(stream));
            }
        });
        flaky
    }

    async fn serve(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let method = head.split(' ').next().unwrap_or("").to_ascii_uppercase();
            self.seen.lock().unwrap().push((method, length));
            self.heads.lock().unwrap().push(head.clone());
            self.bodies.lock().unwrap().push(buf[end + 4..end + 4 + length].to_vec());
            buf.drain(..end + 4 + length);
            let next = self.script.lock().unwrap().pop_front();
            let answer = match next {
                Some(Next::Close) => return,
                Some(Next::Garbage) => "\x00\x01 not http at all\r\n\r\n".to_string(),
                Some(Next::Stall) => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                    std::future::pending::<()>().await;
                    return;
                }
                Some(Next::Unavailable(retry_after)) => {
                    let field =
                        retry_after.map_or(String::new(), |s| format!("retry-after: {s}\r\n"));
                    format!(
                        "HTTP/1.1 503 Service Unavailable\r\n{field}content-length: 4\r\n\r\nbusy"
                    )
                }
                None => {
                    let body = format!("got {length}");
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                }
            };
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn seen(&self) -> Vec<(String, usize)> {
        self.seen.lock().unwrap().clone()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A gateway in front of `servers` with `retry` on the upstream.
async fn retrying(servers: &[SocketAddr], retry: &str, extra: &str) -> Gateway {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    start(config(&format!(
        "[upstreams.app]\nservers = [{}]\npassive = {{ consecutive_failures = 0 }}\nretry = {{ {retry} }}\n{extra}\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        list.join(", ")
    )))
    .await
}

const RETRY: &str = "attempts = 3, backoff = \"1ms\", on_status = [503]";

async fn retries(gw: &Gateway, reason: &str) -> f64 {
    metric(gw, &format!("seawall_upstream_retries_total{{upstream=\"app\",reason=\"{reason}\"}}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_on_status_is_tried_again_with_the_same_body() {
    for engine in ENGINES {
        let origin = Flaky::start(&[Next::Unavailable(None), Next::Unavailable(Some(0))]).await;
        let gw = retrying(&[origin.addr], RETRY, "").await;
        let req = engine.request("PUT", "/doc").body(full("twelve bytes")).unwrap();
        let answer = ask(engine, gw.listen_addr(), req).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "got 12"), "{engine:?}");
        assert_eq!(
            origin.seen(),
            vec![("PUT".to_string(), 12); 3],
            "{engine:?}: the body went every time"
        );
        assert_eq!(retries(&gw, "status").await, 2.0, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_may_have_taken_effect_is_not_sent_twice() {
    for engine in ENGINES {
        let origin =
            Flaky::start(&[Next::Unavailable(None), Next::Close, Next::Unavailable(None)]).await;
        let gw = retrying(&[origin.addr], RETRY, "").await;
        // A POST got a 503: it may have done something; the 503 goes to the client.
        let post =
            ask(engine, gw.listen_addr(), engine.request("POST", "/pay").body(full("x")).unwrap())
                .await;
        assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        // A POST whose connection broke before an answer: 502, not a second charge.
        let post =
            ask(engine, gw.listen_addr(), engine.request("POST", "/pay").body(full("x")).unwrap())
                .await;
        assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{engine:?}");
        // The client made it safe to repeat: retried.
        let keyed =
            engine.request("POST", "/pay").header("idempotency-key", "k1").body(full("x")).unwrap();
        assert_eq!(ask(engine, gw.listen_addr(), keyed).await.status, StatusCode::OK, "{engine:?}");
        assert_eq!(origin.seen().len(), 4, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_breaks_before_answering_is_replaced_for_a_get() {
    for engine in ENGINES {
        let origin = Flaky::start(&[Next::Close]).await;
        let gw = retrying(&[origin.addr], RETRY, "").await;
        let answer = ask(engine, gw.listen_addr(), engine.get("/a")).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        assert_eq!(retries(&gw, "reset").await, 1.0, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_at_all_is_tried_again_even_for_a_post_then_reported() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let gw = retrying(&[dead], "attempts = 3, backoff = \"1ms\"", "").await;
    for engine in ENGINES {
        let answer =
            ask(engine, gw.listen_addr(), engine.request("POST", "/x").body(full("x")).unwrap())
                .await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{engine:?}");
        assert_eq!(answer.header("x-seawall-reason"), "upstream_connect_failed");
    }
    assert_eq!(retries(&gw, "connect").await, 4.0, "two retries per request");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_allowed_is_passed_on_instead_of_waited_for() {
    let origin = Flaky::start(&[Next::Unavailable(Some(30))]).await;
    let gw = retrying(&[origin.addr], &format!("{RETRY}, max_retry_after = \"2s\""), "").await;
    let answer = ask(Engine::Http1, gw.listen_addr(), Engine::Http1.get("/a")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), "30", "the upstream's own answer, as it was");
    assert_eq!(origin.seen().len(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_stops_retries_so_an_outage_is_not_multiplied() {
    let script = [Next::Unavailable(None); 40];
    let origin = Flaky::start(&script).await;
    let retry = "attempts = 3, backoff = \"1ms\", on_status = [503], budget = 0.1, min_retries_per_second = 0";
    let gw = retrying(&[origin.addr], retry, "").await;
    for i in 0..20 {
        let engine = ENGINES[i % 2];
        assert_eq!(
            ask(engine, gw.listen_addr(), engine.get("/a")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // 20 requests: at most 10 % more attempts, not 200 % more.
    assert_eq!(origin.seen().len(), 22);
    assert_eq!(retries(&gw, "status").await, 2.0);
    let over = metric(&gw, "seawall_upstream_retries_over_budget_total{upstream=\"app\"}").await;
    assert_eq!(over, 20.0, "18 requests got no retry, and 2 no second one");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_bounds_the_whole_request() {
    let origin = Origin::start().await;
    let gw =
        retrying(&[origin.addr], "attempts = 1", "timeout = \"10s\"\ntotal_timeout = \"300ms\"")
            .await;
    for engine in ENGINES {
        let answer = bounded(
            5.0,
            "the total timeout",
            ask(engine, gw.listen_addr(), engine.get("/slow?ms=3000")),
        )
        .await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
        assert!(
            answer.json()["detail"].as_str().unwrap().contains("total_timeout"),
            "{}",
            answer.body
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_deadline_bounds_the_request_and_the_upstream_hears_the_time_left() {
    let origin = Origin::start().await;
    let gw = retrying(&[origin.addr], "attempts = 1", "timeout = \"10s\"").await;
    for engine in ENGINES {
        let req = engine.request("GET", "/slow?ms=3000").header("x-request-timeout", "300ms");
        let answer =
            bounded(5.0, "the deadline", ask(engine, gw.listen_addr(), req.body(empty()).unwrap()))
                .await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
        // A deadline already gone is refused without bothering the upstream.
        let hits = origin.hits();
        let req = engine.request("GET", "/hi").header("x-request-timeout", "0");
        let answer = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
        assert_eq!(answer.header("x-seawall-reason"), "deadline_exceeded", "{engine:?}");
        assert_eq!(origin.hits(), hits, "{engine:?}");
    }
    gw.shutdown().await;
    let flaky = Flaky::start(&[]).await;
    let gw = retrying(&[flaky.addr], "attempts = 1", "").await;
    for engine in ENGINES {
        let req = engine.request("GET", "/a").header("x-request-timeout", "5s");
        assert_eq!(
            ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await.status,
            StatusCode::OK
        );
    }
    for head in flaky.heads.lock().unwrap().iter() {
        let values: Vec<u64> = head
            .lines()
            .filter_map(|l| l.strip_prefix("x-request-timeout:"))
            .map(|v| v.trim().parse().unwrap())
            .collect();
        assert_eq!(values.len(), 1, "one deadline field, Seawall's: {head}");
        assert!((4000..=5000).contains(&values[0]), "the time left in ms: {head}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_short_deadline_is_not_held_against_the_upstream() {
    // Clients that ask for 1 ms cannot trip the breaker or eject a server for everyone else.
    let origin = Origin::start().await;
    let extra = "timeout = \"10s\"\nbreaker = { consecutive_failures = 1, failure_rate = 0.0 }\npassive = { consecutive_failures = 1 }";
    let gw = start(config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n{extra}\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        origin.addr
    )))
    .await;
    for engine in ENGINES {
        for _ in 0..3 {
            let req = engine.request("GET", "/slow?ms=2000").header("x-request-timeout", "50");
            let answer = bounded(
                5.0,
                "the deadline",
                ask(engine, gw.listen_addr(), req.body(empty()).unwrap()),
            )
            .await;
            assert_eq!(answer.header("x-seawall-reason"), "deadline_exceeded", "{engine:?}");
        }
        assert_eq!(
            ask(engine, gw.listen_addr(), engine.get("/hi")).await.status,
            StatusCode::OK,
            "{engine:?}"
        );
    }
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["upstreams"][0]["breaker"]["state"], "closed", "{state}");
    assert_eq!(state["upstreams"][0]["servers"][0]["ejected"], false, "{state}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_answering_garbage_is_tried_again_only_for_what_is_safe_to_repeat() {
    for engine in ENGINES {
        let origin = Flaky::start(&[Next::Garbage, Next::Garbage]).await;
        let gw = retrying(&[origin.addr], RETRY, "").await;
        let post = engine.request("POST", "/pay").body(full("x")).unwrap();
        let post = ask(engine, gw.listen_addr(), post).await;
        assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{engine:?}: a POST is not sent twice");
        assert_eq!(post.header("x-seawall-reason"), "upstream_error");
        let get = ask(engine, gw.listen_addr(), engine.get("/a")).await;
        assert_eq!(get.status, StatusCode::OK, "{engine:?}: the GET was tried again");
        assert_eq!(retries(&gw, "reset").await, 1.0, "{engine:?}");
        assert_eq!(origin.seen().len(), 3, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stalls_mid_answer_times_out_once_and_is_not_retried() {
    // A stall is a timeout, not a broken connection: retrying a slow upstream multiplies its load.
    for engine in ENGINES {
        let origin = Flaky::start(&[Next::Stall]).await;
        let gw = retrying(&[origin.addr], RETRY, "timeout = \"200ms\"").await;
        let answer =
            bounded(5.0, "the timeout", ask(engine, gw.listen_addr(), engine.get("/a"))).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{engine:?}");
        assert_eq!(answer.header("x-seawall-reason"), "upstream_timeout");
        assert_eq!(origin.seen().len(), 1, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_header_seawall_cannot_read_bounds_nothing_and_breaks_nothing() {
    let flaky = Flaky::start(&[]).await;
    let gw = retrying(&[flaky.addr], "attempts = 1", "").await;
    for engine in ENGINES {
        for value in ["soon", "-5", "1e3", "99999999999", "5m"] {
            let req = engine.request("GET", "/a").header("x-request-timeout", value);
            let answer = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?} {value:?}");
        }
    }
    // Passed on as sent, once.
    for head in flaky.heads.lock().unwrap().iter() {
        assert_eq!(head.matches("x-request-timeout:").count(), 1, "{head}");
    }
    gw.shutdown().await;
}
