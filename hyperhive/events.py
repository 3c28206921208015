"""The daemon's in-process event stream: every state change, numbered by a monotonic ``seq``.

Publishers never block: each subscriber has a bounded queue, and one that falls behind is
disconnected (its channel closes) rather than slowing the broker. A bounded ring of recent
events lets a reconnecting subscriber (the dashboard's ``Last-Event-ID``) catch up, or learn
that the gap is too old and it must resync from a snapshot.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from hyperhive.config import EVENT_RING_SIZE, EVENT_SUBSCRIBER_QUEUE
from hyperhive.protocol.event_payloads import EventPayload, event_data


class Numbered(Protocol):
    @property
    def seq(self) -> int: ...


E = TypeVar("E", bound=Numbered)


class FanOut(Generic[E]):
    """Bounded per-subscriber channels; a subscriber that falls behind is cut off."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[trio.MemorySendChannel[E]] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> trio.MemoryReceiveChannel[E]:
        send, receive = trio.open_memory_channel[E](self._queue_size)
        self._subscribers.add(send)
        return receive

    def deliver(self, item: E) -> None:
        """Hand ``item`` to every subscriber without ever blocking the publisher."""
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(item)
            except trio.WouldBlock:
                # Too slow: cut it off; it reconnects and catches up from the ring or resyncs.
                self._subscribers.discard(channel)
                channel.close()
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)


def events_since(ring: Sequence[E] | Iterable[E], newest: int, seq: int) -> list[E] | None:
    """The events of ``ring`` after ``seq``, or None when some of them already left it."""
    if seq >= newest:
        return []
    items = list(ring)
    if not items or items[0].seq > seq + 1:
        return None
    return [e for e in items if e.seq > seq]


@attrs.frozen
class Event:
    seq: int
    ts: float
    kind: str
    data: dict[str, Any]


@attrs.frozen
class EventHubStatistics:
    seq: int
    subscribers: int
    buffered: int
    dropped_subscribers: int


class EventHub:
    """Numbered events: a ring of the recent ones, bounded fan-out, synchronous listeners.

    The daemon has one; each harness has one inside its event log
    (:class:`hyperhive_harness.event_log.EventLog`), which also stores the events.
    """

    def __init__(
        self,
        *,
        ring_size: int = EVENT_RING_SIZE,
        queue_size: int = EVENT_SUBSCRIBER_QUEUE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._seq = 0
        self._clock = clock
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._fanout: FanOut[Event] = FanOut(queue_size)
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def seq(self) -> int:
        """The ``seq`` of the newest event (0 before the first)."""
        return self._seq

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def statistics(self) -> EventHubStatistics:
        return EventHubStatistics(
            self._seq, len(self._fanout), len(self._ring), self._fanout.dropped
        )

    def emit(self, payload: EventPayload) -> Event:
        """Publish one typed event (its kind and fields: ``hyperhive.protocol.event_payloads``)."""
        return self.publish(payload.KIND, **event_data(payload))

    def publish(self, kind: str, **data: Any) -> Event:
        """Publish raw fields; the daemon's own events go through :meth:`emit`."""
        self._seq += 1
        event = Event(self._seq, self._clock(), kind, data)
        self._ring.append(event)
        for listener in self._listeners:
            listener(event)
        self._fanout.deliver(event)
        return event

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` synchronously with every event published from now on."""
        self._listeners.append(listener)

    def history(self, limit: int | None = None) -> list[Event]:
        """The newest ``limit`` events of the ring (all of them by default), oldest first."""
        events = list(self._ring)
        if limit is None:
            return events
        return events[-limit:] if limit > 0 else []

    def since(self, seq: int) -> list[Event] | None:
        """Events after ``seq``, or None when some of them already left the ring."""
        return events_since(self._ring, self._seq, seq)

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        """A channel of every event published from now on; close it to unsubscribe."""
        return self._fanout.subscribe()

    def continue_after(self, top: int, stored: Iterable[Event]) -> None:
        """Go on from events kept elsewhere (a database): ``stored`` (the newest of them, up
        to ``top``) come first in the ring, and what was published so far is renumbered
        after ``top``."""
        early = [attrs.evolve(e, seq=e.seq + top) for e in self._ring]
        self._ring.clear()
        self._ring.extend(stored)
        self._ring.extend(early)
        self._seq += top
