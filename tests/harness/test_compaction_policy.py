"""Compaction decisions, as plain functions: the watermark, the verdict on a context-length
failure, what follows it, and the settings that leave compaction to the harness alone."""

from __future__ import annotations

import json

import pytest

from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.policy import (
    COMPACT_PROMPT,
    Next,
    Outcome,
    Verdict,
    compaction_note,
    context_window,
    decide,
    judge,
    session_break,
    should_compact,
)
from hyperhive_harness.prompt import claude_argv, claude_settings
from hyperhive_harness.stream import TurnObserver, TurnState

POLICY = {"attempt": 0, "max_attempts": 2, "rate_limit_sleep": 300.0, "failed_retry_delay": 10.0}

#: What claude 2.1 prints when the API refuses a prompt as too long (seen against the mock).
TOO_LONG_LINES = [
    {"type": "system", "subtype": "init", "session_id": "s"},
    {
        "type": "assistant",
        "message": {
            "model": "<synthetic>",
            "role": "assistant",
            "content": [{"type": "text", "text": "Prompt is too long"}],
            "usage": {"input_tokens": 0},
        },
        "error": "invalid_request",
    },
    {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "terminal_reason": "prompt_too_long",
        "api_error_status": 400,
        "api_error_type": "invalid_request_error",
        "result": "Prompt is too long",
    },
]


def observe(lines: list[dict[str, object]]) -> TurnObserver:
    obs = TurnObserver()
    for line in lines:
        obs.feed_stdout(json.dumps(line))
    return obs


def test_context_windows_by_model() -> None:
    assert context_window("haiku") == 200_000
    assert context_window("claude-sonnet-4-5") == 200_000
    assert context_window("claude-sonnet-4-5[1m]") == 1_000_000
    assert context_window("Opus") == 200_000
    assert context_window("some-new-model") == 200_000


@pytest.mark.parametrize(
    ("ctx", "model", "percent", "expected"),
    [
        (149_999, "haiku", 75, False),
        (150_000, "haiku", 75, True),
        (190_000, "haiku", 0, False),  # 0 disables
        (None, "haiku", 75, False),  # nothing known yet
        (160_000, "sonnet[1m]", 75, False),
        (750_000, "sonnet[1m]", 75, True),
        (100_000, "opus", 50, True),
    ],
)
def test_the_watermark(ctx: int | None, model: str, percent: int, expected: bool) -> None:
    assert should_compact(ctx, model=model, percent=percent) is expected


def test_a_context_length_failure_is_too_long() -> None:
    verdict = judge(observe(TOO_LONG_LINES), 1)
    assert verdict.outcome is Outcome.TOO_LONG
    assert "Prompt is too long" in verdict.note


def test_the_api_wording_in_stderr_is_too_long_as_well() -> None:
    obs = TurnObserver()
    obs.feed_stderr("API Error: 400 prompt is too long: 250000 tokens > 200000 maximum")
    assert judge(obs, 1).outcome is Outcome.TOO_LONG


def test_too_long_is_compacted_then_a_new_session_then_given_up() -> None:
    verdict = Verdict(Outcome.TOO_LONG, "context too long: Prompt is too long")
    first = decide(verdict, too_long=1, **POLICY)
    assert first.next is Next.COMPACT_AND_RETRY and not first.report
    # The compacted session goes on: no break.
    assert session_break(verdict, first, message_id=7, sender="bob") is None
    second = decide(verdict, too_long=2, **POLICY)
    assert second.next is Next.RETRY and second.fresh_session and second.delay == 0
    brk = session_break(verdict, second, message_id=7, sender="bob")
    assert brk is not None and not brk.given_up and brk.outcome == "too_long"
    third = decide(verdict, too_long=3, **POLICY)
    assert third.next is Next.ACK and third.report
    brk = session_break(verdict, third, message_id=7, sender="bob")
    assert brk is not None and brk.given_up


def test_the_observer_takes_the_context_a_compaction_left() -> None:
    obs = TurnObserver(state=TurnState.COMPACTING)
    obs.feed_stdout(json.dumps({"type": "system", "subtype": "status", "status": "compacting"}))
    assert not obs.compacted and obs.ctx is None
    boundary = {
        "type": "system",
        "subtype": "compact_boundary",
        "compact_metadata": {"trigger": "manual", "pre_tokens": 160_000, "post_tokens": 2437},
    }
    obs.feed_stdout(json.dumps(boundary))
    assert obs.compacted and obs.ctx == 2437
    obs.feed_stdout(json.dumps({"type": "result", "is_error": False, "num_turns": 0}))
    assert judge(obs, 0).ok
    # A boundary without numbers still counts as a compaction, the context stays unknown.
    bare = observe([{"type": "system", "subtype": "compact_boundary"}])
    assert bare.compacted and bare.ctx is None


def test_compaction_note() -> None:
    assert compaction_note(160_000, 2437) == (
        "claude's session compacted: context 160,000 → 2,437 tokens"
    )
    assert "? → ?" in compaction_note(None, None)


def test_claude_settings_turn_auto_compaction_off_whatever_else_is_set() -> None:
    assert json.loads(claude_settings()) == {"autoCompactEnabled": False}
    extra = {"permissions": {"additionalDirectories": ["/agents"]}, "autoCompactEnabled": True}
    assert json.loads(claude_settings(extra)) == {
        "permissions": {"additionalDirectories": ["/agents"]},
        "autoCompactEnabled": False,
    }


def test_compact_prompt_is_claudes_command_after_the_separator() -> None:
    argv = claude_argv(
        "claude",
        model="haiku",
        prompt=COMPACT_PROMPT,
        mcp_config_file="/m.json",
        system_prompt_file="/s.md",
        tools=["mcp__hyperhive__send"],
        settings="/r/claude-settings.json",
    )
    assert argv[-2:] == ["--", "/compact"] and "--continue" in argv


def test_the_watermark_setting() -> None:
    assert HarnessConfig.from_env({}).compact_at_percent == 75
    assert HarnessConfig.from_env({"HYPERHIVE_COMPACT_AT_PERCENT": "0"}).compact_at_percent == 0
    with pytest.raises(ValueError, match="HYPERHIVE_COMPACT_AT_PERCENT"):
        HarnessConfig.from_env({"HYPERHIVE_COMPACT_AT_PERCENT": "101"})


def test_the_window_claude_reports_wins_over_the_table() -> None:
    assert should_compact(160_000, model="haiku", percent=75)
    assert not should_compact(160_000, model="haiku", percent=75, window=1_000_000)
    result = {
        "type": "result",
        "is_error": False,
        "modelUsage": {"claude-haiku-5-5": {"contextWindow": 1_000_000}, "x": {}, "y": 3},
    }
    assert observe([result]).context_window == 1_000_000
    assert (
        observe([{"type": "result", "modelUsage": {"m": {"contextWindow": True}}}]).context_window
        is None
    )
    assert TurnObserver().context_window is None


def test_a_failed_compaction_says_why() -> None:
    failed = {
        "type": "system",
        "subtype": "status",
        "status": None,
        "compact_result": "failed",
        "compact_error": "Not enough messages to compact.",
    }
    obs = observe([failed, {"type": "result", "is_error": False}])
    assert not obs.compacted and obs.compact_error == "Not enough messages to compact."
