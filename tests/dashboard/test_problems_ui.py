"""The daemon's own problems (a part that failed, low space, a full disk) as a banner.

A question's deadline makes the questions watchdog run into a (deliberately broken)
resolver: the watchdog fails, is restarted with backoff, and the open page shows the
problem as it happens, through the event stream.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from hyperhive.questions import TTL_ANSWERER, QuestionBook
from hyperhive.supervisor import Hive
from tests.conftest import connect_agent

from .conftest import UI


async def test_a_failed_part_shows_as_a_banner(
    hive: Hive, ui: UI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def banner_hidden(page: Page) -> None:
        expect(page.get_by_role("alert", name="Daemon problems")).to_be_hidden()

    await ui(banner_hidden)

    real_resolve = QuestionBook.resolve

    async def resolve(
        self: QuestionBook, question_id: int, answer: str, answerer: str, *a: Any
    ) -> Any:
        if answerer == TTL_ANSWERER:
            raise RuntimeError("injected expiry bug")
        return await real_resolve(self, question_id, answer, answerer, *a)

    monkeypatch.setattr(QuestionBook, "resolve", resolve)
    await hive.spawn("alice")
    async with await connect_agent(hive.config.paths, "alice") as alice:
        asked = await alice.request({"cmd": "ask", "question": "soon?", "ttl_seconds": 1})
        assert asked["ok"], asked

    def banner_shown(page: Page) -> None:
        banner = page.get_by_role("alert", name="Daemon problems")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text(
            "the questions watchdog failed: RuntimeError: injected expiry bug"
        )

    await ui(banner_shown)
    assert any("questions watchdog" in p for p in hive.problems_now())
