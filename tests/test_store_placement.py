"""Where the writer runs a batch: on the event loop while batches are quick, in a
worker thread when work is long (``slow=True``), the disk is slow on average, or the engine
is PostgreSQL; and the write-ahead log checkpointed beside the writer, never in its commits.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path

import trio

from hyperhive.store import insert_id, open_store
from hyperhive.store._db import CHECKPOINT_BATCHES, INLINE_MAX_SECONDS, Placement
from hyperhive.store._pg import PgDatabase
from tests.conftest import wait_until
from tests.store_writer import MIGRATIONS


def test_one_slow_batch_does_not_move_the_writer_off_the_loop() -> None:
    placement = Placement()
    for _ in range(50):
        placement.ran(0.0002)
    placement.ran(0.012)  # one slow fsync among quick ones
    assert placement.on_loop(slow=False)
    assert not placement.on_loop(slow=True)  # long work never runs on the loop


def test_a_slow_disk_moves_the_writer_off_the_loop_and_a_fast_one_brings_it_back() -> None:
    placement = Placement()
    moved = 0
    while placement.on_loop(slow=False):
        placement.ran(4 * INLINE_MAX_SECONDS)  # every batch is slow now
        moved += 1
    assert moved > 1, "one slow batch moved the writer off the loop"
    for _ in range(20):
        placement.ran(4 * INLINE_MAX_SECONDS)  # measured in the thread: still slow
        assert not placement.on_loop(slow=False)
    back = 0
    while not placement.on_loop(slow=False):
        placement.ran(0.0002)  # measured in the thread: the disk is fast again
        back += 1
    assert 1 < back < 100


def _thread(_conn: sqlite3.Connection) -> str:
    return threading.current_thread().name


async def test_quick_batches_run_on_the_loop_long_ones_in_a_thread(short_tmp: Path) -> None:
    loop = threading.current_thread().name
    async with open_store(
        None, short_tmp / "p.sqlite", synchronous="FULL", migrations=MIGRATIONS
    ) as db:
        assert await db.transaction(_thread) == loop
        assert await db.transaction(_thread, slow=True) != loop
        assert db.statistics().off_loop == 1
        # While a long job holds the writer's thread, the loop goes on: another task runs,
        # and a read answers at once.
        entered, release = threading.Event(), threading.Event()

        def hold(_conn: sqlite3.Connection) -> str:
            entered.set()
            assert release.wait(30)
            return threading.current_thread().name

        held: list[str] = []

        async def long_job() -> None:
            held.append(await db.transaction(hold, slow=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_job)
            await trio.to_thread.run_sync(entered.wait)
            assert (
                db.read(lambda conn: conn.execute("SELECT count(*) FROM items").fetchone()[0]) == 0
            )
            release.set()
        assert held and held[0] != loop
        # A disk that is slow on average: the next batches go to a thread too.
        db.placement.average = 10 * INLINE_MAX_SECONDS
        assert await db.transaction(_thread) != loop


def _count_and_connection(conn: sqlite3.Connection) -> tuple[int, str]:
    """What a read sees, and which connection ran it (only the read one is query_only)."""
    count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    query_only = conn.execute("PRAGMA query_only").fetchone()[0]
    return count, "reader" if query_only else "writer"


async def test_reads_run_on_the_idle_writer_and_on_the_reader_while_it_is_away(
    short_tmp: Path,
) -> None:
    async with open_store(
        None, short_tmp / "r.sqlite", synchronous="FULL", migrations=MIGRATIONS
    ) as db:
        insert = "INSERT INTO items (name) VALUES ('x') RETURNING id"
        for expected in (1, 2):
            await db.transaction(lambda conn: insert_id(conn, insert))
            # Between batches the writer's connection answers, and sees every commit.
            assert db.read(_count_and_connection) == (expected, "writer")
        entered, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            insert_id(conn, insert)  # not committed until released
            entered.set()
            assert release.wait(30)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(db.transaction, hold, slow=True))
            await trio.to_thread.run_sync(entered.wait)
            # The writer's connection is busy on its thread: the read connection answers,
            # with what is committed.
            assert db.read(_count_and_connection) == (2, "reader")
            release.set()
        assert db.read(_count_and_connection) == (3, "writer")


async def test_postgresql_batches_never_run_on_the_loop(pg_url: str) -> None:
    loop = threading.current_thread().name
    async with open_store(
        pg_url, Path("/nonexistent"), synchronous="FULL", migrations=MIGRATIONS
    ) as db:
        assert isinstance(db, PgDatabase)
        assert await db.transaction(lambda _conn: threading.current_thread().name) != loop
        assert db.statistics().off_loop == db.statistics().batches


async def test_checkpoints_run_beside_the_writer(short_tmp: Path) -> None:
    path = short_tmp / "c.sqlite"

    def in_the_file() -> int:
        # The file alone, without its write-ahead log: what checkpoints copied back.
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'items'").fetchone():
                return 0  # the table itself is still in the log
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
        finally:
            conn.close()

    async with open_store(None, path, synchronous="FULL", migrations=MIGRATIONS) as db:
        # The writer's own commits never checkpoint (the first batch).
        autocheckpoint = await db.transaction(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        for i in range(CHECKPOINT_BATCHES - 2):
            await db.transaction(
                lambda conn, i=i: conn.execute("INSERT INTO items (name) VALUES (?)", (str(i),))
            )
        assert db.statistics().checkpoints == 0
        assert in_the_file() == 0
        await db.transaction(lambda conn: conn.execute("INSERT INTO items (name) VALUES ('x')"))

        async def checkpointed() -> bool:
            return db.statistics().checkpoints == 1

        await wait_until(checkpointed)
        assert db.statistics().batches == CHECKPOINT_BATCHES
        assert in_the_file() == CHECKPOINT_BATCHES - 1
