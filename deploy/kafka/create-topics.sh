#!/usr/bin/env bash
# docker compose's kafka-init: creates the topics declared in topics.conf (the same file
# `cryptomon services up` reads), then exits. Idempotent: existing topics get the declared config, and
# the declared partition count when they have fewer (Kafka never shrinks a topic).
set -euo pipefail
BOOTSTRAP=${KAFKA_BOOTSTRAP:-kafka:29092}
TOPICS_FILE=${TOPICS_FILE:-/cryptomon/topics.conf}
BIN=${KAFKA_BIN:-/opt/kafka/bin}

while read -r role name partitions configs || [ -n "${role:-}" ]; do
  case "$role" in ''|'#'*) continue ;; esac
  configs=${configs%%#*}
  args=()
  for kv in $configs; do args+=(--config "$kv"); done
  "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor 1 "${args[@]}"
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
