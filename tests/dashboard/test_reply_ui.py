"""Replying to a message from the dashboard: the reply carries ``in_reply_to``.

The agent acts over its own socket (send, then recv); the operator acts in the browser,
from the inbox (an inline form) and from the flow (the composer).
"""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, expect

from hyperhive.supervisor import Hive
from tests.conftest import connect_agent

from .conftest import UI


def sent_id(reply: dict[str, Any]) -> int:
    assert reply["ok"], reply
    message_id: int = reply["id"]
    return message_id


async def test_reply_from_the_inbox_carries_in_reply_to(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    async with await connect_agent(hive.config.paths, "alice") as alice:
        first = sent_id(
            await alice.request({"cmd": "send", "to": "operator", "body": "build failed, retry?"})
        )
        sent_id(await alice.request({"cmd": "send", "to": "operator", "body": "unrelated note"}))

        def reply(page: Page) -> None:
            page.get_by_role("link", name=re.compile("C4LL")).click()
            row = page.locator("#inbox li").filter(has_text="build failed, retry?")
            expect(row.locator(".id")).to_have_text(f"#{first}")
            button = row.get_by_role("button", name=f"reply to message #{first} from alice")
            expect(button).to_have_attribute("aria-expanded", "false")
            button.click()
            expect(button).to_have_attribute("aria-expanded", "true")
            form = page.get_by_role("form", name=f"reply to message #{first}")
            expect(form).to_be_visible()
            box = form.get_by_role("textbox", name="reply to alice")
            expect(box).to_be_focused()
            # Only the message replied to opens a form.
            expect(page.locator("#inbox .reply-form:visible")).to_have_count(1)
            box.press_sequentially("yes, retry")
            box.press("Enter")
            expect(form).to_be_hidden()
            expect(page.locator("#toasts")).to_contain_text("↩ replied to @alice")
            expect(button).to_have_attribute("aria-expanded", "false")
            # The flow lists the reply with its relation.
            page.get_by_role("link", name=re.compile("FL0W")).click()
            line = page.locator("#flow li").filter(has_text="yes, retry")
            expect(line.locator(".from")).to_have_text("operator")
            expect(line.locator(".to")).to_have_text("alice")
            expect(line.locator(".reply-to")).to_have_text(f"↩ #{first}")

        await ui(reply)
        got = await alice.request({"cmd": "recv", "max": 10})
        assert got["ok"], got
        assert [(m["from"], m["body"], m["in_reply_to"]) for m in got["messages"]] == [
            ("operator", "yes, retry", first)
        ]

        # The relation survives a reload (it comes from the snapshot, not only the event).
        def reloaded(page: Page) -> None:
            page.reload()
            expect(page.locator("#conn")).to_have_text("● live")
            page.get_by_role("link", name=re.compile("FL0W")).click()
            line = page.locator("#flow li").filter(has_text="yes, retry")
            expect(line.locator(".reply-to")).to_have_text(f"↩ #{first}")
            # A message that answers nothing carries no relation.
            expect(page.locator("#flow li").filter(has_text="unrelated note")).to_have_count(1)
            expect(
                page.locator("#flow li").filter(has_text="unrelated note").locator(".reply-to")
            ).to_have_count(0)

        await ui(reloaded)


async def test_reply_from_the_flow_uses_the_composer(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with await connect_agent(hive.config.paths, "alice") as alice:
        asked = sent_id(
            await alice.request({"cmd": "send", "to": "operator", "body": "which branch?"})
        )
        # Traffic between agents has no reply button: the operator is not its recipient.
        sent_id(await alice.request({"cmd": "send", "to": "bob", "body": "fyi bob"}))

        def reply(page: Page) -> None:
            page.get_by_role("link", name=re.compile("FL0W")).click()
            expect(
                page.locator("#flow li").filter(has_text="fyi bob").get_by_role("button")
            ).to_have_count(0)
            page.get_by_role("button", name=f"reply to message #{asked} from alice").click()
            chip = page.locator("#compose-reply")
            expect(chip).to_be_visible()
            expect(chip).to_contain_text(f"↩ replying to #{asked} from @alice")
            box = page.get_by_role("combobox")
            expect(box).to_have_value("@alice ")
            expect(box).to_be_focused()
            box.press("End")
            box.press_sequentially("main")
            box.press("Enter")
            expect(box).to_have_value("")
            expect(chip).to_be_hidden()
            line = page.locator("#flow li").filter(has_text="main").filter(has_text="operator")
            expect(line.locator(".reply-to")).to_have_text(f"↩ #{asked}")
            # The next message is a plain one again.
            box.fill("and thanks")
            box.press("Enter")
            expect(box).to_have_value("")
            thanks = page.locator("#flow li").filter(has_text="and thanks")
            expect(thanks.locator(".to")).to_have_text("alice")
            expect(thanks.locator(".reply-to")).to_have_count(0)

        await ui(reply)
        got = await alice.request({"cmd": "recv", "max": 10})
        assert got["ok"], got
        assert [(m["from"], m["body"], m["in_reply_to"]) for m in got["messages"]] == [
            ("operator", "main", asked),
            ("operator", "and thanks", None),
        ]


async def test_cancelled_reply_sends_a_plain_message(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    async with await connect_agent(hive.config.paths, "alice") as alice:
        asked = sent_id(await alice.request({"cmd": "send", "to": "operator", "body": "ping?"}))

        def cancel(page: Page) -> None:
            page.get_by_role("link", name=re.compile("FL0W")).click()
            page.get_by_role("button", name=f"reply to message #{asked} from alice").click()
            page.get_by_role("button", name="cancel the reply").click()
            expect(page.locator("#compose-reply")).to_be_hidden()
            box = page.get_by_role("combobox")
            box.fill("@alice pong")
            box.press("Enter")
            expect(box).to_have_value("")

        await ui(cancel)
        got = await alice.request({"cmd": "recv", "max": 10})
        assert [(m["body"], m["in_reply_to"]) for m in got["messages"]] == [("pong", None)]
