#!/usr/bin/env bash
# The chat example in one command: a herald node with examples/chat/herald.toml, and the chat's
# app server. Open the printed URL in two browser windows with different names.
#
#   examples/chat/run.sh          # herald on 127.0.0.1:8080, the chat on http://127.0.0.1:3000
#
# Needs Rust (cargo) and Node >= 18. Ctrl-C stops both.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
cargo build -q -p herald-server
"${CARGO_TARGET_DIR:-target}/debug/herald" --config examples/chat/herald.toml &
herald=$!
trap 'kill $herald 2>/dev/null || true' EXIT
node examples/chat/server.mjs
