//! An upstream group's circuit breaker on the request path (the state machine is
//! [`seawall_core::breaker`]): a request asks it before it touches the upstream and gets a
//! [`Ticket`] or a `circuit_open` refusal; the ticket reports how the call went — a 5xx answer,
//! a failed connection, a timeout or a broken exchange count as failures, a slow answer may too —
//! or, dropped without a report (the client left), gives a probe's place back. Transitions are
//! logged and counted.

use std::sync::Arc;
use std::time::Instant;

use seawall_config::BreakerPolicy;
use seawall_core::breaker::{Admission, Breaker, Forced, Mode, Transition, View};

use crate::metrics::Counter;
use crate::problem::{Reason, Refusal};

/// Transitions counted, by the state entered.
pub struct BreakerCounters {
    pub opened: Counter,
    pub half_opened: Counter,
    pub closed: Counter,
    /// Requests refused because the breaker was open.
    pub refused: Counter,
}

/// A group's breaker and its counters; both outlive reloads that keep the upstream's name.
pub struct GroupBreaker {
    upstream: String,
    breaker: Breaker,
    pub counters: Arc<BreakerCounters>,
}

impl GroupBreaker {
    /// The breaker of upstream `upstream` under `policy`, keeping the state of `previous`.
    pub fn new(
        upstream: &str,
        policy: BreakerPolicy,
        previous: Option<&GroupBreaker>,
        shards: usize,
    ) -> GroupBreaker {
        let (breaker, counters) = match previous {
            Some(p) => (p.breaker.carried_over(policy), Arc::clone(&p.counters)),
            None => {
                let counters = BreakerCounters {
                    opened: Counter::new(shards),
                    half_opened: Counter::new(shards),
                    closed: Counter::new(shards),
                    refused: Counter::new(shards),
                };
                (Breaker::new(policy), Arc::new(counters))
            }
        };
        GroupBreaker { upstream: upstream.to_string(), breaker, counters }
    }

    /// Lets a call through (with the ticket that reports its outcome) or refuses it.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Ticket, Refusal> {
        let now_ms = seawall_core::clock::ms_at(now);
        let (admission, transition) = self.breaker.admit(now_ms);
        self.note(transition);
        let probe = match admission {
            Admission::Pass => false,
            Admission::Probe => true,
            Admission::Refuse { retry_after_ms } => {
                self.counters.refused.add(1);
                let detail = format!("the circuit breaker of upstream {:?} is open", self.upstream);
                let mut refusal = Refusal::new(Reason::CircuitOpen, detail);
                let seconds = retry_after_ms.div_ceil(1000).max(1);
                refusal.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
                return Err(refusal);
            }
        };
        Ok(Ticket { breaker: Arc::clone(self), probe, start: now, done: false })
    }

    /// Sets what an operator wants.
    pub fn force(&self, forced: Forced) {
        self.breaker.force(forced, seawall_core::clock::now_ms());
        tracing::warn!(upstream = %self.upstream, state = forced.as_str(), "circuit breaker set by an operator");
    }

    /// The state now.
    pub fn view(&self) -> View {
        self.breaker.view(seawall_core::clock::now_ms())
    }

    fn note(&self, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        match transition {
            Transition::Opened { for_ms } => {
                self.counters.opened.add(1);
                tracing::warn!(upstream = %self.upstream, seconds = for_ms as f64 / 1000.0, "circuit breaker opened");
            }
            Transition::HalfOpened => {
                self.counters.half_opened.add(1);
                tracing::info!(upstream = %self.upstream, "circuit breaker half-open: probing");
            }
            Transition::Closed => {
                self.counters.closed.add(1);
                tracing::info!(upstream = %self.upstream, "circuit breaker closed");
            }
        }
    }
}

/// One call let through the breaker. Report its outcome with [`Ticket::finish`]; dropped
/// unreported, it counts for nothing (and a probe's place is given back).
pub struct Ticket {
    breaker: Arc<GroupBreaker>,
    probe: bool,
    start: Instant,
    done: bool,
}

impl Ticket {
    /// The call really starts now (after a wait that is not the upstream's doing).
    pub fn restart(&mut self, now: Instant) {
        self.start = now;
    }

    /// The call ended: `failed` (a 5xx, or no answer) at `now`.
    pub fn finish(mut self, failed: bool, now: Instant) {
        self.done = true;
        let took = now.saturating_duration_since(self.start);
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let now_ms = seawall_core::clock::ms_at(now);
        let transition = self.breaker.breaker.record(now_ms, failed, took_ms, self.probe);
        self.breaker.note(transition);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.breaker.abandon_probe();
        }
    }
}

/// The state as a number for a gauge: 0 closed, 1 open, 2 half-open.
pub fn mode_value(mode: Mode) -> u64 {
    match mode {
        Mode::Closed => 0,
        Mode::Open => 1,
        Mode::HalfOpen => 2,
    }
}
