"""Commands between nodes: the operator's requests about an agent another node serves.

An agent's container, state dir, logs and UI are on its node (:mod:`hyperhive.nodes`).
A host-socket request that needs them (:data:`FORWARDED`: lifecycle verbs, destroy and
purge, logs, the model file, a compaction) about an agent of another node is not carried
out here: it becomes a row of ``node_commands`` and a ``command`` notification, in one
transaction. The agent's node takes the row (only if it is neither taken nor expired),
carries the request out through its own :class:`~hyperhive.api.Api` as the operator
(the code path of its host socket), writes the reply or the refusal, and says so
(``reply``). The node that asked waits for that reply up to its deadline, then gives up:
a row nobody took by then is marked ``expired`` and is never carried out later (a node
coming back after an outage must not restart an agent behind the operator's back).

Only the operator causes commands (the host socket and the dashboard, which goes through
it); an agent's request is never forwarded. Requests that only read or write the database
(pause, resume, parents, questions, approvals, messages) work on any node as they are.

Sans-IO: which requests are forwarded (:func:`forwarded_agent`), what a refusal says
(:func:`node_refusal`, :func:`timeout_refusal`), the rows' SQL. :class:`NodeCommands` is
the thin shell: :meth:`~NodeCommands.call` on the asking node, :meth:`~NodeCommands.serve`
on the agent's.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio

from hyperhive.config import REMOTE_COMMAND_SECONDS
from hyperhive.errors import ProtocolError, RequestRefused
from hyperhive.kinds import NodeStatus
from hyperhive.nodes import NodeInfo, Nodes
from hyperhive.protocol import (
    CONVERTER,
    HOST_TABLE,
    REPLIES,
    Compact,
    Destroy,
    Kill,
    Logs,
    Rebuild,
    Reply,
    Request,
    Restart,
    SetModel,
    Start,
    encode_request,
    structure,
)
from hyperhive.store import Conn, Database, DatabaseFailed, insert_id

log = logging.getLogger(__name__)

#: The host-socket requests carried out by the agent's node: each needs its container,
#: its files or its UI socket. Each names the agent in ``name``.
FORWARDED: Final = (Start, Kill, Restart, Rebuild, Destroy, Logs, SetModel, Compact)
#: What a row nobody took before its deadline says.
COMMAND_EXPIRED: Final = "expired"

CarryOut = Callable[[Request], Awaitable[Reply]]


def forwarded_agent(request: Request) -> str | None:
    """The agent a request acts on, when its node must carry it out; None otherwise."""
    if isinstance(request, FORWARDED):
        name: str = request.name
        return name
    return None


def node_refusal(agent: str, node: str, info: NodeInfo | None, now: float) -> str | None:
    """Why a command for ``agent`` on ``node`` is refused at once (the node is down or
    stopped, or has never run), or None when it is up."""
    if info is None:
        return f"{agent} runs on node {node}, which has never run; start hyperhive there"
    status = info.status(now)
    if status == NodeStatus.UP:
        return None
    ago = max(0.0, now - info.heartbeat_at)
    return (
        f"{agent} runs on node {node}, which is {status} (last seen {ago:.0f} s ago); "
        f"its lifecycle, logs and UI are served there: try again once it is up"
    )


def timeout_refusal(node: str, timeout: float, *, taken: bool) -> str:
    if taken:
        return (
            f"node {node} took the command but did not finish it within {timeout:g} s; "
            "it may still finish: look at the agent's state"
        )
    return f"node {node} did not answer within {timeout:g} s; the command was not carried out"


def gave_up(node: str, info: NodeInfo | None, now: float, timeout: float, *, taken: bool) -> str:
    """Why no reply came within ``timeout``: the node went down meanwhile, or it is slow."""
    if info is not None and (status := info.status(now)) != NodeStatus.UP:
        ago = max(0.0, now - info.heartbeat_at)
        went = "stopped" if status == NodeStatus.STOPPED else "went down"
        if taken:
            return (
                f"node {node} {went} (last seen {ago:.0f} s ago) while it carried the "
                "command out; look at the agent's state once it is back"
            )
        return (
            f"node {node} {went} (last seen {ago:.0f} s ago) before it answered; "
            "the command was not carried out"
        )
    return timeout_refusal(node, timeout, taken=taken)


def encode_reply_json(reply: Reply) -> str:
    return json.dumps(CONVERTER.unstructure(reply), ensure_ascii=False, separators=(",", ":"))


def decode_request(text: str) -> Request:
    """A command's request (a host-socket request line), or :class:`ProtocolError`."""
    request = HOST_TABLE.decode(text.encode())
    if forwarded_agent(request) is None:
        raise ProtocolError(f"{request.CMD!r} is not a request another node carries out")
    return request


@attrs.frozen
class Command:
    """An open command, as its node takes it."""

    id: int
    origin: str
    request_json: str


@attrs.frozen
class Outcome:
    """A finished command: the reply (JSON) or the refusal."""

    reply_json: str | None
    error: str | None


# ---------------------------------------------------------------- SQL


def sql_insert(
    conn: Conn, node: str, agent: str, origin: str, request_json: str, now: float, expires: float
) -> int:
    return insert_id(
        conn,
        "INSERT INTO node_commands (node, agent, origin, request_json, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (node, agent, origin, request_json, now, expires),
    )


def sql_take(conn: Conn, node: str, now: float) -> tuple[list[Command], list[tuple[int, str]]]:
    """The node's open commands, taken (``taken_at``) if not expired; those expired are
    marked done (``expired``) instead. Returns ``(taken, expired as (id, origin))``."""
    expired = conn.execute(
        "UPDATE node_commands SET done_at = ?, error = ? WHERE node = ? AND done_at IS NULL "
        "AND taken_at IS NULL AND expires_at <= ? RETURNING id, origin",
        (now, COMMAND_EXPIRED, node, now),
    ).fetchall()
    taken = conn.execute(
        "UPDATE node_commands SET taken_at = ? WHERE node = ? AND done_at IS NULL "
        "AND taken_at IS NULL AND expires_at > ? RETURNING id, origin, request_json",
        (now, node, now),
    ).fetchall()
    commands = [Command(r["id"], r["origin"], r["request_json"]) for r in taken]
    return sorted(commands, key=lambda c: c.id), [(r["id"], r["origin"]) for r in expired]


def sql_interrupted(conn: Conn, node: str, now: float, error: str) -> list[tuple[int, str]]:
    """At start: the commands this node took but never finished (it stopped meanwhile)
    are done, with ``error``."""
    rows = conn.execute(
        "UPDATE node_commands SET done_at = ?, error = ? WHERE node = ? AND done_at IS NULL "
        "AND taken_at IS NOT NULL RETURNING id, origin",
        (now, error, node),
    ).fetchall()
    return [(r["id"], r["origin"]) for r in rows]


def sql_finish(conn: Conn, command_id: int, outcome: Outcome, now: float) -> None:
    conn.execute(
        "UPDATE node_commands SET done_at = ?, reply_json = ?, error = ? "
        "WHERE id = ? AND done_at IS NULL",
        (now, outcome.reply_json, outcome.error, command_id),
    )


def sql_give_up(conn: Conn, command_id: int, now: float) -> bool:
    """The asking node stops waiting: a command not taken yet is never carried out.
    True if it was not taken (and is now done, ``expired``)."""
    cursor = conn.execute(
        "UPDATE node_commands SET done_at = ?, error = ? "
        "WHERE id = ? AND taken_at IS NULL AND done_at IS NULL",
        (now, COMMAND_EXPIRED, command_id),
    )
    return cursor.rowcount == 1


def sql_outcome(conn: Conn, command_id: int) -> tuple[Outcome | None, bool]:
    """``(outcome or None while open, taken)``."""
    row = conn.execute(
        "SELECT taken_at, done_at, reply_json, error FROM node_commands WHERE id = ?",
        (command_id,),
    ).fetchone()
    if row is None or row["done_at"] is None:
        return None, row is not None and row["taken_at"] is not None
    return Outcome(row["reply_json"], row["error"]), True


# ---------------------------------------------------------------- the shell


class NodeCommands:
    """This node's side of the commands between nodes (module docstring)."""

    def __init__(
        self,
        db: Database,
        nodes: Nodes,
        carry_out: CarryOut,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = REMOTE_COMMAND_SECONDS,
    ) -> None:
        self._db = db
        self._nodes = nodes
        self._carry_out = carry_out
        self._clock = clock
        self.timeout = timeout
        #: Commands this node asked for and waits on, by id: set by their ``reply``.
        self._pending: dict[int, trio.Event] = {}
        self._wake = trio.Event()
        nodes.on("command", self._on_command)
        nodes.on("reply", self._on_reply)

    # ------------------------------------------------------------ notifications

    def _on_command(self, data: dict[str, Any]) -> None:
        if data.get("node") == self._nodes.name:
            self._wake.set()

    def _on_reply(self, data: dict[str, Any]) -> None:
        command_id = data.get("id")
        if isinstance(command_id, int) and (event := self._pending.get(command_id)) is not None:
            event.set()

    def _tell_origins(self, conn: Conn, done: list[tuple[int, str]]) -> None:
        for command_id, origin in done:
            self._nodes.notify(conn, "reply", id=command_id, to=origin)

    # ------------------------------------------------------------ the asking node

    async def call(self, node: str, agent: str, request: Request) -> Reply:
        """Have ``node`` carry out ``request`` (about its ``agent``); its reply, or
        :class:`RequestRefused` with its refusal, or with why it did not come."""
        infos = {info.name: info for info in await self._nodes.all()}
        refusal = node_refusal(agent, node, infos.get(node), self._clock())
        if refusal is not None:
            raise RequestRefused(refusal)
        now = self._clock()
        text = encode_request(request).decode().rstrip("\n")
        origin = self._nodes.name

        def insert(conn: Conn) -> int:
            command_id = sql_insert(conn, node, agent, origin, text, now, now + self.timeout)
            self._nodes.notify(conn, "command", node=node, id=command_id)
            return command_id

        command_id = await self._db.transaction(insert)
        event = self._pending[command_id] = trio.Event()
        outcome: Outcome | None = None
        try:
            with trio.move_on_after(self.timeout):
                # A reply that came before the event was there is found by this read.
                outcome, _ = await self._db.transaction(
                    functools.partial(sql_outcome, command_id=command_id)
                )
                if outcome is None:
                    await event.wait()
                    outcome, _ = await self._db.transaction(
                        functools.partial(sql_outcome, command_id=command_id)
                    )
            if outcome is None:
                outcome = await self._give_up(node, command_id)
        finally:
            del self._pending[command_id]
            if outcome is None:  # cancelled (the operator went away): not carried out later
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    give_up = functools.partial(sql_give_up, command_id=command_id)
                    await self._db.transaction(lambda conn: give_up(conn, now=self._clock()))
        if outcome.error is not None:
            if outcome.error == COMMAND_EXPIRED:
                raise RequestRefused(timeout_refusal(node, self.timeout, taken=False))
            raise RequestRefused(outcome.error)
        assert outcome.reply_json is not None
        return structure(
            json.loads(outcome.reply_json), REPLIES[type(request)], what=f"{request.CMD!r} reply"
        )

    async def _give_up(self, node: str, command_id: int) -> Outcome:
        now = self._clock()

        def tx(conn: Conn) -> tuple[bool, Outcome | None]:
            untaken = sql_give_up(conn, command_id, now)
            return untaken, sql_outcome(conn, command_id)[0]

        untaken, outcome = await self._db.transaction(tx)
        if not untaken and outcome is not None:
            return outcome  # it finished as the wait ended
        infos = {info.name: info for info in await self._nodes.all()}
        return Outcome(None, gave_up(node, infos.get(node), now, self.timeout, taken=not untaken))

    # ------------------------------------------------------------ the agent's node

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out the commands for this node: those open at start, then each one its
        notification announces, each in its own task."""
        name = self._nodes.name
        now = self._clock()
        error = self._stopped_text()
        interrupted = functools.partial(sql_interrupted, node=name, now=now, error=error)

        def finish_interrupted(conn: Conn) -> None:
            self._tell_origins(conn, interrupted(conn))

        await self._db.transaction(finish_interrupted)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                # Reset before the read: a notification arriving meanwhile is not lost.
                self._wake = trio.Event()
                take = functools.partial(self._take, at=self._clock())
                for command in await self._db.transaction(take):
                    nursery.start_soon(self._run, command)
                await self._wake.wait()

    def _take(self, conn: Conn, at: float) -> list[Command]:
        taken, expired = sql_take(conn, self._nodes.name, at)
        self._tell_origins(conn, expired)
        return taken

    async def _run(self, command: Command) -> None:
        try:
            request = decode_request(command.request_json)
            reply = await self._carry_out(request)
            outcome = Outcome(encode_reply_json(reply), None)
        except (RequestRefused, ProtocolError) as exc:
            outcome = Outcome(None, str(exc))
        except DatabaseFailed:
            raise
        except trio.Cancelled:
            # The node stops: the one waiting learns it now, not at its deadline.
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._finish(command, Outcome(None, self._stopped_text()))
            raise
        except Exception:
            log.exception("command %d from node %s failed", command.id, command.origin)
            outcome = Outcome(None, f"node {self._nodes.name} failed to carry it out; see its log")
        await self._finish(command, outcome)

    def _stopped_text(self) -> str:
        return f"node {self._nodes.name} stopped before it finished the command"

    async def _finish(self, command: Command, outcome: Outcome) -> None:
        now = self._clock()

        def finish(conn: Conn) -> None:
            sql_finish(conn, command.id, outcome, now)
            self._tell_origins(conn, [(command.id, command.origin)])

        await self._db.transaction(finish)


__all__ = [
    "COMMAND_EXPIRED",
    "FORWARDED",
    "Command",
    "NodeCommands",
    "Outcome",
    "decode_request",
    "forwarded_agent",
    "gave_up",
    "node_refusal",
    "timeout_refusal",
]
