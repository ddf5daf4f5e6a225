//! Routing: the first route, in file order, whose host, path, method and header conditions all
//! hold — among the egress routes for a request that came to `server.egress_listen`, among the
//! others otherwise. No match is answered 404 `no_route` by the policy layer.

use seawall_config::{HostMatch, PathMatch, PrefixMatch, Route, RouteAction};

use crate::request::RequestView;

/// Finds the index of the first route matching the request.
pub fn find(routes: &[Route], request: &RequestView<'_>) -> Option<usize> {
    let (method, path, headers) = (request.method, request.path, request.headers);
    let host = request.host.map(strip_port);
    routes.iter().position(|r| {
        let m = &r.matcher;
        let host_ok = match (&m.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(HostMatch::Exact(want)), Some(h)) => h.eq_ignore_ascii_case(want.as_bytes()),
            (Some(HostMatch::Suffix(suffix)), Some(h)) => {
                h.len() > suffix.len()
                    && h.get(h.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
            }
        };
        let path_ok = match &m.path {
            PathMatch::Prefix(p) => prefix_matches(path, p.as_bytes(), m.prefix),
            PathMatch::Exact(p) => path == p.as_bytes(),
        };
        let method_ok = m.methods.is_empty() || m.methods.iter().any(|x| x == method.as_str());
        let header_ok =
            m.header.as_ref().is_none_or(|h| match (&h.value, headers.first(h.name.as_str())) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(want), Some(got)) => got == want.as_bytes(),
            });
        // Egress routes serve the egress listener, and only they do.
        let side_ok = matches!(r.action, RouteAction::Egress { .. }) == request.client.egress;
        side_ok && host_ok && path_ok && method_ok && header_ok
    })
}

/// Whether `path` (without its query) starts with `prefix`; by segments, only where a segment
/// ends: `/api` matches `/api`, `/api/` and `/api/x`, not `/apiary`.
fn prefix_matches(path: &[u8], prefix: &[u8], how: PrefixMatch) -> bool {
    path.starts_with(prefix)
        && match how {
            PrefixMatch::String => true,
            PrefixMatch::Segment => {
                prefix.ends_with(b"/") || matches!(path.get(prefix.len()), None | Some(b'/'))
            }
        }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return memchr::memchr(b']', host).map_or(host, |i| &host[..=i]);
    }
    match memchr::memrchr(b':', host) {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
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
        let method: http::Method = method.parse().unwrap();
        let request = RequestView {
            method: &method,
            version: http::Version::HTTP_11,
            path: path.as_bytes(),
            target: path.as_bytes(),
            host: host.map(str::as_bytes),
            headers: &h,
            framing: crate::request::BodyFraming::None,
            client: crate::client::Client::direct("127.0.0.1:1".parse().unwrap()),
        };
        let i = find(&rs, &request).unwrap();
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
    fn segment_prefixes_end_where_a_segment_ends() {
        let seg = |path: &str, prefix: &str| {
            prefix_matches(path.as_bytes(), prefix.as_bytes(), PrefixMatch::Segment)
        };
        assert!(seg("/api", "/api") && seg("/api/", "/api") && seg("/api/x", "/api"));
        assert!(!seg("/apiary", "/api") && !seg("/ap", "/api") && !seg("/api%2Fx", "/api"));
        assert!(seg("/api/x", "/api/") && !seg("/api", "/api/"));
        assert!(seg("/anything", "/"));
        assert!(prefix_matches(b"/apiary", b"/api", PrefixMatch::String));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(strip_port(b"a.b:1"), b"a.b");
        assert_eq!(strip_port(b"a.b"), b"a.b");
        assert_eq!(strip_port(b"a.b:"), b"a.b", "an empty port is no port");
    }
}
