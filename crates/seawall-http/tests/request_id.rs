//! Request ids over real sockets, on both engines: generated when absent, a client's sane id kept,
//! a hostile one replaced, the id seen by the origin (once), returned on proxied answers and on
//! every refusal (header and problem document), and nothing of it when turned off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::StatusCode;

/// A gateway in front of one origin with `server` keys, a catch-all route to it and a route that
/// is turned off.
async fn gateway(origin: &Origin, server: &str) -> seawall_http::Gateway {
    start(config_with_server(
        server,
        &format!(
            "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"api\"\npath_prefix = \"/\"\n\
             upstream = \"app\"\nmethods = [\"GET\", \"POST\"]\n",
            origin.addr
        ),
    ))
    .await
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The ids of the answer: its header, and what the origin saw (from `/echo`).
fn ids(answer: &Answer, name: &str) -> (String, String) {
    let seen = answer.json()["headers"][name].as_str().unwrap_or("").to_string();
    (answer.header(name).to_string(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_generated_sent_upstream_and_returned() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "").await;
    for engine in ENGINES {
        let first = get_with(engine, &gw, "/echo", &[]).await;
        assert_eq!(first.status, StatusCode::OK, "{engine:?}");
        let (returned, seen) = ids(&first, "x-request-id");
        assert!(is_generated(&returned), "{engine:?}: {returned:?}");
        assert_eq!(seen, returned, "{engine:?}: the origin saw another id");
        let second = get_with(engine, &gw, "/echo", &[]).await;
        assert_ne!(second.header("x-request-id"), returned, "{engine:?}: ids repeat");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_client_id_is_kept_and_a_hostile_one_replaced() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "").await;
    let long = "a".repeat(129);
    for engine in ENGINES {
        let kept = get_with(engine, &gw, "/echo", &[("x-request-id", "trace-42.abc")]).await;
        assert_eq!(ids(&kept, "x-request-id"), ("trace-42.abc".into(), "trace-42.abc".into()));
        let just_fits = "b".repeat(128);
        let kept = get_with(engine, &gw, "/echo", &[("x-request-id", &just_fits)]).await;
        assert_eq!(kept.header("x-request-id"), just_fits, "{engine:?}");
        for hostile in ["two words", long.as_str(), "quote\"in\"it\u{1}"] {
            let Ok(value) = http::HeaderValue::from_str(hostile) else { continue };
            let mut req = engine.request("GET", "/echo");
            req.headers_mut().unwrap().insert("x-request-id", value);
            let answer = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
            let (returned, seen) = ids(&answer, "x-request-id");
            assert!(is_generated(&returned), "{engine:?} {hostile:?}: {returned:?}");
            assert_eq!(seen, returned, "{engine:?}: the hostile id reached the origin");
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_sees_exactly_one_id_even_when_the_client_sends_two() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "").await;
    let head = "GET /echo HTTP/1.1\r\nhost: a\r\nx-request-id: first\r\nX-Request-Id: second\r\n\
                connection: close\r\n\r\n";
    let text = raw(gw.listen_addr(), head.as_bytes()).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("x-request-id: first\r\n"), "{head}");
    assert!(!head.contains("second"), "{head}");
    // The origin's map joins repeated fields into one value only when there are two.
    assert!(body.contains("\"x-request-id\":\"first\""), "{body}");
    assert!(!body.contains("second"), "{body}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_id_in_the_header_and_the_problem() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "").await;
    for engine in ENGINES {
        // A method the route does not take: no route (404).
        let req = engine.request("DELETE", "/x").header("x-request-id", "mine-1");
        let refused = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{engine:?}");
        assert_eq!(refused.header("x-request-id"), "mine-1", "{engine:?}");
        assert_eq!(refused.json()["request_id"], "mine-1", "{engine:?}");
        let req = engine.request("DELETE", "/x");
        let refused = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
        let id = refused.header("x-request-id").to_string();
        assert!(is_generated(&id), "{engine:?}: {id:?}");
        assert_eq!(refused.json()["request_id"], id.as_str(), "{engine:?}");
    }
    // The HTTP/1 engine's own head checks: an Expect it cannot meet (417).
    let text = raw(
        gw.listen_addr(),
        b"GET /echo HTTP/1.1\r\nhost: a\r\nexpect: teapot\r\nx-request-id: mine-2\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 417"), "{text}");
    let header = text.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or("");
    assert!(text.contains(&format!("\"request_id\":\"{header}\"")), "{text}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_is_configurable_and_trust_can_be_turned_off() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "request_id_header = \"X-Correlation-Id\"\ntrust_request_id = false")
        .await;
    for engine in ENGINES {
        let answer = get_with(engine, &gw, "/echo", &[("x-correlation-id", "mine")]).await;
        let (returned, seen) = ids(&answer, "x-correlation-id");
        assert!(is_generated(&returned), "{engine:?}: {returned:?}");
        assert_eq!(seen, returned, "{engine:?}");
        assert_eq!(answer.header("x-request-id"), "", "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_nothing_is_added_and_the_clients_field_passes() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "request_id = false").await;
    for engine in ENGINES {
        let answer = get_with(engine, &gw, "/echo", &[("x-request-id", "a b")]).await;
        assert_eq!(ids(&answer, "x-request-id"), (String::new(), "a b".into()), "{engine:?}");
        let req = engine.request("DELETE", "/x");
        let refused = ask(engine, gw.listen_addr(), req.body(empty()).unwrap()).await;
        assert_eq!(refused.header("x-request-id"), "", "{engine:?}");
        assert!(refused.json().get("request_id").is_none(), "{engine:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_id_does_not_make_a_second_one() {
    let origin = Origin::start().await;
    let gw = gateway(&origin, "").await;
    for engine in ENGINES {
        let answer =
            get_with(engine, &gw, "/cache?rid=from-upstream", &[("x-request-id", "mine-3")]).await;
        let all: Vec<_> = answer.headers.get_all("x-request-id").iter().collect();
        assert_eq!(all, ["mine-3"], "{engine:?}: one id, Seawall's");
    }
    gw.shutdown().await;
}
