#!/usr/bin/env bash
# Waits until the named docker-compose.yml services answer, up to OP_WAIT_SECONDS (180).
# PostgreSQL: pg_isready. Kafka: the broker answers an API-versions request. The services:
# GET /health/ready answers 200, asked inside the container.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

project=${OP_COMPOSE_PROJECT:-order-platform}
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose -p "$project" "$@"
  else docker-compose -p "$project" "$@"; fi
}

probe() {
  case "$1" in
    postgres) compose exec -T postgres pg_isready -q -U orders -d orders ;;
    kafka*) compose exec -T "$1" bash -c \
      '/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server localhost:19092' ;;
    order-service) compose exec -T "$1" curl -fsS --max-time 2 http://127.0.0.1:8080/health/ready ;;
    payment-service) compose exec -T "$1" curl -fsS --max-time 2 http://127.0.0.1:8081/health/ready ;;
    *) echo "wait-ready: unknown service $1" >&2; return 2 ;;
  esac
}

limit=${OP_WAIT_SECONDS:-180}
start=$SECONDS
for service in "$@"; do
  printf 'waiting for %s ' "$service"
  until probe "$service" >/dev/null 2>&1; do
    if (( SECONDS - start > limit )); then
      echo
      echo "wait-ready: $service did not answer within ${limit}s; its last log lines:" >&2
      compose logs --tail 30 "$service" >&2 || true
      exit 1
    fi
    printf '.'
    sleep 2
  done
  echo " ready ($(( SECONDS - start ))s)"
done
