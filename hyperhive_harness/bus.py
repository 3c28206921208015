"""The harness's event bus: every ``LiveEvent`` broadcast to the UI and kept in sqlite.

``Bus.publish`` never blocks and never fails: the event gets the next ``seq`` (which is also
its row id in ``events(id, ts, kind, payload_json)``), goes into a bounded in-memory ring
(the UI's history) and into each SSE subscriber's bounded channel — a subscriber that falls
behind is cut off, not waited for; it reconnects with ``Last-Event-ID`` and catches up from
the ring — and is queued for the writer task. The writer takes everything queued so far and
inserts it in one transaction on one worker-thread hop (one ``CapacityLimiter(1)``), so a
burst of thousands of events costs a handful of commits.

If the database cannot be opened (or a write fails later) the bus keeps running in no-store
mode: events are still broadcast and kept in the ring, and a ``note`` event says so.

The bus also holds what the UI shows: status, turn state (+ since), model (the model file,
read afresh on every call), token badges, last turn duration.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from hyperhive.events import FanOut, events_since
from hyperhive_harness.config import DEFAULT_MODEL
from hyperhive_harness.turns import Status, TurnState

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
    }
)
HISTORY_SIZE: Final = 2000
SUBSCRIBER_QUEUE: Final = 256
#: ``stream`` rows older than this are deleted when the bus opens (the bulk of the table).
STREAM_RETENTION_SECONDS: Final = 14 * 24 * 3600
MAX_MODEL_CHARS: Final = 100


log = logging.getLogger("hyperhive_harness")
#: Kinds also written to the log (stderr: the container's log), one line each.
_LOGGED: Final = frozenset({"turn_start", "turn_end", "note", "status_changed", "model_changed"})


def _log_text(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False, default=str)
    return text if len(text) <= 500 else text[:500] + "…"


class InvalidModel(ValueError):
    pass


def check_model(raw: str) -> str:
    """A model name: one word of printable characters, at most 100 (an alias or a full id)."""
    model = raw.strip()
    if not model or len(model) > MAX_MODEL_CHARS:
        raise InvalidModel(f"model must be 1 to {MAX_MODEL_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in model):
        raise InvalidModel("model must be one word without spaces or control characters")
    return model


@attrs.frozen
class LiveEvent:
    seq: int
    ts: float
    kind: str
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "payload": self.payload}


# ---------------------------------------------------------------- sqlite (sync, one thread hop)


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


def sql_open(path: Path, *, now: float) -> sqlite3.Connection:
    """Open (create) the events db and prove it is writable; raises on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
            "kind TEXT NOT NULL, payload_json TEXT NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts)")
        conn.execute(
            "DELETE FROM events WHERE kind = 'stream' AND ts < ?",
            (now - STREAM_RETENTION_SECONDS,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def sql_insert(conn: sqlite3.Connection, events: Iterable[LiveEvent]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR REPLACE INTO events (id, ts, kind, payload_json) VALUES (?, ?, ?, ?)",
            [(e.seq, e.ts, e.kind, _dumps(e.payload)) for e in events],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def sql_tail(conn: sqlite3.Connection, limit: int) -> tuple[int, list[LiveEvent]]:
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
        events.append(LiveEvent(seq, ts, kind, payload if isinstance(payload, dict) else {}))
    return int(top), events


# ---------------------------------------------------------------- the bus


class Bus:
    def __init__(
        self,
        *,
        model_file: Path,
        clock: Callable[[], float] = time.time,
        history_size: int = HISTORY_SIZE,
        queue_size: int = SUBSCRIBER_QUEUE,
    ) -> None:
        self.model_file = model_file
        self._clock = clock
        self._seq = 0
        self._ring: deque[LiveEvent] = deque(maxlen=history_size)
        self._fanout: FanOut[LiveEvent] = FanOut(queue_size)
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._pending: list[LiveEvent] = []
        self._dirty = trio.Event()
        self._persisted = 0
        self._flushed = trio.Event()
        #: Why events are not stored (None while they are).
        self.store_error: str | None = "not opened"
        # What the UI shows.
        self.label = ""
        self.role = ""
        self.status = Status.STARTING
        self.turn_state = TurnState.IDLE
        self.turn_state_since = self._clock()
        self.ctx: int | None = None
        self.cost: int | None = None
        self.cost_usd: float | None = None
        self.last_turn_seconds: float | None = None
        self.current_turn: dict[str, Any] | None = None
        self._skip_continue = False
        self._last_model: str | None = None

    # ------------------------------------------------------------ events

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def stored(self) -> bool:
        return self._conn is not None

    def publish(self, kind: str, **payload: Any) -> LiveEvent:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        self._seq += 1
        event = LiveEvent(self._seq, self._clock(), kind, payload)
        self._ring.append(event)
        self._fanout.deliver(event)
        self._pending.append(event)
        self._dirty.set()
        if kind in _LOGGED:
            log.info("%s %s", kind, _log_text(payload))
        return event

    def note(self, text: str, **extra: Any) -> LiveEvent:
        return self.publish("note", text=text, **extra)

    def subscribe(self) -> trio.MemoryReceiveChannel[LiveEvent]:
        """Every event published from now on; closed when the subscriber falls behind."""
        return self._fanout.subscribe()

    @property
    def subscribers(self) -> int:
        return len(self._fanout)

    @property
    def dropped_subscribers(self) -> int:
        return self._fanout.dropped

    def history(self, limit: int = HISTORY_SIZE) -> list[LiveEvent]:
        if limit <= 0:
            return []
        return list(self._ring)[-limit:]

    def since(self, seq: int) -> list[LiveEvent] | None:
        """Events after ``seq`` from the ring; None when some already left it."""
        return events_since(self._ring, self._seq, seq)

    # ------------------------------------------------------------ persistence

    async def open_store(self, path: Path) -> None:
        """Open the events db, load the newest events into the ring; no-store on failure."""
        try:
            conn = await trio.to_thread.run_sync(
                lambda: sql_open(path, now=self._clock()), limiter=self._limiter
            )
            top, tail = await trio.to_thread.run_sync(sql_tail, conn, HISTORY_SIZE)
        except (sqlite3.Error, OSError) as exc:
            self.store_error = f"{type(exc).__name__}: {exc}"
            self.note(
                f"events db {path} cannot be opened ({self.store_error}); running in no-store "
                "mode: events are broadcast to the UI but not kept across restarts"
            )
            return
        self._conn = conn
        self.store_error = None
        # Events published before the store opened get ids after the stored ones.
        early = list(self._ring)
        self._ring.clear()
        self._ring.extend(tail)
        offset = top
        renumbered = [attrs.evolve(e, seq=e.seq + offset) for e in early]
        self._ring.extend(renumbered)
        self._pending = [attrs.evolve(e, seq=e.seq + offset) for e in self._pending]
        self._seq += offset
        self._persisted += offset

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Insert queued events in batches until cancelled; the last batch is written shielded."""
        task_status.started()
        try:
            while True:
                await self._dirty.wait()
                await self._write_batch()
        finally:
            with trio.CancelScope(shield=True):
                await self._write_batch()
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def _write_batch(self) -> None:
        self._dirty = trio.Event()
        batch, self._pending = self._pending, []
        if not batch:
            return
        conn = self._conn
        if conn is not None:
            # Shielded: once taken off the queue, a batch is written even while we are being
            # cancelled (it takes milliseconds), or it would be lost.
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(sql_insert, conn, batch, limiter=self._limiter)
                except sqlite3.Error as exc:
                    self.store_error = f"{type(exc).__name__}: {exc}"
                    self._conn = None
                    await trio.to_thread.run_sync(conn.close, limiter=self._limiter)
                    self.note(
                        f"writing the events db failed ({self.store_error}); continuing in "
                        f"no-store mode ({len(batch)} events were not stored)"
                    )
        self._persisted = max(self._persisted, batch[-1].seq)
        self._flushed.set()
        self._flushed = trio.Event()

    async def flush(self) -> None:
        """Wait until everything published so far went through the writer."""
        target = self._seq
        while self._persisted < target:
            await self._flushed.wait()

    # ------------------------------------------------------------ state the UI shows

    def set_identity(self, label: str, role: str) -> None:
        self.label, self.role = label, role

    def set_status(self, status: Status) -> None:
        if status is self.status:
            return
        self.status = status
        self.publish("status_changed", status=status.value)

    def set_turn_state(self, state: TurnState) -> None:
        if state is self.turn_state:
            return
        self.turn_state = state
        self.turn_state_since = self._clock()
        self.publish("turn_state_changed", state=state.value, since=self.turn_state_since)

    def set_token_usage(
        self, ctx: int | None, cost: int | None, cost_usd: float | None = None
    ) -> None:
        self.ctx = ctx if ctx is not None else self.ctx
        self.cost = cost if cost is not None else self.cost
        self.cost_usd = cost_usd if cost_usd is not None else self.cost_usd
        self.publish("token_usage_changed", ctx=self.ctx, cost=self.cost, cost_usd=self.cost_usd)

    def model(self) -> str:
        """The model of the next turn: the model file, read afresh (``haiku`` when absent)."""
        try:
            text = self.model_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        try:
            model = check_model(text) if text else DEFAULT_MODEL
        except InvalidModel:
            model = DEFAULT_MODEL
        if self._last_model is not None and model != self._last_model:
            # Changed behind our back (``hyperhive set-model`` writes the same file).
            self.publish("model_changed", model=model)
        self._last_model = model
        return model

    def set_model(self, raw: str) -> str:
        """Write the model file (atomically) and announce it; applies from the next turn."""
        model = check_model(raw)
        self.model_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.model_file.with_name(f".{self.model_file.name}.{os.getpid()}.tmp")
        tmp.write_text(model + "\n", encoding="utf-8")
        tmp.replace(self.model_file)
        self._last_model = model
        self.publish("model_changed", model=model)
        return model

    def request_new_session(self) -> None:
        """The next turn runs without ``--continue`` (once)."""
        self._skip_continue = True

    @property
    def new_session_requested(self) -> bool:
        return self._skip_continue

    def take_skip_continue(self) -> bool:
        skip, self._skip_continue = self._skip_continue, False
        return skip

    def snapshot(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "role": self.role,
            "status": self.status.value,
            "turn_state": self.turn_state.value,
            "turn_state_since": self.turn_state_since,
            "model": self._last_model or self.model(),
            "ctx": self.ctx,
            "cost": self.cost,
            "cost_usd": self.cost_usd,
            "last_turn_seconds": self.last_turn_seconds,
            "current_turn": self.current_turn,
            "new_session_pending": self._skip_continue,
            "events_stored": self.stored,
            "events_store_error": self.store_error,
            "seq": self._seq,
        }


@asynccontextmanager
async def open_bus(
    events_db: Path, model_file: Path, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[Bus]:
    """A bus with its store opened (or in no-store mode) and its writer running."""
    bus = Bus(model_file=model_file, clock=clock)
    await bus.open_store(events_db)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.writer)
        try:
            yield bus
        finally:
            nursery.cancel_scope.cancel()
