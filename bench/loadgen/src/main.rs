//! An open-loop load generator for the overload drill (`bench/overload.sh`).
//!
//! Each class of traffic (a path and a rate) sends on a fixed schedule whatever comes back — the
//! way real users keep arriving when a service slows down — and each request's latency counts
//! from the moment it was *due*, not from when it could be sent, so a stalled target shows its
//! full delay (no coordinated omission). Requests go over keep-alive connections, as many as
//! needed at once.
//!
//! `seawall-loadgen PLAN.json` reads a plan and prints a JSON report:
//!
//! ```json
//! {"target": "http://127.0.0.1:8080", "timeout_ms": 5000,
//!  "phases": [{"name": "1", "seconds": 20, "before": ["http://origin/_origin/stats?reset=1"],
//!              "classes": [{"name": "P0", "path": "/p0", "rate": 250}]}]}
//! ```
//!
//! `before` URLs are fetched (GET) as the phase starts, `after` ones as it ends; their answers go
//! in the report. Per class: requests due and sent, successes (2xx), refusals (by status and
//! `x-seawall-reason`), failures (no answer within `timeout_ms`), p50/p99 of successes and p99 of
//! refusals; per phase the lag of sends behind schedule (what the generator really offered).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Plan {
    target: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    phases: Vec<Phase>,
}

fn default_timeout() -> u64 {
    5_000
}

#[derive(Deserialize)]
struct Phase {
    name: String,
    seconds: f64,
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    classes: Vec<Class>,
}

#[derive(Deserialize)]
struct Class {
    name: String,
    path: String,
    rate: f64,
}

/// What became of one request.
enum Outcome {
    Ok,
    Refused(String),
    Failed(String),
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: seawall-loadgen PLAN.json");
        std::process::exit(2)
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(2)
    });
    let plan: Plan = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(2)
    });
    let threads = std::env::var("LOADGEN_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(run(plan));
    println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
}

async fn run(plan: Plan) -> Value {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let timeout = Duration::from_millis(plan.timeout_ms);
    let mut phases = Vec::new();
    for phase in &plan.phases {
        let before = fetch_all(&client, &phase.before).await;
        let start = Instant::now();
        let (tasks, lags) = send_phase(&client, &plan.target, phase, timeout, start).await;
        let after = fetch_all(&client, &phase.after).await;
        phases.push((before, after, tasks, lags, start.elapsed()));
    }
    let mut out = Vec::new();
    for (phase, (before, after, tasks, mut lags, took)) in plan.phases.iter().zip(phases) {
        let mut classes = Vec::new();
        for (class, handles) in phase.classes.iter().zip(tasks) {
            let due = (class.rate * phase.seconds).floor() as usize;
            let mut ok = Vec::new();
            let mut refused = Vec::new();
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            let mut failed = 0usize;
            let sent = handles.len();
            for handle in handles {
                let (outcome, latency) =
                    handle.await.unwrap_or((Outcome::Failed("task".into()), 0.0));
                match outcome {
                    Outcome::Ok => ok.push(latency),
                    Outcome::Refused(why) => {
                        refused.push(latency);
                        *reasons.entry(why).or_default() += 1;
                    }
                    Outcome::Failed(why) => {
                        failed += 1;
                        *reasons.entry(why).or_default() += 1;
                    }
                }
            }
            classes.push(json!({
                "name": class.name,
                "path": class.path,
                "rate": class.rate,
                "due": due,
                "sent": sent,
                "ok": ok.len(),
                "refused": refused.len(),
                "failed": failed,
                "success_rate": ok.len() as f64 / sent.max(1) as f64,
                "ok_p50_ms": percentile(&mut ok, 0.50),
                "ok_p99_ms": percentile(&mut ok, 0.99),
                "refused_p50_ms": percentile(&mut refused, 0.50),
                "refused_p99_ms": percentile(&mut refused, 0.99),
                "reasons": reasons,
            }));
        }
        out.push(json!({
            "name": phase.name,
            "seconds": took.as_secs_f64(),
            "send_lag_p99_ms": percentile(&mut lags, 0.99),
            "send_lag_max_ms": lags.iter().copied().fold(0.0, f64::max),
            "before": before,
            "after": after,
            "classes": classes,
        }));
    }
    json!({"target": plan.target, "timeout_ms": plan.timeout_ms, "phases": out})
}

type Handles = Vec<tokio::task::JoinHandle<(Outcome, f64)>>;

/// Sends every class of `phase` on its schedule; returns the requests' tasks and how late each
/// left (ms).
async fn send_phase(
    client: &HttpClient,
    target: &str,
    phase: &Phase,
    timeout: Duration,
    start: Instant,
) -> (Vec<Handles>, Vec<f64>) {
    let uris: Vec<hyper::Uri> = phase
        .classes
        .iter()
        .map(|c| format!("{target}{}", c.path).parse().expect("a valid URL"))
        .collect();
    let mut tasks: Vec<Handles> = phase.classes.iter().map(|_| Vec::new()).collect();
    let mut lags = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Duration::from_secs_f64(phase.seconds);
    loop {
        tick.tick().await;
        let now = start.elapsed();
        for (i, class) in phase.classes.iter().enumerate() {
            let interval = 1.0 / class.rate;
            loop {
                let k = tasks[i].len();
                let due = Duration::from_secs_f64(k as f64 * interval);
                if due > now || due >= end {
                    break;
                }
                lags.push((now - due).as_secs_f64() * 1e3);
                let (client, uri) = (client.clone(), uris[i].clone());
                let due_at = start + due;
                tasks[i].push(tokio::spawn(request(client, uri, due_at, timeout)));
            }
        }
        if now >= end {
            return (tasks, lags);
        }
    }
}

/// One request; its latency (ms) counts from `due`.
async fn request(
    client: HttpClient,
    uri: hyper::Uri,
    due: Instant,
    timeout: Duration,
) -> (Outcome, f64) {
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| format!("error: {e}"))?;
        let status = response.status();
        let reason = response
            .headers()
            .get("x-seawall-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        response.into_body().collect().await.map_err(|e| format!("body error: {e}"))?;
        Ok::<_, String>((status, reason))
    };
    let outcome = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Outcome::Failed("timeout".into()),
        Ok(Err(e)) => Outcome::Failed(e),
        Ok(Ok((status, _))) if status.is_success() => Outcome::Ok,
        Ok(Ok((status, reason))) => Outcome::Refused(
            format!("{} {}", status.as_u16(), reason.unwrap_or_default()).trim().to_string(),
        ),
    };
    (outcome, due.elapsed().as_secs_f64() * 1e3)
}

async fn fetch_all(client: &HttpClient, urls: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for url in urls {
        let answer = match url.parse::<hyper::Uri>() {
            Ok(uri) => match client.get(uri).await {
                Ok(response) => match response.into_body().collect().await {
                    Ok(body) => {
                        let bytes = body.to_bytes();
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&bytes).into())
                        })
                    }
                    Err(e) => Value::String(format!("body error: {e}")),
                },
                Err(e) => Value::String(format!("error: {e}")),
            },
            Err(e) => Value::String(format!("bad URL: {e}")),
        };
        out.push(json!({"url": url, "answer": answer}));
    }
    out
}

/// The `q` quantile in ms (0 when empty).
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    (values[at] * 1000.0).round() / 1000.0
}
