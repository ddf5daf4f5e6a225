"""User-space instructions per proxied request, counted by callgrind: repeatable on this shared VM
where CPU time is not (valgrind counts instructions, not seconds). The kernel's share is not
included. Two runs with different request counts; the difference cancels start-up and shutdown.

Usage: python3 bench/instructions.py [--requests 3000]
Prints the figure; the proxy benchmark's results file quotes it.
"""

import argparse
import re
import signal
import subprocess
import time

import common as c

ORIGIN, SEAWALL = 18000, 18003


def run(binary, n):
    out = c.TMP / f"callgrind.{n}.out"
    conf = c.TMP / "instr.toml"
    conf.write_text(f"""
[server]
listen = "127.0.0.1:{SEAWALL}"
admin = "127.0.0.1:19903"
workers = 1
[log]
level = "warn"
[upstreams.origin]
servers = ["127.0.0.1:{ORIGIN}"]
passive = {{ consecutive_failures = 0 }}
[[routes]]
name = "all"
upstream = "origin"
""")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             str(binary), "run", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c.wait_port(SEAWALL, timeout=60)
        subprocess.run(["oha", "-n", str(n), "-c", "8", "--no-tui", f"http://127.0.0.1:{SEAWALL}/"],
                       check=True, capture_output=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--binary", help="a seawall binary to measure instead of building this tree")
    args = ap.parse_args()
    c.setup()
    c.need("nginx", "oha", "valgrind")
    binary = args.binary or c.build_seawall()
    origin = c.nginx_origin(ORIGIN)
    try:
        small = run(binary, args.requests)
        large = run(binary, args.requests * 2)
    finally:
        origin.stop()
    per_request = (large - small) / args.requests
    print(f"{per_request:,.0f} instructions per request (user space, callgrind)")


if __name__ == "__main__":
    main()
