"""Retention of the agents' event logs, swept by the daemon (not by the harness).

Each agent's harness records its live events in ``<state>/agents/<name>/state/
hyperhive-events.sqlite``. Hourly, the daemon deletes the rows older than 7 days from each,
then trims what is left to the 2,000 newest (both settable: ``hyperhive run --events-days
--events-keep``), and gives the freed pages back to the file system (the harness creates
the file with ``auto_vacuum = INCREMENTAL``; an older file is vacuumed whole once). Doing it
on the host means a misbehaving harness cannot switch its own retention off; the file is
the agent's, so the sweep treats it as hostile (see :func:`sweep_events_db`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final

from hyperhive.config import EVENTS_KEEP, EVENTS_MAX_AGE_SECONDS
from hyperhive.disk import Reclaimed, reclaim_pages

#: Longest one agent's sweep may take (its database is the agent's to shape).
SWEEP_TIME_LIMIT_SECONDS: Final = 30.0
#: Longest statement of its schema and longest value the sweep makes (sqlite's limits).
SWEEP_MAX_SQL_BYTES: Final = 1024 * 1024
SWEEP_MAX_VALUE_BYTES: Final = 64 * 1024 * 1024
#: Free pages given back per step (the sweep's time limit bounds the whole).
SWEEP_RECLAIM_PAGES: Final = 4096


def sweep_events_db(
    path: Path,
    now: float,
    *,
    max_age: float = EVENTS_MAX_AGE_SECONDS,
    keep: int = EVENTS_KEEP,
    time_limit: float = SWEEP_TIME_LIMIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Reclaimed:
    """Apply the two-stage delete to one events db, then give its free pages back (blocking).

    The file is the agent's: it may be a symlink to some host file, or a database made to
    cost the sweep forever (a trigger on ``events``, a view or virtual table of that name).
    So a symlink or anything but a regular file is refused, nothing is created, a schema
    with triggers or an ``events`` that is not a plain table is refused, the schema's own
    functions are not trusted, and the sweep is interrupted after ``time_limit`` seconds.
    Each refusal is a :class:`sqlite3.Error` (the caller logs it and goes on).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Reclaimed()
    if not stat.S_ISREG(st.st_mode):
        raise sqlite3.DatabaseError(f"{path} is not a regular file; not swept")
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw"
    conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None)
    deadline = clock() + time_limit
    conn.set_progress_handler(lambda: int(clock() > deadline), 10_000)
    # Before the schema is first read: bound what it and the values it computes may cost.
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, SWEEP_MAX_SQL_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SWEEP_MAX_VALUE_BYTES)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' LIMIT 1").fetchone():
            raise sqlite3.DatabaseError(f"{path} has triggers; not swept")
        events = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchall()
        if not events:
            return Reclaimed()
        if not _plain_table(events[0][0]):
            raise sqlite3.DatabaseError(f"{path}: events is not a plain table; not swept")
        conn.execute("BEGIN IMMEDIATE")
        deleted = conn.execute("DELETE FROM events WHERE ts < ?", (now - max_age,)).rowcount
        deleted += conn.execute(
            "DELETE FROM events WHERE id NOT IN (SELECT id FROM events ORDER BY id DESC LIMIT ?)",
            (keep,),
        ).rowcount
        conn.execute("COMMIT")
        if not deleted:
            return Reclaimed()
        return Reclaimed(deleted, _give_back(conn, os.path.abspath(path)))
    except sqlite3.Error:
        if conn.in_transaction:
            conn.set_progress_handler(None, 0)
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _give_back(conn: sqlite3.Connection, path: str) -> int:
    """Return the free pages to the file system; the bytes the file shrank by.

    Best effort: the rows are gone already; a busy or slow file keeps its pages until the
    next sweep.
    """
    before = os.stat(path).st_size
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0:  # made without it
            # Switch it on for the next sweeps; VACUUM rewrites the file (once).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        else:
            while reclaim_pages(conn, SWEEP_RECLAIM_PAGES):
                pass
        # The file shrinks when the write-ahead log is copied back into it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass
    return max(0, before - os.stat(path).st_size)


def _plain_table(sql: str | None) -> bool:
    return sql is not None and re.match(r"\s*CREATE\s+TABLE\b", sql, re.IGNORECASE) is not None
