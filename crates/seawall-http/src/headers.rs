//! The header policy of the proxy, written once for both engines and both directions: which fields
//! are hop-by-hop (RFC 9110 §7.6.1), what `Connection` may and may not remove, and the
//! `X-Forwarded-*` and `Via` fields Seawall adds.
//!
//! Framing is decided before hop-by-hop removal, and `Connection` can never remove
//! `Content-Length`, `Transfer-Encoding` or `Host`: a client (or an upstream) that lists them in
//! `Connection` would otherwise strip the framing from a message whose body is still sent, and the
//! body would be read by the next hop as a new message (request smuggling, response splitting).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue};

/// Read access to a message's header fields, whichever engine parsed them (hyper's `HeaderMap` or
/// the HTTP/1.1 engine's in-place heads). Names are matched case-insensitively.
pub trait HeaderLookup {
    /// Calls `found` with each value of `name`, in order, until it returns true.
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool);

    /// The first value of `name`.
    fn first(&self, name: &str) -> Option<&[u8]>;

    /// Calls `each` with every field, name and value, in order.
    fn for_each_field(&self, each: &mut dyn FnMut(&[u8], &[u8]));
}

impl HeaderLookup for HeaderMap {
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool) {
        for value in self.get_all(name) {
            if found(value.as_bytes()) {
                return;
            }
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn for_each_field(&self, each: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in self {
            each(name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// The header names the proxy acts on; every other field passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Upgrade,
    Expect,
    Te,
    XForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: replaced by Seawall's own.
    XForwardedReplaced,
    /// `Keep-Alive` and the `Proxy-*` family, which never leave the hop.
    HopByHop,
    Other,
}

/// A `Retry-After` given in seconds (RFC 9110 §10.2.3 delay-seconds); `None` for an HTTP date
/// or anything else.
pub fn delta_seconds(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Whether `name` equals `lower` (lower-case letters and `-`) ignoring case, eight bytes at a
/// time. Setting bit 0x20 lower-cases letters; a header name is a token (the parsers check), and
/// no other token byte becomes a letter or `-` that way, so the comparison is exact.
pub fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
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
///
/// A name spelt with `_` where one Seawall acts on has `-` (`X_Forwarded_For`) is read as that
/// field by servers that map both to one variable (CGI, WSGI, many frameworks): such a twin is
/// treated as hop-by-hop and never forwarded, so it cannot pass for the real one.
pub fn classify(name: &[u8]) -> Name {
    match classify_exact(name) {
        Name::Other if may_be_twin(name) && is_twin(name) => Name::HopByHop,
        class => class,
    }
}

/// Whether `name` could be an underscore twin at all: it has the length of a dashed name Seawall
/// acts on, or the `proxy_` prefix. Most names are neither, and cost two comparisons.
fn may_be_twin(name: &[u8]) -> bool {
    match name.len() {
        10 | 14..=17 => name.contains(&b'_'),
        n => n > 6 && name[5] == b'_',
    }
}

/// Whether `name` with `_` read as `-` is a name Seawall acts on.
fn is_twin(name: &[u8]) -> bool {
    let mut dashed = [0u8; 32];
    let Some(dashed) = dashed.get_mut(..name.len()) else {
        // Longer than every name that matters, except the `proxy-` family.
        return name[..6].eq_ignore_ascii_case(b"proxy_");
    };
    for (d, &b) in dashed.iter_mut().zip(name) {
        *d = if b == b'_' { b'-' } else { b };
    }
    classify_exact(dashed) != Name::Other
}

fn classify_exact(name: &[u8]) -> Name {
    let is = |want: &[u8]| eq_lower(name, want);
    match name.len() {
        2 if is(b"te") => Name::Te,
        4 if is(b"host") => Name::Host,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
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

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether a comma-separated value lists `token` (ignoring case).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// At most this many field names listed in `Connection` are remembered; a message naming more is
/// refused by the caller (no real client needs that many).
pub const MAX_CONNECTION_NAMES: usize = 8;

/// What the `Connection` fields of a message say, every line counted (RFC 9110 §7.6.1).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionOptions<'a> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Field names the sender asked to be removed, except the protected ones.
    named: [&'a [u8]; MAX_CONNECTION_NAMES],
    count: usize,
    /// More names than fit were listed.
    pub overflow: bool,
}

impl<'a> ConnectionOptions<'a> {
    /// Adds the tokens of one `Connection` line.
    pub fn add(&mut self, value: &'a [u8]) {
        // The common lines, a single option, without splitting.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return;
        }
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if matches!(
                classify(token),
                Name::ContentLength | Name::TransferEncoding | Name::Host
            ) {
                // Framing and Host outlive every hop: `Connection` cannot remove them.
            } else if self.count < MAX_CONNECTION_NAMES {
                self.named[self.count] = token;
                self.count += 1;
            } else {
                self.overflow = true;
            }
        }
    }

    /// Whether any field name was listed (most messages list none).
    pub fn names_any(&self) -> bool {
        self.count > 0
    }

    /// Whether the sender listed `name` in `Connection` (so it must not be forwarded).
    pub fn names(&self, name: &[u8]) -> bool {
        self.named[..self.count].iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Whether a client's request field of class `class` is copied upstream as it is. The rest is
/// either hop-by-hop or rewritten by Seawall (framing, `Host`, `X-Forwarded-*`, `Upgrade`).
pub fn forwards_request_field(class: Name) -> bool {
    matches!(class, Name::Other)
}

/// Whether an upstream's response field of class `class` is copied to the client as it is
/// (framing, `Connection` and `Upgrade` are written by the engine).
pub fn forwards_response_field(class: Name) -> bool {
    !matches!(
        class,
        Name::ContentLength
            | Name::TransferEncoding
            | Name::Connection
            | Name::Upgrade
            | Name::Te
            | Name::HopByHop
    )
}

/// Whether a `Host` value (or an authority) has only the bytes a host and port may have
/// (RFC 3986 reg-name, IP literal, port; no user information); empty is allowed.
pub fn valid_host(value: &[u8]) -> bool {
    value.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

/// The bytes a host may have, as a table: checked for every byte of every `Host`.
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=:%[]";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// Parses a `Content-Length` value: decimal digits only (no sign, no list), at most 19 of them.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Writes `content-length: n`.
pub fn write_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\n");
}

/// Formats `n` in decimal into `buf`, returning the digits (`fmt` costs more on the hot path).
pub fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes one header field line.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the fields Seawall adds to every request it forwards: `X-Forwarded-For` (the client's
/// list, every line of it, when it is kept — see [`crate::client::Client`] — with the peer
/// appended), `X-Forwarded-Proto`, `X-Forwarded-Host`
/// (only when the request named a host) and `Via`.
pub fn write_forwarding<'v>(
    out: &mut Vec<u8>,
    forwarded_for: impl Iterator<Item = &'v [u8]>,
    client: IpAddr,
    https: bool,
    host: Option<&[u8]>,
    via: &str,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for value in forwarded_for {
        let value = value.trim_ascii();
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    write_ip(out, client);
    out.extend_from_slice(if https {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    if let Some(host) = host {
        push_field(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"via: ");
    out.extend_from_slice(via.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes an address in its usual text form; IPv4 by hand, as `fmt` costs more than the rest of
/// the head on every request.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `Via` protocol names for the HTTP versions Seawall receives.
pub fn via_for(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0 seawall",
        http::Version::HTTP_2 => "2 seawall",
        _ => "1.1 seawall",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_ignoring_case_and_nothing_else() {
        assert!(eq_lower(b"Content-Length", b"content-length"));
        assert!(eq_lower(b"X-FORWARDED-FOR", b"x-forwarded-for"));
        assert!(!eq_lower(b"Content-Lengtx", b"content-length"));
        assert!(!eq_lower(b"content-length", b"content-lengt"));
        assert!(!eq_lower(b"te", b"tE-"));
        assert_eq!(classify(b"Proxy-Authorization"), Name::HopByHop);
        assert_eq!(classify(b"TE"), Name::Te);
        assert_eq!(classify(b"hosT"), Name::Host);
        assert_eq!(classify(b"Trailer"), Name::Other, "Trailer is end to end (RFC 9110 §6.6.2)");
        assert_eq!(classify(b"X-Forwarded-Proto"), Name::XForwardedReplaced);
        assert_eq!(classify(b"Transfer-Encoding"), Name::TransferEncoding);
        assert_eq!(classify(b"X-Custom"), Name::Other);
        assert_eq!(classify(b"X_Custom"), Name::Other);
        for twin in [
            &b"X_Forwarded_For"[..],
            b"x_forwarded_host",
            b"Content_Length",
            b"proxy_authorization",
        ] {
            assert_eq!(classify(twin), Name::HopByHop, "{}", String::from_utf8_lossy(twin));
        }
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let mut options = ConnectionOptions::default();
        options.add(b"Content-Length, transfer-encoding, HOST, x-secret");
        options.add(b"close, X-Other");
        assert!(options.close);
        assert!(options.names(b"X-SECRET"));
        assert!(options.names(b"x-other"), "every Connection line counts");
        for protected in [&b"content-length"[..], b"Transfer-Encoding", b"host"] {
            assert!(!options.names(protected));
        }
    }

    #[test]
    fn forwarding_joins_every_forwarded_for_line() {
        let mut out = Vec::new();
        let lines = [&b"10.0.0.1"[..], b" 10.0.0.2, 10.0.0.3 ", b""];
        write_forwarding(
            &mut out,
            lines.into_iter(),
            "192.0.2.7".parse().unwrap(),
            false,
            Some(b"shop"),
            "1.1 seawall",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: shop\r\nvia: 1.1 seawall\r\n"
        );
    }

    #[test]
    fn writes_addresses() {
        for text in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "2001:db8::7"] {
            let mut out = Vec::new();
            write_ip(&mut out, text.parse().unwrap());
            assert_eq!(out, text.as_bytes());
        }
    }
}
