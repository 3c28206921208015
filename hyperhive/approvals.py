"""The approval queue: anything with a blast radius waits for the operator's decision.

Rules live in plain functions (:func:`check_commit_ref`, the ``sql_*`` transactions); the
:class:`ApprovalQueue` carries a decision out and records it. Every decision (approved,
denied, failed) is written in the same broker transaction
(:meth:`hyperhive.broker.Broker.transaction`) as the ``approval_resolved`` system message to
the manager, so the requester always hears of it (and is woken). Rows are never deleted.

Approving is crash-consistent: the transaction that claims the decision records it in the
operations journal (:mod:`hyperhive.journal`), the executor's effects are idempotent, and
the transaction that records the outcome ends the journal entry. An approval interrupted
by a crash stays ``pending`` with its journal entry until :meth:`ApprovalQueue.resume`
carries it out again at start-up, so ``pending`` never stands for an effect that happened.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

from hyperhive import system_messages
from hyperhive.broker import Broker, Outbox
from hyperhive.config import MAX_NOTE_CHARS
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.journal import (
    Operation,
    OperationKind,
    crash_point,
    sql_begin,
    sql_end_approval,
    sql_for_approval,
)
from hyperhive.kinds import ApprovalKind, ApprovalStatus, Decider
from hyperhive.names import MANAGER
from hyperhive.protocol import ApprovalInfo, event_payloads
from hyperhive.store import Conn, Database, Row, insert_id

log = logging.getLogger(__name__)
COMMIT_REF_RE: Final = re.compile(r"[0-9a-f]{7,40}")


def check_commit_ref(ref: str) -> str:
    if COMMIT_REF_RE.fullmatch(ref) is None:
        raise RequestRefused(
            f"commit_ref {ref[:50]!r} is not a commit id: give 7-40 lowercase hex characters "
            "(branch and tag names are refused, since they can move)"
        )
    return ref


def check_note(note: str | None) -> str | None:
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise RequestRefused(f"note is longer than {MAX_NOTE_CHARS} characters")
    return note or None


def _row_to_info(row: Row) -> ApprovalInfo:
    return ApprovalInfo(
        id=row["id"],
        agent=row["agent"],
        kind=ApprovalKind(row["kind"]),
        commit_ref=row["commit_ref"],
        requested_at=row["requested_at"],
        decided_by=None if row["decided_by"] is None else Decider(row["decided_by"]),
        status=ApprovalStatus(row["status"]),
        resolved_at=row["resolved_at"],
        note=row["note"],
        description=row["description"],
        fetched_sha=row["fetched_sha"],
        node=row["node"] if row["kind"] == ApprovalKind.SPAWN else row["deploy_node"],
    )


def sql_get(conn: Conn, approval_id: int) -> ApprovalInfo:
    row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    if row is None:
        raise RequestRefused(f"no approval with id {approval_id}")
    return _row_to_info(row)


def sql_request(
    conn: Conn,
    agent: str,
    kind: ApprovalKind,
    commit_ref: str | None,
    description: str | None,
    requested_by: str,
    now: float,
) -> tuple[ApprovalInfo, bool]:
    """Queue an approval, or return the pending one for the same (agent, kind, commit_ref)."""
    row = conn.execute(
        "SELECT * FROM approvals WHERE agent = ? AND kind = ? AND COALESCE(commit_ref, '') = ? "
        "AND status = 'pending'",
        (agent, kind.value, commit_ref or ""),
    ).fetchone()
    if row is not None:
        return _row_to_info(row), False
    new_id = insert_id(
        conn,
        "INSERT INTO approvals (agent, kind, commit_ref, requested_at, status, description, "
        "requested_by) VALUES (?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
        (agent, kind.value, commit_ref, now, description, requested_by),
    )
    return sql_get(conn, new_id), True


def sql_set_fetched(conn: Conn, approval_id: int, sha: str) -> ApprovalInfo:
    conn.execute("UPDATE approvals SET fetched_sha = ? WHERE id = ?", (sha, approval_id))
    return sql_get(conn, approval_id)


def sql_set_node(conn: Conn, approval_id: int, node: str | None) -> None:
    """A spawn approval's node: where the agent goes once approved (None: placed then)."""
    conn.execute("UPDATE approvals SET node = ? WHERE id = ?", (node, approval_id))


def sql_node(conn: Conn, approval_id: int) -> str | None:
    row = conn.execute("SELECT node FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    return None if row is None else row[0]


def sql_set_agent_toml(conn: Conn, approval_id: int, text: str) -> None:
    """An apply_commit's proposed agent.toml, for the agent's node to deploy (any node)."""
    conn.execute("UPDATE approvals SET agent_toml = ? WHERE id = ?", (text, approval_id))


def sql_approved_config(conn: Conn, approval_id: int) -> tuple[str | None, str | None]:
    """``(fetched_sha, agent_toml)`` of an apply_commit (either None until recorded)."""
    row = conn.execute(
        "SELECT fetched_sha, agent_toml FROM approvals WHERE id = ?", (approval_id,)
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def sql_last_approved_config(conn: Conn, agent: str, but: int) -> tuple[int, str] | None:
    """The last apply_commit of ``agent`` approved (other than ``but``) whose agent.toml is
    recorded: ``(id, agent_toml)``; None when there is none."""
    row = conn.execute(
        "SELECT id, agent_toml FROM approvals WHERE agent = ? AND kind = 'apply_commit' "
        "AND status = 'approved' AND agent_toml IS NOT NULL AND id != ? "
        "ORDER BY resolved_at DESC, id DESC LIMIT 1",
        (agent, but),
    ).fetchone()
    return None if row is None else (row["id"], row["agent_toml"])


def sql_set_deploy_node(conn: Conn, approval_id: int, node: str) -> None:
    """Ask ``node`` (the agent's) to deploy an approved apply_commit and record its outcome."""
    conn.execute("UPDATE approvals SET deploy_node = ? WHERE id = ?", (node, approval_id))


def sql_deploys_for(conn: Conn, node: str) -> list[int]:
    """The approved apply_commits ``node`` was asked to deploy and that are still pending."""
    rows = conn.execute(
        "SELECT id FROM approvals WHERE deploy_node = ? AND status = 'pending' ORDER BY id",
        (node,),
    )
    return [r["id"] for r in rows]


def sql_resolve(
    conn: Conn,
    outbox: Outbox,
    approval_id: int,
    status: ApprovalStatus,
    note: str | None,
    now: float,
    decided_by: Decider = Decider.SYSTEM,
) -> ApprovalInfo:
    """Record a decision on a pending approval and tell the manager, in one transaction."""
    current = sql_get(conn, approval_id)
    if current.status != ApprovalStatus.PENDING:
        raise RequestRefused(f"approval {approval_id} is already {current.status}")
    conn.execute(
        "UPDATE approvals SET status = ?, resolved_at = ?, note = ?, decided_by = ? WHERE id = ?",
        (status.value, now, note, decided_by, approval_id),
    )
    sql_end_approval(conn, approval_id)
    info = sql_get(conn, approval_id)
    messages = [system_messages.approval_resolved(info)]
    # A lead's spawn request: the lead hears the decision too (while it is live).
    lead = conn.execute(
        "SELECT a.name FROM approvals p JOIN agents a ON a.name = p.requested_by "
        "WHERE p.id = ? AND a.state != 'destroyed' AND a.name != ?",
        (approval_id, MANAGER),
    ).fetchone()
    if lead is not None:
        messages.append(system_messages.approval_resolved(info, to=lead[0]))
    outbox.insert(messages)
    return info


def sql_claim(conn: Conn, approval_id: int, now: float, node: str = "") -> bool:
    """Claim a pending approval for carrying out: journal the intent (see the module doc).

    Returns False when it is already journaled (an earlier attempt was interrupted; carrying
    it out again is safe, executors are idempotent).
    """
    info = sql_get(conn, approval_id)
    if info.status != ApprovalStatus.PENDING:
        raise RequestRefused(f"approval {approval_id} is already {info.status}")
    journaled = sql_for_approval(conn, approval_id)
    if journaled is not None:
        refuse_if_elsewhere(journaled, approval_id, node)
        return False
    sql_begin(conn, OperationKind.APPROVE, info.agent, now, approval_id, node)
    return True


def refuse_if_elsewhere(operation: Operation, approval_id: int, node: str) -> None:
    """An approval being carried out by another node is that node's to finish: refused here
    (two operators approving on two nodes: one carries it out, the other learns it)."""
    if operation.node not in ("", node):
        raise RequestRefused(
            f"approval {approval_id} is being carried out on node {operation.node}"
        )


def sql_fail_pending(
    conn: Conn, outbox: Outbox, agent: str, note: str, now: float
) -> list[ApprovalInfo]:
    """Fail the agent's pending approvals that are not being carried out."""
    ids = [
        r["id"]
        for r in conn.execute(
            "SELECT id FROM approvals WHERE agent = ? AND status = 'pending' AND id NOT IN "
            "(SELECT approval_id FROM operations WHERE approval_id IS NOT NULL) ORDER BY id",
            (agent,),
        )
    ]
    return [sql_resolve(conn, outbox, i, ApprovalStatus.FAILED, note, now) for i in ids]


class Delegated(Exception):
    """Raised by an executor whose approval another node carries out and resolves (the
    agent's node): :meth:`ApprovalQueue.approve` then returns what ``outcome`` gives (the
    approval once resolved there, or still pending when that takes too long)."""

    def __init__(self, node: str, outcome: Callable[[], Awaitable[ApprovalInfo]]) -> None:
        super().__init__(f"carried out on node {node}")
        self.node = node
        self.outcome = outcome


#: Carries out an approved request; raise :class:`RequestRefused` (or any error) to fail it.
#: It must be idempotent: after a crash it runs again on whatever part already happened.
Executor = Callable[[ApprovalInfo], Awaitable[None]]
#: Refuses (raises :class:`RequestRefused`) an approval that cannot be carried out, before
#: anything is claimed or changed; it is not run again when an interrupted one resumes.
Precheck = Callable[[ApprovalInfo], None]


class ApprovalQueue:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        events: EventHub,
        *,
        executors: dict[ApprovalKind, Executor],
        on_deny: dict[ApprovalKind, Executor] | None = None,
        prechecks: dict[ApprovalKind, Precheck] | None = None,
        clock: Callable[[], float] = time.time,
        node: str = "",
        on_resolved: Callable[[Conn, ApprovalInfo], None] | None = None,
    ) -> None:
        self._db = db
        #: The node deciding here: its journal entries are its own (``refuse_if_elsewhere``).
        self._node = node
        #: Runs in the transaction that records a decision (tells the other nodes).
        self._on_resolved = on_resolved
        self._broker = broker
        self._events = events
        self._executors = executors
        self._prechecks = prechecks or {}
        self._on_deny = on_deny or {}
        self._clock = clock
        self._deciding: set[int] = set()

    async def request(
        self,
        agent: str,
        kind: ApprovalKind,
        *,
        requested_by: str,
        commit_ref: str | None = None,
        description: str | None = None,
        attach: Callable[[Conn, ApprovalInfo, bool], None] | None = None,
    ) -> ApprovalInfo:
        """Queue an approval (or find the pending one it repeats); ``attach(conn, info,
        created)`` runs in the same transaction (e.g. stores what the request carries)."""
        now = self._clock()

        def tx(conn: Conn) -> tuple[ApprovalInfo, bool]:
            info, created = sql_request(
                conn, agent, kind, commit_ref, description, requested_by, now
            )
            if attach is not None:
                attach(conn, info, created)
                info = sql_get(conn, info.id)  # as attach left it
            return info, created

        info, created = await self._db.transaction(tx)
        if created:
            self._events.emit(event_payloads.ApprovalAdded(approval=info))
        return info

    async def approve(self, approval_id: int) -> ApprovalInfo:
        """Carry the request out, then record ``approved`` (or ``failed`` with the reason)."""
        with self._deciding_on(approval_id):
            info = await self.get(approval_id)
            if info.status != ApprovalStatus.PENDING:
                raise RequestRefused(f"approval {approval_id} is already {info.status}")
            kind = info.kind
            now = self._clock()
            journaled = await self._db.transaction(lambda conn: sql_for_approval(conn, approval_id))
            if journaled is not None:
                refuse_if_elsewhere(journaled, approval_id, self._node)
            try:
                if kind not in self._executors:
                    raise RequestRefused(f"{info.kind} approvals cannot be carried out yet")
                if journaled is not None:
                    # An interrupted attempt: carry it on (the checks passed back then).
                    return await self._carry_out(info, wait=True)
                precheck = self._prechecks.get(kind)
                if precheck is not None:
                    precheck(info)
            except RequestRefused as exc:
                return await self._resolve(
                    approval_id, ApprovalStatus.FAILED, str(exc), Decider.OPERATOR
                )
            await self._db.transaction(lambda conn: sql_claim(conn, approval_id, now, self._node))
            crash_point("approve-claimed")
            return await self._carry_out(info, wait=True)

    async def resume(self, approval_id: int) -> ApprovalInfo:
        """Finish an approval whose carrying out was interrupted (start-up recovery)."""
        with self._deciding_on(approval_id):
            info = await self.get(approval_id)
            if info.status != ApprovalStatus.PENDING:
                # Cannot happen (the outcome ends the journal entry); drop the stale entry.
                await self._db.transaction(lambda conn: sql_end_approval(conn, approval_id))
                return info
            if info.kind not in self._executors:
                return await self._resolve(
                    approval_id,
                    ApprovalStatus.FAILED,
                    f"{info.kind} cannot be carried out",
                    Decider.OPERATOR,
                )
            return await self._carry_out(info)

    async def _carry_out(self, info: ApprovalInfo, *, wait: bool = False) -> ApprovalInfo:
        """Run the (idempotent) executor of a claimed approval and record the outcome.

        An executor that hands the approval to another node (:class:`Delegated`): that
        node records the outcome; with ``wait``, what it recorded (or the approval still
        pending once the executor stops waiting), else the pending approval at once."""
        executor = self._executors[info.kind]
        status, note = ApprovalStatus.APPROVED, None
        try:
            await executor(info)
        except Delegated as delegated:
            return await delegated.outcome() if wait else await self.get(info.id)
        except (RequestRefused, OSError) as exc:
            status, note = ApprovalStatus.FAILED, str(exc)
        crash_point("approve-executed")
        return await self._resolve(info.id, status, note, Decider.OPERATOR)

    async def deny(self, approval_id: int, note: str | None) -> ApprovalInfo:
        note = check_note(note)
        with self._deciding_on(approval_id):
            info = await self.get(approval_id)
            if info.status != ApprovalStatus.PENDING:
                raise RequestRefused(f"approval {approval_id} is already {info.status}")
            if await self._db.transaction(lambda conn: sql_for_approval(conn, approval_id)):
                raise RequestRefused(
                    f"approval {approval_id} was approved and is being carried out; "
                    "approve it again to finish it"
                )
            hook = self._on_deny.get(info.kind)
            if hook is not None:
                # Record the denial next to the proposal (a tag); it must not block the decision.
                try:
                    await hook(attrs.evolve(info, note=note))
                except (RequestRefused, OSError) as exc:
                    log.warning("approval %d: recording the denial failed: %s", approval_id, exc)
            return await self._resolve(approval_id, ApprovalStatus.DENIED, note, Decider.OPERATOR)

    async def set_fetched_sha(
        self, approval_id: int, sha: str, *, agent_toml: str | None = None
    ) -> ApprovalInfo:
        """Record the fetched proposal's commit (and its agent.toml, for other nodes)."""

        def tx(conn: Conn) -> ApprovalInfo:
            if agent_toml is not None:
                sql_set_agent_toml(conn, approval_id, agent_toml)
            return sql_set_fetched(conn, approval_id, sha)

        return await self._db.transaction(tx)

    async def fail(self, approval_id: int, note: str) -> ApprovalInfo:
        """Resolve a pending approval as failed (it could not even be prepared)."""
        return await self._resolve(approval_id, ApprovalStatus.FAILED, note, Decider.SYSTEM)

    def resolved(self, results: list[ApprovalInfo]) -> list[ApprovalInfo]:
        """Show decisions committed by an ``sql_resolve`` in someone else's transaction on the
        dashboard (the broker transaction they ran in has told and woken the manager)."""
        for info in results:
            self._events.emit(event_payloads.ApprovalResolved(approval=info))
        return results

    async def get(self, approval_id: int) -> ApprovalInfo:
        return await self._db.transaction(lambda conn: sql_get(conn, approval_id))

    async def list(self, *, pending_only: bool) -> list[ApprovalInfo]:
        where = "WHERE status = 'pending'" if pending_only else ""

        def tx(conn: Conn) -> list[ApprovalInfo]:
            return [
                _row_to_info(r)
                for r in conn.execute(f"SELECT * FROM approvals {where} ORDER BY id")
            ]

        return await self._db.transaction(tx)

    async def _resolve(
        self, approval_id: int, status: ApprovalStatus, note: str | None, decided_by: Decider
    ) -> ApprovalInfo:
        now = self._clock()

        def tx(conn: Conn, outbox: Outbox) -> ApprovalInfo:
            info = sql_resolve(conn, outbox, approval_id, status, note, now, decided_by)
            if self._on_resolved is not None:
                self._on_resolved(conn, info)
            return info

        result = await self._broker.transaction(tx, now=now)
        return self.resolved([result])[0]

    def _deciding_on(self, approval_id: int) -> _Deciding:
        return _Deciding(self._deciding, approval_id)


class _Deciding:
    """Marks an approval as being decided, so a second decision cannot interleave."""

    def __init__(self, ids: set[int], approval_id: int) -> None:
        self._ids = ids
        self._id = approval_id

    def __enter__(self) -> None:
        if self._id in self._ids:
            raise RequestRefused(f"approval {self._id} is being decided right now")
        self._ids.add(self._id)

    def __exit__(self, *exc: object) -> None:
        self._ids.discard(self._id)


__all__ = [
    "ApprovalKind",
    "ApprovalQueue",
    "ApprovalStatus",
    "Delegated",
    "Executor",
    "Precheck",
]
