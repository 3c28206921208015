"""Nodes failing and racing: each node's status shown, messages to a down node's agents kept
until it returns, its agents re-adopted then, two operators deciding one approval on two
nodes, ``kill -9`` of a node in a burst of cross-node sends (real daemons, one PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio

from hyperhive.agent_views import AgentFacts, AgentViews
from hyperhive.client import Client
from hyperhive.config import MAX_RECV_BATCH, NODE_DOWN_SECONDS, NODE_HEARTBEAT_SECONDS
from hyperhive.errors import ConnectionLost
from hyperhive.events import EventHub
from hyperhive.kinds import NodeStatus
from hyperhive.node_watch import changes, node_views
from hyperhive.nodes import NodeInfo
from hyperhive.protocol import Ack, AgentInfo, Approve, Kill, Message, Recv, Send, Spawn
from hyperhive.protocol.event_payloads import NodeChanged
from hyperhive.registry import AgentRecord
from tests.conftest import dashboard_state, process_alive, wait_until
from tests.multinode import node_process, running_nodes, spawn_on
from tests.test_cli import cli
from tests.test_containers import FAKE as FAKE_HARNESS


def test_a_node_change_is_a_status_that_differs_between_two_reads() -> None:
    up, down, stopped = NodeStatus.UP, NodeStatus.DOWN, NodeStatus.STOPPED
    found = changes({"a": up, "b": up, "c": down}, {"a": up, "b": down, "c": up, "d": up})
    assert [(c.node, c.status, c.previous) for c in found] == [
        ("b", down, up),
        ("c", up, down),
        ("d", up, None),  # seen for the first time
    ]
    assert changes({"a": stopped}, {"a": stopped}) == []


def test_the_table_of_nodes_says_each_ones_age_agents_and_which_answers() -> None:
    info = NodeInfo(
        name="nb",
        host="h2",
        pid=1,
        started_at=0.0,
        heartbeat_at=90.0,
        stopped_at=None,
        dashboard_url="http://h2:8080",
    )
    other = attrs.evolve(info, name="na", host="h1", heartbeat_at=99.0, dashboard_url=None)
    [na, nb] = node_views([info, other], {"nb": NodeStatus.DOWN}, {"na": 3}, "na", 100.0)
    assert (na.name, na.status, na.agents, na.this, na.heartbeat_age_seconds) == (
        "na",
        NodeStatus.UP,
        3,
        True,
        1.0,
    )
    assert (nb.name, nb.status, nb.agents, nb.this, nb.dashboard_url) == (
        "nb",
        NodeStatus.DOWN,
        0,
        False,
        "http://h2:8080",
    )


async def test_the_agent_views_are_built_again_for_a_node_that_changed() -> None:
    events = EventHub()
    records = [
        AgentRecord(
            name=name,
            role="agent",
            state="running",
            backend="external",
            created_at=0.0,
            updated_at=0.0,
            parent=None,
            status_text="",
            node=node,
        )
        for name, node in (("alice", "na"), ("bob", "nb"))
    ]
    statuses = {"na": NodeStatus.UP, "nb": NodeStatus.UP}
    built: list[str] = []

    def build(record: AgentRecord, facts: AgentFacts) -> AgentInfo:
        built.append(record.name)
        return AgentInfo(
            name=record.name,
            role=record.role,
            state=record.state,
            backend=record.backend,
            created_at=record.created_at,
            parent=None,
            model=facts.model,
            status_text="",
            unread=0,
            harness_connected=False,
            transient=None,
            transient_since=None,
            pid=None,
            warning=None,
            ui_url=None,
            node=record.node,
            node_status=statuses[record.node],
        )

    views = AgentViews(
        events,
        records=lambda: records,
        read_facts=lambda name: AgentFacts(model="m", ui_url=None, logged_in=True),
        build=build,
    )
    first = await views.infos({})
    assert [i.node_status for i in first] == [NodeStatus.UP, NodeStatus.UP]
    await views.infos({})
    assert built == ["alice", "bob"]  # kept while nothing changed
    statuses["nb"] = NodeStatus.DOWN
    events.emit(NodeChanged(node="nb", status=NodeStatus.DOWN, previous=NodeStatus.UP))
    shown = {i.name: i.node_status for i in await views.infos({})}
    assert shown == {"alice": NodeStatus.UP, "bob": NodeStatus.DOWN}
    assert built == ["alice", "bob", "bob"]  # only the changed node's agent


@pytest.mark.parametrize(
    "verbs", [("approve", "approve"), ("approve", "deny")], ids=["approve-approve", "approve-deny"]
)
async def test_two_operators_deciding_one_approval_on_two_nodes_one_wins(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery, verbs: tuple[str, str]
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        verb = dict(zip(("na", "nb"), verbs, strict=True))
        for round_ in range(4):
            name = f"twice{round_}"
            asked = await a.call({"cmd": "request_spawn", "name": name})
            assert asked["ok"], asked
            approval = asked["approval"]["id"]
            replies: dict[str, dict[str, Any]] = {}

            async def decide(node: str, approval: int, out: dict[str, Any]) -> None:
                out[node] = await nodes[node].call({"cmd": verb[node], "id": approval})

            async with trio.open_nursery() as both:  # both operators at once
                both.start_soon(decide, "na", approval, replies)
                both.start_soon(decide, "nb", approval, replies)
            won = [node for node, reply in replies.items() if reply["ok"]]
            assert len(won) == 1, replies
            (winner,) = won
            loser = "nb" if winner == "na" else "na"
            status = {"approve": "approved", "deny": "denied"}[verb[winner]]
            assert replies[winner]["approval"]["status"] == status
            refusal = replies[loser]["error"]
            assert f"approval {approval}" in refusal, refusal
            assert f"on node {winner}" in refusal, refusal
            # One decision, recorded once; the manager heard of it once.
            for node in (a, b):
                listed = await node.call({"cmd": "approvals", "include_resolved": True})
                mine = [x for x in listed["approvals"] if x["id"] == approval]
                assert [x["status"] for x in mine] == [status]
            with psycopg.connect(pg_url) as conn:
                told = conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE recipient = 'manager' "
                    "AND sender = 'system' AND body LIKE %s",
                    (f'approval_resolved %"id": {approval},%',),
                ).fetchone()
                journal = conn.execute("SELECT COUNT(*) FROM operations").fetchone()
                decided = conn.execute(
                    "SELECT decided_node FROM approvals WHERE id = %s", (approval,)
                ).fetchone()
            assert told == (1,)
            assert journal == (0,)
            assert decided == (winner,)
            listed = await b.call({"cmd": "list"})
            spawned = [x["name"] for x in listed["agents"]].count(name)
            assert spawned == (1 if status == "approved" else 0)


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


async def test_a_down_node_shows_its_agents_unreachable_keeps_their_messages_and_returns(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        await spawn_on(a, "alice")
        await spawn_on(b, "bob")
        # Each node and each agent's node, from either node.
        shown = await a.call({"cmd": "nodes"})
        assert shown["node"] == "na"
        table = _by_name(shown["nodes"])
        assert {n: (v["status"], v["agents"], v["this"]) for n, v in table.items()} == {
            "na": ("up", 2, True),  # the manager and alice
            "nb": ("up", 1, False),
        }
        assert table["nb"]["dashboard_url"].startswith("http://127.0.0.1:")
        assert "token" not in table["nb"]["dashboard_url"]
        assert table["nb"]["heartbeat_age_seconds"] < 10
        assert (await b.call({"cmd": "status"}))["node"] == "nb"
        assert ", node nb, " in (await cli(b, "status")).out
        agents = _by_name((await a.call({"cmd": "list"}))["agents"])
        assert {n: (v["node"], v["node_status"]) for n, v in agents.items()} == {
            "manager": ("na", "up"),
            "alice": ("na", "up"),
            "bob": ("nb", "up"),
        }
        assert a.dashboard_login is not None
        state = await trio.to_thread.run_sync(dashboard_state, a.dashboard_login)
        assert state["node"] == "na"
        assert [(n["name"], n["status"]) for n in state["nodes"]] == [("na", "up"), ("nb", "up")]
        assert _by_name(state["agents"])["bob"]["node"] == "nb"

        watcher = await a.host()  # the operator's `hyperhive watch` on na
        assert (await watcher.request({"cmd": "watch"}))["ok"]

        await b.kill()  # the host of nb is lost: its heartbeat stops

        async def bob_unreachable() -> bool:
            listed = _by_name((await a.call({"cmd": "list"}))["agents"])
            return bool(listed["bob"]["node_status"] == "down")

        await wait_until(bob_unreachable, limit=NODE_DOWN_SECONDS + 15, interval=0.2)
        listed = _by_name((await a.call({"cmd": "list"}))["agents"])
        assert listed["alice"]["node_status"] == "up"
        assert _by_name((await a.call({"cmd": "nodes"}))["nodes"])["nb"]["status"] == "down"
        with trio.fail_after(10):
            line = await watcher.receive()
            while line["kind"] != "node_changed":
                line = await watcher.receive()
        assert line["data"] == {"node": "nb", "status": "down", "previous": "up"}
        await watcher.aclose()
        # The operator's CLI: the nodes, and each agent's node (down: unreachable).
        lines = (await cli(a, "nodes")).out.splitlines()
        assert lines[0].split() == ["NODE", "HOST", "STATUS", "HEARTBEAT", "AGENTS", "DASHBOARD"]
        assert lines[1].split()[:2] == ["na", "*"] and lines[1].split()[3] == "up"
        assert lines[2].split()[0] == "nb" and lines[2].split()[2] == "down"
        lines = (await cli(a, "list")).out.splitlines()
        assert lines[0].split()[:3] == ["NAME", "NODE", "ROLE"]
        rows = {line.split()[0]: line for line in lines[1:]}
        assert rows["bob"].split()[1:3] == ["nb", "(down)"]
        assert rows["alice"].split()[1:3] == ["na", "agent"]
        state = await trio.to_thread.run_sync(dashboard_state, a.dashboard_login)
        assert _by_name(state["agents"])["bob"]["node_status"] == "down"
        assert _by_name(state["nodes"])["nb"]["status"] == "down"

        # A message to an agent of the down node is accepted and waits in the database.
        async with await Client.connect(a.paths.agent_socket("alice")) as alice:
            sent = await alice.call(Send("bob", "while you were away"))
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT recipient, delivered_at FROM messages WHERE id = %s",
                (sent.id,),  # type: ignore[attr-defined]
            ).fetchone()
        assert row == ("bob", None)

        # nb returns (its daemon restarted): bob is re-adopted, as on any restart.
        await b.start(nursery)
        assert b.paths.agent_socket("bob").exists()
        async with await Client.connect(b.paths.agent_socket("bob"), hello_role="harness") as bob:
            got = await bob.call(Recv(max=10))
        messages = got.messages  # type: ignore[attr-defined]
        assert [(m.id, m.from_, m.body) for m in messages] == [
            (sent.id, "alice", "while you were away")  # type: ignore[attr-defined]
        ]

        async def bob_reachable() -> bool:
            listed = _by_name((await a.call({"cmd": "list"}))["agents"])
            return bool(listed["bob"]["node_status"] == "up")

        await wait_until(bob_reachable, limit=NODE_HEARTBEAT_SECONDS * 3 + 5, interval=0.2)
        listed = _by_name((await b.call({"cmd": "list"}))["agents"])
        assert (listed["bob"]["node"], listed["bob"]["state"]) == ("nb", agents["bob"]["state"])
        assert listed["bob"]["harness_connected"] is False  # bob's harness hung up above


@attrs.define
class _Agent:
    """One agent of the burst, acting through its socket on its node."""

    name: str
    node: str
    #: Ids of its sends that were acknowledged (a reply with the id came back).
    acked: list[int] = attrs.Factory(list)
    #: Every message handed to it, in order, copies included.
    got: list[Message] = attrs.Factory(list)


async def _send_loop(sock: Path, me: _Agent, to: str, stop: trio.Event) -> None:
    """Send to ``to`` until told to stop or the node goes away (an unanswered send is not
    acknowledged: it may or may not have been committed)."""
    try:
        async with await Client.connect(sock) as client:
            i = 0
            while not stop.is_set():
                reply = await client.call(Send(to, f"{me.name}-{i}"))
                me.acked.append(reply.id)  # type: ignore[attr-defined]
                i += 1
    except (ConnectionLost, OSError):
        return


async def _recv_loop(sock: Path, me: _Agent) -> None:
    """Receive as the agent's harness does (hand out, then acknowledge) until the node goes
    away."""
    try:
        async with await Client.connect(sock, hello_role="harness") as client:
            while True:
                reply = await client.call(Recv(max=MAX_RECV_BATCH, ack=False, wait_seconds=0.2))
                messages = reply.messages  # type: ignore[attr-defined]
                me.got.extend(messages)
                if messages:
                    await client.call(Ack([m.id for m in messages]))
    except (ConnectionLost, OSError):
        return


async def _until(predicate: Callable[[], bool], limit: float) -> None:
    async def check() -> bool:
        return predicate()

    await wait_until(check, limit=limit, interval=0.02)


@pytest.mark.parametrize(
    "victim", ["nb", "na"], ids=["the-receiving-node-dies", "the-sending-node-dies"]
)
async def test_kill_9_of_a_node_in_a_burst_of_cross_node_sends_loses_nothing(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery, victim: str
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        # alice and carol (na) send to bob (nb); bob sends back to alice.
        agents = {
            "alice": _Agent("alice", "na"),
            "carol": _Agent("carol", "na"),
            "bob": _Agent("bob", "nb"),
        }
        for agent in agents.values():
            async with await nodes[agent.node].host() as host:
                await host.call(Spawn(agent.name, node=agent.node))

        def sock(name: str) -> Path:
            return nodes[agents[name].node].paths.agent_socket(name)

        routes = [("alice", "bob"), ("carol", "bob"), ("bob", "alice")]
        stop = trio.Event()
        async with trio.open_nursery() as burst:
            for sender, recipient in routes:
                burst.start_soon(_send_loop, sock(sender), agents[sender], recipient, stop)
            for name in ("alice", "bob"):
                burst.start_soon(_recv_loop, sock(name), agents[name])
            await _until(lambda: all(len(agents[s].acked) >= 20 for s, _ in routes), 60)

            await nodes[victim].kill()  # mid-burst: sends and receives in flight

            survivors = [s for s, _ in routes if agents[s].node != victim]
            after = {s: len(agents[s].acked) for s in survivors}
            # The other node's agents keep sending, to the dead node's agents too.
            await _until(lambda: all(len(agents[s].acked) >= after[s] + 20 for s in survivors), 60)
            stop.set()
            await nodes[victim].start(burst)  # the node returns
            for name in ("alice", "bob"):
                if agents[name].node == victim:
                    burst.start_soon(_recv_loop, sock(name), agents[name])

            def acked_to(recipient: str) -> set[int]:
                return {i for s, r in routes if r == recipient for i in agents[s].acked}

            # Every acknowledged send is delivered once its node is back.
            await _until(
                lambda: all(
                    acked_to(name) <= {m.id for m in agents[name].got} for name in ("alice", "bob")
                ),
                60,
            )
            burst.cancel_scope.cancel()

        for name in ("alice", "bob"):
            seen: set[int] = set()
            for message in agents[name].got:
                # A copy is only ever one marked redelivered (handed out, unacknowledged, then
                # its node died).
                assert message.id not in seen or message.redelivered, (name, message)
                seen.add(message.id)
                assert message.to == name
        assert all(len(agents[s].acked) >= 40 for s in survivors)
        # Nothing acknowledged went missing, and nothing was written that nobody sent.
        with psycopg.connect(pg_url) as conn:
            stored = {
                row[0]: row[1]
                for row in conn.execute(
                    "SELECT id, sender FROM messages WHERE sender IN ('alice', 'carol', 'bob')"
                )
            }
        for sender, _ in routes:
            assert set(agents[sender].acked) <= set(stored)
        assert {m.id for name in ("alice", "bob") for m in agents[name].got} <= set(stored)


async def test_an_approval_claimed_by_a_node_that_died_is_refused_then_taken_over(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na"], nursery) as nodes:
        a = nodes["na"]
        b = node_process(short_tmp, "nb", pg_url)
        b.env["HYPERHIVE_TEST_CRASH_AT"] = "approve-claimed"  # dies once it has claimed one
        try:
            await b.start(nursery)
            asked = await a.call({"cmd": "request_spawn", "name": "orphan"})
            approval = asked["approval"]["id"]
            with trio.fail_after(15):
                async with await b.host() as host:
                    with pytest.raises(ConnectionLost):
                        await host.call(Approve(approval))
                await b.proc.wait()  # type: ignore[union-attr]
            # nb's heartbeat is still fresh: the approval is its to carry out.
            for verb in ("approve", "deny"):
                refused = await a.call({"cmd": verb, "id": approval})
                assert refused["ok"] is False
                assert refused["error"] == (
                    f"approval {approval} was approved on node nb and is being carried out there"
                )

            async def nb_down() -> bool:
                shown = _by_name((await a.call({"cmd": "nodes"}))["nodes"])
                return bool(shown["nb"]["status"] == "down")

            await wait_until(nb_down, limit=NODE_DOWN_SECONDS + 15, interval=0.2)
            # nb is down: the operator on na finishes it (the executor is idempotent).
            done = await a.call({"cmd": "approve", "id": approval})
            assert done["ok"], done
            assert done["approval"]["status"] == "approved"
            listed = _by_name((await a.call({"cmd": "list"}))["agents"])
            assert "orphan" in listed
            with psycopg.connect(pg_url) as conn:
                journal = conn.execute("SELECT COUNT(*) FROM operations").fetchone()
                decided = conn.execute(
                    "SELECT decided_node FROM approvals WHERE id = %s", (approval,)
                ).fetchone()
            assert journal == (0,) and decided == ("na",)
            # nb returns (without the crash) and finds nothing of its own to finish.
            b.env.pop("HYPERHIVE_TEST_CRASH_AT")
            await b.start(nursery)
            late = await b.call({"cmd": "approve", "id": approval})
            assert late["error"] == f"approval {approval} is already approved on node na"
        finally:
            if b.proc is not None and b.proc.returncode is None:
                await b.kill()


async def test_a_returning_node_re_adopts_its_running_agents(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real payload processes (the process backend) that say hello as the harness and wait.
    monkeypatch.setenv("HYPERHIVE_HARNESS_COMMAND", shlex.join(FAKE_HARNESS))
    try:
        async with running_nodes(
            short_tmp, pg_url, ["na", "nb"], nursery, args=["--backend", "process"]
        ) as nodes:
            b = nodes["nb"]
            await spawn_on(b, "bob")

            async def bob_running() -> bool:
                bob = _by_name((await b.call({"cmd": "list"}))["agents"])["bob"]
                return bool(bob["state"] == "running" and bob["harness_connected"])

            await wait_until(bob_running, limit=30, interval=0.1)
            before = _by_name((await b.call({"cmd": "list"}))["agents"])["bob"]
            assert before["backend"] == "process" and process_alive(before["pid"])

            await b.kill()  # the daemon dies; its agents' processes do not
            assert process_alive(before["pid"])
            await b.start(nursery)  # the node returns

            after = _by_name((await b.call({"cmd": "list"}))["agents"])["bob"]
            assert (after["state"], after["pid"], after["node"]) == ("running", before["pid"], "nb")
            assert process_alive(before["pid"])
            # Supervised again: stopping it through its node stops that very process.
            async with await b.host() as host:
                await host.call(Kill("bob"))
            assert not process_alive(before["pid"])
    finally:
        with psycopg.connect(pg_url) as conn:
            pids = [row[0] for row in conn.execute("SELECT pid FROM agents WHERE pid IS NOT NULL")]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
