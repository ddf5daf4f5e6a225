//! Message heads for the HTTP/1.1 engine: a client's request head parsed in place (offsets into
//! the connection's buffer, no header map), the head sent upstream written straight from those
//! bytes, and the upstream's response head rewritten for the client in one pass.
//!
//! Anything this engine does not handle itself — HTTP/1.0, upgrades, `Expect`, chunked uploads,
//! absolute-form targets, malformed or oversized heads — is reported as [`Parsed::HandOff`] and
//! served by hyper, which answers the odd and the malformed with the same care as before.

use std::mem::MaybeUninit;
use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, Response};

use crate::headers::{write_ip, HeaderLookup};

/// More header fields than this are left to hyper (which applies `server.max_headers`).
const MAX_FIELDS: usize = 100;
/// At most this many header names listed in `Connection` are handled here.
const MAX_CONNECTION_TOKENS: usize = 4;

/// One header field: offsets of its name and value in the buffer.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
    /// Not forwarded: hop-by-hop, or replaced by what Seawall writes.
    dropped: bool,
}

/// A parsed request head. Offsets point into the buffer it was parsed from, which must not change
/// while the head is in use.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// Length of the head in the buffer, final blank line included.
    pub len: usize,
    pub method: Method,
    target: (u32, u32),
    fields: Vec<Field>,
    host: Option<usize>,
    forwarded_for: Option<usize>,
    /// Length of the body that follows.
    pub content_length: u64,
    /// The client asked to close after this exchange.
    pub close: bool,
}

/// The result of parsing what the client has sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is complete and this engine serves it.
    Complete,
    /// More bytes are needed.
    Partial,
    /// hyper serves this request (and answers it if it is malformed).
    HandOff,
}

fn range(buf: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

fn slice(buf: &[u8], (start, end): (u32, u32)) -> &[u8] {
    &buf[start as usize..end as usize]
}

/// The header names this engine acts on; the rest pass through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    /// `Upgrade` and `Expect`: requests that carry them go to hyper.
    HandOff,
    XForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: replaced by Seawall's own.
    XForwardedReplaced,
    /// The other hop-by-hop headers (RFC 9110 §7.6.1), with the `proxy-` family that never
    /// leaves the hop either.
    HopByHop,
    Other,
}

/// Whether `name` equals `lower` (lower-case letters and `-`) ignoring case, eight bytes at a
/// time. Setting bit 0x20 lower-cases letters; a header name is a token (httparse checks), and no
/// other token byte becomes a letter or `-` that way, so the comparison is exact.
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    name.chunks(8).zip(lower.chunks(8)).all(|(n, l)| {
        let mask = word(&[0x20; 8][..n.len()]);
        word(n) | mask == word(l)
    })
}

/// Classifies a header name: by length first, so most names cost one comparison or none.
fn classify(name: &[u8]) -> Name {
    let is = |want: &[u8]| eq_lower(name, want);
    match name.len() {
        2 if is(b"te") => Name::HopByHop,
        4 if is(b"host") => Name::Host,
        6 if is(b"expect") => Name::HandOff,
        7 if is(b"upgrade") => Name::HandOff,
        7 if is(b"trailer") => Name::HopByHop,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::HopByHop,
        14 if is(b"content-length") => Name::ContentLength,
        15 if is(b"x-forwarded-for") => Name::XForwardedFor,
        16 if is(b"x-forwarded-host") => Name::XForwardedReplaced,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        17 if is(b"x-forwarded-proto") => Name::XForwardedReplaced,
        n if n > 6 && eq_lower(&name[..6], b"proxy-") => Name::HopByHop,
        _ => Name::Other,
    }
}

/// The comma-separated tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

impl RequestHead {
    /// Parses the request head at the start of `buf` into `self` (reusing its allocations).
    pub fn parse(&mut self, buf: &[u8]) -> Parsed {
        // Left uninitialised: writing 100 empty headers per request costs more than parsing.
        let mut storage = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut storage) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::HandOff,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::HandOff;
        };
        if !path.starts_with('/') {
            return Parsed::HandOff;
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOff };
        self.len = len;
        self.method = method;
        self.target = range(buf, path.as_bytes());
        self.fields.clear();
        self.host = None;
        self.forwarded_for = None;
        self.content_length = 0;
        self.close = false;
        let mut seen_length = false;
        let mut named: [&[u8]; MAX_CONNECTION_TOKENS] = [b""; MAX_CONNECTION_TOKENS];
        let mut named_count = 0;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let dropped = match classify(name) {
                Name::Other => false,
                Name::ContentLength => {
                    let Some(length) = parse_length(h.value) else { return Parsed::HandOff };
                    if seen_length && length != self.content_length {
                        return Parsed::HandOff;
                    }
                    seen_length = true;
                    self.content_length = length;
                    false
                }
                Name::Host => {
                    if self.host.is_some() {
                        return Parsed::HandOff;
                    }
                    self.host = Some(self.fields.len());
                    false
                }
                Name::TransferEncoding | Name::HandOff => return Parsed::HandOff,
                Name::Connection => {
                    for token in tokens(h.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            self.close = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            return Parsed::HandOff;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                            if named_count == MAX_CONNECTION_TOKENS {
                                return Parsed::HandOff;
                            }
                            named[named_count] = token;
                            named_count += 1;
                        }
                    }
                    true
                }
                Name::XForwardedFor => {
                    if self.forwarded_for.is_none() {
                        self.forwarded_for = Some(self.fields.len());
                    }
                    true
                }
                Name::XForwardedReplaced | Name::HopByHop => true,
            };
            self.fields.push(Field { name: range(buf, name), value: range(buf, h.value), dropped });
        }
        if named_count > 0 {
            for field in &mut self.fields {
                let name = slice(buf, field.name);
                if named[..named_count].iter().any(|t| t.eq_ignore_ascii_case(name)) {
                    field.dropped = true;
                }
            }
        }
        Parsed::Complete
    }

    /// How many header fields the head has.
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    /// The request target (origin form: path and query).
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        slice(buf, self.target)
    }

    /// The path, without the query.
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let target = self.target(buf);
        &target[..memchr::memchr(b'?', target).unwrap_or(target.len())]
    }

    /// The Host header, when the client sent one.
    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.host.map(|i| slice(buf, self.fields[i].value))
    }

    /// A view of the head for header lookups.
    pub fn view<'h>(&'h self, buf: &'h [u8]) -> HeadView<'h> {
        HeadView { head: self, buf }
    }

    /// Writes the head to send upstream into `out`: the request line and the client's fields
    /// without hop-by-hop ones, then `X-Forwarded-For`/`-Proto`/`-Host` and `Via`. The `Host`
    /// field is the client's unless `host_is_server`; then the caller adds the server's name
    /// (see [`write_host_and_end`]), which depends on the server picked.
    pub fn write_upstream(
        &self,
        buf: &[u8],
        out: &mut Vec<u8>,
        client: IpAddr,
        host_is_server: bool,
    ) {
        out.clear();
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target(buf));
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (i, field) in self.fields.iter().enumerate() {
            if field.dropped || (host_is_server && self.host == Some(i)) {
                continue;
            }
            push_field(out, slice(buf, field.name), slice(buf, field.value));
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(i) = self.forwarded_for {
            out.extend_from_slice(slice(buf, self.fields[i].value));
            out.extend_from_slice(b", ");
        }
        write_ip(out, client);
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
        if let Some(host) = self.host(buf) {
            push_field(out, b"x-forwarded-host", host);
        }
        out.extend_from_slice(b"via: 1.1 seawall\r\n");
    }
}

/// Ends an upstream head begun by [`RequestHead::write_upstream`]: the server's name as `Host`
/// when `host` is given, then the blank line.
pub fn write_host_and_end(out: &mut Vec<u8>, host: Option<&str>) {
    if let Some(host) = host {
        push_field(out, b"host", host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// A request head with the buffer it points into.
pub struct HeadView<'h> {
    head: &'h RequestHead,
    buf: &'h [u8],
}

impl HeaderLookup for HeadView<'_> {
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool) {
        for field in &self.head.fields {
            if slice(self.buf, field.name).eq_ignore_ascii_case(name.as_bytes())
                && found(slice(self.buf, field.value))
            {
                return;
            }
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        let field = self
            .head
            .fields
            .iter()
            .find(|f| slice(self.buf, f.name).eq_ignore_ascii_case(name.as_bytes()))?;
        Some(slice(self.buf, field.value))
    }
}

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    /// Chunked: passed through as it is.
    Chunked,
    /// Until the upstream closes: re-framed as chunks for the client.
    UntilClose,
}

/// An upstream response head, already rewritten for the client.
#[derive(Debug)]
pub struct ResponseHead {
    /// Length of the head in the upstream buffer.
    pub len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// The head tells the client that the connection closes after this response.
    pub close_client: bool,
}

/// What the upstream's bytes so far amount to.
#[derive(Debug)]
pub enum UpstreamHead {
    Partial,
    /// An interim (1xx) response of `len` bytes, to skip.
    Interim(usize),
    Final(ResponseHead),
}

/// The upstream sent something that is not a response this proxy can forward.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("the response has an invalid Content-Length")]
    Length,
    #[error("the response uses a transfer coding other than chunked last")]
    Coding,
    #[error("the upstream switched protocols without being asked to")]
    UnexpectedSwitch,
}

/// Parses the upstream's response head at the start of `buf`; on a final response, writes the
/// head for the client into `out`: hop-by-hop fields removed, framing re-stated, `Via` added and
/// `Connection: close` when `close_client`.
pub fn parse_response(
    buf: &[u8],
    request_method: &Method,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Result<UpstreamHead, BadResponse> {
    let mut storage = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut storage,
    );
    let len = match parsed.map_err(BadResponse::Parse)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(UpstreamHead::Partial),
    };
    let status = res.code.unwrap_or(0);
    match status {
        101 => return Err(BadResponse::UnexpectedSwitch),
        100..=199 => return Ok(UpstreamHead::Interim(len)),
        _ => {}
    }
    let mut keep_alive = res.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut named: [&[u8]; MAX_CONNECTION_TOKENS] = [b""; MAX_CONNECTION_TOKENS];
    let mut named_count = 0;
    let mut names = [Name::Other; MAX_FIELDS];
    for (h, class) in res.headers.iter().zip(names.iter_mut()) {
        *class = classify(h.name.as_bytes());
        match *class {
            Name::ContentLength => {
                let value = parse_length(h.value).ok_or(BadResponse::Length)?;
                if length.is_some_and(|l| l != value) {
                    return Err(BadResponse::Length);
                }
                length = Some(value);
            }
            Name::TransferEncoding => {
                let last = tokens(h.value).last().unwrap_or_default();
                chunked = last.eq_ignore_ascii_case(b"chunked");
                coded |= tokens(h.value).count() > 1;
                if !chunked {
                    return Err(BadResponse::Coding);
                }
            }
            Name::Connection => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive |= res.version == Some(0);
                    } else if named_count < MAX_CONNECTION_TOKENS {
                        named[named_count] = token;
                        named_count += 1;
                    }
                }
            }
            _ => {}
        }
    }
    let no_body = *request_method == Method::HEAD || status == 204 || status == 304;
    let body = match (no_body, chunked, length) {
        (true, ..) => BodyKind::Empty,
        (false, true, _) => BodyKind::Chunked,
        (false, false, Some(len)) => BodyKind::Length(len),
        (false, false, None) => BodyKind::UntilClose,
    };
    if body == BodyKind::UntilClose {
        keep_alive = false;
    }

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (h, class) in res.headers.iter().zip(names) {
        let name = h.name.as_bytes();
        let skip = match class {
            Name::TransferEncoding => !coded,
            Name::Connection | Name::HopByHop => true,
            Name::ContentLength => chunked,
            // `Upgrade` is hop-by-hop in a response too.
            Name::HandOff => name.len() == 7,
            _ => false,
        };
        if skip || named[..named_count].iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        push_field(out, name, h.value);
    }
    if matches!(body, BodyKind::UntilClose) || (chunked && !coded && !no_body) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"via: 1.1 seawall\r\n");
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(UpstreamHead::Final(ResponseHead { len, status, body, keep_alive, close_client }))
}

/// Writes a complete response generated by Seawall (a problem document) into `out`.
pub fn write_response(out: &mut Vec<u8>, response: &Response<Bytes>, close: bool) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(response.status().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(response.status().canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        if name != http::header::CONNECTION {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(response.body().len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(response.body());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (RequestHead, Parsed) {
        let mut head = RequestHead::default();
        let result = head.parse(text.as_bytes());
        (head, result)
    }

    #[test]
    fn common_requests_are_served_here_and_the_rest_handed_off() {
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: a\r\n\r\n").1, Parsed::Complete);
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: a\r\n").1, Parsed::Partial);
        for odd in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(parsed(odd).1, Parsed::HandOff, "{odd}");
        }
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_adds_forwarding() {
        let text = "POST /p?q=1 HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, x-secret\r\n\
                    X-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nX-Forwarded-For: 10.0.0.1\r\n\
                    X-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nContent-Length: 3\r\nX-Kept: yes\r\n\r\n";
        let (head, result) = parsed(text);
        assert_eq!(result, Parsed::Complete);
        assert_eq!(head.content_length, 3);
        assert_eq!(head.path(text.as_bytes()), b"/p");
        let mut out = Vec::new();
        head.write_upstream(text.as_bytes(), &mut out, "192.0.2.7".parse().unwrap(), true);
        write_host_and_end(&mut out, Some("backend:8080"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nContent-Length: 3\r\nX-Kept: yes\r\n\
             x-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop\r\nvia: 1.1 seawall\r\nhost: backend:8080\r\n\r\n"
        );
    }

    #[test]
    fn names_compare_ignoring_case_and_nothing_else() {
        assert!(eq_lower(b"Content-Length", b"content-length"));
        assert!(eq_lower(b"X-FORWARDED-FOR", b"x-forwarded-for"));
        assert!(!eq_lower(b"Content-Lengtx", b"content-length"));
        assert!(!eq_lower(b"content-length", b"content-lengt"));
        assert!(!eq_lower(b"te", b"tE-"));
        assert_eq!(classify(b"Proxy-Authorization"), Name::HopByHop);
        assert_eq!(classify(b"TE"), Name::HopByHop);
        assert_eq!(classify(b"Host"), Name::Host);
        assert_eq!(classify(b"hosT"), Name::Host);
        assert_eq!(classify(b"X-Forwarded-Proto"), Name::XForwardedReplaced);
        assert_eq!(classify(b"Transfer-Encoding"), Name::TransferEncoding);
        assert_eq!(classify(b"X-Custom"), Name::Other);
    }

    #[test]
    fn lookups_are_case_insensitive() {
        let text = "GET / HTTP/1.1\r\nCookie: a=1\r\ncookie: b=2\r\n\r\n";
        let (head, _) = parsed(text);
        let view = head.view(text.as_bytes());
        assert_eq!(view.first("COOKIE"), Some(&b"a=1"[..]));
        let mut all = Vec::new();
        view.for_each_value("cookie", &mut |v| {
            all.push(v.to_vec());
            false
        });
        assert_eq!(all.len(), 2);
    }

    fn response(text: &str, method: Method) -> (Result<UpstreamHead, BadResponse>, String) {
        let mut out = Vec::new();
        let head = parse_response(text.as_bytes(), &method, false, &mut out);
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing() {
        let (head, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\nhello",
            Method::GET,
        );
        let UpstreamHead::Final(head) = head.unwrap() else { panic!() };
        assert_eq!((head.status, head.body, head.keep_alive), (200, BodyKind::Length(5), true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nvia: 1.1 seawall\r\n\r\n");

        let (head, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            Method::GET,
        );
        assert!(matches!(
            head,
            Ok(UpstreamHead::Final(ResponseHead { body: BodyKind::Chunked, .. }))
        ));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nvia: 1.1 seawall\r\n\r\n"
        );

        let (head, out) = response("HTTP/1.0 200 OK\r\n\r\n", Method::GET);
        let UpstreamHead::Final(head) = head.unwrap() else { panic!() };
        assert_eq!((head.body, head.keep_alive), (BodyKind::UntilClose, false));
        assert!(out.contains("transfer-encoding: chunked\r\n"));

        let (head, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD);
        assert!(matches!(
            head,
            Ok(UpstreamHead::Final(ResponseHead { body: BodyKind::Empty, .. }))
        ));
        let (head, _) = response("HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", Method::GET);
        assert!(matches!(head, Ok(UpstreamHead::Interim(_))));
        let (head, _) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Method::GET,
        );
        assert!(matches!(head, Err(BadResponse::Length)));
    }
}
