//! What TLS termination counts: handshakes done, resumed, failed and timed out; certificate
//! reloads and the reloads refused.

use std::fmt::Write as _;

use crate::metrics::Counter;

/// The TLS counters of the client listener.
pub struct TlsMetrics {
    pub handshakes: Counter,
    /// Handshakes that resumed an earlier session (ticket or session id).
    pub resumed: Counter,
    /// Handshakes that failed: a protocol error, no shared version, cipher or ALPN protocol.
    pub failures: Counter,
    /// Clients that did not finish their handshake within `tls.handshake_timeout`.
    pub timeouts: Counter,
    /// Certificate sets replaced (files changed, or a reload).
    pub reloads: Counter,
    /// Certificate reloads refused (unreadable files, a key that does not match); the running
    /// certificates stay.
    pub reload_failures: Counter,
}

impl TlsMetrics {
    pub fn new(shards: usize) -> Self {
        TlsMetrics {
            handshakes: Counter::new(shards),
            resumed: Counter::new(shards),
            failures: Counter::new(shards),
            timeouts: Counter::new(shards),
            reloads: Counter::new(shards),
            reload_failures: Counter::new(shards),
        }
    }

    /// Writes the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counters = [
            ("seawall_tls_handshakes_total", "TLS handshakes completed.", &self.handshakes),
            (
                "seawall_tls_resumed_total",
                "TLS handshakes that resumed a session (ticket or id).",
                &self.resumed,
            ),
            (
                "seawall_tls_handshake_failures_total",
                "TLS handshakes that failed (protocol error, nothing in common, bad ALPN).",
                &self.failures,
            ),
            (
                "seawall_tls_handshake_timeouts_total",
                "Clients that did not finish their TLS handshake in time.",
                &self.timeouts,
            ),
            (
                "seawall_tls_certificate_reloads_total",
                "Certificate sets replaced because their files changed or on reload.",
                &self.reloads,
            ),
            (
                "seawall_tls_certificate_reload_failures_total",
                "Certificate reloads refused (the running certificates stay).",
                &self.reload_failures,
            ),
        ];
        for (name, help, counter) in counters {
            let v = counter.get();
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
    }
}
