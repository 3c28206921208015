"""The events of every node on every node's dashboard: the ``hive_events`` table.

Each node publishes its own events on its :class:`~hyperhive.events.EventHub` (a send it
committed, an agent of its own connecting, a question answered on its dashboard). When
other nodes share the store, those of the kinds in :data:`SHARED_KINDS` are also written to
``hive_events`` (node, time, kind and fields), and each other node publishes them on its own
hub: its dashboard's ``/api/stream`` and the ``watch`` feed show the whole swarm, and each
node's ``seq`` (the SSE ids, ``Last-Event-ID`` replay) stays its own.

- Writing never slows an emitter: the hub's listener puts the event in a bounded memory
  channel; one task drains it into one transaction per batch, which notifies the other
  nodes (``event``, the newest id: ids, never bodies). A full channel drops the event with
  a counted warning.
- Reading: on an ``event`` notification from another node, one task reads the rows after
  the last it saw (from the newest at its start), other nodes' only, and publishes them
  decoded through their typed payloads (:mod:`hyperhive.protocol.event_payloads`); a row it
  cannot decode (a newer node's kind) is skipped with a warning. An event that came from
  another node is never written again.
- ``agent_changed`` and ``agent_purged`` of other nodes are not published: each node's
  ``Registry.follow`` reads a row another node changed again and publishes those two
  itself, from the row (so its copy of the row is up to date when the dashboard hears of
  it). Published here too, the dashboard would see each such change twice.
- Nothing is written while no other node is up (a lone node on PostgreSQL costs what it
  did): a node says so when it starts (``events_reader``), and each node's node watch
  (``node_changed``, :mod:`hyperhive.node_watch`) says which others are up; its own
  ``node_changed`` is not shared (each node watches the others itself).
- Retention: rows older than :data:`~hyperhive.config.HIVE_EVENTS_KEEP_SECONDS` are
  deleted by each writer, by id (it notes the newest id once a minute and, an hour later,
  deletes every row up to it). They are for the nodes that are up now; a node starting
  late begins after the newest row.

On sqlite (one node) none of this runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import attrs
import cattrs
import trio

from hyperhive.config import (
    HIVE_EVENTS_BATCH,
    HIVE_EVENTS_KEEP_SECONDS,
    HIVE_EVENTS_QUEUE,
)
from hyperhive.events import Event, EventHub
from hyperhive.kinds import EventKind, NodeStatus
from hyperhive.nodes import Nodes
from hyperhive.protocol import CONVERTER
from hyperhive.protocol.event_payloads import EVENT_PAYLOADS, EventPayload
from hyperhive.store import Conn, Database

log = logging.getLogger(__name__)

#: The kinds other nodes show: what happens to agents, messages, questions, approvals,
#: reminders, schedules and spend. Not: a node's own problems, free space and disk usage
#: (its dashboard's header), its retention, the stream's own ``resync``.
SHARED_KINDS: Final = frozenset(EventKind) - {
    EventKind.RESYNC,
    EventKind.VACUUMED,
    EventKind.PROBLEMS_CHANGED,
    EventKind.SPACE_CHANGED,
    EventKind.DISK_USAGE_CHANGED,
    # Each node's own watch says how it sees the others.
    EventKind.NODE_CHANGED,
}
#: Kinds of other nodes not published: ``Registry.follow`` publishes them (module docstring).
FOLLOWED_KINDS: Final = frozenset({EventKind.AGENT_CHANGED, EventKind.AGENT_PURGED})
#: How often old rows are deleted (by the writer, with a batch).
_SWEEP_SECONDS: Final = 60.0


@attrs.frozen
class StoredEvent:
    """One row of ``hive_events``."""

    id: int
    node: str
    at: float
    kind: str
    data: dict[str, Any]


def encode_event(event: Event) -> str:
    return json.dumps({"kind": event.kind, "data": event.data}, separators=(",", ":"))


def decode_payload(kind: str, data: Any) -> EventPayload | None:
    """A stored event as its typed payload; None for a kind this node does not know, a
    kind it does not show, or fields that do not fit."""
    try:
        event_kind = EventKind(kind)
    except ValueError:
        return None
    if event_kind not in SHARED_KINDS:
        return None
    try:
        payload: EventPayload = CONVERTER.structure(data, EVENT_PAYLOADS[event_kind])
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError):
        return None
    return payload


# ---------------------------------------------------------------- SQL


def sql_write(conn: Conn, node: str, events: list[Event]) -> int:
    """Insert the events (one statement for all); the newest id, theirs (the nodes'
    transactions take turns: no other insert runs meanwhile)."""
    conn.executemany(
        "INSERT INTO hive_events (node, at, event_json) VALUES (?, ?, ?)",
        [(node, event.ts, encode_event(event)) for event in events],
    )
    return sql_newest(conn)


def sql_newest(conn: Conn) -> int:
    row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM hive_events").fetchone()
    return int(row[0])


def sql_after(conn: Conn, after: int, node: str, limit: int) -> tuple[list[StoredEvent], int, int]:
    """Other nodes' events among the ``limit`` rows after id ``after``, the last id read and
    how many rows were read."""
    rows = conn.execute(
        "SELECT id, node, at, event_json FROM hive_events WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    found = []
    for row in rows:
        if row["node"] == node:
            continue
        try:
            value = json.loads(row["event_json"])
            kind, data = value["kind"], value["data"]
        except (ValueError, TypeError, KeyError):
            kind, data = "", None
        found.append(StoredEvent(row["id"], row["node"], row["at"], str(kind), data))
    return found, rows[-1]["id"] if rows else after, len(rows)


def sql_sweep(conn: Conn, through: int) -> int:
    """Delete the rows up to id ``through`` (a range of the primary key: no scan)."""
    cur = conn.execute("DELETE FROM hive_events WHERE id <= ?", (through,))
    return cur.rowcount


# ---------------------------------------------------------------- the shell


class SharedEvents:
    """This node's events to the others, theirs to this node's hub (module docstring)."""

    def __init__(
        self,
        db: Database,
        events: EventHub,
        nodes: Nodes,
        *,
        clock: Callable[[], float] = time.time,
        queue_size: int = HIVE_EVENTS_QUEUE,
        keep_seconds: float = HIVE_EVENTS_KEEP_SECONDS,
    ) -> None:
        self._db = db
        self._events = events
        self._nodes = nodes
        self._clock = clock
        self._keep_seconds = keep_seconds
        self._send, self._receive = trio.open_memory_channel[Event](queue_size)
        #: Whether another node is up (then this one writes its events): as the node watch
        #: last said (``node_changed``), or a node announced it started reading.
        self._others = False
        self._up: set[str] = set()
        #: Set while an event of another node is published here: never written again.
        self._replaying = False
        self._newest_seen = 0
        self._notified = trio.Event()
        self._swept_at = -math.inf
        #: ``(when, newest id then)`` once a minute: the rows up to an id noted longer than
        #: ``keep_seconds`` ago are deleted (ids grow in commit order, as the nodes'
        #: transactions take turns).
        self._marks: deque[tuple[float, int]] = deque()
        #: Events not written because the channel was full.
        self.dropped = 0
        #: Events of other nodes published here.
        self.received = 0
        if db.shared:
            nodes.on("event", self._on_event_note)
            nodes.on("events_reader", self._on_reader)
            events.listen(self._on_local)

    # ------------------------------------------------------------ hooks (trio thread)

    def _on_local(self, event: Event) -> None:
        if event.kind == EventKind.NODE_CHANGED:
            node = event.data.get("node")
            if isinstance(node, str) and node != self._nodes.name:
                if event.data.get("status") == NodeStatus.UP:
                    self._up.add(node)
                else:
                    self._up.discard(node)
                self._others = bool(self._up)
            return
        if self._replaying or not self._others or event.kind not in SHARED_KINDS:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "the other nodes miss %d events of this one: their writer fell behind",
                    self.dropped,
                )

    def _on_event_note(self, data: dict[str, Any]) -> None:
        if data.get("from") == self._nodes.name:
            return
        newest = data.get("id")
        if isinstance(newest, int) and newest > self._newest_seen:
            self._notified.set()

    def _on_reader(self, data: dict[str, Any]) -> None:
        if data.get("from") != self._nodes.name:
            self._others = True  # a node started: it reads from now on

    # ------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write this node's events and publish the others' until cancelled; on a store no
        other node shares, nothing."""
        if not self._db.shared:
            task_status.started()
            await trio.sleep_forever()
        nodes = self._nodes

        def start(conn: Conn) -> int:
            nodes.notify(conn, "events_reader")
            return sql_newest(conn)

        self._newest_seen = await self._db.transaction(start)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            nursery.start_soon(self._read)
            task_status.started()

    async def _write(self) -> None:
        node = self._nodes.name
        async for first in self._receive:
            batch = [first]
            while len(batch) < HIVE_EVENTS_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            now = self._clock()
            # At most once a minute: note the newest id, delete up to one noted long ago.
            mark = now - self._swept_at >= _SWEEP_SECONDS
            through = None
            if mark:
                self._swept_at = now
                while self._marks and self._marks[0][0] <= now - self._keep_seconds:
                    through = self._marks.popleft()[1]

            def tx(conn: Conn, batch: list[Event] = batch, through: int | None = through) -> int:
                newest = sql_write(conn, node, batch)
                self._nodes.notify(conn, "event", id=newest)
                if through is not None:
                    sql_sweep(conn, through)
                return newest

            newest = await self._db.transaction(tx, durable=False)
            if mark:
                self._marks.append((now, newest))

    async def _read(self) -> None:
        node = self._nodes.name
        while True:
            await self._notified.wait()
            self._notified = trio.Event()
            read = HIVE_EVENTS_BATCH
            while read == HIVE_EVENTS_BATCH:
                found, self._newest_seen, read = await self._db.transaction(
                    lambda conn: sql_after(conn, self._newest_seen, node, HIVE_EVENTS_BATCH)
                )
                self._publish(found)

    def _publish(self, found: list[StoredEvent]) -> None:
        for stored in found:
            if stored.kind in FOLLOWED_KINDS:
                continue
            payload = decode_payload(stored.kind, stored.data)
            if payload is None:
                log.warning(
                    "skipped event %d of node %s: a %r this node does not show",
                    stored.id,
                    stored.node,
                    stored.kind[:40],
                )
                continue
            self._replaying = True
            try:
                self._events.emit(payload)
            finally:
                self._replaying = False
            self.received += 1


__all__ = ["SHARED_KINDS", "SharedEvents", "StoredEvent", "decode_payload", "encode_event"]
