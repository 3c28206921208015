"""Acceptance 3: spawn requests approved and denied from the browser, seen live, no reload."""

from __future__ import annotations

import json
import re
import socket

from playwright.sync_api import Page, expect

from hyperhive.supervisor import Hive
from tests.conftest import connect_agent

from .conftest import UI


def mark_page(page: Page) -> None:
    """A marker that a reload or navigation would wipe."""
    page.evaluate("window.__noReload = 1")


def still_same_page(page: Page) -> None:
    assert page.evaluate("window.__noReload") == 1


def request_spawn(page: Page, name: str, description: str = "") -> None:
    form = page.locator("#spawn-form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Description").fill(description)
    form.get_by_role("button", name="◆ R3QU3ST SP4WN").click()
    expect(form.locator("output")).to_have_text(re.compile(r"approval #\d+ waits below"))
    expect(form.get_by_label("Name")).to_have_value("")  # reset for the next one


async def test_approve_a_spawn_then_the_agent_comes_online(hive: Hive, ui: UI) -> None:
    def approve(page: Page) -> None:
        mark_page(page)
        page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
        request_spawn(page, "alice", "writes the docs")
        card = page.locator("#approvals article").filter(has_text="alice")
        expect(card).to_contain_text("writes the docs")
        expect(page.locator("#approvals-count")).to_have_text("1")
        expect(page.locator("#pill-call")).to_have_text("1")
        card.get_by_role("button", name=re.compile("^approve #")).click()
        expect(card).to_be_hidden()  # resolved: out of the pending list
        expect(page.locator("#approvals-count")).to_have_text("0")
        page.locator("#approvals-history summary").click()
        expect(page.locator("#approvals-done li").filter(has_text="alice")).to_have_attribute(
            "data-status", "approved"
        )
        page.get_by_role("link", name=re.compile("SW4RM")).click()
        row = page.get_by_role("article", name="agent alice")
        expect(row).to_be_visible()
        expect(row.locator(".badge.state")).to_have_text("registered")
        expect(row.locator(".badge.harness")).to_have_text("○ no harness")
        # The external backend starts nothing: its lifecycle buttons say so instead.
        start = row.get_by_role("button", name="start alice", exact=True)
        expect(start).to_be_disabled()
        expect(start).to_have_attribute("title", re.compile("run its harness by hand"))
        still_same_page(page)

    await ui(approve)
    assert "alice" in hive.registry.live()

    # The external backend starts nothing: a harness connecting to the socket is "online".
    # A harness serves its web UI on its socket first; the dashboard links to it.
    ui_socket = socket.socket(socket.AF_UNIX)
    ui_socket.bind(str(hive.config.paths.ui_socket("alice")))
    harness = await connect_agent(hive.config.paths, "alice", role="harness")
    async with harness:

        def online(page: Page) -> None:
            row = page.get_by_role("article", name="agent alice")
            expect(row.locator(".badge.harness")).to_have_text("● connected")
            link = row.get_by_role("link", name="alice's own page")
            expect(link).to_have_attribute("href", "/agent/alice/")
            expect(link).to_have_attribute("target", "_blank")
            still_same_page(page)

        await ui(online)
        await harness.request({"cmd": "set_status", "text": "reading the codebase"})

        def status(page: Page) -> None:
            row = page.get_by_role("article", name="agent alice")
            expect(row.locator(".status")).to_have_text("reading the codebase")

        await ui(status)
    ui_socket.close()

    def offline(page: Page) -> None:
        row = page.get_by_role("article", name="agent alice")
        expect(row.locator(".badge.harness")).to_have_text("○ no harness")
        # The external backend starts nothing: its lifecycle buttons say so instead.
        start = row.get_by_role("button", name="start alice", exact=True)
        expect(start).to_be_disabled()
        expect(start).to_have_attribute("title", re.compile("run its harness by hand"))
        still_same_page(page)

    await ui(offline)


async def test_deny_with_a_note_reaches_the_manager(hive: Hive, ui: UI) -> None:
    def deny(page: Page) -> None:
        mark_page(page)
        page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
        request_spawn(page, "bob")
        card = page.locator("#approvals article").filter(has_text="bob")
        card.get_by_role("button", name=re.compile(r"^deny #\d+…$")).click()
        note = card.get_by_label("Note")
        expect(note).to_be_focused()
        note.fill("not now: <b>too many</b> agents")
        card.get_by_role("button", name="D3NY", exact=True).click()
        expect(card).to_be_hidden()
        page.locator("#approvals-history summary").click()
        done = page.locator("#approvals-done li").filter(has_text="bob")
        expect(done).to_have_attribute("data-status", "denied")
        expect(done).to_contain_text("— not now: <b>too many</b> agents")
        still_same_page(page)

    await ui(deny)
    assert "bob" not in hive.registry.live()
    messages = await hive.broker.recv("manager", limit=32)
    resolved = [
        json.loads(m.body.partition(" ")[2])
        for m in messages
        if m.from_ == "system" and m.body.startswith("approval_resolved ")
    ]
    assert resolved == [
        {
            "id": resolved[0]["id"],
            "agent": "bob",
            "kind": "spawn",
            "commit_ref": None,
            "status": "denied",
            "note": "not now: <b>too many</b> agents",
        }
    ]


async def test_destroy_revive_and_purge_with_typed_confirmation(hive: Hive, ui: UI) -> None:
    await hive.spawn("carol")

    def destroy(page: Page) -> None:
        row = page.get_by_role("article", name="agent carol")
        row.get_by_role("button", name="destroy carol").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("DESTR0Y carol?")
        dialog.get_by_role("button", name="cancel").click()  # nothing happens
        expect(dialog).to_be_hidden()
        expect(row).to_be_visible()
        row.get_by_role("button", name="destroy carol").click()
        dialog.get_by_role("button", name="DESTR0Y").click()
        expect(row).to_be_hidden()
        kept = page.get_by_role("article", name="kept state of carol")
        expect(kept).to_be_visible()
        kept.get_by_role("button", name="revive carol").click()
        expect(page.locator(".toast").filter(has_text="revive of carol asked")).to_be_visible()

    await ui(destroy)
    assert "carol" not in hive.registry.live()
    [revive] = await hive.approvals.list(pending_only=True)
    assert (revive.agent, revive.kind) == ("carol", "spawn")
    await hive.approvals.deny(revive.id, None)

    def purge(page: Page) -> None:
        kept = page.get_by_role("article", name="kept state of carol")
        kept.get_by_role("button", name="purge carol").click()
        dialog = page.get_by_role("dialog")
        ok = dialog.get_by_role("button", name="PURG3")
        expect(ok).to_be_disabled()
        dialog.get_by_label("Type carol to confirm").fill("caro")
        expect(ok).to_be_disabled()
        dialog.get_by_label("Type carol to confirm").fill("carol")
        ok.click()
        expect(kept).to_be_hidden()
        expect(page.locator("#kept-empty")).to_be_visible()

    await ui(purge)
    assert "carol" not in hive.registry.known()
