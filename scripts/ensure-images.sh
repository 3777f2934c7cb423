#!/usr/bin/env bash
# Makes sure the images docker-compose.yml needs can be used, and prints the environment
# that names them:   eval "$(scripts/ensure-images.sh infra|all)"
#
#   infra  PostgreSQL and Kafka: the images named by OP_POSTGRES_IMAGE / OP_KAFKA_IMAGE
#          (.op-images.env) when they exist; else the official ones when they are here or
#          can be pulled; else, said in one line, the offline images, built with
#          scripts/build-images.sh (cached once built) and written to .op-images.env.
#   all    also both services: with offline images, their images are built from this
#          machine's cargo build (OP_SERVICE_PROFILE, release by default); with the
#          official ones, compose builds them from the Dockerfile (OP_IMAGES_OFFLINE=0).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

log() { echo "images: $*" >&2; }
what=${1:-infra}
case "$what" in infra|all) ;; *) log "usage: $0 infra|all"; exit 2 ;; esac

engine=podman; command -v podman >/dev/null 2>&1 || engine=docker
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose -p order-platform "$@"
  else docker-compose -p order-platform "$@"; fi
}
exists() { [[ -n "${1:-}" ]] && "$engine" image inspect "$1" >/dev/null 2>&1; }

[[ -f .op-images.env ]] && . ./.op-images.env

offline() { # builds (or reuses) the offline images of $1 and loads their names
  scripts/build-images.sh "$1" > .op-images.env.new
  mv .op-images.env.new .op-images.env
  . ./.op-images.env
}

if exists "${OP_POSTGRES_IMAGE:-}" && exists "${OP_KAFKA_IMAGE:-}"; then
  mode=named
elif timeout "${OP_PULL_SECONDS:-180}" bash -c "$(declare -f compose); compose pull -q postgres kafka" >/dev/null 2>&1 \
     && exists "${OP_POSTGRES_IMAGE:-postgres:17}" && exists "${OP_KAFKA_IMAGE:-apache/kafka:4.4.0}"; then
  # (Checked after the pull: docker-compose 1.29 against Podman reports a failed pull as done.)
  mode=official
else
  log "the official images cannot be pulled (no registry answers): building the offline images instead (scripts/build-images.sh; cached once built)"
  offline infra
  mode=named
fi

if [[ "$what" == all ]]; then
  if [[ "$mode" == named && "${OP_KAFKA_IMAGE:-}" == localhost/order-platform/* ]]; then
    offline services
    echo "export OP_IMAGES_OFFLINE=1"
  else
    echo "export OP_IMAGES_OFFLINE=0"
  fi
fi
for name in OP_POSTGRES_IMAGE OP_KAFKA_IMAGE OP_ORDER_IMAGE OP_PAYMENT_IMAGE; do
  [[ -n "${!name:-}" ]] && echo "export $name=${!name}"
done
exit 0
