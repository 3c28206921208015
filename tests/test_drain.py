"""Stopping the daemon drains its sockets: no new connections, requests in hand finish.

On SIGTERM the host socket and every agent's socket stop listening at once, a connection
waiting for its next request is closed, a parked long-poll returns what there is, and a
request being carried out gets up to the grace period to send its reply; what still runs
then is cancelled (hypercorn's graceful shutdown, for our sockets). The signal itself, with
a daemon process: tests/test_supervisor.py::test_signal_stops_gracefully.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.errors import ConnectionLost
from hyperhive.protocol import HostSend, Reply, Request
from hyperhive.server import Connection
from hyperhive.supervisor import Daemon, open_daemon
from tests.conftest import connect_agent, make_paths, wait_until


def hold(daemon: Daemon, kind: type[Request]) -> tuple[trio.Event, trio.Event]:
    """Make ``kind`` requests wait for ``release`` inside the daemon: a request in hand."""
    entered, release = trio.Event(), trio.Event()
    real = daemon.api.dispatch

    async def dispatch(conn: Connection, request: Request) -> Reply:
        if isinstance(request, kind):
            entered.set()
            await release.wait()
        return await real(conn, request)

    daemon.api.dispatch = dispatch  # type: ignore[method-assign]
    return entered, release


async def test_a_send_in_hand_finishes_while_the_sockets_stop(inproc: Daemon) -> None:
    hive, paths = inproc.hive, inproc.hive.config.paths
    await hive.spawn("alice")
    entered, release = hold(inproc, HostSend)
    idle = await Client.connect(paths.host_socket, hello_role="cli")
    sender = await Client.connect(paths.host_socket, hello_role="cli")
    replies: dict[str, Any] = {}
    drained = trio.Event()
    async with idle, sender, trio.open_nursery() as nursery:

        async def send() -> None:
            replies["send"] = await sender.request({"cmd": "send", "to": "alice", "body": "late"})

        async def drain() -> None:
            await inproc.drain(grace=30)
            drained.set()

        nursery.start_soon(send)
        await entered.wait()
        nursery.start_soon(drain)
        await inproc.sockets.stopping.wait()

        async def gone() -> bool:
            return not paths.host_socket.exists() and not paths.agent_socket("alice").exists()

        # No socket listens any more; the idle connection is closed.
        await wait_until(gone)
        with pytest.raises(OSError):
            await Client.connect(paths.host_socket)
        with pytest.raises((ConnectionLost, trio.BrokenResourceError)):
            await idle.request({"cmd": "status"})
        assert not drained.is_set()  # the send in hand is still being waited for
        release.set()
        with trio.fail_after(5):
            await drained.wait()
    assert replies["send"]["ok"], replies
    [message] = [m for m in await hive.broker.recent("alice", 10) if m.body == "late"]
    assert message.id == replies["send"]["id"]


async def test_a_parked_long_poll_returns_its_reply_instead_of_a_hang_up(inproc: Daemon) -> None:
    hive, paths = inproc.hive, inproc.hive.config.paths
    await hive.spawn("alice")
    replies: dict[str, Any] = {}
    async with await connect_agent(paths, "alice") as alice, trio.open_nursery() as nursery:

        async def recv() -> None:
            replies["recv"] = await alice.request({"cmd": "recv", "wait_seconds": 120})

        nursery.start_soon(recv)
        await hive.broker.wait_parked("alice")
        with trio.fail_after(5):
            await inproc.drain(grace=30)
    assert replies["recv"] == {"ok": True, "messages": []}
    assert hive.broker.parked() == 0


async def test_a_request_past_the_grace_is_cancelled_and_the_tree_ends(short_tmp: Path) -> None:
    grace = 0.5
    paths = make_paths(short_tmp)
    replies: dict[str, Any] = {}
    async with trio.open_nursery() as outer:
        async with open_daemon(Config(paths=paths, backend="external")) as daemon:
            entered, _never = hold(daemon, HostSend)
            sender = await Client.connect(paths.host_socket, hello_role="cli")

            async def send() -> None:
                try:
                    replies["send"] = await sender.request(
                        {"cmd": "send", "to": "manager", "body": "stuck"}
                    )
                except (ConnectionLost, trio.BrokenResourceError) as exc:
                    replies["send"] = exc

            outer.start_soon(send)
            await entered.wait()
            started = trio.current_time()
            await daemon.drain(grace)
            waited = trio.current_time() - started
            assert grace <= waited < grace + 1
        # Leaving open_daemon cancels what was still running: the request in hand too.
        assert trio.current_time() - started < grace + 1
    assert isinstance(replies["send"], ConnectionLost | trio.BrokenResourceError)
    await sender.aclose()
