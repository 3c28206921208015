"""Questions: ask never blocks, one resolution wins, the asker hears exactly once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from hyperhive.clocks import TrioWallClock, trio_deadline
from hyperhive.config import MAX_RECV_WAIT_SECONDS, Config
from hyperhive.errors import RequestRefused
from hyperhive.protocol import Recv
from hyperhive.questions import DeadlineSchedule, check_ask
from hyperhive.supervisor import Hive, open_hive
from tests.conftest import Connect, connect_agent, make_paths

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


def parse_system(body: str) -> tuple[str, dict[str, object]]:
    kind, _, payload = body.partition(" ")
    return kind, json.loads(payload)


async def inbox_of(hive: Hive, name: str) -> list[tuple[str, dict[str, object]]]:
    messages = await hive.broker.recv(name, limit=32)
    return [parse_system(m.body) for m in messages if m.from_ == "system"]


async def test_ask_the_operator_and_answer(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    reply = await alice.request(
        {"cmd": "ask", "question": "Deploy?", "options": ["yes", "no"], "ttl_seconds": 600}
    )
    assert reply["ok"] and isinstance(reply["id"], int)
    [open_q] = await hive.questions.list()
    assert open_q.target is None and open_q.options == ["yes", "no"]
    assert open_q.deadline_at is not None and open_q.deadline_at - open_q.asked_at == 600
    answered = await hive.questions.answer_as_operator(reply["id"], "yes, after lunch")
    assert answered.answerer == "operator"
    assert await inbox_of(hive, "alice") == [
        (
            "question_answered",
            {
                "id": reply["id"],
                "question": "Deploy?",
                "answer": "yes, after lunch",
                "answerer": "operator",
            },
        )
    ]
    with pytest.raises(RequestRefused, match="already resolved"):
        await hive.questions.cancel_as_operator(reply["id"])
    assert await inbox_of(hive, "alice") == []


async def test_peer_question_only_the_target_answers(hive: Hive, connect: Connect) -> None:
    alice, bob, carol = await connect("alice"), await connect("bob"), await connect("carol")
    asked = await alice.request(
        {"cmd": "ask", "question": "Lib?", "to": "bob", "multi": True, "options": ["trio", "anyio"]}
    )
    qid = asked["id"]
    got = await bob.call(Recv())
    kind, payload = parse_system(got.messages[0].body)  # type: ignore[attr-defined]
    assert kind == "question_asked" and payload["asker"] == "alice" and payload["multi"] is True
    refused = await carol.request({"cmd": "answer", "id": qid, "answer": "me!"})
    assert refused == {
        "ok": False,
        "error": f"only the question's target may answer question {qid}",
    }
    loose = await bob.request({"cmd": "get_loose_ends"})
    assert [q["id"] for q in loose["questions"]] == [qid]
    assert (await carol.request({"cmd": "get_loose_ends"}))["questions"] == []
    assert (await bob.request({"cmd": "answer", "id": qid, "answer": "trio, anyio"}))["ok"]
    [(kind, payload)] = await inbox_of(hive, "alice")
    assert payload["answer"] == "trio, anyio" and payload["answerer"] == "bob"


async def test_ask_validation(hive: Hive, connect: Connect) -> None:
    alice = await connect("alice")
    for request, reason in [
        ({"question": "q", "ttl_seconds": 21601}, "ttl_seconds"),
        ({"question": "q", "ttl_seconds": 0}, "ttl_seconds"),
        ({"question": "  "}, "empty"),
        ({"question": "q", "to": "ghost"}, "no agent"),
        ({"question": "q", "to": "alice"}, "itself"),
        ({"question": "q", "to": "../x"}, "invalid agent name"),
    ]:
        reply = await alice.request({"cmd": "ask", **request})
        assert reply["ok"] is False and reason in reply["error"], (request, reply)


async def test_cancel_by_asker_and_manager(hive: Hive, connect: Connect) -> None:
    alice, bob, manager = await connect("alice"), await connect("bob"), await connect("manager")
    q1 = (await alice.request({"cmd": "ask", "question": "one?"}))["id"]
    q2 = (await alice.request({"cmd": "ask", "question": "two?"}))["id"]
    assert not (await bob.request({"cmd": "cancel_loose_end", "kind": "question", "id": q1}))["ok"]
    assert (await alice.request({"cmd": "cancel_loose_end", "kind": "question", "id": q1}))["ok"]
    assert (await manager.request({"cmd": "cancel_loose_end", "kind": "question", "id": q2}))["ok"]
    answers = [p["answer"] for _, p in await inbox_of(hive, "alice")]
    assert answers == ["[cancelled by alice]", "[cancelled by manager]"]


@asynccontextmanager
async def hive_on_trio_clock(root: Path, database: str | None) -> AsyncIterator[Hive]:
    """A daemon whose stored times follow trio's clock (run the test on ``daemon_clock``)."""
    config = Config(
        paths=make_paths(root), wall_clock=TrioWallClock(), backend="external", database=database
    )
    async with open_hive(config) as hive:
        yield hive


async def test_ttl_expiry_delivers_expired_exactly_once(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    async with hive_on_trio_clock(short_tmp, database) as hive:
        await hive.spawn("alice")
        alice = await connect_agent(hive.config.paths, "alice", role="harness")
        try:
            asked_at = trio.current_time()
            reply = await alice.request({"cmd": "ask", "question": "quick?", "ttl_seconds": 120})
            qid = reply["id"]
            # Parked for longer than the ttl: the expiry is what wakes it.
            reply = await alice.call(Recv(wait_seconds=MAX_RECV_WAIT_SECONDS))
        finally:
            await alice.aclose()
        # Two minutes of virtual time: not before the deadline (and in no real time).
        assert trio.current_time() - asked_at >= 120
        [message] = reply.messages  # type: ignore[attr-defined]
        kind, payload = parse_system(message.body)
        assert (kind, payload["id"], payload["answer"], payload["answerer"]) == (
            "question_answered",
            qid,
            "[expired]",
            "ttl",
        )
        info = await hive.questions.get(qid)
        assert info.answered_at is not None and info.answered_at >= info.deadline_at  # type: ignore[operator]
        with pytest.raises(RequestRefused, match="already resolved"):
            await hive.questions.answer_as_operator(qid, "too late")
        assert await hive.broker.unread("alice") == 0


async def test_ttl_expiry_in_real_time(hive: Hive, connect: Connect) -> None:
    """With the daemon's own clocks (time.time and trio's real clock)."""
    alice = await connect("alice", role="harness")
    qid = (await alice.request({"cmd": "ask", "question": "quick?", "ttl_seconds": 1}))["id"]
    reply = await alice.call(Recv(wait_seconds=10))
    [message] = reply.messages  # type: ignore[attr-defined]
    assert parse_system(message.body)[1]["id"] == qid
    assert '"answer": "[expired]"' in message.body


async def test_answer_cancel_expiry_race_resolves_once(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    async with hive_on_trio_clock(short_tmp, database) as hive:
        await hive.spawn("alice")
        await race_answer_cancel_and_expiry(hive)


async def race_answer_cancel_and_expiry(hive: Hive) -> None:
    clock = hive.config.wall_clock
    for _ in range(10):
        info = await hive.questions.ask("alice", "race?", [], False, 1, None)
        outcomes: list[str] = []
        attempts = {
            "answer": lambda qid=info.id: hive.questions.answer_as_operator(qid, "a"),
            "cancel": lambda qid=info.id: hive.questions.cancel_as_operator(qid),
            "answer2": lambda qid=info.id: hive.questions.answer_as_operator(qid, "b"),
        }

        async def attempt(
            label: str, out: list[str] = outcomes, attempts: dict[str, Any] = attempts
        ) -> None:
            try:
                await attempts[label]()
                out.append(label)
            except RequestRefused:
                pass

        async with trio.open_nursery() as nursery:
            for label in attempts:
                nursery.start_soon(attempt, label)
        assert len(outcomes) == 1, outcomes
    # Let every deadline pass: the watchdog finds them all resolved and adds nothing.
    deadline = max(q.deadline_at or 0 for q in await hive.questions.list(include_answered=True))
    await trio.sleep_until(trio_deadline(deadline + 0.1, clock))  # virtual time, not a sync
    messages = await hive.broker.recv("alice", limit=32)
    assert len(messages) == 10
    assert all("[expired]" not in m.body for m in messages)


async def test_deadline_passed_while_daemon_was_down(
    short_tmp: Path, daemon_clock: MockClock, database: str | None
) -> None:
    config = Config(
        paths=make_paths(short_tmp),
        wall_clock=TrioWallClock(),
        backend="external",
        database=database,
    )
    async with open_hive(config) as hive:
        await hive.spawn("alice")
        await hive.questions.ask("alice", "while down?", [], False, 60, None)
        keep = await hive.questions.ask("alice", "later", [], False, 3600, None)
    # While the daemon is down (two virtual minutes), the first deadline passes.
    await trio.sleep(120)
    for _ in range(2):  # and a second restart must not expire it again
        async with open_hive(config) as hive:
            alice = await connect_agent(config.paths, "alice", role="harness")
            try:
                # First run: the expiry arrives at once. Second: nothing comes within 0.5 s.
                reply = await alice.call(Recv(wait_seconds=5 if _ == 0 else 0.5, max=32))
            finally:
                await alice.aclose()
            bodies = [m.body for m in reply.messages]  # type: ignore[attr-defined]
            if _ == 0:
                assert len(bodies) == 1 and '"answer": "[expired]"' in bodies[0]
                assert (await hive.questions.get(keep.id)).answered_at is None
            else:
                assert bodies == []


def test_deadline_schedule_orders_and_pops_due() -> None:
    s = DeadlineSchedule()
    for qid, deadline in [(1, 30.0), (2, 10.0), (3, 20.0)]:
        s.add(qid, deadline)
    assert s.next_deadline() == 10.0
    assert s.pop_due(5.0) == []
    assert s.pop_due(20.0) == [2, 3]
    assert s.next_deadline() == 30.0 and len(s) == 1


def test_check_ask_targets() -> None:
    known = {"alice", "bob", "manager"}
    assert check_ask("alice", "q", [], None, None, known=known) is None
    assert check_ask("alice", "q", [], None, "operator", known=known) is None
    assert check_ask("alice", "q", [], None, "manager", known=known) == "manager"
    with pytest.raises(RequestRefused):
        check_ask("alice", "q", ["ok", " "], None, None, known=known)
