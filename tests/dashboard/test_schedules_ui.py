"""The dashboard's schedules tab: create, list (live), edit, fire now, cancel."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from hyperhive.supervisor import Hive
from tests.conftest import connect_agent

from .conftest import UI


async def test_schedules_tab_create_fire_edit_cancel(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")

    def create(page: Page) -> None:
        page.get_by_role("link", name=re.compile("SCH3DUL3S")).click()
        expect(page.locator("#schedules-empty")).to_be_visible()
        form = page.locator("#schedule-form")
        form.get_by_label("Targets").fill("alice")
        form.get_by_label("Message").fill("stand-up time")
        form.get_by_label("First fire").fill("2099-01-01T09:00")
        form.get_by_label("Every (seconds)").fill("86400")
        form.get_by_label("Description").fill("daily")
        form.get_by_role("button", name="◆ CR34T3").click()
        expect(form.locator("output")).to_have_text(re.compile(r"schedule #\d+ created"))

    await ui(create)
    [s] = await hive.schedules.list()
    assert (s.owner, s.targets, s.interval_seconds, s.body) == (
        "operator",
        ["alice"],
        86400,
        "stand-up time",
    )

    def listed_then_fire(page: Page) -> None:
        row = page.get_by_role("article", name=f"schedule #{s.id}")
        expect(row).to_contain_text("every 86400s → alice (by operator)")
        expect(row).to_contain_text("daily: stand-up time")
        expect(page.locator("#pill-schedules")).to_have_text("1")
        row.get_by_role("button", name=f"fire schedule {s.id} now").click()
        # Live, from the schedule_changed event.
        expect(row).to_contain_text("fired 1 · skipped 0")

    await ui(listed_then_fire)
    alice = await connect_agent(hive.config.paths, "alice")
    try:
        got = await alice.request({"cmd": "recv", "max": 8})
    finally:
        await alice.aclose()
    assert [(m["from"], m["body"]) for m in got["messages"]] == [("scheduler", "stand-up time")]

    def edit_then_cancel(page: Page) -> None:
        row = page.get_by_role("article", name=f"schedule #{s.id}")
        row.get_by_role("button", name=f"edit schedule {s.id}").click()
        row.get_by_label(f"new interval of schedule {s.id}").fill("3600")
        row.get_by_role("button", name="S4V3").click()
        expect(row).to_contain_text("every 3600s → alice")
        row.get_by_role("button", name=f"cancel schedule {s.id}").click()
        page.locator("#confirm-ok").click()
        expect(row).to_be_hidden()
        expect(page.locator("#schedules-empty")).to_be_visible()
        expect(page.locator("#pill-schedules")).to_have_text("0")

    await ui(edit_then_cancel)
    info = await hive.schedules.get(s.id)
    assert info.interval_seconds == 3600 and info.ended_at is not None
    assert ui.problems == []


async def test_an_agents_schedule_shows_up_live_once_approved(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")

    def on_tab(page: Page) -> None:
        page.get_by_role("link", name=re.compile("SCH3DUL3S")).click()
        expect(page.locator("#schedules-empty")).to_be_visible()

    await ui(on_tab)
    alice = await connect_agent(hive.config.paths, "alice")
    try:
        reply = await alice.request(
            {
                "cmd": "request_schedule",
                "targets": ["alice"],
                "body": "nightly build",
                "first_at": 4102444800,
                "cron": "0 2 * * *",
            }
        )
    finally:
        await alice.aclose()
    aid = reply["approval"]["id"]

    def approve_it(page: Page) -> None:
        page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
        card = page.locator("#approvals article").filter(has_text="nightly build")
        expect(card).to_contain_text("schedule")
        card.get_by_role("button", name=re.compile(f"^approve #{aid}")).click()
        expect(card).to_be_hidden()
        page.get_by_role("link", name=re.compile("SCH3DUL3S")).click()
        row = page.locator("#schedules article").filter(has_text="nightly build")
        expect(row).to_contain_text("cron 0 2 * * *")
        expect(row).to_contain_text("(by alice)")

    await ui(approve_it)
    assert ui.problems == []
