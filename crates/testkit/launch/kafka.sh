#!/usr/bin/env bash
# Starts one KRaft Kafka node (broker and controller in one process) from environment
# variables, through the entry paths that both the official apache/kafka image and the
# offline image provide: /opt/kafka/bin/kafka-storage.sh and kafka-server-start.sh.
#
# The test kit passes this file as `bash -c "<this file>"`; docker-compose.yml mounts it.
# So both image kinds, and both callers, start Kafka through identical code.
#
# Every variable KAFKA_CFG_SOME_NAME=value becomes the broker property some.name=value.
# KAFKA_EXTRA_PROPERTIES, if set, is appended as it is (one property per line), for
# properties whose names do not fit a variable (listener.name.secure.scram-sha-512.…) or
# whose values are long (certificates, written with \n for their newlines).
# KAFKA_SCRAM_USERS, if set, is a ;-separated list of SCRAM credentials created when the
# storage is formatted, e.g. 'SCRAM-SHA-512=[name=orders,password=…]'.
# CLUSTER_ID must be the same 22-character base64 id on every node of a cluster.
set -euo pipefail

: "${CLUSTER_ID:?CLUSTER_ID is required}"
: "${KAFKA_HOME:=/opt/kafka}"
config=/tmp/order-platform-server.properties

: > "$config"
while IFS='=' read -r name value; do
  [[ $name == KAFKA_CFG_* ]] || continue
  key=$(printf '%s' "${name#KAFKA_CFG_}" | tr '[:upper:]' '[:lower:]' | tr '_' '.')
  printf '%s=%s\n' "$key" "$value" >>"$config"
done < <(env)

grep -q '^log.dirs=' "$config" || echo "log.dirs=/tmp/kafka-data" >>"$config"

echo "order-platform: starting node with:" >&2
sed 's/^/  /' "$config" >&2

if [[ -n ${KAFKA_EXTRA_PROPERTIES:-} ]]; then
  printf '%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$config"
  echo "  (and $(printf '%s\n' "$KAFKA_EXTRA_PROPERTIES" | grep -c =) further properties, not shown)" >&2
fi
format_args=()
IFS=';' read -ra scram <<<"${KAFKA_SCRAM_USERS:-}"
for credential in "${scram[@]}"; do
  [[ -n $credential ]] && format_args+=(--add-scram "$credential")
done

# --ignore-formatted: a restarted container keeps its data and rejoins the cluster.
"$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted -t "$CLUSTER_ID" -c "$config" \
  "${format_args[@]}"
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$config"
