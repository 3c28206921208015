"""The harness's event log: every event numbered, broadcast to the UI and kept in sqlite.

:meth:`EventLog.publish` never blocks and never fails: the daemon's
:class:`~hyperhive.events.EventHub` gives the event the next ``seq`` (which is also its row
id in ``events(id, ts, kind, payload_json)``) and puts it into a bounded in-memory ring (the
UI's history) and into each SSE subscriber's bounded channel — a subscriber
that falls behind is cut off, not waited for; it reconnects with ``Last-Event-ID`` and
catches up from the ring — to each listener (the :class:`~hyperhive_harness.view.View`
folds events into what the UI shows), and is queued for the writer task. The writer takes
everything queued so far and hands it to the events database, a
:class:`hyperhive.store.Database` (the daemon's group-commit writer) at ``synchronous =
NORMAL``, as one transaction: a burst of thousands of events costs a handful of commits.

If the database cannot be opened (or a write fails later) the log keeps running in no-store
mode: events are still broadcast and kept in the ring, and a ``note`` event says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from hyperhive.errors import DiskFull
from hyperhive.events import Event, EventHub
from hyperhive.store import Database, DatabaseClosed, DatabaseFailed, connect

KINDS: Final = frozenset(
    {
        "turn_start",
        "turn_end",
        "stream",
        "note",
        "status_changed",
        "model_changed",
        "token_usage_changed",
        "turn_state_changed",
        #: The daemon recorded a turn's report in its spend ledger.
        "turn_reported",
    }
)
HISTORY_SIZE: Final = 2000
SUBSCRIBER_QUEUE: Final = 256
#: ``stream`` rows older than this are deleted when the log opens (the bulk of the table).
STREAM_RETENTION_SECONDS: Final = 14 * 24 * 3600
#: The events db is a record for the UI, not a promise: no fsync per commit.
SYNCHRONOUS: Final = "NORMAL"

log = logging.getLogger("hyperhive_harness")
#: Kinds also written to the log (stderr: the container's log), one line each.
_LOGGED: Final = frozenset({"turn_start", "turn_end", "note", "status_changed", "model_changed"})

Listener = Callable[[Event], None]


def event_json(event: Event) -> dict[str, Any]:
    """An event as the UI reads it (history, stream): ``{seq, ts, kind, payload}``."""
    return {"seq": event.seq, "ts": event.ts, "kind": event.kind, "payload": event.data}


def _log_text(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False, default=str)
    return text if len(text) <= 500 else text[:500] + "…"


# ---------------------------------------------------------------- sqlite (sans-IO functions)


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


def _create_events(conn: sqlite3.Connection) -> None:
    # IF NOT EXISTS: databases written before the schema was versioned already have them.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
        "kind TEXT NOT NULL, payload_json TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts)")


MIGRATIONS: Final = (_create_events,)


def sql_prune(conn: sqlite3.Connection, *, now: float) -> None:
    conn.execute(
        "DELETE FROM events WHERE kind = 'stream' AND ts < ?", (now - STREAM_RETENTION_SECONDS,)
    )


def sql_insert(conn: sqlite3.Connection, events: Iterable[Event]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO events (id, ts, kind, payload_json) VALUES (?, ?, ?, ?)",
        [(e.seq, e.ts, e.kind, _dumps(e.data)) for e in events],
    )


def sql_tail(conn: sqlite3.Connection, limit: int) -> tuple[int, list[Event]]:
    """The highest id and the newest ``limit`` events, oldest first."""
    top = conn.execute("SELECT IFNULL(MAX(id), 0) FROM events").fetchone()[0]
    rows = conn.execute(
        "SELECT id, ts, kind, payload_json FROM events ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    events = []
    for seq, ts, kind, payload_json in reversed(rows):
        try:
            payload = json.loads(payload_json)
        except ValueError:
            payload = {"unreadable": payload_json}
        events.append(Event(seq, ts, kind, payload if isinstance(payload, dict) else {}))
    return int(top), events


def _connect(path: Path) -> sqlite3.Connection:
    """Open (create) the events db at ``synchronous = NORMAL``; raises on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return connect(path, synchronous=SYNCHRONOUS, migrations=MIGRATIONS)


#: What a failed events write looks like (the writer goes on in no-store mode).
_STORE_ERRORS: Final = (sqlite3.Error, OSError, DiskFull, DatabaseFailed, DatabaseClosed)


# ---------------------------------------------------------------- the log


class EventLog:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        history_size: int = HISTORY_SIZE,
        queue_size: int = SUBSCRIBER_QUEUE,
    ) -> None:
        self._hub = EventHub(ring_size=history_size, queue_size=queue_size, clock=clock)
        self._db: Database | None = None
        self._pending: list[Event] = []
        self._dirty = trio.Event()
        self._persisted = 0
        self._flushed = trio.Event()
        #: Why events are not stored (None while they are).
        self.store_error: str | None = "not opened"

    @property
    def clock(self) -> Callable[[], float]:
        return self._hub.clock

    @property
    def seq(self) -> int:
        return self._hub.seq

    @property
    def stored(self) -> bool:
        return self._db is not None

    def publish(self, kind: str, **payload: Any) -> Event:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = self._hub.publish(kind, **payload)
        self._pending.append(event)
        self._dirty.set()
        if kind in _LOGGED:
            log.info("%s %s", kind, _log_text(payload))
        return event

    def note(self, text: str, **extra: Any) -> Event:
        return self.publish("note", text=text, **extra)

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` synchronously with every event published from now on."""
        self._hub.listen(listener)

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        """Every event published from now on; closed when the subscriber falls behind."""
        return self._hub.subscribe()

    @property
    def subscribers(self) -> int:
        return self._hub.statistics().subscribers

    @property
    def dropped_subscribers(self) -> int:
        return self._hub.statistics().dropped_subscribers

    def history(self, limit: int = HISTORY_SIZE) -> list[Event]:
        return self._hub.history(limit)

    def since(self, seq: int) -> list[Event] | None:
        """Events after ``seq`` from the ring; None when some already left it."""
        return self._hub.since(seq)

    def status(self) -> dict[str, Any]:
        """What the UI's state shows about the log."""
        return {"events_stored": self.stored, "events_store_error": self.store_error}

    # ------------------------------------------------------------ persistence

    async def run(
        self, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the events db (no-store mode on failure) and write queued events until
        cancelled; the last batch is written shielded."""
        try:
            conn = await trio.to_thread.run_sync(_connect, path)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            self._open_failed(path, exc)
            task_status.started()
            await self._drain_forever()
            return
        db = Database(conn, SYNCHRONOUS, path=path)
        async with trio.open_nursery() as nursery:
            # The db's writer is shielded from the cancel that ends the log, and stopped
            # only after the log's last batch went through it.
            db_scope: trio.CancelScope = await nursery.start(self._serve_db, db)
            try:
                try:
                    now = self.clock()
                    await db.transaction(lambda c: sql_prune(c, now=now), durable=False)
                    top, tail = await db.transaction(lambda c: sql_tail(c, HISTORY_SIZE))
                except _STORE_ERRORS as exc:
                    self._open_failed(path, exc)
                    task_status.started()
                    await self._drain_forever()
                    return
                self._adopt(db, top, tail)
                task_status.started()
                await self._drain_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._write_batch()
                db_scope.cancel()

    async def _serve_db(
        self, db: Database, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope(shield=True) as scope:
            task_status.started(scope)
            # A failed job reports it to the writer, which goes on without a store.
            with contextlib.suppress(DatabaseFailed):
                await db.serve()

    def _open_failed(self, path: Path, exc: BaseException) -> None:
        self.store_error = f"{type(exc).__name__}: {exc}"
        self.note(
            f"events db {path} cannot be opened ({self.store_error}); running in no-store "
            "mode: events are broadcast to the UI but not kept across restarts"
        )

    async def _drain_forever(self) -> None:
        while True:
            await self._dirty.wait()
            await self._write_batch()

    def _adopt(self, db: Database, top: int, tail: list[Event]) -> None:
        self._db = db
        self.store_error = None
        # Events published before the store opened get ids after the stored ones.
        self._hub.continue_after(top, tail)
        self._pending = [attrs.evolve(e, seq=e.seq + top) for e in self._pending]
        self._persisted += top

    async def _write_batch(self) -> None:
        self._dirty = trio.Event()
        batch, self._pending = self._pending, []
        if not batch:
            return
        db = self._db
        if db is not None:
            # Shielded: once taken off the queue, a batch is written even while we are being
            # cancelled (it takes milliseconds), or it would be lost.
            with trio.CancelScope(shield=True):
                try:
                    await db.transaction(lambda c: sql_insert(c, batch), durable=False)
                except _STORE_ERRORS as exc:
                    self.store_error = f"{type(exc).__name__}: {exc}"
                    self._db = None
                    self.note(
                        f"writing the events db failed ({self.store_error}); continuing in "
                        f"no-store mode ({len(batch)} events were not stored)"
                    )
        self._persisted = max(self._persisted, batch[-1].seq)
        self._flushed.set()
        self._flushed = trio.Event()

    async def flush(self) -> None:
        """Wait until everything published so far went through the writer."""
        target = self.seq
        while self._persisted < target:
            await self._flushed.wait()


@asynccontextmanager
async def open_event_log(
    events_db: Path, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[EventLog]:
    """An event log with its store opened (or in no-store mode) and its writer running."""
    events = EventLog(clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run, events_db)
        try:
            yield events
        finally:
            nursery.cancel_scope.cancel()
