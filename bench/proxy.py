"""Throughput, CPU per request, latency and memory of Seawall against nginx and HAProxy, one run.

Usage: python3 bench/proxy.py [--seconds 10] [--rounds 3] [--baseline PATH]
Writes bench/results/proxy.md. --baseline adds a row for another seawall binary (an earlier
commit, say) measured in the same run, for before/after comparisons.
"""

import argparse
import common as c

ORIGIN, NGINX, HAPROXY, SEAWALL, SEAWALL_FULL, BASELINE = 18000, 18001, 18002, 18003, 18004, 18005


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "proxy.md"))
    ap.add_argument("--baseline", help="another seawall binary to measure in the same run")
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "haproxy", "wrk")
    binary = c.build_seawall()

    origin = c.nginx_origin(ORIGIN)
    peers = [
        ("direct (origin, no proxy)", None, ORIGIN),
        ("nginx 2 workers", lambda: c.nginx_proxy(NGINX, ORIGIN), NGINX),
        ("HAProxy nbthread 2", lambda: c.haproxy(HAPROXY, ORIGIN), HAPROXY),
        ("Seawall 2 workers, no policies", lambda: c.seawall(binary, SEAWALL, 19903, ORIGIN), SEAWALL),
        ("Seawall 2 workers, all protections", lambda: c.seawall(binary, SEAWALL_FULL, 19904, ORIGIN, "seawall-full", True), SEAWALL_FULL),
    ]
    if args.baseline:
        peers.append(("Seawall baseline (--baseline), no policies",
                      lambda: c.seawall(args.baseline, BASELINE, 19905, ORIGIN, "seawall-baseline"), BASELINE))
    def measure(name, proc, port):
        c.wrk(port, args.warmup)
        pids = proc.pids() if proc else []
        origin_pids = origin.pids()
        (user0, sys0), ocpu0 = c.cpu_split(pids), c.cpu_seconds(origin_pids)
        run = c.wrk(port, args.seconds)
        (user1, sys1), ocpu1 = c.cpu_split(pids), c.cpu_seconds(origin_pids)
        per_request = lambda a, b: (b - a) * 1e6 / run["requests"] if proc else None
        run["user_us"], run["kernel_us"] = per_request(user0, user1), per_request(sys0, sys1)
        run["cpu_us"] = run["user_us"] + run["kernel_us"] if proc else None
        run["origin_cpu_us"] = (ocpu1 - ocpu0) * 1e6 / run["requests"]
        run["peak_rss_mib"] = c.rss_kib(pids, "VmHWM") / 1024 if proc else None
        run.pop("raw")
        return run

    try:
        results = c.run_rounds(peers, args.rounds, measure)
    finally:
        origin.stop()

    lines = [c.header("Proxy throughput and CPU per request",
                      f"python3 bench/proxy.py --seconds {args.seconds} --rounds {args.rounds}"
                      + (f" --baseline {args.baseline}" if args.baseline else "")),
             f"- load: wrk 1 thread, 64 keep-alive connections, {args.warmup} s warm-up then "
             f"{args.seconds} s measured; origin: nginx 1 worker answering a fixed 1 KiB body",
             f"- medians of {args.rounds} rounds; CPU is utime+stime of the proxy's processes "
             "(all threads, master and workers) divided by requests served",
             "",
             "| proxy | req/s | CPU µs/req | user + kernel µs | vs nginx | p50 ms | p99 ms | peak RSS MiB | non-2xx |",
             "|---|---|---|---|---|---|---|---|---|"]
    nginx_cpu = c.median([r["cpu_us"] for r in results["nginx 2 workers"]])
    for name, _, _ in peers:
        runs = results[name]
        cpu = c.median([r["cpu_us"] for r in runs]) if runs[0]["cpu_us"] is not None else None
        rss = c.median([r["peak_rss_mib"] for r in runs]) if runs[0]["peak_rss_mib"] is not None else None
        split = "—" if cpu is None else (f"{c.median([r['user_us'] for r in runs]):.1f} + "
                                         f"{c.median([r['kernel_us'] for r in runs]):.1f}")
        lines.append(
            f"| {name} | {c.median([r['rps'] for r in runs]):,.0f} | "
            f"{'—' if cpu is None else f'{cpu:.1f}'} | {split} | {'—' if cpu is None else f'{cpu / nginx_cpu:.2f}×'} | "
            f"{c.median([r['p50_ms'] for r in runs]):.3f} | {c.median([r['p99_ms'] for r in runs]):.3f} | "
            f"{'—' if rss is None else f'{rss:.1f}'} | {sum(r['non2xx'] for r in runs)} |")
    lines += ["", "Per-round CPU µs/req: " + "; ".join(
        f"{name}: " + ", ".join(f"{r['cpu_us']:.1f}" for r in results[name])
        for name, _, _ in peers if results[name][0]["cpu_us"] is not None), ""]
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()
