#!/usr/bin/env bash
# Makes sure a Docker-API container engine answers, and prints the DOCKER_HOST to use.
#
# - If DOCKER_HOST is set, or /var/run/docker.sock answers, that engine is used as it is.
# - Otherwise Podman is configured (runc, cgroupfs, ulimits in containers.conf) and its
#   Docker-compatible API service is started on /run/podman/podman.sock.
#   As root on Debian it is installed with apt-get when missing.
#
# Usage: eval "$(scripts/engine.sh)"    # exports DOCKER_HOST
set -Eeuo pipefail

log() { echo "engine: $*" >&2; }

answers() { # $1 = unix socket path
  curl -sf --max-time 5 --unix-socket "$1" http://d/_ping >/dev/null 2>&1
}

if [[ -n "${DOCKER_HOST:-}" ]]; then
  sock="${DOCKER_HOST#unix://}"
  if [[ "$DOCKER_HOST" != unix://* ]] || answers "$sock"; then
    log "using DOCKER_HOST=$DOCKER_HOST"
    echo "export DOCKER_HOST=$DOCKER_HOST"
    exit 0
  fi
  log "DOCKER_HOST=$DOCKER_HOST does not answer; trying Podman"
fi

if answers /var/run/docker.sock; then
  log "using the Docker engine at /var/run/docker.sock"
  echo "export DOCKER_HOST=unix:///var/run/docker.sock"
  exit 0
fi

sock=/run/podman/podman.sock

if ! command -v podman >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing podman with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq podman runc uidmap slirp4netns fuse-overlayfs >&2
  else
    log "no container engine: neither Docker nor Podman was found; install one, or set" \
        "OP_DATABASE_URL and OP_KAFKA_BOOTSTRAP to use servers you run yourself"
    exit 1
  fi
fi

if [[ $(id -u) -eq 0 ]]; then
  # runc and cgroupfs: crun refuses the hybrid cgroup layout of these machines.
  # The nofile hard limit is 20000 here; --ulimit on the command line fails, this file works.
  conf=/etc/containers/containers.conf
  marker="# managed by order-platform scripts/engine.sh"
  if ! grep -qF "$marker" "$conf" 2>/dev/null; then
    log "writing $conf"
    mkdir -p /etc/containers
    cat >"$conf" <<CONF
$marker
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=8192:8192"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  fi
fi

if ! answers "$sock"; then
  log "starting the Podman API service on $sock"
  mkdir -p "$(dirname "$sock")"
  nohup podman system service --time=0 "unix://$sock" >/tmp/podman-service.log 2>&1 &
  for _ in $(seq 1 50); do
    answers "$sock" && break
    sleep 0.2
  done
  if ! answers "$sock"; then
    log "the Podman API service did not answer within 10 s; see /tmp/podman-service.log"
    exit 1
  fi
fi
log "using Podman at unix://$sock"
echo "export DOCKER_HOST=unix://$sock"
