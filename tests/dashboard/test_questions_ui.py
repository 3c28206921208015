"""Acceptance 2: questions answered in the browser reach the asker; deadlines tick and expire."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Page, expect

from hyperhive.supervisor import Hive

from .conftest import UI


async def answers_for(hive: Hive, agent: str) -> list[dict[str, object]]:
    """The ``question_answered`` system messages in ``agent``'s inbox (taking them)."""
    messages = await hive.broker.recv(agent, limit=32)
    found = []
    for m in messages:
        kind, _, payload = m.body.partition(" ")
        if m.from_ == "system" and kind == "question_answered":
            found.append(json.loads(payload))
    return found


async def test_answer_a_multi_choice_question(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    q = await hive.questions.ask(
        "alice", "Which checks?", ["lint", "types", "tests"], True, None, None
    )

    def answer(page: Page) -> None:
        page.get_by_role("link", name=re.compile("Y3R C4LL")).click()
        card = page.get_by_role("article", name=f"question #{q.id}")
        expect(card).to_contain_text("alice asks you")
        expect(card).to_contain_text("Which checks?")
        # multi: checkboxes, several may be picked
        expect(card.get_by_role("checkbox")).to_have_count(3)
        card.get_by_role("checkbox", name="lint").check()
        card.get_by_role("checkbox", name="tests").check()
        card.get_by_role("button", name="4NSW3R").click()
        expect(card.locator("output")).to_have_text("answered")
        # it moves to the answered history, with the answer
        page.locator("#questions-history summary").click()
        done = page.locator(f"#questions-done li[data-id='{q.id}']")
        expect(done).to_have_attribute("data-status", "answered")
        expect(done).to_contain_text("lint, tests (operator)")

    await ui(answer)
    [answered] = await answers_for(hive, "alice")
    assert answered == {
        "id": q.id,
        "question": "Which checks?",
        "answer": "lint, tests",
        "answerer": "operator",
    }


async def test_single_choice_plus_free_text_with_enter(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    q = await hive.questions.ask("alice", "Ship it?", ["yes", "no"], False, None, None)

    def answer(page: Page) -> None:
        page.goto(f"{ui.base}/#call")
        card = page.get_by_role("article", name=f"question #{q.id}")
        expect(card.get_by_role("radio")).to_have_count(2)
        card.get_by_role("radio", name="yes").check()
        card.get_by_role("radio", name="no").check()  # single: picking one drops the other
        expect(card.get_by_role("radio", name="yes")).not_to_be_checked()
        box = card.get_by_role("textbox", name="your answer")
        box.fill("after the release")
        box.press("Shift+Enter")  # a new line, not a submit
        box.press_sequentially("notes")
        expect(box).to_have_value("after the release\nnotes")
        box.press("Enter")
        expect(page.locator(f"#questions-done li[data-id='{q.id}']")).to_have_attribute(
            "data-status", "answered"
        )

    await ui(answer)
    [answered] = await answers_for(hive, "alice")
    assert answered["answer"] == "no, after the release\nnotes"


async def test_a_deadline_counts_down_then_flips_to_expired(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    q = await hive.questions.ask("alice", "Quick one?", ["a", "b"], False, 5, None)
    assert q.deadline_at is not None

    def countdown(page: Page) -> list[int]:
        page.goto(f"{ui.base}/#call")
        chip = page.get_by_role("article", name=f"question #{q.id}").locator(".chip")
        expect(chip).to_have_text(re.compile(r"^⏳ [1-5]s$"))
        seen = [int(chip.inner_text()[2:-1])]
        expect(chip).not_to_have_text(f"⏳ {seen[0]}s")  # it ticks
        seen.append(int(chip.inner_text()[2:-1]))
        return seen

    first, second = await ui(countdown)
    assert second < first

    # The daemon's watchdog expires it; the page hears it from the event stream.
    def expired(page: Page) -> None:
        card = page.get_by_role("article", name=f"question #{q.id}")
        expect(card).to_have_attribute("data-status", "expired")
        expect(card.locator(".chip")).to_have_text("⌛ expired")
        expect(card.get_by_role("button", name="4NSW3R")).to_be_hidden()
        expect(page.locator(f"#questions-done li[data-id='{q.id}']")).to_have_attribute(
            "data-status", "expired"
        )

    await ui(expired)
    [answered] = await answers_for(hive, "alice")
    assert answered["answer"] == "[expired]"


async def test_cancel_and_peer_override(hive: Hive, ui: UI) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    mine = await hive.questions.ask("alice", "Still needed?", [], False, None, None)
    peer = await hive.questions.ask("alice", "Which port?", ["80", "443"], False, None, "bob")

    def act(page: Page) -> None:
        page.goto(f"{ui.base}/#call")
        card = page.get_by_role("article", name=f"question #{mine.id}")
        card.get_by_role("button", name=f"cancel question #{mine.id}").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Still needed?")
        dialog.get_by_role("button", name="C4NC3L QU35T10N").click()
        expect(card).to_have_attribute("data-status", "cancelled")

        other = page.get_by_role("article", name=f"question #{peer.id}")
        expect(other).to_contain_text("alice asks bob")
        expect(other.get_by_role("radio")).to_have_count(0)  # hidden until overridden
        other.get_by_role("button", name=f"answer #{peer.id} instead of bob").click()
        other.get_by_role("radio", name="443").check()
        other.get_by_role("button", name="4NSW3R").click()
        expect(other).to_have_attribute("data-status", "answered")

    await ui(act)
    got = {a["id"]: a for a in await answers_for(hive, "alice")}
    assert got[mine.id]["answer"] == "[cancelled]"
    assert got[peer.id]["answer"] == "443" and got[peer.id]["answerer"] == "operator"
