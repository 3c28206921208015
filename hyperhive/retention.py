"""Retention of the agents' event logs, swept by the daemon (not by the harness).

Each agent's harness records its live events in ``<state>/agents/<name>/state/
hyperhive-events.sqlite``. Hourly, the daemon deletes the rows older than 7 days from each,
then trims what is left to the 2,000 newest. Doing it on the host means a misbehaving
harness cannot switch its own retention off.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hyperhive.config import EVENTS_KEEP, EVENTS_MAX_AGE_SECONDS


def sweep_events_db(
    path: Path, now: float, *, max_age: float = EVENTS_MAX_AGE_SECONDS, keep: int = EVENTS_KEEP
) -> int:
    """Apply the two-stage delete to one events db; the number of rows deleted (blocking)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "events" not in tables:
            return 0
        conn.execute("BEGIN IMMEDIATE")
        deleted = conn.execute("DELETE FROM events WHERE ts < ?", (now - max_age,)).rowcount
        deleted += conn.execute(
            "DELETE FROM events WHERE id NOT IN (SELECT id FROM events ORDER BY id DESC LIMIT ?)",
            (keep,),
        ).rowcount
        conn.execute("COMMIT")
        return deleted
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
