//! The egress side: the application's calls to third-party APIs, made through Seawall so that
//! they stay under each provider's limits.
//!
//! ```text
//! egress route (server.egress_listen only) ─▶ cache ─▶ call (proxy/egress.rs):
//!   wait for quota, in priority order, up to max_wait ─▶ 429 egress_quota + Retry-After
//!   ▸ provider in order with quota left (spill-over) ▸ its least-used key with quota left
//!   ▸ the provider's URL + the path after the route's prefix, the key in a header or the query
//!   ▸ the provider's upstream group (TLS, pool, breaker) ─▶ 429: park the key, another key
//!                                                        ─▶ 401/403: disable the key, another
//!                                                        ─▶ 5xx / no connection: next provider
//! ```
//!
//! A group's quota state ([`EgressGroup`]) is shared by every worker (one lock, held for a few
//! comparisons) and outlives reloads that keep its providers and keys. Keys appear outside the
//! calls only as the name of their environment variable and a fingerprint (the first 8 hex
//! digits of the value's SHA-256).

pub(crate) mod keys;
mod line;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use seawall_config::{ApiKey, Egress};
use seawall_core::calls::{CallQuota, Day};
use seawall_core::priority::Priority;
use tokio::sync::Notify;

pub(crate) use keys::Grant;
use keys::{KeyLive, KeyState, ProviderCounters};

/// One egress group's providers, keys and waiting calls.
pub struct EgressGroup {
    pub config: Egress,
    state: Mutex<GroupState>,
    counters: Arc<GroupCounters>,
    /// Woken when quota is given back or keys come back: the calls waiting outside the line
    /// (the head of the line has its own wake-up).
    aside_wake: Notify,
}

struct GroupState {
    providers: Vec<ProviderState>,
    /// Calls waiting for quota, by priority then arrival, each with its wake-up.
    line: BTreeMap<(Priority, u64), Arc<Notify>>,
    arrivals: u64,
    /// Calls waiting for quota outside the line (they avoid a provider that failed them).
    aside: usize,
}

/// What happened to a group's calls, for the metrics (kept across reloads).
#[derive(Debug, Default)]
struct GroupCounters {
    /// Calls that waited for quota.
    waited: AtomicU64,
    /// Calls refused 429 `egress_quota`.
    refused_quota: AtomicU64,
    /// Calls refused 503 `egress_no_key`.
    refused_no_key: AtomicU64,
}

struct ProviderState {
    name: String,
    keys: Vec<KeyState>,
    counters: Arc<ProviderCounters>,
}

/// What one call does not use again: providers that failed it, keys refused for it.
#[derive(Debug, Default)]
pub(crate) struct Avoid {
    pub providers: Vec<usize>,
    pub keys: Vec<(usize, usize)>,
}

impl Avoid {
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty() && self.keys.is_empty()
    }
}

/// Every key's live state, by the provider it is sent to (its URL) and its value (its
/// fingerprint): a key used by two groups, listed under two variables, or kept by a renamed
/// provider is one key with one quota. Built for each snapshot from the previous one's groups, so
/// that calls on either count against the same quota.
#[derive(Default)]
pub struct Keys(HashMap<(String, String), Arc<Mutex<KeyLive>>>);

impl Keys {
    /// The keys of `groups` (the previous snapshot's).
    pub fn of(groups: &[Arc<EgressGroup>]) -> Keys {
        let mut keys = Keys::default();
        for group in groups {
            let state = group.lock();
            for (provider, config) in state.providers.iter().zip(&group.config.providers) {
                for key in &provider.keys {
                    let id = (config.url.clone(), key.fingerprint.clone());
                    keys.0.entry(id).or_insert_with(|| Arc::clone(&key.live));
                }
            }
        }
        keys
    }

    /// The state of the key `fingerprint` ("" for a provider without keys) sent to `provider`:
    /// the one known, its limits made `provider`'s (from its history) when they changed; or a
    /// new one.
    fn live(
        &mut self,
        provider: &seawall_config::Provider,
        fingerprint: &str,
    ) -> Arc<Mutex<KeyLive>> {
        let limits = (provider.rate.map(with_margin), provider.daily_quota);
        let id = (provider.url.clone(), fingerprint.to_string());
        let live = self.0.entry(id).or_insert_with(|| {
            Arc::new(Mutex::new(KeyLive::new(CallQuota::new(limits.0, limits.1), limits)))
        });
        let mut state = keys::lock(live);
        if state.limits != limits {
            let mut quota = CallQuota::new(limits.0, limits.1);
            quota.carry_over(&state.quota);
            state.quota = quota;
            state.limits = limits;
        }
        drop(state);
        Arc::clone(live)
    }
}

/// What [`EgressGroup::choose`] found.
enum Choice {
    Go(Grant),
    /// No provider has quota before this time (monotonic ms).
    Wait(u64),
    /// Every key of every provider not avoided is disabled.
    NoKey,
    /// Every provider or key left is avoided (each failed this call).
    AllAvoided,
}

impl EgressGroup {
    /// The group for `config`, keeping `old`'s counters for the providers it keeps, and taking
    /// each key's state from `keys` (see [`Keys`]): one key is one quota, whatever group,
    /// variable or provider name it appears under.
    pub fn new(config: Egress, old: Option<&EgressGroup>, keys: &mut Keys) -> EgressGroup {
        let old_state = old.map(EgressGroup::lock);
        let providers = config
            .providers
            .iter()
            .map(|p| {
                let old_provider =
                    old_state.as_ref().and_then(|s| s.providers.iter().find(|o| o.name == p.name));
                let entries: Vec<Option<&ApiKey>> =
                    if p.keys.is_empty() { vec![None] } else { p.keys.iter().map(Some).collect() };
                let keys = entries
                    .into_iter()
                    .map(|k| {
                        let env = k.map(|k| k.env.clone()).unwrap_or_default();
                        let fingerprint = k.map(|k| fingerprint(&k.value)).unwrap_or_default();
                        let live = keys.live(p, &fingerprint);
                        KeyState { env, fingerprint, live }
                    })
                    .collect();
                let counters = old_provider.map_or_else(Arc::default, |o| Arc::clone(&o.counters));
                ProviderState { name: p.name.clone(), keys, counters }
            })
            .collect();
        let counters = old.map_or_else(Arc::default, |o| Arc::clone(&o.counters));
        drop(old_state);
        EgressGroup {
            config,
            state: Mutex::new(GroupState {
                providers,
                line: BTreeMap::new(),
                arrivals: 0,
                aside: 0,
            }),
            counters,
            aside_wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A panic while holding the lock leaves counters, never broken invariants.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first provider (in order, skipping `avoid`) with a key that may be used now, and its
    /// least-used such key (fewest calls this period, then fewest in all) — its quota taken.
    fn choose(&self, state: &mut GroupState, now_ms: u64, day: Day, avoid: &Avoid) -> Choice {
        let mut earliest: Option<u64> = None;
        let mut any_key = false;
        let mut any_avoided = false;
        for (p, provider) in state.providers.iter().enumerate() {
            if avoid.providers.contains(&p) {
                any_avoided = true;
                continue;
            }
            let mut best: Option<(usize, (u64, u64))> = None;
            for (k, key) in provider.keys.iter().enumerate() {
                let mut live = key.lock();
                if live.disabled.is_some() {
                    continue;
                }
                if avoid.keys.contains(&(p, k)) {
                    any_avoided = true;
                    continue;
                }
                any_key = true;
                let at = live.next_at(now_ms, day);
                if at > now_ms {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    continue;
                }
                let use_ = (live.quota.used(now_ms), live.calls);
                if best.is_none_or(|(_, u)| use_ < u) {
                    best = Some((k, use_));
                }
            }
            if let Some((k, _)) = best {
                let key = &provider.keys[k];
                let mut live = key.lock();
                // A key shared with an older snapshot's group (whose lock is another) may have
                // been taken since it was looked at.
                if live.next_at(now_ms, day) > now_ms {
                    return Choice::Wait(now_ms + 1);
                }
                live.quota.take(now_ms, day);
                drop(live);
                let spilled = (0..p).any(|e| !avoid.providers.contains(&e));
                let live = Arc::clone(&key.live);
                let counters = Arc::clone(&provider.counters);
                return Choice::Go(Grant::new(
                    (p, k),
                    live,
                    counters,
                    (now_ms, day.number),
                    spilled,
                ));
            }
        }
        match earliest {
            Some(at) => Choice::Wait(at),
            None if !any_key && any_avoided => Choice::AllAvoided,
            None if !any_key => Choice::NoKey,
            // A usable key either goes or has a time: look again in a moment.
            None => Choice::Wait(now_ms + 1),
        }
    }

    /// When quota comes back at the earliest (monotonic ms), for a call that leaves the line
    /// without it.
    fn earliest(&self, now_ms: u64) -> u64 {
        let day = today();
        let state = self.lock();
        let keys = state.providers.iter().flat_map(|p| p.keys.iter());
        let at = keys.filter_map(|k| {
            let mut live = k.lock();
            live.disabled.is_none().then(|| live.next_at(now_ms, day))
        });
        at.min().unwrap_or(now_ms)
    }

    /// Gives back the quota of a call that was never sent; the head of the line looks again.
    pub(crate) fn give_back(&self, grant: Grant) {
        grant.give_back();
        self.wake_waiters();
    }

    /// Wakes the head of the line and the calls waiting outside it: quota or a key came back.
    fn wake_waiters(&self) {
        if let Some((_, head)) = self.lock().line.first_key_value() {
            head.notify_one();
        }
        self.aside_wake.notify_waiters();
    }

    /// Counts an attempt that failed at a provider.
    pub(crate) fn failed(&self, provider: usize) {
        if let Some(p) = self.lock().providers.get(provider) {
            p.counters.failures.fetch_add(1, Relaxed);
        }
    }

    /// Counts a call sent to a provider after an earlier one failed it.
    pub(crate) fn fell_back(&self, provider: usize) {
        if let Some(p) = self.lock().providers.get(provider) {
            p.counters.fell_back.fetch_add(1, Relaxed);
        }
    }

    /// Counts a call Seawall refused itself.
    pub(crate) fn count_refusal(&self, reason: crate::problem::Reason) {
        let counter = match reason {
            crate::problem::Reason::EgressQuota => &self.counters.refused_quota,
            crate::problem::Reason::EgressNoKey => &self.counters.refused_no_key,
            _ => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    fn count_waited(&self) {
        self.counters.waited.fetch_add(1, Relaxed);
    }

    /// Gives every disabled key another chance (the operator fixed them); how many there were.
    pub fn enable_keys(&self) -> usize {
        let state = self.lock();
        let keys = state.providers.iter().flat_map(|p| p.keys.iter());
        let enabled = keys.filter(|k| k.lock().disabled.take().is_some()).count();
        drop(state);
        self.wake_waiters();
        enabled
    }

    /// The key's variable and fingerprint, for a log line.
    pub(crate) fn key_names(&self, grant: &Grant) -> Option<(String, String)> {
        let state = self.lock();
        let key = state.providers.get(grant.provider)?.keys.get(grant.key)?;
        (!key.env.is_empty()).then(|| (key.env.clone(), key.fingerprint.clone()))
    }

    /// The group's state for `/api/v1/state`.
    pub fn state_json(&self) -> serde_json::Value {
        let now = seawall_core::clock::now_ms();
        let day = today();
        let state = self.lock();
        let providers: Vec<serde_json::Value> = state
            .providers
            .iter()
            .zip(&self.config.providers)
            .map(|(p, config)| {
                let keys: Vec<serde_json::Value> = p
                    .keys
                    .iter()
                    .map(|k| {
                        let mut live = k.lock();
                        serde_json::json!({
                            "env": (!k.env.is_empty()).then_some(&k.env),
                            "fingerprint": (!k.env.is_empty()).then_some(&k.fingerprint),
                            "used": live.quota.used(now),
                            "used_today": live.quota.used_today(day),
                            "quota_left": live.quota.left(now, day),
                            "parked_ms": live.parked_until.saturating_sub(now),
                            "disabled_by": live.disabled,
                            "calls": live.calls,
                            "throttled": live.throttled,
                            "refused": live.refused,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": p.name,
                    "url": config.url,
                    "rate": config.rate.map(|q| format!("{}/{:?}", q.count, Duration::from_nanos(q.period_ns))),
                    "daily_quota": config.daily_quota,
                    "spilled": p.counters.spilled.load(Relaxed),
                    "fell_back": p.counters.fell_back.load(Relaxed),
                    "failures": p.counters.failures.load(Relaxed),
                    "keys": keys,
                })
            })
            .collect();
        serde_json::json!({
            "name": self.config.name,
            "max_wait_ms": self.config.max_wait.as_millis() as u64,
            "waiting": state.line.len() + state.aside,
            "waited": self.counters.waited.load(Relaxed),
            "refused_quota": self.counters.refused_quota.load(Relaxed),
            "refused_no_key": self.counters.refused_no_key.load(Relaxed),
            "providers": providers,
        })
    }

    /// The group's lines for `/metrics` (the HELP and TYPE lines are written once by
    /// [`metrics`]).
    fn metric_lines(&self, m: &mut MetricLines) {
        let now = seawall_core::clock::now_ms();
        let day = today();
        let group = crate::metrics::escape(&self.config.name);
        let state = self.lock();
        let g = format!("group=\"{group}\"");
        let c = &self.counters;
        let waiting = state.line.len() + state.aside;
        let _ = writeln!(m.waiting, "seawall_egress_waiting{{{g}}} {waiting}");
        let _ = writeln!(m.waited, "seawall_egress_waited_total{{{g}}} {}", c.waited.load(Relaxed));
        let refused = [("egress_quota", &c.refused_quota), ("egress_no_key", &c.refused_no_key)];
        for (reason, n) in refused {
            let n = n.load(Relaxed);
            let _ =
                writeln!(m.refused, "seawall_egress_refused_total{{{g},reason=\"{reason}\"}} {n}");
        }
        for p in &state.providers {
            let gp = format!("{g},provider=\"{}\"", crate::metrics::escape(&p.name));
            let pc = &p.counters;
            let _ = writeln!(
                m.spilled,
                "seawall_egress_spilled_total{{{gp}}} {}",
                pc.spilled.load(Relaxed)
            );
            let _ = writeln!(
                m.fell_back,
                "seawall_egress_fallbacks_total{{{gp}}} {}",
                pc.fell_back.load(Relaxed)
            );
            let _ = writeln!(
                m.failures,
                "seawall_egress_failures_total{{{gp}}} {}",
                pc.failures.load(Relaxed)
            );
            for k in &p.keys {
                let gpk = format!(
                    "{gp},key=\"{}\",key_env=\"{}\"",
                    k.fingerprint,
                    crate::metrics::escape(&k.env)
                );
                let mut live = k.lock();
                let _ = writeln!(m.calls, "seawall_egress_calls_total{{{gpk}}} {}", live.calls);
                let _ = writeln!(
                    m.throttled,
                    "seawall_egress_throttled_total{{{gpk}}} {}",
                    live.throttled
                );
                let _ = writeln!(
                    m.refused_keys,
                    "seawall_egress_key_refused_total{{{gpk}}} {}",
                    live.refused
                );
                if let Some(left) = live.quota.left(now, day) {
                    let _ = writeln!(m.quota_left, "seawall_egress_quota_left{{{gpk}}} {left}");
                }
                let parked = u8::from(live.parked_until > now);
                let _ = writeln!(m.parked, "seawall_egress_key_parked{{{gpk}}} {parked}");
                let disabled = u8::from(live.disabled.is_some());
                let _ = writeln!(m.disabled, "seawall_egress_key_disabled{{{gpk}}} {disabled}");
            }
        }
    }
}

/// The path an egress route matches (its prefix, or its exact path): what a call's target starts
/// with, and what is cut before the rest goes after the provider's base path.
pub(crate) fn route_path(route: &seawall_config::Route) -> &str {
    match &route.matcher.path {
        seawall_config::PathMatch::Prefix(p) | seawall_config::PathMatch::Exact(p) => p,
    }
}

/// Marks the fields of a provider's answer that never reach the caller: those that would pass for
/// Seawall's own (`x-seawall-*`), and any that holds one of the group's keys (a redirect's
/// `Location` echoing the query, say).
pub(crate) fn scrub_answer(fields: &mut [crate::fields::Field], buf: &[u8], group: &Egress) {
    let keys: Vec<&[u8]> =
        group.providers.iter().flat_map(|p| p.keys.iter().map(|k| k.value.as_bytes())).collect();
    for field in fields.iter_mut() {
        let name = crate::fields::slice(buf, field.name);
        let value = crate::fields::slice(buf, field.value);
        let own = name.len() >= 10 && name[..10].eq_ignore_ascii_case(b"x-seawall-");
        // A key however it was echoed: as written, or percent-encoded in whole or in part.
        let decoded = crate::edge::percent_decode(value);
        let holds_key = keys.iter().any(|k| {
            let found = |v: &[u8]| v.windows(k.len()).any(|w| w.eq_ignore_ascii_case(k));
            !k.is_empty() && (found(value) || found(&decoded))
        });
        if own || holds_key {
            field.named = true;
        }
    }
}

/// `rate` with its period lengthened by 1% (at least 20 ms, at most 1 s): calls spaced exactly at
/// the limit could otherwise reach a provider that counts a sliding window inside one window,
/// the network's jitter having brought them closer.
fn with_margin(rate: seawall_config::Quota) -> seawall_config::Quota {
    let margin = (rate.period_ns / 100).clamp(20_000_000, 1_000_000_000);
    seawall_config::Quota { period_ns: rate.period_ns.saturating_add(margin), ..rate }
}

/// A key's fingerprint: the first 8 hex digits of its SHA-256 (enough to tell keys apart, far
/// too little to recover one).
pub fn fingerprint(value: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Today, by the wall clock (the daily quotas count UTC days).
fn today() -> Day {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Day::of(unix_ms)
}

/// One family of metric lines per buffer, so that each family is written together.
#[derive(Default)]
struct MetricLines {
    waiting: String,
    waited: String,
    refused: String,
    spilled: String,
    fell_back: String,
    failures: String,
    calls: String,
    throttled: String,
    refused_keys: String,
    quota_left: String,
    parked: String,
    disabled: String,
}

/// Every egress group's metrics, appended to `out`.
pub fn metrics(out: &mut String, groups: &[Arc<EgressGroup>]) {
    if groups.is_empty() {
        return;
    }
    let mut m = MetricLines::default();
    for g in groups {
        g.metric_lines(&mut m);
    }
    let families = [
        ("egress_waiting", "gauge", "Calls waiting for quota now.", &m.waiting),
        ("egress_waited_total", "counter", "Calls that waited for quota (granted or not).", &m.waited),
        ("egress_refused_total", "counter", "Calls Seawall refused (429 egress_quota, 503 egress_no_key).", &m.refused),
        ("egress_spilled_total", "counter", "Calls sent to this provider because earlier ones had no quota left.", &m.spilled),
        ("egress_fallbacks_total", "counter", "Calls sent to this provider after an earlier one failed them.", &m.fell_back),
        ("egress_failures_total", "counter", "Attempts that failed at this provider: breaker open, gate full, no connection, TLS, timeout, 5xx.", &m.failures),
        ("egress_calls_total", "counter", "Calls sent with this key.", &m.calls),
        ("egress_throttled_total", "counter", "Answers 429 to this key (the key rested).", &m.throttled),
        ("egress_key_refused_total", "counter", "Answers 401/403 to this key.", &m.refused_keys),
        ("egress_quota_left", "gauge", "Calls this key may still make in the current period (and today).", &m.quota_left),
        ("egress_key_parked", "gauge", "1 while the key rests after a 429.", &m.parked),
        ("egress_key_disabled", "gauge", "1 once the provider refused the key (401/403) and accepted another for the same request.", &m.disabled),
    ];
    for (name, kind, help, lines) in families {
        let _ = writeln!(out, "# HELP seawall_{name} {help}\n# TYPE seawall_{name} {kind}");
        out.push_str(lines);
    }
}

pub(crate) use line::{acquire, Acquired};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_short_and_stable() {
        assert_eq!(fingerprint("secret"), fingerprint("secret"));
        assert_ne!(fingerprint("secret"), fingerprint("secret2"));
        assert_eq!(fingerprint("abc").len(), 8);
        // SHA-256("abc") starts ba7816bf.
        assert_eq!(fingerprint("abc"), "ba7816bf");
    }
}
