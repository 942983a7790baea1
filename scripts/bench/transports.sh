#!/usr/bin/env bash
# What TLS and HTTP/2 cost, side by side in one run, one herald node (memory broker) per case:
#
#  1. CPU per delivery: the same fan-out (TR_C channels x TR_S subscribers, TR_R msg/s of 100-byte
#     payloads for TR_D) over WebSocket plain and TLS, SSE over HTTP/1.1 plain and TLS, and SSE
#     over HTTP/2 (100 streams per connection) plain (h2c) and TLS. Publishes go over the same
#     scheme as the subscribers. Node CPU is the utime+stime delta of the node process over the
#     loadtest run, divided by the messages delivered. Cases are interleaved, TR_REPS rounds, so
#     drift of the (shared, 2-core) machine hits all of them alike.
#  2. Idle bytes per connection: TR_IDLE idle subscribers on a fresh node per case (WS, WSS, SSE
#     plain, SSE over TLS, SSE over HTTP/2 with TLS and h2c): node RSS delta / connections.
#
#   bash scripts/bench/transports.sh
#   TR_REPS=3 TR_D=20s TR_IDLE=5000 bash scripts/bench/transports.sh
#
# Needs openssl and jq. Results: target/bench/transports-<stamp>/results.jsonl and two tables on
# stdout (also in summary.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
C=${TR_C:-100}
S=${TR_S:-10}
R=${TR_R:-1000}
D=${TR_D:-15s}
REPS=${TR_REPS:-2}
IDLE=${TR_IDLE:-5000}

cargo build --release -q -p herald-server -p herald-loadtest
BIN=$ROOT/target/release
OUT=$ROOT/target/bench/transports-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cd "$OUT"
echo "results in $OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc), cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "herald: tree $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates loadtest Cargo.toml Cargo.lock || echo '+dirty')"
  echo "fanout: $C channels x $S subscribers, $R msg/s, 100 B, $D; idle: $IDLE connections"
} | tee machine.txt

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE -keyout key.pem -out cert.pem 2>/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start() { # name tls(0|1) -> sets URL, PID
  local name=$1 tls=$2 args=(--listen 127.0.0.1:0 --log-level warn)
  [ "$tls" = 1 ] && args+=(--tls-cert-file cert.pem --tls-key-file key.pem)
  "$BIN/herald" "${args[@]}" >"$name.out" 2>"$name.err" &
  PID=$!
  pids+=("$PID")
  for _ in $(seq 1 100); do grep -q listening "$name.out" 2>/dev/null && break; sleep 0.1; done
  URL=$(sed -n 's/^herald listening on //p' "$name.out")
  # The certificate names localhost, not 127.0.0.1's name: both are in it; keep the address.
  [ -n "$URL" ] || { cat "$name.err"; exit 1; }
}
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TCK=$(getconf CLK_TCK)

# case label -> transport and whether TLS
cases="ws:ws:0 wss:ws:1 sse:sse:0 sse-tls:sse:1 sse-h2c:sse-h2:0 sse-h2-tls:sse-h2:1"
ip=2
for rep in $(seq 1 "$REPS"); do
  for c in $cases; do
    IFS=: read -r label transport tls <<<"$c"
    start "fan-$label-$rep" "$tls"
    t0=$(cpu_ticks "$PID")
    # Two source addresses per run (TIME_WAIT of the previous runs stays out of the way).
    "$BIN/herald-loadtest" fanout --url "$URL" --tls-ca cert.pem --transport "$transport" \
      --h2-streams 100 -c "$C" -s "$S" -r "$R" -p 100 -d "$D" -k 8 \
      --source-ip "127.0.$ip.1" --source-ip "127.0.$ip.2" \
      >"fan-$label-$rep.json" 2>"fan-$label-$rep.log" || true
    t1=$(cpu_ticks "$PID")
    ip=$((ip + 1))
    kill -9 "$PID"
    jq -c --arg lbl "$label" --argjson rep "$rep" \
      --argjson cpu "$(awk -v a="$t0" -v b="$t1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
      '{label: $lbl, rep: $rep, node_cpu_s: $cpu, delivered: .delivery.delivered,
        lost: .delivery.lost, subscribed: .connections.subscribed,
        p50_us: .delivery.latency_us.p50, p99_us: .delivery.latency_us.p99}' \
      "fan-$label-$rep.json" | tee -a results.jsonl
  done
done

for c in $cases; do
  IFS=: read -r label transport tls <<<"$c"
  start "idle-$label" "$tls"
  "$BIN/herald-loadtest" idle --url "$URL" --tls-ca cert.pem --transport "$transport" \
    --h2-streams 100 -n "$IDLE" -c 100 --hold 5s --pid "$PID" \
    --source-ip "127.0.$ip.1" --source-ip "127.0.$ip.2" \
    >"idle-$label.json" 2>"idle-$label.log" || true
  ip=$((ip + 1))
  kill -9 "$PID"
  jq -c --arg lbl "idle-$label" \
    '{label: $lbl, subscribed: .connections.subscribed, bytes_per_conn: .rss_bytes_per_connection}' \
    "idle-$label.json" | tee -a results.jsonl
done

{
  echo
  echo "| case | node CPU us/delivery (per round) | delivered | lost | p50 / p99 latency us |"
  echo "|---|---|---|---|---|"
  jq -rs 'map(select(.rep)) | group_by(.label)[] |
    "| \(.[0].label) | \(map((.node_cpu_s * 1e6 / (.delivered | if . == 0 then 1 else . end)) * 100 | round / 100 | tostring) | join(" / ")) | \(map(.delivered | tostring) | join(" / ")) | \(map(.lost) | add) | \(map("\(.p50_us) / \(.p99_us)") | join(", ")) |"' results.jsonl
  echo
  echo "| idle case | subscribed | RSS bytes per connection |"
  echo "|---|---|---|"
  jq -rs 'map(select(.bytes_per_conn != null or (.label | startswith("idle-"))))[] |
    "| \(.label) | \(.subscribed) | \(.bytes_per_conn) |"' results.jsonl
} | tee summary.md
