//! The queue's keys as a user writes them: `[queue]`, `[queue.topics.NAME]`, a route's
//! `queue = { topic, deliver_to }` and `on_failure = "queue"` — read as written, their defaults,
//! and every mistake an error that names the file, line, column and key.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use seawall_config::*;

const UPSTREAMS: &str =
    "[upstreams.mailer]\nservers = [\"127.0.0.1:9100\"]\n[upstreams.pay]\nservers = [\"127.0.0.1:9200\"]\n";

fn parsed(body: &str) -> Config {
    let src = format!("{UPSTREAMS}{body}");
    parse(&src, "/etc/seawall/t.toml").unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn errors(body: &str) -> Vec<String> {
    let src = format!("{UPSTREAMS}{body}");
    parse(&src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

fn one_error(body: &str, starts: &str, says: &str) {
    let found = errors(body);
    assert!(
        found.iter().any(|e| e.starts_with(starts) && e.contains(says)),
        "expected an error at {starts} saying {says:?}, got {found:#?}"
    );
}

#[test]
fn the_documented_contract_is_read_as_written_with_its_defaults() {
    let c = parsed(
        r#"
[queue]
data_dir = "./seawall-data"

[[routes]]
name = "emails"
path_prefix = "/emails"
queue = { topic = "emails", deliver_to = "mailer" }
"#,
    );
    let q = c.queue.as_ref().unwrap();
    assert_eq!(
        q.backend,
        QueueBackend::Embedded { data_dir: PathBuf::from("/etc/seawall/./seawall-data") }
    );
    assert_eq!(q.jobs_path, "/jobs/");
    assert_eq!((q.max_jobs, q.max_bytes, q.max_body), (1_000_000, 1 << 30, 1 << 20));
    assert!(q.headers.contains(&"content-type".to_string()));
    assert!(
        !q.headers.contains(&"authorization".to_string()),
        "credentials are not kept by default"
    );
    assert_eq!(q.keep_finished, Duration::from_secs(86_400));
    let t = &q.topics[0];
    assert_eq!((t.name.as_str(), c.upstreams[t.deliver_to].name.as_str()), ("emails", "mailer"));
    assert_eq!((t.concurrency, t.max_attempts, t.rate), (32, 10, None));
    assert_eq!((t.backoff, t.max_backoff), (Duration::from_secs(1), Duration::from_secs(300)));
    assert_eq!(c.routes[0].action, RouteAction::Queue { topic: 0 });
}

#[test]
fn topics_tables_redis_and_on_failure_are_read() {
    let c = parsed(
        r#"
[queue]
backend = "redis"
redis = "redis://10.0.0.5:6379"
jobs_path = "/v1/jobs"
headers = ["Content-Type", "authorization"]

[queue.topics.emails]
rate = "100/min"
concurrency = 4
max_attempts = 3
max_jobs = 500
max_bytes = "10MiB"
paused = true

[[routes]]
name = "emails"
path_prefix = "/emails"
queue = { topic = "emails", deliver_to = "mailer" }

[[routes]]
name = "checkout"
path_prefix = "/checkout"
upstream = "pay"
on_failure = "queue"
"#,
    );
    let q = c.queue.as_ref().unwrap();
    assert_eq!(
        q.backend,
        QueueBackend::Redis {
            url: "redis://10.0.0.5:6379".into(),
            prefix: "seawall:queue:".into()
        }
    );
    assert_eq!(q.jobs_path, "/v1/jobs/");
    assert_eq!(q.headers, ["content-type", "authorization"]);
    let names: Vec<&str> = q.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["checkout", "emails"], "on_failure's topic is the route's name");
    let emails = &q.topics[1];
    assert_eq!(emails.rate.unwrap().count, 100);
    assert_eq!((emails.concurrency, emails.max_attempts, emails.max_jobs), (4, 3, 500));
    assert_eq!(emails.max_bytes, 10 << 20);
    assert!(emails.paused);
    let checkout = &c.routes[1];
    assert_eq!(checkout.queue_on_failure, Some(0));
    assert_eq!(c.upstreams[q.topics[0].deliver_to].name, "pay");
}

#[test]
fn no_queue_means_none() {
    let c = parsed("[[routes]]\nupstream = \"mailer\"\n");
    assert!(c.queue.is_none());
}

#[test]
fn mistakes_name_their_key_and_place() {
    one_error(
        "[[routes]]\nqueue = { topic = \"a\", deliver_to = \"nope\" }\n",
        "t.toml:6:",
        "no upstream named \"nope\"",
    );
    one_error(
        "[[routes]]\nqueue = { deliver_to = \"mailer\" }\n",
        "t.toml:6:",
        "a queue needs a topic",
    );
    one_error(
        "[[routes]]\nupstream = \"mailer\"\nqueue = { topic = \"a\", deliver_to = \"mailer\" }\n",
        "t.toml:7:",
        "set upstream or queue",
    );
    one_error("[[routes]]\nqueue = { topic = \"a\" }\n", "t.toml:6:", "needs deliver_to");
    one_error(
        "[[routes]]\nqueue = { topic = \"a\", deliver_to = \"mailer\" }\n[[routes]]\nqueue = { topic = \"a\", deliver_to = \"pay\" }\n",
        "t.toml:8:",
        "one topic, one destination",
    );
    one_error(
        "[[routes]]\nqueue = { topic = \"a b\", deliver_to = \"mailer\" }\n",
        "t.toml:6:",
        "is not a topic name",
    );
    one_error(
        "[[routes]]\nupstream = \"mailer\"\non_failure = \"later\"\n",
        "t.toml:7:",
        "routes[0].on_failure",
    );
    one_error(
        "[[routes]]\nredirect = { location = \"https://x.example\" }\non_failure = \"queue\"\n",
        "t.toml:7:",
        "applies to routes with an upstream",
    );
    one_error("[queue]\nbackend = \"kafka\"\n", "t.toml:6:", "queue.backend");
    one_error("[queue]\nbackend = \"redis\"\n", "t.toml:6:", "needs redis");
    one_error("[queue]\nredis = \"redis://x\"\n", "t.toml:6:", "applies to backend = \"redis\"");
    one_error("[queue]\nheaders = [\"content-length\"]\n", "t.toml:6:", "cannot be kept");
    one_error("[queue]\njobs_path = \"jobs\"\n", "t.toml:6:", "queue.jobs_path");
    one_error("[queue]\njobs_rate_limit = \"none\"\n", "t.toml:6:", "no rate limit named");
    one_error("[queue]\nmax_body = \"2GiB\"\n", "t.toml:6:", "must not exceed queue.max_bytes");
    one_error(
        "[queue.topics.a]\ndeliver_to = \"mailer\"\nrate = \"fast\"\n",
        "t.toml:7:",
        "queue.topics.a.rate",
    );
    one_error(
        "[queue.topics.a]\ndeliver_to = \"mailer\"\nbackoff = \"10s\"\nmax_backoff = \"1s\"\n",
        "t.toml:7:",
        "must not exceed max_backoff",
    );
    one_error(
        "[queue.topics.a]\ndeliver_to = \"mailer\"\nconcurrency = 0\n",
        "t.toml:7:",
        "queue.topics.a.concurrency",
    );
    one_error(
        "[queue]\nmax_body = \"2MiB\"\n[queue.topics.a]\ndeliver_to = \"mailer\"\nmax_bytes = \"1MiB\"\n",
        "t.toml:9:",
        "must be at least queue.max_body",
    );
    one_error(
        "[[routes]]\nqueue = { topic = \"a\", deliver_to = \"mailer\" }\ncache = { ttl = \"1s\" }\n",
        "t.toml:7:",
        "cache applies to routes with an upstream, not to a queue",
    );
}

#[test]
fn a_redis_lease_shorter_than_a_delivery_is_warned_about() {
    let route =
        "[[routes]]\nname = \"emails\"\nqueue = { topic = \"emails\", deliver_to = \"mailer\" }\n";
    // The mailer's attempt may take 1 s to connect and 30 s to answer: a 5 s lease would let
    // another instance take the job over and deliver it too.
    let short = parsed(&format!(
        "[queue]\nbackend = \"redis\"\nredis = \"redis://127.0.0.1:6379\"\nlease = \"5s\"\n{route}"
    ));
    let warnings: Vec<String> = short.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.contains("queue.lease") && w.contains("\"emails\"")),
        "{warnings:?}"
    );
    // The default lease covers the default timeouts; the embedded store has no lease to outlast.
    for queue in ["backend = \"redis\"\nredis = \"redis://127.0.0.1:6379\"", "lease = \"5s\""] {
        let c = parsed(&format!("[queue]\n{queue}\n{route}"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
