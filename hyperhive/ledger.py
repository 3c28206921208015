"""The spend ledger: what every claude run of every agent cost, in ``broker.sqlite``.

Each harness reports each finished claude run (``turn_report`` on its agent socket: tokens,
``total_cost_usd``, model, duration, outcome, tool calls, context size, whether a file of
its state dir changed). The daemon takes the agent's name from the socket, bounds every
field (:func:`check_report`) and appends one row to ``ledger_turns``; a report is named by
the harness (``report_id``), so one sent again after a reconnect is recorded once, and a
report never changes a row. Rows are keyed by agent name only: they outlive sessions,
compactions, restarts, destroy and revive (and purge, so the hive's total stays true).

The rest is read models and decisions, as plain functions: totals for today (UTC day) and
ever, the 1 h / 24 h / 7 d / 30 d windows (:func:`agent_stats`), the budgets
(:func:`budget_breach`) and the no-progress breaker (:func:`no_progress`). :class:`Ledger`
is the thin trio shell around them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from hyperhive.agent_config import BudgetSettings
from hyperhive.clocks import WallClock
from hyperhive.config import MAX_REPORT_NAME
from hyperhive.errors import RequestRefused
from hyperhive.kinds import TurnOutcome
from hyperhive.protocol import (
    AgentStats,
    OutcomeCount,
    SpendTotals,
    ToolCount,
    TurnReport,
    WindowStats,
)
from hyperhive.store import Conn, Database

#: The windows of the stats, longest last (its rows are the ones read).
WINDOWS: Final = (("1h", 3600), ("24h", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400))
TOP_TOOLS: Final = 5
DAY_SECONDS: Final = 86400
#: The name of the hive-wide figures in ``stats``.
HIVE: Final = "hive"
MICROS: Final = 1_000_000
#: Rows looked at to count the current no-progress streak.
MAX_STREAK_ROWS: Final = 10_000


def day_start(now: float) -> float:
    """Midnight UTC of ``now``'s day: where "today" and daily budgets start."""
    return math.floor(now / DAY_SECONDS) * DAY_SECONDS


def check_report(report: TurnReport) -> None:
    """Refuse a report the codec's bounds let through but the ledger must not store."""
    for what, text in (("report_id", report.report_id), ("model", report.model)):
        if not text or len(text) > MAX_REPORT_NAME:
            raise RequestRefused(f"{what} must be 1 to {MAX_REPORT_NAME} characters")
    if not math.isfinite(report.cost_usd) or not math.isfinite(report.duration_seconds):
        raise RequestRefused("cost_usd and duration_seconds must be finite numbers")
    names = [tool.name for tool in report.tools]
    if len(set(names)) != len(names):
        raise RequestRefused("tools must name each tool once")
    for name in names:
        if not name or len(name) > MAX_REPORT_NAME or "\x00" in name:
            raise RequestRefused(f"a tool name must be 1 to {MAX_REPORT_NAME} characters")


# ---------------------------------------------------------------- rows


@attrs.frozen
class Row:
    """One recorded turn, as the read models need it."""

    agent: str
    recorded_at: float
    outcome: TurnOutcome
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    cost_micros: int
    duration_seconds: float
    tools: dict[str, int]
    ctx_tokens: int | None

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_creation_tokens
        )


_ROW_COLUMNS: Final = (
    "agent, recorded_at, outcome, input_tokens, output_tokens, cache_read_tokens, "
    "cache_creation_tokens, cost_micros, duration_seconds, tools_json, ctx_tokens"
)


def _row(values: Sequence[object]) -> Row:
    (agent, at, outcome, inp, out, cread, ccreate, micros, duration, tools, ctx) = values
    try:
        parsed = json.loads(str(tools))
    except ValueError:
        parsed = {}
    return Row(
        agent=str(agent),
        recorded_at=float(at),  # type: ignore[arg-type]
        outcome=TurnOutcome(str(outcome)),
        input_tokens=int(inp),  # type: ignore[call-overload]
        output_tokens=int(out),  # type: ignore[call-overload]
        cache_read_tokens=int(cread),  # type: ignore[call-overload]
        cache_creation_tokens=int(ccreate),  # type: ignore[call-overload]
        cost_micros=int(micros),  # type: ignore[call-overload]
        duration_seconds=float(duration),  # type: ignore[arg-type]
        tools={str(k): int(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {},
        ctx_tokens=None if ctx is None else int(ctx),  # type: ignore[call-overload]
    )


def sql_record(conn: Conn, agent: str, report: TurnReport, *, progress: bool, now: float) -> bool:
    """Append the report's row; False when this report was recorded before (nothing written)."""
    cursor = conn.execute(
        "INSERT INTO ledger_turns (agent, report_id, recorded_at, message_id, model,"
        " outcome, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,"
        " cost_micros, duration_seconds, tool_calls, tools_json, ctx_tokens, progress)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (agent, report_id) DO NOTHING",
        (
            agent,
            report.report_id,
            now,
            report.message_id,
            report.model,
            report.outcome.value,
            report.input_tokens,
            report.output_tokens,
            report.cache_read_tokens,
            report.cache_creation_tokens,
            round(report.cost_usd * MICROS),
            report.duration_seconds,
            report.tool_calls,
            json.dumps({tool.name: tool.count for tool in report.tools}),
            report.ctx_tokens,
            int(progress),
        ),
    )
    return cursor.rowcount == 1


def sql_rows(conn: Conn, agent: str | None, since: float | None) -> list[Row]:
    """Rows of ``agent`` (None: every agent) recorded at or after ``since`` (None: all)."""
    where: list[str] = []
    args: list[object] = []
    if agent is not None:
        where.append("agent = ?")
        args.append(agent)
    if since is not None:
        where.append("recorded_at >= ?")
        args.append(since)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    cursor = conn.execute(f"SELECT {_ROW_COLUMNS} FROM ledger_turns{clause} ORDER BY id", args)
    return [_row(values) for values in cursor]


@attrs.frozen
class Sums:
    """Totals of a set of rows, summed by sqlite (exact: costs are integer micro-dollars)."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_micros: int = 0
    outcomes: tuple[tuple[TurnOutcome, int], ...] = ()

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_creation_tokens
        )

    @property
    def cost_usd(self) -> float:
        return self.cost_micros / MICROS

    def wire(self) -> SpendTotals:
        return SpendTotals(
            cost_usd=self.cost_usd,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            tokens=self.tokens,
            turns=self.turns,
            outcomes=[OutcomeCount(outcome=o, count=n) for o, n in self.outcomes],
        )


def sql_sums(conn: Conn, since: float | None = None) -> dict[str, Sums]:
    """Per agent: the sums of its rows recorded at or after ``since`` (None: ever)."""
    clause, args = ("WHERE recorded_at >= ?", [since]) if since is not None else ("", [])
    totals: dict[str, list[int]] = {}
    outcomes: dict[str, dict[TurnOutcome, int]] = {}
    for agent, outcome, turns, inp, out, cread, ccreate, micros in conn.execute(
        "SELECT agent, outcome, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
        " SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(cost_micros)"
        f" FROM ledger_turns {clause} GROUP BY agent, outcome",
        args,
    ):
        acc = totals.setdefault(agent, [0] * 6)
        for index, value in enumerate((turns, inp, out, cread, ccreate, micros)):
            acc[index] += int(value)
        outcomes.setdefault(agent, {})[TurnOutcome(outcome)] = int(turns)
    return {agent: _sums(acc, sorted(outcomes[agent].items())) for agent, acc in totals.items()}


def _sums(fields: Sequence[int], outcomes: Iterable[tuple[TurnOutcome, int]]) -> Sums:
    turns, inp, out, cread, ccreate, micros = fields
    return Sums(
        turns=turns,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=cread,
        cache_creation_tokens=ccreate,
        cost_micros=micros,
        outcomes=tuple(outcomes),
    )


def add_sums(parts: Iterable[Sums]) -> Sums:
    outcomes: Counter[TurnOutcome] = Counter()
    fields = [0] * 6
    for part in parts:
        for index, value in enumerate(
            (
                part.turns,
                part.input_tokens,
                part.output_tokens,
                part.cache_read_tokens,
                part.cache_creation_tokens,
                part.cost_micros,
            )
        ):
            fields[index] += value
        outcomes.update(dict(part.outcomes))
    return _sums(fields, sorted(outcomes.items()))


def sql_last_ctx(conn: Conn) -> dict[str, int]:
    """Per agent: the context size of its newest turn that reported one."""
    return {
        str(agent): int(ctx)
        for agent, ctx in conn.execute(
            "SELECT agent, ctx_tokens FROM ledger_turns WHERE id IN"
            " (SELECT MAX(id) FROM ledger_turns WHERE ctx_tokens IS NOT NULL GROUP BY agent)"
        )
    }


def sql_record_crash(conn: Conn, agent: str, at: float) -> None:
    """Count a crash of ``agent`` (``hyperhive_agent_crashes_total``)."""
    conn.execute("INSERT INTO ledger_crashes (agent, crashed_at) VALUES (?, ?)", (agent, at))


def sql_idle_streak(conn: Conn, agent: str, since: float | None = None) -> int:
    """How many of the agent's newest ``ok`` turns in a row (recorded after ``since``) made
    no progress."""
    streak = 0
    for (progress,) in conn.execute(
        "SELECT progress FROM ledger_turns WHERE agent = ? AND outcome = ? AND recorded_at > ?"
        " ORDER BY recorded_at DESC LIMIT ?",
        (agent, TurnOutcome.OK.value, -1.0 if since is None else since, MAX_STREAK_ROWS),
    ):
        if progress:
            break
        streak += 1
    return streak


# ---------------------------------------------------------------- read models (pure)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def window_stats(rows: Iterable[Row], name: str, seconds: int, now: float) -> WindowStats:
    inside = [row for row in rows if row.recorded_at >= now - seconds]
    durations = [row.duration_seconds for row in inside]
    ctx = [row.ctx_tokens for row in inside if row.ctx_tokens is not None]
    tools: Counter[str] = Counter()
    outcomes: Counter[TurnOutcome] = Counter()
    for row in inside:
        tools.update(row.tools)
        outcomes[row.outcome] += 1
    top = sorted(tools.items(), key=lambda item: (-item[1], item[0]))[:TOP_TOOLS]
    return WindowStats(
        window=name,
        seconds=seconds,
        turns=len(inside),
        turns_per_hour=round(len(inside) * 3600 / seconds, 3),
        duration_p50=percentile(durations, 0.5),
        duration_p95=percentile(durations, 0.95),
        ctx_avg=round(sum(ctx) / len(ctx), 1) if ctx else None,
        ctx_max=max(ctx) if ctx else None,
        cost_usd=sum(row.cost_micros for row in inside) / MICROS,
        tokens=sum(row.tokens for row in inside),
        top_tools=[ToolCount(name=n, count=c) for n, c in top],
        outcomes=[OutcomeCount(outcome=o, count=c) for o, c in sorted(outcomes.items())],
    )


def agent_stats(
    name: str,
    *,
    today: Sums,
    total: Sums,
    recent: Sequence[Row],
    ctx_tokens: int | None,
    idle_streak: int,
    now: float,
) -> AgentStats:
    """One agent's (or the hive's) figures; ``recent`` holds its rows of the longest window."""
    return AgentStats(
        name=name,
        today=today.wire(),
        total=total.wire(),
        windows=[window_stats(recent, w, s, now) for w, s in WINDOWS],
        ctx_tokens=ctx_tokens,
        idle_streak=idle_streak,
    )


# ---------------------------------------------------------------- budgets and breakers (pure)


@attrs.frozen
class Budget:
    """Limits on spend; None: no limit. Daily limits count from midnight UTC."""

    daily_usd: float | None = None
    total_usd: float | None = None
    daily_tokens: int | None = None
    total_tokens: int | None = None


def budget_of(settings: BudgetSettings) -> Budget:
    """The spend limits of an agent.toml ``[budget]``."""
    return Budget(
        daily_usd=settings.daily_usd,
        total_usd=settings.total_usd,
        daily_tokens=settings.daily_tokens,
        total_tokens=settings.total_tokens,
    )


def budget_breach(budget: Budget, today: Sums, total: Sums, *, scope: str = "") -> str | None:
    """The pause reason when a limit of ``budget`` is reached (None: within budget).

    ``scope`` prefixes the limit's name (``hive `` for the hive-wide budget).
    """
    checks: tuple[tuple[str, float | None, float, bool], ...] = (
        ("daily USD", budget.daily_usd, today.cost_usd, True),
        ("total USD", budget.total_usd, total.cost_usd, True),
        ("daily tokens", budget.daily_tokens, today.tokens, False),
        ("total tokens", budget.total_tokens, total.tokens, False),
    )
    for what, limit, spent, usd in checks:
        if limit is not None and spent >= limit:
            shown = f"{limit:.2f}" if usd else f"{int(limit)}"
            return f"budget: {scope}{what} {shown} reached"
    return None


def no_progress(idle_streak: int, limit: int) -> bool:
    """The runaway breaker: ``limit`` turns in a row without progress (0 disables it)."""
    return limit > 0 and idle_streak >= limit


#: Who a pause by :func:`limit_reached` is by: a spend limit, or the no-progress breaker.
BY_BUDGET: Final = "budget"
BY_BREAKER: Final = "breaker"


def limit_reached(
    found: Recorded, *, agent: Budget, hive: Budget, no_progress_turns: int
) -> tuple[str, str] | None:
    """After a recorded turn: ``(reason, by)`` of the pause it calls for, or None.

    The agent's own budget first, then the hive's, then the no-progress breaker.
    """
    reason = budget_breach(agent, found.today, found.total) or budget_breach(
        hive, found.hive_today, found.hive_total, scope="hive "
    )
    if reason is not None:
        return reason, BY_BUDGET
    if no_progress(found.idle_streak, no_progress_turns):
        return (
            f"no progress: {found.idle_streak} turns in a row sent no message, asked nothing "
            "and changed no file",
            BY_BREAKER,
        )
    return None


def within_budget(
    today: Sums, total: Sums, hive_today: Sums, hive_total: Sums, *, agent: Budget, hive: Budget
) -> bool:
    """True when no spend limit is reached (a budget pause may be lifted)."""
    return (
        budget_breach(agent, today, total) is None
        and budget_breach(hive, hive_today, hive_total) is None
    )


# ---------------------------------------------------------------- the trio shell


#: Per agent: today's sums, all-time sums, the last context size.
Spend = tuple[dict[str, Sums], dict[str, Sums], dict[str, int]]


def report_sums(report: TurnReport) -> Sums:
    """The sums of one turn, as its row adds them up."""
    return Sums(
        turns=1,
        input_tokens=report.input_tokens,
        output_tokens=report.output_tokens,
        cache_read_tokens=report.cache_read_tokens,
        cache_creation_tokens=report.cache_creation_tokens,
        cost_micros=round(report.cost_usd * MICROS),
        outcomes=((report.outcome, 1),),
    )


@attrs.frozen
class _SpendCache:
    day: float
    today: dict[str, Sums]
    total: dict[str, Sums]
    ctx: dict[str, int]

    def add(self, agent: str, turn: Sums, ctx: int | None) -> _SpendCache:
        """With one more turn of ``agent`` (new dicts: a reader keeps what it holds)."""
        return _SpendCache(
            day=self.day,
            today={**self.today, agent: add_sums([self.today.get(agent, Sums()), turn])},
            total={**self.total, agent: add_sums([self.total.get(agent, Sums()), turn])},
            ctx=self.ctx if ctx is None else {**self.ctx, agent: ctx},
        )


@attrs.frozen
class Recorded:
    """What recording a report found: whether it was new, and the agent's figures after it."""

    recorded: bool
    today: Sums
    total: Sums
    hive_today: Sums
    hive_total: Sums
    idle_streak: int


class Ledger:
    def __init__(self, db: Database, *, clock: WallClock) -> None:
        self._db = db
        self._clock = clock
        #: Agents that sent a message, asked or answered since their last turn report.
        self._active: set[str] = set()
        #: When each agent was last resumed: its no-progress streak starts over from there.
        self._resumed: dict[str, float] = {}
        #: Every agent's sums, replaced (never changed in place) by the writer's jobs; dropped
        #: when the writer undoes rows (a batch runs again): read from the table next time.
        self._cache: _SpendCache | None = None
        db.on_rollback(self._forget)

    def _forget(self) -> None:
        self._cache = None

    def note_resumed(self, agent: str) -> None:
        self._resumed[agent] = self._clock()

    def note_activity(self, agent: str) -> None:
        """The agent sent, asked or answered something: its current turn made progress."""
        self._active.add(agent)

    async def record(self, agent: str, report: TurnReport) -> Recorded:
        check_report(report)
        progress = report.files_changed or agent in self._active
        now = self._clock()
        day = day_start(now)

        def tx(conn: Conn) -> Recorded:
            # In the writer, in commit order: the cache follows the table.
            cache = self._cached(conn, day)  # before the insert: the row is added once
            new = sql_record(conn, agent, report, progress=progress, now=now)
            if new:
                cache = self._cache = cache.add(agent, report_sums(report), report.ctx_tokens)
            return Recorded(
                recorded=new,
                today=cache.today.get(agent, Sums()),
                total=cache.total.get(agent, Sums()),
                hive_today=add_sums(cache.today.values()),
                hive_total=add_sums(cache.total.values()),
                idle_streak=sql_idle_streak(conn, agent, self._resumed.get(agent)),
            )

        result = await self._db.transaction(tx)
        self._active.discard(agent)
        return result

    def _cached(self, conn: Conn, day: float) -> _SpendCache:
        """The sums of every agent (today's from ``day``), read once and then kept up to
        date by :meth:`record`; read again when the day changes."""
        cache = self._cache
        if cache is None or cache.day != day:
            cache = _SpendCache(day, sql_sums(conn, day), sql_sums(conn), sql_last_ctx(conn))
            self._cache = cache
        return cache

    async def crashes(self) -> dict[str, int]:
        def tx(conn: Conn) -> dict[str, int]:
            return {
                str(agent): int(n)
                for agent, n in conn.execute(
                    "SELECT agent, COUNT(*) FROM ledger_crashes GROUP BY agent"
                )
            }

        return await self._db.transaction(tx, durable=False)

    async def spend(self) -> Spend:
        """Per agent: today's sums, all-time sums, the last context size (from memory once
        read: the dashboard and ``/metrics`` ask for them often)."""
        day = day_start(self._clock())
        cache = self._cache
        if cache is None or cache.day != day:
            cache = await self._db.transaction(
                lambda conn: self._cached(conn, day), durable=False, slow=True
            )
        return cache.today, cache.total, cache.ctx

    async def sums(self, agent: str) -> tuple[Sums, Sums, Sums, Sums]:
        """The agent's today and total sums, then the hive's."""
        today, total, _ctx = await self.spend()
        return (
            today.get(agent, Sums()),
            total.get(agent, Sums()),
            add_sums(today.values()),
            add_sums(total.values()),
        )

    async def stats(
        self, agents: Sequence[str] | None
    ) -> tuple[list[AgentStats], AgentStats, float, float]:
        """Figures of ``agents`` (None: every agent in the ledger) and of the hive."""
        now = self._clock()
        start = day_start(now)
        longest = WINDOWS[-1][1]

        def tx(
            conn: Conn,
        ) -> tuple[dict[str, Sums], dict[str, Sums], dict[str, int], list[Row], dict[str, int]]:
            rows = sql_rows(conn, None, now - longest)
            names = agents if agents is not None else sorted(sql_sums(conn))
            streaks = {name: sql_idle_streak(conn, name, self._resumed.get(name)) for name in names}
            return sql_sums(conn, start), sql_sums(conn), sql_last_ctx(conn), rows, streaks

        today, total, ctx, rows, streaks = await self._db.transaction(tx, durable=False, slow=True)
        names = list(agents) if agents is not None else sorted(total)
        out = [
            agent_stats(
                name,
                today=today.get(name, Sums()),
                total=total.get(name, Sums()),
                recent=[row for row in rows if row.agent == name],
                ctx_tokens=ctx.get(name),
                idle_streak=streaks.get(name, 0),
                now=now,
            )
            for name in names
        ]
        hive = agent_stats(
            HIVE,
            today=add_sums(today.values()),
            total=add_sums(total.values()),
            recent=rows,
            ctx_tokens=None,
            idle_streak=0,
            now=now,
        )
        return out, hive, start, now
