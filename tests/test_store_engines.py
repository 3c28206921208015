"""The store's promises on both engines: sqlite (a file) and PostgreSQL (a real server).

Each test runs the same :class:`~hyperhive.store.Database` API against both: group commit
(one COMMIT for everything queued), a failing job rolled back alone (a batch run without a
savepoint per job, and again with them when a job failed after changing rows), a result
returned only
after COMMIT, nothing acknowledged lost when the process holding the writer is killed,
migrations applied once and a newer schema refused. Then what is PostgreSQL's own: the
broker schema is the same on both, the URL's password never shows, a lost connection
fails the database.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench._pg import PgServer
from hyperhive.store import (
    BROKER_MIGRATIONS,
    Database,
    DatabaseFailed,
    DatabaseUnusable,
    Migration,
    check_store_url,
    dialect,
    insert_id,
    open_store,
    redact_url,
)
from hyperhive.store._db import connect as sqlite_connect
from hyperhive.store._pg import connect_pg, translate
from hyperhive.store._sql import to_pyformat
from tests.conftest import wait_until
from tests.store_writer import MIGRATIONS


@attrs.frozen
class Engine:
    name: str
    target: str  # the sqlite file, or the PostgreSQL URL

    @property
    def url(self) -> str | None:
        return self.target if self.name == "postgresql" else None

    def open(self, migrations: Sequence[Migration]) -> AbstractAsyncContextManager[Database]:
        return open_store(self.url, Path(self.target), synchronous="FULL", migrations=migrations)

    def peek(self, sql: str) -> list[tuple[Any, ...]]:
        """``sql`` on a connection of its own: what is committed, as another client sees it."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.target)
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        with psycopg.connect(self.target, autocommit=True) as pg:
            return [tuple(r) for r in pg.execute(sql).fetchall()]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, short_tmp: Path) -> Engine:
    if request.param == "sqlite":
        return Engine("sqlite", str(short_tmp / "store.sqlite"))
    return Engine("postgresql", request.getfixturevalue("pg_url"))


def _insert(name: str, conn: sqlite3.Connection) -> int:
    return insert_id(conn, "INSERT INTO items (name) VALUES (?) RETURNING id", (name,))


def _names(engine: Engine) -> set[str]:
    return {row[0] for row in engine.peek("SELECT name FROM items")}


class _Gate:
    """A first job that holds the writer (inside its transaction) until released, so that
    everything queued meanwhile is taken as one batch."""

    def __init__(self) -> None:
        import threading

        self.running = threading.Event()
        self.release = threading.Event()

    def job(self, conn: sqlite3.Connection) -> int:
        new = _insert("gate", conn)
        self.running.set()
        assert self.release.wait(30)
        return new


async def _queue_behind_gate(
    db: Database, nursery: trio.Nursery, gate: _Gate, jobs: Sequence[Callable[[Any], Any]]
) -> list[Any]:
    """Run ``gate`` then ``jobs`` (queued while it holds the writer); their outcomes."""
    outcomes: list[Any] = [None] * (len(jobs) + 1)

    async def run(i: int, fn: Callable[[Any], Any]) -> None:
        try:
            # The gate is a long job: it holds the writer in a thread, not the event loop.
            outcomes[i] = await db.transaction(fn, slow=i == 0)
        except Exception as exc:
            outcomes[i] = exc

    nursery.start_soon(run, 0, gate.job)
    await trio.to_thread.run_sync(gate.running.wait)
    for i, fn in enumerate(jobs, 1):
        nursery.start_soon(run, i, fn)

    async def all_queued() -> bool:
        return db.statistics().queued == len(jobs)

    await wait_until(all_queued)
    return outcomes


async def test_group_commit_shares_one_commit_and_answers_only_after_it(engine: Engine) -> None:
    async with engine.open(MIGRATIONS) as db:
        before = db.statistics()
        gate = _Gate()
        async with trio.open_nursery() as nursery:
            outcomes = await _queue_behind_gate(
                db, nursery, gate, [functools.partial(_insert, f"n{i}") for i in range(5)]
            )
            # The gate's row is written, inside the open transaction: nobody else sees it,
            # and its caller has no answer yet.
            assert _names(engine) == set()
            assert outcomes[0] is None
            gate.release.set()
        after = db.statistics()
    assert all(isinstance(o, int) for o in outcomes), outcomes
    assert len(set(outcomes)) == 6
    assert _names(engine) == {"gate", *(f"n{i}" for i in range(5))}
    # The five queued while the gate held the writer shared one transaction.
    assert after.batches - before.batches == 2
    assert after.transactions - before.transactions == 6


async def test_insert_id_is_the_new_rows_id(engine: Engine) -> None:
    async with engine.open(MIGRATIONS) as db:
        ids = {name: await db.transaction(functools.partial(_insert, name)) for name in "abc"}
        with pytest.raises(ValueError, match="RETURNING id"):
            await db.transaction(
                lambda conn: insert_id(conn, "INSERT INTO items (name) VALUES ('no id')")
            )
    assert {name: row_id for row_id, name in engine.peek("SELECT id, name FROM items")} == ids
    assert len(set(ids.values())) == 3


async def test_a_failing_job_rolls_back_alone(engine: Engine) -> None:
    def fails_in_python(conn: sqlite3.Connection) -> None:
        _insert("python", conn)
        raise ValueError("no")

    def fails_in_sql(conn: sqlite3.Connection) -> None:
        _insert("sql", conn)
        conn.execute("INSERT INTO items (id, name) VALUES (1, 'duplicate id')")

    async with engine.open(MIGRATIONS) as db:
        first = await db.transaction(functools.partial(_insert, "first"))
        assert first == 1
        # Alone in its batch, a failing job rolls back all the same.
        with pytest.raises(ValueError):
            await db.transaction(fails_in_python)
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
            await db.transaction(fails_in_sql)
        assert _names(engine) == {"first"}
        gate = _Gate()
        async with trio.open_nursery() as nursery:
            outcomes = await _queue_behind_gate(
                db,
                nursery,
                gate,
                [
                    functools.partial(_insert, "a"),
                    fails_in_python,
                    fails_in_sql,
                    functools.partial(_insert, "b"),
                ],
            )
            gate.release.set()
        assert db.statistics().batches == 5  # first, two alone, the gate, the four together
        # The database goes on after the failures.
        await db.transaction(functools.partial(_insert, "after"))
    assert isinstance(outcomes[1], int) and isinstance(outcomes[4], int)
    assert isinstance(outcomes[2], ValueError)
    assert isinstance(outcomes[3], (sqlite3.IntegrityError, psycopg.errors.UniqueViolation))
    assert _names(engine) == {"first", "gate", "a", "b", "after"}


async def test_a_batch_runs_without_savepoints_and_again_with_them_when_a_job_undoes_rows(
    engine: Engine,
) -> None:
    ran: list[str] = []  # each job's name, each time its function runs
    statements: list[str] = []
    undone: list[int] = []

    def counted(name: str, conn: sqlite3.Connection) -> int:
        ran.append(name)
        return _insert(name, conn)

    def refused(conn: sqlite3.Connection) -> None:
        ran.append("refused")
        raise ValueError("refused before writing")

    def fails_after_writing(conn: sqlite3.Connection) -> None:
        ran.append("wrote")
        _insert("wrote", conn)
        raise ValueError("failed after writing")

    class Traced(_Gate):
        def job(self, conn: sqlite3.Connection) -> int:
            if isinstance(conn, sqlite3.Connection):  # the statements the writer runs next
                conn.set_trace_callback(statements.append)
            return super().job(conn)

    async def batch(*jobs: Callable[[Any], Any]) -> list[Any]:
        ran.clear()
        statements.clear()
        gate = Traced()
        async with trio.open_nursery() as nursery:
            outcomes = await _queue_behind_gate(db, nursery, gate, jobs)
            gate.release.set()
        return outcomes[1:]

    def ran_again_after(failing: str) -> bool:
        """The jobs ran up to ``failing`` (in the batch's order), then all of them again."""
        first = ran.index(failing) + 1
        return len(ran) - first == 3 and set(ran[first:]) >= set(ran[:first])

    sqlite = engine.name == "sqlite"
    async with engine.open(MIGRATIONS) as db:
        db.on_rollback(lambda: undone.append(1))
        # A job refused before it changed a row fails alone: the others commit, each job
        # ran once, with no savepoint.
        a, no, b = await batch(
            functools.partial(counted, "a"), refused, functools.partial(counted, "b")
        )
        assert isinstance(a, int) and isinstance(b, int) and isinstance(no, ValueError)
        assert sorted(ran) == ["a", "b", "refused"]
        assert db.statistics().isolated == 0 and undone == []
        if sqlite:
            assert not [s for s in statements if "SAVEPOINT" in s], statements
        # A job that changed rows and failed: the batch runs again, each job in its
        # savepoint; its rows are undone, the others' kept, and the rollback is told.
        before = db.statistics().isolated
        undone.clear()
        c, failed, d = await batch(
            functools.partial(counted, "c"), fails_after_writing, functools.partial(counted, "d")
        )
        assert isinstance(c, int) and isinstance(d, int)
        assert isinstance(failed, ValueError) and "after writing" in str(failed)
        assert ran_again_after("wrote"), ran
        assert db.statistics().isolated == before + 1
        assert undone
        if sqlite:
            assert sum(s == "SAVEPOINT job" for s in statements) == 3, statements
    assert _names(engine) == {"gate", "a", "b", "c", "d"}


_EXAMPLES = itertools.count()
#: What a job of a generated batch does: insert its rows and return their ids; raise before
#: writing; insert its rows, then raise; insert its rows, then break a constraint in SQL;
#: insert its rows, then read a table that is not there (PostgreSQL aborts the transaction).
_KINDS = ("ok", "refused", "fails_after", "fails_sql", "fails_select")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    jobs=st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 3)), min_size=1, max_size=10)
)
async def test_a_batch_keeps_exactly_the_rows_of_the_jobs_that_succeeded(
    engine: Engine, jobs: list[tuple[str, int]]
) -> None:
    example = next(_EXAMPLES)
    undone: list[int] = []

    def job(i: int, kind: str, rows: int, seed: int, conn: sqlite3.Connection) -> list[int]:
        ids = [_insert(f"{example}-{i}-{k}", conn) for k in range(rows)]
        if kind == "refused" or kind == "fails_after":
            raise ValueError(kind)
        if kind == "fails_sql":
            conn.execute("INSERT INTO items (id, name) VALUES (?, 'duplicate id')", (seed,))
        if kind == "fails_select":
            conn.execute("SELECT * FROM no_such_table")
        return ids

    async with engine.open(MIGRATIONS) as db:
        db.on_rollback(lambda: undone.append(1))
        seed = await db.transaction(functools.partial(_insert, f"{example}-seed"))
        isolated = db.statistics().isolated
        fns = [
            functools.partial(job, i, kind, 0 if kind == "refused" else rows, seed)
            for i, (kind, rows) in enumerate(jobs)
        ]
        async with trio.open_nursery() as nursery:
            gate = _Gate()
            everything = await _queue_behind_gate(db, nursery, gate, fns)
            gate.release.set()
        outcomes = everything[1:]
        isolated = db.statistics().isolated - isolated
    kept = {
        name
        for (name,) in engine.peek("SELECT name FROM items")
        if name.startswith(f"{example}-") and name != f"{example}-seed"
    }
    assert kept == {
        f"{example}-{i}-{k}"
        for i, (kind, rows) in enumerate(jobs)
        if kind == "ok"
        for k in range(rows)
    }
    for (kind, rows), outcome in zip(jobs, outcomes, strict=True):
        if kind == "ok":
            assert isinstance(outcome, list) and len(outcome) == rows
        elif kind == "fails_sql":
            assert isinstance(outcome, (sqlite3.IntegrityError, psycopg.errors.UniqueViolation))
        elif kind == "fails_select":
            assert isinstance(outcome, (sqlite3.OperationalError, psycopg.errors.UndefinedTable))
        else:
            assert isinstance(outcome, ValueError) and str(outcome) == kind
    # A batch runs again only when it has to: when a job failed after changing rows (on
    # PostgreSQL also when an SQL error aborted the transaction); a lone job needs no
    # second run.
    again = any(kind != "ok" and kind != "refused" and rows for kind, rows in jobs) or (
        engine.name == "postgresql" and any(kind.startswith("fails_s") for kind, _ in jobs)
    )
    assert isolated == (1 if again and len(jobs) > 1 else 0)
    assert bool(undone) == again


async def test_nothing_acknowledged_is_lost_when_the_writer_is_killed(engine: Engine) -> None:
    proc = await trio.to_thread.run_sync(
        functools.partial(
            subprocess.Popen,
            [sys.executable, "-m", "tests.store_writer", engine.target],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    )
    assert proc.stdout is not None
    acknowledged: list[int] = []
    try:
        while len(acknowledged) < 200:
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            assert line, f"the writer ended early ({proc.wait()})"
            acknowledged.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = await trio.to_thread.run_sync(proc.stdout.read)
        proc.stdout.close()
        proc.wait()
    acknowledged += [int(x) for x in rest.split()]
    stored = {row[0] for row in engine.peek("SELECT id FROM items")}
    assert set(acknowledged) <= stored
    # And the store opens again after the crash, with everything in it.
    async with engine.open(MIGRATIONS) as db:
        count = await db.transaction(
            lambda conn: conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        )
    assert count == len(stored)


async def test_migrations_run_once_each_and_a_newer_schema_is_refused(engine: Engine) -> None:
    runs: list[str] = []

    def one(conn: sqlite3.Connection) -> None:
        runs.append("one")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")

    def two(conn: sqlite3.Connection) -> None:
        runs.append("two")
        conn.execute("ALTER TABLE items ADD COLUMN size REAL")

    def broken(conn: sqlite3.Connection) -> None:
        runs.append("broken")
        conn.execute("CREATE TABLE half (id INTEGER)")
        raise RuntimeError("migration failed")

    async with engine.open([one]) as db:
        await db.transaction(functools.partial(_insert, "x"))
    async with engine.open([one]):
        pass
    assert runs == ["one"]
    with pytest.raises(RuntimeError, match="migration failed"):
        async with engine.open([one, two, broken]):
            pass
    assert runs == ["one", "two", "broken"]
    # The failed step left nothing; the good one before it stays.
    async with engine.open([one, two]) as db:
        await db.transaction(
            lambda conn: conn.execute("INSERT INTO items (name, size) VALUES ('y', 1.5)")
        )
    assert runs == ["one", "two", "broken"]
    assert _names(engine) == {"x", "y"}
    with pytest.raises(DatabaseUnusable, match="schema version 2, newer than this hyperhive"):
        async with engine.open([one]):
            pass
    assert _names(engine) == {"x", "y"}


def _sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite_connect(path, synchronous="FULL", migrations=BROKER_MIGRATIONS)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        columns = {
            t: [
                (r["name"], r["notnull"] == 1 or r["pk"] == 1)
                for r in conn.execute(f"PRAGMA table_info({t})")
            ]
            for t in tables
        }
        indexes = {}
        for name, table, sql in conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ):
            cols = [
                r["name"] or "<expr>"
                for r in conn.execute(f"PRAGMA index_xinfo({name})")
                if r["key"]
            ]
            indexes[name] = (table, cols, "UNIQUE" in sql.upper(), " WHERE " in sql.upper())
        uniques = {
            (t, tuple(r["name"] for r in conn.execute(f"PRAGMA index_info({i['name']})")))
            for t in tables
            for i in conn.execute(f"PRAGMA index_list({t})")
            if i["origin"] == "u"
        }
        return {"tables": tables, "columns": columns, "indexes": indexes, "uniques": uniques}
    finally:
        conn.close()


def _pg_schema(url: str) -> dict[str, Any]:
    conn = connect_pg(url, migrations=BROKER_MIGRATIONS)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_name <> 'hyperhive_schema' ORDER BY table_name"
            )
        ]
        columns = {
            t: [
                (r[0], r[1] == "NO")
                for r in conn.execute(
                    "SELECT column_name, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
                    (t,),
                )
            ]
            for t in tables
        }
        indexes = {}
        rows = conn.execute(
            "SELECT i.relname, t.relname, ix.indisunique, ix.indpred IS NOT NULL, "
            "ARRAY(SELECT CASE WHEN k = 0 THEN '<expr>' ELSE a.attname END "
            "      FROM unnest(ix.indkey) WITH ORDINALITY AS u(k, n) "
            "      LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k ORDER BY n) "
            "FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid "
            "JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_namespace s ON s.oid = t.relnamespace "
            "WHERE s.nspname = 'public' AND t.relname <> 'hyperhive_schema' "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid)"
        ).fetchall()
        for name, table, unique, partial, cols in rows:
            indexes[name] = (table, list(cols), unique, partial)
        uniques = {
            (r[0], tuple(r[1]))
            for r in conn.execute(
                "SELECT t.relname, ARRAY(SELECT a.attname FROM unnest(c.conkey) AS k "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k) "
                "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
                "JOIN pg_namespace s ON s.oid = t.relnamespace "
                "WHERE c.contype = 'u' AND s.nspname = 'public'"
            )
        }
        return {"tables": tables, "columns": columns, "indexes": indexes, "uniques": uniques}
    finally:
        conn.close()


def test_the_broker_schema_is_the_same_on_both_engines(short_tmp: Path, pg_url: str) -> None:
    lite = _sqlite_schema(short_tmp / "broker.sqlite")
    pg = _pg_schema(pg_url)
    assert lite["tables"] == pg["tables"]
    assert lite["columns"] == pg["columns"]
    assert lite["indexes"] == pg["indexes"]
    assert lite["uniques"] == pg["uniques"]
    assert "messages_unacked" in pg["indexes"] and pg["indexes"]["messages_unacked"][3]
    # Text compares and sorts byte by byte, as sqlite's BINARY does, whatever the locale.
    with psycopg.connect(pg_url) as conn:
        collations = conn.execute(
            "SELECT DISTINCT collation_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type = 'text'"
        ).fetchall()
    assert collations == [("C",)]


def test_placeholders_are_translated_outside_literals() -> None:
    assert to_pyformat("SELECT * FROM t WHERE a = ? AND b LIKE 'x?%' -- ?%\n AND c = ?") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x?%%' -- ?%%\n AND c = %s"
    )
    assert to_pyformat("SELECT 'it''s ?', \"q?\" , ?") == "SELECT 'it''s ?', \"q?\" , %s"
    assert translate("SELECT id FROM messages INDEXED BY messages_unacked WHERE x = ?") == (
        "SELECT id FROM messages WHERE x = %s"
    )


def test_the_password_is_redacted() -> None:
    assert redact_url("postgresql://hive:s3cret@db.example/hive?sslmode=require") == (
        "postgresql://hive:***@db.example/hive?sslmode=require"
    )
    assert "s3cret" not in redact_url("postgres://db/hive?password=s3cret&user=hive")
    assert redact_url("postgresql:///hive?host=/run/postgresql") == (
        "postgresql:///hive?host=/run/postgresql"
    )
    with pytest.raises(DatabaseUnusable, match="not a postgresql://") as refused:
        check_store_url("mysql://hive:s3cret@db/hive")
    assert "s3cret" not in str(refused.value)
    check_store_url("postgres://h/db")
    check_store_url(None)


async def test_a_refused_connection_does_not_show_the_password(pg_server: PgServer) -> None:
    url = pg_server.url("no_such_database", password="s3cret-pw")
    with pytest.raises(DatabaseUnusable) as refused:
        async with open_store(url, Path("/nonexistent"), synchronous="FULL", migrations=()):
            pass
    assert "no_such_database" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)


async def test_a_lost_connection_fails_the_database(pg_server: PgServer, pg_url: str) -> None:
    url = pg_url.replace("hyperhive@", "hyperhive:s3cret-pw@")
    with pytest.raises(ExceptionGroup) as group:
        async with open_store(
            url, Path("/nonexistent"), synchronous="FULL", migrations=MIGRATIONS
        ) as db:
            assert not db.can_read  # reads queue on the writer (no round trip on the loop)
            pid = await db.transaction(
                lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            )
            assert dialect(db._conn) == "postgresql"
            with pg_server.admin() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(DatabaseFailed):
                await db.transaction(functools.partial(_insert, "lost"))
            await trio.sleep_forever()  # the store's failure ends the block
    failed = group.value.subgroup(DatabaseFailed)
    assert failed is not None
    message = str(failed.exceptions[0])
    assert "s3cret-pw" not in message and "hyperhive:***@" in message, message


async def test_sqlite_dialect_is_sqlite(short_tmp: Path) -> None:
    async with open_store(None, short_tmp / "x.sqlite", synchronous="FULL", migrations=()) as db:
        assert db.can_read
        assert await db.transaction(dialect) == "sqlite"
