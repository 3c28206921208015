"""Agents in real containers running the real harness and the real claude (mock API).

Spawn through an approval, a message turned inside the container, and a daemon restart
that re-adopts the running container, with the ``nspawn`` backend (root + systemd-nspawn)
and the ``process`` backend. Config deploys are made by the manager from inside its
container: tests/harness/test_manager_config.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hyperhive.config import Config
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import kill_leftovers, make_paths, require_backend

from .fixtures import eventually, for_agent, read_events
from .mock_anthropic import MockAnthropic

BACKENDS = ["nspawn", "process"]

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn


@pytest.fixture
def daemon_env(
    mock_api: MockAnthropic, claude_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon passes on to every payload: the mock API and the real claude."""
    env = mock_api.claude_env(tmp_path / "unused-home", max_retries=0)
    for key, value in env.items():
        if key.startswith(("ANTHROPIC_", "CLAUDE_CODE_", "DISABLE_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("HYPERHIVE_CLAUDE", str(claude_bin))
    monkeypatch.setenv("HYPERHIVE_RECONNECT_BACKOFF", "0.2,0.5,1")


def config(root: Path, backend: str, *, stop: bool = True) -> Config:
    return Config(paths=make_paths(root), backend=backend, stop_agents_on_exit=stop)


async def running_with_harness(hive: Hive, name: str) -> None:
    def ready() -> bool:
        record = hive.registry.get(name)
        return record.state == AgentState.RUNNING and hive.registry.harnesses[name] > 0

    await eventually(ready, within=60, what=f"{name} running with its harness connected")


async def turned(hive: Hive, mock: MockAnthropic, name: str, marker: str) -> str:
    """Send ``marker`` to ``name`` as the operator; return the model of the turn on it."""
    events_db = hive.config.paths.agent_dir(name) / "state" / "hyperhive-events.sqlite"

    def ok_turns() -> int:
        return sum(1 for e in read_events(events_db, "turn_end") if e["payload"].get("ok"))

    before = ok_turns()
    await hive.broker.send("operator", name, marker)

    def seen() -> str | None:
        for req in mock.main_requests:
            if for_agent(name)(req) and marker in req.last_user_text:
                return req.model
        return None

    model = await eventually(seen, within=60, what=f"{name}'s turn on {marker!r}")
    await eventually(lambda: ok_turns() > before, within=60, what=f"{name}'s turn_end ok")
    return model


@pytest.fixture(params=BACKENDS)
async def container_hive(
    request: pytest.FixtureRequest, short_tmp: Path, daemon_env: None
) -> AsyncIterator[Hive]:
    require_backend(request.param)
    async with open_hive(config(short_tmp, request.param)) as hive:
        yield hive


async def test_spawn_by_approval_then_a_turn_inside_the_container(
    container_hive: Hive, mock_api: MockAnthropic
) -> None:
    hive = container_hive
    approval = await hive.request_spawn("alice", "e2e", "operator")
    assert (await hive.approvals.approve(approval.id)).status == "approved"
    await running_with_harness(hive, "alice")
    assert "haiku" in await turned(hive, mock_api, "alice", "marker-one: say hi")
    # The message was acked after the turn: nothing waits in alice's inbox.
    assert await hive.broker.unread("alice") == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_daemon_restart_keeps_the_container_and_delivers_after(
    short_tmp: Path, backend: str, daemon_env: None, mock_api: MockAnthropic
) -> None:
    require_backend(backend)
    try:
        async with open_hive(config(short_tmp, backend, stop=False)) as hive:
            await hive.spawn("alice")
            await running_with_harness(hive, "alice")
            pid = hive.registry.get("alice").pid
        async with open_hive(config(short_tmp, backend, stop=True)) as hive:
            assert hive.registry.get("alice").pid == pid  # same process, re-adopted
            # Sent before the harness has even reconnected: it waits, then is turned.
            assert await turned(hive, mock_api, "alice", "marker-three: after restart")
            assert hive.registry.get("alice").pid == pid
    finally:
        kill_leftovers(short_tmp)
