//! `[dns]`: the nameservers that resolve upstream host names, and how often names are resolved
//! again (`resolve_interval`, or the records' TTL bounded by `min_ttl` and `max_ttl`).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::{defaults, Ctx};
use crate::model::Dns;
use crate::raw::RawDns;

pub(super) fn dns(cx: &mut Ctx<'_>, raw: &RawDns) -> Dns {
    let mut servers = Vec::new();
    for (i, text) in raw.servers.iter().flatten().enumerate() {
        let value = text.get_ref();
        // A nameserver is an address: naming it would need a nameserver.
        match (value.parse::<SocketAddr>(), value.parse::<IpAddr>()) {
            (Ok(addr), _) => servers.push(addr),
            (_, Ok(ip)) => servers.push(SocketAddr::new(ip, 53)),
            _ => cx.error(
                text.span(),
                &format!("dns.servers[{i}]"),
                format!("expected an IP address with an optional port, like \"10.0.0.2:53\", got {value:?}"),
            ),
        }
    }
    let resolve_interval = raw
        .resolve_interval
        .as_ref()
        .map(|v| cx.duration(Some(v), "dns.resolve_interval", defaults::DNS_MIN_TTL));
    let min_ttl = cx.duration(raw.min_ttl.as_ref(), "dns.min_ttl", defaults::DNS_MIN_TTL);
    let max_ttl = cx.duration(raw.max_ttl.as_ref(), "dns.max_ttl", defaults::DNS_MAX_TTL);
    if min_ttl > max_ttl {
        let span = raw.min_ttl.as_ref().or(raw.max_ttl.as_ref()).map_or(0..0, |t| t.span());
        cx.error(span, "dns.min_ttl", "must not exceed dns.max_ttl");
    }
    Dns { servers, resolve_interval, min_ttl, max_ttl }
}

/// A `host:port` entry to be resolved by the gateway: its syntax is checked here, and its address
/// is the unspecified one with the port until the gateway resolves it.
pub(super) fn host_port(
    cx: &mut Ctx<'_>,
    value: &str,
    span: Range<usize>,
    key: &str,
) -> Option<SocketAddr> {
    let parsed = value.rsplit_once(':').and_then(|(host, port)| {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        let port: u16 = port.parse().ok()?;
        valid.then(|| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port))
    });
    if parsed.is_none() {
        cx.error(
            span,
            key,
            format!("expected an address like \"127.0.0.1:9000\" or \"host:port\", got {value:?}"),
        );
    }
    parsed
}
