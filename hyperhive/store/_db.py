"""One sqlite database behind one writer connection, reached from trio.

Every piece of work is a plain synchronous function of a ``sqlite3.Connection`` (the sans-IO
side). :meth:`Database.transaction` queues it; one writer task takes everything queued so far
and runs it in a single ``BEGIN IMMEDIATE … COMMIT`` on one worker-thread hop (group commit),
each function inside its own savepoint, so a failing function rolls back alone and a burst of
concurrent writers shares one fsync. A function's result is returned only after the commit,
so whatever the caller was told is durable at the database's ``synchronous`` level.

Work that may be lost in a power cut without breaking a promise (marking a message as
handed out: the worst case is handing it out again, which at-least-once delivery allows)
is queued with ``durable=False``; a batch made only of such work commits at ``NORMAL``
(no fsync in WAL mode), and any durable job in the batch makes it fsync as configured.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import attrs
import trio

from hyperhive.errors import HyperhiveError

T = TypeVar("T")

#: Forward migrations: ``MIGRATIONS[i]`` takes ``user_version`` from ``i`` to ``i + 1``.
Migration = Callable[[sqlite3.Connection], None]


class DatabaseClosed(RuntimeError):
    """The database's writer has stopped; no more work is taken."""


class DatabaseUnusable(HyperhiveError):
    """The file is not a database this hyperhive can open (corrupt, or a newer schema)."""


SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def check_database(path: Path, known_versions: int) -> None:
    """Refuse a database file that is corrupt or newer than ``known_versions`` migrations,
    without writing anything (no ``-wal``/``-shm`` either) so that it stays as it was found.

    The header is read by hand first (sqlite would create the ``-shm`` and ``-wal`` files
    of a WAL database just by opening it); then sqlite checks the pages, read-only, and
    ``immutable`` unless a ``-wal`` file (from a crash) holds part of the content.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseUnusable(f"cannot read {path}: {exc.strerror}") from None
    if not header:
        return  # an empty file is an empty database to sqlite
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise DatabaseUnusable(
            f"{path} is not an sqlite database (corrupt?); restore it from a backup "
            "or move it away to start with an empty one"
        )
    _check_version(path, int.from_bytes(header[60:64], "big"), known_versions)
    wal = path.with_name(path.name + "-wal").exists()
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro" + (
        "" if wal else "&immutable=1"
    )
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            _check_version(path, conn.execute("PRAGMA user_version").fetchone()[0], known_versions)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise DatabaseUnusable(
            f"{path} is corrupt ({'; '.join(problems)[:300]}); restore it from a backup "
            "or move it away to start with an empty one"
        )


def _check_version(path: Path, version: int, known_versions: int) -> None:
    if version > known_versions:
        raise DatabaseUnusable(
            f"{path} has schema version {version}, newer than this hyperhive knows "
            f"({known_versions}); upgrade hyperhive instead of downgrading"
        )


@attrs.define(eq=False)
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    durable: bool = True
    done: trio.Event = attrs.field(factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


@attrs.frozen
class DatabaseStatistics:
    transactions: int
    batches: int
    queued: int


def connect(path: Path, *, synchronous: str, migrations: Sequence[Migration]) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with autocommit off, and apply pending migrations.

    A newer schema raises :class:`DatabaseUnusable` before any pragma or migration
    changes it; :func:`check_database` is the check that does not even open it for writing
    (the daemon runs it at start-up, before it takes its locks).
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        conn.close()
        _check_version(path, version, len(migrations))
    if version == 0:
        # Only honoured before the first table exists.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {_check_sync(synchronous)}")
    for target in range(version, len(migrations)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[target](conn)
            conn.execute(f"PRAGMA user_version = {target + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
    return conn


def _check_sync(level: str) -> str:
    level = level.upper()
    if level not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"unknown sqlite synchronous level {level!r}")
    return level


class Database:
    """Serialises every transaction of one sqlite file through one connection."""

    def __init__(self, conn: sqlite3.Connection, synchronous: str = "FULL") -> None:
        self._conn = conn
        self._synchronous = _check_sync(synchronous)
        self._current_sync = self._synchronous
        self._queue: list[_Job[Any]] = []
        self._wakeup = trio.Event()
        self._closed = False
        self._transactions = 0
        self._batches = 0

    def statistics(self) -> DatabaseStatistics:
        return DatabaseStatistics(self._transactions, self._batches, len(self._queue))

    async def transaction(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> T:
        """Run ``fn`` inside a committed transaction and return its result.

        ``durable=False`` lets the commit skip the fsync when nothing else in its batch
        needs one (see the module docstring for what may use it).

        Once queued, the work runs even if the caller is cancelled, so the caller waits for
        it shielded: a half-known outcome (a message marked delivered to nobody) is worse
        than finishing a batch that takes milliseconds.
        """
        if self._closed:
            raise DatabaseClosed("the database is closed")
        job: _Job[T] = _Job(fn, durable)
        self._queue.append(job)
        self._wakeup.set()
        with trio.CancelScope(shield=True):
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: run queued work in batches until cancelled, then close."""
        limiter = trio.CapacityLimiter(1)
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                batch, self._queue = self._queue, []
                if batch:
                    fatal = await trio.to_thread.run_sync(self._run_batch, batch, limiter=limiter)
                    for job in batch:
                        job.done.set()
                    if fatal is not None:
                        # The file itself failed (disk full, I/O error): stop, do not limp on.
                        raise fatal
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                # Work queued before the cancel still runs, then the file is closed.
                batch, self._queue = self._queue, []
                if batch:
                    await trio.to_thread.run_sync(self._run_batch, batch, limiter=limiter)
                for job in batch:
                    job.done.set()
                await trio.to_thread.run_sync(self._conn.close, limiter=limiter)

    def _run_batch(self, batch: list[_Job[Any]]) -> sqlite3.Error | None:
        """Run one batch; return the error if the transaction itself failed."""
        conn = self._conn
        level = self._synchronous
        if level in ("FULL", "EXTRA") and not any(job.durable for job in batch):
            level = "NORMAL"
        try:
            if level != self._current_sync:
                conn.execute(f"PRAGMA synchronous = {level}")
                self._current_sync = level
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in batch:
                job.error = exc
            return exc
        for job in batch:
            conn.execute("SAVEPOINT job")
            try:
                job.result = job.fn(conn)
            except BaseException as exc:
                job.error = exc
                conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                job.error = exc
                job.result = None
            return exc
        self._batches += 1
        self._transactions += len(batch)
        return None


@asynccontextmanager
async def open_database(
    path: Path, *, synchronous: str, migrations: Sequence[Migration]
) -> AsyncIterator[Database]:
    """Open, migrate and serve a database for the duration of the ``async with``."""
    conn = await trio.to_thread.run_sync(
        lambda: connect(path, synchronous=synchronous, migrations=migrations)
    )
    db = Database(conn, synchronous)
    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve)
        try:
            yield db
        finally:
            nursery.cancel_scope.cancel()
