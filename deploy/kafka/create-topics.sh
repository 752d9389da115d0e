#!/usr/bin/env bash
# docker compose's kafka-init: creates the topics declared in topics.conf (the same file
# `cryptomon services up` reads), then exits. Idempotent: existing topics get the declared config, and
# the declared partition count when they have fewer (Kafka never shrinks a topic).
set -euo pipefail
BOOTSTRAP=${KAFKA_BOOTSTRAP:-kafka:29092}
TOPICS_FILE=${TOPICS_FILE:-/cryptomon/topics.conf}
BIN=${KAFKA_BIN:-/opt/kafka/bin}
# the compose file runs one broker; a cluster of three: REPLICATION_FACTOR=3 MIN_INSYNC_REPLICAS=2
REPLICATION_FACTOR=${REPLICATION_FACTOR:-1}
MIN_INSYNC_REPLICAS=${MIN_INSYNC_REPLICAS:-1}

while read -r role name partitions configs || [ -n "${role:-}" ]; do
  case "$role" in ''|'#'*) continue ;; esac
  configs="${configs%%#*} min.insync.replicas=$MIN_INSYNC_REPLICAS"
  args=()
  for kv in $configs; do args+=(--config "$kv"); done
  "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor "$REPLICATION_FACTOR" "${args[@]}"
  current=$("$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe --topic "$name" | grep -c "Partition: ")
  if [ "$current" -lt "$partitions" ]; then
    "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --alter --topic "$name" --partitions "$partitions"
  fi
  if [ -n "${configs// /}" ]; then
    "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter --entity-type topics \
      --entity-name "$name" --add-config "$(echo $configs | tr ' ' ',')"
  fi
  echo "topic $name ($role): $partitions partitions"
done <"$TOPICS_FILE"
