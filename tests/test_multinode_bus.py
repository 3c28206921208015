"""Nodes of one hive wake each other's receivers and show each other's events: real
``hyperhive run`` processes sharing one PostgreSQL database, agents acting through their
own sockets, the operator through a node's dashboard (plain HTTP, and Chromium)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import psycopg
import trio
from playwright.sync_api import Page, expect

from hyperhive.client import Client
from hyperhive.events import EventHub
from hyperhive.kinds import NodeStatus
from hyperhive.nodes import Nodes
from hyperhive.protocol import (
    Ask,
    IdReply,
    Pause,
    Recv,
    RecvReply,
    Resume,
    Send,
    SendReply,
    SetStatus,
)
from hyperhive.protocol.event_payloads import NodeChanged, SpaceChanged, StatusChanged
from hyperhive.shared_events import (
    FOLLOWED_KINDS,
    SHARED_KINDS,
    SharedEvents,
    StoredEvent,
    decode_payload,
)
from hyperhive.store import BROKER_MIGRATIONS, open_store
from tests.conftest import DaemonProcess, wait_until
from tests.dashboard.conftest import (
    BrowserThread,
    EventStream,
    SSEvent,
    _connect,
    _next_event,
    chromium,  # noqa: F401 - the fixture
    http,
    login,
    open_dashboard,
)
from tests.multinode import running_nodes, spawn_on

#: A recv parked on one node must return this long after a send on another, at most (its
#: wait is 30 s: returning at all before that is the wake).
WAKE_LIMIT = 2.0


async def knows(node: DaemonProcess, names: Iterable[str]) -> None:
    """Until ``node`` lists every one of ``names`` (it learns of other nodes' agents)."""
    wanted = set(names)

    async def listed() -> bool:
        agents = (await node.call({"cmd": "list"}))["agents"]
        return wanted <= {agent["name"] for agent in agents}

    await wait_until(listed)


async def timed_recv(client: Client, wait: float = 30) -> tuple[RecvReply, float]:
    start = trio.current_time()
    reply = await client.call(Recv(wait_seconds=wait, max=10))
    assert isinstance(reply, RecvReply)
    return reply, trio.current_time() - start


async def test_a_send_on_one_node_wakes_a_recv_parked_on_another(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb", "nc"], nursery) as nodes:
        na, nb, nc = nodes["na"], nodes["nb"], nodes["nc"]
        await spawn_on(na, "alice")
        await spawn_on(nb, "bob")
        await spawn_on(nc, "carol")
        for node in nodes.values():
            await knows(node, ["alice", "bob", "carol"])
        with psycopg.connect(pg_url) as conn:
            placed = dict(conn.execute("SELECT name, node FROM agents").fetchall())
        assert (placed["alice"], placed["bob"], placed["carol"]) == ("na", "nb", "nc")
        async with (
            await Client.connect(na.paths.agent_socket("alice")) as alice,
            await Client.connect(nb.paths.agent_socket("bob")) as bob,
            await Client.connect(nc.paths.agent_socket("carol")) as carol,
        ):
            # Both ways, each agent through its own node's socket.
            await alice.call(Send("bob", "hello from na"))
            reply, _ = await timed_recv(bob, wait=0)
            assert [(m.from_, m.body) for m in reply.messages] == [("alice", "hello from na")]
            await bob.call(Send("alice", "hello from nb"))
            reply, _ = await timed_recv(alice, wait=0)
            assert [(m.from_, m.body) for m in reply.messages] == [("bob", "hello from nb")]

            # A recv parked on one node returns at once when another node's agent sends.
            for receiver, receiver_node, sender, to in (
                (bob, nb, alice, "bob"),
                (alice, na, bob, "alice"),
                (carol, nc, bob, "carol"),
                (bob, nb, carol, "bob"),
            ):
                done: list[tuple[RecvReply, float]] = []

                async def park(receiver: Client = receiver, done: list[Any] = done) -> None:
                    done.append(await timed_recv(receiver))

                async with trio.open_nursery() as inner:
                    inner.start_soon(park)
                    await receiver_node.wait_parked(1)
                    sent_at = trio.current_time()
                    await sender.call(Send(to, f"wake {to}"))
                [(reply, _)] = done
                latency = trio.current_time() - sent_at
                assert [m.body for m in reply.messages] == [f"wake {to}"]
                assert latency < WAKE_LIMIT, f"the parked recv took {latency:.3f} s"

            # A broadcast on na reaches bob parked on nb and carol parked on nc as promptly.
            got: dict[str, list[str]] = {}

            async def park_for(name: str, client: Client) -> None:
                reply, _ = await timed_recv(client)
                got[name] = [m.body for m in reply.messages]

            async with trio.open_nursery() as inner:
                inner.start_soon(park_for, "bob", bob)
                inner.start_soon(park_for, "carol", carol)
                await nb.wait_parked(1)
                await nc.wait_parked(1)
                sent_at = trio.current_time()
                await alice.call(Send("*", "to all"))
            assert got == {
                "bob": ["[broadcast to all agents] to all"],
                "carol": ["[broadcast to all agents] to all"],
            }
            assert trio.current_time() - sent_at < WAKE_LIMIT


async def test_a_pause_and_resume_made_on_one_node_reach_a_recv_parked_on_another(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        na, nb = nodes["na"], nodes["nb"]
        await spawn_on(nb, "bob")
        await knows(na, ["bob"])
        async with await Client.connect(nb.paths.agent_socket("bob")) as bob:
            # Paused on na: bob's recv parked on nb learns of it at once (returns empty).
            result: list[tuple[RecvReply, float]] = []

            async def park() -> None:
                result.append(await timed_recv(bob))

            async with trio.open_nursery() as inner:
                inner.start_soon(park)
                await nb.wait_parked(1)
                async with await na.host() as host:
                    await host.call(Pause(["bob"], "for the test"))
            [(reply, waited)] = result
            assert reply.messages == [] and waited < WAKE_LIMIT
            # A message waits while paused; resumed on na, the recv parked on nb takes it.
            async with await na.host() as host:
                await host.call(Send("bob", "after the pause"))
            result.clear()
            async with trio.open_nursery() as inner:
                inner.start_soon(park)
                await nb.wait_parked(1)
                resumed_at = trio.current_time()
                async with await na.host() as host:
                    await host.call(Resume(["bob"]))
            [(reply, _)] = result
            assert [m.body for m in reply.messages] == ["after the pause"]
            assert trio.current_time() - resumed_at < WAKE_LIMIT


async def test_a_question_asked_on_one_node_is_answered_on_another_nodes_dashboard(
    short_tmp: Path,
    pg_url: str,
    nursery: trio.Nursery,
    chromium: BrowserThread,  # noqa: F811 - the fixture imported above
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        na, nb = nodes["na"], nodes["nb"]
        await spawn_on(nb, "bob")
        await knows(na, ["bob"])
        assert na.dashboard_login is not None
        problems: list[str] = []
        # The page is open on na's dashboard before bob asks: the question arrives live.
        context, page = await chromium.run(
            open_dashboard, chromium.browser, na.dashboard_login, problems
        )
        try:
            async with await Client.connect(nb.paths.agent_socket("bob")) as bob:
                asked = await bob.call(Ask("Ship it?", ["yes", "no"]))
                assert isinstance(asked, IdReply)

                def answer(page: Page) -> None:
                    page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
                    card = page.get_by_role("article", name=f"question #{asked.id}")
                    expect(card).to_contain_text("bob asks you")
                    expect(card).to_contain_text("Ship it?")
                    card.get_by_role("radio", name="yes").check()
                    card.get_by_role("button", name="4NSW3R").click()
                    expect(card.locator("output")).to_have_text("answered")

                await chromium.run(answer, page)
                # The answer reaches bob on nb: his parked recv is woken by na's commit.
                reply, waited = await timed_recv(bob)
                assert waited < WAKE_LIMIT
                [message] = reply.messages
                kind, _, payload = message.body.partition(" ")
                assert (message.from_, kind) == ("system", "question_answered")
                assert json.loads(payload) == {
                    "id": asked.id,
                    "question": "Ship it?",
                    "answer": "yes",
                    "answerer": "operator",
                }
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
        assert problems == []


@asynccontextmanager
async def event_stream(
    node: DaemonProcess, last_event_id: int | None = None
) -> AsyncIterator[EventStream]:
    """``GET /api/stream`` of ``node``'s dashboard, logged in with its token."""
    base, cookie = await login(node)
    stream, host = await _connect(base)
    conn = h11.Connection(h11.CLIENT)
    headers = {"host": host, "accept": "text/event-stream", "cookie": cookie}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    request = h11.Request(method="GET", target="/api/stream", headers=list(headers.items()))
    await stream.send_all(conn.send(request) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    response = await _next_event(conn, stream)
    assert isinstance(response, h11.Response) and response.status_code == 200
    events = EventStream(stream, conn, response.status_code)
    try:
        yield events
    finally:
        await events.aclose()


async def next_matching(stream: EventStream, kind: str, **fields: Any) -> SSEvent:
    with trio.fail_after(15):
        while True:
            event = await stream.next()
            if event.kind == kind and all(event.data.get(k) == v for k, v in fields.items()):
                return event


async def test_a_nodes_event_stream_shows_what_happens_on_another_node(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        na, nb = nodes["na"], nodes["nb"]
        await spawn_on(na, "alice")
        await spawn_on(nb, "bob")
        await knows(na, ["bob"])
        await knows(nb, ["alice"])
        async with (
            event_stream(na) as stream,
            await Client.connect(nb.paths.agent_socket("bob")) as bob,
        ):
            await bob.call(SetStatus("deploying"))
            status = await next_matching(
                stream, "status_changed", name="bob", status_text="deploying"
            )
            sent = await bob.call(Send("alice", "from nb"))
            assert isinstance(sent, SendReply)
            sent_event = await next_matching(stream, "sent", sender="bob", body="from nb")
            assert sent_event.data["id"] == sent.id
            assert status.id is not None and sent_event.id is not None
            assert sent_event.id > status.id
        # Replay by Last-Event-ID is na's own numbering, nb's events in it.
        async with event_stream(na, last_event_id=status.id - 1) as replay:
            first = await replay.next()
            assert (first.id, first.kind, first.data["status_text"]) == (
                status.id,
                "status_changed",
                "deploying",
            )
            again = await next_matching(replay, "sent", sender="bob", body="from nb")
            assert again.id == sent_event.id
        # na's snapshot holds nb's agents, questions and approvals too.
        async with await Client.connect(nb.paths.agent_socket("bob")) as bob:
            asked = await bob.call(Ask("Which day?"))
            assert isinstance(asked, IdReply)
        await nb.call({"cmd": "request_spawn", "name": "carol"})
        base, cookie = await login(na)

        async def state_shows_nb() -> bool:
            state = (await http(base, "GET", "/api/state", headers={"cookie": cookie})).json()
            agents = {agent["name"]: agent for agent in state["agents"]}
            return (
                agents.get("bob", {}).get("status_text") == "deploying"
                and any(q["id"] == asked.id for q in state["questions"])
                and any(a["agent"] == "carol" for a in state["approvals"])
            )

        await wait_until(state_shows_nb)
        # nb never shows its own events twice: they come back from nobody.
        async with event_stream(nb, last_event_id=0) as own:
            seen = []
            with trio.fail_after(15):
                while True:
                    event = await own.next()
                    seen.append(event)
                    if event.kind == "sent" and event.data.get("body") == "from nb":
                        break
            assert [e.kind for e in seen].count("status_changed") == 1


async def test_a_lone_node_on_postgresql_writes_no_shared_events(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na"], nursery) as nodes:
        na = nodes["na"]
        await spawn_on(na, "alice")
        async with await Client.connect(na.paths.agent_socket("alice")) as alice:
            await alice.call(SetStatus("alone"))
            await alice.call(Send("operator", "hi"))
        with psycopg.connect(pg_url) as conn:
            [(count,)] = conn.execute("SELECT COUNT(*) FROM hive_events").fetchall()
        assert count == 0


def test_other_nodes_events_are_decoded_through_their_payloads() -> None:
    assert decode_payload("status_changed", {"name": "bob", "status_text": "x"}) is not None
    # A kind this node does not know (a newer node's), or one it does not show, or fields
    # that do not fit: skipped.
    assert decode_payload("teleported", {"name": "bob"}) is None
    assert decode_payload("space_changed", {"free": 1, "low": False}) is None
    assert decode_payload("status_changed", {"name": "bob"}) is None
    assert decode_payload("status_changed", ["bob"]) is None
    # agent_changed and agent_purged come from each node's own re-read of the row.
    assert FOLLOWED_KINDS <= SHARED_KINDS


class _SharedStore:
    shared = True


class _Node:
    name = "na"

    def on(self, topic: str, handler: Any) -> None:
        pass


def test_a_writer_that_falls_behind_drops_events_and_never_writes_others_events() -> None:
    hub = EventHub()
    shared = SharedEvents(_SharedStore(), hub, _Node(), queue_size=2)  # type: ignore[arg-type]
    hub.emit(StatusChanged(name="bob", status_text="before"))
    assert shared.dropped == 0  # no other node up: nothing is written, nothing dropped
    # The node watch says nb is up: from now on this node's events are written.
    hub.emit(NodeChanged(node="nb", status=NodeStatus.UP, previous=None))
    for i in range(5):
        hub.emit(StatusChanged(name="bob", status_text=f"s{i}"))
    hub.emit(SpaceChanged(free=1, low=True))  # a node's own: not shared
    assert shared.dropped == 3
    # nb down: nothing is written (nor dropped) any more.
    hub.emit(NodeChanged(node="nb", status=NodeStatus.DOWN, previous=NodeStatus.UP))
    hub.emit(StatusChanged(name="bob", status_text="after"))
    assert shared.dropped == 3
    # Another node's events are published here, not queued to be written again.
    shared._send, shared._receive = trio.open_memory_channel(10)
    shared._publish(
        [
            StoredEvent(7, "nb", 1.0, "status_changed", {"name": "carol", "status_text": "x"}),
            StoredEvent(8, "nb", 1.0, "agent_changed", {"name": "carol"}),  # the follow's
        ]
    )
    assert [e.data for e in hub.history()[-1:]] == [{"name": "carol", "status_text": "x"}]
    assert shared.received == 1
    assert shared._receive.statistics().current_buffer_used == 0


async def test_rows_are_deleted_once_older_than_the_keep_time(short_tmp: Path, pg_url: str) -> None:
    now = [1000.0]
    async with open_store(
        pg_url, short_tmp / "unused", synchronous="FULL", migrations=BROKER_MIGRATIONS
    ) as db:
        hub = EventHub(clock=lambda: now[0])
        nodes = Nodes(db, "na", clock=lambda: now[0])
        shared = SharedEvents(db, hub, nodes, clock=lambda: now[0], keep_seconds=3600)

        def ids() -> list[int]:
            with psycopg.connect(pg_url) as conn:
                return [r[0] for r in conn.execute("SELECT id FROM hive_events ORDER BY id")]

        async with trio.open_nursery() as nursery:
            await nursery.start(shared.run)
            # Another node is up, as this node's watch says (it reads nothing).
            hub.emit(NodeChanged(node="nb", status=NodeStatus.UP, previous=None))
            for minute in range(70):
                now[0] = 1000.0 + 60 * minute
                hub.emit(StatusChanged(name="bob", status_text=f"minute {minute}"))

                async def written(newest: int = minute + 1) -> bool:
                    return max(await trio.to_thread.run_sync(ids), default=0) >= newest

                await wait_until(written)  # before the next minute's
            kept = await trio.to_thread.run_sync(ids)
            nursery.cancel_scope.cancel()
    # Minute m's batch deletes the rows up to the id noted at minute m - 60 (its own row
    # then): after minute 69, the rows of minutes 10 to 69 are left.
    assert kept == list(range(11, 71))
