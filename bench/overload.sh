#!/usr/bin/env bash
# The overload drill: 10x a capacity-limited origin's capacity, open-loop, three phases back to
# back, behind Seawall, nginx (limit_req per class) and HAProxy (maxconn + priority queue).
# Installs nginx and HAProxy with apt when missing; builds the load generator (bench/loadgen).
# Results: bench/results/overload.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/overload.py "$@"
