"""Every message the hive itself (``system``) writes to an inbox, built in one place.

A system message's body is its kind, a space, then its fields as JSON with sorted keys
(:func:`hyperhive.protocol.system_body` of one typed class per kind in
:mod:`hyperhive.protocol.system_messages`), so an agent (and a test) can tell the kinds
apart by the first word and read the fields without guessing. Each kind has one function
here that returns the
:class:`~hyperhive.broker.Outgoing` row; the row is written through the broker's
transaction (:meth:`hyperhive.broker.Broker.transaction`), which wakes its recipient after
the commit.

The start notice is the exception to the JSON form: it is prose the agent's next turn starts
on, and it is transient (a new one replaces one still waiting, see ``Broker.notice``).
"""

from __future__ import annotations

from typing import Final

from hyperhive.broker import Outgoing
from hyperhive.names import MANAGER, SYSTEM
from hyperhive.protocol import ApprovalInfo, QuestionInfo, system_body
from hyperhive.protocol import system_messages as kinds

#: The start notice every launch puts first in the agent's inbox (``Broker.notice``).
KICK_BODY: Final = (
    "Start notice: you were {verb}. Re-read your notes in /state before you go on, "
    "then check your inbox (recv) and loose ends."
)


def approval_resolved(info: ApprovalInfo, to: str = MANAGER) -> Outgoing:
    """To the manager (and to the lead that asked, ``to``): a decision (approved, denied,
    failed) on one of its requests."""
    message = kinds.ApprovalResolved(
        id=info.id,
        agent=info.agent,
        kind=info.kind,
        commit_ref=info.commit_ref,
        status=info.status,
        note=info.note,
    )
    return Outgoing(SYSTEM, to, system_body(message))


def question_asked(info: QuestionInfo) -> Outgoing:
    """To a peer (or the manager) asked by another agent: the question to answer."""
    assert info.target is not None, "a question to the operator is no message"
    message = kinds.QuestionAsked(
        id=info.id,
        asker=info.asker,
        question=info.question,
        options=info.options,
        multi=info.multi,
        deadline_at=info.deadline_at,
    )
    return Outgoing(SYSTEM, info.target, system_body(message))


def question_answered(info: QuestionInfo) -> Outgoing:
    """To the asker: its question was answered, cancelled or expired (``info`` is resolved)."""
    assert info.answer is not None and info.answerer is not None
    message = kinds.QuestionAnswered(
        id=info.id, question=info.question, answer=info.answer, answerer=info.answerer
    )
    return Outgoing(SYSTEM, info.asker, system_body(message))


def container_crash(
    agent: str,
    *,
    exit_status: int | None,
    stderr_tail: str,
    crash_loop: bool,
    restart_in_seconds: float | None,
) -> Outgoing:
    """To the manager: an agent's container exited without being asked to."""
    message = kinds.ContainerCrash(
        agent=agent,
        exit_status=exit_status,
        stderr_tail=stderr_tail,
        crash_loop=crash_loop,
        restart_in_seconds=restart_in_seconds,
    )
    return Outgoing(SYSTEM, MANAGER, system_body(message))


def agent_error(agent: str, error: str) -> Outgoing:
    """To the manager: a part of the daemon serving ``agent`` failed (and is restarted)."""
    return Outgoing(SYSTEM, MANAGER, system_body(kinds.AgentError(agent=agent, error=error)))


def start_notice(verb: str) -> str:
    """The body of a start notice: why the agent (re)started (``Broker.notice`` sends it)."""
    return KICK_BODY.format(verb=verb)
