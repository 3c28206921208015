"""Start notices: after spawn, revive, start, restart, rebuild and a crash restart, the agent's
first turn is on the notice ("Start notice: you were …"), ahead of a message that waited while
it was down or of one whose turn the stop interrupted.

The daemon runs in the test's trio run with the ``process`` backend, so each agent is the real
harness (a process the daemon starts) running the real claude against the mock API. The
operator acts through the host socket.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.protocol import (
    ApprovalReply,
    Approve,
    Destroy,
    HostSend,
    Kill,
    Rebuild,
    Restart,
    Revive,
    SendReply,
    Spawn,
    Start,
)
from hyperhive.protocol import Request as HostRequest
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import kill_leftovers, make_paths, require_backend

from .fixtures import eventually, for_agent, read_events
from .mock_anthropic import Hold, MockAnthropic, RecordedRequest, Reply, hold

NOTICE = "Start notice: you were"


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


@pytest.fixture
async def hive(short_tmp: Path, daemon_env: None) -> AsyncIterator[Hive]:
    require_backend("process")
    try:
        config = Config(paths=make_paths(short_tmp), backend="process", stop_agents_on_exit=True)
        async with open_hive(config) as h:
            yield h
    finally:
        kill_leftovers(short_tmp)


async def operator(hive: Hive, request: HostRequest) -> Any:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as client:
        return await client.call(request)


async def send(hive: Hive, to: str, body: str) -> int:
    reply = await operator(hive, HostSend(to=to, body=body))
    assert isinstance(reply, SendReply)
    return reply.id


def turn_starts(hive: Hive, name: str) -> list[dict[str, Any]]:
    db = hive.config.paths.agent_dir(name) / "state" / "hyperhive-events.sqlite"
    return [e["payload"] for e in read_events(db, "turn_start")]


async def turned(hive: Hive, name: str, message_id: int, *, count: int = 1) -> None:
    db = hive.config.paths.agent_dir(name) / "state" / "hyperhive-events.sqlite"

    def done() -> bool:
        ends = [e for e in read_events(db, "turn_end") if e["payload"]["id"] == message_id]
        return len(ends) >= count and bool(ends[-1]["payload"]["ok"])

    await eventually(done, within=90, what=f"{name}'s turn on #{message_id}")


async def running(hive: Hive, name: str) -> int:
    def ready() -> int | None:
        record = hive.registry.get(name)
        ok = record.state == AgentState.RUNNING and hive.registry.harnesses[name] > 0
        return record.pid if ok else None

    return await eventually(ready, within=60, what=f"{name} running with its harness")


def requests_of(mock: MockAnthropic, name: str, since: int) -> list[RecordedRequest]:
    return [r for r in mock.main_requests[since:] if for_agent(name)(r)]


def assert_first_turn_is_the_notice(
    hive: Hive, mock: MockAnthropic, name: str, since: int, verb: str, queued: int, marker: str
) -> None:
    """The first request after ``since`` is the notice's turn (not the queued message's), and
    the notice's turn started before the queued message's."""
    first = requests_of(mock, name, since)[0]
    assert f"{NOTICE} {verb}" in first.last_user_text
    assert "from the hive itself" in first.last_user_text
    assert marker not in first.last_user_text
    starts = turn_starts(hive, name)
    notices = [i for i, s in enumerate(starts) if s["body"].startswith(f"{NOTICE} {verb}")]
    queued_at = [i for i, s in enumerate(starts) if s["id"] == queued]
    assert notices and queued_at and notices[-1] < queued_at[-1], starts


def hold_turn(mock: MockAnthropic, name: str, marker: str) -> Hold:
    """Hold ``name``'s first request on ``marker``; every other request gets the default.

    Not ``mock.script(hold())``, which holds whichever request comes next: the manager's
    claude runs against the same mock, and on a loaded machine its turn can come first."""
    gate = hold()
    taken: list[RecordedRequest] = []

    def reply(req: RecordedRequest) -> Reply:
        if not taken and for_agent(name)(req) and marker in req.last_user_text:
            taken.append(req)
            return gate
        return mock.default

    mock.responder = reply
    return gate


async def spawned(hive: Hive, mock: MockAnthropic, name: str) -> None:
    """Spawn ``name`` (operator) and wait until it turned its spawn notice."""
    await operator(hive, Spawn(name=name))
    await running(hive, name)

    def notice() -> int | None:
        found = [s["id"] for s in turn_starts(hive, name) if s["body"].startswith(NOTICE)]
        return found[0] if found else None

    await turned(hive, name, await eventually(notice, within=90, what="the spawn notice"))
    first = requests_of(mock, name, 0)[0]
    assert f"{NOTICE} spawned by hyperhive" in first.last_user_text


async def test_spawn_then_start_after_a_kill_puts_the_notice_before_the_waiting_message(
    hive: Hive, mock_api: MockAnthropic
) -> None:
    await spawned(hive, mock_api, "alice")
    await operator(hive, Kill(name="alice"))
    assert hive.registry.get("alice").state == AgentState.STOPPED
    queued = await send(hive, "alice", "waited-while-stopped")
    since = len(mock_api.main_requests)
    await operator(hive, Start(name="alice"))
    await turned(hive, "alice", queued)
    assert_first_turn_is_the_notice(
        hive, mock_api, "alice", since, "started by hyperhive", queued, "waited-while-stopped"
    )


@pytest.mark.parametrize(("request_type", "verb"), [(Restart, "restarted"), (Rebuild, "rebuilt")])
async def test_restart_and_rebuild_put_the_notice_before_interrupted_and_waiting_messages(
    hive: Hive, mock_api: MockAnthropic, request_type: type[Restart | Rebuild], verb: str
) -> None:
    await spawned(hive, mock_api, "alice")
    gate = hold_turn(mock_api, "alice", "interrupted-task")
    busy = await send(hive, "alice", "interrupted-task")
    await gate.arrived.wait()  # alice's claude is mid-turn on it
    queued = await send(hive, "alice", "waiting-task")
    since = len(mock_api.main_requests)
    await operator(hive, request_type(name="alice"))
    gate.release()
    await turned(hive, "alice", queued)
    assert_first_turn_is_the_notice(
        hive, mock_api, "alice", since, f"{verb} by hyperhive", queued, "waiting-task"
    )
    starts = turn_starts(hive, "alice")
    again = [i for i, s in enumerate(starts) if s["id"] == busy and s["redelivered"]]
    notice = max(i for i, s in enumerate(starts) if s["body"].startswith(f"{NOTICE} {verb}"))
    assert again and notice < again[0] < [s["id"] for s in starts].index(queued)


async def test_crash_restart_puts_the_notice_first(hive: Hive, mock_api: MockAnthropic) -> None:
    await spawned(hive, mock_api, "alice")
    gate = hold_turn(mock_api, "alice", "crashed-task")
    busy = await send(hive, "alice", "crashed-task")
    await gate.arrived.wait()
    since = len(mock_api.main_requests)
    pid = hive.registry.get("alice").pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the payload dies under the daemon: a crash
    gate.release()
    await turned(hive, "alice", busy)
    assert_first_turn_is_the_notice(
        hive, mock_api, "alice", since, "restarted by hyperhive after a crash", busy, "crashed"
    )


async def test_revive_puts_the_notice_before_a_message_that_waited_for_the_tombstone(
    hive: Hive, mock_api: MockAnthropic
) -> None:
    await spawned(hive, mock_api, "alice")
    await operator(hive, Destroy(name="alice"))
    assert hive.registry.get("alice").state == AgentState.DESTROYED
    queued = await send(hive, "alice", "waited-for-the-tombstone")
    since = len(mock_api.main_requests)
    approval = await operator(hive, Revive(name="alice"))
    assert isinstance(approval, ApprovalReply)
    await operator(hive, Approve(id=approval.approval.id))
    await turned(hive, "alice", queued)
    assert_first_turn_is_the_notice(
        hive, mock_api, "alice", since, "revived by hyperhive", queued, "waited-for-the-tombstone"
    )
