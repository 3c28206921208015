"""The agent's own page shows its pause and why, live: a real harness process (real claude
CLI, the scripted API), the operator pausing and resuming it from the dashboard in Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from playwright.sync_api import Page, expect

from hyperhive.config import Config
from hyperhive.supervisor import Daemon, Hive, open_daemon
from tests.conftest import make_paths
from tests.dashboard.conftest import (  # noqa: F401 - chromium is a fixture
    BrowserThread,
    chromium,
    open_dashboard,
)

from .fixtures import make_harness, running
from .mock_anthropic import MockAnthropic


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


async def test_the_agent_page_shows_a_pause_from_the_dashboard_and_the_resume(
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
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    problems: list[str] = []
    async with running(alice, nursery):
        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        login = inproc.dashboard_login_url()
        assert login is not None
        context, dash = await chromium.run(open_dashboard, chromium.browser, login, problems)
        try:

            def open_page(dash: Page) -> Page:
                row = dash.get_by_role("article", name="agent alice")
                with dash.context.expect_page() as opened:
                    row.get_by_role("link", name="alice's own page").click()
                page = opened.value
                expect(page.locator("#status")).to_have_text("online")
                return page

            page = await chromium.run(open_page, dash)

            def pause(dash: Page) -> None:
                row = dash.get_by_role("article", name="agent alice")
                row.get_by_role("button", name="pause alice").click()
                dialog = dash.get_by_role("dialog", name="P4US3 alice?")
                dialog.get_by_label("Reason (shown wherever it is listed)").fill("code freeze")
                dialog.get_by_role("button", name="P4US3").click()
                expect(row.get_by_text("⏸ P4US3D")).to_be_visible()

            await chromium.run(pause, dash)

            def shows_pause(page: Page) -> None:
                status = page.locator("#status")
                expect(status).to_have_text("⏸ paused by operator: code freeze")
                expect(page.locator("#live")).to_contain_text("· status paused")

            await chromium.run(shows_pause, page)

            def resume(dash: Page) -> None:
                row = dash.get_by_role("article", name="agent alice")
                row.get_by_role("button", name="resume alice").click()
                expect(row.get_by_text("⏸ P4US3D")).to_be_hidden()

            await chromium.run(resume, dash)
            await chromium.run(
                lambda page: expect(page.locator("#status")).to_have_text("online"), page
            )
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
    assert problems == []
