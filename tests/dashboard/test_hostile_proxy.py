"""The ``/agent/<name>/`` proxy never follows a symlink the agent put at its UI socket.

The agent writes its run dir (``/run/hive`` in its container): a ``ui.sock`` that is a
symlink to another unix socket of the host would make the daemon, as root, connect there
and pass the operator's requests on. A real HTTP server on a host socket plays the target.
"""

from __future__ import annotations

from pathlib import Path

import trio

from hyperhive.hive import Hive
from hyperhive.supervisor import Daemon

from .test_agent_proxy import FakeUi, get


async def test_a_symlinked_ui_socket_is_not_followed(
    inproc: Daemon, hive: Hive, nursery: trio.Nursery, short_tmp: Path
) -> None:
    await hive.spawn("alice")
    target = FakeUi()
    host_socket = short_tmp / "some-host-service.sock"
    await nursery.start(target.serve, host_socket)
    hive.config.paths.ui_socket("alice").symlink_to(host_socket)

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
