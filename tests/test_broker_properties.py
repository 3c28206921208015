"""Broker invariants under generated interleavings of send / recv / ack / reconnect.

Each example runs a fresh daemon (in-process, real sockets, a new store on each engine) and a model
of what every inbox must hold. The model predicts each ``recv`` exactly: the oldest
available messages in id order, flagged ``redelivered`` iff handed out before. So nothing
is lost, order is FIFO per recipient, and a second delivery happens only with the flag.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.protocol import Ack, Recv, Send
from hyperhive.supervisor import open_hive
from tests.conftest import NewDatabase, connect_agent, make_paths

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL

AGENTS = ("alice", "bob", "carol")
agent = st.sampled_from(AGENTS)


@attrs.frozen
class SendOp:
    sender: str
    to: str


@attrs.frozen
class RecvOp:
    agent: str
    max: int
    ack: bool


@attrs.frozen
class AckOp:
    agent: str
    pick: int  # bitmask over the agent's delivered-but-unacked messages


@attrs.frozen
class ReconnectOp:
    agent: str


operations = st.lists(
    st.one_of(
        st.builds(SendOp, agent, agent),
        st.builds(RecvOp, agent, st.integers(1, 4), st.booleans()),
        st.builds(AckOp, agent, st.integers(0, 15)),
        st.builds(ReconnectOp, agent),
    ),
    max_size=40,
)


@attrs.define
class Inbox:
    available: list[int] = attrs.Factory(list)  # in id order
    unacked: list[int] = attrs.Factory(list)  # delivered, not acked
    acked: set[int] = attrs.Factory(set)
    handed_out: set[int] = attrs.Factory(set)


@settings(
    max_examples=60,
    deadline=None,
    # new_database makes a new store for each example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
async def test_no_loss_fifo_no_silent_duplicates(
    ops: list[SendOp | RecvOp | AckOp | ReconnectOp], new_database: NewDatabase
) -> None:
    root = Path(tempfile.mkdtemp(prefix="hh-p-", dir="/tmp"))
    try:
        config = Config(
            paths=make_paths(root),
            backend="external",
            synchronous="NORMAL",
            database=new_database(),
        )
        async with open_hive(config) as hive:
            model = {name: Inbox() for name in AGENTS}
            bodies: dict[int, str] = {}
            clients: dict[str, Client] = {}
            for name in AGENTS:
                # Registration alone (socket, row): the config repos are not what is tested.
                await hive.registry.register(name)
                clients[name] = await connect_agent(hive.config.paths, name, role="harness")
            try:
                for n, op in enumerate(ops):
                    await apply(op, n, clients, model, bodies, hive.config.paths)
                # Drain: every message ever sent reaches its recipient.
                for name in AGENTS:
                    await apply(ReconnectOp(name), -1, clients, model, bodies, hive.config.paths)
                    while model[name].available:
                        await apply(
                            RecvOp(name, 4, True), -1, clients, model, bodies, hive.config.paths
                        )
                    assert model[name].acked == {
                        i for i in bodies if bodies[i].startswith(f"{name}:")
                    }
            finally:
                for client in clients.values():
                    await client.aclose()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def apply(op, n, clients, model, bodies, paths) -> None:  # type: ignore[no-untyped-def]
    match op:
        case SendOp(sender=sender, to=to):
            body = f"{to}:{n}"
            reply = await clients[sender].call(Send(to, body))
            bodies[reply.id] = body
            model[to].available.append(reply.id)
        case RecvOp(agent=name, max=limit, ack=ack):
            inbox = model[name]
            reply = await clients[name].call(Recv(max=limit, ack=ack))
            got = [(m.id, m.redelivered, m.body, m.from_ != "") for m in reply.messages]
            expected_ids = inbox.available[:limit]
            assert [g[0] for g in got] == expected_ids, (op, got, inbox)
            for mid, redelivered, body, _ in got:
                assert body == bodies[mid]
                assert redelivered == (mid in inbox.handed_out), (mid, redelivered)
                inbox.handed_out.add(mid)
            del inbox.available[: len(expected_ids)]
            if ack:
                inbox.acked.update(expected_ids)
            else:
                inbox.unacked.extend(expected_ids)
        case AckOp(agent=name, pick=pick):
            inbox = model[name]
            # Ackable: delivered and not acked, including rows a reconnect put back.
            candidates = inbox.unacked + [m for m in inbox.available if m in inbox.handed_out]
            chosen = [mid for i, mid in enumerate(candidates) if pick >> i & 1]
            # An id already acked, or never handed out, is not acked.
            never = [m for m in inbox.available if m not in inbox.handed_out][:1]
            reply = await clients[name].call(Ack(chosen + sorted(inbox.acked)[:1] + never))
            assert reply.acked == len(chosen)
            inbox.acked.update(chosen)
            inbox.unacked = [m for m in inbox.unacked if m not in chosen]
            inbox.available = [m for m in inbox.available if m not in chosen]
        case ReconnectOp(agent=name):
            inbox = model[name]
            await clients[name].aclose()
            clients[name] = await connect_agent(paths, name, role="harness")
            inbox.available = sorted(inbox.available + inbox.unacked)
            inbox.unacked = []
