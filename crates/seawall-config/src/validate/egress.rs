//! `[egress.NAME]`: each provider's URL, quota and keys checked, and each provider made into an
//! upstream group of its own (server, TLS, timeouts, pool, breaker); API keys read from the
//! environment, never from the file; `server.egress_listen` kept off public addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{defaults, passive, protections, tls, valid_header_name, Ctx};
use crate::model::*;
use crate::raw::*;
use crate::recover::key_span;

/// The egress groups, and the upstream groups made for their providers (their indices start at
/// `first_upstream`).
pub(super) fn egress(
    cx: &mut Ctx<'_>,
    raw: &RawConfig,
    first_upstream: usize,
    upstream_names: &[String],
) -> (Vec<Egress>, Vec<Upstream>) {
    let mut groups = Vec::new();
    let mut upstreams = Vec::new();
    for (name, group) in &raw.egress {
        let key = |k: &str| format!("egress.{name}.{k}");
        let group_span = key_span(cx.source, &["egress", name]).unwrap_or(0..0);
        if !valid_name(name) {
            let message = "an egress group's name is letters, digits, '-' and '_'";
            cx.error(group_span.clone(), &format!("egress.{name}"), message);
        }
        let mut providers = Vec::new();
        let list = group.providers.as_deref().unwrap_or_default();
        if list.is_empty() {
            let message = "an egress group needs at least one provider: \
                           providers = [{ name = \"primary\", url = \"https://api.example.com\" }]";
            cx.error(group_span.clone(), &key("providers"), message);
        }
        for (i, p) in list.iter().enumerate() {
            let pkey = format!("{}[{i}]", key("providers"));
            let index = first_upstream + upstreams.len();
            let Some((provider, upstream)) =
                provider(cx, name, p, &pkey, index, group_span.clone())
            else {
                continue;
            };
            if providers.iter().any(|o: &Provider| o.name == provider.name) {
                let span = p.name.as_ref().map_or(group_span.clone(), |n| n.span());
                let message = format!("provider {:?} is listed twice", provider.name);
                cx.error(span, &format!("{pkey}.name"), message);
            }
            if upstream_names.contains(&upstream.name) {
                let message = format!("upstream {:?} is already defined", upstream.name);
                cx.error(group_span.clone(), &pkey, message);
            }
            providers.push(provider);
            upstreams.push(upstream);
        }
        let max_wait = match &group.max_wait {
            None => super::parse_duration(defaults::EGRESS_MAX_WAIT).unwrap_or_default(),
            Some(v) => {
                let wait = cx.duration_or_zero(Some(v), &key("max_wait"));
                if wait > Duration::from_secs(600) {
                    let message = "at most 10m: a caller does not wait longer for a third party";
                    cx.error(v.span(), &key("max_wait"), message);
                }
                wait
            }
        };
        let park_for =
            cx.duration(group.park_for.as_ref(), &key("park_for"), defaults::EGRESS_PARK_FOR);
        let retries =
            cx.count(group.retries.as_ref(), &key("retries"), defaults::EGRESS_RETRIES, 0, 10);
        let backoff =
            cx.duration(group.backoff.as_ref(), &key("backoff"), defaults::EGRESS_BACKOFF);
        // A caller asking for an answer another is fetching waits for that fetch: as long as it
        // may take (its wait for quota, then the slowest provider).
        let slowest =
            upstreams[upstreams.len() - providers.len()..].iter().map(|u| u.timeout).max();
        let coalesce = (max_wait + slowest.unwrap_or_default())
            .max(super::parse_duration(defaults::CACHE_COALESCE_WAIT).unwrap_or_default());
        let cache = group.cache_ttl.as_ref().map(|ttl| {
            let ttl = cx.duration(Some(ttl), &key("cache_ttl"), defaults::CACHE_TTL);
            let headers = group.cache_key_headers.as_deref();
            Arc::new(answers_cache(cx, (ttl, coalesce), headers, &key))
        });
        if let (None, Some(headers)) = (&group.cache_ttl, &group.cache_key_headers) {
            let span = headers.first().map_or(group_span.clone(), |h| h.span());
            cx.error(span, &key("cache_key_headers"), "applies with cache_ttl only");
        }
        groups.push(Egress {
            name: name.clone(),
            providers,
            max_wait,
            park_for,
            retries: retries as u32,
            backoff,
            cache,
        });
    }
    (groups, upstreams)
}

/// The cache an egress group's answers are kept in: `ttl` whatever the provider says (its
/// answers are what the quota buys), served stale as long again when every provider fails.
fn answers_cache(
    cx: &mut Ctx<'_>,
    (ttl, coalesce_wait): (Duration, Duration),
    headers: Option<&[Text]>,
    key: &dyn Fn(&str) -> String,
) -> RouteCache {
    let mut parts = vec![CacheKeyPart::Path, CacheKeyPart::Query];
    for h in headers.unwrap_or_default() {
        let name = h.get_ref().to_ascii_lowercase();
        if valid_header_name(&name) {
            parts.push(CacheKeyPart::Header(name));
        } else {
            let message = format!("{:?} is not a valid header name", h.get_ref());
            cx.error(h.span(), &key("cache_key_headers"), message);
        }
    }
    RouteCache {
        ttl,
        crisis_ttl: None,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: ttl,
        key: parts,
        max_object_size: defaults::CACHE_MAX_OBJECT,
        override_origin: true,
        share_authorized: false,
        share_cookies: false,
        coalesce_wait,
    }
}

/// One provider, and the upstream group that carries its calls.
fn provider(
    cx: &mut Ctx<'_>,
    group: &str,
    p: &RawProvider,
    key: &str,
    upstream_index: usize,
    group_span: std::ops::Range<usize>,
) -> Option<(Provider, Upstream)> {
    let field = |f: &str| format!("{key}.{f}");
    let Some(name) = &p.name else {
        cx.error(group_span, &field("name"), "missing; every provider needs a name");
        return None;
    };
    if !valid_name(name.get_ref()) {
        let message = "a provider's name is letters, digits, '-' and '_'";
        cx.error(name.span(), &field("name"), message);
    }
    let Some(url) = &p.url else {
        let message =
            "missing; expected the provider's base URL, like \"https://api.example.com/v1\"";
        cx.error(name.span(), &field("url"), message);
        return None;
    };
    let parsed = match BaseUrl::parse(url.get_ref()) {
        Ok(parsed) => parsed,
        Err(message) => {
            cx.error(url.span(), &field("url"), message);
            return None;
        }
    };
    let server_entry = format!("{}:{}", parsed.host, parsed.port);
    // A host name is resolved by the gateway (at start, then at its TTL), never here: a
    // provider's name need not resolve where the file is checked. Until it is, the server is
    // down and calls go to the next provider.
    let literal = parsed.host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    let address = SocketAddr::new(literal.unwrap_or(IpAddr::from([0, 0, 0, 0])), parsed.port);
    let literal = literal.is_some();
    let burst = p.burst.as_ref().map(|b| cx.count(Some(b), &field("burst"), 1, 1, 100_000) as u32);
    let rate = p.rate.as_ref().map(|r| {
        let quota = protections::quota(cx, r.get_ref(), r.span(), &field("rate"), burst);
        if quota.count > defaults::EGRESS_MAX_RATE_COUNT {
            let message = format!(
                "at most {} calls per period are counted one by one; write a shorter period",
                defaults::EGRESS_MAX_RATE_COUNT
            );
            cx.error(r.span(), &field("rate"), message);
        }
        if let (Some(b), Some(burst)) = (&p.burst, burst) {
            if burst > quota.count {
                let message = format!("must be at most the rate's count ({})", quota.count);
                cx.error(b.span(), &field("burst"), message);
            }
        }
        quota
    });
    if let (None, Some(b)) = (&rate, &p.burst) {
        cx.error(b.span(), &field("burst"), "applies with rate only");
    }
    let daily_quota = p
        .daily_quota
        .as_ref()
        .map(|d| cx.count(Some(d), &field("daily_quota"), 1, 1, 1_000_000_000_000));
    let keys = api_keys(cx, p.keys_env.as_deref().unwrap_or_default(), &field("keys_env"));
    let key_in = match (&p.key_header, &p.key_query) {
        (Some(_), Some(q)) => {
            cx.error(q.span(), &field("key_query"), "set key_header or key_query, not both");
            KeyPlacement::None
        }
        (Some(h), None) => {
            let lower = h.get_ref().to_ascii_lowercase();
            if !valid_header_name(&lower) || super::is_protocol_field(&lower) {
                let message = format!("{:?} cannot carry an API key", h.get_ref());
                cx.error(h.span(), &field("key_header"), message);
            }
            KeyPlacement::Header(lower)
        }
        (None, Some(q)) => {
            let name = q.get_ref();
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            {
                let message = format!("{name:?} is not a plain query parameter name");
                cx.error(q.span(), &field("key_query"), message);
            }
            KeyPlacement::Query(name.clone())
        }
        (None, None) => KeyPlacement::None,
    };
    match (&p.keys_env, &key_in) {
        (Some(list), KeyPlacement::None) if !list.is_empty() => {
            let message = "the keys need a place in each call: key_header = \"x-api-key\" or key_query = \"key\"";
            cx.error(list[0].span(), &field("keys_env"), message);
        }
        (None, KeyPlacement::Header(_) | KeyPlacement::Query(_)) => {
            let span =
                p.key_header.as_ref().or(p.key_query.as_ref()).map_or(name.span(), |v| v.span());
            cx.error(
                span,
                &field("keys_env"),
                "missing; key_header and key_query need keys_env = [\"VAR\"]",
            );
        }
        _ => {}
    }
    let key_prefix = match (&p.key_prefix, &key_in) {
        (None, _) => String::new(),
        (Some(v), KeyPlacement::Header(_)) => {
            let text = v.get_ref();
            if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                let message = "a key prefix is visible ASCII and spaces, like \"Bearer \"";
                cx.error(v.span(), &field("key_prefix"), message);
            }
            text.clone()
        }
        (Some(v), _) => {
            cx.error(v.span(), &field("key_prefix"), "applies with key_header only");
            String::new()
        }
    };
    let upstream_key = |f: &str| format!("{key}.{f}");
    let tls = parsed.https.then(|| {
        let raw_tls = RawUpstreamTls {
            server_name: p.server_name.clone(),
            ca_file: p.ca_file.clone(),
            ..RawUpstreamTls::default()
        };
        tls::upstream_tls(cx, &raw_tls, key)
    });
    if let (false, Some(v)) = (parsed.https, p.ca_file.as_ref().or(p.server_name.as_ref())) {
        cx.error(v.span(), key, "ca_file and server_name apply to an https:// URL");
    }
    let timeout =
        cx.duration(p.timeout.as_ref(), &upstream_key("timeout"), defaults::EGRESS_TIMEOUT);
    let connect_timeout = cx.duration(
        p.connect_timeout.as_ref(),
        &upstream_key("connect_timeout"),
        defaults::EGRESS_CONNECT_TIMEOUT,
    );
    let breaker = protections::breaker(
        cx,
        p.breaker.as_ref().unwrap_or(&RawBreaker::default()),
        &upstream_key("breaker"),
    );
    let bulkhead = p.max_connections.as_ref().map(|m| {
        let n = cx.count(Some(m), &upstream_key("max_connections"), 1, 1, 100_000) as usize;
        Bulkhead { max_concurrency: n, max_queue: n, queue_timeout: Duration::from_secs(1) }
    });
    let upstream = Upstream {
        name: format!("egress/{group}/{}", name.get_ref()),
        servers: vec![UpstreamServer {
            host: (!literal).then(|| server_entry.clone()),
            name: server_entry,
            address,
            weight: 1,
        }],
        balance: Balance::RoundRobin,
        connect_timeout,
        timeout,
        read_timeout: timeout,
        send_timeout: timeout,
        pool: Pool {
            max_idle: None,
            idle_timeout: super::parse_duration(defaults::EGRESS_POOL_IDLE).unwrap_or_default(),
        },
        health: None,
        passive: passive(cx, None, &upstream_key("passive")),
        total_timeout: None,
        breaker: Some(breaker),
        retry: protections::retry(cx, None, &upstream_key("retry")),
        bulkhead,
        adaptive: false,
        max_latency: None,
        fallback: Vec::new(),
        tls,
    };
    let provider = Provider {
        name: name.get_ref().clone(),
        upstream: upstream_index,
        url: url.get_ref().clone(),
        authority: parsed.authority,
        base_path: parsed.path,
        rate,
        daily_quota,
        keys,
        key_in,
        key_prefix,
    };
    Some((provider, upstream))
}

/// The keys named by `keys_env`, read from the environment now (a reload reads them again).
/// Errors name the variable, never its value.
fn api_keys(cx: &mut Ctx<'_>, names: &[Text], key: &str) -> Vec<ApiKey> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, var) in names.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let env = var.get_ref();
        if keys.iter().any(|o| o.env == *env) {
            cx.error(var.span(), &k, format!("{env} is listed twice"));
            continue;
        }
        match std::env::var(env) {
            Ok(value) if value.is_empty() => {
                cx.error(var.span(), &k, format!("the environment variable {env} is empty"));
            }
            Ok(value) if value.len() < 8 => {
                let message = format!(
                    "the environment variable {env} holds fewer than 8 characters: too short for \
                     an API key (and to be told apart in answers, where keys are looked for)"
                );
                cx.error(var.span(), &k, message);
            }
            Ok(value) if !value.bytes().all(|b| b.is_ascii_graphic()) => {
                let message = format!(
                    "the environment variable {env} holds a space, a control or a non-ASCII \
                     character: it cannot go into a header or a URL"
                );
                cx.error(var.span(), &k, message);
            }
            Ok(value) => keys.push(ApiKey { env: env.clone(), value }),
            Err(_) => {
                let message = format!(
                    "the environment variable {env} is not set (the API key is read from it)"
                );
                cx.error(var.span(), &k, message);
            }
        }
    }
    keys
}

/// `egress = "NAME"` on a route: its action, and errors for what cannot go with it (another
/// action, a path rewrite — the provider's URL takes the path after the route's prefix — or
/// a read upstream).
pub(super) fn route_action(
    cx: &mut Ctx<'_>,
    r: &RawRoute,
    key: &dyn Fn(&str) -> String,
    groups: &[Egress],
) -> Option<RouteAction> {
    let name = r.egress.as_ref()?;
    let others = [
        ("upstream", r.upstream.as_ref().map(|v| v.span())),
        ("redirect", r.redirect.as_ref().map(|v| v.span())),
        // `queue = { topic }` names the topic of `on_failure = "queue"`.
        ("queue", r.queue.as_ref().filter(|_| r.on_failure.is_none()).map(|v| v.span())),
        ("read_upstream", r.read_upstream.as_ref().map(|v| v.span())),
        ("strip_prefix", r.strip_prefix.as_ref().map(|v| v.span())),
        ("prefix_rewrite", r.prefix_rewrite.as_ref().map(|v| v.span())),
        ("preserve_host", r.preserve_host.and(r.egress.as_ref()).map(|v| v.span())),
    ];
    for (field, span) in others {
        if let Some(span) = span {
            let message = match field {
                "strip_prefix" | "prefix_rewrite" => "an egress route's path after its \
                    path_prefix is appended to the provider's URL: it takes no rewrite"
                    .to_string(),
                "preserve_host" => "an egress call's Host is its provider's: preserve_host does \
                    not apply"
                    .to_string(),
                _ => format!("set egress or {field}, not both"),
            };
            cx.error(span, &key(field), message);
        }
    }
    match groups.iter().position(|g| g.name == *name.get_ref()) {
        Some(group) => Some(RouteAction::Egress { group }),
        None => {
            let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            let known = if known.is_empty() {
                "none is defined under [egress]".to_string()
            } else {
                format!("expected one of: {}", known.join(", "))
            };
            let message = format!("no egress group named {:?} ({known})", name.get_ref());
            cx.error(name.span(), &key("egress"), message);
            None
        }
    }
}

/// `server.egress_listen`: where the egress routes are served, when there is an egress group.
/// A public address would let anyone spend the application's quota: a loopback address, or
/// with `server.egress_private = true` a private one (every host of that network can then call).
/// It must not share a port with another listener on an overlapping address (the sockets are
/// bound with `SO_REUSEPORT`: the kernel would mix their connections).
pub(super) fn egress_listen(
    cx: &mut Ctx<'_>,
    raw_server: &RawServer,
    server: &Server,
    needed: bool,
) -> Option<SocketAddr> {
    let raw = raw_server.egress_listen.as_ref();
    let private_ok = raw_server.egress_private.unwrap_or(false);
    let (addr, span) = match raw {
        None if !needed => return None,
        None => {
            let default = defaults::EGRESS_LISTEN.parse().ok()?;
            (default, key_span(cx.source, &["egress"]).unwrap_or(0..0))
        }
        Some(value) => {
            (cx.address(value.get_ref(), value.span(), "server.egress_listen")?, value.span())
        }
    };
    let ip = addr.ip().to_canonical();
    let allowed = ip.is_loopback() || (private_ok && is_internal(ip));
    if !allowed {
        let why = if is_internal(ip) {
            "is a private address: every host of that network could spend the application's \
             quota and keys (set server.egress_private = true if that is meant)"
        } else {
            "is not a loopback address: the egress routes spend the application's quota and \
             keys, and must not be reachable from outside (use 127.0.0.1:PORT)"
        };
        cx.error(span, "server.egress_listen", format!("{} {why}", addr.ip()));
        return None;
    }
    let taken = [Some(server.listen), Some(server.admin), server.http_redirect];
    let overlaps = |other: &SocketAddr| {
        let (a, b) = (other.ip().to_canonical(), ip);
        other.port() == addr.port() && (a == b || a.is_unspecified() || b.is_unspecified())
    };
    if addr.port() != 0 && taken.iter().flatten().any(overlaps) {
        let written =
            if raw.is_some() { "" } else { " (its default, 127.0.0.1:8081: set another)" };
        let message = format!(
            "must differ from server.listen, server.admin and server.http_redirect{written}"
        );
        cx.error(span, "server.egress_listen", message);
        return None;
    }
    Some(addr)
}

/// Loopback, RFC 1918, shared (100.64/10), link-local and unique-local addresses; not the
/// unspecified address (every interface).
fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A provider's base URL, taken apart.
#[derive(Debug, PartialEq, Eq)]
struct BaseUrl {
    https: bool,
    /// As written, `[…]` kept around an IPv6 address.
    host: String,
    port: u16,
    /// `host[:port]`, the port only when it is not the scheme's default.
    authority: String,
    /// Without a trailing `/`.
    path: String,
}

impl BaseUrl {
    fn parse(url: &str) -> Result<BaseUrl, String> {
        let expected = "expected a URL like \"https://api.example.com/v1\"";
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{expected} (https:// or http://), got {url:?}"));
        };
        if rest.contains(['?', '#']) {
            return Err(format!("{expected}: a base URL has no query or fragment, got {url:?}"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err("credentials do not go in the URL: use keys_env".into());
        }
        let (host, port) = match authority.rsplit_once(':').filter(|(h, _)| !h.ends_with(':')) {
            Some((host, port)) if !authority.ends_with(']') => {
                let port = port.parse::<u16>().ok().filter(|&p| p > 0);
                (host, port.ok_or_else(|| format!("{expected}: bad port in {url:?}"))?)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let host_ok = if bracketed {
            host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if !host_ok {
            return Err(format!("{expected}: {host:?} is not a host name or address"));
        }
        let path_ok = path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
        if !path_ok || path.split('/').any(|s| s == "." || s == "..") {
            return Err(format!("{expected}: the path {path:?} is not a plain URL path"));
        }
        let default_port = if https { 443 } else { 80 };
        let host = host.to_ascii_lowercase();
        let authority = if port == default_port { host.clone() } else { format!("{host}:{port}") };
        Ok(BaseUrl { https, host, port, authority, path: path.trim_end_matches('/').to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_taken_apart() {
        let u = BaseUrl::parse("https://Maps.example.com/v1/").unwrap();
        assert_eq!(
            (u.https, u.port, u.authority.as_str(), u.path.as_str()),
            (true, 443, "maps.example.com", "/v1")
        );
        let u = BaseUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((u.port, u.authority.as_str(), u.path.as_str()), (9000, "127.0.0.1:9000", ""));
        let u = BaseUrl::parse("https://[::1]:8443/x").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("[::1]", 8443, "[::1]:8443"));
        for bad in [
            "ftp://x",
            "https://user:pw@x.com",
            "https://x.com/?a=1",
            "https://x.com:0",
            "https://x.com:99999",
            "https://",
            "https://x y",
            "https://x.com/a/../b",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_internal_addresses_serve_egress() {
        for ok in
            ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.0.1", "100.64.0.1", "::1", "fd00::1"]
        {
            assert!(is_internal(ok.parse().unwrap()), "{ok}");
        }
        for public in ["0.0.0.0", "8.8.8.8", "::", "2001:db8::1", "172.32.0.1"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
