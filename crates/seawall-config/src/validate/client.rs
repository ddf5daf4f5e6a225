//! `[server]`'s client-address keys: `proxy_protocol`, `trusted_proxies` (CIDRs) and
//! `forwarded_for`.

use super::Ctx;
use crate::model::{Cidr, ClientAddress, ForwardedFor};
use crate::raw::RawServer;

pub(super) fn client_address(cx: &mut Ctx<'_>, raw: &RawServer) -> ClientAddress {
    let mut trusted_proxies = Vec::new();
    for (i, text) in raw.trusted_proxies.iter().flatten().enumerate() {
        match Cidr::parse(text.get_ref()) {
            Ok(cidr) => trusted_proxies.push(cidr),
            Err(e) => cx.error(
                text.span(),
                &format!("server.trusted_proxies[{i}]"),
                format!("expected a network like \"10.0.0.0/8\" or an address: {e}"),
            ),
        }
    }
    let forwarded_for = match raw.forwarded_for.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("replace", _)) => ForwardedFor::Replace,
        Some(("append", _)) => ForwardedFor::Append,
        Some((other, span)) => {
            let message = format!("expected \"replace\" or \"append\", got {other:?}");
            cx.error(span, "server.forwarded_for", message);
            ForwardedFor::Replace
        }
    };
    ClientAddress {
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
        trusted_proxies,
        forwarded_for,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::IpAddr;

    use crate::model::Cidr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_and_no_other_family() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.255.0.1")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "a mapped IPv4 address is IPv4");
        assert!(!ten.contains(ip("::a00:1")), "an IPv6 address is never in an IPv4 network");
        let one = Cidr::parse("::1/128").unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!(!one.contains(ip("0.0.0.1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::9")));
        let bare = Cidr::parse("192.0.2.7").unwrap();
        assert!(bare.contains(ip("192.0.2.7")) && !bare.contains(ip("192.0.2.8")));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains(ip("2001:db8:ffff::1")));
    }

    #[test]
    fn malformed_networks_are_refused() {
        for bad in ["", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.1/8", "host/8", "10.0.0.0/-1"]
        {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
