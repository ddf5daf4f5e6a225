//! The protections as a user writes them: rate limits with tiers, an upstream's breaker, retries,
//! bulkhead and fallbacks, a route's priority and degraded answer — the contracts from the docs
//! read as written, their defaults, and errors that name the key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use seawall_config::*;

const CONTRACT: &str = r#"
[upstreams.app]
servers = ["127.0.0.1:9000"]

[upstreams.payments]
servers = ["127.0.0.1:9100"]
breaker = { failure_rate = 0.5, min_requests = 20, window = "10s", open_for = "30s", half_open_probes = 1 }
retry = { attempts = 2, backoff = "50ms", budget = 0.2 }
bulkhead = { max_concurrency = 10, max_queue = 5, queue_timeout = "250ms" }
fallback = ["backup"]

[upstreams.backup]
servers = ["127.0.0.1:9200"]

[rate_limits.default]
key = "header:x-api-key"          # ip | header:NAME | query:NAME
tier_header = "x-plan"
tiers = { free = "100/min", paid = { rate = "1000/min", burst = 50, priority = "raise" } }
default_tier = "free"
keys = { "key-vip" = "paid" }

[[routes]]
name = "api"
path_prefix = "/"
upstream = "app"
rate_limit = "default"
priority = "P2"
degrade = { status = 200, body = "[]", content_type = "application/json" }
"#;

fn errors(src: &str) -> Vec<String> {
    parse(src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn the_documented_contract_is_read_as_written() {
    let c = parse(CONTRACT, "t.toml").unwrap();
    let limit = &c.rate_limits[0];
    assert_eq!(limit.name, "default");
    assert_eq!(limit.key, LimitKey::Header("x-api-key".into()));
    assert_eq!(limit.tier_header.as_deref(), Some("x-plan"));
    let names: Vec<&str> = limit.tiers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["free", "paid"]);
    let free = &limit.tiers[0];
    assert_eq!(free.quota, Quota { count: 100, period_ns: 60_000_000_000, burst: 100 });
    assert_eq!(free.priority_shift, 0);
    let paid = &limit.tiers[1];
    assert_eq!((paid.quota.count, paid.quota.burst, paid.priority_shift), (1000, 50, -1));
    assert_eq!(limit.default_tier, 0);
    assert_eq!(limit.keys, [("key-vip".to_string(), 1)]);
    assert_eq!(limit.max_keys, 100_000);

    let route = &c.routes[0];
    assert_eq!(route.rate_limit, Some(0));
    assert_eq!(route.priority, Priority::P2);
    let degrade = route.degrade.as_ref().unwrap();
    assert_eq!((degrade.status, degrade.body.as_str()), (200, "[]"));

    let payments = c.upstreams.iter().find(|u| u.name == "payments").unwrap();
    let breaker = payments.breaker.as_ref().unwrap();
    assert_eq!(breaker.failure_rate, 0.5);
    assert_eq!((breaker.min_requests, breaker.window_ms, breaker.open_ms), (20, 10_000, 30_000));
    assert_eq!((breaker.half_open_probes, breaker.max_open_ms), (1, 300_000));
    assert_eq!(payments.retry.attempts, 2);
    assert_eq!(payments.retry.backoff, Duration::from_millis(50));
    assert_eq!(payments.retry.budget, 0.2);
    let bulkhead = payments.bulkhead.as_ref().unwrap();
    assert_eq!((bulkhead.max_concurrency, bulkhead.max_queue), (10, 5));
    assert_eq!(bulkhead.queue_timeout, Duration::from_millis(250));
    let backup = c.upstreams.iter().position(|u| u.name == "backup").unwrap();
    assert_eq!(payments.fallback, [backup]);
}

#[test]
fn without_protections_a_route_has_defaults_and_nothing_limits_it() {
    let c = parse(
        "[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nupstream = \"app\"\n",
        "t.toml",
    )
    .unwrap();
    let (route, app) = (&c.routes[0], &c.upstreams[0]);
    assert_eq!((route.rate_limit, route.priority, route.writes), (None, Priority::P1, false));
    assert!(app.breaker.is_none() && app.bulkhead.is_none() && app.fallback.is_empty());
    assert_eq!(app.retry.attempts, 1, "retries are opt-in");
    assert_eq!(app.retry.budget, 0.2);
    assert_eq!(c.server.deadline_header, "x-request-timeout");
}

#[test]
fn rates_read_every_documented_unit() {
    for (rate, count, period_s) in [
        ("10/s", 10, 1),
        ("100/min", 100, 60),
        ("5000/h", 5000, 3600),
        ("7/day", 7, 86_400),
        ("50/10s", 50, 10),
    ] {
        let src = format!(
            "[rate_limits.r]\nrate = \"{rate}\"\n[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\n"
        );
        let c = parse(&src, "t.toml").unwrap();
        let quota = c.rate_limits[0].tiers[0].quota;
        assert_eq!((quota.count, quota.period_ns), (count, period_s * 1_000_000_000), "{rate}");
        assert_eq!(quota.burst, count, "the burst is the count unless set");
    }
}

#[test]
fn mistakes_are_reported_with_file_line_column_and_key() {
    let src = r#"[rate_limits.r]
key = "cookie:x"
tiers = { free = "100 a minute", gold = { burst = 5 } }
default_tier = "silver"

[upstreams.app]
servers = ["127.0.0.1:9000"]
breaker = { failure_rate = 1.5 }
retry = { attempts = 0, on_status = [200] }
fallback = ["app", "nowhere"]

[[routes]]
upstream = "app"
rate_limit = "missing"
priority = "urgent"
read_upstream = "replicas"
"#;
    let found = errors(src);
    let expected = [
        "t.toml:2:7: rate_limits.r.key: expected \"ip\", \"header:NAME\" or \"query:NAME\"",
        "t.toml:3:18: rate_limits.r.tiers.free: expected a rate like",
        "t.toml:3:41: rate_limits.r.tiers.gold.rate: missing",
        "t.toml:4:16: rate_limits.r.default_tier: no tier named \"silver\"",
        "t.toml:8:28: upstreams.app.breaker.failure_rate: expected a fraction from 0 to 1",
        "t.toml:9:22: upstreams.app.retry.attempts: expected a whole number from 1 to 10",
        "t.toml:9:38: upstreams.app.retry.on_status: expected an error status from 400 to 599",
        "t.toml:10:13: upstreams.app.fallback[0]: an upstream cannot be its own fallback",
        "t.toml:10:20: upstreams.app.fallback[1]: no upstream named \"nowhere\"",
        "t.toml:14:14: routes[0].rate_limit: no rate limit named \"missing\"",
        "t.toml:15:12: routes[0].priority: expected \"P0\", \"P1\" or \"P2\"",
        "t.toml:16:17: routes[0].read_upstream: no upstream named \"replicas\"",
    ];
    for (want, got) in expected.iter().zip(&found) {
        assert!(got.starts_with(want), "expected {want:?}\n     got {got:?}\nall: {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn a_limit_needs_a_rate_and_several_tiers_need_a_default() {
    let found = errors(
        "[rate_limits.a]\nkey = \"ip\"\n[rate_limits.b]\ntiers = { x = \"1/s\", y = \"2/s\" }\n",
    );
    assert!(found[0].contains("rate_limits.a.rate: missing"), "{found:#?}");
    assert!(found[1].contains("rate_limits.b.default_tier: missing"), "{found:#?}");
    let found = errors(
        "[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\nbreaker = { failure_rate = 0.0 }\n",
    );
    assert!(found[0].contains("every rule is off"), "{found:#?}");
}

#[test]
fn a_timeout_chain_that_cannot_hold_is_a_warning_not_an_error() {
    let src = "[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\nconnect_timeout = \"1s\"\ntimeout = \"2s\"\ntotal_timeout = \"5s\"\nretry = { attempts = 2 }\n";
    let c = parse(src, "t.toml").unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("t.toml:5:17: upstreams.app.total_timeout: 2 attempt(s) of connect_timeout (1s) + timeout (2s) take up to 6s, more than total_timeout (5s)")),
        "{warnings:#?}"
    );
    let fits = src.replace("\"5s\"", "\"6s\"");
    let c = parse(&fits, "t.toml").unwrap();
    assert!(!c.warnings.iter().any(|w| w.message.contains("cut short")), "{:#?}", c.warnings);
}

#[test]
fn the_documented_contract_raises_no_warning() {
    let c = parse(CONTRACT, "t.toml").unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
}

#[test]
fn a_deadline_header_or_degraded_answer_that_would_break_http_is_refused() {
    let found = errors("[server]\ndeadline_header = \"Content-Length\"\n");
    assert!(found[0].starts_with("t.toml:2:19: server.deadline_header: \"Content-Length\" is a field of the HTTP protocol"), "{found:#?}");
    let found = errors("[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nupstream = \"app\"\ndegrade = { status = 204, body = \"x\" }\n");
    assert!(
        found[0].contains("routes[0].degrade.status: a 204 answer carries no body"),
        "{found:#?}"
    );
}
