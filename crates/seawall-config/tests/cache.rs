//! `[cache]` and a route's `cache = { ... }` as a user writes them: the documented contract,
//! the defaults, and errors that name the key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use seawall_config::*;

const UPSTREAM: &str = "[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\n";

#[test]
fn the_documented_contract_is_read_as_written() {
    let src = format!(
        r#"{UPSTREAM}
[cache]
memory = "256MiB"

[[routes]]
name = "products"
path_prefix = "/products"
upstream = "app"
cache = {{ ttl = "60s", crisis_ttl = "600s", stale_while_revalidate = "30s", stale_if_error = "1h", key = ["host", "path", "query", "header:Accept-Language"], max_object_size = "2MiB", override = true, share_authorized = true, share_cookies = true, coalesce_wait = "2s" }}
"#
    );
    let c = parse(&src, "t.toml").unwrap();
    assert_eq!(c.cache.memory, 256 << 20);
    let cache = c.routes[0].cache.as_deref().unwrap();
    assert_eq!(cache.ttl, Duration::from_secs(60));
    assert_eq!(cache.crisis_ttl, Some(Duration::from_secs(600)));
    assert_eq!(cache.stale_while_revalidate, Duration::from_secs(30));
    assert_eq!(cache.stale_if_error, Duration::from_secs(3600));
    assert_eq!(
        cache.key,
        [
            CacheKeyPart::Host,
            CacheKeyPart::Path,
            CacheKeyPart::Query,
            CacheKeyPart::Header("accept-language".into())
        ]
    );
    assert_eq!(cache.max_object_size, 2 << 20);
    assert!(cache.override_origin && cache.share_authorized && cache.share_cookies);
    assert_eq!(cache.coalesce_wait, Duration::from_secs(2));
}

#[test]
fn an_empty_cache_table_caches_on_its_defaults() {
    let src = format!("{UPSTREAM}[[routes]]\nname = \"r\"\nupstream = \"app\"\ncache = {{}}\n");
    let c = parse(&src, "t.toml").unwrap();
    assert_eq!(c.cache.memory, 64 << 20);
    let cache = c.routes[0].cache.as_deref().unwrap();
    assert_eq!(cache.ttl, Duration::from_secs(60));
    assert_eq!(cache.crisis_ttl, None);
    assert_eq!(cache.stale_while_revalidate, Duration::ZERO);
    assert_eq!(cache.stale_if_error, Duration::ZERO);
    assert_eq!(cache.key, [CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query]);
    assert_eq!(cache.max_object_size, 1 << 20);
    assert_eq!(cache.coalesce_wait, Duration::from_secs(5));
    assert!(!cache.override_origin && !cache.share_authorized && !cache.share_cookies);
    let plain = format!("{UPSTREAM}[[routes]]\nname = \"r\"\nupstream = \"app\"\n");
    assert!(parse(&plain, "t.toml").unwrap().routes[0].cache.is_none());
}

#[test]
fn mistakes_are_reported_with_file_line_column_and_key() {
    let src = format!(
        r#"{UPSTREAM}[cache]
memory = "64KiB"
[[routes]]
name = "r"
upstream = "app"
cache = {{ ttl = "60s", crisis_ttl = "10s", stale_if_error = "soon", key = ["path", "cookie"], ttl_max = 1 }}
"#
    );
    let found: Vec<String> =
        parse(&src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect();
    let expected = [
        "t.toml:4:10: cache.memory: must be at least 1MiB",
        "t.toml:8:37: routes[0].cache.crisis_ttl: must be at least ttl (60s)",
        "t.toml:8:61: routes[0].cache.stale_if_error: expected a duration",
        "t.toml:8:84: routes[0].cache.key: expected \"host\", \"path\", \"query\" or \"header:NAME\", got \"cookie\"",
        "t.toml:8:95: routes[0].cache.ttl_max: unknown field `ttl_max`",
    ];
    for want in expected {
        assert!(
            found.iter().any(|got| got.starts_with(want)),
            "expected {want:?}\nall: {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}
