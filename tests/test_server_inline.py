"""The reader task answers short requests itself; order, hang-ups and drain still hold.

On real unix socket pairs: requests pipelined around a long-poll are carried out and
answered in the order sent (a long-poll that needs no wait by the reader too), a client
that goes away while its request is being answered gets its reply counted as lost (and
nothing it pipelined is carried out), and a drain that begins during a request lets its
reply (and those of the requests already read) out before the connection is closed.
"""

from __future__ import annotations

import trio
import trio.testing

from hyperhive.protocol import Reply, Request, StatusReply
from hyperhive.server import Connection, Drain, Principal, SocketKind, handle_connection
from tests.socket_pairs import read_line, socket_pair

AGENT = Principal(SocketKind.AGENT, "alice")


class RecordingEndpoint:
    """Answers each request with ``unread`` = its position; ``recv`` and ``recent`` wait for
    :attr:`release` (``recv`` as a long-poll, ``recent`` as a slow short request)."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []
        self.lost: list[tuple[str, Reply]] = []
        self.closed_calls = 0
        self.waiting = trio.Event()
        self.release = trio.Event()
        self.ready = False
        self.broken = False

    async def dispatch(self, conn: Connection, request: Request) -> Reply:
        self.dispatched.append(request.CMD)
        position = len(self.dispatched)
        if request.CMD in ("recv", "recent"):
            self.waiting.set()
            await self.release.wait()
        return StatusReply(unread=position)

    def blocks(self, request: Request) -> bool:
        return request.CMD == "recv"

    async def dispatch_now(self, conn: Connection, request: Request) -> Reply | None:
        """A ``recv`` answered without waiting while :attr:`ready` says so (messages waiting);
        one that raises while :attr:`broken` (the loop then answers it)."""
        if self.broken:
            raise RuntimeError("no look now")
        if not self.ready:
            return None
        self.dispatched.append("recv-now")
        return StatusReply(unread=len(self.dispatched))

    async def reply_lost(self, conn: Connection, request: Request, reply: Reply) -> None:
        self.lost.append((request.CMD, reply))

    def closed(self, conn: Connection) -> None:
        self.closed_calls += 1


async def _eof(stream: trio.SocketStream) -> None:
    with trio.fail_after(10):
        assert await stream.receive_some(65536) == b""


STATUS = b'{"cmd":"status"}\n'
RECV = b'{"cmd":"recv","wait_seconds":30}\n'


async def test_requests_around_a_long_poll_are_answered_in_the_order_sent() -> None:
    server, client = await socket_pair()
    endpoint = RecordingEndpoint()
    buf = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, server, AGENT, endpoint)
        await client.send_all(STATUS + RECV + STATUS + b"not json\n" + STATUS)
        assert await read_line(client, buf) == {"ok": True, "unread": 1}
        await endpoint.waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        # Nothing behind the parked long-poll was carried out or answered.
        assert endpoint.dispatched == ["status", "recv"]
        assert b"\n" not in buf
        await client.send_all(STATUS)  # read meanwhile, queued behind the others
        await trio.testing.wait_all_tasks_blocked()
        assert endpoint.dispatched == ["status", "recv"]
        endpoint.release.set()
        assert await read_line(client, buf) == {"ok": True, "unread": 2}
        assert await read_line(client, buf) == {"ok": True, "unread": 3}
        assert (await read_line(client, buf))["error"].startswith("request is not valid JSON")
        assert await read_line(client, buf) == {"ok": True, "unread": 4}
        assert await read_line(client, buf) == {"ok": True, "unread": 5}
        # The loop is idle again: the next request is answered as well.
        await client.send_all(STATUS)
        assert await read_line(client, buf) == {"ok": True, "unread": 6}
        await client.aclose()
    assert endpoint.dispatched == ["status", "recv", "status", "status", "status", "status"]
    assert endpoint.lost == [] and endpoint.closed_calls == 1


async def test_a_long_poll_that_needs_no_wait_is_answered_in_order_by_the_reader() -> None:
    server, client = await socket_pair()
    endpoint = RecordingEndpoint()
    buf = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, server, AGENT, endpoint)
        endpoint.ready = True
        await client.send_all(STATUS + RECV + STATUS)
        for position in (1, 2, 3):
            assert await read_line(client, buf) == {"ok": True, "unread": position}
        assert endpoint.dispatched == ["status", "recv-now", "status"]
        # Nothing waiting: the long-poll goes to the request loop, which parks it.
        endpoint.ready = False
        await client.send_all(RECV + STATUS)
        await endpoint.waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert endpoint.dispatched[3:] == ["recv"] and b"\n" not in buf
        endpoint.release.set()
        assert await read_line(client, buf) == {"ok": True, "unread": 4}
        assert await read_line(client, buf) == {"ok": True, "unread": 5}
        # A look that fails: the loop carries the request out as usual.
        endpoint.broken = True
        await client.send_all(RECV)
        assert await read_line(client, buf) == {"ok": True, "unread": 6}
        assert endpoint.dispatched[5:] == ["recv"]
        await client.aclose()
    assert endpoint.lost == [] and endpoint.closed_calls == 1


async def test_a_client_gone_during_its_request_loses_the_reply_and_nothing_more_runs() -> None:
    server, client = await socket_pair()
    endpoint = RecordingEndpoint()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle_connection, server, AGENT, endpoint)
            await client.send_all(b'{"cmd":"recent"}\n' + STATUS)
            await endpoint.waiting.wait()  # the slow request is being answered
            await client.aclose()
            endpoint.release.set()
    # handle_connection returned: the reply was lost, the pipelined status never ran.
    assert endpoint.lost == [("recent", StatusReply(unread=1))]
    assert endpoint.dispatched == ["recent"]
    assert endpoint.closed_calls == 1


async def test_a_drain_during_a_request_lets_its_reply_out_then_closes() -> None:
    server, client = await socket_pair()
    endpoint = RecordingEndpoint()
    drain = Drain()
    buf = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: handle_connection(server, AGENT, endpoint, drain=drain))
            await client.send_all(STATUS)
            assert await read_line(client, buf) == {"ok": True, "unread": 1}
            await client.send_all(b'{"cmd":"recent"}\n' + STATUS)
            await endpoint.waiting.wait()
            drain.begin()
            await trio.testing.wait_all_tasks_blocked()
            assert endpoint.closed_calls == 0  # the request in hand is not cut short
            endpoint.release.set()
            assert await read_line(client, buf) == {"ok": True, "unread": 2}
            # What was read before the drain is answered; then the connection is closed.
            assert await read_line(client, buf) == {"ok": True, "unread": 3}
            await _eof(client)
        await client.aclose()
    assert endpoint.dispatched == ["status", "recent", "status"]
    assert endpoint.lost == [] and endpoint.closed_calls == 1


async def test_a_drain_while_idle_closes_the_connection() -> None:
    server, client = await socket_pair()
    endpoint = RecordingEndpoint()
    drain = Drain()
    buf = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: handle_connection(server, AGENT, endpoint, drain=drain))
            await client.send_all(STATUS)
            assert await read_line(client, buf) == {"ok": True, "unread": 1}
            drain.begin()
            await _eof(client)
        await client.aclose()
    assert endpoint.dispatched == ["status"] and endpoint.closed_calls == 1
