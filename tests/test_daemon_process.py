"""The daemon as a real process: wake latency, idle CPU, kill -9 durability, restarts."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest
import trio

from hyperhive.client import Client
from hyperhive.protocol import Recv, Send, Spawn
from tests.conftest import DaemonProcess


async def spawn_agents(daemon: DaemonProcess, names: list[str]) -> None:
    async with await daemon.host() as host:
        for name in names:
            await host.call(Spawn(name))


@pytest.mark.serial  # asserts a latency: runs alone (docs/development.md)
async def test_parked_recv_returns_within_milliseconds_of_the_send(
    daemon: DaemonProcess,
) -> None:
    await spawn_agents(daemon, ["alice", "bob"])
    async with (
        await Client.connect(daemon.paths.agent_socket("alice")) as alice,
        await Client.connect(daemon.paths.agent_socket("bob")) as bob,
    ):
        latencies = []
        for i in range(20):
            received = trio.Event()
            sent_at: list[float] = []

            async def park(
                expected: str = f"ping {i}",
                done: trio.Event = received,
                sent_at: list[float] = sent_at,
            ) -> None:
                reply = await bob.call(Recv(wait_seconds=180))
                assert [m.body for m in reply.messages] == [expected]  # type: ignore[attr-defined]
                latencies.append(time.perf_counter() - sent_at[0])
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(park)
                await daemon.wait_parked(1)
                sent_at.append(time.perf_counter())
                await alice.call(Send("bob", f"ping {i}"))
                with trio.fail_after(5):
                    await received.wait()
    latencies.sort()
    # Well under the 180 s wait: the send woke it. p50 in milliseconds, generous for CI.
    assert latencies[len(latencies) // 2] < 0.05, latencies
    assert latencies[-1] < 1.0, latencies


async def test_fifty_parked_receivers_cost_no_cpu(daemon: DaemonProcess) -> None:
    names = [f"a{i}" for i in range(50)]
    await spawn_agents(daemon, names)
    clients = [await Client.connect(daemon.paths.agent_socket(n)) for n in names]
    try:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.call, Recv(wait_seconds=180))
            await daemon.wait_parked(50)
            cpu0, wall0 = daemon.cpu_seconds(), time.monotonic()
            await trio.sleep(3.0)  # the measurement window itself, not a synchronisation
            cpu = daemon.cpu_seconds() - cpu0
            wall = time.monotonic() - wall0
            nursery.cancel_scope.cancel()
    finally:
        for client in clients:
            await client.aclose()
    assert cpu / wall < 0.01, f"daemon used {cpu:.3f} s CPU in {wall:.2f} s with 50 parked"


async def test_kill_9_during_a_burst_loses_no_acknowledged_send(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    await spawn_agents(daemon, ["alice", "bob"])
    acknowledged: list[int] = []
    enough = trio.Event()

    async def burst(client: Client, worker: int) -> None:
        for i in range(1000):
            try:
                reply = await client.call(Send("bob", f"w{worker}-{i}"))
            except Exception:
                return  # the daemon died under us; what was acknowledged must survive
            acknowledged.append(reply.id)  # type: ignore[attr-defined]
            if len(acknowledged) >= 1000:
                enough.set()

    clients = [await Client.connect(daemon.paths.agent_socket("alice")) for _ in range(4)]
    try:
        async with trio.open_nursery() as senders:
            for w, client in enumerate(clients):
                senders.start_soon(burst, client, w)
            with trio.fail_after(60):
                await enough.wait()
            # Kill while the four senders are still mid-burst.
            os.kill(daemon.pid, signal.SIGKILL)
    finally:
        for client in clients:
            await client.aclose()
    assert await daemon.proc.wait() == -signal.SIGKILL  # type: ignore[union-attr]
    snapshot = list(acknowledged)
    assert len(snapshot) >= 1000

    # Every acknowledged id is in the database file...
    conn = sqlite3.connect(daemon.paths.broker_db)
    stored = {row[0] for row in conn.execute("SELECT id FROM messages WHERE recipient = 'bob'")}
    conn.close()
    assert set(snapshot) <= stored

    # ...and deliverable after a restart, in order.
    await daemon.start(nursery)
    delivered: list[int] = []
    async with await Client.connect(daemon.paths.agent_socket("bob")) as bob:
        while True:
            reply = await bob.call(Recv(max=32))
            batch = [m.id for m in reply.messages]  # type: ignore[attr-defined]
            if not batch:
                break
            delivered += batch
    assert delivered == sorted(delivered)
    assert set(snapshot) <= set(delivered)


async def test_restart_keeps_agents_and_sockets(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    await spawn_agents(daemon, ["alice"])
    async with await Client.connect(daemon.paths.agent_socket("alice")) as alice:
        await alice.call(Send("operator", "before restart"))
    assert await daemon.stop(signal.SIGTERM) == 0
    assert not daemon.paths.agent_socket("alice").exists()
    await daemon.start(nursery)
    reply = await daemon.call({"cmd": "list"})
    assert [a["name"] for a in reply["agents"]] == ["manager", "alice"]
    inbox = await daemon.call({"cmd": "inbox"})
    assert [m["body"] for m in inbox["messages"]] == ["before restart"]
