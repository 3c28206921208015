"""Failure domains: one agent's broken part is that agent's error, never the daemon's.

End to end, with real daemon processes and the process backend: an agent whose applied
``agent.toml`` is broken crashes, and the daemon is restarted while it is broken; the
daemon keeps running and starting, the agent shows the error, the others keep their
processes. In process: an exception inside one runner, one agent's socket server or the
retention loop is logged, shown (agent warning and a message to the manager, or the
daemon's ``problems``), and the part is restarted while everything else keeps serving.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.errors import ClientError
from hyperhive.events import EventHub
from hyperhive.registry import AgentState
from hyperhive.runtime import find
from hyperhive.server import SocketBudget
from hyperhive.store import DatabaseFailed, open_database
from hyperhive.supervision import Backoff, Problems, supervise
from hyperhive.supervisor import Daemon, Hive, open_hive
from tests.conftest import (
    DaemonProcess,
    connect_agent,
    git,
    kill_leftovers,
    make_paths,
    process_alive,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(REPO / "tests" / "payloads" / "fake_harness.py"))
BROKEN_TOML = 'model = "haiku"\nthis is not toml ]]\n'


class ProcessDaemon(DaemonProcess):
    """``hyperhive run`` with the process backend and the fake harness as the payload."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("external")] = "process"
        return command


@pytest.fixture
async def process_daemon(short_tmp: Path, nursery: trio.Nursery) -> AsyncIterator[ProcessDaemon]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYPERHIVE_HARNESS_COMMAND": " ".join(FAKE)}
    env.pop("NOTIFY_SOCKET", None)
    d = ProcessDaemon(make_paths(short_tmp), env)
    try:
        await d.start(nursery)
        yield d
    finally:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True), trio.fail_after(15):
                await d.proc.wait()
        kill_leftovers(short_tmp)


async def agents(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    reply = await d.call({"cmd": "list"})
    assert reply["ok"], reply
    return {a["name"]: a for a in reply["agents"]}


async def wait_agent(d: DaemonProcess, name: str, **want: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def matches() -> bool:
        nonlocal found
        found = (await agents(d))[name]
        return all(found[k] == v for k, v in want.items())

    await wait_until(matches, limit=30, interval=0.05)
    return found


def break_applied_config(d: DaemonProcess, name: str) -> None:
    """A corrupted applied config, as a failed state would leave it (committed there)."""
    applied = d.paths.applied_dir(name)
    (applied / "agent.toml").write_text(BROKEN_TOML)
    git(applied, "commit", "-qam", "corrupted")


async def kill_payload(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(10):
        while process_alive(pid):  # noqa: ASYNC110 - another process's exit, seen through /proc
            await trio.sleep(0.01)


async def test_broken_applied_config_is_the_agents_error_not_the_daemons(
    process_daemon: ProcessDaemon, nursery: trio.Nursery
) -> None:
    d = process_daemon
    for name in ("alice", "bob", "carol"):
        assert (await d.call({"cmd": "spawn", "name": name}))["ok"]
    for name in ("alice", "bob", "carol"):
        await wait_agent(d, name, state="running", harness_connected=True)
    before = await agents(d)
    bob_pid = before["bob"]["pid"]

    # A running agent's config breaks, then its payload dies: a crash like any other.
    break_applied_config(d, "alice")
    await kill_payload((await agents(d))["alice"]["pid"])
    alice = await wait_agent(d, "alice", state="stopped", transient=None)
    assert "agent.toml" in (alice["warning"] or ""), alice
    assert d.proc is not None and d.proc.returncode is None, "the daemon ended"
    status = await d.call({"cmd": "status"})
    assert status["ok"] and status["agents"] == 4
    others = await agents(d)
    assert others["bob"]["pid"] == bob_pid and others["bob"]["state"] == "running"
    assert others["carol"] == before["carol"]
    # Starting it says why it cannot run; the daemon stays up.
    refused = await d.call({"cmd": "start", "name": "alice"})
    assert not refused["ok"] and "agent.toml" in refused["error"]

    # Now the daemon restarts while a running agent's config is broken and its payload died
    # meanwhile: the daemon must start anyway, and re-adopt the others.
    break_applied_config(d, "carol")
    carol_pid = (await agents(d))["carol"]["pid"]
    assert await d.stop() == 0
    await kill_payload(carol_pid)
    assert process_alive(bob_pid), "agents outlive the daemon"
    await d.start(nursery)
    carol = await wait_agent(d, "carol", state="stopped", transient=None)
    assert "agent.toml" in (carol["warning"] or ""), carol
    after = await agents(d)
    assert after["bob"]["pid"] == bob_pid and after["bob"]["state"] == "running"
    assert after["alice"]["state"] == "stopped" and "agent.toml" in after["alice"]["warning"]
    assert (await d.call({"cmd": "status"}))["ok"]
    # The manager heard about both crashes.
    async with await connect_agent(d.paths, "manager") as manager:
        reply = await manager.request({"cmd": "recv", "max": 32})
    crashed = {
        json.loads(m["body"].partition(" ")[2])["agent"]
        for m in reply["messages"]
        if m["body"].startswith("container_crash ")
    }
    assert crashed == {"alice", "carol"}


# ---------------------------------------------------------------- in process


def container_config(root: Path, **kwargs: Any) -> Config:
    return Config(
        paths=make_paths(root),
        backend="process",
        harness_command=FAKE,
        stop_agents_on_exit=True,
        **kwargs,
    )


async def wait_for(hive: Hive, condition: Any, limit: float = 20) -> None:
    """Until ``condition()`` holds, re-checked on every event of the daemon."""
    events = hive.events.subscribe()
    try:
        with trio.fail_after(limit):
            while not condition():
                await events.receive()
    finally:
        events.close()


def running(hive: Hive, name: str) -> bool:
    record = hive.registry.get(name)
    return record.state == AgentState.RUNNING and record.transient is None


async def manager_messages(hive: Hive, kind: str) -> list[dict[str, Any]]:
    out = []
    for m in await hive.broker.recv("manager", limit=32):
        if m.body.startswith(kind + " "):
            out.append(json.loads(m.body.partition(" ")[2]))
    return out


async def reported(hive: Hive, kind: str) -> list[dict[str, Any]]:
    """The manager's ``kind`` messages, once there is one (a report shows the warning
    first, then commits its message: a test that saw the warning waits for the message)."""
    found: list[dict[str, Any]] = []

    async def some() -> bool:
        found.extend(await manager_messages(hive, kind))
        return bool(found)

    await wait_until(some, limit=10)
    return found


async def test_a_failing_runner_is_shown_reported_and_restarted(short_tmp: Path) -> None:
    async with open_hive(container_config(short_tmp)) as hive:
        await hive.spawn("alice")
        await hive.spawn("bob")
        await wait_for(hive, lambda: running(hive, "alice") and running(hive, "bob"))
        bob_pid = hive.registry.get("bob").pid
        runner = hive.containers.runner("alice")

        async def broken_exit_handler(exit_status: int | None = None) -> None:
            del runner._on_unexpected_exit  # the next exit goes to the real handler
            raise RuntimeError("injected bug")

        runner._on_unexpected_exit = broken_exit_handler  # type: ignore[method-assign]
        first = hive.registry.get("alice").pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_for(hive, lambda: "injected bug" in (hive.registry.get("alice").warning or ""))
        # The manager is told, the daemon and bob go on.
        errors = await reported(hive, "agent_error")
        assert [e["agent"] for e in errors] == ["alice"]
        assert "RuntimeError: injected bug" in errors[0]["error"]
        assert hive.registry.get("bob").pid == bob_pid and running(hive, "bob")
        async with await connect_agent(hive.config.paths, "bob") as bob:
            assert (await bob.request({"cmd": "status"}))["ok"]
        # Restarted with backoff: the new runner sees the dead payload as a crash and
        # starts alice again.
        await wait_for(
            hive, lambda: running(hive, "alice") and hive.registry.get("alice").pid != first
        )
        assert hive.containers.runner("alice") is runner
        assert [c["agent"] for c in await reported(hive, "container_crash")] == ["alice"]


async def test_a_failing_socket_server_is_restarted_and_the_others_keep_serving(
    hive: Hive,
    inproc: Daemon,
) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    paths = hive.config.paths
    # A connection's own failures are contained in that connection (server.py); what can
    # still fail is the server around them: here its bookkeeping when a connection ends.
    real_leave = SocketBudget.leave

    def leave(self: SocketBudget) -> None:
        SocketBudget.leave = real_leave  # type: ignore[method-assign]
        real_leave(self)
        raise RuntimeError("injected bug in alice's socket")

    SocketBudget.leave = leave  # type: ignore[method-assign]
    client = await connect_agent(paths, "alice")
    await client.aclose()  # the connection's end runs the broken code: the server fails
    await wait_for(
        hive, lambda: "alice's socket failed" in (hive.registry.get("alice").warning or "")
    )
    assert "injected bug" in (hive.registry.get("alice").warning or "")
    errors = await reported(hive, "agent_error")
    assert [e["agent"] for e in errors] == ["alice"]
    # Bob's socket and the host socket never stopped.
    async with await connect_agent(paths, "bob") as bob:
        sent = await bob.request({"cmd": "send", "to": "alice", "body": "still here"})
        assert sent["ok"], sent
    async with await Client.connect(paths.host_socket) as host:
        assert (await host.request({"cmd": "status"}))["ok"]
    # Alice's socket comes back after the backoff, with her message waiting.

    async def alice_back() -> bool:
        try:
            async with await connect_agent(paths, "alice") as alice:
                reply = await alice.request({"cmd": "recv", "max": 1})
        except (OSError, ClientError):
            return False
        return bool(reply["ok"] and reply["messages"][0]["body"] == "still here")

    await wait_until(alice_back, limit=10, interval=0.1)


async def test_a_failing_retention_loop_is_a_daemon_problem_in_status(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def broken_sweep(self: Hive) -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"injected sweep bug {calls}")

    monkeypatch.setattr(Hive, "sweep_events", broken_sweep)
    async with (
        open_hive(Config(paths=make_paths(short_tmp), backend="external")) as hive,
        await Client.connect(hive.config.paths.host_socket) as host,
    ):

        async def shown() -> bool:
            status = await host.request({"cmd": "status"})
            return any("the retention loop failed" in p for p in status["problems"])

        await wait_until(shown, limit=10)
        # Restarted with backoff (1 s): it ran again; the rest kept serving.

        async def ran_again() -> bool:
            return calls >= 2

        await wait_until(ran_again, limit=10)
        assert (await host.request({"cmd": "list"}))["ok"]


async def test_supervise_restarts_with_backoff_and_clears_the_problem(
    autojump_clock: trio.abc.Clock,
) -> None:
    problems = Problems(EventHub())
    starts: list[float] = []

    async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) <= 3:
            raise ValueError(f"failure {len(starts)}")
        await trio.sleep(1000)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: supervise(
                "flaky",
                flaky,
                report=problems.reporter("flaky"),
                backoff=Backoff(first=1, limit=3, reset_after=50),
                task_status=task_status,
            )
        )
        await trio.sleep(10)
        gaps = [round(b - a) for a, b in itertools.pairwise(starts)]
        assert gaps == [1, 2, 3]  # doubling, capped at the limit
        assert problems.list() == ["flaky failed: ValueError: failure 3; restarted with backoff"]
        await trio.sleep(60)  # healthy for longer than reset_after
        assert problems.list() == []
        nursery.cancel_scope.cancel()


async def test_only_a_failing_database_ends_the_tree(short_tmp: Path) -> None:
    """A failure of the file itself (here: the transaction taken away under the writer)
    is fatal: callers learn it, the writer stops, and supervise does not restart over it."""

    restarts = 0

    async def part(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal restarts
        restarts += 1
        task_status.started()
        await db.transaction(lambda conn: conn.execute("ROLLBACK"))

    with pytest.raises(BaseExceptionGroup) as caught:
        async with (
            open_database(short_tmp / "t.sqlite", synchronous="FULL", migrations=[]) as db,
            trio.open_nursery() as nursery,
        ):
            problems = Problems(EventHub())
            await nursery.start(
                lambda task_status: supervise(
                    "part", part, report=problems.reporter("part"), task_status=task_status
                )
            )
            await trio.sleep_forever()
    failed = find(caught.value, DatabaseFailed)
    assert isinstance(failed, DatabaseFailed) and "t.sqlite failed" in str(failed)
    assert restarts == 1 and problems.list() == []


async def test_a_failing_database_ends_the_daemon_in_one_line(daemon: DaemonProcess) -> None:
    """The one failure the daemon does not survive: its database (here its write lock is
    held by someone else past the 5 s busy timeout). One line on exit, status 1."""
    lines_before = len(daemon.output)
    locker = sqlite3.connect(daemon.paths.broker_db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        reply = await daemon.call({"cmd": "send", "to": "manager", "body": "x"})
        assert not reply["ok"] and "database failed" in reply["error"], reply
        assert daemon.proc is not None
        with trio.fail_after(15):
            assert await daemon.proc.wait() == 1  # it stops by itself
    finally:
        locker.close()
    said = [line for line in daemon.output[lines_before:] if line.startswith("hyperhive:")]
    assert len(said) == 1 and said[0].startswith(f"hyperhive: {daemon.paths.broker_db} failed:")
    assert not any("Traceback" in line for line in daemon.output)
