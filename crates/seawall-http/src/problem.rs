//! Refusals and failures as complete HTTP answers: `application/problem+json` (RFC 9457) with a
//! machine-readable `reason`, the same reason in `x-seawall-reason`, and `Retry-After` where
//! waiting helps. Every error on the request path ends here; a client always gets an answer.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// The header that carries the reason of a refusal.
pub const REASON_HEADER: &str = "x-seawall-reason";

/// Why Seawall answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No route matched the request (404).
    NoRoute,
    /// The request body was larger than allowed (413).
    BodyTooLarge,
    /// The request framing was ambiguous or invalid (400).
    BadRequest,
    /// No server of the upstream is available: all unhealthy or ejected (503).
    UpstreamUnavailable,
    /// No connection could be made to any server tried (502).
    UpstreamConnectFailed,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The upstream broke the connection or sent something that is not HTTP (502).
    UpstreamError,
}

impl Reason {
    /// The `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no_route",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BadRequest => "bad_request",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamConnectFailed => "upstream_connect_failed",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
        }
    }

    /// The HTTP status that goes with it.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamConnectFailed | Reason::UpstreamError => StatusCode::BAD_GATEWAY,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the client connection must close after this answer: the rest of what the client
    /// sends (an unread body, a request stream we cannot trust) would otherwise be read as a
    /// new request.
    pub fn closes_connection(self) -> bool {
        matches!(self, Reason::BadRequest | Reason::BodyTooLarge)
    }

    /// Seconds after which a retry may succeed, where waiting helps.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Reason::UpstreamUnavailable => Some(1),
            _ => None,
        }
    }
}

/// Builds the problem response for `reason` with a human-readable `detail`.
pub fn problem(reason: Reason, detail: &str) -> Response<ProxyBody> {
    let mut response = problem_with(reason.status(), reason.as_str(), detail, reason.retry_after());
    if reason.closes_connection() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response.map(ProxyBody::full)
}

/// The 408 for a request head that came too slowly, as HTTP/1 bytes. Both engines send it with one
/// best-effort write as they close the connection.
pub fn header_timeout_http1() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let detail = "request head too slow";
        let problem = problem_with(StatusCode::REQUEST_TIMEOUT, "header_timeout", detail, None);
        let mut out = Vec::new();
        crate::h1::head::write_response(&mut out, &problem, true);
        out
    })
}

/// Builds a problem response from its parts (also used by the admin API).
pub fn problem_with(
    status: StatusCode,
    reason: &str,
    detail: &str,
    retry_after: Option<u32>,
) -> Response<Bytes> {
    let body = serde_json::json!({
        "type": format!("urn:seawall:problem:{reason}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "reason": reason,
        "detail": detail,
    })
    .to_string();
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(reason) {
        headers.insert(REASON_HEADER, v);
    }
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_408_has_the_right_length() {
        let text = std::str::from_utf8(super::header_timeout_http1()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("connection: close"), "{head}");
    }
}
