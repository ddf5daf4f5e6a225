//! Bodies stream both ways with backpressure: a 1 GiB upload and a 1 GiB download through the
//! proxy leave the process's peak memory nearly where it was. This file is its own test binary, so
//! no other test shares the process whose memory is measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

const GIB: u64 = 1 << 30;

/// Peak resident memory of this process in KiB, since the last reset.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_flat_memory() {
    let origin = Origin::start().await;
    // `timeout` runs from the end of the request: a long upload needs no long timeout.
    let mut cfg = simple(&[&origin], "timeout = \"2s\"");
    cfg.server.max_body_size = None;
    let gw = start(cfg).await;
    // Warm up every path once so lazily allocated buffers do not count as growth.
    get(gw.listen_addr(), "/bytes?n=1000000").await;
    reset_peak_rss();
    let baseline = peak_rss_kib();

    let upload =
        Request::post("/upload").header("host", "a").body(Generated { remaining: GIB }).unwrap();
    let r = send(gw.listen_addr(), upload).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, GIB.to_string()));

    let stream = tokio::net::TcpStream::connect(gw.listen_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = request(&format!("/bytes?n={GIB}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, GIB);

    let growth_mib = (peak_rss_kib().saturating_sub(baseline)) / 1024;
    assert!(growth_mib < 64, "peak memory grew by {growth_mib} MiB while streaming 2 GiB");
    gw.shutdown().await;
}
