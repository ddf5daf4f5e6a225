//! Rate limits as a client meets them, through both engines: 429 `rate_limited` with a whole-second
//! `Retry-After`, the `RateLimit-Policy` / `RateLimit` fields on every answer, keys from the
//! address, a header or a query parameter, tiers from a header or the static key table, a key
//! table that a flood of new keys cannot grow past its bound, and limits that survive a reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use seawall_http::Gateway;

const TIERED: &str = r#"
[rate_limits.api]
key = "header:x-api-key"
tier_header = "x-plan"
tiers = { free = "2/min", paid = "5/min" }
default_tier = "free"
keys = { "vip-key" = "paid" }
"#;

/// A gateway in front of `origin` whose catch-all route uses the limiter in `limits`.
async fn limited(origin: &Origin, limits: &str) -> Gateway {
    start(config(&format!(
        "{limits}\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"all\"\nupstream = \"app\"\nrate_limit = \"api\"\n",
        origin.addr
    )))
    .await
}

/// How many of `n` requests pass before the first 429, and that 429.
async fn until_limited(
    engine: Engine,
    gw: &Gateway,
    path: &str,
    fields: &[(&str, &str)],
) -> (usize, Answer) {
    for passed in 0..100 {
        let answer = get_with(engine, gw, path, fields).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            return (passed, answer);
        }
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
    }
    panic!("{engine:?}: never limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_gets_429_with_retry_after_and_ratelimit_fields() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = limited(&origin, TIERED).await;
        let key = [("x-api-key", "alice")];
        let first = get_with(engine, &gw, "/a", &key).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.header("ratelimit-policy"), "\"free\";q=2;w=60", "{engine:?}");
        assert_eq!(first.header("ratelimit"), "\"free\";r=1;t=30", "{engine:?}");
        let second = get_with(engine, &gw, "/a", &key).await;
        assert_eq!(second.header("ratelimit"), "\"free\";r=0;t=60", "{engine:?}");
        let refused = get_with(engine, &gw, "/a", &key).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
        assert_eq!(refused.header("content-type"), "application/problem+json");
        assert_eq!(refused.header("x-seawall-reason"), "rate_limited");
        assert_eq!(refused.json()["reason"], "rate_limited");
        // The next request is due one interval (30 s) after the last: rounded up, never 0.
        let retry: u64 = refused.header("retry-after").parse().unwrap();
        assert!((29..=30).contains(&retry), "{engine:?}: retry-after {retry}");
        assert_eq!(refused.header("ratelimit-policy"), "\"free\";q=2;w=60");
        assert!(refused.header("ratelimit").starts_with("\"free\";r=0;t="), "{engine:?}");
        assert_eq!(origin.hits(), 2, "{engine:?}: the refused request never reached the origin");
        // Another key has its own quota.
        assert_eq!(
            get_with(engine, &gw, "/a", &[("x-api-key", "bob")]).await.status,
            StatusCode::OK
        );
        // The books close just after each answer leaves: the client may look before that.
        let counted = ["seawall_inflight_requests{route=\"all\"} 0", "code=\"429\"} 1"];
        eventually(Duration::from_secs(5), "every request counted", || async {
            let text = admin(&gw, "/metrics").await.body;
            counted.iter().all(|line| text.contains(line))
        })
        .await;
        let text = admin(&gw, "/metrics").await.body;
        for line in [
            "seawall_rate_limit_requests_total{limit=\"api\",tier=\"free\",result=\"allowed\"} 3",
            "seawall_rate_limit_requests_total{limit=\"api\",tier=\"free\",result=\"limited\"} 1",
            "seawall_rate_limit_keys{limit=\"api\"} 2",
            "seawall_requests_total{route=\"all\",code=\"429\"} 1",
        ] {
            assert!(text.contains(line), "{engine:?}: no {line:?} in\n{text}");
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_come_from_the_key_table_then_the_header_and_a_missing_key_counts_by_address() {
    for engine in ENGINES {
        let origin = Origin::start().await;
        let gw = limited(&origin, TIERED).await;
        let (passed, refused) =
            until_limited(engine, &gw, "/", &[("x-api-key", "p1"), ("x-plan", "paid")]).await;
        assert_eq!(passed, 5, "{engine:?}: the paid tier from the header");
        assert_eq!(refused.header("ratelimit-policy"), "\"paid\";q=5;w=60");
        // The static table wins over a header that claims less.
        let vip = [("x-api-key", "vip-key"), ("x-plan", "free")];
        assert_eq!(until_limited(engine, &gw, "/", &vip).await.0, 5, "{engine:?}");
        // An unknown plan is the default tier.
        let unknown = [("x-api-key", "u1"), ("x-plan", "platinum")];
        assert_eq!(until_limited(engine, &gw, "/", &unknown).await.0, 2, "{engine:?}");
        // Without the key header, requests count against the client's address, all together.
        assert_eq!(until_limited(engine, &gw, "/", &[]).await.0, 2, "{engine:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_can_be_the_key() {
    let origin = Origin::start().await;
    let gw = limited(&origin, "[rate_limits.api]\nkey = \"query:token\"\nrate = \"1/min\"\n").await;
    for engine in ENGINES {
        let path = format!("/search?q=x&token=t-{engine:?}");
        let (passed, refused) = until_limited(engine, &gw, &path, &[]).await;
        assert_eq!(passed, 1, "{engine:?}");
        // A single-rate limiter is named after itself.
        assert_eq!(refused.header("ratelimit-policy"), "\"api\";q=1;w=60");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_keys_is_held_to_the_table_size_and_never_frees_a_hot_key() {
    let origin = Origin::start().await;
    let limits = "[rate_limits.api]\nkey = \"header:x-api-key\"\nrate = \"1/min\"\nmax_keys = 50\n";
    let gw = limited(&origin, limits).await;
    let hot = [("x-api-key", "hot")];
    assert_eq!(until_limited(Engine::Http1, &gw, "/", &hot).await.0, 1);
    let mut client = Client::connect(Engine::Http1, gw.listen_addr()).await;
    let mut refused = 0;
    for i in 0..200 {
        let req = Engine::Http1.request("GET", "/").header("x-api-key", format!("k{i}"));
        let response = client.send(req.body(empty()).unwrap()).await.unwrap();
        let answer = try_collect(response).await.unwrap().0;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.header("x-seawall-reason"), "rate_limited");
            refused += 1;
        }
    }
    // 49 new keys fit beside the hot one; the other 151 are refused, not remembered.
    assert_eq!(refused, 151);
    assert_eq!(metric(&gw, "seawall_rate_limit_keys{limit=\"api\"}").await, 50.0);
    assert_eq!(metric(&gw, "seawall_rate_limit_table_full_total{limit=\"api\"}").await, 151.0);
    for engine in ENGINES {
        let answer = get_with(engine, &gw, "/", &hot).await;
        assert_eq!(
            answer.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{engine:?}: the hot key is still held"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_limiter_keeps_every_key_where_it_was() {
    let origin = Origin::start().await;
    let gw = limited(&origin, TIERED).await;
    let key = [("x-api-key", "carol")];
    assert_eq!(until_limited(Engine::H2c, &gw, "/", &key).await.0, 2);
    // Same limiter, one more route: nobody's quota starts over.
    gw.shared().apply(config(&format!(
        "{TIERED}\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"x\"\npath_prefix = \"/x\"\nupstream = \"app\"\n[[routes]]\nname = \"all\"\nupstream = \"app\"\nrate_limit = \"api\"\n",
        origin.addr
    )));
    assert_eq!(get_with(Engine::Http1, &gw, "/", &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_odd_keys_are_each_held_to_their_own_limit() {
    // Keys of 4 KiB, or of bytes that are not text, cost the table no more than a short one and
    // never merge with another key.
    let origin = Origin::start().await;
    let gw =
        limited(&origin, "[rate_limits.api]\nkey = \"header:x-api-key\"\nrate = \"1/min\"\n").await;
    let big = |c: char| c.to_string().repeat(4096);
    let keys: Vec<http::HeaderValue> = vec![
        big('a').parse().unwrap(),
        big('b').parse().unwrap(),
        http::HeaderValue::from_bytes(b"caf\xe9-\xff").unwrap(),
    ];
    for engine in ENGINES {
        for key in &keys {
            let mut ok = 0;
            for _ in 0..2 {
                let req = engine
                    .request("GET", "/")
                    .header("x-api-key", key.clone())
                    .body(empty())
                    .unwrap();
                let answer = ask(engine, gw.listen_addr(), req).await;
                if answer.status == StatusCode::OK {
                    ok += 1;
                } else {
                    assert_eq!(answer.header("x-seawall-reason"), "rate_limited", "{engine:?}");
                }
            }
            // Each key's single request a minute went through on the first engine only.
            assert_eq!(ok, usize::from(engine == Engine::Http1), "{engine:?}");
        }
    }
    assert_eq!(metric(&gw, "seawall_rate_limit_keys{limit=\"api\"}").await, 3.0);
    gw.shutdown().await;
}
