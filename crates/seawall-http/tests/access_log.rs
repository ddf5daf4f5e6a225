//! With `[log] access_log = true`, every request leaves one line with route, upstream, server,
//! status, duration and reason. Its own test binary: it installs the process-wide log subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use http::StatusCode;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("seawall::access=info")
        .with_writer(move || writer.clone())
        .init();
    let origin = Origin::start().await;
    let mut cfg = config(&format!(
        "[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"echo\"\npath_prefix = \"/echo\"\nupstream = \"app\"\n\
         [[routes]]\nname = \"slow\"\npath = \"/slow\"\nupstream = \"app\"\n",
        origin.addr
    ));
    cfg.log.access_log = true;
    let gw = start(cfg).await;
    assert_eq!(get(gw.listen_addr(), "/echo").await.status, StatusCode::OK);
    assert_eq!(get(gw.listen_addr(), "/nowhere").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(gw.listen_addr(), "/slow?ms=200").await.status, StatusCode::OK);
    gw.shutdown().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let first = &lines[0];
    assert_eq!(first["target"], "seawall::access");
    assert_eq!(first["route"], "echo");
    assert_eq!(first["upstream"], "app");
    assert_eq!(first["server"], origin.addr.to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["path"], "/echo");
    assert_eq!(first["method"], "GET");
    assert!(first["duration_ms"].as_f64().unwrap() < 200.0, "{first}");
    assert_eq!(first["reason"], "");
    let refused = &lines[1];
    assert_eq!(
        (refused["status"].as_u64(), refused["reason"].as_str()),
        (Some(404), Some("no_route"))
    );
    assert_eq!(refused["route"], "");
    // The duration covers the wait for the upstream's answer.
    let slow = &lines[2];
    assert_eq!((slow["route"].as_str(), slow["status"].as_u64()), (Some("slow"), Some(200)));
    let took = slow["duration_ms"].as_f64().unwrap();
    assert!((200.0..5000.0).contains(&took), "{slow}");
}
