"""Profiles Seawall's proxy path: perf (software cpu-clock samples, as this VM has no hardware
counters) while wrk drives it like bench/proxy.py does; prints the hottest symbols.

Usage: python3 bench/profile.py [--seconds 10] [--connections 64]
Installs perf (Debian's linux-perf) when missing.
"""

import argparse
import subprocess
import threading

import common as c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "wrk", "perf")
    binary = c.build_seawall()
    origin = c.nginx_origin(18000)
    proxy = c.seawall(binary, 18003, 19903, 18000)
    try:
        c.wrk(18003, 2, args.connections)
        data = c.TMP / "perf.data"
        load = threading.Thread(target=c.wrk, args=(18003, args.seconds + 1, args.connections))
        load.start()
        subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-o", str(data),
                        "-p", str(proxy.popen.pid), "--", "sleep", str(args.seconds)],
                       check=True, capture_output=True)
        load.join()
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio",
                                 "--percent-limit", "0.4", "-g", "none", "--sort", "symbol"],
                                capture_output=True, text=True).stdout
        lines = [l for l in report.splitlines() if l.strip() and not l.startswith("#")]
        print("\n".join(lines[:args.top]))
    finally:
        proxy.stop()
        origin.stop()


if __name__ == "__main__":
    main()
