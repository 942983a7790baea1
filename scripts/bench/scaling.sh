#!/usr/bin/env bash
# Reduced-scale check of the capacity model in docs/scaling.md: N herald nodes (default 6) on a
# 3-master Redis Cluster (sharded pub/sub), driven by herald-loadtest, with the CPU of every
# process measured over the publishing phase only (from the loadtest's "publishing" line to its
# "published:" line), node RSS and the kernel's socket slab memory sampled when all are
# subscribed, and the whole machine's busy CPU over the same window (other work shows there).
#
#   bash scripts/bench/scaling.sh                    # the four runs below
#   SCALE_RUNS="sim" bash scripts/bench/scaling.sh   # one of them
#   BENCH_BIN_DIR=dir bash scripts/bench/scaling.sh  # prebuilt herald + herald-loadtest
#
# Runs (WebSocket, 100-byte payloads, 2,000 msg/s offered unless noted):
#   k1  600 channels x 1 subscriber: every publish goes to ONE node, one delivery
#   k6  100 channels x 6 subscribers: every publish goes to all six nodes, one delivery each
#   kd  20 channels x 60 subscribers, 500 msg/s: all six nodes, ten deliveries each
#       (k1, k6 and kd give the per-publish, per-node-receipt and per-delivery costs)
#   sim 400 channels x 30 subscribers (5 per node), 1,000 msg/s: the simulation the model
#       predicts from those costs (12,000 connections, 30,000 deliveries/s)
# Results: target/bench/scaling-<stamp>/results.jsonl and the loadtest logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
NODES=${SCALE_NODES:-6}
RUNS=${SCALE_RUNS:-k1 k6 kd sim}
DUR=${SCALE_DURATION:-20s}

for tool in redis-server redis-cli jq ss; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server redis-tools jq iproute2)"; exit 2; }
done
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  HERALD=$BENCH_BIN_DIR/herald
  LT=$BENCH_BIN_DIR/herald-loadtest
else
  cargo build --release -p herald-server -p herald-loadtest
  HERALD=$ROOT/target/release/herald
  LT=$ROOT/target/release/herald-loadtest
fi
OUT=$ROOT/target/bench/scaling-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "== output in $OUT"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh # free_port, TCK (the working directory is the repository)
ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Kernel memory of the slab caches a TCP connection uses (socket, inode, file, epoll entry),
# in KiB: sampled before and after the connections open (both ends are on this machine).
socket_slab_kib() {
  awk '$1 ~ /^(TCP|sock_inode_cache|filp|eventpoll_epi|eventpoll_pwq)$/ {s += $2 * $4} END {print int(s / 1024)}' \
    /proc/slabinfo 2>/dev/null || echo 0
}

# ------------------------------------------------------------------ a 3-master cluster
REDIS_PIDS=()
ADDRS=()
cluster_port() { # a free port whose cluster bus port (+10000) is free too
  local p
  while :; do
    p=$((20000 + RANDOM % 10000))
    [ -z "$(ss -Htln "sport = :$p")" ] && [ -z "$(ss -Htan "sport = :$((p + 10000))")" ] && { echo "$p"; return; }
  done
}
for i in 0 1 2; do
  port=$(cluster_port)
  mkdir -p "$OUT/redis-$i"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000 \
    --cluster-enabled yes --cluster-config-file "$OUT/redis-$i/nodes.conf" --dir "$OUT/redis-$i" \
    --logfile "$OUT/redis-$i/redis.log" &
  REDIS_PIDS+=($!)
  PIDS+=($!)
  ADDRS+=("127.0.0.1:$port")
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${ADDRS[@]}" --cluster-replicas 0 --cluster-yes >"$OUT/cluster-create.log"
for _ in $(seq 100); do
  redis-cli -p "${ADDRS[0]#*:}" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done
URL="redis+cluster://$(IFS=,; echo "${ADDRS[*]}")"
echo "redis cluster $URL"

# ------------------------------------------------------------------ herald nodes
NODE_PIDS=()
NODE_URLS=()
for n in $(seq "$NODES"); do
  log=$OUT/herald-$n.log
  "$HERALD" --listen 127.0.0.1:0 --redis-url "$URL" --log-level warn >"$log" 2>&1 &
  NODE_PIDS+=($!)
  PIDS+=($!)
  u=
  for _ in $(seq 100); do
    u=$(grep -o 'http://[0-9.:]*' "$log" | head -1 || true)
    [ -n "$u" ] && break
    sleep 0.1
  done
  [ -n "$u" ] || { echo "node $n did not start"; cat "$log"; exit 1; }
  NODE_URLS+=(--url "$u")
done
echo "herald nodes: ${NODE_URLS[*]}"
sleep 1

sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
snapshot() { # -> "nodes redis0 redis1 redis2 machine-busy"
  echo "$(sum_ticks "${NODE_PIDS[@]}") $(ticks "${REDIS_PIDS[0]}") $(ticks "${REDIS_PIDS[1]}") $(ticks "${REDIS_PIDS[2]}") $(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat)"
}
wait_line() { # wait_line FILE PATTERN PID: until FILE has PATTERN (or PID exits)
  while ! grep -q "$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
}

# run LABEL loadtest-fanout-args...
run() {
  local label=$1
  shift
  echo "-- $label: herald-loadtest fanout $*"
  local rss0 rss1 mem0 mem1 s0 s1 t0 t1 log=$OUT/$label.log
  rss0=$(for p in "${NODE_PIDS[@]}"; do rss_kib "$p"; done | awk '{s += $1} END {print s}')
  mem0=$(socket_slab_kib)
  "$LT" fanout "${NODE_URLS[@]}" --transport ws -p 100 -k 32 --allow-loss "$@" \
    >"$OUT/$label.json" 2>"$log" &
  local lt=$!
  wait_line "$log" "^subscribed: .*; publishing" "$lt"
  s0=$(snapshot "$lt")
  t0=$(date +%s.%N)
  rss1=$(for p in "${NODE_PIDS[@]}"; do rss_kib "$p"; done | awk '{s += $1} END {print s}')
  mem1=$(socket_slab_kib)
  wait_line "$log" "^published:" "$lt"
  s1=$(snapshot "$lt")
  t1=$(date +%s.%N)
  wait "$lt" || true
  grep -E '^(fanout|subscribed|published|delivery|  end-to-end|result)' "$log" | sed 's/^/   /' || true
  jq -cn --arg lbl "$label" --argjson secs "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" \
    --argjson s0 "[$(echo "$s0" | tr ' ' ,)]" --argjson s1 "[$(echo "$s1" | tr ' ' ,)]" \
    --argjson tck "$TCK" --argjson rss0 "$rss0" --argjson rss1 "$rss1" \
    --argjson mem0 "$mem0" --argjson mem1 "$mem1" \
    --argjson report "$(tail -1 "$OUT/$label.json")" \
    '{"label": $lbl, "publish_window_s": $secs,
      "cpu_s": {"nodes": (($s1[0] - $s0[0]) / $tck),
                "redis": [range(1; 4) as $i | ($s1[$i] - $s0[$i]) / $tck],
                "machine_busy": (($s1[4] - $s0[4]) / $tck)},
      "node_rss_kib_before": $rss0, "node_rss_kib_subscribed": $rss1,
      "socket_slab_kib_before": $mem0, "socket_slab_kib_subscribed": $mem1,
      "acked": $report.publish.acked, "delivered": $report.delivery.delivered,
      "lost": $report.delivery.lost, "report": $report}' | tee -a "$RESULTS" |
    jq -r '"   window \(.publish_window_s|floor) s: node CPU \(.cpu_s.nodes) s, redis CPU \(.cpu_s.redis), machine busy \(.cpu_s.machine_busy) CPU s; node RSS \(.node_rss_kib_before) -> \(.node_rss_kib_subscribed) KiB; socket slabs \(.socket_slab_kib_before) -> \(.socket_slab_kib_subscribed) KiB"'
}

# The baseline: what the nodes and Redis burn with no traffic (timers, probes, cluster bus).
s0=$(snapshot)
sleep 10
s1=$(snapshot)
jq -cn --argjson s0 "[$(echo "$s0" | tr ' ' ,)]" --argjson s1 "[$(echo "$s1" | tr ' ' ,)]" \
  --argjson tck "$TCK" '{"label": "idle", "publish_window_s": 10,
    "cpu_s": {"nodes": (($s1[0] - $s0[0]) / $tck),
              "redis": [range(1; 4) as $i | ($s1[$i] - $s0[$i]) / $tck]}}' | tee -a "$RESULTS"

want() { [[ " $RUNS " == *" $1 "* ]]; }
# The simulation first, on fresh nodes, so their RSS growth is the connections' and not
# memory the allocator kept from an earlier run.
want sim && run sim -c 400 -s $((5 * NODES)) -r 1000 -d "${SCALE_SIM_DURATION:-30s}" \
  --source-ip 127.0.0.2 --source-ip 127.0.0.3
want k1 && run k1 -c 600 -s 1 -r 2000 -d "$DUR"
want k6 && run k6 -c 100 -s "$NODES" -r 2000 -d "$DUR"
want kd && run kd -c 20 -s $((10 * NODES)) -r 500 -d "$DUR"
echo "== done: $OUT"
