//! An adaptive limit on the requests in flight to one upstream group, found from its latency:
//! the origin is kept at the concurrency where it still answers about as fast as when idle.
//!
//! Once per sample window the owner reports what it measured ([`Window`]: the mean time to an
//! answer, and whether the limit held requests back). Against a *baseline* — the lowest mean
//! seen, the origin's no-load latency — the limit
//!
//! - falls (by the gradient `good / latency`, at most by half) when the latency passes the good
//!   latency `tolerance × baseline + slack`, or passes `max_latency` whatever the baseline says;
//!   and never stays above what the origin served in the window times that good latency (Little's
//!   law: the concurrency the origin holds without queueing), so a flood is cut in one window;
//! - grows only when the limit was what held requests back and the latency is fine — doubling
//!   until the first sign of a full origin, by √limit after — so neither a quiet origin nor a
//!   sustained overload makes it creep upwards;
//! - stays within `min..=max`.
//!
//! A cut has to show: once the answers to requests sent before it have drained (twice the
//! latency), a queue inside the origin answers faster in proportion to the requests it holds.
//! When the requests in flight fell by a quarter or more and the latency hardly moved, the latency
//! is not the origin's queue — a gateway too busy to read answers on time, a dependency that got
//! slower whatever the load — and holding requests back would only cost throughput: the latency
//! seen becomes the baseline and the limit goes back to where it was.
//!
//! A latency under the baseline becomes the baseline only when two windows in a row show it. The
//! baseline could drift in a long incident (an origin that became slower for good would look
//! overloaded forever, one that recovered would keep an outdated floor). Every `probe_every` the
//! limit drops to `limit / (2 × tolerance)` — under the origin's own concurrency, so nothing queues
//! inside it — and, once the answers to requests sent before have drained (twice the latency),
//! what the origin answers becomes the baseline.

/// How an [`AdaptiveLimit`] behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The limit never falls below this (at least 1).
    pub min: usize,
    /// Nor rises above this.
    pub max: usize,
    /// Where it starts.
    pub initial: usize,
    /// How many times the baseline latency is still good (above 1; 2.0 lets the origin queue about
    /// as much as it serves).
    pub tolerance: f64,
    /// Added to `tolerance × baseline`, in µs: a rise nobody would notice (a fraction of a
    /// millisecond on a busy machine) is not a full origin.
    pub slack_us: u64,
    /// A latency, in µs, above which the limit falls whatever the baseline (0: none).
    pub max_latency_us: u64,
    /// How often the baseline is measured again, in ms.
    pub probe_every_ms: u64,
}

/// What one sample window measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Answers received and the sum of their latencies (µs).
    pub answers: u64,
    pub latency_sum_us: u64,
    /// The lowest latency among them (µs), when known: what the limit compares. A queue inside
    /// the origin delays every answer; a busy moment of the gateway's own (its threads late to
    /// read an answer) delays only some — the lowest stays near the origin's own latency.
    pub min_latency_us: Option<u64>,
    /// Whether a request found the limit reached.
    pub limited: bool,
    /// How long the window lasted, in ms.
    pub elapsed_ms: u64,
    /// Requests in flight (slots held) during the window, on average.
    pub inflight: f64,
}

impl Window {
    /// The latency the limit compares: the lowest of the window's answers (their mean when the
    /// lowest is not known), when there are enough to tell.
    pub fn latency_us(&self) -> Option<f64> {
        let mean = || self.latency_sum_us as f64 / self.answers as f64;
        (self.answers >= MIN_ANSWERS).then(|| self.min_latency_us.map_or_else(mean, |m| m as f64))
    }

    /// Whether it holds enough answers to learn from.
    pub fn is_enough(&self) -> bool {
        self.answers >= MIN_ANSWERS
    }

    /// Extends the window by `later` (a window too thin to learn from keeps growing).
    pub fn add(&mut self, later: Window) {
        let (a, b) = (self.elapsed_ms as f64, later.elapsed_ms as f64);
        self.inflight = if a + b > 0.0 {
            (self.inflight * a + later.inflight * b) / (a + b)
        } else {
            later.inflight
        };
        self.answers += later.answers;
        self.latency_sum_us += later.latency_sum_us;
        self.min_latency_us = match (self.min_latency_us, later.min_latency_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.limited |= later.limited;
        self.elapsed_ms += later.elapsed_ms;
    }
}

/// The first baseline is measured again this soon (ms).
const FIRST_PROBE_MS: u64 = 2_000;

/// Fewer answers than this in a window teach nothing.
const MIN_ANSWERS: u64 = 5;

/// The limit of one upstream group.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    settings: Settings,
    limit: f64,
    /// The no-load latency (µs) and when it is due to be measured again (ms).
    baseline: Option<(f64, u64)>,
    /// A probe under way.
    probing: Option<Probe>,
    /// A latency below the baseline, seen once: a second window below makes it the baseline.
    lower: Option<f64>,
    /// Doubling while nothing has said the origin is full (like TCP's slow start).
    slow_start: bool,
    /// A cut whose effect is still to be seen.
    cut: Option<Cut>,
    /// Cuts undone because the latency did not follow them.
    undone: u64,
}

impl AdaptiveLimit {
    /// A limit at `settings.initial`.
    pub fn new(settings: Settings) -> AdaptiveLimit {
        let min = settings.min.max(1);
        let settings = Settings {
            min,
            max: settings.max.max(min),
            tolerance: settings.tolerance.max(1.0),
            ..settings
        };
        let limit = settings.initial.clamp(settings.min, settings.max) as f64;
        AdaptiveLimit {
            settings,
            limit,
            baseline: None,
            probing: None,
            lower: None,
            slow_start: true,
            cut: None,
            undone: 0,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit.round() as usize
    }

    /// The no-load latency it compares against, in µs.
    pub fn baseline_us(&self) -> Option<u64> {
        self.baseline.map(|(b, _)| b as u64)
    }

    /// How many cuts were undone because the latency did not follow them (see the module's
    /// documentation).
    pub fn undone_cuts(&self) -> u64 {
        self.undone
    }

    /// Whether this window runs at the lowered, probing limit.
    pub fn probing(&self) -> bool {
        self.probing.is_some()
    }

    /// Takes the window that ended at `now_ms` and returns the new limit. A window with fewer
    /// than 5 answers teaches nothing: its owner should keep adding to it (see [`Window::add`]).
    pub fn update(&mut self, now_ms: u64, window: Window) -> usize {
        let s = self.settings;
        if let Some(probe) = self.probing {
            // Answers to requests sent before the limit came down would read as loaded: the
            // probe measures only once they have had time to drain.
            if now_ms < probe.measure_after_ms {
                return self.limit();
            }
        }
        let Some(latency) = window.latency_us() else { return self.limit() };
        if let Some(probe) = self.probing.take() {
            self.rebaseline(now_ms, latency, probe.restore);
            return self.limit();
        }
        if let Some(cut) = self.cut.filter(|c| now_ms >= c.measure_after_ms) {
            self.cut = None;
            if cut.did_not_show(latency, window.inflight) {
                self.undone += 1;
                self.rebaseline(now_ms, latency, cut.restore);
                return self.limit();
            }
        }
        let baseline = match self.baseline {
            Some((b, due)) if latency >= b => {
                self.lower = None;
                if now_ms >= due {
                    // Low enough to be under the origin's own concurrency even while the limit
                    // overshoots `tolerance ×` it, so nothing queues inside the origin.
                    let settle = (2.0 * latency / 1e3) as u64;
                    self.cut = None;
                    self.probing =
                        Some(Probe { restore: self.limit, measure_after_ms: now_ms + settle });
                    self.limit = (self.limit / (2.0 * s.tolerance)).max(s.min as f64);
                    return self.limit();
                }
                b
            }
            // Lower than the baseline twice in a row: the higher of the two is the new one (one
            // odd window — a burst of cheap requests — does not move it).
            Some((b, due)) => match self.lower.take() {
                Some(previous) => {
                    let lowered = previous.max(latency);
                    self.baseline = Some((lowered, due.max(now_ms + s.probe_every_ms)));
                    lowered
                }
                None => {
                    self.lower = Some(latency);
                    b
                }
            },
            // The first measure is only a baseline: nothing to compare it with yet. Taken at
            // whatever load came first, it is probed again soon rather than at `probe_every`.
            None => {
                self.baseline = Some((latency, now_ms + FIRST_PROBE_MS.min(s.probe_every_ms)));
                return self.limit();
            }
        };
        let too_slow = s.max_latency_us > 0 && latency > s.max_latency_us as f64;
        let good = s.tolerance * baseline + s.slack_us as f64;
        if too_slow || latency > good {
            self.slow_start = false;
            // The check measures from the worst latency of the cuts in a row (the origin may
            // have slowed down since the first).
            let restore = self.cut.map_or(self.limit, |c| c.restore);
            if window.inflight > 0.0 && self.cut.is_none_or(|c| latency > c.latency) {
                self.cut = Some(Cut {
                    restore,
                    latency,
                    inflight: window.inflight,
                    measure_after_ms: now_ms + (2.0 * latency / 1e3) as u64,
                });
            }
            let gradient = if too_slow { 0.8 } else { (good / latency).max(0.5) };
            self.limit *= gradient;
            // Little's law: the requests in flight over the answers' latency is what the origin
            // serves; at the good latency it holds that many × baseline without queueing. No need
            // to halve down to it one window at a time while a flood queues inside the origin.
            // (In flight counts held slots, a streamed body's included, so long answers are not
            // mistaken for a flood.)
            if window.inflight > 0.0 {
                self.limit = self.limit.min(window.inflight * good / latency);
            }
        } else if window.limited && window.elapsed_ms as f64 * 1e3 >= latency {
            // Only once the window lasted an answer's time: the last change has shown its effect.
            let step = if self.slow_start { self.limit } else { self.limit.sqrt().max(1.0) };
            self.limit += step;
        }
        self.limit = self.limit.clamp(s.min as f64, s.max as f64);
        self.limit()
    }

    /// `latency` is what the origin takes now without a queue: the baseline until the next probe,
    /// and the limit goes back to `limit`.
    fn rebaseline(&mut self, now_ms: u64, latency: f64, limit: f64) {
        self.baseline = Some((latency, now_ms + self.settings.probe_every_ms));
        self.lower = None;
        self.cut = None;
        self.limit = limit;
    }
}

/// A cut whose effect is to be seen (see the module's documentation).
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// The limit before it.
    restore: f64,
    /// The latency and the requests in flight that called for it.
    latency: f64,
    inflight: f64,
    /// When the answers seen are to requests sent after it.
    measure_after_ms: u64,
}

impl Cut {
    /// Whether the requests in flight fell by a quarter or more while the latency fell by less
    /// than half of what a queue inside the origin would show (it shrinks in proportion).
    fn did_not_show(&self, latency: f64, inflight: f64) -> bool {
        let fell_to = inflight / self.inflight;
        fell_to <= 0.75 && latency >= self.latency * (1.0 + fell_to) / 2.0
    }
}

/// A probe under way.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The limit to go back to.
    restore: f64,
    /// When the answers seen are to requests sent under the lowered limit.
    measure_after_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        min: 2,
        max: 1_000,
        initial: 100,
        tolerance: 2.0,
        slack_us: 0,
        max_latency_us: 0,
        probe_every_ms: 30_000,
    };

    /// An origin with `slots` workers taking `service_us` each: at concurrency `c` beyond its
    /// slots, requests queue inside it.
    fn origin_latency(slots: usize, service_us: u64, c: usize) -> u64 {
        service_us * (c.max(slots) as u64) / slots as u64
    }

    fn window(latency_us: u64, limited: bool) -> Window {
        Window {
            answers: 50,
            latency_sum_us: latency_us * 50,
            min_latency_us: Some(latency_us),
            limited,
            elapsed_ms: 100,
            inflight: 0.0,
        }
    }

    /// Drives the limit against the modelled origin, always saturated (overload), for `windows`.
    fn drive(
        l: &mut AdaptiveLimit,
        from_ms: u64,
        windows: u64,
        slots: usize,
        service: u64,
    ) -> Vec<usize> {
        (0..windows)
            .map(|i| {
                let c = l.limit();
                let latency = origin_latency(slots, service, c);
                // What the origin answers in 100 ms: all its slots busy, or all the requests.
                let answers = (slots.min(c) as u64 * 100_000 / service).max(1);
                let window = Window {
                    answers,
                    latency_sum_us: latency * answers,
                    min_latency_us: Some(latency),
                    limited: true,
                    elapsed_ms: 100,
                    inflight: c as f64,
                };
                l.update(from_ms + i * 100, window)
            })
            .collect()
    }

    #[test]
    fn settles_near_the_concurrency_where_latency_stays_good() {
        let mut l = AdaptiveLimit::new(Settings { initial: 10, ..SETTINGS });
        let limits = drive(&mut l, 0, 200, 10, 20_000);
        let tail = &limits[100..];
        assert!(tail.iter().all(|&c| (10..=30).contains(&c)), "limits {tail:?}");
        assert_eq!(l.baseline_us(), Some(20_000));
        // Sustained overload does not make it creep upwards.
        assert!(tail[tail.len() - 1] <= 30);
    }

    #[test]
    fn a_cold_start_doubles_up_to_the_origin_without_flooding_it() {
        let mut l = AdaptiveLimit::new(Settings { initial: 20, ..SETTINGS });
        // An origin of 200 slots: a first window for the baseline, then the limit doubles
        // 20 → 40 → … and stops near 2 × 200.
        let limits = drive(&mut l, 0, 30, 200, 20_000);
        assert_eq!(&limits[..4], [20, 40, 80, 160]);
        assert!(limits.iter().all(|&c| c <= 4 * 200), "{limits:?}");
        // At or above the origin's slots but for one window: the early probe (2 s in).
        assert_eq!(limits[10..].iter().filter(|&&c| c < 200).count(), 1, "{limits:?}");
        // An origin of 10 slots, already queueing at the start (so its first latency reads
        // high): one doubling too many, and the limit comes straight down; the early probe
        // (after 2 s) finds the true baseline and the limit settles at `tolerance ×` the slots.
        let mut small = AdaptiveLimit::new(Settings { initial: 20, ..SETTINGS });
        let limits = drive(&mut small, 0, 60, 10, 20_000);
        assert!(limits.iter().all(|&c| c <= 80), "{limits:?}");
        assert!(limits[4..].iter().all(|&c| c <= 50), "{limits:?}");
        assert!(limits[40..].iter().all(|&c| (10..=25).contains(&c)), "{limits:?}");
        assert_eq!(small.baseline_us(), Some(20_000));
    }

    #[test]
    fn falls_fast_when_the_origin_slows_and_follows_a_new_baseline_after_a_probe() {
        let mut l = AdaptiveLimit::new(Settings { initial: 10, probe_every_ms: 5_000, ..SETTINGS });
        drive(&mut l, 0, 50, 10, 20_000);
        let before = l.limit();
        // The origin's service time rises 1.7× for good ("the database got slow").
        let limits = drive(&mut l, 5_000, 400, 10, 34_000);
        let tail = &limits[200..];
        // Settled between the origin's 10 slots and `tolerance ×` them, but for the probes (every
        // 5 s, at a quarter of the limit for two windows: one to drain, one to measure).
        let probes = tail.iter().filter(|&&c| c < 10).count();
        assert!(tail.iter().all(|&c| c <= 30) && probes <= 8, "before {before}, limits {tail:?}");
        assert!(l.baseline_us().unwrap() >= 30_000, "baseline {:?}", l.baseline_us());
    }

    #[test]
    fn does_not_grow_when_the_limit_holds_nothing_back_and_respects_its_bounds() {
        let mut l = AdaptiveLimit::new(SETTINGS);
        for i in 0..100 {
            l.update(i * 100, window(1_000, false));
        }
        assert_eq!(l.limit(), 100);
        for i in 100..400 {
            l.update(i * 100, window(1_000, true));
        }
        assert_eq!(l.limit(), 1_000);
        // A latency past max_latency lowers it even against a baseline that drifted as high.
        let mut capped = AdaptiveLimit::new(Settings { max_latency_us: 50_000, ..SETTINGS });
        for i in 0..100 {
            capped.update(i * 100, window(80_000, true));
        }
        assert_eq!(capped.limit(), 2);
        // Too few answers teach nothing.
        let mut quiet = AdaptiveLimit::new(SETTINGS);
        let lone = Window {
            answers: 1,
            latency_sum_us: 9_000_000,
            min_latency_us: None,
            limited: true,
            elapsed_ms: 100,
            inflight: 1.0,
        };
        quiet.update(0, lone);
        assert_eq!(quiet.limit(), 100);
    }

    #[test]
    fn a_gateway_late_to_read_some_answers_is_not_a_full_origin() {
        // The origin answers in 1 ms; the gateway's own busy threads make the mean 30 ms, but
        // some answers are still read at once: the limit does not fall.
        let mut l = AdaptiveLimit::new(SETTINGS);
        for i in 0..50 {
            let w = Window {
                answers: 50,
                latency_sum_us: 50 * 30_000,
                min_latency_us: Some(1_000),
                limited: true,
                elapsed_ms: 100,
                inflight: 100.0,
            };
            l.update(i * 100, w);
        }
        assert!(l.limit() >= 100, "{}", l.limit());
    }

    #[test]
    fn a_cut_that_does_not_lower_the_latency_is_undone_and_its_latency_becomes_the_baseline() {
        // The origin answers in 50 µs; then every answer is read 8 ms late whatever the requests
        // in flight (the gateway's machine is saturated): one cut, which changes nothing, and the
        // limit is back where it was, 8 ms the new baseline.
        let mut l = AdaptiveLimit::new(Settings { slack_us: 5_000, ..SETTINGS });
        let flat = |latency_us: u64, inflight: f64| Window {
            answers: 500,
            latency_sum_us: latency_us * 500,
            min_latency_us: Some(latency_us),
            limited: false,
            elapsed_ms: 100,
            inflight,
        };
        l.update(0, flat(50, 100.0));
        assert_eq!(l.update(100, flat(50, 100.0)), 100);
        let cut = l.update(200, flat(8_000, 100.0));
        assert!(cut < 75, "{cut}");
        assert_eq!(l.update(300, flat(8_000, cut as f64)), 100);
        assert_eq!(l.baseline_us(), Some(8_000));
        for i in 4..50 {
            assert_eq!(l.update(i * 100, flat(8_000, 100.0)), 100);
        }
        // A queue inside the origin shrinks with the requests it holds: that cut stays.
        let mut q = AdaptiveLimit::new(SETTINGS);
        drive(&mut q, 0, 30, 10, 20_000);
        let held = q.limit();
        let limits = drive(&mut q, 3_000, 5, 10, 60_000);
        assert!(limits.iter().all(|&c| c < held), "{held} then {limits:?}");
    }

    #[test]
    fn a_probe_lowers_the_limit_for_one_window() {
        let mut l = AdaptiveLimit::new(Settings { probe_every_ms: 1_000, ..SETTINGS });
        l.update(0, window(1_000, false));
        assert_eq!(l.update(1_000, window(1_500, false)), 25);
        assert!(l.probing());
        assert_eq!(l.update(1_100, window(1_200, false)), 100);
        assert_eq!(l.baseline_us(), Some(1_200));
    }
}
