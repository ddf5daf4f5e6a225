#!/usr/bin/env bash
# Seawall vs nginx vs HAProxy vs direct: req/s, CPU µs per request, p50/p99, peak RSS.
# Installs nginx, HAProxy and wrk with apt when missing. Results: bench/results/proxy.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/proxy.py "$@"
