#!/usr/bin/env bash
# Where herald's CPU goes under load: `perf record` on ONE of two herald nodes while
# herald-loadtest runs scenario a) (100 x 20 WebSocket, 2000 msg/s) or b) (1 x 2000 WebSocket),
# then the top frames (self time, and with children). Needs linux-perf (apt-get install
# linux-perf); hardware counters are not required (perf falls back to cpu-clock).
#
#   bash scripts/bench/profile.sh a        # or b, sse, d (publish through node 1, K=16);
#                                          # PROFILE_SECONDS=10 PROFILE_RATE=2000
#   BENCH_BIN_DIR=dir bash scripts/bench/profile.sh a   # prebuilt binaries
#
# Output: target/bench/profile-<scenario>-<stamp>/{perf.data,self.txt,children.txt,loadtest.*}
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SCEN=${1:-a}
SECS=${PROFILE_SECONDS:-10}
command -v perf >/dev/null || {
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq linux-perf >/dev/null
}
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  HERALD=$BENCH_BIN_DIR/herald LT=$BENCH_BIN_DIR/herald-loadtest
else
  cargo build --release -p herald-server -p herald-loadtest
  HERALD=$ROOT/target/release/herald LT=$ROOT/target/release/herald-loadtest
fi
OUT=$ROOT/target/bench/profile-$SCEN-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$((20000 + RANDOM % 30000))
while [ -n "$(ss -Htln "sport = :$port")" ]; do port=$((20000 + RANDOM % 30000)); done
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --logfile "$OUT/redis.log" &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

URLS=()
HPIDS=()
for n in 1 2; do
  "$HERALD" --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$port" --log-level warn \
    >"$OUT/h$n.log" 2>&1 &
  PIDS+=($!)
  HPIDS+=($!)
  url=""
  for _ in $(seq 100); do
    url=$(grep -o 'http://[0-9.:]*' "$OUT/h$n.log" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.1
  done
  URLS+=(--url "$url")
done

case $SCEN in
  a) args=(fanout "${URLS[@]}" --transport ws -c 100 -s 20 -r "${PROFILE_RATE:-2000}" -p 100 -k 32) ;;
  b) args=(fanout "${URLS[@]}" --transport ws -c 1 -s 2000 -r "${PROFILE_RATE:-50}" -p 100 -k 4) ;;
  sse) args=(fanout "${URLS[@]}" --transport sse -c 100 -s 20 -r "${PROFILE_RATE:-2000}" -p 100 -k 32) ;;
  d) args=(publish --url "${URLS[1]}" -c 100 -p 100 -k 16) ;;
  *) echo "usage: $0 a|b|sse|d"; exit 2 ;;
esac
[ "$SCEN" = d ] || args+=(--allow-loss)
"$LT" "${args[@]}" -d "$((SECS + 8))s" >"$OUT/loadtest.json" 2>"$OUT/loadtest.log" &
LTPID=$!
PIDS+=("$LTPID")
# Record once publishing runs (subscriptions settled).
for _ in $(seq 300); do grep -qE '; publishing|^publish:' "$OUT/loadtest.log" 2>/dev/null && break; sleep 0.1; done
sleep 2
echo "perf record -F 999 -g --call-graph dwarf,16384 -p ${HPIDS[0]} -- sleep $SECS"
perf record -F 999 -g --call-graph dwarf,16384 -o "$OUT/perf.data" -p "${HPIDS[0]}" -- sleep "$SECS" \
  2>"$OUT/perf-record.log"
wait "$LTPID" || true
grep -E '^(publish:|delivery|  end-to-end|result)' "$OUT/loadtest.log" || true
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio --percent-limit 0.7 -g none \
  2>/dev/null >"$OUT/self.txt"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio --percent-limit 3 -g none \
  2>/dev/null >"$OUT/children.txt"
echo "== top self frames"
grep -E '^ +[0-9]' "$OUT/self.txt" | head -30
echo "== top frames with children"
grep -E '^ +[0-9]' "$OUT/children.txt" | head -40
echo "== $OUT"
