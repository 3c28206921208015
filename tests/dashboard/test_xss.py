"""Acceptance 5: untrusted strings render as text, everywhere they are shown."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

import hyperhive.web
from hyperhive.supervisor import Hive
from tests.conftest import connect_agent

from .conftest import UI

PAYLOAD = "<img src=x onerror=alert(1)>"


async def test_markup_in_untrusted_strings_stays_text(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    async with await connect_agent(hive.config.paths, "alice", role="harness") as alice:
        await alice.request({"cmd": "set_status", "text": f"status {PAYLOAD}"})
        await alice.request({"cmd": "send", "to": "operator", "body": f"body {PAYLOAD}"})
        await alice.request(
            {"cmd": "ask", "question": f"question {PAYLOAD}", "options": [f"option {PAYLOAD}"]}
        )
    await hive.request_spawn("bob", f"description {PAYLOAD}", "manager")

    def check(page: Page) -> None:
        row = page.get_by_role("article", name="agent alice")
        expect(row.locator(".status")).to_have_text(f"status {PAYLOAD}")
        page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
        expect(page.locator("#inbox .body")).to_have_text(f"body {PAYLOAD}")
        expect(page.locator("#questions .qtext")).to_have_text(f"question {PAYLOAD}")
        expect(page.get_by_role("radio", name=f"option {PAYLOAD}")).to_be_visible()
        expect(page.locator("#approvals .desc")).to_have_text(f"description {PAYLOAD}")
        page.get_by_role("link", name=re.compile("FL0W")).click()
        expect(page.locator("#flow .body").filter(has_text="body <img")).to_have_text(
            f"body {PAYLOAD}"
        )
        # Visible as text, never parsed: no element was made from it, no script ran.
        assert page.locator("img").count() == 0
        assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0

    await ui(check)
    # (the ``ui`` fixture also fails the test on any alert dialog or script error)
    assert ui.problems == []


def test_the_page_never_parses_strings_as_html() -> None:
    """A guard on the source: no API that turns a string into markup or code."""
    static = Path(hyperhive.web.__file__).parent / "static"
    scripts = sorted(static.glob("*.js"))
    assert scripts
    for script in scripts:
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{script.name} uses {sink}"
    assert "<script>" not in (static / "index.html").read_text()  # no inline script
