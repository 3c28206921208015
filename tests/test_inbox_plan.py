"""The inbox queries stay on the partial index of unacked rows, whatever the history: on
sqlite (``EXPLAIN QUERY PLAN``, with the ``INDEXED BY`` hints) and on PostgreSQL (``EXPLAIN``
after ``ANALYZE``: the planner's own choice, as the hints are dropped there)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hyperhive import broker
from hyperhive.store import BROKER_MIGRATIONS, connect
from hyperhive.store._pg import PgConn, PgCursor, connect_pg

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


INBOX_QUERIES = [
    pytest.param(lambda c: broker.sql_take(c, "bob", 1, True, 3.0), id="take"),
    pytest.param(lambda c: broker.sql_unread(c, "bob"), id="unread"),
    pytest.param(lambda c: broker.sql_requeue(c, "bob"), id="requeue"),
    pytest.param(lambda c: broker.sql_unread_by_recipient(c), id="unread_by_recipient"),
    pytest.param(lambda c: broker._sql_notice(c, "bob", "started", 3.0), id="notice"),
]


@pytest.mark.parametrize("run", INBOX_QUERIES)
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


# ---------------------------------------------------------------- PostgreSQL


class _Recording:
    """A :class:`PgConn` that remembers every statement it runs, with its parameters."""

    dialect = "postgresql"

    def __init__(self, conn: PgConn) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        self.statements.append((sql, tuple(parameters)))
        return self.conn.execute(sql, parameters)


@pytest.fixture
def pg_conn(pg_url: str) -> Iterator[PgConn]:
    """The same broker store on PostgreSQL, its statistics up to date (``ANALYZE``)."""
    conn = connect_pg(pg_url, migrations=BROKER_MIGRATIONS)
    conn.execute(
        "INSERT INTO messages (sender, recipient, body, sent_at, delivered_at, acked_at) "
        "SELECT 'alice', 'bob', 'old', 1, 1, 1 FROM generate_series(1, ?)",
        (HISTORY,),
    )
    for body in ("a", "b"):
        conn.execute(
            "INSERT INTO messages (sender, recipient, body, sent_at) VALUES ('alice', 'bob', ?, 2)",
            (body,),
        )
    conn.execute("ANALYZE messages")
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("run", INBOX_QUERIES)
def test_on_postgresql_the_inbox_queries_use_the_unacked_index_with_a_large_history(
    pg_conn: PgConn, run: object
) -> None:
    recording = _Recording(pg_conn)
    pg_conn.execute("BEGIN")
    try:
        run(recording)  # type: ignore[operator]
    finally:
        pg_conn.execute("ROLLBACK")
    inbox = [
        (sql, params)
        for sql, params in recording.statements
        if sql.split()[0].upper() in {"SELECT", "UPDATE", "DELETE"}
        and "recipient" in sql
        and "id IN" not in sql
    ]
    assert inbox, recording.statements
    for sql, params in inbox:
        plan = " | ".join(row[0] for row in pg_conn.execute(f"EXPLAIN {sql}", params).fetchall())
        assert "messages_unacked" in plan, (sql, plan)
        assert "messages_recipient" not in plan, (sql, plan)
        assert "Seq Scan on messages" not in plan, (sql, plan)


def test_on_postgresql_take_returns_the_inbox_in_order_with_a_large_history(
    pg_conn: PgConn,
) -> None:
    pg_conn.execute("BEGIN")
    taken = broker.sql_take(pg_conn, "bob", 5, True, 3.0)
    pg_conn.execute("COMMIT")
    assert [m.body for m in taken] == ["a", "b"]
    assert broker.sql_unread(pg_conn, "bob") == 0
