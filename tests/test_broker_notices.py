"""Start notices in the broker (in-process daemon, real sockets): handed out before older
messages, redelivered ones included; a new notice replaces one not yet acked."""

from __future__ import annotations

import pytest
import trio

from hyperhive.config import PROTOCOL_VERSION
from hyperhive.protocol import Ack, AckReply, Hello, Recv, RecvReply, Send
from hyperhive.supervisor import Hive
from tests.conftest import Connect

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


async def bodies(reply: object) -> list[str]:
    assert isinstance(reply, RecvReply)
    return [m.body for m in reply.messages]


async def test_a_notice_comes_before_older_messages_even_redelivered_ones(
    hive: Hive, connect: Connect
) -> None:
    bob = await connect("bob")
    alice = await connect("alice", role="harness")
    await bob.call(Send("alice", "first"))
    await bob.call(Send("alice", "second"))
    taken = await alice.call(Recv(max=1, ack=False))  # taken, never acked
    assert await bodies(taken) == ["first"]
    await hive.broker.notice("alice", "Start notice: you were restarted")
    # The harness comes back: "first" is handed out again, but after the notice.
    await alice.call(Hello(role="harness", protocol=PROTOCOL_VERSION))
    order = []
    for _ in range(3):
        order += await bodies(await alice.call(Recv(max=1, ack=True)))
    assert order == ["Start notice: you were restarted", "first", "second"]
    assert await bodies(await alice.call(Recv(max=32))) == []


async def test_a_parked_receiver_gets_the_notice(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    got: list[str] = []

    async def receive() -> None:
        got.extend(await bodies(await alice.call(Recv(wait_seconds=30, max=32))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await hive.broker.wait_parked("alice")
        await hive.broker.notice("alice", "Start notice: you were started")
    assert got == ["Start notice: you were started"]


async def test_a_new_notice_replaces_one_not_yet_acked(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice", role="harness")
    old = await hive.broker.notice("alice", "notice one")
    held = await alice.call(Recv(max=1, ack=False))
    assert await bodies(held) == ["notice one"]  # delivered, not acked
    await hive.broker.notice("alice", "notice two")
    await hive.broker.notice("alice", "notice three")
    assert await bodies(await alice.call(Recv(max=32))) == ["notice three"]
    # The replaced notice is gone: acking it does nothing.
    acked = await alice.call(Ack(ids=[old.id]))
    assert isinstance(acked, AckReply) and acked.acked == 0
    # An acked notice stays acked history: a later notice does not touch it.
    await hive.broker.notice("alice", "notice four")
    recent = [m.body for m in await hive.broker.recent("alice", 10)]
    assert "notice three" in recent and "notice four" in recent
