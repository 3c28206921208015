"""Scheduled prompts: a body delivered to some agents at a time, once or again and again.

The rules are plain functions: :func:`check_spec` validates what is asked for,
:func:`next_after` and :func:`plan_fire` compute the cadence (an interval, or a cron
expression evaluated in the schedule's time zone with ``croniter``), :func:`may_touch`
decides who may edit, cancel or fire one. The ``sql_*`` functions are the transactions on
``broker.sqlite``; :class:`ScheduleBook` runs them and one scheduler task that sleeps until
the earliest ``next_at`` on trio's clock (woken early when a schedule changes) — no polling.

A fire is one broker transaction: the body goes to each target's inbox (sender
``scheduler``) and ``next_at`` advances, so a fire is delivered exactly when it is recorded.
After downtime across several due times only one late fire happens; the fires it stands for
are counted in ``skipped`` (and ``last_skipped``), and the next fire is the first due time
after now.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import trio
from croniter import croniter  # type: ignore[import-untyped]

from hyperhive.broker import Broker, Outbox, Outgoing, check_body
from hyperhive.clocks import WallClock, trio_deadline
from hyperhive.config import (
    MAX_CRON_CHARS,
    MAX_NOTE_CHARS,
    MAX_SCHEDULE_AT,
    MAX_SCHEDULE_INTERVAL_SECONDS,
    MAX_SCHEDULE_TARGETS,
    MAX_SCHEDULES_PER_OWNER,
    MIN_SCHEDULE_INTERVAL_SECONDS,
)
from hyperhive.errors import RequestRefused
from hyperhive.names import MANAGER, OPERATOR, SCHEDULER
from hyperhive.protocol import ScheduleInfo
from hyperhive.store import Conn, Database, Row, dialect, insert_id

T = TypeVar("T")

#: Source of a schedule the operator made directly.
SOURCE_OPERATOR: Final = "operator"
#: Cron due times counted one by one after downtime; beyond that the count stops there.
MAX_SKIPPED_COUNTED: Final = 100_000


def approval_source(approval_id: int) -> str:
    return f"approval:{approval_id}"


# ---------------------------------------------------------------- rules (no I/O)


def local_timezone() -> str:
    """The host's IANA time zone: ``$TZ``, else ``/etc/localtime``'s link, else ``UTC``."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        if name and check_timezone(name, refuse=False):
            return name
    return "UTC"


def check_timezone(name: str, *, refuse: bool = True) -> bool:
    """Whether ``name`` is an IANA time zone; refuses (or returns False) if not."""
    ok = bool(name) and len(name) <= 64 and not Path(name).is_absolute() and ".." not in name
    if ok:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            ok = False
    if not ok and refuse:
        raise RequestRefused(f"unknown time zone {name[:64]!r}: give an IANA name (Europe/Berlin)")
    return ok


def check_cron(expr: str) -> str:
    expr = " ".join(expr.split())
    if len(expr) > MAX_CRON_CHARS or len(expr.split(" ")) != 5 or not croniter.is_valid(expr):
        raise RequestRefused(
            f"cron {expr[:MAX_CRON_CHARS]!r} is not a five-field cron expression "
            "(minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5')"
        )
    return expr


@attrs.frozen
class Cadence:
    """When a schedule fires again: every ``interval_seconds``, by ``cron``, or never."""

    interval_seconds: int | None = None
    cron: str | None = None
    timezone: str = "UTC"


def next_after(cadence: Cadence, at: float) -> float | None:
    """The due time after the one at ``at``; None for a one-shot."""
    if cadence.interval_seconds is not None:
        return at + cadence.interval_seconds
    if cadence.cron is not None:
        return first_cron_time(cadence, at, inclusive=False)
    return None


def first_cron_time(cadence: Cadence, at: float, *, inclusive: bool) -> float:
    """The first time of ``cadence.cron`` after ``at`` (or at it, when ``inclusive``)."""
    assert cadence.cron is not None
    start = datetime.fromtimestamp(at - 1 if inclusive else at, ZoneInfo(cadence.timezone))
    return float(croniter(cadence.cron, start).get_next(float))


@attrs.frozen
class Fire:
    """What one fire does: the fires skipped before it, and the next due time (None: ends)."""

    skipped: int
    next_at: float | None


def plan_fire(due_at: float, cadence: Cadence, now: float) -> Fire | None:
    """The fire of a schedule due at ``due_at``, seen at ``now``; None if not due yet.

    Only one fire happens however late it is: the due times that passed before ``now``
    after the first one are skipped, and the next one is the first due time after ``now``.
    """
    if now < due_at:
        return None
    if cadence.interval_seconds is not None:
        step = cadence.interval_seconds
        skipped = int((now - due_at) // step)
        nxt = due_at + (skipped + 1) * step
        return Fire(skipped, nxt if nxt <= MAX_SCHEDULE_AT else None)
    skipped = 0
    following = next_after(cadence, due_at)
    while following is not None and following <= now:
        skipped += 1
        if skipped >= MAX_SKIPPED_COUNTED:
            following = next_after(cadence, now)
            break
        following = next_after(cadence, following)
    return Fire(skipped, following)


@attrs.frozen
class Spec:
    """A schedule as asked for, validated."""

    targets: tuple[str, ...]
    body: str
    first_at: float
    interval_seconds: int | None
    cron: str | None
    timezone: str
    description: str | None

    def cadence(self) -> Cadence:
        return Cadence(self.interval_seconds, self.cron, self.timezone)

    def first_due(self) -> float:
        """The first due time: ``first_at``, or the first cron time at or after it."""
        if self.cron is not None:
            return first_cron_time(self.cadence(), self.first_at, inclusive=True)
        return self.first_at

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> Spec:
        data = json.loads(raw)
        data["targets"] = tuple(data["targets"])
        return cls(**data)

    def summary(self) -> str:
        if self.interval_seconds is not None:
            when = f"every {self.interval_seconds}s"
        elif self.cron is not None:
            when = f"cron '{self.cron}' ({self.timezone})"
        else:
            when = "once"
        first = datetime.fromtimestamp(self.first_at, ZoneInfo(self.timezone))
        head = self.body.strip().splitlines()[0] if self.body.strip() else ""
        if len(head) > 80:
            head = head[:80] + "…"
        text = f"{when} from {first:%Y-%m-%d %H:%M %Z} to {', '.join(self.targets)}: {head}"
        return f"{text} — {self.description}" if self.description else text


def check_targets(targets: Iterable[str], *, live: Collection[str]) -> tuple[str, ...]:
    result: list[str] = []
    for t in targets:
        if t not in live:
            shown = t if len(t) <= 40 else t[:40] + "…"
            raise RequestRefused(f"cannot schedule for {shown!r}: no live agent has that name")
        if t not in result:
            result.append(t)
    if len(result) > MAX_SCHEDULE_TARGETS:
        raise RequestRefused(f"at most {MAX_SCHEDULE_TARGETS} targets")
    return tuple(result)


def check_spec(
    targets: list[str],
    body: str,
    first_at: float,
    interval_seconds: int | None,
    cron: str | None,
    description: str | None,
    *,
    timezone: str,
    live: Collection[str],
) -> Spec:
    """Validate a schedule as asked for (agent request or operator)."""
    checked = check_targets(targets, live=live)
    if not checked:
        raise RequestRefused("a schedule needs at least one target")
    check_body(body)
    if not (math.isfinite(first_at) and 0 <= first_at <= MAX_SCHEDULE_AT):
        raise RequestRefused("first_at must be a time in seconds since the epoch")
    if interval_seconds is not None and cron is not None:
        raise RequestRefused("give interval_seconds or cron, not both")
    check_interval(interval_seconds)
    if description is not None and len(description) > MAX_NOTE_CHARS:
        raise RequestRefused(f"description is longer than {MAX_NOTE_CHARS} characters")
    check_timezone(timezone)
    return Spec(
        targets=checked,
        body=body,
        first_at=first_at,
        interval_seconds=interval_seconds,
        cron=None if cron is None else check_cron(cron),
        timezone=timezone,
        description=description or None,
    )


def check_interval(interval_seconds: int | None) -> None:
    low, high = MIN_SCHEDULE_INTERVAL_SECONDS, MAX_SCHEDULE_INTERVAL_SECONDS
    if interval_seconds is not None and not low <= interval_seconds <= high:
        raise RequestRefused(f"interval_seconds must be between {low} and {high}")


def may_touch(caller: str, schedule: ScheduleInfo, in_subtree: Callable[[str], bool]) -> bool:
    """Whether ``caller`` may edit, cancel or fire ``schedule``.

    The operator and the manager may touch any schedule; an agent one it owns or whose
    targets all lie in its subtree (``in_subtree(name)``: the agent itself or below it).
    """
    if caller in (OPERATOR, MANAGER) or schedule.owner == caller:
        return True
    return bool(schedule.targets) and all(in_subtree(t) for t in schedule.targets)


def check_added_targets(
    caller: str, added: Iterable[str], in_subtree: Callable[[str], bool]
) -> None:
    """An agent may add only itself or agents below it to a schedule: the operator approved
    the targets it asked for, and an edit must not reach anyone else."""
    if caller in (OPERATOR, MANAGER):
        return
    outside = [t for t in added if not in_subtree(t)]
    if outside:
        raise RequestRefused(
            f"cannot add {', '.join(outside)[:200]}: an agent may add only itself or the "
            "agents below it to a schedule (ask for a new schedule instead)"
        )


def check_agent_cadence(caller: str, schedule: ScheduleInfo, changes: Changes) -> None:
    """An agent's edit may make a schedule fire less often, never more: a longer interval
    (of an interval schedule) or ``once``; a new cron expression or a shorter interval needs
    a new request the operator approves. The operator and the manager may change anything."""
    if caller in (OPERATOR, MANAGER):
        return
    if changes.cron is not None:
        raise RequestRefused(
            "an agent cannot change a schedule's cron expression; ask for a new schedule"
        )
    new = changes.interval_seconds
    if new is not None and (schedule.interval_seconds is None or new < schedule.interval_seconds):
        raise RequestRefused(
            f"an agent may only lengthen a schedule's interval (now "
            f"{schedule.interval_seconds or 'none'}); ask for a new schedule to fire more often"
        )


def may_see(caller: str, schedule: ScheduleInfo, in_subtree: Callable[[str], bool]) -> bool:
    """What ``list_schedules`` shows a caller: what it may touch, and what targets it."""
    return may_touch(caller, schedule, in_subtree) or caller in schedule.targets


def fire_body(schedule: ScheduleInfo, skipped: int) -> str:
    """What a fire delivers: the body, after a line about missed fires when there were any."""
    if skipped <= 0:
        return schedule.body
    return (
        f"[schedule #{schedule.id} fires late: {skipped} earlier fire(s) were skipped while "
        f"the hive was down]\n{schedule.body}"
    )


# ---------------------------------------------------------------- transactions


def _row_to_info(row: Row) -> ScheduleInfo:
    return ScheduleInfo(
        id=row["id"],
        owner=row["owner"],
        targets=json.loads(row["targets_json"]),
        body=row["body"],
        description=row["description"],
        interval_seconds=row["interval_seconds"],
        cron=row["cron"],
        timezone=row["timezone"],
        next_at=row["next_at"],
        created_at=row["created_at"],
        source=row["source"],
        ended_at=row["ended_at"],
        last_fired_at=row["last_fired_at"],
        fires=row["fires"],
        skipped=row["skipped"],
        last_skipped=row["last_skipped"],
    )


def sql_get(conn: Conn, schedule_id: int) -> ScheduleInfo:
    row = conn.execute("SELECT * FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
    if row is None:
        raise RequestRefused(f"no schedule with id {schedule_id}")
    return _row_to_info(row)


def sql_list(conn: Conn, *, include_ended: bool) -> list[ScheduleInfo]:
    where = "" if include_ended else "WHERE ended_at IS NULL"
    return [_row_to_info(r) for r in conn.execute(f"SELECT * FROM schedules {where} ORDER BY id")]


def sql_create(conn: Conn, owner: str, spec: Spec, source: str, now: float) -> ScheduleInfo:
    """Create a schedule; idempotent per approval source (carried out again after a crash)."""
    if source != SOURCE_OPERATOR:
        row = conn.execute("SELECT id FROM schedules WHERE source = ?", (source,)).fetchone()
        if row is not None:
            return sql_get(conn, row["id"])
    if owner != OPERATOR:
        (active,) = conn.execute(
            "SELECT COUNT(*) FROM schedules WHERE owner = ? AND ended_at IS NULL", (owner,)
        ).fetchone()
        if active >= MAX_SCHEDULES_PER_OWNER:
            raise RequestRefused(
                f"{owner} already owns {active} active schedules (at most "
                f"{MAX_SCHEDULES_PER_OWNER}); cancel some first"
            )
    new_id = insert_id(
        conn,
        "INSERT INTO schedules (owner, targets_json, body, description, interval_seconds, cron, "
        "timezone, next_at, created_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING id",
        (
            owner,
            json.dumps(list(spec.targets)),
            spec.body,
            spec.description,
            spec.interval_seconds,
            spec.cron,
            spec.timezone,
            spec.first_due(),
            now,
            source,
        ),
    )
    return sql_get(conn, new_id)


def sql_save_request(conn: Conn, approval_id: int, spec: Spec) -> None:
    conn.execute(
        "INSERT INTO schedule_requests (approval_id, spec_json) VALUES (?, ?) "
        "ON CONFLICT (approval_id) DO UPDATE SET spec_json = excluded.spec_json",
        (approval_id, spec.to_json()),
    )


def sql_request_spec(conn: Conn, approval_id: int) -> Spec:
    row = conn.execute(
        "SELECT spec_json FROM schedule_requests WHERE approval_id = ?", (approval_id,)
    ).fetchone()
    if row is None:
        raise RequestRefused(f"approval {approval_id} has no schedule request")
    return Spec.from_json(row["spec_json"])


def _active(conn: Conn, schedule_id: int) -> ScheduleInfo:
    info = sql_get(conn, schedule_id)
    if info.ended_at is not None:
        raise RequestRefused(f"schedule {schedule_id} has ended; it cannot change any more")
    return info


def _end(conn: Conn, schedule_id: int, now: float) -> None:
    conn.execute(
        "UPDATE schedules SET ended_at = ?, next_at = NULL WHERE id = ?", (now, schedule_id)
    )


#: Checks a caller's right to a schedule inside the transaction (raise RequestRefused).
Check = Callable[[ScheduleInfo], None]


def sql_cancel(
    conn: Conn,
    schedule_id: int,
    targets: list[str] | None,
    now: float,
    check: Check,
) -> ScheduleInfo:
    """End a schedule, or remove some targets (it ends when none is left)."""
    info = _active(conn, schedule_id)
    check(info)
    if not targets:
        _end(conn, schedule_id, now)
        return sql_get(conn, schedule_id)
    unknown = [t for t in targets if t not in info.targets]
    if unknown:
        raise RequestRefused(f"schedule {schedule_id} does not target {', '.join(unknown)[:200]}")
    left = [t for t in info.targets if t not in targets]
    conn.execute(
        "UPDATE schedules SET targets_json = ? WHERE id = ?", (json.dumps(left), schedule_id)
    )
    if not left:
        _end(conn, schedule_id, now)
    return sql_get(conn, schedule_id)


def sql_forget(conn: Conn, agent: str, now: float) -> list[ScheduleInfo]:
    """``agent`` is purged: the active schedules it owns end, and it is taken off the
    targets of the others (one left without a target ends). The changed schedules."""
    changed = []
    for info in sql_list(conn, include_ended=False):
        if info.owner == agent:
            changed.append(sql_cancel(conn, info.id, None, now, lambda _: None))
        elif agent in info.targets:
            changed.append(sql_cancel(conn, info.id, [agent], now, lambda _: None))
    return changed


@attrs.frozen
class Changes:
    """An edit: every None field stays as it is."""

    body: str | None = None
    description: str | None = None
    interval_seconds: int | None = None
    cron: str | None = None
    once: bool = False
    next_at: float | None = None
    targets_add: tuple[str, ...] = ()
    targets_remove: tuple[str, ...] = ()


def check_changes(changes: Changes, *, live: Collection[str]) -> Changes:
    if changes.body is not None:
        check_body(changes.body)
    if changes.description is not None and len(changes.description) > MAX_NOTE_CHARS:
        raise RequestRefused(f"description is longer than {MAX_NOTE_CHARS} characters")
    given = [changes.interval_seconds is not None, changes.cron is not None, changes.once]
    if sum(given) > 1:
        raise RequestRefused("give one of interval_seconds, cron and once")
    check_interval(changes.interval_seconds)
    cron = None if changes.cron is None else check_cron(changes.cron)
    if changes.next_at is not None and not (
        math.isfinite(changes.next_at) and 0 <= changes.next_at <= MAX_SCHEDULE_AT
    ):
        raise RequestRefused("next_at must be a time in seconds since the epoch")
    return attrs.evolve(
        changes, cron=cron, targets_add=check_targets(changes.targets_add, live=live)
    )


def sql_edit(
    conn: Conn, schedule_id: int, changes: Changes, now: float, check: Check
) -> ScheduleInfo:
    """Apply a (checked) edit in one transaction."""
    info = _active(conn, schedule_id)
    check(info)
    targets = [t for t in info.targets if t not in changes.targets_remove]
    targets += [t for t in changes.targets_add if t not in targets]
    if not targets:
        raise RequestRefused("a schedule needs at least one target (cancel it instead)")
    if len(targets) > MAX_SCHEDULE_TARGETS:
        raise RequestRefused(f"at most {MAX_SCHEDULE_TARGETS} targets")
    interval, cron = info.interval_seconds, info.cron
    if changes.once:
        interval, cron = None, None
    elif changes.interval_seconds is not None:
        interval, cron = changes.interval_seconds, None
    elif changes.cron is not None:
        interval, cron = None, changes.cron
    next_at = info.next_at if changes.next_at is None else changes.next_at
    if changes.next_at is None and cron is not None and cron != info.cron:
        # A new cron expression: its first time after now.
        next_at = first_cron_time(Cadence(None, cron, info.timezone), now, inclusive=False)
    conn.execute(
        "UPDATE schedules SET targets_json = ?, body = ?, description = ?, interval_seconds = ?, "
        "cron = ?, next_at = ? WHERE id = ?",
        (
            json.dumps(targets),
            info.body if changes.body is None else changes.body,
            info.description if changes.description is None else (changes.description or None),
            interval,
            cron,
            next_at,
            schedule_id,
        ),
    )
    return sql_get(conn, schedule_id)


def sql_fire(
    conn: Conn,
    outbox: Outbox,
    schedule_id: int,
    now: float,
    *,
    live: Collection[str],
    forced: bool = False,
    check: Check = lambda _: None,
) -> ScheduleInfo | None:
    """Deliver a due schedule (``forced``: now, out of band) and advance it, in one transaction.

    Returns None when it is not due (any more): edited, cancelled or fired meanwhile. A fire
    now leaves a recurring cadence as it is; a one-shot fired now is consumed.
    """
    if forced:
        info = _active(conn, schedule_id)
        check(info)
    else:
        info = sql_get(conn, schedule_id)
        if info.ended_at is not None or info.next_at is None or info.next_at > now:
            return None
    cadence = Cadence(info.interval_seconds, info.cron, info.timezone)
    if forced:
        recurring = info.interval_seconds is not None or info.cron is not None
        fire: Fire | None = Fire(0, info.next_at if recurring else None)
    else:
        assert info.next_at is not None
        fire = plan_fire(info.next_at, cadence, now)
    assert fire is not None
    body = fire_body(info, fire.skipped)
    outbox.insert([Outgoing(SCHEDULER, t, body) for t in info.targets if t in live])
    conn.execute(
        "UPDATE schedules SET last_fired_at = ?, fires = fires + 1, skipped = skipped + ?, "
        "last_skipped = ?, next_at = ? WHERE id = ?",
        (now, fire.skipped, fire.skipped, fire.next_at, schedule_id),
    )
    if fire.next_at is None:
        _end(conn, schedule_id, now)
    return sql_get(conn, schedule_id)


def sql_next_due(conn: Conn) -> float | None:
    row = conn.execute("SELECT MIN(next_at) FROM schedules WHERE ended_at IS NULL").fetchone()
    return None if row[0] is None else float(row[0])


def sql_due(conn: Conn, now: float) -> list[int]:
    return [
        r["id"]
        for r in conn.execute(
            "SELECT id FROM schedules WHERE ended_at IS NULL AND next_at <= ? ORDER BY next_at",
            (now,),
        )
    ]


def _targets(conn: Conn) -> str:
    """The rows ``t(value)`` of a schedule's JSON list of targets, in the engine's SQL."""
    if dialect(conn) == "postgresql":
        return "json_array_elements_text(s.targets_json::json) AS t(value)"
    return "json_each(s.targets_json) t"


def sql_targeting(conn: Conn, agent: str) -> list[int]:
    """Ids of the active schedules that deliver to ``agent``."""
    return [
        r["id"]
        for r in conn.execute(
            f"SELECT s.id FROM schedules s, {_targets(conn)} "
            "WHERE s.ended_at IS NULL AND t.value = ? ORDER BY s.id",
            (agent,),
        )
    ]


def sql_targeting_all(conn: Conn) -> dict[str, list[int]]:
    """Ids of the active schedules by the agent they deliver to."""
    result: dict[str, list[int]] = {}
    for r in conn.execute(
        f"SELECT t.value AS target, s.id AS id FROM schedules s, {_targets(conn)} "
        "WHERE s.ended_at IS NULL ORDER BY s.id"
    ):
        result.setdefault(r["target"], []).append(r["id"])
    return result


# ---------------------------------------------------------------- trio side


class ScheduleBook:
    """Schedules in ``broker.sqlite`` and the task that fires them.

    ``live`` returns the names that can receive (agents not destroyed, the manager);
    ``on_change`` is told after every change (the dashboard's event).
    """

    def __init__(
        self,
        db: Database,
        broker: Broker,
        *,
        live: Callable[[], Collection[str]],
        timezone: str,
        clock: WallClock = time.time,
        on_change: Callable[[ScheduleInfo], object] = lambda _: None,
        announce: Callable[[Conn], None] = lambda _: None,
    ) -> None:
        self._db = db
        self._broker = broker
        self._live = live
        self.timezone = timezone
        self._clock = clock
        self._on_change = on_change
        #: Told, inside the transaction that made it, of a change of a schedule's next time:
        #: the node running :meth:`run` may be another (:mod:`hyperhive.duties`).
        self._announce = announce
        self._changed = trio.Event()

    def poke(self) -> None:
        """Read the next due time again (a schedule changed elsewhere)."""
        self._changed.set()

    def _announced(self, fn: Callable[[Conn], T]) -> Callable[[Conn], T]:
        def tx(conn: Conn) -> T:
            result = fn(conn)
            self._announce(conn)
            return result

        return tx

    def forget(self, conn: Conn, agent: str) -> list[ScheduleInfo]:
        """(In the transaction that purges ``agent``) :func:`sql_forget`, announced; hand
        the result to :meth:`forgotten` after the commit."""
        return self._announced(lambda c: sql_forget(c, agent, self._clock()))(conn)

    def forgotten(self, changed: list[ScheduleInfo]) -> None:
        for info in changed:
            self._rearm(info)

    def _rearm(self, info: ScheduleInfo | None) -> None:
        self._changed.set()
        if info is not None:
            self._on_change(info)

    def check(
        self,
        targets: list[str],
        body: str,
        first_at: float,
        interval_seconds: int | None,
        cron: str | None,
        description: str | None,
        timezone: str | None = None,
    ) -> Spec:
        return check_spec(
            targets,
            body,
            first_at,
            interval_seconds,
            cron,
            description,
            timezone=timezone or self.timezone,
            live=self._live(),
        )

    async def create(self, owner: str, spec: Spec, source: str) -> ScheduleInfo:
        now = self._clock()
        info = await self._db.transaction(
            self._announced(lambda conn: sql_create(conn, owner, spec, source, now))
        )
        self._rearm(info)
        return info

    async def create_from_request(self, owner: str, approval_id: int) -> ScheduleInfo:
        """Carry out an approved ``schedule`` request (idempotent)."""

        def tx(conn: Conn) -> ScheduleInfo:
            spec = sql_request_spec(conn, approval_id)
            check_targets(spec.targets, live=self._live())
            return sql_create(conn, owner, spec, approval_source(approval_id), now)

        now = self._clock()
        info = await self._db.transaction(self._announced(tx))
        self._rearm(info)
        return info

    async def get(self, schedule_id: int) -> ScheduleInfo:
        return await self._db.transaction(lambda conn: sql_get(conn, schedule_id))

    async def targeting(self, agent: str) -> list[int]:
        return await self._db.transaction(lambda conn: sql_targeting(conn, agent))

    async def targeting_all(self) -> dict[str, list[int]]:
        return await self._db.transaction(sql_targeting_all)

    async def edit(self, schedule_id: int, changes: Changes, check: Check) -> ScheduleInfo:
        changes = check_changes(changes, live=self._live())
        now = self._clock()
        info = await self._db.transaction(
            self._announced(lambda conn: sql_edit(conn, schedule_id, changes, now, check))
        )
        self._rearm(info)
        return info

    async def cancel(
        self, schedule_id: int, targets: list[str] | None, check: Check
    ) -> ScheduleInfo:
        now = self._clock()
        info = await self._db.transaction(
            self._announced(lambda conn: sql_cancel(conn, schedule_id, targets, now, check))
        )
        self._rearm(info)
        return info

    async def fire_now(self, schedule_id: int, check: Check) -> ScheduleInfo:
        now = self._clock()
        live = self._live()
        info = await self._broker.transaction(
            lambda conn, outbox: sql_fire(
                conn, outbox, schedule_id, now, live=live, forced=True, check=check
            ),
            now=now,
        )
        assert info is not None
        self._rearm(info)
        return info

    async def fire_due(self) -> list[ScheduleInfo]:
        """Fire every schedule due now, each in its own transaction."""
        now = self._clock()
        fired = []
        for schedule_id in await self._db.transaction(lambda conn: sql_due(conn, now)):
            info = await self._broker.transaction(
                functools.partial(sql_fire, schedule_id=schedule_id, now=now, live=self._live()),
                now=now,
            )
            if info is not None:
                fired.append(info)
                self._on_change(info)
        return fired

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire schedules at their due times; armed from the table at start, so what fell due
        while the daemon was down fires (once) at once."""
        task_status.started()
        while True:
            self._changed = trio.Event()
            await self.fire_due()
            due = await self._db.transaction(sql_next_due)
            # Stored due times are wall-clock times; the wait runs on trio's clock.
            wake_at = math.inf if due is None else trio_deadline(due, self._clock)
            with trio.move_on_at(wake_at):
                await self._changed.wait()

    async def list(self, *, include_ended: bool = False) -> list[ScheduleInfo]:
        return await self._db.transaction(lambda conn: sql_list(conn, include_ended=include_ended))


__all__ = [
    "Cadence",
    "Changes",
    "Fire",
    "ScheduleBook",
    "Spec",
    "check_spec",
    "local_timezone",
    "may_see",
    "may_touch",
    "next_after",
    "plan_fire",
]
