//! Refusals and failures as complete HTTP answers: `application/problem+json` (RFC 9457) with a
//! machine-readable `reason`, the same reason in `x-seawall-reason`, and `Retry-After` where
//! waiting helps. Every error on the request path becomes a [`Refusal`]; each engine renders it
//! (HTTP/1 bytes or a hyper response), so a client always gets the same answer.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use seawall_config::Degrade;

use crate::request_id::RequestId;

/// The header that carries the reason of a refusal.
pub const REASON_HEADER: &str = "x-seawall-reason";

/// The header that marks a degraded answer, with the reason it stands in for.
pub const DEGRADED_HEADER: &str = "x-seawall-degraded";

/// Why Seawall answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request head is malformed, or its framing is ambiguous (400).
    BadRequest,
    /// The request head came too slowly (408).
    HeaderTimeout,
    /// The client paused too long while sending its body (408).
    BodyTimeout,
    /// No route matched the request (404).
    NoRoute,
    /// The client is over its rate limit (429).
    RateLimited,
    /// The route was turned off by an operator (503).
    FeatureDisabled,
    /// A write while the gateway (or the route's upstream, with no server left) is read-only (503).
    ReadOnly,
    /// The request body was larger than allowed (413).
    BodyTooLarge,
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
    /// The request head is over `max_header_size` or has more than `max_headers` fields (431).
    HeaderTooLarge,
    /// The client left before its answer was ready (499, nginx's convention; nothing is sent).
    ClientClosed,
    /// A transfer coding other than chunked in a request (501).
    UnsupportedTransferCoding,
    /// The upstream broke the connection or sent something that is not HTTP (502).
    UpstreamError,
    /// No connection could be made to any server tried (502).
    UpstreamConnectFailed,
    /// The TLS handshake with the upstream failed: its certificate is not trusted or not for
    /// the name verified, or it does not speak TLS (502).
    UpstreamTlsFailed,
    /// No server of the upstream is available: all unhealthy or ejected (503).
    UpstreamUnavailable,
    /// The upstream's circuit breaker is open: refused without trying it (503).
    CircuitOpen,
    /// The upstream's bulkhead is full: no slot and no room (or time) to wait for one (503).
    BulkheadFull,
    /// Shed by overload control: the gateway or the upstream cannot serve this priority now (503).
    Overloaded,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The client's own deadline passed before an answer (504): not the upstream's fault.
    DeadlineExceeded,
    /// The client asked only for a stored answer (`Cache-Control: only-if-cached`) and there is
    /// none it may have (504, RFC 9111 §5.2.1.7).
    NotCached,
    /// The queue cannot take the request: a bound is reached, or the store failed — nothing was
    /// stored (503).
    QueueFull,
    /// `GET /jobs/ID` for an id the queue does not know (404).
    JobNotFound,
    /// An egress call found no provider with quota left within `max_wait` (429, with the time
    /// until quota comes back as `Retry-After`).
    EgressQuota,
    /// Every API key of the egress group's providers was refused by them (401/403): nothing can
    /// be sent until an operator fixes the keys (503).
    EgressNoKey,
}

impl Reason {
    /// The `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::HeaderTimeout => "header_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::NoRoute => "no_route",
            Reason::RateLimited => "rate_limited",
            Reason::FeatureDisabled => "feature_disabled",
            Reason::ReadOnly => "read_only",
            Reason::BodyTooLarge => "body_too_large",
            Reason::ExpectationFailed => "expectation_failed",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::ClientClosed => "client_closed",
            Reason::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Reason::UpstreamError => "upstream_error",
            Reason::UpstreamConnectFailed => "upstream_connect_failed",
            Reason::UpstreamTlsFailed => "upstream_tls_failed",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::CircuitOpen => "circuit_open",
            Reason::BulkheadFull => "bulkhead_full",
            Reason::Overloaded => "overloaded",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::NotCached => "not_cached",
            Reason::QueueFull => "queue_full",
            Reason::JobNotFound => "job_not_found",
            Reason::EgressQuota => "egress_quota",
            Reason::EgressNoKey => "egress_no_key",
        }
    }

    /// The HTTP status that goes with it.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::HeaderTimeout | Reason::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::NoRoute | Reason::JobNotFound => StatusCode::NOT_FOUND,
            Reason::RateLimited | Reason::EgressQuota => StatusCode::TOO_MANY_REQUESTS,
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Reason::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::ClientClosed => client_closed_status(),
            Reason::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Reason::UpstreamError | Reason::UpstreamConnectFailed | Reason::UpstreamTlsFailed => {
                StatusCode::BAD_GATEWAY
            }
            Reason::UpstreamUnavailable
            | Reason::CircuitOpen
            | Reason::BulkheadFull
            | Reason::Overloaded
            | Reason::FeatureDisabled
            | Reason::QueueFull
            | Reason::EgressNoKey
            | Reason::ReadOnly => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamTimeout | Reason::DeadlineExceeded | Reason::NotCached => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Whether the client connection must close after this answer: what the client sends next
    /// (an unread body, a request stream we cannot trust) could not be told apart from a request.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Reason::BadRequest
                | Reason::HeaderTimeout
                | Reason::BodyTimeout
                | Reason::BodyTooLarge
                | Reason::HeaderTooLarge
                | Reason::ExpectationFailed
                | Reason::UnsupportedTransferCoding
                | Reason::ClientClosed
        )
    }

    /// Whether the upstream side failed to answer (a stale cached answer may stand in).
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Reason::UpstreamError
                | Reason::UpstreamConnectFailed
                | Reason::UpstreamTlsFailed
                | Reason::UpstreamUnavailable
                | Reason::CircuitOpen
                | Reason::BulkheadFull
                | Reason::Overloaded
                | Reason::UpstreamTimeout
                | Reason::EgressQuota
                | Reason::EgressNoKey
        )
    }

    /// Seconds after which a retry may succeed, where waiting helps.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Reason::UpstreamUnavailable => Some(1),
            // An operator's switch: worth a look again in a while, not at once.
            Reason::FeatureDisabled | Reason::ReadOnly => Some(30),
            _ => None,
        }
    }
}

/// 499 is not a registered status; `StatusCode` accepts it as an extension code.
fn client_closed_status() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A refusal: what Seawall answers instead of the upstream, rendered by each engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// A sentence for a human (the problem document's `detail`).
    pub detail: Cow<'static, str>,
    /// Seconds after which trying again may help (`Retry-After`).
    pub retry_after: Option<u32>,
    /// More fields for the answer, as HTTP/1 field lines (`name: value\r\n`; the rate-limit
    /// state of a 429, say).
    pub fields: Vec<u8>,
    /// The route's degraded answer, served instead of the problem document.
    pub stand_in: Option<Arc<Degrade>>,
    /// The request's id, stated in the problem document (its field line is in `fields`).
    pub request_id: Option<Box<str>>,
    /// Where the id's field line starts in `fields` (a degraded answer carries only that one).
    id_line_at: usize,
}

impl Refusal {
    /// A refusal for `reason`, with the reason's own `Retry-After`.
    pub fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
            retry_after: reason.retry_after(),
            fields: Vec::new(),
            stand_in: None,
            request_id: None,
            id_line_at: 0,
        }
    }

    /// Marks the answer with the request's id: a field `name: id` and a `request_id` member in
    /// the problem document. Called by the engine as the refusal goes out.
    pub fn stamp(&mut self, name: &str, id: Option<&RequestId>) {
        let Some(id) = id else { return };
        if self.request_id.is_some() {
            return;
        }
        self.request_id = Some(id.as_str().into());
        self.id_line_at = self.fields.len();
        id.push_line(name, &mut self.fields);
    }

    /// The problem document's response, with the request's id.
    fn problem(&self) -> Response<Bytes> {
        let id = self.request_id.as_deref();
        let mut response = problem_document(
            self.status(),
            self.reason.as_str(),
            &self.detail,
            self.retry_after,
            id,
        );
        append_field_lines(response.headers_mut(), &self.fields);
        response
    }

    /// Serves `degrade` instead of the problem document (when the route has one).
    pub fn degraded(mut self, degrade: Option<&Arc<Degrade>>) -> Self {
        self.stand_in = degrade.cloned();
        self
    }

    /// The status code of the answer.
    pub fn status(&self) -> StatusCode {
        match &self.stand_in {
            Some(d) => StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK),
            None => self.reason.status(),
        }
    }

    /// The answer as a response with a complete body.
    pub fn to_response(&self) -> Response<Bytes> {
        if let Some(degrade) = &self.stand_in {
            let mut response = stand_in(degrade, self.reason);
            if self.request_id.is_some() {
                append_field_lines(response.headers_mut(), &self.fields[self.id_line_at..]);
            }
            return response;
        }
        let mut response = self.problem();
        if self.reason.closes_connection() {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The answer as HTTP/1.1 bytes in `out` (replacing what was there).
    pub fn write_http1(&self, out: &mut Vec<u8>, how: Http1Answer) {
        if self.stand_in.is_some() {
            return write_http1(out, &self.to_response(), how);
        }
        write_http1(out, &self.problem(), how);
    }
}

/// Adds HTTP/1 field lines (`name: value\r\n`, as Seawall wrote them) to a header map; a line
/// that is not a valid field is skipped.
pub fn append_field_lines(map: &mut http::HeaderMap, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let value = line[colon + 1..].trim_ascii_start();
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
}

/// The 408 for a request head that came too slowly, as HTTP/1 bytes, sent with one best-effort
/// write as the connection closes.
pub fn header_timeout_http1() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut out = Vec::new();
        let how = Http1Answer { close: true, ..Http1Answer::default() };
        Refusal::new(Reason::HeaderTimeout, "request head too slow").write_http1(&mut out, how);
        out
    })
}

/// A route's degraded answer: its status, type and body, marked `x-seawall-degraded` with the
/// reason it stands in for.
fn stand_in(degrade: &Degrade, reason: Reason) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(degrade.body.clone()));
    *response.status_mut() = StatusCode::from_u16(degrade.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&degrade.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(DEGRADED_HEADER, HeaderValue::from_static(reason.as_str()));
    response
}

/// Builds a problem response from its parts (also used by the admin API).
pub fn problem_with(
    status: StatusCode,
    reason: &str,
    detail: &str,
    retry_after: Option<u32>,
) -> Response<Bytes> {
    problem_document(status, reason, detail, retry_after, None)
}

/// A problem response, with the request's id as the member `request_id` when there is one.
fn problem_document(
    status: StatusCode,
    reason: &str,
    detail: &str,
    retry_after: Option<u32>,
    request_id: Option<&str>,
) -> Response<Bytes> {
    let mut body = serde_json::json!({
        "type": format!("urn:seawall:problem:{reason}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "reason": reason,
        "detail": detail,
    });
    if let (Some(id), Some(members)) = (request_id, body.as_object_mut()) {
        members.insert("request_id".into(), id.into());
    }
    let body = body.to_string();
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

/// How an answer of Seawall's goes out on an HTTP/1 connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http1Answer {
    /// The connection closes after it (`Connection: close`).
    pub close: bool,
    /// It answers a HEAD request: no body, though its length is stated.
    pub head: bool,
    /// The client spoke HTTP/1.0: a connection that stays open says `keep-alive`.
    pub http10: bool,
}

/// Writes a complete response generated by Seawall into `out` as HTTP/1.1.
pub fn write_http1(out: &mut Vec<u8>, response: &Response<Bytes>, how: Http1Answer) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(response.status().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(response.status().canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        if name != header::CONNECTION {
            crate::headers::push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(response.body().len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if how.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if how.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !how.head {
        out.extend_from_slice(response.body());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_408_has_the_right_length() {
        let text = std::str::from_utf8(header_timeout_http1()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(body.contains("\"reason\":\"header_timeout\""), "{body}");
    }

    #[test]
    fn refusals_carry_reason_and_retry_after() {
        let r = Refusal::new(Reason::UpstreamUnavailable, "all down").to_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[REASON_HEADER], "upstream_unavailable");
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(Reason::ClientClosed.status().as_u16(), 499);
        let bad = Refusal::new(Reason::BadRequest, "x").to_response();
        assert_eq!(bad.headers()[header::CONNECTION], "close");
    }
}
