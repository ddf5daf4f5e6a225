//! The queue's side of the tests: a data folder of the test's own, the 202's job id, a job's
//! status through `GET /jobs/ID` (and waiting for one), and admin calls.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use seawall_http::Gateway;

use super::{get, send, Answer};

/// `data_dir = "..."`: a folder no other test (or run) uses.
pub fn data_dir_line() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "seawall-queue-test-{}-{}",
        std::process::id(),
        nanos.as_nanos()
    ));
    format!("data_dir = {:?}\n", dir.display().to_string())
}

/// The job id of a 202 (checked: `queued`, 32 hex digits, its `Location`).
pub fn job_id(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["status"], "queued");
    let id = json["job"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(answer.header("location"), format!("/jobs/{id}"));
    id
}

/// `GET /jobs/ID`'s document.
pub async fn job(gw: &Gateway, id: &str) -> serde_json::Value {
    let answer = get(gw.listen_addr(), &format!("/jobs/{id}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()
}

/// The job's document once its status is `status` (within 10 s).
pub async fn until_status(gw: &Gateway, id: &str, status: &str) -> serde_json::Value {
    until_status_within(gw, id, status, Duration::from_secs(10)).await
}

pub async fn until_status_within(
    gw: &Gateway,
    id: &str,
    status: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = job(gw, id).await;
        if seen["status"] == status {
            return seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} never {status}: {seen}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An admin request with an empty body.
pub async fn admin_call(gw: &Gateway, method: &str, path: &str) -> Answer {
    let req = Request::builder().method(method).uri(path).header("host", "admin");
    send(gw.admin_addr(), req.body(Full::new(Bytes::new())).unwrap()).await
}
