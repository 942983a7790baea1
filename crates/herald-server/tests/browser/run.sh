#!/usr/bin/env bash
# Browser tests: the console page and herald.js in headless Chromium against a real herald.
#
#   cargo build -p herald-server && crates/herald-server/tests/browser/run.sh
#
# Builds nothing: takes the binary from $HERALD_BIN (default target/debug/herald in the repo
# root) and the browser from $CHROMIUM (default /usr/bin/chromium, Debian's `chromium` package).
# Needs node >= 18 and npm (playwright-core is installed from package-lock.json; it downloads no
# browser).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
export HERALD_BIN="${HERALD_BIN:-$root/target/debug/herald}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

for need in "$HERALD_BIN" "$CHROMIUM"; do
    [[ -x "$need" ]] || { echo "browser tests: $need is not an executable" >&2; exit 1; }
done

work="$(mktemp -d)"
herald_pid=""
cleanup() {
    if [[ -n "$herald_pid" ]]; then
        kill "$herald_pid" 2>/dev/null || true
        wait "$herald_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Created here, not by the background job's redirect, which may run after the first read below.
: >"$work/herald.out"
# A short SSE retry keeps EventSource reconnects quick; client publish is on for the WS test.
"$HERALD_BIN" --listen 127.0.0.1:0 --allow-client-publish true --sse-retry 200ms \
    >"$work/herald.out" 2>"$work/herald.err" &
herald_pid=$!

for _ in $(seq 1 100); do
    url="$(sed -n 's/^herald listening on \(http:\/\/[^ ]*\).*/\1/p' "$work/herald.out")"
    [[ -n "$url" ]] && break
    kill -0 "$herald_pid" 2>/dev/null || { cat "$work/herald.err" >&2; exit 1; }
    sleep 0.1
done
[[ -n "${url:-}" ]] || { echo "herald did not report its address" >&2; cat "$work/herald.err" >&2; exit 1; }
export HERALD_URL="$url"
echo "browser tests: herald at $HERALD_URL"

cd "$here"
npm ci --silent --no-audit --no-fund
# --test-force-exit and the timeout: a leaked handle must fail the run, never hang CI.
timeout 300 node --test --test-force-exit browser.test.mjs
