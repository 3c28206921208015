"""The one Server-Sent Events response of the dashboard and of the agents' UIs.

Every event is one frame::

    id: <seq>
    event: <kind>
    data: <one line of JSON>

(a browser's ``EventSource`` delivers it to the listener of ``<kind>`` and sends the last
``id`` back as ``Last-Event-ID`` when it reconnects). A comment (``: heartbeat``) goes out
after :data:`HEARTBEAT_SECONDS` without an event, so proxies keep the connection open and a
dead client is noticed. The stream ends when the subscription is cut off for falling behind
(the client reconnects and catches up); when the client leaves, the frame generator and so
its subscription are closed at once, not whenever the garbage collector gets to them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

import trio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

HEARTBEAT_SECONDS: Final = 15.0
HEARTBEAT: Final = ": heartbeat\n\n"
HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class Numbered(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def kind(self) -> str: ...


E = TypeVar("E", bound=Numbered)


def frame(kind: str, data: Mapping[str, Any], seq: int) -> str:
    """One event frame: ``id: <seq>\\nevent: <kind>\\ndata: <json>\\n\\n``."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {seq}\nevent: {kind}\ndata: {payload}\n\n"


class EventStream(Generic[E]):
    """The frames of one subscriber: ``first`` frames, the ``backlog``, then every event of
    ``channel`` newer than the last one sent, with heartbeats in between."""

    def __init__(
        self,
        channel: trio.MemoryReceiveChannel[E],
        render: Callable[[E], Mapping[str, Any]],
        *,
        sent: int,
        backlog: Iterable[E] = (),
        first: Iterable[str] = (),
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._channel = channel
        self._render = render
        self._sent = sent
        self._backlog = list(backlog)
        self._first = list(first)
        self._heartbeat = heartbeat

    def _frame(self, event: E) -> str:
        self._sent = event.seq
        return frame(event.kind, self._render(event), event.seq)

    async def frames(self) -> AsyncGenerator[str, None]:
        channel = self._channel
        try:
            for text in self._first:
                yield text
            for event in self._backlog:
                yield self._frame(event)
            while True:
                with trio.move_on_after(self._heartbeat) as idle:
                    event = await channel.receive()
                if idle.cancelled_caught:
                    yield HEARTBEAT
                    continue
                if event.seq > self._sent:
                    yield self._frame(event)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return  # cut off for falling behind: the client reconnects with Last-Event-ID
        finally:
            channel.close()


class EventStreamResponse(StreamingResponse):
    """Closes its frame generator (and so the subscription) as soon as the client is gone.

    A disconnect cancels the streaming task while the generator waits at a ``yield``;
    without this it would only be finalized by the garbage collector.
    """

    def __init__(self, frames: AsyncGenerator[str, None]) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=HEADERS)
        self._frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True):
                await self._frames.aclose()


def event_stream_response(
    channel: trio.MemoryReceiveChannel[E],
    render: Callable[[E], Mapping[str, Any]],
    *,
    sent: int,
    backlog: Iterable[E] = (),
    first: Iterable[str] = (),
    heartbeat: float = HEARTBEAT_SECONDS,
) -> EventStreamResponse:
    """The SSE response for one subscriber (see :class:`EventStream`); ``render`` gives the
    JSON object of an event's ``data`` line."""
    stream = EventStream(
        channel, render, sent=sent, backlog=backlog, first=first, heartbeat=heartbeat
    )
    return EventStreamResponse(stream.frames())
