"""sqlite persistence: one writer connection per database, group-committed transactions."""

from hyperhive.store._db import (
    Database,
    DatabaseClosed,
    DatabaseStatistics,
    DatabaseUnusable,
    Migration,
    check_database,
    connect,
    open_database,
)
from hyperhive.store._schema import BROKER_MIGRATIONS

__all__ = [
    "BROKER_MIGRATIONS",
    "Database",
    "DatabaseClosed",
    "DatabaseStatistics",
    "DatabaseUnusable",
    "Migration",
    "check_database",
    "connect",
    "open_database",
]
