"""Every request and reply of the three sockets, as attrs classes (no I/O here).

A request class carries its wire tag in ``CMD``; its fields are the request's fields.
A field whose name ends in ``_`` (``from_``) travels without the underscore. Fields with
a default are optional on the wire. Reply classes hold the fields that follow ``"ok": true``.
"""

from __future__ import annotations

from typing import ClassVar, Final

import attrs

from hyperhive.config import (
    MAX_ACK_IDS,
    MAX_ID,
    MAX_LOG_LINES,
    MAX_NAMES,
    MAX_QUESTION_TTL_SECONDS,
    MAX_RECENT,
    MAX_RECV_BATCH,
    MAX_RECV_WAIT_SECONDS,
    MAX_REMINDER_DELAY_SECONDS,
    MAX_REPORT_TOOLS,
    MAX_SCHEDULE_AT,
    MAX_SCHEDULE_INTERVAL_SECONDS,
    MAX_SCHEDULE_TARGETS,
    MIN_SCHEDULE_INTERVAL_SECONDS,
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
    LooseEndKind,
    NodeStatus,
    PeerRole,
    Transient,
    TurnOutcome,
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
    #: A spawn: the node it goes to (None: placed when approved). An apply_commit of an
    #: agent of another node than the approving one: the node asked to deploy it.
    node: str | None = None


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
    #: Bytes its dir and proposed repo take on disk (measured every few minutes; None
    #: until then).
    disk_bytes: int | None = None
    #: Paused since (None: not paused): no messages are handed to it, so it runs no turns.
    paused_at: float | None = None
    paused_reason: str | None = None
    #: Who paused it: ``operator``, or what else did (a budget).
    paused_by: str | None = None
    #: Spend ledger: cost since midnight UTC and ever, and the last turn's context size.
    cost_today_usd: float = 0.0
    cost_total_usd: float = 0.0
    ctx_tokens: int | None = None
    #: Ids of the active schedules that deliver to this agent.
    schedules: list[int] = attrs.Factory(list)
    #: Its applied agent.toml grants the ``lead`` role (lifecycle verbs below it).
    lead: bool = False
    #: Reminders set and not yet delivered (see ``remind``).
    pending_reminders: int = 0
    #: The node that serves it (its socket, container, state dir, UI); empty from a daemon
    #: that predates nodes.
    node: str = ""
    #: Its node's status: while not ``up`` the agent is unreachable (its messages wait).
    node_status: NodeStatus = NodeStatus.UP


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
    #: Reminders not yet delivered: the caller's own (every agent's for the manager).
    reminders: list[ReminderInfo] = attrs.Factory(list)
    #: Active schedules the caller owns (every active one for the manager).
    schedules: list[ScheduleInfo] = attrs.Factory(list)
    #: Every loose end above, one uniform row each (kind, id, owner, age), oldest first.
    items: list[LooseEnd] = attrs.Factory(list)


@attrs.frozen
class CancelLooseEnd(Request):
    CMD = "cancel_loose_end"
    kind: LooseEndKind
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
    #: Paused since (None: not paused), why and by whom; see ``AgentInfo``.
    paused_at: float | None = None
    paused_reason: str | None = None
    paused_by: str | None = None
    #: Ids of the active schedules that deliver to this agent.
    schedules: list[int] = attrs.Factory(list)
    #: Reminders of the agent set and not yet delivered.
    pending_reminders: int = 0


# ---------------------------------------------------------------- manager socket


@attrs.frozen
class RequestSpawn(Request):
    CMD = "request_spawn"
    name: str
    description: str | None = None
    #: The node it goes to once approved (default: the one up with the fewest agents).
    node: str | None = None


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
    #: Bytes the state dir takes on disk (measured every few minutes; None until then).
    state_dir_bytes: int | None = None
    #: This daemon's node name.
    node: str = ""
    #: Whether this node runs the hive's singleton duties (question deadlines, reminders,
    #: schedules, the messages' retention): one node of those sharing a PostgreSQL store.
    #: None on a store no other node shares (sqlite: the daemon runs them all).
    holds_duties: bool | None = None


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
    #: The node it goes to once approved (default: the one up with the fewest agents).
    node: str | None = None


@attrs.frozen
class Spawn(Request):
    CMD = "spawn"
    name: str
    #: Overrides the daemon's backend for this agent (``nspawn``, ``process``, ``external``).
    backend: BackendChoice | None = None
    #: The node it goes to (default: this one alone, else the one up with the fewest agents).
    node: str | None = None


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
    #: Acknowledged messages deleted from broker.sqlite.
    deleted: int
    #: Rows deleted from the agents' events dbs.
    events_deleted: int = 0
    #: Bytes the files gave back (broker.sqlite's at its next checkpoint).
    freed_bytes: int = 0


# ---------------------------------------------------------------- pause / resume, watch


@attrs.frozen
class Pause(Request):
    """Pause agents: no messages are handed to them (so no turns) until resumed."""

    CMD = "pause"
    names: list[str] = attrs.field(metadata=wire(Bounds(max_items=MAX_NAMES)))
    reason: str = attrs.field(default="", metadata=wire(CLEAN_TEXT))


@attrs.frozen
class Resume(Request):
    CMD = "resume"
    names: list[str] = attrs.field(metadata=wire(Bounds(max_items=MAX_NAMES)))


@attrs.frozen
class Watch(Request):
    """Turn this host connection into a feed: after the reply, one JSON line per change."""

    CMD = "watch"


@attrs.frozen
class WatchReply(Reply):
    #: The ``seq`` of the newest event before the feed starts; its lines follow from there.
    seq: int


# ---------------------------------------------------------------- spend ledger: turn reports, stats

#: Tokens of one turn (one claude run): far beyond any real turn, small enough for sqlite.
_TURN_TOKENS: Final = Bounds(minimum=0, maximum=10**12)


@attrs.frozen
class ToolCount:
    name: str
    count: int = attrs.field(metadata=wire(Bounds(minimum=0, maximum=10**9)))


@attrs.frozen
class OutcomeCount:
    outcome: TurnOutcome
    count: int


@attrs.frozen
class TurnReport(Request):
    """What one claude run of the caller cost (from claude's ``result`` event); append-only.

    ``report_id`` is the harness's name for the report: the same report sent again after a
    reconnect is recorded once.
    """

    CMD = "turn_report"
    report_id: str = attrs.field(metadata=wire(CLEAN_TEXT))
    outcome: TurnOutcome
    model: str = attrs.field(metadata=wire(CLEAN_TEXT))
    input_tokens: int = attrs.field(metadata=wire(_TURN_TOKENS))
    output_tokens: int = attrs.field(metadata=wire(_TURN_TOKENS))
    cache_read_tokens: int = attrs.field(metadata=wire(_TURN_TOKENS))
    cache_creation_tokens: int = attrs.field(metadata=wire(_TURN_TOKENS))
    cost_usd: float = attrs.field(metadata=wire(Bounds(minimum=0, maximum=10**6)))
    duration_seconds: float = attrs.field(metadata=wire(Bounds(minimum=0, maximum=7 * 86400)))
    tool_calls: int = attrs.field(metadata=wire(Bounds(minimum=0, maximum=10**6)))
    tools: list[ToolCount] = attrs.field(
        factory=list, metadata=wire(Bounds(max_items=MAX_REPORT_TOOLS))
    )
    #: Prompt size of the turn's last inference (input + cache tokens).
    ctx_tokens: int | None = attrs.field(default=None, metadata=wire(_TURN_TOKENS))
    #: The turn changed a file in the agent's state dir.
    files_changed: bool = False
    message_id: int | None = attrs.field(default=None, metadata=wire(ID))


@attrs.frozen
class TurnReportReply(Reply):
    #: False: a report with this ``report_id`` was recorded before (nothing changed).
    recorded: bool


@attrs.frozen
class SpendTotals:
    cost_usd: float
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    #: All four kinds of tokens together (what token budgets count).
    tokens: int
    turns: int
    outcomes: list[OutcomeCount]


@attrs.frozen
class WindowStats:
    #: ``1h``, ``24h``, ``7d`` or ``30d``.
    window: str
    seconds: int
    turns: int
    turns_per_hour: float
    duration_p50: float | None
    duration_p95: float | None
    ctx_avg: float | None
    ctx_max: int | None
    cost_usd: float
    tokens: int
    top_tools: list[ToolCount]
    outcomes: list[OutcomeCount]


@attrs.frozen
class AgentStats:
    #: The agent's name, or ``hive`` for every agent together.
    name: str
    today: SpendTotals
    total: SpendTotals
    windows: list[WindowStats]
    #: Context size of the last turn (None before the first).
    ctx_tokens: int | None
    #: Consecutive turns without progress (no message sent, nothing asked, no file changed).
    idle_streak: int


@attrs.frozen
class Stats(Request):
    """The operator's view of the ledger: one agent (``name``) or every agent and the hive."""

    CMD = "stats"
    name: str | None = None


@attrs.frozen
class StatsReply(Reply):
    agents: list[AgentStats]
    hive: AgentStats
    #: When "today" started (UTC midnight), seconds since the epoch.
    day_start: float
    generated_at: float


@attrs.frozen
class GetStats(Request):
    """The caller's own ledger figures (the agent UI's stats page)."""

    CMD = "get_stats"


@attrs.frozen
class AgentStatsReply(Reply):
    stats: AgentStats
    day_start: float
    generated_at: float


# ---------------------------------------------------------------- reminders and loose ends
# (feature: reminders; SPEC §16)


@attrs.frozen
class ReminderInfo:
    id: int
    #: Whose own inbox it lands in (who set it).
    agent: str
    body: str
    #: The in-container path its body is (or will be) written to; None: delivered inline.
    file_path: str | None
    due_at: float
    created_at: float
    #: When it was delivered; None while pending.
    sent_at: float | None
    #: Failed deliveries so far, and the last one's reason.
    attempt_count: int
    last_error: str | None
    #: Every delivery attempt failed: it waits for the operator's retry or cancel.
    failed: bool


@attrs.frozen
class LooseEnd:
    """One open thing around an agent, whatever its kind (``get_loose_ends``)."""

    kind: LooseEndKind
    id: int
    #: Who may cancel it (the manager may cancel any).
    owner: str
    #: The other party (a question's target, ``operator``), if any.
    target: str | None
    summary: str
    created_at: float
    age_seconds: float
    #: When it falls due (a question's deadline, a reminder's time), if ever.
    due_at: float | None


@attrs.frozen
class Remind(Request):
    """A message into one's own inbox later: exactly one of ``in_seconds`` and ``at``."""

    CMD = "remind"
    body: str = attrs.field(metadata=wire(CLEAN_TEXT))
    in_seconds: float | None = attrs.field(
        default=None, metadata=wire(Bounds(minimum=0, maximum=MAX_REMINDER_DELAY_SECONDS))
    )
    #: Unix seconds.
    at: float | None = attrs.field(default=None, metadata=wire(Bounds(minimum=0, maximum=2**40)))
    #: An in-container path under ``/state`` to write the body to; the message carries it.
    file_path: str | None = attrs.field(default=None, metadata=wire(CLEAN_TEXT))


@attrs.frozen
class ReminderReply(Reply):
    reminder: ReminderInfo


@attrs.frozen
class Reminders(Request):
    """Reminders not yet delivered (``include_sent``: delivered ones too)."""

    CMD = "reminders"
    include_sent: bool = False


@attrs.frozen
class RemindersReply(Reply):
    reminders: list[ReminderInfo]


@attrs.frozen
class RetryReminder(Request):
    """Deliver a reminder whose attempts failed again now (its attempt count starts over)."""

    CMD = "retry_reminder"
    id: int = attrs.field(metadata=wire(ID))


@attrs.frozen
class CancelReminder(Request):
    CMD = "cancel_reminder"
    id: int = attrs.field(metadata=wire(ID))


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
    TurnReport,
    GetStats,
    Remind,
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
    Pause,
    Resume,
    Watch,
    Stats,
    Reminders,
    RetryReminder,
    CancelReminder,
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
    Pause: AgentsReply,
    Resume: AgentsReply,
    Watch: WatchReply,
    TurnReport: TurnReportReply,
    GetStats: AgentStatsReply,
    Stats: StatsReply,
    Remind: ReminderReply,
    Reminders: RemindersReply,
    RetryReminder: ReminderReply,
    CancelReminder: ReminderReply,
}


# ---------------------------------------------------------------- scheduled prompts
# (agent + manager sockets: request_schedule and the schedule verbs; host socket: the verbs
# and add_schedule, which needs no approval)


@attrs.frozen
class ScheduleInfo:
    id: int
    #: Who it belongs to: the agent whose request was approved, or ``operator``.
    owner: str
    #: The agents it delivers to (a target cancelled alone is gone from the list).
    targets: list[str]
    body: str
    description: str | None
    #: Recurring every this many seconds (None: by ``cron``, or one-shot when both are None).
    interval_seconds: int | None
    #: A five-field cron expression, evaluated in ``timezone``.
    cron: str | None
    timezone: str
    #: When it fires next (None once it has ended).
    next_at: float | None
    created_at: float
    #: ``operator`` or ``approval:<id>``.
    source: str
    #: When it ended (cancelled, no targets left, a one-shot fired); None while active.
    ended_at: float | None
    last_fired_at: float | None
    #: How many times it fired.
    fires: int
    #: Fires skipped in all (the hive was down across several due times: one late fire).
    skipped: int
    #: Fires skipped just before its last fire.
    last_skipped: int


@attrs.frozen
class RequestSchedule(Request):
    """Ask the operator for a schedule (an approval of kind ``schedule``)."""

    CMD = "request_schedule"
    targets: list[str] = attrs.field(metadata=wire(Bounds(max_items=MAX_SCHEDULE_TARGETS)))
    body: str = attrs.field(metadata=wire(CLEAN_TEXT))
    #: Wall-clock seconds of the first fire (cron: the first cron time at or after it).
    first_at: float = attrs.field(metadata=wire(Bounds(minimum=0, maximum=MAX_SCHEDULE_AT)))
    interval_seconds: int | None = attrs.field(
        default=None,
        metadata=wire(
            Bounds(minimum=MIN_SCHEDULE_INTERVAL_SECONDS, maximum=MAX_SCHEDULE_INTERVAL_SECONDS)
        ),
    )
    cron: str | None = attrs.field(default=None, metadata=wire(CLEAN_TEXT))
    description: str | None = None


@attrs.frozen
class AddSchedule(Request):
    """The operator creates a schedule directly (no approval)."""

    CMD = "add_schedule"
    targets: list[str] = attrs.field(metadata=wire(Bounds(max_items=MAX_SCHEDULE_TARGETS)))
    body: str = attrs.field(metadata=wire(CLEAN_TEXT))
    first_at: float = attrs.field(metadata=wire(Bounds(minimum=0, maximum=MAX_SCHEDULE_AT)))
    interval_seconds: int | None = attrs.field(
        default=None,
        metadata=wire(
            Bounds(minimum=MIN_SCHEDULE_INTERVAL_SECONDS, maximum=MAX_SCHEDULE_INTERVAL_SECONDS)
        ),
    )
    cron: str | None = attrs.field(default=None, metadata=wire(CLEAN_TEXT))
    description: str | None = None
    #: An IANA zone for ``cron`` (default: the daemon's ``--timezone``).
    timezone: str | None = None


@attrs.frozen
class EditSchedule(Request):
    """Change an active schedule; a field left out (null) stays as it is."""

    CMD = "edit_schedule"
    id: int = attrs.field(metadata=wire(ID))
    body: str | None = attrs.field(default=None, metadata=wire(CLEAN_TEXT))
    description: str | None = None
    interval_seconds: int | None = attrs.field(
        default=None,
        metadata=wire(
            Bounds(minimum=MIN_SCHEDULE_INTERVAL_SECONDS, maximum=MAX_SCHEDULE_INTERVAL_SECONDS)
        ),
    )
    cron: str | None = attrs.field(default=None, metadata=wire(CLEAN_TEXT))
    #: Make it fire once more only (drops interval and cron).
    once: bool = False
    next_at: float | None = attrs.field(
        default=None, metadata=wire(Bounds(minimum=0, maximum=MAX_SCHEDULE_AT))
    )
    targets_add: list[str] = attrs.field(
        factory=list, metadata=wire(Bounds(max_items=MAX_SCHEDULE_TARGETS))
    )
    targets_remove: list[str] = attrs.field(
        factory=list, metadata=wire(Bounds(max_items=MAX_SCHEDULE_TARGETS))
    )


@attrs.frozen
class CancelSchedule(Request):
    """End a schedule, or (``targets``) stop delivering to some of its targets only."""

    CMD = "cancel_schedule"
    id: int = attrs.field(metadata=wire(ID))
    targets: list[str] | None = attrs.field(
        default=None, metadata=wire(Bounds(max_items=MAX_SCHEDULE_TARGETS))
    )


@attrs.frozen
class FireScheduleNow(Request):
    CMD = "fire_schedule_now"
    id: int = attrs.field(metadata=wire(ID))


@attrs.frozen
class ListSchedules(Request):
    CMD = "list_schedules"
    include_ended: bool = False


@attrs.frozen
class ScheduleReply(Reply):
    schedule: ScheduleInfo


@attrs.frozen
class SchedulesReply(Reply):
    schedules: list[ScheduleInfo]


SCHEDULE_REQUESTS: tuple[type[Request], ...] = (
    EditSchedule,
    CancelSchedule,
    FireScheduleNow,
    ListSchedules,
)
AGENT_REQUESTS += (RequestSchedule, *SCHEDULE_REQUESTS)
MANAGER_REQUESTS += (RequestSchedule, *SCHEDULE_REQUESTS)
HOST_REQUESTS += (AddSchedule, *SCHEDULE_REQUESTS)
REPLIES.update(
    {
        RequestSchedule: ApprovalReply,
        AddSchedule: ScheduleReply,
        EditSchedule: ScheduleReply,
        CancelSchedule: ScheduleReply,
        FireScheduleNow: ScheduleReply,
        ListSchedules: SchedulesReply,
    }
)


# ---------------------------------------------------------------- hierarchy (set_parent, leads)


@attrs.frozen
class SetParent(Request):
    """Give ``child`` a new parent; ``parent`` null puts it back under ``manager``."""

    CMD = "set_parent"
    child: str
    parent: str | None = None


#: A lead (``lead = true`` in its agent.toml) runs these on its own agent socket for the
#: agents below it; a plain agent's request is refused by the daemon, not by the codec.
LEAD_REQUESTS: tuple[type[Request], ...] = (RequestSpawn, Kill, Start, Restart, Update, GetLogs)
AGENT_REQUESTS = (*AGENT_REQUESTS, *LEAD_REQUESTS)
HOST_REQUESTS = (*HOST_REQUESTS, SetParent)
REPLIES[SetParent] = Empty


# ---- compaction: the operator has an agent's harness compact its claude session
@attrs.frozen
class Compact(Request):
    CMD = "compact"
    name: str


HOST_REQUESTS = (*HOST_REQUESTS, Compact)
REPLIES[Compact] = Empty


# ---- nodes: the daemons sharing one store, as the operator sees them (``hyperhive nodes``)
@attrs.frozen
class NodeView:
    name: str
    host: str
    status: NodeStatus
    heartbeat_at: float
    #: Seconds since its last heartbeat, by the clock of the node answering.
    heartbeat_age_seconds: float
    #: Its live agents.
    agents: int
    #: Its dashboard's address (without the login token), None when it serves none.
    dashboard_url: str | None
    #: The node answering.
    this: bool


@attrs.frozen
class ListNodes(Request):
    CMD = "nodes"


@attrs.frozen
class NodesReply(Reply):
    #: The node answering.
    node: str
    nodes: list[NodeView]


HOST_REQUESTS = (*HOST_REQUESTS, ListNodes)
REPLIES[ListNodes] = NodesReply
