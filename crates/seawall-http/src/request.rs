//! The request as every stage after parsing sees it, whichever engine parsed it: routing,
//! admission, balancing keys and the proxy read a [`RequestView`] and nothing engine-specific.

use http::{Method, Version};
use seawall_config::HeaderActions;

use crate::client::Client;
use crate::headers::{
    forwards_request_field, push_field, via_for, write_content_length, write_forwarding,
    HeaderLookup, Name,
};

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// A body of unknown length, streamed (chunked on HTTP/1.1, DATA frames on HTTP/2).
    Streamed,
}

/// One request, borrowed from the engine that parsed it.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The version the client spoke.
    pub version: Version,
    /// The path, without the query.
    pub path: &'a [u8],
    /// The path and query as sent upstream (origin form).
    pub target: &'a [u8],
    /// The authority of an absolute target, else the `Host` field; `None` when neither is given.
    pub host: Option<&'a [u8]>,
    pub headers: &'a dyn HeaderLookup,
    pub framing: BodyFraming,
    /// The client (its address, and the hop that connected).
    pub client: Client,
}

impl RequestView<'_> {
    /// Whether sending the request twice has the effect of sending it once (RFC 9110 §9.2.2),
    /// or the client made it so with an `Idempotency-Key`. Only such requests may be retried
    /// after they may have reached an upstream, or cancelled when their client leaves.
    pub fn is_idempotent(&self) -> bool {
        self.method.is_idempotent() || self.headers.first("idempotency-key").is_some()
    }

    /// The declared body length, when there is one.
    pub fn declared_length(&self) -> Option<u64> {
        match self.framing {
            BodyFraming::Length(n) => Some(n),
            BodyFraming::None => Some(0),
            BodyFraming::Streamed => None,
        }
    }
}

/// One field of a client's request, as the upstream head writer sees it.
#[derive(Debug, Clone, Copy)]
pub struct FieldRef<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub class: Name,
    /// Listed in the request's `Connection` field: not forwarded.
    pub named: bool,
}

/// What the HTTP/1 engine adds to the head it sends upstream: the route's request fields and
/// the request id's field (name, value).
#[derive(Debug, Clone, Copy, Default)]
pub struct Added<'a> {
    pub route: Option<&'a seawall_config::Route>,
    pub request_id: Option<(&'a [u8], &'a [u8])>,
}

/// What the head sent upstream says, besides the client's own fields.
pub struct UpstreamHead<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub target: &'a [u8],
    /// The client's host, written as `Host` unless `None` (the proxy then adds the server's).
    pub host: Option<&'a [u8]>,
    /// The host the client asked for, for `X-Forwarded-Host`.
    pub forwarded_host: Option<&'a [u8]>,
    /// Keep `Upgrade` and send `Connection: upgrade`.
    pub upgrade: bool,
    /// Ask the upstream for trailers (`TE: trailers`).
    pub te_trailers: bool,
    pub framing: BodyFraming,
    /// Whose address `X-Forwarded-For` ends with, and whether the client's list goes before it.
    pub client: Client,
    /// The version the client spoke (for `Via`).
    pub version: Version,
    /// The route's `request_headers`: fields removed or replaced, fields added.
    pub edits: Option<&'a HeaderActions>,
    /// The request id's field (name, value): the client's fields of that name are replaced by it.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
}

/// Writes the head sent upstream into `out`, without the final blank line (nor `Host` when the
/// proxy adds the server's): the request line in origin form, the client's end-to-end fields,
/// (less those the route's `request_headers` remove or replace, plus those it sets or adds),
/// then what Seawall states itself — `Host`, `Upgrade`, `TE`, exactly one framing field matching
/// the bytes that follow, and the forwarding fields. One writer for both engines.
pub fn write_upstream_head<'f, I>(out: &mut Vec<u8>, head: &UpstreamHead<'_>, fields: I)
where
    I: Iterator<Item = FieldRef<'f>> + Clone,
{
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    if !head.target.starts_with(b"/") && head.target != b"*" {
        // An absolute target without a path (`http://host?q`): origin form starts with `/`.
        out.push(b'/');
    }
    out.extend_from_slice(head.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let replaced = |f: &FieldRef<'_>| {
        head.request_id.is_some_and(|(name, _)| f.name.eq_ignore_ascii_case(name))
    };
    for field in fields.clone() {
        if forwards_request_field(field.class)
            && !field.named
            && !head.edits.is_some_and(|e| e.drops(field.name))
            && !replaced(&field)
        {
            push_field(out, field.name, field.value);
        }
    }
    if let Some(edits) = head.edits {
        // Checked at load: valid names, values without CR or LF, no field that frames.
        out.extend_from_slice(&edits.lines);
    }
    if let Some((name, value)) = head.request_id {
        push_field(out, name, value);
    }
    if let Some(host) = head.host {
        push_field(out, b"host", host);
    }
    if head.upgrade {
        for field in fields.clone().filter(|f| f.class == Name::Upgrade) {
            push_field(out, b"upgrade", field.value);
        }
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if head.te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    match head.framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => write_content_length(out, n),
        BodyFraming::Streamed => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    let keep = head.client.keep_forwarded_for;
    let prior =
        fields.filter(|f| keep && f.class == Name::XForwardedFor && !f.named).map(|f| f.value);
    let (peer, https) = (head.client.peer.ip(), head.client.https);
    write_forwarding(out, prior, peer, https, head.forwarded_host, via_for(head.version));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_comes_from_the_method_or_a_key() {
        let mut headers = http::HeaderMap::new();
        let view = |method: &Method, headers: &http::HeaderMap| {
            let v = RequestView {
                method,
                version: Version::HTTP_11,
                path: b"/",
                target: b"/",
                host: None,
                headers,
                framing: BodyFraming::None,
                client: Client::direct("127.0.0.1:1".parse().unwrap()),
            };
            v.is_idempotent()
        };
        assert!(view(&Method::GET, &headers));
        assert!(view(&Method::PUT, &headers));
        assert!(!view(&Method::POST, &headers));
        headers.insert("idempotency-key", "abc".parse().unwrap());
        assert!(view(&Method::POST, &headers));
    }
}
