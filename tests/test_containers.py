"""Container lifecycle and crash supervision with real payload processes.

The payload is ``tests/payloads/fake_harness.py`` (connects as the harness, then waits), so
these tests exercise the daemon's supervision, not the turn loop. Each scenario runs with
the ``process`` backend, and with ``nspawn`` where it is available (root + systemd-nspawn).
They keep to what only real processes show (pidfd waits, output in the log, re-adoption
across daemon restarts); the runner's rules (backoff, crash loop, streak reset) are tested
on the in-memory backend and trio's clock in ``tests/test_runner_rules.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hyperhive.config import Config
from hyperhive.errors import RequestRefused
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import (
    kill_leftovers,
    make_paths,
    process_alive,
    require_backend,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(REPO / "tests" / "payloads" / "fake_harness.py"))

BACKENDS = ["process", "nspawn"]

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn


def payload_pid(hive: Hive, name: str) -> int:
    """The harness process itself: the payload, or nspawn's child for containers."""
    pid = hive.registry.get(name).pid
    assert pid is not None
    if hive.registry.get(name).backend != "nspawn":
        return pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0])


async def wait_state(hive: Hive, name: str, *states: AgentState, limit: float | None = 20) -> None:
    events = hive.events.subscribe()
    with trio.fail_after(limit if limit is not None else float("inf")):
        while hive.registry.get(name).state not in states or hive.registry.get(name).transient:
            await events.receive()
    events.close()


async def wait_harness(hive: Hive, name: str) -> None:
    events = hive.events.subscribe()
    with trio.fail_after(30):
        while hive.registry.harnesses[name] < 1:
            await events.receive()
    events.close()


def config(root: Path, backend: str, command: tuple[str, ...] = FAKE, stop: bool = True) -> Config:
    return Config(
        paths=make_paths(root), backend=backend, harness_command=command, stop_agents_on_exit=stop
    )


@pytest.fixture(params=BACKENDS)
async def container_hive(request: pytest.FixtureRequest, short_tmp: Path) -> AsyncIterator[Hive]:
    require_backend(request.param)
    async with open_hive(config(short_tmp, request.param)) as hive:
        yield hive


async def system_messages(hive: Hive, name: str) -> list[tuple[str, dict[str, object]]]:
    out = []
    for m in await hive.broker.recv(name, limit=32):
        kind, _, payload = m.body.partition(" ")
        out.append((kind, json.loads(payload) if payload.startswith("{") else {"text": m.body}))
    return out


async def test_spawn_kill_start_restart(container_hive: Hive) -> None:
    hive = container_hive
    await hive.spawn("alice")
    await wait_state(hive, "alice", AgentState.RUNNING)
    await wait_harness(hive, "alice")  # the payload reached its socket from inside
    first = hive.registry.get("alice").pid
    assert process_alive(first)

    await hive.lifecycle("kill", "alice")
    assert hive.registry.get("alice").state == AgentState.STOPPED
    assert not process_alive(first)
    with pytest.raises(RequestRefused, match="not running"):
        await hive.lifecycle("kill", "alice")

    await hive.lifecycle("start", "alice")
    second = hive.registry.get("alice").pid
    assert process_alive(second) and second != first
    with pytest.raises(RequestRefused, match="already running"):
        await hive.lifecycle("start", "alice")

    await hive.lifecycle("restart", "alice")
    third = hive.registry.get("alice").pid
    assert process_alive(third) and not process_alive(second)
    # Each launch's start notice replaced the one not yet taken (the fake harness takes none).
    messages = [m.body for m in await hive.broker.recv("alice", limit=32)]
    assert len(messages) == 1
    assert messages[0].startswith("Start notice: you were restarted by hyperhive")
    assert hive.registry.get("alice").transient is None

    lines = await hive.logs("alice", 50)
    assert any("fake harness alice" in line for line in lines.lines)


async def test_kill_9_is_a_crash_reported_to_the_manager_then_restarted(
    container_hive: Hive,
) -> None:
    hive = container_hive
    await hive.spawn("alice")
    await wait_state(hive, "alice", AgentState.RUNNING)
    await wait_harness(hive, "alice")
    pid = hive.registry.get("alice").pid
    events = hive.events.subscribe()
    os.kill(payload_pid(hive, "alice"), signal.SIGKILL)
    start = trio.current_time()
    with trio.fail_after(5):
        while (event := await events.receive()).kind != "container_crash":
            pass
    assert trio.current_time() - start < 1.0, "the crash was not noticed within a second"
    assert event.data["name"] == "alice" and event.data["crash_loop"] is False
    crash = [p for k, p in await system_messages(hive, "manager") if k == "container_crash"]
    assert len(crash) == 1 and crash[0]["agent"] == "alice"
    assert "fake harness alice" in str(crash[0]["stderr_tail"])
    # Back after the 1 s backoff, as a new process.
    await wait_state(hive, "alice", AgentState.RUNNING)
    assert process_alive(hive.registry.get("alice").pid) and hive.registry.get("alice").pid != pid
    assert hive.registry.get("alice").crash_streak == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_daemon_restart_readopts_the_same_process(short_tmp: Path, backend: str) -> None:
    require_backend(backend)
    try:
        async with open_hive(config(short_tmp, backend, stop=False)) as hive:
            await hive.spawn("alice")
            await wait_state(hive, "alice", AgentState.RUNNING)
            await wait_harness(hive, "alice")
            # The daemon counts the harness at its hello; the harness also has to read the
            # reply before the daemon goes (else it loses the connection and exits).
            log = hive.config.paths.container_log("alice")

            async def connected() -> bool:
                return "connected" in log.read_text()

            await wait_until(connected, limit=20)
            pid = hive.registry.get("alice").pid
        assert process_alive(pid), "agents must outlive the daemon"
        async with open_hive(config(short_tmp, backend, stop=True)) as hive:
            assert hive.registry.get("alice").pid == pid
            assert hive.registry.get("alice").state == AgentState.RUNNING
            # Re-adopted means supervised: a crash now is noticed through the new pidfd.
            events = hive.events.subscribe()
            os.kill(payload_pid(hive, "alice"), signal.SIGKILL)
            with trio.fail_after(5):
                while (await events.receive()).kind != "container_crash":
                    pass
        assert not process_alive(pid)
    finally:
        kill_leftovers(short_tmp)


async def test_destroy_revive_purge(container_hive: Hive) -> None:
    hive = container_hive
    await hive.spawn("alice")
    await wait_state(hive, "alice", AgentState.RUNNING)
    pid = hive.registry.get("alice").pid
    notes = hive.config.paths.agent_dir("alice") / "state" / "notes.md"
    notes.write_text("remember me")
    creds = hive.config.paths.agent_dir("alice") / "claude" / ".credentials.json"
    creds.write_text("{}")
    with pytest.raises(RequestRefused, match="live"):
        await hive.destroy("alice", purge=True)
    await hive.destroy("alice", purge=False)
    assert not process_alive(pid)
    assert hive.registry.get("alice").state == AgentState.DESTROYED
    assert [t.name for t in await hive.tombstones()] == ["alice"]
    approval = await hive.revive("alice")
    await hive.approvals.approve(approval.id)
    await wait_state(hive, "alice", AgentState.RUNNING)
    assert notes.read_text() == "remember me" and creds.exists()
    await hive.destroy("alice", purge=False)
    await hive.destroy("alice", purge=True)
    assert not hive.config.paths.agent_dir("alice").exists()
    assert not hive.config.paths.applied_dir("alice").exists()
    with pytest.raises(RequestRefused, match="manager"):
        await hive.destroy("manager", purge=True)


async def test_bad_names_are_refused_everywhere(container_hive: Hive) -> None:
    hive = container_hive
    for name in ["../x", "a/b", "UPPER", "toolongname1"]:
        for call in (
            lambda n=name: hive.spawn(n),
            lambda n=name: hive.lifecycle("start", n),
            lambda n=name: hive.destroy(n, purge=True),
            lambda n=name: hive.revive(n),
            lambda n=name: hive.logs(n, 10),
        ):
            with pytest.raises(RequestRefused, match=r"invalid agent name|no agent"):
                await call()
    assert sorted(p.name for p in (hive.config.paths.state_dir / "agents").iterdir()) == ["manager"]


async def test_backend_chosen_per_agent_at_spawn(short_tmp: Path) -> None:
    async with open_hive(config(short_tmp, "external")) as hive:
        await hive.spawn("alice", backend="process")
        await hive.spawn("bob")
        await wait_state(hive, "alice", AgentState.RUNNING)
        assert process_alive(hive.registry.get("alice").pid)
        assert hive.registry.get("bob").backend == "external"
        assert hive.registry.get("bob").pid is None
        with pytest.raises(RequestRefused, match="unknown backend"):
            await hive.spawn("carol", backend="docker")


def test_extra_mcp_servers_reach_the_payload_environment() -> None:
    from hyperhive.agent_config import parse_agent_config
    from hyperhive.hive import extra_mcp_env

    assert extra_mcp_env(parse_agent_config("")) == {}
    config = parse_agent_config(
        '[extra_mcp_servers.search]\ncommand = "srch"\nallowed_tools = ["find"]\n'
    )
    document = json.loads(extra_mcp_env(config)["HYPERHIVE_EXTRA_MCP"])
    assert document["mcpServers"]["search"]["command"] == "srch"
    assert document["allowedTools"] == ["mcp__search__find"]
