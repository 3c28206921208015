"""The daemon's requests to an agent's UI socket (the ``/agent/<name>/`` proxy and the
host verb ``compact``) never follow a symlink the agent put there, and hear a UI that
answers before reading the request.

The agent writes its run dir (``/run/hive`` in its container): a ``ui.sock`` that is a
symlink to another unix socket of the host would make the daemon, as root, connect there
and pass the operator's requests on. A real HTTP server on a host socket plays the target.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from hyperhive.client import Client
from hyperhive.hive import Hive
from hyperhive.supervisor import Daemon

from .test_agent_proxy import FakeUi, get


async def planted_link(hive: Hive, nursery: trio.Nursery, short_tmp: Path) -> FakeUi:
    """alice's ``ui.sock`` made a symlink to a server on another host socket (returned)."""
    await hive.spawn("alice")
    target = FakeUi()
    host_socket = short_tmp / "some-host-service.sock"
    await nursery.start(target.serve, host_socket)
    hive.config.paths.ui_socket("alice").symlink_to(host_socket)
    return target


async def test_a_symlinked_ui_socket_is_not_followed(
    inproc: Daemon, hive: Hive, nursery: trio.Nursery, short_tmp: Path
) -> None:
    target = await planted_link(hive, nursery, short_tmp)

    for path in ("/agent/alice/api/state", "/agent/alice/events/stream", "/agent/alice/"):
        response = await get(inproc, path)
        assert response.status == 502, (path, response)
        assert b"not a socket" in response.body
    assert target.requests == []  # nothing reached the host's socket
    assert hive.registry.ui_url("alice") is None  # and the dashboard offers no link


async def test_the_real_ui_socket_still_answers(
    inproc: Daemon, hive: Hive, nursery: trio.Nursery
) -> None:
    await hive.spawn("alice")
    ui = FakeUi()
    await nursery.start(ui.serve, hive.config.paths.ui_socket("alice"))
    assert hive.registry.ui_url("alice") == "/agent/alice/"
    response = await get(inproc, "/agent/alice/api/state")
    assert response.status == 200, response
    assert [r[0] for r in ui.requests] == ["GET"]


async def operator(hive: Hive, payload: dict[str, object]) -> dict[str, Any]:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        return await op.request(payload)


async def test_compact_does_not_follow_a_symlinked_ui_socket(
    hive: Hive, nursery: trio.Nursery, short_tmp: Path
) -> None:
    target = await planted_link(hive, nursery, short_tmp)
    reply = await operator(hive, {"cmd": "compact", "name": "alice"})
    assert not reply["ok"] and "not a socket" in reply["error"], reply
    assert target.requests == []


async def answer_on_connect(path: Path, status: int, *, task_status: trio.TaskStatus[None]) -> None:
    """A UI that answers each connection at once, without reading its request, and closes
    (as the harness does when it acts on a request's head alone)."""
    body = b'{"compact_pending": true}'
    head = (
        f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    with trio.socket.socket(socket.AF_UNIX) as listener:
        await listener.bind(str(path))
        listener.listen(16)
        task_status.started()
        while True:
            conn, _ = await listener.accept()
            with conn:
                await conn.send(head.encode() + body)


async def test_a_ui_that_answers_before_reading_the_request_is_heard(
    inproc: Daemon, hive: Hive, nursery: trio.Nursery
) -> None:
    await hive.spawn("alice")
    await nursery.start(answer_on_connect, hive.config.paths.ui_socket("alice"), 200)
    for _ in range(20):  # each write of the request may meet the closed socket
        reply = await operator(hive, {"cmd": "compact", "name": "alice"})
        assert reply["ok"], reply
        response = await get(inproc, "/agent/alice/api/state")
        assert response.status == 200 and response.json() == {"compact_pending": True}
