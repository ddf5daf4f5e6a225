//! The overload controller: every `overload.sample_interval` it samples the gateway's signals
//! (CPU, memory) and decides its level, and for every upstream gate the time requests waited for
//! it (its own wait level) and its adaptive limit, from what the gate measured since the last
//! sample. Runs on the control plane; the request path only reads what it stores.

use std::cmp::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use seawall_config::{CpuSignal, Overload as Settings};
use seawall_core::adaptive::Window;
use seawall_core::overload::{LevelControl, Thresholds};

use crate::overload::signals::{resident_bytes, Cgroup, CpuMeter};
use crate::overload::{Readings, ShedCause};
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// How much of each new CPU or wait reading goes into the smoothed value (the rest is the old
/// value): a lone busy sample does not shed, a sustained one does within a few samples.
const SMOOTHING: f64 = 0.4;

/// A gate's serving rate is learnt from windows that gave at least this many slots.
const MIN_SERVED: u64 = 10;

/// A window for the adaptive limit is cut after this long even with too few answers to learn
/// from (they are dropped: an origin this quiet gives nothing to go on).
const MAX_WINDOW_MS: u64 = 5_000;

/// The controller's memory between samples.
pub struct Controller {
    cpu: CpuMeter,
    cgroup_memory: Option<u64>,
    smoothed_cpu: f64,
    levels: LevelControl,
    last_admitted: u64,
    serving_per_second: f64,
    last: Instant,
    /// How far the memory guard has shrunk the cache: 0 not, 1 to half (past `memory_soft`), 2 to
    /// a quarter (past `memory_hard`).
    cache_shrunk: u8,
}

impl Controller {
    pub fn new(settings: &Settings) -> Controller {
        let cgroup = Cgroup::find();
        Controller {
            cgroup_memory: cgroup.memory_limit(),
            cpu: CpuMeter::new(cgroup),
            smoothed_cpu: 0.0,
            levels: level_control(settings),
            last_admitted: 0,
            serving_per_second: 0.0,
            last: Instant::now(),
            cache_shrunk: 0,
        }
    }

    /// The memory guard's hold on the cache: past `memory_soft` it keeps half of `cache.memory`,
    /// past `memory_hard` a quarter, and gives it back once memory is `hysteresis` under the
    /// threshold that shrank it.
    fn guard_cache(&mut self, snapshot: &Snapshot, share: f64) {
        let settings = &snapshot.config.overload;
        let [soft, hard] = settings.memory_at;
        let below = |at: f64| share < at * (1.0 - settings.hysteresis);
        let shrunk = match self.cache_shrunk {
            _ if share >= hard => 2,
            2 if !below(hard) => 2,
            _ if share >= soft => 1,
            s @ 1..=2 if !below(soft) => s.min(1),
            _ => 0,
        };
        if shrunk != self.cache_shrunk {
            tracing::warn!(share, shrunk, "memory guard: cache capacity changed");
        }
        self.cache_shrunk = shrunk;
        let memory = snapshot.config.cache.memory;
        snapshot.cache.set_capacity((memory >> shrunk).max(1 << 20));
    }

    /// One sample: signals, level, adaptive limits.
    pub fn sample(&mut self, snapshot: &Snapshot) {
        let settings = &snapshot.config.overload;
        let overload = &snapshot.overload;
        // The control plane drives the cache's shared layer: it follows the configuration here.
        snapshot.cache.follow_l2(&snapshot.config.cache);
        let dwell_ms = seawall_core::clock::duration_ms(settings.min_dwell);
        self.levels.set_settings(dwell_ms, settings.hysteresis);
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        let admitted = overload.admitted.get();
        let rate = admitted.saturating_sub(self.last_admitted) as f64 / elapsed;
        self.last_admitted = admitted;
        // The serving rate level 3 holds P0 to is the one before it began.
        if overload.level() < 3 {
            self.serving_per_second = rate;
        }
        let readings = &overload.readings;
        let mut signals: Vec<(f64, Thresholds, ShedCause)> = Vec::with_capacity(4);
        if let Some(shares) = self.cpu.sample() {
            Readings::set(&readings.cpu_process, shares.process);
            if let Some(host) = shares.host {
                Readings::set(&readings.cpu_host, host);
            }
            let value = match settings.cpu {
                CpuSignal::Process => Some(shares.process),
                CpuSignal::Host => shares.host,
                CpuSignal::Max => {
                    Some(shares.host.map_or(shares.process, |h| h.max(shares.process)))
                }
                CpuSignal::Off => None,
            };
            if let Some(v) = value {
                self.smoothed_cpu = smooth(self.smoothed_cpu, v);
                signals.push((self.smoothed_cpu, Thresholds(settings.cpu_at), ShedCause::Cpu));
            }
        }
        if let Some(rss) = resident_bytes() {
            Readings::set(&readings.resident_bytes, rss as f64);
            if let Some(budget) = settings.memory_budget.or(self.cgroup_memory) {
                let share = rss as f64 / budget as f64;
                Readings::set(&readings.memory, share);
                let [soft, hard] = settings.memory_at;
                signals.push((share, Thresholds([soft, hard, f64::INFINITY]), ShedCause::Memory));
                self.guard_cache(snapshot, share);
            }
        }
        overload.set_upstream_level(adapt(snapshot, settings, now, elapsed));
        let now_ms = seawall_core::clock::ms_at(now);
        let pairs: Vec<(f64, Thresholds)> = signals.iter().map(|(v, t, _)| (*v, *t)).collect();
        let level = if settings.enabled {
            self.levels.observe(now_ms, &pairs)
        } else {
            self.levels.reset();
            0
        };
        // The cause shown is the signal asking for the most; while only hysteresis or the dwell
        // time holds the level, it stays what it was.
        let strongest = signals.iter().max_by(|a, b| ask(a).cmp(&ask(b)).then(Ordering::Greater));
        let cause = match strongest {
            Some(s) if ask(s) > 0 => s.2,
            _ => overload.cause(),
        };
        if level != overload.level() {
            tracing::warn!(level, cause = cause.as_str(), "overload level changed");
        }
        overload.set_level(level, cause, self.serving_per_second);
        readings.samples.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn smooth(old: f64, new: f64) -> f64 {
    SMOOTHING * new + (1.0 - SMOOTHING) * old
}

/// The level a signal asks for right now.
fn ask(signal: &(f64, Thresholds, ShedCause)) -> usize {
    signal.1 .0.iter().filter(|&&at| signal.0 >= at).count()
}

fn level_control(settings: &Settings) -> LevelControl {
    LevelControl::new(seawall_core::clock::duration_ms(settings.min_dwell), settings.hysteresis)
}

/// Moves each gate's adaptive limit by what it measured, bounds how many may wait ahead of
/// anyone by what it serves within `max_wait`, and sets its wait level: requests of a class
/// waiting half of `max_wait` on average shed every less important class *of that upstream*
/// (P1 waiting: P2; P0 waiting: P1 too). Returns the highest wait level.
fn adapt(snapshot: &Snapshot, settings: &Settings, now: Instant, elapsed: f64) -> u8 {
    let now_ms = seawall_core::clock::ms_at(now);
    let half = settings.max_wait.as_secs_f64() / 2.0;
    let dwell_ms = seawall_core::clock::duration_ms(settings.min_dwell);
    let mut worst = 0;
    for group in &snapshot.upstreams {
        let Some(gate) = &group.gate else { continue };
        let totals = gate.totals();
        let mut learning = gate.learning.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = learning.seen;
        learning.seen = totals;
        let delta = |now: &[u64; 3], was: &[u64; 3], c: usize| now[c].saturating_sub(was[c]);
        let served: u64 = (0..3).map(|c| delta(&totals.granted, &seen.granted, c)).sum();
        if served >= MIN_SERVED {
            let rate = served as f64 / elapsed;
            // A rise is taken at once (the first window, while clients connect, or a limit
            // still doubling, would otherwise turn requests away for seconds); a fall slowly.
            let smoothed = match learning.served_per_second {
                Some(r) if rate < r => 0.7 * r + 0.3 * rate,
                _ => rate,
            };
            learning.served_per_second = Some(smoothed);
        }
        for class in 0..2 {
            let left = delta(&totals.granted, &seen.granted, class)
                + delta(&totals.gave_up, &seen.gave_up, class);
            let waited = delta(&totals.waited_us, &seen.waited_us, class);
            let mean = if left == 0 { 0.0 } else { waited as f64 / left as f64 / 1e6 };
            learning.waits[class] = smooth(learning.waits[class], mean);
        }
        let [p0, p1] = learning.waits;
        learning.levels.set_settings(dwell_ms, settings.hysteresis);
        let signals = [
            (p1, Thresholds([half, f64::INFINITY, f64::INFINITY])),
            (p0, Thresholds([half, half, f64::INFINITY])),
        ];
        let level = if settings.enabled {
            learning.levels.observe(now_ms, &signals)
        } else {
            learning.levels.reset();
            0
        };
        if level != gate.level() {
            let upstream = group.config.name.as_str();
            tracing::warn!(upstream, level, "upstream wait level changed");
        }
        gate.set_level(level);
        worst = worst.max(level);
        // A window too thin to learn from keeps growing until it is not.
        let window = gate.window(&totals, &seen, (elapsed * 1e3) as u64);
        learning.pending.add(window);
        let pending = learning.pending;
        let ripe = pending.is_enough() || pending.elapsed_ms >= MAX_WINDOW_MS;
        if ripe {
            learning.pending = Window::default();
        }
        let limit = match learning.adaptive.as_mut() {
            Some(adaptive) if settings.enabled && ripe => adaptive.update(now_ms, pending),
            Some(adaptive) if settings.enabled => adaptive.limit(),
            _ => gate.limits.max_concurrency,
        };
        // Until the group has served enough to tell its rate, nobody is turned away for it.
        let max_ahead = match learning.served_per_second {
            Some(rate) if settings.enabled => {
                ((rate * settings.max_wait.as_secs_f64()).ceil() as usize).max(limit)
            }
            _ => usize::MAX,
        };
        gate.set_limit(limit, max_ahead);
    }
    worst
}

/// Samples until the process ends (the task is dropped with the control runtime). A sample that
/// panics is logged and the next one starts afresh: overload control never stops silently.
pub async fn run(shared: Arc<Shared>) {
    let mut controller = Controller::new(&shared.snapshot.load().config.overload);
    loop {
        let interval = shared.snapshot.load().config.overload.sample_interval;
        tokio::time::sleep(interval).await;
        let snapshot = shared.snapshot.load_full();
        let sampled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            controller.sample(&snapshot);
        }));
        if sampled.is_err() {
            tracing::error!("an overload sample failed; starting the controller again");
            controller = Controller::new(&snapshot.config.overload);
        }
    }
}
