"""The broker's hot path over real sockets (in-process daemon, a real store): a send to a parked
``recv`` hands the message over in its own transaction, reads run without the writer, and a
receiver gone at the hand-over loses nothing."""

from __future__ import annotations

import functools
import sqlite3
import threading

import pytest
import trio

from hyperhive.broker import READ_BOUND
from hyperhive.protocol import Recv, Send, Status
from hyperhive.supervisor import Hive
from tests.conftest import Connect

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


def transactions(hive: Hive) -> int:
    return hive.db.statistics().transactions


async def test_a_send_hands_over_to_a_parked_receiver_in_one_transaction(
    hive: Hive, connect: Connect
) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    got: list[object] = []
    received = trio.Event()
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            got.append(await bob.call(Recv(wait_seconds=30, max=8)))
            received.set()

        nursery.start_soon(receive)
        await hive.broker.wait_parked("bob")
        before = transactions(hive)
        sent = await alice.call(Send("bob", "over to you"))
        with trio.fail_after(10):
            await received.wait()
        # The send's transaction inserted the message and took it for bob: nothing else.
        assert transactions(hive) == before + 1
    (reply,) = got
    assert [(m.id, m.body, m.redelivered) for m in reply.messages] == [  # type: ignore[attr-defined]
        (sent.ids[0], "over to you", False)  # type: ignore[attr-defined]
    ]
    assert (await bob.call(Status())).unread == 0  # type: ignore[attr-defined]
    # Acked at the hand-over (recv's default): nothing comes again after a harness hello.
    assert await hive.broker.requeue_unacked("bob") == 0


@pytest.mark.sqlite_only("PostgreSQL has no reader on the event loop: reads queue as transactions")
async def test_an_empty_recv_and_status_make_no_transaction(hive: Hive, connect: Connect) -> None:
    bob = await connect("bob")
    before = transactions(hive)
    for _ in range(5):
        assert (await bob.call(Recv())).messages == []  # type: ignore[attr-defined]
        assert (await bob.call(Status())).unread == 0  # type: ignore[attr-defined]
    # A long-poll that times out parks and leaves without a transaction too.
    assert (await bob.call(Recv(wait_seconds=0.2))).messages == []  # type: ignore[attr-defined]
    assert transactions(hive) == before


async def test_reads_see_every_commit_at_once(hive: Hive, connect: Connect) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    for i in range(1, 6):
        await alice.call(Send("bob", f"m{i}"))
        # The send's reply came after its COMMIT: the read connection sees it already.
        assert (await bob.call(Status())).unread == i  # type: ignore[attr-defined]
    reply = await bob.call(Recv(max=2))
    assert [m.body for m in reply.messages] == ["m1", "m2"]  # type: ignore[attr-defined]
    assert (await bob.call(Status())).unread == 3  # type: ignore[attr-defined]


async def test_hand_over_keeps_fifo_and_the_receivers_limit(hive: Hive, connect: Connect) -> None:
    bob = await connect("bob")
    alice_sends = [await connect("alice", spawn=i == 0) for i in range(3)]
    got: list[list[str]] = []

    async def receive() -> None:
        reply = await bob.call(Recv(wait_seconds=30, max=2))
        got.append([m.body for m in reply.messages])  # type: ignore[attr-defined]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await hive.broker.wait_parked("bob")
        # Hold the writer so three sends queue while bob is parked: the first claims bob's
        # recv, and its transaction (the first of the batch) finds only its own message.
        gate, holding = threading.Event(), threading.Event()

        def hold(_conn: sqlite3.Connection) -> None:
            holding.set()
            gate.wait(30)

        # A long job: it holds the writer's thread, not the event loop.
        nursery.start_soon(functools.partial(hive.db.transaction, hold, slow=True))
        with trio.fail_after(10):
            while not holding.is_set():  # noqa: ASYNC110 - set by the writer's thread
                await trio.sleep(0.01)
        async with trio.open_nursery() as senders:
            for i in range(3):
                senders.start_soon(alice_sends[i].call, Send("bob", f"m{i}"))
                with trio.fail_after(10):  # queued in this order behind the held transaction
                    while hive.db.statistics().queued < i + 1:  # noqa: ASYNC110
                        await trio.sleep(0.01)
            gate.set()
    assert got == [["m0"]]
    reply = await bob.call(Recv(max=32))
    assert [m.body for m in reply.messages] == ["m1", "m2"]  # type: ignore[attr-defined]


async def test_a_receiver_gone_at_the_hand_over_finds_the_message_again(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice")
    await hive.spawn("bob")
    # bob's harness process: a long-poll on its own connection, then it dies.
    bob = await trio.open_unix_socket(str(hive.config.paths.agent_socket("bob")))
    await bob.send_all(b'{"cmd":"recv","wait_seconds":30}\n')
    await hive.broker.wait_parked("bob")
    gate, holding = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        holding.set()
        gate.wait(30)

    sent: list[object] = []
    before = transactions(hive)
    async with trio.open_nursery() as nursery:
        # The writer is busy with a long job (in its thread): the send queues.
        nursery.start_soon(functools.partial(hive.db.transaction, hold, slow=True))
        with trio.fail_after(10):
            while not holding.is_set():  # noqa: ASYNC110 - set by the writer's thread
                await trio.sleep(0.01)

        async def send() -> None:
            sent.append(await alice.call(Send("bob", "are you there?")))

        nursery.start_soon(send)
        with trio.fail_after(10):
            while not hive.db.statistics().queued:  # noqa: ASYNC110 - set by the writer's queue
                await trio.sleep(0.01)
        # The send claimed bob's recv and is committing; bob hangs up meanwhile. Its recv
        # leaves the park at once and waits for the outcome of the send's transaction.
        await bob.aclose()
        with trio.fail_after(10):
            await hive.broker.wait_parked("bob", 0, at_most=True)
        gate.set()
    assert sent, "alice's send failed"
    # The message was taken for bob at the hand-over and went back to the inbox unread: the
    # held transaction, the send (with the take), the undelivery when the outcome came.
    with trio.fail_after(10):
        while transactions(hive) < before + 3:  # noqa: ASYNC110 - counted by the writer
            await trio.sleep(0.01)
    assert transactions(hive) == before + 3
    again = await connect("bob", spawn=False)
    assert (await again.call(Status())).unread == 1  # type: ignore[attr-defined]
    reply = await again.call(Recv())
    assert [(m.body, m.redelivered) for m in reply.messages] == [  # type: ignore[attr-defined]
        ("are you there?", False)  # it never reached a client: handed out as new
    ]


async def test_status_counts_a_long_inbox_exactly(hive: Hive, connect: Connect) -> None:
    # Past the bound of a read on the event loop the writer counts: the figure is exact.
    alice, bob = await connect("alice"), await connect("bob")
    for i in range(READ_BOUND + 5):
        await alice.call(Send("bob", f"m{i}"))
    assert (await bob.call(Status())).unread == READ_BOUND + 5  # type: ignore[attr-defined]
    await bob.call(Recv(max=10))
    assert (await bob.call(Status())).unread == READ_BOUND - 5  # type: ignore[attr-defined]
    host = await hive.broker.unread_by_recipient()
    assert host["bob"] == READ_BOUND - 5
