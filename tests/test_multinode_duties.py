"""The hive's singleton duties (question deadlines, reminders, schedules, the messages'
retention): on one node at a time, taken over when that node dies or stops, new work
reaching the holder, nothing fired twice.

The lock's rules run in-process on both engines; the rest with real ``hyperhive run``
processes sharing one PostgreSQL database (tests/multinode.py), agents acting through
their sockets and the operator through a node's host socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import trio

from hyperhive.broker import Broker
from hyperhive.client import Client
from hyperhive.duties import DUTY_LOCK, DutyNote, parse_note
from hyperhive.events import EventHub
from hyperhive.questions import QuestionBook
from hyperhive.reminders import ReminderBook
from hyperhive.schedules import ScheduleBook
from hyperhive.store import BROKER_MIGRATIONS, Database, LockLost, open_store
from tests.conftest import DaemonProcess, wait_until
from tests.multinode import running_nodes


def parse_system(body: str) -> tuple[str, dict[str, Any]]:
    kind, _, payload = body.partition(" ")
    return kind, json.loads(payload)


#: A key of the tests' own (a daemon's lock is DUTY_LOCK).
TEST_KEY = DUTY_LOCK + 1
AGENTS = ("alice", "bob")


# ---------------------------------------------------------------- the notes (sans-IO)


def test_a_duty_note_names_its_work_and_nothing_else() -> None:
    assert parse_note({"kind": "question", "id": 3, "at": 12.5}) == DutyNote("question", 3, 12.5)
    assert parse_note({"kind": "reminder", "id": 4, "at": 7}) == DutyNote("reminder", 4, 7.0)
    assert parse_note({"kind": "schedule"}) == DutyNote("schedule")
    assert parse_note({"kind": "deliver", "id": 5, "agent": "bob"}) == DutyNote(
        "deliver", 5, agent="bob"
    )
    for bad in (
        {},
        {"kind": "question", "id": "3", "at": 1.0},
        {"kind": "question", "id": True, "at": 1.0},
        {"kind": "reminder", "id": 1, "at": float("nan")},
        {"kind": "reminder", "id": 1},
        {"kind": "approval", "id": 1, "at": 1.0},
        {"kind": "deliver", "id": 1},
        {"kind": "deliver", "id": 1, "agent": 7},
    ):
        assert parse_note(bad) is None, bad


# ---------------------------------------------------------------- the lock (in-process)


@asynccontextmanager
async def two_stores(database: str | None, root: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two daemons' stores on one database (sqlite: one file can only be one daemon's, so
    the same store twice)."""
    if database is None:
        async with open_store(
            None, root / "broker.sqlite", synchronous="NORMAL", migrations=BROKER_MIGRATIONS
        ) as db:
            yield db, db
        return
    async with (
        open_store(database, root / "x", synchronous="NORMAL", migrations=BROKER_MIGRATIONS) as one,
        open_store(database, root / "y", synchronous="NORMAL", migrations=BROKER_MIGRATIONS) as two,
    ):
        yield one, two


class Holder:
    """A task that waits for ``key`` and holds it until cancelled or lost (one turn of
    :class:`hyperhive.duties.Duties`' loop), recording what happens to it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.held = trio.Event()
        self.waiting = trio.Event()
        self.lost = trio.Event()
        self.losses = 0
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        self.scope = trio.CancelScope()
        with self.scope:
            try:
                async with self.db.hold_lock(
                    TEST_KEY, retry_seconds=0.05, check_seconds=0.05, waiting=self.waiting.set
                ):
                    self.held.set()
                    await trio.sleep_forever()
            except LockLost:
                self.losses += 1
                self.held = trio.Event()
                self.lost.set()


def lock_holders(url: str, key: int) -> list[int]:
    """The server pids of the sessions holding the advisory lock ``key``."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1",
            ((key >> 32) & 0xFFFF_FFFF, key & 0xFFFF_FFFF),
        ).fetchall()
    return [row[0] for row in rows]


async def test_on_sqlite_the_lock_is_held_at_once_and_for_ever(short_tmp: Path) -> None:
    async with two_stores(None, short_tmp) as (db, _), trio.open_nursery() as nursery:
        holder = Holder(db)
        nursery.start_soon(holder.run)
        with trio.fail_after(5):
            await holder.held.wait()
        assert not holder.waiting.is_set()
        with trio.move_on_after(0.3):
            await holder.lost.wait()
        assert holder.losses == 0
        nursery.cancel_scope.cancel()


async def test_the_lock_has_one_holder_is_lost_with_its_connection_and_is_taken_again(
    short_tmp: Path, pg_url: str
) -> None:
    async with two_stores(pg_url, short_tmp) as (one_db, two_db), trio.open_nursery() as nursery:
        one, two = Holder(one_db), Holder(two_db)
        nursery.start_soon(one.run)
        with trio.fail_after(10):
            await one.held.wait()
        nursery.start_soon(two.run)
        with trio.fail_after(10):
            await two.waiting.wait()
        assert not two.held.is_set()
        [first] = lock_holders(pg_url, TEST_KEY)

        # The holder's connection is cut (as when its host vanishes from the server's view):
        # it notices within its check interval, and the other takes the lock.
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        with trio.fail_after(10):
            await one.lost.wait()
            await two.held.wait()
        assert one.losses == 1 and not one.held.is_set()
        [second] = lock_holders(pg_url, TEST_KEY)
        assert second != first

        # The first tries again and waits; once the second lets go, it holds it again.
        nursery.start_soon(one.run)
        with trio.fail_after(10):
            await one.waiting.wait()
        assert not one.held.is_set()
        two.scope.cancel()
        with trio.fail_after(10):
            await one.held.wait()
        assert len(lock_holders(pg_url, TEST_KEY)) == 1
        nursery.cancel_scope.cancel()
    assert lock_holders(pg_url, TEST_KEY) == []


# ---------------------------------------------------------------- exactly once (in-process)


@asynccontextmanager
async def books_on(db: Database, clock: Callable[[], float], root: Path) -> AsyncIterator[Any]:
    events = EventHub()
    broker = Broker(db, events, directory=lambda: (AGENTS, AGENTS), clock=clock)
    questions = QuestionBook(db, broker, events, known_agents=lambda: AGENTS, clock=clock)
    reminders = ReminderBook(db, broker, events, state_dir=lambda name: root / name, clock=clock)
    schedules = ScheduleBook(db, broker, live=lambda: AGENTS, timezone="UTC", clock=clock)
    await questions.load()
    await reminders.load()
    yield questions, reminders, schedules


async def test_two_holders_at_once_still_expire_and_fire_each_thing_once(
    short_tmp: Path, pg_url: str
) -> None:
    """A former holder that has not noticed its loss yet runs the same duties as the new
    one: each question expires once, each reminder and schedule fires once."""
    now = [time.time()]

    def clock() -> float:
        return now[0]

    async with (
        two_stores(pg_url, short_tmp) as (one_db, two_db),
        books_on(one_db, clock, short_tmp) as (q1, r1, s1),
        books_on(two_db, clock, short_tmp) as (q2, r2, s2),
    ):
        question = await q1.ask("alice", "still there?", [], False, 5, None)
        reminder = await r1.remind("alice", "ping", in_seconds=5)
        spec = s1.check(["alice"], "standup", now[0] + 5, None, None, None)
        schedule = await s1.create("operator", spec, "operator")
        # Both holders learn of them (the one that made them, and the other from the table).
        await q2.load()
        await r2.load()
        now[0] += 10
        async with trio.open_nursery() as nursery:
            for book in (q1, q2):
                nursery.start_soon(book.expire_due)
            for book in (r1, r2):
                nursery.start_soon(book.fire_due)
            for book in (s1, s2):
                nursery.start_soon(book.fire_due)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT sender, body FROM messages WHERE recipient = 'alice' ORDER BY id"
        ).fetchall()
        answerer = conn.execute(
            "SELECT answerer FROM operator_questions WHERE id = %s", (question.id,)
        ).fetchone()
        fires = conn.execute("SELECT fires FROM schedules WHERE id = %s", (schedule.id,)).fetchone()
        sent = conn.execute(
            "SELECT sent_at FROM reminders WHERE id = %s", (reminder.id,)
        ).fetchone()
    by_sender: dict[str, int] = {}
    for sender, _ in rows:
        by_sender[sender] = by_sender.get(sender, 0) + 1
    assert by_sender == {"system": 1, "reminder": 1, "scheduler": 1}, rows
    [expiry] = [body for sender, body in rows if sender == "system"]
    assert parse_system(expiry)[1]["answer"] == "[expired]"
    assert answerer == ("ttl",) and fires == (1,) and sent is not None and sent[0] is not None


# ---------------------------------------------------------------- nodes (processes)


async def holds_duties(node: DaemonProcess) -> bool:
    return bool((await node.call({"cmd": "status"}))["holds_duties"])


def agent_node(url: str, name: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT node FROM agents WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


async def spawn_on(node: DaemonProcess, name: str, url: str, where: str) -> None:
    """The operator spawns ``name`` at ``node``'s host socket; placed on ``where`` (the
    node up with the fewest agents)."""
    reply = await node.call({"cmd": "spawn", "name": name})
    assert reply["ok"], reply
    assert agent_node(url, name) == where


async def asks_and_is_reminded(bob: Client, seconds: int) -> tuple[int, int]:
    """bob asks the operator a question that expires in ``seconds`` and sets a reminder
    for as many seconds from now: their ids."""
    qid = (await bob.request({"cmd": "ask", "question": "soon?", "ttl_seconds": seconds}))["id"]
    reminded = await bob.request({"cmd": "remind", "body": "ping", "in_seconds": seconds})
    return int(qid), int(reminded["reminder"]["id"])


async def receive_all(agent: Client, count: int, limit: float) -> list[dict[str, Any]]:
    """The agent's messages, through its socket, until ``count`` have come (fails after
    ``limit`` seconds)."""
    got: list[dict[str, Any]] = []
    with trio.fail_after(limit):
        while len(got) < count:
            # Short waits: a wake-up across nodes is not what is tested here.
            reply = await agent.request({"cmd": "recv", "wait_seconds": 1, "max": 10})
            assert reply["ok"], reply
            got += reply["messages"]
    return got


async def nothing_more(agent: Client, seconds: float) -> None:
    """Nothing else reaches the agent for ``seconds`` (a parked recv that stays empty)."""
    reply = await agent.request({"cmd": "recv", "wait_seconds": seconds, "max": 10})
    assert reply["ok"] and reply["messages"] == [], reply


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    """``system:<kind>`` for a system message, else the sender."""
    return sorted(
        f"system:{parse_system(m['body'])[0]}" if m["from"] == "system" else m["from"]
        for m in messages
    )


def question_row(url: str, qid: int) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT answer, answerer, answered_at, deadline_at FROM operator_questions "
            "WHERE id = %s",
            (qid,),
        ).fetchone()
    assert row is not None
    return tuple(row)


async def test_new_work_on_another_node_reaches_the_holder_in_time(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    """The holder sleeps until its earliest deadline: a deadline, a reminder and a schedule
    set on the other node wake it (the ``duty`` notification), not a poll."""
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        assert await holds_duties(a) and not await holds_duties(b)
        await spawn_on(b, "bob", pg_url, "nb")
        async with await Client.connect(b.paths.agent_socket("bob"), hello_role="harness") as bob:
            qid, rid = await asks_and_is_reminded(bob, 2)
            first_at = time.time() + 2
            created = await b.call(
                {"cmd": "add_schedule", "targets": ["bob"], "body": "tick", "first_at": first_at}
            )
            assert created["ok"], created
            sid = created["schedule"]["id"]
            got = await receive_all(bob, 3, limit=12)
            assert kinds(got) == ["reminder", "scheduler", "system:question_answered"]
            answer, answerer, answered_at, deadline_at = question_row(pg_url, qid)
            assert (answer, answerer) == ("[expired]", "ttl")
            # On time: the holder was woken for them (its own wait was for ever).
            assert answered_at - deadline_at < 2
            with psycopg.connect(pg_url) as conn:
                reminder = conn.execute(
                    "SELECT sent_at - due_at FROM reminders WHERE id = %s", (rid,)
                ).fetchone()
                schedule = conn.execute(
                    "SELECT last_fired_at, fires FROM schedules WHERE id = %s", (sid,)
                ).fetchone()
            assert reminder is not None and reminder[0] < 2
            assert schedule is not None and schedule[0] - first_at < 2 and schedule[1] == 1
            await nothing_more(bob, 2)
        assert await holds_duties(a) and not await holds_duties(b)


async def test_a_reminder_with_a_file_is_delivered_by_its_agents_node(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    """Its file goes into the agent's state dir, which is on the agent's node, not on the
    holder's: the holder hands it over, and the agent's node writes it and delivers it."""
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        assert await holds_duties(a) and not await holds_duties(b)
        await spawn_on(b, "bob", pg_url, "nb")
        async with await Client.connect(b.paths.agent_socket("bob"), hello_role="harness") as bob:
            reminded = await bob.request(
                {
                    "cmd": "remind",
                    "body": "the long note",
                    "in_seconds": 1,
                    "file_path": "/state/notes/later.txt",
                }
            )
            assert reminded["ok"], reminded
            [message] = await receive_all(bob, 1, limit=10)
            assert message["from"] == "reminder"
            assert "/state/notes/later.txt" in message["body"]
            written = b.paths.agent_state_dir("bob") / "notes" / "later.txt"
            assert written.read_text() == "the long note"
            assert not (a.paths.agent_state_dir("bob") / "notes").exists()
            await nothing_more(bob, 2)
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT sent_at, attempt_count FROM reminders WHERE id = %s",
                (reminded["reminder"]["id"],),
            ).fetchone()
        assert row is not None and row[0] is not None and row[1] == 0


async def test_killing_the_holder_moves_the_duties_and_nothing_fires_twice(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    """Acceptance 3: kill -9 of the node holding the duties before a question's deadline
    and a reminder's time: the other node takes over, the question expires once (on it,
    within 10 s of its deadline), the reminder fires once; the killed node, back, fires
    nothing again."""
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        assert await holds_duties(a) and not await holds_duties(b)
        await spawn_on(b, "bob", pg_url, "nb")
        async with await Client.connect(b.paths.agent_socket("bob"), hello_role="harness") as bob:
            qid, rid = await asks_and_is_reminded(bob, 3)
            await a.kill()
            got = await receive_all(bob, 2, limit=20)
            assert kinds(got) == ["reminder", "system:question_answered"]
            # B runs the duties now (A is dead).
            assert await holds_duties(b)
            answer, answerer, answered_at, deadline_at = question_row(pg_url, qid)
            assert (answer, answerer) == ("[expired]", "ttl")
            assert 0 <= answered_at - deadline_at <= 10
            with psycopg.connect(pg_url) as conn:
                sent = conn.execute(
                    "SELECT sent_at, attempt_count FROM reminders WHERE id = %s", (rid,)
                ).fetchone()
            assert sent is not None and sent[0] is not None and sent[1] == 0

            # A comes back: B keeps the duties, and nothing fires again.
            await a.start(nursery)
            assert not await holds_duties(a) and await holds_duties(b)
            await nothing_more(bob, 3)
            # B dies too: A takes over, reads the table, and still fires nothing again.
            await b.kill()
            await wait_until(lambda: holds_duties(a), limit=10, interval=0.2)
        with psycopg.connect(pg_url) as conn:
            count = conn.execute(
                "SELECT COUNT(*) FROM messages WHERE recipient = 'bob' "
                "AND sender IN ('system', 'reminder')"
            ).fetchone()
        assert count == (2,)


async def test_a_holder_that_stops_cleanly_hands_the_duties_over(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        assert await holds_duties(a) and not await holds_duties(b)
        await spawn_on(b, "bob", pg_url, "nb")
        async with await Client.connect(b.paths.agent_socket("bob"), hello_role="harness") as bob:
            qid = (await bob.request({"cmd": "ask", "question": "soon?", "ttl_seconds": 4}))["id"]
            stopped_at = time.time()
            assert await a.stop() == 0
            await wait_until(lambda: holds_duties(b), limit=10, interval=0.1)
            assert time.time() - stopped_at < 10
            [message] = await receive_all(bob, 1, limit=15)
            kind, payload = parse_system(message["body"])
            assert (kind, payload["id"], payload["answer"]) == (
                "question_answered",
                qid,
                "[expired]",
            )
            await nothing_more(bob, 2)


def test_the_duties_lock_is_none_of_the_stores_own() -> None:
    from hyperhive.store._pg import MIGRATION_LOCK, WRITE_LOCK

    assert len({DUTY_LOCK, TEST_KEY, MIGRATION_LOCK, WRITE_LOCK}) == 4
    assert 0 < DUTY_LOCK < TEST_KEY < 2**63
