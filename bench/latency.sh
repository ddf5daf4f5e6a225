#!/usr/bin/env bash
# Open-loop latency at half of nginx's capacity: Seawall, nginx, HAProxy, direct.
# Installs nginx, HAProxy, wrk (apt) and oha (cargo install oha --locked) when missing.
# Results: bench/results/latency.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/latency.py "$@"
