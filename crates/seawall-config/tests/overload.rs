//! `[overload]`, an upstream's adaptive concurrency and a route's `disable_in_crisis` as a user
//! writes them: the documented contract, the defaults, and errors that name the key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use seawall_config::*;

const CONTRACT: &str = r#"
[overload]
p2_at = 0.80
p1_at = 0.90
p0_at = 0.95
cpu = "host"
memory_budget = "512MiB"
memory_soft = 0.8
memory_hard = 0.95
max_wait = "50ms"
min_dwell = "5s"
hysteresis = 0.2
retry_after = "10s"
latency_tolerance = 1.5
latency_slack = "2ms"
probe_every = "1m"

[upstreams.app]
servers = ["127.0.0.1:9000"]
max_latency = "300ms"

[upstreams.batch]
servers = ["127.0.0.1:9001"]
adaptive_concurrency = false

[[routes]]
name = "recommend"
upstream = "app"
disable_in_crisis = true
"#;

#[test]
fn the_documented_contract_is_read_as_written() {
    let c = parse(CONTRACT, "t.toml").unwrap();
    let o = &c.overload;
    assert!(o.enabled);
    assert_eq!(o.cpu, CpuSignal::Host);
    assert_eq!(o.cpu_at, [0.80, 0.90, 0.95]);
    assert_eq!(o.memory_budget, Some(512 << 20));
    assert_eq!(o.memory_at, [0.8, 0.95]);
    assert_eq!(o.max_wait, Duration::from_millis(50));
    assert_eq!(o.min_dwell, Duration::from_secs(5));
    assert_eq!(o.hysteresis, 0.2);
    assert_eq!(o.retry_after, Duration::from_secs(10));
    assert_eq!(o.latency_tolerance, 1.5);
    assert_eq!(o.latency_slack, Duration::from_millis(2));
    assert_eq!(o.probe_every, Duration::from_secs(60));
    let app = &c.upstreams[0];
    assert!(app.adaptive);
    assert_eq!(app.max_latency, Some(Duration::from_millis(300)));
    // A group with only its adaptive limit gets a gate of generous bounds.
    assert_eq!(app.gate().unwrap().max_concurrency, 10_000);
    assert!(!c.upstreams[1].adaptive && c.upstreams[1].gate().is_none());
    assert!(c.routes[0].disable_in_crisis);
    assert!(c.warnings.is_empty());
}

#[test]
fn without_a_table_overload_control_runs_on_its_defaults() {
    let c = parse("[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\n", "t.toml").unwrap();
    let o = &c.overload;
    assert!(o.enabled);
    assert_eq!(o.cpu, CpuSignal::Process);
    assert_eq!(o.cpu_at, [0.80, 0.90, 0.95]);
    assert_eq!(o.memory_budget, None);
    assert_eq!(o.sample_interval, Duration::from_millis(100));
    assert_eq!(o.max_wait, Duration::from_millis(100));
    assert_eq!(o.min_dwell, Duration::from_secs(2));
    assert_eq!(o.retry_after, Duration::from_secs(5));
    assert_eq!(o.latency_slack, Duration::from_millis(5));
    assert!(c.upstreams[0].adaptive);
}

#[test]
fn mistakes_are_reported_with_file_line_column_and_key() {
    let src = r#"[overload]
cpu = "gpu"
p2_at = 0.9
p1_at = 0.8
p0_at = 1.5
memory_budget = "64KiB"
memory_soft = 0.9
memory_hard = 0.5
hysteresis = 0.9
latency_tolerance = 1.0
max_wait = "0s"
sample_interval = "1ms"
min_dwell = "2h"
"#;
    let found: Vec<String> =
        parse(src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect();
    let expected = [
        "t.toml:2:7: overload.cpu: expected \"process\", \"host\", \"max\" or \"off\", got \"gpu\"",
        "t.toml:4:9: overload.p1_at: must be at least p2_at (0.9)",
        "t.toml:5:9: overload.p0_at: expected a fraction from 0.05 to 1, got 1.5",
        "t.toml:6:17: overload.memory_budget: must be at least 1MiB",
        "t.toml:8:15: overload.memory_hard: must be at least memory_soft (0.9)",
        "t.toml:9:14: overload.hysteresis: expected a fraction from 0 to 0.5, got 0.9",
        "t.toml:10:21: overload.latency_tolerance: expected a number from 1.1 to 10, got 1",
        "t.toml:11:12: overload.max_wait: must be greater than zero",
        "t.toml:12:19: overload.sample_interval: expected from 10ms to 5s, got 1ms",
        "t.toml:13:13: overload.min_dwell: expected from 1ms to 600s, got 7200s",
    ];
    let mut sorted = found.clone();
    sorted.sort_by_key(|e| {
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        line
    });
    for (want, got) in expected.iter().zip(&sorted) {
        assert!(got.starts_with(want), "expected {want:?}\n     got {got:?}\nall: {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}
