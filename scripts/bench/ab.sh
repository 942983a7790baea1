#!/usr/bin/env bash
# Side-by-side A/B of herald builds (or settings) in ONE run, alternating variants, so a
# machine that drifts (or is shared with other builds) affects every variant alike.
#
#   bash scripts/bench/ab.sh SCENARIO REPS VARIANT...
#     SCENARIO: a-ws | a-sse | b-RATE (1 x 2000 WS at RATE msg/s) | d-K (publishes, K in flight)
#               | c-ws-N | c-sse-N (idle RSS per connection, N connections, one fresh node)
#     VARIANT:  NAME=BINDIR[,ENV=VALUE...][,--flag=value...]  (BINDIR holds `herald`)
#   e.g. bash scripts/bench/ab.sh a-ws 3 old=/tmp/old/release new=target/release \
#          new1=target/release,TOKIO_WORKER_THREADS=1
#
# The loadtest binary is the first variant's BINDIR/herald-loadtest (AB_LT overrides).
# Per run: node CPU (both nodes, or the one node of d/c), Redis CPU, machine load before, and
# the loadtest's figures. Output: target/bench/ab-<scenario>-<stamp>/{results.jsonl,table.md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SCEN=$1
REPS=$2
shift 2
VARIANTS=("$@")
DUR=${AB_DURATION:-20s}
OUT=$ROOT/target/bench/ab-$SCEN-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
first_dir=${VARIANTS[0]#*=}
first_dir=${first_dir%%,*}
LT=${AB_LT:-$first_dir/herald-loadtest}

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"
TCK=$(getconf CLK_TCK)

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000 \
  --logfile "$OUT/redis.log" &
RPID=$!
PIDS+=("$RPID")
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# start NAME DIR ENVS FLAGS -> HPID, HURL
start() {
  local log=$OUT/$1.log dir=$2 envs=$3 flags=$4
  # shellcheck disable=SC2086
  env $envs "$dir/herald" --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$RPORT" \
    --log-level warn $flags >"$log" 2>&1 &
  HPID=$!
  PIDS+=("$HPID")
  HURL=$(wait_url "$log")
}
stop() { local p; for p in "$@"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

: >"$OUT/results.jsonl"
for rep in $(seq "$REPS"); do
  for v in "${VARIANTS[@]}"; do
    name=${v%%=*}
    rest=${v#*=}
    IFS=, read -r -a parts <<<"$rest"
    dir=${parts[0]}
    envs="" flags=""
    for p in "${parts[@]:1}"; do
      case $p in --*) flags="$flags ${p/=/ }" ;; *) envs="$envs $p" ;; esac
    done
    label=$name-$rep
    pids=()
    case $SCEN in
      a-ws | a-sse | b-*)
        start "$label-1" "$dir" "$envs" "$flags"; u1=$HURL; pids+=("$HPID")
        start "$label-2" "$dir" "$envs" "$flags"; u2=$HURL; pids+=("$HPID")
        if [[ $SCEN == b-* ]]; then
          args=(fanout --url "$u1" --url "$u2" --transport ws -c 1 -s 2000 -r "${SCEN#b-}" -p 100
            -d "${AB_B_DURATION:-10s}" -k 4 --allow-loss)
        else
          args=(fanout --url "$u1" --url "$u2" --transport "${SCEN#a-}" -c 100 -s 20 -r 2000 -p 100
            -d "$DUR" -k 32 --allow-loss)
        fi
        ;;
      d-*)
        start "$label-1" "$dir" "$envs" "$flags"; pids+=("$HPID")
        args=(publish --url "$HURL" -c 100 -p 100 -k "${SCEN#d-}" -d "${AB_D_DURATION:-10s}")
        ;;
      c-ws-* | c-sse-*)
        start "$label-1" "$dir" "$envs" "$flags"; pids+=("$HPID")
        tr=${SCEN#c-}; n=${tr#*-}; tr=${tr%%-*}
        args=(idle --url "$HURL" --transport "$tr" -n "$n" -c 100 --hold "${AB_C_HOLD:-5s}"
          --pid "$HPID" --source-ip 127.0.0.2 --source-ip 127.0.0.3)
        ;;
      *) echo "unknown scenario $SCEN"; exit 2 ;;
    esac
    sleep 0.5
    load=$(cut -d' ' -f1 /proc/loadavg)
    c0=$(cpu_ticks "${pids[@]}")
    r0=$(cpu_ticks "$RPID")
    rc=0
    "$LT" "${args[@]}" >"$OUT/$label.json" 2>"$OUT/$label.log" || rc=$?
    c1=$(cpu_ticks "${pids[@]}")
    r1=$(cpu_ticks "$RPID")
    stop "${pids[@]}"
    rep_json=$(tail -1 "$OUT/$label.json")
    [ -n "$rep_json" ] || rep_json=null
    jq -cn --arg v "$name" --argjson rep "$rep" --argjson rc "$rc" --argjson load "$load" \
      --argjson cpu "$(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
      --argjson rcpu "$(awk -v a="$r0" -v b="$r1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
      --argjson report "$rep_json" \
      '{variant:$v, rep:$rep, exit:$rc, load:$load, node_cpu_s:$cpu, redis_cpu_s:$rcpu, report:$report}' \
      >>"$OUT/results.jsonl"
    printf '%-10s rep %s load %5s node CPU %6.2f s redis %5.2f s  ' "$name" "$rep" "$load" \
      "$(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
      "$(awk -v a="$r0" -v b="$r1" -v t="$TCK" 'BEGIN{print (b-a)/t}')"
    grep -E '^(delivery|  end-to-end|publish:|connections:|server RSS)' "$OUT/$label.log" | tr '\n' ' ' | cut -c1-260
    echo
  done
done
echo "== $OUT"
