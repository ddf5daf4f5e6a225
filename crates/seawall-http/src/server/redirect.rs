//! `server.http_redirect`: a plain-HTTP listener that sends every request to the same host and
//! path over `https://` (308, so a POST stays a POST), the way a TLS site answers on port 80.
//! It runs on the control runtime with hyper: it carries one small answer per request, and a
//! client that dawdles is cut off by the server's header and keep-alive timeouts.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::state::{Phase, Shared};

/// Accepts on `listener` until the gateway drains; `https_port` is the TLS listener's port.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, https_port: u16) {
    let mut phase = shared.phase.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = super::leaves(&mut phase, Phase::Running) => return,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "redirect listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let (header_timeout, proxy_protocol) = {
            let snapshot = shared.snapshot.load();
            let server = &snapshot.config.server;
            (server.header_timeout, server.clients.proxy_protocol)
        };
        let mut stopping = shared.phase.subscribe();
        let registry = Arc::clone(&shared.registry);
        tokio::spawn(async move {
            // Behind a load balancer that sends PROXY headers, this port gets them too.
            if proxy_protocol
                && super::proxy_protocol::read_header(&mut stream, header_timeout).await.is_err()
            {
                registry.proxy_protocol_refused.add(1);
                return;
            }
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(redirect(&req, https_port))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = super::leaves(&mut stopping, Phase::Running) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// The answer to one request: 308 to `https://host[:port]/path?query`, or 400 without a usable
/// host.
pub fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| req.headers().get(header::HOST).and_then(|h| host_of(h.as_bytes())));
    let Some(host) = host else {
        let mut bad = Response::new(Full::new(Bytes::from_static(b"a Host is needed\n")));
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        return bad;
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::try_from(location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// The host of a `Host` field (its port dropped), when it is a valid authority.
fn host_of(value: &[u8]) -> Option<String> {
    let authority = http::uri::Authority::try_from(value).ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, target: &str, port: u16) -> (StatusCode, Option<String>) {
        let mut req = Request::get(target);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let resp = redirect(&req.body(()).unwrap(), port);
        let loc = resp.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_string());
        (resp.status(), loc)
    }

    #[test]
    fn keeps_host_path_and_query_and_drops_the_plain_port() {
        let (status, loc) = location(Some("Shop.Example:80"), "/cart?id=7", 443);
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(loc.as_deref(), Some("https://shop.example/cart?id=7"));
        let (_, loc) = location(Some("shop.example"), "/", 8443);
        assert_eq!(loc.as_deref(), Some("https://shop.example:8443/"));
        let (_, loc) = location(Some("[::1]:80"), "/x", 443);
        assert_eq!(loc.as_deref(), Some("https://[::1]/x"));
    }

    #[test]
    fn a_missing_or_hostile_host_is_refused() {
        assert_eq!(location(None, "/", 443).0, StatusCode::BAD_REQUEST);
        assert_eq!(location(Some("evil.test@shop"), "/", 443).0, StatusCode::BAD_REQUEST);
        assert_eq!(location(Some("a b"), "/", 443).0, StatusCode::BAD_REQUEST);
    }
}
