#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust: installs what the tests need
# (redis-server, redis-sentinel and openssl for the Redis broker tests: Sentinel failover and
# TLS with test certificates, and the RSA/EC/Ed25519 keys of the auth tests; nginx, prometheus and
# openssl (nginx's certificate) for the deployment tests; chromium + node for the browser test),
# then runs
# formatting, lints, every Rust test (unit, integration against real processes) and the
# headless-browser test. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs npm)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v promtool >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
# The cargo-fuzz crate is its own workspace (docs/security.md, "Hostile input").
rustfmt --check --edition 2024 fuzz/fuzz_targets/*.rs

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

if [ -x crates/herald-server/tests/browser/run.sh ]; then
  echo "== browser test (headless chromium)"
  HERALD_BIN="$PWD/target/debug/herald" crates/herald-server/tests/browser/run.sh
fi
echo "== all tests passed"
