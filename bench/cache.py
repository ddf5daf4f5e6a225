"""The response cache against Varnish and nginx `proxy_cache`, one run on this machine.

1. Hit path: every request is a hit on one 1 KiB object (after a warm-up); wrk keeps 64
   connections busy. Reported: req/s, CPU µs per request of the cache process (all its threads and
   processes), p99. Target: Seawall ≤ 0.8 × the best peer's CPU per request.
2. Origin offload: keys drawn from a Zipf(1.0) distribution over 100,000 objects of 1 KiB (about
   twice what fits), each cache given 64 MiB. Reported: hit ratio and requests that reached the
   origin.

The origin is nginx answering 1 KiB with `Cache-Control: public, max-age=3600` and counting
requests (stub_status). Varnish (malloc storage) and nginx are installed with apt when missing.

Usage: python3 bench/cache.py [--seconds 10] [--rounds 3] [--zipf-seconds 20]
Writes bench/results/cache.md.
"""

import argparse
import re
import shutil
import subprocess
import time
import urllib.request

import common as c

ORIGIN, SEAWALL, SEAWALL_ADMIN, NGINX, VARNISH = 18400, 18401, 18402, 18403, 18404
KEYS = 100_000
MEMORY_MIB = 64


def origin():
    conf = c.TMP / "cache-origin.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {c.TMP}/cache-origin.pid;
error_log {c.TMP}/cache-origin.err warn;
events {{ worker_connections 9000; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{ORIGIN} backlog=4096 reuseport;
    location / {{
      default_type text/plain;
      add_header Cache-Control "public, max-age=3600";
      return 200 "{c.BODY_1K}";
    }}
    location = /__origin_status {{ stub_status; }}
  }}
}}
""")
    return c.Proc("cache-origin", ["nginx", "-c", str(conf), "-p", str(c.TMP)], ORIGIN)


def origin_requests():
    with urllib.request.urlopen(f"http://127.0.0.1:{ORIGIN}/__origin_status", timeout=5) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[2])


def seawall(binary):
    conf = c.TMP / "cache-seawall.toml"
    conf.write_text(f"""
[server]
listen = "127.0.0.1:{SEAWALL}"
admin = "127.0.0.1:{SEAWALL_ADMIN}"
workers = 2
max_connections = 40000
[log]
level = "warn"
[cache]
memory = "{MEMORY_MIB}MiB"
[upstreams.origin]
servers = ["127.0.0.1:{ORIGIN}"]
passive = {{ consecutive_failures = 0 }}
[[routes]]
name = "all"
upstream = "origin"
cache = {{ ttl = "1h" }}
""")
    return c.Proc("cache-seawall", [str(binary), "run", "--config", str(conf)], SEAWALL)


def nginx():
    conf = c.TMP / "cache-nginx.conf"
    store = c.TMP / "nginx-cache"
    shutil.rmtree(store, ignore_errors=True)
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {c.TMP}/cache-nginx.pid;
error_log {c.TMP}/cache-nginx.err warn;
events {{ worker_connections 9000; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path {store} levels=1:2 keys_zone=hot:32m max_size={MEMORY_MIB}m inactive=1h use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{NGINX} backlog=4096 reuseport;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache hot;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
""")
    return c.Proc("cache-nginx", ["nginx", "-c", str(conf), "-p", str(c.TMP)], NGINX)


def varnish():
    workdir = c.TMP / "varnish"
    shutil.rmtree(workdir, ignore_errors=True)
    return c.Proc("cache-varnish", [
        "varnishd", "-F", "-a", f"127.0.0.1:{VARNISH}", "-b", f"127.0.0.1:{ORIGIN}",
        "-s", f"malloc,{MEMORY_MIB}m", "-n", str(workdir), "-p", "thread_pool_min=10",
    ], VARNISH)


ZIPF_LUA = """
-- Keys 1..N drawn from Zipf(1.0) by inverse CDF (binary search), the same sequence each run.
local N = %d
local cdf = {}
local sum = 0
for i = 1, N do sum = sum + 1 / i; cdf[i] = sum end
for i = 1, N do cdf[i] = cdf[i] / sum end
local seeded = false
request = function()
  if not seeded then math.randomseed(42); seeded = true end
  local r = math.random()
  local lo, hi = 1, N
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/k/" .. lo)
end
""" % KEYS


def wrk_script(port, seconds, script, connections=64):
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script),
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zipf-seconds", type=int, default=20)
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "cache.md"))
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "wrk")
    if shutil.which("varnishd") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "varnish"], check=True)
        # The package starts its own varnishd on :6081; the benchmark runs its own.
        subprocess.run(["systemctl", "stop", "varnish"], check=False, capture_output=True)
    version = subprocess.run(["varnishd", "-V"], capture_output=True, text=True).stderr.splitlines()[0]
    binary = c.build_seawall()
    org = origin()
    peers = [
        ("Seawall 2 workers", lambda: seawall(binary), SEAWALL),
        ("nginx 2 workers, proxy_cache", nginx, NGINX),
        (f"Varnish ({version.split('(')[1].split()[0] if '(' in version else 'varnishd'}), malloc", varnish, VARNISH),
    ]

    def hit_path(name, proc, port):
        c.wrk(port, args.warmup, 64, path="/hot")
        pids = proc.pids()
        cpu0, before = c.cpu_seconds(pids), origin_requests()
        run = c.wrk(port, args.seconds, 64, path="/hot")
        cpu1, after = c.cpu_seconds(pids), origin_requests()
        run["cpu_us"] = (cpu1 - cpu0) * 1e6 / run["requests"]
        run["origin_requests"] = after - before - 1
        run.pop("raw")
        return run

    hits = {}
    try:
        hits = c.run_rounds(peers, args.rounds, hit_path)
        script = c.TMP / "zipf.lua"
        script.write_text(ZIPF_LUA)
        offload = {}
        for name, start, port in peers:
            proc = start()
            try:
                before = origin_requests()
                total = wrk_script(port, args.zipf_seconds, script)
                reached = origin_requests() - before - 1
                offload[name] = {"requests": total, "origin": reached,
                                 "hit_ratio": 1 - reached / total if total else 0.0,
                                 "peak_rss_mib": c.rss_kib(proc.pids(), "VmHWM") / 1024}
                print(f"zipf {name}: {offload[name]}")
            finally:
                proc.stop()
                time.sleep(0.5)
    finally:
        org.stop()
    write(args, hits, offload)


def write(args, hits, offload):
    cmd = f"python3 bench/cache.py --seconds {args.seconds} --rounds {args.rounds} --zipf-seconds {args.zipf_seconds}"
    lines = [c.header("Cache: hit path and origin offload", cmd), "",
             "- hit path: one 1 KiB object, every request a hit after a warm-up; wrk 1 thread, 64 keep-alive "
             f"connections, {args.warmup} s warm-up then {args.seconds} s measured; medians of {args.rounds} rounds; CPU is "
             "utime+stime of the cache's processes divided by requests served",
             f"- offload: {KEYS:,} keys of 1 KiB drawn Zipf(1.0), {args.zipf_seconds} s at 64 connections from a cold cache, "
             f"each cache given {MEMORY_MIB} MiB; origin requests counted by the origin", "",
             "## Hit path", "",
             "| cache | req/s | CPU µs/req | vs best peer | p99 ms | origin requests |", "|---|---|---|---|---|---|"]
    med = {name: {k: c.median([r[k] for r in runs]) for k in ("rps", "cpu_us", "p99_ms", "origin_requests")}
           for name, runs in hits.items()}
    peers = [n for n in med if not n.startswith("Seawall")]
    best = min(med[n]["cpu_us"] for n in peers) if peers else None
    for name, m in med.items():
        ratio = f"{m['cpu_us'] / best:.2f}×" if best else "—"
        lines.append(f"| {name} | {m['rps']:,.0f} | {m['cpu_us']:.1f} | {ratio} | {m['p99_ms']:.2f} | {m['origin_requests']:.0f} |")
    lines += ["", "Per-round CPU µs/req: " + "; ".join(
        f"{name}: " + ", ".join(f"{r['cpu_us']:.1f}" for r in runs) for name, runs in hits.items()), "",
        "## Origin offload (Zipf 1.0)", "",
        "| cache | requests | reached the origin | hit ratio | peak RSS MiB |", "|---|---|---|---|---|"]
    for name, o in offload.items():
        lines.append(f"| {name} | {o['requests']:,} | {o['origin']:,} | {100 * o['hit_ratio']:.1f}% | {o['peak_rss_mib']:.0f} |")
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()
