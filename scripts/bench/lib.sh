# Shared by scripts/bench.sh and the scripts in scripts/bench/: sourced, not run.

# free_port: a port below the kernel's ephemeral range (where clients' local ports and port-0
# listeners land, so a port free now cannot be taken by someone's outgoing connection before
# nginx binds it) that no TCP socket uses, in any state.
free_port() {
  local p lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
  [ "$lo" -gt 11000 ] || lo=32768
  while :; do
    p=$((10000 + RANDOM % (lo - 10000)))
    [ -z "$(ss -Htan "sport = :$p")" ] && { echo "$p"; return; }
  done
}

# Clock ticks per second of cpu_ticks.
TCK=$(getconf CLK_TCK)

# cpu_ticks PID...: their utime+stime, in clock ticks (TCK per second).
cpu_ticks() {
  local p t=0 v
  for p in "$@"; do
    # Fields after the command (which is in parentheses and may hold spaces).
    v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# wait_url LOG [TENTHS]: the http:// URL a server printed to LOG, waiting up to TENTHS/10 s
# (default 10 s); prints LOG and exits when none came.
wait_url() {
  local url="" _
  for _ in $(seq "${2:-100}"); do
    # -s: the server's redirect may not have created LOG yet.
    url=$(grep -so 'http://[0-9.:]*' "$1" | head -1 || true)
    [ -n "$url" ] && { echo "$url"; return; }
    sleep 0.1
  done
  echo "no URL in $1:" >&2
  cat "$1" >&2
  exit 1
}

# start_redis LOGFILE -> sets REDIS_PORT and REDIS_PID of a fresh redis-server (no persistence)
# answering PING; tries another port when the one picked was taken meanwhile.
start_redis() {
  local attempt
  for attempt in 1 2 3 4 5; do
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --logfile "$1" &
    REDIS_PID=$!
    for _ in $(seq 50); do
      redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$REDIS_PID" 2>/dev/null || true
  done
  echo "redis-server did not start (attempt $attempt): see $1" >&2
  return 1
}
