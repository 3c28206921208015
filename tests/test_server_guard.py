"""The per-connection guard of the socket server, on real unix socket pairs.

Whatever goes wrong while serving one connection (a bug in a handler, in encoding, in the
close hook) is logged, answered ``internal error`` where a reply is due, and ends at most
that connection: nothing but cancellation leaves :func:`handle_connection`.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from hyperhive.config import MAX_LINE_BYTES
from hyperhive.protocol import Reply, Request, StatusReply
from hyperhive.protocol import Status as AgentStatus
from hyperhive.server import (
    Connection,
    Principal,
    SocketBudget,
    SocketKind,
    SocketLimits,
    handle_connection,
)
from tests.socket_pairs import read_line, socket_pair

AGENT = Principal(SocketKind.AGENT, "alice")


class BuggyEndpoint:
    """Answers ``status`` with 7 unread; ``ask`` raises, ``recent`` returns junk."""

    def __init__(self, *, closed_raises: bool = False) -> None:
        self.closed_raises = closed_raises
        self.closed_calls = 0

    async def dispatch(self, conn: Connection, request: Request) -> Reply:
        await trio.lowlevel.checkpoint()
        if isinstance(request, AgentStatus):
            return StatusReply(unread=7)
        if request.CMD == "ask":
            raise RuntimeError("a bug in a handler")
        return object()  # type: ignore[return-value]  # cannot be encoded

    def blocks(self, request: Request) -> bool:
        return False

    async def dispatch_now(self, conn: Connection, request: Request) -> Reply | None:
        return None

    async def reply_lost(self, conn: Connection, request: Request, reply: Reply) -> None:
        raise AssertionError("not expected here")

    def closed(self, conn: Connection) -> None:
        self.closed_calls += 1
        if self.closed_raises:
            raise RuntimeError("a bug in the close hook")


async def test_handler_bugs_are_answered_and_the_connection_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, client = await socket_pair()
    endpoint = BuggyEndpoint()
    buf = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, server, AGENT, endpoint)
        with caplog.at_level(logging.ERROR, logger="hyperhive.server"):
            await client.send_all(b'{"cmd":"ask","question":"q"}\n')
            reply = await read_line(client, buf)
            assert reply["ok"] is False
            assert reply["error"] == "internal error: RuntimeError: a bug in a handler"
            await client.send_all(b'{"cmd":"recent"}\n')
            reply = await read_line(client, buf)
            assert reply["ok"] is False and reply["error"].startswith("internal error")
            await client.send_all(b'{"cmd":"status"}\n')
            assert await read_line(client, buf) == {"ok": True, "unread": 7}
        assert "a bug in a handler" in caplog.text and "Traceback" in caplog.text
        await client.aclose()
    assert endpoint.closed_calls == 1


async def test_a_failing_close_hook_does_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    server, client = await socket_pair()
    endpoint = BuggyEndpoint(closed_raises=True)
    await client.aclose()
    with caplog.at_level(logging.ERROR, logger="hyperhive.server"):
        await handle_connection(server, AGENT, endpoint)  # must return, not raise
    assert "a bug in the close hook" in caplog.text


async def test_budget_is_shared_by_the_connections_of_a_socket() -> None:
    limits = SocketLimits(max_connections=4, max_buffered_bytes=3000, line_deadline=30)
    budget = SocketBudget(limits)
    endpoint = BuggyEndpoint()
    pairs = [await socket_pair() for _ in range(2)]
    async with trio.open_nursery() as nursery:
        for server, _ in pairs:
            nursery.start_soon(
                lambda s=server: handle_connection(s, AGENT, endpoint, budget=budget)
            )
        (_, first), (_, second) = pairs
        await first.send_all(b"x" * 2000)  # an unfinished line, held
        await trio.testing.wait_all_tasks_blocked()  # the server has read and held it
        assert budget.buffered == 2000
        await second.send_all(b"y" * 2000)  # would make 4000 held on the socket: cut
        reply = await read_line(second, bytearray())
        assert reply["ok"] is False
        assert "already holds 3000 bytes of unfinished requests" in reply["error"]
        # The first connection is unaffected: it finishes its line and gets its answer.
        await first.send_all(b"\n" + b'{"cmd":"status"}\n')
        buf = bytearray()
        assert (await read_line(first, buf))["ok"] is False  # the x line is not JSON
        assert await read_line(first, buf) == {"ok": True, "unread": 7}
        await first.aclose()
        await second.aclose()
    assert budget.buffered == 0


def test_socket_budget_counts_connections_and_bytes() -> None:
    budget = SocketBudget(SocketLimits(max_connections=2, max_buffered_bytes=10))
    assert budget.admit() and budget.admit()
    assert not budget.admit()
    budget.leave()
    assert budget.admit()
    assert budget.resize(0, 6)
    assert not budget.resize(0, 5)  # 11 > 10: refused, nothing counted
    assert budget.resize(6, 10)  # the same holder growing within the bound
    assert budget.resize(10, 0)
    assert budget.statistics() == {"connections": 2, "buffered_bytes": 0}


def test_default_limits_are_generous_for_legit_clients() -> None:
    agent = SocketLimits.for_kind(SocketKind.AGENT)
    host = SocketLimits.for_kind(SocketKind.HOST)
    assert agent.max_connections == 32 and host.max_connections == 64
    # A harness and an MCP server may each send a maximal line at once.
    assert agent.max_buffered_bytes >= 2 * MAX_LINE_BYTES


class ParkingEndpoint(BuggyEndpoint):
    """``recv`` parks until released (a long-poll); everything else is ``status``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.parked = trio.Event()

    async def dispatch(self, conn: Connection, request: Request) -> Reply:
        if request.CMD == "recv":
            self.parked.set()
            await self.release.wait()
        return StatusReply(unread=7)

    def blocks(self, request: Request) -> bool:
        return request.CMD == "recv"


async def test_requests_pipelined_behind_a_long_poll_are_bounded_then_served() -> None:
    server, client = await socket_pair()
    endpoint = ParkingEndpoint()
    budget = SocketBudget(SocketLimits.for_kind(SocketKind.AGENT))
    line = b'{"cmd":"status"}' + b" " * 16 * 1024 + b"\n"  # JSON may carry whitespace
    count = (MAX_LINE_BYTES + 512 * 1024) // len(line)  # 1.5 lines' worth of queued requests
    answered = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: handle_connection(server, AGENT, endpoint, budget=budget))
        await client.send_all(b'{"cmd":"recv","wait_seconds":180}\n')
        await endpoint.parked.wait()
        nursery.start_soon(client.send_all, line * count)  # blocks once the kernel is full
        await trio.testing.wait_all_tasks_blocked()
        # The daemon stopped reading after about one line's worth; the rest waits in the kernel.
        assert MAX_LINE_BYTES <= budget.buffered <= MAX_LINE_BYTES + 64 * 1024
        endpoint.release.set()
        buf = bytearray()
        with trio.fail_after(60):
            while answered < count + 1:
                assert await read_line(client, buf) == {"ok": True, "unread": 7}
                answered += 1
        await client.aclose()
    assert budget.buffered == 0
