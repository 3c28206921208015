"""What an operator sees on the first runs: the backend in use, and ``make run`` started again.

``make run`` runs the daemon with ``--stop-agents-on-exit``: Ctrl-C stops the agents, and
the next ``make run`` must start them again (the manager included), while an agent the
operator killed stays stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.conftest import (
    DaemonProcess,
    kill_leftovers,
    make_paths,
    process_alive,
    wait_until,
)
from tests.test_first_run import PAYLOAD, _daemon

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn


async def _running(daemon: DaemonProcess, name: str) -> int:
    """The agent's pid once the daemon reports it running."""
    found: list[int] = []

    async def up() -> bool:
        for agent in (await daemon.call({"cmd": "list"}))["agents"]:
            if agent["name"] == name and agent["state"] == "running" and agent["pid"]:
                found.append(agent["pid"])
                return True
        return False

    await wait_until(up, limit=30)
    return found[-1]


async def test_status_names_the_backend_in_use(short_tmp: Path, nursery: trio.Nursery) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERHIVE_", "ANTHROPIC_", "CLAUDE"))
    }
    env |= {"PYTHONUNBUFFERED": "1", "HYPERHIVE_HARNESS_COMMAND": PAYLOAD}
    env.pop("NOTIFY_SOCKET", None)

    class AutoDaemon(DaemonProcess):
        def command(self) -> list[str]:
            argv = super().command()
            argv[argv.index("external")] = "auto"
            return [*argv, "--stop-agents-on-exit"]

    daemon = AutoDaemon(make_paths(short_tmp), env)
    try:
        await daemon.start(nursery)
        await _running(daemon, "manager")
        manager = (await daemon.call({"cmd": "list"}))["agents"][0]
        status = await daemon.call({"cmd": "status"})
        # What auto chose (nspawn or process), as the ready line and the agents say.
        assert status["backend"] == manager["backend"] != "auto"
        assert any(f"backend {manager['backend']}," in line for line in daemon.output)
    finally:
        await daemon.stop()
        kill_leftovers(short_tmp)


async def test_agents_stopped_by_the_daemons_exit_start_with_the_next_daemon(
    short_tmp: Path, nursery: trio.Nursery
) -> None:
    daemon = _daemon(short_tmp, None)  # --stop-agents-on-exit, as make run
    try:
        await daemon.start(nursery)
        await daemon.call({"cmd": "spawn", "name": "alice"})
        await daemon.call({"cmd": "spawn", "name": "bob"})
        first = {name: await _running(daemon, name) for name in ("manager", "alice", "bob")}
        reply = await daemon.call({"cmd": "kill", "name": "bob"})
        assert reply["ok"], reply
        assert await daemon.stop() == 0  # SIGTERM, like Ctrl-C's SIGINT
        assert not any(process_alive(pid) for pid in first.values())

        await daemon.start(nursery)
        again = {name: await _running(daemon, name) for name in ("manager", "alice")}
        assert all(again[name] != first[name] for name in again)
        bob = next(a for a in (await daemon.call({"cmd": "list"}))["agents"] if a["name"] == "bob")
        assert bob["state"] == "stopped" and bob["pid"] is None
    finally:
        await daemon.stop()
        kill_leftovers(short_tmp)
