"""sqlite persistence: one writer connection per database, group-committed transactions."""

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
from hyperhive.store._schema import BROKER_MIGRATIONS

__all__ = [
    "BROKER_MIGRATIONS",
    "Database",
    "DatabaseClosed",
    "DatabaseFailed",
    "DatabaseStatistics",
    "DatabaseUnusable",
    "Migration",
    "check_database",
    "connect",
    "free_bytes",
    "is_disk_full",
    "open_database",
]
