#!/usr/bin/env bash
# The suite's check of the whole stack from docker-compose.yml, services included: it
# starts everything under a compose project of its own on ports of its own (so a running
# `just up` or `just stack` is left alone), waits for every container to report healthy,
# then asks each service's /health/ready, sends an order through and waits until it is
# PAID, reads /metrics and Swagger UI, checks the services run as a non-root user, fuzzes
# both APIs from their own OpenAPI documents (Schemathesis, every check, a bounded time
# each: no 5xx, every status and body as documented, bad input refused, valid input
# accepted), and removes what it started, whatever happened.
#
# Service images come from this machine's cargo build when the images are offline, with
# OP_SERVICE_PROFILE (dev here by default: the suite has just built it).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

export OP_COMPOSE_PROJECT=order-platform-check
export OP_POSTGRES_PORT=${OP_CHECK_POSTGRES_PORT:-25432}
export OP_KAFKA_PORT=${OP_CHECK_KAFKA_PORT:-25092}
export OP_ORDER_PORT=${OP_CHECK_ORDER_PORT:-28080}
export OP_PAYMENT_PORT=${OP_CHECK_PAYMENT_PORT:-28081}
export OP_SERVICE_PROFILE=${OP_SERVICE_PROFILE:-dev}

log() { echo "stack-check: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose -p "$OP_COMPOSE_PROJECT" "$@"
  else docker-compose -p "$OP_COMPOSE_PROJECT" "$@"; fi
}

eval "$(scripts/ensure-images.sh all)"
cleanup() {
  local rc=$?
  if (( rc != 0 )); then
    log "the services' last log lines:"
    compose logs --tail 40 order-service payment-service >&2 || true
  fi
  compose --profile cluster down --volumes --remove-orphans >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

started=$SECONDS
if [[ "${OP_IMAGES_OFFLINE:-0}" == 1 ]]; then compose up -d >&2; else compose up -d --build >&2; fi
scripts/wait-ready.sh postgres kafka order-service payment-service >&2

order=http://127.0.0.1:$OP_ORDER_PORT
payment=http://127.0.0.1:$OP_PAYMENT_PORT
for url in "$order" "$payment"; do
  ready=$(curl -sS --max-time 5 -w ' %{http_code}' "$url/health/ready")
  [[ "$ready" == *'"status":"ready"'*' 200' ]] || fail "$url/health/ready: $ready"
  log "$url/health/ready: 200 ready"
  ui=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$url/swagger-ui/index.html")
  [[ "$ui" == 200 ]] || fail "$url/swagger-ui/index.html: $ui"
done

id=$(curl -sf --max-time 10 -XPOST "$order/orders" -H 'content-type: application/json' \
  -d '{"amount": 222.22}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') ||
  fail "POST /orders"
status=
for _ in $(seq 1 150); do
  status=$(curl -sf --max-time 5 "$order/orders/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [[ "$status" == PAID ]] && break
  sleep 0.2
done
[[ "$status" == PAID ]] || fail "order $id is $status, not PAID, after 30 s"
log "order $id: PAID"
# The whole page first: `curl | grep -q` fails under pipefail when grep stops reading early.
order_metrics=$(curl -sf --max-time 5 "$order/metrics") || fail "order-service /metrics"
grep -q '^http_requests_total{.*route="/orders".*status="201"' <<<"$order_metrics" ||
  fail "order-service /metrics does not count the POST"
payment_metrics=$(curl -sf --max-time 5 "$payment/metrics") || fail "payment-service /metrics"
grep -q '^consumer_applied_total{' <<<"$payment_metrics" ||
  fail "payment-service /metrics does not count the event"
for service in order-service payment-service; do
  uid=$(compose exec -T "$service" id -u | tr -d '\r')
  [[ "$uid" != 0 ]] || fail "$service runs as root"
done
# Fuzzing from the documents. The seed is printed, so a failure can be repeated with
# OP_FUZZ_SEED; OP_FUZZ_SECONDS bounds each API's run (45).
# Schemathesis lives in a virtual environment of its own under target/, so nothing is
# installed into the system's Python (refused on current Debian and Ubuntu) and no root
# is needed.
schemathesis_version=4.32.5
venv=target/tools-venv
schemathesis=$venv/bin/schemathesis
if [[ "$("$schemathesis" --version 2>/dev/null)" != *" $schemathesis_version" ]]; then
  log "installing Schemathesis $schemathesis_version into $venv"
  { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"; } >&2 ||
    fail "Schemathesis is needed to fuzz the APIs: python3 (with its venv module) and pip must work"
fi
for url in "$order" "$payment"; do
  log "fuzzing $url from $url/api-docs/openapi.json for ${OP_FUZZ_SECONDS:-45}s"
  seed=(); [[ -n "${OP_FUZZ_SEED:-}" ]] && seed=(--seed "$OP_FUZZ_SEED")
  SCHEMATHESIS_HOOKS=scripts.fuzz.hooks PYTHONPATH=. NO_COLOR=1 \
    timeout $(( ${OP_FUZZ_SECONDS:-45} + 120 )) "$schemathesis" run "$url/api-docs/openapi.json" \
      --checks all --max-time "${OP_FUZZ_SECONDS:-45}" --workers 2 --request-timeout 5 \
      "${seed[@]}" >/tmp/stack-check-fuzz.$$ 2>&1 ||
    { cat /tmp/stack-check-fuzz.$$ >&2; rm -f /tmp/stack-check-fuzz.$$; fail "fuzzing $url found the above"; }
  grep -E "^(Seed|=+ .* in )" /tmp/stack-check-fuzz.$$ | sed 's/^/stack-check:   /' >&2 || true
  grep -E "generated" /tmp/stack-check-fuzz.$$ | sed 's/^ */stack-check:   /' >&2 || true
  rm -f /tmp/stack-check-fuzz.$$
done

log "passed in $(( SECONDS - started ))s: the stack from docker-compose.yml, services included, is ready, serves and pays an order"
