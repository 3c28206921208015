"""Duties that run once per hive: question deadlines, reminders, schedules, the messages'
retention.

On sqlite a daemon is the hive's only node, and it runs them all. On PostgreSQL several
nodes share the store, and each of these must run on exactly one of them at a time: the node
holding the duties' lock (:data:`DUTY_LOCK`, a session advisory lock on a connection of its
own: :meth:`hyperhive.store.Database.hold_lock`). A node that does not hold it tries again
every ``DUTY_RETRY_SECONDS``; the holder checks its connection every ``DUTY_CHECK_SECONDS``
and, once it is lost, cancels its duties at once. A holder that dies (its connections close)
or stops releases the lock on the server, and another node's next try takes it: each duty
then starts from the table (the open questions' deadlines, the pending reminders, the
schedules' next times), so nothing is skipped.

Nothing fires twice: expiring a question, delivering a reminder and firing a schedule are
each one transaction that changes the row only while it is still open or due, and the
nodes' transactions take turns (:mod:`hyperhive.store`); a former holder that has not yet
noticed its loss finds the row already done.

New work reaches the holder: the transaction that sets a deadline, a reminder or a schedule
on any node also notifies the topic :data:`DUTY_TOPIC` (ids and a time, never bodies), and
the holder arms that deadline or reads its next due time again (:func:`parse_note`,
:meth:`Duties.noted`). A reminder whose body goes into a file in its agent's state dir, on
another node, is handed to that node (a ``deliver`` note), which delivers it: on every node,
whether or not it holds the duties.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import trio

from hyperhive.config import DUTY_CHECK_SECONDS, DUTY_RETRY_SECONDS
from hyperhive.nodes import Nodes
from hyperhive.questions import QuestionBook
from hyperhive.reminders import ReminderBook
from hyperhive.runtime import Report
from hyperhive.schedules import ScheduleBook
from hyperhive.store import Conn, Database, LockLost
from hyperhive.supervision import supervise

log = logging.getLogger(__name__)

#: The duties' lock (``pg_try_advisory_lock(bigint)``): one holder per hive.
DUTY_LOCK: Final = 0x6879_7065_6475_7479  # "hypeduty"
#: The notification topic of a new deadline, reminder or schedule change.
DUTY_TOPIC: Final = "duty"
#: The kinds of work a duty note names.
QUESTION_NOTE: Final = "question"
REMINDER_NOTE: Final = "reminder"
SCHEDULE_NOTE: Final = "schedule"
#: A reminder whose file goes into a state dir on the agent's node: that node delivers it.
DELIVER_NOTE: Final = "deliver"

#: A duty: its name (for the daemon's problems) and its body (``task_status`` and all).
Part = tuple[str, Callable[..., Awaitable[None]]]


@attrs.frozen
class DutyNote:
    """What a duty notification says: a question's deadline, a reminder's due time (``id``
    and ``at``), that a schedule changed (neither), or a reminder for the node of its
    ``agent`` to deliver (``id``, ``agent``)."""

    kind: str
    id: int | None = None
    at: float | None = None
    agent: str | None = None


def parse_note(data: Mapping[str, Any]) -> DutyNote | None:
    """The note in a notification's data, or None for one that is not well formed."""
    kind = data.get("kind")
    if kind == SCHEDULE_NOTE:
        return DutyNote(SCHEDULE_NOTE)
    if kind not in (QUESTION_NOTE, REMINDER_NOTE, DELIVER_NOTE):
        return None
    ident, at = data.get("id"), data.get("at")
    if not isinstance(ident, int) or isinstance(ident, bool):
        return None
    if kind == DELIVER_NOTE:
        agent = data.get("agent")
        return DutyNote(DELIVER_NOTE, ident, agent=agent) if isinstance(agent, str) else None
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        return None
    return DutyNote(kind, ident, float(at))


def question_announcer(nodes: Nodes) -> Callable[[Conn, int, float], None]:
    """:class:`QuestionBook`'s ``announce``: a new deadline, to every node."""
    return lambda conn, ident, at: nodes.notify(
        conn, DUTY_TOPIC, kind=QUESTION_NOTE, id=ident, at=at
    )


def reminder_announcer(nodes: Nodes) -> Callable[[Conn, int, float], None]:
    """:class:`ReminderBook`'s ``announce``: a reminder due (again), to every node."""
    return lambda conn, ident, at: nodes.notify(
        conn, DUTY_TOPIC, kind=REMINDER_NOTE, id=ident, at=at
    )


def schedule_announcer(nodes: Nodes) -> Callable[[Conn], None]:
    """:class:`ScheduleBook`'s ``announce``: a schedule changed, to every node."""
    return lambda conn: nodes.notify(conn, DUTY_TOPIC, kind=SCHEDULE_NOTE)


def reminder_hand_over(nodes: Nodes) -> Callable[[Conn, int, str], None]:
    """:class:`ReminderBook`'s ``hand_over``: a reminder for its agent's node to deliver."""
    return lambda conn, ident, agent: nodes.notify(
        conn, DUTY_TOPIC, kind=DELIVER_NOTE, id=ident, agent=agent
    )


class Duties:
    """Runs the hive's singleton duties while this node holds their lock (module docstring)."""

    def __init__(
        self,
        db: Database,
        nodes: Nodes,
        *,
        questions: QuestionBook,
        reminders: ReminderBook,
        schedules: ScheduleBook,
        is_local: Callable[[str], bool],
        retry_seconds: float = DUTY_RETRY_SECONDS,
        check_seconds: float = DUTY_CHECK_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._nodes = nodes
        self._questions = questions
        self._reminders = reminders
        self._schedules = schedules
        self._is_local = is_local
        #: Reminders handed to this node by the holder (their agent's files are here).
        self._handed: set[int] = set()
        self._handed_changed = trio.Event()
        self._retry_seconds = retry_seconds
        self._check_seconds = check_seconds
        self._clock = clock
        #: Since when this node holds the duties (wall clock); None while it does not.
        self.held_since: float | None = None
        nodes.on(DUTY_TOPIC, self.noted)

    @property
    def held(self) -> bool:
        """Whether this node runs the hive's duties now."""
        return self.held_since is not None

    def noted(self, data: dict[str, Any]) -> None:
        """A duty notification (any node's): the holder arms what another node set (its
        own work was armed where it was made); the node of a handed-over reminder's agent
        delivers it."""
        note = parse_note(data)
        if note is None:
            log.warning("ignored a duty notification that is not well formed: %.200r", data)
            return
        if note.kind == DELIVER_NOTE:
            assert note.id is not None and note.agent is not None
            if self._is_local(note.agent):
                self._handed.add(note.id)
                self._handed_changed.set()
            return
        if not self.held or data.get("from") == self._nodes.name:
            return
        if note.kind == QUESTION_NOTE:
            assert note.id is not None and note.at is not None
            self._questions.arm(note.id, note.at)
        elif note.kind == REMINDER_NOTE:
            assert note.id is not None and note.at is not None
            self._reminders.arm(note.id, note.at)
        else:
            self._schedules.poke()

    async def serve(
        self,
        parts: Sequence[Part],
        reporter: Callable[[str], Report],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``parts``, each a failure domain, while this node holds the duties' lock;
        wait for it again when it is lost. Started once the duties run here, or once the
        first try finds another node holding them."""
        ready = False

        def started() -> None:
            nonlocal ready
            if not ready:
                ready = True
                task_status.started()

        part = "the handed-over reminders"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(supervise, part, self._deliver_handed, report=reporter(part))
            )
            await self._hold(parts, reporter, started)

    async def _deliver_handed(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver the reminders handed to this node (on every node, holder or not)."""
        task_status.started()
        while True:
            await self._handed_changed.wait()
            self._handed_changed = trio.Event()
            handed, self._handed = self._handed, set()
            for reminder_id in sorted(handed):
                await self._reminders.deliver(reminder_id)

    async def _hold(
        self,
        parts: Sequence[Part],
        reporter: Callable[[str], Report],
        started: Callable[[], None],
    ) -> None:
        while True:
            try:
                async with self._db.hold_lock(
                    DUTY_LOCK,
                    retry_seconds=self._retry_seconds,
                    check_seconds=self._check_seconds,
                    waiting=functools.partial(self._waiting, started),
                ):
                    await self._run(parts, reporter, started)
            except LockLost as exc:
                log.warning("%s; the hive's duties stop on this node", exc)

    def _waiting(self, started: Callable[[], None]) -> None:
        log.info("another node holds the hive's duties; node %s stands by", self._nodes.name)
        started()

    async def _run(
        self,
        parts: Sequence[Part],
        reporter: Callable[[str], Report],
        started: Callable[[], None],
    ) -> None:
        if self._db.shared:
            log.info("node %s holds the hive's duties", self._nodes.name)
        self.held_since = self._clock()
        try:
            async with trio.open_nursery() as nursery:
                for part, body in parts:
                    await nursery.start(
                        functools.partial(supervise, part, body, report=reporter(part))
                    )
                started()
                await trio.sleep_forever()
        finally:
            self.held_since = None


__all__ = [
    "DUTY_LOCK",
    "DUTY_TOPIC",
    "Duties",
    "DutyNote",
    "parse_note",
    "question_announcer",
    "reminder_announcer",
    "reminder_hand_over",
    "schedule_announcer",
]
