"""The agent page's loose-ends panel: the harness asks its socket (``get_loose_ends``) and the
operator sees the agent's open questions and pending reminders, as text, through the
dashboard."""

from __future__ import annotations

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

from .fixtures import make_harness, running
from .mock_anthropic import MockAnthropic


@pytest.fixture
async def inproc(short_tmp: Path) -> AsyncIterator[Daemon]:
    config = Config(
        paths=make_paths(short_tmp), backend="external", dashboard_bind=("127.0.0.1:0",)
    )
    async with open_daemon(config) as d:
        yield d


async def test_the_agent_page_lists_its_loose_ends(
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
    await hive.spawn("bob")
    hostile = "<b>bold</b> question?"
    async with await Client.connect(paths.agent_socket("alice")) as alice_sock:
        rid = (
            await alice_sock.request({"cmd": "remind", "body": "look again", "in_seconds": 900})
        )["reminder"]["id"]
        qid = (await alice_sock.request({"cmd": "ask", "question": hostile}))["id"]
    async with await Client.connect(paths.agent_socket("bob")) as bob_sock:
        await bob_sock.request({"cmd": "remind", "body": "bob's own", "in_seconds": 900})
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    problems: list[str] = []
    async with running(alice, nursery):
        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        login = inproc.dashboard_login_url()
        assert login is not None
        context, dash = await chromium.run(open_dashboard, chromium.browser, login, problems)
        try:

            def look(dash: Page) -> None:
                dash.goto(base_url(inproc) + "/agent/alice/")
                panel = dash.locator("#loose-ends")
                reminder = panel.locator(f"[data-kind='reminder'][data-id='{rid}']")
                expect(reminder).to_contain_text(f"reminder #{rid} · alice")
                expect(reminder).to_contain_text("due in")
                expect(reminder).to_contain_text("look again")
                question = panel.locator(f"[data-kind='question'][data-id='{qid}']")
                expect(question).to_contain_text("→ operator")
                expect(question).to_contain_text(hostile)
                assert panel.locator("b").count() == 0
                expect(panel).not_to_contain_text("bob's own")
                expect(panel.locator(".loose")).to_have_count(2)

            await chromium.run(look, dash)
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
    assert problems == []
