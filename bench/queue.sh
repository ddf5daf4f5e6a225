#!/usr/bin/env bash
# The durable queue: storage acknowledgements per second (embedded vs Redis with appendfsync always,
# and raw Redis XADD), HTTP 202s per second beside the same POSTs proxied, delivery rate, and
# optionally the kill -9 durability test with many rounds (--kill-rounds 200).
# Installs nginx, wrk and redis-tools with apt when missing. Results: bench/results/queue.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/queue.py "$@"
