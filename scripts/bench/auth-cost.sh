#!/usr/bin/env bash
# The cost of subscriber auth, side by side in one run: subscribes per second and node CPU per
# subscribe on three nodes (memory broker) that differ only in auth: open (no key), HS256
# (jwt_secret_file) and RS256 (jwt_public_key_file, 2048-bit RSA). Every subscribe is a new
# connection carrying the token, so the node verifies one JWT per subscribe. Runs are
# interleaved (open, HS256, RS256, open, ...) so machine drift hits all three alike; each run uses
# its own four source addresses (TIME_WAIT). Then idle RSS per WebSocket with and without a token (a
# connection with a token holds an expiry timer task).
#
#   bash scripts/bench/auth-cost.sh
#   AUTH_N=20000 AUTH_K=32 AUTH_REPS=3 AUTH_IDLE=5000 bash scripts/bench/auth-cost.sh
#
# Needs openssl. Results: target/bench/auth-<stamp>/results.jsonl and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${AUTH_N:-20000}
K=${AUTH_K:-32}
REPS=${AUTH_REPS:-3}
IDLE=${AUTH_IDLE:-5000}

cargo build --release -q -p herald-server -p herald-loadtest
BIN=$ROOT/target/release
OUT=$ROOT/target/bench/auth-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cd "$OUT"
echo "results in $OUT"

openssl rand -hex 32 > hs.secret
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null
openssl pkey -in rsa.key -pubout -out rsa.pub

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
exp=$(( $(date +%s) + 7200 ))
HERALD_JWT_SECRET_FILE=hs.secret "$BIN/herald" token --channels '*' --ttl 2h > hs.token
# An RS256 token signed by openssl (what any backend library produces).
head=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
body=$(printf '{"exp":%d,"channels":["*"]}' "$exp" | b64url)
sig=$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -sign rsa.key -binary | b64url)
printf '%s.%s.%s\n' "$head" "$body" "$sig" > rs.token

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start() { # name args... -> sets URL_<name>, PID_<name>
    local name=$1; shift
    "$BIN/herald" --listen 127.0.0.1:0 --log-level warn "$@" > "$name.out" 2> "$name.err" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 1 100); do grep -q listening "$name.out" 2>/dev/null && break; sleep 0.1; done
    eval "URL_$name=$(sed -n 's/^herald listening on //p' "$name.out")"
    eval "PID_$name=$pid"
}
start open
start hs --jwt-secret-file hs.secret
start rs --jwt-public-key-file rsa.pub

ip=2
run() { # label transport name [token file]
    local label=$1 transport=$2 name=$3 token=${4:-}
    local url pid
    eval "url=\$URL_$name; pid=\$PID_$name"
    # Four source addresses per run: a client bind(0) among thousands of ports in TIME_WAIT
    # (every SSE subscribe leaves one) gets slow and would be measured instead of the node.
    local args=(subscribe-rate --url "$url" --transport "$transport" -n "$N" -k "$K" -c 100
        --pid "$pid")
    for s in 1 2 3 4; do args+=(--source-ip "127.0.$ip.$s"); done
    [ -n "$token" ] && args+=(--token-file "$token")
    ip=$((ip + 1))
    "$BIN/herald-loadtest" "${args[@]}" 2>> loadtest.err \
        | jq -c --arg lbl "$label" '. + {"label": $lbl}' >> results.jsonl
}
for rep in $(seq 1 "$REPS"); do
    for transport in ws sse; do
        run "open/$transport" "$transport" open
        run "hs256/$transport" "$transport" hs hs.token
        run "rs256/$transport" "$transport" rs rs.token
    done
done

# Idle WebSocket RSS with and without a token, each on a fresh node (memory broker).
idle() { # label tokenfile-or-empty herald-args...
    local label=$1 token=$2; shift 2
    start "idle_$label" "$@"
    local url pid
    eval "url=\$URL_idle_$label; pid=\$PID_idle_$label"
    local args=(idle --url "$url" --transport ws -n "$IDLE" --hold 5s --pid "$pid"
        --source-ip "127.0.$ip.1")
    [ -n "$token" ] && args+=(--token-file "$token")
    ip=$((ip + 1))
    "$BIN/herald-loadtest" "${args[@]}" 2>> loadtest.err \
        | jq -c --arg lbl "idle-$label" '. + {"label": $lbl}' >> results.jsonl
    kill "$pid"
}
idle open ""
idle hs256 hs.token --jwt-secret-file hs.secret

echo
echo "| run | subscribes/s | node CPU us/subscribe | p50 / p99 latency (ms) | failed |"
echo "|---|---|---|---|---|"
jq -r 'select(.scenario == "subscribe-rate") | "| \(.label) | \(.subscribes_per_s | floor) | \(.server_cpu_us_per_subscribe) | \(.latency_us.p50 / 1000) / \(.latency_us.p99 / 1000) | \(.failed | length) |"' results.jsonl
jq -r 'select(.scenario == "idle") | "| \(.label) | RSS \(.rss_bytes_per_connection) B per idle WebSocket (\(.connections.subscribed) subscribed) |"' results.jsonl
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
