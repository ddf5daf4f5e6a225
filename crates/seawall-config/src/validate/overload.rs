//! `[overload]`: the signals the overload controller samples, the levels they drive and how
//! adaptive concurrency learns each upstream's latency.

use std::time::Duration;

use toml::Spanned;

use super::{defaults, Ctx};
use crate::model::{CpuSignal, Overload};
use crate::raw::{RawOverload, Text};

/// `[overload]`, or its defaults.
pub(super) fn overload(cx: &mut Ctx<'_>, raw: &RawOverload) -> Overload {
    let key = |k: &str| format!("overload.{k}");
    let cpu = match raw.cpu.as_ref() {
        None => CpuSignal::Process,
        Some(c) => match c.get_ref().as_str() {
            "process" => CpuSignal::Process,
            "host" => CpuSignal::Host,
            "max" => CpuSignal::Max,
            "off" => CpuSignal::Off,
            other => {
                let message =
                    format!("expected \"process\", \"host\", \"max\" or \"off\", got {other:?}");
                cx.error(c.span(), &key("cpu"), message);
                CpuSignal::Process
            }
        },
    };
    let cpu_at = ascending(
        cx,
        [
            (raw.p2_at.as_ref(), "p2_at", defaults::OVERLOAD_P2_AT),
            (raw.p1_at.as_ref(), "p1_at", defaults::OVERLOAD_P1_AT),
            (raw.p0_at.as_ref(), "p0_at", defaults::OVERLOAD_P0_AT),
        ],
    );
    let [soft, hard] = ascending(
        cx,
        [
            (raw.memory_soft.as_ref(), "memory_soft", defaults::OVERLOAD_MEMORY_SOFT),
            (raw.memory_hard.as_ref(), "memory_hard", defaults::OVERLOAD_MEMORY_HARD),
        ],
    );
    let memory_budget = raw.memory_budget.as_ref().map(|b| {
        let bytes = cx.size(Some(b), &key("memory_budget"), 0);
        if bytes < 1 << 20 {
            cx.error(b.span(), &key("memory_budget"), "must be at least 1MiB");
        }
        bytes
    });
    let hysteresis = fraction(cx, raw.hysteresis.as_ref(), "hysteresis", 0.1, 0.0, 0.5);
    let tolerance = match raw.latency_tolerance.as_ref() {
        Some(t) if !(1.1..=10.0).contains(t.get_ref()) => {
            let message = format!("expected a number from 1.1 to 10, got {}", t.get_ref());
            cx.error(t.span(), &key("latency_tolerance"), message);
            defaults::OVERLOAD_LATENCY_TOLERANCE
        }
        Some(t) => *t.get_ref(),
        None => defaults::OVERLOAD_LATENCY_TOLERANCE,
    };
    Overload {
        enabled: raw.enabled.unwrap_or(true),
        sample_interval: bounded(
            cx,
            raw.sample_interval.as_ref(),
            "sample_interval",
            defaults::OVERLOAD_SAMPLE_INTERVAL,
            (Duration::from_millis(10), Duration::from_secs(5)),
        ),
        cpu,
        cpu_at,
        memory_budget,
        memory_at: [soft, hard],
        max_wait: bounded(
            cx,
            raw.max_wait.as_ref(),
            "max_wait",
            defaults::OVERLOAD_MAX_WAIT,
            (Duration::from_millis(1), Duration::from_secs(10)),
        ),
        hysteresis,
        min_dwell: bounded(
            cx,
            raw.min_dwell.as_ref(),
            "min_dwell",
            defaults::OVERLOAD_MIN_DWELL,
            (Duration::from_millis(1), Duration::from_secs(600)),
        ),
        retry_after: bounded(
            cx,
            raw.retry_after.as_ref(),
            "retry_after",
            defaults::OVERLOAD_RETRY_AFTER,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        ),
        latency_tolerance: tolerance,
        latency_slack: bounded(
            cx,
            raw.latency_slack.as_ref(),
            "latency_slack",
            defaults::OVERLOAD_LATENCY_SLACK,
            (Duration::from_millis(1), Duration::from_secs(10)),
        ),
        probe_every: bounded(
            cx,
            raw.probe_every.as_ref(),
            "probe_every",
            defaults::OVERLOAD_PROBE_EVERY,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        ),
    }
}

/// A duration at `overload.{name}` within `min..=max` (a sampler running at 1 kHz, a level held
/// for hours by a typo, are refused).
fn bounded(
    cx: &mut Ctx<'_>,
    raw: Option<&Text>,
    name: &str,
    default: &str,
    (min, max): (Duration, Duration),
) -> Duration {
    let key = format!("overload.{name}");
    let value = cx.duration(raw, &key, default);
    match raw {
        Some(r) if value < min || value > max => {
            cx.error(r.span(), &key, format!("expected from {min:?} to {max:?}, got {value:?}"));
            crate::units::parse_duration(default).unwrap_or(min)
        }
        _ => value,
    }
}

/// Shares (from 0.05 to 1) that must not decrease from one to the next.
fn ascending<const N: usize>(
    cx: &mut Ctx<'_>,
    values: [(Option<&Spanned<f64>>, &str, f64); N],
) -> [f64; N] {
    let mut out = [0.0; N];
    for (i, (raw, name, default)) in values.iter().enumerate() {
        out[i] = fraction(cx, *raw, name, *default, 0.05, 1.0);
        if i > 0 && out[i] < out[i - 1] {
            let (previous, span) = (values[i - 1].1, raw.map_or(0..0, |r| r.span()));
            let message = format!("must be at least {previous} ({})", out[i - 1]);
            cx.error(span, &format!("overload.{name}"), message);
        }
    }
    out
}

/// A number from `min` to `max` at `overload.{name}`.
fn fraction(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<f64>>,
    name: &str,
    default: f64,
    min: f64,
    max: f64,
) -> f64 {
    match raw {
        None => default,
        Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            let message = format!("expected a fraction from {min} to {max}, got {}", v.get_ref());
            cx.error(v.span(), &format!("overload.{name}"), message);
            default
        }
    }
}
