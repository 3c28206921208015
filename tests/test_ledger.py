"""The spend ledger's decisions (pure functions) and its socket surface (a real daemon).

End to end with the real claude CLI: ``tests/harness/test_ledger.py`` and
``tests/harness/test_budgets.py``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hyperhive.config import Config
from hyperhive.hive import Hive
from hyperhive.kinds import TurnOutcome
from hyperhive.ledger import (
    BY_BREAKER,
    BY_BUDGET,
    Budget,
    Recorded,
    Row,
    Sums,
    budget_breach,
    day_start,
    limit_reached,
    no_progress,
    percentile,
    window_stats,
    within_budget,
)
from hyperhive.names import OPERATOR
from hyperhive.supervisor import open_daemon
from hyperhive.web._metrics import metrics_text

from .conftest import Connect, DaemonProcess, connect_agent, make_paths, wait_until
from .test_cli import cli

pytestmark = pytest.mark.both_stores  # the store's rules, on sqlite and on PostgreSQL


def sums(cost_usd: float = 0.0, tokens: int = 0) -> Sums:
    return Sums(turns=1, input_tokens=tokens, cost_micros=round(cost_usd * 1_000_000))


def recorded(
    today: Sums,
    total: Sums | None = None,
    *,
    hive_today: Sums | None = None,
    streak: int = 0,
) -> Recorded:
    total = total or today
    return Recorded(
        recorded=True,
        today=today,
        total=total,
        hive_today=hive_today or today,
        hive_total=hive_today or total,
        idle_streak=streak,
    )


# ---------------------------------------------------------------- decisions


def test_budget_breach_names_the_limit_reached() -> None:
    budget = Budget(daily_usd=5.0, total_tokens=1000)
    assert budget_breach(budget, sums(4.99), sums(4.99)) is None
    assert budget_breach(budget, sums(5.0), sums(5.0)) == "budget: daily USD 5.00 reached"
    assert budget_breach(budget, sums(1.0, 10), sums(1.0, 1000)) == (
        "budget: total tokens 1000 reached"
    )
    assert budget_breach(Budget(), sums(10**6, 10**9), sums(10**6, 10**9)) is None
    hive = budget_breach(Budget(total_usd=2), sums(1), sums(2.5), scope="hive ")
    assert hive == "budget: hive total USD 2.00 reached"


def test_limit_reached_agent_then_hive_then_breaker() -> None:
    agent, hive = Budget(daily_usd=5), Budget(daily_usd=8)
    ok = recorded(sums(1), hive_today=sums(2), streak=3)
    assert limit_reached(ok, agent=agent, hive=hive, no_progress_turns=20) is None
    over_agent = recorded(sums(6), hive_today=sums(9))
    assert limit_reached(over_agent, agent=agent, hive=hive, no_progress_turns=20) == (
        "budget: daily USD 5.00 reached",
        BY_BUDGET,
    )
    over_hive = recorded(sums(1), hive_today=sums(9))
    assert limit_reached(over_hive, agent=agent, hive=hive, no_progress_turns=20) == (
        "budget: hive daily USD 8.00 reached",
        BY_BUDGET,
    )
    idle = recorded(sums(1), streak=20)
    reason, by = limit_reached(idle, agent=agent, hive=hive, no_progress_turns=20) or ("", "")
    assert by == BY_BREAKER and reason.startswith("no progress: 20 turns in a row")
    assert limit_reached(idle, agent=agent, hive=hive, no_progress_turns=0) is None
    assert limit_reached(idle, agent=agent, hive=hive, no_progress_turns=21) is None


def test_no_progress_and_within_budget() -> None:
    assert not no_progress(5, 0) and not no_progress(4, 5) and no_progress(5, 5)
    low, high = Budget(daily_usd=1), Budget(daily_usd=10)
    spent = sums(2)
    assert not within_budget(spent, spent, spent, spent, agent=low, hive=Budget())
    assert within_budget(spent, spent, spent, spent, agent=high, hive=Budget())
    assert not within_budget(spent, spent, spent, spent, agent=high, hive=low)


def test_windows_percentiles_and_days() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.95) == 95.0
    now = 10 * 86400 + 7200.0
    assert day_start(now) == 10 * 86400

    def row(age: float, cost: float, ctx: int, tools: dict[str, int]) -> Row:
        return Row(
            agent="alice",
            recorded_at=now - age,
            outcome=TurnOutcome.OK,
            input_tokens=100,
            output_tokens=10,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            cost_micros=round(cost * 1e6),
            duration_seconds=age / 100,
            tools=tools,
            ctx_tokens=ctx,
        )

    rows = [
        row(60, 0.10, 1000, {"Bash": 2}),
        row(600, 0.20, 3000, {"Bash": 1, "Read": 5}),
        row(7200, 0.40, 500, {"Edit": 1}),
    ]
    hour = window_stats(rows, "1h", 3600, now)
    assert hour.turns == 2 and hour.turns_per_hour == 2.0
    assert round(hour.cost_usd, 2) == 0.30 and hour.tokens == 220
    assert hour.ctx_avg == 2000.0 and hour.ctx_max == 3000
    assert [(t.name, t.count) for t in hour.top_tools] == [("Read", 5), ("Bash", 3)]
    day = window_stats(rows, "24h", 86400, now)
    assert day.turns == 3 and day.duration_p50 == 6.0 and day.duration_p95 == 72.0


# ---------------------------------------------------------------- the socket surface


async def metric_samples(hive: Hive) -> dict[tuple[str, str | None], float]:
    """What ``/metrics`` shows: each sample's value by its name and ``agent`` label."""
    exposition = (await metrics_text(hive)).decode()
    return {
        (sample.name, sample.labels.get("agent")): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def report(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cmd": "turn_report",
        "report_id": "r1",
        "outcome": "ok",
        "model": "claude-haiku",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_read_tokens": 300,
        "cache_creation_tokens": 40,
        "cost_usd": 0.25,
        "duration_seconds": 3.5,
        "tool_calls": 2,
        "tools": [{"name": "Bash", "count": 2}],
        "ctx_tokens": 1340,
    }
    return {**base, **fields}


async def test_reports_are_recorded_once_as_the_socket_s_agent(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    first = await alice.request(report())
    assert first == {"ok": True, "recorded": True}
    # The same report again (a reply lost on a reconnect): recorded once, never rewritten.
    again = await alice.request(report(cost_usd=99.0))
    assert again == {"ok": True, "recorded": False}
    # Report ids are per agent: bob's "r1" is his own.
    assert (await bob.request(report(cost_usd=0.5)))["recorded"] is True

    mine = await alice.request({"cmd": "get_stats"})
    assert mine["ok"] and mine["stats"]["name"] == "alice"
    assert mine["stats"]["total"]["cost_usd"] == 0.25
    assert mine["stats"]["total"]["tokens"] == 1540
    stats = await hive.stats(None)
    by_name = {s.name: s for s in stats.agents}
    assert by_name["bob"].total.cost_usd == 0.5
    assert stats.hive.total.cost_usd == 0.75 and stats.hive.total.turns == 2
    # get_stats takes no name: an agent sees only its own figures.
    refused = await alice.request({"cmd": "get_stats", "name": "bob"})
    assert refused["ok"] is False
    # stats is the operator's: not served on an agent socket.
    assert (await alice.request({"cmd": "stats"}))["ok"] is False


async def test_a_report_in_a_batch_run_again_is_counted_once(hive: Hive, connect: Connect) -> None:
    """The writer runs a batch again when one of its jobs failed after changing rows; the
    ledger's sums in memory must not count the report of the first, undone, run."""
    alice = await connect("alice")
    db = hive.db
    holding, release = threading.Event(), threading.Event()

    def gate(conn: Any) -> None:  # holds the writer until the report is queued behind it
        holding.set()
        assert release.wait(30)

    def fails_after_writing(conn: Any) -> None:
        conn.execute("INSERT INTO ledger_crashes (agent, crashed_at) VALUES ('undone', 0)")
        raise ValueError("failed after writing")

    def queued(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return db.statistics().queued == n

        return check

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(db.transaction, gate, slow=True))
        await trio.to_thread.run_sync(holding.wait)
        replies: list[dict[str, Any]] = []

        async def report_turn() -> None:
            replies.append(await alice.request(report()))

        nursery.start_soon(report_turn)
        await wait_until(queued(1))
        failures: list[str] = []

        async def fail() -> None:
            try:
                await db.transaction(fails_after_writing)
            except ValueError as exc:
                failures.append(str(exc))

        nursery.start_soon(fail)
        await wait_until(queued(2))
        release.set()
    assert failures == ["failed after writing"]
    assert replies == [{"ok": True, "recorded": True}]
    assert db.statistics().isolated == 1
    assert "undone" not in await hive.ledger.crashes()
    stats = await hive.stats(None)  # from the table
    assert stats.hive.total.cost_usd == 0.25 and stats.hive.total.turns == 1
    # The figures kept in memory (/metrics, the dashboard, budgets) count the turn once too.
    samples = await metric_samples(hive)
    assert samples[("hyperhive_agent_cost_usd_total", "alice")] == 0.25


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"cost_usd": -1}, "cost_usd must be between"),
        ({"input_tokens": 10**13}, "input_tokens must be between"),
        ({"outcome": "great"}, "outcome"),
        ({"model": "m" * 201}, "model must be 1 to 200 characters"),
        ({"report_id": ""}, "report_id must be 1 to 200 characters"),
        ({"tools": [{"name": "a", "count": 1}] * 2}, "tools must name each tool once"),
        ({"tools": [{"name": f"t{i}", "count": 1} for i in range(65)]}, "tools must have at most"),
        ({"duration_seconds": 10**9}, "duration_seconds must be between"),
        ({"agent": "bob"}, "agent"),
    ],
)
async def test_a_report_out_of_bounds_is_refused(
    hive: Hive, connect: Connect, fields: dict[str, Any], error: str
) -> None:
    alice = await connect("alice")
    reply = await alice.request(report(**fields))
    assert reply["ok"] is False and error in reply["error"], reply
    assert (await hive.stats("alice")).agents[0].total.turns == 0


async def test_progress_comes_from_sends_questions_and_changed_files(
    hive: Hive, connect: Connect
) -> None:
    alice = await connect("alice")
    for n in range(3):
        await alice.request(report(report_id=f"idle{n}"))
    assert (await hive.stats("alice")).agents[0].idle_streak == 3
    await alice.request({"cmd": "send", "to": "operator", "body": "progress"})
    await alice.request(report(report_id="sent"))
    assert (await hive.stats("alice")).agents[0].idle_streak == 0
    await alice.request(report(report_id="idle-again"))
    await alice.request(report(report_id="failed", outcome="failed"))  # neither counts nor resets
    assert (await hive.stats("alice")).agents[0].idle_streak == 1
    await alice.request(report(report_id="wrote", files_changed=True))
    assert (await hive.stats("alice")).agents[0].idle_streak == 0
    await hive.pause("alice", "testing", OPERATOR)
    await alice.request(report(report_id="idle-paused"))
    await hive.resume("alice", OPERATOR)  # the streak starts over at a resume
    assert (await hive.stats("alice")).agents[0].idle_streak == 0


async def test_a_hive_budget_pauses_and_a_daemon_started_with_a_higher_one_lifts_it(
    short_tmp: Path, database: str | None
) -> None:
    """The hive-wide budget comes from ``hyperhive run``'s options (``Config``): reached, the
    reporting agent is paused; a daemon started again with a higher limit lets it run."""
    paths = make_paths(short_tmp)
    low = Config(paths=paths, backend="external", budget_total_usd=0.5, database=database)
    async with open_daemon(low) as daemon:
        hive = daemon.hive
        await hive.spawn("alice")
        async with await connect_agent(paths, "alice", role="harness") as alice:
            await alice.request(report(report_id="a", cost_usd=0.3))
            assert hive.registry.get("alice").paused_at is None
            await alice.request(report(report_id="b", cost_usd=0.3))
        record = hive.registry.get("alice")
        assert record.paused_reason == "budget: hive total USD 0.50 reached"
        assert record.paused_by == "budget"
        inbox = await hive.operator_inbox(10)
        assert any(m.body.startswith("agent_paused") and "hive total USD" in m.body for m in inbox)
        samples = await metric_samples(hive)
        assert samples[("hyperhive_agent_paused", "alice")] == 1
        assert samples[("hyperhive_agent_cost_usd_total", "alice")] == 0.6
    # The same limit: still paused after a restart.
    async with open_daemon(low) as daemon:
        assert daemon.hive.registry.get("alice").paused_at is not None
    higher = Config(paths=paths, backend="external", budget_total_usd=5.0, database=database)
    async with open_daemon(higher) as daemon:
        assert daemon.hive.registry.get("alice").paused_at is None
        assert (await daemon.hive.stats("alice")).agents[0].total.cost_usd == 0.6
        # The figures kept in memory (dashboard, /metrics) agree with the table.
        [info] = [a for a in await daemon.hive.agent_infos() if a.name == "alice"]
        assert info.cost_total_usd == 0.6 and info.cost_today_usd == 0.6


async def test_hyperhive_stats_prints_a_table_per_agent_and_the_hive(
    daemon: DaemonProcess,
) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"]
    async with await connect_agent(daemon.paths, "alice", role="harness") as alice:
        reply = await alice.request(report(cost_usd=1.25, ctx_tokens=4321))
        assert reply["recorded"] is True
    r = await cli(daemon, "stats")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "TODAY", "TOTAL", "TOKENS"]
    alice_row = next(line.split() for line in lines if line.startswith("alice "))
    assert alice_row[:7] == ["alice", "$1.25", "$1.25", "1540", "1540", "1", "4321"]
    assert alice_row[7] == "ok:1"
    hive_row = next(line.split() for line in lines if line.startswith("hive "))
    assert hive_row[1:3] == ["$1.25", "$1.25"]
    assert "alice:" in lines and any(line.startswith("24h ") for line in lines)
    one = await cli(daemon, "stats", "alice", "--json")
    assert [a["name"] for a in one.json()["agents"]] == ["alice"]
    unknown = await cli(daemon, "stats", "nobody")
    assert unknown.code == 1 and "no agent named 'nobody'" in unknown.err
