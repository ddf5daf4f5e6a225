"""The durable queue, measured in one run:

- storage: acknowledgements per second through the queue's enqueue with 64 concurrent producers,
  each acknowledged only once durable — the embedded store (fjall, group commit + fdatasync) and
  the Redis Streams backend with Redis set to `appendonly yes` + `appendfsync always` — and raw
  Redis `XADD` from 64 clients with the same settings (redis-benchmark) as the anchor;
- HTTP: POST requests answered 202 per second through Seawall (the topic paused, so the run
  measures accepting), beside the same POSTs proxied by Seawall to an nginx origin, in the same run;
- delivery: the topic resumed, jobs delivered per second to the nginx origin until none is left;
- optionally (`--kill-rounds N`), the kill -9 durability test with N rounds.

Usage: python3 bench/queue.py [--seconds 10] [--rounds 3] [--kill-rounds 0]
Writes bench/results/queue.md. Redis's appendonly/appendfsync settings are restored at the end.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import common as c

ORIGIN, SEAWALL, ADMIN = 18100, 18101, 18102
BODY = '{"to":"someone@example.com","template":"welcome","data":{"name":"' + "x" * 180 + '"}}'


def need_redis_tools():
    if shutil.which("redis-benchmark") is None or shutil.which("redis-cli") is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-tools"], check=True, env=env)


def redis(*args):
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", *args],
                           capture_output=True, text=True, check=True).stdout.strip()


class RedisDurable:
    """Redis with `appendonly yes` and `appendfsync always` while in use; restored afterwards."""

    def __enter__(self):
        self.before = {k: redis("CONFIG", "GET", k).splitlines()[1]
                       for k in ("appendonly", "appendfsync", "auto-aof-rewrite-percentage")}
        redis("CONFIG", "SET", "appendfsync", "always")
        redis("CONFIG", "SET", "auto-aof-rewrite-percentage", "0")
        redis("CONFIG", "SET", "appendonly", "yes")
        for _ in range(100):
            info = redis("INFO", "persistence")
            if "aof_rewrite_in_progress:1" not in info and "aof_rewrite_scheduled:1" not in info:
                break
            time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        for k in ("appendfsync", "auto-aof-rewrite-percentage", "appendonly"):
            redis("CONFIG", "SET", k, self.before[k])


def drop_bench_keys():
    """Deletes what the Redis backend's run stored (a stream, counters, a status per job)."""
    subprocess.run("redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'seawall-bench:*' "
                   "| xargs -r -n 5000 redis-cli -h 127.0.0.1 -p 6379 DEL > /dev/null",
                   shell=True, check=True)


def build():
    binary = c.build_seawall()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "seawall-queue", "--example", "acks"],
                   cwd=c.ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR")
    acks = (c.Path(target) if target else c.ROOT / "target") / "release" / "examples" / "acks"
    return binary, acks


def acks(binary, kind, place, seconds):
    out = subprocess.run([str(binary), kind, place, "64", str(seconds)], capture_output=True,
                         text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    fields = dict(f.split("=", 1) for f in line.split("\t")[2:])
    return {k: float(v) for k, v in fields.items()}


def xadd(n):
    value = "x" * 300
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", "6379", "-c", "64", "-n", str(n),
                          "-P", "1", "-r", "1000000000", "--csv", "XADD", "qs-bench", "*", "id",
                          "__rand_int__", "job", value], capture_output=True, text=True,
                         check=True).stdout
    redis("DEL", "qs-bench")
    row = [l for l in out.splitlines() if l.startswith('"XADD')][-1]
    return float(row.split(",")[1].strip('"'))


def seawall(binary, data_dir):
    conf = c.TMP / "queue-seawall.toml"
    conf.write_text(f"""
[server]
listen = "127.0.0.1:{SEAWALL}"
admin = "127.0.0.1:{ADMIN}"
workers = 2
max_connections = 40000
[log]
level = "warn"
[overload]
cpu = "off"
[queue]
data_dir = "{data_dir}"
max_jobs = 100000000
max_bytes = "64GiB"
[queue.topics.emails]
paused = true
concurrency = 64
[upstreams.origin]
servers = ["127.0.0.1:{ORIGIN}"]
passive = {{ consecutive_failures = 0 }}
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "origin"
[[routes]]
name = "emails"
path_prefix = "/emails"
queue = {{ topic = "emails", deliver_to = "origin" }}
""")
    return c.Proc("queue-seawall", [str(binary), "run", "--config", str(conf)], SEAWALL)


def wrk_post(path, seconds, connections=64):
    script = c.TMP / "queue-post.lua"
    body = BODY.replace('"', '\\"')
    script.write_text(f'wrk.method = "POST"\nwrk.body = "{body}"\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{SEAWALL}{path}"],
                         capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"^\s+99(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": requests, "rps": rps, "p99_ms": p99,
            "non2xx": int(errors.group(1)) if errors else 0}


def admin(method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


def http_round(binary, seconds, round_no):
    data_dir = c.TMP / f"queue-data-{round_no}"
    shutil.rmtree(data_dir, ignore_errors=True)
    proc = seawall(binary, data_dir)
    try:
        pids = proc.pids()
        wrk_post("/plain", 2)
        before = c.cpu_seconds(pids)
        plain = wrk_post("/plain", seconds)
        plain["cpu_us"] = (c.cpu_seconds(pids) - before) * 1e6 / max(1, plain["requests"])
        wrk_post("/emails", 2)
        before = c.cpu_seconds(pids)
        queued = wrk_post("/emails", seconds)
        queued["cpu_us"] = (c.cpu_seconds(pids) - before) * 1e6 / max(1, queued["requests"])
        depth = admin("GET", "/api/v1/state")["queue"]["topics"]["emails"]["depth"]
        before, started = c.cpu_seconds(pids), time.time()
        admin("POST", "/api/v1/queue/emails/resume")
        while admin("GET", "/api/v1/state")["queue"]["topics"]["emails"]["depth"] > 0:
            time.sleep(0.05)
        elapsed = time.time() - started
        delivery = {"jobs": depth, "jobs_per_s": depth / elapsed,
                    "cpu_us": (c.cpu_seconds(pids) - before) * 1e6 / max(1, depth)}
        return {"plain": plain, "queued": queued, "delivery": delivery}
    finally:
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kill-rounds", type=int, default=0)
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "queue.md"))
    args = ap.parse_args()
    c.setup()
    # Stopped from outside: still restore Redis's settings and stop the peers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    c.need("nginx", "wrk")
    need_redis_tools()
    binary, acks_binary = build()
    storage = {"embedded": [], "redis backend": [], "redis XADD": []}
    with RedisDurable():
        for r in range(args.rounds):
            data = c.TMP / "queue-acks"
            shutil.rmtree(data, ignore_errors=True)
            storage["embedded"].append(acks(acks_binary, "embedded", str(data), args.seconds))
            shutil.rmtree(data, ignore_errors=True)
            storage["redis backend"].append(
                acks(acks_binary, "redis", "redis://127.0.0.1:6379", args.seconds))
            drop_bench_keys()
            storage["redis XADD"].append({"acks_per_s": xadd(300_000)})
            print(f"storage round {r + 1}: " + ", ".join(
                f"{k} {v[-1]['acks_per_s']:.0f}/s" for k, v in storage.items()))
    origin = c.nginx_origin(ORIGIN)
    http = []
    try:
        for r in range(args.rounds):
            http.append(http_round(binary, args.seconds, r))
            print(f"http round {r + 1}: {http[-1]}")
    finally:
        origin.stop()
    kill = None
    if args.kill_rounds:
        env = dict(os.environ, SEAWALL_KILL_ROUNDS=str(args.kill_rounds))
        started = time.time()
        result = subprocess.run(["cargo", "test", "--release", "-q", "-p", "seawall", "--test",
                                 "queue_durability"], cwd=c.ROOT, env=env, capture_output=True,
                                text=True)
        kill = (result.returncode == 0, time.time() - started, result.stdout[-400:] + result.stderr[-400:])

    med = lambda rows, key: c.median([row[key] for row in rows])
    emb, rb, xa = (storage[k] for k in ("embedded", "redis backend", "redis XADD"))
    plain = [h["plain"] for h in http]
    queued = [h["queued"] for h in http]
    delivery = [h["delivery"] for h in http]
    ratio = med(queued, "rps") / med(plain, "rps")
    lines = [c.header("Durable queue", f"python3 bench/queue.py --seconds {args.seconds} --rounds {args.rounds}"
                      + (f" --kill-rounds {args.kill_rounds}" if args.kill_rounds else "")),
             "- storage: `examples/acks` (seawall-queue) — 64 tasks on 2 threads, each enqueues a ~300-byte "
             "job and waits for its acknowledgement; the embedded store acknowledges after the group "
             "commit's fdatasync; Redis runs `appendonly yes`, `appendfsync always` for the whole storage "
             "part (restored after); `redis XADD` is redis-benchmark, 64 clients, 300-byte field",
             f"- HTTP: wrk 1 thread, 64 connections, POST with a {len(BODY)}-byte JSON body, 2 s warm-up "
             f"then {args.seconds} s; `/plain` is proxied to an nginx origin (1 worker), `/emails` is a queue "
             "route whose topic is paused while wrk runs; CPU is Seawall's utime+stime per request",
             "- delivery: the topic resumed (concurrency 64) until its depth is 0; jobs per second to the "
             "same nginx origin",
             "- the machine's fsync latency drifts over minutes (seen 55 µs to 2 ms): compare within a round",
             "",
             "## Storage acknowledgements per second (fsync before ack)",
             "",
             "| store | acks/s (median) | rounds | mean ack µs | mean group | target |",
             "|---|---|---|---|---|---|",
             f"| Seawall embedded (fjall) | **{med(emb, 'acks_per_s'):,.0f}** | "
             + " / ".join(f"{r['acks_per_s']:,.0f}" for r in emb)
             + f" | {med(emb, 'mean_ack_us'):,.0f} | {med(emb, 'mean_batch'):.1f} jobs, "
             f"{med(emb, 'mean_commit_us'):,.0f} µs | ≥ 100,000 |",
             f"| Seawall Redis backend (Lua enqueue) | {med(rb, 'acks_per_s'):,.0f} | "
             + " / ".join(f"{r['acks_per_s']:,.0f}" for r in rb)
             + f" | {med(rb, 'mean_ack_us'):,.0f} | — | — |",
             f"| Redis 7 `XADD` (redis-benchmark) | {med(xa, 'acks_per_s'):,.0f} | "
             + " / ".join(f"{r['acks_per_s']:,.0f}" for r in xa) + " | — | — | anchor |",
             "",
             "## Through HTTP",
             "",
             "| | req/s (median) | rounds | p99 ms | Seawall CPU µs/req | non-2xx |",
             "|---|---|---|---|---|---|",
             f"| POST proxied to nginx (`/plain`) | {med(plain, 'rps'):,.0f} | "
             + " / ".join(f"{r['rps']:,.0f}" for r in plain)
             + f" | {med(plain, 'p99_ms'):.2f} | {med(plain, 'cpu_us'):.1f} | {sum(r['non2xx'] for r in plain)} |",
             f"| POST queued, answered 202 (`/emails`) | **{med(queued, 'rps'):,.0f}** | "
             + " / ".join(f"{r['rps']:,.0f}" for r in queued)
             + f" | {med(queued, 'p99_ms'):.2f} | {med(queued, 'cpu_us'):.1f} | {sum(r['non2xx'] for r in queued)} |",
             "",
             f"202 rate / proxy rate: **{ratio:.2f}×** (target ≥ 0.8×).",
             "",
             "## Delivery",
             "",
             "| jobs delivered (median) | jobs/s (median) | rounds | Seawall CPU µs/job | target |",
             "|---|---|---|---|---|",
             f"| {med(delivery, 'jobs'):,.0f} | **{med(delivery, 'jobs_per_s'):,.0f}** | "
             + " / ".join(f"{r['jobs_per_s']:,.0f}" for r in delivery)
             + f" | {med(delivery, 'cpu_us'):.1f} | ≥ 10,000 |"]
    if kill:
        ok, took, tail = kill
        lines += ["", "## kill -9 durability",
                  "",
                  f"`SEAWALL_KILL_ROUNDS={args.kill_rounds} cargo test --release -p seawall --test "
                  f"queue_durability`: {'passed' if ok else 'FAILED'} in {took:.0f} s "
                  "(16 clients, a random kill every 20–270 ms, every 202 delivered)."]
        if not ok:
            lines += ["", "```", tail, "```"]
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()
