//! What overload control shows: the level and its signals, crisis mode, and every upstream
//! gate's limit, load and refusals — in `/metrics` and in `/api/v1/state`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::metrics::{escape, family};
use crate::overload::Readings;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamGroup;

/// The overload families of `/metrics`.
pub fn metrics(out: &mut String, snapshot: &Snapshot) {
    let overload = &snapshot.overload;
    let name = "seawall_overload_level";
    family(
        out,
        name,
        "gauge",
        "Overload level: 0 calm, 1 sheds P2, 2 sheds P1 too, 3 limits P0 to the serving rate.",
    );
    let _ = writeln!(out, "{name} {}", overload.level());
    let name = "seawall_overload_signal";
    family(out, name, "gauge", "The signals the overload level is decided from: CPU shares (0-1; cpu_host is the cgroup's use of its quota under one) and memory (RSS over the budget).");
    let r = &overload.readings;
    for (signal, cell) in
        [("cpu_process", &r.cpu_process), ("cpu_host", &r.cpu_host), ("memory", &r.memory)]
    {
        let _ = writeln!(out, "{name}{{signal=\"{signal}\"}} {}", Readings::get(cell));
    }
    let name = "seawall_resident_memory_bytes";
    family(out, name, "gauge", "Seawall's resident memory, as overload control last read it.");
    let _ = writeln!(out, "{name} {}", Readings::get(&r.resident_bytes));
    let name = "seawall_overload_samples_total";
    family(out, name, "counter", "Samples the overload controller took (every overload.sample_interval): a counter that stops moving means overload control stopped.");
    let _ = writeln!(out, "{name} {}", r.samples.load(std::sync::atomic::Ordering::Relaxed));
    let name = "seawall_crisis";
    family(out, name, "gauge", "Whether crisis mode is on (1) or off (0), with the mode an operator set: auto (on from level 1), on, off.");
    let mode = overload.crisis_mode().as_str();
    let _ = writeln!(out, "{name}{{mode=\"{mode}\"}} {}", u8::from(overload.in_crisis()));
    gate_metrics(out, &snapshot.upstreams);
}

/// Each gate's adaptive limit, requests in flight and waiting, and refusals.
fn gate_metrics(out: &mut String, groups: &[UpstreamGroup]) {
    let gates: Vec<_> = groups
        .iter()
        .filter_map(|g| g.gate.as_ref().map(|gate| (escape(&g.config.name), gate)))
        .collect();
    let name = "seawall_upstream_concurrency_limit";
    family(out, name, "gauge", "Requests allowed in flight to an upstream now: its adaptive limit, capped by its bulkhead's max_concurrency.");
    for (upstream, gate) in &gates {
        let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", gate.limit());
    }
    let name = "seawall_upstream_inflight";
    family(out, name, "gauge", "Requests holding a slot of an upstream's gate now.");
    for (upstream, gate) in &gates {
        let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", gate.load().0);
    }
    let name = "seawall_upstream_queued";
    family(out, name, "gauge", "Requests waiting for a slot of an upstream's gate now.");
    for (upstream, gate) in &gates {
        let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", gate.load().1);
    }
    let name = "seawall_upstream_overload_level";
    family(out, name, "gauge", "An upstream's wait level: 1 sheds its P2 (its P1 requests wait half of overload.max_wait on average), 2 its P1 too (its P0 requests do).");
    for (upstream, gate) in &gates {
        let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", gate.level());
    }
    let name = "seawall_upstream_wait_seconds";
    family(
        out,
        name,
        "gauge",
        "Mean time requests waited for a slot of an upstream's gate (smoothed), by priority.",
    );
    for (upstream, gate) in &gates {
        let waits = gate.learning.lock().unwrap_or_else(std::sync::PoisonError::into_inner).waits;
        for (priority, wait) in ["P0", "P1"].iter().zip(waits) {
            let _ =
                writeln!(out, "{name}{{upstream=\"{upstream}\",priority=\"{priority}\"}} {wait}");
        }
    }
    let name = "seawall_upstream_latency_baseline_seconds";
    family(
        out,
        name,
        "gauge",
        "The no-load latency an upstream's adaptive limit compares against.",
    );
    for (upstream, gate) in &gates {
        let learning = gate.learning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(us) = learning.adaptive.as_ref().and_then(|a| a.baseline_us()) {
            let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", us as f64 / 1e6);
        }
    }
    let name = "seawall_upstream_limit_cuts_undone_total";
    family(
        out,
        name,
        "counter",
        "Cuts of an upstream's adaptive limit undone because its latency did not fall with the requests in flight (not a queue inside the origin: a busy gateway, a slower dependency); the latency seen became the baseline.",
    );
    for (upstream, gate) in &gates {
        let learning = gate.learning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(adaptive) = &learning.adaptive {
            let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {}", adaptive.undone_cuts());
        }
    }
    let name = "seawall_bulkhead_rejected_total";
    family(out, name, "counter", "Requests an upstream's gate refused, by why: full (max_queue; bulkhead_full), timeout (queue_timeout; bulkhead_full), evicted (pushed out of a full queue by a more important request; bulkhead_full), shed (would wait longer than overload.max_wait; overloaded).");
    for (upstream, gate) in &gates {
        let r = &gate.rejections;
        let whys = [
            ("full", &r.full),
            ("timeout", &r.timeout),
            ("evicted", &r.evicted),
            ("shed", &r.shed),
        ];
        for (why, n) in whys {
            let _ = writeln!(out, "{name}{{upstream=\"{upstream}\",why=\"{why}\"}} {}", n.get());
        }
    }
}

/// The `overload` object of `/api/v1/state`.
pub fn state(snapshot: &Snapshot) -> Value {
    let overload = &snapshot.overload;
    let r = &overload.readings;
    json!({
        "level": overload.level(),
        "cause": overload.cause().as_str(),
        "crisis": overload.in_crisis(),
        "crisis_mode": overload.crisis_mode().as_str(),
        "signals": {
            "cpu_process": Readings::get(&r.cpu_process),
            "cpu_host": Readings::get(&r.cpu_host),
            "memory": Readings::get(&r.memory),
            "resident_bytes": Readings::get(&r.resident_bytes),
        },
        "upstream_level": overload.upstream_level(),
    })
}

/// The `gate` object of an upstream in `/api/v1/state`.
pub fn gate_state(group: &UpstreamGroup) -> Value {
    let Some(gate) = &group.gate else { return Value::Null };
    let (inflight, queued) = gate.load();
    let waits = gate.learning.lock().unwrap_or_else(std::sync::PoisonError::into_inner).waits;
    json!({
        "limit": gate.limit(),
        "adaptive": gate.adaptive.is_some(),
        "inflight": inflight,
        "queued": queued,
        "level": gate.level(),
        "wait_p0_seconds": waits[0],
        "wait_p1_seconds": waits[1],
    })
}
