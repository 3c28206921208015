"""Every system message wakes a parked ``recv``: the broker's transaction announces it.

Each test parks its recipient's ``recv`` on a real agent socket, then makes the hive write a
system message the way it does in service (the operator on the host socket, an agent on its
own socket, a crashing payload), and checks that the parked call returned with it long
before its wait ran out.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperhive import system_messages
from hyperhive.broker import Outbox, Outgoing
from hyperhive.client import Client
from hyperhive.containers import FakeBackend
from hyperhive.errors import RequestRefused
from hyperhive.protocol import (
    Answer,
    Ask,
    Deny,
    Destroy,
    HostAnswer,
    Recv,
    RequestApplyCommit,
    RequestSpawn,
)
from hyperhive.registry import AgentState
from hyperhive.supervisor import Hive
from tests.conftest import Connect, connect_agent, propose_config
from tests.test_runner_rules import fake_hive, running, wait_state

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL

#: Far longer than any of these tests takes: a parked call that returns did so on a wake-up.
PARK_SECONDS = 30


def parse(body: str) -> tuple[str, dict[str, object]]:
    kind, _, payload = body.partition(" ")
    return kind, json.loads(payload)


async def woken_by(
    hive: Hive, client: Client, name: str, act: Callable[[], Awaitable[object]]
) -> list[tuple[str, dict[str, object]]]:
    """Park ``name``'s recv on ``client``, run ``act``, return the system messages it got."""
    got: list[tuple[str, dict[str, object]]] = []

    async def park() -> None:
        reply = await client.call(Recv(wait_seconds=PARK_SECONDS, max=8))
        got.extend(parse(m.body) for m in reply.messages if m.from_ == "system")  # type: ignore[attr-defined]

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(park)
        with trio.fail_after(5):
            await hive.broker.wait_parked(name)
        await act()
    assert trio.current_time() - start < PARK_SECONDS / 2, "the recv ran out instead of waking"
    return got


async def operator(hive: Hive) -> Client:
    return await Client.connect(hive.config.paths.host_socket, hello_role="cli")


async def test_an_approval_decision_wakes_the_manager(hive: Hive, connect: Connect) -> None:
    manager = await connect("manager")
    requested = await manager.call(RequestSpawn("alice"))
    approval_id = requested.approval.id  # type: ignore[attr-defined]
    async with await operator(hive) as host:
        got = await woken_by(
            hive, manager, "manager", lambda: host.call(Deny(approval_id, note="not now"))
        )
    [(kind, payload)] = got
    assert kind == "approval_resolved"
    assert (payload["id"], payload["status"], payload["note"]) == (approval_id, "denied", "not now")


async def test_a_destroy_failing_an_approval_wakes_the_manager(
    hive: Hive, connect: Connect
) -> None:
    """The decision is written in the registry's destroy transaction, and still wakes."""
    await hive.spawn("alice")
    manager = await connect("manager")
    ref = propose_config(hive.config.paths, "alice", "# proposed\n")
    requested = await manager.call(RequestApplyCommit("alice", ref))
    approval_id = requested.approval.id  # type: ignore[attr-defined]
    async with await operator(hive) as host:
        got = await woken_by(hive, manager, "manager", lambda: host.call(Destroy("alice")))
    [(kind, payload)] = got
    assert kind == "approval_resolved"
    assert (payload["id"], payload["status"], payload["note"]) == (
        approval_id,
        "failed",
        "agent destroyed",
    )


async def test_a_peer_question_and_its_answer_wake_target_and_asker(
    hive: Hive, connect: Connect
) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    asked: list[int] = []

    async def ask() -> None:
        asked.append((await alice.call(Ask("Which lib?", to="bob"))).id)  # type: ignore[attr-defined]

    [(kind, payload)] = await woken_by(hive, bob, "bob", ask)
    assert (kind, payload["id"], payload["asker"]) == ("question_asked", asked[0], "alice")

    [(kind, payload)] = await woken_by(
        hive, alice, "alice", lambda: bob.call(Answer(asked[0], "trio"))
    )
    assert (kind, payload["id"], payload["answer"], payload["answerer"]) == (
        "question_answered",
        asked[0],
        "trio",
        "bob",
    )


async def test_an_operator_answer_wakes_the_asker(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    qid = (await alice.call(Ask("Deploy?"))).id  # type: ignore[attr-defined]
    async with await operator(hive) as host:
        got = await woken_by(hive, alice, "alice", lambda: host.call(HostAnswer(qid, "yes")))
    [(kind, payload)] = got
    assert (kind, payload["id"], payload["answerer"]) == ("question_answered", qid, "operator")


async def test_an_expiry_wakes_the_asker(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    qid = (await alice.call(Ask("Quick?", ttl_seconds=1))).id  # type: ignore[attr-defined]

    async def nothing() -> None:
        """The watchdog, not anyone's request, writes the expiry."""

    [(kind, payload)] = await woken_by(hive, alice, "alice", nothing)
    assert (kind, payload["id"], payload["answer"], payload["answerer"]) == (
        "question_answered",
        qid,
        "[expired]",
        "ttl",
    )


async def test_a_crash_report_wakes_the_manager(
    short_tmp: Path, daemon_clock: trio.testing.MockClock, database: str | None
) -> None:
    backend = FakeBackend()
    async with fake_hive(short_tmp, backend, database=database) as hive:
        await running(hive, backend, "manager", 1)
        await hive.spawn("alice")
        handle = await running(hive, backend, "alice", 1)
        manager = await connect_agent(hive.config.paths, "manager")
        async with manager:
            # The manager's own start notice first, so the parked call waits for the crash.
            await manager.call(Recv(max=8))

            async def crash() -> None:
                handle.exit(1, output="Traceback: boom")

            got = await woken_by(hive, manager, "manager", crash)
        [(kind, payload)] = got
        assert kind == "container_crash"
        assert payload["agent"] == "alice" and payload["exit_status"] == 1
        assert "Traceback: boom" in str(payload["stderr_tail"])
        await wait_state(hive, "alice", AgentState.RUNNING)  # restarted after its backoff


async def test_a_failed_transaction_announces_nothing(hive: Hive, connect: Connect) -> None:
    """Rows inserted by a transaction that then fails are rolled back and never announced."""
    manager = await connect("manager")
    before = hive.events.seq

    def fails(_conn: sqlite3.Connection, outbox: Outbox) -> None:
        outbox.insert([Outgoing("system", "manager", "agent_error {}")])
        raise RequestRefused("changed its mind")

    async def fail_then_send() -> None:
        with pytest.raises(RequestRefused, match="changed its mind"):
            await hive.broker.transaction(fails)
        await hive.broker.inject([system_messages.agent_error("alice", "after the failure")])

    [(kind, payload)] = await woken_by(hive, manager, "manager", fail_then_send)
    assert (kind, payload["error"]) == ("agent_error", "after the failure")
    events = hive.events.since(before)
    assert events is not None
    sent = [e.data["body"] for e in events if e.kind == "sent"]
    assert sent == [system_messages.agent_error("alice", "after the failure").body]
    assert [m.body for m in await hive.broker.recent("manager", 10)] == sent
