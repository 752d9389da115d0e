"""Versioned, idempotent schema migrations (files NNN_name.sql in db/migrations)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cryptomon.errors import ConfigError
from cryptomon.paths import MIGRATIONS_DIR

log = logging.getLogger(__name__)
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x63727970746F  # "crypto": serialises concurrent migrators


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file of `migrations/`."""

    version: int
    name: str
    path: Path


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ConfigError(f"migration file name must be NNN_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"two migrations share a version in {directory}")
    return found


def applied_versions(conn: psycopg.Connection) -> set[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the migrations not applied yet, each in its own transaction. Returns their versions."""
    done: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            have = applied_versions(conn)
            for m in discover(directory):
                if m.version in have:
                    continue
                log.info("applying migration %03d_%s", m.version, m.name)
                with conn.transaction():
                    conn.execute(m.path.read_text())  # no parameters: multi-statement allowed
                    if m.version not in applied_versions(conn):
                        raise ConfigError(f"migration {m.path.name} does not record itself in schema_migrations")
                done.append(m.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done
