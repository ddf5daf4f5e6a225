//! The egress side attacked, as a hostile caller on the egress listener and a hostile (or merely
//! unusual) third-party provider would. Each test asserts what the application and the provider
//! should see; each failed when it was written, and its comment says what went wrong then.
//!
//! Tried and held up (no test here): a caller leaving the line (either engine) frees its place
//! and `waiting` counts right; bodies (length or chunked, 10 B to 3 MB, both engines) are sent
//! whole to the second provider when the first refuses connections; a provider that stalls
//! mid-body, closes half-way, answers garbage, stalls in its head or never answers is cut at
//! `timeout`, a partial body is never cached, and a GET moves to the next provider (a POST gets
//! 504); `Retry-After` huge, negative or a date parks for at most a day or `park_for`; keys never
//! appear in state, metrics or error details; `x-api-key` in any case or twice, and
//! `x-api-key :`, never reach the provider with the caller's value (the latter is a 400);
//! absolute-form targets and 20 kB paths (431) behave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use seawall_http::Gateway;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// This file's API keys, in the environment before any gateway reads its file.
const KEYS: [(&str, &str); 3] = [
    ("SEAWALL_ATTACK_KEY_A", "atk-a-5e1f0c9d2b7a"),
    ("SEAWALL_ATTACK_KEY_B", "atk-b-93c4d8e2f6a1"),
    // A base64-like key: percent-encoded in a query.
    ("SEAWALL_ATTACK_KEY_C", "atk+c/9d2b7a=="),
];

/// Every test calls this first (see [`common::keys_in_env`]).
fn keys_in_env() {
    common::keys_in_env(&KEYS);
}

fn key(i: usize) -> &'static str {
    KEYS[i].1
}

// ---------------------------------------------------------------------------------------------
// A scripted provider: TLS, HTTP/1.1 read by hand (so that it sees the request exactly as sent),
// each answer chosen by the test from the request and the ones before it.
// ---------------------------------------------------------------------------------------------

/// One request the provider got.
#[derive(Debug, Clone)]
struct Seen {
    /// Which connection it came on (0: the first accepted).
    conn: usize,
    /// The request target, byte for byte.
    target: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// When its request line arrived.
    at: Instant,
    /// What it was answered (0: the connection was closed instead).
    status: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Every value of query parameter `name`, names compared percent-decoded (as most web
    /// frameworks do).
    fn query_values(&self, name: &str) -> Vec<String> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter_map(|p| p.split_once('=').or(Some((p, ""))))
            .filter(|(n, _)| percent_decode(n) == name)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }

    /// The API key it carried: the `x-api-key` header, else the first `key` parameter.
    fn key(&self) -> String {
        match self.header("x-api-key") {
            Some(k) => k.to_string(),
            None => self.query_values("key").into_iter().next().unwrap_or_default(),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the provider does with a request.
enum Reply {
    Answer { status: u16, headers: Vec<(String, String)>, body: String },
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    Reply::Answer { status, headers, body: body.to_string() }
}

fn ok(body: &str) -> Reply {
    answer(200, &[], body)
}

/// The request and every request before it (in arrival order).
type Script = dyn Fn(&Seen, &[Seen]) -> Reply + Send + Sync;

#[derive(Clone)]
struct Scripted {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    async fn start(
        leaf: &Leaf,
        script: impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync + 'static,
    ) -> Scripted {
        Scripted::start_with(leaf, Duration::ZERO, script).await
    }

    /// A provider whose first connection waits `first_handshake` before its TLS handshake (a far
    /// or busy provider: the handshake takes a few round trips).
    async fn start_with(
        leaf: &Leaf,
        first_handshake: Duration,
        script: impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync + 'static,
    ) -> Scripted {
        let acceptor = tls_acceptor(leaf, None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = Scripted { addr: listener.local_addr().unwrap(), seen: Arc::default() };
        let script: Arc<Script> = Arc::new(script);
        let seen = Arc::clone(&provider.seen);
        let conns = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let conn = conns.fetch_add(1, SeqCst);
                let (acceptor, script, seen) =
                    (acceptor.clone(), Arc::clone(&script), Arc::clone(&seen));
                tokio::spawn(async move {
                    if conn == 0 && !first_handshake.is_zero() {
                        tokio::time::sleep(first_handshake).await;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let mut io = BufReader::new(tls);
                    while let Some(mut request) = read_request(&mut io, conn).await {
                        let reply = {
                            let mut all = seen.lock().unwrap();
                            let reply = script(&request, &all);
                            let Reply::Answer { status, .. } = &reply;
                            request.status = *status;
                            all.push(request);
                            reply
                        };
                        let Reply::Answer { status, headers, body } = reply;
                        let mut out = format!(
                            "HTTP/1.1 {status} Scripted\r\ncontent-length: {}\r\n",
                            body.len()
                        );
                        for (n, v) in headers {
                            out.push_str(&format!("{n}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(&body);
                        if io.get_mut().write_all(out.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = io.get_mut().flush().await;
                    }
                });
            }
        });
        provider
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

/// Reads one HTTP/1.1 request (a `content-length` or chunked body); `None` at the end of the
/// connection.
async fn read_request<R: AsyncBufRead + Unpin>(io: &mut R, conn: usize) -> Option<Seen> {
    let mut line = String::new();
    if io.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let at = Instant::now();
    let mut parts = line.trim_end().splitn(3, ' ');
    let _method = parts.next()?;
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut seen = Seen { conn, target, headers, body: Vec::new(), at, status: 0 };
    if seen.header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            line.clear();
            io.read_line(&mut line).await.ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                loop {
                    line.clear();
                    io.read_line(&mut line).await.ok()?;
                    if line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            io.read_exact(&mut chunk).await.ok()?;
            seen.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = seen.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; n];
        io.read_exact(&mut body).await.ok()?;
        seen.body = body;
    }
    Some(seen)
}

/// Whether `seen` would be one call too many: `limit` calls of its key answered (not 429) in
/// the `window` before it.
fn over_limit(seen: &Seen, before: &[Seen], limit: usize, window: Duration) -> bool {
    let key = seen.key();
    let recent = before
        .iter()
        .filter(|c| c.key() == key && c.status != 429 && c.status != 0)
        .filter(|c| seen.at.duration_since(c.at) < window)
        .count();
    recent >= limit
}

/// A provider's script allowing `limit` calls per key in any `window`, 429 beyond.
fn strict(limit: usize, window: Duration) -> impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync {
    move |seen, before| {
        if over_limit(seen, before, limit, window) {
            let after = window.as_secs().max(1).to_string();
            answer(429, &[("retry-after", &after)], "slow down")
        } else {
            ok(&format!("answered {}", seen.target))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------------------------

async fn gateway(body: &str) -> Gateway {
    start(config_with_server("egress_listen = \"127.0.0.1:0\"", body)).await
}

/// A provider entry of an egress group.
fn provider_entry(name: &str, url: &str, ca: &TestCa, extra: &str) -> String {
    format!("{{ name = \"{name}\", url = \"{url}\", ca_file = {:?}{extra} }}", ca.ca_file())
}

fn route(prefix: &str, group: &str) -> String {
    format!("[[routes]]\nname = \"{group}\"\npath_prefix = \"{prefix}\"\negress = \"{group}\"\n")
}

async fn state(gw: &Gateway) -> serde_json::Value {
    admin(gw, "/api/v1/state").await.json()
}

/// One request on a new connection, allowed 20 s (for calls that wait for quota).
async fn ask_long(
    engine: Engine,
    at: std::net::SocketAddr,
    req: http::Request<TestBody>,
) -> Answer {
    bounded(20.0, "an answer", async move {
        let mut client = Client::connect(engine, at).await;
        let response = client.send(req).await.unwrap();
        try_collect(response).await.unwrap().0
    })
    .await
}

/// Everything a caller sees of an answer, as text.
fn visible(answer: &Answer) -> String {
    let mut all = format!("{}\n", answer.status);
    for (name, value) in &answer.headers {
        all.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    all.push_str(&answer.body);
    all
}

/// The path a server that resolves dot segments (RFC 3986 §5.2.4, after decoding `%2e`) serves.
fn resolved(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: VecDeque<&str> = VecDeque::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                out.pop_back();
            }
            s => out.push_back(s),
        }
    }
    let joined: Vec<&str> = out.into_iter().collect();
    format!("/{}", joined.join("/"))
}

// ---------------------------------------------------------------------------------------------
// Path tricks
// ---------------------------------------------------------------------------------------------

/// A route `path_prefix = "/maps"` (no trailing slash, like tests/egress.rs's `/solo`) matches by
/// string by default (`server.prefix_match`), so `/maps..` is a match whose rest is `..`. The rest is appended as
/// `/v1/..` — which has a dot segment that `has_dot_segment` never saw (it checked `/maps..`,
/// whose segment is `maps..`). Today the provider gets `GET /v1/../admin`, i.e. `/admin`,
/// outside the base URL the operator configured (call.rs `CallerHead::write` adds a `/` before
/// a rest that does not start with one; policy.rs checks the caller's path, not the written one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_glued_to_the_prefix_cannot_climb_out_of_the_providers_base_path() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-dots");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider = Scripted::start(&leaf, |seen, _| ok(&format!("saw {}", seen.target))).await;
    let group = format!(
        "[egress.maps]\nproviders = [{}]\n",
        provider_entry("p", &provider.url("/v1"), &ca, "")
    );
    let gw = gateway(&format!("{group}{}", route("/maps", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        for path in ["/maps../admin", "/maps..", "/maps%2e%2e/admin", "/maps.%2E/admin"] {
            let answer = ask(engine, at, engine.get(path)).await;
            assert!(
                answer.status == StatusCode::BAD_REQUEST || answer.status == StatusCode::NOT_FOUND,
                "{engine:?} {path}: {} {}",
                answer.status,
                answer.body
            );
        }
    }
    for seen in provider.seen() {
        let path = resolved(seen.path());
        assert!(
            path == "/v1" || path.starts_with("/v1/"),
            "the provider got {} (that is {path}), outside /v1",
            seen.target
        );
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A provider answers 403 to a resource the account may not see, whatever the key. Each such
/// request disables one key (call.rs `Outcome::KeyRefused`: the first 403 disables the key; the
/// "second refusal says more about the request" rule only stops the second key from being
/// disabled in the *same* call). Two such requests and every key is gone: every caller gets 503
/// `egress_no_key` until a reload, though no key was ever at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_for_a_forbidden_resource_do_not_lock_every_caller_out() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-403");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider = Scripted::start(&leaf, |seen, _| {
        if seen.path().contains("/private") {
            answer(403, &[("content-type", "text/plain")], "this account may not read that")
        } else {
            ok("public data")
        }
    })
    .await;
    let extra = ", keys_env = [\"SEAWALL_ATTACK_KEY_A\", \"SEAWALL_ATTACK_KEY_B\"], key_header = \"x-api-key\"";
    let group = format!(
        "[egress.maps]\nproviders = [{}]\n",
        provider_entry("p", &provider.url("/v1"), &ca, extra)
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        let forbidden = ask(engine, at, engine.get("/maps/private/report")).await;
        assert_ne!(forbidden.status, StatusCode::OK, "{engine:?}");
    }
    for engine in ENGINES {
        let answer = ask(engine, at, engine.get("/maps/public")).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{engine:?}: a caller's forbidden path disabled the keys: {} {}",
            answer.header("x-seawall-reason"),
            answer.body
        );
    }
    gw.shutdown().await;
}

/// The caller writes the key parameter percent-encoded (`%6Bey=`): Seawall drops only a
/// parameter named exactly `key` (call.rs `CallerHead::write` compares raw bytes), so the
/// provider — which, like nearly every web framework, decodes parameter names — gets two keys,
/// the caller's first. Seawall counts the call against its own key while the provider may bill
/// whichever it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_key_parameter_never_reaches_the_provider_however_it_is_spelled() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-smuggle");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider = Scripted::start(&leaf, |_, _| ok("fine")).await;
    let extra = ", keys_env = [\"SEAWALL_ATTACK_KEY_A\"], key_query = \"key\"";
    let group = format!(
        "[egress.maps]\nproviders = [{}]\n",
        provider_entry("p", &provider.url("/v1"), &ca, extra)
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        for path in ["/maps/x?%6Bey=callers-own&q=1", "/maps/x?q=1&k%65y=callers-own"] {
            let answer = ask(engine, at, engine.get(path)).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?} {path}: {}", answer.body);
        }
    }
    for seen in provider.seen() {
        assert_eq!(
            seen.query_values("key"),
            vec![key(0).to_string()],
            "the provider got {}",
            seen.target
        );
    }
    gw.shutdown().await;
}

/// A provider that moved a resource redirects to its new URL with the query it was sent — the
/// key included, as providers that take the key in the query do. Seawall passes `Location` on
/// as it is: the application (and its logs, and its HTTP client following the redirect straight
/// to the provider, around every quota) gets the key that Seawall is there to keep from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_provider_does_not_hand_the_key_to_the_caller() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-location");
    let leaf = ca.leaf("provider", &["localhost"]);
    let port = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&port);
    let provider = Scripted::start(&leaf, move |seen, _| {
        let query = seen.target.split_once('?').map_or("", |(_, q)| q);
        let location = format!("https://localhost:{}/v2/moved?{query}", p.load(SeqCst));
        answer(302, &[("location", &location)], "moved")
    })
    .await;
    port.store(usize::from(provider.addr.port()), SeqCst);
    // A plain key, and one that goes percent-encoded (the echo may write its hex in lower case).
    for (var, secret, encoded) in [
        ("SEAWALL_ATTACK_KEY_A", key(0), key(0).to_string()),
        ("SEAWALL_ATTACK_KEY_C", key(2), "atk%2bc%2f9d2b7a%3d%3d".to_string()),
    ] {
        let extra = format!(", keys_env = [\"{var}\"], key_query = \"key\"");
        let group = format!(
            "[egress.maps]\nproviders = [{}]\n",
            provider_entry("p", &provider.url("/v1"), &ca, &extra)
        );
        let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
        let at = gw.egress_addr().unwrap();
        for engine in ENGINES {
            let answer = ask(engine, at, engine.get("/maps/old?q=1")).await;
            assert_eq!(answer.status, StatusCode::FOUND, "{engine:?}");
            let seen = visible(&answer).to_ascii_lowercase();
            assert!(
                !seen.contains(&secret.to_ascii_lowercase()) && !seen.contains(&encoded),
                "{engine:?}: the caller got the key:\n{seen}"
            );
        }
        gw.shutdown().await;
    }
    assert!(!provider.seen().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Quota
// ---------------------------------------------------------------------------------------------

/// The quota is taken when a call is granted (egress/mod.rs `choose` → `CallQuota::take(now_ms)`),
/// but the call reaches the provider only once its connection is up (TLS handshake included).
/// A first call on a new connection arrives late; the next call, on the pooled connection, goes
/// as soon as the period has passed since the *grant* — and arrives less than a period after the
/// first. A provider that allows 1 call a second (Seawall's `rate = "1/s"`) sees two within 0.6 s
/// and answers 429: the 20 ms margin (`with_margin`) covers jitter, not a handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_does_not_bring_two_calls_into_one_window() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-handshake");
    let leaf = ca.leaf("provider", &["localhost"]);
    for engine in ENGINES {
        let window = Duration::from_secs(1);
        let provider =
            Scripted::start_with(&leaf, Duration::from_millis(400), strict(1, window)).await;
        let group = format!(
            "[egress.q]\nmax_wait = \"5s\"\nproviders = [{}]\n",
            provider_entry("p", &provider.url(""), &ca, ", rate = \"1/s\"")
        );
        let gw = gateway(&format!("{group}{}", route("/q/", "q"))).await;
        let at = gw.egress_addr().unwrap();
        for i in 0..2 {
            let answer = ask(engine, at, engine.get(&format!("/q/{i}"))).await;
            assert_eq!(answer.status, StatusCode::OK, "{engine:?} call {i}: {}", answer.body);
        }
        let seen = provider.seen();
        let arrivals: Vec<(usize, u16, Duration)> =
            seen.iter().map(|s| (s.conn, s.status, s.at.duration_since(seen[0].at))).collect();
        assert!(
            seen.iter().all(|s| s.status != 429),
            "{engine:?}: the provider had to refuse a call; (connection, status, arrival): \
             {arrivals:?}"
        );
        gw.shutdown().await;
    }
}

/// A reload builds a new `EgressGroup` with a *copy* of the old one's history
/// (`EgressGroup::new(config, old)` / `carry_over`); calls already waiting in the old group's line
/// keep taking quota from the old copy, new calls from the new one. Both copies think the
/// provider's single call per period is theirs: the provider gets two calls in one period and
/// answers 429. (`/api/v1/state` also shows only the new line: `waiting` forgets the callers that
/// were waiting when the file was reloaded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_calls_wait_keeps_the_provider_under_its_quota() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-reload");
    let leaf = ca.leaf("provider", &["localhost"]);
    let window = Duration::from_secs(2);
    let provider = Scripted::start(&leaf, strict(1, window)).await;
    let path = ca.dir.join("seawall.toml");
    let file = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\n\
         egress_listen = \"127.0.0.1:0\"\n[overload]\ncpu = \"off\"\n\
         [egress.q]\nmax_wait = \"8s\"\nproviders = [{}]\n{}",
        provider_entry(
            "p",
            &provider.url(""),
            &ca,
            ", rate = \"1/2s\", keys_env = [\"SEAWALL_ATTACK_KEY_A\"], key_header = \"x-api-key\""
        ),
        route("/q/", "q")
    );
    std::fs::write(&path, &file).unwrap();
    let gw =
        Gateway::start(seawall_config::load(&path).unwrap(), Some(path.clone())).await.unwrap();
    let at = gw.egress_addr().unwrap();
    assert_eq!(get(at, "/q/first").await.status, StatusCode::OK);
    // One call waits for the next period...
    let before = tokio::spawn(async move { get(at, "/q/before-reload").await });
    eventually(Duration::from_secs(2), "a call waiting", || async {
        state(&gw).await["egress"][0]["waiting"] == 1
    })
    .await;
    // ...the file is reloaded (unchanged), and another call comes.
    gw.shared().reload().unwrap();
    let after = tokio::spawn(async move { get(at, "/q/after-reload").await });
    eventually(Duration::from_secs(2), "the second call waiting", || async {
        state(&gw).await["egress"][0]["waiting"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let (before, after) = (before.await.unwrap(), after.await.unwrap());
    let seen = provider.seen();
    let arrivals: Vec<(String, u16)> = seen.iter().map(|s| (s.target.clone(), s.status)).collect();
    assert!(
        seen.iter().all(|s| s.status != 429),
        "the provider got two calls in one period: {arrivals:?}"
    );
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    gw.shutdown().await;
}

/// A call whose first provider failed waits for the second provider's quota at the head of the
/// line (`acquire` with `avoid = [0]`); every call behind it waits too, though the first provider
/// has quota to spare and would answer them at once (head-of-line blocking in
/// egress/mod.rs `acquire`: a newcomer goes only when it outranks the head, and the head only
/// ever looks at the providers it did not avoid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_the_backup_does_not_hold_up_calls_the_primary_can_take() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-hol");
    let leaf = ca.leaf("provider", &["localhost"]);
    let primary = Scripted::start(&leaf, |seen, _| {
        if seen.path().ends_with("/broken") {
            answer(500, &[], "primary broke")
        } else {
            ok("primary")
        }
    })
    .await;
    let backup = Scripted::start(&leaf, |_, _| ok("backup")).await;
    let group = format!(
        "[egress.maps]\nmax_wait = \"10s\"\nretries = 0\nproviders = [\n{},\n{},\n]\n",
        provider_entry("primary", &primary.url(""), &ca, ""),
        // One call every 3 s.
        provider_entry("backup", &backup.url(""), &ca, ", rate = \"20/min\", burst = 1"),
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    // The backup answers the first broken call, and has no quota for the next 3 s.
    let first = get(at, "/maps/broken").await;
    assert_eq!((first.status, first.body.as_str()), (StatusCode::OK, "backup"));
    let waiting = tokio::spawn(async move { get(at, "/maps/broken").await });
    eventually(Duration::from_secs(2), "the broken call waiting for the backup", || async {
        state(&gw).await["egress"][0]["waiting"] == 1
    })
    .await;
    for engine in ENGINES {
        let quick = tokio::time::timeout(
            Duration::from_millis(1500),
            ask(engine, at, engine.get("/maps/fine")),
        )
        .await;
        let answer = quick.unwrap_or_else(|_| {
            panic!("{engine:?}: a call the primary could take waited behind the fallback call")
        });
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "primary"));
    }
    let late = waiting.await.unwrap();
    assert_eq!((late.status, late.body.as_str()), (StatusCode::OK, "backup"));
    gw.shutdown().await;
}

/// A provider that answers 429 with `Retry-After: 0` (as some do under load) parks the key for
/// 0 ms (call.rs `Outcome::Throttled`): the same key is chosen again at once, and the same call
/// is sent again and again, 17 times (`MAX_KEY_MOVES` + 1) for one call of the application —
/// to a provider that is saying it is overloaded. One call should cost the provider at most one
/// attempt per key (then the caller gets its 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_answering_429_retry_after_0_is_not_hammered() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-429-0");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider =
        Scripted::start(&leaf, |_, _| answer(429, &[("retry-after", "0")], "busy")).await;
    let extra = ", keys_env = [\"SEAWALL_ATTACK_KEY_A\"], key_header = \"x-api-key\"";
    let group = format!(
        "[egress.maps]\nmax_wait = \"1s\"\nproviders = [{}]\n",
        provider_entry("p", &provider.url(""), &ca, extra)
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let answer = ask(engine, at, engine.get(&format!("/maps/{i}"))).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{engine:?}");
        let sent = provider.seen().iter().filter(|s| s.target == format!("/{i}")).count();
        assert!(sent <= 2, "{engine:?}: one call was sent {sent} times to a provider saying 429");
    }
    gw.shutdown().await;
}

/// A caller sends its own key as `x_api_key`. Seawall drops only fields named `x-api-key`
/// (call.rs `CallerHead::write`), so the provider gets both. Providers behind CGI, WSGI or Rack
/// read `x-api-key` and `x_api_key` as the same variable (`HTTP_X_API_KEY`) — the classic
/// header-smuggling trick that nginx blocks by dropping underscored names: the caller's value
/// may be the one the provider uses, with Seawall counting the call against its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_key_header_never_reaches_the_provider_however_it_is_spelled() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-underscore");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider = Scripted::start(&leaf, |_, _| ok("fine")).await;
    let extra = ", keys_env = [\"SEAWALL_ATTACK_KEY_A\"], key_header = \"x-api-key\"";
    let group = format!(
        "[egress.maps]\nproviders = [{}]\n",
        provider_entry("p", &provider.url("/v1"), &ca, extra)
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        let req = engine.request("GET", "/maps/x").header("x_api_key", "callers-own");
        let answer = ask(engine, at, req.body(empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::OK, "{engine:?}: {}", answer.body);
    }
    for seen in provider.seen() {
        // As a CGI-style server reads the fields.
        let keys: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.replace('_', "-") == "x-api-key")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(keys, [key(0)], "the provider got {:?}", seen.headers);
    }
    gw.shutdown().await;
}

/// A provider is a third party: its answer must not speak for Seawall. Today `x-seawall-*`
/// fields of its answer are passed on as they are, so a provider's (or a man-in-the-middle
/// fixture's) 503 with `x-seawall-reason: egress_no_key` reads, to the application, exactly like
/// Seawall's own "every key was refused" — the field the application is told to tell the two
/// apart by — and `x-seawall-cache` comes twice (the provider's `HIT` and Seawall's `MISS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_pass_its_answer_off_as_seawalls_own() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-spoof");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider = Scripted::start(&leaf, |seen, _| {
        let fields = [("x-seawall-reason", "egress_no_key"), ("x-seawall-cache", "HIT")];
        if seen.path() == "/down" {
            answer(503, &fields, "down")
        } else {
            answer(200, &fields, "fine")
        }
    })
    .await;
    let group = format!(
        "[egress.maps]\nretries = 0\ncache_ttl = \"1h\"\nproviders = [{}]\n",
        provider_entry("p", &provider.url(""), &ca, "")
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    for engine in ENGINES {
        let down = ask(engine, at, engine.get("/maps/down")).await;
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            down.headers.get("x-seawall-reason").is_none(),
            "{engine:?}: the provider's 503 says it is Seawall's: {:?}",
            down.headers
        );
        let fine = ask(engine, at, engine.get(&format!("/maps/fine-{engine:?}"))).await;
        let cache: Vec<_> = fine.headers.get_all("x-seawall-cache").iter().collect();
        assert_eq!(cache, ["MISS"], "{engine:?}: {:?}", fine.headers);
    }
    gw.shutdown().await;
}

/// Calls for the same answer while quota is short: the first fetches, the others wait for it
/// (the cache's coalescing) — but only for `coalesce_wait` (5 s, fixed for egress groups), less
/// than `max_wait`. Then each goes for the answer itself, joins the quota line, and never looks
/// at the cache again: the provider is asked again for an answer that has been stored since,
/// and the next caller is refused 429 `egress_quota` though the answer is in the cache
/// (seawall-config validate/egress.rs `answers_cache` takes the default `coalesce_wait`; the call in
/// resilience.rs `forward` does not look the key up again after waiting for quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_the_same_answer_do_not_spend_quota_on_it_twice() {
    keys_in_env();
    let ca = TestCa::new("egress-attack-coalesce");
    let leaf = ca.leaf("provider", &["localhost"]);
    let provider =
        Scripted::start(&leaf, |seen, _| ok(&format!("answer for {}", seen.target))).await;
    let group = format!(
        "[egress.maps]\nmax_wait = \"7s\"\ncache_ttl = \"1h\"\nproviders = [{}]\n",
        provider_entry("p", &provider.url(""), &ca, ", rate = \"1/5500ms\"")
    );
    let gw = gateway(&format!("{group}{}", route("/maps/", "maps"))).await;
    let at = gw.egress_addr().unwrap();
    assert_eq!(get(at, "/maps/warm-up").await.status, StatusCode::OK);
    // Three callers want the same answer; quota is back in 5.5 s.
    let callers: Vec<_> = ENGINES
        .iter()
        .chain(&ENGINES[..1])
        .map(|&engine| {
            tokio::spawn(async move { ask_long(engine, at, engine.get("/maps/same")).await })
        })
        .collect();
    let mut answers = Vec::new();
    for caller in callers {
        let answer = caller.await.unwrap();
        answers.push(format!("{} {}", answer.status, answer.header("x-seawall-reason")));
    }
    let fetched = provider.seen().iter().filter(|s| s.target == "/same").count();
    assert!(
        fetched == 1 && answers.iter().all(|a| a.starts_with("200")),
        "the same answer was fetched {fetched} times; the callers got {answers:?}"
    );
    gw.shutdown().await;
}
