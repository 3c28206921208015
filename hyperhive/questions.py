"""Questions: an agent asks the operator or a peer; exactly one resolution wins.

The rules are plain functions (:func:`check_ask`, :func:`sql_resolve`, :class:`DeadlineSchedule`);
:class:`QuestionBook` wires them to the database, the broker and one watchdog task that
sleeps until the earliest deadline (woken early when a nearer one arrives) and expires
due questions with the answer ``[expired]``. The watchdog is re-armed from the table at
start, so deadlines that passed while the daemon was down expire at once.

Resolution is one ``UPDATE … WHERE answered_at IS NULL`` in the same broker transaction
(:meth:`hyperhive.broker.Broker.transaction`) as the ``question_answered`` system message to
the asker: answer, cancel and expiry race only for that row, and the asker hears (and is
woken) exactly once.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Final

import trio

from hyperhive import system_messages
from hyperhive.broker import Broker, Outbox
from hyperhive.clocks import WallClock, trio_deadline
from hyperhive.config import MAX_OPTIONS, MAX_QUESTION_CHARS, MAX_QUESTION_TTL_SECONDS
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.names import MANAGER, OPERATOR, InvalidAgentName, parse_agent_name
from hyperhive.protocol import QuestionInfo
from hyperhive.protocol.event_payloads import QuestionAdded, QuestionResolved
from hyperhive.store import Conn, Database, Row, insert_id

EXPIRED: Final = "[expired]"
CANCELLED: Final = "[cancelled]"
TTL_ANSWERER: Final = "ttl"

#: Told, inside the transaction that made it, of a question's new deadline (id, deadline):
#: the node running the watchdog may be another (:mod:`hyperhive.duties`).
Announce = Callable[[Conn, int, float], None]


def _no_announce(conn: Conn, question_id: int, deadline: float) -> None:
    pass


def check_ask(
    asker: str,
    question: str,
    options: list[str],
    ttl_seconds: int | None,
    to: str | None,
    *,
    known: Collection[str],
) -> str | None:
    """Validate an ``ask``; return the target (None for the operator)."""
    if not question.strip():
        raise RequestRefused("question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise RequestRefused(f"question is longer than {MAX_QUESTION_CHARS} characters")
    if len(options) > MAX_OPTIONS:
        raise RequestRefused(f"at most {MAX_OPTIONS} options")
    if any(not o.strip() for o in options):
        raise RequestRefused("options must not be empty")
    if ttl_seconds is not None and not 1 <= ttl_seconds <= MAX_QUESTION_TTL_SECONDS:
        raise RequestRefused(f"ttl_seconds must be between 1 and {MAX_QUESTION_TTL_SECONDS}")
    if to is None or to == OPERATOR:
        return None
    if to != MANAGER:
        try:
            parse_agent_name(to)
        except InvalidAgentName as exc:
            raise RequestRefused(f"cannot ask {to!r}: {exc}") from None
    if to == asker:
        raise RequestRefused("an agent cannot ask itself")
    if to not in known:
        raise RequestRefused(f"cannot ask {to!r}: no agent has that name")
    return to


def _row_to_info(row: Row) -> QuestionInfo:
    return QuestionInfo(
        id=row["id"],
        asker=row["asker"],
        target=row["target"],
        question=row["question"],
        options=json.loads(row["options_json"]),
        multi=bool(row["multi"]),
        asked_at=row["asked_at"],
        deadline_at=row["deadline_at"],
        answered_at=row["answered_at"],
        answer=row["answer"],
        answerer=row["answerer"],
    )


def sql_get(conn: Conn, question_id: int) -> QuestionInfo:
    row = conn.execute("SELECT * FROM operator_questions WHERE id = ?", (question_id,)).fetchone()
    if row is None:
        raise RequestRefused(f"no question with id {question_id}")
    return _row_to_info(row)


def sql_resolve(
    conn: Conn,
    outbox: Outbox,
    question_id: int,
    answer: str,
    answerer: str,
    now: float,
    may_resolve: Callable[[QuestionInfo], None] = lambda _: None,
) -> QuestionInfo:
    """Resolve an open question once and tell its asker; refuse if already resolved."""
    question = sql_get(conn, question_id)
    may_resolve(question)
    if question.answered_at is not None:
        raise RequestRefused(
            f"question {question_id} is already resolved "
            f"(answer {question.answer!r} by {question.answerer})"
        )
    conn.execute(
        "UPDATE operator_questions SET answered_at = ?, answer = ?, answerer = ? "
        "WHERE id = ? AND answered_at IS NULL",
        (now, answer, answerer, question_id),
    )
    info = sql_get(conn, question_id)
    outbox.insert([system_messages.question_answered(info)])
    return info


def sql_close_for_purge(conn: Conn, outbox: Outbox, agent: str, now: float) -> list[QuestionInfo]:
    """Close every open question ``agent`` asked or was asked (it is purged), answered
    ``[cancelled: <agent> was purged]`` by the operator: the askers of the ones it was asked
    are told; the ones it asked have no one left to tell."""
    answer = f"[cancelled: {agent} was purged]"
    open_ones = conn.execute(
        "SELECT id, asker FROM operator_questions "
        "WHERE answered_at IS NULL AND (asker = ? OR target = ?) ORDER BY id",
        (agent, agent),
    ).fetchall()
    closed = []
    for question_id, asker in open_ones:
        if asker != agent:
            closed.append(sql_resolve(conn, outbox, question_id, answer, OPERATOR, now))
            continue
        conn.execute(
            "UPDATE operator_questions SET answered_at = ?, answer = ?, answerer = ? WHERE id = ?",
            (now, answer, OPERATOR, question_id),
        )
        closed.append(sql_get(conn, question_id))
    return closed


class DeadlineSchedule:
    """Open questions by deadline (sans-IO): what is due, and when to look next."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, question_id: int, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, question_id))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[int]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[1])
        return due


class QuestionBook:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        events: EventHub,
        *,
        known_agents: Callable[[], Collection[str]],
        clock: WallClock = time.time,
        announce: Announce = _no_announce,
    ) -> None:
        self._db = db
        self._broker = broker
        self._events = events
        self._known = known_agents
        self._clock = clock
        self._announce = announce
        self._schedule = DeadlineSchedule()
        self._changed = trio.Event()
        #: While the watchdog runs (on the node holding the duties): deadlines are armed.
        self._watching = False

    async def ask(
        self,
        asker: str,
        question: str,
        options: list[str],
        multi: bool,
        ttl_seconds: int | None,
        to: str | None,
    ) -> QuestionInfo:
        target = check_ask(asker, question, options, ttl_seconds, to, known=self._known())
        now = self._clock()
        deadline = now + ttl_seconds if ttl_seconds is not None else None

        def tx(conn: Conn, outbox: Outbox) -> QuestionInfo:
            new_id = insert_id(
                conn,
                "INSERT INTO operator_questions (asker, target, question, options_json, multi, "
                "asked_at, deadline_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (asker, target, question, json.dumps(options), int(multi), now, deadline),
            )
            info = sql_get(conn, new_id)
            if target is not None:
                outbox.insert([system_messages.question_asked(info)])
            if deadline is not None:
                self._announce(conn, new_id, deadline)
            return info

        info = await self._broker.transaction(tx, now=now)
        if deadline is not None:
            self._arm(info.id, deadline)
        self._events.emit(QuestionAdded(question=info))
        return info

    async def resolve(
        self,
        question_id: int,
        answer: str,
        answerer: str,
        may_resolve: Callable[[QuestionInfo], None] = lambda _: None,
    ) -> QuestionInfo:
        """Answer (or cancel, or expire) a question; :class:`RequestRefused` if not open."""
        now = self._clock()
        info = await self._broker.transaction(
            lambda conn, outbox: sql_resolve(
                conn, outbox, question_id, answer, answerer, now, may_resolve
            ),
            now=now,
        )
        self._events.emit(QuestionResolved(question=info))
        return info

    async def answer_as_agent(self, agent: str, question_id: int, answer: str) -> QuestionInfo:
        def only_target(q: QuestionInfo) -> None:
            if q.target != agent:
                raise RequestRefused(f"only the question's target may answer question {q.id}")

        if not answer.strip():
            raise RequestRefused("answer is empty")
        return await self.resolve(question_id, answer, agent, only_target)

    async def cancel_as_agent(self, agent: str, question_id: int) -> QuestionInfo:
        def owner_or_manager(q: QuestionInfo) -> None:
            if agent not in (q.asker, MANAGER):
                raise RequestRefused(f"question {q.id} was asked by {q.asker}, not {agent}")

        return await self.resolve(question_id, f"[cancelled by {agent}]", agent, owner_or_manager)

    async def answer_as_operator(self, question_id: int, answer: str) -> QuestionInfo:
        if not answer.strip():
            raise RequestRefused("answer is empty")
        return await self.resolve(question_id, answer, OPERATOR)

    async def cancel_as_operator(self, question_id: int) -> QuestionInfo:
        return await self.resolve(question_id, CANCELLED, OPERATOR)

    async def get(self, question_id: int) -> QuestionInfo:
        return await self._db.transaction(lambda conn: sql_get(conn, question_id))

    async def list(
        self, *, include_answered: bool = False, involving: str | None = None
    ) -> list[QuestionInfo]:
        def tx(conn: Conn) -> list[QuestionInfo]:
            sql = "SELECT * FROM operator_questions WHERE 1 = 1"
            args: list[object] = []
            if not include_answered:
                sql += " AND answered_at IS NULL"
            if involving is not None:
                sql += " AND (asker = ? OR target = ?)"
                args += [involving, involving]
            return [_row_to_info(r) for r in conn.execute(sql + " ORDER BY id", args)]

        return await self._db.transaction(tx)

    async def load(self) -> None:
        """Arm the deadline of every open question from the table (past ones: due at once),
        in place of whatever was armed before; from now on, new ones are armed too."""
        self._schedule = DeadlineSchedule()
        self._watching = True
        for q in await self.list():
            if q.deadline_at is not None:
                self._arm(q.id, q.deadline_at)

    async def expire_due(self) -> Sequence[QuestionInfo]:
        """Expire every open question whose deadline has passed; return the ones expired."""
        expired: list[QuestionInfo] = []
        for question_id in self._schedule.pop_due(self._clock()):
            # Answered or cancelled first: the expiry loses the race, as it should.
            with contextlib.suppress(RequestRefused):
                expired.append(await self.resolve(question_id, EXPIRED, TTL_ANSWERER))
        return expired

    def arm(self, question_id: int, deadline: float) -> None:
        """Watch a deadline set elsewhere (another node's ``ask``); nothing while the
        watchdog does not run here (it reads every open deadline when it starts)."""
        self._arm(question_id, deadline)

    def _arm(self, question_id: int, deadline: float) -> None:
        if not self._watching:
            return
        self._schedule.add(question_id, deadline)
        self._changed.set()

    async def watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Expire questions at their deadline; re-armed from the table at every start."""
        try:
            await self.load()
            task_status.started()
            while True:
                await self.expire_due()
                self._changed = trio.Event()
                deadline = self._schedule.next_deadline()
                # Stored deadlines are wall-clock times; the wait runs on trio's clock.
                wake_at = math.inf if deadline is None else trio_deadline(deadline, self._clock)
                with trio.move_on_at(wake_at):
                    await self._changed.wait()
        finally:
            self._watching = False
