"""The operations journal: decisions whose effects outlive a ``kill -9``.

An operator decision with effects outside ``broker.sqlite`` (approving a spawn or an
``apply_commit``, destroying, purging) records its intent in the ``operations`` table in
the same transaction that claims the decision, carries its effects out idempotently, and
deletes the row in the same transaction that records the outcome. A row that is still
there when the daemon starts belongs to a decision the previous daemon did not finish;
:meth:`hyperhive.hive.Hive.finish_interrupted` finishes (or fails) each one before
the operator's socket listens.

:func:`crash_point` is a test hook: with ``HYPERHIVE_TEST_CRASH_AT=<point>`` in the
daemon's environment it kills the daemon (SIGKILL, no clean-up) the first time it passes
``<point>``, so tests can crash it between two named steps. Unset, it does nothing.
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum
from typing import Final

import attrs

from hyperhive.store import Conn, Row, insert_id

#: Test hook (see the module docstring); read once, at import.
CRASH_AT: Final = os.environ.get("HYPERHIVE_TEST_CRASH_AT") or None


class OperationKind(StrEnum):
    APPROVE = "approve"
    DESTROY = "destroy"
    PURGE = "purge"


@attrs.frozen
class Operation:
    id: int
    kind: OperationKind
    agent: str
    approval_id: int | None
    started_at: float
    #: The node carrying it out (``hyperhive.nodes``): only that node finishes it.
    node: str = ""


def sql_begin(
    conn: Conn,
    kind: OperationKind,
    agent: str,
    now: float,
    approval_id: int | None = None,
    node: str = "",
) -> Operation:
    """Record that an operation has started (its effects may happen from now on) on
    ``node``."""
    new_id = insert_id(
        conn,
        "INSERT INTO operations (kind, agent, approval_id, started_at, node) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (kind.value, agent, approval_id, now, node),
    )
    return Operation(new_id, kind, agent, approval_id, now, node)


def sql_end(conn: Conn, operation_id: int) -> None:
    conn.execute("DELETE FROM operations WHERE id = ?", (operation_id,))


def sql_end_approval(conn: Conn, approval_id: int) -> None:
    conn.execute("DELETE FROM operations WHERE approval_id = ?", (approval_id,))


def sql_for_approval(conn: Conn, approval_id: int) -> Operation | None:
    row = conn.execute("SELECT * FROM operations WHERE approval_id = ?", (approval_id,)).fetchone()
    return None if row is None else _row(row)


def sql_unfinished(conn: Conn, node: str | None = None) -> list[Operation]:
    """Every operation not finished yet (of ``node``, and from before nodes, if given),
    oldest first."""
    if node is None:
        return [_row(r) for r in conn.execute("SELECT * FROM operations ORDER BY id")]
    rows = conn.execute("SELECT * FROM operations WHERE node IN (?, '') ORDER BY id", (node,))
    return [_row(r) for r in rows]


def _row(row: Row) -> Operation:
    return Operation(
        id=row["id"],
        kind=OperationKind(row["kind"]),
        agent=row["agent"],
        approval_id=row["approval_id"],
        started_at=row["started_at"],
        node=row["node"],
    )


def crash_point(point: str) -> None:
    """Test hook: die here, like ``kill -9``, when ``HYPERHIVE_TEST_CRASH_AT`` names ``point``."""
    if CRASH_AT is not None and point == CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["CRASH_AT", "Operation", "OperationKind", "crash_point"]
