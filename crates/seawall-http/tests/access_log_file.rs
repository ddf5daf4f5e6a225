//! The access log written to `log.access_log_file` over real sockets, on both engines: every field
//! of a line, the query only when asked, 499 for a client that left, the file reopened by its
//! path after a rotation, and a path that cannot be opened failing the start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

/// A fresh folder for one test's log files.
fn folder(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seawall-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

async fn gateway(origin: &Origin, file: &Path, log: &str) -> seawall_http::Gateway {
    start(config(&format!(
        "[log]\naccess_log = true\naccess_log_file = {:?}\n{log}\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\nmethods = [\"GET\"]\n",
        file.display().to_string(),
        origin.addr
    )))
    .await
}

/// Whether `ms` has at most three decimals.
fn three_decimals(ms: f64) -> bool {
    ((ms * 1000.0).round() - ms * 1000.0).abs() < 1e-6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_in_the_line_on_both_engines() {
    let dir = folder("access-fields");
    let file = dir.join("access.log");
    let origin = Origin::start().await;
    let gw = gateway(&origin, &file, "access_log_query = true").await;
    for (engine, id) in [(Engine::Http1, "line-h1"), (Engine::H2c, "line-h2")] {
        let headers = [("user-agent", "probe/1.0"), ("x-request-id", id)];
        let answer = get_with(engine, &gw, "/bytes?n=1000", &headers).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.len(), 1000);
        let refused =
            ask(engine, gw.listen_addr(), engine.request("DELETE", "/x").body(empty()).unwrap())
                .await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
    }
    assert!(gw.shutdown().await);
    let found = lines(&file);
    assert_eq!(found.len(), 4, "{found:#?}");
    // Lines are written when answers end, by whichever worker served them: not in request order.
    let with_id = |id: &str| found.iter().find(|l| l["request_id"] == id).expect(id);
    let refusals: Vec<_> = found.iter().filter(|l| l["method"] == "DELETE").collect();
    for (line, protocol, id) in
        [(with_id("line-h1"), "HTTP/1.1", "line-h1"), (with_id("line-h2"), "HTTP/2.0", "line-h2")]
    {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/bytes");
        assert_eq!(line["query"], "n=1000");
        assert_eq!(line["protocol"], protocol);
        assert_eq!(line["status"], 200);
        assert_eq!((line["route"].as_str(), line["upstream"].as_str()), (Some("api"), Some("app")));
        assert_eq!(line["server"], origin.addr.to_string());
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["user_agent"], "probe/1.0");
        assert_eq!(line["request_id"], id);
        assert_eq!(line["reason"], "");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        let took = line["duration_ms"].as_f64().unwrap();
        let head = line["upstream_response_ms"].as_f64().unwrap();
        assert!(three_decimals(took) && three_decimals(head), "{line}");
        assert!(head <= took + 0.001, "{line}");
        // The first request of each engine's connection found no pooled upstream connection.
        if protocol == "HTTP/1.1" {
            let connect = line["upstream_connect_ms"].as_f64().unwrap();
            assert!(connect <= head, "{line}");
            // Its head and the 1000 body bytes.
            assert!(line["bytes_sent"].as_u64().unwrap() > 1000, "{line}");
            assert!(line["bytes_received"].as_u64().unwrap() > 40, "{line}");
        } else {
            assert_eq!(line["bytes_sent"], 1000, "{line}");
        }
    }
    assert_eq!(refusals.len(), 2, "{found:#?}");
    for line in refusals {
        assert_eq!(
            (line["status"].as_u64(), line["reason"].as_str()),
            (Some(404), Some("no_route"))
        );
        assert!(line["upstream_connect_ms"].is_null() && line["upstream_response_ms"].is_null());
        let id = line["request_id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{line}");
        assert!(line["bytes_sent"].as_u64().unwrap() > 0, "{line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_is_left_out_unless_asked_and_a_client_that_left_is_499() {
    let dir = folder("access-499");
    let file = dir.join("access.log");
    let origin = Origin::start().await;
    let gw = gateway(&origin, &file, "").await;
    let answer = get_with(Engine::Http1, &gw, "/echo?token=secret", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    // A client that asks for a slow answer and vanishes before it, on each engine.
    let mut stream = tokio::net::TcpStream::connect(gw.listen_addr()).await.unwrap();
    stream.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let h2 = Client::connect(Engine::H2c, gw.listen_addr()).await;
    let mut sender = h2.h2();
    let pending = tokio::spawn(async move {
        let _ = sender.send_request(Engine::H2c.get("/slow?ms=3000")).await;
    });
    eventually(Duration::from_secs(5), "the origin has both slow requests", || async {
        origin.hits() >= 3
    })
    .await;
    drop(stream);
    pending.abort();
    h2.close();
    eventually(Duration::from_secs(5), "a 499 line from each engine", || async {
        lines(&file).iter().filter(|l| l["status"] == 499).count() >= 2
    })
    .await;
    gw.shutdown().await;
    let found = lines(&file);
    assert!(found[0]["query"].is_null(), "{:?}", found[0]);
    assert!(!std::fs::read_to_string(&file).unwrap().contains("secret"));
    let gone = found.iter().find(|l| l["status"] == 499).unwrap();
    assert_eq!(
        (gone["path"].as_str(), gone["reason"].as_str()),
        (Some("/slow"), Some("client_closed"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_file_is_reopened_and_new_lines_land_in_the_new_one() {
    let dir = folder("access-rotate");
    let file = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let origin = Origin::start().await;
    let gw = gateway(&origin, &file, "").await;
    for engine in ENGINES {
        get_with(engine, &gw, "/before", &[]).await;
    }
    eventually(Duration::from_secs(5), "two lines", || async { lines(&file).len() == 2 }).await;
    std::fs::rename(&file, &rotated).unwrap();
    // What SIGUSR1 does.
    gw.reopen_access_log().await.unwrap();
    for engine in ENGINES {
        get_with(engine, &gw, "/after", &[]).await;
    }
    gw.shutdown().await;
    let old: Vec<_> = lines(&rotated).iter().map(|l| l["path"].clone()).collect();
    let new: Vec<_> = lines(&file).iter().map(|l| l["path"].clone()).collect();
    assert_eq!(old, ["/before", "/before"]);
    assert_eq!(new, ["/after", "/after"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_opened_fails_the_start() {
    let dir = folder("access-bad");
    let file = dir.join("missing-folder").join("access.log");
    let cfg = config(&format!(
        "[log]\naccess_log = true\naccess_log_file = {:?}\n",
        file.display().to_string()
    ));
    let error = seawall_http::Gateway::start(cfg, None).await.err().expect("started");
    assert!(error.to_string().contains("missing-folder"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_logged_with_its_refusal() {
    let dir = folder("access-malformed");
    let file = dir.join("access.log");
    let origin = Origin::start().await;
    let gw = gateway(&origin, &file, "").await;
    let reply = raw(gw.listen_addr(), b"GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    eventually(Duration::from_secs(5), "a 400 line", || async {
        lines(&file).iter().any(|l| l["status"] == 400 && l["reason"] == "bad_request")
    })
    .await;
    assert_eq!(origin.hits(), 0);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
