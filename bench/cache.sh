#!/usr/bin/env bash
# The response cache against Varnish (malloc) and nginx proxy_cache: CPU per hit, and origin
# offload under a Zipf(1.0) workload. Installs Varnish, nginx and wrk with apt when missing.
# Results: bench/results/cache.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/cache.py "$@"
