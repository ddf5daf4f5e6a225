#!/usr/bin/env bash
# Build (standalone crate, own target dir) and run every measurement; raw RESULT lines go to stdout.
# Stores are interleaved round-robin (calib, redb, fjall, redis) x ROUNDS because this VM's fsync
# latency drifts by >10x over minutes; each round's calib line shows the fsync regime it ran in.
set -eu
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/qs-target}
DATA=${DATA:-/tmp/qs-data}   # /tmp is on the real disk here (df /tmp == /dev/vda ext4, same as /work)
ROUNDS=${ROUNDS:-3}
REDIS_N=${REDIS_N:-300000}
nice -n 10 cargo build --release -q
B=$CARGO_TARGET_DIR/release/queue-store
mkdir -p "$DATA"
echo "# $(date -u) $(uname -r) nproc=$(nproc) data=$DATA fs=$(df --output=source,fstype "$DATA" | tail -1)"
for r in $(seq 1 "$ROUNDS"); do
  echo "# round $r $(date -u +%T)"
  nice -n 10 $B calib "$DATA" 1 0 3
  for s in redb fjall; do nice -n 10 $B $s "$DATA" 1 2 10; done
  ./redis.sh "$REDIS_N" 1
done
rm -rf "$DATA"
