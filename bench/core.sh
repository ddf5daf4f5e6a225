#!/usr/bin/env bash
# criterion micro-benchmarks of seawall-core. Results: bench/results/core.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/core.py "$@"
