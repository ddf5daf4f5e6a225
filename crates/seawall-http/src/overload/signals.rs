//! Reading the machine: Seawall's CPU time (`/proc/self/stat`), the host's (`/proc/stat`) or, under a
//! cgroup CPU quota, the cgroup's usage against its quota (v2 `cpu.max`/`cpu.stat`, v1
//! `cpu.cfs_quota_us`/`cpuacct.usage`), Seawall's resident memory (`/proc/self/status`) and the
//! cgroup's memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`). A figure the machine
//! does not offer is `None`, and its signal stays quiet.

use std::path::PathBuf;
use std::time::Instant;

/// Where the cgroup files of this process are (v2 or v1), found once.
#[derive(Debug, Default, Clone)]
pub struct Cgroup {
    /// v2: the unified hierarchy's directory of this process.
    unified: Option<PathBuf>,
    /// v1: the `cpu`/`cpuacct` and `memory` controllers' directories.
    cpu_v1: Option<PathBuf>,
    memory_v1: Option<PathBuf>,
}

impl Cgroup {
    /// Reads `/proc/self/cgroup`.
    pub fn find() -> Cgroup {
        let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
            return Cgroup::default();
        };
        let mut found = Cgroup::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = path.trim_start_matches('/');
            // The path is the cgroup's in the host's view; inside a container with a cgroup
            // namespace of its own (or one whose hierarchy is mounted at its own cgroup), the
            // mount's root already is the container's cgroup.
            if controllers.is_empty() {
                let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                    .into_iter()
                    .flat_map(|r| [PathBuf::from(r).join(path), PathBuf::from(r)])
                    .find(|d| d.join("cgroup.controllers").exists());
                found.unified = root;
            }
            for controller in controllers.split(',') {
                let dir = |name: &str| {
                    let mount = PathBuf::from("/sys/fs/cgroup").join(name);
                    [mount.join(path), mount].into_iter().find(|d| d.exists())
                };
                match controller {
                    "cpu" | "cpuacct" if found.cpu_v1.is_none() => {
                        found.cpu_v1 = dir(controllers).or_else(|| dir("cpu,cpuacct"))
                    }
                    "memory" => found.memory_v1 = dir("memory"),
                    _ => {}
                }
            }
        }
        found
    }

    /// The CPUs the cgroup's quota allows (`None`: no quota).
    pub fn cpu_quota(&self) -> Option<f64> {
        if let Some(dir) = &self.unified {
            if let Ok(text) = std::fs::read_to_string(dir.join("cpu.max")) {
                let mut parts = text.split_whitespace();
                let quota: f64 = parts.next()?.parse().ok()?;
                let period: f64 = parts.next()?.parse().ok()?;
                return (period > 0.0).then_some(quota / period);
            }
        }
        let dir = self.cpu_v1.as_ref()?;
        let quota: f64 = read_number(dir.join("cpu.cfs_quota_us"))?;
        let period: f64 = read_number(dir.join("cpu.cfs_period_us"))?;
        (quota > 0.0 && period > 0.0).then_some(quota / period)
    }

    /// CPU time used by the whole cgroup, in µs.
    fn cpu_usage_us(&self) -> Option<f64> {
        if let Some(dir) = &self.unified {
            if let Ok(text) = std::fs::read_to_string(dir.join("cpu.stat")) {
                let line = text.lines().find(|l| l.starts_with("usage_usec "))?;
                return line.split_whitespace().nth(1)?.parse().ok();
            }
        }
        let ns: f64 = read_number(self.cpu_v1.as_ref()?.join("cpuacct.usage"))?;
        Some(ns / 1_000.0)
    }

    /// The cgroup's memory limit in bytes (`None`: unlimited).
    pub fn memory_limit(&self) -> Option<u64> {
        let text = match &self.unified {
            Some(dir) => std::fs::read_to_string(dir.join("memory.max")).ok(),
            None => None,
        };
        let text = text.or_else(|| {
            let dir = self.memory_v1.as_ref()?;
            std::fs::read_to_string(dir.join("memory.limit_in_bytes")).ok()
        })?;
        // "max" (v2) or a huge number (v1) mean no limit.
        text.trim().parse::<u64>().ok().filter(|&n| n < 1 << 60)
    }
}

fn read_number(path: PathBuf) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU shares over the last sample: Seawall's own, and the host's (the cgroup's under a quota).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuShares {
    /// Seawall's CPU time over the CPUs it may use (0–1).
    pub process: f64,
    /// The host's busy time over its CPUs, or the cgroup's use of its quota (0–1).
    pub host: Option<f64>,
}

/// Turns successive readings into shares.
#[derive(Debug)]
pub struct CpuMeter {
    cgroup: Cgroup,
    cpus: f64,
    quota: Option<f64>,
    last: Option<Reading>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    process_us: f64,
    /// Busy and total time of the host (ticks), or the cgroup's usage (µs) with a quota.
    host: Option<(f64, f64)>,
}

impl CpuMeter {
    pub fn new(cgroup: Cgroup) -> CpuMeter {
        let quota = cgroup.cpu_quota();
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // A quota of 2.5 CPUs is 2.5 (available_parallelism would round it down to 2).
        let cpus = quota.unwrap_or(parallel).max(0.01);
        CpuMeter { cgroup, cpus, quota, last: None }
    }

    /// The shares since the previous call (`None` the first time).
    pub fn sample(&mut self) -> Option<CpuShares> {
        let now = Reading {
            at: Instant::now(),
            process_us: process_cpu_us(),
            host: match self.quota {
                Some(_) => self.cgroup.cpu_usage_us().map(|u| (u, 0.0)),
                None => host_ticks(),
            },
        };
        let last = self.last.replace(now)?;
        let elapsed_us = now.at.duration_since(last.at).as_secs_f64() * 1e6;
        if elapsed_us <= 0.0 {
            return None;
        }
        let process = (now.process_us - last.process_us) / (elapsed_us * self.cpus);
        let host = match (now.host, last.host, self.quota) {
            (Some((used, _)), Some((was, _)), Some(quota)) => {
                Some((used - was) / (elapsed_us * quota))
            }
            (Some((busy, total)), Some((busy0, total0)), None) if total > total0 => {
                Some((busy - busy0) / (total - total0))
            }
            _ => None,
        };
        Some(CpuShares { process: process.clamp(0.0, 1.0), host: host.map(|h| h.clamp(0.0, 1.0)) })
    }
}

/// User and system CPU time of the whole process, in µs, from `/proc/self/stat` (counted in
/// clock ticks of 10 ms: the smoothing of the level absorbs the coarse steps).
fn process_cpu_us() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let Some(rest) = text.rfind(')').map(|at| &text[at + 1..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 1e6 / TICKS_PER_SECOND
}

/// `USER_HZ`: 100 on every Linux architecture Seawall runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The host's busy and total CPU ticks from `/proc/stat`.
fn host_ticks() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    Some((total - idle, total))
}

/// Seawall's resident memory in bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_reports_cpu_and_memory() {
        let mut meter = CpuMeter::new(Cgroup::find());
        assert!(meter.sample().is_none());
        let spin = Instant::now();
        while spin.elapsed().as_millis() < 60 {
            std::hint::black_box(0u64);
        }
        let shares = meter.sample().expect("a second sample");
        assert!(shares.process > 0.0 && shares.process <= 1.0, "{shares:?}");
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
    }
}
