#!/usr/bin/env bash
# Builds the platform's images with no container registry:
#   - the root filesystems come from this machine's own Debian package sources (mmdebstrap),
#   - the Kafka broker jars come from Maven (images/kafka/pom.xml),
#   - they are imported with `podman import` (or `docker import`);
#   - the two services' images are built from the Dockerfile with BINARIES=prebuilt: the
#     binaries of this machine's cargo build on the imported Debian runtime.
# An imported image is rebuilt only when its recipe (the files under images/<name>/ and
# this script) changes; the recipe's hash is kept in the image label
# org.order-platform.recipe. The service images are rebuilt every time (the binaries may
# have changed; the layers below them are cached).
#
# Usage: scripts/build-images.sh [infra|services|all]   (default all)
#   OP_SERVICE_PROFILE=release (default) or dev: the cargo profile of the service binaries.
#
# Prints the environment to use the images, e.g.:
#   export OP_KAFKA_IMAGE=localhost/order-platform/kafka:4.4.0
set -Eeuo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

log() { echo "images: $*" >&2; }
die() { log "$*"; exit 1; }

engine=${OP_CONTAINER_CLI:-}
if [[ -z "$engine" ]]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then engine=docker
  else die "neither podman nor docker is installed"; fi
fi

kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' images/kafka/pom.xml)
kafka_tag="localhost/order-platform/kafka:${kafka_version}"
postgres_tag="localhost/order-platform/postgres:15"
suite=$(. /etc/os-release && echo "${VERSION_CODENAME}")
runtime_tag="localhost/order-platform/runtime:${suite}"
order_tag="localhost/order-platform/order-service:latest"
payment_tag="localhost/order-platform/payment-service:latest"
what=${1:-all}
case "$what" in infra|services|all) ;; *) die "usage: $0 [infra|services|all]" ;; esac

need() { # installs Debian packages that provide the commands named
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]}; install them first"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; }
}

recipe_hash() { # $1 = image folder
  (cd "$root" && find "$1" scripts/build-images.sh -type f -not -path '*/target/*' -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

current_hash() { # $1 = tag
  "$engine" image inspect "$1" --format '{{ index .Config.Labels "org.order-platform.recipe" }}' 2>/dev/null || true
}

# The machine's own package sources, passed to mmdebstrap as files: no host name is named here.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -s "$f" ]] && grep -qv '^\s*\(#\|$\)' "$f" && sources+=("$f")
done
rootfs() { # $1 = output tar, $2 = customize hook (a shell command), rest = packages
  local out=$1 hook=$2; shift 2
  need mmdebstrap:mmdebstrap
  [[ ${#sources[@]} -gt 0 ]] || die "no apt sources found in /etc/apt"
  log "building a $suite root filesystem with: $*"
  mmdebstrap --quiet --variant=essential --include="$(IFS=,; echo "$*")" \
    --essential-hook='mkdir -p "$1/usr/share/man/man1"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="$hook" \
    "$suite" "$out" "${sources[@]}" </dev/null >&2
}

build_postgres() {
  local hash; hash=$(recipe_hash images/postgres)
  if [[ "$(current_hash "$postgres_tag")" == "$hash" ]]; then
    log "$postgres_tag is up to date"; return
  fi
  local work; work=$(mktemp -d); trap 'rm -rf "$work"; trap - RETURN' RETURN
  rootfs "$work/rootfs.tar" \
    "install -m 0755 images/postgres/docker-entrypoint.sh \"\$1/usr/local/bin/\"" \
    bash postgresql-15 tzdata
  log "importing $postgres_tag"
  "$engine" import \
    -c 'ENV PGDATA=/var/lib/postgresql/data' \
    -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENTRYPOINT ["docker-entrypoint.sh"]' -c 'CMD ["postgres"]' \
    -c 'EXPOSE 5432' -c 'STOPSIGNAL SIGINT' \
    -c "LABEL org.order-platform.recipe=$hash" \
    "$work/rootfs.tar" "$postgres_tag" >/dev/null
}

build_kafka() {
  local hash; hash=$(recipe_hash images/kafka)
  if [[ "$(current_hash "$kafka_tag")" == "$hash" ]]; then
    log "$kafka_tag is up to date"; return
  fi
  need mvn:maven
  log "resolving Kafka $kafka_version jars with Maven"
  (cd images/kafka && mvn -q -B package) >&2
  local work; work=$(mktemp -d); trap 'rm -rf "$work"; trap - RETURN' RETURN
  rootfs "$work/rootfs.tar" \
    "mkdir -p \"\$1/opt/kafka\" && cp -r images/kafka/bin images/kafka/config images/kafka/target/libs \"\$1/opt/kafka/\" && chmod 0755 \"\$1\"/opt/kafka/bin/*" \
    bash openjdk-17-jre-headless procps
  log "importing $kafka_tag"
  "$engine" import \
    -c 'ENV KAFKA_HOME=/opt/kafka' \
    -c 'ENV PATH=/opt/kafka/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'WORKDIR /opt/kafka' -c 'EXPOSE 9092' \
    -c 'CMD ["bash", "-c", "echo order-platform kafka image: pass a command, see crates/testkit/launch/kafka.sh; exit 2"]' \
    -c "LABEL org.order-platform.recipe=$hash" \
    "$work/rootfs.tar" "$kafka_tag" >/dev/null
}

build_runtime() {
  local hash; hash=$(recipe_hash images/runtime)
  if [[ "$(current_hash "$runtime_tag")" == "$hash" ]]; then
    log "$runtime_tag is up to date"; return
  fi
  local work; work=$(mktemp -d); trap 'rm -rf "$work"; trap - RETURN' RETURN
  rootfs "$work/rootfs.tar" "cp images/runtime/README \"\$1/etc/order-platform-runtime\"" \
    curl ca-certificates passwd
  log "importing $runtime_tag"
  "$engine" import -c "LABEL org.order-platform.recipe=$hash" \
    "$work/rootfs.tar" "$runtime_tag" >/dev/null
}

build_services() {
  local profile=${OP_SERVICE_PROFILE:-release} dir
  case "$profile" in release) dir=release ;; dev) dir=debug ;; *) die "OP_SERVICE_PROFILE must be release or dev" ;; esac
  log "building the services (cargo, profile $profile)"
  cargo build --profile "$profile" -p order-service -p payment-service >&2
  build_runtime
  # Podman's default OCI format has no HEALTHCHECK; the Docker format keeps it.
  local format=(); [[ "$engine" == podman ]] && format=(--format docker)
  for service in order-service payment-service; do
    local tag="localhost/order-platform/${service}:latest"
    log "building $tag"
    "$engine" build --quiet "${format[@]}" --target "$service" \
      --build-arg BINARIES=prebuilt --build-arg PROFILE="$dir" \
      --build-arg RUNTIME_IMAGE="$runtime_tag" \
      -t "$tag" -f Dockerfile . >/dev/null
  done
  # The images these builds replaced.
  "$engine" image prune -f --filter label=org.order-platform.service-image=true >/dev/null 2>&1 || true
}

if [[ "$what" != services ]]; then
  build_postgres
  build_kafka
fi
if [[ "$what" != infra ]]; then
  build_services
fi
# Every image already built is named, so the file this is written to stays complete.
for pair in OP_POSTGRES_IMAGE=$postgres_tag OP_KAFKA_IMAGE=$kafka_tag \
            OP_ORDER_IMAGE=$order_tag OP_PAYMENT_IMAGE=$payment_tag; do
  if "$engine" image exists "${pair#*=}" 2>/dev/null || "$engine" image inspect "${pair#*=}" >/dev/null 2>&1; then
    echo "export $pair"
  fi
done
