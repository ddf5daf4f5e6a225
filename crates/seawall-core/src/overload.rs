//! Overload levels: 0 (calm) to 3, decided from sampled signals (CPU share, memory share, time
//! requests wait). Level 1 sheds P2, level 2 sheds P1 too, level 3 limits P0 to the rate the
//! gateway is serving.
//!
//! Each signal has the value at which it asks for each level ([`Thresholds`]). The level rises as
//! soon as a signal reaches a threshold; it falls one step at a time, and only once the level has
//! held for the minimum dwell time and no signal is above the threshold less the hysteresis — so a
//! signal hovering around a threshold does not make the gateway flap between shedding and not.

/// What made a request shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedCause {
    /// The CPU signal holds the level.
    Cpu,
    /// The memory signal holds the level.
    Memory,
    /// Requests waiting in Seawall's queues hold the level.
    Wait,
    /// The upstream's queue had more requests as important waiting than it serves within
    /// `max_wait`.
    Queue,
}

impl ShedCause {
    /// Every cause, in the order of their discriminants.
    pub const ALL: [ShedCause; 4] =
        [ShedCause::Cpu, ShedCause::Memory, ShedCause::Wait, ShedCause::Queue];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        ["cpu", "memory", "wait", "queue"][self as usize]
    }
}

/// The values at which one signal asks for levels 1, 2 and 3 (ascending; `f64::INFINITY` for a
/// level the signal never asks for).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds(pub [f64; 3]);

impl Thresholds {
    /// A signal that never asks for any level.
    pub const NEVER: Thresholds = Thresholds([f64::INFINITY; 3]);

    /// The level `value` asks for when each threshold is first scaled by `scale`.
    fn level(&self, value: f64, scale: f64) -> u8 {
        self.0.iter().filter(|&&at| value >= at * scale).count() as u8
    }
}

/// The level state machine.
#[derive(Debug, Clone)]
pub struct LevelControl {
    level: u8,
    changed_ms: u64,
    dwell_ms: u64,
    /// The share of a threshold a signal must fall under for its level to end (0.1: 10% under).
    hysteresis: f64,
}

impl LevelControl {
    /// Level 0, holding each level at least `dwell_ms` and lowering after a fall of `hysteresis`
    /// (a fraction of each threshold, from 0 to 1).
    pub fn new(dwell_ms: u64, hysteresis: f64) -> LevelControl {
        LevelControl { level: 0, changed_ms: 0, dwell_ms, hysteresis: hysteresis.clamp(0.0, 1.0) }
    }

    /// The current level.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// New dwell time and hysteresis (a reload), keeping the level and its age.
    pub fn set_settings(&mut self, dwell_ms: u64, hysteresis: f64) {
        self.dwell_ms = dwell_ms;
        self.hysteresis = hysteresis.clamp(0.0, 1.0);
    }

    /// Back to level 0 (overload control turned off).
    pub fn reset(&mut self) {
        self.level = 0;
    }

    /// Takes the signals sampled at `now_ms` (each value with its thresholds) and returns the
    /// level: raised at once to the highest any signal asks for; lowered by one step after the
    /// dwell time when no signal holds it (with hysteresis).
    pub fn observe(&mut self, now_ms: u64, signals: &[(f64, Thresholds)]) -> u8 {
        let asked = signals.iter().map(|(v, t)| t.level(*v, 1.0)).max().unwrap_or(0);
        if asked > self.level {
            self.level = asked;
            self.changed_ms = now_ms;
            return self.level;
        }
        let keep = 1.0 - self.hysteresis;
        let held = signals.iter().map(|(v, t)| t.level(*v, keep)).max().unwrap_or(0);
        if held < self.level && now_ms.saturating_sub(self.changed_ms) >= self.dwell_ms {
            self.level -= 1;
            self.changed_ms = now_ms;
        }
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Thresholds = Thresholds([0.80, 0.90, 0.95]);

    #[test]
    fn rises_at_once_to_what_the_strongest_signal_asks() {
        let mut c = LevelControl::new(2_000, 0.1);
        assert_eq!(c.observe(0, &[(0.5, CPU)]), 0);
        assert_eq!(c.observe(100, &[(0.85, CPU)]), 1);
        let memory = Thresholds([0.8, 0.95, f64::INFINITY]);
        assert_eq!(c.observe(200, &[(0.85, CPU), (0.97, memory)]), 2);
        assert_eq!(c.observe(300, &[(0.99, CPU), (0.5, memory)]), 3);
    }

    #[test]
    fn falls_one_step_per_dwell_and_only_below_the_hysteresis() {
        let mut c = LevelControl::new(2_000, 0.1);
        assert_eq!(c.observe(0, &[(0.96, CPU)]), 3);
        // Calm at once, but the level holds for the dwell time.
        assert_eq!(c.observe(1_000, &[(0.1, CPU)]), 3);
        assert_eq!(c.observe(2_000, &[(0.1, CPU)]), 2);
        assert_eq!(c.observe(3_000, &[(0.1, CPU)]), 2);
        assert_eq!(c.observe(4_000, &[(0.1, CPU)]), 1);
        // 0.75 is under 0.80 but not 10% under it: level 1 holds however long.
        assert_eq!(c.observe(10_000, &[(0.75, CPU)]), 1);
        assert_eq!(c.observe(20_000, &[(0.75, CPU)]), 1);
        assert_eq!(c.observe(20_100, &[(0.71, CPU)]), 0);
    }

    #[test]
    fn a_signal_hovering_at_a_threshold_does_not_flap() {
        let mut c = LevelControl::new(1_000, 0.1);
        let mut changes = 0;
        let mut last = 0;
        for step in 0..200u64 {
            let value = if step % 2 == 0 { 0.81 } else { 0.79 };
            let level = c.observe(step * 100, &[(value, CPU)]);
            changes += u32::from(level != last);
            last = level;
        }
        assert_eq!(changes, 1, "one rise, no flapping");
        assert_eq!(Thresholds::NEVER.level(1e12, 1.0), 0);
    }
}
