#!/usr/bin/env bash
# Acknowledged publishes/s through ONE node into Redis: two herald builds (before/after a
# change) and nginx+nchan, side by side in one run, alternating, on one redis-server.
#
#   bash scripts/bench/publish-ab.sh BEFORE/herald AFTER/herald path/to/herald-loadtest
#   ROUNDS=2 KS="16 64" DUR=8s bash scripts/bench/publish-ab.sh ...
#
# Each run: `herald-loadtest publish -c 100 -p 100 -k K -d DUR` (docs/benchmarks.md "d)"),
# Redis stats reset before it (`CONFIG RESETSTAT`); prints acked/s, publish p50/p99, the node's
# and Redis's CPU seconds (utime+stime from /proc), and Redis's EVALSHA calls and microseconds
# per call. Needs redis-server, nginx with libnginx-mod-nchan (else nchan is skipped) and jq.
set -euo pipefail
BEFORE=$1 AFTER=$2 LT=$3
ROUNDS=${ROUNDS:-2}
KS=${KS:-16 64}
DUR=${DUR:-8s}
OUT=$(mktemp -d /tmp/publish-ab.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

# shellcheck source=scripts/bench/lib.sh
source "$(dirname "$0")/lib.sh"

start_redis "$OUT/redis.log"
RP=$REDIS_PORT RPID=$REDIS_PID
PIDS+=("$RPID")

start_herald() { # NAME BIN -> URL on stdout's last line, pid in PIDS
  "$2" --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$RP" --log-level warn >"$OUT/$1.log" 2>&1 &
  PIDS+=("$!")
  echo "$!" >"$OUT/$1.pid"
  for _ in $(seq 100); do
    grep -so 'http://[0-9.:]*' "$OUT/$1.log" | head -1 >"$OUT/$1.url" || true
    [ -s "$OUT/$1.url" ] && return
    sleep 0.1
  done
  echo "herald $1 did not start"; cat "$OUT/$1.log"; exit 1
}
start_herald before "$BEFORE"
start_herald after "$AFTER"

SYSTEMS="before after"
if [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  NP=$(free_port)
  mkdir -p "$OUT/nchan"
  cat >"$OUT/nchan/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
worker_processes auto;
pid $OUT/nchan/nginx.pid;
error_log $OUT/nchan/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nchan/body;
  upstream redis_backend { nchan_redis_server redis://127.0.0.1:$RP; }
  server {
    listen 127.0.0.1:$NP;
    location = /pub {
      nchan_publisher;
      nchan_channel_id \$arg_id;
      nchan_redis_pass redis_backend;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }
  }
}
EOF
  /usr/sbin/nginx -p "$OUT/nchan" -c "$OUT/nchan/nginx.conf" -e "$OUT/nchan/error.log" &
  NPID=$!
  PIDS+=("$NPID")
  echo "http://127.0.0.1:$NP" >"$OUT/nchan.url"
  for _ in $(seq 100); do
    curl -s -o /dev/null -XPOST "http://127.0.0.1:$NP/pub?id=warmup" -d x && break
    sleep 0.1
  done
  echo "$NPID $(pgrep -P "$NPID" | tr '\n' ' ')" >"$OUT/nchan.pid"
  SYSTEMS="$SYSTEMS nchan"
fi
sleep 1

echo "| round | K | system | acked/s | p50 us | p99 us | node CPU s | Redis CPU s | node us/publish | evalsha calls | evalsha us/call |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for k in $KS; do
    for sys in $SYSTEMS; do
      url=$(cat "$OUT/$sys.url")
      pids=$(cat "$OUT/$sys.pid")
      target=()
      [ "$sys" = nchan ] && target=(--target nchan)
      redis-cli -p "$RP" config resetstat >/dev/null
      c0=$(cpu_ticks $pids)
      r0=$(cpu_ticks "$RPID")
      "$LT" publish "${target[@]}" --url "$url" -c 100 -p 100 -k "$k" -d "$DUR" \
        >"$OUT/$sys.$k.$round.json" 2>"$OUT/$sys.$k.$round.log" || true
      c1=$(cpu_ticks $pids)
      r1=$(cpu_ticks "$RPID")
      stat=$(redis-cli -p "$RP" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:' || true)
      calls=$(echo "$stat" | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p')
      per=$(echo "$stat" | sed -n 's/.*usec_per_call=\([0-9.]*\).*/\1/p')
      jq -r --arg r "$round" --arg k "$k" --arg s "$sys" \
        --arg cpu "$(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN{printf "%.2f", (b-a)/t}')" \
        --arg rcpu "$(awk -v a="$r0" -v b="$r1" -v t="$TCK" 'BEGIN{printf "%.2f", (b-a)/t}')" \
        --arg calls "${calls:--}" --arg per "${per:--}" \
        '[$r, $k, $s, (.requests_per_s | floor | tostring),
          (.publish.latency_us.p50 | tostring), (.publish.latency_us.p99 | tostring),
          $cpu, $rcpu,
          (if .publish.acked > 0 then ($cpu | tonumber) * 1e6 / .publish.acked | floor | tostring else "-" end),
          $calls, $per] | "| " + join(" | ") + " |"' "$OUT/$sys.$k.$round.json" 2>/dev/null \
        || echo "| $round | $k | $sys | failed: see $OUT/$sys.$k.$round.log |"
    done
  done
done
echo "logs: $OUT"
