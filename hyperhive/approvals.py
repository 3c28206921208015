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

from hyperhive import system_messages
from hyperhive.broker import Broker, Outbox
from hyperhive.config import MAX_NOTE_CHARS, NODE_DOWN_SECONDS
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.journal import (
    OperationKind,
    crash_point,
    sql_begin,
    sql_end_approval,
    sql_for_approval,
)
from hyperhive.kinds import ApprovalKind, ApprovalStatus, Decider, NodeStatus
from hyperhive.names import MANAGER
from hyperhive.nodes import node_status
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
    *,
    node: str | None = None,
    unclaimed: bool = False,
) -> ApprovalInfo:
    """Record a decision on a pending approval and tell the manager, in one transaction.

    The decision is one conditional ``UPDATE`` (still ``pending``; with ``unclaimed``, also
    not being carried out by anyone): of two decisions racing, on one node or on two, the
    first to commit wins and the other is refused (:func:`sql_refusal`).
    """
    unclaimed_only = (
        " AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.approval_id = approvals.id)"
        if unclaimed
        else ""
    )
    updated = conn.execute(
        "UPDATE approvals SET status = ?, resolved_at = ?, note = ?, decided_by = ?, "
        f"decided_node = ? WHERE id = ? AND status = 'pending'{unclaimed_only}",
        (status.value, now, note, decided_by, node, approval_id),
    )
    if updated.rowcount != 1:
        raise sql_refusal(conn, approval_id, node)
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


def sql_refusal(conn: Conn, approval_id: int, node: str | None) -> RequestRefused:
    """Why a decision on ``approval_id`` cannot be made (by ``node``): it is decided already
    (and where, when another node decided it), or another node is carrying it out."""
    info = sql_get(conn, approval_id)
    if info.status != ApprovalStatus.PENDING:
        row = conn.execute(
            "SELECT decided_node FROM approvals WHERE id = ?", (approval_id,)
        ).fetchone()
        where = row["decided_node"]
        on = f" on node {where}" if where is not None and where != node else ""
        return RequestRefused(f"approval {approval_id} is already {info.status}{on}")
    claim = sql_for_approval(conn, approval_id)
    if claim is not None and claim.node is not None and claim.node != node:
        return RequestRefused(
            f"approval {approval_id} was approved on node {claim.node} and is being carried "
            "out there"
        )
    return RequestRefused(
        f"approval {approval_id} was approved and is being carried out; "
        "approve it again to finish it"
    )


def sql_node_down(conn: Conn, name: str, now: float, down_after: float) -> bool:
    """Whether node ``name`` is not running (stopped, silent for ``down_after``, unknown)."""
    row = conn.execute(
        "SELECT heartbeat_at, stopped_at FROM nodes WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        return True
    status = node_status(row["heartbeat_at"], row["stopped_at"], now, down_after)
    return status != NodeStatus.UP


def sql_carry_on(
    conn: Conn,
    approval_id: int,
    now: float,
    node: str | None,
    *,
    down_after: float = NODE_DOWN_SECONDS,
) -> bool:
    """Whether ``node`` carries on a journaled attempt at ``approval_id``: one it left half
    done (a crash; carrying it out again is safe, executors are idempotent), or one a node
    that is down left (taken over). False when nobody claimed it; refused when another node
    that is up is carrying it out: exactly one node carries an approval out."""
    claim = sql_for_approval(conn, approval_id)
    if claim is None:
        return False
    if claim.node is None or claim.node == node:
        return True
    if not sql_node_down(conn, claim.node, now, down_after):
        raise sql_refusal(conn, approval_id, node)
    conn.execute("UPDATE operations SET node = ? WHERE id = ?", (node, claim.id))
    return True


def sql_claim(
    conn: Conn,
    approval_id: int,
    now: float,
    node: str | None = None,
    *,
    down_after: float = NODE_DOWN_SECONDS,
) -> bool:
    """Claim a pending approval for carrying out, by ``node``: journal the intent (see the
    module doc). True when claimed now; False when journaled already and carried on
    (:func:`sql_carry_on`); refused when decided, or being carried out by another node."""
    info = sql_get(conn, approval_id)
    if info.status != ApprovalStatus.PENDING:
        raise sql_refusal(conn, approval_id, node)
    if sql_carry_on(conn, approval_id, now, node, down_after=down_after):
        return False
    sql_begin(conn, OperationKind.APPROVE, info.agent, now, approval_id, node=node)
    return True


def sql_undecided(conn: Conn, approval_id: int, node: str | None) -> ApprovalInfo:
    """The approval, refused when it is decided or being carried out (a denial's check)."""
    info = sql_get(conn, approval_id)
    if info.status != ApprovalStatus.PENDING or sql_for_approval(conn, approval_id):
        raise sql_refusal(conn, approval_id, node)
    return info


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
        node: str | None = None,
        down_after: float = NODE_DOWN_SECONDS,
        on_resolved: Callable[[Conn, ApprovalInfo], None] | None = None,
    ) -> None:
        """``node``: this daemon's node, which claims and decides; ``down_after``: when
        another node's claim on an approval may be taken over (it stopped heartbeating)."""
        self._db = db
        self._node = node
        self._down_after = down_after
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
        """Carry the request out, then record ``approved`` (or ``failed`` with the reason).

        Exactly one decision wins, whichever node each is made on: the claim, the denial
        and the outcome are conditional writes in one transaction each (see
        :func:`sql_claim`, :func:`sql_resolve`); the loser is refused.
        """
        with self._deciding_on(approval_id):
            now = self._clock()

            def first(conn: Conn) -> tuple[ApprovalInfo, bool]:
                info = sql_get(conn, approval_id)
                if info.status != ApprovalStatus.PENDING:
                    raise sql_refusal(conn, approval_id, self._node)
                return info, sql_carry_on(
                    conn, approval_id, now, self._node, down_after=self._down_after
                )

            info, carry_on = await self._db.transaction(first)
            if carry_on:
                # An interrupted attempt: carry it on (the checks passed back then).
                return await self._carry_out(info, wait=True)
            kind = info.kind
            try:
                if kind not in self._executors:
                    raise RequestRefused(f"{info.kind} approvals cannot be carried out yet")
                precheck = self._prechecks.get(kind)
                if precheck is not None:
                    precheck(info)
            except RequestRefused as exc:
                return await self._resolve(
                    approval_id, ApprovalStatus.FAILED, str(exc), Decider.OPERATOR, unclaimed=True
                )
            await self._db.transaction(
                lambda conn: sql_claim(
                    conn, approval_id, now, self._node, down_after=self._down_after
                )
            )
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
            info = await self._db.transaction(
                lambda conn: sql_undecided(conn, approval_id, self._node)
            )
            # The decision first: a denial that loses to a claim made on another node
            # meanwhile is refused and leaves no trace.
            denied = await self._resolve(
                approval_id, ApprovalStatus.DENIED, note, Decider.OPERATOR, unclaimed=True
            )
            hook = self._on_deny.get(info.kind)
            if hook is not None:
                # Record the denial next to the proposal (a tag); it must not block the decision.
                try:
                    await hook(denied)
                except (RequestRefused, OSError) as exc:
                    log.warning("approval %d: recording the denial failed: %s", approval_id, exc)
            return denied

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
        self,
        approval_id: int,
        status: ApprovalStatus,
        note: str | None,
        decided_by: Decider,
        *,
        unclaimed: bool = False,
    ) -> ApprovalInfo:
        """``unclaimed``: a decision made without claiming the approval (a denial, a failed
        check), refused if some node is carrying it out meanwhile."""
        now = self._clock()

        def tx(conn: Conn, outbox: Outbox) -> ApprovalInfo:
            info = sql_resolve(
                conn,
                outbox,
                approval_id,
                status,
                note,
                now,
                decided_by,
                node=self._node,
                unclaimed=unclaimed,
            )
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
