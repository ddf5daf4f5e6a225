"""The overload drill: can critical requests (P0) keep succeeding, fast, at ten times capacity?

A capacity-limited origin (`seawall origin --slots 10 --service-time 20ms`: 500 requests a second;
beyond its slots requests wait inside it, so its latency rises for everyone) stands behind each
proxy in turn. An open-loop load generator (bench/loadgen: requests leave on schedule whatever
comes back; latency counts from when each was due) offers 10x capacity in three phases of
--seconds each, back to back, without touching the proxy:

  1. 5% P0 / 25% P1 / 70% P2 by route (P0 demand = half the capacity);
  2. the P0 share rises to 8% (P0 demand = 80% of capacity);
  3. phase 1's mix, but the origin's service time rises 1.7x (its capacity drops to ~60%).

Reported per phase and priority: success rate, p50/p99 of successes, p99 of refusals; the origin's
utilisation (served / capacity) and peak concurrency; the proxy's CPU and peak RSS. The same load
against a plain `return 200` nginx shows what the generator really offers.

Usage: python3 bench/overload.py [--seconds 20] [--capacity 500] [--only seawall,nginx,haproxy]
Writes bench/results/overload.md (and the raw reports in bench/tmp/overload-*.json).
"""

import argparse
import json
import subprocess
import time
import urllib.request

import common as c

ORIGIN, PLAIN, SEAWALL, SEAWALL_ADMIN, NGINX, HAPROXY = 18100, 18101, 18102, 18103, 18104, 18105
SLOTS = 10
CLASSES = [("P0", "/p0"), ("P1", "/p1"), ("P2", "/p2")]


def loadgen_binary():
    manifest = c.ROOT / "bench" / "loadgen" / "Cargo.toml"
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", str(manifest)], check=True)
    return c.ROOT / "bench" / "loadgen" / "target" / "release" / "seawall-loadgen"


def origin(binary, service_ms):
    return c.Proc("origin", [str(binary), "origin", "--listen", f"127.0.0.1:{ORIGIN}",
                             "--slots", str(SLOTS), "--service-time", f"{service_ms}ms"], ORIGIN)


def origin_url(path):
    return f"http://127.0.0.1:{ORIGIN}{path}"


def seawall(binary):
    conf = c.TMP / "overload-seawall.toml"
    routes = "".join(f'[[routes]]\nname = "{p.lower()}"\npath_prefix = "{path}"\nupstream = "app"\n'
                     f'priority = "{p}"\n' for p, path in CLASSES)
    conf.write_text(f"""
[server]
listen = "127.0.0.1:{SEAWALL}"
admin = "127.0.0.1:{SEAWALL_ADMIN}"
workers = 2
max_connections = 40000
[log]
level = "warn"
# The load generator, the origin and a peer share this machine: the host's CPU would count them.
[overload]
cpu = "process"
[upstreams.app]
servers = ["127.0.0.1:{ORIGIN}"]
{routes}""")
    return c.Proc("seawall", [str(binary), "run", "--config", str(conf)], SEAWALL)


def nginx(capacity):
    """limit_req per class, tuned for phase 1: P0 gets its demand and a margin, P1 the rest of the
    capacity, P2 a trickle; over the limit is 503 at once. Refusals are not logged (`crit`): one
    error line per refusal would cost nginx CPU no operator would spend."""
    p0 = int(capacity * 0.52)
    p2 = max(1, int(capacity * 0.02))
    rates = {"P0": p0, "P1": capacity - p0 - p2, "P2": p2}
    zones = "".join(f"  limit_req_zone $host zone={p}:1m rate={rates[p]}r/s;\n" for p, _ in CLASSES)
    locations = "".join(
        f"    location {path} {{ limit_req zone={p} burst={max(1, rates[p] // 10)} nodelay; "
        f"proxy_pass http://origin; }}\n" for p, path in CLASSES)
    conf = c.TMP / "overload-nginx.conf"
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {c.TMP}/overload-nginx.pid;
error_log {c.TMP}/overload-nginx.err crit;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 40000;
http {{
  access_log off;
  keepalive_requests 1000000;
  limit_req_status 503;
{zones}  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 64; }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_read_timeout 30s;
  server {{
    listen 127.0.0.1:{NGINX} backlog=4096 reuseport;
{locations}  }}
}}
""")
    return c.Proc("nginx", ["nginx", "-c", str(conf), "-p", str(c.TMP)], NGINX), rates


def haproxy():
    """The server's maxconn = the origin's slots; the rest queue in HAProxy, P0 first
    (set-priority-class), for up to `timeout queue`."""
    conf = c.TMP / "overload-haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 2
  maxconn 9000
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 30s
  timeout queue 500ms
  http-reuse always
frontend fe
  bind 127.0.0.1:{HAPROXY}
  maxconn 9000
  default_backend be
backend be
  http-request set-priority-class int(-1) if {{ path_beg /p0 }}
  http-request set-priority-class int(1) if {{ path_beg /p2 }}
  server origin 127.0.0.1:{ORIGIN} maxconn {SLOTS}
""")
    return c.Proc("haproxy", ["haproxy", "-f", str(conf)], HAPROXY)


def plain_nginx():
    conf = c.TMP / "overload-plain.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {c.TMP}/overload-plain.pid;
error_log {c.TMP}/overload-plain.err warn;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 40000;
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{PLAIN} backlog=4096 reuseport; location / {{ return 200 "ok"; }} }}
}}
""")
    return c.Proc("plain", ["nginx", "-c", str(conf), "-p", str(c.TMP)], PLAIN)


def plan(port, seconds, capacity, service_ms, metrics_url=None):
    offered = 10 * capacity
    mixes = [("1: 5/25/70", (0.05, 0.25, 0.70), service_ms),
             ("2: P0 8%", (0.08, 0.25, 0.67), service_ms),
             ("3: origin 1.7x slower", (0.05, 0.25, 0.70), service_ms * 1.7)]
    phases = []
    for name, shares, service in mixes:
        phases.append({
            "name": name, "seconds": seconds,
            "before": [origin_url(f"/_origin/service-time?ms={service}"),
                       origin_url("/_origin/stats?reset=1")] + ([metrics_url] if metrics_url else []),
            "after": [origin_url("/_origin/stats")] + ([metrics_url] if metrics_url else []),
            "classes": [{"name": p, "path": path, "rate": offered * share}
                        for (p, path), share in zip(CLASSES, shares)],
        })
    return {"target": f"http://127.0.0.1:{port}", "timeout_ms": 5000, "phases": phases}


def drill(loadgen, name, plan_json, pids):
    path = c.TMP / f"overload-{name}.plan.json"
    path.write_text(json.dumps(plan_json))
    cpu0 = c.cpu_seconds(pids)
    out = subprocess.run([str(loadgen), str(path)], capture_output=True, text=True, check=True).stdout
    cpu1 = c.cpu_seconds(pids)
    report = json.loads(out)
    report["proxy_cpu_seconds"] = cpu1 - cpu0
    report["proxy_peak_rss_mib"] = c.rss_kib(pids, "VmHWM") / 1024 if pids else None
    (c.TMP / f"overload-{name}.json").write_text(json.dumps(report, indent=1))
    return report


def free_or_fail(port):
    """A process left over from an earlier run would answer in place of the one started now."""
    import socket
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is already taken (a process left from an earlier run?)")


def origin_phase(phase):
    """(served, peak inside, capacity per second) of the origin in one phase."""
    start = phase["before"][1]["answer"]
    end = phase["after"][0]["answer"]
    served = end["served"] - start["served"]
    return served, end["peak_inside"], end["capacity_per_second"]


def own_time(phase, route):
    """Shares of a route's requests that Seawall answered within 0.5 and 1 ms of their head
    (its request-duration histogram over the phase), or None without metrics."""
    if len(phase["before"]) < 3:
        return None

    def buckets(text):
        prefix = f'seawall_request_duration_seconds_bucket{{route="{route}",le="'
        out = {}
        for line in text.splitlines():
            if line.startswith(prefix):
                le, count = line[len(prefix):].split('"} ')
                out[le] = int(count)
        return out

    start, end = buckets(phase["before"][2]["answer"]), buckets(phase["after"][1]["answer"])
    total = end.get("+Inf", 0) - start.get("+Inf", 0)
    if total <= 0:
        return None
    return tuple((end.get(le, 0) - start.get(le, 0)) / total for le in ("0.0005", "0.001"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--capacity", type=int, default=500, help="origin requests/s (10 slots)")
    ap.add_argument("--only", default="seawall,nginx,haproxy")
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "overload.md"))
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "haproxy")
    binary = c.build_seawall()
    loadgen = loadgen_binary()
    service_ms = SLOTS * 1000 / args.capacity

    reports = {}
    free_or_fail(PLAIN)
    plain = plain_nginx()
    try:
        reports["plain"] = drill(loadgen, "plain", plan(PLAIN, args.seconds, args.capacity, service_ms), [])
    finally:
        plain.stop()
    starts = {"seawall": lambda: seawall(binary), "nginx": lambda: nginx(args.capacity)[0],
              "haproxy": haproxy}
    ports = {"seawall": SEAWALL, "nginx": NGINX, "haproxy": HAPROXY}
    for name in args.only.split(","):
        for port in (ORIGIN, ports[name]):
            free_or_fail(port)
        org = origin(binary, service_ms)
        proxy = None
        try:
            proxy = starts[name]()
            time.sleep(0.5)
            metrics = f"http://127.0.0.1:{SEAWALL_ADMIN}/metrics" if name == "seawall" else None
            reports[name] = drill(loadgen, name,
                                  plan(ports[name], args.seconds, args.capacity, service_ms, metrics),
                                  proxy.pids())
            print(f"{name}: done")
        finally:
            if proxy:
                proxy.stop()
            org.stop()
            time.sleep(0.5)
    write(args, reports, service_ms)


def write(args, reports, service_ms):
    cmd = f"bench/overload.sh --seconds {args.seconds:g} --capacity {args.capacity}"
    lines = [c.header("Overload drill: 10x capacity, three phases", cmd), ""]
    lines += [f"Origin: {SLOTS} slots x {service_ms:g} ms = {args.capacity} req/s (phase 3: "
              f"{service_ms * 1.7:g} ms, {args.capacity / 1.7:.0f} req/s). Offered: "
              f"{10 * args.capacity} req/s open-loop, {args.seconds:g} s per phase; a request not "
              "answered within 5 s counts as failed. Latency counts from when each request was due.", ""]
    plain = reports.get("plain")
    if plain:
        lines += ["## What the load generator offers (same plan against nginx `return 200`)", "",
                  "| phase | due | sent | ok | send lag p99 / max ms | ok p99 ms |", "|---|---|---|---|---|---|"]
        for ph in plain["phases"]:
            due = sum(k["due"] for k in ph["classes"])
            sent = sum(k["sent"] for k in ph["classes"])
            ok = sum(k["ok"] for k in ph["classes"])
            p99 = max(k["ok_p99_ms"] for k in ph["classes"])
            lines.append(f"| {ph['name']} | {due} | {sent} | {ok} | {ph['send_lag_p99_ms']:.1f} / "
                         f"{ph['send_lag_max_ms']:.1f} | {p99:.1f} |")
        lines.append("")
    lines += ["## Per phase and priority", "",
              "| proxy | phase | class | offered/s | success | ok p50 ms | ok p99 ms | refused p99 ms | failed (no answer) | refusals |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    names = [n for n in ("seawall", "nginx", "haproxy") if n in reports]
    for name in names:
        for ph in reports[name]["phases"]:
            for k in ph["classes"]:
                reasons = ", ".join(f"{r}: {n}" for r, n in k["reasons"].items() if r != "timeout")
                lines.append(
                    f"| {name} | {ph['name']} | {k['name']} | {k['rate']:.0f} | {100 * k['success_rate']:.2f}% | "
                    f"{k['ok_p50_ms']:.1f} | {k['ok_p99_ms']:.1f} | {k['refused_p99_ms']:.1f} | {k['failed']} | {reasons} |")
    lines += ["", "## The origin and the proxy", "",
              "| proxy | phase | origin utilisation (served / capacity) | origin peak concurrency | P0 goodput req/s | generator send lag p99 ms |",
              "|---|---|---|---|---|---|"]
    for name in names:
        for ph in reports[name]["phases"]:
            served, peak, capacity = origin_phase(ph)
            util = served / (capacity * ph["seconds"])
            p0 = ph["classes"][0]
            goodput = p0["ok"] / ph["seconds"]
            lines.append(f"| {name} | {ph['name']} | {100 * util:.1f}% | {peak} | {goodput:.0f} | "
                         f"{ph['send_lag_p99_ms']:.1f} |")
    seawall_phases = reports.get("seawall", {}).get("phases", [])
    times = [(ph["name"], own_time(ph, "p2")) for ph in seawall_phases]
    if any(t for _, t in times):
        lines += ["", "Seawall's own time on the P2 route (over 99.9% of it refused), from its "
                  "`seawall_request_duration_seconds` histogram (request head in to answer out):", "",
                  "| phase | answered within 0.5 ms | within 1 ms |", "|---|---|---|"]
        for phase, t in times:
            if t:
                lines.append(f"| {phase} | {100 * t[0]:.2f}% | {100 * t[1]:.2f}% |")
    lines += ["", "| proxy | CPU seconds over the drill | CPU µs per request offered | peak RSS MiB |",
              "|---|---|---|---|"]
    for name in names:
        r = reports[name]
        offered = sum(k["sent"] for ph in r["phases"] for k in ph["classes"])
        rss = r["proxy_peak_rss_mib"]
        lines.append(f"| {name} | {r['proxy_cpu_seconds']:.1f} | {r['proxy_cpu_seconds'] * 1e6 / offered:.1f} | "
                     f"{rss:.0f} |")
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()
