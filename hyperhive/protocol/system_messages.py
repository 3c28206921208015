"""Every message the daemon sends as ``system``, one attrs class per kind.

A system message's body is its kind, a space, then its fields as one JSON object (keys
sorted): ``question_answered {"answer": "yes", ...}``. :func:`system_body` is the one place
that writes it; docs/protocol.md lists the kinds for agents.
"""

from __future__ import annotations

import json
from typing import ClassVar, Final

import attrs

from hyperhive.kinds import ApprovalKind, ApprovalStatus, SystemKind
from hyperhive.protocol._codec import CONVERTER


@attrs.frozen
class SystemMessage:
    KIND: ClassVar[SystemKind]


@attrs.frozen
class QuestionAsked(SystemMessage):
    """To a peer an agent asked (``ask`` with ``to``)."""

    KIND = SystemKind.QUESTION_ASKED
    id: int
    asker: str
    question: str
    options: list[str]
    multi: bool
    deadline_at: float | None


@attrs.frozen
class QuestionAnswered(SystemMessage):
    """To the asker, exactly once: answered, cancelled or expired."""

    KIND = SystemKind.QUESTION_ANSWERED
    id: int
    question: str
    answer: str
    answerer: str


@attrs.frozen
class ApprovalResolved(SystemMessage):
    """To the manager, for every approval that reached a final status."""

    KIND = SystemKind.APPROVAL_RESOLVED
    id: int
    agent: str
    kind: ApprovalKind
    commit_ref: str | None
    status: ApprovalStatus
    note: str | None


@attrs.frozen
class ContainerCrash(SystemMessage):
    """To the manager, when an agent's payload exited unexpectedly."""

    KIND = SystemKind.CONTAINER_CRASH
    agent: str
    exit_status: int | None
    stderr_tail: str
    crash_loop: bool
    restart_in_seconds: float | None


@attrs.frozen
class AgentError(SystemMessage):
    """To the manager, when a part of the daemon serving one agent failed."""

    KIND = SystemKind.AGENT_ERROR
    agent: str
    error: str


@attrs.frozen
class AgentPaused(SystemMessage):
    """To the manager, when an agent was paused by something other than the operator."""

    KIND = SystemKind.AGENT_PAUSED
    agent: str
    reason: str
    by: str


#: Every system-message kind and its class.
SYSTEM_MESSAGES: Final[dict[SystemKind, type[SystemMessage]]] = {
    cls.KIND: cls
    for cls in (
        QuestionAsked,
        QuestionAnswered,
        ApprovalResolved,
        ContainerCrash,
        AgentError,
        AgentPaused,
    )
}
assert set(SYSTEM_MESSAGES) == set(SystemKind), "every system kind needs exactly one class"


def system_body(message: SystemMessage) -> str:
    """The body of a system message: its kind, then its fields as JSON."""
    fields = CONVERTER.unstructure(message)
    return f"{message.KIND} {json.dumps(fields, ensure_ascii=False, sort_keys=True)}"
