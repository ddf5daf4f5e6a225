"""Latency under an open-loop load at a fixed rate (half of nginx's measured capacity), with oha's
latency correction: p50/p90/p99/p99.9 and the latency each proxy adds over a direct connection,
plus CPU per request at that rate. Seawall, nginx, HAProxy and direct, one run.

Usage: python3 bench/latency.py [--rate N] [--seconds 10] [--rounds 3] [--baseline PATH]
Installs oha (`cargo install oha --locked`) when missing; writes bench/results/latency.md.
--baseline adds another seawall binary (an earlier commit) to the same run.
"""

import argparse
import json
import subprocess

import common as c

ORIGIN, NGINX, HAPROXY, SEAWALL, BASELINE = 18000, 18001, 18002, 18003, 18005


def oha(port, rate, seconds):
    out = subprocess.run(
        ["oha", "-z", f"{seconds}s", "-q", str(rate), "-c", "64", "--latency-correction", "--no-tui",
         "--output-format", "json", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    p = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    return {"p50": p["p50"] * 1000, "p90": p["p90"] * 1000, "p99": p["p99"] * 1000,
            "p999": p["p99.9"] * 1000, "requests": sum(codes.values()),
            "errors": sum(v for k, v in codes.items() if not k.startswith("2"))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=0, help="requests/s; default: half of nginx's capacity")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "latency.md"))
    ap.add_argument("--baseline", help="another seawall binary to measure in the same run")
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "haproxy", "wrk", "oha")
    binary = c.build_seawall()
    origin = c.nginx_origin(ORIGIN)
    peers = [
        ("direct", None, ORIGIN),
        ("nginx 2 workers", lambda: c.nginx_proxy(NGINX, ORIGIN), NGINX),
        ("HAProxy nbthread 2", lambda: c.haproxy(HAPROXY, ORIGIN), HAPROXY),
        ("Seawall 2 workers", lambda: c.seawall(binary, SEAWALL, 19903, ORIGIN), SEAWALL),
    ]
    if args.baseline:
        peers.append(("Seawall baseline (--baseline)",
                      lambda: c.seawall(args.baseline, BASELINE, 19905, ORIGIN, "seawall-baseline"), BASELINE))
    rate = args.rate
    if not rate:
        proc = c.nginx_proxy(NGINX, ORIGIN)
        try:
            c.wrk(NGINX, 2)
            capacity = c.wrk(NGINX, 5)["rps"]
        finally:
            proc.stop()
        rate = int(capacity / 2 / 1000) * 1000
        print(f"nginx capacity {capacity:.0f} req/s: testing at {rate} req/s")
    def measure(name, proc, port):
        oha(port, rate, 2)
        pids = proc.pids() if proc else []
        cpu0 = c.cpu_seconds(pids)
        run = oha(port, rate, args.seconds)
        run["cpu_us"] = (c.cpu_seconds(pids) - cpu0) * 1e6 / run["requests"] if proc else None
        return run

    try:
        results = c.run_rounds(peers, args.rounds, measure)
    finally:
        origin.stop()
    med = {name: {k: c.median([r[k] for r in runs]) for k in ("p50", "p90", "p99", "p999")}
           for name, runs in results.items()}
    lines = [c.header("Latency at a fixed rate",
                      f"python3 bench/latency.py --rate {rate} --seconds {args.seconds} --rounds {args.rounds}"
                      + (f" --baseline {args.baseline}" if args.baseline else "")),
             f"- open loop: oha -q {rate} -c 64 --latency-correction, {args.seconds} s per run after a 2 s "
             "warm-up; origin: nginx 1 worker, fixed 1 KiB body",
             f"- medians of {args.rounds} rounds; \"added\" is the proxy's value minus direct's",
             "", "| target | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p90 | CPU µs/req | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, _, _ in peers:
        m, d = med[name], med["direct"]
        cpu = c.median([r["cpu_us"] for r in results[name]]) if results[name][0]["cpu_us"] is not None else None
        lines.append(f"| {name} | {m['p50']:.3f} | {m['p90']:.3f} | {m['p99']:.3f} | {m['p999']:.3f} | "
                     f"{m['p50'] - d['p50']:+.3f} | {m['p90'] - d['p90']:+.3f} | "
                     f"{'—' if cpu is None else f'{cpu:.1f}'} | {sum(r['errors'] for r in results[name])} |")
    lines += ["", "Per-round p99 ms: " + "; ".join(
        f"{name}: " + ", ".join(f"{r['p99']:.2f}" for r in results[name]) for name, _, _ in peers), ""]
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()
