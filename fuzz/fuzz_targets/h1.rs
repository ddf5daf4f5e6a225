//! Fuzzes the HTTP/1.1 engine's parsers with what a client or an upstream could send: request
//! heads, response heads and chunked bodies must never panic, and what they report must hold up
//! (offsets inside the input, a chunked end found at the same place whatever the read sizes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall_http::h1::chunked::ChunkedScanner;
use seawall_http::h1::head::{parse_response, Parsed, RequestHead, UpstreamHead};
use seawall_http::headers::HeaderLookup;

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    if head.parse(data) == Parsed::Complete {
        assert!(head.len <= data.len());
        let _ = head.path(data);
        let _ = head.host(data);
        let _ = head.view(data).first("cookie");
        let mut out = Vec::new();
        head.write_upstream(data, &mut out, "192.0.2.1".parse().unwrap(), true);
        assert!(out.ends_with(b"via: 1.1 seawall\r\n"));
    }

    for method in [http::Method::GET, http::Method::HEAD] {
        let mut out = Vec::new();
        if let Ok(UpstreamHead::Final(response)) = parse_response(data, &method, false, &mut out) {
            assert!(response.len <= data.len());
            assert!(out.ends_with(b"\r\n\r\n"));
        }
    }

    // The end of a chunked body does not depend on how the bytes were split into reads.
    let whole = end_of_chunked(data, data.len().max(1));
    for step in [1, 7] {
        assert_eq!(end_of_chunked(data, step), whole);
    }
});

fn end_of_chunked(data: &[u8], step: usize) -> Option<Result<usize, ()>> {
    let mut scanner = ChunkedScanner::default();
    let mut seen = 0;
    for piece in data.chunks(step) {
        match scanner.feed(piece) {
            Err(_) => return Some(Err(())),
            Ok(used) => {
                assert!(used <= piece.len());
                seen += used;
            }
        }
        if scanner.is_done() {
            return Some(Ok(seen));
        }
    }
    None
}
