//! A route's edge behaviour: how its prefix matches (`prefix_match`), how the path is rewritten
//! (`strip_prefix`, `prefix_rewrite`), which fields are changed on the way (`request_headers`,
//! `response_headers`) and the `redirect` action. Everything a request could later trip on — a
//! value with CR/LF, a field that frames the message — is refused here, so the request path only
//! copies checked bytes.

use toml::Spanned;

use super::{is_protocol_field, valid_header_name, Ctx};
use crate::model::{HeaderActions, PathMatch, PathRewrite, PrefixMatch, Redirect, Route, Upstream};
use crate::raw::{RawHeaderActions, RawRedirect, RawRoute, RawStrip, Text};

/// The longest `prefix_rewrite` or redirect `location`: a rewrite cannot grow a path without
/// bound.
pub const MAX_REWRITE_LEN: usize = 1024;

/// `prefix_match = "string" | "segment"`, or `default` when not given.
pub(super) fn prefix_match(
    cx: &mut Ctx<'_>,
    raw: Option<&Text>,
    key: &str,
    default: PrefixMatch,
) -> PrefixMatch {
    match raw.map(|v| (v.get_ref().as_str(), v.span())) {
        None => default,
        Some(("string", _)) => PrefixMatch::String,
        Some(("segment", _)) => PrefixMatch::Segment,
        Some((other, span)) => {
            cx.error(span, key, format!("expected \"string\" or \"segment\", got {other:?}"));
            default
        }
    }
}

/// `strip_prefix` and `prefix_rewrite` of a route matching `path`.
pub(super) fn rewrite(
    cx: &mut Ctx<'_>,
    r: &RawRoute,
    path: &PathMatch,
    key: &dyn Fn(&str) -> String,
) -> Option<PathRewrite> {
    let matched = match path {
        PathMatch::Prefix(p) | PathMatch::Exact(p) => p.as_str(),
    };
    let strip = match r.strip_prefix.as_ref().map(|s| (s.get_ref(), s.span())) {
        None | Some((RawStrip::Route(false), _)) => None,
        Some((RawStrip::Route(true), _)) => Some(matched.to_string()),
        Some((RawStrip::Text(s), span)) => {
            if !s.starts_with('/') || !matched.starts_with(s.as_str()) {
                let message = format!(
                    "expected true or the start of the route's path ({matched:?}), got {s:?}: \
                     every request the route matches must start with it"
                );
                cx.error(span, &key("strip_prefix"), message);
            }
            Some(s.clone())
        }
    };
    let replace = r.prefix_rewrite.as_ref().map(|p| {
        let value = p.get_ref();
        if let Err(why) = check_path(value) {
            cx.error(p.span(), &key("prefix_rewrite"), why);
        }
        value.clone()
    });
    match (strip, replace) {
        (None, None) => None,
        // `/` stripped and nothing put back changes nothing.
        (Some(strip), None) if strip == "/" => None,
        (strip, replace) => Some(PathRewrite {
            strip: strip.unwrap_or_else(|| matched.to_string()),
            replace: replace.unwrap_or_default(),
        }),
    }
}

/// A path Seawall may put at the start of an origin-form target.
fn check_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("expected a path starting with '/', got {value:?}"));
    }
    if value.len() > MAX_REWRITE_LEN {
        return Err(format!("expected at most {MAX_REWRITE_LEN} bytes, got {}", value.len()));
    }
    // RFC 3986 `pchar` and `/`, percent-encoding included; no query or fragment.
    let bad = value
        .bytes()
        .find(|&b| !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)));
    if let Some(b) = bad {
        return Err(format!(
            "{value:?} holds {:?}, which a path cannot carry (write it percent-encoded)",
            b as char
        ));
    }
    Ok(())
}

/// Which side of the exchange a [`HeaderActions`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

/// `request_headers = { set, add, remove }` or `response_headers = { ... }`.
pub(super) fn header_actions(
    cx: &mut Ctx<'_>,
    raw: &RawHeaderActions,
    key: &str,
    side: Side,
    (deadline_header, request_id_header): (&str, Option<&str>),
) -> HeaderActions {
    let mut actions = HeaderActions::default();
    let check_name = |cx: &mut Ctx<'_>, name: &str, span, key: &str| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let why = if !valid_header_name(name) {
            format!("{name:?} is not a valid header name")
        } else if framing_field(&lower, side) {
            format!(
                "{name:?} frames or routes the message: Seawall writes it itself and it cannot \
                 be changed here{}",
                if lower == "host" { " (see preserve_host)" } else { "" }
            )
        } else if side == Side::Request && lower == deadline_header {
            format!("{name:?} is server.deadline_header: Seawall writes the time left in it")
        } else if request_id_header == Some(lower.as_str()) {
            format!("{name:?} is server.request_id_header: Seawall writes the request id in it")
        } else if side == Side::Response && lower.starts_with("x-seawall-") {
            format!("{name:?} is one of Seawall's own fields")
        } else {
            return Some(lower);
        };
        cx.error(span, key, why);
        None
    };
    let mut seen: Vec<String> = Vec::new();
    for (list, out, what) in
        [(&raw.set, &mut actions.set, "set"), (&raw.add, &mut actions.add, "add")]
    {
        for (name, value) in list.iter().flatten() {
            let k = format!("{key}.{what}.{name}");
            let Some(lower) = check_name(cx, name, value.span(), &k) else { continue };
            if let Err(why) = check_value(value.get_ref()) {
                cx.error(value.span(), &k, why);
                continue;
            }
            if seen.contains(&lower) {
                let message = format!(
                    "{name:?} is both set and added: set replaces, add appends; choose one"
                );
                cx.error(value.span(), &k, message);
                continue;
            }
            seen.push(lower.clone());
            out.push((lower, value.get_ref().clone()));
        }
    }
    for (i, name) in raw.remove.iter().flatten().enumerate() {
        let k = format!("{key}.remove[{i}]");
        let Some(lower) = check_name(cx, name.get_ref(), name.span(), &k) else { continue };
        if seen.contains(&lower) {
            let message = format!("{:?} is both removed and set or added", name.get_ref());
            cx.error(name.span(), &k, message);
            continue;
        }
        actions.remove.push(lower);
    }
    for (name, value) in actions.set.iter().chain(&actions.add) {
        actions.lines.extend_from_slice(name.as_bytes());
        actions.lines.extend_from_slice(b": ");
        actions.lines.extend_from_slice(value.as_bytes());
        actions.lines.extend_from_slice(b"\r\n");
    }
    actions
}

/// Fields that frame, route or manage the message on this side: nobody may set or drop them.
fn framing_field(lower: &str, side: Side) -> bool {
    match side {
        Side::Request => is_protocol_field(lower),
        Side::Response => [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
            "via",
        ]
        .contains(&lower),
    }
}

/// A field value Seawall can write as it is (RFC 9110 §5.5): visible ASCII, spaces and tabs
/// inside, nothing that could end the line.
fn check_value(value: &str) -> Result<(), String> {
    if let Some(b) = value.bytes().find(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b))) {
        return Err(format!(
            "a field value may hold visible ASCII characters, spaces and tabs only; found byte \
             0x{b:02x} in {value:?}"
        ));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(format!("a field value cannot start or end with white space: {value:?}"));
    }
    if value.len() > 8192 {
        return Err(format!("a field value of at most 8192 bytes, got {}", value.len()));
    }
    Ok(())
}

/// `redirect = { status, location, keep_path }`.
pub(super) fn redirect(cx: &mut Ctx<'_>, raw: &Spanned<RawRedirect>, key: &str) -> Redirect {
    let r = raw.get_ref();
    let status = match &r.status {
        None => 302,
        Some(s) if [301, 302, 303, 307, 308].contains(s.get_ref()) => *s.get_ref() as u16,
        Some(s) => {
            let message = format!("expected 301, 302, 303, 307 or 308, got {}", s.get_ref());
            cx.error(s.span(), &format!("{key}.status"), message);
            302
        }
    };
    let keep_path = r.keep_path.unwrap_or(false);
    let location = match &r.location {
        None => {
            cx.error(
                raw.span(),
                &format!("{key}.location"),
                "missing; a redirect needs a location like \"https://example.com\"",
            );
            String::new()
        }
        Some(l) => {
            let value = l.get_ref();
            let k = format!("{key}.location");
            let absolute = ["http://", "https://"]
                .iter()
                .any(|s| value.len() > s.len() && value[..s.len()].eq_ignore_ascii_case(s));
            if !absolute && !value.starts_with('/') {
                cx.error(
                    l.span(),
                    &k,
                    format!(
                        "expected \"https://host/...\" or a path starting with '/', got {value:?}"
                    ),
                );
            } else if let Some(b) = value.bytes().find(|&b| !(0x21..0x7f).contains(&b)) {
                cx.error(
                    l.span(),
                    &k,
                    format!("{value:?} holds byte 0x{b:02x}: write it percent-encoded"),
                );
            } else if value.len() > MAX_REWRITE_LEN {
                cx.error(
                    l.span(),
                    &k,
                    format!("expected at most {MAX_REWRITE_LEN} bytes, got {}", value.len()),
                );
            } else if keep_path && (value.contains('?') || value.contains('#')) {
                cx.error(l.span(), &k, "with keep_path the request's path and query are appended: the location cannot have a query or fragment");
            }
            if keep_path {
                value.trim_end_matches('/').to_string()
            } else {
                value.clone()
            }
        }
    };
    Redirect { status, location, keep_path }
}

/// A route `timeout` its upstream's `total_timeout` always cuts first is valid but not meant.
pub(super) fn timeout_within_total(
    cx: &mut Ctx<'_>,
    i: usize,
    raw: &RawRoute,
    route: &Route,
    upstreams: &[Upstream],
) {
    let (Some(timeout), Some(text)) = (route.timeout, raw.timeout.as_ref()) else { return };
    let Some(upstream) = route.action.upstream().and_then(|u| upstreams.get(u)) else { return };
    if let Some(total) = upstream.total_timeout.filter(|total| timeout >= *total) {
        let message = format!(
            "{timeout:?} is not shorter than upstream {:?}'s total_timeout ({total:?}), which \
             ends the request first",
            upstream.name
        );
        cx.warn(text.span(), &format!("routes[{i}].timeout"), message);
    }
}
