#!/usr/bin/env bash
# Markdown tables from a bench.sh results.jsonl: bash scripts/bench/table.sh results.jsonl
set -euo pipefail
R=${1:?results.jsonl}

echo "### a) 100 channels x 20 subscribers, 2000 msg/s, 100 B, two nodes + Redis"
echo
echo "| run | system | subscribed | acked msg/s | expected | delivered | lost | dup | p50 us | p99 us | p99.9 us | max us | server CPU s | Redis CPU s | server+Redis CPU s | loadtest CPU s | other CPU s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
jq -r 'select(.label|startswith("a-")) | .report as $r |
  "| \(.label) | \(.system) | \($r.connections.subscribed) | \($r.publish.acked_per_s|floor) | \($r.delivery.expected) | \($r.delivery.delivered) | \($r.delivery.lost) | \($r.delivery.duplicated) | \($r.delivery.latency_us.p50) | \($r.delivery.latency_us.p99) | \($r.delivery.latency_us.p999) | \($r.delivery.latency_us.max) | \(.server_cpu_s*100|round/100) | \(.redis_cpu_s*100|round/100) | \((.server_cpu_s+.redis_cpu_s)*100|round/100) | \(.loadtest_cpu_s*100|round/100) | \(.other_cpu_s*100|round/100) |"' "$R"
echo
echo "### b) 1 channel x 2000 WebSocket subscribers, two nodes + Redis"
echo
echo "| run | system | offered msg/s | acked msg/s | deliveries/s (delivered / publish time) | peak deliveries/s | expected | lost | p50 us | p99 us | server CPU s | Redis CPU s | loadtest CPU s | other CPU s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
jq -r 'select(.label|startswith("b-")) | .report as $r |
  "| \(.label) | \(.system) | \($r.params.rate) | \($r.publish.acked_per_s|floor) | \(($r.delivery.delivered / $r.publish.elapsed_s)|floor) | \($r.delivery.peak_per_s) | \($r.delivery.expected) | \($r.delivery.lost) | \($r.delivery.latency_us.p50) | \($r.delivery.latency_us.p99) | \(.server_cpu_s*100|round/100) | \(.redis_cpu_s*100|round/100) | \(.loadtest_cpu_s*100|round/100) | \(.other_cpu_s*100|round/100) |"' "$R"
echo
echo "### c) idle connections on one node (RSS delta / subscribed connections)"
echo
echo "| run | system | transport | requested | subscribed | stayed open | RSS bytes/conn (all connected) | RSS bytes/conn (end of hold) |"
echo "|---|---|---|---|---|---|---|---|"
jq -r 'select(.label|startswith("c-")) | .report as $r |
  "| \(.label) | \(.system) | \($r.transport) | \($r.connections_requested) | \($r.connections.subscribed) | \($r.stayed_open) | \($r.rss_bytes_per_connection|floor) | \($r.rss_bytes_per_connection_end|floor) |"' "$R"
echo
echo "### d) acknowledged publishes/s through one node into Redis (keep-alive, K in flight)"
echo
echo "| run | system | K | acked/s | failed | publish p50 us | p99 us | server CPU s | Redis CPU s |"
echo "|---|---|---|---|---|---|---|---|---|"
jq -r 'select(.label|startswith("d-")) | .report as $r |
  "| \(.label) | \(.system) | \($r.inflight) | \($r.requests_per_s|floor) | \($r.publish.failed) | \($r.publish.latency_us.p50) | \($r.publish.latency_us.p99) | \(.server_cpu_s*100|round/100) | \(.redis_cpu_s*100|round/100) |"' "$R"
echo
echo "### e) idle connections over three herald nodes (heartbeats every 5 s)"
echo
echo "| run | processes | attempted | subscribed | failed | stayed open | disconnect kinds | node CPU s |"
echo "|---|---|---|---|---|---|---|---|"
jq -r 'select(.label=="e-50k") |
  "| \(.label) | \(.reports|length) | \([.reports[].connections.attempted]|add) | \([.reports[].connections.subscribed]|add) | \([.reports[].connections.failed]|add) | \([.reports[].stayed_open]|add) | \([.reports[].connections.disconnects|length]|add) | \(.server_cpu_s*100|round/100) |"' "$R"
echo
jq -r 'select(.label=="e-50k") | "node RSS (KiB, nodes 1 2 3) over time:\n```\n\(.rss)```"' "$R"
