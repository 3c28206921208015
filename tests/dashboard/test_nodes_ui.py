"""Several nodes on one dashboard: each agent's node, and the agents of a node that went down
marked unreachable (two real nodes on one PostgreSQL, a real Chromium)."""

from __future__ import annotations

from pathlib import Path

import trio
from playwright.sync_api import Page, expect

from hyperhive.config import NODE_DOWN_SECONDS
from tests.multinode import running_nodes, spawn_on

from .conftest import BrowserThread, open_dashboard


async def test_agents_show_their_node_and_a_down_nodes_agents_are_unreachable(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery, chromium: BrowserThread
) -> None:
    async with running_nodes(short_tmp, pg_url, ["na", "nb"], nursery) as nodes:
        a, b = nodes["na"], nodes["nb"]
        await spawn_on(a, "alice")
        await spawn_on(b, "bob")
        assert a.dashboard_login is not None
        problems: list[str] = []
        context, page = await chromium.run(
            open_dashboard, chromium.browser, a.dashboard_login, problems
        )
        try:

            def placed(page: Page) -> None:
                bob = page.locator("article[data-name=bob]")
                expect(bob.locator(".node")).to_have_text("@nb")
                expect(page.locator("article[data-name=alice] .node")).to_have_text("@na")
                expect(bob.get_by_text("unreachable")).to_be_hidden()
                expect(page.get_by_role("alert", name="Daemon problems")).to_be_hidden()
                expect(page.locator("#backend")).to_have_text("node na · backend external")

            await chromium.run(placed, page)
            await b.kill()

            def unreachable(page: Page) -> None:
                # Live: the node watch's node_changed makes the page take a new snapshot.
                wait = (NODE_DOWN_SECONDS + 15) * 1000
                bob = page.locator("article[data-name=bob]")
                expect(bob).to_have_attribute("data-unreachable", "yes", timeout=wait)
                expect(bob.get_by_text("unreachable: node nb down")).to_be_visible()
                alice = page.locator("article[data-name=alice]")
                expect(alice.get_by_text("unreachable")).to_be_hidden()
                expect(page.get_by_role("alert", name="Daemon problems")).to_contain_text(
                    "node nb is down"
                )
                expect(page.get_by_role("alert", name="Daemon problems")).to_contain_text(
                    "1 agent unreachable, messages to it wait"
                )

            await chromium.run(unreachable, page)

            await b.start(nursery)

            def back(page: Page) -> None:
                bob = page.locator("article[data-name=bob]")
                expect(bob).not_to_have_attribute("data-unreachable", "yes", timeout=15_000)
                expect(page.get_by_role("alert", name="Daemon problems")).to_be_hidden()

            await chromium.run(back, page)
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
        assert problems == []
