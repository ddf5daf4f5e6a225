//! Health hysteresis for active checks: a server changes state only after `unhealthy_after`
//! consecutive failed probes or `healthy_after` consecutive good ones, so one lost packet does not
//! flap it in and out of rotation.

/// What one probe result did to the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The server stays as it was.
    Unchanged,
    /// The server just became healthy.
    BecameHealthy,
    /// The server just became unhealthy.
    BecameUnhealthy,
}

/// Counts consecutive probe results against two thresholds.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    healthy: bool,
    streak: u32,
    healthy_after: u32,
    unhealthy_after: u32,
}

impl HealthCounter {
    /// Starts in `healthy` state with the given thresholds (each at least 1).
    pub fn new(healthy: bool, healthy_after: u32, unhealthy_after: u32) -> Self {
        HealthCounter {
            healthy,
            streak: 0,
            healthy_after: healthy_after.max(1),
            unhealthy_after: unhealthy_after.max(1),
        }
    }

    /// Whether the server currently counts as healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result.
    pub fn observe(&mut self, probe_ok: bool) -> Transition {
        if probe_ok == self.healthy {
            self.streak = 0;
            return Transition::Unchanged;
        }
        self.streak += 1;
        let needed = if probe_ok { self.healthy_after } else { self.unhealthy_after };
        if self.streak < needed {
            return Transition::Unchanged;
        }
        self.streak = 0;
        self.healthy = probe_ok;
        if probe_ok {
            Transition::BecameHealthy
        } else {
            Transition::BecameUnhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_consecutive_results_to_flip() {
        let mut h = HealthCounter::new(true, 2, 3);
        assert_eq!(h.observe(false), Transition::Unchanged);
        assert_eq!(h.observe(false), Transition::Unchanged);
        assert_eq!(h.observe(true), Transition::Unchanged); // streak broken
        assert_eq!(h.observe(false), Transition::Unchanged);
        assert_eq!(h.observe(false), Transition::Unchanged);
        assert_eq!(h.observe(false), Transition::BecameUnhealthy);
        assert!(!h.is_healthy());
        assert_eq!(h.observe(true), Transition::Unchanged);
        assert_eq!(h.observe(true), Transition::BecameHealthy);
    }
}
