"""The agents list with a backend that runs things: lifecycle buttons, logs, status badges,
a crash loop — all from real processes (the process backend, a stand-in payload)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from hyperhive.config import Config
from hyperhive.runtime import Backoff
from hyperhive.supervisor import Hive
from tests.conftest import make_paths

from .conftest import UI

PAYLOAD = """
echo "payload up: $HYPERHIVE_AGENT"
if [ "$HYPERHIVE_AGENT" = bob ]; then echo "bob fails" >&2; exit 3; fi
exec sleep 300
"""


@pytest.fixture
def hive_config(short_tmp: Path) -> Config:
    return Config(
        paths=make_paths(short_tmp),
        backend="process",
        synchronous="NORMAL",
        stop_agents_on_exit=True,
        dashboard_bind=("127.0.0.1:0",),
        harness_command=("sh", "-c", PAYLOAD),
        # The crash-loop rule counts crashes, not seconds: short delays show it at once.
        restart_backoff=Backoff(first=0.3, limit=1.0),
    )


async def test_stop_start_and_logs_from_the_browser(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")

    def lifecycle(page: Page) -> None:
        row = page.get_by_role("article", name="agent alice")
        expect(row.locator(".badge.state")).to_have_text("running")
        expect(row.locator(".backend")).to_have_text("process")
        expect(row.get_by_text("no isolation")).to_be_visible()
        expect(row.locator(".pid")).to_have_text(f"pid {hive.registry.get('alice').pid}")

        row.get_by_role("button", name="logs of alice").click()
        drawer = page.get_by_role("dialog", name="L0GS · alice")
        expect(drawer.locator("pre")).to_contain_text("payload up: alice")
        page.keyboard.press("Escape")
        expect(drawer).to_be_hidden()

        row.get_by_role("button", name="kill alice").click()
        expect(row.locator(".badge.state")).to_have_text("stopped")
        expect(row.locator(".pid")).to_have_text("")
        row.get_by_role("button", name="start alice", exact=True).click()
        expect(row.locator(".badge.state")).to_have_text("running")
        expect(row.locator(".pid")).not_to_have_text("")

    await ui(lifecycle)
    record = hive.registry.get("alice")
    assert record.state == "running" and record.pid is not None


async def test_status_text_badges(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    cases = [
        ("needs login: open this agent's UI to log in", True, False),
        ("⊘ rate limited; retrying at 12:00:00", False, True),
        ("reading the login module", False, False),
    ]
    for text, login, rate in cases:
        await hive.registry.set_status_text("alice", text)

        def badges(page: Page, text: str = text, login: bool = login, rate: bool = rate) -> None:
            row = page.get_by_role("article", name="agent alice")
            expect(row.locator(".status")).to_have_text(text)
            expect(row.get_by_text("needs login", exact=True)).to_be_visible(visible=login)
            expect(row.get_by_text("⊘ rate limited", exact=True)).to_be_visible(visible=rate)

        await ui(badges)


async def test_the_compacting_badge_follows_the_status_text(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    # What the harness puts there while it compacts claude's session (loop.COMPACTING_STATUS).
    for text, compacting in [("⟳ compacting claude's session", True), ("back to work", False)]:
        await hive.registry.set_status_text("alice", text)

        def badge(page: Page, text: str = text, compacting: bool = compacting) -> None:
            row = page.get_by_role("article", name="agent alice")
            expect(row.locator(".status")).to_have_text(text)
            expect(row.locator(".badge.compacting")).to_be_visible(visible=compacting)

        await ui(badge)


async def test_a_crash_loop_shows_live(hive: Hive, ui: UI) -> None:
    await hive.spawn("bob")  # its payload exits at once: 5 crashes in 15 min make a loop

    def looping(page: Page) -> None:
        row = page.get_by_role("article", name="agent bob")
        expect(row.locator(".badge.state")).to_have_text("crashed")
        expect(row.get_by_text("CR4SH L00P")).to_be_visible(timeout=40_000)
        expect(row.locator(".badge.state")).to_have_text("crash loop")

    await ui(looping)
    assert hive.registry.get("bob").state == "crash_loop"
