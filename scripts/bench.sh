#!/usr/bin/env bash
# Herald vs nginx + nchan vs a raw fan-out baseline, side by side in one run, on this machine
# (loopback only).
#
#   bash scripts/bench.sh            # everything (~10 min on a 2-core machine after the build)
#   BENCH_ONLY="a b" bash scripts/bench.sh   # a subset of the scenarios (a b c d e)
#   BENCH_SYSTEMS=herald bash scripts/bench.sh # herald only (quick before/after of a change)
#   BENCH_SYSTEMS="herald baseline" bash scripts/bench.sh   # any subset of herald nchan baseline
#
# Installs nginx, libnginx-mod-nchan, redis-server and jq (apt) when missing, builds
# `herald` and `herald-loadtest` in release mode once, starts ONE redis-server on an ephemeral
# port, two herald nodes and two nginx+nchan nodes on it (nchan through `nchan_redis_pass`,
# the Redis directive of nchan 1.3.x in Debian bookworm), and runs the same herald-loadtest
# scenarios against both (`--target nchan` speaks nchan's /pub and /sub with the same payload,
# pacing and loss/latency accounting). The third system, `baseline`, is `herald-loadtest
# baseline`: ONE process that speaks Herald's /v1/ws, /v1/sse and /v1/publish with no broker,
# no history and no Redis, encoding each message once and writing it to every subscriber socket
# from the publish handler (the machine's fan-out ceiling; docs/benchmarks.md says what it does
# and does not do). Node CPU is the utime+stime delta of the server processes (both herald
# nodes, both nginx masters and their workers, or the baseline process) from /proc/<pid>/stat
# over each loadtest run, and Redis CPU is measured apart for every system; the loadtest's own
# CPU and the whole machine's busy CPU are recorded too, so CPU taken by anything else on the
# machine ("other") is visible. Results: target/bench/<stamp>/results.jsonl (one JSON report
# per run, labelled), results.md (the tables, with herald/baseline and herald/nchan ratios),
# and every log.
#
# Scenarios (sizes via env, defaults in brackets):
#  a) C=100 channels x S=20 WS subscribers, R=2000 msg/s, 100-byte payloads, both nodes
#     (the baseline: its one process);
#     then the same over SSE; 32 publishes in flight so a loaded machine still offers the
#     full rate [BENCH_A_DURATION=20s]
#  b) 1 channel x 2000 WS subscribers at each rate of BENCH_B_RATES, both systems, 4 publishes
#     in flight [BENCH_B_RATES="25 50 100 200", BENCH_B_DURATION=10s]
#  c) idle RSS per connection on ONE fresh node: WS and SSE at 5000 and 19000 (herald and
#     baseline), 5000 (nchan, reference) [BENCH_C_SIZES="5000 19000", BENCH_C_HOLD=10s]
#  d) acknowledged publishes/s through one node into Redis, K in flight (the baseline's row is
#     its HTTP ceiling without Redis, for reference) [BENCH_D_INFLIGHT="16 64", BENCH_D_DURATION=10s]
# The baseline runs BENCH_BASELINE_THREADS single-threaded runtimes on SO_REUSEPORT listeners
# [BENCH_BASELINE_THREADS=1: cheaper than 2 on this machine, docs/benchmarks.md].
#  e) herald only: BENCH_E_CONNS=50000 idle connections over three nodes (WS and SSE, three
#     loadtest processes with their own source addresses), heartbeats every 5 s, held
#     BENCH_E_HOLD=30s; node RSS sampled every 5 s [BENCH_E_CONNS=50000, BENCH_E_HOLD=30s]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ONLY=${BENCH_ONLY:-a b c d e}
SYSTEMS=${BENCH_SYSTEMS:-herald nchan baseline}
BL_THREADS=${BENCH_BASELINE_THREADS:-1}
A_DUR=${BENCH_A_DURATION:-20s}
B_RATES=${BENCH_B_RATES:-25 50 100 200}
B_DUR=${BENCH_B_DURATION:-10s}
C_SIZES=${BENCH_C_SIZES:-5000 19000}
C_HOLD=${BENCH_C_HOLD:-10s}
D_INFLIGHT=${BENCH_D_INFLIGHT:-16 64}
D_DUR=${BENCH_D_DURATION:-10s}
E_CONNS=${BENCH_E_CONNS:-50000}
E_HOLD=${BENCH_E_HOLD:-30s}

# ---------------------------------------------------------------- prerequisites
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
command -v jq >/dev/null || need+=(jq)
command -v ss >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# BENCH_BIN_DIR=dir: use prebuilt `herald` and `herald-loadtest` from there (e.g. a build of a
# clean checkout while the working tree is being edited) instead of building.
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  HERALD=$BENCH_BIN_DIR/herald
  LT=$BENCH_BIN_DIR/herald-loadtest
else
  echo "== cargo build --release -p herald-server -p herald-loadtest"
  cargo build --release -p herald-server -p herald-loadtest
  HERALD=$ROOT/target/release/herald
  LT=$ROOT/target/release/herald-loadtest
fi

OUT=$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
echo "== output in $OUT"
# Loadtest and servers need the 20,000 open files this machine allows per process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
  local p
  # nginx masters first, gracefully (a killed master leaves its workers running), then the
  # rest; workers that outlive their master are in PIDS too and get killed.
  for p in "${PIDS[@]}"; do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = nginx ] && kill -TERM "$p" 2>/dev/null || true
  done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, cpu_ticks, wait_url
# shellcheck source=scripts/bench/lib.sh
source "$ROOT/scripts/bench/lib.sh"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 20000 --logfile "$OUT/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
echo "redis $REDIS_URL pid $REDIS_PID"

# start_herald NAME [extra herald flags] -> sets HPID, HURL
start_herald() {
  local log=$OUT/$1.log
  shift
  "$HERALD" --listen 127.0.0.1:0 --redis-url "$REDIS_URL" --log-level warn "$@" >"$log" 2>&1 &
  HPID=$!
  PIDS+=("$HPID")
  HURL=$(wait_url "$log")
  echo "herald $(basename "$log" .log) $HURL pid $HPID"
}

# start_nchan NAME -> sets NPID (master), NURL, NPIDS (master + workers)
start_nchan() {
  local dir=$OUT/$1 port
  port=$(free_port)
  mkdir -p "$dir"
  # worker_processes auto = one per CPU, like herald's tokio runtime (one worker thread per
  # CPU). History like herald's defaults: 1000 messages, 1 h.
  cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream redis_backend { nchan_redis_server $REDIS_URL; }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location = /pub {
      nchan_publisher;
      nchan_channel_id \$arg_id;
      nchan_redis_pass redis_backend;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }
    location ~ ^/sub/(.+)\$ {
      nchan_subscriber websocket eventsource;
      nchan_channel_id \$1;
      nchan_redis_pass redis_backend;
      nchan_subscriber_first_message newest;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }
  }
}
EOF
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
  NPID=$!
  PIDS+=("$NPID")
  NURL=http://127.0.0.1:$port
  for _ in $(seq 100); do
    curl -s -o /dev/null -XPOST "$NURL/pub?id=warmup" -d x && break
    sleep 0.1
  done
  NPIDS="$NPID $(pgrep -P "$NPID" | tr '\n' ' ')"
  # shellcheck disable=SC2206
  PIDS+=($NPIDS)
  echo "nchan $1 $NURL pids $NPIDS"
}

# start_baseline NAME -> sets BPID, BURL (the loadtest binary's raw fan-out server)
start_baseline() {
  local log=$OUT/$1.log
  "$LT" --threads "$BL_THREADS" baseline --listen 127.0.0.1:0 >"$log" 2>&1 &
  BPID=$!
  PIDS+=("$BPID")
  BURL=$(wait_url "$log")
  echo "baseline $1 $BURL pid $BPID ($BL_THREADS thread(s))"
}

# stop_pid PID...: herald is killed outright (its drain would only slow the bench down);
# nginx master gets TERM so it takes its workers down.
stop_pid() {
  local p
  for p in "$@"; do
    if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = nginx ]; then
      kill -TERM "$p" 2>/dev/null || true
    fi
  done
  sleep 0.3
  for p in "$@"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

TCK=$(getconf CLK_TCK)
# machine_ticks -> busy ticks of all CPUs (user+nice+system+irq+softirq+steal), /proc/stat
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# children_cpu -> user+sys seconds of this shell's finished children (bash `times`). `times`
# must run in this shell, not in a $(...) subshell (whose children are not ours): it writes
# to a file, which is parsed afterwards.
children_cpu() {
  times >"$OUT/.times"
  tail -1 "$OUT/.times" | awk '{
    s = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2] }
    print s }'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# baseline_stats URL -> the baseline's counters (deliveries, backlogged writes), or null
baseline_stats() { curl -s --max-time 5 "$1/stats" 2>/dev/null | jq -c . 2>/dev/null || echo null; }

# run_lt LABEL SYSTEM "SERVER PIDS" loadtest-args... : runs one loadtest, measures node CPU and
# Redis CPU apart, appends {"label","system","server_cpu_s","redis_cpu_s","report"} to
# results.jsonl (server_cpu_s is the node CPU). For the baseline (STATS_URL set) its counters
# before and after the run are added as "baseline_stats".
run_lt() {
  local label=$1 system=$2 pids=$3
  shift 3
  local s0=null s1=null
  [ "$system" = baseline ] && [ -n "${STATS_URL:-}" ] && s0=$(baseline_stats "$STATS_URL")
  echo "-- $label [$system]: herald-loadtest $*"
  local c0 r0 c1 r1 m0 m1 l0 l1 load rc=0
  load=$(cut -d' ' -f1 /proc/loadavg)
  c0=$(cpu_ticks $pids)
  r0=$(cpu_ticks "$REDIS_PID")
  m0=$(machine_ticks)
  children_cpu >"$OUT/.l0"
  l0=$(cat "$OUT/.l0")
  "$LT" "$@" >"$OUT/$label.$system.json" 2>"$OUT/$label.$system.log" || rc=$?
  c1=$(cpu_ticks $pids)
  r1=$(cpu_ticks "$REDIS_PID")
  m1=$(machine_ticks)
  children_cpu >"$OUT/.l1"
  l1=$(cat "$OUT/.l1")
  [ "$system" = baseline ] && [ -n "${STATS_URL:-}" ] && s1=$(baseline_stats "$STATS_URL")
  grep -E '^(delivery|  end-to-end|publish:|connections:|result|warning|server RSS)' \
    "$OUT/$label.$system.log" | sed 's/^/   /' || true
  local rep
  rep=$(tail -1 "$OUT/$label.$system.json")
  [ -n "$rep" ] || rep=null
  jq -cn --arg lbl "$label" --arg system "$system" --argjson rc "$rc" \
    --argjson cpu "$(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
    --argjson rcpu "$(awk -v a="$r0" -v b="$r1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
    --argjson mcpu "$(awk -v a="$m0" -v b="$m1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
    --argjson lcpu "$(awk -v a="$l0" -v b="$l1" 'BEGIN{print b-a}')" \
    --argjson load "$load" \
    --argjson report "$rep" --argjson s0 "$s0" --argjson s1 "$s1" \
    '{"label":$lbl, "system":$system, "exit":$rc, "server_cpu_s":$cpu, "redis_cpu_s":$rcpu,
      "loadtest_cpu_s":$lcpu, "machine_cpu_s":$mcpu,
      "other_cpu_s":($mcpu - $cpu - $rcpu - $lcpu), "loadavg_before":$load, "report":$report}
     + (if $s0 == null or $s1 == null then {} else {"baseline_stats":{"before":$s0,"after":$s1}} end)' \
    >>"$RESULTS"
  echo "   loadtest CPU $(awk -v a="$l0" -v b="$l1" 'BEGIN{printf "%.2f", b-a}') s, machine busy $(awk -v a="$m0" -v b="$m1" -v t="$TCK" 'BEGIN{printf "%.2f", (b-a)/t}') CPU s, load before $load"
  echo "   node CPU $(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN{printf "%.2f", (b-a)/t}') s, redis CPU $(awk -v a="$r0" -v b="$r1" -v t="$TCK" 'BEGIN{printf "%.2f", (b-a)/t}') s, exit $rc"
}

want() { [[ " $ONLY " == *" $1 "* ]]; }
has() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- machine
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "ram: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "nginx: $("$NGINX" -v 2>&1 | cut -d/ -f2), nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')"
  echo "redis: $(redis-server --version | grep -o 'v=[0-9.]*')"
  echo "baseline: herald-loadtest baseline, $BL_THREADS thread(s)"
  echo "herald: ${BENCH_BIN_DIR:+prebuilt $BENCH_BIN_DIR, }tree $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo '+dirty')"
} | tee "$OUT/machine.txt"

# ---------------------------------------------------------------- a, b, d: two nodes each
if want a || want b || want d; then
  H1= H2= H1P= H2P=
  if has herald; then
    start_herald h1; H1=$HURL; H1P=$HPID
    start_herald h2; H2=$HURL; H2P=$HPID
  fi
  N1= N2= N1P= N2P=
  if has nchan; then
    start_nchan n1; N1=$NURL; N1P=$NPIDS
    start_nchan n2; N2=$NURL; N2P=$NPIDS
  fi
  B= BP=
  if has baseline; then
    start_baseline bl; B=$BURL; BP=$BPID
  fi
  HP="$H1P $H2P"
  NP="$N1P $N2P"
  sleep 1

  if want a; then
    for tr in ws sse; do
      has herald && run_lt "a-$tr" herald "$HP" fanout --url "$H1" --url "$H2" --transport "$tr" \
        -c 100 -s 20 -r 2000 -p 100 -d "$A_DUR" -k 32 --allow-loss
      has nchan && run_lt "a-$tr" nchan "$NP" fanout --target nchan --url "$N1" --url "$N2" --transport "$tr" \
        -c 100 -s 20 -r 2000 -p 100 -d "$A_DUR" -k 32 --allow-loss
      has baseline && STATS_URL=$B run_lt "a-$tr" baseline "$BP" fanout --url "$B" --transport "$tr" \
        -c 100 -s 20 -r 2000 -p 100 -d "$A_DUR" -k 32 --allow-loss
    done
  fi

  if want b; then
    for r in $B_RATES; do
      has herald && run_lt "b-$r" herald "$HP" fanout --url "$H1" --url "$H2" --transport ws \
        -c 1 -s 2000 -r "$r" -p 100 -d "$B_DUR" -k 4 --allow-loss
      has nchan && run_lt "b-$r" nchan "$NP" fanout --target nchan --url "$N1" --url "$N2" --transport ws \
        -c 1 -s 2000 -r "$r" -p 100 -d "$B_DUR" -k 4 --allow-loss
      has baseline && STATS_URL=$B run_lt "b-$r" baseline "$BP" fanout --url "$B" --transport ws \
        -c 1 -s 2000 -r "$r" -p 100 -d "$B_DUR" -k 4 --allow-loss
    done
  fi

  if want d; then
    for k in $D_INFLIGHT; do
      has herald && run_lt "d-k$k" herald "$H1P" publish --url "$H1" -c 100 -p 100 -k "$k" -d "$D_DUR"
      has nchan && run_lt "d-k$k" nchan "$N1P" publish --target nchan --url "$N1" -c 100 -p 100 -k "$k" -d "$D_DUR"
      has baseline && STATS_URL=$B run_lt "d-k$k" baseline "$BP" publish --url "$B" -c 100 -p 100 -k "$k" -d "$D_DUR"
    done
  fi
  stop_pid $H1P $H2P $N1P $N2P $BP
fi

# ---------------------------------------------------------------- c: idle, fresh node each
if want c; then
  for n in $C_SIZES; do
    for tr in ws sse; do
      if has herald; then
        start_herald "idle-$tr-$n"
        # Two source addresses: past the ephemeral ports of one (and 19,000 fds fit the
        # loadtest's 20,000 limit in one process).
        run_lt "c-$tr-$n" herald "$HPID" idle --url "$HURL" --transport "$tr" -n "$n" -c 100 \
          --hold "$C_HOLD" --pid "$HPID" --source-ip 127.0.0.2 --source-ip 127.0.0.3
        stop_pid "$HPID"
      fi
      if [ "$n" -le 5000 ] && has nchan; then
        start_nchan "idle-$tr-$n"
        run_lt "c-$tr-$n" nchan "$NPIDS" idle --target nchan --url "$NURL" --transport "$tr" \
          -n "$n" -c 100 --hold "$C_HOLD" $(printf -- '--pid %s ' $NPIDS) \
          --source-ip 127.0.0.2 --source-ip 127.0.0.3
        stop_pid $NPIDS
      fi
      if has baseline; then
        start_baseline "idle-bl-$tr-$n"
        STATS_URL=$BURL run_lt "c-$tr-$n" baseline "$BPID" idle --url "$BURL" --transport "$tr" -n "$n" -c 100 \
          --hold "$C_HOLD" --pid "$BPID" --source-ip 127.0.0.2 --source-ip 127.0.0.3
        stop_pid "$BPID"
      fi
    done
  done
fi

# ---------------------------------------------------------------- e: 50,000 over three nodes
if want e && has herald; then
  EU=()
  EP=()
  for n in 1 2 3; do
    start_herald "e$n" --ws-ping-interval 5s --sse-heartbeat 5s
    EU+=(--url "$HURL")
    EP+=("$HPID")
  done
  per=$((E_CONNS / 3))
  echo "-- e: $E_CONNS idle connections over 3 herald nodes (3 loadtest processes x $per)"
  rss_line() { local p l="$1"; shift; for p in "$@"; do l="$l $(rss_kib "$p")"; done; echo "$l"; }
  rss_line "rss_kib before:" "${EP[@]}" | tee "$OUT/e-rss.txt"
  c0=$(cpu_ticks "${EP[@]}")
  LTP=()
  for i in 1 2 3; do
    tr=ws
    [ "$i" = 3 ] && tr=sse
    # Each process: its own two source addresses, connections spread over all three nodes.
    "$LT" idle "${EU[@]}" --transport "$tr" -n "$per" -c 100 --hold "$E_HOLD" \
      --source-ip "127.0.0.$((2 * i))" --source-ip "127.0.0.$((2 * i + 1))" \
      >"$OUT/e-$i.json" 2>"$OUT/e-$i.log" &
    LTP+=($!)
  done
  t=0
  while kill -0 "${LTP[@]}" 2>/dev/null; do
    sleep 5
    t=$((t + 5))
    rss_line "rss_kib t=${t}s:" "${EP[@]}" | tee -a "$OUT/e-rss.txt"
  done
  erc=0
  for p in "${LTP[@]}"; do wait "$p" || erc=$?; done
  c1=$(cpu_ticks "${EP[@]}")
  for i in 1 2 3; do
    grep -E '^(connections:|stayed open|  server error|result)' "$OUT/e-$i.log" | sed "s/^/   [$i] /" || true
  done
  jq -cs --argjson cpu "$(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN{print (b-a)/t}')" \
    --argjson rc "$erc" --rawfile rss "$OUT/e-rss.txt" \
    '{"label":"e-50k","system":"herald","exit":$rc,"server_cpu_s":$cpu,"rss":$rss,
      "reports":.}' "$OUT"/e-[123].json >>"$RESULTS"
  stop_pid "${EP[@]}"
fi

# ---------------------------------------------------------------- table
bash "$ROOT/scripts/bench/table.sh" "$RESULTS" | tee "$OUT/results.md"
echo "== done: $OUT"
