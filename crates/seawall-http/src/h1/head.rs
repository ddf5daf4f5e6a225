//! A client's request head, parsed in place (offsets into the connection's buffer, no header map),
//! checked the way RFC 9112 asks of a server (one `Host` on HTTP/1.1, one framing, no CL+TE, no
//! comma lists or invalid lengths, chunked last and once), and the head sent upstream written
//! straight from those bytes: hop-by-hop fields dropped, framing re-stated by Seawall, forwarding
//! fields added. Every HTTP/1.x request is served here: HTTP/1.0, chunked uploads,
//! `Expect: 100-continue`, upgrades and absolute-form targets included.

use std::mem::MaybeUninit;

use http::{Method, Version};

use crate::client::Client;
use crate::fields::{range, slice, Field, Fields};
use crate::headers::{has_token, parse_length, tokens, valid_host, ConnectionOptions, Name};
use crate::problem::{Reason, Refusal};

use crate::request::{write_upstream_head, BodyFraming, FieldRef, RequestView, UpstreamHead};

/// Header fields parsed without a heap allocation; beyond, up to `server.max_headers`.
const STACK_FIELDS: usize = 100;

/// A parsed request head. Offsets point into the buffer it was parsed from, which must not change
/// while the head is in use.
#[derive(Debug)]
pub struct RequestHead {
    /// Length of the head in the buffer, final blank line included.
    pub len: usize,
    pub method: Method,
    pub version: Version,
    /// Path and query (inside an absolute-form target too).
    target: (u32, u32),
    /// The authority of an absolute-form target.
    authority: Option<(u32, u32)>,
    fields: Vec<Field>,
    /// Index of the `Host` field.
    host: Option<usize>,
    pub framing: BodyFraming,
    /// The connection closes after this exchange (asked for, or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// The client waits for `100 Continue` before it sends its body.
    pub expect_continue: bool,
    /// The client asks to switch protocols (`Connection: upgrade` with an `Upgrade` field).
    pub upgrade: bool,
    /// The client's `TE` accepts trailers (so the upstream may send them).
    pub te_trailers: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            len: 0,
            method: Method::GET,
            version: Version::HTTP_11,
            target: (0, 0),
            authority: None,
            fields: Vec::new(),
            host: None,
            framing: BodyFraming::None,
            close: false,
            expect_continue: false,
            upgrade: false,
            te_trailers: false,
        }
    }
}

/// The result of parsing what the client has sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is complete and valid.
    Complete,
    /// More bytes are needed.
    Partial,
    /// The head is complete (or cannot become valid): answer this and close.
    Refused(Refusal),
}

/// Limits a head must stay within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_size: usize,
    pub max_headers: usize,
}

fn refuse(reason: Reason, detail: &'static str) -> Parsed {
    Parsed::Refused(Refusal::new(reason, detail))
}

impl RequestHead {
    /// Parses the request head at the start of `buf` into `self` (reusing its allocations).
    pub fn parse(&mut self, buf: &[u8], limits: Limits) -> Parsed {
        // Left uninitialised: writing 100 empty headers per request costs more than parsing.
        let mut storage = [const { MaybeUninit::uninit() }; STACK_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(buf, &mut storage);
        let mut heap;
        let parsed = match parsed {
            Err(httparse::Error::TooManyHeaders) if limits.max_headers > STACK_FIELDS => {
                heap = vec![MaybeUninit::uninit(); limits.max_headers + 1];
                req = httparse::Request::new(&mut []);
                req.parse_with_uninit_headers(buf, &mut heap)
            }
            other => other,
        };
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= limits.max_header_size => {
                return refuse(Reason::HeaderTooLarge, "the request head is too large")
            }
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return refuse(Reason::HeaderTooLarge, "the request has too many header fields")
            }
            Err(httparse::Error::Version) => {
                return refuse(Reason::BadRequest, "only HTTP/1.0 and HTTP/1.1 are served here")
            }
            Err(_) => return refuse(Reason::BadRequest, "the request head is malformed"),
        };
        if len > limits.max_header_size {
            return refuse(Reason::HeaderTooLarge, "the request head is too large");
        }
        if req.headers.len() > limits.max_headers {
            return refuse(Reason::HeaderTooLarge, "the request has too many header fields");
        }
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return refuse(Reason::BadRequest, "the request line is malformed");
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return refuse(Reason::BadRequest, "the request method is malformed");
        };
        if method == Method::CONNECT {
            return refuse(Reason::BadRequest, "CONNECT is not served by a reverse proxy");
        }
        self.len = len;
        self.version = if version == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        self.authority = None;
        let target_bytes = target.as_bytes();
        if target_bytes.first() == Some(&b'/') || (target == "*" && method == Method::OPTIONS) {
            self.target = range(buf, target_bytes);
        } else if let Some(rest) = strip_scheme(target_bytes) {
            let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
            if end == 0 || !valid_host(&rest[..end]) {
                return refuse(Reason::BadRequest, "the request target has no valid authority");
            }
            self.authority = Some(range(buf, &rest[..end]));
            self.target = range(buf, &rest[end..]);
        } else {
            return refuse(Reason::BadRequest, "the request target is malformed");
        }
        self.method = method;
        self.fields.clear();
        self.host = None;
        self.framing = BodyFraming::None;
        self.expect_continue = false;
        self.upgrade = false;
        self.te_trailers = false;
        let http11 = self.version == Version::HTTP_11;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        let mut hosts = 0;
        let mut upgrade_field = false;
        let mut upgrade_h2c = false;
        let mut connection = ConnectionOptions::default();
        for h in req.headers.iter() {
            let field = Field::new(buf, h.name.as_bytes(), h.value);
            match field.class {
                Name::ContentLength => {
                    let Some(n) = parse_length(h.value) else {
                        return refuse(Reason::BadRequest, "the Content-Length is invalid");
                    };
                    if length.is_some_and(|l| l != n) {
                        return refuse(Reason::BadRequest, "the Content-Length fields disagree");
                    }
                    length = Some(n);
                }
                Name::TransferEncoding => {
                    transfer_encoding = true;
                    for token in tokens(h.value) {
                        // Chunked must be applied once, and last; anything else is a coding
                        // this proxy does not take in a request.
                        if chunked {
                            return refuse(Reason::BadRequest, "chunked must be the last coding");
                        }
                        if !token.eq_ignore_ascii_case(b"chunked") {
                            return refuse(
                                Reason::UnsupportedTransferCoding,
                                "only the chunked transfer coding is accepted in a request",
                            );
                        }
                        chunked = true;
                    }
                }
                Name::Host => {
                    hosts += 1;
                    if !valid_host(h.value) {
                        return refuse(Reason::BadRequest, "the Host field is invalid");
                    }
                    self.host = Some(self.fields.len());
                }
                Name::Connection => connection.add(h.value),
                Name::Expect if http11 => {
                    if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                        return refuse(Reason::ExpectationFailed, "only 100-continue is expected");
                    }
                    self.expect_continue = true;
                }
                Name::Upgrade => {
                    upgrade_field = true;
                    upgrade_h2c |= has_token(h.value, b"h2c");
                }
                Name::Te => self.te_trailers |= has_token(h.value, b"trailers"),
                _ => {}
            }
            self.fields.push(field);
        }
        if hosts > 1 || (http11 && hosts == 0) {
            return refuse(Reason::BadRequest, "an HTTP/1.1 request needs exactly one Host field");
        }
        if connection.overflow {
            return refuse(Reason::BadRequest, "Connection names too many fields");
        }
        self.framing = match (transfer_encoding, length) {
            (true, Some(_)) => {
                return refuse(
                    Reason::BadRequest,
                    "both Content-Length and Transfer-Encoding are set",
                )
            }
            (true, None) if !http11 => {
                return refuse(Reason::BadRequest, "Transfer-Encoding is not valid in HTTP/1.0")
            }
            (true, None) if !chunked => {
                return refuse(Reason::BadRequest, "the Transfer-Encoding field is empty")
            }
            (true, None) => BodyFraming::Streamed,
            (false, Some(n)) => BodyFraming::Length(n),
            (false, None) => BodyFraming::None,
        };
        // An upgrade to h2c (deprecated by RFC 9113) is not passed on: a server that took it
        // would get a raw HTTP/2 tunnel past every per-request policy.
        self.upgrade = http11 && connection.upgrade && upgrade_field && !upgrade_h2c;
        self.close = connection.close || !(http11 || connection.keep_alive);
        if connection.names_any() {
            for field in &mut self.fields {
                field.named = connection.names(slice(buf, field.name));
            }
        }
        Parsed::Complete
    }

    /// The request target's path and query (from an absolute target, they may lack the leading
    /// `/`, which the upstream head writer adds).
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        slice(buf, self.target)
    }

    /// The path, without the query (`/` when an absolute target had none).
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let target = self.target(buf);
        match memchr::memchr(b'?', target).map_or(target, |i| &target[..i]) {
            [] => b"/",
            path => path,
        }
    }

    /// The authority of an absolute target, else the Host field.
    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        match self.authority {
            Some(authority) => Some(slice(buf, authority)),
            None => self.host.map(|i| slice(buf, self.fields[i].value)),
        }
    }

    /// The head's fields with their buffer, for [`view`](Self::view).
    pub fn fields<'h>(&'h self, buf: &'h [u8]) -> Fields<'h> {
        Fields { fields: &self.fields, buf }
    }

    /// A view of the head for the policy layer (`fields` from [`fields`](Self::fields)).
    pub fn view<'h>(
        &'h self,
        buf: &'h [u8],
        fields: &'h Fields<'h>,
        client: Client,
    ) -> RequestView<'h> {
        RequestView {
            method: &self.method,
            version: self.version,
            path: self.path(buf),
            target: self.target(buf),
            host: self.host(buf),
            headers: fields,
            framing: self.framing,
            client,
        }
    }

    /// Writes the head to send upstream into `out`, without `Host` when `host_is_server` (the
    /// proxy adds the chosen server's name) and without the final blank line; `route`, when
    /// given, rewrites its target and fields.
    pub fn write_upstream(
        &self,
        buf: &[u8],
        out: &mut Vec<u8>,
        client: Client,
        host_is_server: bool,
        added: crate::request::Added<'_>,
    ) {
        let host = self.host(buf);
        let target = match added.route {
            Some(route) => crate::edge::target(route, self.path(buf), self.target(buf)),
            None => std::borrow::Cow::Borrowed(self.target(buf)),
        };
        let head = UpstreamHead {
            method: &self.method,
            target: &target,
            host: if host_is_server { None } else { host },
            forwarded_host: host,
            upgrade: self.upgrade,
            te_trailers: self.te_trailers,
            framing: self.framing,
            client,
            version: self.version,
            edits: added.route.and_then(|r| r.request_headers.as_deref()),
            request_id: added.request_id,
        };
        let fields = self.fields.iter().map(|f| FieldRef {
            name: slice(buf, f.name),
            value: slice(buf, f.value),
            class: f.class,
            named: f.named,
        });
        write_upstream_head(out, &head, fields);
    }
}

/// `http://` or `https://` (any case) stripped from an absolute-form target.
fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::HeaderLookup;

    const LIMITS: Limits = Limits { max_header_size: 16 * 1024, max_headers: 100 };

    fn parsed(text: &str) -> (RequestHead, Parsed) {
        let mut head = RequestHead::default();
        let result = head.parse(text.as_bytes(), LIMITS);
        (head, result)
    }

    fn refused(text: &str) -> Reason {
        match parsed(text).1 {
            Parsed::Refused(r) => r.reason,
            other => panic!("{text:?} was not refused: {other:?}"),
        }
    }

    /// The head sent upstream for a client whose `X-Forwarded-For` is kept (a trusted peer).
    fn upstream(text: &str, host_is_server: bool) -> String {
        let client = Client { keep_forwarded_for: true, ..Client::direct(peer()) };
        upstream_for(text, host_is_server, client)
    }

    fn peer() -> std::net::SocketAddr {
        "192.0.2.7:1".parse().unwrap()
    }

    fn upstream_for(text: &str, host_is_server: bool, client: Client) -> String {
        let (head, result) = parsed(text);
        assert_eq!(result, Parsed::Complete, "{text:?}");
        let mut out = Vec::new();
        let added = crate::request::Added::default();
        head.write_upstream(text.as_bytes(), &mut out, client, host_is_server, added);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_http1_shape_is_served_here() {
        for text in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(parsed(text).1, Parsed::Complete, "{text}");
        }
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: a\r\n").1, Parsed::Partial);
    }

    #[test]
    fn what_a_server_must_refuse_is_refused() {
        for (text, reason) in [
            ("GET / HTTP/1.1\r\n\r\n", Reason::BadRequest),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Reason::BadRequest),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", Reason::BadRequest),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Reason::BadRequest),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Reason::UnsupportedTransferCoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Reason::UnsupportedTransferCoding),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", Reason::ExpectationFailed),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Reason::BadRequest),
            ("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", Reason::BadRequest),
            ("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", Reason::BadRequest),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n", Reason::BadRequest),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", Reason::BadRequest),
            ("GET / HTTP/2.0\r\n\r\n", Reason::BadRequest),
            ("GARBAGE\r\n\r\n", Reason::BadRequest),
        ] {
            assert_eq!(refused(text), reason, "{text:?}");
        }
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(refused(&big), Reason::HeaderTooLarge);
        let partial_big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(20_000));
        assert_eq!(refused(&partial_big), Reason::HeaderTooLarge);
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Reason::HeaderTooLarge
        );
    }

    #[test]
    fn more_fields_than_the_stack_holds_are_read_up_to_max_headers() {
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let mut head = RequestHead::default();
        let limits = Limits { max_header_size: 64 * 1024, max_headers: 200 };
        assert_eq!(head.parse(text.as_bytes(), limits), Parsed::Complete);
        assert_eq!(head.fields(text.as_bytes()).fields.len(), 151);
    }

    #[test]
    fn the_upstream_head_has_one_framing_field_and_no_hop_by_hop_fields() {
        let text = "POST /p?q=1 HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, x-secret\r\n\
                    Connection: content-length, host, x-other\r\nX-Secret: 1\r\nX-Other: 2\r\nKeep-Alive: 5\r\n\
                    Proxy-Authorization: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\
                    X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nContent-Length: 3\r\n\
                    Content-Length: 3\r\nTE: trailers, deflate\r\nExpect: 100-continue\r\nX-Kept: yes\r\n\r\n";
        assert_eq!(
            upstream(text, true),
            "POST /p?q=1 HTTP/1.1\r\nX-Kept: yes\r\nte: trailers\r\ncontent-length: 3\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop\r\nvia: 1.1 seawall\r\n"
        );
        assert!(
            upstream(text, false).contains("host: shop\r\n"),
            "Connection: host cannot drop Host"
        );
        let replaced = upstream_for(text, true, Client::direct(peer()));
        assert!(replaced.contains("\r\nx-forwarded-for: 192.0.2.7\r\n"), "{replaced}");
        assert!(!replaced.contains("10.0.0.1"), "{replaced}");
    }

    #[test]
    fn absolute_targets_http10_and_upgrades() {
        let out =
            upstream("GET HTTP://Api.Example:8080?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", false);
        assert!(out.starts_with("GET /?x=1 HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("host: Api.Example:8080\r\n"), "the target's authority wins: {out}");
        let (head, _) = parsed("GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!(head.path(b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n"), b"/x");

        let text = "GET / HTTP/1.0\r\nX-Forwarded-Host: evil\r\n\r\n";
        let (head, _) = parsed(text);
        assert!(head.close, "HTTP/1.0 closes unless asked to keep alive");
        let out = upstream(text, true);
        assert!(!out.contains("x-forwarded-host"), "no Host, no X-Forwarded-Host: {out}");
        assert!(out.contains("via: 1.0 seawall\r\n"), "{out}");
        let (head, _) = parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!head.close);

        let text = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let (head, _) = parsed(text);
        assert!(head.upgrade);
        let out = upstream(text, false);
        assert!(out.contains("upgrade: websocket\r\nconnection: upgrade\r\n"), "{out}");
        let (head, _) = parsed("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert!(!head.upgrade, "Upgrade without Connection: upgrade is hop-by-hop noise");
    }

    #[test]
    fn lookups_are_case_insensitive() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\ncookie: b=2\r\n\r\n";
        let (head, _) = parsed(text);
        let fields = head.fields(text.as_bytes());
        assert_eq!(fields.first("COOKIE"), Some(&b"a=1"[..]));
        let mut all = Vec::new();
        fields.for_each_value("cookie", &mut |v| {
            all.push(v.to_vec());
            false
        });
        assert_eq!(all.len(), 2);
    }
}
