"""The runner's lifecycle and crash rules, on the in-memory backend and trio's clock.

A real in-process daemon (real sqlite, real sockets, real broker) whose containers are a
:class:`~hyperhive.containers.FakeBackend`: a test makes a payload exit (a crash) or keeps
it running, and trio's ``MockClock`` (``daemon_clock``) with a wall clock that follows
it (:class:`~hyperhive.clocks.TrioWallClock`) let backoffs of seconds to minutes pass in
no real time. What only real processes can show (pidfd waits, nspawn, re-adoption of a
real process across daemon restarts) stays in ``tests/test_containers.py``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperhive.clocks import TrioWallClock
from hyperhive.config import RESTART_LOOP_WINDOW_SECONDS, Config
from hyperhive.containers import FakeBackend, FakeHandle
from hyperhive.containers._policy import LOOP_CRASHES
from hyperhive.errors import RequestRefused
from hyperhive.events import Event
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import make_paths

#: The waits before restarts 1..4 of a payload that always crashes (then it is a loop).
BACKOFFS = [1.0, 2.0, 4.0, 8.0]


@asynccontextmanager
async def fake_hive(
    root: Path, backend: FakeBackend, *, stop: bool = True, database: str | None = None
) -> AsyncIterator[Hive]:
    config = Config(
        paths=make_paths(root),
        database=database,
        backend="process",  # the name agents record; the fake stands in for it
        synchronous="NORMAL",
        stop_agents_on_exit=stop,
        container_backends={"process": backend},
        wall_clock=TrioWallClock(),
    )
    async with open_hive(config) as hive:
        yield hive


def settled(hive: Hive, name: str, *states: AgentState) -> bool:
    record = hive.registry.get(name)
    return record.state in states and record.transient is None


async def wait_state(hive: Hive, name: str, *states: AgentState) -> None:
    events = hive.events.subscribe()
    while not settled(hive, name, *states):
        await events.receive()
    events.close()


class Crashes:
    """Every ``container_crash`` event, with trio's time when it was published."""

    def __init__(self, hive: Hive) -> None:
        self._events = hive.events.subscribe()
        self.seen: list[tuple[float, Event]] = []

    async def next(self, name: str) -> Event:
        while True:
            event = await self._events.receive()
            if event.kind == "container_crash" and event.data["name"] == name:
                self.seen.append((trio.current_time(), event))
                return event

    def close(self) -> None:
        self._events.close()


async def manager_crash_messages(hive: Hive, name: str) -> list[dict[str, object]]:
    out = []
    for m in await hive.broker.recv("manager", limit=32):
        kind, _, payload = m.body.partition(" ")
        if m.from_ == "system" and kind == "container_crash":
            data = json.loads(payload)
            if data["agent"] == name:
                out.append(data)
    return out


async def running(hive: Hive, backend: FakeBackend, name: str, starts: int) -> FakeHandle:
    handle = await backend.wait_starts(name, starts)
    await wait_state(hive, name, AgentState.RUNNING)
    return handle


async def test_start_kill_restart_rebuild_destroy(
    short_tmp: Path, daemon_clock: trio.testing.MockClock
) -> None:
    backend = FakeBackend(warning="no writable cgroup v2 hierarchy")
    async with fake_hive(short_tmp, backend) as hive:
        await hive.spawn("alice")
        first = await running(hive, backend, "alice", 1)
        record = hive.registry.get("alice")
        assert record.pid == first.pid and record.start_ticks == first.record.start_ticks
        assert record.warning == "no writable cgroup v2 hierarchy"  # Started.warning

        await hive.lifecycle("kill", "alice")
        assert first.stopped and not first.running
        assert hive.registry.get("alice").state == AgentState.STOPPED
        assert hive.registry.get("alice").pid is None
        with pytest.raises(RequestRefused, match="not running"):
            await hive.lifecycle("kill", "alice")

        await hive.lifecycle("start", "alice")
        second = backend.current("alice")
        assert second is not first and second.running
        assert hive.registry.get("alice").pid == second.pid
        with pytest.raises(RequestRefused, match="already running"):
            await hive.lifecycle("start", "alice")

        await hive.lifecycle("restart", "alice")
        third = backend.current("alice")
        assert second.stopped and not second.running and third.running

        await hive.lifecycle("rebuild", "alice")
        fourth = backend.current("alice")
        assert third.stopped and fourth.running and len(backend.starts_of("alice")) == 4
        assert hive.registry.get("alice").transient is None

        # Rebuilding a stopped agent starts nothing: the new config applies at its next start.
        await hive.lifecycle("kill", "alice")
        await hive.lifecycle("rebuild", "alice")
        assert hive.registry.get("alice").state == AgentState.STOPPED
        assert len(backend.starts_of("alice")) == 4
        await hive.lifecycle("start", "alice")
        fifth = backend.current("alice")

        await hive.destroy("alice", purge=False)
        assert fifth.stopped and not fifth.running
        assert hive.registry.get("alice").state == AgentState.DESTROYED
        # Stopping is not crashing: nothing was reported, nothing restarts.
        assert await manager_crash_messages(hive, "alice") == []
        await trio.sleep(100)  # longer than any backoff that could be pending
        assert len(backend.starts_of("alice")) == 5


async def test_transients_are_cleared_on_every_exit_path(
    short_tmp: Path, daemon_clock: trio.testing.MockClock
) -> None:
    backend = FakeBackend()
    async with fake_hive(short_tmp, backend) as hive:
        await hive.spawn("alice")
        first = await running(hive, backend, "alice", 1)
        transients: list[object] = []
        events = hive.events.subscribe()

        # A restart whose start is refused: the old payload is gone, the error reaches the
        # operator, and "restarting" does not stay on the agent.
        backend.refuse_next_start("alice", "the image is broken")
        with pytest.raises(RequestRefused, match="the image is broken"):
            await hive.lifecycle("restart", "alice")
        assert first.stopped and hive.registry.get("alice").transient is None

        # A refused operator start.
        backend.refuse_next_start("alice", "still broken")
        with pytest.raises(RequestRefused, match="still broken"):
            await hive.lifecycle("start", "alice")
        assert hive.registry.get("alice").transient is None

        # A payload that ignores SIGTERM: the kill waits the grace period (virtually).
        await hive.lifecycle("start", "alice")
        stubborn = backend.current("alice")
        stubborn.ignore_sigterm = True
        before = trio.current_time()
        await hive.lifecycle("kill", "alice")
        assert trio.current_time() - before >= 10.0 and stubborn.exit_status == -9
        assert hive.registry.get("alice").transient is None

        # A crash restart whose start is refused: stopped, with the reason as its warning.
        await hive.lifecycle("start", "alice")
        backend.refuse_next_start("alice", "disk on fire")
        crashes = Crashes(hive)
        backend.current("alice").exit(1)
        await crashes.next("alice")
        await wait_state(hive, "alice", AgentState.STOPPED)
        record = hive.registry.get("alice")
        assert record.warning == "disk on fire" and record.transient is None
        crashes.close()

        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            if event.kind == "agent_changed" and event.data["name"] == "alice":
                transients.append(event.data["transient"])
        events.close()
        # Each path showed its transient while it ran, and cleared it after.
        assert {"restarting", "starting", "stopping"} <= set(transients)
        changes = [t for i, t in enumerate(transients) if i == 0 or t != transients[i - 1]]
        assert changes[-1] is None
        assert all(None in pair for pair in itertools.pairwise(changes)), changes


async def test_a_crash_is_reported_to_the_manager_and_restarted_after_backoff(
    short_tmp: Path, daemon_clock: trio.testing.MockClock
) -> None:
    backend = FakeBackend()
    async with fake_hive(short_tmp, backend) as hive:
        await hive.spawn("alice")
        first = await running(hive, backend, "alice", 1)
        crashes = Crashes(hive)
        first.exit(3, output="Traceback: boom")
        event = await crashes.next("alice")
        crashed_at = trio.current_time()
        assert event.data["exit_status"] == 3 and event.data["crash_loop"] is False
        assert event.data["restart_in"] == 1.0
        [message] = await manager_crash_messages(hive, "alice")
        assert message["exit_status"] == 3 and message["crash_loop"] is False
        assert message["restart_in_seconds"] == 1.0
        assert "Traceback: boom" in str(message["stderr_tail"])
        # Counted in the ledger (hyperhive_agent_crashes_total), durable across restarts.
        assert await hive.ledger.crashes() == {"alice": 1}

        second = await running(hive, backend, "alice", 2)
        assert second is not first and second.running
        # Not before the backoff (virtual time), and by a start notice that says why.
        assert backend.starts_of("alice")[1].at - crashed_at >= 1.0
        assert hive.registry.get("alice").crash_streak == 1
        inbox = [m.body for m in await hive.broker.recv("alice", limit=32)]
        assert any("restarted by hyperhive after a crash" in body for body in inbox)

        # The operator's kill during a backoff cancels the pending restart.
        second.exit(3)
        assert (await crashes.next("alice")).data["restart_in"] == 2.0
        assert await hive.ledger.crashes() == {"alice": 2}
        await hive.lifecycle("kill", "alice")
        assert hive.registry.get("alice").state == AgentState.STOPPED
        await trio.sleep(100)
        assert len(backend.starts_of("alice")) == 2
        assert hive.registry.get("alice").state == AgentState.STOPPED
        crashes.close()


async def test_five_crashes_in_fifteen_minutes_is_a_crash_loop(
    short_tmp: Path, daemon_clock: trio.testing.MockClock
) -> None:
    backend = FakeBackend()
    backend.exit_at_start("alice", 3, output="boom")
    real_start = time.monotonic()
    async with fake_hive(short_tmp, backend, stop=False) as hive:
        crashes = Crashes(hive)
        virtual_start = trio.current_time()
        await hive.spawn("alice")
        await wait_state(hive, "alice", AgentState.CRASH_LOOP)
        virtual = trio.current_time() - virtual_start
        starts = [s.at for s in backend.starts_of("alice")]
        assert len(starts) == LOOP_CRASHES
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        # Each restart waited its backoff on trio's clock: 1, 2, 4, 8 s of virtual time
        # (exactly, unless a slow database round trip let the clock jump to another timer).
        assert all(gap >= backoff for gap, backoff in zip(gaps, BACKOFFS, strict=True)), gaps
        # Within the rule's window; more than the backoffs when a slow round trip let the
        # clock jump to another timer (the 30 s housekeeping, the space monitor) meanwhile.
        assert sum(BACKOFFS) <= virtual < RESTART_LOOP_WINDOW_SECONDS, gaps
        record = hive.registry.get("alice")
        assert len(record.crash_times) == LOOP_CRASHES and record.last_exit == 3
        messages = await manager_crash_messages(hive, "alice")
        assert [m["crash_loop"] for m in messages] == [False] * 4 + [True]
        assert [m["restart_in_seconds"] for m in messages] == [*BACKOFFS, None]
        assert hive.containers.runner("alice")._restart_at is None
        # It stays down: long after the next backoff (16 s) would have passed, no start.
        await trio.sleep(100)
        assert len(backend.starts_of("alice")) == LOOP_CRASHES
        crashes.close()
    # Well under a second of real time in practice; loose, as a sanity check.
    assert time.monotonic() - real_start < 5.0

    # The counters survive a daemon restart; the operator's start clears them.
    backend.keep_running("alice")
    async with fake_hive(short_tmp, backend) as hive:
        await wait_state(hive, "alice", AgentState.CRASH_LOOP)
        assert len(hive.registry.get("alice").crash_times) == LOOP_CRASHES
        await hive.lifecycle("start", "alice")
        record = hive.registry.get("alice")
        assert record.state == AgentState.RUNNING and record.crash_times == ()
        assert record.crash_streak == 0 and backend.current("alice").running


async def test_ten_minutes_up_resets_the_backoff(
    short_tmp: Path, daemon_clock: trio.testing.MockClock
) -> None:
    backend = FakeBackend()
    async with fake_hive(short_tmp, backend) as hive:
        await hive.spawn("alice")
        crashes = Crashes(hive)
        delays = []
        for starts in (1, 2, 3):
            handle = await running(hive, backend, "alice", starts)
            handle.exit(1)
            delays.append((await crashes.next("alice")).data["restart_in"])
        assert delays == [1.0, 2.0, 4.0]  # crashing right after each start: doubling
        handle = await running(hive, backend, "alice", 4)
        await trio.sleep(601)  # up for more than 10 min (virtual)
        handle.exit(1)
        event = await crashes.next("alice")
        assert event.data["restart_in"] == 1.0 and event.data["crash_loop"] is False
        assert hive.registry.get("alice").crash_streak == 1
        crashes.close()


async def test_daemon_restart_readopts_a_payload_or_counts_its_death(
    short_tmp: Path, daemon_clock: trio.testing.MockClock
) -> None:
    backend = FakeBackend()
    async with fake_hive(short_tmp, backend, stop=False) as hive:
        await hive.spawn("alice")
        await hive.spawn("bob")
        alice = await running(hive, backend, "alice", 1)
        bob = await running(hive, backend, "bob", 1)
    # The daemon is gone; its payloads run on.
    assert alice.running and alice.closed and not alice.stopped
    bob.exit(137)  # bob dies while no daemon watches
    async with fake_hive(short_tmp, backend) as hive:
        crashes = Crashes(hive)
        assert alice.record in backend.adoptions and not alice.closed
        assert hive.registry.get("alice").pid == alice.pid
        assert hive.registry.get("alice").state == AgentState.RUNNING
        assert len(backend.starts_of("alice")) == 1  # adopted, not started again
        # bob's death while away was a crash like any other: reported, then restarted.
        assert hive.registry.get("bob").crash_streak == 1
        [message] = await manager_crash_messages(hive, "bob")
        assert message["crash_loop"] is False and message["restart_in_seconds"] == 1.0
        await running(hive, backend, "bob", 2)
        # Adopted means supervised: alice's exit now is noticed.
        alice.exit(2)
        event = await crashes.next("alice")
        assert event.data["exit_status"] == 2
        await running(hive, backend, "alice", 2)
        crashes.close()
