"""Acceptance 4: the composer sends, the flow shows sent then delivered, live.

Also: completion of names on ``@``, the sticky recipient across a reload, and that live
updates never disturb a form the operator is typing in.
"""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from hyperhive.supervisor import Hive

from .conftest import UI


def flow_line(page: Page, text: str) -> Locator:
    return page.locator("#flow li").filter(has_text=text)


async def test_send_from_the_composer_then_delivered(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")

    def send(page: Page) -> None:
        page.get_by_role("link", name=re.compile("FL0W")).click()
        box = page.get_by_role("combobox")
        box.fill("@alice hello")
        box.press("Enter")
        expect(box).to_have_value("")
        expect(page.locator("#compose-prompt")).to_have_text("@alice>")
        line = page.locator("#flow li").filter(has_text="hello")
        expect(line).to_have_count(1)
        expect(line).to_have_attribute("data-state", "sent")
        expect(line.locator(".from")).to_have_text("operator")
        expect(line.locator(".to")).to_have_text("alice")
        expect(line.locator(".mark")).to_have_text("· sent")
        page.get_by_role("link", name=re.compile("SW4RM")).click()
        unread = page.get_by_role("article", name="agent alice").locator(".badge.unread")
        expect(unread).to_have_text("✉ 1")

    await ui(send)
    [message] = await hive.broker.recv("alice")
    assert (message.from_, message.to, message.body) == ("operator", "alice", "hello")

    def delivered(page: Page) -> None:
        line = page.locator("#flow li").filter(has_text="hello")
        expect(line).to_have_attribute("data-state", "delivered")
        expect(line.locator(".mark")).to_have_text("✓ delivered")
        page.get_by_role("link", name=re.compile("SW4RM")).click()
        expect(
            page.get_by_role("article", name="agent alice").locator(".badge.unread")
        ).to_be_hidden()
        page.get_by_role("link", name=re.compile("FL0W")).click()

    await ui(delivered)

    # Traffic between agents shows up too, as it happens.
    await hive.spawn("bob")
    await hive.broker.send("alice", "bob", "ping from alice")

    def agent_traffic(page: Page) -> None:
        line = page.locator("#flow li").filter(has_text="ping from alice")
        expect(line.locator(".from")).to_have_text("alice")
        expect(line.locator(".to")).to_have_text("bob")
        expect(line).to_have_attribute("data-state", "sent")

    await ui(agent_traffic)


async def test_completion_and_sticky_recipient(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    await hive.spawn("albert")
    await hive.spawn("bob")

    def compose(page: Page) -> None:
        page.get_by_role("link", name=re.compile("FL0W")).click()
        box = page.get_by_role("combobox")
        box.press_sequentially("@al")
        options = page.get_by_role("listbox").get_by_role("option")
        expect(options).to_have_text(["albert", "alice"])
        expect(box).to_have_attribute("aria-expanded", "true")
        box.press("ArrowDown")
        expect(options.nth(1)).to_have_attribute("aria-selected", "true")
        box.press("Tab")
        expect(box).to_have_value("@alice ")
        expect(page.get_by_role("listbox")).to_be_hidden()
        box.press_sequentially("first")
        box.press("Enter")
        expect(flow_line(page, "first")).to_have_count(1)
        # No @: the sticky recipient, which survives a reload (localStorage).
        page.reload()
        page.get_by_role("link", name=re.compile("FL0W")).click()
        expect(page.locator("#compose-prompt")).to_have_text("@alice>")
        page.get_by_role("combobox").fill("second")
        page.get_by_role("combobox").press("Enter")
        expect(flow_line(page, "second").locator(".to")).to_have_text("alice")
        # An unknown recipient is refused with the daemon's reason, and the text is kept.
        page.get_by_role("combobox").fill("@nobody hi")
        page.get_by_role("combobox").press("Enter")
        expect(page.locator("#composer output")).to_have_class(re.compile("error"))
        expect(page.get_by_role("combobox")).to_have_value("@nobody hi")

    await ui(compose)
    bodies = [m.body for m in await hive.broker.recv("alice", limit=10)]
    assert bodies == ["first", "second"]


async def test_live_updates_keep_typed_text_and_focus(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    q = await hive.questions.ask("alice", "Name?", [], False, None, None)

    def type_half(page: Page) -> None:
        page.goto(f"{ui.base}/#call")
        box = page.get_by_role("article", name=f"question #{q.id}").get_by_role(
            "textbox", name="your answer"
        )
        box.fill("half-typed")
        page.locator("#approvals-history summary").click()  # an open panel
        box.focus()

    await ui(type_half)
    # A burst of changes: another question, an approval, messages, a status change.
    other = await hive.questions.ask("alice", "Other?", [], False, None, None)
    await hive.request_spawn("zed", None, "manager")
    for i in range(5):
        await hive.broker.send("alice", "operator", f"note {i}")
    await hive.registry.set_status_text("alice", "busy")

    def unchanged(page: Page) -> None:
        expect(page.get_by_role("article", name=f"question #{other.id}")).to_be_visible()
        expect(page.locator("#inbox li")).to_have_count(5)
        expect(page.locator("#approvals article")).to_have_count(1)
        box = page.get_by_role("article", name=f"question #{q.id}").get_by_role(
            "textbox", name="your answer"
        )
        expect(box).to_have_value("half-typed")
        expect(box).to_be_focused()
        expect(page.locator("#approvals-history")).to_have_attribute("open", "")
        # Marking the inbox read flips the rows in place.
        page.get_by_role("button", name="✓ M4RK R34D").click()
        expect(page.locator("#inbox li.unread")).to_have_count(0)
        expect(page.locator("#inbox-count")).to_have_text("0")

    await ui(unchanged)
