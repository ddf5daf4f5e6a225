#!/usr/bin/env bash
# Bytes of proxy memory per idle keep-alive connection: Seawall, nginx, HAProxy.
# Installs nginx and HAProxy with apt when missing. Results: bench/results/idle.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/idle.py "$@"
