"""Decisions survive ``kill -9``: after a restart the audit trail matches what exists.

The daemon runs as a real process (external backend); the operator acts over host.sock,
the manager over its own socket. ``HYPERHIVE_TEST_CRASH_AT`` (the test hook in
:mod:`hyperhive.journal`) kills the daemon at a named step; the random test kills it at
arbitrary moments of a stream of approvals, destroys and purges.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from hyperhive.config import Paths
from hyperhive.errors import ClientError
from tests.conftest import (
    DaemonProcess,
    git,
    kill_leftovers,
    make_paths,
    process_alive,
    propose_config,
    wait_until,
)

NAMES = ("a0", "a1", "a2")
FAKE = Path(__file__).resolve().parent / "payloads" / "fake_harness.py"


def _env(crash_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("HYPERHIVE_TEST_CRASH_AT", None)
    if crash_at is not None:
        env["HYPERHIVE_TEST_CRASH_AT"] = crash_at
    return env


async def _ok(client: Client, payload: dict[str, Any]) -> dict[str, Any]:
    reply = await client.request(payload)
    assert reply.get("ok"), reply
    return reply


async def _crashes(daemon: DaemonProcess, payload: dict[str, Any]) -> None:
    """Send ``payload``; the daemon must die of SIGKILL at the crash point on the way."""
    try:
        async with await daemon.host() as host:
            reply = await host.request(payload)
    except (ClientError, OSError, trio.BrokenResourceError):
        reply = None
    assert daemon.proc is not None
    with trio.fail_after(15):
        code = await daemon.proc.wait()
    assert code == -signal.SIGKILL, (reply, "".join(daemon.output))


def _db_rows(paths: Paths, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{paths.broker_db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def _agents(daemon: DaemonProcess) -> tuple[set[str], set[str]]:
    """(live, tombstones) as the operator sees them, without the manager."""
    listed = await daemon.call({"cmd": "list"})
    dead = await daemon.call({"cmd": "tombstones"})
    tombstones = {t["name"] for t in dead["tombstones"]}
    live = {a["name"] for a in listed["agents"]} - tombstones - {"manager"}
    return live, tombstones


def _whole(paths: Paths, name: str) -> bool:
    """Every directory and repo of a created agent is there."""
    agent_dir = paths.agent_dir(name)
    return all(
        p.exists()
        for p in (
            paths.proposed_dir(name) / ".git",
            agent_dir / "claude",
            agent_dir / "state",
            paths.applied_dir(name) / ".git",
            paths.applied_dir(name) / "agent.toml",
        )
    )


def _dirs_on_disk(paths: Paths) -> set[str]:
    found: set[str] = set()
    for parent in (paths.agent_dir("x").parent, paths.applied_dir("x").parent):
        if parent.exists():
            found |= {p.name for p in parent.iterdir()}
    return found - {"manager"}


async def check_consistent(daemon: DaemonProcess) -> None:
    """The audit trail tells the truth about the registry and the disk."""
    paths = daemon.paths
    live, tombstones = await _agents(daemon)
    known = live | tombstones
    assert _db_rows(paths, "SELECT * FROM operations") == []
    for name in known:
        assert _whole(paths, name), f"{name} is registered but not whole"
    assert _dirs_on_disk(paths) <= known, "directories left without a registry row"
    approvals = _db_rows(paths, "SELECT * FROM approvals ORDER BY id")
    for row in approvals:
        if row["status"] == "failed":
            assert row["note"] == "agent destroyed", dict(row)
        if row["kind"] == "spawn" and row["status"] == "pending":
            assert row["agent"] not in live, f"pending spawn of live {row['agent']}: {dict(row)}"
    approved = {r["agent"] for r in approvals if r["kind"] == "spawn" and r["status"] == "approved"}
    assert known <= approved, "an agent exists that no approval created"


async def _approve_spawn(daemon: DaemonProcess, name: str) -> int:
    async with await daemon.host() as host:
        request = await _ok(host, {"cmd": "request_spawn", "name": name})
        approval_id: int = request["approval"]["id"]
        reply = await _ok(host, {"cmd": "approve", "id": approval_id})
        assert reply["approval"]["status"] == "approved"
        return approval_id


def _status(paths: Paths, approval_id: int) -> sqlite3.Row:
    (row,) = _db_rows(paths, f"SELECT * FROM approvals WHERE id = {approval_id}")
    return row


class _Daemon(DaemonProcess):
    def command(self) -> list[str]:
        return [*super().command()[:-1], "off"]  # no dashboard: faster restarts


@pytest.fixture
async def crashable(short_tmp: Path, nursery: trio.Nursery) -> Any:
    d = _Daemon(make_paths(short_tmp), _env())
    yield d
    if d.proc is not None and d.proc.returncode is None:
        d.proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.fail_after(15):
            await d.proc.wait()


async def _restart(daemon: DaemonProcess, nursery: trio.Nursery, crash_at: str | None) -> None:
    """(Re)start the daemon (stopping it cleanly first if it runs), crashing at ``crash_at``."""
    if daemon.proc is not None and daemon.proc.returncode is None:
        assert await daemon.stop() == 0
    daemon.env = _env(crash_at)
    await daemon.start(nursery)


@pytest.mark.parametrize(
    "point", ["approve-claimed", "spawn-prepared", "spawn-registered", "approve-executed"]
)
async def test_spawn_approval_interrupted_is_finished_at_start(
    crashable: DaemonProcess, nursery: trio.Nursery, point: str
) -> None:
    await _restart(crashable, nursery, point)
    async with await crashable.host() as host:
        request = await _ok(host, {"cmd": "request_spawn", "name": "alice"})
    approval_id = request["approval"]["id"]
    await _crashes(crashable, {"cmd": "approve", "id": approval_id})
    if point == "spawn-registered":  # the agent showed the spawning transient when it died
        (row,) = _db_rows(crashable.paths, "SELECT * FROM agents WHERE name = 'alice'")
        assert (row["state"], row["transient"]) == ("registered", "spawning")

    await _restart(crashable, nursery, None)
    assert _status(crashable.paths, approval_id)["status"] == "approved"
    live, _ = await _agents(crashable)
    assert live == {"alice"}
    listed = await crashable.call({"cmd": "list"})
    assert [a["transient"] for a in listed["agents"] if a["name"] == "alice"] == [None]
    assert crashable.paths.agent_socket("alice").exists()
    await check_consistent(crashable)
    again = await crashable.call({"cmd": "approve", "id": approval_id})
    assert not again["ok"] and "already approved" in again["error"]


@pytest.mark.parametrize("point", ["approve-claimed", "spawn-registered", "approve-executed"])
async def test_revive_interrupted_is_finished_at_start(
    crashable: DaemonProcess, nursery: trio.Nursery, point: str
) -> None:
    await _restart(crashable, nursery, None)
    await _approve_spawn(crashable, "alice")
    async with await crashable.host() as host:
        await _ok(host, {"cmd": "destroy", "name": "alice"})
        revive = await _ok(host, {"cmd": "revive", "name": "alice"})
    await _restart(crashable, nursery, point)
    await _crashes(crashable, {"cmd": "approve", "id": revive["approval"]["id"]})

    await _restart(crashable, nursery, None)
    assert _status(crashable.paths, revive["approval"]["id"])["status"] == "approved"
    assert await _agents(crashable) == ({"alice"}, set())
    await check_consistent(crashable)


async def _pending_apply_commit(daemon: DaemonProcess, agent: str) -> tuple[int, str]:
    """The manager proposes a config change for ``agent`` through its own socket."""
    sha = propose_config(daemon.paths, agent, 'model = "sonnet"\n')
    async with await Client.connect(
        daemon.paths.agent_socket("manager"), hello_role="mcp"
    ) as manager:
        reply = await _ok(
            manager, {"cmd": "request_apply_commit", "agent": agent, "commit_ref": sha}
        )
    return reply["approval"]["id"], sha


@pytest.mark.parametrize("point", ["destroy-claimed"])
async def test_destroy_interrupted_is_finished_at_start(
    crashable: DaemonProcess, nursery: trio.Nursery, point: str
) -> None:
    await _restart(crashable, nursery, None)
    await _approve_spawn(crashable, "alice")
    proposal_id, _ = await _pending_apply_commit(crashable, "alice")
    await _restart(crashable, nursery, point)
    await _crashes(crashable, {"cmd": "destroy", "name": "alice"})

    await _restart(crashable, nursery, None)
    assert await _agents(crashable) == (set(), {"alice"})
    row = _status(crashable.paths, proposal_id)
    assert (row["status"], row["note"]) == ("failed", "agent destroyed")
    assert not crashable.paths.agent_socket("alice").exists()
    await check_consistent(crashable)


async def test_purge_interrupted_half_way_is_finished_at_start(
    crashable: DaemonProcess, nursery: trio.Nursery
) -> None:
    await _restart(crashable, nursery, None)
    await _approve_spawn(crashable, "alice")
    async with await crashable.host() as host:
        await _ok(host, {"cmd": "destroy", "name": "alice"})
    await _restart(crashable, nursery, "purge-removing")
    await _crashes(crashable, {"cmd": "destroy", "name": "alice", "purge": True})
    # Killed between the two directories: half of the tree is still there.
    assert not crashable.paths.agent_dir("alice").exists()
    assert crashable.paths.applied_dir("alice").exists()

    await _restart(crashable, nursery, None)
    assert await _agents(crashable) == (set(), set())
    assert not crashable.paths.applied_dir("alice").exists()
    await check_consistent(crashable)
    # The name is free again, and a new alice starts from scratch.
    await _approve_spawn(crashable, "alice")
    await check_consistent(crashable)


@pytest.mark.parametrize("point", ["apply-commit-approved", "approve-executed"])
async def test_apply_commit_interrupted_is_finished_at_start(
    crashable: DaemonProcess, nursery: trio.Nursery, point: str
) -> None:
    await _restart(crashable, nursery, None)
    await _approve_spawn(crashable, "alice")
    proposal_id, sha = await _pending_apply_commit(crashable, "alice")
    await _restart(crashable, nursery, point)
    await _crashes(crashable, {"cmd": "approve", "id": proposal_id})

    await _restart(crashable, nursery, None)
    row = _status(crashable.paths, proposal_id)
    assert (row["status"], row["note"]) == ("approved", None)
    applied = crashable.paths.applied_dir("alice")
    assert git(applied, "rev-parse", "main") == sha
    assert git(applied, "rev-parse", f"deployed/{proposal_id}^{{commit}}") == sha
    assert (applied / "agent.toml").read_text() == 'model = "sonnet"\n'
    await check_consistent(crashable)


class _ProcessDaemon(_Daemon):
    """Agents run as real processes (the process backend) with a fake harness."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("external")] = "process"
        return [*command, "--harness-command", f"{sys.executable} {FAKE}"]


@pytest.mark.parametrize("point", ["destroy-claimed", "destroy-stopped"])
async def test_destroy_of_a_running_agent_interrupted_is_finished_at_start(
    short_tmp: Path, nursery: trio.Nursery, point: str
) -> None:
    daemon = _ProcessDaemon(make_paths(short_tmp), _env())
    try:
        await _restart(daemon, nursery, None)
        await _approve_spawn(daemon, "alice")

        async def alice_pid() -> int | None:
            listed = await daemon.call({"cmd": "list"})
            (alice,) = [a for a in listed["agents"] if a["name"] == "alice"]
            return alice["pid"] if alice["state"] == "running" else None

        await wait_until(alice_pid)
        pid = await alice_pid()
        assert pid is not None
        proposal_id, _ = await _pending_apply_commit(daemon, "alice")
        await _restart(daemon, nursery, point)
        await _crashes(daemon, {"cmd": "destroy", "name": "alice"})

        await _restart(daemon, nursery, None)
        assert await _agents(daemon) == (set(), {"alice"})
        row = _status(daemon.paths, proposal_id)
        assert (row["status"], row["note"]) == ("failed", "agent destroyed")
        assert not process_alive(pid), "the destroyed agent's process still runs"
        await check_consistent(daemon)
    finally:
        if daemon.proc is not None and daemon.proc.returncode is None:
            daemon.proc.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True), trio.fail_after(15):
                await daemon.proc.wait()
        kill_leftovers(short_tmp)


async def _workload(daemon: DaemonProcess, rng: random.Random) -> None:
    """Operator actions, one after another, until the daemon dies under them."""
    # One connection, closed whatever happens (the hello is inside the ``async with``).
    async with await Client.connect(daemon.paths.host_socket) as host:
        await host.request({"cmd": "hello", "role": "cli", "protocol": 1})
        while True:
            listed = await host.request({"cmd": "list"})
            dead = await host.request({"cmd": "tombstones"})
            tombstones = {t["name"] for t in dead["tombstones"]}
            live = {a["name"] for a in listed["agents"]} - tombstones - {"manager"}
            pending = (await host.request({"cmd": "pending"})).get("approvals", [])
            choice = rng.random()
            if pending and choice < 0.3:
                await host.request({"cmd": "approve", "id": rng.choice(pending)["id"]})
            elif live and choice < 0.5:
                await host.request({"cmd": "destroy", "name": rng.choice(sorted(live))})
            elif tombstones and choice < 0.65:
                await host.request(
                    {"cmd": "destroy", "name": rng.choice(sorted(tombstones)), "purge": True}
                )
            elif tombstones and choice < 0.8:
                reply = await host.request(
                    {"cmd": "revive", "name": rng.choice(sorted(tombstones))}
                )
                if reply.get("ok"):
                    await host.request({"cmd": "approve", "id": reply["approval"]["id"]})
            else:
                reply = await host.request({"cmd": "request_spawn", "name": rng.choice(NAMES)})
                if reply.get("ok"):
                    await host.request({"cmd": "approve", "id": reply["approval"]["id"]})


async def test_kill_9_at_random_moments_keeps_the_audit_trail_true(
    crashable: DaemonProcess, nursery: trio.Nursery
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for iteration in range(20):
        await _restart(crashable, nursery, None)
        try:
            await check_consistent(crashable)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, after kill {iteration}: {exc}") from exc
        delay = rng.uniform(0.05, 0.6)

        async def work() -> None:
            # Until the daemon is killed under a request.
            with contextlib.suppress(ClientError, OSError, trio.BrokenResourceError):
                await _workload(crashable, rng)

        async with trio.open_nursery() as inner:
            inner.start_soon(work)
            await trio.sleep(delay)  # the random moment of the kill, not a synchronisation
            os.kill(crashable.pid, signal.SIGKILL)
            assert crashable.proc is not None
            with trio.fail_after(15):
                await crashable.proc.wait()
    await _restart(crashable, nursery, None)
    await check_consistent(crashable)
