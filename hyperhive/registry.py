"""The agent registry: who exists, in which state, and the socket that is each agent.

Registering an agent creates its state directories and binds its socket
(``<run>/agents/<name>/mcp.sock``, the manager's at ``<run>/manager/mcp.sock``); registering
twice is harmless. Destroying keeps the state directories (a tombstone) and removes the
socket. The table ``agents`` is the source of truth; this class keeps a copy in memory so
that hot paths (recipient checks on every send) never wait on the database.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
)
from pathlib import Path
from typing import Any, Final, TypeVar, overload

import attrs
import trio

from hyperhive.agent_config import InvalidAgentConfig, load_agent_config
from hyperhive.agent_files import file_key, read_small_file, replace_file
from hyperhive.config import DEFAULT_MODEL, SOCKET_CLOSE_SECONDS, Paths
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.journal import OperationKind, crash_point, sql_begin, sql_end
from hyperhive.kinds import AgentRole, AgentState, BackendName, Transient
from hyperhive.names import MANAGER, InvalidAgentName, parse_agent_name
from hyperhive.nodes import Nodes
from hyperhive.protocol import event_payloads as ev
from hyperhive.server import Principal, SocketKind
from hyperhive.store import Conn, Database, Row
from hyperhive.topology import TopologyError, check_parent, orphaned_by

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Longest model file read (a model name is at most 100 characters).
MAX_SMALL_FILE_BYTES: Final = 512


def model_name_ok(text: str) -> bool:
    """A model name as ``set_model`` takes it: one word of at most 100 printable characters
    (a model file the agent filled with anything else is not shown to the operator)."""
    return 0 < len(text) <= 100 and text.isprintable() and not any(c.isspace() for c in text)


__all__ = ["AgentRecord", "AgentState", "Registry", "read_allowed_recipients"]


@attrs.frozen
class AgentRecord:
    name: str
    role: AgentRole = attrs.field(converter=AgentRole)
    state: AgentState = attrs.field(converter=AgentState)
    backend: BackendName = attrs.field(converter=BackendName)
    created_at: float
    updated_at: float
    parent: str | None
    status_text: str
    #: The lifecycle operation running right now, if any.
    transient: Transient | None = attrs.field(
        default=None, converter=attrs.converters.optional(Transient)
    )
    transient_since: float | None = None
    #: The running payload (to re-adopt it after a daemon restart).
    pid: int | None = None
    start_ticks: int | None = None
    run_started_at: float | None = None
    crash_times: tuple[float, ...] = ()
    crash_streak: int = 0
    last_exit: int | None = None
    #: Something the operator should see (limits not enforced, last start failed, ...).
    warning: str | None = None
    #: Paused (no messages handed out, so no turns) since when, why and by whom.
    paused_at: float | None = None
    paused_reason: str | None = None
    paused_by: str | None = None
    #: The node that serves it (``hyperhive.nodes``): its socket, container and files.
    node: str = ""

    @classmethod
    def from_row(cls, row: Row) -> AgentRecord:
        return cls(
            name=row["name"],
            role=row["role"],
            state=AgentState(row["state"]),
            backend=row["backend"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            parent=row["parent"],
            status_text=row["status_text"],
            transient=row["transient"],
            transient_since=row["transient_since"],
            pid=row["pid"],
            start_ticks=row["start_ticks"],
            run_started_at=row["run_started_at"],
            crash_times=tuple(json.loads(row["crash_times_json"])),
            crash_streak=row["crash_streak"],
            last_exit=row["last_exit"],
            warning=row["warning"],
            paused_at=row["paused_at"],
            paused_reason=row["paused_reason"],
            paused_by=row["paused_by"],
            node=row["node"],
        )


def _load_all(conn: Conn) -> list[AgentRecord]:
    return [AgentRecord.from_row(r) for r in conn.execute("SELECT * FROM agents ORDER BY name")]


_COLUMNS: Final = (
    "name", "role", "state", "backend", "created_at", "updated_at", "parent", "status_text",
    "transient", "transient_since", "pid", "start_ticks", "run_started_at", "crash_times_json",
    "crash_streak", "last_exit", "warning", "paused_at", "paused_reason", "paused_by", "node",
)  # fmt: skip
_PAUSE_COLUMNS: Final = ("paused_at", "paused_reason", "paused_by")


def _row_values(record: AgentRecord) -> tuple[Any, ...]:
    """The record's values in :data:`_COLUMNS`' order."""
    return (
        record.name,
        record.role,
        record.state.value,
        record.backend,
        record.created_at,
        record.updated_at,
        record.parent,
        record.status_text,
        record.transient,
        record.transient_since,
        record.pid,
        record.start_ticks,
        record.run_started_at,
        json.dumps(list(record.crash_times)),
        record.crash_streak,
        record.last_exit,
        record.warning,
        record.paused_at,
        record.paused_reason,
        record.paused_by,
        record.node,
    )


def _upsert(conn: Conn, record: AgentRecord) -> None:
    # The pause columns are written by sql_set_paused only: a record evolved before a pause
    # committed never undoes it.
    fixed = ("name", "created_at", *_PAUSE_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in fixed)
    conn.execute(
        f"INSERT INTO agents ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        f"ON CONFLICT (name) DO UPDATE SET {updates}",
        _row_values(record),
    )


def _sql_update(conn: Conn, name: str, changes: Mapping[str, Any]) -> None:
    """Write only the fields ``changes`` names: a change made meanwhile (by another node,
    or another task) to any other column stays."""
    columns, values = [], []
    for field, value in changes.items():
        if field == "crash_times":
            field, value = "crash_times_json", json.dumps(list(value))
        if field not in _COLUMNS or field in ("name", *_PAUSE_COLUMNS):
            raise ValueError(f"not a column update() may change: {field}")
        columns.append(f"{field} = ?")
        values.append(value)
    conn.execute(f"UPDATE agents SET {', '.join(columns)} WHERE name = ?", (*values, name))


def _insert_new(conn: Conn, record: AgentRecord) -> AgentRecord | None:
    """Insert a new agent's row; if another node inserted one first, that row instead."""
    created = conn.execute(
        f"INSERT INTO agents ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        "ON CONFLICT (name) DO NOTHING RETURNING name",
        _row_values(record),
    ).fetchone()
    if created is not None:
        return None
    row = conn.execute("SELECT * FROM agents WHERE name = ?", (record.name,)).fetchone()
    return AgentRecord.from_row(row)


def _claim(conn: Conn, node: str, *, only: bool) -> list[AgentRecord]:
    """At start-up: the agents this node serves from now on, then every row. ``only`` (the
    store is this daemon's alone, sqlite): every agent, whatever node it was placed on
    before (a renamed host); otherwise (a shared store) the agents placed on no node yet,
    rows from before nodes existed. The manager is created here when the hive has none,
    on the first node that starts."""
    if only:
        conn.execute("UPDATE agents SET node = ? WHERE node != ?", (node, node))
    else:
        conn.execute("UPDATE agents SET node = ? WHERE node = ''", (node,))
    return _load_all(conn)


def sql_set_paused(conn: Conn, name: str, paused: tuple[float, str, str] | None) -> None:
    """Pause (``(at, reason, by)``) or resume (None) an agent's row."""
    conn.execute(
        "UPDATE agents SET paused_at = ?, paused_reason = ?, paused_by = ? WHERE name = ?",
        (*(paused or (None, None, None)), name),
    )


def read_enforced(agent_toml: Path) -> tuple[frozenset[str] | None, bool]:
    """What the core enforces from an applied agent.toml (blocking): ``allowed_recipients``
    (None: unrestricted) and ``lead``. An applied file that does not parse is logged and
    read as unrestricted and not a lead."""
    try:
        config = load_agent_config(agent_toml)
    except InvalidAgentConfig as exc:
        log.warning("%s: %s; allowed_recipients and lead ignored", agent_toml, exc)
        return None, False
    return frozenset(config.allowed_recipients) or None, config.lead


def read_allowed_recipients(agent_toml: Path) -> frozenset[str] | None:
    """``allowed_recipients`` of an applied agent.toml (blocking); None means unrestricted."""
    return read_enforced(agent_toml)[0]


SocketServer = Callable[[Path, Principal], Awaitable[None]]


@attrs.frozen
class _Listing:
    """What the table's listings derive from its records, made once after a change."""

    #: Every record, the manager first, then by name.
    ordered: tuple[AgentRecord, ...]
    live: tuple[AgentRecord, ...]
    destroyed: tuple[AgentRecord, ...]
    #: How many live agents each node serves.
    per_node: Mapping[str, int]

    @classmethod
    def of(cls, records: Iterable[AgentRecord]) -> _Listing:
        ordered = tuple(sorted(records, key=lambda r: (r.name != MANAGER, r.name)))
        live = tuple(r for r in ordered if r.state != AgentState.DESTROYED)
        destroyed = tuple(r for r in ordered if r.state == AgentState.DESTROYED)
        return cls(ordered, live, destroyed, Counter(r.node for r in live))


class AgentTable(MutableMapping[str, AgentRecord]):
    """The in-memory copy of ``agents`` by name, with the set of live names kept up to date
    on every change: a send checks its recipient in O(1), never by listing all agents."""

    def __init__(self, records: Mapping[str, AgentRecord] | None = None) -> None:
        self._records: dict[str, AgentRecord] = {}
        self.live: set[str] = set()
        #: The listings, made again after a change (the snapshot asks for them per request).
        self._made: _Listing | None = None
        for name, record in (records or {}).items():
            self[name] = record

    def __getitem__(self, name: str) -> AgentRecord:
        return self._records[name]

    def __setitem__(self, name: str, record: AgentRecord) -> None:
        self._records[name] = record
        self._made = None
        if record.state == AgentState.DESTROYED:
            self.live.discard(name)
        else:
            self.live.add(name)

    def __delitem__(self, name: str) -> None:
        del self._records[name]
        self._made = None
        self.live.discard(name)

    def _listing(self) -> _Listing:
        if self._made is None:
            self._made = _Listing.of(self._records.values())
        return self._made

    def ordered(self) -> list[AgentRecord]:
        """Every record, the manager first, then by name (a new list each call)."""
        return list(self._listing().ordered)

    def live_per_node(self) -> Mapping[str, int]:
        """How many live agents each node serves (kept until the table changes)."""
        return self._listing().per_node

    def live_records(self) -> tuple[AgentRecord, ...]:
        """The live agents' records, in listing order (the same tuple until the table
        changes: a caller may tell that nothing changed by its identity)."""
        return self._listing().live

    def destroyed(self) -> tuple[AgentRecord, ...]:
        """The tombstones, in listing order (kept until the table changes)."""
        return self._listing().destroyed

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    # The mapping's own lookups, not the generic ones built on ``__getitem__`` (a send and
    # a recv each make a few).
    @overload
    def get(self, name: str, /) -> AgentRecord | None: ...
    @overload
    def get(self, name: str, default: AgentRecord | T, /) -> AgentRecord | T: ...
    def get(self, name: str, default: object = None, /) -> object:
        return self._records.get(name, default)

    def keys(self) -> KeysView[str]:
        return self._records.keys()


class Registry:
    def __init__(
        self,
        db: Database,
        paths: Paths,
        events: EventHub,
        *,
        backend: str,
        serve_socket: Callable[..., Awaitable[None]],
        clock: Callable[[], float] = time.time,
        node: str = "",
        nodes: Nodes | None = None,
        on_placed: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self._db = db
        #: Told (synchronously: it starts a task) of an agent another node placed or
        #: revived (``"spawned"``, ``"revived"``), or of one of this node it does not serve
        #: yet (None): :meth:`follow` calls it; see :meth:`Hive.placed`.
        self._on_placed = on_placed
        #: The other nodes learn of each change of a row (``agents`` notifications), and
        #: this one of theirs: :meth:`follow` reads the rows named again.
        self._nodes = nodes
        self._remote_changes: set[str] = set()
        self._remote_changed = trio.Event()
        #: Called with the name of an agent whose pause another node changed, once this
        #: node's copy shows it (the broker's ``pause_changed``: its parked receivers look).
        self.on_remote_pause: Callable[[str], None] = lambda _: None
        if nodes is not None:
            nodes.on("agents", self._on_remote_change)
        #: This daemon's node: it binds the sockets (and runs the containers) of the agents
        #: placed on it only.
        self.node = node
        self._paths = paths
        self._events = events
        self._backend = backend
        self._serve_socket = serve_socket
        self._clock = clock
        self._agents = AgentTable()
        self._allowed: dict[str, frozenset[str] | None] = {}
        #: Agents whose applied agent.toml says ``lead = true``.
        self._leads: set[str] = set()
        #: Held from a re-parenting's cycle check to its write, so two moves made at once
        #: can never each pass the check and together make a cycle.
        self._topology = trio.Lock()
        #: Each agent socket's server: its cancel scope, and set once it ended (file gone).
        self._sockets: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self._nursery: trio.Nursery | None = None
        self.harnesses: Counter[str] = Counter()
        self._files: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
        #: Names whose directories are being removed: not registered again until gone.
        self._purging: set[str] = set()

    # ------------------------------------------------------------ queries (no I/O)

    def get(self, name: str) -> AgentRecord:
        try:
            parse_agent_name(name, allow_manager=True)
        except InvalidAgentName as exc:
            raise RequestRefused(str(exc)) from None
        record = self._agents.get(name)
        if record is None:
            raise RequestRefused(f"no agent named {name!r}")
        return record

    def all(self) -> list[AgentRecord]:
        return self._agents.ordered()

    def live_per_node(self) -> Mapping[str, int]:
        """Live agents per node."""
        return self._agents.live_per_node()

    def destroyed(self) -> tuple[AgentRecord, ...]:
        """Every tombstone, in listing order."""
        return self._agents.destroyed()

    def live_records(self) -> tuple[AgentRecord, ...]:
        """Every live agent's record, in listing order (the same tuple while nothing
        changed)."""
        return self._agents.live_records()

    def known(self) -> frozenset[str]:
        """Every name a message may wait for: live agents and tombstones."""
        return frozenset(self._agents)

    def live(self) -> frozenset[str]:
        return frozenset(self._agents.live)

    async def _write(self, fn: Callable[[Conn], T], *names: str) -> T:
        """Run ``fn`` in a transaction that tells the other nodes the rows of ``names``
        changed (if and when it commits)."""

        def tx(conn: Conn) -> T:
            result = fn(conn)
            if self._nodes is not None and self._nodes.shared:
                self._nodes.notify(conn, "agents", names=list(names))
            return result

        return await self._db.transaction(tx)

    def _on_remote_change(self, data: dict[str, Any]) -> None:
        if self._nodes is None or data.get("from") == self._nodes.name:
            return
        names = data.get("names")
        if isinstance(names, list):
            self._remote_changes.update(n for n in names if isinstance(n, str))
            self._remote_changed.set()

    async def follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the rows another node changed again, and say so (``agent_changed``)."""
        task_status.started()
        while True:
            await self._remote_changed.wait()
            self._remote_changed = trio.Event()
            names, self._remote_changes = self._remote_changes, set()
            paused = {n: self.paused(n) for n in names}
            before = {name: self._agents.get(name) for name in names}
            for name in await self.refresh(names):
                record = self._agents.get(name)
                if self.paused(name) != paused[name]:
                    self.on_remote_pause(name)
                if record is None:
                    self._events.emit(ev.AgentPurged(name=name))
                    continue
                self._placed(before.get(name), record)
                self._emit_changed(record)

    def _emit_changed(self, record: AgentRecord) -> None:
        """Publish ``agent_changed`` with what the record now says."""
        self._events.emit(
            ev.AgentChanged(
                name=record.name,
                state=record.state,
                transient=record.transient,
                transient_since=record.transient_since,
                warning=record.warning,
                pid=record.pid,
            )
        )

    def _placed(self, before: AgentRecord | None, record: AgentRecord) -> None:
        """Tell :attr:`_on_placed` of a row another node made live, or of an agent of this
        node whose socket is not bound (placed here by another node)."""
        if self._on_placed is None or record.state == AgentState.DESTROYED:
            return
        if before is None or before.state == AgentState.DESTROYED:
            self._on_placed(record.name, "spawned" if before is None else "revived")
        elif record.node == self.node and record.name not in self._sockets:
            self._on_placed(record.name, None)

    def is_bound(self, name: str) -> bool:
        """Whether this node serves ``name``'s socket."""
        return name in self._sockets

    async def bind(self, name: str) -> None:
        """Serve the socket of an agent placed on this node (idempotent)."""
        if not self.is_local(name):
            raise RequestRefused(f"{name} runs on node {self.get(name).node}, not on this one")
        await self._bind(name)

    def is_local(self, name: str) -> bool:
        """Whether ``name`` is placed on this node (its socket, container and files are here)."""
        record = self._agents.get(name)
        return record is not None and record.node == self.node

    def is_remote(self, name: str) -> bool:
        """Whether ``name`` is an agent placed on another node (its ``recv`` parks there)."""
        record = self._agents.get(name)
        return record is not None and record.node != self.node

    def directory(self) -> tuple[Collection[str], Collection[str]]:
        """``(known, live)`` for the broker's recipient check: live views of the table, not
        copies (the check is synchronous; a send must not cost a pass over every agent)."""
        return self._agents.keys(), self._agents.live

    def allowed_recipients(self, name: str) -> frozenset[str] | None:
        return self._allowed.get(name)

    def paused(self, name: str) -> bool:
        """Whether ``name`` is paused (the broker hands a paused agent no messages)."""
        record = self._agents.get(name)
        return record is not None and record.paused_at is not None

    def is_lead(self, name: str) -> bool:
        """Whether the agent's applied agent.toml grants it the ``lead`` role."""
        return name in self._leads and name in self._agents

    def parents(self) -> dict[str, str | None]:
        """Each live agent's parent (``hyperhive.topology``'s mapping): the manager is the
        root; a parent never set (NULL), or one that is not live, reads as ``manager``."""
        live = self.live()
        return {
            name: None
            if name == MANAGER
            else (record.parent if record.parent in live and record.parent != name else MANAGER)
            for name, record in self._agents.items()
            if name in live
        }

    def parent(self, name: str) -> str | None:
        """The agent's parent as :meth:`parents` reads it (None for the manager)."""
        if name == MANAGER:
            return None
        record = self._agents.get(name)
        if record is None or name not in self._agents.live:
            return MANAGER
        parent = record.parent
        # O(1): a listing asks this for every agent.
        return parent if parent != name and parent in self._agents.live else MANAGER

    async def set_parent(self, child: str, parent: str | None) -> str:
        """Give a live agent a new parent (None: back to ``manager``); returns the parent.

        Refused for unknown names, the manager, self-parenting and cycles. Idempotent.
        """
        async with self._topology:
            return await self._set_parent(child, parent)

    async def _set_parent(self, child: str, parent: str | None) -> str:
        record = self.get(child)
        if record.state == AgentState.DESTROYED:
            raise RequestRefused(f"{child} is destroyed")
        if child == MANAGER:
            raise RequestRefused("the manager is the root of the hive: it has no parent")
        new = MANAGER if parent is None else parent
        if new != MANAGER:
            target = self.get(new)
            if target.state == AgentState.DESTROYED:
                raise RequestRefused(f"{new} is destroyed")
        try:
            check_parent(self.parents(), child, new)
        except TopologyError as exc:
            raise RequestRefused(str(exc)) from None
        if record.parent != new:
            await self.update(child, parent=new)
            self._events.emit(ev.ParentChanged(name=child, parent=new))
        return new

    # ------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the table, make sure the manager exists, bind every live agent's socket."""
        only = not self._db.shared
        records = await self._db.transaction(lambda conn: _claim(conn, self.node, only=only))
        self._agents = AgentTable({r.name: r for r in records})
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            manager = self._agents.get(MANAGER)
            if manager is None or manager.node == self.node:
                await self.register(MANAGER, role=AgentRole.MANAGER)
            for record in records:
                await self.reload_config(record.name)
                if (
                    record.state != AgentState.DESTROYED
                    and record.name != MANAGER
                    and record.node == self.node
                ):
                    await self._bind(record.name)
            nursery.start_soon(self.follow)
            task_status.started()
            await trio.sleep_forever()

    async def register(
        self,
        name: str,
        *,
        role: str = AgentRole.AGENT,
        parent: str | None = None,
        backend: str | None = None,
        transient: Transient | None = None,
        node: str | None = None,
    ) -> AgentRecord:
        """Create (or revive) an agent's directories, row and socket. Idempotent.

        ``transient`` is what a new (or revived) agent shows until its creator clears it
        (``spawning``); an agent that exists already is returned unchanged. ``node``: where
        a new agent is placed (default: this node); a revived one stays where its state
        dirs are. The directories and the socket are made here only for an agent placed
        on this node; its own node makes them when it learns of the row.
        """
        try:
            name = parse_agent_name(name, allow_manager=role == AgentRole.MANAGER)
        except InvalidAgentName as exc:
            raise RequestRefused(str(exc)) from None
        existing = self._agents.get(name)
        if existing is not None and existing.state != AgentState.DESTROYED:
            if existing.node == self.node:
                await self._bind(name)
            return existing
        placed = existing.node if existing is not None else (node or self.node)
        local = placed == self.node
        if local:
            await self.make_dirs(name)
        now = self._clock()
        record = AgentRecord(
            name=name,
            role=role,
            state=AgentState.REGISTERED,
            backend=backend or (existing.backend if existing else self._backend),
            created_at=existing.created_at if existing else now,
            updated_at=now,
            parent=parent if existing is None else existing.parent,
            status_text="",
            transient=transient,
            transient_since=None if transient is None else now,
            node=placed,
        )
        if existing is not None:
            record = self._with_pause_of(existing, record)  # a revived agent stays paused
            await self._write(lambda conn: _upsert(conn, record), name)
        else:
            found = await self._write(lambda conn: _insert_new(conn, record), name)
            if found is not None:
                # Another node created it meanwhile (two nodes starting on an empty hive).
                self._agents[name] = found
                if found.node == self.node and found.state != AgentState.DESTROYED:
                    await self._bind(name)
                return found
        self._agents[name] = record
        await self.reload_config(name)
        if local:
            await self._bind(name)
        self._events.emit(ev.AgentRegistered(name=name, role=record.role, state=record.state))
        return record

    async def refresh(self, names: Iterable[str] | None = None) -> list[str]:
        """Read rows again (``names``, or all): another node changed them. Returns the names
        whose record changed (or appeared, or went)."""
        wanted = None if names is None else sorted(set(names))

        def load(conn: Conn) -> list[AgentRecord]:
            if wanted is None:
                return _load_all(conn)
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(f"SELECT * FROM agents WHERE name IN ({marks})", wanted)
            return [AgentRecord.from_row(r) for r in rows]

        if wanted == []:
            return []
        records = {r.name: r for r in await self._db.transaction(load)}
        changed = []
        for name in wanted if wanted is not None else sorted({*records, *self._agents}):
            record = records.get(name)
            if record is None:
                if self._agents.pop(name, None) is not None:
                    changed.append(name)
            elif self._agents.get(name) != record:
                self._agents[name] = record
                changed.append(name)
        return changed

    async def reload_config(self, name: str) -> None:
        """Re-read what the core enforces from the applied agent.toml (after a deploy):
        the broker's allowed recipients and the ``lead`` role."""
        allowed, lead = await trio.to_thread.run_sync(
            read_enforced, self._paths.applied_dir(name) / "agent.toml"
        )
        self._allowed[name] = allowed
        if lead:
            self._leads.add(name)
        else:
            self._leads.discard(name)

    async def make_dirs(self, name: str) -> None:
        """Create the agent's state directories where missing (idempotent)."""
        if name in self._purging:
            raise RequestRefused(f"{name} is being purged; try again when that is done")
        await trio.to_thread.run_sync(self._make_dirs, name)

    async def destroy(
        self, name: str, *, also: Callable[[Conn], T] | None = None
    ) -> tuple[AgentRecord, T | None]:
        """Remove the socket, keep the state: the name becomes a tombstone.

        ``also`` runs in the same transaction as the row's change (and its result is
        returned), so what goes with a destroy is recorded with it or not at all.
        """
        record = self.get(name)
        if name == MANAGER:
            raise RequestRefused("the manager cannot be destroyed")
        if record.state == AgentState.DESTROYED:
            raise RequestRefused(f"{name} is already destroyed")
        changes: dict[str, Any] = {"state": AgentState.DESTROYED, "updated_at": self._clock()}
        record = attrs.evolve(record, **changes)
        async with self._topology:
            # Its children move to its own parent, in the same transaction.
            adopted = orphaned_by(self.parents(), name)

            def tx(conn: Conn) -> T | None:
                _sql_update(conn, name, changes)
                conn.executemany(
                    "UPDATE agents SET parent = ?, updated_at = ? WHERE name = ?",
                    [(parent, record.updated_at, child) for child, parent in adopted.items()],
                )
                return None if also is None else also(conn)

            result = await self._write(tx, name, *adopted)
            self._agents[name] = attrs.evolve(self._agents.get(name, record), **changes)
            for child, parent in adopted.items():
                self._agents[child] = attrs.evolve(
                    self._agents[child], parent=parent, updated_at=record.updated_at
                )
                self._events.emit(ev.ParentChanged(name=child, parent=parent))
        server = self._sockets.pop(name, None)
        if server is not None:
            scope, ended = server
            scope.cancel()
            # Destroyed means its socket is gone: no connection is accepted after this returns.
            with trio.move_on_after(SOCKET_CLOSE_SECONDS):
                await ended.wait()
        self._events.emit(ev.AgentDestroyed(name=name))
        return record, result

    async def purge(self, name: str, *, also: Callable[[Conn], T] | None = None) -> T | None:
        """Forget a tombstone and wipe its state; refused for the manager and live agents.
        ``also`` runs in the transaction that deletes the row (what else goes with it; its
        result is returned)."""
        record = self.get(name)
        if name == MANAGER:
            raise RequestRefused("the manager cannot be purged")
        if record.state != AgentState.DESTROYED:
            raise RequestRefused(f"{name} is live: destroy it before purging")
        now = self._clock()

        def tx(conn: Conn) -> tuple[int, T | None]:
            conn.execute("DELETE FROM agents WHERE name = ?", (name,))
            result = None if also is None else also(conn)
            return sql_begin(conn, OperationKind.PURGE, name, now, node=self.node).id, result

        # The row goes with the journal entry that promises the directories go too.
        operation_id, result = await self._write(tx, name)
        del self._agents[name]
        self._allowed.pop(name, None)
        self._leads.discard(name)
        await self.finish_purge(name, operation_id)
        return result

    async def finish_purge(self, name: str, operation_id: int) -> None:
        """Remove a purged agent's directories, then end the journal entry. Idempotent."""
        self._purging.add(name)
        try:
            for path in self._kept_dirs(name):
                await trio.to_thread.run_sync(shutil.rmtree, path, True)
                crash_point("purge-removing")
            await self._db.transaction(lambda conn: sql_end(conn, operation_id))
        finally:
            self._purging.discard(name)
        self._events.emit(ev.AgentPurged(name=name))

    async def update(self, name: str, **changes: Any) -> AgentRecord:
        """Change fields of an agent's record, persist them (only them: :func:`_sql_update`),
        and publish ``agent_changed``."""
        changes = {**changes, "updated_at": self._clock()}
        record = attrs.evolve(self.get(name), **changes)  # checks the fields
        await self._write(lambda conn: _sql_update(conn, name, changes), name)
        record = attrs.evolve(self._agents.get(name, record), **changes)
        self._agents[name] = record
        self._emit_changed(record)
        return record

    @staticmethod
    def _with_pause_of(current: AgentRecord, record: AgentRecord) -> AgentRecord:
        """``record`` with the pause of ``current`` (a pause that committed meanwhile)."""
        return attrs.evolve(
            record,
            paused_at=current.paused_at,
            paused_reason=current.paused_reason,
            paused_by=current.paused_by,
        )

    async def set_paused(
        self,
        name: str,
        paused: tuple[float, str, str] | None,
        *,
        also: Callable[[Conn], T] | None = None,
    ) -> tuple[AgentRecord, T | None]:
        """Pause (``(at, reason, by)``) or resume (None) an agent, persisted.

        ``also`` runs in the same transaction (see :meth:`destroy`); its result is returned.
        """
        at, reason, by = paused if paused is not None else (None, None, None)

        def tx(conn: Conn) -> T | None:
            sql_set_paused(conn, name, paused)
            return None if also is None else also(conn)

        result = await self._write(tx, name)
        record = attrs.evolve(self.get(name), paused_at=at, paused_reason=reason, paused_by=by)
        self._agents[name] = record
        return record, result

    async def set_status_text(self, name: str, text: str) -> None:
        await self.update(name, status_text=text)
        self._events.emit(ev.StatusChanged(name=name, status_text=text))

    def model(self, name: str) -> str:
        """The model of the agent's next turn (its model file, which its harness may change)."""
        text = self._small_file(self._paths.model_file(name))
        return text if text is not None and model_name_ok(text) else DEFAULT_MODEL

    def ui_url(self, name: str) -> str | None:
        """The dashboard path of the agent's own web UI, once its harness made its socket."""
        try:
            mode = self._paths.ui_socket(name).lstat().st_mode  # never a planted symlink
        except OSError:
            return None
        return f"/agent/{name}/" if stat.S_ISSOCK(mode) else None

    def _small_file(self, path: Path) -> str | None:
        """A one-line file's text, cached by inode, size and mtime: listing 100 agents costs
        an ``lstat`` each, not a read (these files are a few bytes on a local disk). The file
        is the agent's to write: a symlink, a FIFO, a device or a big file reads as None
        (``agent_files``), never as some host file's content, a hang or a flood."""
        key = file_key(path)
        if key is None:
            return None
        cached = self._files.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        raw = read_small_file(path, MAX_SMALL_FILE_BYTES)
        try:
            text = raw.decode("utf-8").strip() if raw is not None else None
        except UnicodeDecodeError:
            text = None
        if text is not None:
            self._files[path] = (key, text)
        return text

    async def set_model(self, name: str, model: str) -> None:
        self.get(name)
        path = self._paths.model_file(name)
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        # The agent writes this directory: never through a name it may have planted.
        await trio.to_thread.run_sync(replace_file, path, (model + "\n").encode())
        self._events.emit(ev.ModelChanged(name=name, model=model))

    def tombstone_size(self, name: str) -> tuple[int, float]:
        """Bytes kept for a tombstone and the newest modification time (blocking)."""
        total, newest = 0, 0.0
        for root in self._kept_dirs(name):
            if root.is_symlink() or not root.exists():
                continue
            for path in [root, *root.rglob("*")]:
                try:
                    st = path.lstat()
                except OSError:
                    continue
                total += st.st_size if path.is_file() else 0
                newest = max(newest, st.st_mtime)
        return total, newest

    def _kept_dirs(self, name: str) -> tuple[Path, ...]:
        """What a tombstone keeps and a purge removes (the proposed repo's ``<name>`` dir
        with it: rmtree refuses a symlink the manager may have put there)."""
        return (
            self._paths.agent_dir(name),
            self._paths.proposed_dir(name).parent,
            self._paths.applied_dir(name),
        )

    def _make_dirs(self, name: str) -> None:
        for sub in (self._paths.claude_dir(name), self._paths.agent_state_dir(name)):
            sub.mkdir(parents=True, exist_ok=True)
        self._paths.claude_dir(name).chmod(0o700)
        # The repo itself is made by prepare_agent_repos, which refuses whatever the manager
        # (it can write this tree) may have put here instead of a directory.
        proposed = self._paths.proposed_dir(name).parent
        if not os.path.lexists(proposed):
            proposed.mkdir(parents=True)
        self._paths.applied_dir(name).mkdir(parents=True, exist_ok=True)

    async def _bind(self, name: str) -> None:
        if name in self._sockets:
            return
        assert self._nursery is not None, "Registry.serve() is not running"
        principal = Principal(SocketKind.MANAGER if name == MANAGER else SocketKind.AGENT, name)
        path = self._paths.agent_socket(name)
        scope, ended = trio.CancelScope(), trio.Event()
        self._sockets[name] = (scope, ended)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await self._serve_socket(path, principal, task_status=task_status)
            finally:
                ended.set()

        await self._nursery.start(serve)
