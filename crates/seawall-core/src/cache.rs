//! HTTP caching rules (RFC 9111) for a shared cache, with no I/O: what `Cache-Control` says,
//! whether a response may be stored and for how long, how old a stored one is, and whether it
//! may be served fresh, stale, or not at all.
//!
//! The gateway parses fields and dates; everything here works on their values and on times in
//! whole seconds since the Unix epoch, so each rule is tested as a table.

/// The directives of one message's `Cache-Control` fields (requests and responses share the
/// grammar; each side reads the ones that concern it). Unknown directives are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// `no-cache` or `private` with a field list: only those fields are withheld, which a cache
    /// that stores whole messages cannot honour — it treats them as the bare directive.
    pub field_lists: bool,
}

impl Directives {
    /// Parses the values of every `Cache-Control` field of a message.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Directives {
        let mut d = Directives::default();
        for value in values {
            for item in split_items(value) {
                let (name, arg) = match item.iter().position(|&b| b == b'=') {
                    Some(i) => (trim(&item[..i]), Some(unquote(trim(&item[i + 1..])))),
                    None => (item, None),
                };
                let seconds = || arg.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_slice() {
                    b"no-store" => d.no_store = true,
                    b"no-cache" => {
                        d.no_cache = true;
                        d.field_lists |= arg.is_some();
                    }
                    b"private" => {
                        d.private = true;
                        d.field_lists |= arg.is_some();
                    }
                    b"public" => d.public = true,
                    b"must-revalidate" => d.must_revalidate = true,
                    b"proxy-revalidate" => d.proxy_revalidate = true,
                    b"only-if-cached" => d.only_if_cached = true,
                    // A malformed max-age makes the response stale (RFC 9111 §4.2.1): zero.
                    b"max-age" => d.max_age = Some(seconds().unwrap_or(0)),
                    b"s-maxage" => d.s_maxage = Some(seconds().unwrap_or(0)),
                    b"stale-while-revalidate" => d.stale_while_revalidate = seconds(),
                    b"stale-if-error" => d.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        d
    }
}

/// Splits a field value at commas outside quoted strings, trimming each item; empty items go.
fn split_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                items.push(trim(&value[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(trim(&value[start..]));
    items.into_iter().filter(|item| !item.is_empty())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn unquote(bytes: &[u8]) -> &[u8] {
    match bytes {
        [b'"', inner @ .., b'"'] => inner,
        _ => bytes,
    }
}

/// A `delta-seconds` value; one too large for a u64 counts as the largest (RFC 9111 §1.2.2).
fn delta_seconds(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, &b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))))
}

/// What a route says about caching, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Freshness when the origin gives none (or always, with `override_origin`).
    pub ttl: u64,
    /// Freshness in crisis mode, when longer than the usual one.
    pub crisis_ttl: Option<u64>,
    /// How long past its freshness an entry may be served while it is fetched again.
    pub stale_while_revalidate: u64,
    /// How long past its freshness an entry may be served when the origin fails.
    pub stale_if_error: u64,
    /// The route's `ttl` wins over the origin's freshness (`max-age`, `Expires`, `no-cache`,
    /// `private`); `no-store` is still obeyed.
    pub override_origin: bool,
    /// Requests with `Authorization` may share answers.
    pub share_authorized: bool,
    /// Answers with `Set-Cookie` may be shared (the cookie is stored and served to everyone).
    pub share_cookies: bool,
}

/// What is known of a request for caching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub directives: Directives,
    /// `Pragma: no-cache` (read only without `Cache-Control`).
    pub pragma_no_cache: bool,
    pub authorization: bool,
}

/// What is known of a response for caching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    pub status: u16,
    pub directives: Directives,
    /// `Expires` and `Date`, as epoch seconds; an `Expires` that does not parse is `Some(0)`
    /// (already expired).
    pub expires: Option<u64>,
    pub date: Option<u64>,
    /// The origin's `Age`.
    pub age: u64,
    pub set_cookie: bool,
    /// `Vary: *`: no request can be known to match.
    pub vary_any: bool,
}

/// How a request meets the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestUse {
    /// Look it up; a stored answer may be served.
    Lookup,
    /// Do not serve from the cache, but store what comes (`no-cache`, `max-age=0`: the client
    /// wants the origin's word; `Authorization`, unless the route shares authorized requests).
    Refresh,
    /// Neither serve nor store (`no-store`).
    Bypass,
}

/// How a request for a cacheable method meets the cache.
pub fn request_use(req: &RequestFacts, route: &RoutePolicy) -> RequestUse {
    let d = &req.directives;
    if d.no_store {
        return RequestUse::Bypass;
    }
    // An authorized request is not answered with what others fetched; its own answer is kept
    // for others only when the origin says it may be shared (see [`storable`]).
    let private_request = req.authorization && !route.share_authorized;
    let pragma = req.pragma_no_cache && *d == Directives::default();
    if private_request || d.no_cache || d.max_age == Some(0) || pragma {
        return RequestUse::Refresh;
    }
    RequestUse::Lookup
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), less 206 (ranges
/// are not stored).
pub const CACHEABLE_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    SetCookie,
    Authorization,
    VaryAny,
    /// Its freshness is zero and it has nothing to revalidate it with or serve stale.
    Expired,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::NoStore => "no_store",
            NotStored::Private => "private",
            NotStored::SetCookie => "set_cookie",
            NotStored::Authorization => "authorization",
            NotStored::VaryAny => "vary_any",
            NotStored::Expired => "expired",
        }
    }
}

/// How long a stored response stays usable, in seconds from when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Fresh for this long (its age on arrival already taken off).
    pub fresh: u64,
    /// Then servable stale for this long while being fetched again.
    pub while_revalidate: u64,
    /// Or this long when the origin fails.
    pub if_error: u64,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`), and in crisis
    /// mode not stretched past the origin's word.
    pub must_revalidate: bool,
    /// The origin's `no-cache`: stored, but checked with the origin before each use.
    pub revalidate_always: bool,
}

/// Whether a response to a request (`authorization`: it carried one) may be stored, and for how
/// long; `now` is when it was received.
pub fn storable(
    resp: &ResponseFacts,
    authorization: bool,
    route: &RoutePolicy,
    now: u64,
) -> Result<Lifetime, NotStored> {
    let d = &resp.directives;
    if !CACHEABLE_STATUSES.contains(&resp.status) {
        return Err(NotStored::Status);
    }
    if d.no_store {
        return Err(NotStored::NoStore);
    }
    if resp.vary_any {
        return Err(NotStored::VaryAny);
    }
    if resp.set_cookie && !route.share_cookies {
        return Err(NotStored::SetCookie);
    }
    // RFC 9111 §3.5: a shared cache stores an answer to an authorized request only when the
    // response says it may — and, overriding the origin's freshness, still only when it says so
    // (or the route shares authorized answers): one user's answer is not everyone's.
    let explicitly_shared = d.public || d.s_maxage.is_some() || d.must_revalidate;
    if authorization && !route.share_authorized && !explicitly_shared {
        return Err(NotStored::Authorization);
    }
    if route.override_origin {
        return Ok(Lifetime {
            fresh: route.ttl,
            while_revalidate: route.stale_while_revalidate,
            if_error: route.stale_if_error,
            must_revalidate: false,
            revalidate_always: false,
        });
    }
    if d.private {
        return Err(NotStored::Private);
    }
    let lifetime = match (d.s_maxage, d.max_age, resp.expires) {
        (Some(s), _, _) => s,
        (None, Some(m), _) => m,
        (None, None, Some(expires)) => expires.saturating_sub(resp.date.unwrap_or(now)),
        (None, None, None) => route.ttl,
    };
    let age = initial_age(resp, now);
    let must_revalidate = d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some();
    // `no-cache`: never used without asking the origin (RFC 9111 §5.2.2.4) — so never stale.
    let (while_revalidate, if_error) = if must_revalidate || d.no_cache {
        (0, 0)
    } else {
        (
            d.stale_while_revalidate.unwrap_or(route.stale_while_revalidate),
            d.stale_if_error.unwrap_or(route.stale_if_error),
        )
    };
    Ok(Lifetime {
        fresh: if d.no_cache { 0 } else { lifetime.saturating_sub(age) },
        while_revalidate,
        if_error,
        must_revalidate,
        revalidate_always: d.no_cache,
    })
}

/// How old a response already is when it arrives (RFC 9111 §4.2.3): the origin's `Age` plus
/// the time since its `Date`, saturating (a hostile `Age` cannot wrap it round to young).
pub fn initial_age(resp: &ResponseFacts, now: u64) -> u64 {
    resp.age.saturating_add(resp.date.map_or(0, |date| now.saturating_sub(date)))
}

/// What a stored response is good for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Fresh,
    /// Past its freshness, within `stale-while-revalidate`: serve it and fetch it again.
    StaleWhileRevalidate,
    /// Past that, within `stale-if-error`: serve it only if the origin fails.
    StaleIfError,
    /// Too old for anything but a revalidation.
    Expired,
}

/// What an entry of `lifetime`, stored `age` seconds ago, is good for; in crisis mode its
/// freshness stretches to the route's `crisis_ttl` (unless the origin said `must-revalidate` or
/// `no-cache`).
pub fn usable(lifetime: &Lifetime, age: u64, route: &RoutePolicy, crisis: bool) -> Usable {
    let mut fresh = lifetime.fresh;
    if crisis && !lifetime.must_revalidate && !lifetime.revalidate_always {
        fresh = fresh.max(route.crisis_ttl.unwrap_or(0));
    }
    if age < fresh {
        Usable::Fresh
    } else if age < fresh.saturating_add(lifetime.while_revalidate) {
        Usable::StaleWhileRevalidate
    } else if age < fresh.saturating_add(lifetime.if_error.max(lifetime.while_revalidate)) {
        Usable::StaleIfError
    } else if crisis && !lifetime.must_revalidate && !lifetime.revalidate_always {
        // In crisis mode stale serving is allowed however old: an answer beats none.
        Usable::StaleIfError
    } else {
        Usable::Expired
    }
}

/// How long an entry is worth keeping at all, in seconds after it was received: past this it is
/// of no use even in a crisis with validators (see [`usable`]).
pub fn keep_for(lifetime: &Lifetime, route: &RoutePolicy) -> u64 {
    let fresh = lifetime.fresh.max(route.crisis_ttl.unwrap_or(0));
    fresh.saturating_add(lifetime.while_revalidate.max(lifetime.if_error))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: RoutePolicy = RoutePolicy {
        ttl: 60,
        crisis_ttl: Some(600),
        stale_while_revalidate: 30,
        stale_if_error: 3_600,
        override_origin: false,
        share_authorized: false,
        share_cookies: false,
    };

    fn cc(value: &str) -> Directives {
        Directives::parse([value.as_bytes()])
    }

    fn response(status: u16, cache_control: &str) -> ResponseFacts {
        ResponseFacts { status, directives: cc(cache_control), ..ResponseFacts::default() }
    }

    #[test]
    fn parses_cache_control_as_written_in_the_wild() {
        let d = cc(r#"public, max-age=300, s-maxage="600", no-cache="set-cookie, x-a", x-ext=1"#);
        assert!(d.public && d.no_cache && d.field_lists);
        assert_eq!((d.max_age, d.s_maxage), (Some(300), Some(600)));
        let d = Directives::parse([b"PRIVATE".as_slice(), b" max-age=abc ,,".as_slice()]);
        assert!(d.private);
        assert_eq!(d.max_age, Some(0), "a malformed max-age is stale");
        assert_eq!(cc("max-age=99999999999999999999999").max_age, Some(u64::MAX));
        assert_eq!(cc("stale-while-revalidate=30, stale-if-error=x").stale_if_error, None);
        assert_eq!(cc(""), Directives::default());
    }

    #[test]
    fn requests_lookup_refresh_or_bypass() {
        let table = [
            ("", false, false, RequestUse::Lookup),
            ("no-store", false, false, RequestUse::Bypass),
            ("no-cache", false, false, RequestUse::Refresh),
            ("max-age=0", false, false, RequestUse::Refresh),
            ("max-age=10", false, false, RequestUse::Lookup),
            ("", true, false, RequestUse::Refresh),
            ("max-age=10", true, false, RequestUse::Lookup),
            ("", false, true, RequestUse::Refresh),
        ];
        for (cache_control, pragma, authorization, expected) in table {
            let req = RequestFacts {
                directives: cc(cache_control),
                pragma_no_cache: pragma,
                authorization,
            };
            assert_eq!(
                request_use(&req, &ROUTE),
                expected,
                "{cache_control:?} {pragma} {authorization}"
            );
        }
        let shared = RoutePolicy { share_authorized: true, ..ROUTE };
        let req = RequestFacts { authorization: true, ..RequestFacts::default() };
        assert_eq!(request_use(&req, &shared), RequestUse::Lookup);
    }

    #[test]
    fn what_is_stored_and_for_how_long() {
        let now = 1_000_000;
        let ok = |fresh| Ok::<u64, NotStored>(fresh);
        let table: [(ResponseFacts, bool, Result<u64, NotStored>); 17] = [
            (response(200, ""), false, ok(60)),
            (response(200, "max-age=10"), false, ok(10)),
            (response(200, "max-age=10, s-maxage=20"), false, ok(20)),
            (response(404, ""), false, ok(60)),
            (response(500, "max-age=10"), false, Err(NotStored::Status)),
            (response(206, "max-age=10"), false, Err(NotStored::Status)),
            (response(302, ""), false, Err(NotStored::Status)),
            (response(200, "no-store"), false, Err(NotStored::NoStore)),
            (response(200, "private, max-age=60"), false, Err(NotStored::Private)),
            (response(200, "no-cache"), false, ok(0)),
            (response(200, "max-age=60"), true, Err(NotStored::Authorization)),
            (response(200, "public, max-age=60"), true, ok(60)),
            (response(200, "s-maxage=5"), true, ok(5)),
            (
                ResponseFacts { set_cookie: true, ..response(200, "") },
                false,
                Err(NotStored::SetCookie),
            ),
            (ResponseFacts { vary_any: true, ..response(200, "") }, false, Err(NotStored::VaryAny)),
            // Expires against the origin's Date; the origin's Age and the trip count as age.
            (
                ResponseFacts {
                    expires: Some(now + 100),
                    date: Some(now - 10),
                    ..response(200, "")
                },
                false,
                ok(100),
            ),
            (ResponseFacts { age: 50, ..response(200, "max-age=60") }, false, ok(10)),
        ];
        for (resp, authorization, expected) in table {
            let got = storable(&resp, authorization, &ROUTE, now).map(|l| l.fresh);
            assert_eq!(got, expected, "{resp:?} authorization={authorization}");
        }
    }

    #[test]
    fn a_route_can_override_the_origin_but_not_its_no_store() {
        let route = RoutePolicy { override_origin: true, ..ROUTE };
        let got = storable(&response(200, "private, max-age=1"), false, &route, 0);
        assert_eq!(got.map(|l| l.fresh), Ok(60));
        assert_eq!(storable(&response(200, "no-store"), false, &route, 0), Err(NotStored::NoStore));
    }

    #[test]
    fn freshness_then_stale_while_revalidate_then_stale_if_error_then_crisis() {
        let life = storable(&response(200, "max-age=10"), false, &ROUTE, 0).unwrap();
        let at = |age, crisis| usable(&life, age, &ROUTE, crisis);
        assert_eq!(at(0, false), Usable::Fresh);
        assert_eq!(at(9, false), Usable::Fresh);
        assert_eq!(at(10, false), Usable::StaleWhileRevalidate);
        assert_eq!(at(39, false), Usable::StaleWhileRevalidate);
        assert_eq!(at(40, false), Usable::StaleIfError);
        assert_eq!(at(3_610, false), Usable::Expired);
        // Crisis mode stretches freshness to crisis_ttl, and serves anything older stale.
        assert_eq!(at(599, true), Usable::Fresh);
        assert_eq!(at(100_000, true), Usable::StaleIfError);
        // The origin's own stale-* directives win over the route's.
        let said = "max-age=1, stale-while-revalidate=0, stale-if-error=5";
        let own = storable(&response(200, said), false, &ROUTE, 0).unwrap();
        assert_eq!(usable(&own, 5, &ROUTE, false), Usable::StaleIfError);
        assert_eq!(usable(&own, 7, &ROUTE, false), Usable::Expired);
        // must-revalidate: never stale, not even in a crisis.
        let strict = storable(&response(200, "max-age=10, must-revalidate"), false, &ROUTE, 0);
        let strict = strict.unwrap();
        assert_eq!(usable(&strict, 10, &ROUTE, false), Usable::Expired);
        assert_eq!(usable(&strict, 10, &ROUTE, true), Usable::Expired);
        assert_eq!(keep_for(&life, &ROUTE), 600 + 3_600);
        // no-cache: stored, never served without the origin — not stale, not in a crisis.
        let asks = storable(&response(200, "no-cache, max-age=60"), false, &ROUTE, 0).unwrap();
        assert!(asks.revalidate_always && asks.while_revalidate == 0 && asks.if_error == 0);
        assert_eq!(usable(&asks, 1, &ROUTE, false), Usable::Expired);
        assert_eq!(usable(&asks, 1, &ROUTE, true), Usable::Expired);
    }

    #[test]
    fn a_hostile_age_saturates_instead_of_wrapping() {
        let resp = ResponseFacts { age: u64::MAX, date: Some(10), ..response(200, "max-age=60") };
        assert_eq!(initial_age(&resp, 20), u64::MAX);
        assert_eq!(storable(&resp, false, &ROUTE, 20).map(|l| l.fresh), Ok(0));
    }
}
