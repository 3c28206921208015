"""Nodes: the daemons that share one store, each serving the agents placed on it.

A daemon is a node (``--node NAME``, default the host name). On sqlite there is only ever
one: the file is one daemon's (its flock says so), and every agent is placed on it. On
PostgreSQL several daemons, on several hosts, run the same transactions on one database
(a hive-wide advisory lock makes their batches take turns, as behind sqlite's one writer);
the row of each node in ``nodes`` says where it runs and when it was last alive, and each
agent's ``agents.node`` says which node serves it (its socket, container, state dir, UI).

The sans-IO part: a node's status from its heartbeat (:func:`node_status`), where a new
agent goes (:func:`place`), the notifications' format (:func:`encode_note`,
:func:`decode_note`). :class:`Nodes` is the thin shell: it registers this node, writes its
heartbeat every ``NODE_HEARTBEAT_SECONDS``, holds the node's advisory lock (one daemon per
node name) and hands every node's notifications (PostgreSQL ``NOTIFY``, carrying ids,
never bodies) to the handlers registered for their topic.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final

import attrs
import trio

from hyperhive.config import NODE_DOWN_SECONDS, NODE_HEARTBEAT_SECONDS
from hyperhive.errors import RequestRefused
from hyperhive.kinds import NodeStatus
from hyperhive.store import Conn, Database, Row

log = logging.getLogger(__name__)

#: First half of a node's advisory lock key (``pg_try_advisory_lock(int, int)``).
NODE_LOCK_SPACE: Final = 0x6868  # "hh"

Handler = Callable[[dict[str, Any]], None]


@attrs.frozen
class NodeInfo:
    name: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    dashboard_url: str | None

    @classmethod
    def from_row(cls, row: Row) -> NodeInfo:
        return cls(
            name=row["name"],
            host=row["host"],
            pid=row["pid"],
            started_at=row["started_at"],
            heartbeat_at=row["heartbeat_at"],
            stopped_at=row["stopped_at"],
            dashboard_url=row["dashboard_url"],
        )

    def status(self, now: float, down_after: float = NODE_DOWN_SECONDS) -> NodeStatus:
        return node_status(self.heartbeat_at, self.stopped_at, now, down_after)


def node_status(
    heartbeat_at: float, stopped_at: float | None, now: float, down_after: float
) -> NodeStatus:
    """``stopped`` after a clean stop; ``down`` once silent for ``down_after`` seconds (a
    crash, a lost host, a cut network); ``up`` otherwise."""
    if stopped_at is not None and stopped_at >= heartbeat_at:
        return NodeStatus.STOPPED
    if now - heartbeat_at > down_after:
        return NodeStatus.DOWN
    return NodeStatus.UP


def place(agents_per_node: Mapping[str, int], up: Collection[str]) -> str | None:
    """Where a new agent goes when nobody said: the node that is up with the fewest live
    agents, the first by name among equals; None when no node is up."""
    candidates = sorted(up)
    if not candidates:
        return None
    return min(candidates, key=lambda name: (agents_per_node.get(name, 0), name))


def lock_key(name: str) -> tuple[int, int]:
    """The advisory lock a node holds while it runs (two int4 halves)."""
    value = zlib.crc32(name.encode())
    return NODE_LOCK_SPACE, value - 2**32 if value >= 2**31 else value


def encode_note(topic: str, origin: str, data: Mapping[str, Any]) -> str:
    """A notification's payload: its topic, the node it comes from, ids (never bodies)."""
    return json.dumps({"t": topic, "from": origin, **data}, separators=(",", ":"))


def decode_note(payload: str) -> tuple[str, str, dict[str, Any]] | None:
    """``(topic, origin, data)``, or None for a payload that is not one of ours."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    topic, origin = value.pop("t", None), value.pop("from", None)
    if not isinstance(topic, str) or not isinstance(origin, str):
        return None
    return topic, origin, value


# ---------------------------------------------------------------- SQL


def sql_register(conn: Conn, info: NodeInfo) -> None:
    conn.execute(
        "INSERT INTO nodes (name, host, pid, started_at, heartbeat_at, stopped_at, "
        "dashboard_url) VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (name) DO UPDATE SET "
        "host = excluded.host, pid = excluded.pid, started_at = excluded.started_at, "
        "heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, "
        "dashboard_url = excluded.dashboard_url",
        (info.name, info.host, info.pid, info.started_at, info.heartbeat_at, info.dashboard_url),
    )


def sql_heartbeat(conn: Conn, name: str, at: float) -> None:
    conn.execute("UPDATE nodes SET heartbeat_at = ? WHERE name = ?", (at, name))


def sql_stopped(conn: Conn, name: str, at: float) -> None:
    conn.execute("UPDATE nodes SET stopped_at = ? WHERE name = ?", (at, name))


def sql_set_dashboard(conn: Conn, name: str, url: str | None) -> None:
    conn.execute("UPDATE nodes SET dashboard_url = ? WHERE name = ?", (url, name))


def sql_nodes(conn: Conn) -> list[NodeInfo]:
    return [NodeInfo.from_row(r) for r in conn.execute("SELECT * FROM nodes ORDER BY name")]


def sql_agents_per_node(conn: Conn) -> dict[str, int]:
    """Live agents on each node."""
    rows = conn.execute(
        "SELECT node, COUNT(*) AS n FROM agents WHERE state != 'destroyed' GROUP BY node"
    )
    return {row["node"]: int(row["n"]) for row in rows}


# ---------------------------------------------------------------- the shell


class Nodes:
    """This daemon as a node of the hive (module docstring)."""

    def __init__(
        self,
        db: Database,
        name: str,
        *,
        clock: Callable[[], float] = time.time,
        heartbeat_seconds: float = NODE_HEARTBEAT_SECONDS,
        down_after: float = NODE_DOWN_SECONDS,
    ) -> None:
        self._db = db
        self.name = name
        self._clock = clock
        self.heartbeat_seconds = heartbeat_seconds
        self.down_after = down_after
        self._handlers: dict[str, list[Handler]] = {}
        self._dashboard_url: str | None = None

    @property
    def shared(self) -> bool:
        """Whether other nodes may share the store (PostgreSQL)."""
        return self._db.shared

    # ------------------------------------------------------------ notifications

    def on(self, topic: str, handler: Handler) -> None:
        """Call ``handler(data)`` (on the trio thread, synchronously: keep it short) for each
        notification of ``topic`` from any node, this one included (``data["from"]`` is not
        given: compare :meth:`origin`)."""
        self._handlers.setdefault(topic, []).append(handler)

    def notify(self, conn: Conn, topic: str, **data: Any) -> None:
        """(In a transaction) tell every node, if and once it commits."""
        self._db.notify(conn, encode_note(topic, self.name, data))

    def _deliver(self, payload: str) -> None:
        # Called by trio's run_sync_soon: an exception here would end the run itself.
        try:
            self._dispatch(payload)
        except Exception:
            log.exception("a notification could not be handled: %.200r", payload)

    def _dispatch(self, payload: str) -> None:
        note = decode_note(payload)
        if note is None:
            log.warning("ignored a notification that is not one of ours: %.200r", payload)
            return
        topic, origin, data = note
        data["from"] = origin
        for handler in self._handlers.get(topic, ()):
            try:
                handler(dict(data))
            except Exception:
                log.exception("the handler of a %r notification failed", topic)

    # ------------------------------------------------------------ liveness

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the node's lock, listen, register the node; then beat until cancelled, and
        say so in the table when stopped cleanly."""
        async with self._db.listen(self._deliver, lock=lock_key(self.name)):
            now = self._clock()
            info = NodeInfo(
                name=self.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
                stopped_at=None,
                dashboard_url=self._dashboard_url,
            )
            await self._db.transaction(lambda conn: sql_register(conn, info))
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.heartbeat_seconds)
                    beat = functools.partial(sql_heartbeat, name=self.name, at=self._clock())
                    await self._db.transaction(beat, durable=False)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    at = self._clock()
                    await self._db.transaction(lambda conn: sql_stopped(conn, self.name, at))

    async def set_dashboard_url(self, url: str | None) -> None:
        """Where this node's dashboard can be reached (its agents' UIs are there)."""
        self._dashboard_url = url
        await self._db.transaction(lambda conn: sql_set_dashboard(conn, self.name, url))

    async def all(self) -> list[NodeInfo]:
        return await self._db.transaction(sql_nodes)

    async def up(self) -> list[str]:
        now = self._clock()
        return [
            info.name
            for info in await self.all()
            if info.status(now, self.down_after) == NodeStatus.UP
        ]

    async def status_of(self, names: Iterable[str]) -> dict[str, NodeStatus]:
        now = self._clock()
        wanted = set(names)
        return {
            info.name: info.status(now, self.down_after)
            for info in await self.all()
            if info.name in wanted
        }

    async def place(self, requested: str | None) -> str:
        """The node a new agent goes to: ``requested`` (a known node), this node on a store
        no other node shares, else the one up with the fewest agents (:func:`place`)."""
        if requested is not None:
            if requested == self.name:
                return requested
            known = {info.name for info in await self.all()}
            if requested not in known:
                raise RequestRefused(
                    f"no node named {requested!r}; known: {', '.join(sorted(known)) or 'none'}"
                )
            return requested
        if not self.shared:
            return self.name

        def counts(conn: Conn) -> tuple[dict[str, int], list[NodeInfo]]:
            return sql_agents_per_node(conn), sql_nodes(conn)

        per_node, infos = await self._db.transaction(counts)
        now = self._clock()
        up = [i.name for i in infos if i.status(now, self.down_after) == NodeStatus.UP]
        return place(per_node, up) or self.name


__all__ = [
    "NodeInfo",
    "Nodes",
    "decode_note",
    "encode_note",
    "lock_key",
    "node_status",
    "place",
]
