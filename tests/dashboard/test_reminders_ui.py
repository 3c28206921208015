"""The dashboard's reminders list: pending ones live, a failed one with its error, retry and
cancel from the browser."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from hyperhive.client import Client
from hyperhive.config import MAX_REMINDER_ATTEMPTS, REMINDER_SPILL_CHARS, Config
from hyperhive.hive import Hive
from hyperhive.runtime import Backoff
from tests.conftest import make_paths, wait_until

from .conftest import UI


@pytest.fixture
def hive_config(short_tmp: Path) -> Config:
    return Config(
        paths=make_paths(short_tmp),
        backend="external",
        dashboard_bind=("127.0.0.1:0",),
        # Failed deliveries are retried within a fraction of a second here.
        reminder_retry_backoff=Backoff(first=0.01, limit=0.05),
    )


async def test_failed_reminder_is_retried_and_a_pending_one_cancelled(
    hive: Hive, ui: UI, short_tmp: Path
) -> None:
    await hive.spawn("alice")
    state = hive.config.paths.agent_state_dir("alice")
    outside = short_tmp / "outside"
    outside.mkdir()
    # The agent planted a symlink where a long body is written: every delivery fails.
    os.symlink(outside, state / "reminders")
    async with await Client.connect(hive.config.paths.agent_socket("alice")) as alice:
        long_one = await alice.request(
            {"cmd": "remind", "body": "L" * (REMINDER_SPILL_CHARS + 1), "in_seconds": 0}
        )
        later = await alice.request({"cmd": "remind", "body": "stand up", "in_seconds": 3600})
    failing, pending = long_one["reminder"]["id"], later["reminder"]["id"]

    async def given_up() -> bool:
        return (await hive.reminders.get(failing)).failed

    await wait_until(given_up)

    def look_and_cancel(page: Page) -> None:
        chip = page.locator("article[data-name='alice'] .badge.reminders")
        expect(chip).to_have_text("⏰ 2")
        page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
        expect(page.locator("#reminders-count")).to_have_text("2")
        expect(page.locator("#reminders-failed")).to_have_text("⚠ 1 failed")
        bad = page.locator(f"#reminders li[data-id='{failing}']")
        expect(bad).to_have_class(re.compile(r"\bfailed\b"))
        expect(bad).to_contain_text(f"failed after {MAX_REMINDER_ATTEMPTS} attempts")
        good = page.locator(f"#reminders li[data-id='{pending}']")
        expect(good).to_contain_text("stand up")
        expect(good.get_by_role("button", name="R3TRY")).to_be_hidden()
        good.get_by_role("button", name="C4NC3L").click()
        expect(good).to_have_count(0)
        expect(page.locator("#reminders-count")).to_have_text("1")
        expect(chip).to_have_text("⏰ 1")  # from the event stream, no reload

    await ui(look_and_cancel)
    assert [r.id for r in await hive.reminders.list()] == [failing]
    # The cause is gone (the symlink removed); the operator retries from the browser.
    (state / "reminders").unlink()

    def retry(page: Page) -> None:
        bad = page.locator(f"#reminders li[data-id='{failing}']")
        bad.get_by_role("button", name="R3TRY").click()
        expect(bad).to_have_count(0)
        expect(page.locator("#reminders-empty")).to_be_visible()
        expect(page.locator("#reminders-failed")).to_be_hidden()
        chip = page.locator("article[data-name='alice'] .badge.reminders")
        page.get_by_role("link", name=re.compile("SW4RM")).click()
        expect(chip).to_be_hidden()

    await ui(retry)
    delivered = await hive.reminders.get(failing)
    assert delivered.sent_at is not None
    [message] = await hive.broker.recv("alice")
    assert message.from_ == "reminder" and f"reminder-{failing}.txt" in message.body
    assert list(outside.iterdir()) == []
