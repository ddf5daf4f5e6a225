//! Header rewriting between client and upstream: hop-by-hop headers removed (RFC 9110 §7.6.1),
//! `X-Forwarded-*` and `Via` added.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Read access to a request's header fields, whichever engine parsed them (hyper's `HeaderMap`
/// or the HTTP/1.1 engine's in-place head). Names are matched case-insensitively.
pub trait HeaderLookup {
    /// Calls `found` with each value of `name`, in order, until it returns true.
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool);

    /// The first value of `name`.
    fn first(&self, name: &str) -> Option<&[u8]>;
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
}

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Removes hop-by-hop headers: those above, every `Proxy-*` header, and every header named in
/// `Connection`. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay so that a WebSocket
/// handshake can pass through. One pass over the names finds what is present; only that is removed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present: [Option<HeaderName>; 8] = Default::default();
    let mut count = 0;
    let mut overflow = false;
    let mut named_by_connection = false;
    for name in headers.keys() {
        if !(HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")) {
            continue;
        }
        if name == header::CONNECTION {
            let value =
                headers.get(header::CONNECTION).map(HeaderValue::as_bytes).unwrap_or_default();
            named_by_connection = !(value.eq_ignore_ascii_case(b"keep-alive")
                || value.eq_ignore_ascii_case(b"close"));
        }
        if count < present.len() {
            present[count] = Some(name.clone());
            count += 1;
        } else {
            overflow = true;
        }
    }
    if count == 0 {
        return;
    }
    if named_by_connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in present.iter().flatten() {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if overflow {
        // More than eight distinct hop-by-hop names: unusual enough for a second pass.
        let rest: Vec<HeaderName> = headers
            .keys()
            .filter(|k| {
                k.as_str().starts_with("proxy-")
                    || (HOP_BY_HOP.contains(k)
                        && !(keep_upgrade && (*k == header::CONNECTION || *k == header::UPGRADE)))
            })
            .cloned()
            .collect();
        for name in rest {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` with an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Adds `X-Forwarded-For` (appending the client to any existing list), `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Via`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<&HeaderValue>,
    via: &'static str,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let mut list = Vec::with_capacity(64);
    if let Some(existing) = headers.get(&xff) {
        list.extend_from_slice(existing.as_bytes());
        list.extend_from_slice(b", ");
    }
    write_ip(&mut list, client);
    // Hands the buffer to the header without another copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(list)) {
        headers.insert(xff, v);
    }
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    append_via(headers, via);
}

/// Writes an address in its usual text form; IPv4 by hand, as `fmt` costs more than the rest of
/// this function on every request.
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

/// Appends our `Via` entry.
pub fn append_via(headers: &mut HeaderMap, via: &'static str) {
    headers.append(header::VIA, HeaderValue::from_static(via));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "basic"),
            ("proxy-foo", "1"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn writes_addresses() {
        for text in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "2001:db8::7"] {
            let mut out = Vec::new();
            write_ip(&mut out, text.parse().unwrap());
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn strips_many_proxy_headers() {
        let pairs: Vec<(String, String)> =
            (0..12).map(|i| (format!("proxy-h{i}"), "1".to_string())).collect();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut h = map(&refs);
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(&"example.com".parse().unwrap()),
            "1.1 seawall",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 seawall");
    }
}
