#!/usr/bin/env bash
# POST→PAID latency at fixed rates, measured as the issue that asked for it did: both
# services (OP_PROFILE: release by default, or dev) against `just up`, the load generator
# posting at each rate for OP_SECONDS (20), then each order's `paid_at − created_at` read
# from PostgreSQL: p50, p99, p99.9 and max per rate, how many orders were PAID, and each
# service's peak resident memory (VmHWM) over the rate's run.
#
#   scripts/latency.sh 50 1000        # the rates, orders per second
set -Eeuo pipefail
cd "$(dirname "$0")/.."
profile=${OP_PROFILE:-release}
dir=$profile; [[ "$profile" == dev ]] && dir=debug
seconds=${OP_SECONDS:-20}
(( $# > 0 )) || set -- 50 1000

compose() {
  if docker compose version >/dev/null 2>&1; then docker compose -p order-platform "$@"
  else docker-compose -p order-platform "$@"; fi
}
psql_orders() { compose exec -T postgres psql -U orders -d orders -qAt -c "$1"; }

echo "building ($profile)…" >&2
cargo build --quiet --profile "$profile" -p order-service -p payment-service -p loadgen
mkdir -p target/latency
printf '| rate (orders/s) | paid | p50 ms | p99 ms | p99.9 ms | max ms | peak RSS order / payment (MB) |\n| --- | --- | --- | --- | --- | --- | --- |\n'
peak_rss() { # MB, from the pid file run-services.sh wrote
  local pid; pid=$(cat "target/run/$1.pid" 2>/dev/null) || { echo '?'; return; }
  awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || echo '?'
}
for rate in "$@"; do
  scripts/run-services.sh stop >/dev/null
  psql_orders "TRUNCATE orders, idempotency_keys, outbox, processed_events CASCADE" >/dev/null 2>&1 || true
  OP_SERVICE_BINARIES="target/$dir" scripts/run-services.sh >/dev/null
  "target/$dir/loadgen" --rate "$rate" --duration "$seconds" \
    --out "target/latency/history-$rate.jsonl" >"target/latency/loadgen-$rate.log" 2>&1
  for _ in $(seq 1 300); do # until every accepted order is settled (60 s at most)
    [[ "$(psql_orders "SELECT count(*) FROM orders WHERE status = 'PENDING'")" == 0 ]] && break
    sleep 0.2
  done
  psql_orders "SELECT '| $rate | ' || count(*) || ' | ' ||
      round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 1) || ' | ' ||
      round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 1) || ' | ' ||
      round(1000 * percentile_cont(0.999) WITHIN GROUP (ORDER BY s)::numeric, 1) || ' | ' ||
      round(1000 * max(s)::numeric, 1) || ' | $(peak_rss order-service) / $(peak_rss payment-service) |'
    FROM (SELECT EXTRACT(EPOCH FROM paid_at - created_at) AS s FROM orders WHERE status = 'PAID') t"
done
scripts/run-services.sh stop >/dev/null
