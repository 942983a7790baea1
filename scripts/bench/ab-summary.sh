#!/usr/bin/env bash
# Per-variant means of an ab.sh publish run (d-K): acked publishes/s, and node and Redis CPU
# microseconds per acknowledged publish, with each variant's ratio to the first one.
#   bash scripts/bench/ab-summary.sh target/bench/ab-d-16-<stamp>
set -euo pipefail
jq -rs '
  group_by(.variant) | map({
    v: .[0].variant,
    n: length,
    rate: (map(.report.publish.acked_per_s) | add / length),
    node: (map(.node_cpu_s / .report.publish.acked * 1e6) | add / length),
    redis: (map(.redis_cpu_s / .report.publish.acked * 1e6) | add / length)
  })' "$1/results.jsonl" >"$1/summary.json"
first=$(head -1 "$1/results.jsonl" | jq -r .variant)
jq -r --arg first "$first" '
  (map(select(.v == $first))[0]) as $b |
  ["variant", "runs", "acked/s", "node_us/publish", "redis_us/publish", "acked/s_ratio", "node_ratio", "redis_ratio"],
  (.[] | [.v, .n, (.rate | round), (.node * 100 | round / 100), (.redis * 100 | round / 100),
          (.rate / $b.rate * 100 | round / 100), (.node / $b.node * 100 | round / 100),
          (.redis / $b.redis * 100 | round / 100)])
  | @tsv' "$1/summary.json" | column -t
