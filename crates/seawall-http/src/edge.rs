//! A route's edge behaviour on the request path, the same for both engines: the path rewrite
//! (`strip_prefix`, `prefix_rewrite`) that makes the target sent upstream or into a redirect,
//! the response fields a route removes or replaces, and the `redirect` answer.
//!
//! Paths are never decoded: `%2F` is not a segment separator and stays as the client wrote it.
//! A rewritten path with a dot segment (`..`, `.`, or `%2e` spellings, split on `/`, `\`, `%2f`,
//! `%5c`) is refused 400 at admission — stripping a prefix from `/api/../admin` would send
//! `/../admin`, which the origin resolves outside the prefix. A route without a rewrite costs
//! nothing here: the client's target is passed on borrowed.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use seawall_config::{HeaderActions, Redirect, Route};

use crate::fields::Field;

/// Whether `path` has a `.` or `..` segment, in any spelling an origin may decode.
pub fn has_dot_segment(path: &[u8]) -> bool {
    let mut i = 0;
    let mut dots = 0usize;
    let mut other = false;
    let end_segment = |dots: usize, other: bool| !other && (dots == 1 || dots == 2);
    while i <= path.len() {
        let rest = &path[i.min(path.len())..];
        let (separator, dot, step) = match rest {
            [] => (true, false, 1),
            [b'/' | b'\\', ..] => (true, false, 1),
            [b'%', a, b, ..] if *a == b'2' && (*b == b'f' || *b == b'F') => (true, false, 3),
            [b'%', a, b, ..] if *a == b'5' && (*b == b'c' || *b == b'C') => (true, false, 3),
            [b'%', a, b, ..] if *a == b'2' && (*b == b'e' || *b == b'E') => (false, true, 3),
            [b'.', ..] => (false, true, 1),
            _ => (false, false, 1),
        };
        if separator {
            if end_segment(dots, other) {
                return true;
            }
            dots = 0;
            other = false;
        } else if dot {
            dots += 1;
        } else {
            other = true;
        }
        i += step;
    }
    false
}

/// The origin-form target for the route: the client's `target` (path `path`, then its query),
/// or its rewrite. The query is always kept; the result starts with `/` unless it is the
/// client's own target unchanged.
pub fn target<'a>(route: &Route, path: &'a [u8], target: &'a [u8]) -> Cow<'a, [u8]> {
    let Some(rewrite) = route.rewrite.as_deref() else { return Cow::Borrowed(target) };
    let Some(mut rest) = path.strip_prefix(rewrite.strip.as_bytes()) else {
        // The router only matches paths that start with it: nothing to do.
        return Cow::Borrowed(target);
    };
    let query = memchr::memchr(b'?', target).map_or(&b""[..], |i| &target[i..]);
    let replace = rewrite.replace.as_bytes();
    let mut out = Vec::with_capacity(1 + replace.len() + rest.len() + query.len());
    out.extend_from_slice(replace);
    // The `/` a prefix ended with separated it from the rest: it still does.
    let separated = rewrite.strip.ends_with('/') && !rest.is_empty();
    if rest.starts_with(b"/") {
        if out.ends_with(b"/") {
            rest = &rest[1..];
        }
    } else if !out.ends_with(b"/") && (out.is_empty() || separated) {
        // Stripped to nothing (`/api` from `/api`), inside a segment (`/api` from `/apiary`),
        // or after a prefix's own `/`.
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(query);
    Cow::Owned(out)
}

/// The answer of a `redirect` route: its status, `Location` and an empty body, with Seawall's
/// `added` field lines (the rate-limit state).
pub fn redirect(
    redirect: &Redirect,
    route: &Route,
    path: &[u8],
    request_target: &[u8],
    added: &[u8],
) -> Response<Bytes> {
    let mut location = redirect.location.clone().into_bytes();
    if redirect.keep_path {
        let kept = target(route, path, request_target);
        // One `/` between the location and the path: `//host/x` after a relative location
        // would send the client to another site.
        let kept = match kept.iter().position(|&b| b != b'/') {
            Some(first) => &kept[first..],
            None => &b""[..],
        };
        location.push(b'/');
        location.extend_from_slice(kept);
    }
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    let headers = response.headers_mut();
    // The location was checked at load and the request's target by its parser: only visible
    // ASCII. Should either ever fail, the answer still goes out, pointing at the bare location.
    let value = HeaderValue::from_bytes(&location)
        .or_else(|_| HeaderValue::from_str(&redirect.location))
        .unwrap_or_else(|_| HeaderValue::from_static("/"));
    headers.insert(header::LOCATION, value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::problem::append_field_lines(headers, added);
    response
}

/// Marks the fields of an upstream's answer that `actions` removes or replaces as not to be
/// forwarded (to the client, and into the cache).
pub fn drop_fields(fields: &mut [Field], buf: &[u8], actions: &HeaderActions) {
    for field in fields.iter_mut() {
        if actions.drops(crate::fields::slice(buf, field.name)) {
            field.named = true;
        }
    }
}

/// Marks the fields of an upstream's answer called `name` as not to be forwarded.
pub fn drop_named(fields: &mut [Field], buf: &[u8], name: &[u8]) {
    for field in fields.iter_mut() {
        if crate::fields::slice(buf, field.name).eq_ignore_ascii_case(name) {
            field.named = true;
        }
    }
}

/// `bytes` with its `%XX` escapes decoded (a `%` not followed by two hex digits stays).
pub fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub fn percent_encode(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(prefix: &str, rewrite: &str, target: &str) -> String {
        let src = format!(
            "[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath_prefix = \"{prefix}\"\n\
             upstream = \"u\"\n{rewrite}\n"
        );
        let config = seawall_config::parse(&src, "t").unwrap();
        let path = target.split('?').next().unwrap();
        String::from_utf8(
            super::target(&config.routes[0], path.as_bytes(), target.as_bytes()).to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn rewrites_always_make_an_origin_form_path() {
        let strip = "strip_prefix = true";
        for (prefix, rewrite, target, sent) in [
            ("/api", strip, "/api", "/"),
            ("/api", strip, "/api?q=1", "/?q=1"),
            ("/api", strip, "/api/x?q", "/x?q"),
            ("/api", strip, "/apiary", "/ary"),
            ("/api/", strip, "/api/x", "/x"),
            ("/api/", strip, "/api/", "/"),
            ("/", "prefix_rewrite = \"/in\"", "/x?q", "/in/x?q"),
            ("/", "prefix_rewrite = \"/in\"", "/", "/in"),
            ("/v1/", "prefix_rewrite = \"/api/v2/\"", "/v1/x", "/api/v2/x"),
            ("/v1/", "prefix_rewrite = \"/api\"", "/v1/x", "/api/x"),
            ("/v1", "prefix_rewrite = \"/api/\"", "/v1/x", "/api/x"),
            ("/v1", "prefix_rewrite = \"/api\"", "/v1", "/api"),
            ("/v1/a", "strip_prefix = \"/v1\"", "/v1/a/b", "/a/b"),
            ("/x", "", "/x//y?z", "/x//y?z"),
        ] {
            assert_eq!(rewritten(prefix, rewrite, target), sent, "{prefix} {rewrite} {target}");
        }
    }

    #[test]
    fn dot_segments_in_every_spelling() {
        for bad in [
            &b"/api/../admin"[..],
            b"/api/..",
            b"/api/./x",
            b"/api/%2e%2e/admin",
            b"/api/%2E./admin",
            b"/api/..%2fadmin",
            b"/api/..%5Cadmin",
            b"/api\\..\\admin",
            b"/..",
        ] {
            assert!(has_dot_segment(bad), "{}", String::from_utf8_lossy(bad));
        }
        for good in [&b"/api/x"[..], b"/api/...", b"/api/.well-known", b"/a..b", b"/", b"/x%2e"] {
            assert!(!has_dot_segment(good), "{}", String::from_utf8_lossy(good));
        }
    }
}
