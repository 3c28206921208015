"""The broker's store on PostgreSQL: the same transactions as on sqlite, through psycopg.

:class:`PgDatabase` is a :class:`~hyperhive.store.Database` whose writer runs every batch
in its thread (each statement is a round trip to the server: never on the event loop)
on one PostgreSQL connection (psycopg's synchronous API; no asyncio) instead of the sqlite
file. Everything the daemon relies on is kept: :meth:`~Database.transaction` queues a plain
synchronous function of a connection; the writer takes everything queued and runs it as one
``BEGIN … COMMIT`` (group commit), first without a ``SAVEPOINT`` per function (two round
trips less each). A function that fails having run only plain ``SELECT`` statements (a refused
request) fails alone; when one ran a statement that may have changed something, or its SQL
error aborted the transaction, the transaction is rolled back and the batch runs again with
a savepoint per function, so the failing one rolls back alone; a result is returned only
after ``COMMIT``. ``synchronous_commit`` is
``on`` (the commit is flushed to the server's WAL before it is acknowledged, as
``synchronous=FULL`` on sqlite); a batch made only of ``durable=False`` work commits with
``SET LOCAL synchronous_commit = off``, as it commits at ``NORMAL`` on sqlite.

The connection is a :class:`PgConn`: the modules' sqlite SQL (``?`` placeholders) is
translated once per distinct statement (:func:`hyperhive.store._sql.to_pyformat`; sqlite's
``INDEXED BY`` planner hints are dropped) and rows are indexable by position and by name.
Parameters are bound client-side (psycopg's ``ClientCursor``): literals take the type of
their column, as in sqlite, and a Python ``bool`` is stored as ``0``/``1`` like sqlite does.
``SUM`` of integers (``numeric`` in PostgreSQL) comes back as an ``int``.

Reads: :attr:`~Database.can_read` is False, so the hot-path reads
(:meth:`~Database.read`) queue as transactions on the writer; on PostgreSQL a read on the
event loop would be a network round trip that blocks every task.

Isolation: ``READ COMMITTED``, with one writer connection per daemon, and every batch takes
one advisory lock of the whole database (:data:`WRITE_LOCK`) right after ``BEGIN``: the
transactions of every daemon sharing the store (the nodes of one hive) run one at a time, so
they serialize exactly as behind sqlite's single writer, and the modules' read-then-write
checks (one decision per approval, an inbox handed out once) need no row locks.

Failures: a failure of ``BEGIN``/``COMMIT`` or a lost connection fails the batch and the
database with :class:`~hyperhive.store.DatabaseFailed` (the daemon stops, as for a broken
sqlite file); no full-disk mode (that is the server's business). The URL's password never
appears in a message: :func:`redact_url`.

The schema: every step of the sqlite migrations runs on PostgreSQL too, its DDL translated
by :func:`translate_ddl` (``INTEGER PRIMARY KEY AUTOINCREMENT`` → identity, ``INTEGER`` →
``BIGINT``, ``REAL`` → ``DOUBLE PRECISION``, ``BLOB`` → ``BYTEA``, ``TEXT`` → ``TEXT COLLATE
"C"``: compared and sorted byte by byte as sqlite does, whatever the database's locale), one
transaction per step; the version is the one row of ``hyperhive_schema``, and a version
newer than the migrations known is refused (:class:`~hyperhive.store.DatabaseUnusable`).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import psycopg
import psycopg.adapt
import trio

from hyperhive.errors import AlreadyRunning
from hyperhive.store._db import (
    Database,
    DatabaseFailed,
    DatabaseUnusable,
    LockLost,
    Migration,
    _Job,
)
from hyperhive.store._sql import Dialect, to_pyformat
from hyperhive.store._url import redact_text, redact_url

#: Serializes migrations of one database between daemons (``pg_advisory_xact_lock``).
MIGRATION_LOCK: Final = 0x6879_7065_7268_6976  # "hyperhiv"
#: Taken by every batch of every daemon on the store (``pg_advisory_xact_lock``): the
#: daemons' transactions run one at a time, as behind sqlite's one writer.
WRITE_LOCK: Final = 0x6879_7065_7277_7269  # "hypewri"
#: The channel of :meth:`PgDatabase.notify`.
CHANNEL: Final = "hyperhive"
#: The longest payload PostgreSQL's NOTIFY takes (8000 bytes): ids, never bodies.
MAX_NOTIFY_BYTES: Final = 7999
#: How often the listening thread looks whether it is asked to stop.
_LISTEN_POLL_SECONDS: Final = 0.2
#: TCP keepalives of a lock's connection, on both ends (seconds idle, between probes, probes),
#: and how long data sent on it may stay unacknowledged (``tcp_user_timeout``, ms): a holder
#: whose host vanishes is found dead by the server within ~5 s, which releases its lock; a
#: holder cut off from the server finds out as quickly (its check fails). Real time, not
#: trio's clock. Unix sockets ignore them.
LOCK_KEEPALIVES: Final = (2, 1, 3)
LOCK_USER_TIMEOUT_MS: Final = 5000
SCHEMA_TABLE: Final = "hyperhive_schema"
_INDEXED_BY = re.compile(r"\s+INDEXED\s+BY\s+\w+", re.IGNORECASE)
log = logging.getLogger(__name__)


class PgRow:
    """A row by position and by column name, like ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PgRow):
            return tuple(self._values) == tuple(other._values) and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._values))

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description or ()
    index = {column.name: i for i, column in enumerate(description)}
    return lambda values: PgRow(values, index)


class _BoolAsInt(psycopg.adapt.Dumper):
    """A Python bool as the integer sqlite stores for it (flag columns are ``BIGINT``)."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"

    def quote(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(psycopg.adapt.Loader):
    """``numeric`` (what ``SUM`` of ``BIGINT`` gives) as an int, or a float, as on sqlite."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class PgCursor:
    def __init__(self, cursor: psycopg.ClientCursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        if self._cursor.description is None:
            return None
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        if self._cursor.description is None:
            return []
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def close(self) -> None:
        self._cursor.close()


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """A statement of the modules (sqlite, ``?``) as psycopg runs it on PostgreSQL."""
    return to_pyformat(_INDEXED_BY.sub("", sql))


#: A statement that changes nothing: a plain ``SELECT`` (``pg_notify`` aside).
_READ: Final = re.compile(r"\s*SELECT\b", re.IGNORECASE)


class PgConn:
    """A PostgreSQL connection that runs the modules' statements (see :class:`Conn`)."""

    dialect: Final[Dialect] = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn
        #: Statements run that may have changed something (all but plain ``SELECT`` statements).
        self.writes = 0

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        if _READ.match(sql) is None or "pg_notify" in sql:
            self.writes += 1
        cursor = psycopg.ClientCursor(self.raw)
        cursor.row_factory = _row_factory
        cursor.execute(translate(sql), tuple(parameters))
        return PgCursor(cursor)

    def executemany(self, sql: str, seq: Any, /) -> PgCursor:
        self.writes += 1
        cursor = psycopg.ClientCursor(self.raw)
        cursor.executemany(translate(sql), [tuple(p) for p in seq])
        return PgCursor(cursor)

    @property
    def broken(self) -> bool:
        return self.raw.broken or self.raw.closed

    def close(self) -> None:
        self.raw.close()


#: sqlite DDL → PostgreSQL DDL, in order (the first one before the plain INTEGER).
_DDL: Final = (
    (
        re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.IGNORECASE),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.IGNORECASE), "BYTEA"),
    # sqlite compares and sorts text byte by byte (BINARY), whatever the locale: so does "C".
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\bIFNULL\s*\(", re.IGNORECASE), "COALESCE("),
)


def translate_ddl(sql: str) -> str:
    """A migration's sqlite DDL statement as PostgreSQL DDL (types; ``IFNULL``)."""
    for pattern, replacement in _DDL:
        sql = pattern.sub(replacement, sql)
    return sql


class _MigrationConn:
    """What a migration step sees on PostgreSQL: its DDL is translated first."""

    dialect: Final[Dialect] = "postgresql"

    def __init__(self, conn: PgConn) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        return self._conn.execute(translate_ddl(sql), parameters)


def connect_pg(url: str, *, migrations: Sequence[Migration]) -> PgConn:
    """Connect to ``url`` (durable commits, autocommit: the writer says BEGIN itself) and
    apply pending migrations, each in its own transaction; refuse a newer schema."""
    shown = redact_url(url)
    try:
        raw = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise DatabaseUnusable(
            f"cannot connect to {shown}: {redact_text(str(exc).strip(), url)}"
        ) from None
    raw.adapters.register_dumper(bool, _BoolAsInt)
    raw.adapters.register_loader("numeric", _NumericAsNumber)
    conn = PgConn(raw)
    try:
        conn.execute("SET synchronous_commit = on")
        conn.execute("SET default_transaction_isolation = 'read committed'")
        _migrate(conn, migrations, shown)
    except BaseException:
        raw.close()
        raise
    return conn


def check_pg_database(url: str, known_versions: int) -> None:
    """Refuse a store that cannot be reached or has a schema newer than ``known_versions``
    migrations, changing nothing (the daemon runs it at start-up, before it creates its
    dirs); :class:`DatabaseUnusable` with the URL redacted."""
    shown = redact_url(url)
    try:
        with psycopg.connect(url, autocommit=True) as raw:
            raw.execute("SET default_transaction_read_only = on")
            exists = raw.execute("SELECT to_regclass(%s)", (SCHEMA_TABLE,)).fetchone()
            row = None
            if exists is not None and exists[0] is not None:
                row = raw.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()
    except psycopg.Error as exc:
        raise DatabaseUnusable(
            f"cannot use {shown}: {redact_text(str(exc).strip(), url)}"
        ) from None
    version = 0 if row is None else int(row[0])
    if version > known_versions:
        raise DatabaseUnusable(
            f"{shown} has schema version {version}, newer than this hyperhive knows "
            f"({known_versions}); upgrade hyperhive instead of downgrading"
        )


def _migrate(conn: PgConn, migrations: Sequence[Migration], shown: str) -> None:
    while True:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version BIGINT NOT NULL)")
            row = conn.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()
            if row is None:
                conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (0)")
            version = 0 if row is None else int(row[0])
            if version > len(migrations):
                raise DatabaseUnusable(
                    f"{shown} has schema version {version}, newer than this hyperhive knows "
                    f"({len(migrations)}); upgrade hyperhive instead of downgrading"
                )
            if version < len(migrations):
                migrations[version](cast(Any, _MigrationConn(conn)))
                conn.execute(f"UPDATE {SCHEMA_TABLE} SET version = ?", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if not conn.broken:
                conn.execute("ROLLBACK")
            raise
        if version >= len(migrations) - 1:
            return


def schema_version(conn: PgConn) -> int:
    row = conn.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()
    return 0 if row is None else int(row[0])


class PgDatabase(Database):
    """:class:`Database` on PostgreSQL: the same API and group commit (module docstring)."""

    #: Every statement is a round trip to the server: every batch runs on the writer's thread.
    batches_on_loop = False

    def __init__(self, conn: PgConn, url: str) -> None:
        super().__init__(cast(Any, conn))
        self._pg = conn
        self.url = redact_url(url)
        self._secret_url = url

    @property
    def dialect(self) -> Dialect:
        return "postgresql"

    def _failure_text(self, what: str) -> str:
        # The driver's message may quote the URL: never with its password.
        return redact_text(f"{self.url}{what}", self._secret_url)

    def _run_batch(self, batch: list[_Job[Any]]) -> DatabaseFailed | None:
        try:
            self._attempt_batch(batch)
        except psycopg.Error as exc:
            return self._fail(batch, f" failed: {str(exc).strip()}", exc)
        self._batches += 1
        self._transactions += len(batch)
        return None

    @property
    def shared(self) -> bool:
        return True

    def notify(self, conn: Any, payload: str) -> None:
        if len(payload.encode()) > MAX_NOTIFY_BYTES:
            raise ValueError(f"a notification of {len(payload.encode())} bytes is too long")
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    @asynccontextmanager
    async def listen(
        self, deliver: Callable[[str], None], *, lock: tuple[int, int] | None = None
    ) -> AsyncIterator[None]:
        """Deliver every node's notifications (see :meth:`Database.listen`), from a
        connection of their own, read by a thread of its own. ``lock``: a session advisory
        lock held as long as that connection lives (a node's name: one daemon per node);
        :class:`AlreadyRunning` when another session holds it. The connection failing
        fails the database (:class:`DatabaseFailed`): wake-ups would be lost silently."""
        url = self._secret_url

        def connect() -> psycopg.Connection[Any]:
            try:
                raw = psycopg.connect(url, autocommit=True)
            except psycopg.Error as exc:
                raise DatabaseFailed(self._failure_text(f": cannot listen: {exc}")) from None
            try:
                if lock is not None:
                    held = raw.execute("SELECT pg_try_advisory_lock(%s, %s)", lock).fetchone()
                    if held is None or not held[0]:
                        raise AlreadyRunning(
                            "another daemon is already running as this node on "
                            f"{self.url}; stop it first, or give this one another --node"
                        )
                raw.execute(f"LISTEN {CHANNEL}")
            except BaseException:
                raw.close()
                raise
            return raw

        raw = await trio.to_thread.run_sync(connect)
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def receive() -> None:
            try:
                while not stop.is_set():
                    for note in raw.notifies(timeout=_LISTEN_POLL_SECONDS):
                        token.run_sync_soon(deliver, note.payload)
            except psycopg.Error as exc:
                if not stop.is_set():
                    raise DatabaseFailed(
                        self._failure_text(f": the listening connection failed: {exc}")
                    ) from None

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, receive)
                try:
                    yield
                finally:
                    stop.set()
        finally:
            raw.close()

    @asynccontextmanager
    async def hold_lock(
        self,
        key: int,
        *,
        retry_seconds: float = 2.0,
        check_seconds: float = 2.0,
        waiting: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        """See :meth:`Database.hold_lock`: ``pg_try_advisory_lock(key)`` on a connection of
        its own. The lock lives as long as that session: a daemon killed, or its connection
        cut, releases it on the server, and another daemon's next try takes it."""
        raw = await self._take_lock(key, retry_seconds, waiting)
        lost: str | None = None
        checking = False
        try:
            async with trio.open_nursery() as nursery:
                body = trio.CancelScope()

                async def watch() -> None:
                    nonlocal lost, checking
                    while lost is None:
                        await trio.sleep(check_seconds)
                        checking = True
                        lost = await self._lock_check(raw, key)
                        checking = False
                    body.cancel()

                nursery.start_soon(watch)
                with body:
                    yield
                nursery.cancel_scope.cancel()
        finally:
            if checking:
                # A check was abandoned on it and may still run: never wait for that.
                threading.Thread(target=raw.close, daemon=True).start()
            else:
                raw.close()
        if lost is not None:
            raise LockLost(self._failure_text(f": lock {key:#x} lost: {lost}"))

    async def _take_lock(
        self, key: int, retry_seconds: float, waiting: Callable[[], None] | None
    ) -> psycopg.Connection[Any]:
        """A connection holding ``key``, once a try gets it (one every ``retry_seconds``)."""
        url = self._secret_url
        raw: psycopg.Connection[Any] | None = None

        def attempt() -> bool:
            nonlocal raw
            try:
                if raw is None:
                    idle, interval, count = LOCK_KEEPALIVES
                    raw = psycopg.connect(
                        url,
                        autocommit=True,
                        connect_timeout=10,
                        keepalives=1,
                        keepalives_idle=idle,
                        keepalives_interval=interval,
                        keepalives_count=count,
                        tcp_user_timeout=LOCK_USER_TIMEOUT_MS,
                    )
                    raw.execute(
                        "SELECT set_config('tcp_keepalives_idle', %s, false), "
                        "set_config('tcp_keepalives_interval', %s, false), "
                        "set_config('tcp_keepalives_count', %s, false), "
                        "set_config('tcp_user_timeout', %s, false)",
                        (str(idle), str(interval), str(count), str(LOCK_USER_TIMEOUT_MS)),
                    )
                row = raw.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except psycopg.Error as exc:
                log.warning("%s", self._failure_text(f": trying lock {key:#x}: {exc}"))
                if raw is not None:
                    raw.close()
                raw = None
                return False
            return bool(row and row[0])

        tried = False
        try:
            while not await trio.to_thread.run_sync(attempt):
                if not tried and waiting is not None:
                    waiting()
                tried = True
                await trio.sleep(retry_seconds)
        except BaseException:
            if raw is not None:
                raw.close()
            raise
        assert raw is not None
        return raw

    async def _lock_check(self, raw: psycopg.Connection[Any], key: int) -> str | None:
        """Why the lock ``key`` of ``raw`` is lost (None: still held)."""

        def check() -> str | None:
            try:
                row = raw.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() "
                    "AND locktype = 'advisory' AND granted AND classid = %s::bigint::oid "
                    "AND objid = %s::bigint::oid AND objsubid = 1)",
                    ((key >> 32) & 0xFFFF_FFFF, key & 0xFFFF_FFFF),
                ).fetchone()
            except psycopg.Error as exc:
                return f"its connection failed: {str(exc).strip()}"
            return None if row and row[0] else "no longer held by its session"

        # Bounded by the connection's TCP timeouts (real time; a test's clock may be virtual).
        return await trio.to_thread.run_sync(check, abandon_on_cancel=True)

    def _attempt(self, batch: list[_Job[Any]], *, isolate: bool) -> None:
        conn = self._pg
        conn.execute("BEGIN")
        if not any(job.durable for job in batch):
            conn.execute("SET LOCAL synchronous_commit = off")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
        if not self._run_jobs(conn, batch, isolate=isolate):
            return
        try:
            conn.execute("COMMIT")
        except psycopg.Error:
            if not conn.broken:
                conn.execute("ROLLBACK")
            self._rolled_back()
            raise

    def _changes(self, conn: Any) -> int | None:
        # An SQL error aborted the whole transaction: nothing can go on in it.
        if self._pg.raw.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            return None
        return self._pg.writes

    def _run_job(self, job: _Job[Any]) -> Any:
        return job.fn(cast(Any, self._pg))

    def _job_failed(self, job: _Job[Any], exc: BaseException) -> None:
        if self._pg.broken:
            raise psycopg.OperationalError(f"connection lost: {exc}") from None


@asynccontextmanager
async def open_pg_database(url: str, *, migrations: Sequence[Migration]) -> AsyncIterator[Database]:
    """Connect, migrate and serve a PostgreSQL store for the duration of the ``async with``."""
    conn = await trio.to_thread.run_sync(lambda: connect_pg(url, migrations=migrations))
    db = PgDatabase(conn, url)
    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve)
        try:
            yield db
        finally:
            nursery.cancel_scope.cancel()


__all__ = [
    "PgConn",
    "PgDatabase",
    "PgRow",
    "check_pg_database",
    "connect_pg",
    "open_pg_database",
    "schema_version",
    "translate",
    "translate_ddl",
]
