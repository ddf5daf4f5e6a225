//! The configuration as a user writes it: the minimal file from the docs, defaults, and errors that
#![allow(clippy::unwrap_used)]
//! point at file:line:column and the key.

use std::time::Duration;

use seawall_config::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin = "127.0.0.1:9901"

[upstreams.app]
servers = ["127.0.0.1:9000", "127.0.0.1:9001"]
balance = "least_request"        # round_robin | least_request | consistent_hash
connect_timeout = "1s"
timeout = "5s"
health = { path = "/healthz", interval = "1s", unhealthy_after = 2, healthy_after = 2 }

[[routes]]
name = "api"
path_prefix = "/"
upstream = "app"
"#;

fn errors(src: &str) -> Vec<String> {
    parse(src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn minimal_config_is_accepted_as_written() {
    let c = parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    let up = &c.upstreams[0];
    assert_eq!(up.name, "app");
    assert_eq!(up.servers.len(), 2);
    assert_eq!(up.balance, Balance::LeastRequest);
    assert_eq!(up.timeout, Duration::from_secs(5));
    let h = up.health.as_ref().unwrap();
    assert_eq!((h.interval, h.unhealthy_after, h.healthy_after), (Duration::from_secs(1), 2, 2));
    assert_eq!(c.routes[0].action, RouteAction::Proxy { upstream: 0 });
    assert_eq!(c.server.max_body_size, Some(100 << 20));
}

#[test]
fn pools_are_sized_by_demand_unless_max_idle_caps_them() {
    let c = parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.upstreams[0].pool.max_idle, None);
    assert_eq!(c.upstreams[0].pool.idle_timeout, Duration::from_secs(60));
    let capped = MINIMAL.replace("timeout = \"5s\"", "timeout = \"5s\"\npool = { max_idle = 8 }");
    assert_eq!(parse(&capped, "t.toml").unwrap().upstreams[0].pool.max_idle, Some(8));
    let e =
        errors(&MINIMAL.replace("timeout = \"5s\"", "timeout = \"5s\"\npool = { max_idle = -1 }"));
    assert!(e[0].starts_with("t.toml:11:21: upstreams.app.pool.max_idle"), "{e:?}");
}

#[test]
fn example_file_in_the_repository_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seawall.toml");
    load(std::path::Path::new(path)).unwrap();
}

#[test]
fn unknown_key_names_line_column_and_path() {
    let src = MINIMAL.replace("timeout = \"5s\"", "timeout = \"5s\"\nretries = 3");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("t.toml:11:1: upstreams.app"), "{}", e[0]);
    assert!(e[0].contains("unknown field `retries`"), "{}", e[0]);
}

#[test]
fn syntax_error_has_a_position() {
    let e = errors("[server]\nlisten = \n");
    assert!(e[0].starts_with("t.toml:2:"), "{}", e[0]);
}

#[test]
fn every_validation_error_is_reported_with_key() {
    let src = MINIMAL
        .replace("\"1s\", unhealthy", "\"soon\", unhealthy")
        .replace("upstream = \"app\"", "upstream = \"nope\"")
        .replace("least_request", "fastest");
    let e = errors(&src);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e.iter().any(|e| e.starts_with("t.toml:8:11: upstreams.app.balance: expected round_robin")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains(":11:")
            && e.contains("upstreams.app.health.interval")
            && e.contains("\"soon\"")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with(
            "t.toml:16:12: routes[0].upstream: no upstream named \"nope\" (expected one of: app)"
        )),
        "{e:?}"
    );
}

#[test]
fn timeouts_are_checked_against_each_other() {
    let src = MINIMAL.replace("interval = \"1s\"", "interval = \"1s\", timeout = \"2s\"");
    let e = errors(&src);
    assert!(e[0].contains("upstreams.app.health.timeout: must not exceed"), "{e:?}");
}

#[test]
fn public_admin_needs_a_token() {
    let src = MINIMAL.replace("admin = \"127.0.0.1:9901\"", "admin = \"0.0.0.0:9901\"");
    assert!(errors(&src)[0]
        .contains("server.admin: a non-loopback admin address needs server.admin_token"));
    let with_token = src.replace("[server]\n", "[server]\nadmin_token = \"s3cret\"\n");
    assert!(parse(&with_token, "t.toml").is_ok());
}

#[test]
fn weighted_servers_hosts_and_hash_keys() {
    let src = r#"
[upstreams.u]
servers = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]
balance = "consistent_hash"
hash_on = "cookie:session"
[[routes]]
host = "*.Example.com"
path = "/exact"
methods = ["get", "post"]
header = { name = "X-Canary" }
upstream = "u"
"#;
    let c = parse(src, "t.toml").unwrap();
    assert_eq!(c.upstreams[0].servers[1].weight, 3);
    assert_eq!(c.upstreams[0].balance, Balance::ConsistentHash(HashKey::Cookie("session".into())));
    let m = &c.routes[0].matcher;
    assert_eq!(m.host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(m.path, PathMatch::Exact("/exact".into()));
    assert_eq!(m.methods, vec!["GET", "POST"]);
    assert_eq!(m.header.as_ref().unwrap().name, "x-canary");
}

#[test]
fn every_truncation_of_the_example_parses_or_errors_without_panicking() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seawall.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().count();
    for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        if let Err(errors) = parse(&text[..end], "t.toml") {
            for e in &errors.0 {
                assert!(e.line >= 1 && e.line <= lines + 1, "{e}");
                assert!(e.column >= 1, "{e}");
            }
            assert_in_file_order_without_repeats(&errors.0);
        }
    }
}

fn assert_in_file_order_without_repeats(errors: &[ConfigError]) {
    for pair in errors.windows(2) {
        assert!((pair[0].line, pair[0].column) <= (pair[1].line, pair[1].column), "{pair:?}");
    }
    for (i, e) in errors.iter().enumerate() {
        assert!(!errors[..i].contains(e), "reported twice: {e}");
    }
}

const MANY_ERRORS: &str = r#"colour = "blue"
[server]
listen = "127.0.0.1"
workers = "four"
lisen = "127.0.0.1:8081"
[log]
level = "info"
fmt = "json"
[upstreams.app]
servers = ["127.0.0.1:9000"]
balance = "fastest"
retries = 3
pool = { max_idle = 8, size = 2 }
health = { path = "/healthz", every = "1s" }
passive = { consecutive_failures = 5, jail = "10s" }
[[routes]]
name = "api"
upstream = "app"
[[routes]]
name = "canary"
upstream = "app"
header = { name = "x-canary", equals = "1" }
stickiness = 1
"#;

#[test]
fn every_unknown_key_type_error_and_validation_error_is_reported_in_line_order() {
    let e = errors(MANY_ERRORS);
    let expected = [
        ("t.toml:1:1: colour: ", "unknown field `colour`, expected one of `server`, `log`"),
        ("t.toml:3:10: server.listen: ", "expected an address"),
        ("t.toml:4:11: server.workers: ", "invalid type: string \"four\""),
        ("t.toml:5:1: server.lisen: ", "unknown field `lisen`, expected one of `listen`, `admin`"),
        ("t.toml:8:1: log.fmt: ", "unknown field `fmt`, expected one of `level`, `format`"),
        ("t.toml:11:11: upstreams.app.balance: ", "expected round_robin"),
        ("t.toml:12:1: upstreams.app.retries: ", "unknown field `retries`, expected one of"),
        (
            "t.toml:13:24: upstreams.app.pool.size: ",
            "unknown field `size`, expected `max_idle` or `idle_timeout`",
        ),
        ("t.toml:14:31: upstreams.app.health.every: ", "unknown field `every`, expected one of"),
        ("t.toml:15:39: upstreams.app.passive.jail: ", "unknown field `jail`, expected one of"),
        (
            "t.toml:22:31: routes[1].header.equals: ",
            "unknown field `equals`, expected `name` or `value`",
        ),
        ("t.toml:23:1: routes[1].stickiness: ", "unknown field `stickiness`, expected one of"),
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (got, (prefix, message)) in e.iter().zip(expected) {
        assert!(got.starts_with(prefix), "{got:?} does not start with {prefix:?}");
        assert!(got[prefix.len()..].starts_with(message), "{got:?} lacks {message:?}");
    }
}

#[test]
fn an_unknown_key_near_a_known_one_gets_a_suggestion() {
    let e = errors(MANY_ERRORS);
    let suggested: Vec<&String> = e.iter().filter(|e| e.contains("did you mean")).collect();
    assert_eq!(suggested.len(), 1, "{e:#?}");
    assert!(suggested[0].starts_with("t.toml:5:1: server.lisen: "), "{e:#?}");
    assert!(suggested[0].ends_with("; did you mean `listen`?"), "{e:#?}");

    let src = MINIMAL
        .replace("timeout = \"5s\"", "timout = \"5s\"")
        .replace("interval = \"1s\"", "intervals = \"1s\"")
        .replace("upstream = \"app\"", "upstrem = \"app\"");
    let e = errors(&src);
    let expected = [
        ("t.toml:10:1: upstreams.app.timout: ", Some("timeout")),
        ("t.toml:11:31: upstreams.app.health.intervals: ", Some("interval")),
        // Without `upstrem`, the route has no upstream: validation still runs on the rest.
        ("t.toml:13:1: routes[0].upstream: ", None),
        ("t.toml:16:1: routes[0].upstrem: ", Some("upstream")),
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (got, (prefix, near)) in e.iter().zip(expected) {
        assert!(got.starts_with(prefix), "{got:?} does not start with {prefix:?}");
        match near {
            Some(near) => {
                assert!(got.ends_with(&format!("; did you mean `{near}`?")), "{got:?}")
            }
            None => assert!(!got.contains("did you mean"), "{got:?}"),
        }
    }
}

#[test]
fn a_syntax_error_is_the_only_error() {
    let src = format!("bogus = 1\n{MINIMAL}\n[server.tls]\ncert = \n");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("t.toml:20:8: invalid string"), "{e:#?}");
}

#[test]
fn an_unknown_table_is_reported_once_with_everything_under_it() {
    let src = format!(
        "{MINIMAL}\n[server.quic]\ncert = \"a.pem\"\n[server.quic.client]\nca = \"b.pem\"\n[log]\nfmt = 1\n"
    );
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("t.toml:18:9: server.quic: unknown field `quic`"), "{e:#?}");
    assert!(e[1].starts_with("t.toml:23:1: log.fmt: unknown field `fmt`"), "{e:#?}");
}

#[test]
fn errors_after_a_rejected_array_element_keep_their_index() {
    let src = r#"
[upstreams.app]
servers = [
  5,
  { weight = 2 },
  "127.0.0.1:1",
  "127.0.0.1",
]
[[routes]]
upstream = "app"
[[routes]]
upstream = "nope"
"#;
    let e = errors(src);
    let keys: Vec<&str> = e.iter().map(|e| e.split(": ").nth(1).unwrap_or("")).collect();
    assert_eq!(
        keys,
        [
            "upstreams.app.servers[0]",
            "upstreams.app.servers[1]",
            "upstreams.app.servers[3]",
            "routes[1].upstream"
        ],
        "{e:#?}"
    );
    assert!(e[0].starts_with("t.toml:4:3: "), "{e:#?}");
    assert!(e[1].starts_with("t.toml:5:3: upstreams.app.servers[1]: missing field `address`"));
    assert!(e[2].starts_with("t.toml:7:3: "), "{e:#?}");

    let src = r#"
routes = [1, { upstream = "app", weight = 1 }, { upstream = "nope" }]
[upstreams.app]
servers = ["127.0.0.1:1"]
"#;
    let keys: Vec<String> =
        errors(src).iter().map(|e| e.split(": ").nth(1).unwrap_or("").to_string()).collect();
    assert_eq!(keys, ["routes[0]", "routes[1].weight", "routes[2].upstream"]);
}

#[test]
fn an_upstream_without_servers_still_has_its_other_keys_checked() {
    let src = MINIMAL.replace("servers = [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]\n", "");
    let src = src.replace("timeout = \"5s\"", "timeout = \"5s\"\nretries = 3");
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("t.toml:6:12: upstreams.app.servers: missing"), "{e:#?}");
    assert!(e[1].starts_with("t.toml:10:1: upstreams.app.retries: unknown field"), "{e:#?}");
}

#[test]
fn health_written_with_dotted_keys_is_read() {
    let src = MINIMAL.replace(
        "health = { path = \"/healthz\", interval = \"1s\", unhealthy_after = 2, healthy_after = 2 }",
        "health.path = \"/up\"\nhealth.interval = \"3s\"",
    );
    let c = parse(&src, "t.toml").unwrap();
    let h = c.upstreams[0].health.as_ref().unwrap();
    assert_eq!((h.path.as_str(), h.interval), ("/up", Duration::from_secs(3)));
}

#[test]
fn an_unknown_key_after_any_line_of_the_example_is_its_only_error() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seawall.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The key path of the table each line is in: `server`, `upstreams.app`, `routes[0]`.
    let mut table = String::new();
    let mut tables = Vec::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in &lines {
        tables.push(table.clone());
        if let Some(header) = line.strip_prefix("[[") {
            let name = header.split(']').next().unwrap().to_string();
            let n = arrays.entry(name.clone()).or_default();
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(header) = line.strip_prefix('[') {
            table = header.split(']').next().unwrap().to_string();
        }
    }
    tables.push(table);
    for (at, table) in tables.iter().enumerate() {
        let mut edited = lines.clone();
        edited.insert(at, "bogus_key = 1");
        let e = errors(&edited.join("\n"));
        let key =
            if table.is_empty() { "bogus_key".to_string() } else { format!("{table}.bogus_key") };
        assert_eq!(e.len(), 1, "after line {at}: {e:#?}");
        let want = format!("t.toml:{}:1: {key}: unknown field `bogus_key`", at + 1);
        assert!(e[0].starts_with(&want), "{:?} does not start with {want:?}", e[0]);
    }
}

#[test]
fn header_size_is_bounded_both_ways() {
    for (size, ok) in
        [("\"4KiB\"", false), ("\"8KiB\"", true), ("\"1MiB\"", true), ("\"2MiB\"", false)]
    {
        let src = MINIMAL.replace(
            "admin = \"127.0.0.1:9901\"",
            &format!("admin = \"127.0.0.1:9901\"\nmax_header_size = {size}"),
        );
        if ok {
            assert!(seawall_config::parse(&src, "t.toml").is_ok(), "{size}");
        } else {
            let e = errors(&src);
            assert!(
                e.len() == 1
                    && e[0].starts_with("t.toml:5:19: server.max_header_size: must be between"),
                "{size}: {e:?}"
            );
        }
    }
}

#[test]
fn client_address_keys_are_read_and_checked() {
    let c = parse(MINIMAL, "t.toml").unwrap();
    assert!(!c.server.clients.proxy_protocol);
    assert!(c.server.clients.trusted_proxies.is_empty());
    assert_eq!(c.server.clients.forwarded_for, ForwardedFor::Replace);
    let keys = "[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nforwarded_for = \"append\"";
    let c = parse(&MINIMAL.replace("[server]", keys), "t.toml").unwrap();
    assert!(c.server.clients.proxy_protocol);
    assert!(c.server.clients.trusts("10.2.3.4".parse().unwrap()));
    assert!(c.server.clients.trusts("::1".parse().unwrap()));
    assert!(!c.server.clients.trusts("11.0.0.1".parse().unwrap()));
    assert_eq!(c.server.clients.forwarded_for, ForwardedFor::Append);
    let bad = "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\", \"proxy\"]\nforwarded_for = \"keep\"";
    let e = errors(&MINIMAL.replace("[server]", bad));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:3:34: server.trusted_proxies[1]: expected a network"),
        "{e:?}"
    );
    assert!(e[0].contains("bits set past the /8"), "{e:?}");
    assert!(e[1].starts_with("t.toml:3:48: server.trusted_proxies[2]"), "{e:?}");
    assert!(
        e[2].starts_with("t.toml:4:17: server.forwarded_for: expected \"replace\" or \"append\""),
        "{e:?}"
    );
    let e = errors(&MINIMAL.replace("[server]", "[server]\nproxy_protocol = \"yes\""));
    assert!(e[0].starts_with("t.toml:3:18: server.proxy_protocol"), "{e:?}");
}

#[test]
fn dns_keys_are_read_and_checked() {
    let c = parse(MINIMAL, "t.toml").unwrap();
    assert!(c.dns.servers.is_empty() && c.dns.resolve_interval.is_none());
    assert_eq!((c.dns.min_ttl, c.dns.max_ttl), (Duration::from_secs(1), Duration::from_secs(300)));
    assert_eq!(c.upstreams[0].servers[0].host, None, "an address is not resolved again");
    let named = MINIMAL.replace("\"127.0.0.1:9001\"", "\"app.internal:9001\"")
        + "[dns]\nservers = [\"127.0.0.1:5353\", \"10.0.0.2\"]\nresolve_interval = \"10s\"\n";
    let c = parse(&named, "t.toml").unwrap();
    assert_eq!(c.upstreams[0].servers[1].host.as_deref(), Some("app.internal:9001"));
    assert_eq!(c.dns.servers, ["127.0.0.1:5353".parse().unwrap(), "10.0.0.2:53".parse().unwrap()]);
    assert_eq!(c.dns.resolve_interval, Some(Duration::from_secs(10)));
    let bad = MINIMAL.replace("\"127.0.0.1:9001\"", "\"bad host:9001\"")
        + "[dns]\nservers = [\"ns.example\"]\nmin_ttl = \"10m\"\nresolve_interval = \"0s\"\n";
    let e = errors(&bad);
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e.iter().any(|e| e.starts_with("t.toml:18:12: dns.servers[0]: expected an IP address")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with("t.toml:19:11: dns.min_ttl: must not exceed dns.max_ttl")),
        "{e:?}"
    );
    assert!(e.iter().any(|e| e.starts_with("t.toml:20:20: dns.resolve_interval: must be greater than zero")), "{e:?}");
    let bad_name = MINIMAL.replace("\"127.0.0.1:9001\"", "\"bad host:9001\"")
        + "[dns]\nservers = [\"127.0.0.1:5353\"]\n";
    let e = errors(&bad_name);
    assert!(
        e[0].starts_with("t.toml:7:30: upstreams.app.servers[1]: expected an address"),
        "{e:?}"
    );
}
