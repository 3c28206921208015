"""Agent views for ``agents``/``status`` and the dashboard's snapshot, kept by events.

Listing agents used to read each agent's files on every request (its model file, its UI
socket, its claude login: three ``stat`` calls and the paths to them, on the event loop),
~43 µs per agent per request. Here those *facts* are read off the event loop, in one thread
hop: all of them when the daemon starts and every :data:`FACTS_REFRESH_SECONDS` after
(the harness may change its model file, and a login appears, without telling the daemon),
and an agent's own at the next read after an event that may change them (``model_changed``,
a harness connecting or leaving, a start or stop). A request reads no file.

The :class:`~hyperhive.protocol.AgentInfo` of each agent is built once and kept until its
record changes (records are immutable: a change is a new object), its facts change, or an
event names it (``name`` or ``agent`` in the event's fields: whatever shows on an agent
comes with such an event) or its node (``node_changed``: its node went down or came
back). Only ``unread`` and the hive's per-request extras are filled in per request. The
builder is the hive's, so every field of ``AgentInfo`` goes through this
cache unchanged.

For the dashboard's snapshot each agent's JSON entry is kept too, with the ``unread`` and
extras it was made with: an agent whose view, count and extras did not change since the last
snapshot costs a comparison, not a dict merge and its encoding (at 1000 agents those were
most of a snapshot's time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import orjson
import trio

from hyperhive.events import Event, EventHub
from hyperhive.kinds import EventKind
from hyperhive.protocol import CONVERTER, AgentInfo
from hyperhive.protocol import event_payloads as ev
from hyperhive.registry import AgentRecord

log = logging.getLogger(__name__)

#: How often every agent's facts are read again (for changes nobody announces).
FACTS_REFRESH_SECONDS: Final = 2.0
_NO_EXTRAS: Final[Mapping[str, Any]] = {}
#: Events that change no agent's view (the hot path: messages).
_NO_VIEW_CHANGE: Final = frozenset({EventKind.SENT, EventKind.DELIVERED, EventKind.VACUUMED})
#: Events after which an agent's files are read again before it is shown.
_FACTS_CHANGE: Final = frozenset(
    {
        EventKind.AGENT_REGISTERED,
        EventKind.AGENT_CHANGED,
        EventKind.MODEL_CHANGED,
        EventKind.HARNESS_CONNECTED,
        EventKind.HARNESS_DISCONNECTED,
        EventKind.CONTAINER_STARTED,
    }
)


@attrs.frozen
class AgentFacts:
    """What an agent's files say (read by :data:`FactsReader`, off the event loop)."""

    model: str
    ui_url: str | None
    #: A claude login (credentials file) is in the agent's state.
    logged_in: bool
    #: Another node's agent: what its node says (None: this node knows it itself).
    harness_connected: bool | None = None
    lead: bool | None = None
    credentials_ok: bool | None = None


#: Reads one agent's facts (blocking; runs in a worker thread). The test seam.
FactsReader = Callable[[str], AgentFacts]
#: Builds an agent's view from its record and facts (``unread`` is filled in later).
ViewBuilder = Callable[[AgentRecord, AgentFacts], AgentInfo]


@attrs.define
class _View:
    record: AgentRecord
    facts: AgentFacts
    info: AgentInfo
    wire: dict[str, Any] | None = None


@attrs.define
class _Array:
    """The last encoded array and what it was made from (the callers' dicts: never changed)."""

    views: list[_View]
    unread: Mapping[str, int]
    extras: Mapping[str, Mapping[str, Any]]
    array: orjson.Fragment


@attrs.define
class _Entry:
    """An agent's snapshot entry and what it was made from (compared by identity/equality)."""

    view: _View
    unread: int
    extras: Mapping[str, Any]
    #: Shared with every caller of :meth:`AgentViews.wire`: never changed in place.
    entry: dict[str, Any]
    json: bytes | None = None


class AgentViews:
    """Cached agent views; see the module docstring."""

    def __init__(
        self,
        events: EventHub,
        *,
        records: Callable[[], Sequence[AgentRecord]],
        read_facts: FactsReader,
        build: ViewBuilder,
        refresh_seconds: float = FACTS_REFRESH_SECONDS,
    ) -> None:
        self._events = events
        #: The live agents' records in listing order; the same object while none changed
        #: (``Registry.live_records``), which lets an unchanged listing be kept whole.
        self._records = records
        #: The one place agents' files are read (a test counts its calls).
        self.read_facts = read_facts
        self._build = build
        self._refresh_seconds = refresh_seconds
        self._facts: dict[str, AgentFacts] = {}
        #: Names whose facts are read again before they are next shown.
        self._stale: set[str] = set()
        #: Names whose view is built again before it is next shown.
        self._dirty: set[str] = set()
        self._views: dict[str, _View] = {}
        self._entries: dict[str, _Entry] = {}
        self._last_array: _Array | None = None
        #: What :meth:`_current` last returned and the records it was made from: the same
        #: again while those are the same object (the registry keeps its tuple until a
        #: change) and none of the names shown is dirty or stale.
        self._last_shown: (
            tuple[Sequence[AgentRecord], list[tuple[_View, str]], frozenset[str]] | None
        ) = None
        self._limiter = trio.CapacityLimiter(1)
        events.listen(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind in _NO_VIEW_CHANGE:
            return
        if event.kind == EventKind.NODE_CHANGED:
            # Its agents' reachability changed: their views are built again.
            node = event.data.get("node")
            self._dirty.update(r.name for r in self._records() if r.node == node)
            return
        for key in ("name", "agent"):
            name = event.data.get(key)
            if isinstance(name, str):
                self._dirty.add(name)
                if event.kind in _FACTS_CHANGE:
                    self._stale.add(name)
                elif event.kind == EventKind.AGENT_PURGED:
                    self._facts.pop(name, None)
                    self._views.pop(name, None)
                    self._entries.pop(name, None)

    # ------------------------------------------------------------ facts

    def cached_facts(self, name: str) -> AgentFacts | None:
        return self._facts.get(name)

    async def _read(self, names: list[str], *, announce: bool = False) -> None:
        """Read the facts of ``names`` in one thread hop and keep them.

        ``announce``: a model that changed without an event (the harness's UI wrote the
        file) is published as ``model_changed``, so the dashboard shows it live.
        """
        if not names:
            return
        for name in names:
            self._stale.discard(name)
        read = self.read_facts
        facts = await trio.to_thread.run_sync(
            lambda: {name: read(name) for name in names}, limiter=self._limiter
        )
        for name, new in facts.items():
            old = self._facts.get(name)
            if old == new:
                continue  # unchanged facts keep their views
            self._facts[name] = new
            self._dirty.add(name)
            if announce and old is not None and old.model != new.model and name not in self._stale:
                self._events.emit(ev.ModelChanged(name=name, model=new.model))

    async def refresh_all(self) -> None:
        """Read every agent's facts again (what the periodic refresh does)."""
        await self._read([r.name for r in self._records()], announce=True)

    async def refresh_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read all facts now, then every ``refresh_seconds``."""
        await self.refresh_all()
        task_status.started()
        while True:
            await trio.sleep(self._refresh_seconds)
            await self.refresh_all()

    async def facts(self, name: str) -> AgentFacts:
        """One agent's facts, read first if unknown or announced as changed."""
        if name in self._stale or name not in self._facts:
            await self._read([name])
        return self._facts[name]

    # ------------------------------------------------------------ views

    async def _current(self) -> list[tuple[_View, str]]:
        last = self._last_shown
        if (
            last is not None
            and self._records() is last[0]
            and self._dirty.isdisjoint(last[2])
            and self._stale.isdisjoint(last[2])
        ):
            return last[1]  # the same records (a kept tuple), facts and views
        while True:
            records = self._records()
            missing = [
                r.name for r in records if r.name in self._stale or r.name not in self._facts
            ]
            if not missing:
                break  # no await from here on: the records are the current ones
            await self._read(missing)
        shown = []
        for record in records:
            name = record.name
            facts = self._facts[name]
            view = self._views.get(name)
            if (
                view is None
                or view.record is not record
                or view.facts is not facts
                or (name in self._dirty)
            ):
                self._dirty.discard(name)
                view = self._views[name] = _View(record, facts, self._build(record, facts))
            shown.append((view, name))
        if len(self._views) > 2 * len(records) + 16:
            live = {name for _, name in shown}
            self._views = {n: v for n, v in self._views.items() if n in live}
            self._entries = {n: e for n, e in self._entries.items() if n in live}
        self._last_shown = (records, shown, frozenset(name for _, name in shown))
        return shown

    async def infos(
        self, unread: dict[str, int], extras: Mapping[str, Mapping[str, Any]] | None = None
    ) -> list[AgentInfo]:
        """Every live agent's :class:`AgentInfo`, in the registry's order; ``extras``: fields
        read per request (JSON-ready values), by agent name."""
        extras = extras or {}
        return [
            attrs.evolve(view.info, unread=unread.get(name, 0), **extras.get(name, {}))
            for view, name in await self._current()
        ]

    async def wire(
        self, unread: dict[str, int], extras: Mapping[str, Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The same, unstructured for JSON (what the dashboard's snapshot sends). The dicts
        are kept for the next call: read them, never change them."""
        return [e.entry for e in self._current_entries(await self._current(), unread, extras)]

    async def wire_json(
        self, unread: dict[str, int], extras: Mapping[str, Mapping[str, Any]] | None = None
    ) -> orjson.Fragment:
        """:meth:`wire` as one JSON array, each agent's entry encoded once while unchanged;
        the whole array is the last one when no view, count or extra changed since."""
        extras = extras or {}
        shown = await self._current()
        last = self._last_array
        if (
            last is not None
            and len(last.views) == len(shown)
            and all(view is kept for (view, _), kept in zip(shown, last.views, strict=True))
            and last.unread == unread
            and (last.extras is extras or last.extras == extras)
        ):
            return last.array
        parts = []
        for entry in self._current_entries(shown, unread, extras):
            if entry.json is None:
                entry.json = orjson.dumps(entry.entry)
            parts.append(entry.json)
        array = orjson.Fragment(b"[" + b",".join(parts) + b"]")
        self._last_array = _Array([view for view, _ in shown], unread, extras, array)
        return array

    def _current_entries(
        self,
        shown: list[tuple[_View, str]],
        unread: dict[str, int],
        extras: Mapping[str, Mapping[str, Any]] | None,
    ) -> list[_Entry]:
        extras = extras or {}
        out = []
        for view, name in shown:
            count, extra = unread.get(name, 0), extras.get(name, _NO_EXTRAS)
            entry = self._entries.get(name)
            if (
                entry is None
                or entry.view is not view
                or entry.unread != count
                or entry.extras != extra
            ):
                if view.wire is None:
                    view.wire = CONVERTER.unstructure(view.info)
                entry = self._entries[name] = _Entry(
                    view, count, extra, {**view.wire, "unread": count, **extra}
                )
            out.append(entry)
        return out
