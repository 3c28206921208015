"""``watch``: the host socket's push feed of changes, built on the daemon's :class:`EventHub`.

A ``watch`` request subscribes its connection to the hub; after the reply the connection
receives one JSON line per change of the kinds in :data:`WATCH_KINDS` (agents' state and
transients, pause and resume, approvals, questions, the daemon's problems, the nodes'
statuses), in ``seq`` order. Fan-out is bounded: a watcher whose queue fills up (it does not
read) is cut off by the hub, gets one final error line and is closed; it never slows a
publisher. Message traffic (``sent``/``delivered``) is not in the feed: the dashboard shows it.

The lines are decided here (:func:`watch_line`, no I/O); :class:`Feed` is the thin trio
adapter the socket server writes out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Final

import trio

from hyperhive.config import PROTOCOL_VERSION
from hyperhive.events import Event
from hyperhive.kinds import EventKind

#: The event kinds a watcher receives.
WATCH_KINDS: Final = frozenset(
    {
        EventKind.AGENT_REGISTERED,
        EventKind.AGENT_CHANGED,
        EventKind.AGENT_DESTROYED,
        EventKind.AGENT_PURGED,
        EventKind.AGENT_PAUSED,
        EventKind.AGENT_RESUMED,
        EventKind.STATUS_CHANGED,
        EventKind.MODEL_CHANGED,
        EventKind.HARNESS_CONNECTED,
        EventKind.HARNESS_DISCONNECTED,
        EventKind.CONTAINER_STARTED,
        EventKind.CONTAINER_CRASH,
        EventKind.APPROVAL_ADDED,
        EventKind.APPROVAL_RESOLVED,
        EventKind.QUESTION_ADDED,
        EventKind.QUESTION_RESOLVED,
        EventKind.PROBLEMS_CHANGED,
        EventKind.NODE_CHANGED,
    }
)

DROPPED: Final = (
    "watch dropped: this watcher fell behind (it did not read its lines); "
    "watch again and take a fresh snapshot (list, pending, questions)"
)


def watch_line(event: Event) -> bytes | None:
    """The feed's line for ``event``: ``{"seq", "ts", "kind", "data"}``, or None when its
    kind is not watched."""
    if event.kind not in WATCH_KINDS:
        return None
    line = {"seq": event.seq, "ts": event.ts, "kind": event.kind, "data": event.data}
    return _dump(line)


def dropped_line() -> bytes:
    """The last line a watcher that fell behind receives before it is closed."""
    return _dump({"ok": False, "error": DROPPED, "protocol": PROTOCOL_VERSION})


def _dump(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


class Feed:
    """One watcher's subscription: its lines (:meth:`lines`), ending with
    :func:`dropped_line` if the hub cut it off (the hub closes a subscriber's channel only
    when it fell behind). :meth:`close` unsubscribes; it is called when the connection
    ends, whether or not the lines were ever read."""

    def __init__(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        self._events = events

    def close(self) -> None:
        self._events.close()

    async def lines(self) -> AsyncGenerator[bytes, None]:
        while True:
            try:
                event = await self._events.receive()
            except trio.EndOfChannel:
                yield dropped_line()
                return
            except trio.ClosedResourceError:
                return
            line = watch_line(event)
            if line is not None:
                yield line
