"""Pause and resume from the dashboard: the button, the reason shown, a pause made elsewhere
(a budget) appearing live, and resume."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from hyperhive.supervisor import Hive

from .conftest import UI


async def test_pause_with_a_reason_and_resume(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")

    def pause(page: Page) -> None:
        row = page.get_by_role("article", name="agent alice")
        expect(row.get_by_text("⏸ P4US3D")).to_be_hidden()
        row.get_by_role("button", name="pause alice").click()
        dialog = page.get_by_role("dialog", name="P4US3 alice?")
        dialog.get_by_label("Reason (shown wherever it is listed)").fill("waiting for review")
        dialog.get_by_role("button", name="P4US3").click()
        expect(row.get_by_text("⏸ P4US3D")).to_be_visible()
        expect(row.locator(".paused-reason")).to_contain_text("paused by operator")
        expect(row.locator(".paused-reason")).to_contain_text(": waiting for review")
        expect(row.get_by_role("button", name="resume alice")).to_have_text("R3SUM3")

    await ui(pause)
    record = hive.registry.get("alice")
    assert (record.paused_reason, record.paused_by) == ("waiting for review", "operator")

    def resume(page: Page) -> None:
        row = page.get_by_role("article", name="agent alice")
        row.get_by_role("button", name="resume alice").click()
        expect(row.get_by_text("⏸ P4US3D")).to_be_hidden()
        expect(row.locator(".paused-reason")).to_be_hidden()
        expect(row.get_by_role("button", name="pause alice")).to_have_text("P4US3")

    await ui(resume)
    assert hive.registry.get("alice").paused_at is None


async def test_cancelled_pause_does_nothing(hive: Hive, ui: UI) -> None:
    await hive.spawn("bob")

    def cancel(page: Page) -> None:
        row = page.get_by_role("article", name="agent bob")
        row.get_by_role("button", name="pause bob").click()
        dialog = page.get_by_role("dialog", name="P4US3 bob?")
        dialog.get_by_role("button", name="cancel").click()
        expect(dialog).to_be_hidden()
        expect(row.get_by_text("⏸ P4US3D")).to_be_hidden()

    await ui(cancel)
    assert hive.registry.get("bob").paused_at is None


async def test_a_pause_by_a_budget_shows_live_with_its_reason(hive: Hive, ui: UI) -> None:
    await hive.spawn("carol")

    def shown(page: Page) -> None:
        expect(page.get_by_role("article", name="agent carol")).to_be_visible()

    await ui(shown)
    await hive.pause("carol", "daily budget of $5 reached", "budget")

    def paused(page: Page) -> None:
        row = page.get_by_role("article", name="agent carol")
        expect(row.get_by_text("⏸ P4US3D")).to_be_visible()
        expect(row.locator(".paused-reason")).to_contain_text("paused by budget")
        expect(row.locator(".paused-reason")).to_contain_text(": daily budget of $5 reached")

    await ui(paused)
    # A fresh page (a snapshot, not the event) shows it too.

    def reloaded(page: Page) -> None:
        page.reload()
        row = page.get_by_role("article", name="agent carol")
        expect(row.locator(".paused-reason")).to_contain_text(": daily budget of $5 reached")

    await ui(reloaded)
