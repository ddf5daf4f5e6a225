//! A stored answer: the origin's status, fields and body as they will be served again, what
//! RFC 9111 says of its lifetime, and its validators — built from an upstream head as its body
//! streams to the first client, rendered for HTTP/1 clients (head and body in one write) and for
//! the hyper engine, or as a 304 for a client whose copy is current.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use seawall_core::cache::{Lifetime, ResponseFacts};

use crate::headers::{eq_lower, has_token, push_field, write_content_length};
use crate::response::ResponseView;

/// Bytes counted per stored answer beyond its fields and body (the entry, its key, the map).
const OVERHEAD: u64 = 256;

/// What `x-seawall-cache` says of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// What the route's metrics count for it.
    pub fn event(self) -> super::CacheEvent {
        match self {
            CacheStatus::Hit => super::CacheEvent::Hit,
            CacheStatus::Miss => super::CacheEvent::Miss,
            CacheStatus::Stale => super::CacheEvent::Stale,
            CacheStatus::Revalidated => super::CacheEvent::Revalidated,
            CacheStatus::Bypass => super::CacheEvent::Bypass,
        }
    }

    /// The field line Seawall adds.
    pub fn field_line(self) -> &'static [u8] {
        match self {
            CacheStatus::Hit => b"x-seawall-cache: HIT\r\n",
            CacheStatus::Miss => b"x-seawall-cache: MISS\r\n",
            CacheStatus::Stale => b"x-seawall-cache: STALE\r\n",
            CacheStatus::Revalidated => b"x-seawall-cache: REVALIDATED\r\n",
            CacheStatus::Bypass => b"x-seawall-cache: BYPASS\r\n",
        }
    }
}

/// A stored answer.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    pub(super) reason: Bytes,
    /// The origin's fields as they go to clients: framing, hop-by-hop fields and `Age` removed
    /// (Seawall states its own).
    pub(super) fields: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    /// When it was received (epoch seconds), and how old it already was then (the origin's
    /// `Age` and the time since its `Date`).
    pub received_at: u64,
    pub initial_age: u64,
    pub lifetime: Lifetime,
    pub etag: Option<Bytes>,
    pub last_modified: Option<Bytes>,
    /// The request fields its `Vary` names (lower case), with the values the request that
    /// fetched it had.
    pub vary: Vec<(String, Option<Bytes>)>,
    /// The request path (and query) it answers: what purges match.
    pub path: Box<str>,
    /// The route it was stored for (by name: a reload keeps it).
    pub route: Box<str>,
}

impl Stored {
    /// The bytes it holds, as the cache counts them.
    pub fn weight(&self) -> u64 {
        let fields: usize = self.fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        OVERHEAD + (fields + self.body.len() + self.path.len()) as u64
    }

    /// Seconds since it was received here (what its lifetime counts from).
    pub fn held(&self, now: u64) -> u64 {
        now.saturating_sub(self.received_at)
    }

    /// Its age as the `Age` field says it (RFC 9111 §4.2.3): what it had on arrival, plus the
    /// time held here.
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age.saturating_add(self.held(now))
    }

    /// Whether the client's conditional request (`If-None-Match`, else `If-Modified-Since`)
    /// finds its copy current (RFC 9110 §13.2.2): a 304 answers it.
    pub fn not_modified_for(
        &self,
        if_none_match: Option<&[u8]>,
        if_modified_since: Option<u64>,
    ) -> bool {
        if !(200..300).contains(&self.status) {
            return false;
        }
        if let Some(tags) = if_none_match {
            let Some(etag) = &self.etag else { return false };
            return trim(tags) == b"*"
                || tags.split(|&b| b == b',').any(|t| weak_eq(trim(t), etag));
        }
        match (if_modified_since, self.last_modified.as_deref().and_then(parse_date)) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }

    /// The head for an HTTP/1 client: `age` seconds old, `status` in `x-seawall-cache`, Seawall's
    /// `added` field lines; a 304 (the client's copy is current) carries only the fields that
    /// describe the cached answer. `close`: the connection closes after it.
    pub fn write_http1_head(
        &self,
        out: &mut Vec<u8>,
        age: u64,
        status: CacheStatus,
        added: &[u8],
        how: Http1Form,
    ) {
        out.clear();
        let code = if how.not_modified { 304 } else { self.status };
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&[
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(if how.not_modified { b"Not Modified" } else { &self.reason });
        out.extend_from_slice(b"\r\n");
        for (name, value) in self.fields_for(how.not_modified) {
            push_field(out, name, value);
        }
        let mut digits = [0u8; 20];
        push_field(out, b"age", crate::headers::itoa_u64(age, &mut digits));
        out.extend_from_slice(status.field_line());
        out.extend_from_slice(added);
        if !how.not_modified && self.status != 204 {
            write_content_length(out, self.body.len() as u64);
        }
        push_field(out, b"via", crate::headers::via_for(http::Version::HTTP_11).as_bytes());
        if how.close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if how.http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The status and fields for the hyper engine (see [`Stored::write_http1_head`]).
    pub fn header_map(
        &self,
        age: u64,
        status: CacheStatus,
        added: &[u8],
        not_modified: bool,
    ) -> (http::StatusCode, HeaderMap) {
        let mut map = HeaderMap::with_capacity(self.fields.len() + 4);
        for (name, value) in self.fields_for(not_modified) {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        }
        map.insert(http::header::AGE, HeaderValue::from(age));
        map.insert("x-seawall-cache", HeaderValue::from_static(status.as_str()));
        if !not_modified && self.status != 204 {
            map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        let via = crate::headers::via_for(http::Version::HTTP_11);
        map.append(http::header::VIA, HeaderValue::from_static(via));
        crate::problem::append_field_lines(&mut map, added);
        let code = if not_modified { 304 } else { self.status };
        (http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK), map)
    }

    /// Its fields; for a 304 only those that describe the cached answer (RFC 9110 §15.4.5).
    fn fields_for(&self, not_modified: bool) -> impl Iterator<Item = (&[u8], &[u8])> {
        const KEPT: [&[u8]; 7] = [
            b"cache-control",
            b"content-location",
            b"date",
            b"etag",
            b"expires",
            b"vary",
            b"last-modified",
        ];
        self.fields
            .iter()
            .filter(move |(name, _)| !not_modified || KEPT.iter().any(|k| eq_lower(name, k)))
            .map(|(n, v)| (&n[..], &v[..]))
    }
}

/// How a stored answer goes to an HTTP/1 client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http1Form {
    pub not_modified: bool,
    pub close: bool,
    pub http10: bool,
}

/// What the cache reads of an upstream head.
pub fn response_facts(view: &ResponseView<'_>) -> ResponseFacts {
    let mut facts = ResponseFacts { status: view.head.status, ..ResponseFacts::default() };
    let mut cache_control = Vec::new();
    let mut vary_any = false;
    let mut set_cookie = false;
    for (name, value) in view.forwarded() {
        if eq_lower(name, b"cache-control") {
            cache_control.push(value);
        } else if eq_lower(name, b"vary") {
            vary_any |= value.split(|&b| b == b',').any(|t| trim(t) == b"*");
        } else if eq_lower(name, b"set-cookie") {
            set_cookie = true;
        }
    }
    facts.directives = seawall_core::cache::Directives::parse(cache_control);
    facts.vary_any = vary_any;
    facts.set_cookie = set_cookie;
    facts.date = view.first("date").and_then(parse_date);
    // An `Expires` that does not parse (often "0" or "-1") means already expired.
    facts.expires = view.first("expires").map(|e| parse_date(e).unwrap_or(0));
    facts.age = view
        .first("age")
        .and_then(|a| std::str::from_utf8(a).ok()?.trim().parse().ok())
        .unwrap_or(0);
    facts
}

/// Starts a stored answer from an upstream head (the body follows through [`Stored::body`]).
pub fn from_head(
    view: &ResponseView<'_>,
    lifetime: Lifetime,
    received_at: u64,
    initial_age: u64,
    vary: Vec<(String, Option<Bytes>)>,
    path: &[u8],
    route: &str,
) -> Stored {
    // Every name and value (and the reason) in one block: one allocation an entry, not two a
    // field.
    let kept: Vec<(&[u8], &[u8])> =
        view.forwarded().filter(|(name, _)| !eq_lower(name, b"age")).collect();
    let size = kept.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() + view.reason().len();
    let mut block = bytes::BytesMut::with_capacity(size);
    let mut spans = Vec::with_capacity(kept.len());
    for (name, value) in &kept {
        let at = block.len();
        block.extend_from_slice(name);
        block.extend_from_slice(value);
        spans.push((at, name.len(), value.len()));
    }
    let reason_at = block.len();
    block.extend_from_slice(view.reason());
    let block = block.freeze();
    let fields: Vec<(Bytes, Bytes)> = spans
        .into_iter()
        .map(|(at, n, v)| (block.slice(at..at + n), block.slice(at + n..at + n + v)))
        .collect();
    let find = |name: &[u8]| fields.iter().find(|(n, _)| eq_lower(n, name)).map(|(_, v)| v.clone());
    let (etag, last_modified) = (find(b"etag"), find(b"last-modified"));
    Stored {
        status: view.head.status,
        reason: block.slice(reason_at..),
        fields,
        body: Bytes::new(),
        received_at,
        initial_age,
        lifetime,
        etag,
        last_modified,
        vary,
        path: String::from_utf8_lossy(path).into(),
        route: route.into(),
    }
}

/// `stale` made fresh by the origin's 304 (`view`): the same body, its fields updated with those
/// the 304 carries (RFC 9111 §4.3.4), a new lifetime from now.
pub fn refreshed(
    stale: &Stored,
    view: &ResponseView<'_>,
    lifetime: Lifetime,
    received_at: u64,
    initial_age: u64,
) -> Stored {
    // Fields that describe the stored body itself stay as they were (RFC 9111 §3.2).
    const BODY_FIELDS: [&[u8]; 6] = [
        b"age",
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"transfer-encoding",
    ];
    let updates: Vec<(&[u8], &[u8])> = view
        .forwarded()
        .filter(|(name, _)| !BODY_FIELDS.iter().any(|f| eq_lower(name, f)))
        .collect();
    let mut fields: Vec<(Bytes, Bytes)> = stale
        .fields
        .iter()
        .filter(|(name, _)| !updates.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    fields.extend(
        updates.iter().map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v))),
    );
    let find = |name: &[u8]| fields.iter().find(|(n, _)| eq_lower(n, name)).map(|(_, v)| v.clone());
    Stored {
        status: stale.status,
        reason: stale.reason.clone(),
        etag: find(b"etag"),
        last_modified: find(b"last-modified"),
        fields,
        body: stale.body.clone(),
        received_at,
        initial_age,
        lifetime,
        vary: stale.vary.clone(),
        path: stale.path.clone(),
        route: stale.route.clone(),
    }
}

/// The request fields an upstream head's `Vary` names, lower case, in order.
pub fn vary_names(view: &ResponseView<'_>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, value) in view.forwarded() {
        if eq_lower(name, b"vary") {
            for token in value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()) {
                let lower = String::from_utf8_lossy(token).to_ascii_lowercase();
                if !names.contains(&lower) {
                    names.push(lower);
                }
            }
        }
    }
    names
}

/// An HTTP date (IMF-fixdate and the two obsolete forms) as epoch seconds.
pub fn parse_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time = httpdate::parse_http_date(text.trim()).ok()?;
    time.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Entity tags compared weakly (RFC 9110 §8.8.3.2): `W/` is ignored.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    strip(a) == strip(b)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Whether a request's `Cache-Control` or `Pragma` says anything (for [`seawall_core::cache`]).
pub fn pragma_no_cache(value: &[u8]) -> bool {
    has_token(value, b"no-cache")
}
