"""Loose ends: what is still open around an agent, of every kind (``get_loose_ends``).

Each kind has one small function that lists the caller's open ones and one that cancels
one (``cancel_loose_end``), plus one that turns a row into a uniform :class:`LooseEnd`
(kind, id, owner, age); :func:`collect` and :func:`cancel` go through them. An agent sees
what it is part of (questions it asked or must answer, its own pending reminders, the
active schedules it owns); the
manager sees the whole hive and the pending approvals, and may cancel anything. A new kind
adds its three functions, its list in :func:`collect` and its entry in :data:`CANCELLERS`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs

from hyperhive.approvals import ApprovalQueue
from hyperhive.errors import RequestRefused
from hyperhive.kinds import LooseEndKind
from hyperhive.names import MANAGER, OPERATOR
from hyperhive.protocol import (
    ApprovalInfo,
    LooseEnd,
    LooseEndsReply,
    QuestionInfo,
    ReminderInfo,
    ScheduleInfo,
)
from hyperhive.questions import QuestionBook
from hyperhive.reminders import ReminderBook
from hyperhive.schedules import Check, ScheduleBook

#: The longest summary of one loose end (the text it is about, cut).
SUMMARY_CHARS: Final = 200


@attrs.frozen
class Books:
    """Where each kind of loose end is kept."""

    questions: QuestionBook
    reminders: ReminderBook
    approvals: ApprovalQueue
    schedules: ScheduleBook
    #: Refuses a schedule the caller may not touch (``Hive.schedule_check``).
    schedule_check: Callable[[str], Check]


def _cut(text: str) -> str:
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


# ---------------------------------------------------------------- one function per kind


def question_end(q: QuestionInfo, now: float) -> LooseEnd:
    return LooseEnd(
        kind=LooseEndKind.QUESTION,
        id=q.id,
        owner=q.asker,
        target=q.target or OPERATOR,
        summary=_cut(q.question),
        created_at=q.asked_at,
        age_seconds=max(0.0, now - q.asked_at),
        due_at=q.deadline_at,
    )


def reminder_end(r: ReminderInfo, now: float) -> LooseEnd:
    return LooseEnd(
        kind=LooseEndKind.REMINDER,
        id=r.id,
        owner=r.agent,
        target=r.agent,
        summary=_cut(r.body),
        created_at=r.created_at,
        age_seconds=max(0.0, now - r.created_at),
        due_at=r.due_at,
    )


def approval_end(a: ApprovalInfo, now: float) -> LooseEnd:
    what = f"{a.kind} {a.agent}" + (f" @ {a.commit_ref}" if a.commit_ref else "")
    return LooseEnd(
        kind=LooseEndKind.APPROVAL,
        id=a.id,
        owner=MANAGER,
        target=OPERATOR,
        summary=_cut(what + (f": {a.description}" if a.description else "")),
        created_at=a.requested_at,
        age_seconds=max(0.0, now - a.requested_at),
        due_at=None,
    )


def schedule_end(s: ScheduleInfo, now: float) -> LooseEnd:
    return LooseEnd(
        kind=LooseEndKind.SCHEDULE,
        id=s.id,
        owner=s.owner,
        target=", ".join(s.targets) or None,
        summary=_cut(s.description or s.body),
        created_at=s.created_at,
        age_seconds=max(0.0, now - s.created_at),
        due_at=s.next_at,
    )


async def open_questions(books: Books, caller: str, manager: bool) -> list[QuestionInfo]:
    return await books.questions.list(involving=None if manager else caller)


async def pending_reminders(books: Books, caller: str, manager: bool) -> list[ReminderInfo]:
    return await books.reminders.list(agent=None if manager else caller)


async def pending_approvals(books: Books, caller: str, manager: bool) -> list[ApprovalInfo]:
    return await books.approvals.list(pending_only=True) if manager else []


async def owned_schedules(books: Books, caller: str, manager: bool) -> list[ScheduleInfo]:
    every = await books.schedules.list()
    return every if manager else [s for s in every if s.owner == caller]


async def cancel_question(books: Books, caller: str, item_id: int) -> None:
    await books.questions.cancel_as_agent(caller, item_id)


async def cancel_reminder(books: Books, caller: str, item_id: int) -> None:
    await books.reminders.cancel(item_id, caller)


async def cancel_approval(books: Books, caller: str, item_id: int) -> None:
    raise RequestRefused(
        f"approval {item_id} is the operator's to decide; it cannot be cancelled from here"
    )


async def cancel_schedule(books: Books, caller: str, item_id: int) -> None:
    await books.schedules.cancel(item_id, None, books.schedule_check(caller))


CANCELLERS: Final[dict[LooseEndKind, Callable[[Books, str, int], Awaitable[None]]]] = {
    LooseEndKind.QUESTION: cancel_question,
    LooseEndKind.REMINDER: cancel_reminder,
    LooseEndKind.APPROVAL: cancel_approval,
    LooseEndKind.SCHEDULE: cancel_schedule,
}


async def collect(books: Books, caller: str, *, manager: bool, now: float) -> LooseEndsReply:
    """Every loose end of ``caller`` (of the hive, for the manager), each with its age."""
    questions = await open_questions(books, caller, manager)
    reminders = await pending_reminders(books, caller, manager)
    approvals = await pending_approvals(books, caller, manager)
    schedules = await owned_schedules(books, caller, manager)
    items = [question_end(q, now) for q in questions]
    items += [schedule_end(s, now) for s in schedules]
    items += [reminder_end(r, now) for r in reminders]
    items += [approval_end(a, now) for a in approvals]
    items.sort(key=lambda e: (e.created_at, e.kind, e.id))
    return LooseEndsReply(
        questions=questions,
        approvals=approvals,
        reminders=reminders,
        schedules=schedules,
        items=items,
    )


async def cancel(books: Books, caller: str, kind: LooseEndKind, item_id: int) -> None:
    """Cancel one loose end: its owner may, the manager may cancel any."""
    await CANCELLERS[kind](books, caller, item_id)
