"""The agent hierarchy end to end: ``set_parent`` on host.sock and the CLI, parents in the
read models, children moving up when their parent is destroyed, the subtree broadcast
``*:<name>``, and the ``lead`` role (lifecycle verbs on its own socket, for its subtree only)
against a real daemon running real payloads."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.broker import resolve_recipients
from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.errors import RequestRefused
from hyperhive.supervisor import Daemon
from tests.conftest import (
    Connect,
    DaemonProcess,
    kill_leftovers,
    make_paths,
    propose_config,
    wait_until,
)
from tests.test_cli import cli

REPO = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(REPO / "tests" / "payloads" / "fake_harness.py"))


async def host(paths: Any) -> Client:
    return await Client.connect(paths.host_socket, hello_role="cli")


async def parents_listed(client: Client) -> dict[str, str | None]:
    reply = await client.request({"cmd": "list"})
    assert reply["ok"], reply
    return {a["name"]: a["parent"] for a in reply["agents"]}


async def test_set_parent_through_the_host_socket(inproc: Daemon, connect: Connect) -> None:
    paths = inproc.hive.config.paths
    async with await host(paths) as op:
        for name in ("alice", "bob", "carol"):
            assert (await op.request({"cmd": "spawn", "name": name}))["ok"]
        # New agents are the manager's children; the manager is the root.
        assert await parents_listed(op) == {
            "manager": None,
            "alice": "manager",
            "bob": "manager",
            "carol": "manager",
        }
        assert await op.request({"cmd": "set_parent", "child": "bob", "parent": "alice"}) == {
            "ok": True,
            "protocol": PROTOCOL_VERSION,
        }
        assert (await op.request({"cmd": "set_parent", "child": "carol", "parent": "bob"}))["ok"]
        for child, parent, error in [
            ("alice", "carol", "'carol' is below 'alice': making it 'alice''s parent would make"),
            ("alice", "bob", "would make a cycle"),
            ("bob", "bob", "'bob' cannot be its own parent"),
            ("ghost", "alice", "no agent named 'ghost'"),
            ("alice", "ghost", "no agent named 'ghost'"),
            ("manager", "alice", "the manager is the root of the hive"),
            ("alice", "../x", "invalid agent name"),
        ]:
            reply = await op.request({"cmd": "set_parent", "child": child, "parent": parent})
            assert reply["ok"] is False and error in reply["error"], (child, parent, reply)
        assert await parents_listed(op) == {
            "manager": None,
            "alice": "manager",
            "bob": "alice",
            "carol": "bob",
        }

        # The agent sees its parent in get_agent_meta.
        carol = await connect("carol", spawn=False)
        meta = await carol.request({"cmd": "get_agent_meta"})
        assert meta["parent"] == "bob"
        assert (await carol.request({"cmd": "get_agent_meta", "name": "manager"}))["parent"] is None
        # An agent cannot re-parent anyone: set_parent is the operator's.
        refused = await carol.request({"cmd": "set_parent", "child": "carol", "parent": "alice"})
        assert refused["ok"] is False and "unknown command 'set_parent'" in refused["error"]

        # Destroying a parent moves its children to its own parent.
        assert (await op.request({"cmd": "destroy", "name": "bob"}))["ok"]
        assert await parents_listed(op) == {"manager": None, "alice": "manager", "carol": "alice"}
        # null puts an agent back under the manager.
        assert (await op.request({"cmd": "set_parent", "child": "carol", "parent": None}))["ok"]
        assert (await parents_listed(op))["carol"] == "manager"


async def test_a_subtree_broadcast_reaches_exactly_the_subtree(
    inproc: Daemon, connect: Connect
) -> None:
    paths = inproc.hive.config.paths
    clients = {name: await connect(name) for name in ("lead", "k1", "k2", "g1", "sib")}
    manager = await connect("manager")
    async with await host(paths) as op:
        for child, parent in [("k1", "lead"), ("k2", "lead"), ("g1", "k2")]:
            assert (await op.request({"cmd": "set_parent", "child": child, "parent": parent}))["ok"]
    sent = await clients["k1"].request({"cmd": "send", "to": "*:lead", "body": "team sync"})
    assert sent["ok"], sent
    assert len(sent["ids"]) == 3

    async def inbox(client: Client) -> list[dict[str, Any]]:
        reply = await client.request({"cmd": "recv", "wait_seconds": 0})
        return list(reply["messages"])

    for name in ("lead", "k2", "g1"):
        [message] = await inbox(clients[name])
        assert message["from"] == "k1"
        assert message["body"] == "[broadcast to lead's subtree] team sync"
    for name in ("k1", "sib"):
        assert await inbox(clients[name]) == []
    assert await inbox(manager) == []

    # The operator may address a subtree too; the sender is never among the recipients.
    async with await host(paths) as op:
        reply = await op.request({"cmd": "send", "to": "*:k2", "body": "hi"})
        assert reply["ok"] and len(reply["ids"]) == 2
    assert [m["body"] for m in await inbox(clients["g1"])] == ["[broadcast to k2's subtree] hi"]
    alone = await clients["g1"].request({"cmd": "send", "to": "*:g1", "body": "x"})
    assert alone["ok"] is False and "reaches nobody but the sender" in alone["error"]
    ghost = await clients["k1"].request({"cmd": "send", "to": "*:ghost", "body": "x"})
    assert ghost["ok"] is False and "unknown broadcast subtree 'ghost'" in ghost["error"]


async def test_one_agents_parent_agrees_with_the_whole_mapping(inproc: Daemon) -> None:
    """``Registry.parent`` (read per agent for every listing) gives what the full mapping
    gives, for live, destroyed, unknown and self-pointing names alike."""
    paths, registry = inproc.hive.config.paths, inproc.hive.registry
    async with await host(paths) as op:
        for name in ("a1", "a2", "a3", "a4"):
            assert (await op.request({"cmd": "spawn", "name": name}))["ok"]
        for child, parent in [("a2", "a1"), ("a3", "a2"), ("a4", "a3")]:
            assert (await op.request({"cmd": "set_parent", "child": child, "parent": parent}))["ok"]

        def agree() -> dict[str, str | None]:
            mapping = registry.parents()
            for name in ["manager", "a1", "a2", "a3", "a4", "nobody"]:
                assert registry.parent(name) == mapping.get(name, "manager"), name
            return mapping

        assert agree()["a4"] == "a3"
        assert (await op.request({"cmd": "destroy", "name": "a2"}))["ok"]
        mapping = agree()
        assert "a2" not in mapping and mapping["a3"] == "a1"  # moved up to a2's parent
        assert registry.parent("a2") == "manager"  # a tombstone reads as the manager's


async def test_two_moves_at_once_never_make_a_cycle(inproc: Daemon) -> None:
    paths = inproc.hive.config.paths
    async with await host(paths) as op:
        for name in ("alice", "bob"):
            assert (await op.request({"cmd": "spawn", "name": name}))["ok"]

    async def move(replies: list[dict[str, Any]], child: str, parent: str) -> None:
        async with await host(paths) as op:
            replies.append(
                await op.request({"cmd": "set_parent", "child": child, "parent": parent})
            )

    for _ in range(5):
        replies: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(move, replies, "alice", "bob")
            nursery.start_soon(move, replies, "bob", "alice")
        assert sorted(r["ok"] for r in replies) == [False, True], replies
        async with await host(paths) as op:
            parents = await parents_listed(op)
            assert not (parents["alice"] == "bob" and parents["bob"] == "alice")
            for child in ("alice", "bob"):
                assert (await op.request({"cmd": "set_parent", "child": child}))["ok"]


def test_resolve_recipients_of_a_subtree_broadcast() -> None:
    parents: dict[str, str | None] = {
        "manager": None,
        "lead": "manager",
        "k1": "lead",
        "g1": "k1",
        "sib": "manager",
        "old": "lead",
    }
    live = set(parents) - {"old"}  # a tombstone is never reached
    known = set(parents)

    def to(sender: str, target: str, allowed: list[str] | None = None) -> list[str]:
        return resolve_recipients(
            sender, target, known=known, live=live, allowed=allowed, parents=parents
        )

    assert to("sib", "*:lead") == ["g1", "k1", "lead"]
    assert to("lead", "*:lead") == ["g1", "k1"]
    assert to("k1", "*:manager") == sorted(live - {"k1"})
    for target, error in [
        ("*:old", "unknown broadcast subtree 'old'"),
        ("*:Nope", "unknown broadcast subtree: invalid agent name"),
        ("*:", "unknown broadcast subtree: invalid agent name"),
        ("*:g1", "reaches nobody but the sender"),
    ]:
        with pytest.raises(RequestRefused, match=error):
            to("g1", target)
    with pytest.raises(RequestRefused, match="sib may not broadcast"):
        to("sib", "*:lead", allowed=["lead"])


async def test_set_parent_from_the_cli(daemon: DaemonProcess) -> None:
    for name in ("alice", "bob"):
        assert (await cli(daemon, "spawn", name)).code == 0
    r = await cli(daemon, "set-parent", "bob", "alice")
    assert (r.code, r.out.strip()) == (0, "bob is now below alice")
    r = await cli(daemon, "list")
    header, *rows = r.out.splitlines()
    assert header.split()[:3] == ["NAME", "ROLE", "PARENT"]
    assert {row.split()[0]: row.split()[2] for row in rows} == {
        "manager": "-",
        "alice": "manager",
        "bob": "alice",
    }
    r = await cli(daemon, "set-parent", "alice", "bob")
    assert r.code == 1 and "would make a cycle" in r.err
    r = await cli(daemon, "set-parent", "bob")
    assert (r.code, r.out.strip()) == (0, "bob is now below manager")
    assert (await cli(daemon, "list", "--json")).json()["agents"][2]["parent"] == "manager"


# ---------------------------------------------------------------- the lead role, real payloads


class ProcessDaemon(DaemonProcess):
    """``hyperhive run`` with the process backend and the fake harness as every payload."""

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


async def agent(d: DaemonProcess, name: str) -> dict[str, Any]:
    reply = await d.call({"cmd": "list"})
    return next(a for a in reply["agents"] if a["name"] == name)


async def running_pid(d: DaemonProcess, name: str, *, other_than: int | None = None) -> int:
    """The agent's payload pid once it runs with its harness connected (and is not
    ``other_than``)."""
    found: dict[str, Any] = {}

    async def up() -> bool:
        nonlocal found
        found = await agent(d, name)
        return bool(
            found["pid"]
            and found["harness_connected"]
            and found["transient"] is None
            and found["pid"] != other_than
        )

    await wait_until(up, limit=30, interval=0.05)
    return int(found["pid"])


async def test_a_lead_runs_lifecycle_verbs_in_its_subtree_only(
    process_daemon: ProcessDaemon,
) -> None:
    d = process_daemon
    for name in ("lead", "kid", "sib"):
        assert (await d.call({"cmd": "spawn", "name": name}))["ok"]
    assert (await d.call({"cmd": "set_parent", "child": "kid", "parent": "lead"}))["ok"]
    kid_pid = await running_pid(d, "kid")
    sib_pid = await running_pid(d, "sib")
    await running_pid(d, "lead")

    # Before the role is granted the agent is refused, and says how to get it.
    async with await Client.connect(d.paths.agent_socket("lead"), hello_role="cli") as lead:
        refused = await lead.request({"cmd": "restart", "name": "kid"})
        assert refused["ok"] is False
        assert "restart is for the manager and leads: lead is not a lead" in refused["error"]

    # The manager proposes lead = true; the operator approves; the deploy rebuilds the lead.
    sha = propose_config(d.paths, "lead", 'model = "haiku"\nlead = true\n')
    async with await Client.connect(d.paths.agent_socket("manager"), hello_role="cli") as mgr:
        asked = await mgr.request(
            {"cmd": "request_apply_commit", "agent": "lead", "commit_ref": sha}
        )
        assert asked["ok"], asked
    approved = await d.call({"cmd": "approve", "id": asked["approval"]["id"]})
    assert approved["approval"]["status"] == "approved", approved
    assert (await agent(d, "lead"))["lead"] is True

    async with await Client.connect(d.paths.agent_socket("lead"), hello_role="cli") as lead:
        # Its own child: restarted (a new payload process).
        assert await lead.request({"cmd": "restart", "name": "kid"}) == {"ok": True}
        await running_pid(d, "kid", other_than=kid_pid)
        logs = await lead.request({"cmd": "get_logs", "agent": "kid", "lines": 20})
        assert logs["ok"] and any("fake harness kid" in line for line in logs["lines"])
        # A sibling's (the manager's child) and the manager: refused, nothing happens.
        for verb in ("restart", "kill", "start", "update"):
            reply = await lead.request({"cmd": verb, "name": "sib"})
            assert reply == {"ok": False, "error": "sib is not in your subtree"}
        reply = await lead.request({"cmd": "kill", "name": "manager"})
        assert reply == {"ok": False, "error": "manager is not in your subtree"}
        reply = await lead.request({"cmd": "restart", "name": "lead"})
        assert reply == {"ok": False, "error": "a lead cannot restart itself"}
        reply = await lead.request({"cmd": "get_logs", "agent": "sib", "lines": 5})
        assert reply == {"ok": False, "error": "sib is not in your subtree"}
        assert (await agent(d, "sib"))["pid"] == sib_pid

        # A spawn the lead requests becomes its child once approved.
        asked = await lead.request({"cmd": "request_spawn", "name": "newb"})
        assert asked["ok"], asked
    spawn_id = asked["approval"]["id"]
    assert (await d.call({"cmd": "approve", "id": spawn_id}))["ok"]
    assert (await agent(d, "newb"))["parent"] == "lead"
    # The lead hears the decision on its own request, as the manager does.
    async with await Client.connect(d.paths.agent_socket("lead"), hello_role="cli") as lead:
        got = await lead.request({"cmd": "recv", "wait_seconds": 10, "max": 32})
        # (its start notice from the rebuild that made it a lead comes first)
        [told] = [m for m in got["messages"] if m["body"].startswith("approval_resolved ")]
        assert told["from"] == "system"
        assert f'"id":{spawn_id}' in told["body"].replace(" ", "")
        assert '"status":"approved"' in told["body"].replace(" ", "")

    # A plain agent has none of it, not even for what is below it.
    assert (await d.call({"cmd": "set_parent", "child": "sib", "parent": "kid"}))["ok"]
    async with await Client.connect(d.paths.agent_socket("kid"), hello_role="cli") as kid:
        reply = await kid.request({"cmd": "kill", "name": "sib"})
        assert reply["ok"] is False and "kid is not a lead" in reply["error"]
        reply = await kid.request({"cmd": "request_spawn", "name": "other"})
        assert reply["ok"] is False and "kid is not a lead" in reply["error"]
    # sib is now below lead (through kid): the lead may act on it.
    async with await Client.connect(d.paths.agent_socket("lead"), hello_role="cli") as lead:
        assert await lead.request({"cmd": "restart", "name": "sib"}) == {"ok": True}
    await running_pid(d, "sib", other_than=sib_pid)
