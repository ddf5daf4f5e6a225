//! The egress keys as a user writes them: `server.egress_listen`, `[egress.NAME]` with its
//! providers, and a route's `egress = "NAME"` — the documented contract read as written, its
//! defaults, and every mistake an error that names the file, line, column and key (and never a
//! key's value).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use seawall_config::*;

static ENV: std::sync::Once = std::sync::Once::new();

/// The variables the files name, set once before any test reads the environment.
fn keys_in_env() {
    ENV.call_once(|| {
        std::env::set_var("SEAWALL_CFG_MAPS_KEY_1", "cfg-key-one");
        std::env::set_var("SEAWALL_CFG_MAPS_KEY_2", "cfg-key-two");
        std::env::set_var("SEAWALL_CFG_GEO_KEY", "cfg-geo-key");
        std::env::set_var("SEAWALL_CFG_EMPTY", "");
        std::env::set_var("SEAWALL_CFG_SPACED", "secret with space");
        std::env::set_var("SEAWALL_CFG_SHORT", "abc123");
    });
}

fn parsed(src: &str) -> Config {
    keys_in_env();
    parse(src, "t.toml").unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn errors(src: &str) -> Vec<String> {
    keys_in_env();
    parse(src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

fn one_error(src: &str, starts: &str, says: &str) {
    let found = errors(src);
    assert!(
        found.iter().any(|e| e.starts_with(starts) && e.contains(says)),
        "expected an error at {starts} saying {says:?}, got {found:#?}"
    );
}

const CONTRACT: &str = r#"
[server]
egress_listen = "127.0.0.1:8081"

[egress.maps]
max_wait = "2s"
cache_ttl = "24h"
providers = [
  { name = "primary", url = "https://maps.example.com/v1", rate = "100/min", keys_env = ["SEAWALL_CFG_MAPS_KEY_1", "SEAWALL_CFG_MAPS_KEY_2"], key_header = "x-api-key" },
  { name = "backup", url = "https://geo.example.net", rate = "50/min", keys_env = ["SEAWALL_CFG_GEO_KEY"], key_query = "key" },
]

[[routes]]
name = "maps"
path_prefix = "/maps/"
egress = "maps"
"#;

#[test]
fn the_documented_contract_is_read_as_written_with_its_defaults() {
    let c = parsed(CONTRACT);
    assert_eq!(c.server.egress_listen, Some("127.0.0.1:8081".parse().unwrap()));
    let g = &c.egress[0];
    assert_eq!((g.name.as_str(), g.max_wait, g.retries), ("maps", Duration::from_secs(2), 2));
    assert_eq!(g.park_for, Duration::from_secs(60));
    let cache = g.cache.as_ref().unwrap();
    assert_eq!(cache.ttl, Duration::from_secs(86_400));
    assert!(
        cache.override_origin,
        "the provider's Cache-Control does not shorten what the quota bought"
    );
    let [primary, backup] = &g.providers[..] else { panic!("{:?}", g.providers) };
    assert_eq!(primary.base_path, "/v1");
    assert_eq!(primary.authority, "maps.example.com");
    assert_eq!(primary.key_in, KeyPlacement::Header("x-api-key".into()));
    assert_eq!(
        primary.keys.iter().map(|k| k.value.as_str()).collect::<Vec<_>>(),
        ["cfg-key-one", "cfg-key-two"]
    );
    let rate = primary.rate.unwrap();
    assert_eq!((rate.count, rate.period_ns, rate.burst), (100, 60_000_000_000, 100));
    assert_eq!(backup.key_in, KeyPlacement::Query("key".into()));
    assert_eq!(backup.base_path, "");
    // Each provider is an upstream of its own: TLS verified against the URL's host, with a
    // breaker, the host name resolved by the gateway.
    let up = &c.upstreams[primary.upstream];
    assert_eq!(up.name, "egress/maps/primary");
    assert!(up.tls.is_some() && up.breaker.is_some());
    assert_eq!(up.servers[0].host.as_deref(), Some("maps.example.com:443"));
    assert_eq!(up.timeout, Duration::from_secs(10));
    // The route takes its group's cache.
    let route = &c.routes[0];
    assert_eq!(route.action, RouteAction::Egress { group: 0 });
    assert_eq!(route.cache.as_ref().unwrap().ttl, Duration::from_secs(86_400));
    // A key's value never shows in a debug print of the configuration.
    assert!(!format!("{c:?}").contains("cfg-key-one"));
}

#[test]
fn the_egress_listener_defaults_to_loopback_and_is_never_public() {
    let body = "[egress.m]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\" }]\n";
    let c = parsed(body);
    assert_eq!(c.server.egress_listen, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(parsed("").server.egress_listen, None, "no egress group, no listener");
    let c = parsed(&format!("[server]\negress_listen = \"[::1]:8081\"\n{body}"));
    assert_eq!(c.server.egress_listen, Some("[::1]:8081".parse().unwrap()));
    // A private address only when asked for: every host of that network could call.
    for private in ["10.0.0.5:8081", "192.168.1.2:8081", "[fd00::1]:8081"] {
        let src = format!("[server]\negress_listen = \"{private}\"\n{body}");
        one_error(&src, "t.toml:2:17: server.egress_listen", "set server.egress_private = true");
        let c = parsed(&format!(
            "[server]\negress_listen = \"{private}\"\negress_private = true\n{body}"
        ));
        assert_eq!(c.server.egress_listen, Some(private.parse().unwrap()));
    }
    for public in ["0.0.0.0:8081", "[::]:8081", "8.8.8.8:8081", "[::ffff:8.8.8.8]:8081"] {
        let src = format!("[server]\negress_listen = \"{public}\"\negress_private = true\n{body}");
        one_error(&src, "t.toml:2:17: server.egress_listen", "is not a loopback address");
    }
    // Another listener on the same port and an overlapping address would share its connections.
    let same = format!("[server]\nlisten = \"127.0.0.1:8081\"\n{body}");
    one_error(&same, "t.toml:", "must differ from server.listen");
    let overlapping =
        format!("[server]\nlisten = \"0.0.0.0:7000\"\negress_listen = \"127.0.0.1:7000\"\n{body}");
    one_error(&overlapping, "t.toml:3:17: server.egress_listen", "must differ from server.listen");
}

#[test]
fn keys_come_from_the_environment_and_errors_never_show_them() {
    let provider = |keys: &str| {
        format!("[egress.m]\nproviders = [{{ name = \"p\", url = \"http://127.0.0.1:9\", key_header = \"x-key\", keys_env = [{keys}] }}]\n")
    };
    one_error(&provider("\"SEAWALL_CFG_NOT_SET\""), "t.toml:2:", "SEAWALL_CFG_NOT_SET is not set");
    one_error(&provider("\"SEAWALL_CFG_EMPTY\""), "t.toml:2:", "SEAWALL_CFG_EMPTY is empty");
    let short = errors(&provider("\"SEAWALL_CFG_SHORT\""));
    assert!(short.iter().any(|e| e.contains("SEAWALL_CFG_SHORT holds fewer than 8")), "{short:?}");
    assert!(short.iter().all(|e| !e.contains("abc123")), "{short:?}");
    let spaced = errors(&provider("\"SEAWALL_CFG_SPACED\""));
    assert!(spaced.iter().any(|e| e.contains("SEAWALL_CFG_SPACED holds a space")), "{spaced:?}");
    assert!(spaced.iter().all(|e| !e.contains("secret with space")), "{spaced:?}");
    one_error(
        &provider("\"SEAWALL_CFG_GEO_KEY\", \"SEAWALL_CFG_GEO_KEY\""),
        "t.toml:2:",
        "listed twice",
    );
    let no_place = "[egress.m]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\", keys_env = [\"SEAWALL_CFG_GEO_KEY\"] }]\n";
    one_error(no_place, "t.toml:2:", "key_header = \"x-api-key\" or key_query");
    let both = "[egress.m]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\", keys_env = [\"SEAWALL_CFG_GEO_KEY\"], key_header = \"a\", key_query = \"b\" }]\n";
    one_error(both, "t.toml:2:", "not both");
    let protocol = "[egress.m]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\", keys_env = [\"SEAWALL_CFG_GEO_KEY\"], key_header = \"content-length\" }]\n";
    one_error(protocol, "t.toml:2:", "cannot carry an API key");
}

#[test]
fn provider_mistakes_name_their_key() {
    let with = |p: &str| format!("[egress.m]\nproviders = [{{ name = \"p\", {p} }}]\n");
    one_error(&with("url = \"ftp://x\""), "t.toml:2:", "egress.m.providers[0].url");
    one_error(&with("url = \"https://user:pw@x.com\""), "t.toml:2:", "use keys_env");
    one_error(&with("url = \"https://x.com/v1?key=1\""), "t.toml:2:", "no query");
    one_error(&with("url = \"https://x.com\", rate = \"fast\""), "t.toml:2:", "expected a rate");
    one_error(
        &with("url = \"https://x.com\", rate = \"10/s\", burst = 20"),
        "t.toml:2:",
        "at most the rate's count",
    );
    one_error(&with("url = \"https://x.com\", burst = 2"), "t.toml:2:", "applies with rate only");
    one_error(
        &with("url = \"http://x.com\", ca_file = \"/nope\""),
        "t.toml:2:",
        "apply to an https:// URL",
    );
    one_error(
        &with("url = \"https://x.com\", ca_file = \"/nonexistent/ca.pem\""),
        "t.toml:2:",
        "ca_file",
    );
    one_error(&with("url = \"https://x.com\", colour = 1"), "t.toml:2:", "unknown field `colour`");
    one_error("[egress.m]\nmax_wait = \"1s\"\n", "t.toml:1:", "needs at least one provider");
    let twice = "[egress.m]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\" }, { name = \"p\", url = \"http://127.0.0.1:8\" }]\n";
    one_error(twice, "t.toml:2:", "listed twice");
    one_error(
        "[egress.m]\ncache_key_headers = [\"accept\"]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\" }]\n",
        "t.toml:2:",
        "applies with cache_ttl only",
    );
}

#[test]
fn an_egress_route_takes_no_other_action_and_no_rewrite() {
    let group = "[egress.m]\nproviders = [{ name = \"p\", url = \"http://127.0.0.1:9\" }]\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n";
    let route = |extra: &str| {
        format!("{group}[[routes]]\npath_prefix = \"/m/\"\negress = \"m\"\n{extra}\n")
    };
    one_error(&route("upstream = \"u\""), "t.toml:", "set egress or upstream, not both");
    one_error(&route("strip_prefix = true"), "t.toml:", "it takes no rewrite");
    one_error(&route("preserve_host = true"), "t.toml:", "preserve_host does not apply");
    one_error(
        &route("on_failure = \"queue\"\nqueue = { deliver_to = \"u\" }"),
        "t.toml:",
        "go through its own group; leave deliver_to out",
    );
    one_error(&route("on_failure = \"queue\""), "t.toml:", "needs a name");
    // A write over quota (or with no key) is queued, and delivered through the route's group.
    let c = parsed(&route("name = \"m\"\non_failure = \"queue\""));
    let topic = &c.queue.as_ref().unwrap().topics[0];
    assert_eq!((topic.name.as_str(), topic.via_route.as_deref()), ("m", Some("m")));
    assert_eq!(c.upstreams[topic.deliver_to].name, "egress/m/p");
    assert_eq!(c.routes[0].queue_on_failure, Some(0));
    let unknown = format!("{group}[[routes]]\negress = \"nope\"\n");
    one_error(
        &unknown,
        "t.toml:6:10: routes[0].egress",
        "no egress group named \"nope\" (expected one of: m)",
    );
}
