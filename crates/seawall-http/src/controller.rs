//! The overload controller: every `overload.sample_interval` it samples the signals (CPU, memory,
//! the time requests waited for their upstreams), decides the level, and moves every upstream
//! gate's adaptive limit by what the gate measured since the last sample. Runs on the control
//! plane; the request path only reads what it stores.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use seawall_config::{CpuSignal, Overload as Settings};
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

/// The controller's memory between samples.
pub struct Controller {
    cpu: CpuMeter,
    cgroup_memory: Option<u64>,
    smoothed_cpu: f64,
    /// The mean waits of P0 and P1 requests for a slot, smoothed.
    smoothed_wait: [f64; 2],
    levels: LevelControl,
    /// The settings `levels` was made with.
    made_with: (Duration, f64),
    last_admitted: u64,
    serving_per_second: f64,
    last: Instant,
}

impl Controller {
    pub fn new(settings: &Settings) -> Controller {
        let cgroup = Cgroup::find();
        Controller {
            cgroup_memory: cgroup.memory_limit(),
            cpu: CpuMeter::new(cgroup),
            smoothed_cpu: 0.0,
            smoothed_wait: [0.0; 2],
            levels: level_control(settings),
            made_with: (settings.min_dwell, settings.hysteresis),
            last_admitted: 0,
            serving_per_second: 0.0,
            last: Instant::now(),
        }
    }

    /// One sample: signals, level, adaptive limits.
    pub fn sample(&mut self, snapshot: &Snapshot) {
        let settings = &snapshot.config.overload;
        let overload = &snapshot.overload;
        if (settings.min_dwell, settings.hysteresis) != self.made_with {
            self.levels = level_control(settings);
            self.made_with = (settings.min_dwell, settings.hysteresis);
        }
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
            }
        }
        let measured = adapt(snapshot, settings, now, elapsed);
        let waits = [0, 1].map(|c| smooth(self.smoothed_wait[c], measured[c]));
        self.smoothed_wait = waits;
        Readings::set(&readings.wait_p0_seconds, waits[0]);
        Readings::set(&readings.wait_p1_seconds, waits[1]);
        // A class waiting half of max_wait on average sheds every less important class.
        let half = settings.max_wait.as_secs_f64() / 2.0;
        signals.push((waits[1], Thresholds([half, f64::INFINITY, f64::INFINITY]), ShedCause::Wait));
        signals.push((waits[0], Thresholds([half, half, f64::INFINITY]), ShedCause::Wait));
        let now_ms = seawall_core::clock::ms_at(now);
        let pairs: Vec<(f64, Thresholds)> = signals.iter().map(|(v, t, _)| (*v, *t)).collect();
        let level = if settings.enabled { self.levels.observe(now_ms, &pairs) } else { 0 };
        // The cause shown is the signal asking for the most (the first of equals).
        let cause = signals
            .iter()
            .max_by(|a, b| ask(a).cmp(&ask(b)).then(std::cmp::Ordering::Greater))
            .map_or(ShedCause::Cpu, |s| s.2);
        if level != overload.level() {
            tracing::warn!(level, cause = cause.as_str(), "overload level changed");
        }
        overload.set_level(level, cause, self.serving_per_second);
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

/// Moves each gate's adaptive limit by its last window and bounds how many may wait ahead of
/// anyone by what it serves within `max_wait`; returns the mean time P0 and P1 requests waited
/// for a slot, over every gate (seconds).
fn adapt(snapshot: &Snapshot, settings: &Settings, now: Instant, elapsed: f64) -> [f64; 2] {
    let now_ms = seawall_core::clock::ms_at(now);
    let (mut granted, mut waited_us) = ([0u64; 3], [0u64; 3]);
    for group in &snapshot.upstreams {
        let Some(gate) = &group.gate else { continue };
        let totals = gate.totals();
        let mut learning = gate.learning.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = learning.seen;
        for class in 0..3 {
            granted[class] += totals.granted[class].saturating_sub(seen.granted[class]);
            waited_us[class] += totals.waited_us[class].saturating_sub(seen.waited_us[class]);
        }
        let window = gate.window(&totals, &seen, (elapsed * 1e3) as u64);
        let served: u64 = (0..3).map(|c| totals.granted[c].saturating_sub(seen.granted[c])).sum();
        if served >= MIN_SERVED {
            let rate = served as f64 / elapsed;
            let smoothed = learning.served_per_second.map_or(rate, |r| 0.7 * r + 0.3 * rate);
            learning.served_per_second = Some(smoothed);
        }
        learning.seen = totals;
        let limit = match learning.adaptive.as_mut() {
            Some(adaptive) if settings.enabled => adaptive.update(now_ms, window),
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
    let mean = |c: usize| {
        if granted[c] == 0 {
            0.0
        } else {
            waited_us[c] as f64 / granted[c] as f64 / 1e6
        }
    };
    [mean(0), mean(1)]
}

/// Samples until the process ends (the task is dropped with the control runtime).
pub async fn run(shared: Arc<Shared>) {
    let mut controller = Controller::new(&shared.snapshot.load().config.overload);
    loop {
        let interval = shared.snapshot.load().config.overload.sample_interval;
        tokio::time::sleep(interval).await;
        let snapshot = shared.snapshot.load_full();
        controller.sample(&snapshot);
    }
}
