//! Routing: the first route, in file order, whose host, path, method and header conditions all
//! hold. No match is answered 404 `no_route` by the pipeline.

use http::Method;
use seawall_config::{HostMatch, PathMatch, Route};

use crate::headers::HeaderLookup;

/// Finds the index of the first route matching the request.
pub fn find(
    routes: &[Route],
    method: &Method,
    host: Option<&str>,
    path: &str,
    headers: &dyn HeaderLookup,
) -> Option<usize> {
    let host = host.map(strip_port);
    routes.iter().position(|r| {
        let m = &r.matcher;
        let host_ok = match (&m.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(HostMatch::Exact(want)), Some(h)) => h.eq_ignore_ascii_case(want),
            (Some(HostMatch::Suffix(suffix)), Some(h)) => {
                h.len() > suffix.len()
                    && h.get(h.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        };
        let path_ok = match &m.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        };
        let method_ok = m.methods.is_empty() || m.methods.iter().any(|x| x == method.as_str());
        let header_ok =
            m.header.as_ref().is_none_or(|h| match (&h.value, headers.first(h.name.as_str())) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(want), Some(got)) => got == want.as_bytes(),
            });
        host_ok && path_ok && method_ok && header_ok
    })
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn routes() -> Vec<Route> {
        let src = r#"
[upstreams.u]
servers = ["127.0.0.1:1"]
[[routes]]
name = "wild"
host = "*.example.com"
path_prefix = "/api"
upstream = "u"
[[routes]]
name = "exact"
host = "example.com"
path = "/login"
methods = ["POST"]
upstream = "u"
[[routes]]
name = "canary"
header = { name = "x-canary", value = "1" }
upstream = "u"
[[routes]]
name = "rest"
path_prefix = "/"
upstream = "u"
"#;
        seawall_config::parse(src, "t").unwrap().routes
    }

    fn name(method: &str, host: Option<&str>, path: &str, headers: &[(&str, &str)]) -> String {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let rs = routes();
        let i = find(&rs, &method.parse().unwrap(), host, path, &h).unwrap();
        rs[i].name.clone()
    }

    #[test]
    fn first_match_in_file_order() {
        assert_eq!(name("GET", Some("a.example.com:8080"), "/api/x", &[]), "wild");
        assert_eq!(name("GET", Some("example.com"), "/api/x", &[]), "rest");
        assert_eq!(name("POST", Some("EXAMPLE.com"), "/login", &[]), "exact");
        assert_eq!(name("GET", Some("example.com"), "/login", &[]), "rest");
        assert_eq!(name("GET", None, "/x", &[("x-canary", "1")]), "canary");
        assert_eq!(name("GET", None, "/x", &[("x-canary", "2")]), "rest");
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b:1"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
