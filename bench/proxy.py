"""Throughput, CPU per request, latency, memory and upstream connection churn of Seawall against
nginx and HAProxy, one run, swept over the number of busy client connections.

Usage: python3 bench/proxy.py [--seconds 10] [--rounds 3] [--connections 64,256,1000,2000]
                              [--baseline PATH]
Writes bench/results/proxy.md. --baseline adds a row for another seawall binary (an earlier
commit, say) measured in the same run, for before/after comparisons.
"""

import argparse
import common as c

ORIGIN, NGINX, HAPROXY, SEAWALL, SEAWALL_FULL, BASELINE, SEAWALL_FIXED = 18000, 18001, 18002, 18003, 18004, 18005, 18006
DIRECT, NGINX_NAME, HAPROXY_NAME = "direct (origin, no proxy)", "nginx 2 workers", "HAProxy nbthread 2"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="64,256,1000,2000",
                    help="busy client connections, comma-separated; the first gets the detailed table")
    ap.add_argument("--out", default=str(c.ROOT / "bench" / "results" / "proxy.md"))
    ap.add_argument("--baseline", help="another seawall binary to measure in the same run")
    args = ap.parse_args()
    sweep = [int(n) for n in args.connections.split(",")]
    c.setup()
    c.need("nginx", "haproxy", "wrk")
    binary = c.build_seawall()

    origin = c.nginx_origin(ORIGIN)
    peers = [
        (DIRECT, None, ORIGIN),
        (NGINX_NAME, lambda: c.nginx_proxy(NGINX, ORIGIN), NGINX),
        (HAPROXY_NAME, lambda: c.haproxy(HAPROXY, ORIGIN), HAPROXY),
        ("Seawall 2 workers, no policies", lambda: c.seawall(binary, SEAWALL, 19903, ORIGIN), SEAWALL),
        ("Seawall 2 workers, no policies, adaptive concurrency off",
         lambda: c.seawall(binary, SEAWALL_FIXED, 19906, ORIGIN, "seawall-fixed", adaptive=False), SEAWALL_FIXED),
        ("Seawall 2 workers, all protections", lambda: c.seawall(binary, SEAWALL_FULL, 19904, ORIGIN, "seawall-full", True), SEAWALL_FULL),
    ]
    if args.baseline:
        peers.append(("Seawall baseline (--baseline), no policies",
                      lambda: c.seawall(args.baseline, BASELINE, 19905, ORIGIN, "seawall-baseline"), BASELINE))

    def measure_at(connections):
        def measure(name, proc, port):
            c.wrk(port, args.warmup, connections)
            pids = proc.pids() if proc else []
            origin_pids = origin.pids()
            (user0, sys0), ocpu0 = c.cpu_split(pids), c.cpu_seconds(origin_pids)
            accepts0 = c.origin_accepts(ORIGIN)
            run = c.wrk(port, args.seconds, connections)
            accepts1 = c.origin_accepts(ORIGIN)
            (user1, sys1), ocpu1 = c.cpu_split(pids), c.cpu_seconds(origin_pids)
            per_request = lambda a, b: (b - a) * 1e6 / run["requests"] if proc else None
            run["user_us"], run["kernel_us"] = per_request(user0, user1), per_request(sys0, sys1)
            run["cpu_us"] = run["user_us"] + run["kernel_us"] if proc else None
            run["origin_cpu_us"] = (ocpu1 - ocpu0) * 1e6 / run["requests"]
            # The second status read is itself one accepted connection.
            opened = max(0, accepts1 - accepts0 - 1) if proc else None
            run["opened_per_1000"] = opened * 1000 / run["requests"] if proc else None
            run["peak_rss_mib"] = c.rss_kib(pids, "VmHWM") / 1024 if proc else None
            if run["non2xx"]:
                print(f"WARNING: {name} answered {run['non2xx']} requests with a non-2xx status: "
                      "its row measures refusals, not proxying")
            run.pop("raw")
            return run
        return measure

    try:
        results = {n: c.run_rounds(peers, args.rounds, measure_at(n)) for n in sweep}
    finally:
        origin.stop()

    med = lambda runs, key: c.median([r[key] for r in runs])
    first = results[sweep[0]]
    lines = [c.header("Proxy throughput and CPU per request",
                      f"python3 bench/proxy.py --seconds {args.seconds} --rounds {args.rounds} "
                      f"--connections {args.connections}"
                      + (f" --baseline {args.baseline}" if args.baseline else "")),
             f"- load: wrk 1 thread, keep-alive connections, {args.warmup} s warm-up then "
             f"{args.seconds} s measured; origin: nginx 1 worker answering a fixed 1 KiB body",
             f"- medians of {args.rounds} rounds; CPU is utime+stime of the proxy's processes "
             "(all threads, master and workers) divided by requests served",
             "- upstream connections opened: connections the origin accepted during the measured "
             "seconds (its stub_status counter), per 1,000 requests",
             "",
             f"## {sweep[0]} busy connections",
             "",
             "| proxy | req/s | CPU µs/req | user + kernel µs | vs nginx | p50 ms | p99 ms | peak RSS MiB | non-2xx |",
             "|---|---|---|---|---|---|---|---|---|"]
    nginx_cpu = med(first[NGINX_NAME], "cpu_us")
    for name, start, _ in peers:
        runs = first[name]
        cpu = med(runs, "cpu_us") if start else None
        rss = med(runs, "peak_rss_mib") if start else None
        split = "—" if cpu is None else f"{med(runs, 'user_us'):.1f} + {med(runs, 'kernel_us'):.1f}"
        lines.append(
            f"| {name} | {med(runs, 'rps'):,.0f} | "
            f"{'—' if cpu is None else f'{cpu:.1f}'} | {split} | {'—' if cpu is None else f'{cpu / nginx_cpu:.2f}×'} | "
            f"{med(runs, 'p50_ms'):.3f} | {med(runs, 'p99_ms'):.3f} | "
            f"{'—' if rss is None else f'{rss:.1f}'} | {sum(r['non2xx'] for r in runs)} |")

    lines += ["", "## Concurrency sweep", "",
              "Best peer: the lower of nginx and HAProxy at that point, for each column.", "",
              "| busy connections | proxy | req/s | CPU µs/req | vs best peer | p99 ms | vs best peer | "
              "upstream connections opened / 1,000 req | origin CPU µs/req | non-2xx |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sweep:
        best_cpu = min(med(results[n][p], "cpu_us") for p in (NGINX_NAME, HAPROXY_NAME))
        best_p99 = min(med(results[n][p], "p99_ms") for p in (NGINX_NAME, HAPROXY_NAME))
        for name, start, _ in peers:
            if not start:
                continue
            runs = results[n][name]
            cpu, p99 = med(runs, "cpu_us"), med(runs, "p99_ms")
            lines.append(
                f"| {n:,} | {name} | {med(runs, 'rps'):,.0f} | {cpu:.1f} | {cpu / best_cpu:.2f}× | "
                f"{p99:.2f} | {p99 / best_p99:.2f}× | {med(runs, 'opened_per_1000'):.2f} | "
                f"{med(runs, 'origin_cpu_us'):.1f} | {sum(r['non2xx'] for r in runs)} |")

    refused = sorted({name for n in sweep for name, runs in results[n].items()
                      if any(r["non2xx"] for r in runs)})
    if refused:
        lines += ["", f"**Not a valid comparison: non-2xx answers from {', '.join(refused)}** "
                      "(their rows measure refusals, not proxying)."]
    lines += ["", "Per-round CPU µs/req:", ""]
    for n in sweep:
        lines.append(f"- {n:,}: " + "; ".join(
            f"{name}: " + ", ".join(f"{r['cpu_us']:.1f}" for r in results[n][name])
            for name, start, _ in peers if start))
    lines.append("")
    c.write_result(args.out, lines)


if __name__ == "__main__":
    main()
