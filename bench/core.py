"""Runs the criterion micro-benchmarks of seawall-core and writes ns/op to bench/results/core.md.

Usage: python3 bench/core.py
"""

import re
import subprocess

import common as c


def main():
    c.setup()
    out = subprocess.run(["cargo", "bench", "-q", "-p", "seawall-core", "--bench", "core", "--",
                          "--warm-up-time", "1", "--measurement-time", "3"],
                         cwd=c.ROOT, capture_output=True, text=True, check=True).stdout
    rows = []
    name = None
    notes = [line for line in out.splitlines() if line.startswith("rate limit table bytes per key")]
    for line in out.splitlines():
        if line in notes:
            continue
        m = re.match(r"^(\S.*?)\s+time:\s+\[([\d.]+) (\w+) ([\d.]+) (\w+) ([\d.]+) (\w+)\]", line)
        if m:
            name = m.group(1).strip()
        else:
            m2 = re.match(r"^\s+time:\s+\[([\d.]+) (\w+) ([\d.]+) (\w+) ([\d.]+) (\w+)\]", line)
            if m2 and name is None:
                continue
            if not m2:
                if line and not line.startswith(" "):
                    name = line.strip()
                continue
            m = re.match(r"^()\s+time:\s+\[([\d.]+) (\w+) ([\d.]+) (\w+) ([\d.]+) (\w+)\]", line)
        value, unit = float(m.group(4)), m.group(5)
        ns = value * {"ps": 0.001, "ns": 1.0, "µs": 1000.0, "us": 1000.0, "ms": 1e6}[unit]
        rows.append((name, ns))
        name = None
    lines = [c.header("seawall-core micro-benchmarks", "python3 bench/core.py"),
             "- criterion, 1 s warm-up, 3 s measurement; the middle estimate of each",
             "", "| primitive | ns/op |", "|---|---|"]
    lines += [f"| {n} | {ns:.2f} |" for n, ns in rows]
    lines += [""] + [f"- {n}" for n in notes]
    c.write_result(c.ROOT / "bench" / "results" / "core.md", lines)


if __name__ == "__main__":
    main()
