#!/usr/bin/env bash
# Instructions per delivery of herald builds, under valgrind's callgrind (deterministic where
# CPU time on a shared machine is not). One node with the embedded broker per variant; a fanout
# of C channels x S subscribers at a low paced rate, run twice (short, then long) with a dump
# after each: (Ir(long) - Ir(short)) / (deliveries(long) - deliveries(short)) is the cost of
# one more delivery (its share of the publish included), with connection setup cancelled out.
#
#   bash scripts/bench/callgrind.sh TRANSPORT VARIANT...     (VARIANT: NAME=BINDIR[,ENV=VALUE])
#   e.g. bash scripts/bench/callgrind.sh ws old=/tmp/old new=target/release
# TRANSPORT `publish`: instructions per acknowledged publish instead, through one node on a
# redis-server (`herald-loadtest publish`, CG_K in flight (4), unpaced; CG_C channels).
# The callgrind files stay in the output directory for callgrind_annotate.
# Env: CG_C (channels, 10), CG_S (subscribers per channel, 20), CG_RATE (msg/s, 40),
#      CG_SHORT (3s), CG_LONG (13s). Output: target/bench/callgrind-<stamp>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TR=$1
shift
OUT=$ROOT/target/bench/callgrind-$TR-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
C=${CG_C:-10} S=${CG_S:-20} RATE=${CG_RATE:-40}
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done' EXIT
broker_flags=()
if [ "$TR" = publish ]; then
  start_redis "$OUT/redis.log"
  PIDS+=("$REDIS_PID")
  broker_flags=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
fi

ir_total() { # the summary line of a callgrind dump
  awk '/^(summary|totals):/ {print $2; exit}' "$1"
}

for v in "$@"; do
  name=${v%%=*} rest=${v#*=}
  dir=${rest%%,*} envs=""
  [[ $rest == *,* ]] && envs=${rest#*,} && envs=${envs//,/ }
  log=$OUT/$name.log
  # shellcheck disable=SC2086
  env $envs valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.cg.%p" \
    "$dir/herald" --listen 127.0.0.1:0 --log-level warn "${broker_flags[@]}" >"$log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  url=$(wait_url "$log" 600) # valgrind starts slowly
  callgrind_control -d "$pid" >/dev/null # startup, discarded
  declare -A ir=() got=()
  for phase in short long; do
    d=${CG_SHORT:-3s}
    [ $phase = long ] && d=${CG_LONG:-13s}
    if [ "$TR" = publish ]; then
      "$dir/herald-loadtest" publish --url "$url" -c "$C" -p 100 -d "$d" -k "${CG_K:-4}" \
        >"$OUT/$name-$phase.json" 2>"$OUT/$name-$phase.log"
    else
      "$dir/herald-loadtest" fanout --url "$url" --transport "$TR" -c "$C" -s "$S" -r "$RATE" \
        -p 100 -d "$d" -k 4 --drain 60s >"$OUT/$name-$phase.json" 2>"$OUT/$name-$phase.log"
    fi
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    f=$(ls -t "$OUT/$name.cg.$pid".* | head -1)
    ir[$phase]=$(ir_total "$f")
    if [ "$TR" = publish ]; then
      got[$phase]=$(jq '.publish.acked' "$OUT/$name-$phase.json")
    else
      got[$phase]=$(jq '.delivery.delivered' "$OUT/$name-$phase.json")
    fi
  done
  kill -9 "$pid" 2>/dev/null || true
  unit=delivery units=deliveries
  [ "$TR" = publish ] && unit=publish units=publishes
  per=$(awk -v a="${ir[short]}" -v b="${ir[long]}" -v x="${got[short]}" -v y="${got[long]}" \
    'BEGIN{printf "%.0f", (b-a)/(y-x)}')
  echo "$name $TR: Ir short ${ir[short]} (${got[short]} $units), long ${ir[long]} (${got[long]}): $per instructions per $unit" | tee -a "$OUT/summary.txt"
  unset ir got
done
echo "== $OUT"
