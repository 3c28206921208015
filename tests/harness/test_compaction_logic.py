"""Compaction in the turn loop, fast: the real loop against a real daemon and the scripted
fake ``claude`` (tests/payloads/fake_claude.py). The real CLI's side of it (what ``/compact``
sends to the API) is in test_compaction.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hyperhive.supervisor import Hive

from .fixtures import eventually, inbox_of, wait_acked
from .test_loop_logic import PREFACE, continued, prompt_of, turn_loop

CHECKPOINT = "Your conversation is about to be compacted"


def notes(rig: Any) -> list[str]:
    return [n["text"] for n in rig.of_kind("note")]


async def test_past_the_watermark_a_checkpoint_turn_and_a_compaction_follow_the_turn(
    hive: Hive, short_tmp: Path
) -> None:
    steps = [
        {"input_tokens": 160_000},
        {"input_tokens": 161_000, "text": "notes written"},
        {"post_tokens": 3000},
    ]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("a big job")
        await wait_acked(rig.socket, sent)
        await eventually(
            lambda: any("session compacted" in n for n in notes(rig)), what="the compaction"
        )
        turn, checkpoint, compaction = rig.calls()
        assert "a big job" in prompt_of(turn)
        assert continued(checkpoint) and CHECKPOINT in prompt_of(checkpoint)
        assert str(rig.cfg.state_dir) in prompt_of(checkpoint)
        assert continued(compaction) and prompt_of(compaction) == "/compact"
        # One turn on the message; the checkpoint and the compaction are the harness's own.
        assert [e["id"] for e in rig.of_kind("turn_start")] == [sent]
        assert [e["outcome"] for e in rig.of_kind("turn_end")] == ["ok"]
        states = [p["state"] for p in rig.of_kind("turn_state_changed")]
        assert states == ["thinking", "idle", "thinking", "idle", "compacting", "idle"]
        # The ctx badge: after the turn, after the checkpoint, what the compaction left.
        ctx = [p["ctx"] for p in rig.of_kind("token_usage_changed")]
        assert ctx == [160_020, 161_020, 3000] and rig.view.ctx == 3000
        assert "claude's session compacted: context 161,020 → 3,000 tokens" in notes(rig)
        # Every run gets the settings that leave compaction to the harness.
        argv = turn["argv"]
        settings = json.loads(Path(argv[argv.index("--settings") + 1]).read_text())
        assert settings["autoCompactEnabled"] is False

        # Below the watermark nothing more happens.
        nxt = await rig.send("small")
        await wait_acked(rig.socket, nxt)
        assert len(rig.calls()) == 4


async def test_a_watermark_of_zero_never_compacts(hive: Hive, short_tmp: Path) -> None:
    env = {"HYPERHIVE_COMPACT_AT_PERCENT": "0"}
    steps = [{"input_tokens": 199_000}, {"input_tokens": 199_000}]
    async with turn_loop(hive, short_tmp, steps, **env) as rig:
        sent = await rig.send("a big job")
        await wait_acked(rig.socket, sent)
        second = await rig.send("next")
        await wait_acked(rig.socket, second)
        assert [prompt_of(c) != "/compact" for c in rig.calls()] == [True, True]
        assert rig.view.ctx == 199_020


async def test_a_too_long_turn_is_compacted_and_retried_and_answered_once(
    hive: Hive, short_tmp: Path
) -> None:
    steps = [{"result": "too_long"}, {"post_tokens": 1200}, {"text": "answered"}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("a job")
        await wait_acked(rig.socket, sent)
        ends = rig.of_kind("turn_end")
        assert [(e["id"], e["outcome"]) for e in ends] == [(sent, "too_long"), (sent, "ok")]
        assert "compacting claude's session, then retrying" in ends[0]["note"]
        _first, compaction, retry = rig.calls()
        assert prompt_of(compaction) == "/compact" and continued(compaction)
        # The retry continues the compacted session, with no new-session preface.
        assert continued(retry) and PREFACE not in prompt_of(retry)
        assert f"New message #{sent}" in prompt_of(retry)
        assert "compacting" in [p["state"] for p in rig.of_kind("turn_state_changed")]
        assert not (rig.cfg.state_dir / "hyperhive-new-session.json").exists()


async def test_still_too_long_after_the_compaction_retries_in_a_new_session(
    hive: Hive, short_tmp: Path
) -> None:
    steps = [{"result": "too_long"}, {}, {"result": "too_long"}, {"text": "answered"}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("a job")
        await wait_acked(rig.socket, sent)
        ends = rig.of_kind("turn_end")
        assert [e["outcome"] for e in ends] == ["too_long", "too_long", "ok"]
        assert "retrying in a new session" in ends[1]["note"]
        _first, compaction, again, fresh = rig.calls()
        assert prompt_of(compaction) == "/compact"
        assert continued(again) and not continued(fresh)
        assert PREFACE in prompt_of(fresh) and "new attempt at it" in prompt_of(fresh)
        # Answered once, nothing reported: the message was not given up.
        manager = hive.config.paths.agent_socket("manager")
        assert not [m for m in await inbox_of(manager) if m.body.startswith("turn_failed:")]


async def test_too_long_even_in_a_new_session_is_given_up_and_reported(
    hive: Hive, short_tmp: Path
) -> None:
    steps = [{"result": "too_long"}, {}, {"result": "too_long"}, {"result": "too_long"}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("an enormous body")
        await wait_acked(rig.socket, sent)
        ends = rig.of_kind("turn_end")
        assert [e["outcome"] for e in ends] == ["too_long"] * 3
        assert "giving up" in ends[2]["note"]

        async def reports() -> list[Any]:
            manager = hive.config.paths.agent_socket("manager")
            return [m for m in await inbox_of(manager) if m.body.startswith("turn_failed:")]

        [report] = await eventually(reports, what="the report to the manager")
        assert f"message #{sent}" in report.body


async def test_the_operators_compaction_runs_when_no_turn_does(hive: Hive, short_tmp: Path) -> None:
    steps = [{"delay": 1.0}, {"post_tokens": 77}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("work")
        await rig.wait_for("turn_start", id=sent)
        rig.commands.request_compact()
        assert rig.commands.compact_pending
        await wait_acked(rig.socket, sent)
        await eventually(
            lambda: any("session compacted" in n for n in notes(rig)), what="the compaction"
        )
        _turn, compaction = rig.calls()
        assert prompt_of(compaction) == "/compact"
        assert not rig.commands.compact_pending and rig.view.ctx == 77
        # It started after the turn had ended, never beside it.
        kinds = [
            (e.kind, e.data.get("state"))
            for e in rig.events.history()
            if e.kind in ("turn_end", "turn_state_changed")
        ]
        assert kinds.index(("turn_end", None)) < kinds.index(("turn_state_changed", "compacting"))


async def test_no_compaction_when_the_next_turn_starts_a_new_session_anyway(
    hive: Hive, short_tmp: Path
) -> None:
    async with turn_loop(hive, short_tmp, []) as rig:
        rig.commands.request_new_session()
        rig.commands.request_compact()
        await eventually(
            lambda: any("not compacted" in n for n in notes(rig)), what="the refusal note"
        )
        assert rig.calls() == []


async def test_a_compaction_claude_refuses_sends_the_retry_to_a_new_session_at_once(
    hive: Hive, short_tmp: Path
) -> None:
    # A session holding only the failed prompt: claude has "Not enough messages to compact."
    steps = [{"result": "too_long"}, {"compact_error": "Not enough messages to compact."}, {}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        sent = await rig.send("a job")
        await wait_acked(rig.socket, sent)
        assert [e["outcome"] for e in rig.of_kind("turn_end")] == ["too_long", "ok"]
        assert "compaction failed: Not enough messages to compact." in notes(rig)
        _first, compaction, fresh = rig.calls()
        assert prompt_of(compaction) == "/compact"
        assert not continued(fresh) and "new attempt at it" in prompt_of(fresh)
        assert rig.view.ctx == 120  # the badge is not touched by a failed compaction


async def test_the_window_claude_reports_sets_the_watermark(hive: Hive, short_tmp: Path) -> None:
    # 160,020 tokens pass 75 % of the table's 200,000, not of the 1,000,000 claude reports.
    steps = [{"input_tokens": 160_000, "context_window": 1_000_000}, {"input_tokens": 760_000}]
    async with turn_loop(hive, short_tmp, [*steps, {}, {}]) as rig:
        first = await rig.send("big")
        await wait_acked(rig.socket, first)
        second = await rig.send("bigger")
        await wait_acked(rig.socket, second)
        await eventually(
            lambda: any("session compacted" in n for n in notes(rig)), what="the compaction"
        )
        prompts = [prompt_of(c) for c in rig.calls()]
        assert "big" in prompts[0] and "bigger" in prompts[1]
        assert CHECKPOINT in prompts[2] and prompts[3] == "/compact"
        assert any("75 % of the 1,000,000-token window" in n for n in notes(rig))


async def test_the_dashboard_sees_the_compaction_in_the_status_text(
    hive: Hive, short_tmp: Path
) -> None:
    steps = [{"input_tokens": 160_000}, {}, {"delay": 1.0}]
    async with turn_loop(hive, short_tmp, steps) as rig:
        await hive.registry.set_status_text("alice", "reviewing the parser")
        sent = await rig.send("a big job")
        await wait_acked(rig.socket, sent)
        # While claude compacts, the agent's status text (what the dashboard shows) says so.
        # The view first: it is the harness's own, and the text reaches the daemon after it
        # (on a loaded machine the one-second compaction can be over when the text arrives).
        await eventually(
            lambda: rig.view.turn_state.value == "compacting",
            what="the compacting turn state",
            interval=0.01,
        )
        await eventually(
            lambda: hive.registry.get("alice").status_text == "⟳ compacting claude's session",
            what="the compacting status text",
            interval=0.01,
        )
        await eventually(
            lambda: any("session compacted" in n for n in notes(rig)), what="the compaction"
        )
        await eventually(
            lambda: hive.registry.get("alice").status_text == "reviewing the parser",
            what="the status text restored",
        )
