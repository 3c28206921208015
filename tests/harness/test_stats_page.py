"""The spend figures in the browser: the dashboard's agent row and header, and the stats
section of the agent's own page (served through the dashboard), after turns of the real
claude CLI against the scripted API, agreeing with claude's ``result`` events."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from playwright.sync_api import Page, expect

from hyperhive.client import Client
from hyperhive.config import Config
from hyperhive.supervisor import Daemon, Hive, open_daemon
from tests.conftest import make_paths
from tests.dashboard.conftest import (  # noqa: F401 - chromium is a fixture
    BrowserThread,
    base_url,
    chromium,
    open_dashboard,
)

from .fixtures import Harness, make_harness, operator_send, running, wait_acked
from .mock_anthropic import MockAnthropic, text, tool_use

TURN_MS = 60_000


@pytest.fixture
async def inproc(short_tmp: Path) -> AsyncIterator[Daemon]:
    config = Config(
        paths=make_paths(short_tmp), backend="external", dashboard_bind=("127.0.0.1:0",)
    )
    async with open_daemon(config) as d:
        yield d


@pytest.fixture
def hive(inproc: Daemon) -> Hive:
    return inproc.hive


def spent(alice: Harness) -> tuple[float, int]:
    """USD and turns, from the ``result`` events claude printed."""
    results = [
        e["payload"]["value"]
        for e in alice.events("stream")
        if e["payload"]["value"].get("type") == "result"
    ]
    return sum(r["total_cost_usd"] for r in results), len(results)


async def test_dashboard_and_agent_stats_page_show_the_scripted_turns(
    hive: Hive,
    inproc: Daemon,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
    chromium: BrowserThread,  # noqa: F811 - the fixture imported above
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    mock_api.script(
        tool_use(
            "mcp__hyperhive__send",
            {"to": "operator", "body": "working on it"},
            input_tokens=200_000,
            output_tokens=40_000,
        ),
        text("sent", input_tokens=210_000, output_tokens=10_000),
        text("second", input_tokens=150_000, output_tokens=20_000),
    )
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    problems: list[str] = []
    async with running(alice, nursery):
        login = inproc.dashboard_login_url()
        assert login is not None
        context, dash = await chromium.run(open_dashboard, chromium.browser, login, problems)
        try:
            for body in ("first", "second"):
                sent = await operator_send(paths.host_socket, "alice", body)
                await wait_acked(paths.agent_socket("alice"), sent)
                await alice.wait_for("turn_reported", lambda p, s=sent: p["id"] == s)
            usd, turns = spent(alice)
            assert turns == 2 and usd > 0.01
            money = f"${usd:.2f}"
            [info] = [a for a in await hive.agent_infos() if a.name == "alice"]
            assert info.ctx_tokens is not None

            def dashboard(page: Page) -> None:
                row = page.get_by_role("article", name="agent alice")
                expect(row.locator(".spend")).to_have_text(f"{money} today · {money} total")
                expect(row.locator(".ctx")).to_have_text(f"ctx {info.ctx_tokens:,}")
                expect(page.locator("#spend")).to_have_text(f"spend {money} today · {money} total")

            await chromium.run(dashboard, dash)

            def stats_page(page: Page) -> None:
                page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
                page.goto(base_url(inproc) + "/agent/alice/")
                stats = page.get_by_role("region", name="stats")
                expect(stats.locator("#stats-today")).to_have_text(
                    re.compile(rf"^today · \{money} · \d+ tokens · 2 turns$"), timeout=TURN_MS
                )
                expect(stats.locator("#stats-total")).to_contain_text(f"total · {money}")
                day = stats.locator("tr[data-window='24h'] td")
                expect(day.nth(1)).to_have_text("2")
                expect(day.nth(7)).to_have_text(money)
                expect(stats.locator("#stats-tools")).to_contain_text("mcp__hyperhive__send 1")
                expect(stats.locator("#stats-outcomes")).to_have_text("outcomes (total) · ok 2")

            await chromium.run(stats_page, dash)

            # A pause shows on the row (a budget's reason reads the same way).
            async with await Client.connect(paths.host_socket, hello_role="cli") as host:
                paused = await host.request(
                    {"cmd": "pause", "names": ["alice"], "reason": "checking the bill"}
                )
            assert paused["ok"], paused

            def paused_row(page: Page) -> None:
                page.goto(base_url(inproc) + "/")
                row = page.get_by_role("article", name="agent alice")
                expect(row.locator(".badge.paused")).to_have_text("⏸ P4US3D")
                expect(row.locator(".paused-reason")).to_contain_text("⏸ paused by operator")
                expect(row.locator(".paused-reason")).to_contain_text(": checking the bill")
                expect(row.locator(".spend")).to_have_text(f"{money} today · {money} total")

            await chromium.run(paused_row, dash)
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
    assert problems == []
