//! Who the client of a request is. The connection gives a peer (the TCP peer, or the address a
//! PROXY protocol header stated, see [`crate::server::proxy_protocol`]); when that peer is one of
//! `server.trusted_proxies`, its `X-Forwarded-For` is believed and the client is the right-most
//! entry that is not itself a trusted proxy. Both engines compute one [`Client`] per request
//! before admission; balancing keys, rate limits, the access log and the `X-Forwarded-For` sent
//! upstream all read it.
//!
//! Without `trusted_proxies` nothing is parsed: the client is the peer.

use std::net::{IpAddr, SocketAddr};

use seawall_config::{ClientAddress, ForwardedFor};

use crate::headers::HeaderLookup;

/// The facts about a request's client that the request path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: what balancing keys, rate limits and the access log use. An
    /// address taken from `X-Forwarded-For` has port 0 unless the entry named one.
    pub addr: SocketAddr,
    /// The hop that connected to Seawall: the TCP peer, or the PROXY protocol's source. It is
    /// the address Seawall appends to `X-Forwarded-For`, as the hop it saw itself.
    pub peer: SocketAddr,
    /// Whether the client-sent `X-Forwarded-For` is passed on before `peer`: the peer is a
    /// trusted proxy, or `forwarded_for = "append"`. Otherwise Seawall does not pass on a list
    /// it cannot vouch for.
    pub keep_forwarded_for: bool,
    /// The request came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The request came to `server.egress_listen`: only egress routes serve it.
    pub egress: bool,
}

impl Client {
    /// A client that connected directly, with nothing believed beyond its address.
    pub fn direct(peer: SocketAddr) -> Client {
        Client { addr: peer, peer, keep_forwarded_for: false, https: false, egress: false }
    }

    /// The client of a request from `peer` with fields `headers`, under `config`.
    pub fn of(peer: SocketAddr, headers: &dyn HeaderLookup, config: &ClientAddress) -> Client {
        if config.trusted_proxies.is_empty() || !config.trusts(peer.ip()) {
            let keep_forwarded_for = config.forwarded_for == ForwardedFor::Append;
            return Client { addr: peer, peer, keep_forwarded_for, https: false, egress: false };
        }
        let mut walk = Walk::default();
        headers.for_each_value("x-forwarded-for", &mut |value| {
            for entry in value.split(|&b| b == b',') {
                walk.entry(entry, config);
            }
            false
        });
        let addr = walk.client().unwrap_or(peer);
        Client { addr, peer, keep_forwarded_for: true, https: false, egress: false }
    }

    /// The same client, on a connection that is (`https`) or is not encrypted.
    pub fn over(self, https: bool) -> Client {
        Client { https, ..self }
    }

    /// The same client, noted as having come to the egress listener (or not).
    pub fn on_egress(self, egress: bool) -> Client {
        Client { egress, ..self }
    }
}

/// The right-to-left walk over `X-Forwarded-For` (skip trusted proxies, stop at the first
/// address that is not one, or at a malformed entry), done in one pass from the left so the
/// field lines need not be collected: what matters is the last entry that would stop the walk,
/// and the first trusted entry after it.
#[derive(Default)]
struct Walk {
    /// The right-most entry so far that stops the walk: `Some(addr)` an untrusted address,
    /// `None` a malformed entry.
    stop: Option<Option<SocketAddr>>,
    /// The first trusted entry after `stop` (after the start when there is no stop).
    trusted_after: Option<SocketAddr>,
}

impl Walk {
    fn entry(&mut self, entry: &[u8], config: &ClientAddress) {
        match parse_entry(entry) {
            Some(addr) if config.trusts(addr.ip()) => {
                self.trusted_after.get_or_insert(addr);
            }
            found => {
                self.stop = Some(found);
                self.trusted_after = None;
            }
        }
    }

    /// The client: the right-most untrusted address; at a malformed entry, the trusted proxy
    /// to its right (it is the last hop known); when every entry is trusted, the left-most.
    /// `None`: the peer itself.
    fn client(&self) -> Option<SocketAddr> {
        match self.stop {
            Some(Some(addr)) => Some(addr),
            Some(None) | None => self.trusted_after,
        }
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`192.0.2.1:80`,
/// `[2001:db8::1]:80`). Anything else (`unknown`, an obfuscated name, an empty entry) is `None`.
fn parse_entry(entry: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    text.parse::<SocketAddr>().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use seawall_config::Cidr;

    fn config(trusted: &[&str]) -> ClientAddress {
        ClientAddress {
            trusted_proxies: trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            ..ClientAddress::default()
        }
    }

    fn client_of(peer: &str, xff: &[&str], trusted: &[&str]) -> Client {
        let mut headers = http::HeaderMap::new();
        for line in xff {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        Client::of(peer.parse().unwrap(), &headers, &config(trusted))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let c = client_of("198.51.100.9:5000", &["203.0.113.7"], &["10.0.0.0/8"]);
        assert_eq!(c, Client::direct(addr("198.51.100.9:5000")));
        let c = client_of("198.51.100.9:5000", &["203.0.113.7"], &[]);
        assert_eq!(c.addr, addr("198.51.100.9:5000"));
        let append = ClientAddress { forwarded_for: ForwardedFor::Append, ..config(&[]) };
        let c = Client::of(addr("198.51.100.9:1"), &http::HeaderMap::new(), &append);
        assert!(c.keep_forwarded_for);
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_entry() {
        let trusted = ["10.0.0.0/8", "::1/128"];
        let c = client_of("10.0.0.2:1", &["1.1.1.1, 203.0.113.7, 10.0.0.5"], &trusted);
        assert_eq!(c.addr, addr("203.0.113.7:0"));
        assert_eq!(c.peer, addr("10.0.0.2:1"));
        assert!(c.keep_forwarded_for);
        // Across several field lines, in order.
        let c = client_of("[::1]:1", &["1.1.1.1", "203.0.113.7 ,10.9.9.9", "10.0.0.5"], &trusted);
        assert_eq!(c.addr, addr("203.0.113.7:0"));
        let c = client_of("10.0.0.2:1", &["[2001:db8::7]:443"], &trusted);
        assert_eq!(c.addr, addr("[2001:db8::7]:443"));
        let c = client_of("10.0.0.2:1", &["192.0.2.1:8080"], &trusted);
        assert_eq!(c.addr, addr("192.0.2.1:8080"));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_last_known_hop() {
        let trusted = ["10.0.0.0/8"];
        let c = client_of("10.0.0.2:1", &["203.0.113.7, unknown, 10.0.0.5"], &trusted);
        assert_eq!(c.addr, addr("10.0.0.5:0"));
        let c = client_of("10.0.0.2:1", &["203.0.113.7, 10.0.0.5, garbage"], &trusted);
        assert_eq!(c.addr, addr("10.0.0.2:1"), "nothing right of it: the peer");
        let c = client_of("10.0.0.2:1", &["203.0.113.7,,10.0.0.5"], &trusted);
        assert_eq!(c.addr, addr("10.0.0.5:0"));
        let c = client_of("10.0.0.2:1", &["garbage, 203.0.113.7"], &trusted);
        assert_eq!(c.addr, addr("203.0.113.7:0"), "left of the client does not matter");
    }

    #[test]
    fn without_entries_or_untrusted_ones_the_client_is_the_last_known_hop() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(client_of("10.0.0.2:1", &[], &trusted).addr, addr("10.0.0.2:1"));
        let c = client_of("10.0.0.2:1", &["10.0.0.9, 10.0.0.5"], &trusted);
        assert_eq!(c.addr, addr("10.0.0.9:0"));
    }
}
