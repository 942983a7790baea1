#!/usr/bin/env bash
# The cost of rooms, side by side in one run: N WebSocket users (one token each) enter C rooms on
# one herald node over Redis, then all leave at once, in three namespaces that differ only in
# what rooms do: `plain` (no presence: the baseline), `room` (presence) and `jl` (presence and
# join/leave, leave_grace 0 so the leaves are sent inside the measured phase). Runs interleave
# (plain, room, jl, plain, ...) so machine drift hits all three alike, each with its own source
# addresses. Per phase and connection: node CPU, Redis commands, script calls and Redis CPU
# (INFO), and connections per second. presence minus plain is what presence adds to a
# subscribe and a hang-up; jl minus room is the join and leave messages (their fan-out to the
# room's members included).
#
#   bash scripts/bench/presence-cost.sh
#   PRES_N=5000 PRES_C=50 PRES_K=32 PRES_REPS=3 bash scripts/bench/presence-cost.sh
#
# Needs redis-server, redis-cli and jq. Results: target/bench/presence-<stamp>/results.jsonl and
# a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${PRES_N:-5000}
C=${PRES_C:-50}
K=${PRES_K:-32}
REPS=${PRES_REPS:-3}
PROFILE=${PRES_PROFILE:-release}

if [ "$PROFILE" = release ]; then
    cargo build --release -q -p herald-server -p herald-loadtest
else
    cargo build -q -p herald-server -p herald-loadtest
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
OUT=$ROOT/target/bench/presence-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cd "$OUT"
echo "results in $OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" \
    > redis.log 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS=redis://127.0.0.1:$port

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > jwt.secret
cat > herald.toml <<TOML
[namespaces.plain]
anonymous_read = false

[namespaces.room]
presence = true

[namespaces.jl]
presence = true
join_leave = true
leave_grace = "0s"
TOML
"$BIN/herald" --listen 127.0.0.1:0 --log-level warn --redis-url "$REDIS" \
    --jwt-secret-file jwt.secret --config herald.toml > herald.out 2> herald.err &
HPID=$!
pids+=("$HPID")
for _ in $(seq 1 100); do grep -q listening herald.out 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^herald listening on //p' herald.out)

ip=2
run() { # namespace [--no-presence]
    local ns=$1; shift
    local args=(presence --url "$URL" -n "$N" -c "$C" -k "$K" --namespace "$ns"
        --jwt-secret-file jwt.secret --pid "$HPID" --redis-url "$REDIS" "$@")
    for s in 1 2 3 4; do args+=(--source-ip "127.0.$ip.$s"); done
    ip=$((ip + 1))
    "$BIN/herald-loadtest" "${args[@]}" 2>> loadtest.err | jq -c --arg ns "$ns" '. + {"label": $ns}' >> results.jsonl
}
for rep in $(seq 1 "$REPS"); do
    run plain --no-presence
    run room
    run jl
done

echo "N=$N users in C=$C rooms, $REPS runs each (medians); per connection:"
jq -rs 'group_by(.label)[] | (sort_by(.enter.server_cpu_us_per_connection)) as $r
  | ($r | length) as $n | $r[($n/2|floor)] as $m
  | [$m.label,
     "enter \($m.enter.per_s|floor)/s node \($m.enter.server_cpu_us_per_connection)us redis \($m.enter.redis_commands_per_connection) cmds/\($m.enter.redis_scripts_per_connection) scripts/\($m.enter.redis_cpu_us_per_connection)us",
     "exit \($m.exit.per_s|floor)/s node \($m.exit.server_cpu_us_per_connection)us redis \($m.exit.redis_commands_per_connection) cmds/\($m.exit.redis_scripts_per_connection) scripts/\($m.exit.redis_cpu_us_per_connection)us"]
  | join("  ")' results.jsonl
