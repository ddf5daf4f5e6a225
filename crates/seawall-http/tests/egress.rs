//! The egress side against fake third-party APIs over TLS (certificates made by the test), each
//! as strict as a real one: 100 calls a minute per key, 429 with `Retry-After` beyond, 401 for a
//! revoked key. What the application calling through `server.egress_listen` must see: no
//! provider 429, no key over its quota, keys rotating, answers cached, the second provider
//! answering when the first fails, a wrong certificate refused with a clear 502 — and the keys
//! never in Seawall's logs, metrics or state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;

/// The API keys the tests use, in the environment before any gateway reads its file.
const KEYS: [(&str, &str); 5] = [
    ("SEAWALL_TEST_MAPS_KEY_1", "mk1-4f9c2d7e1a8b"),
    ("SEAWALL_TEST_MAPS_KEY_2", "mk2-b3e8f1c6d2a9"),
    ("SEAWALL_TEST_GEO_KEY", "gk-7d1e9a4c3f2b"),
    ("SEAWALL_TEST_SOLO_KEY_1", "sk1-0a9b8c7d6e5f"),
    ("SEAWALL_TEST_SOLO_KEY_2", "sk2-f5e4d3c2b1a0"),
];

/// Every test calls this first (see [`common::keys_in_env`]).
fn keys_in_env() {
    common::keys_in_env(&KEYS);
}

fn key(i: usize) -> &'static str {
    KEYS[i].1
}

/// A gateway whose egress listener serves `routes` through the groups in `egress`.
async fn gateway(egress: &str, routes: &str) -> Gateway {
    let body = format!("{egress}\n{routes}");
    start(config_with_server("egress_listen = \"127.0.0.1:0\"", &body)).await
}

/// `[egress.maps]`: `primary` (two keys in a header) then `backup` (one key in the query), both
/// over TLS with the test's CA.
fn maps(primary: &Provider, backup: &Provider, ca: &TestCa, extra: &str) -> String {
    format!(
        "[egress.maps]\nmax_wait = \"300ms\"\n{extra}\nproviders = [\n\
         {{ name = \"primary\", url = \"{}\", rate = \"100/min\", keys_env = [\"SEAWALL_TEST_MAPS_KEY_1\", \"SEAWALL_TEST_MAPS_KEY_2\"], key_header = \"x-api-key\", ca_file = {:?} }},\n\
         {{ name = \"backup\", url = \"{}\", rate = \"100/min\", keys_env = [\"SEAWALL_TEST_GEO_KEY\"], key_query = \"key\", ca_file = {:?} }},\n]\n",
        primary.url("/v1"),
        ca.ca_file(),
        backup.url(""),
        ca.ca_file()
    )
}

const MAPS_ROUTE: &str =
    "[[routes]]\nname = \"maps\"\npath_prefix = \"/maps/\"\negress = \"maps\"\n";

async fn providers(ca: &TestCa) -> (Provider, Provider) {
    let leaf = ca.leaf("provider", &["localhost"]);
    let minute = Duration::from_secs(60);
    (
        Provider::start("primary", &leaf, 100, minute).await,
        Provider::start("backup", &leaf, 100, minute).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_calls_stays_under_every_keys_quota() {
    keys_in_env();
    let ca = TestCa::new("egress-burst");
    let (primary, backup) = providers(&ca).await;
    let log = ca.dir.join("access.log");
    let extra = "cache_ttl = \"1h\"";
    let logging =
        format!("[log]\naccess_log = true\naccess_log_query = true\naccess_log_file = {log:?}\n");
    let gw =
        gateway(&format!("{logging}{}", maps(&primary, &backup, &ca, extra)), MAPS_ROUTE).await;
    let at = gw.egress_addr().unwrap();
    // 400 places asked for, the first 200 three times and the others twice: 1,000 calls from 50
    // callers at once. Quota: 300 calls a minute (two keys of 100 at the first provider, one at
    // the second).
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..50 {
        let next = Arc::clone(&next);
        callers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= 1000 {
                    return answers;
                }
                let place = i % 400;
                let answer = get(at, &format!("/maps/geocode?place={place}")).await;
                answers.push((place, answer));
            }
        }));
    }
    let mut answered: BTreeMap<usize, usize> = BTreeMap::new();
    let mut refused = 0;
    for caller in callers {
        for (place, answer) in caller.await.unwrap() {
            match answer.status {
                StatusCode::OK => *answered.entry(place).or_default() += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    // Seawall's own 429, never the provider's.
                    assert_eq!(
                        answer.header("x-seawall-reason"),
                        "egress_quota",
                        "{}",
                        answer.body
                    );
                    let after: u64 = answer.header("retry-after").parse().unwrap();
                    assert!((1..=61).contains(&after), "Retry-After {after}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", answer.body),
            }
        }
    }
    // The providers never had to refuse a call, and no key went over 100 in any minute.
    assert_eq!(primary.throttled() + backup.throttled(), 0);
    assert!(primary.busiest_window() <= 100 && backup.busiest_window() <= 100);
    // The quota was used whole, both keys of the first provider taking their share, then the
    // second provider (spill-over), its key in the query.
    let (p, b) = (primary.by_key(), backup.by_key());
    assert_eq!(p.get(key(0)), Some(&100), "{p:?}");
    assert_eq!(p.get(key(1)), Some(&100), "{p:?}");
    assert_eq!(b.get(key(2)), Some(&100), "{b:?}");
    // A cached answer was never fetched again: every place went out once at most, and every
    // place fetched was answered to each of its callers.
    let mut fetched = HashSet::new();
    for call in primary.calls().iter().chain(&backup.calls()) {
        assert!(fetched.insert(call.target.clone()), "{} fetched twice", call.target);
    }
    assert_eq!(fetched.len(), 300);
    assert_eq!(answered.len(), 300);
    assert!(
        answered.iter().all(|(place, n)| *n == if *place < 200 { 3 } else { 2 }),
        "{answered:?}"
    );
    assert_eq!(refused, 1000 - answered.values().sum::<usize>());
    // The provider's own URL and name: base path, rest of the path, Host.
    let first = &primary.calls()[0];
    assert!(first.target.starts_with("/v1/geocode?place="), "{}", first.target);
    assert_eq!(first.host, format!("localhost:{}", primary.addr.port()));
    // Metrics and state show the keys' fingerprints and use; never a key.
    let metrics = admin(&gw, "/metrics").await.body;
    let state = admin(&gw, "/api/v1/state").await.body;
    let fp = seawall_http::egress::fingerprint(key(0));
    let line = format!(
        "seawall_egress_calls_total{{group=\"maps\",provider=\"primary\",key=\"{fp}\",key_env=\"SEAWALL_TEST_MAPS_KEY_1\"}} 100"
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(
        metrics.contains("seawall_egress_spilled_total{group=\"maps\",provider=\"backup\"} 100"),
        "{metrics}"
    );
    assert!(state.contains(&fp));
    gw.shutdown().await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("/maps/geocode"), "the access log is on: {logged}");
    for (_, value) in KEYS {
        assert!(!metrics.contains(value) && !state.contains(value) && !logged.contains(value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_answered_429_rests_and_the_call_moves_to_another_key() {
    keys_in_env();
    let ca = TestCa::new("egress-429");
    let (primary, backup) = providers(&ca).await;
    primary.throttle(key(0));
    let gw = gateway(&maps(&primary, &backup, &ca, ""), MAPS_ROUTE).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        for i in 0..4 {
            let answer = ask(engine, at, engine.get(&format!("/maps/x?{i}"))).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
            assert!(answer.body.starts_with("primary answered"), "{}", answer.body);
        }
    }
    // The throttled key was tried once, then parked for the minute it asked for.
    let by_key = primary.by_key();
    assert_eq!(by_key.get(key(0)), Some(&1), "{by_key:?}");
    assert_eq!(by_key.get(key(1)), Some(&8), "{by_key:?}");
    let state = admin(&gw, "/api/v1/state").await.json();
    let first = &state["egress"][0]["providers"][0]["keys"][0];
    assert_eq!(first["env"], "SEAWALL_TEST_MAPS_KEY_1");
    assert_eq!(first["throttled"], 1);
    let parked = first["parked_ms"].as_u64().unwrap();
    assert!(parked > 50_000 && parked <= 60_000, "{parked}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_answered_401_while_another_is_accepted_is_disabled_and_reported() {
    keys_in_env();
    let ca = TestCa::new("egress-401");
    let leaf = ca.leaf("provider", &["localhost"]);
    let solo = Provider::start("solo", &leaf, 1000, Duration::from_secs(60)).await;
    solo.refuse(key(3));
    let group = format!(
        "[egress.solo]\nproviders = [{{ name = \"only\", url = \"{}\", keys_env = [\"SEAWALL_TEST_SOLO_KEY_1\", \"SEAWALL_TEST_SOLO_KEY_2\"], key_header = \"x-api-key\", ca_file = {:?} }}]\n",
        solo.url("/api"),
        ca.ca_file()
    );
    let route = "[[routes]]\nname = \"solo\"\npath_prefix = \"/solo\"\negress = \"solo\"\n";
    let gw = gateway(&group, route).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        for _ in 0..3 {
            let answer = ask(engine, at, engine.get("/solo/thing")).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
            assert_eq!(answer.body, "solo answered /api/thing");
        }
    }
    assert_eq!(solo.by_key().get(key(3)), Some(&1), "the refused key is not used again");
    let state = admin(&gw, "/api/v1/state").await.json();
    assert_eq!(state["egress"][0]["providers"][0]["keys"][0]["disabled_by"], 401);
    let metrics = admin(&gw, "/metrics").await.body;
    let fp = seawall_http::egress::fingerprint(key(3));
    let disabled = format!(
        "seawall_egress_key_disabled{{group=\"solo\",provider=\"only\",key=\"{fp}\",key_env=\"SEAWALL_TEST_SOLO_KEY_1\"}} 1"
    );
    assert!(metrics.contains(&disabled), "{metrics}");
    // The last key refused too: nothing shows the key rather than the request is at fault, so
    // the caller gets the provider's 401 (once per call) and the key stays in use.
    solo.refuse(key(4));
    for engine in ENGINES {
        let answer = ask(engine, at, engine.get("/solo/thing")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    }
    assert_eq!(solo.by_key().get(key(4)), Some(&8), "{:?}", solo.by_key());
    let state = admin(&gw, "/api/v1/state").await.json();
    let keys = &state["egress"][0]["providers"][0]["keys"];
    assert_eq!(
        (keys[1]["disabled_by"].clone(), keys[1]["refused"].clone()),
        (serde_json::Value::Null, 2.into())
    );
    // The operator fixed the first key: enabled again, it serves.
    solo.unrefuse(key(3));
    let enable = admin_post(&gw, "/api/v1/egress/solo/enable").await;
    assert_eq!(enable.status, StatusCode::OK, "{}", enable.body);
    assert_eq!(enable.json()["enabled"], 1);
    let answer = get(at, "/solo/thing").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(solo.by_key().get(key(3)), Some(&2));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_first_provider_fails_the_second_answers() {
    keys_in_env();
    let ca = TestCa::new("egress-fallback");
    let (primary, backup) = providers(&ca).await;
    primary.fail(true);
    let gw = gateway(&maps(&primary, &backup, &ca, "retries = 0"), MAPS_ROUTE).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        let answer = ask(engine, at, engine.get("/maps/route?from=a")).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        assert_eq!(answer.body, "backup answered /route?from=a");
    }
    // A write that may have acted is not sent to another provider: its caller sees the 503.
    let post = ask(
        Engine::Http1,
        at,
        Engine::Http1.request("POST", "/maps/orders").body(full("{}")).unwrap(),
    )
    .await;
    assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(post.body.starts_with("primary answered"), "{}", post.body);
    let metrics = admin(&gw, "/metrics").await.body;
    assert!(
        metrics.contains("seawall_egress_fallbacks_total{group=\"maps\",provider=\"backup\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("seawall_egress_failures_total{group=\"maps\",provider=\"primary\"} 3"),
        "{metrics}"
    );
    gw.shutdown().await;
    // A provider that cannot be reached at all: nothing was sent, so any method moves on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let group = format!(
        "[egress.maps]\nproviders = [\n\
         {{ name = \"gone\", url = \"http://127.0.0.1:{}\" }},\n\
         {{ name = \"backup\", url = \"{}\", keys_env = [\"SEAWALL_TEST_GEO_KEY\"], key_query = \"key\", ca_file = {:?} }},\n]\n",
        closed.port(),
        backup.url(""),
        ca.ca_file()
    );
    let gw = gateway(&group, MAPS_ROUTE).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        let req = engine.request("POST", "/maps/orders").body(full("{}")).unwrap();
        let answer = ask(engine, at, req).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
        assert_eq!(answer.body, "backup answered /orders");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_is_refused_with_a_clear_502() {
    keys_in_env();
    let ca = TestCa::new("egress-tls");
    let impostor_ca = TestCa::new("egress-impostor");
    let leaf = impostor_ca.leaf("impostor", &["localhost"]);
    let impostor = Provider::start("impostor", &leaf, 100, Duration::from_secs(60)).await;
    let wrong_name = Provider::start(
        "other",
        &ca.leaf("other", &["other.example"]),
        100,
        Duration::from_secs(60),
    )
    .await;
    for provider in [&impostor, &wrong_name] {
        let group = format!(
            "[egress.maps]\nproviders = [{{ name = \"p\", url = \"{}\", keys_env = [\"SEAWALL_TEST_MAPS_KEY_1\"], key_header = \"x-api-key\", ca_file = {:?} }}]\n",
            provider.url("/v1"),
            ca.ca_file()
        );
        let gw = gateway(&group, MAPS_ROUTE).await;
        let at = gw.egress_addr().unwrap();
        for engine in ENGINES {
            let answer = ask(engine, at, engine.get("/maps/x")).await;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
            assert_eq!(answer.header("x-seawall-reason"), "upstream_tls_failed");
            assert!(answer.body.contains("certificate"), "{}", answer.body);
            assert!(!answer.body.contains(key(0)));
        }
        // The key never left: no call reached the provider.
        assert!(provider.calls().is_empty());
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_quota_wait_in_priority_order_then_get_429() {
    keys_in_env();
    let ca = TestCa::new("egress-wait");
    let leaf = ca.leaf("provider", &["localhost"]);
    let slow = Provider::start("slow", &leaf, 1, Duration::from_secs(1)).await;
    let rare = Provider::start("rare", &leaf, 1, Duration::from_secs(60)).await;
    let group = format!(
        "[egress.slow]\nmax_wait = \"5s\"\nproviders = [{{ name = \"p\", url = \"{}\", rate = \"1/s\", ca_file = {:?} }}]\n\
         [egress.rare]\nmax_wait = \"100ms\"\nproviders = [{{ name = \"p\", url = \"{}\", rate = \"1/min\", ca_file = {:?} }}]\n",
        slow.url(""),
        ca.ca_file(),
        rare.url("/rare"),
        ca.ca_file()
    );
    let routes = "[[routes]]\nname = \"hi\"\npath_prefix = \"/hi\"\npriority = \"p0\"\negress = \"slow\"\n\
                  [[routes]]\nname = \"lo\"\npath_prefix = \"/lo\"\npriority = \"p2\"\negress = \"slow\"\n\
                  [[routes]]\nname = \"rare\"\npath_prefix = \"/rare\"\negress = \"rare\"\n";
    let gw = gateway(&group, routes).await;
    let at = gw.egress_addr().unwrap();
    assert_eq!(get(at, "/lo/first").await.status, StatusCode::OK);
    // Three P2 calls wait for the next second's call; a P0 call that comes after them goes first.
    let lows: Vec<_> =
        (0..3).map(|i| tokio::spawn(async move { get(at, &format!("/lo/{i}")).await })).collect();
    eventually(Duration::from_secs(5), "three calls waiting", || async {
        admin(&gw, "/api/v1/state").await.json()["egress"][1]["waiting"] == 3
    })
    .await;
    let high = get(at, "/hi/urgent").await;
    assert_eq!(high.status, StatusCode::OK, "{}", high.body);
    let order: Vec<String> = slow.calls().iter().map(|c| c.target.clone()).collect();
    assert_eq!(order[..2], ["/first".to_string(), "/urgent".to_string()], "{order:?}");
    for low in lows {
        let low = low.await.unwrap();
        assert_eq!(low.status, StatusCode::OK, "{}", low.body);
    }
    assert_eq!(slow.throttled(), 0, "one a second, never faster");
    // Over quota for longer than max_wait: 429 at once, with the time until quota is back.
    assert_eq!(get(at, "/rare/a").await.status, StatusCode::OK);
    for engine in ENGINES {
        let refused = ask(engine, at, engine.get("/rare/b")).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.header("x-seawall-reason"), "egress_quota");
        assert_eq!(refused.header("content-type"), "application/problem+json");
        let after: u64 = refused.header("retry-after").parse().unwrap();
        assert!((50..=61).contains(&after), "{after}");
    }
    assert_eq!(rare.calls().len(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_routes_are_served_only_on_the_egress_listener() {
    keys_in_env();
    let ca = TestCa::new("egress-listener");
    let (primary, backup) = providers(&ca).await;
    let origin = Origin::start().await;
    let routes = format!(
        "{MAPS_ROUTE}[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"app\"\nupstream = \"app\"\n",
        origin.addr
    );
    let gw = gateway(&maps(&primary, &backup, &ca, ""), &routes).await;
    let (public, egress) = (gw.listen_addr(), gw.egress_addr().unwrap());
    for engine in ENGINES {
        // The public listener never reaches a provider: /maps/ goes to the application's route.
        let answer = ask(engine, public, engine.get("/maps/x")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(origin.hits(), 1 + ENGINES.iter().position(|e| *e == engine).unwrap());
        // The egress listener serves only egress routes.
        let answer = ask(engine, egress, engine.get("/other")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.header("x-seawall-reason"), "no_route");
        // A path that would climb out of the provider's base path is refused.
        let answer = ask(engine, egress, engine.get("/maps/../admin")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    }
    assert!(primary.calls().is_empty() && backup.calls().is_empty());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_over_quota_is_queued_and_delivered_within_the_quota() {
    keys_in_env();
    let ca = TestCa::new("egress-queue");
    let leaf = ca.leaf("provider", &["localhost"]);
    let sms = Provider::start("sms", &leaf, 1, Duration::from_secs(2)).await;
    let body = format!(
        "[queue]\n{}\
         [egress.sms]\nmax_wait = \"100ms\"\nproviders = [{{ name = \"p\", url = \"{}\", rate = \"1/2s\", keys_env = [\"SEAWALL_TEST_GEO_KEY\"], key_header = \"x-api-key\", ca_file = {:?} }}]\n\
         [[routes]]\nname = \"sms\"\npath_prefix = \"/sms/\"\negress = \"sms\"\non_failure = \"queue\"\n",
        data_dir_line(),
        sms.url("/v2"),
        ca.ca_file()
    );
    let gw = start(config_with_server("egress_listen = \"127.0.0.1:0\"", &body)).await;
    let at = gw.egress_addr().unwrap();
    let post =
        |engine: Engine| engine.request("POST", "/sms/send").body(full("{\"to\":\"+1\"}")).unwrap();
    let first = ask(Engine::Http1, at, post(Engine::Http1)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // Over quota for longer than max_wait: stored and answered 202, on both engines...
    let mut jobs = Vec::new();
    for engine in ENGINES {
        jobs.push(job_id(&ask(engine, at, post(engine)).await));
    }
    // The job's Location answers on the egress listener too.
    let status = get(at, &format!("/jobs/{}", jobs[0])).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    // ...while a read over quota is refused, not queued.
    let read = get(at, "/sms/status").await;
    assert_eq!(read.status, StatusCode::TOO_MANY_REQUESTS, "{}", read.body);
    // Delivered through the group, one call per 2 s: the provider never had to refuse one.
    for id in &jobs {
        until_status_within(&gw, id, "delivered", Duration::from_secs(15)).await;
    }
    let calls = sms.calls();
    assert_eq!(calls.iter().filter(|c| c.target == "/v2/send").count(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.key == key(2)), "{calls:?}");
    assert_eq!(sms.throttled(), 0);
    gw.shutdown().await;
}
