"""Persistence: one writer connection per database, group-committed transactions, on sqlite
(the default) or PostgreSQL.

The PostgreSQL engine (and with it ``psycopg``) is imported only where a PostgreSQL URL is
used: by :func:`open_store` / :func:`check_pg_database` for one, or on first use of
``PgDatabase`` / ``open_pg_database`` (:func:`__getattr__`).
"""

import typing

from hyperhive.store._db import (
    Database,
    DatabaseClosed,
    DatabaseFailed,
    DatabaseStatistics,
    DatabaseUnusable,
    LockLost,
    Migration,
    check_database,
    connect,
    free_bytes,
    is_disk_full,
    open_database,
)
from hyperhive.store._schema import BROKER_MIGRATIONS
from hyperhive.store._sql import Conn, Dialect, Row, dialect, insert_id
from hyperhive.store._url import (
    check_pg_database,
    check_store_url,
    is_postgresql_url,
    open_store,
    redact_url,
)

if typing.TYPE_CHECKING:
    from hyperhive.store._pg import PgDatabase, open_pg_database

__all__ = [
    "BROKER_MIGRATIONS",
    "Conn",
    "Database",
    "DatabaseClosed",
    "DatabaseFailed",
    "DatabaseStatistics",
    "DatabaseUnusable",
    "Dialect",
    "LockLost",
    "Migration",
    "PgDatabase",
    "Row",
    "check_database",
    "check_pg_database",
    "check_store_url",
    "connect",
    "dialect",
    "free_bytes",
    "insert_id",
    "is_disk_full",
    "is_postgresql_url",
    "open_database",
    "open_pg_database",
    "open_store",
    "redact_url",
]

#: Names of the PostgreSQL engine, imported on first use.
_ENGINE = ("PgDatabase", "open_pg_database")


def __getattr__(name: str) -> object:
    if name in _ENGINE:
        from hyperhive.store import _pg

        value = getattr(_pg, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_ENGINE})
