"""Pause and resume: the operator over host.sock, agents through their own sockets.

In-process daemon (real sockets, real sqlite) for the rules; a real ``hyperhive run``
process for what must survive a daemon restart.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from hyperhive.client import Client
from hyperhive.supervisor import Hive
from tests.conftest import Connect, DaemonProcess


async def host(hive: Hive) -> Client:
    return await Client.connect(hive.config.paths.host_socket, hello_role="cli")


def agent_row(reply: dict[str, Any], name: str) -> dict[str, Any]:
    (row,) = [a for a in reply["agents"] if a["name"] == name]
    return row


async def test_paused_agent_gets_nothing_and_resume_delivers_in_order(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice", role="harness")
    got: list[list[str]] = []

    async def receive() -> None:
        reply = await alice.request({"cmd": "recv", "wait_seconds": 60, "max": 32, "ack": False})
        got.append([m["body"] for m in reply["messages"]])

    async with await host(hive) as op, trio.open_nursery() as nursery:
        paused = await op.request({"cmd": "pause", "names": ["alice"], "reason": "over budget"})
        assert paused["ok"], paused
        row = agent_row(paused, "alice")
        assert (row["paused_reason"], row["paused_by"]) == ("over budget", "operator")
        assert row["paused_at"] is not None
        nursery.start_soon(receive)
        await hive.broker.wait_parked("alice")
        for i in range(3):
            assert (await op.request({"cmd": "send", "to": "alice", "body": f"m{i}"}))["ok"]
        # Each send woke the parked recv; it looked again, found alice paused, parked again.
        await hive.broker.wait_parked("alice")
        assert got == []
        listed = await op.request({"cmd": "list"})
        assert agent_row(listed, "alice")["unread"] == 3
        assert agent_row(listed, "alice")["paused_reason"] == "over budget"
        # The agent's other connection (its MCP tools) sees them waiting, and gets nothing.
        other = await connect("alice", spawn=False)
        assert (await other.request({"cmd": "status"}))["unread"] == 3
        assert (await other.request({"cmd": "recv"}))["messages"] == []
        meta = await other.request({"cmd": "get_agent_meta"})
        assert meta["paused_reason"] == "over budget" and meta["paused_at"] is not None
        resumed = await op.request({"cmd": "resume", "names": ["alice"]})
        assert resumed["ok"] and agent_row(resumed, "alice")["paused_at"] is None
    # The parked recv was woken by the resume and handed the waiting messages, in order.
    assert got == [["m0", "m1", "m2"]]


async def test_pause_and_resume_are_idempotent_and_keep_the_first_reason(hive: Hive) -> None:
    await hive.spawn("bob")
    await hive.pause("bob", "first", "operator")
    await hive.pause("bob", "second", "budget")
    assert hive.registry.get("bob").paused_reason == "first"
    await hive.resume("bob", "operator")
    await hive.resume("bob", "operator")
    assert hive.registry.get("bob").paused_at is None


async def test_pause_by_something_else_tells_the_manager(hive: Hive, connect: Connect) -> None:
    manager = await connect("manager", role="harness")
    await hive.spawn("carol")
    await hive.pause("carol", "daily budget of $5 reached", "budget")
    reply = await manager.request({"cmd": "recv", "max": 32})
    bodies = [m["body"] for m in reply["messages"] if m["from"] == "system"]
    paused = [b for b in bodies if b.startswith("agent_paused ")]
    assert len(paused) == 1
    fields = json.loads(paused[0].split(" ", 1)[1])
    assert fields == {"agent": "carol", "reason": "daily budget of $5 reached", "by": "budget"}
    # The operator's own pause tells nobody: the operator did it.
    await hive.resume("carol", "operator")
    await hive.pause("carol", "by hand", "operator")
    again = await manager.request({"cmd": "recv", "max": 32})
    assert not [m for m in again["messages"] if m["body"].startswith("agent_paused ")]


async def test_pause_events_are_typed(hive: Hive) -> None:
    await hive.spawn("dave")
    seq = hive.events.seq
    await hive.pause("dave", "why", "operator")
    await hive.resume("dave", "operator")
    events = hive.events.since(seq)
    assert events is not None
    kinds = [(e.kind, e.data) for e in events if e.kind in ("agent_paused", "agent_resumed")]
    assert kinds[0][0] == "agent_paused"
    assert {k: v for k, v in kinds[0][1].items() if k != "paused_at"} == {
        "name": "dave",
        "reason": "why",
        "by": "operator",
    }
    assert kinds[1] == ("agent_resumed", {"name": "dave", "by": "operator"})


@pytest.mark.parametrize("cmd", ["pause", "resume"])
async def test_empty_and_unknown_selections_are_refused(hive: Hive, cmd: str) -> None:
    await hive.spawn("erin")
    async with await host(hive) as op:
        empty = await op.request({"cmd": cmd, "names": []})
        assert empty["ok"] is False and "at least one agent" in empty["error"]
        unknown = await op.request({"cmd": cmd, "names": ["erin", "nobody"]})
        assert unknown["ok"] is False and "no agent named 'nobody'" in unknown["error"]
        bad = await op.request({"cmd": cmd, "names": ["../x"]})
        assert bad["ok"] is False
        missing = await op.request({"cmd": cmd})
        assert missing["ok"] is False
    # Nothing was half done: erin was not paused by the refused request.
    assert hive.registry.get("erin").paused_at is None


async def test_several_agents_in_one_request(hive: Hive) -> None:
    for name in ("fay", "gus"):
        await hive.spawn(name)
    async with await host(hive) as op:
        reply = await op.request({"cmd": "pause", "names": ["fay", "gus", "fay"]})
        assert [a["name"] for a in reply["agents"]] == ["fay", "gus"]
        assert all(a["paused_by"] == "operator" for a in reply["agents"])
        reply = await op.request({"cmd": "resume", "names": ["gus", "fay"]})
        assert all(a["paused_at"] is None for a in reply["agents"])


async def test_pause_of_a_destroyed_agent_is_refused(hive: Hive) -> None:
    await hive.spawn("hal")
    await hive.destroy("hal", purge=False)
    async with await host(hive) as op:
        reply = await op.request({"cmd": "pause", "names": ["hal"]})
    assert reply["ok"] is False and "destroyed" in reply["error"]


async def test_pause_survives_daemon_and_agent_restart(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "ivy"}))["ok"]
    paused = await daemon.call({"cmd": "pause", "names": ["ivy"], "reason": "hold on"})
    assert paused["ok"], paused
    for i in range(2):
        assert (await daemon.call({"cmd": "send", "to": "ivy", "body": f"w{i}"}))["ok"]
    # The agent restarts (its harness says hello again): still nothing for it.
    async with await Client.connect(daemon.paths.agent_socket("ivy"), hello_role="harness") as a:
        assert (await a.request({"cmd": "recv", "max": 32, "ack": False}))["messages"] == []
    await daemon.stop()
    await daemon.start(nursery)
    listed = await daemon.call({"cmd": "list"})
    row = agent_row(listed, "ivy")
    assert (row["paused_reason"], row["paused_by"], row["unread"]) == ("hold on", "operator", 2)
    async with await Client.connect(daemon.paths.agent_socket("ivy"), hello_role="harness") as a:
        assert (await a.request({"cmd": "recv", "max": 32}))["messages"] == []
        assert (await daemon.call({"cmd": "resume", "names": ["ivy"]}))["ok"]
        reply = await a.request({"cmd": "recv", "max": 32})
        assert [m["body"] for m in reply["messages"]] == ["w0", "w1"]
