"""The approval queue: anything with a blast radius waits for the operator's decision.

Rules live in plain functions (:func:`check_commit_ref`, the ``sql_*`` transactions); the
:class:`ApprovalQueue` carries a decision out and records it. Every decision (approved,
denied, failed) is written in the same transaction as the ``approval_resolved`` system
message to the manager, so the requester always hears of it. Rows are never deleted.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Final

import attrs

from hyperhive.broker import Broker, Outgoing, SentMessage, sql_insert
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.names import MANAGER, OPERATOR, SYSTEM
from hyperhive.protocol import CONVERTER, ApprovalInfo
from hyperhive.questions import system_body
from hyperhive.store import Database

log = logging.getLogger(__name__)
COMMIT_REF_RE: Final = re.compile(r"[0-9a-f]{7,40}")
MAX_NOTE_CHARS: Final = 2000


class ApprovalKind(StrEnum):
    SPAWN = "spawn"
    APPLY_COMMIT = "apply_commit"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    FAILED = "failed"


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


def _row_to_info(row: sqlite3.Row) -> ApprovalInfo:
    return ApprovalInfo(
        id=row["id"],
        agent=row["agent"],
        kind=row["kind"],
        commit_ref=row["commit_ref"],
        requested_at=row["requested_at"],
        status=row["status"],
        resolved_at=row["resolved_at"],
        note=row["note"],
        description=row["description"],
        fetched_sha=row["fetched_sha"],
        decided_by=row["decided_by"],
    )


def sql_get(conn: sqlite3.Connection, approval_id: int) -> ApprovalInfo:
    row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    if row is None:
        raise RequestRefused(f"no approval with id {approval_id}")
    return _row_to_info(row)


def sql_request(
    conn: sqlite3.Connection,
    agent: str,
    kind: ApprovalKind,
    commit_ref: str | None,
    description: str | None,
    requested_by: str,
    now: float,
) -> tuple[ApprovalInfo, bool]:
    """Queue an approval, or return the pending one for the same (agent, kind, commit_ref)."""
    row = conn.execute(
        "SELECT * FROM approvals WHERE agent = ? AND kind = ? AND IFNULL(commit_ref, '') = ? "
        "AND status = 'pending'",
        (agent, kind.value, commit_ref or ""),
    ).fetchone()
    if row is not None:
        return _row_to_info(row), False
    cur = conn.execute(
        "INSERT INTO approvals (agent, kind, commit_ref, requested_at, status, description, "
        "requested_by) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        (agent, kind.value, commit_ref, now, description, requested_by),
    )
    assert cur.lastrowid is not None
    return sql_get(conn, cur.lastrowid), True


def sql_set_fetched(conn: sqlite3.Connection, approval_id: int, sha: str) -> ApprovalInfo:
    conn.execute("UPDATE approvals SET fetched_sha = ? WHERE id = ?", (sha, approval_id))
    return sql_get(conn, approval_id)


def sql_resolve(
    conn: sqlite3.Connection,
    approval_id: int,
    status: ApprovalStatus,
    note: str | None,
    now: float,
    decided_by: str | None = None,
) -> tuple[ApprovalInfo, list[SentMessage]]:
    """Record a decision on a pending approval and tell the manager, in one transaction."""
    current = sql_get(conn, approval_id)
    if current.status != ApprovalStatus.PENDING:
        raise RequestRefused(f"approval {approval_id} is already {current.status}")
    conn.execute(
        "UPDATE approvals SET status = ?, resolved_at = ?, note = ?, decided_by = ? WHERE id = ?",
        (status.value, now, note, decided_by, approval_id),
    )
    info = sql_get(conn, approval_id)
    body = system_body(
        "approval_resolved",
        id=info.id,
        agent=info.agent,
        kind=info.kind,
        commit_ref=info.commit_ref,
        status=info.status,
        note=info.note,
    )
    return info, sql_insert(conn, [Outgoing(SYSTEM, MANAGER, body)], now)


#: Carries out an approved request; raise :class:`RequestRefused` (or any error) to fail it.
Executor = Callable[[ApprovalInfo], Awaitable[None]]


class ApprovalQueue:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        events: EventHub,
        *,
        executors: dict[ApprovalKind, Executor],
        on_deny: dict[ApprovalKind, Executor] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._broker = broker
        self._events = events
        self._executors = executors
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
    ) -> ApprovalInfo:
        now = self._clock()
        info, created = await self._db.transaction(
            lambda conn: sql_request(conn, agent, kind, commit_ref, description, requested_by, now)
        )
        if created:
            self._events.publish("approval_added", approval=CONVERTER.unstructure(info))
        return info

    async def approve(self, approval_id: int) -> ApprovalInfo:
        """Carry the request out, then record ``approved`` (or ``failed`` with the reason)."""
        with self._deciding_on(approval_id):
            info = await self.get(approval_id)
            if info.status != ApprovalStatus.PENDING:
                raise RequestRefused(f"approval {approval_id} is already {info.status}")
            executor = self._executors.get(ApprovalKind(info.kind))
            status, note = ApprovalStatus.APPROVED, None
            try:
                if executor is None:
                    raise RequestRefused(f"{info.kind} approvals cannot be carried out yet")
                await executor(info)
            except (RequestRefused, OSError) as exc:
                status, note = ApprovalStatus.FAILED, str(exc)
            return await self._resolve(approval_id, status, note, OPERATOR)

    async def deny(self, approval_id: int, note: str | None) -> ApprovalInfo:
        note = check_note(note)
        with self._deciding_on(approval_id):
            info = await self.get(approval_id)
            if info.status != ApprovalStatus.PENDING:
                raise RequestRefused(f"approval {approval_id} is already {info.status}")
            hook = self._on_deny.get(ApprovalKind(info.kind))
            if hook is not None:
                # Record the denial next to the proposal (a tag); it must not block the decision.
                try:
                    await hook(attrs.evolve(info, note=note))
                except (RequestRefused, OSError) as exc:
                    log.warning("approval %d: recording the denial failed: %s", approval_id, exc)
            return await self._resolve(approval_id, ApprovalStatus.DENIED, note, OPERATOR)

    async def set_fetched_sha(self, approval_id: int, sha: str) -> ApprovalInfo:
        return await self._db.transaction(lambda conn: sql_set_fetched(conn, approval_id, sha))

    async def fail(self, approval_id: int, note: str) -> ApprovalInfo:
        """Resolve a pending approval as failed (it could not even be prepared)."""
        return await self._resolve(approval_id, ApprovalStatus.FAILED, note, SYSTEM)

    async def fail_pending_for(self, agent: str, note: str) -> list[ApprovalInfo]:
        failed = []
        for info in await self.list(pending_only=True):
            if info.agent == agent and info.id not in self._deciding:
                failed.append(await self._resolve(info.id, ApprovalStatus.FAILED, note, SYSTEM))
        return failed

    async def get(self, approval_id: int) -> ApprovalInfo:
        return await self._db.transaction(lambda conn: sql_get(conn, approval_id))

    async def list(self, *, pending_only: bool) -> list[ApprovalInfo]:
        where = "WHERE status = 'pending'" if pending_only else ""

        def tx(conn: sqlite3.Connection) -> list[ApprovalInfo]:
            return [
                _row_to_info(r)
                for r in conn.execute(f"SELECT * FROM approvals {where} ORDER BY id")
            ]

        return await self._db.transaction(tx)

    async def _resolve(
        self, approval_id: int, status: ApprovalStatus, note: str | None, decided_by: str
    ) -> ApprovalInfo:
        now = self._clock()
        info, sent = await self._db.transaction(
            lambda conn: sql_resolve(conn, approval_id, status, note, now, decided_by)
        )
        self._broker.committed(sent)
        self._events.publish("approval_resolved", approval=CONVERTER.unstructure(info))
        return info

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


__all__ = ["ApprovalKind", "ApprovalQueue", "ApprovalStatus", "Executor"]
