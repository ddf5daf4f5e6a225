//! The PROXY protocol (v1 text and v2 binary, <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>):
//! a load balancer in front of Seawall states the client's address in a header it sends first on
//! each connection. With `server.proxy_protocol = true`, [`read_header`] reads that header —
//! before TLS and before any HTTP byte — exactly: bytes are peeked, and only the header's own are
//! consumed, so a request that follows in the same segment stays for the engine.
//!
//! Parsing is strict: a connection whose header is missing, malformed, longer than the spec
//! allows or not complete within the header timeout is closed (and counted), never guessed at.
//! Written by hand: the format is small, and the crates that parse it either buffer past the
//! header or allocate per connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (12 bytes).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 header's start.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included (the spec's worst case, TCP6).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: 16 bytes and 2 KiB of addresses and TLVs. The format allows
/// 64 KiB; no load balancer sends more than a few hundred bytes, and a peer that claims more is
/// holding a connection open on a promise.
pub const V2_MAX: usize = 16 + 2048;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// The header is the first `len` bytes; `source` is the client's address, or `None` when
    /// the connection's own peer is to be kept (v1 `UNKNOWN`, v2 `LOCAL`, a v2 family without
    /// addresses).
    Complete { len: usize, source: Option<SocketAddr> },
    /// So far a valid beginning: every byte seen belongs to the header.
    Partial,
    /// Not a PROXY protocol header, or a malformed one.
    Invalid(&'static str),
}

/// Why a connection was closed before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Invalid(&'static str),
    /// The header was not complete within the timeout.
    TimedOut,
    /// The client closed (or the socket failed) before the header was complete.
    Closed,
}

/// Reads the PROXY protocol header that starts `stream`, within `timeout`. Returns the client
/// address it states (`None`: keep the TCP peer's). Only the header's bytes are consumed.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Refused> {
    match tokio::time::timeout(timeout, read_exactly_the_header(stream)).await {
        Ok(result) => result,
        Err(_) => Err(Refused::TimedOut),
    }
}

async fn read_exactly_the_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    // The bytes of the header consumed so far, then the bytes peeked after them.
    let mut seen = [0u8; V2_MAX];
    let mut consumed = 0;
    loop {
        let n = stream.peek(&mut seen[consumed..]).await.map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        match parse(&seen[..consumed + n]) {
            Parse::Complete { len, source } => {
                let rest = len - consumed;
                stream
                    .read_exact(&mut seen[consumed..consumed + rest])
                    .await
                    .map_err(|_| Refused::Closed)?;
                return Ok(source);
            }
            Parse::Partial if consumed + n == seen.len() => {
                return Err(Refused::Invalid("header longer than allowed"))
            }
            // Every byte seen is the header's: take them off the socket, so that the next
            // peek waits for new ones.
            Parse::Partial => {
                stream
                    .read_exact(&mut seen[consumed..consumed + n])
                    .await
                    .map_err(|_| Refused::Closed)?;
                consumed += n;
            }
            Parse::Invalid(why) => return Err(Refused::Invalid(why)),
        }
    }
}

/// Parses the header at the start of `bytes` (which may hold more after it).
pub fn parse(bytes: &[u8]) -> Parse {
    if bytes.starts_with(V2_SIGNATURE) {
        parse_v2(bytes)
    } else if bytes.starts_with(V1_PREFIX) {
        parse_v1(bytes)
    } else if V2_SIGNATURE.starts_with(bytes) || V1_PREFIX.starts_with(bytes) {
        Parse::Partial
    } else {
        Parse::Invalid("no PROXY protocol header")
    }
}

fn parse_v1(bytes: &[u8]) -> Parse {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    // The line is printable ASCII up to its CR: anything else (a bare LF, a NUL, UTF-8) ends it
    // as malformed, so a header's every prefix is a valid beginning.
    let Some(cr) = window.iter().position(|&b| !(b' '..=b'~').contains(&b)) else {
        return if bytes.len() >= V1_MAX {
            Parse::Invalid("v1 header longer than 107 bytes")
        } else {
            Parse::Partial
        };
    };
    if window[cr] != b'\r' {
        return Parse::Invalid("v1 header has a byte that is not printable ASCII");
    }
    match bytes.get(cr + 1) {
        None if cr + 1 < V1_MAX => return Parse::Partial,
        Some(b'\n') if cr + 2 <= V1_MAX => {}
        _ => return Parse::Invalid("v1 header ends without CRLF"),
    }
    let Ok(line) = std::str::from_utf8(&bytes[V1_PREFIX.len()..cr]) else {
        return Parse::Invalid("v1 header is not ASCII");
    };
    let len = cr + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Parse::Complete { len, source: None };
    }
    let mut parts = line.split(' ');
    let (Some(family), Some(src), Some(dst), Some(sport), Some(dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Invalid("v1 header does not have five fields");
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => match (src.parse::<Ipv4Addr>(), dst.parse::<Ipv4Addr>()) {
            (Ok(s), Ok(d)) => (s.into(), d.into()),
            _ => return Parse::Invalid("v1 TCP4 address is not IPv4"),
        },
        "TCP6" => match (src.parse::<Ipv6Addr>(), dst.parse::<Ipv6Addr>()) {
            (Ok(s), Ok(d)) => (s.into(), d.into()),
            _ => return Parse::Invalid("v1 TCP6 address is not IPv6"),
        },
        _ => return Parse::Invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let _ = dst;
    match (port(sport), port(dport)) {
        (Some(sport), Some(_)) => {
            Parse::Complete { len, source: Some(SocketAddr::new(src, sport)) }
        }
        _ => Parse::Invalid("v1 port is not a number from 0 to 65535"),
    }
}

/// A port in decimal without sign or leading zero.
fn port(text: &str) -> Option<u16> {
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    if !digits || text.is_empty() || text.len() > 5 || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(bytes: &[u8]) -> Parse {
    let Some(fixed) = bytes.get(..16) else { return Parse::Partial };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Parse::Invalid("v2 version is not 2");
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    if family > 3 || transport > 2 {
        return Parse::Invalid("v2 address family or protocol unknown");
    }
    let body_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let len = 16 + body_len;
    if len > V2_MAX {
        return Parse::Invalid("v2 header longer than allowed");
    }
    // The addresses a family needs must fit in the length it declares, whatever the command.
    let needs = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if body_len < needs {
        return Parse::Invalid("v2 length too short for its addresses");
    }
    let Some(body) = bytes.get(16..len) else { return Parse::Partial };
    let source = match command {
        // A connection the proxy made itself (a health check): its own address stands.
        0 => None,
        1 => match (family, transport) {
            (1, 1) => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]])))
            }
            (2, 1) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[..16]);
                let ip = Ipv6Addr::from(octets);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[32], body[33]])))
            }
            // UNSPEC or a UNIX socket: nothing to put in the peer's place.
            (0 | 3, _) => None,
            _ => return Parse::Invalid("v2 PROXY over a transport other than a stream"),
        },
        _ => return Parse::Invalid("v2 command is neither LOCAL nor PROXY"),
    };
    // TLVs after the addresses are skipped with the rest of the declared length.
    Parse::Complete { len, source }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4(extra: &[u8]) -> Vec<u8> {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];
        body.extend_from_slice(extra);
        v2(1, 0x11, &body)
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1_states_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(h), Parse::Complete { len: 41, source: addr("203.0.113.7:8080") });
        let h = b"PROXY TCP6 2001:db8::7 ::1 65535 443\r\n";
        assert_eq!(parse(h), Parse::Complete { len: h.len(), source: addr("[2001:db8::7]:65535") });
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parse::Complete { len: 15, source: None });
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(parse(h), Parse::Complete { len: h.len(), source: None });
    }

    #[test]
    fn v1_refuses_what_the_spec_does_not_allow() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\rX",
            b"PROXY TCP4 203.0.113.7  10.0.0.1 8080 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 8080\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80 9\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 8080 80\r\n",
            b"PROXY TCP6 203.0.113.7 ::1 8080 80\r\n",
            b"PROXY TCP4 203.0.113.007 10.0.0.1 8080 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 080 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +80 80\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 80 80\r\n",
            b"PROXY tcp4 203.0.113.7 10.0.0.1 80 80\r\n",
            b"PROXY \xff\r\n",
            b"PROXY UNKNOWN a\nb\r\n",
            b"PROXY UNKNOWN \0\r\n",
            b"GET / HTTP/1.1\r\n",
            b"PROXX",
        ] {
            assert!(matches!(parse(bad), Parse::Invalid(_)), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v1_is_at_most_107_bytes() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX - 2, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Parse::Complete { len: V1_MAX, source: None });
        let mut longer = long[..V1_MAX - 2].to_vec();
        longer.extend_from_slice(b"x\r\n");
        assert!(matches!(parse(&longer), Parse::Invalid(_)));
        assert!(matches!(parse(&[b'P'; 200][..]), Parse::Invalid(_)));
        let mut no_end = b"PROXY UNKNOWN ".to_vec();
        no_end.resize(V1_MAX, b'x');
        assert!(matches!(parse(&no_end), Parse::Invalid(_)));
    }

    #[test]
    fn v2_states_tcp4_tcp6_and_local_and_skips_tlvs() {
        let h = v2_tcp4(&[]);
        assert_eq!(parse(&h), Parse::Complete { len: 28, source: addr("203.0.113.7:8080") });
        // A TLV (PP2_TYPE_AUTHORITY) after the addresses is part of the header, and skipped.
        let mut h = v2_tcp4(&[0x02, 0, 4, b'h', b'o', b's', b't']);
        h.extend_from_slice(b"GET");
        assert_eq!(parse(&h), Parse::Complete { len: 35, source: addr("203.0.113.7:8080") });
        let mut body = [0u8; 36];
        body[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body[32..34].copy_from_slice(&4433u16.to_be_bytes());
        let h = v2(1, 0x21, &body);
        assert_eq!(parse(&h), Parse::Complete { len: 52, source: addr("[2001:db8::7]:4433") });
        assert_eq!(parse(&v2(0, 0x00, &[])), Parse::Complete { len: 16, source: None });
        let local = v2(0, 0x11, &[0; 12]);
        assert_eq!(parse(&local), Parse::Complete { len: 28, source: None });
        assert_eq!(parse(&v2(1, 0x00, &[])), Parse::Complete { len: 16, source: None });
    }

    #[test]
    fn v2_refuses_bad_versions_commands_families_and_lengths() {
        let mut bad_version = v2_tcp4(&[]);
        bad_version[12] = 0x11;
        let mut bad_command = v2_tcp4(&[]);
        bad_command[12] = 0x22;
        let mut too_long = v2(1, 0x11, &[0; 12]);
        too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        for bad in [
            bad_version,
            bad_command,
            v2(1, 0x41, &[0; 12]),
            v2(1, 0x13, &[0; 12]),
            v2(1, 0x11, &[0; 11]),
            v2(1, 0x21, &[0; 12]),
            v2(1, 0x12, &[0; 12]),
            too_long,
        ] {
            assert!(matches!(parse(&bad), Parse::Invalid(_)), "{bad:?}");
        }
    }

    /// Every prefix of a valid header is partial, never complete nor invalid; so a header split
    /// anywhere across segments is read the same.
    #[test]
    fn every_prefix_of_a_header_is_partial() {
        let headers = [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_tcp4(&[0x02, 0, 1, b'x']),
        ];
        for h in headers {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Parse::Partial, "{h:?} cut at {cut}");
            }
            assert!(matches!(parse(&h), Parse::Complete { .. }));
        }
    }

    /// Fuzz-like: mutations of valid headers never panic, and a complete parse never claims
    /// more bytes than it was given.
    #[test]
    fn mutated_headers_never_panic_nor_overrun() {
        let seeds = [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 8080 80\r\nGET".to_vec(),
            b"PROXY TCP6 2001:db8::7 ::1 65535 443\r\n".to_vec(),
            v2_tcp4(&[0x02, 0, 2, b'h', b'i']),
            v2(1, 0x21, &[7; 36]),
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &seeds {
            for _ in 0..5000 {
                let mut h = seed.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % h.len();
                    match next() % 3 {
                        0 => h[at] = next() as u8,
                        1 => h.truncate(at),
                        _ => h.insert(at, next() as u8),
                    }
                    if h.is_empty() {
                        break;
                    }
                }
                if let Parse::Complete { len, source } = parse(&h) {
                    assert!(len <= h.len(), "{h:?}");
                    assert_eq!(parse(&h[..len]), Parse::Complete { len, source }, "{h:?}");
                    for cut in 0..len {
                        assert_eq!(parse(&h[..cut]), Parse::Partial, "{h:?} cut at {cut}");
                    }
                }
            }
        }
    }
}
