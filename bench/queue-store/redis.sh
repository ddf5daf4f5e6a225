#!/usr/bin/env bash
# XADD from 64 concurrent clients with appendfsync always; restores previous config afterwards.
# Usage: redis.sh [n_per_run] [runs]
set -u
N=${1:-200000}; RUNS=${2:-3}
R="redis-cli -h 127.0.0.1 -p 6379"
PREV_AOF=$($R CONFIG GET appendonly | sed -n 2p)
PREV_FSYNC=$($R CONFIG GET appendfsync | sed -n 2p)
PREV_REWRITE=$($R CONFIG GET auto-aof-rewrite-percentage | sed -n 2p)
DIR=$($R CONFIG GET dir | sed -n 2p); AOFDIR=$DIR/$($R CONFIG GET appenddirname | sed -n 2p)
[ -e "$AOFDIR" ] && AOFDIR_EXISTED=1 || AOFDIR_EXISTED=0
echo "# previous: appendonly=$PREV_AOF appendfsync=$PREV_FSYNC auto-aof-rewrite-percentage=$PREV_REWRITE aofdir_existed=$AOFDIR_EXISTED"
restore() {
  $R DEL qs-bench >/dev/null
  $R CONFIG SET appendfsync "$PREV_FSYNC" >/dev/null
  $R CONFIG SET auto-aof-rewrite-percentage "$PREV_REWRITE" >/dev/null
  $R CONFIG SET appendonly "$PREV_AOF" >/dev/null
  echo "# restored: appendonly=$($R CONFIG GET appendonly | sed -n 2p) appendfsync=$($R CONFIG GET appendfsync | sed -n 2p) auto-aof-rewrite-percentage=$($R CONFIG GET auto-aof-rewrite-percentage | sed -n 2p) qs-bench exists=$($R EXISTS qs-bench)"
  if [ "$AOFDIR_EXISTED" = 0 ] && [ "$PREV_AOF" = no ]; then rm -rf "$AOFDIR"; echo "# removed AOF dir created by this run: $AOFDIR"; fi
}
trap restore EXIT
$R CONFIG SET appendfsync always >/dev/null
$R CONFIG SET auto-aof-rewrite-percentage 0 >/dev/null   # no background AOF rewrite mid-run (keeps size/job honest)
$R CONFIG SET appendonly yes >/dev/null
# wait for the initial AOF rewrite triggered by enabling appendonly
for i in $(seq 1 100); do
  $R INFO persistence | grep -qE 'aof_rewrite_in_progress:1|aof_rewrite_scheduled:1' || break; sleep 0.1
done
VAL=$(head -c 300 /dev/zero | tr '\0' 'x')
aofsize() { $R INFO persistence | sed -n 's/^aof_current_size:\([0-9]*\).*/\1/p' | tr -d '\r'; }
# warm-up
nice -n 10 redis-benchmark -h 127.0.0.1 -p 6379 -c 64 -n 5000 -P 1 -q XADD qs-bench '*' id __rand_int__ job "$VAL" >/dev/null
$R DEL qs-bench >/dev/null
for r in $(seq 1 $RUNS); do
  A0=$(aofsize); M0=$($R INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' | tr -d '\r')
  OUT=$(nice -n 10 redis-benchmark -h 127.0.0.1 -p 6379 -c 64 -n "$N" -P 1 -r 1000000000 --csv XADD qs-bench '*' id __rand_int__ job "$VAL" | tail -1)
  A1=$(aofsize); M1=$($R INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' | tr -d '\r')
  LEN=$($R XLEN qs-bench)
  echo "RESULT	redis	run=$r	csv=$OUT	xlen=$LEN	aof_bytes_per_job=$(( (A1-A0)/LEN ))	mem_bytes_per_job=$(( (M1-M0)/LEN ))"
  $R DEL qs-bench >/dev/null
done
