"""The dashboard of one node asks for an agent on another node and approves it there: the
agent is adopted and served by the node named (three nodes on one PostgreSQL database)."""

from __future__ import annotations

import re
from pathlib import Path

import trio
from playwright.sync_api import Page, expect

from tests.multinode import running_nodes
from tests.test_multinode_place import NODES, alice_on_nb_proposes, listed, served_on

from .conftest import BrowserThread, open_dashboard


def request_and_approve(page: Page, name: str, node: str) -> None:
    page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
    form = page.locator("#spawn-form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Node").fill(node)
    form.get_by_role("button", name="◆ R3QU3ST SP4WN").click()
    expect(form.locator("output")).to_have_text(re.compile(r"approval #\d+ waits below"))
    card = page.locator("#approvals article").filter(has_text=name)
    card.get_by_role("button", name=re.compile("^approve #")).click()
    expect(card).to_be_hidden()
    page.locator("#approvals-history summary").click()
    expect(page.locator("#approvals-done li").filter(has_text=name)).to_have_attribute(
        "data-status", "approved"
    )


async def test_a_spawn_asked_and_approved_on_one_dashboard_runs_on_the_node_named(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery, chromium: BrowserThread
) -> None:
    async with running_nodes(short_tmp, pg_url, NODES, nursery) as nodes:
        nc = nodes["nc"]
        assert nc.dashboard_login is not None
        problems: list[str] = []
        context, page = await chromium.run(
            open_dashboard, chromium.browser, nc.dashboard_login, problems
        )
        try:
            await chromium.run(request_and_approve, page, "dora", "nb")
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
        assert problems == []
        await served_on(nodes, "dora", "nb")
        assert (await listed(nodes["na"]))["dora"]["node"] == "nb"


def diff_then_approve(page: Page, approval_id: int) -> None:
    page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
    card = page.locator("#approvals article").filter(has_text=f"#{approval_id}")
    card.get_by_role("button", name=f"diff of #{approval_id}").click()
    drawer = page.get_by_role("dialog", name=re.compile(f"D1FF · #{approval_id} alice"))
    expect(drawer.locator("pre")).to_contain_text('+model = "sonnet"')
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
    card.get_by_role("button", name=f"approve #{approval_id}").click()
    expect(page.locator("#toasts")).to_contain_text(f"#{approval_id} approved")


async def test_an_apply_commit_seen_and_approved_on_a_third_nodes_dashboard(
    short_tmp: Path, pg_url: str, nursery: trio.Nursery, chromium: BrowserThread
) -> None:
    async with running_nodes(short_tmp, pg_url, NODES, nursery) as nodes:
        nb, nc = nodes["nb"], nodes["nc"]
        asked = await alice_on_nb_proposes(nodes, 'model = "sonnet"\n')
        assert nc.dashboard_login is not None
        problems: list[str] = []
        context, page = await chromium.run(
            open_dashboard, chromium.browser, nc.dashboard_login, problems
        )
        try:
            await chromium.run(diff_then_approve, page, asked["approval"]["id"])
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
        assert problems == []
        assert (nb.paths.applied_dir("alice") / "agent.toml").read_text() == 'model = "sonnet"\n'
