"""Broker rules over real sockets (in-process daemon): routing, FIFO, acks, redelivery."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable

import pytest
import trio

from hyperhive.client import Client
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.protocol import Ack, Recv, Send, Status
from hyperhive.supervisor import Hive
from tests.conftest import Connect

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL

Agents = Callable[..., Awaitable[dict[str, Client]]]


@pytest.fixture
def agents(connect: Connect) -> Callable[..., Awaitable[dict[str, Client]]]:
    async def make(*names: str) -> dict[str, Client]:
        return {name: await connect(name) for name in names}

    return make


async def test_send_and_recv_fifo_with_sender_from_the_socket(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    for i in range(5):
        await c["alice"].call(Send("bob", f"m{i}"))
    reply = await c["bob"].call(Recv(max=3))
    assert [m.body for m in reply.messages] == ["m0", "m1", "m2"]  # type: ignore[attr-defined]
    assert {m.from_ for m in reply.messages} == {"alice"}  # type: ignore[attr-defined]
    reply = await c["bob"].call(Recv(max=32))
    assert [m.body for m in reply.messages] == ["m3", "m4"]  # type: ignore[attr-defined]
    assert (await c["bob"].call(Recv())).messages == []  # type: ignore[attr-defined]


async def test_identity_cannot_be_claimed_in_a_payload(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    reply = await c["alice"].request({"cmd": "send", "to": "bob", "body": "x", "from": "bob"})
    assert reply["ok"] is False and "unknown fields: from" in reply["error"]
    await c["alice"].call(Send("bob", "hi"))
    got = await c["bob"].request({"cmd": "recv"})
    assert got["messages"][0]["from"] == "alice"


async def test_unknown_recipient_is_refused_and_nothing_is_written(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice")
    for to in ("bobb", "Bob", "../x", "a/b", "toolongname1", "system"):
        reply = await c["alice"].request({"cmd": "send", "to": to, "body": "x"})
        assert reply["ok"] is False and "recipient" in reply["error"], (to, reply)
    assert await hive.broker.unread_by_recipient() == {}


async def test_operator_and_manager_are_recipients(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "manager")
    await c["alice"].call(Send("operator", "for you"))
    await c["alice"].call(Send("manager", "for the manager"))
    got = await c["manager"].call(Recv())
    assert got.messages[0].body == "for the manager"  # type: ignore[attr-defined]
    inbox = await hive.operator_inbox(10)
    assert [m.body for m in inbox] == ["for you"]
    assert inbox[0].acked_at is None  # as it was before this read
    assert await hive.broker.unread("operator") == 0


async def test_broadcast_reaches_every_other_live_agent_once(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob", "carol", "manager")
    await hive.spawn("dead")
    await hive.destroy("dead", purge=False)
    reply = await c["alice"].request({"cmd": "send", "to": "*", "body": "all hands"})
    assert reply["ok"] and len(reply["ids"]) == 3
    for name in ("bob", "carol", "manager"):
        got = await c[name].call(Recv(max=5))
        assert len(got.messages) == 1  # type: ignore[attr-defined]
        body = got.messages[0].body  # type: ignore[attr-defined]
        assert "broadcast" in body and body.endswith("all hands")
    assert (await c["alice"].call(Recv())).messages == []  # type: ignore[attr-defined]
    assert await hive.broker.unread("dead") == 0


async def test_in_reply_to_must_name_a_message(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    sent = await c["alice"].call(Send("bob", "question?"))
    await c["bob"].call(Send("alice", "answer", in_reply_to=sent.id))  # type: ignore[attr-defined]
    got = await c["alice"].call(Recv())
    assert got.messages[0].in_reply_to == sent.id  # type: ignore[attr-defined]
    reply = await c["bob"].request({"cmd": "send", "to": "alice", "body": "x", "in_reply_to": 999})
    assert reply == {"ok": False, "error": "in_reply_to 999: no such message"}


async def test_message_to_a_tombstone_waits_for_revival(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    await hive.destroy("bob", purge=False)
    await c["alice"].call(Send("bob", "are you there?"))
    await hive.spawn("bob")  # revived with its kept state
    bob = await connect("bob", spawn=False)
    got = await bob.call(Recv())
    assert got.messages[0].body == "are you there?"  # type: ignore[attr-defined]


async def test_ack_false_keeps_message_until_ack_and_hello_redelivers(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    await c["alice"].call(Send("bob", "work item"))
    harness = await connect("bob", role="harness")
    first = (await harness.call(Recv(ack=False))).messages  # type: ignore[attr-defined]
    assert [m.redelivered for m in first] == [False]
    assert (await harness.call(Recv())).messages == []  # type: ignore[attr-defined]
    # The harness dies before acking; its successor says hello and gets the message again.
    await harness.aclose()
    harness = await connect("bob", role="harness")
    again = (await harness.call(Recv(ack=False))).messages  # type: ignore[attr-defined]
    assert [(m.id, m.redelivered) for m in again] == [(first[0].id, True)]
    assert (await harness.call(Ack([first[0].id, first[0].id]))).acked == 1  # type: ignore[attr-defined]
    assert (await harness.call(Ack([first[0].id]))).acked == 0  # type: ignore[attr-defined]
    await harness.aclose()
    harness = await connect("bob", role="harness")
    assert (await harness.call(Recv())).messages == []  # type: ignore[attr-defined]


async def test_mcp_hello_does_not_redeliver(hive: Hive, agents: Agents, connect: Connect) -> None:
    c = await agents("alice", "bob")
    await c["alice"].call(Send("bob", "in flight"))
    harness = await connect("bob", role="harness")
    await harness.call(Recv(ack=False))
    await connect("bob", role="mcp")
    assert (await harness.call(Status())).unread == 0  # type: ignore[attr-defined]


async def test_cannot_ack_someone_elses_message(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    sent = await c["alice"].call(Send("bob", "x"))
    await c["bob"].call(Recv(ack=False))
    assert (await c["alice"].call(Ack([sent.id]))).acked == 0  # type: ignore[attr-defined]
    assert (await c["bob"].call(Ack([sent.id]))).acked == 1  # type: ignore[attr-defined]


async def test_parked_recv_is_woken_by_the_send(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    got: list[str] = []

    async def park() -> None:
        reply = await c["bob"].call(Recv(wait_seconds=180))
        got.extend(m.body for m in reply.messages)  # type: ignore[attr-defined]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(park)
        with trio.fail_after(5):
            await hive.broker.wait_parked("bob")
        await c["alice"].call(Send("bob", "wake up"))
    assert got == ["wake up"]


async def test_recv_wait_returns_empty_at_the_deadline(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice")
    start = trio.current_time()
    reply = await c["alice"].call(Recv(wait_seconds=0.2))
    assert reply.messages == []  # type: ignore[attr-defined]
    assert trio.current_time() - start >= 0.2


async def test_wake_injects_into_own_inbox_with_a_label(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice")
    reply = await c["alice"].request({"cmd": "wake", "from": "forge: PR #42", "body": "look"})
    assert reply["ok"]
    got = await c["alice"].request({"cmd": "recv"})
    assert got["messages"][0]["from"] == "forge: PR #42"
    assert got["messages"][0]["to"] == "alice"


async def test_a_wake_label_cannot_be_a_principal(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    """An agent's own process may wake it, but never in the name of someone else."""
    c = await agents("alice", "bob")
    for label in ("operator", "system", "manager", "reminder", "bob", " Alice ", "x" * 201, "a\nb"):
        reply = await c["alice"].request({"cmd": "wake", "from": label, "body": "obey"})
        assert not reply["ok"], label
    assert (await c["alice"].call(Status())).unread == 0  # type: ignore[attr-defined]


async def test_recent_and_status(hive: Hive, agents: Agents, connect: Connect) -> None:
    c = await agents("alice", "bob")
    for i in range(3):
        await c["alice"].call(Send("bob", f"m{i}"))
    assert (await c["bob"].call(Status())).unread == 3  # type: ignore[attr-defined]
    await c["bob"].call(Recv())
    recent = await c["bob"].request({"cmd": "recent", "limit": 2})
    assert [m["body"] for m in recent["messages"]] == ["m1", "m2"]
    assert all(m["delivered_at"] is None for m in recent["messages"])
    too_many = await c["bob"].request({"cmd": "recent", "limit": 201})
    assert too_many["ok"] is False


async def test_sent_and_delivered_events_with_monotonic_seq(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    events = hive.events.subscribe()
    await c["alice"].call(Send("bob", "x"))
    await c["bob"].call(Recv())
    kinds = []
    with trio.fail_after(5):
        while len(kinds) < 2:
            kinds.append(await events.receive())
    assert [e.kind for e in kinds] == ["sent", "delivered"]
    assert kinds[0].seq < kinds[1].seq
    assert kinds[0].data["recipient"] == "bob" and kinds[1].data["id"] == kinds[0].data["id"]


async def test_empty_body_refused(hive: Hive, agents: Agents, connect: Connect) -> None:
    c = await agents("alice")
    try:
        await c["alice"].call(Send("operator", "   "))
    except ClientError as exc:
        assert "empty" in str(exc)
    else:
        raise AssertionError("empty body accepted")


async def test_retention_deletes_only_old_acked_messages(hive: Hive, agents: Agents) -> None:
    c = await agents("alice", "bob")
    ids = [(await c["alice"].call(Send("bob", f"m{i}"))).id for i in range(4)]  # type: ignore[attr-defined]
    await c["bob"].call(Recv(max=2))  # m0, m1 acked now
    await c["bob"].call(Recv(ack=False))  # m2 delivered, not acked; m3 never delivered
    month_ago = 31 * 24 * 3600

    def backdate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE messages SET sent_at = sent_at - ?, "
            "acked_at = acked_at - ? WHERE id IN (?, ?, ?)",
            (month_ago, month_ago, ids[0], ids[2], ids[3]),
        )

    await hive.db.transaction(backdate)
    reply = await c["bob"].request({"cmd": "status"})
    assert reply["unread"] == 1
    assert (await hive.broker.vacuum(hive.config.retention_seconds)).deleted == 1  # only m0
    left = await hive.db.transaction(
        lambda conn: [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY id")]
    )
    assert left == ids[1:]


async def test_hung_up_long_poll_does_not_swallow_the_next_message(
    hive: Hive, agents: Agents, connect: Connect
) -> None:
    c = await agents("alice", "bob")
    for ack in (True, False):
        gone = await connect("bob", spawn=False)

        async def park(client: Client = gone, ack: bool = ack) -> None:
            with contextlib.suppress(ConnectionLost, trio.ClosedResourceError):
                await client.call(Recv(wait_seconds=180, ack=ack))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(park)
            with trio.fail_after(5):
                await hive.broker.wait_parked("bob")
            nursery.cancel_scope.cancel()  # the client process dies mid-poll
        await gone.aclose()
        with trio.fail_after(5):  # the daemon notices the hang-up by itself
            await hive.broker.wait_parked("bob", 0, at_most=True)
        await c["alice"].call(Send("bob", f"after the hang-up (ack={ack})"))
        got = await c["bob"].call(Recv())
        assert [m.body for m in got.messages] == [f"after the hang-up (ack={ack})"]  # type: ignore[attr-defined]


async def test_one_client_serves_concurrent_callers_in_turn_and_a_cancelled_one_sends_nothing(
    hive: Hive, agents: Agents
) -> None:
    c = await agents("alice", "bob")
    alice = c["alice"]
    sent: dict[int, int] = {}

    async def send(i: int) -> None:
        sent[i] = (await alice.call(Send("bob", f"m{i}"))).id  # type: ignore[attr-defined]

    # Twenty callers at once on one connection: each gets the reply to its own request.
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(send, i)
    reply = await c["bob"].call(Recv(max=32))
    by_id = {m.id: m.body for m in reply.messages}  # type: ignore[attr-defined]
    assert by_id == {sent[i]: f"m{i}" for i in range(20)}
    # A caller cancelled before its request went out sends nothing, and the connection's
    # next request still gets its own reply.
    with trio.CancelScope() as scope:
        scope.cancel()
        await alice.call(Send("bob", "never"))
    assert (await alice.call(Status())).unread == 0  # type: ignore[attr-defined]
    assert (await c["bob"].call(Status())).unread == 0  # type: ignore[attr-defined]


async def test_a_long_poll_with_messages_waiting_gets_them_at_once_unless_paused(
    hive: Hive, agents: Agents
) -> None:
    c = await agents("alice", "bob")
    for body in ("m0", "m1"):
        await c["alice"].call(Send("bob", body))
    seq = hive.events.seq
    with trio.fail_after(10):  # a long-poll that parked would wait its 60 s: no send follows
        reply = await c["bob"].call(Recv(wait_seconds=60, max=32))
    assert [m.body for m in reply.messages] == ["m0", "m1"]  # type: ignore[attr-defined]
    delivered = [e for e in hive.events.history() if e.seq > seq and e.kind == "delivered"]
    assert [(e.data["recipient"], e.data["acked"]) for e in delivered] == [("bob", True)] * 2
    # Paused, bob's long-poll waits with a message in its inbox; the resume hands it over.
    await hive.pause("bob", "over budget", "operator")
    await c["alice"].call(Send("bob", "m2"))
    got: list[str] = []

    async def receive() -> None:
        reply = await c["bob"].call(Recv(wait_seconds=60, max=32))
        got.extend(m.body for m in reply.messages)  # type: ignore[attr-defined]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await hive.broker.wait_parked("bob")
        assert got == []
        await hive.resume("bob", "operator")
    assert got == ["m2"]
