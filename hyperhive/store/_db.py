"""One sqlite database behind one writer connection, reached from trio.

Every piece of work is a plain synchronous function of a ``sqlite3.Connection`` (the sans-IO
side). :meth:`Database.transaction` queues it; one writer task takes everything queued so
far and runs it in a single ``BEGIN IMMEDIATE … COMMIT`` (group commit), so a burst of
concurrent writers shares one fsync, and a failing function rolls back alone. A function's
result is returned only after the commit, so whatever the caller was told is durable at the
database's ``synchronous`` level.

A batch first runs without a savepoint per function (two statements less per function, on
the hot path): a function that fails before changing a row (a refused request: most
failures) needs no undoing. One that fails after changing rows makes the writer roll the
transaction back and run the batch again, each function in its own savepoint. So a function
may run more than once, and must change nothing outside the connection, or undo it in a
hook given to :meth:`Database.on_rollback` (called whenever changed rows were undone).

Where a batch runs (:class:`Placement`): on the event loop itself, as a plain call, when it
is quick, which is what a batch of the broker's hot path is (a few indexed statements and
one fsync: ~0.1-0.3 ms on an SSD). Handing it to a thread instead costs more than the batch
(each sqlite call releases and takes back the GIL, so the loop and the thread take turns
through the kernel, several context switches per statement) — measured, the daemon spent
~40 % more CPU per message and moved ~40 % fewer messages that way. A batch runs on the
writer's own thread (one for the database's lifetime) when it may take long: work queued
with ``slow=True`` (retention's deletes, the ledger's aggregates), a disk in full mode, an
engine whose every statement is a network round trip (PostgreSQL), and while batches cost
more than :data:`INLINE_MAX_SECONDS` on average (a slow disk: the loop does not wait on
it). While a batch runs there, new work queues behind it and goes in the next batch.
Checkpoints, which copy the write-ahead log back into the file and fsync it, run beside the
writer in a worker thread on a connection of their own (sqlite's automatic checkpoint
inside a commit is off for the writer), every :data:`CHECKPOINT_BATCHES` batches.

Work that may be lost in a power cut without breaking a promise (marking a message as
handed out: the worst case is handing it out again, which at-least-once delivery allows)
is queued with ``durable=False``; a batch made only of such work commits at ``NORMAL``
(no fsync in WAL mode), and any durable job in the batch makes it fsync as configured.

Disk full (``SQLITE_FULL``; in WAL mode usually at ``COMMIT``, when the WAL cannot grow)
is an outage of writes, not of the daemon. sqlite has then rolled the whole transaction
back, so the writer enters *full mode*: it deletes its reserve file (``<db>.reserve``,
allocated at open, so that small bookkeeping still fits) and runs the batch again. In full
mode a durable job that changes rows is rolled back to its savepoint and fails with
:class:`~hyperhive.errors.DiskFull`; reads and non-durable bookkeeping (marking messages
handed out) go on. Before each batch in full mode the writer looks at the free space and
leaves full mode, re-creating the reserve, as soon as there is room again. Nothing was
acknowledged for a job that failed, so nothing acknowledged is lost.

Any other failure of ``BEGIN`` or ``COMMIT`` is a failure of the file itself
(:class:`DatabaseFailed`): the writer stops and the daemon with it.

Cheap reads on hot paths (an inbox's unread count, "is anything waiting?" before a ``recv``
parks) do not queue behind the writer: :meth:`Database.read` runs them at once, on the
caller's thread, on a second, read-only connection. In WAL mode a reader never waits for
the writer and sees every transaction committed before its statement started; a read is
one statement run to its end (``fetchall``/one row), so no read transaction outlives it
and holds an old snapshot. Only bounded, indexed queries belong there: they run on the
event loop.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import attrs
import trio

from hyperhive.errors import DiskFull, HyperhiveError
from hyperhive.store._sql import Dialect

T = TypeVar("T")
log = logging.getLogger(__name__)
#: Free space (beyond the reserve) that ends full mode.
FULL_MODE_MARGIN = 1024 * 1024
#: sqlite's extended code for a failed write(); ENOSPC itself comes as SQLITE_FULL.
SQLITE_IOERR_WRITE = 778
#: Batches run on the writer's thread while they cost more than this (seconds) on average:
#: the disk is slow, and the event loop must not wait on it.
INLINE_MAX_SECONDS: Final = 0.002
#: Batches between two checkpoints of the write-ahead log (sqlite's own default is about
#: 1000 pages; a batch of the broker writes a few).
CHECKPOINT_BATCHES: Final = 256

#: Forward migrations: ``MIGRATIONS[i]`` takes ``user_version`` from ``i`` to ``i + 1``.
Migration = Callable[[sqlite3.Connection], None]


class DatabaseClosed(RuntimeError):
    """The database's writer has stopped; no more work is taken."""


class DatabaseFailed(RuntimeError):
    """The database file itself failed (I/O error, corruption, lock taken away): fatal."""


class LockLost(RuntimeError):
    """A lock held by :meth:`Database.hold_lock` was lost (its connection failed)."""


class _Full(Exception):
    """A batch attempt ran out of space and sqlite rolled its transaction back."""


class _Isolate(Exception):
    """A function of a batch run without savepoints failed after changing rows: the
    transaction was rolled back, and the batch runs again with a savepoint per function."""


def is_disk_full(exc: BaseException) -> bool:
    """An sqlite or OS error that means no space (SQLITE_FULL, ENOSPC, EDQUOT)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system (blocking)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


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
    #: May take long (many rows): its batch runs on the writer's thread, not on the event loop.
    slow: bool = False
    #: The task waiting for the job (rescheduled once the batch is back on the trio side).
    task: trio.lowlevel.Task | None = None
    result: T | None = None
    error: BaseException | None = None

    def finish(self) -> None:
        """(On the trio thread) the batch is back: wake the waiting task."""
        if self.task is not None:
            trio.lowlevel.reschedule(self.task)


def _refuse_abort(_raise_cancel: Callable[[], BaseException]) -> trio.lowlevel.Abort:
    # A queued job runs even if its caller is cancelled: the cancel is delivered at the
    # caller's next checkpoint, once the outcome is known (a shielded wait, without a scope).
    return trio.lowlevel.Abort.FAILED


class _WriterThread:
    """The writer's own thread, for the batches that do not run on the event loop (every
    batch on PostgreSQL): one for the database's lifetime, fed through a queue, each batch
    handed back with one :meth:`~trio.lowlevel.TrioToken.run_sync_soon` (cheaper per batch
    than a worker of trio's thread pool)."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="hyperhive-db-writer", daemon=True).start()

    def _serve(self) -> None:
        while (work := self._queue.get()) is not None:
            work()

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the thread; its result (``fn`` must not raise)."""
        task = trio.lowlevel.current_task()
        results: list[T] = []

        def work() -> None:
            results.append(fn())
            self._token.run_sync_soon(trio.lowlevel.reschedule, task)

        self._queue.put(work)
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        return results[0]

    def stop(self) -> None:
        """End the thread once what it was given has run."""
        self._queue.put(None)


@attrs.define
class Placement:
    """Whether the writer runs the next batch on the event loop or on its thread (sans-IO:
    the writer says what each batch cost).

    A moving average of what batches cost decides, so that one slow fsync (they happen)
    does not move the writer off the loop, and a disk that stays slow does: then each
    batch runs in a thread, where its cost is still measured, and the writer comes back
    to the loop once the average is low again.
    """

    #: Whether the engine may run batches on the loop at all (not over a network).
    loop_allowed: bool = True
    max_inline: float = INLINE_MAX_SECONDS
    #: Weight of the newest batch in the average.
    weight: float = 0.1
    #: Seconds a batch costs, on average.
    average: float = 0.0

    def on_loop(self, *, slow: bool) -> bool:
        return self.loop_allowed and not slow and self.average <= self.max_inline

    def ran(self, seconds: float) -> None:
        """A batch (of the usual kind: not ``slow``) took ``seconds``."""
        self.average += self.weight * (seconds - self.average)


@attrs.frozen
class DatabaseStatistics:
    transactions: int
    batches: int
    queued: int
    #: Batches run on the writer's thread (the rest ran on the event loop).
    off_loop: int = 0
    checkpoints: int = 0
    #: Batches run again with a savepoint per function (one failed after changing rows).
    isolated: int = 0


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
    # Statistics for the planner where sqlite thinks they would help (cheap when they would
    # not); queries whose plan matters name their index anyway (see hyperhive.broker.INBOX).
    conn.execute("PRAGMA optimize")
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the WAL database at ``path`` (opened by :func:`connect`)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # A reader waits only while a crashed writer's WAL is recovered: briefly, at worst.
    conn.execute("PRAGMA busy_timeout = 100")
    conn.execute("PRAGMA query_only = ON")
    return conn


def connect_checkpointer(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection to the WAL database at ``path`` that only checkpoints it
    (:func:`checkpoint`); it syncs the log and the file as ``synchronous`` says."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 100")
    conn.execute(f"PRAGMA synchronous = {_check_sync(synchronous)}")
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy what the write-ahead log holds back into the file, as far as no reader needs
    it (``PASSIVE``: the writer is never waited for); blocking. A busy file is left for
    the next one."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.OperationalError as exc:
        log.debug("checkpoint left for later: %s", exc)


def _check_sync(level: str) -> str:
    level = level.upper()
    if level not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"unknown sqlite synchronous level {level!r}")
    return level


class Database:
    """Serialises every transaction of one sqlite file through one connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        synchronous: str = "FULL",
        *,
        path: Path | None = None,
        reserve_bytes: int = 0,
        reader: sqlite3.Connection | None = None,
    ) -> None:
        self._conn = conn
        self._reader = reader
        self._path = path
        self._reserve_bytes = reserve_bytes if path is not None else 0
        #: Writes that change rows are refused until there is space again.
        self.full = False
        #: Called (on the trio side) after each batch in full mode and when it ends.
        self.on_disk_full: Callable[[], None] | None = None
        self._synchronous = _check_sync(synchronous)
        self._current_sync = self._synchronous
        #: Jobs queued for the writer's next batch.
        self._pending: list[_Job[Any]] = []
        #: The writer task while it waits for work (None: it is busy, or not started).
        self._idle_writer: trio.lowlevel.Task | None = None
        #: A batch (or the close) is running on the writer's thread, on its connection.
        self._writer_away = False
        self.placement = Placement(loop_allowed=self.batches_on_loop)
        self._checkpoint_due = trio.Event()
        self._closed = False
        self._transactions = 0
        self._batches = 0
        self._off_loop = 0
        self._checkpoints = 0
        self._isolated = 0
        self._rollback_hooks: list[Callable[[], None]] = []

    @property
    def reserve_file(self) -> Path | None:
        return None if self._path is None else self._path.with_name(self._path.name + ".reserve")

    def make_reserve(self) -> bool:
        """Allocate the reserve file (blocking); False when there is no room for it."""
        reserve = self.reserve_file
        if reserve is None or self._reserve_bytes <= 0:
            return True
        try:
            fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(reserve)
            if is_disk_full(exc):
                return False
            log.warning("%s: no reserve for a full disk: %s", reserve, exc)
        return True

    def _disk_full_error(self) -> DiskFull:
        where = self._path if self._path is not None else "the database"
        return DiskFull(f"disk full: {where} could not be written; free space on its file system")

    @property
    def dialect(self) -> Dialect:
        return "sqlite"

    @property
    def shared(self) -> bool:
        """Whether other daemons (nodes) may use the same store: PostgreSQL; sqlite is one
        daemon's file."""
        return False

    def notify(self, conn: Any, payload: str) -> None:
        """(In a transaction) tell every node listening, once and if the transaction
        commits. sqlite: nobody else listens; nothing to do."""

    @asynccontextmanager
    async def listen(
        self, deliver: Callable[[str], None], *, lock: tuple[int, int] | None = None
    ) -> AsyncIterator[None]:
        """Call ``deliver(payload)`` (on the trio thread) for each :meth:`notify` of any
        node, for the duration of the ``async with``, holding the advisory ``lock`` if
        given. sqlite: no other daemon shares the file (its flock says so); nothing to do."""
        yield

    @asynccontextmanager
    async def hold_lock(
        self,
        key: int,
        *,
        retry_seconds: float = 2.0,
        check_seconds: float = 2.0,
        waiting: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        """Enter once this daemon holds the hive-wide lock ``key``, and hold it for the
        duration of the ``async with``. PostgreSQL: a session advisory lock on a connection
        of its own, tried every ``retry_seconds`` (``waiting()`` is called after the first
        try fails), the connection checked every ``check_seconds`` while held; when it
        fails, the body is cancelled and :class:`LockLost` raised. sqlite: held at once and
        for ever (the file's flock already makes the daemon the only one)."""
        yield

    @property
    def can_read(self) -> bool:
        """Whether :meth:`read` is available (a read-only connection, database open)."""
        return self._reader is not None and not self._closed

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run the read-only ``fn`` now and return its result.

        No queue, no thread, no checkpoint: ``fn`` sees everything committed before it
        started. Only for bounded, indexed queries that run each statement to its end.
        Between batches the writer's connection is idle on this thread (a batch on the
        loop runs within one call), and it runs ``fn``: its cache holds the pages it just
        wrote, where the read connection would read them again after every commit. While
        a batch is on the writer's thread, the read connection does.
        """
        if self._reader is None or self._closed:
            raise DatabaseClosed("the database is closed (or has no read connection)")
        return fn(self._reader if self._writer_away else self._conn)

    def statistics(self) -> DatabaseStatistics:
        return DatabaseStatistics(
            self._transactions,
            self._batches,
            len(self._pending),
            off_loop=self._off_loop,
            checkpoints=self._checkpoints,
            isolated=self._isolated,
        )

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (in the writer, possibly on its thread) whenever rows a function
        changed were undone: that function's batch runs again, or the function failed. Who
        keeps a copy of what functions wrote (a cache) drops it there."""
        self._rollback_hooks.append(hook)

    #: Whether batches may run on the event loop (sqlite); False for an engine whose every
    #: statement is a network round trip.
    batches_on_loop: bool = True

    async def transaction(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True, slow: bool = False
    ) -> T:
        """Run ``fn`` inside a committed transaction and return its result.

        ``durable=False`` lets the commit skip the fsync when nothing else in its batch
        needs one (see the module docstring for what may use it). ``slow=True`` says ``fn``
        may take long (it touches many rows): its batch runs on the writer's thread.

        Once queued, the work runs even if the caller is cancelled, so the caller waits for
        it shielded: a half-known outcome (a message marked delivered to nobody) is worse
        than finishing a batch that takes milliseconds.
        """
        if self._closed:
            raise DatabaseClosed("the database is closed")
        job: _Job[T] = _Job(fn, durable, slow, trio.lowlevel.current_task())
        self._pending.append(job)
        writer, self._idle_writer = self._idle_writer, None
        if writer is not None:
            trio.lowlevel.reschedule(writer)
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer until cancelled (or the file fails), then close the file.

        Work queued before the cancel still runs; then the connections are closed.
        """
        checkpoints = self._checkpointer()
        failure: DatabaseFailed | None = None
        self._thread = _WriterThread()
        try:
            async with trio.open_nursery() as nursery:
                if checkpoints is not None:
                    nursery.start_soon(checkpoints)
                task_status.started()
                try:
                    await self._write()
                except DatabaseFailed as exc:  # raised below, outside the task group
                    failure = exc
                    nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            self._closed = True  # nothing is queued from now on
            with trio.CancelScope(shield=True):
                while self._pending:
                    await self._run_next(self._take())
                await self._close()
                self._thread.stop()

    async def _wait_for_work(self) -> None:
        while not self._pending:
            self._idle_writer = trio.lowlevel.current_task()

            def abort(_raise_cancel: Callable[[], BaseException]) -> trio.lowlevel.Abort:
                self._idle_writer = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _write(self) -> None:
        """The writer: batch after batch of what is queued, until cancelled; raises
        :class:`DatabaseFailed` when the file itself failed."""
        while True:
            await self._wait_for_work()
            # Let the tasks that are ready now queue their work too: one batch, one commit.
            await trio.lowlevel.cancel_shielded_checkpoint()
            error = await self._run_next(self._take())
            if error is not None:
                raise error  # the file itself failed: stop, do not limp on

    def _close_quietly(self) -> None:
        try:
            self._conn.close()
        except Exception:
            log.exception("closing %s failed", self._path)

    def _take(self) -> list[_Job[Any]]:
        batch, self._pending = self._pending, []
        return batch

    async def _run_next(self, batch: list[_Job[Any]]) -> DatabaseFailed | None:
        """Run ``batch`` where :attr:`placement` says, wake its callers, and return the
        error if the file itself failed."""
        was_full = self.full
        slow = self.full or any(job.slow for job in batch)
        on_loop = self.placement.on_loop(slow=slow)
        start = time.monotonic()
        try:
            if on_loop:
                error = self._run_batch_guarded(batch)
            else:
                self._off_loop += 1
                self._writer_away = True
                with trio.CancelScope(shield=True):
                    error = await self._thread.run(
                        functools.partial(self._run_batch_guarded, batch)
                    )
        finally:
            self._writer_away = False
            for job in batch:
                job.finish()
        if not slow:
            self.placement.ran(time.monotonic() - start)
        try:
            self._after_batch(was_full)
        except Exception:
            log.exception("internal error after a batch of %s", self._path)
        if self._batches % CHECKPOINT_BATCHES == 0:
            self._checkpoint_due.set()
        return error

    def _checkpointer(self) -> Callable[[], Awaitable[None]] | None:
        """The task that checkpoints the write-ahead log beside the writer, in a thread on
        a connection of its own (None: nothing to checkpoint)."""
        if self._path is None or not self.batches_on_loop:
            return None
        path = self._path

        async def checkpoints() -> None:
            conn = await trio.to_thread.run_sync(
                functools.partial(connect_checkpointer, path, self._synchronous)
            )
            try:
                while True:
                    await self._checkpoint_due.wait()
                    self._checkpoint_due = trio.Event()
                    await trio.to_thread.run_sync(checkpoint, conn)
                    self._checkpoints += 1
            finally:
                conn.close()

        return checkpoints

    async def _close(self) -> None:
        self._writer_away = True
        await self._thread.run(self._close_quietly)
        if self._reader is not None:
            self._reader.close()

    def _after_batch(self, was_full: bool) -> None:
        if self.full and not was_full:
            log.warning("%s", self._disk_full_error())
        if (self.full or was_full) and self.on_disk_full is not None:
            self.on_disk_full()

    def _run_batch_guarded(self, batch: list[_Job[Any]]) -> DatabaseFailed | None:
        """:meth:`_run_batch`, and a failure of the writer itself fails the batch (the
        callers must learn it) and the database."""
        try:
            return self._run_batch(batch)
        except BaseException as exc:
            return self._fail(batch, f": the writer failed: {exc!r}", exc)

    def _failure_text(self, what: str) -> str:
        """The text of a :class:`DatabaseFailed`: which database, then ``what``."""
        where = self._path if self._path is not None else "the database"
        return f"{where}{what}"

    def _fail(self, batch: list[_Job[Any]], what: str, exc: BaseException) -> DatabaseFailed:
        """Fail every job of ``batch`` with one :class:`DatabaseFailed` (where + ``what``)."""
        failed = DatabaseFailed(self._failure_text(what))
        failed.__cause__ = exc
        for job in batch:
            job.result, job.error = None, failed
        return failed

    def _run_batch(self, batch: list[_Job[Any]]) -> DatabaseFailed | None:
        """Run one batch (blocking); return the error if the file itself failed."""
        if self.full:
            self._try_leave_full_mode()
        try:
            try:
                self._attempt_batch(batch)
            except _Full:
                if self.full:
                    raise
                # The whole transaction is gone; run it again with writes refused.
                self._enter_full_mode()
                self._attempt_batch(batch)
        except _Full:
            # Not even bookkeeping fits any more: every job of the batch fails alone.
            for job in batch:
                job.result, job.error = None, self._disk_full_error()
            return None
        except sqlite3.Error as exc:
            return self._fail(batch, f" failed: {exc}", exc)
        self._batches += 1
        self._transactions += len(batch)
        return None

    def _attempt_batch(self, batch: list[_Job[Any]]) -> None:
        """The batch without savepoints; again with them when a job failed after changing
        rows (always with them in full mode, where durable writes fail by design)."""
        if self.full or len(batch) == 1:
            self._attempt(batch, isolate=True)
            return
        try:
            self._attempt(batch, isolate=False)
        except _Isolate:
            self._isolated += 1
            self._attempt(batch, isolate=True)

    def _attempt(self, batch: list[_Job[Any]], *, isolate: bool) -> None:
        """One transaction over the batch; raises _Full, _Isolate or the error of
        BEGIN/COMMIT."""
        conn = self._conn
        level = self._synchronous
        if level in ("FULL", "EXTRA") and not any(job.durable for job in batch):
            level = "NORMAL"
        if level != self._current_sync:
            conn.execute(f"PRAGMA synchronous = {level}")
            self._current_sync = level
        conn.execute("BEGIN IMMEDIATE")
        if not self._run_jobs(conn, batch, isolate=isolate):
            return
        self._commit(conn)

    def _commit(self, conn: Any) -> None:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._rolled_back()
            if self._out_of_space(exc):
                raise _Full() from None
            raise

    def _run_jobs(self, conn: Any, batch: list[_Job[Any]], *, isolate: bool) -> bool:
        """Run the jobs of ``batch`` in the open transaction; False when a lone job failed
        and the transaction was rolled back: there is nothing to commit.

        ``isolate``: each job in its own savepoint (a job alone in its batch in the
        transaction itself), so a failing one rolls back alone. Without: a job that fails
        having changed no row fails alone, one that changed rows rolls the transaction back
        and raises :class:`_Isolate`. The engine's :meth:`_run_job`, :meth:`_changes` and
        :meth:`_job_failed` say what a job, its changes and its failure mean."""
        if not isolate:
            for job in batch:
                job.result, job.error = None, None
                before = self._changes(conn)
                try:
                    job.result = self._run_job(job)
                except BaseException as exc:
                    if self._failed(conn, job, exc, before):
                        conn.execute("ROLLBACK")
                        self._rolled_back()
                        raise _Isolate() from None
            return True
        alone = len(batch) == 1
        for job in batch:
            job.result, job.error = None, None
            if not alone:
                conn.execute("SAVEPOINT job")
            before = self._changes(conn)
            try:
                job.result = self._run_job(job)
            except BaseException as exc:
                wrote = self._failed(conn, job, exc, before)
                conn.execute("ROLLBACK" if alone else "ROLLBACK TO SAVEPOINT job")
                if wrote:
                    self._rolled_back()
                if alone:
                    return False
            if not alone:
                conn.execute("RELEASE SAVEPOINT job")
        return True

    def _failed(self, conn: Any, job: _Job[Any], exc: BaseException, before: int | None) -> bool:
        """``job`` raised ``exc``: whether it had changed rows (to be undone). Raises for
        the whole batch when its transaction is gone (:meth:`_job_failed`)."""
        job.result, job.error = None, exc
        wrote = before is None or self._changes(conn) != before
        try:
            self._job_failed(job, exc)
        except BaseException:
            self._rolled_back()  # everything the batch changed so far is gone
            raise
        return wrote

    def _rolled_back(self) -> None:
        for hook in self._rollback_hooks:
            hook()

    def _changes(self, conn: Any) -> int | None:
        """Rows changed so far by the connection (None: the engine cannot tell)."""
        return int(conn.total_changes)

    def _run_job(self, job: _Job[Any]) -> Any:
        """One job's function; in full mode a durable one may change no row."""
        conn = self._conn
        before = conn.total_changes
        result = job.fn(conn)
        if self.full and job.durable and conn.total_changes != before:
            raise self._disk_full_error()
        return result

    def _job_failed(self, job: _Job[Any], exc: BaseException) -> None:
        """A job raised ``exc``: it fails alone, unless the disk is full or sqlite rolled the
        whole transaction back (raised here, for the batch)."""
        conn = self._conn
        full = self._out_of_space(exc)
        if full:
            job.error = self._disk_full_error()
        if full and not self.full:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _Full() from None
        if not conn.in_transaction:
            # sqlite rolled everything back (it may, for some errors).
            if full:
                raise _Full() from None
            if isinstance(exc, sqlite3.Error):
                raise exc from None
            raise sqlite3.OperationalError(f"transaction rolled back: {exc}") from None

    def _out_of_space(self, exc: BaseException) -> bool:
        """SQLITE_FULL; or a failed write (sqlite reports EDQUOT so) with the disk nearly full."""
        if is_disk_full(exc):
            return True
        code = getattr(exc, "sqlite_errorcode", None)
        if code != SQLITE_IOERR_WRITE or self._path is None:
            return False
        try:
            return free_bytes(self._path.parent) < self._reserve_bytes + FULL_MODE_MARGIN
        except OSError:
            return False

    def _enter_full_mode(self) -> None:
        self.full = True
        reserve = self.reserve_file
        if reserve is not None:
            # Room for marking messages handed out, acks of reads, a checkpoint.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(reserve)

    def _try_leave_full_mode(self) -> None:
        if self._path is None:
            self.full = False  # nothing to measure: try the writes again
            return
        try:
            room = free_bytes(self._path.parent) >= self._reserve_bytes + FULL_MODE_MARGIN
        except OSError:
            return
        if room and self.make_reserve():
            log.info("%s: there is space again; writes are accepted", self._path)
            self.full = False


@asynccontextmanager
async def open_database(
    path: Path, *, synchronous: str, migrations: Sequence[Migration], reserve_bytes: int = 0
) -> AsyncIterator[Database]:
    """Open, migrate and serve a database for the duration of the ``async with``.

    ``reserve_bytes`` is the size of the reserve file given up when the disk is full.
    """
    conn = await trio.to_thread.run_sync(
        lambda: connect(path, synchronous=synchronous, migrations=migrations)
    )
    # Checkpoints run beside the writer (Database.serve), never inside one of its commits.
    await trio.to_thread.run_sync(lambda: conn.execute("PRAGMA wal_autocheckpoint = 0"))
    reader = await trio.to_thread.run_sync(connect_reader, path)
    db = Database(conn, synchronous, path=path, reserve_bytes=reserve_bytes, reader=reader)
    if not await trio.to_thread.run_sync(db.make_reserve):
        db.full = True  # started on a full disk: reads work, writes wait for space
    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve)
        try:
            yield db
        finally:
            nursery.cancel_scope.cancel()
