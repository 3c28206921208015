"""Several nodes of one hive on this machine: ``hyperhive run`` processes, each with its own
state and run dirs and ``--node``, sharing one PostgreSQL database (the tests' server)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from hyperhive.protocol import Spawn
from tests.conftest import DaemonProcess, make_paths


def node_name(node: DaemonProcess) -> str:
    """The ``--node`` a daemon process of :func:`node_process` runs as."""
    return node.args[node.args.index("--node") + 1]


async def spawn_on(node: DaemonProcess, name: str) -> None:
    """The operator spawns ``name`` on ``node``, through that node's host socket."""
    async with await node.host() as host:
        await host.call(Spawn(name, node=node_name(node)))


def node_process(base: Path, name: str, url: str, *, args: Sequence[str] = ()) -> DaemonProcess:
    """A daemon process for node ``name`` (not started), its dirs under ``base/name``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYPERHIVE_DATABASE": url}
    env.pop("NOTIFY_SOCKET", None)
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(make_paths(root), env, args=["--node", name, *args])


@asynccontextmanager
async def running_nodes(
    base: Path,
    url: str,
    names: Sequence[str],
    nursery: trio.Nursery,
    *,
    args: Sequence[str] = (),
) -> AsyncIterator[dict[str, DaemonProcess]]:
    """Start ``names`` one after the other (the first creates the manager); at the end,
    stop those still running (SIGKILL if SIGTERM is not enough)."""
    nodes = {name: node_process(base, name, url, args=args) for name in names}
    try:
        for node in nodes.values():
            await node.start(nursery)
        yield nodes
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes.values():
                if node.proc is not None and node.proc.returncode is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in nodes.values():
                if node.proc is not None and node.proc.returncode is None:
                    with trio.move_on_after(15):
                        await node.proc.wait()
                    if node.proc.returncode is None:
                        node.proc.send_signal(signal.SIGKILL)
                        await node.proc.wait()
