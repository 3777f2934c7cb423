#!/usr/bin/env bash
# Lists containers and networks the test kit labelled (org.order-platform.testkit) that are
# still there. Exits 1 if any container is left, after removing them, so a test run that
# leaks containers fails. With --remove: removes them and exits 0.
set -Eeuo pipefail

label=org.order-platform.testkit
cli=docker
command -v podman >/dev/null 2>&1 && [[ "${DOCKER_HOST:-}" == *podman* ]] && cli=podman

# Containers being removed by the exiting test process may take a moment to go.
for _ in $(seq 1 60); do
  left=$($cli ps -aq --filter "label=$label")
  [[ -z "$left" ]] && break
  sleep 1
done

networks=$($cli network ls -q --filter "label=$label" 2>/dev/null || true)
if [[ -z "$left" ]]; then
  [[ -n "$networks" ]] && $cli network rm $networks >/dev/null 2>&1 || true
  echo "leftovers: no test containers left behind"
  exit 0
fi

echo "leftovers: these test containers were left behind:" >&2
$cli ps -a --filter "label=$label" --format '{{.ID}} {{.Names}} {{.Status}}' >&2
$cli rm -f $left >/dev/null
[[ -n "$networks" ]] && $cli network rm $networks >/dev/null 2>&1 || true
[[ "${1:-}" == "--remove" ]] && { echo "leftovers: removed"; exit 0; }
exit 1
