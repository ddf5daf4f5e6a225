//! Header rewriting between client and upstream: hop-by-hop headers removed (RFC 9110 §7.6.1),
//! `X-Forwarded-*` and `Via` added.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
/// handshake can pass through.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names is cheaper than a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        if !connection.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            && !connection.as_bytes().eq_ignore_ascii_case(b"close")
        {
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
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> =
            headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
        for name in proxy {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
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
    use std::fmt::Write as _;
    let xff = HeaderName::from_static("x-forwarded-for");
    let mut list = String::with_capacity(48);
    if let Some(existing) = headers.get(&xff).and_then(|v| v.to_str().ok()) {
        let _ = write!(list, "{existing}, {client}");
    } else {
        let _ = write!(list, "{client}");
    }
    // Hands the string's buffer to the header without another copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(list)) {
        headers.insert(xff, v);
    }
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    append_via(headers, via);
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
