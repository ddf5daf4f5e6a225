//! `seawall demo`: a small origin to put the gateway in front of, with endpoints whose latency
//! and failure rate are set per request, that hang, answer 429 with `Retry-After`, or reset the
//! connection, so every protection can be tried by hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use seawall_config::Config;

use crate::capacity::Capacity;

/// The example configuration, built in so that `seawall demo` works from any directory.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../examples/seawall.toml");

/// Starts one origin for every loopback server address in the configuration.
pub async fn start_origins(config: &Config) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = config
        .upstreams
        .iter()
        .flat_map(|u| u.servers.iter().map(|s| s.address))
        .filter(|a| a.ip().is_loopback())
        .collect();
    addrs.sort();
    addrs.dedup();
    for addr in &addrs {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("demo origin cannot listen on {addr}: {e}"))?;
        tokio::spawn(serve(listener, addr.port(), None));
    }
    Ok(addrs)
}

/// Runs one demo origin on `listen` until the process ends; with `capacity`, in capacity mode.
pub async fn run_origin(listen: SocketAddr, capacity: Option<Capacity>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("demo origin cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("demo origin on http://{addr}");
    serve(listener, addr.port(), capacity.map(Arc::new)).await;
    Ok(())
}

/// Prints what to try.
pub fn print_urls(listen: SocketAddr, admin: SocketAddr, origins: &[SocketAddr]) {
    let list: Vec<String> = origins.iter().map(ToString::to_string).collect();
    println!(
        "Seawall demo: gateway on http://{listen}, demo origins on {}\n\
         Try:\n  curl -i http://{listen}/\n  curl -i 'http://{listen}/slow?ms=200'\n  \
         curl -i 'http://{listen}/fail?rate=0.5'\n  curl -i http://{listen}/status/503\n  \
         curl -i 'http://{listen}/limited?retry_after=2'\n  curl -i http://{listen}/hang\n  \
         curl -i http://{listen}/reset\n  \
         curl -s http://{admin}/metrics | grep seawall_\n  curl -s http://{admin}/api/v1/state\n\
         Ctrl-C stops it.",
        list.join(", ")
    );
}

/// Prints what to try on the egress listener.
pub fn print_egress(egress: SocketAddr) {
    println!(
        "Egress (the application's calls to a third-party API, here a demo origin at 10 calls a \
         minute):\n  curl -i 'http://{egress}/maps/slow?ms=20'   (again: from the cache; other \
         paths past the quota: 429 egress_quota)"
    );
}

async fn serve(listener: tokio::net::TcpListener, port: u16, capacity: Option<Arc<Capacity>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let capacity = capacity.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let capacity = capacity.clone();
                async move {
                    // `/reset` drops the connection without an answer.
                    if req.uri().path() == "/reset" {
                        return Err(Reset);
                    }
                    if let Some(capacity) = capacity {
                        if let Some(answer) = control(&req, &capacity) {
                            return Ok(answer);
                        }
                        capacity.serve().await;
                    }
                    answer(req, port).await.map_err(|never| match never {})
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What `/reset` does to its connection.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset on request")
    }
}

impl std::error::Error for Reset {}

/// The capacity mode's own endpoints (`/_origin/...`), answered at once.
fn control(req: &Request<Incoming>, capacity: &Capacity) -> Option<Response<Full<Bytes>>> {
    let (status, body) = match req.uri().path() {
        "/_origin/stats" => (StatusCode::OK, capacity.stats(query(req, "reset").is_some())),
        "/_origin/service-time" => match query(req, "ms").and_then(|v| v.parse::<f64>().ok()) {
            Some(ms) if ms > 0.0 && ms < 600_000.0 => {
                capacity.set_service_time(Duration::from_secs_f64(ms / 1000.0));
                (StatusCode::OK, capacity.stats(false))
            }
            _ => {
                (StatusCode::BAD_REQUEST, "{\"error\":\"expected ?ms=N (0 < N < 600000)\"}".into())
            }
        },
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/json"));
    Some(response)
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn answer(req: Request<Incoming>, port: u16) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let (status, body) = match path.as_str() {
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        "/slow" => {
            let ms: u64 =
                query(&req, "ms").and_then(|v| v.parse().ok()).unwrap_or(1000).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, format!("{{\"origin\":{port},\"slept_ms\":{ms}}}\n"))
        }
        "/hang" => {
            // Never answers (within an hour): for timeouts and breakers.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (StatusCode::OK, "{}\n".to_string())
        }
        "/limited" => {
            let after: u64 = query(&req, "retry_after").and_then(|v| v.parse().ok()).unwrap_or(1);
            let mut response = Response::new(Full::new(Bytes::from(format!(
                "{{\"origin\":{port},\"retry_after\":{after}}}\n"
            ))));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().insert("retry-after", http::HeaderValue::from(after));
            response.headers_mut().insert("x-origin", http::HeaderValue::from(port));
            return Ok(response);
        }
        "/fail" => {
            let rate: f64 = query(&req, "rate").and_then(|v| v.parse().ok()).unwrap_or(0.5);
            let roll = f64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
                    % 10_000,
            ) / 10_000.0;
            if roll < rate {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{{\"origin\":{port},\"failed\":true}}\n"),
                )
            } else {
                (StatusCode::OK, format!("{{\"origin\":{port},\"failed\":false}}\n"))
            }
        }
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            (code, format!("{{\"origin\":{port},\"status\":{}}}\n", code.as_u16()))
        }
        "/echo" => {
            let method = req.method().to_string();
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let length = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len(),
                Err(_) => 0,
            };
            let json = serde_json::json!({"origin": port, "method": method, "path": path, "headers": headers, "body_bytes": length});
            (StatusCode::OK, json.to_string())
        }
        _ => (StatusCode::OK, format!("{{\"origin\":{port},\"path\":{path:?}}}\n")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert("x-origin", http::HeaderValue::from(port));
    Ok(response)
}
