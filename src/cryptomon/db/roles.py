"""The database roles of a shared deployment: the processes write as an application role that can read and
write the tables and nothing else; dashboards read as a role that can only SELECT. Neither is a superuser,
so neither can `COPY … TO PROGRAM`, create extensions or change the schema (migrations run as the owner)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from cryptomon.errors import ConfigError

APP_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def ensure_roles(dsn: str, app_user: str, app_password: str, reader_user: str, reader_password: str) -> list[str]:
    """Create (or update the password of) both roles and grant them what they need, now and on the tables
    later migrations create. Idempotent; `dsn` must be allowed to create roles (docker compose: the database's
    superuser, POSTGRES_USER). Returns what it did."""
    if not app_password or not reader_password:
        raise ConfigError("set CRYPTOMON_DB_APP_PASSWORD and CRYPTOMON_DB_READER_PASSWORD")
    done = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the database's owner runs the migrations: the tables it creates later get the same grants
        owner, db = conn.execute(
            "SELECT pg_get_userbyid(datdba), datname FROM pg_database WHERE datname = current_database()"
        ).fetchone()  # type: ignore[misc]
        for user, password in ((app_user, app_password), (reader_user, reader_password)):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            conn.execute(
                sql.SQL("{} {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    verb, sql.Identifier(user), sql.Literal(password)
                )
            )
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(user)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(user)))
            done.append(f"{'updated' if exists else 'created'} role {user}")
        grants = (
            (app_user, APP_PRIVILEGES, "TABLES"),
            (app_user, "USAGE, SELECT", "SEQUENCES"),
            (reader_user, "SELECT", "TABLES"),
        )
        for user, privileges, kind in grants:
            ident = sql.Identifier(user)
            conn.execute(sql.SQL(f"GRANT {privileges} ON ALL {kind} IN SCHEMA public TO {{}}").format(ident))
            conn.execute(
                sql.SQL(
                    f"ALTER DEFAULT PRIVILEGES FOR ROLE {{}} IN SCHEMA public GRANT {privileges} ON {kind} TO {{}}"
                ).format(sql.Identifier(owner), ident)
            )
        # the notifier takes advisory locks, the web view reads TimescaleDB's time_bucket: all
        # available to any role; nothing else is granted
    return done
