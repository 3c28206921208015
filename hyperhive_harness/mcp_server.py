"""The agent's hyperhive MCP tools (:func:`build_server`) and the stdio server.

The harness serves these tools itself to the claude of each turn (:mod:`mcp_host`, over
MCP's HTTP transport, :mod:`mcp_http`); ``hyperhive-harness mcp`` (or ``python -m
hyperhive_harness.mcp_server``) serves the same tools on stdin/stdout under trio, for
debugging and other MCP clients. It says hello to the agent socket as ``mcp``; the reply
tells whether this is the manager (manager tool set) or an agent. Every tool forwards one
request over the socket and returns a short readable text; a refusal from the daemon becomes
a ``ToolError`` carrying the daemon's reason, which the model reads.

Nothing is printed on stdout except the MCP wire; logs go to stderr.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal, TypeVar

import trio
from pydantic import Field

from hyperhive import contract
from hyperhive.client import Client
from hyperhive.config import (
    MAX_QUESTION_TTL_SECONDS,
    MAX_RECV_BATCH,
    MAX_RECV_WAIT_SECONDS,
    MAX_REMINDER_DELAY_SECONDS,
    MAX_STATUS_TEXT,
    PROTOCOL_VERSION,
)
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.kinds import ConnectionRole, LooseEndKind
from hyperhive.protocol import (
    AgentMetaReply,
    AgentsReply,
    Answer,
    ApprovalInfo,
    ApprovalReply,
    Ask,
    CancelLooseEnd,
    CancelSchedule,
    EditSchedule,
    Empty,
    FireScheduleNow,
    GetAgentMeta,
    GetLogs,
    GetLooseEnds,
    Hello,
    HelloReply,
    IdReply,
    Kill,
    ListContainers,
    ListSchedules,
    LogsReply,
    LooseEndsReply,
    Message,
    QuestionInfo,
    Recv,
    RecvReply,
    Remind,
    ReminderInfo,
    ReminderReply,
    Reply,
    Request,
    RequestApplyCommit,
    RequestSchedule,
    RequestSpawn,
    Restart,
    ScheduleInfo,
    ScheduleReply,
    SchedulesReply,
    Send,
    SendReply,
    SetStatus,
    Start,
    Update,
)
from hyperhive.runtime import Backoff
from hyperhive_harness.prompt import AGENT_TOOLS, MANAGER_TOOLS, SERVER_NAME
from hyperhive_harness.toolserver import ToolError, ToolServer

__all__ = [
    "AGENT_TOOLS",
    "DEFAULT_SOCKET",
    "MANAGER_TOOLS",
    "ConnectionPool",
    "ToolError",
    "ToolServer",
    "build_server",
    "main",
    "serve",
]

log = logging.getLogger("hyperhive.mcp")

#: The agent socket as bind-mounted into every container.
DEFAULT_SOCKET = contract.SOCKET
SOCKET_ENV = contract.SOCKET_ENV

#: How long start-up keeps trying to reach the daemon before serving the agent tool set.
STARTUP_CONNECT_SECONDS = 5.0
#: Between those attempts: 0.05 s doubling up to 1 s.
STARTUP_BACKOFF = Backoff(first=0.05, limit=1.0)

R = TypeVar("R", bound=Reply)


class ConnectionPool:
    """Connections to the agent socket, opened on demand and reused.

    Calls may overlap (a long ``recv`` while the model sends), so each call takes an idle
    connection or opens a new one. A reused connection that turns out dead (the daemon
    restarted) is replaced once; a fresh one that fails means the daemon is unreachable.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[Client] = []

    async def open(self) -> tuple[Client, HelloReply]:
        try:
            client = await Client.connect(self.path)
        except OSError as exc:
            raise ToolError(self._unreachable(exc)) from None
        try:
            hello = await client.call(Hello(role=ConnectionRole.MCP, protocol=PROTOCOL_VERSION))
        except BaseException:
            with trio.CancelScope(shield=True):
                await client.aclose()
            raise
        assert isinstance(hello, HelloReply)
        return client, hello

    async def hello(self) -> HelloReply:
        """Open a connection and keep it for reuse; return the daemon's hello reply."""
        client, reply = await self.open()
        self._release(client)
        return reply

    async def call(self, request: Request, reply_type: type[R]) -> R:
        """Send one request; the typed reply, or :class:`ToolError` with a readable reason."""
        while True:
            reused = bool(self._idle)
            client = self._idle.pop() if reused else await self._open_for_call()
            keep = False
            try:
                reply = await client.call(request)
                keep = True
            except ConnectionLost as exc:
                lost = exc
            except ClientError as exc:
                keep = True  # a refusal: the connection is still good
                raise ToolError(str(exc)) from None
            finally:
                if keep:
                    self._release(client)
                else:
                    with trio.CancelScope(shield=True):
                        await client.aclose()
            if keep:
                if not isinstance(reply, reply_type):  # pragma: no cover - a daemon bug
                    raise ToolError(f"unexpected reply from the daemon: {reply!r}")
                return reply
            # The connection dropped. A reused one may just be stale (the daemon restarted):
            # forget the other idle ones too and try once more on a fresh connection.
            with trio.CancelScope(shield=True):
                await self.aclose()
            if not reused:
                raise ToolError(self._unreachable(lost))
            log.info("connection to %s dropped; reconnecting once", self.path)

    async def _open_for_call(self) -> Client:
        try:
            client, _ = await self.open()
        except ClientError as exc:  # lost, or the hello refused
            raise ToolError(self._unreachable(exc)) from None
        return client

    def _release(self, client: Client) -> None:
        self._idle.append(client)

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            await self._idle.pop().aclose()

    def _unreachable(self, exc: BaseException) -> str:
        return f"cannot reach the hyperhive daemon at {self.path}: {exc}"


async def connect_at_startup(link: ConnectionPool, budget: float) -> HelloReply | None:
    """Say hello, retrying briefly while the daemon (re)starts; ``None`` if it never answers."""
    retry = STARTUP_BACKOFF.start()
    with trio.move_on_after(budget):
        while True:
            try:
                return await link.hello()
            except ToolError as exc:
                log.warning("%s", exc)
            except ConnectionLost as exc:
                log.warning("the daemon hung up during hello: %s", exc)
            except ClientError as exc:  # hello refused, e.g. a protocol mismatch
                log.error("hello refused by the daemon: %s", exc)
                return None
            await trio.sleep(retry.next())
    return None


# ---------------------------------------------------------------- formatting


def _ago(ts: float, now: float) -> str:
    return _span(now - ts) + " ago"


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def format_message(msg: Message) -> str:
    tags = []
    if msg.in_reply_to is not None:
        tags.append(f"reply to #{msg.in_reply_to}")
    if msg.to == "*":
        tags.append("broadcast")
    if msg.redelivered:
        tags.append("redelivered")
    suffix = f" ({', '.join(tags)})" if tags else ""
    return f"#{msg.id} from {msg.from_}{suffix}: {msg.body}"


def format_recv(reply: RecvReply) -> str:
    if not reply.messages:
        return "(empty)"
    return "\n".join(format_message(m) for m in reply.messages)


def format_send(reply: SendReply, to: str) -> str:
    if to == "*" or to.startswith("*:"):
        ids = ", ".join(f"#{i}" for i in reply.ids)
        return f"broadcast to {len(reply.ids)} agent(s): {ids}"
    return f"sent #{reply.id} to {to}"


def format_question(q: QuestionInfo, now: float) -> str:
    line = f"question #{q.id} from {q.asker} to {q.target or 'operator'}: {q.question!r}"
    if q.options:
        kind = "choose any of" if q.multi else "choose one of"
        line += f" ({kind}: {', '.join(q.options)})"
    line += f", asked {_ago(q.asked_at, now)}"
    if q.deadline_at is not None:
        line += f", expires in {_span(q.deadline_at - now)}"
    return line


def format_approval(a: ApprovalInfo, now: float) -> str:
    what = f"{a.kind} {a.agent}"
    if a.commit_ref:
        what += f" @ {a.commit_ref}"
    line = f"approval #{a.id}: {what}, {a.status}, requested {_ago(a.requested_at, now)}"
    if a.description:
        line += f": {a.description}"
    if a.note:
        line += f" (note: {a.note})"
    return line


def format_reminder(r: ReminderInfo, now: float) -> str:
    text = r.body if len(r.body) <= 80 else r.body[:79] + "…"
    line = f"reminder #{r.id} for {r.agent}: {text!r}, "
    line += f"due in {_span(r.due_at - now)}" if r.due_at > now else "due now"
    line += f", set {_ago(r.created_at, now)}"
    if r.file_path:
        line += f", body goes to {r.file_path}"
    if r.failed:
        line += f" (delivery failed {r.attempt_count} times: {r.last_error}; the operator retries)"
    return line


def format_loose_ends(reply: LooseEndsReply) -> str:
    now = time.time()
    lines = [format_question(q, now) for q in reply.questions]
    lines += [format_reminder(r, now) for r in reply.reminders]
    lines += [format_approval(a, now) for a in reply.approvals]
    lines += [format_schedule(s, now) for s in reply.schedules]
    return "\n".join(lines) if lines else "(no loose ends)"


def format_meta(meta: AgentMetaReply) -> str:
    lines = [
        f"name: {meta.name}",
        f"role: {meta.role}",
        f"state: {meta.state}",
        f"model: {meta.model}",
        f"status: {meta.status_text or '(none)'}",
    ]
    if meta.parent:
        lines.append(f"parent: {meta.parent}")
    if meta.paused_at is not None:
        why = f": {meta.paused_reason}" if meta.paused_reason else ""
        lines.append(f"paused: by {meta.paused_by}{why} (it is handed no messages until resumed)")
    if meta.schedules:
        lines.append(f"schedules delivering to it: {', '.join(f'#{i}' for i in meta.schedules)}")
    return "\n".join(lines)


def format_agents(reply: AgentsReply) -> str:
    if not reply.agents:
        return "(no agents)"
    lines = []
    for a in reply.agents:
        harness = "connected" if a.harness_connected else "not connected"
        line = (
            f"{a.name}: {a.role}, {a.state}, model {a.model}, {a.unread} unread, harness {harness}"
        )
        if a.status_text:
            line += f", status {a.status_text!r}"
        if a.paused_at is not None:
            line += f", PAUSED by {a.paused_by}" + (
                f" ({a.paused_reason})" if a.paused_reason else ""
            )
        lines.append(line)
    return "\n".join(lines)


def format_schedule(s: ScheduleInfo, now: float) -> str:
    if s.interval_seconds is not None:
        cadence = f"every {_span(s.interval_seconds)}"
    elif s.cron is not None:
        cadence = f"cron '{s.cron}' ({s.timezone})"
    else:
        cadence = "once"
    targets = ", ".join(s.targets) or "-"
    line = f"schedule #{s.id} ({s.owner}): {cadence} to {targets}"
    if s.ended_at is not None:
        line += f", ended {_ago(s.ended_at, now)}"
    elif s.next_at is not None:
        line += f", next in {_span(s.next_at - now)}"
    line += f", fired {s.fires}x"
    if s.skipped:
        line += f", {s.skipped} skipped while the hive was down"
    if s.description:
        line += f" — {s.description}"
    body = s.body if len(s.body) <= 200 else s.body[:200] + "…"
    return f"{line}\n  body: {body}"


def format_schedules(reply: SchedulesReply) -> str:
    now = time.time()
    lines = [format_schedule(s, now) for s in reply.schedules]
    return "\n".join(lines) if lines else "(no schedules)"


def format_approval_request(reply: ApprovalReply) -> str:
    a = reply.approval
    return (
        f"approval #{a.id} ({a.kind} {a.agent}) is {a.status}. The operator decides; the outcome "
        f"arrives later as a message from system starting with approval_resolved."
    )


# ---------------------------------------------------------------- the tools


def reflow(doc: str | None) -> str:
    """A docstring as a tool description: paragraphs kept, hard line breaks dropped."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


INSTRUCTIONS = """\
You are {who} in a hyperhive swarm: several Claude Code agents on one host \
that talk through these tools. Messages to you start new turns of yours automatically. Keep \
messages short; put big content in a file under /state and send its path. Never sleep or poll: \
recv with a long wait_seconds waits for you, and ask returns at once (the answer comes later as \
a message)."""


def build_server(link: ConnectionPool, *, role: str, name: str | None) -> ToolServer:
    """The MCP server with the agent tools, plus the manager tools when ``role`` is manager,
    or the lead tools (spawn requests, lifecycle verbs and logs for the agents below it)
    when ``role`` is lead."""
    who = {"manager": "the manager", "lead": "a lead"}.get(role, "an agent")
    if name and name != "manager":
        who = f"{name}, {who}"
    server = ToolServer(SERVER_NAME, instructions=INSTRUCTIONS.format(who=who))

    def tool(fn: Callable[..., Awaitable[str]], name: str | None = None) -> None:
        server.add_tool(fn, name=name, description=reflow(fn.__doc__), structured_output=False)

    async def call(request: Request, reply_type: type[R]) -> R:
        return await link.call(request, reply_type)

    # -------------------------------------------------------- every agent

    async def send(
        to: Annotated[
            str,
            Field(
                description="An agent name, 'manager', 'operator', '*' (all agents) or "
                "'*:<name>' (that agent and every agent below it)."
            ),
        ],
        body: Annotated[str, Field(description="The message: short, plain text.")],
        in_reply_to: Annotated[
            int | None, Field(description="Id of the message this answers, if any.")
        ] = None,
    ) -> str:
        """Send a message to another agent, the manager, the operator (the human running the
        swarm) or everyone ('*' broadcasts to all agents). It is delivered durably and wakes
        the recipient. Keep it short: for anything big (code, logs, reports, diffs) write a
        file under /state and send its path instead. Returns the new message id."""
        reply = await call(Send(to=to, body=body, in_reply_to=in_reply_to), SendReply)
        return format_send(reply, to)

    async def recv(
        wait_seconds: Annotated[
            float,
            Field(
                ge=0,
                le=MAX_RECV_WAIT_SECONDS,
                description=f"How long to wait when the inbox is empty (0 = just look, "
                f"up to {MAX_RECV_WAIT_SECONDS}).",
            ),
        ] = 0,
        max: Annotated[
            int, Field(ge=1, le=MAX_RECV_BATCH, description="Most messages to take at once.")
        ] = 10,
    ) -> str:
        """Take messages waiting in your inbox; they count as read at once. New messages
        also start new turns of yours by themselves, so use this when you wait for a reply
        within the current turn. To wait, pass a long wait_seconds (up to 180): it returns
        as soon as a message arrives. Never sleep or poll in a loop instead. Each message
        comes as '#id from <sender>: <body>'; '(empty)' when none arrived. Messages from
        'system' report events (question_answered, approval_resolved, ...)."""
        reply = await call(Recv(wait_seconds=wait_seconds, max=max, ack=True), RecvReply)
        return format_recv(reply)

    async def ask(
        question: Annotated[str, Field(description="The question, self-contained.")],
        options: Annotated[list[str] | None, Field(description="Choices to offer, if any.")] = None,
        multi: Annotated[bool, Field(description="Allow choosing several options.")] = False,
        ttl_seconds: Annotated[
            int | None,
            Field(
                ge=1,
                le=MAX_QUESTION_TTL_SECONDS,
                description="Give up after this many seconds (default: no deadline).",
            ),
        ] = None,
        to: Annotated[
            str | None, Field(description="'operator' (default) or a peer agent's name.")
        ] = None,
    ) -> str:
        """Ask the operator (default) or a peer agent a question. Never blocks: it returns the
        question id at once, and the answer arrives later as a message from 'system' whose
        body starts with 'question_answered' and carries the id. Don't wait for it: carry on
        with other work or end your turn; the answer wakes you. See your open questions with
        get_loose_ends; withdraw one with cancel_loose_end."""
        request = Ask(
            question=question, options=options or [], multi=multi, ttl_seconds=ttl_seconds, to=to
        )
        reply = await call(request, IdReply)
        target = to or "operator"
        return (
            f"question #{reply.id} sent to {target}; the answer will arrive as a "
            f"question_answered message"
        )

    async def answer(
        id: Annotated[int, Field(description="The question id.")],
        answer: Annotated[str, Field(description="Your answer (one of its options, if any).")],
    ) -> str:
        """Answer a question another agent asked you (it reached you as a message from
        'system' starting with 'question_asked'). Only the question's target may answer."""
        await call(Answer(id=id, answer=answer), Empty)
        return f"answered question #{id}"

    async def get_loose_ends() -> str:
        """List what is still open around you: questions you asked that are unanswered,
        questions waiting for your answer, your reminders not yet delivered, and (manager)
        approvals awaiting the operator. Each comes with its id and age."""
        return format_loose_ends(await call(GetLooseEnds(), LooseEndsReply))

    async def cancel_loose_end(
        kind: Annotated[
            Literal["question", "reminder", "schedule"],
            Field(description="What to cancel: 'question', 'reminder' or 'schedule'."),
        ],
        id: Annotated[int, Field(description="Its id.")],
    ) -> str:
        """Withdraw an open question you asked, cancel a reminder you set before it fires,
        or end a schedule you own (when it no longer matters)."""
        await call(CancelLooseEnd(kind=LooseEndKind(kind), id=id), Empty)
        return f"cancelled {kind} #{id}"

    async def set_status(
        text: Annotated[
            str,
            Field(description=f"A short status line (at most {MAX_STATUS_TEXT} characters)."),
        ],
    ) -> str:
        """Set the one-line status shown next to your name on the operator's dashboard,
        e.g. 'reviewing PR 12' or 'idle: waiting for bob'. Empty text clears it."""
        await call(SetStatus(text=text), Empty)
        return "status set" if text else "status cleared"

    async def get_agent_meta(
        name: Annotated[
            str | None, Field(description="An agent's name; omit for yourself.")
        ] = None,
    ) -> str:
        """Look up an agent (yourself by default): role, state, model, status line, parent."""
        return format_meta(await call(GetAgentMeta(name=name), AgentMetaReply))

    # -------------------------------------------------------- scheduling

    async def request_schedule(
        targets: Annotated[list[str], Field(description="The agents it delivers to.")],
        body: Annotated[str, Field(description="The message delivered at each fire.")],
        first_at: Annotated[
            float,
            Field(
                description="First fire, in seconds since the epoch (with cron: the first "
                "cron time at or after it)."
            ),
        ],
        interval_seconds: Annotated[
            int | None, Field(ge=1, description="Recurring: seconds between fires.")
        ] = None,
        cron: Annotated[
            str | None,
            Field(
                description="Recurring by a five-field cron expression, e.g. '0 9 * * 1-5', "
                "in the operator's time zone (instead of interval_seconds)."
            ),
        ] = None,
        description: Annotated[str | None, Field(description="What it is for.")] = None,
    ) -> str:
        """Ask the operator for a scheduled prompt: a message delivered (from 'scheduler') to
        the targets at first_at, then again every interval_seconds or by cron, or only once.
        Returns at once with an approval id; the decision arrives later as an
        'approval_resolved' message. If the hive was down across several fire times, only
        one late fire happens and says how many were skipped."""
        request = RequestSchedule(
            targets=targets,
            body=body,
            first_at=first_at,
            interval_seconds=interval_seconds,
            cron=cron,
            description=description,
        )
        return format_approval_request(await call(request, ApprovalReply))

    async def edit_schedule(
        id: Annotated[int, Field(description="The schedule id.")],
        body: Annotated[str | None, Field(description="New message.")] = None,
        description: Annotated[str | None, Field(description="New description.")] = None,
        interval_seconds: Annotated[
            int | None, Field(ge=1, description="New interval (drops cron).")
        ] = None,
        cron: Annotated[str | None, Field(description="New cron expression.")] = None,
        once: Annotated[bool, Field(description="Fire once more only, then end.")] = False,
        next_at: Annotated[
            float | None, Field(description="Next fire, seconds since the epoch.")
        ] = None,
        targets_add: Annotated[list[str] | None, Field(description="Agents to add.")] = None,
        targets_remove: Annotated[list[str] | None, Field(description="Agents to drop.")] = None,
    ) -> str:
        """Change a schedule you own (or one for yourself or agents below you); what you leave
        out stays as it is."""
        request = EditSchedule(
            id=id,
            body=body,
            description=description,
            interval_seconds=interval_seconds,
            cron=cron,
            once=once,
            next_at=next_at,
            targets_add=targets_add or [],
            targets_remove=targets_remove or [],
        )
        return format_schedule((await call(request, ScheduleReply)).schedule, time.time())

    async def cancel_schedule(
        id: Annotated[int, Field(description="The schedule id.")],
        targets: Annotated[
            list[str] | None,
            Field(description="Stop delivering to these only; omit to end the schedule."),
        ] = None,
    ) -> str:
        """End a schedule, or stop it for some of its targets (it ends when none is left)."""
        reply = await call(CancelSchedule(id=id, targets=targets or None), ScheduleReply)
        return format_schedule(reply.schedule, time.time())

    async def fire_schedule_now(id: Annotated[int, Field(description="The schedule id.")]) -> str:
        """Deliver a schedule's message now. A recurring one keeps its cadence; a one-shot is
        used up."""
        reply = await call(FireScheduleNow(id=id), ScheduleReply)
        return format_schedule(reply.schedule, time.time())

    async def list_schedules() -> str:
        """List the active schedules you own, that deliver to you, or to agents below you:
        cadence, next fire, how often it fired and skipped."""
        return format_schedules(await call(ListSchedules(), SchedulesReply))

    async def remind(
        body: Annotated[str, Field(description="What you want to be told then.")],
        in_seconds: Annotated[
            float | None,
            Field(
                ge=0,
                le=MAX_REMINDER_DELAY_SECONDS,
                description="Deliver it this many seconds from now.",
            ),
        ] = None,
        at: Annotated[
            float | None, Field(ge=0, description="Or deliver it at this time (unix seconds).")
        ] = None,
        file_path: Annotated[
            str | None,
            Field(
                description="Optional: a file under /state to write the body to; the "
                "reminder then carries only that path."
            ),
        ] = None,
    ) -> str:
        """Set a reminder: at the time you choose, a message from 'reminder' with this body
        lands in your own inbox and starts a turn of yours. Give exactly one of in_seconds
        and at. Use it instead of sleeping or polling (for example 'check the build in 10
        minutes'). A long body is written to a file under /state and the message carries
        its path. At most 50 pending reminders; list them with get_loose_ends, cancel one
        with cancel_loose_end(kind='reminder')."""
        request = Remind(body=body, in_seconds=in_seconds, at=at, file_path=file_path)
        r = (await call(request, ReminderReply)).reminder
        return f"reminder #{r.id} set, due in {_span(r.due_at - time.time())}"

    tool(send)
    tool(recv)
    tool(ask)
    tool(answer)
    tool(get_loose_ends)
    tool(cancel_loose_end)
    tool(set_status)
    tool(get_agent_meta)
    tool(request_schedule)
    tool(edit_schedule)
    tool(cancel_schedule)
    tool(fire_schedule_now)
    tool(list_schedules)
    tool(remind)
    if role not in ("manager", "lead"):
        return server

    # -------------------------------------------------------- the manager (and a lead)

    async def request_spawn(
        name: Annotated[str, Field(description="The new agent's name (lowercase, short).")],
        description: Annotated[
            str | None, Field(description="Why it is needed and what it will do.")
        ] = None,
        node: Annotated[
            str | None,
            Field(
                description="The node (host) it runs on, when the hive has several; "
                "default: the one with the fewest agents."
            ),
        ] = None,
    ) -> str:
        """Ask the operator to create a new agent. Returns at once with an approval id; the
        operator's decision arrives later as an 'approval_resolved' message from 'system'."""
        request = RequestSpawn(name=name, description=description, node=node)
        reply = await call(request, ApprovalReply)
        return format_approval_request(reply)

    async def request_apply_commit(
        agent: Annotated[str, Field(description="The agent whose configuration changes.")],
        commit_ref: Annotated[
            str, Field(description="The commit in its proposed repo: 7 to 40 hex digits.")
        ],
        description: Annotated[str | None, Field(description="What the commit changes.")] = None,
    ) -> str:
        """Ask the operator to apply a configuration commit to an agent. First edit
        /agents/<agent>/config/agent.toml (the agent's proposed config repo) and commit it
        there with git; pass that commit's sha. Returns at once with an approval id; the
        decision arrives later as an 'approval_resolved' message (approved: the agent was
        rebuilt with the new config)."""
        request = RequestApplyCommit(agent=agent, commit_ref=commit_ref, description=description)
        return format_approval_request(await call(request, ApprovalReply))

    def lifecycle(verb: str, cls: Callable[..., Request], doc: str) -> None:
        async def fn(name: Annotated[str, Field(description="The agent's name.")]) -> str:
            await call(cls(name=name), Empty)
            return f"{verb}: {name} done"

        fn.__doc__ = doc
        tool(fn, name=verb)

    tool(request_spawn)
    if role == "manager":
        tool(request_apply_commit)
    lifecycle("kill", Kill, "Stop an agent's container (its state is kept). Not yourself.")
    lifecycle("start", Start, "Start a stopped agent's container.")
    lifecycle("restart", Restart, "Restart an agent's container (e.g. when it is stuck).")
    lifecycle("update", Update, "Rebuild an agent's container with its current configuration.")

    async def list_containers() -> str:
        """List every agent: role, state, model, unread messages, whether its harness is
        connected, and its status line."""
        return format_agents(await call(ListContainers(), AgentsReply))

    async def get_logs(
        agent: Annotated[str, Field(description="The agent's name.")],
        lines: Annotated[
            int, Field(ge=1, le=500, description="How many of the last lines (max 500).")
        ] = 50,
    ) -> str:
        """Read the last lines of an agent's container log (to see why it fails)."""
        reply = await call(GetLogs(agent=agent, lines=lines), LogsReply)
        return "\n".join(reply.lines) if reply.lines else "(no log lines)"

    if role == "manager":
        tool(list_containers)
    tool(get_logs)
    return server


# ---------------------------------------------------------------- running it


async def serve(socket_path: str) -> None:
    link = ConnectionPool(socket_path)
    try:
        hello = await connect_at_startup(link, STARTUP_CONNECT_SECONDS)
        if hello is None:
            log.error("serving the agent tools without a daemon; every call will retry it")
            role, name = "agent", None
        else:
            role, name = hello.role, hello.name
        server = build_server(link, role=role, name=name)
        stdio = trio.StapledStream(
            trio.lowlevel.FdStream(os.dup(1)), trio.lowlevel.FdStream(os.dup(0))
        )
        # Nothing but the wire may reach fd 1: stray output goes to stderr meanwhile.
        os.dup2(2, 1)
        async with stdio:
            await server.serve(stdio)
    finally:
        with trio.CancelScope(shield=True):
            await link.aclose()


def socket_path_from_env(socket_path: str | None = None) -> str:
    return socket_path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def main(socket_path: str | None = None) -> None:
    """Serve MCP on stdio for the agent socket at ``socket_path`` (else env, else default)."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="hyperhive-mcp: %(levelname)s %(message)s"
    )
    path = socket_path_from_env(socket_path)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, path)


if __name__ == "__main__":
    main()
