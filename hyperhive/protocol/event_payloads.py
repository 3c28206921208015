"""The payload of every kind on the daemon's event stream, one attrs class per kind.

``EventHub.emit(payload)`` publishes one; the dashboard's ``/api/stream`` sends its fields
(plus ``seq`` and ``ts``) as the frame's data. :data:`EVENT_PAYLOADS` is the one table of
kinds and their fields: the JSON Schema's ``events`` section and the dashboard's list of
kinds (``/static/kinds.js``) come from it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import attrs

from hyperhive.kinds import AgentRole, AgentState, EventKind, NodeStatus, Transient
from hyperhive.protocol._codec import unstructure
from hyperhive.protocol._messages import ApprovalInfo, QuestionInfo, ReminderInfo, ScheduleInfo


@attrs.frozen
class EventPayload:
    KIND: ClassVar[EventKind]


@attrs.frozen
class Sent(EventPayload):
    """A message was written (one per recipient)."""

    KIND = EventKind.SENT
    id: int
    sender: str
    recipient: str
    body: str
    sent_at: float
    in_reply_to: int | None


@attrs.frozen
class Delivered(EventPayload):
    """A message was handed to its recipient (or read by the operator)."""

    KIND = EventKind.DELIVERED
    id: int
    sender: str
    recipient: str
    redelivered: bool
    acked: bool


@attrs.frozen
class Vacuumed(EventPayload):
    KIND = EventKind.VACUUMED
    deleted: int


@attrs.frozen
class Resync(EventPayload):
    """Sent by the stream itself when events were missed: take a fresh snapshot."""

    KIND = EventKind.RESYNC
    seq: int


@attrs.frozen
class AgentRegistered(EventPayload):
    KIND = EventKind.AGENT_REGISTERED
    name: str
    role: AgentRole
    state: AgentState


@attrs.frozen
class AgentChanged(EventPayload):
    KIND = EventKind.AGENT_CHANGED
    name: str
    state: AgentState
    transient: Transient | None
    transient_since: float | None
    warning: str | None
    pid: int | None


@attrs.frozen
class AgentDestroyed(EventPayload):
    KIND = EventKind.AGENT_DESTROYED
    name: str


@attrs.frozen
class AgentPurged(EventPayload):
    KIND = EventKind.AGENT_PURGED
    name: str


@attrs.frozen
class StatusChanged(EventPayload):
    KIND = EventKind.STATUS_CHANGED
    name: str
    status_text: str


@attrs.frozen
class ModelChanged(EventPayload):
    KIND = EventKind.MODEL_CHANGED
    name: str
    model: str


@attrs.frozen
class HarnessConnected(EventPayload):
    KIND = EventKind.HARNESS_CONNECTED
    name: str


@attrs.frozen
class HarnessDisconnected(EventPayload):
    KIND = EventKind.HARNESS_DISCONNECTED
    name: str


@attrs.frozen
class ContainerStarted(EventPayload):
    KIND = EventKind.CONTAINER_STARTED
    name: str
    pid: int


@attrs.frozen
class ContainerCrash(EventPayload):
    KIND = EventKind.CONTAINER_CRASH
    name: str
    exit_status: int | None
    crash_loop: bool
    #: Seconds until the automatic restart; None in a crash loop (no restart).
    restart_in: float | None


@attrs.frozen
class QuestionAdded(EventPayload):
    KIND = EventKind.QUESTION_ADDED
    question: QuestionInfo


@attrs.frozen
class QuestionResolved(EventPayload):
    KIND = EventKind.QUESTION_RESOLVED
    question: QuestionInfo


@attrs.frozen
class ReminderChanged(EventPayload):
    """A reminder was set, delivered, failed, retried, or cancelled (``removed``)."""

    KIND = EventKind.REMINDER_CHANGED
    reminder: ReminderInfo
    removed: bool = False


@attrs.frozen
class NodeChanged(EventPayload):
    """A node's status as its heartbeat shows it changed (``previous`` None: a node seen
    for the first time); its agents are unreachable while it is not ``up``."""

    KIND = EventKind.NODE_CHANGED
    node: str
    status: NodeStatus
    previous: NodeStatus | None


@attrs.frozen
class ApprovalAdded(EventPayload):
    KIND = EventKind.APPROVAL_ADDED
    approval: ApprovalInfo


@attrs.frozen
class ApprovalResolved(EventPayload):
    KIND = EventKind.APPROVAL_RESOLVED
    approval: ApprovalInfo


@attrs.frozen
class ProblemsChanged(EventPayload):
    KIND = EventKind.PROBLEMS_CHANGED
    problems: list[str]


@attrs.frozen
class SpaceChanged(EventPayload):
    KIND = EventKind.SPACE_CHANGED
    free: int
    low: bool


@attrs.frozen
class DiskUsageChanged(EventPayload):
    """The state dir's size and each agent's, in bytes (measured every few minutes)."""

    KIND = EventKind.DISK_USAGE_CHANGED
    total: int
    agents: dict[str, int]


@attrs.frozen
class AgentPaused(EventPayload):
    """An agent was paused: no messages are handed to it (so no turns) until resumed."""

    KIND = EventKind.AGENT_PAUSED
    name: str
    reason: str
    #: ``operator``, or what else paused it (a budget, ``system``).
    by: str
    paused_at: float


@attrs.frozen
class AgentResumed(EventPayload):
    """A paused agent was resumed: what waits in its inbox is handed out again."""

    KIND = EventKind.AGENT_RESUMED
    name: str
    by: str


@attrs.frozen
class SpendChanged(EventPayload):
    """A turn of ``name`` was recorded in the spend ledger (today = since midnight UTC)."""

    KIND = EventKind.SPEND_CHANGED
    name: str
    cost_today_usd: float
    cost_total_usd: float
    tokens_today: int
    tokens_total: int
    ctx_tokens: int | None
    hive_cost_today_usd: float
    hive_cost_total_usd: float


@attrs.frozen
class ScheduleChanged(EventPayload):
    """A scheduled prompt was created, edited, fired, or ended."""

    KIND = EventKind.SCHEDULE_CHANGED
    schedule: ScheduleInfo


@attrs.frozen
class ParentChanged(EventPayload):
    KIND = EventKind.PARENT_CHANGED
    name: str
    parent: str | None


#: Every event kind and the class of its payload.
EVENT_PAYLOADS: Final[dict[EventKind, type[EventPayload]]] = {
    cls.KIND: cls
    for cls in (
        Sent,
        Delivered,
        Vacuumed,
        Resync,
        AgentRegistered,
        AgentChanged,
        AgentDestroyed,
        AgentPurged,
        StatusChanged,
        ModelChanged,
        HarnessConnected,
        HarnessDisconnected,
        ContainerStarted,
        ContainerCrash,
        QuestionAdded,
        QuestionResolved,
        ApprovalAdded,
        ApprovalResolved,
        ProblemsChanged,
        SpaceChanged,
        DiskUsageChanged,
        AgentPaused,
        AgentResumed,
        SpendChanged,
        ScheduleChanged,
        ParentChanged,
        ReminderChanged,
        NodeChanged,
    )
}
assert set(EVENT_PAYLOADS) == set(EventKind), "every event kind needs exactly one payload class"


def event_data(payload: EventPayload) -> dict[str, Any]:
    """The payload as the JSON object the stream sends (enums as their strings)."""
    data: dict[str, Any] = unstructure(payload)
    return data


def kinds_js() -> str:
    """``/static/kinds.js``: the dashboard's list of event kinds, from :class:`EventKind`."""
    names = ", ".join(f"'{kind.value}'" for kind in EventKind)
    return (
        "// Generated from hyperhive.kinds.EventKind: every kind the daemon's stream sends.\n"
        f"export const EVENT_KINDS = Object.freeze([{names}]);\n"
    )
