"""State machines (hypothesis) of the reminder and question rules, on the real store.

Each machine drives the real books (:class:`ReminderBook`, :class:`QuestionBook`) on a real
store (a ``broker.sqlite`` file, and a PostgreSQL database) with an injected wall clock,
and keeps a model of what must hold:

- reminders: one fires exactly once when its time has passed (``fire_due``, what the
  scheduler runs when it wakes), never before, never after it was cancelled; after a
  restart (the database closed and reopened, the book re-armed from the table) what fell
  due while it was down fires once; an agent never holds more than the cap.
- questions (SPEC §12): ask, answer, cancel and expiry resolve each question exactly once,
  later attempts are refused, and the asker hears exactly once; deadlines are re-armed
  across restarts.

The books live in a trio run on a background thread (one task owns the database, so a
restart closes and reopens it where it was opened); the machine's rules call into it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hyperhive.broker import Broker
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.questions import QuestionBook
from hyperhive.reminders import ReminderBook
from hyperhive.store import BROKER_MIGRATIONS, Row, open_store
from hyperhive.store._pg import connect_pg
from tests.conftest import NewDatabase

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL

T = TypeVar("T")
AGENTS = ("alice", "bob")
#: A small cap, so the machine reaches it (the daemon's is MAX_PENDING_REMINDERS).
CAP = 3
T0 = 1_700_000_000.0


class Store:
    """The store (``database``, or ``broker.sqlite``) with a broker and both books, served
    by a trio run on a thread."""

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.root = Path(tempfile.mkdtemp(prefix="hh-sm-", dir="/tmp"))
        self.now = T0
        self.reminders: ReminderBook
        self.questions: QuestionBook
        self._ready = threading.Event()
        self._stopping = False
        self._wake: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._wait_ready()

    def clock(self) -> float:
        return self.now

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # surfaced by the next call
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        while not self._stopping:
            async with open_store(
                self.database,
                self.root / "broker.sqlite",
                synchronous="NORMAL",
                migrations=BROKER_MIGRATIONS,
            ) as db:
                events = EventHub()
                broker = Broker(db, events, directory=lambda: (AGENTS, AGENTS), clock=self.clock)
                self.db = db
                self.reminders = ReminderBook(
                    db,
                    broker,
                    events,
                    state_dir=lambda name: self.root / name,
                    clock=self.clock,
                    max_pending=CAP,
                )
                self.questions = QuestionBook(
                    db, broker, events, known_agents=lambda: AGENTS, clock=self.clock
                )
                await self.reminders.load()
                await self.questions.load()
                self._wake = trio.Event()
                self._ready.set()
                await self._wake.wait()  # a restart or the end

    def _wait_ready(self) -> None:
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the store did not start: {self._error!r}")

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return trio.from_thread.run(fn, trio_token=self._token)

    def _set_wake(self) -> None:
        assert self._wake is not None
        self._wake.set()

    def restart(self) -> None:
        self._ready.clear()
        trio.from_thread.run_sync(self._set_wake, trio_token=self._token)
        self._wait_ready()

    def close(self) -> None:
        self._stopping = True
        trio.from_thread.run_sync(self._set_wake, trio_token=self._token)
        self._thread.join(30)
        shutil.rmtree(self.root, ignore_errors=True)

    def rows(self, sql: str, *args: Any) -> list[Row]:
        """``sql`` on a connection of its own: what is committed."""
        if self.database is not None:
            pg = connect_pg(self.database, migrations=BROKER_MIGRATIONS)
            try:
                return pg.execute(sql, args).fetchall()
            finally:
                pg.close()
        conn = sqlite3.connect(self.root / "broker.sqlite")
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


# ---------------------------------------------------------------- reminders


class ReminderMachine(RuleBasedStateMachine):
    reminders = Bundle("reminders")

    def __init__(self, database: str | None) -> None:
        super().__init__()
        self.store = Store(database)
        self.serial = 0
        #: model: id -> (agent, body, due)
        self.pending: dict[int, tuple[str, str, float]] = {}
        self.fired: dict[int, str] = {}
        self.cancelled: set[int] = set()

    def teardown(self) -> None:
        self.store.close()

    def _fire_expected(self) -> None:
        for rid, (_, body, due) in list(self.pending.items()):
            if due <= self.store.now:
                self.fired[rid] = body
                del self.pending[rid]

    @rule(
        target=reminders,
        agent=st.sampled_from(AGENTS),
        delay=st.floats(0, 100, allow_nan=False),
        absolute=st.booleans(),
    )
    def remind(self, agent: str, delay: float, absolute: bool) -> int:
        self.serial += 1
        body = f"r{self.serial}"
        store = self.store
        at, in_seconds = (store.now + delay, None) if absolute else (None, delay)
        full = sum(1 for a, _, _ in self.pending.values() if a == agent) >= CAP
        try:
            info = store.call(
                lambda: store.reminders.remind(agent, body, in_seconds=in_seconds, at=at)
            )
        except RequestRefused as exc:
            assert full, exc
            assert "pending reminders, the most allowed" in str(exc)
            return -1
        assert not full
        assert info.due_at >= store.now
        self.pending[info.id] = (agent, body, info.due_at)
        return info.id

    @rule(rid=consumes(reminders), by_owner=st.booleans())
    def cancel(self, rid: int, by_owner: bool) -> None:
        if rid < 0:
            return
        store = self.store
        owner = (self.pending.get(rid) or ("alice",))[0]
        caller = owner if by_owner else "manager"
        try:
            store.call(lambda: store.reminders.cancel(rid, caller))
        except RequestRefused:
            assert rid not in self.pending
            return
        assert rid in self.pending, "a fired or cancelled reminder was cancelled again"
        del self.pending[rid]
        self.cancelled.add(rid)

    @rule(rid=reminders)
    def stranger_cannot_cancel(self, rid: int) -> None:
        if rid not in self.pending:
            return
        store = self.store
        stranger = "bob" if self.pending[rid][0] == "alice" else "alice"
        try:
            store.call(lambda: store.reminders.cancel(rid, stranger))
        except RequestRefused as exc:
            assert "belongs to" in str(exc)
        else:
            raise AssertionError("another agent cancelled a reminder it does not own")

    @rule(seconds=st.floats(0, 60, allow_nan=False))
    def advance(self, seconds: float) -> None:
        """Time passes and the scheduler wakes: what is due fires, nothing else."""
        store = self.store
        store.now += seconds
        store.call(store.reminders.fire_due)
        self._fire_expected()

    @rule(seconds=st.floats(0, 120, allow_nan=False))
    def restart(self, seconds: float) -> None:
        """The daemon is down for a while, then starts: what fell due fires once."""
        store = self.store
        store.now += seconds
        store.restart()
        store.call(store.reminders.fire_due)
        self._fire_expected()

    @precondition(lambda self: bool(self.fired))
    @rule()
    def fired_reminders_are_not_in_loose_ends(self) -> None:
        store = self.store
        listed = store.call(store.reminders.list)
        assert {r.id for r in listed} == set(self.pending)

    @invariant()
    def each_fired_exactly_once_never_cancelled_or_early(self) -> None:
        rows = self.store.rows(
            "SELECT recipient, body FROM messages WHERE sender = 'reminder' ORDER BY id"
        )
        delivered = Counter(r["body"] for r in rows)
        assert delivered == Counter(self.fired.values())
        owners = {r["body"]: r["recipient"] for r in rows}  # landed in the inbox of whoever set it
        for rid, body in self.fired.items():
            agent = self.store.rows("SELECT agent FROM reminders WHERE id = ?", rid)[0]["agent"]
            assert owners[body] == agent
        for agent in AGENTS:
            assert sum(1 for a, _, _ in self.pending.values() if a == agent) <= CAP


# ---------------------------------------------------------------- questions


class QuestionMachine(RuleBasedStateMachine):
    questions = Bundle("questions")

    def __init__(self, database: str | None) -> None:
        super().__init__()
        self.store = Store(database)
        #: model: id -> (asker, deadline or None)
        self.open: dict[int, tuple[str, float | None]] = {}
        self.resolved: dict[int, str] = {}  # id -> answer

    def teardown(self) -> None:
        self.store.close()

    def _expire_expected(self) -> None:
        for qid, (_, deadline) in list(self.open.items()):
            if deadline is not None and deadline <= self.store.now:
                self.resolved[qid] = "[expired]"
                del self.open[qid]

    @rule(
        target=questions,
        asker=st.sampled_from(AGENTS),
        ttl=st.none() | st.integers(1, 100),
        to_peer=st.booleans(),
    )
    def ask(self, asker: str, ttl: int | None, to_peer: bool) -> int:
        store = self.store
        to = next(a for a in AGENTS if a != asker) if to_peer else None
        info = store.call(lambda: store.questions.ask(asker, "q?", [], False, ttl, to))
        self.open[info.id] = (asker, info.deadline_at)
        return info.id

    def _resolve(self, qid: int, attempt: Callable[[], Awaitable[Any]], answer: str) -> None:
        try:
            self.store.call(attempt)
        except RequestRefused as exc:
            assert qid not in self.open, exc
            assert "already resolved" in str(exc)
            return
        assert qid in self.open, "a resolved question was resolved again"
        del self.open[qid]
        self.resolved[qid] = answer

    @rule(qid=questions)
    def answer(self, qid: int) -> None:
        store = self.store
        self._resolve(qid, lambda: store.questions.answer_as_operator(qid, "yes"), "yes")

    @rule(qid=questions)
    def cancel(self, qid: int) -> None:
        store = self.store
        self._resolve(qid, lambda: store.questions.cancel_as_operator(qid), "[cancelled]")

    @rule(qid=questions)
    def asker_cancels(self, qid: int) -> None:
        store = self.store
        asker = store.rows("SELECT asker FROM operator_questions WHERE id = ?", qid)[0]["asker"]
        self._resolve(
            qid,
            lambda: store.questions.cancel_as_agent(asker, qid),
            f"[cancelled by {asker}]",
        )

    @rule(seconds=st.floats(0, 60, allow_nan=False))
    def advance(self, seconds: float) -> None:
        store = self.store
        store.now += seconds
        store.call(store.questions.expire_due)
        self._expire_expected()

    @rule(seconds=st.floats(0, 120, allow_nan=False))
    def restart(self, seconds: float) -> None:
        store = self.store
        store.now += seconds
        store.restart()
        store.call(store.questions.expire_due)
        self._expire_expected()

    @invariant()
    def each_resolved_exactly_once_and_the_asker_heard_once(self) -> None:
        rows = self.store.rows("SELECT id, answer, answered_at FROM operator_questions")
        for r in rows:
            if r["id"] in self.open:
                assert r["answered_at"] is None
            else:
                assert r["answer"] == self.resolved[r["id"]]
        told: Counter[int] = Counter()
        for m in self.store.rows("SELECT body FROM messages WHERE sender = 'system'"):
            kind, _, payload = m["body"].partition(" ")
            if kind == "question_answered":
                told[json.loads(payload)["id"]] += 1
        assert told == Counter(dict.fromkeys(self.resolved, 1))


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: On PostgreSQL each example costs a new database and a reconnect per restart (about five
#: times sqlite's time): fewer examples there.
PG_SETTINGS = settings(SETTINGS, max_examples=10)


def test_reminder_rules(store: str, new_database: NewDatabase) -> None:
    run_state_machine_as_test(
        lambda: ReminderMachine(new_database()),
        settings=SETTINGS if store == "sqlite" else PG_SETTINGS,
    )


def test_question_rules(store: str, new_database: NewDatabase) -> None:
    run_state_machine_as_test(
        lambda: QuestionMachine(new_database()),
        settings=SETTINGS if store == "sqlite" else PG_SETTINGS,
    )
