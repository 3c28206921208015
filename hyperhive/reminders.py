"""Reminders: an agent's message to itself, delivered at a time it chose (``remind``).

The rules are plain functions (:func:`check_remind`, :func:`state_relative`,
:func:`delivery_plan`, the ``sql_*`` transactions); :class:`ReminderBook` wires them to the
database, the broker and one scheduler task. The scheduler sleeps until the earliest due
reminder on trio's clock (through :func:`hyperhive.clocks.trio_deadline`, so a test under
trio's MockClock moves it), is woken early when a nearer one is set or one is retried, and
is re-armed from the table at start: what fell due while the daemon was down fires at once.

Delivery is one broker transaction: the message (sender ``reminder``, into the agent's own
inbox) is inserted and the row marked sent only if it is still pending, so a reminder fires
once, and never after it was cancelled. A large body (over ``REMINDER_SPILL_CHARS``), or any
body with ``file_path``, is first written to a file in the agent's state dir, through
:func:`hyperhive.agent_files.write_under` (that dir is the agent's: a planted symlink is never
followed), and the message carries its in-container path; when that dir is on another
node (several nodes on PostgreSQL), the reminder is handed to that node, which delivers it
(and looked at again after ``REMINDER_HANDOVER_SECONDS``). A failed delivery (the write or
the transaction) is recorded (``attempt_count``, ``last_error``) and tried again after
``REMINDER_RETRY_BACKOFF``, at most ``MAX_REMINDER_ATTEMPTS`` times; then it waits for the
operator's retry or cancel.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from hyperhive import contract
from hyperhive.agent_files import write_under
from hyperhive.broker import Broker, Outbox, Outgoing, check_body
from hyperhive.clocks import WallClock, trio_deadline
from hyperhive.config import (
    MAX_PENDING_REMINDERS,
    MAX_REMINDER_ATTEMPTS,
    MAX_REMINDER_DELAY_SECONDS,
    MAX_REMINDER_PATH_CHARS,
    REMINDER_HANDOVER_SECONDS,
    REMINDER_RETRY_BACKOFF,
    REMINDER_SPILL_CHARS,
)
from hyperhive.errors import RequestRefused
from hyperhive.events import EventHub
from hyperhive.names import MANAGER, REMINDER
from hyperhive.protocol import ReminderInfo
from hyperhive.protocol.event_payloads import ReminderChanged
from hyperhive.questions import DeadlineSchedule
from hyperhive.runtime import Backoff
from hyperhive.store import Conn, Database, DatabaseFailed, Row, insert_id

log = logging.getLogger("hyperhive.reminders")

#: Where a large body goes when no ``file_path`` was given (relative to ``/state``).
SPILL_DIR = "reminders"
#: The longest error text kept in ``last_error``.
MAX_ERROR_CHARS = 500

#: Told, inside the transaction that made it, of a reminder's new due time (id, due_at): the
#: node running the scheduler may be another (:mod:`hyperhive.duties`).
Announce = Callable[[Conn, int, float], None]


def _no_announce(conn: Conn, reminder_id: int, due_at: float) -> None:
    pass


#: Told, in a transaction, that a reminder's file must be written on its agent's node
#: (id, agent): that node delivers it (:mod:`hyperhive.duties`).
HandOver = Callable[[Conn, int, str], None]


def _no_hand_over(conn: Conn, reminder_id: int, agent: str) -> None:
    raise RuntimeError(f"reminder {reminder_id}: {agent}'s files are on no other node")


# ---------------------------------------------------------------- rules (sans-IO)


def state_relative(file_path: str) -> tuple[str, ...]:
    """The parts of an in-container path under ``/state``; refused unless it is one."""
    if len(file_path) > MAX_REMINDER_PATH_CHARS:
        raise RequestRefused(f"file_path is longer than {MAX_REMINDER_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in file_path):
        raise RequestRefused("file_path holds control characters")
    prefix = contract.STATE_DIR + "/"
    if not file_path.startswith(prefix):
        raise RequestRefused(f"file_path must be a file under {prefix} (your state dir)")
    parts = tuple(file_path[len(prefix) :].split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise RequestRefused("file_path must be a plain path: no '..', '.' or empty parts")
    return parts


def check_remind(
    body: str,
    in_seconds: float | None,
    at: float | None,
    file_path: str | None,
    *,
    now: float,
) -> float:
    """Validate a ``remind``; return when it is due (wall-clock seconds)."""
    check_body(body)
    if (in_seconds is None) == (at is None):
        raise RequestRefused("give exactly one of in_seconds and at")
    if in_seconds is not None:
        if not 0 <= in_seconds <= MAX_REMINDER_DELAY_SECONDS:
            raise RequestRefused(f"in_seconds must be between 0 and {MAX_REMINDER_DELAY_SECONDS}")
        due = now + in_seconds
    else:
        assert at is not None
        if not math.isfinite(at) or at > now + MAX_REMINDER_DELAY_SECONDS:
            raise RequestRefused(f"at must be within {MAX_REMINDER_DELAY_SECONDS} seconds from now")
        due = max(at, now)
    if file_path is not None:
        state_relative(file_path)
    return due


def delivery_plan(info: ReminderInfo) -> tuple[tuple[str, ...] | None, str]:
    """Where the body is written first (parts under ``/state``; None: nowhere), and the
    message that lands in the agent's inbox."""
    if info.file_path is not None:
        parts = state_relative(info.file_path)
    elif len(info.body) > REMINDER_SPILL_CHARS:
        parts = (SPILL_DIR, f"reminder-{info.id}.txt")
    else:
        return None, info.body
    where = "/".join((contract.STATE_DIR, *parts))
    return parts, f"Reminder #{info.id}: its text ({len(info.body)} characters) is in {where}"


def _row_to_info(row: Row) -> ReminderInfo:
    return ReminderInfo(
        id=row["id"],
        agent=row["agent"],
        body=row["body"],
        file_path=row["file_path"],
        due_at=row["due_at"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
        attempt_count=row["attempt_count"],
        last_error=row["last_error"],
        failed=row["sent_at"] is None and row["attempt_count"] >= MAX_REMINDER_ATTEMPTS,
    )


# ---------------------------------------------------------------- transactions (sync)


def sql_get(conn: Conn, reminder_id: int) -> ReminderInfo:
    row = conn.execute("SELECT * FROM reminders WHERE id = ?", (reminder_id,)).fetchone()
    if row is None:
        raise RequestRefused(f"no reminder with id {reminder_id}")
    return _row_to_info(row)


def sql_pending_count(conn: Conn, agent: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM reminders WHERE agent = ? AND sent_at IS NULL", (agent,)
    ).fetchone()
    return int(row[0])


def sql_insert(
    conn: Conn,
    agent: str,
    body: str,
    file_path: str | None,
    due_at: float,
    now: float,
    max_pending: int = MAX_PENDING_REMINDERS,
) -> ReminderInfo:
    """Set a reminder; refused when the agent already has the most pending."""
    if sql_pending_count(conn, agent) >= max_pending:
        raise RequestRefused(
            f"{agent} already has {max_pending} pending reminders, the most allowed; "
            "cancel one (cancel_loose_end) or wait for one to fire"
        )
    new_id = insert_id(
        conn,
        "INSERT INTO reminders (agent, body, file_path, due_at, created_at) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (agent, body, file_path, due_at, now),
    )
    return sql_get(conn, new_id)


def sql_list(
    conn: Conn, *, include_sent: bool = False, agent: str | None = None
) -> list[ReminderInfo]:
    sql = "SELECT * FROM reminders WHERE 1 = 1"
    args: list[object] = []
    if not include_sent:
        sql += " AND sent_at IS NULL"
    if agent is not None:
        sql += " AND agent = ?"
        args.append(agent)
    return [_row_to_info(r) for r in conn.execute(sql + " ORDER BY due_at, id", args)]


def sql_pending_by_agent(conn: Conn) -> dict[str, int]:
    rows = conn.execute(
        "SELECT agent, COUNT(*) FROM reminders WHERE sent_at IS NULL GROUP BY agent"
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def sql_deliver(conn: Conn, outbox: Outbox, reminder_id: int, body: str) -> ReminderInfo | None:
    """Insert the reminder's message and mark it sent, if it is still pending (else None)."""
    row = conn.execute(
        "SELECT * FROM reminders WHERE id = ? AND sent_at IS NULL", (reminder_id,)
    ).fetchone()
    if row is None:
        return None  # cancelled, or delivered already
    [sent] = outbox.insert([Outgoing(REMINDER, row["agent"], body)])
    conn.execute(
        "UPDATE reminders SET sent_at = ?, message_id = ? WHERE id = ? AND sent_at IS NULL",
        (outbox.now, sent.id, reminder_id),
    )
    return sql_get(conn, reminder_id)


def sql_record_failure(conn: Conn, reminder_id: int, error: str) -> ReminderInfo | None:
    cur = conn.execute(
        "UPDATE reminders SET attempt_count = attempt_count + 1, last_error = ? "
        "WHERE id = ? AND sent_at IS NULL",
        (error[:MAX_ERROR_CHARS], reminder_id),
    )
    return sql_get(conn, reminder_id) if cur.rowcount else None


def sql_retry(conn: Conn, reminder_id: int) -> ReminderInfo:
    info = sql_get(conn, reminder_id)
    if info.sent_at is not None:
        raise RequestRefused(f"reminder {reminder_id} was delivered already")
    if info.attempt_count == 0:
        raise RequestRefused(f"reminder {reminder_id} has not failed; it is delivered at its time")
    conn.execute(
        "UPDATE reminders SET attempt_count = 0, last_error = NULL WHERE id = ?", (reminder_id,)
    )
    return sql_get(conn, reminder_id)


def sql_cancel(
    conn: Conn,
    reminder_id: int,
    may_cancel: Callable[[ReminderInfo], None] = lambda _: None,
) -> ReminderInfo:
    """Delete a pending reminder (it never fires); refused once delivered."""
    info = sql_get(conn, reminder_id)
    may_cancel(info)
    if info.sent_at is not None:
        raise RequestRefused(f"reminder {reminder_id} was delivered already")
    conn.execute("DELETE FROM reminders WHERE id = ? AND sent_at IS NULL", (reminder_id,))
    return info


def sql_drop_pending(conn: Conn, agent: str) -> int:
    """Delete ``agent``'s pending reminders (it is purged: they must not fire for an agent
    made later with its name); a timer armed for one finds nothing to deliver."""
    cur = conn.execute("DELETE FROM reminders WHERE agent = ? AND sent_at IS NULL", (agent,))
    return cur.rowcount


# ---------------------------------------------------------------- trio side


class ReminderBook:
    """Reminders of every agent: set, list, cancel, retry, and the scheduler that fires them.

    ``state_dir`` gives an agent's host-side ``/state`` (where bodies are written).
    """

    def __init__(
        self,
        db: Database,
        broker: Broker,
        events: EventHub,
        *,
        state_dir: Callable[[str], Path],
        clock: WallClock = time.time,
        retry_backoff: Backoff = REMINDER_RETRY_BACKOFF,
        max_pending: int = MAX_PENDING_REMINDERS,
        announce: Announce = _no_announce,
        elsewhere: Callable[[str], bool] = lambda _: False,
        hand_over: HandOver = _no_hand_over,
    ) -> None:
        self._db = db
        self._announce = announce
        #: Whether an agent's files are on another node (then so is its state dir).
        self._elsewhere = elsewhere
        self._hand_over = hand_over
        #: While the scheduler runs (on the node holding the duties): due times are armed.
        self._scheduling = False
        self._broker = broker
        self._events = events
        self._state_dir = state_dir
        self._clock = clock
        self._backoff = retry_backoff
        self._max_pending = max_pending
        self._schedule = DeadlineSchedule()
        self._changed = trio.Event()
        #: Failed deliveries whose failure could not be recorded either (the disk is full).
        self._unrecorded: dict[int, int] = {}

    async def remind(
        self,
        agent: str,
        body: str,
        *,
        in_seconds: float | None = None,
        at: float | None = None,
        file_path: str | None = None,
    ) -> ReminderInfo:
        now = self._clock()
        due = check_remind(body, in_seconds, at, file_path, now=now)

        def tx(conn: Conn) -> ReminderInfo:
            info = sql_insert(conn, agent, body, file_path, due, now, self._max_pending)
            self._announce(conn, info.id, info.due_at)
            return info

        info = await self._db.transaction(tx)
        self._arm(info.id, info.due_at)
        self._events.emit(ReminderChanged(reminder=info))
        return info

    async def get(self, reminder_id: int) -> ReminderInfo:
        return await self._db.transaction(lambda conn: sql_get(conn, reminder_id))

    async def list(
        self, *, include_sent: bool = False, agent: str | None = None
    ) -> list[ReminderInfo]:
        return await self._db.transaction(
            lambda conn: sql_list(conn, include_sent=include_sent, agent=agent)
        )

    async def pending_count(self, agent: str) -> int:
        return await self._db.transaction(lambda conn: sql_pending_count(conn, agent))

    async def pending_by_agent(self) -> dict[str, int]:
        return await self._db.transaction(sql_pending_by_agent)

    async def cancel(self, reminder_id: int, caller: str | None = None) -> ReminderInfo:
        """Cancel a pending reminder: the operator (``caller`` None), the manager, or its agent."""

        def owner_or_manager(info: ReminderInfo) -> None:
            if caller is not None and caller not in (info.agent, MANAGER):
                raise RequestRefused(f"reminder {info.id} belongs to {info.agent}, not {caller}")

        info = await self._db.transaction(
            lambda conn: sql_cancel(conn, reminder_id, owner_or_manager)
        )
        self._events.emit(ReminderChanged(reminder=info, removed=True))
        return info

    async def retry(self, reminder_id: int) -> ReminderInfo:
        """The operator's retry: its attempts start over, and it is delivered now."""
        now = self._clock()

        def tx(conn: Conn) -> ReminderInfo:
            info = sql_retry(conn, reminder_id)
            self._announce(conn, info.id, now)
            return info

        info = await self._db.transaction(tx)
        self._arm(info.id, now)
        self._events.emit(ReminderChanged(reminder=info))
        return info

    def arm(self, reminder_id: int, due_at: float) -> None:
        """Watch a due time set elsewhere (another node's ``remind`` or retry); nothing
        while the scheduler does not run here (it reads every pending one when it starts)."""
        self._arm(reminder_id, due_at)

    def _arm(self, reminder_id: int, due_at: float) -> None:
        if not self._scheduling:
            return
        self._schedule.add(reminder_id, due_at)
        self._changed.set()

    async def deliver(self, reminder_id: int) -> ReminderInfo | None:
        """Deliver one reminder now if it is still pending and not given up on.

        Returns what was delivered, or None (gone, delivered already, or this attempt
        failed: then the failure is recorded and, attempts left, another one scheduled).
        """
        try:
            info = await self.get(reminder_id)
        except RequestRefused:
            return None  # cancelled
        if info.sent_at is not None or info.failed:
            return None
        try:
            parts, body = delivery_plan(info)
            if parts is not None and self._elsewhere(info.agent):
                # Its file goes into a state dir on another node: that node delivers it.
                await self._db.transaction(lambda conn: self._hand_over(conn, info.id, info.agent))
                self._arm(info.id, self._clock() + REMINDER_HANDOVER_SECONDS)
                return None
            if parts is not None:
                root = self._state_dir(info.agent)
                data = info.body.encode("utf-8", "surrogatepass")
                await trio.to_thread.run_sync(write_under, root, parts, data)
            delivered = await self._broker.transaction(
                lambda conn, outbox: sql_deliver(conn, outbox, reminder_id, body)
            )
        except DatabaseFailed:
            raise
        except (OSError, RequestRefused, ValueError) as exc:
            await self._failed(info, f"{type(exc).__name__}: {exc}")
            return None
        if delivered is not None:
            self._events.emit(ReminderChanged(reminder=delivered))
        return delivered

    async def _failed(self, info: ReminderInfo, error: str) -> None:
        log.warning("reminder %d for %s: delivery failed: %s", info.id, info.agent, error)
        try:
            recorded = await self._db.transaction(
                lambda conn: sql_record_failure(conn, info.id, error)
            )
        except DatabaseFailed:
            raise
        except (OSError, RequestRefused) as exc:
            # The database cannot be written either (disk full): nothing is recorded, and
            # the reminder is tried again after a growing delay until it can be.
            log.warning("reminder %d: recording the failure failed: %s", info.id, exc)
            unrecorded = self._unrecorded[info.id] = self._unrecorded.get(info.id, 0) + 1
            self._arm(info.id, self._clock() + self._backoff.delay(unrecorded - 1))
            return
        self._unrecorded.pop(info.id, None)
        if recorded is None:
            return  # cancelled meanwhile
        self._events.emit(ReminderChanged(reminder=recorded))
        if recorded.attempt_count < MAX_REMINDER_ATTEMPTS:
            delay = self._backoff.delay(recorded.attempt_count - 1)
            self._arm(info.id, self._clock() + delay)

    async def load(self) -> None:
        """Arm every pending reminder from the table (at start: past ones are due at once),
        in place of whatever was armed before; from now on, new ones are armed too."""
        self._schedule = DeadlineSchedule()
        self._scheduling = True
        for info in await self.list():
            if not info.failed:
                self._arm(info.id, info.due_at)

    async def fire_due(self) -> Sequence[ReminderInfo]:
        """Deliver every armed reminder due by now; return the ones delivered."""
        delivered: list[ReminderInfo] = []
        for reminder_id in self._schedule.pop_due(self._clock()):
            info = await self.deliver(reminder_id)
            if info is not None:
                delivered.append(info)
        return delivered

    async def scheduler(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver reminders when due; re-armed from the table at every start."""
        try:
            await self.load()
            task_status.started()
            while True:
                await self.fire_due()
                self._changed = trio.Event()
                due = self._schedule.next_deadline()
                # Stored times are wall-clock times; the wait runs on trio's clock.
                wake_at = math.inf if due is None else trio_deadline(due, self._clock)
                with trio.move_on_at(wake_at):
                    await self._changed.wait()
        finally:
            self._scheduling = False
