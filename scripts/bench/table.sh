#!/usr/bin/env bash
# Markdown tables from a bench.sh results.jsonl: bash scripts/bench/table.sh results.jsonl
set -euo pipefail
R=${1:?results.jsonl}

echo "### a) 100 channels x 20 subscribers, 2000 msg/s, 100 B, two nodes + Redis (baseline: one process)"
echo
echo "| run | system | subscribed | acked msg/s | expected | delivered | lost | dup | p50 us | p99 us | p99.9 us | max us | node CPU s | Redis CPU s | nodes+Redis CPU s | loadtest CPU s | other CPU s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
jq -r 'select((.label|startswith("a-")) and .report != null) | .report as $r |
  "| \(.label) | \(.system) | \($r.connections.subscribed) | \($r.publish.acked_per_s|floor) | \($r.delivery.expected) | \($r.delivery.delivered) | \($r.delivery.lost) | \($r.delivery.duplicated) | \($r.delivery.latency_us.p50) | \($r.delivery.latency_us.p99) | \($r.delivery.latency_us.p999) | \($r.delivery.latency_us.max) | \(.server_cpu_s*100|round/100) | \(.redis_cpu_s*100|round/100) | \((.server_cpu_s+.redis_cpu_s)*100|round/100) | \(.loadtest_cpu_s*100|round/100) | \(.other_cpu_s*100|round/100) |"' "$R"
echo
echo "### b) 1 channel x 2000 WebSocket subscribers, two nodes + Redis (baseline: one process)"
echo
echo "| run | system | offered msg/s | acked msg/s | deliveries/s (delivered / publish time) | peak deliveries/s | expected | lost | p50 us | p99 us | node CPU s | Redis CPU s | loadtest CPU s | other CPU s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
jq -r 'select((.label|startswith("b-")) and .report != null) | .report as $r |
  "| \(.label) | \(.system) | \($r.params.rate) | \($r.publish.acked_per_s|floor) | \(($r.delivery.delivered / $r.publish.elapsed_s)|floor) | \($r.delivery.peak_per_s) | \($r.delivery.expected) | \($r.delivery.lost) | \($r.delivery.latency_us.p50) | \($r.delivery.latency_us.p99) | \(.server_cpu_s*100|round/100) | \(.redis_cpu_s*100|round/100) | \(.loadtest_cpu_s*100|round/100) | \(.other_cpu_s*100|round/100) |"' "$R"
echo
echo "### c) idle connections on one node (RSS delta / subscribed connections)"
echo
echo "| run | system | transport | requested | subscribed | stayed open | RSS bytes/conn (all connected) | RSS bytes/conn (end of hold) |"
echo "|---|---|---|---|---|---|---|---|"
jq -r 'select((.label|startswith("c-")) and .report != null) | .report as $r |
  "| \(.label) | \(.system) | \($r.transport) | \($r.connections_requested) | \($r.connections.subscribed) | \($r.stayed_open) | \($r.rss_bytes_per_connection|floor) | \($r.rss_bytes_per_connection_end|floor) |"' "$R"
echo
echo "### d) acknowledged publishes/s through one node into Redis (keep-alive, K in flight; the baseline has no Redis)"
echo
echo "| run | system | K | acked/s | failed | publish p50 us | p99 us | node CPU s | Redis CPU s |"
echo "|---|---|---|---|---|---|---|---|---|"
jq -r 'select((.label|startswith("d-")) and .report != null) | .report as $r |
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
if jq -e 'select(.report == null and .reports == null)' "$R" >/dev/null 2>&1; then
  echo
  echo "Runs without a report (the loadtest failed; see its .log):"
  jq -r 'select(.report == null and .reports == null) | "- \(.label) \(.system): exit \(.exit)"' "$R"
fi
echo
echo "### Ratios (same run): herald / baseline and herald / nchan"
echo
echo "CPU rows are CPU microseconds per delivered message (node CPU without Redis, then nodes +"
echo "Redis), so a system that delivered less is not credited for it; with equal deliveries the"
echo "ratio is that of the CPU seconds above. The baseline is one process without Redis: its"
echo "\"nodes + Redis\" is its node CPU plus the idle Redis. Targets are issue 12's."
echo
echo "| metric | herald | baseline | nchan | herald/baseline | herald/nchan | target |"
echo "|---|---|---|---|---|---|---|"
jq -rs '
  def pick($l; $s): map(select(.label == $l and .system == $s)) | first;
  def num(f): if . == null then null else (try f catch null) end;
  def r2: . * 100 | round / 100;
  def fmt: if . == null then "-" elif (type == "number" and . != floor) then r2 | tostring else tostring end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then "-" else ($a / $b | r2 | tostring) end;
  def row($name; $l; f; $target):
    [pick($l; "herald"), pick($l; "baseline"), pick($l; "nchan")] | map(num(f)) as [$h, $b, $n]
    | if $h == null and $b == null and $n == null then empty
      else "| \($name) | \($h | fmt) | \($b | fmt) | \($n | fmt) | \(ratio($h; $b)) | \(ratio($h; $n)) | \($target) |" end;
  def labels($p): map(.label | select(startswith($p))) | reduce .[] as $x ([]; if any(.[]; . == $x) then . else . + [$x] end);
  def per_delivery(f): if .report.delivery.delivered > 0 then (f / .report.delivery.delivered * 1e6) else null end;
  def dps: .report.delivery.delivered / .report.publish.elapsed_s | floor;
  . as $all
  | (labels("a-")[] as $l
      | row("\($l) node CPU us/delivery"; $l; per_delivery(.server_cpu_s); "herald/baseline <= 1.3"),
        row("\($l) nodes+Redis CPU us/delivery"; $l; per_delivery(.server_cpu_s + .redis_cpu_s); "herald/nchan <= 0.5"),
        row("\($l) p99 latency us"; $l; .report.delivery.latency_us.p99; "herald/baseline <= 1.5"),
        row("\($l) lost"; $l; .report.delivery.lost; "0")),
    (labels("b-")[] as $l
      | row("\($l) deliveries/s"; $l; dps; "herald/baseline >= 1, herald/nchan >= 1.3"),
        row("\($l) node CPU us/delivery"; $l; per_delivery(.server_cpu_s); "-")),
    ([$all[] | select(.label | startswith("b-"))] | group_by(.system)
      | map({key: .[0].system, value: (map(dps) | max)}) | from_entries
      | "| b best deliveries/s | \(.herald | fmt) | \(.baseline | fmt) | \(.nchan | fmt) | \(ratio(.herald; .baseline)) | \(ratio(.herald; .nchan)) | herald/baseline >= 1, herald/nchan >= 1.3 |"
      | select(. != null)),
    (labels("c-")[] as $l | row("\($l) idle bytes/conn"; $l; .report.rss_bytes_per_connection | floor; "herald/baseline <= 1.2")),
    (labels("d-")[] as $l | row("\($l) acked publishes/s"; $l; .report.requests_per_s | floor; "herald/nchan >= 2"))
' "$R"
if jq -e 'select(.baseline_stats != null)' "$R" >/dev/null 2>&1; then
  echo
  echo "### Baseline: deliveries that found the socket's kernel buffer full (written later from its backlog)"
  echo
  echo "| run | deliveries | backlogged | slow consumers closed |"
  echo "|---|---|---|---|"
  jq -r 'select(.baseline_stats != null) | .baseline_stats as $s |
    "| \(.label) | \($s.after.deliveries - $s.before.deliveries) | \($s.after.queued - $s.before.queued) | \($s.after.slow_closed - $s.before.slow_closed) |"' "$R"
fi
