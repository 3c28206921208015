"""Every request and reply of the three sockets, as attrs classes (no I/O here).

A request class carries its wire tag in ``CMD``; its fields are the request's fields.
A field whose name ends in ``_`` (``from_``) travels without the underscore. Fields with
a default are optional on the wire. Reply classes hold the fields that follow ``"ok": true``.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

import attrs

from hyperhive.config import (
    MAX_ACK_IDS,
    MAX_ID,
    MAX_LOG_LINES,
    MAX_QUESTION_TTL_SECONDS,
    MAX_RECENT,
    MAX_RECV_BATCH,
    MAX_RECV_WAIT_SECONDS,
)
from hyperhive.kinds import (
    AgentRole,
    AgentState,
    ApprovalKind,
    ApprovalStatus,
    BackendChoice,
    BackendName,
    ConnectionRole,
    Decider,
    PeerRole,
    Transient,
)
from hyperhive.protocol._bounds import Bounds, wire

#: A row id (message, question, approval): what sqlite hands out.
ID: Final = Bounds(minimum=1, maximum=MAX_ID)
#: Text that reaches a command line or a file: no NUL.
CLEAN_TEXT: Final = Bounds(no_nul=True)


@attrs.frozen
class Request:
    CMD: ClassVar[str] = ""


@attrs.frozen
class Reply:
    pass


# ---------------------------------------------------------------- shared records


@attrs.frozen
class Message:
    id: int
    from_: str
    to: str
    body: str
    sent_at: float
    in_reply_to: int | None
    redelivered: bool


@attrs.frozen
class RecentMessage:
    id: int
    from_: str
    to: str
    body: str
    sent_at: float
    in_reply_to: int | None
    delivered_at: float | None
    acked_at: float | None


@attrs.frozen
class QuestionInfo:
    id: int
    asker: str
    target: str | None
    question: str
    options: list[str]
    multi: bool
    asked_at: float
    deadline_at: float | None
    answered_at: float | None
    answer: str | None
    answerer: str | None


@attrs.frozen
class ApprovalInfo:
    id: int
    agent: str
    kind: ApprovalKind
    commit_ref: str | None
    requested_at: float
    status: ApprovalStatus
    resolved_at: float | None
    note: str | None
    description: str | None
    fetched_sha: str | None
    #: Who resolved it: ``operator`` (approve/deny), ``system`` (failed before a decision).
    decided_by: Decider | None = None


@attrs.frozen
class AgentInfo:
    name: str
    role: AgentRole
    state: AgentState
    backend: BackendName
    created_at: float
    parent: str | None
    model: str
    status_text: str
    unread: int
    harness_connected: bool
    #: The lifecycle operation running right now (``starting``, ``stopping``, …), if any.
    transient: Transient | None
    transient_since: float | None
    pid: int | None
    #: Something the operator should know (limits not enforced, last start failed, …).
    warning: str | None
    #: The dashboard path of the agent's own web UI (``/agent/<name>/``), once its harness
    #: serves it.
    ui_url: str | None


# ---------------------------------------------------------------- every socket


@attrs.frozen
class Hello(Request):
    CMD = "hello"
    role: ConnectionRole
    protocol: int


@attrs.frozen
class HelloReply(Reply):
    protocol: int
    name: str
    role: PeerRole


@attrs.frozen
class Empty(Reply):
    pass


# ---------------------------------------------------------------- agent socket


@attrs.frozen
class Send(Request):
    CMD = "send"
    to: str
    body: str = attrs.field(metadata=wire(CLEAN_TEXT))
    in_reply_to: int | None = attrs.field(default=None, metadata=wire(ID))


@attrs.frozen
class SendReply(Reply):
    id: int
    #: Every id written: one per recipient for a broadcast, else ``[id]``.
    ids: list[int]


@attrs.frozen
class Recv(Request):
    CMD = "recv"
    wait_seconds: float = attrs.field(
        default=0, metadata=wire(Bounds(minimum=0, maximum=MAX_RECV_WAIT_SECONDS))
    )
    max: int = attrs.field(default=1, metadata=wire(Bounds(minimum=1, maximum=MAX_RECV_BATCH)))
    ack: bool = True


@attrs.frozen
class RecvReply(Reply):
    messages: list[Message]


@attrs.frozen
class Ack(Request):
    CMD = "ack"
    ids: list[int] = attrs.field(metadata=wire(Bounds(max_items=MAX_ACK_IDS, items=ID)))


@attrs.frozen
class AckReply(Reply):
    acked: int


@attrs.frozen
class Status(Request):
    CMD = "status"


@attrs.frozen
class StatusReply(Reply):
    unread: int


@attrs.frozen
class Recent(Request):
    CMD = "recent"
    limit: int = attrs.field(default=30, metadata=wire(Bounds(minimum=1, maximum=MAX_RECENT)))


@attrs.frozen
class RecentReply(Reply):
    messages: list[RecentMessage]


@attrs.frozen
class Ask(Request):
    CMD = "ask"
    question: str
    options: list[str] = attrs.Factory(list)
    multi: bool = False
    ttl_seconds: int | None = attrs.field(
        default=None, metadata=wire(Bounds(minimum=1, maximum=MAX_QUESTION_TTL_SECONDS))
    )
    to: str | None = None


@attrs.frozen
class IdReply(Reply):
    id: int


@attrs.frozen
class Answer(Request):
    CMD = "answer"
    id: int = attrs.field(metadata=wire(ID))
    answer: str


@attrs.frozen
class GetLooseEnds(Request):
    CMD = "get_loose_ends"


@attrs.frozen
class LooseEndsReply(Reply):
    questions: list[QuestionInfo]
    #: Pending approvals; filled for the manager only.
    approvals: list[ApprovalInfo]


@attrs.frozen
class CancelLooseEnd(Request):
    CMD = "cancel_loose_end"
    kind: Literal["question"]
    id: int = attrs.field(metadata=wire(ID))


@attrs.frozen
class Wake(Request):
    CMD = "wake"
    from_: str = attrs.field(metadata=wire(CLEAN_TEXT))
    body: str = attrs.field(metadata=wire(CLEAN_TEXT))
    transient: bool = False


@attrs.frozen
class SetStatus(Request):
    CMD = "set_status"
    text: str


@attrs.frozen
class GetAgentMeta(Request):
    CMD = "get_agent_meta"
    name: str | None = None


@attrs.frozen
class AgentMetaReply(Reply):
    name: str
    role: AgentRole
    model: str
    status_text: str
    parent: str | None
    state: AgentState


# ---------------------------------------------------------------- manager socket


@attrs.frozen
class RequestSpawn(Request):
    CMD = "request_spawn"
    name: str
    description: str | None = None


@attrs.frozen
class RequestApplyCommit(Request):
    CMD = "request_apply_commit"
    agent: str
    commit_ref: str
    description: str | None = None


@attrs.frozen
class Kill(Request):
    CMD = "kill"
    name: str


@attrs.frozen
class Start(Request):
    CMD = "start"
    name: str


@attrs.frozen
class Restart(Request):
    CMD = "restart"
    name: str


@attrs.frozen
class Update(Request):
    CMD = "update"
    name: str


@attrs.frozen
class ListContainers(Request):
    CMD = "list_containers"


@attrs.frozen
class AgentsReply(Reply):
    agents: list[AgentInfo]


@attrs.frozen
class GetLogs(Request):
    CMD = "get_logs"
    agent: str
    lines: int = attrs.field(default=50, metadata=wire(Bounds(minimum=1, maximum=MAX_LOG_LINES)))


@attrs.frozen
class LogsReply(Reply):
    lines: list[str]


# ---------------------------------------------------------------- host socket


@attrs.frozen
class HostStatus(Request):
    CMD = "status"


@attrs.frozen
class HostStatusReply(Reply):
    version: str
    protocol: int
    pid: int
    #: The backend as configured (``auto`` is chosen per start-up; agents show theirs).
    backend: BackendChoice
    started_at: float
    agents: int
    pending_approvals: int
    open_questions: int
    operator_unread: int
    #: Receivers parked in a long-poll ``recv`` right now.
    parked_receivers: int
    #: The dashboard's login URL (it carries the token), or None when it is off.
    dashboard_url: str | None
    #: What is wrong with the daemon itself: a part that failed and is being restarted,
    #: low free space in the state dir, a full disk (writes refused). Empty when healthy.
    problems: list[str] = attrs.Factory(list)
    #: Agents that cannot reach the API (no key or token, no claude login), and what to do.
    credentials_warning: str | None = None


@attrs.frozen
class List(Request):
    CMD = "list"


@attrs.frozen
class Tombstones(Request):
    CMD = "tombstones"


@attrs.frozen
class Tombstone(Reply):
    name: str
    size_bytes: int
    modified_at: float


@attrs.frozen
class TombstonesReply(Reply):
    tombstones: list[Tombstone]


@attrs.frozen
class Pending(Request):
    CMD = "pending"


@attrs.frozen
class Approvals(Request):
    """Every approval, decided ones included (``pending`` lists only the waiting ones)."""

    CMD = "approvals"
    include_resolved: bool = True


@attrs.frozen
class ApprovalsReply(Reply):
    approvals: list[ApprovalInfo]


@attrs.frozen
class Approve(Request):
    CMD = "approve"
    id: int = attrs.field(metadata=wire(ID))


@attrs.frozen
class Deny(Request):
    CMD = "deny"
    id: int = attrs.field(metadata=wire(ID))
    note: str | None = None


@attrs.frozen
class ApprovalReply(Reply):
    approval: ApprovalInfo


@attrs.frozen
class HostRequestSpawn(Request):
    CMD = "request_spawn"
    name: str
    description: str | None = None


@attrs.frozen
class Spawn(Request):
    CMD = "spawn"
    name: str
    #: Overrides the daemon's backend for this agent (``nspawn``, ``process``, ``external``).
    backend: BackendChoice | None = None


@attrs.frozen
class AgentReply(Reply):
    agent: AgentInfo


@attrs.frozen
class Rebuild(Request):
    CMD = "rebuild"
    name: str


@attrs.frozen
class Destroy(Request):
    CMD = "destroy"
    name: str
    purge: bool = False


@attrs.frozen
class Revive(Request):
    CMD = "revive"
    name: str


@attrs.frozen
class Questions(Request):
    CMD = "questions"
    include_answered: bool = False


@attrs.frozen
class QuestionsReply(Reply):
    questions: list[QuestionInfo]


@attrs.frozen
class HostAnswer(Request):
    CMD = "answer"
    id: int = attrs.field(metadata=wire(ID))
    answer: str


@attrs.frozen
class QuestionReply(Reply):
    question: QuestionInfo


@attrs.frozen
class CancelQuestion(Request):
    CMD = "cancel_question"
    id: int = attrs.field(metadata=wire(ID))


@attrs.frozen
class HostSend(Request):
    CMD = "send"
    to: str
    body: str = attrs.field(metadata=wire(CLEAN_TEXT))
    in_reply_to: int | None = attrs.field(default=None, metadata=wire(ID))


@attrs.frozen
class Inbox(Request):
    CMD = "inbox"
    limit: int = attrs.field(default=50, metadata=wire(Bounds(minimum=1, maximum=MAX_RECENT)))


@attrs.frozen
class SetModel(Request):
    CMD = "set_model"
    name: str
    model: str = attrs.field(metadata=wire(CLEAN_TEXT))


@attrs.frozen
class Logs(Request):
    CMD = "logs"
    name: str
    lines: int = attrs.field(default=50, metadata=wire(Bounds(minimum=1, maximum=MAX_LOG_LINES)))


@attrs.frozen
class Vacuum(Request):
    CMD = "vacuum"


@attrs.frozen
class VacuumReply(Reply):
    deleted: int


# ---------------------------------------------------------------- which socket takes what

AGENT_REQUESTS: tuple[type[Request], ...] = (
    Hello,
    Send,
    Recv,
    Ack,
    Status,
    Recent,
    Ask,
    Answer,
    GetLooseEnds,
    CancelLooseEnd,
    Wake,
    SetStatus,
    GetAgentMeta,
)
MANAGER_REQUESTS: tuple[type[Request], ...] = (
    *AGENT_REQUESTS,
    RequestSpawn,
    RequestApplyCommit,
    Kill,
    Start,
    Restart,
    Update,
    ListContainers,
    GetLogs,
)
HOST_REQUESTS: tuple[type[Request], ...] = (
    Hello,
    HostStatus,
    List,
    Tombstones,
    Pending,
    Approvals,
    Approve,
    Deny,
    HostRequestSpawn,
    Spawn,
    Start,
    Kill,
    Restart,
    Rebuild,
    Destroy,
    Revive,
    Questions,
    HostAnswer,
    CancelQuestion,
    HostSend,
    Inbox,
    SetModel,
    Logs,
    Vacuum,
)

#: The reply class of each request class (the schema and the client use it).
REPLIES: dict[type[Request], type[Reply]] = {
    Hello: HelloReply,
    Send: SendReply,
    Recv: RecvReply,
    Ack: AckReply,
    Status: StatusReply,
    Recent: RecentReply,
    Ask: IdReply,
    Answer: Empty,
    GetLooseEnds: LooseEndsReply,
    CancelLooseEnd: Empty,
    Wake: IdReply,
    SetStatus: Empty,
    GetAgentMeta: AgentMetaReply,
    RequestSpawn: ApprovalReply,
    RequestApplyCommit: ApprovalReply,
    Kill: Empty,
    Start: Empty,
    Restart: Empty,
    Update: Empty,
    ListContainers: AgentsReply,
    GetLogs: LogsReply,
    HostStatus: HostStatusReply,
    List: AgentsReply,
    Tombstones: TombstonesReply,
    Pending: ApprovalsReply,
    Approvals: ApprovalsReply,
    Approve: ApprovalReply,
    Deny: ApprovalReply,
    HostRequestSpawn: ApprovalReply,
    Spawn: AgentReply,
    Rebuild: Empty,
    Destroy: Empty,
    Revive: ApprovalReply,
    Questions: QuestionsReply,
    HostAnswer: QuestionReply,
    CancelQuestion: QuestionReply,
    HostSend: SendReply,
    Inbox: RecentReply,
    SetModel: Empty,
    Logs: LogsReply,
    Vacuum: VacuumReply,
}


# ---- compaction: the operator has an agent's harness compact its claude session
@attrs.frozen
class Compact(Request):
    CMD = "compact"
    name: str


HOST_REQUESTS = (*HOST_REQUESTS, Compact)
REPLIES[Compact] = Empty
