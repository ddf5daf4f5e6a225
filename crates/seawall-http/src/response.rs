//! The upstream's response head: parsed in place (offsets into the connection's buffer), checked
//! (status 100–599, one length, head size, framing per RFC 9112 §6.3), seen by policies through a
//! [`ResponseView`], and rendered for the client — as HTTP/1 bytes by the HTTP/1.1 engine, as a
//! header map by the hyper engine — with one set of rules: hop-by-hop fields removed, framing
//! re-stated by Seawall, `Via` added.

use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::fields::{range, slice, Field, Fields};
use crate::headers::{
    forwards_response_field, parse_length, push_field, tokens, via_for, write_content_length,
    ConnectionOptions, HeaderLookup, Name,
};

/// A response head larger than this is refused (502).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// More header fields than this in a response are refused (502).
const MAX_FIELDS: usize = 200;

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    /// Chunked (chunked is the last transfer coding).
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// Sees the decoded body of a response as it passes (the cache fills from one).
pub trait BodyTap {
    /// The next bytes of the body.
    fn data(&mut self, bytes: &[u8]);
    /// The body ended: `complete` unless it was cut short.
    fn end(&mut self, complete: bool);
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Length of the head in the buffer.
    pub len: usize,
    pub status: u16,
    /// The upstream spoke HTTP/1.0.
    pub http10: bool,
    reason: (u32, u32),
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// Transfer codings other than chunked were applied (e.g. `gzip`): the body can only be
    /// passed on to a client that speaks HTTP/1.1, with those codings announced.
    pub coded: bool,
    /// The declared `Content-Length` (also for bodiless answers to HEAD).
    pub content_length: Option<u64>,
}

impl ResponseHead {
    /// Forgets the reason phrase the upstream wrote (a third party's may carry anything): the
    /// status line goes on without one.
    pub fn drop_reason(&mut self) {
        self.reason = (0, 0);
    }

    /// An interim (1xx) response other than 101.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// What the upstream's bytes so far amount to.
#[derive(Debug)]
pub enum Parsed {
    Partial,
    Head(ResponseHead),
}

/// The upstream sent something that is not a response this proxy can forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid status code {0}")]
    Status(u16),
    #[error("response head over {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("the response has an invalid Content-Length or Transfer-Encoding")]
    Length,
    #[error("the upstream switched protocols without being asked to")]
    UnexpectedSwitch,
}

/// Parses the response head at the start of `buf` into `fields`. `upgrade` says whether the
/// request asked to switch protocols (only then is a 101 acceptable).
pub fn parse(
    buf: &[u8],
    request_method: &Method,
    upgrade: bool,
    fields: &mut Vec<Field>,
) -> Result<Parsed, BadResponse> {
    let mut storage = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut storage,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(BadResponse::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(e) => return Err(BadResponse::Parse(e)),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(BadResponse::TooLarge);
    }
    let status = res.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(BadResponse::Status(status));
    }
    if status == 101 && !upgrade {
        return Err(BadResponse::UnexpectedSwitch);
    }
    let http10 = res.version == Some(0);
    fields.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut chunked_seen = false;
    let mut transfer_coded = false;
    let mut other_codings = false;
    let mut connection = ConnectionOptions::default();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let field = Field::new(buf, name, h.value);
        match field.class {
            Name::ContentLength => {
                let value = parse_length(h.value).ok_or(BadResponse::Length)?;
                if length.is_some_and(|l| l != value) {
                    return Err(BadResponse::Length);
                }
                length = Some(value);
            }
            Name::TransferEncoding => {
                // Across lines the codings form one list; chunked counts only when it is last,
                // and may be applied only once.
                for token in tokens(h.value) {
                    transfer_coded = true;
                    if token.eq_ignore_ascii_case(b"chunked") {
                        if chunked_seen {
                            return Err(BadResponse::Length);
                        }
                        chunked_seen = true;
                        chunked = true;
                    } else {
                        chunked = false;
                        other_codings = true;
                    }
                }
            }
            Name::Connection => connection.add(h.value),
            _ => {}
        }
        fields.push(field);
    }
    if connection.overflow {
        return Err(BadResponse::Parse(httparse::Error::TooManyHeaders));
    }
    if connection.names_any() {
        for field in fields.iter_mut() {
            field.named = connection.names(slice(buf, field.name));
        }
    }
    let no_body = *request_method == Method::HEAD
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let framing = match (no_body, transfer_coded, chunked, length) {
        (true, ..) => Framing::Empty,
        (false, true, true, _) => Framing::Chunked,
        // A transfer coding without chunked last: only the close ends the body (§6.3 item 4).
        (false, true, false, _) => Framing::UntilClose,
        (false, false, _, Some(len)) => Framing::Length(len),
        (false, false, _, None) => Framing::UntilClose,
    };
    let persistent = if http10 { connection.keep_alive } else { !connection.close };
    // An HTTP/1.0 message with Transfer-Encoding has faulty framing by definition (§6.1): read
    // it, then close. So is one with both framings (§6.3 item 3).
    let keep_alive = persistent
        && !(http10 && transfer_coded)
        && !(transfer_coded && length.is_some())
        && framing != Framing::UntilClose;
    Ok(Parsed::Head(ResponseHead {
        len,
        status,
        http10,
        reason: range(buf, res.reason.unwrap_or("").as_bytes()),
        framing,
        keep_alive,
        coded: other_codings,
        content_length: length,
    }))
}

/// A response head with the buffer and fields it points into, for policies (and the cache).
pub struct ResponseView<'h> {
    pub head: &'h ResponseHead,
    fields: &'h [Field],
    buf: &'h [u8],
}

impl<'h> ResponseView<'h> {
    /// A view of `head`, parsed from `buf` into `fields`.
    pub fn new(head: &'h ResponseHead, fields: &'h [Field], buf: &'h [u8]) -> Self {
        ResponseView { head, fields, buf }
    }

    fn lookup(&self) -> Fields<'h> {
        Fields { fields: self.fields, buf: self.buf }
    }

    /// The reason phrase as sent.
    pub fn reason(&self) -> &'h [u8] {
        slice(self.buf, self.head.reason)
    }

    /// The first value of field `name` (given in lower case).
    pub fn first(&self, name: &str) -> Option<&'h [u8]> {
        let found = self
            .fields
            .iter()
            .find(|f| crate::headers::eq_lower(slice(self.buf, f.name), name.as_bytes()));
        found.map(|f| slice(self.buf, f.value))
    }

    /// The fields that go on to the client, in order.
    pub(crate) fn forwarded(&self) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + '_ {
        self.fields
            .iter()
            .filter(|f| !f.named && forwards_response_field(f.class))
            .map(|f| (slice(self.buf, f.name), slice(self.buf, f.value)))
    }

    /// The transfer codings as sent (every `Transfer-Encoding` line, joined).
    fn codings(&self, out: &mut Vec<u8>) {
        let mut first = true;
        for f in self.fields.iter().filter(|f| f.class == Name::TransferEncoding) {
            for token in tokens(slice(self.buf, f.value)) {
                if !first {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(token);
                first = false;
            }
        }
    }
}

impl HeaderLookup for ResponseView<'_> {
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool) {
        self.lookup().for_each_value(name, found);
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.lookup().get(name)
    }

    fn for_each_field(&self, each: &mut dyn FnMut(&[u8], &[u8])) {
        self.lookup().for_each_field(each);
    }
}

/// Our `Via` entry on an answer: the protocol received from the upstream.
fn via_from(head: &ResponseHead) -> &'static str {
    via_for(if head.http10 { http::Version::HTTP_10 } else { http::Version::HTTP_11 })
}

/// How the body reaches an HTTP/1 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    /// No body.
    None,
    /// The upstream's bytes as they are (same framing).
    PassThrough,
    /// Each read of an until-close body sent as one chunk.
    Rechunk,
    /// Chunked data decoded and sent until the connection closes (an HTTP/1.0 client).
    Decode,
}

/// The HTTP/1 client a response is rendered for.
#[derive(Debug, Clone, Copy)]
pub struct Http1Client {
    /// The client spoke HTTP/1.0.
    pub http10: bool,
    /// The connection closes after this response (the client asked, the gateway drains...).
    pub close: bool,
}

/// A response that cannot be passed on to this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the response uses a transfer coding this client cannot receive")]
pub struct Unrepresentable;

/// Writes the head for an HTTP/1 client into `out`, with Seawall's own `added` field lines;
/// returns how the body goes and whether the client connection stays open after it.
pub fn write_http1(
    view: &ResponseView<'_>,
    client: Http1Client,
    added: &[u8],
    out: &mut Vec<u8>,
) -> Result<(ClientBody, bool), Unrepresentable> {
    let head = view.head;
    let body = match (head.framing, client.http10) {
        (Framing::Empty, _) => ClientBody::None,
        (Framing::Length(_), _) => ClientBody::PassThrough,
        (Framing::Chunked | Framing::UntilClose, true) if head.coded => {
            return Err(Unrepresentable)
        }
        (Framing::Chunked, false) => ClientBody::PassThrough,
        (Framing::Chunked, true) => ClientBody::Decode,
        (Framing::UntilClose, false) => ClientBody::Rechunk,
        (Framing::UntilClose, true) => ClientBody::PassThrough,
    };
    // A body that ends with the connection, or a client that asked, closes it.
    let close_delimited = matches!(body, ClientBody::Decode)
        || (client.http10 && head.framing == Framing::UntilClose);
    let keep_open = !client.close && !close_delimited;
    out.clear();
    write_status_line(out, head.status, view.reason());
    for (name, value) in view.forwarded() {
        push_field(out, name, value);
    }
    out.extend_from_slice(added);
    match head.framing {
        Framing::Length(n) => write_content_length(out, n),
        // A 204 carries no length (RFC 9110 §8.6); HEAD and 304 state the would-be body's.
        Framing::Empty if head.status == 204 => {}
        Framing::Empty => {
            if let Some(n) = head.content_length {
                write_content_length(out, n);
            }
        }
        Framing::Chunked if !client.http10 => {
            out.extend_from_slice(b"transfer-encoding: ");
            view.codings(out);
            out.extend_from_slice(b"\r\n");
        }
        Framing::UntilClose if !client.http10 => {
            out.extend_from_slice(b"transfer-encoding: ");
            if head.coded {
                view.codings(out);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"chunked\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    push_field(out, b"via", via_from(head).as_bytes());
    if !keep_open {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((body, keep_open))
}

/// Writes an interim (1xx) response or a protocol switch (101, with its `Upgrade`) for an
/// HTTP/1.1 client into `out`.
pub fn write_http1_informational(view: &ResponseView<'_>, out: &mut Vec<u8>) {
    out.clear();
    write_status_line(out, view.head.status, view.reason());
    for (name, value) in view.forwarded() {
        push_field(out, name, value);
    }
    if view.head.status == 101 {
        for f in view.fields.iter().filter(|f| f.class == Name::Upgrade) {
            push_field(out, slice(view.buf, f.name), slice(view.buf, f.value));
        }
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    push_field(out, b"via", via_from(view.head).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// The head as a header map for the hyper engine (HTTP/2 clients): hop-by-hop fields removed,
/// `content-length` kept when the length is known, `Via` and Seawall's `added` field lines
/// added. A coded body cannot be sent.
pub fn to_header_map(view: &ResponseView<'_>, added: &[u8]) -> Result<HeaderMap, Unrepresentable> {
    let head = view.head;
    if head.coded && head.framing != Framing::Empty {
        return Err(Unrepresentable);
    }
    let mut map = HeaderMap::with_capacity(view.fields.len() + 2);
    for (name, value) in view.forwarded() {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    let length = match head.framing {
        Framing::Length(n) => Some(n),
        // A 204 carries no length (RFC 9110 §8.6).
        Framing::Empty if head.status == 204 => None,
        Framing::Empty => head.content_length,
        _ => None,
    };
    if let Some(n) = length {
        map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    map.append(http::header::VIA, HeaderValue::from_static(via_from(head)));
    crate::problem::append_field_lines(&mut map, added);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<(ResponseHead, Vec<Field>), BadResponse> {
        let mut fields = Vec::new();
        match parse(text.as_bytes(), &method, false, &mut fields)? {
            Parsed::Head(h) => Ok((h, fields)),
            Parsed::Partial => panic!("partial: {text}"),
        }
    }

    fn render(text: &str, client: Http1Client) -> (String, ClientBody, bool) {
        let (h, fields) = head(text, Method::GET).unwrap();
        let view = ResponseView::new(&h, &fields, text.as_bytes());
        let mut out = Vec::new();
        let (body, open) = write_http1(&view, client, b"", &mut out).unwrap();
        (String::from_utf8(out).unwrap(), body, open)
    }

    const V11: Http1Client = Http1Client { http10: false, close: false };
    const V10: Http1Client = Http1Client { http10: true, close: false };

    #[test]
    fn framing_is_restated_and_hop_by_hop_fields_go() {
        let (out, body, open) = render(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nProxy-X: 1\r\n\r\nhello",
            V11,
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nvia: 1.1 seawall\r\n\r\n");
        assert_eq!((body, open), (ClientBody::PassThrough, true));
    }

    #[test]
    fn connection_cannot_unframe_a_response() {
        let (out, ..) = render(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
            V11,
        );
        assert!(out.contains("content-length: 5\r\n"), "{out}");
        let (out, ..) = render(
            "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            V11,
        );
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    }

    #[test]
    fn chunked_wins_over_length_and_the_connection_is_not_reused() {
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let (out, ..) = render(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            V11,
        );
        assert!(!out.contains("content-length"), "{out}");
    }

    #[test]
    fn http10_responses_are_never_reused() {
        let (h, _) = head(
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let (h, _) = head(
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(h.keep_alive, "a length-framed HTTP/1.0 keep-alive answer may be reused");
        let (h, _) = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET).unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn codings_without_chunked_last_read_until_close() {
        let (h, _) =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Method::GET).unwrap();
        assert_eq!((h.framing, h.coded, h.keep_alive), (Framing::UntilClose, true, false));
        let (out, body, _) = render("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", V11);
        assert!(out.contains("transfer-encoding: gzip, chunked\r\n"), "{out}");
        assert_eq!(body, ClientBody::Rechunk);
        let (out, body, _) =
            render("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", V11);
        assert!(out.contains("transfer-encoding: gzip, chunked\r\n"), "{out}");
        assert_eq!(body, ClientBody::PassThrough);
    }

    #[test]
    fn bad_heads_are_refused() {
        for (text, want) in [
            ("HTTP/1.1 000 Zero\r\n\r\n", BadResponse::Status(0)),
            ("HTTP/1.1 099 Low\r\n\r\n", BadResponse::Status(99)),
            ("HTTP/1.1 999 High\r\n\r\n", BadResponse::Status(999)),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                BadResponse::Length,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", BadResponse::Length),
            ("HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", BadResponse::UnexpectedSwitch),
        ] {
            assert_eq!(head(text, Method::GET).unwrap_err(), want, "{text}");
        }
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(head(&big, Method::GET).unwrap_err(), BadResponse::TooLarge);
    }

    #[test]
    fn http10_clients_get_decoded_or_close_delimited_bodies() {
        let (out, body, open) = render(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            V10,
        );
        assert!(!out.contains("content-length") && !out.contains("transfer-encoding"), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert_eq!((body, open), (ClientBody::Decode, false));
        let (out, _, open) = render("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", V10);
        assert!(out.contains("connection: keep-alive\r\n"), "{out}");
        assert!(open);
    }

    #[test]
    fn informational_responses_and_bodiless_answers() {
        let (h, _) = head("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", Method::GET).unwrap();
        assert!(h.is_interim());
        assert_eq!(h.framing, Framing::Empty);
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD).unwrap();
        assert_eq!((h.framing, h.content_length), (Framing::Empty, Some(5)));
        let (out, ..) = render("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", V11);
        assert!(out.contains("content-length: 5"), "{out}");
    }

    #[test]
    fn numbers_format() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(crate::headers::itoa_u64(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }
}
