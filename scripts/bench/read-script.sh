#!/usr/bin/env bash
# Redis-side cost of one history read (the READ script of crates/herald-broker/src/redis/scripts.rs)
# at two git revisions, alternating in one run on one redis-server: Redis's own microseconds
# per EVALSHA (INFO commandstats), so neither the client nor the network is counted.
#
#   bash scripts/bench/read-script.sh REV_A REV_B            # e.g. main HEAD
#   ENTRIES=1000 LIMITS="1000 100" CALLS=300 bash scripts/bench/read-script.sh main HEAD
#
# The stream holds ENTRIES small messages (~100-byte payloads, like the benchmarks'); each call
# reads LIMIT entries after offset 0 with the server's defaults (page 256 KiB, largest entry
# 64 KiB + header).
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1 B=$2
ENTRIES=${ENTRIES:-1000}
LIMITS=${LIMITS:-1000 100}
CALLS=${CALLS:-300}
OUT=$(mktemp -d /tmp/read-script.XXXXXX)
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
start_redis "$OUT/redis.log"
P=$REDIS_PORT RPID=$REDIS_PID
trap 'kill $RPID 2>/dev/null || true' EXIT

for rev in "$A" "$B"; do
  git show "$rev:crates/herald-broker/src/redis/scripts.rs" |
    python3 -c 'import re,sys; print(re.search(r"const READ: &str = r#\"(.*?)\"#;", sys.stdin.read(), re.S).group(1))' \
      >"$OUT/$rev.lua"
  redis-cli -p "$P" script load "$(cat "$OUT/$rev.lua")" >"$OUT/$rev.sha"
done

# One meta hash and one stream in the stored format (`t` ms, `p` payload).
python3 - "$ENTRIES" >"$OUT/fill.resp" <<'EOF'
import sys, time
n = int(sys.argv[1]); ms = int(time.time() * 1000)
def resp(*a):
    out = f"*{len(a)}\r\n"
    for x in a:
        x = str(x); out += f"${len(x.encode())}\r\n{x}\r\n"
    return out
sys.stdout.write(resp("HSET", "m", "e", "ep1", "o", n))
for i in range(1, n + 1):
    data = '{"seq":%d,"ts":%d,"pad":"%s"}' % (i, ms * 1000, "x" * 60)
    sys.stdout.write(resp("XADD", "s", f"{i}-0", "t", ms, "p", f"h1 {i} ep1 {ms * 1000}  c\n{data}"))
EOF
redis-cli -p "$P" --pipe <"$OUT/fill.resp" >/dev/null

echo "| limit | revision | calls | Redis us per call | Redis us per entry |"
echo "|---|---|---|---|---|"
for limit in $LIMITS; do
  for rev in "$A" "$B" "$A" "$B"; do
    redis-cli -p "$P" config resetstat >/dev/null
    redis-benchmark -p "$P" -n "$CALLS" -c 1 -q evalsha "$(cat "$OUT/$rev.sha")" 2 m s 3600000 o "" 0 \
      "$limit" 262144 67072 >/dev/null 2>&1
    per=$(redis-cli -p "$P" info commandstats | tr -d '\r' |
      sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=[0-9]*,usec_per_call=\([0-9.]*\).*/\1/p')
    echo "| $limit | $rev | $CALLS | $per | $(awk -v p="$per" -v l="$limit" 'BEGIN{printf "%.2f", p / l}') |"
  done
done
