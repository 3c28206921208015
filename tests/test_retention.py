"""Events retention: the daemon sweeps every agent's events db (7 days, then 2,000 rows)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from hyperhive.retention import sweep_events_db
from hyperhive.supervisor import Hive


def make_events_db(path: Path, stamps: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, kind TEXT, payload_json TEXT)"
        )
        conn.executemany(
            "INSERT INTO events (ts, kind, payload_json) VALUES (?, 'note', '{}')",
            [(t,) for t in stamps],
        )
    conn.close()


def remaining(path: Path) -> list[float]:
    conn = sqlite3.connect(path)
    rows = [r[0] for r in conn.execute("SELECT ts FROM events ORDER BY id")]
    conn.close()
    return rows


def test_old_rows_go_then_the_rest_is_trimmed(tmp_path: Path) -> None:
    now = 1_000_000.0
    week = 7 * 24 * 3600
    stamps = [now - week - 10] * 5 + [now - i for i in range(30, 0, -1)]
    db = tmp_path / "events.sqlite"
    make_events_db(db, stamps)
    assert sweep_events_db(db, now, keep=20).deleted == 5 + 10
    assert remaining(db) == stamps[-20:]
    assert sweep_events_db(db, now, keep=20).deleted == 0


def test_missing_db_or_table_is_fine(tmp_path: Path) -> None:
    assert sweep_events_db(tmp_path / "none.sqlite", time.time()).deleted == 0
    sqlite3.connect(tmp_path / "empty.sqlite").close()
    assert sweep_events_db(tmp_path / "empty.sqlite", time.time()).deleted == 0


async def test_daemon_sweeps_every_agent(hive: Hive) -> None:
    await hive.spawn("alice")
    now = time.time()
    for name in ("alice", "manager"):
        db = hive.config.paths.agent_dir(name) / "state" / "hyperhive-events.sqlite"
        make_events_db(db, [now - 8 * 24 * 3600, now])
    assert (await hive.sweep_events()).deleted == 2
    db = hive.config.paths.agent_dir("alice") / "state" / "hyperhive-events.sqlite"
    assert len(remaining(db)) == 1
