"""Every closed set of names the daemon uses and sends: states, verbs, kinds, roles.

Defined once, below every other module (it imports nothing of hyperhive), as ``StrEnum``:
a member *is* its wire string, so the JSON on the sockets, in sqlite and on the dashboard's
event stream is the same text it always was. The wire classes in ``hyperhive.protocol``
use these types, the strict codec refuses any other value, and the JSON Schema lists the
values (``hyperhive schema``).
"""

from __future__ import annotations

from enum import StrEnum


class AgentState(StrEnum):
    #: Socket bound; nothing started by the daemon (external backend).
    REGISTERED = "registered"
    RUNNING = "running"
    STOPPED = "stopped"
    #: Exited unexpectedly; a restart is scheduled by the restart policy.
    CRASHED = "crashed"
    #: Too many crashes: no automatic restart until the operator starts it.
    CRASH_LOOP = "crash_loop"
    #: Container gone, state directories kept: a tombstone that can be revived.
    DESTROYED = "destroyed"


class Transient(StrEnum):
    """The lifecycle operation running on an agent right now (``AgentInfo.transient``)."""

    #: An approved (or operator) spawn is creating the agent: directories, socket, config.
    SPAWNING = "spawning"
    STARTING = "starting"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    REBUILDING = "rebuilding"
    DESTROYING = "destroying"


class NodeStatus(StrEnum):
    """A node (a daemon sharing the store) as its heartbeat shows it (``hyperhive.nodes``)."""

    UP = "up"
    #: Silent for longer than ``NODE_DOWN_SECONDS``: crashed, host lost, network cut.
    DOWN = "down"
    #: Stopped cleanly.
    STOPPED = "stopped"


class LifecycleVerb(StrEnum):
    """A lifecycle command carried out by an agent's runner."""

    START = "start"
    KILL = "kill"
    RESTART = "restart"
    #: The manager's word for :attr:`REBUILD` (apply the agent's new config).
    UPDATE = "update"
    REBUILD = "rebuild"
    DESTROY = "destroy"


class BackendName(StrEnum):
    """What runs an agent."""

    NSPAWN = "nspawn"
    PROCESS = "process"
    #: The daemon starts nothing: the harness is run by someone else.
    EXTERNAL = "external"


class BackendChoice(StrEnum):
    """A backend as configured: a :class:`BackendName`, or ``auto``."""

    #: nspawn when it can run (binary present, root), else process.
    AUTO = "auto"
    NSPAWN = "nspawn"
    PROCESS = "process"
    EXTERNAL = "external"


class AgentRole(StrEnum):
    MANAGER = "manager"
    AGENT = "agent"


class PeerRole(StrEnum):
    """Who a socket's peer is, as ``hello`` tells it (fixed by the socket)."""

    OPERATOR = "operator"
    MANAGER = "manager"
    AGENT = "agent"
    #: An agent whose applied agent.toml says ``lead = true`` (lifecycle verbs below it).
    LEAD = "lead"


class ConnectionRole(StrEnum):
    """What a client says it is in ``hello``."""

    #: The agent's harness: its hello counts as the agent being connected.
    HARNESS = "harness"
    MCP = "mcp"
    CLI = "cli"


class ApprovalKind(StrEnum):
    SPAWN = "spawn"
    APPLY_COMMIT = "apply_commit"
    #: A scheduled prompt an agent asked for (``request_schedule``).
    SCHEDULE = "schedule"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    FAILED = "failed"


class Decider(StrEnum):
    """Who resolved an approval."""

    #: Approved or denied by the operator.
    OPERATOR = "operator"
    #: Failed before (or instead of) a decision.
    SYSTEM = "system"


class EventKind(StrEnum):
    """Every kind on the daemon's event stream (the dashboard's ``/api/stream``)."""

    SENT = "sent"
    DELIVERED = "delivered"
    VACUUMED = "vacuumed"
    #: Sent by the stream itself: events were missed, take a fresh snapshot.
    RESYNC = "resync"
    AGENT_REGISTERED = "agent_registered"
    AGENT_CHANGED = "agent_changed"
    AGENT_DESTROYED = "agent_destroyed"
    AGENT_PURGED = "agent_purged"
    STATUS_CHANGED = "status_changed"
    MODEL_CHANGED = "model_changed"
    HARNESS_CONNECTED = "harness_connected"
    HARNESS_DISCONNECTED = "harness_disconnected"
    CONTAINER_STARTED = "container_started"
    CONTAINER_CRASH = "container_crash"
    QUESTION_ADDED = "question_added"
    QUESTION_RESOLVED = "question_resolved"
    APPROVAL_ADDED = "approval_added"
    APPROVAL_RESOLVED = "approval_resolved"
    PROBLEMS_CHANGED = "problems_changed"
    SPACE_CHANGED = "space_changed"
    DISK_USAGE_CHANGED = "disk_usage_changed"
    AGENT_PAUSED = "agent_paused"
    AGENT_RESUMED = "agent_resumed"
    #: A turn was recorded in the spend ledger (an agent's and the hive's spend changed).
    SPEND_CHANGED = "spend_changed"
    #: A scheduled prompt was created, changed, fired or ended.
    SCHEDULE_CHANGED = "schedule_changed"
    #: An agent got a new parent (``set_parent``, or its parent was destroyed).
    PARENT_CHANGED = "parent_changed"
    #: A reminder was set, delivered, failed, retried or cancelled (``removed``: it is gone).
    REMINDER_CHANGED = "reminder_changed"
    #: A node of the hive came up, went down or stopped (its agents' reachability changed).
    NODE_CHANGED = "node_changed"


class SystemKind(StrEnum):
    """The first word of a message from ``system``: what happened (its fields follow)."""

    QUESTION_ASKED = "question_asked"
    QUESTION_ANSWERED = "question_answered"
    APPROVAL_RESOLVED = "approval_resolved"
    CONTAINER_CRASH = "container_crash"
    AGENT_ERROR = "agent_error"
    AGENT_PAUSED = "agent_paused"


class TurnOutcome(StrEnum):
    """How one claude run of an agent ended, as its harness reports it (the spend ledger)."""

    OK = "ok"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"
    NEEDS_LOGIN = "needs_login"
    NO_SESSION = "no_session"
    #: The prompt did not fit the model's context window ("prompt is too long").
    TOO_LONG = "too_long"
    FAILED = "failed"


class LooseEndKind(StrEnum):
    """What ``cancel_loose_end`` and ``get_loose_ends`` deal with."""

    QUESTION = "question"
    REMINDER = "reminder"
    APPROVAL = "approval"
    #: A scheduled prompt the caller owns (cancelling it ends it).
    SCHEDULE = "schedule"
