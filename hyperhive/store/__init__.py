"""Persistence: one writer connection per database, group-committed transactions, on sqlite
(the default) or PostgreSQL."""

from hyperhive.store._db import (
    Database,
    DatabaseClosed,
    DatabaseFailed,
    DatabaseStatistics,
    DatabaseUnusable,
    Migration,
    check_database,
    connect,
    free_bytes,
    is_disk_full,
    open_database,
)
from hyperhive.store._pg import (
    PgDatabase,
    check_pg_database,
    check_store_url,
    is_postgresql_url,
    open_pg_database,
    open_store,
    redact_url,
)
from hyperhive.store._schema import BROKER_MIGRATIONS
from hyperhive.store._sql import Conn, Dialect, Row, dialect, insert_id

__all__ = [
    "BROKER_MIGRATIONS",
    "Conn",
    "Database",
    "DatabaseClosed",
    "DatabaseFailed",
    "DatabaseStatistics",
    "DatabaseUnusable",
    "Dialect",
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
