#!/usr/bin/env bash
# Runs once, at the first start of docker compose's timescaledb container (docker-entrypoint-initdb.d):
# applies the same migration files `cryptomon db migrate` applies (each records itself in
# schema_migrations, so `cryptomon db migrate` later sees them as done).
set -euo pipefail
for f in /cryptomon/migrations/*.sql; do
  echo "cryptomon: applying $(basename "$f")"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -1 -f "$f"
done
