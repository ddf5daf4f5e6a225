"""Shared helpers for Seawall's benchmark scripts: start peers, read CPU and memory of processes,
run wrk, and write results. Everything runs on 127.0.0.1; every load is bounded in time."""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / "bench" / "tmp"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY_1K = "x" * 1024


def need(*tools):
    """Installs missing tools: Debian packages with apt (the scripts run as root here), oha with
    cargo."""
    packages = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "valgrind": "valgrind",
                "perf": "linux-perf", "openssl": "openssl"}
    missing = [packages[t] for t in tools if t in packages and shutil.which(t) is None]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    if "oha" in tools and shutil.which("oha") is None:
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)


def build_seawall():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "seawall"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else ROOT / "target") / "release" / "seawall"


def wait_port(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def process_tree(pid):
    """pid and all its descendants."""
    pids = [pid]
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in out:
        pids.extend(process_tree(int(child)))
    return pids


def cpu_split(pids):
    """(user, kernel) CPU seconds of `pids` so far."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            kernel += int(fields[12])  # stime
        except FileNotFoundError:
            pass
    return user / CLK_TCK, kernel / CLK_TCK


def cpu_seconds(pids):
    return sum(cpu_split(pids))


def rss_kib(pids, field="VmRSS"):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class Proc:
    """A peer process started by the benchmark, stopped at the end."""

    def __init__(self, name, argv, port, cwd=None):
        self.name = name
        self.port = port
        self.log = open(TMP / f"{name}.log", "w")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                      start_new_session=True)
        wait_port(port)
        time.sleep(0.3)  # let worker processes finish starting before their CPU is counted

    def pids(self):
        return process_tree(self.popen.pid)

    def stop(self):
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def nginx_origin(port):
    conf = TMP / "origin-nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {TMP}/origin-nginx.pid;
error_log {TMP}/origin-nginx.err warn;
events {{ worker_connections 9000; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;
    location / {{ default_type text/plain; return 200 "{BODY_1K}"; }}
    location = /__origin_status {{ stub_status; }}
  }}
}}
""")
    return Proc("origin", ["nginx", "-c", str(conf), "-p", str(TMP)], port)


def origin_accepts(port):
    """Connections the nginx origin on `port` has accepted so far (its stub_status counter)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__origin_status", timeout=5) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[0])


def nginx_proxy(port, origin_port):
    conf = TMP / "proxy-nginx.conf"
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {TMP}/proxy-nginx.pid;
error_log {TMP}/proxy-nginx.err warn;
events {{ worker_connections 9000; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return Proc("nginx", ["nginx", "-c", str(conf), "-p", str(TMP)], port)


def haproxy(port, origin_port):
    conf = TMP / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 2
  maxconn 9000
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server origin 127.0.0.1:{origin_port}
""")
    return Proc("haproxy", ["haproxy", "-f", str(conf)], port)


def seawall(binary, port, admin_port, origin_port, name="seawall", protections=False, adaptive=True,
            server_extra=""):
    conf = TMP / f"{name}.toml"
    extra = "" if adaptive else "adaptive_concurrency = false\n"
    limits = ""
    route_extra = ""
    if protections:
        # Every protection on the request path, set so that none of them refuses anything: active
        # health checks, passive ejection, a circuit breaker, retries with their budget, a
        # bulkhead, and a rate limit on the route (every wrk connection comes from 127.0.0.1: one
        # key, the busiest case for the key table). Metrics are always on.
        extra += ('health = { path = "/", interval = "1s", unhealthy_after = 2, healthy_after = 2 }\n'
                 'passive = { consecutive_failures = 5 }\n'
                 'breaker = { failure_rate = 0.5, min_requests = 20, window = "10s", open_for = "30s" }\n'
                 'retry = { attempts = 2, backoff = "25ms", budget = 0.2, on_status = [502, 503] }\n'
                 'bulkhead = { max_concurrency = 100000, max_queue = 100, queue_timeout = "1s" }\n')
        limits = '[rate_limits.api]\nkey = "ip"\nrate = "100000000/s"\n'
        route_extra = 'rate_limit = "api"\n'
    else:
        extra += 'passive = { consecutive_failures = 0 }\n'
    conf.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin_port}"
workers = 2
max_connections = 40000
{server_extra}
[log]
level = "warn"
[upstreams.origin]
servers = ["127.0.0.1:{origin_port}"]
{extra}
{limits}
[[routes]]
name = "all"
upstream = "origin"
{route_extra}""")
    return Proc(name, [str(binary), "run", "--config", str(conf)], port)


def wrk(port, seconds, connections=64, threads=1, path="/", scheme="http", headers=()):
    extra = [arg for h in headers for arg in ("-H", h)]
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         *extra, f"{scheme}://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        lat[pct] = value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": requests, "rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non2xx": int(errors.group(1)) if errors else 0, "raw": out}


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def median(values):
    return statistics.median(values)


def header(title, command):
    return (f"# {title}\n\n"
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
            f"- machine: {os.cpu_count()} cores, {cpu_model()}\n"
            f"- command: `{command}`\n")


def setup():
    TMP.mkdir(parents=True, exist_ok=True)
    try:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    sys.stdout.reconfigure(line_buffering=True)


def run_rounds(peers, rounds, measure):
    """Runs `measure(name, proc, port)` for every peer in every round. A peer is
    (name, start, port) where `start()` launches it (None: measure the origin directly); each is
    started fresh for its turn and stopped after it. Returns {name: [result per round]}."""
    results = {name: [] for name, _, _ in peers}
    for round_no in range(rounds):
        for name, start, port in peers:
            proc = start() if start else None
            try:
                result = measure(name, proc, port)
                results[name].append(result)
                print(f"round {round_no + 1} {name}: {result}")
            finally:
                if proc:
                    proc.stop()
                    time.sleep(0.5)
    return results


def write_result(path, lines):
    """Writes a results table and echoes it."""
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    print(text)
