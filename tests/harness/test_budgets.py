"""Budgets and the no-progress breaker end to end: the real claude CLI against the scripted
API, its harness reporting each turn, a real daemon pausing the agent at a limit.

The agent's ``[budget]`` comes the way it does in production: a commit in its proposed
config repo (the plumbing of ``propose_config``), the manager's ``request_apply_commit`` on
its socket, the operator's ``approve`` on host.sock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from hyperhive.client import Client
from hyperhive.hive import Hive

from ..conftest import propose_config
from .fixtures import (
    Harness,
    eventually,
    inbox_of,
    make_harness,
    message,
    operator_send,
    wait_acked,
)
from .mock_anthropic import MockAnthropic, hold, text, tool_use


async def host(hive: Hive, payload: dict[str, Any]) -> dict[str, Any]:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as c:
        reply = await c.request(payload)
    assert reply["ok"], reply
    return reply


async def deploy(hive: Hive, agent: str, toml: str) -> None:
    """The manager asks for ``toml`` to be applied to ``agent``; the operator approves."""
    sha = propose_config(hive.config.paths, agent, toml)
    paths = hive.config.paths
    async with await Client.connect(paths.agent_socket("manager"), hello_role="mcp") as manager:
        reply = await manager.request(
            {"cmd": "request_apply_commit", "agent": agent, "commit_ref": sha}
        )
    assert reply["ok"], reply
    await host(hive, {"cmd": "approve", "id": reply["approval"]["id"]})


def paused_reason(hive: Hive, name: str) -> str | None:
    return hive.registry.get(name).paused_reason


def turn_ids(alice: Harness) -> list[int]:
    return [e["payload"]["id"] for e in alice.events("turn_start")]


async def test_a_daily_budget_pauses_mid_conversation_and_raising_it_delivers_in_order(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    # Each turn: 150,000 tokens as the mock reports them; the budget is reached by the second.
    await deploy(hive, "alice", "[budget]\ndaily_tokens = 250000\n")
    mock_api.default = text("done", input_tokens=120_000, output_tokens=30_000)
    gate = hold(text("done", input_tokens=120_000, output_tokens=30_000))
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    await alice.start(nursery)

    m1 = await operator_send(paths.host_socket, "alice", "task one")
    await wait_acked(paths.agent_socket("alice"), m1)
    mock_api.script(gate)
    m2 = await operator_send(paths.host_socket, "alice", "task two")
    with trio.fail_after(30):
        await gate.arrived.wait()
    # Sent while the turn that reaches the budget runs: they must wait.
    m3 = await operator_send(paths.host_socket, "alice", "task three")
    m4 = await operator_send(paths.host_socket, "alice", "task four")
    gate.release()
    await wait_acked(paths.agent_socket("alice"), m2)

    reason = "budget: daily tokens 250000 reached"
    assert paused_reason(hive, "alice") == reason
    assert hive.registry.get("alice").paused_by == "budget"
    # The harness asks for more and is handed nothing: m3 and m4 wait, unacked.
    await eventually(lambda: hive.broker.parked("alice") == 1, what="alice parked in recv")
    for waiting in (m3, m4):
        row = await message(paths.agent_socket("alice"), waiting)
        assert row.delivered_at is None and row.acked_at is None
    assert turn_ids(alice) == [m1, m2]
    # The operator is told (inbox; the dashboard's notifications come from it), the manager too.
    inbox = (await host(hive, {"cmd": "inbox", "limit": 50}))["messages"]
    told = [m["body"] for m in inbox if m["from"] == "system"]
    assert any(body.startswith("agent_paused") and reason in body for body in told), told
    managers = await inbox_of(paths.agent_socket("manager"))
    assert any(m.body.startswith("agent_paused") and reason in m.body for m in managers)
    [info] = [a for a in await hive.agent_infos() if a.name == "alice"]
    assert info.paused_reason == reason

    # Raising the budget (an approved agent.toml change) lets it run again: m3, m4 in order.
    await deploy(hive, "alice", "[budget]\ndaily_tokens = 10000000\n")
    await wait_acked(paths.agent_socket("alice"), m4)
    assert turn_ids(alice) == [m1, m2, m3, m4]
    assert hive.registry.get("alice").paused_at is None
    assert (await hive.stats("alice")).agents[0].today.turns == 4
    await alice.stop()


async def test_the_no_progress_breaker_trips_on_empty_turns_not_on_productive_ones(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    socket = paths.agent_socket("alice")
    await hive.spawn("alice")
    await deploy(hive, "alice", "[budget]\nno_progress_turns = 3\n")
    alice = make_harness(
        "alice", mock_api, claude_bin, short_tmp, socket, HYPERHIVE_EXTRA_ALLOWED_TOOLS="Write"
    )
    await alice.start(nursery)

    # Productive turns, more than the limit: each sends a message, or writes a file.
    for n in range(2):
        mock_api.script(
            tool_use("mcp__hyperhive__send", {"to": "operator", "body": f"report {n}"}),
            text("sent"),
        )
    notes = alice.state_dir / "notes.md"
    for n in range(2):
        mock_api.script(
            tool_use("Write", {"file_path": str(notes), "content": f"note {n}\n"}), text("noted")
        )
    for n in range(4):
        sent = await operator_send(paths.host_socket, "alice", f"work {n}")
        await wait_acked(socket, sent)
    assert notes.read_text() == "note 1\n"
    assert paused_reason(hive, "alice") is None
    assert (await hive.stats("alice")).agents[0].idle_streak == 0

    # A loop of empty turns: the third in a row pauses the agent.
    mock_api.default = text("nothing to do")
    for n in range(3):
        sent = await operator_send(paths.host_socket, "alice", f"poke {n}")
        await wait_acked(socket, sent)
        if n < 2:
            assert paused_reason(hive, "alice") is None
    reason = paused_reason(hive, "alice")
    assert reason is not None and reason.startswith("no progress: 3 turns in a row")
    assert hive.registry.get("alice").paused_by == "breaker"
    waiting = await operator_send(paths.host_socket, "alice", "after the breaker")
    await eventually(lambda: hive.broker.parked("alice") == 1, what="alice parked in recv")
    assert (await message(socket, waiting)).delivered_at is None

    # The operator resumes it: the waiting message is handled, the streak starts over.
    await host(hive, {"cmd": "resume", "names": ["alice"]})
    await wait_acked(socket, waiting)
    assert paused_reason(hive, "alice") is None
    assert (await hive.stats("alice")).agents[0].idle_streak == 1
    await alice.stop()
