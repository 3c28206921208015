"""A paused agent's harness: it runs no turn, its UI shows the pause and why, and a resume
hands it what waited, in order. The real turn loop against a real daemon (in-process, real
sockets and database) with the scripted fake claude; the operator acts over host.sock."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from hyperhive.client import Client
from hyperhive.protocol import AgentMetaReply, AgentsReply, GetAgentMeta, ListContainers
from hyperhive.supervisor import Hive
from hyperhive_harness.commands import Commands
from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.event_log import EventLog
from hyperhive_harness.loop import TurnLoop
from hyperhive_harness.mcp_server import format_agents, format_meta
from hyperhive_harness.model import ModelFile
from hyperhive_harness.view import Status, View

from .fixtures import eventually, message, wait_acked
from .test_loop_logic import turn_loop


async def operator(hive: Hive, payload: dict[str, object]) -> dict[str, object]:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as op:
        reply = await op.request(payload)
    assert reply["ok"], reply
    return reply


async def test_paused_harness_shows_it_runs_nothing_and_resumes_in_order(
    hive: Hive, short_tmp: Path
) -> None:
    async with turn_loop(hive, short_tmp, [{"text": "one"}, {"text": "two"}]) as rig:
        await operator(hive, {"cmd": "pause", "names": ["alice"], "reason": "over budget"})
        # The parked recv returns at the pause; the loop asks and shows it.
        await eventually(lambda: rig.view.status is Status.PAUSED, what="paused on the UI")
        assert rig.view.status_detail == "paused by operator: over budget"
        assert rig.view.snapshot()["status_detail"] == "paused by operator: over budget"
        first = await rig.send("first")
        second = await rig.send("second")
        # Both wait in the inbox, not handed out; the loop's recv parks again.
        await hive.broker.wait_parked("alice")
        for sent in (first, second):
            assert (await message(rig.socket, sent)).delivered_at is None
        assert rig.of_kind("turn_start") == []
        await operator(hive, {"cmd": "resume", "names": ["alice"]})
        await wait_acked(rig.socket, second)
        starts = [p["id"] for p in rig.of_kind("turn_start")]
        assert starts == [first, second]
        assert rig.view.status is Status.ONLINE
        statuses = [p["status"] for p in rig.of_kind("status_changed")]
        assert statuses == ["online", "paused", "online"]


async def test_a_harness_starting_on_a_paused_agent_shows_the_pause_at_once(
    hive: Hive, short_tmp: Path
) -> None:
    await hive.spawn("alice")
    await hive.pause("alice", "daily budget reached", "budget")
    cfg = HarnessConfig.from_env(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(short_tmp / "home"),
            "HYPERHIVE_SOCKET": str(hive.config.paths.agent_socket("alice")),
            "HYPERHIVE_STATE_DIR": str(short_tmp / "state"),
            "HYPERHIVE_MODEL_FILE": str(short_tmp / "model"),
            "HYPERHIVE_CLAUDE": "/bin/false",  # never run: no message is handed out
        }
    )
    events = EventLog()
    model = ModelFile(cfg.model_file, events)
    view = View(events, model)
    loop = TurnLoop(cfg, events, view, Commands(events, model), model, short_tmp / "runtime")
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await eventually(lambda: view.status is Status.PAUSED, what="paused on the UI")
        assert view.status_detail == "paused by budget: daily budget reached"
        await hive.resume("alice", "operator")
        await eventually(lambda: view.status is Status.ONLINE, what="online again")
        statuses = [e.data["status"] for e in events.history() if e.kind == "status_changed"]
        assert statuses == ["online", "paused", "online"]
        nursery.cancel_scope.cancel()


async def test_the_mcp_tools_tell_an_agent_who_is_paused(hive: Hive) -> None:
    await hive.spawn("bob")
    await hive.pause("bob", "daily budget reached", "budget")
    async with await Client.connect(hive.config.paths.agent_socket("manager")) as manager:
        meta = await manager.call(GetAgentMeta(name="bob"))
        listed = await manager.call(ListContainers())
    assert isinstance(meta, AgentMetaReply) and isinstance(listed, AgentsReply)
    text = format_meta(meta)
    assert "paused: by budget: daily budget reached" in text
    (line,) = [x for x in format_agents(listed).splitlines() if x.startswith("bob:")]
    assert line.endswith(", PAUSED by budget (daily budget reached)")
    await hive.resume("bob", "operator")
    async with await Client.connect(hive.config.paths.agent_socket("manager")) as manager:
        meta = await manager.call(GetAgentMeta(name="bob"))
    assert isinstance(meta, AgentMetaReply) and "paused" not in format_meta(meta)
