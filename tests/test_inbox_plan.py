"""The inbox queries stay on the partial index of unacked rows, whatever the history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hyperhive import broker
from hyperhive.store import BROKER_MIGRATIONS, connect

HISTORY = 20_000


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    """A broker database with a long acked history for ``bob`` and two unread messages."""
    db = connect(tmp_path / "broker.sqlite", synchronous="NORMAL", migrations=BROKER_MIGRATIONS)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO messages (sender, recipient, body, sent_at, delivered_at, acked_at) "
        "VALUES ('alice', 'bob', 'old', 1, 1, 1)",
        [()] * HISTORY,
    )
    db.execute(
        "INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('alice', 'bob', 'a', 2)"
    )
    db.execute(
        "INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('alice', 'bob', 'b', 2)"
    )
    db.execute("COMMIT")
    return db


def _plans(conn: sqlite3.Connection, run: object) -> dict[str, str]:
    """Run ``run(conn)`` and return the query plan of every statement it executed."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        conn.execute("BEGIN")
        run(conn)  # type: ignore[operator]
        conn.execute("ROLLBACK")
    finally:
        conn.set_trace_callback(None)
    plans = {}
    for sql in statements:
        if sql.split()[0].upper() in {"SELECT", "UPDATE", "DELETE"}:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            plans[sql] = " | ".join(str(r[3]) for r in rows)
    return plans


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda c: broker.sql_take(c, "bob", 1, True, 3.0), id="take"),
        pytest.param(lambda c: broker.sql_unread(c, "bob"), id="unread"),
        pytest.param(lambda c: broker.sql_requeue(c, "bob"), id="requeue"),
        pytest.param(lambda c: broker.sql_unread_by_recipient(c), id="unread_by_recipient"),
        pytest.param(lambda c: broker._sql_notice(c, "bob", "started", 3.0), id="notice"),
    ],
)
def test_inbox_queries_use_the_unacked_index_with_a_large_history(
    conn: sqlite3.Connection, run: object
) -> None:
    plans = _plans(conn, run)
    inbox = {sql: plan for sql, plan in plans.items() if "recipient" in sql and "id IN" not in sql}
    assert inbox, plans
    for sql, plan in inbox.items():
        assert "messages_unacked" in plan, (sql, plan)
        assert "messages_recipient" not in plan, (sql, plan)


def test_take_still_returns_the_inbox_in_order_with_a_large_history(
    conn: sqlite3.Connection,
) -> None:
    conn.execute("BEGIN")
    taken = broker.sql_take(conn, "bob", 5, True, 3.0)
    conn.execute("COMMIT")
    assert [m.body for m in taken] == ["a", "b"]
    assert broker.sql_unread(conn, "bob") == 0
