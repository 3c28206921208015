"""Browser notifications: opt-in, one per new approval / question / operator message, mute.

The page's ``Notification`` is swapped for a recorder before the page's scripts run (the
real one shows nothing in a headless browser; the granted permission lasts the tab's
session, as a real one would), and the page is made to look unfocused.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from hyperhive.supervisor import Hive

from .conftest import UI

RECORDER = """
window.__notes = [];
window.Notification = class {
  static permission = sessionStorage.getItem('permission') || 'default';
  static requestPermission() {
    sessionStorage.setItem('permission', this.permission = 'granted');
    return Promise.resolve('granted');
  }
  constructor(title, { body, tag }) { window.__notes.push({ title, body, tag }); }
  close() {}
};
document.hasFocus = () => false;
"""


def notes(page: Page) -> list[dict[str, str]]:
    result: list[dict[str, str]] = page.evaluate("window.__notes")
    return result


async def test_notifications_opt_in_fire_and_mute(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    await hive.broker.send("alice", "operator", "old news")  # before: no notification

    def opt_in(page: Page) -> None:
        page.add_init_script(RECORDER)
        page.reload()
        expect(page.locator("#conn")).to_have_text("● live")
        button = page.locator("#notify")
        expect(button).to_have_text("🔔 enable notifications")
        expect(button).to_have_attribute("aria-pressed", "false")
        button.click()
        expect(button).to_have_text("🔕 mute")
        expect(button).to_have_attribute("aria-pressed", "true")
        assert notes(page) == []

    await ui(opt_in)
    approval = await hive.request_spawn("zed", "a helper", "manager")
    question = await hive.questions.ask("alice", "Deploy now?", ["yes"], False, None, None)
    message = (await hive.broker.send("alice", "operator", "build is green"))[0]
    await hive.broker.send("alice", "manager", "not for the operator")

    def fired(page: Page) -> None:
        expect(page.locator("#inbox li")).to_have_count(2)
        page.wait_for_function("window.__notes.length >= 3")
        assert notes(page) == [
            {"title": f"◆ approval #{approval.id}", "body": "spawn zed: a helper",
             "tag": f"approval-{approval.id}"},
            {"title": "? alice asks", "body": "Deploy now?", "tag": f"question-{question.id}"},
            {"title": "✉ from alice", "body": "build is green", "tag": f"message-{message.id}"},
        ]  # fmt: skip
        page.locator("#notify").click()
        expect(page.locator("#notify")).to_have_text("🔔 unmute")

    await ui(fired)
    await hive.broker.send("alice", "operator", "muted one")

    def muted(page: Page) -> None:
        expect(page.locator("#inbox li")).to_have_count(3)
        assert len(notes(page)) == 3
        page.reload()  # the choice sticks
        expect(page.locator("#notify")).to_have_text(re.compile("unmute"))

    await ui(muted)
