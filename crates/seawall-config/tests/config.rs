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
        }
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
