#!/usr/bin/env bash
# TLS termination: Seawall vs nginx vs HAProxy — CPU per request on keep-alive TLS connections,
# full handshakes per second, bytes per idle TLS connection. Installs nginx, HAProxy, wrk and
# openssl with apt when missing. Results: bench/results/tls.md
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/tls.py "$@"
