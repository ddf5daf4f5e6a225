//! Fuzzes what the HTTP/1 engine parses from a client or an upstream: request heads, response
//! heads and chunked bodies must never panic, and what they produce must hold up:
//!
//! - a request that is accepted is forwarded with a head that parses, has one `Host` and exactly
//!   one framing field, and that field frames the same body: the declared length, or chunked
//!   data that decodes to what the client sent;
//! - a response head is rendered for HTTP/1.1 and HTTP/1.0 clients as a head that parses, with at
//!   most one framing field;
//! - where a chunked body ends, and what it decodes to, do not depend on how its bytes were split
//!   into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall_http::chunked::{chunk_line, ChunkedScanner, CHUNK_END, LAST_CHUNK};
use seawall_http::h1::head::{Limits, Parsed, RequestHead};
use seawall_http::request::BodyFraming;
use seawall_http::response::{self, Http1Client, ResponseView};

const LIMITS: Limits = Limits { max_header_size: 64 * 1024, max_headers: 100 };

fuzz_target!(|data: &[u8]| {
    request(data);
    for method in [http::Method::GET, http::Method::HEAD] {
        upstream_response(data, &method);
    }
    let whole = decode(data, data.len().max(1));
    for step in [1, 7] {
        assert_eq!(decode(data, step), whole);
    }
});

/// The fields named `name` in a head that must parse.
fn fields<'a>(head: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    head.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
}

fn request(data: &[u8]) {
    let mut head = RequestHead::default();
    if head.parse(data, LIMITS) != Parsed::Complete {
        return;
    }
    assert!(head.len <= data.len());
    let _ = head.path(data);
    let mut out = Vec::new();
    let host_is_server = head.host(data).is_none();
    head.write_upstream(data, &mut out, "192.0.2.1:1".parse().unwrap(), host_is_server, None);
    if host_is_server {
        out.extend_from_slice(b"host: server\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut sent = httparse::Request::new(&mut storage);
    let parsed = sent.parse(&out);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the upstream head does not parse: {parsed:?} {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(fields(sent.headers, "host").len(), 1, "{:?}", String::from_utf8_lossy(&out));
    let lengths = fields(sent.headers, "content-length");
    let codings = fields(sent.headers, "transfer-encoding");
    match head.framing {
        BodyFraming::None => assert!(lengths.is_empty() && codings.is_empty()),
        BodyFraming::Length(n) => {
            assert_eq!(lengths, vec![n.to_string().as_bytes()]);
            assert!(codings.is_empty());
        }
        BodyFraming::Streamed => {
            assert!(lengths.is_empty());
            assert_eq!(codings, vec![&b"chunked"[..]]);
            reencoded_body_is_the_same(&data[head.len..]);
        }
    }
}

/// The proxy decodes a chunked upload and sends each run of data as one chunk: what it sends
/// must decode to what the client sent, and end where it ends.
fn reencoded_body_is_the_same(body: &[u8]) {
    let mut scanner = ChunkedScanner::default();
    let mut runs: Vec<Vec<u8>> = Vec::new();
    if scanner.feed_with(body, |d| runs.push(d.to_vec()), |_| {}).is_err() || !scanner.is_done() {
        return;
    }
    let mut sent = Vec::new();
    for run in &runs {
        sent.extend_from_slice(chunk_line(run.len(), &mut [0u8; 18]));
        sent.extend_from_slice(run);
        sent.extend_from_slice(CHUNK_END);
    }
    sent.extend_from_slice(LAST_CHUNK);
    let mut again = ChunkedScanner::default();
    let mut decoded = Vec::new();
    let used = again.feed_with(&sent, |d| decoded.extend_from_slice(d), |_| {});
    assert_eq!(used, Ok(sent.len()));
    assert!(again.is_done());
    assert_eq!(decoded, runs.concat());
}

fn upstream_response(data: &[u8], method: &http::Method) {
    let mut fields_out = Vec::new();
    let Ok(response::Parsed::Head(head)) = response::parse(data, method, false, &mut fields_out)
    else {
        return;
    };
    assert!(head.len <= data.len());
    assert!((100..=599).contains(&head.status));
    let view = ResponseView::new(&head, &fields_out, data);
    for http10 in [false, true] {
        let mut out = Vec::new();
        if response::write_http1(&view, Http1Client { http10, close: false }, &mut out).is_err() {
            continue;
        }
        let mut storage = [httparse::EMPTY_HEADER; 256];
        let mut rendered = httparse::Response::new(&mut storage);
        assert!(matches!(rendered.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
        let framing =
            fields(rendered.headers, "content-length").len() + fields(rendered.headers, "transfer-encoding").len();
        assert!(framing <= 1, "{:?}", String::from_utf8_lossy(&out));
    }
}

/// Where a chunked body ends and the data it carries, fed `step` bytes at a time.
fn decode(data: &[u8], step: usize) -> Option<Result<(usize, Vec<u8>), ()>> {
    let mut scanner = ChunkedScanner::default();
    let mut seen = 0;
    let mut decoded = Vec::new();
    for piece in data.chunks(step) {
        match scanner.feed_with(piece, |d| decoded.extend_from_slice(d), |_| {}) {
            Err(_) => return Some(Err(())),
            Ok(used) => {
                assert!(used <= piece.len());
                seen += used;
            }
        }
        if scanner.is_done() {
            return Some(Ok((seen, decoded)));
        }
    }
    None
}
