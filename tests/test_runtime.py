"""The infrastructure shared by the daemon and the harness (hyperhive.runtime), in isolation;
the dashboard's and the agent UI's streams are tested end to end in tests/dashboard/test_stream.py
and tests/harness/test_web_ui.py."""

from __future__ import annotations

import json

import attrs
import pytest
import trio

from hyperhive.runtime import Backoff, describe, find, innermost
from hyperhive.runtime.sse import HEARTBEAT, EventStream, frame


@attrs.frozen
class Ev:
    seq: int
    kind: str
    n: int


def render(e: Ev) -> dict[str, int]:
    return {"seq": e.seq, "n": e.n}


def test_one_frame_format() -> None:
    text = frame("turn_end", {"ok": True, "note": "é\nx"}, 42)
    head, data = text.split("data: ")
    assert head == "id: 42\nevent: turn_end\n"
    assert data.endswith("\n\n") and "\n" not in data[:-2]  # one data line, JSON escapes
    assert json.loads(data) == {"ok": True, "note": "é\nx"}


async def test_a_stream_sends_first_backlog_then_live_events_with_heartbeats() -> None:
    send, receive = trio.open_memory_channel[Ev](8)
    backlog = [Ev(3, "a", 3), Ev(4, "b", 4)]
    stream = EventStream(receive, render, sent=2, backlog=backlog, first=[": hi\n\n"])
    frames = stream.frames()
    got = [await frames.__anext__() for _ in range(3)]
    assert got == [": hi\n\n", frame("a", {"seq": 3, "n": 3}, 3), frame("b", {"seq": 4, "n": 4}, 4)]
    send.send_nowait(Ev(4, "b", 4))  # already sent (subscribed before the backlog was read)
    send.send_nowait(Ev(5, "c", 5))
    assert await frames.__anext__() == frame("c", {"seq": 5, "n": 5}, 5)
    await frames.aclose()
    # Closing the frames (the client left) closes the subscription: the publisher sees it.
    with pytest.raises(trio.BrokenResourceError):
        send.send_nowait(Ev(6, "d", 6))


async def test_an_idle_stream_sends_heartbeats_and_ends_when_cut_off() -> None:
    send, receive = trio.open_memory_channel[Ev](8)
    frames = EventStream(receive, render, sent=0, heartbeat=0.01).frames()
    assert await frames.__anext__() == HEARTBEAT
    await send.aclose()  # the hub cut the subscriber off for falling behind
    with pytest.raises(StopAsyncIteration):
        await frames.__anext__()


def test_backoff_doubles_up_to_its_limit() -> None:
    retry = Backoff(first=0.5, limit=3).start()
    assert [retry.next() for _ in range(5)] == [0.5, 1, 2, 3, 3]
    assert Backoff().after(40) == 60


def test_exception_groups_are_unwrapped_for_the_reason() -> None:
    inner = OSError("address in use")
    group = BaseExceptionGroup("x", [BaseExceptionGroup("y", [inner])])
    assert innermost(group) is inner
    assert describe(group) == "OSError: address in use"
    two = ExceptionGroup("both", [ValueError("a"), KeyError("b")])
    assert innermost(two) is two
    assert describe(RuntimeError()) == "RuntimeError"


def test_find_looks_through_nested_task_groups() -> None:
    target = KeyError("the one")
    group = BaseExceptionGroup(
        "outer", [ValueError("a"), BaseExceptionGroup("inner", [OSError("b"), target])]
    )
    assert find(group, KeyError) is target
    assert find(group, (LookupError, RuntimeError)) is target
    assert find(group, RuntimeError) is None
    assert find(target, KeyError) is target
