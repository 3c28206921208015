"""The stdio MCP server that ``claude`` starts each turn: the agent's hyperhive tools.

``hyperhive-harness mcp`` (or ``python -m hyperhive_harness.mcp_server``) serves MCP on
stdin/stdout under trio. It says hello to the agent socket as ``mcp``; the reply tells
whether this is the manager (manager tool set) or an agent. Every tool forwards one request
over the socket and returns a short readable text; a refusal from the daemon becomes a
``ToolError`` carrying the daemon's reason, which the model reads.

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
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from hyperhive import contract
from hyperhive.client import Client
from hyperhive.config import (
    MAX_QUESTION_TTL_SECONDS,
    MAX_RECV_BATCH,
    MAX_RECV_WAIT_SECONDS,
    MAX_STATUS_TEXT,
    PROTOCOL_VERSION,
)
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.kinds import ConnectionRole
from hyperhive.protocol import (
    AgentMetaReply,
    AgentsReply,
    Answer,
    ApprovalInfo,
    ApprovalReply,
    Ask,
    CancelLooseEnd,
    Empty,
    GetAgentMeta,
    GetLogs,
    GetLooseEnds,
    Hello,
    HelloReply,
    IdReply,
    Kill,
    ListContainers,
    LogsReply,
    LooseEndsReply,
    Message,
    QuestionInfo,
    Recv,
    RecvReply,
    Reply,
    Request,
    RequestApplyCommit,
    RequestSpawn,
    Restart,
    Send,
    SendReply,
    SetStatus,
    Start,
    Update,
)
from hyperhive.runtime import Backoff
from hyperhive_harness.prompt import AGENT_TOOLS, MANAGER_TOOLS, SERVER_NAME

__all__ = [
    "AGENT_TOOLS",
    "DEFAULT_SOCKET",
    "MANAGER_TOOLS",
    "ConnectionPool",
    "ToolError",
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
    if to == "*":
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


def format_loose_ends(reply: LooseEndsReply) -> str:
    now = time.time()
    lines = [format_question(q, now) for q in reply.questions]
    lines += [format_approval(a, now) for a in reply.approvals]
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


def build_server(link: ConnectionPool, *, role: str, name: str | None) -> MCPServer:
    """The MCP server with the agent tools, plus the manager tools when ``role`` is manager."""
    who = "the manager" if role == "manager" else "an agent"
    if name and name != "manager":
        who = f"{name}, {who}"
    server = MCPServer(
        SERVER_NAME,
        instructions=INSTRUCTIONS.format(who=who),
        log_level="WARNING",
    )

    def tool(fn: Callable[..., Awaitable[str]], name: str | None = None) -> None:
        server.add_tool(fn, name=name, description=reflow(fn.__doc__), structured_output=False)

    async def call(request: Request, reply_type: type[R]) -> R:
        return await link.call(request, reply_type)

    # -------------------------------------------------------- every agent

    async def send(
        to: Annotated[
            str, Field(description="An agent name, 'manager', 'operator' or '*' (all agents).")
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
        questions waiting for your answer, and (manager) approvals awaiting the operator."""
        return format_loose_ends(await call(GetLooseEnds(), LooseEndsReply))

    async def cancel_loose_end(
        kind: Annotated[Literal["question"], Field(description="What to cancel: 'question'.")],
        id: Annotated[int, Field(description="Its id.")],
    ) -> str:
        """Withdraw an open question you asked (when it no longer matters)."""
        await call(CancelLooseEnd(kind=kind, id=id), Empty)
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

    tool(send)
    tool(recv)
    tool(ask)
    tool(answer)
    tool(get_loose_ends)
    tool(cancel_loose_end)
    tool(set_status)
    tool(get_agent_meta)
    if role != "manager":
        return server

    # -------------------------------------------------------- the manager only

    async def request_spawn(
        name: Annotated[str, Field(description="The new agent's name (lowercase, short).")],
        description: Annotated[
            str | None, Field(description="Why it is needed and what it will do.")
        ] = None,
    ) -> str:
        """Ask the operator to create a new agent. Returns at once with an approval id; the
        operator's decision arrives later as an 'approval_resolved' message from 'system'."""
        reply = await call(RequestSpawn(name=name, description=description), ApprovalReply)
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
        await server.run_stdio_async()
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
