//! The egress side: the application's calls to third-party APIs, made through Seawall so that
//! they stay under each provider's limits.
//!
//! ```text
//! egress route (server.egress_listen only) ─▶ cache ─▶ call (call.rs):
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

mod call;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use seawall_config::{ApiKey, Egress};
use seawall_core::calls::{CallQuota, Day};
use seawall_core::priority::Priority;

pub(crate) use call::call;

/// One egress group's providers, keys and waiting calls.
pub struct EgressGroup {
    pub config: Egress,
    state: Mutex<GroupState>,
    /// Woken when a waiting call leaves the line or quota is given back.
    wake: tokio::sync::Notify,
}

struct GroupState {
    providers: Vec<ProviderState>,
    /// Calls waiting for quota: by priority, then arrival.
    line: BTreeSet<(Priority, u64)>,
    arrivals: u64,
    counters: GroupCounters,
}

/// What happened to a group's calls, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
struct GroupCounters {
    /// Calls that waited in line for quota.
    waited: u64,
    /// Calls refused 429 `egress_quota`.
    refused_quota: u64,
    /// Calls refused 503 `egress_no_key`.
    refused_no_key: u64,
}

struct ProviderState {
    name: String,
    keys: Vec<KeyState>,
    /// Calls that went to this provider because an earlier one had no quota left.
    spilled: u64,
    /// Calls that went to this provider because an earlier one failed.
    fell_back: u64,
    /// Attempts that failed here (no connection, 5xx, timeout).
    failures: u64,
}

/// One API key (or, for a provider without keys, the provider itself).
struct KeyState {
    /// The environment variable it came from; empty for a provider without keys.
    env: String,
    fingerprint: String,
    quota: CallQuota,
    /// Until when (monotonic ms) it is not used: the provider answered 429.
    parked_until: u64,
    /// The status that disabled it (401/403).
    disabled: Option<u16>,
    calls: u64,
    throttled: u64,
}

/// A call's place: provider and key, and when its quota was taken (to give it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub provider: usize,
    pub key: usize,
    pub at_ms: u64,
    /// The provider is not the first: an earlier one had no quota.
    pub spilled: bool,
}

/// What [`EgressGroup::choose`] found.
enum Choice {
    Go(Grant),
    /// No provider has quota before this time (monotonic ms).
    Wait(u64),
    /// Every key of every provider not avoided is disabled.
    NoKey,
    /// Every provider is avoided (each failed this call).
    AllAvoided,
}

impl EgressGroup {
    /// The group for `config`, keeping the history of `old`'s providers and keys that remain.
    pub fn new(config: Egress, old: Option<&EgressGroup>) -> EgressGroup {
        let mut old_state = old.map(|o| o.lock());
        let providers = config
            .providers
            .iter()
            .map(|p| {
                let old_provider = old_state
                    .as_mut()
                    .and_then(|s| s.providers.iter_mut().find(|o| o.name == p.name));
                let keys: Vec<KeyState> = if p.keys.is_empty() {
                    vec![KeyState::new(None, p)]
                } else {
                    p.keys.iter().map(|k| KeyState::new(Some(k), p)).collect()
                };
                let mut provider = ProviderState {
                    name: p.name.clone(),
                    keys,
                    spilled: 0,
                    fell_back: 0,
                    failures: 0,
                };
                if let Some(old) = old_provider {
                    provider.carry_over(old);
                }
                provider
            })
            .collect();
        let counters = old_state.as_ref().map_or_else(GroupCounters::default, |s| s.counters);
        drop(old_state);
        EgressGroup {
            config,
            state: Mutex::new(GroupState {
                providers,
                line: BTreeSet::new(),
                arrivals: 0,
                counters,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A panic while holding the lock leaves counters, never broken invariants.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first provider (in order, skipping `avoid`) with a key that may be used now, and its
    /// least-used such key — its quota taken.
    fn choose(state: &mut GroupState, now_ms: u64, day: Day, avoid: &[usize]) -> Choice {
        let mut earliest: Option<u64> = None;
        let mut any_key = false;
        let mut any_provider = false;
        for (p, provider) in state.providers.iter_mut().enumerate() {
            if avoid.contains(&p) {
                continue;
            }
            any_provider = true;
            let mut best: Option<(usize, u64)> = None;
            for (k, key) in provider.keys.iter_mut().enumerate() {
                if key.disabled.is_some() {
                    continue;
                }
                any_key = true;
                let at = key.quota.next_at(now_ms, day).max(key.parked_until);
                if at > now_ms {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    continue;
                }
                let used = key.quota.used(now_ms);
                if best.is_none_or(|(_, u)| used < u) {
                    best = Some((k, used));
                }
            }
            if let Some((k, _)) = best {
                let key = &mut provider.keys[k];
                key.quota.take(now_ms, day);
                key.calls += 1;
                let spilled = p > 0 && (0..p).any(|e| !avoid.contains(&e));
                if spilled {
                    provider.spilled += 1;
                }
                return Choice::Go(Grant { provider: p, key: k, at_ms: now_ms, spilled });
            }
        }
        match earliest {
            Some(at) => Choice::Wait(at),
            None if !any_provider => Choice::AllAvoided,
            None if !any_key => Choice::NoKey,
            // Unreachable in practice: a usable key either goes or has a time.
            None => Choice::Wait(now_ms + 1),
        }
    }

    /// Gives back the quota of a call that was never sent.
    pub(crate) fn give_back(&self, grant: Grant) {
        let mut state = self.lock();
        if let Some(key) =
            state.providers.get_mut(grant.provider).and_then(|p| p.keys.get_mut(grant.key))
        {
            key.quota.give_back(grant.at_ms);
            key.calls = key.calls.saturating_sub(1);
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// The provider answered 429 with this key: it rests until `until_ms`.
    pub(crate) fn park(&self, grant: Grant, until_ms: u64) {
        let mut state = self.lock();
        if let Some(key) =
            state.providers.get_mut(grant.provider).and_then(|p| p.keys.get_mut(grant.key))
        {
            key.parked_until = key.parked_until.max(until_ms);
            key.throttled += 1;
        }
    }

    /// The provider refused the key itself (401/403): it is not used again until a reload
    /// brings a new value (or a restart). Returns its name and fingerprint for the log.
    pub(crate) fn disable(&self, grant: Grant, status: u16) -> Option<(String, String)> {
        let mut state = self.lock();
        let key = state.providers.get_mut(grant.provider)?.keys.get_mut(grant.key)?;
        if key.env.is_empty() {
            // A provider without keys: nothing to disable, the answer goes to the caller.
            return None;
        }
        key.disabled = Some(status);
        Some((key.env.clone(), key.fingerprint.clone()))
    }

    /// Counts an attempt that failed at a provider, and a call sent on after an earlier one.
    pub(crate) fn failed(&self, provider: usize) {
        if let Some(p) = self.lock().providers.get_mut(provider) {
            p.failures += 1;
        }
    }

    pub(crate) fn fell_back(&self, provider: usize) {
        if let Some(p) = self.lock().providers.get_mut(provider) {
            p.fell_back += 1;
        }
    }

    /// Counts a call Seawall refused itself.
    pub(crate) fn count_refusal(&self, reason: crate::problem::Reason) {
        let mut state = self.lock();
        match reason {
            crate::problem::Reason::EgressQuota => state.counters.refused_quota += 1,
            crate::problem::Reason::EgressNoKey => state.counters.refused_no_key += 1,
            _ => {}
        }
    }

    /// The group's state for `/api/v1/state`.
    pub fn state_json(&self) -> serde_json::Value {
        let now = seawall_core::clock::now_ms();
        let day = today();
        let mut state = self.lock();
        let waiting = state.line.len();
        let counters = state.counters;
        let providers: Vec<serde_json::Value> = state
            .providers
            .iter_mut()
            .zip(&self.config.providers)
            .map(|(p, config)| {
                let keys: Vec<serde_json::Value> = p
                    .keys
                    .iter_mut()
                    .map(|k| {
                        serde_json::json!({
                            "env": (!k.env.is_empty()).then_some(&k.env),
                            "fingerprint": (!k.env.is_empty()).then_some(&k.fingerprint),
                            "used": k.quota.used(now),
                            "used_today": k.quota.used_today(day),
                            "quota_left": k.quota.left(now, day),
                            "parked_ms": k.parked_until.saturating_sub(now),
                            "disabled_by": k.disabled,
                            "calls": k.calls,
                            "throttled": k.throttled,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": p.name,
                    "url": config.url,
                    "rate": config.rate.map(|q| format!("{}/{:?}", q.count, Duration::from_nanos(q.period_ns))),
                    "daily_quota": config.daily_quota,
                    "spilled": p.spilled,
                    "fell_back": p.fell_back,
                    "failures": p.failures,
                    "keys": keys,
                })
            })
            .collect();
        serde_json::json!({
            "name": self.config.name,
            "max_wait_ms": self.config.max_wait.as_millis() as u64,
            "waiting": waiting,
            "waited": counters.waited,
            "refused_quota": counters.refused_quota,
            "refused_no_key": counters.refused_no_key,
            "providers": providers,
        })
    }

    /// The group's lines for `/metrics` (the HELP and TYPE lines are written once by
    /// [`metrics`]).
    fn metric_lines(&self, m: &mut MetricLines) {
        let now = seawall_core::clock::now_ms();
        let day = today();
        let group = crate::metrics::escape(&self.config.name);
        let mut state = self.lock();
        let g = format!("group=\"{group}\"");
        let _ = writeln!(m.waiting, "seawall_egress_waiting{{{g}}} {}", state.line.len());
        let _ = writeln!(m.waited, "seawall_egress_waited_total{{{g}}} {}", state.counters.waited);
        let refused = [
            ("egress_quota", state.counters.refused_quota),
            ("egress_no_key", state.counters.refused_no_key),
        ];
        for (reason, n) in refused {
            let _ =
                writeln!(m.refused, "seawall_egress_refused_total{{{g},reason=\"{reason}\"}} {n}");
        }
        for p in &mut state.providers {
            let gp = format!("{g},provider=\"{}\"", crate::metrics::escape(&p.name));
            let _ = writeln!(m.spilled, "seawall_egress_spilled_total{{{gp}}} {}", p.spilled);
            let _ = writeln!(m.fell_back, "seawall_egress_fallbacks_total{{{gp}}} {}", p.fell_back);
            let _ = writeln!(m.failures, "seawall_egress_failures_total{{{gp}}} {}", p.failures);
            for k in &mut p.keys {
                let gpk = if k.env.is_empty() {
                    format!("{gp},key=\"\"")
                } else {
                    format!(
                        "{gp},key=\"{}\",key_env=\"{}\"",
                        k.fingerprint,
                        crate::metrics::escape(&k.env)
                    )
                };
                let _ = writeln!(m.calls, "seawall_egress_calls_total{{{gpk}}} {}", k.calls);
                let _ = writeln!(
                    m.throttled,
                    "seawall_egress_throttled_total{{{gpk}}} {}",
                    k.throttled
                );
                if let Some(left) = k.quota.left(now, day) {
                    let _ = writeln!(m.quota_left, "seawall_egress_quota_left{{{gpk}}} {left}");
                }
                let parked = u8::from(k.parked_until > now);
                let _ = writeln!(m.parked, "seawall_egress_key_parked{{{gpk}}} {parked}");
                let disabled = u8::from(k.disabled.is_some());
                let _ = writeln!(m.disabled, "seawall_egress_key_disabled{{{gpk}}} {disabled}");
            }
        }
    }
}

impl ProviderState {
    /// Keeps the history of the keys that remain (same variable, same value).
    fn carry_over(&mut self, old: &ProviderState) {
        (self.spilled, self.fell_back, self.failures) = (old.spilled, old.fell_back, old.failures);
        for key in &mut self.keys {
            let same =
                old.keys.iter().find(|o| o.env == key.env && o.fingerprint == key.fingerprint);
            if let Some(o) = same {
                key.quota.carry_over(&o.quota);
                key.parked_until = o.parked_until;
                key.disabled = o.disabled;
                (key.calls, key.throttled) = (o.calls, o.throttled);
            }
        }
    }
}

impl KeyState {
    fn new(key: Option<&ApiKey>, provider: &seawall_config::Provider) -> KeyState {
        KeyState {
            env: key.map(|k| k.env.clone()).unwrap_or_default(),
            fingerprint: key.map(|k| fingerprint(&k.value)).unwrap_or_default(),
            quota: CallQuota::new(provider.rate.map(with_margin), provider.daily_quota),
            parked_until: 0,
            disabled: None,
            calls: 0,
            throttled: 0,
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
        ("egress_waited_total", "counter", "Calls that waited for quota.", &m.waited),
        (
            "egress_refused_total",
            "counter",
            "Calls Seawall refused (429 egress_quota, 503 egress_no_key).",
            &m.refused,
        ),
        (
            "egress_spilled_total",
            "counter",
            "Calls sent to this provider because an earlier one had no quota left.",
            &m.spilled,
        ),
        (
            "egress_fallbacks_total",
            "counter",
            "Calls sent to this provider after an earlier one failed.",
            &m.fell_back,
        ),
        (
            "egress_failures_total",
            "counter",
            "Attempts that failed at this provider (no connection, TLS, 5xx, timeout).",
            &m.failures,
        ),
        ("egress_calls_total", "counter", "Calls sent with this key.", &m.calls),
        (
            "egress_throttled_total",
            "counter",
            "Answers 429 to this key (the key was parked).",
            &m.throttled,
        ),
        (
            "egress_quota_left",
            "gauge",
            "Calls this key may still make in the current period (and today).",
            &m.quota_left,
        ),
        ("egress_key_parked", "gauge", "1 while the key rests after a 429.", &m.parked),
        (
            "egress_key_disabled",
            "gauge",
            "1 once the provider refused the key (401/403).",
            &m.disabled,
        ),
    ];
    for (name, kind, help, lines) in families {
        let _ = writeln!(out, "# HELP seawall_{name} {help}\n# TYPE seawall_{name} {kind}");
        out.push_str(lines);
    }
}

/// Waits in `group`'s line (by `priority`) for quota until `deadline`; the chosen grant, or why
/// there is none. Leaving the line (a grant, a timeout, a client that left: the future is
/// dropped) wakes the others.
pub(crate) async fn acquire(
    group: &EgressGroup,
    priority: Priority,
    deadline: tokio::time::Instant,
    avoid: &[usize],
) -> Acquired {
    let mut place: Option<Place<'_>> = None;
    let mut waited = false;
    loop {
        let notified = group.wake.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let now = tokio::time::Instant::now();
        let now_ms = seawall_core::clock::ms_at(now.into_std());
        let next = {
            let mut state = group.lock();
            let first = state.line.first().copied();
            let mine = place.as_ref().map(|p| p.key);
            let ahead = match (first, mine) {
                (None, _) => true,
                (Some(first), Some(mine)) => first == mine,
                // A newcomer goes first only when it outranks everyone in line.
                (Some(first), None) => priority < first.0,
            };
            let next = if ahead {
                match EgressGroup::choose(&mut state, now_ms, today(), avoid) {
                    Choice::Go(grant) => {
                        drop(state);
                        drop(place);
                        if waited {
                            group.lock().counters.waited += 1;
                        }
                        return Acquired::Grant(grant);
                    }
                    Choice::Wait(at) => Some(at),
                    Choice::NoKey => {
                        drop(state);
                        return Acquired::NoKey;
                    }
                    Choice::AllAvoided => {
                        drop(state);
                        return Acquired::AllAvoided;
                    }
                }
            } else {
                None
            };
            if place.is_none() {
                state.arrivals += 1;
                let key = (priority, state.arrivals);
                state.line.insert(key);
                place = Some(Place { group, key });
            }
            next
        };
        let next_instant = next.map(|at| now + Duration::from_millis(at.saturating_sub(now_ms)));
        if next_instant.is_some_and(|at| at > deadline) || now >= deadline {
            let until = next_instant.unwrap_or_else(|| earliest(group, now, now_ms));
            return Acquired::Quota { retry_after: until.saturating_duration_since(now) };
        }
        waited = true;
        let wake_at = next_instant.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// When quota comes back at the earliest, for a call that leaves the line without it.
fn earliest(group: &EgressGroup, now: tokio::time::Instant, now_ms: u64) -> tokio::time::Instant {
    let day = today();
    let mut state = group.lock();
    let at = state
        .providers
        .iter_mut()
        .flat_map(|p| p.keys.iter_mut())
        .filter(|k| k.disabled.is_none())
        .map(|k| k.quota.next_at(now_ms, day).max(k.parked_until))
        .min()
        .unwrap_or(now_ms);
    now + Duration::from_millis(at.saturating_sub(now_ms))
}

/// What waiting for quota came to.
pub(crate) enum Acquired {
    Grant(Grant),
    /// None before the deadline; quota comes back after this long.
    Quota {
        retry_after: Duration,
    },
    NoKey,
    AllAvoided,
}

/// A call's place in its group's line; leaving it wakes the others.
struct Place<'a> {
    group: &'a EgressGroup,
    key: (Priority, u64),
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.group.lock().line.remove(&self.key);
        self.group.wake.notify_waiters();
    }
}

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
