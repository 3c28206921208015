"""The harness's sans-IO decisions: prompt, argv, stream-json judging, failure policy, backoff.

The stream-json lines are trimmed copies of what Claude Code 2.1 printed against the mock
API (ok, 401, 429, 500, SIGINT mid-request), keeping the fields the harness reads.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperhive.runtime import Backoff
from hyperhive_harness.claude import LineSplitter
from hyperhive_harness.config import RECONNECT_BACKOFF, ConfigError, HarnessConfig, parse_backoff
from hyperhive_harness.login import first_url
from hyperhive_harness.policy import (
    Next,
    Outcome,
    SessionBreak,
    Verdict,
    decide,
    failure_report,
    judge,
    report_recipient,
    session_break,
)
from hyperhive_harness.prompt import (
    AGENT_TOOLS,
    MANAGER_TOOLS,
    allowed_tools,
    claude_argv,
    claude_env,
    mcp_config,
    render_system_prompt,
    session_preface,
    wake_prompt,
)
from hyperhive_harness.stream import TurnObserver, TurnState

INIT = {"type": "system", "subtype": "init", "session_id": "s1", "mcp_servers": []}
ASSISTANT = {
    "type": "assistant",
    "message": {
        "model": "claude-haiku-5-5",
        "content": [{"type": "text", "text": "hello"}],
        "usage": {
            "input_tokens": 10,
            "output_tokens": 1,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
        },
    },
    "session_id": "s1",
}
RESULT_OK = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "terminal_reason": "completed",
    "result": "hello",
    "total_cost_usd": 0.0000035,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
    },
    "session_id": "s1",
}


def api_error_run(status: int, kind: str, error: str, text: str) -> list[dict[str, Any]]:
    return [
        INIT,
        {
            "type": "assistant",
            "message": {
                "model": "<synthetic>",
                "content": [{"type": "text", "text": text}],
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
            "error": error,
            "is_api_error_message": True,
            "api_error_status": status,
            "api_error_type": kind,
        },
        {
            "type": "result",
            "subtype": "success",
            "is_error": True,
            "terminal_reason": "api_error",
            "api_error_status": status,
            "api_error_type": kind,
            "result": text,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    ]


def observe(values: list[Any], stderr: list[str] = ()) -> TurnObserver:  # type: ignore[assignment]
    obs = TurnObserver()
    for v in values:
        obs.feed_stdout(v if isinstance(v, str) else json.dumps(v))
    for line in stderr:
        obs.feed_stderr(line)
    return obs


# ---------------------------------------------------------------- judging a run


def test_ok_run_is_ok_and_fills_the_badges() -> None:
    obs = observe([INIT, ASSISTANT, RESULT_OK])
    assert judge(obs, 0) == Verdict(Outcome.OK, "")
    assert obs.ctx == 10 + 1000 + 200
    assert obs.cost == 10 + 5 + 1000 + 200
    assert obs.cost_usd == pytest.approx(0.0000035)
    assert obs.session_id == "s1"


def test_success_subtype_with_is_error_is_a_failure() -> None:
    obs = observe(api_error_run(500, "api_error", "server_error", "API Error: 500 boom"))
    verdict = judge(obs, 1)
    assert verdict.outcome is Outcome.FAILED
    assert "500 boom" in verdict.note and "exited with 1" in verdict.note
    assert obs.ctx is None  # a synthetic error message is not an inference


def test_non_completed_terminal_reason_fails_even_with_exit_0() -> None:
    result = {**RESULT_OK, "terminal_reason": "max_turns"}
    verdict = judge(observe([INIT, result]), 0)
    assert verdict.outcome is Outcome.FAILED
    assert "max_turns" in verdict.note


def test_nonzero_exit_fails_an_otherwise_clean_result() -> None:
    assert judge(observe([INIT, RESULT_OK]), 3).outcome is Outcome.FAILED


def test_no_result_is_a_failure_with_the_stderr_tail() -> None:
    verdict = judge(observe([INIT], [f"line {i}" for i in range(40)]), 1)
    assert verdict.outcome is Outcome.FAILED
    assert "without a final result" in verdict.note
    assert "line 39" in verdict.note and "line 19" not in verdict.note  # a 20-line tail


def test_401_is_needs_login() -> None:
    run = api_error_run(
        401,
        "authentication_error",
        "authentication_failed",
        "Failed to authenticate. API Error: 401",
    )
    assert judge(observe(run), 1).outcome is Outcome.NEEDS_LOGIN


def test_429_is_rate_limited() -> None:
    run = api_error_run(429, "rate_limit_error", "rate_limit", "API Error: Request rejected (429)")
    assert judge(observe(run), 1).outcome is Outcome.RATE_LIMITED


def test_a_retried_429_that_ends_in_a_500_is_a_plain_failure() -> None:
    retry = {"type": "system", "subtype": "api_retry", "error_status": 429, "error": "rate_limit"}
    run = api_error_run(500, "api_error", "server_error", "API Error: 500")
    assert judge(observe([retry, *run]), 1).outcome is Outcome.FAILED


def test_a_retried_429_that_succeeded_is_ok() -> None:
    retry = {"type": "system", "subtype": "api_retry", "error_status": 429, "error": "rate_limit"}
    assert judge(observe([INIT, retry, ASSISTANT, RESULT_OK]), 0).ok


@pytest.mark.parametrize(
    ("stderr", "outcome"),
    [
        ('Error: 401 {"type":"error"}', Outcome.NEEDS_LOGIN),
        ("Invalid API key · Please run /login", Outcome.NEEDS_LOGIN),
        ("API Error: 429 too many requests", Outcome.RATE_LIMITED),
        ("Claude usage limit reached", Outcome.RATE_LIMITED),
        ("No conversation found to continue", Outcome.NO_SESSION),
        ("Error: something else broke (code 4290x)", Outcome.FAILED),
    ],
)
def test_stderr_markers_classify_a_failed_run(stderr: str, outcome: Outcome) -> None:
    assert judge(observe([], [stderr]), 1).outcome is outcome


def test_markers_do_not_turn_a_good_run_bad() -> None:
    assert judge(observe([INIT, RESULT_OK], ["retrying after 429"]), 0).ok


def test_cancelled_wins_over_everything() -> None:
    # SIGINT mid-request: claude prints an interruption and exits 0 without a result.
    interrupted = {
        "type": "user",
        "message": {"role": "user", "content": [{"type": "text", "text": "[Request interrupted"}]},
    }
    verdict = judge(observe([INIT, interrupted]), 0, cancelled=True)
    assert verdict.outcome is Outcome.CANCELLED
    assert "operator" in verdict.note


def test_observer_tracks_compaction_and_unparsed_lines() -> None:
    obs = TurnObserver()
    assert obs.feed_stdout("not json") == (None, None)
    assert obs.unparsed_lines == 1
    value, state = obs.feed_stdout(
        json.dumps({"type": "system", "subtype": "status", "status": "compacting"})
    )
    assert value["subtype"] == "status" and state is TurnState.COMPACTING
    _, state = obs.feed_stdout(json.dumps({"type": "system", "subtype": "compact_boundary"}))
    assert state is TurnState.THINKING
    _, state = obs.feed_stdout(json.dumps(ASSISTANT))
    assert state is None


JSON_KEYS = st.sampled_from(
    [
        "type",
        "subtype",
        "message",
        "usage",
        "result",
        "is_error",
        "error",
        "api_error_status",
        "terminal_reason",
        "content",
        "model",
        "status",
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_KEYS, inner, max_size=5),
    max_leaves=12,
)


@given(
    st.lists(st.one_of(st.text(), JSON_VALUES), max_size=8),
    st.one_of(st.none(), st.integers(-9, 255)),
    st.booleans(),
)
def test_judging_garbage_never_crashes(lines: list[Any], code: int | None, cancelled: bool) -> None:
    obs = TurnObserver()
    for line in lines:
        obs.feed_stdout(line if isinstance(line, str) else json.dumps(line))
        obs.feed_stderr(str(line)[:50])
    verdict = judge(obs, code, cancelled=cancelled)
    assert isinstance(verdict.outcome, Outcome)
    _ = (obs.ctx, obs.cost, obs.cost_usd)


# ---------------------------------------------------------------- the failure policy


def policy(verdict: Verdict, attempt: int = 1, max_attempts: int = 2) -> Any:
    return decide(
        verdict,
        attempt=attempt,
        max_attempts=max_attempts,
        rate_limit_sleep=300,
        failed_retry_delay=10,
    )


def test_ok_and_cancelled_are_acked_without_report() -> None:
    for outcome in (Outcome.OK, Outcome.CANCELLED):
        d = policy(Verdict(outcome, ""), attempt=0)
        assert d.next is Next.ACK and not d.report


def test_rate_limit_sleeps_and_retries_without_limit() -> None:
    d = policy(Verdict(Outcome.RATE_LIMITED, ""), attempt=0)
    assert d.next is Next.SLEEP_AND_RETRY and d.delay == 300 and not d.report
    assert policy(Verdict(Outcome.RATE_LIMITED, ""), attempt=99).next is Next.SLEEP_AND_RETRY


def test_auth_failure_parks_and_keeps_the_message() -> None:
    d = policy(Verdict(Outcome.NEEDS_LOGIN, ""), attempt=0)
    assert d.next is Next.PARK_AND_RETRY and "unacked" in d.note


def test_missing_session_retries_fresh_at_once() -> None:
    d = policy(Verdict(Outcome.NO_SESSION, ""), attempt=0)
    assert d.next is Next.RETRY and d.fresh_session and d.delay == 0


def test_other_failures_retry_then_ack_and_report() -> None:
    first = policy(Verdict(Outcome.FAILED, "boom"), attempt=1)
    assert first.next is Next.RETRY and first.delay == 10 and not first.report
    last = policy(Verdict(Outcome.FAILED, "boom"), attempt=2)
    assert last.next is Next.ACK and last.report and "giving up" in last.note
    assert policy(Verdict(Outcome.FAILED, ""), attempt=1, max_attempts=1).next is Next.ACK


def test_failure_report_goes_to_the_manager_or_the_operator() -> None:
    assert report_recipient("agent") == "manager"
    assert report_recipient("manager") == "operator"
    text = failure_report(
        agent="alice", message_id=7, sender="bob", body="x" * 1000, attempts=2, note="500"
    )
    assert text.startswith("turn_failed: alice") and "#7 from bob" in text
    assert "2 attempts" in text and "500" in text and len(text) < 4100
    assert "next turn starts a new session" in text


def test_every_failure_that_may_have_sent_the_prompt_breaks_the_session() -> None:
    for outcome in (Outcome.FAILED, Outcome.RATE_LIMITED, Outcome.NEEDS_LOGIN):
        verdict = Verdict(outcome, "claude exited with 1; API Error: 400 no\nstderr:\nx")
        brk = session_break(verdict, policy(verdict, attempt=1), message_id=7, sender="bob")
        assert brk is not None and brk.outcome == outcome.value
        assert brk.reason == "claude exited with 1; API Error: 400 no" and not brk.given_up
    given_up = Verdict(Outcome.FAILED, "boom")
    brk = session_break(given_up, policy(given_up, attempt=2), message_id=7, sender="bob")
    assert brk is not None and brk.given_up
    # A good, cancelled (the operator's choice) or session-less run keeps the session.
    for outcome in (Outcome.OK, Outcome.CANCELLED, Outcome.NO_SESSION):
        verdict = Verdict(outcome, "")
        assert session_break(verdict, policy(verdict, attempt=0), message_id=7, sender="b") is None


def test_session_break_survives_its_file_and_garbage_still_means_a_new_session() -> None:
    brk = SessionBreak(message_id=7, sender="bob", outcome="failed", given_up=True, reason="r")
    assert SessionBreak.from_json(brk.to_json()) == brk
    for junk in ("", "not json", "[1]", '{"message_id": true, "reason": 5}'):
        parsed = SessionBreak.from_json(junk)
        assert parsed.message_id is None and parsed.reason == "unknown reason"


def test_session_preface_says_what_happened_without_the_failed_body() -> None:
    gone = SessionBreak(message_id=7, sender="bob", outcome="failed", given_up=True, reason="400")
    text = session_preface(gone, message_id=9, reporter="manager", state_dir="/state")
    assert "session was ended because a turn failed (failed: 400)" in text
    assert "message #7 from bob" in text and "given up" in text and "manager" in text
    assert "Re-read your notes in /state" in text and "New message #" not in text
    retry = SessionBreak(
        message_id=9, sender="bob", outcome="rate_limited", given_up=False, reason="429"
    )
    text = session_preface(retry, message_id=9, reporter="manager", state_dir="/state")
    assert "new attempt at it" in text
    text = session_preface(retry, message_id=10, reporter="manager", state_dir="/state")
    assert "message #9 from bob, which is kept" in text


def test_reconnect_backoff_doubles_to_its_limit_and_starts_over_after_a_reset() -> None:
    retry = RECONNECT_BACKOFF.start()
    assert [retry.next() for _ in range(7)] == [2, 4, 8, 16, 30, 30, 30]
    assert retry.attempts == 7
    retry.reset()
    assert retry.next() == 2
    assert [Backoff(first=1, limit=30).delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert Backoff(first=0, limit=5).delay(3) == 0
    with pytest.raises(ValueError, match="first <= limit"):
        Backoff(first=2, limit=1)


# ---------------------------------------------------------------- starting claude


def test_claude_argv_has_every_flag_and_the_prompt_last() -> None:
    argv = claude_argv(
        "/bin/claude",
        model="sonnet",
        prompt="--not-a-flag hello",
        mcp_config_file="/run/m.json",
        system_prompt_file="/run/s.md",
        tools=["mcp__hyperhive__send", "mcp__hyperhive__recv"],
    )
    assert argv[:6] == [
        "/bin/claude",
        "--print",
        "--verbose",
        "--output-format",
        "stream-json",
        "--model",
    ]
    assert argv[6] == "sonnet"
    assert "--continue" in argv and "--strict-mcp-config" in argv
    assert argv[argv.index("--mcp-config") + 1] == "/run/m.json"
    assert argv[argv.index("--allowedTools") + 1] == "mcp__hyperhive__send,mcp__hyperhive__recv"
    assert argv[argv.index("--system-prompt-file") + 1] == "/run/s.md"
    assert argv[-2:] == ["--", "--not-a-flag hello"]
    assert "--settings" not in argv


def test_new_session_drops_continue_and_settings_are_passed() -> None:
    argv = claude_argv(
        "claude",
        model="haiku",
        prompt="p",
        mcp_config_file="m",
        system_prompt_file="s",
        tools=[],
        continue_session=False,
        settings="/etc/s.json",
    )
    assert "--continue" not in argv
    assert argv[argv.index("--settings") + 1] == "/etc/s.json"


def test_allowed_tools_by_role() -> None:
    agent = allowed_tools("agent")
    assert agent == [f"mcp__hyperhive__{t}" for t in AGENT_TOOLS]
    assert "mcp__hyperhive__request_spawn" not in agent
    manager = allowed_tools("manager", ["Read", "mcp__hyperhive__send"])
    assert manager[: len(MANAGER_TOOLS)] == [f"mcp__hyperhive__{t}" for t in MANAGER_TOOLS]
    assert manager[-1] == "Read" and manager.count("mcp__hyperhive__send") == 1


def test_mcp_config_starts_the_harness_mcp_server_with_the_socket() -> None:
    server = mcp_config("/venv/bin/python", "/run/hive/mcp.sock")["mcpServers"]["hyperhive"]
    assert server["command"] == "/venv/bin/python"
    assert server["args"] == ["-m", "hyperhive_harness.mcp_server"]
    assert server["env"] == {"HYPERHIVE_SOCKET": "/run/hive/mcp.sock"}


def test_claude_env_disables_tool_search() -> None:
    env = claude_env({"PATH": "/bin", "ENABLE_TOOL_SEARCH": "true"})
    assert env == {"PATH": "/bin", "ENABLE_TOOL_SEARCH": "false"}


def test_system_prompt_placeholders() -> None:
    text = render_system_prompt(
        'I am {label} ({role}) in {state_dir}; json {"a": 1}',
        label="bob",
        role="agent",
        state_dir="/state",
    )
    assert text == 'I am bob (agent) in /state; json {"a": 1}'


def test_wake_prompt_names_sender_body_and_pending() -> None:
    text = wake_prompt(message_id=12, sender="bob", body="please review", pending=3)
    assert "#12 from bob" in text and "please review" in text
    assert "3 more messages are waiting" in text
    assert 'to: "bob"' in text and "in_reply_to: 12" in text
    assert "redeliver" not in text.lower()


def test_wake_prompt_variants() -> None:
    op = wake_prompt(message_id=1, sender="operator", body="hi", pending=0)
    assert "the operator" in op and "No other messages are waiting." in op
    one = wake_prompt(message_id=1, sender="system", body="question_answered {}", pending=1)
    assert "1 more message is waiting" in one and "to answer" not in one.lower()
    label = wake_prompt(message_id=2, sender="forge: PR #4", body="x", pending=0)
    assert "is a label, not an agent" in label
    again = wake_prompt(
        message_id=3, sender="bob", body="x", pending=0, redelivered=True, in_reply_to=2
    )
    assert "delivered before" in again and "replies to message #2" in again


# ---------------------------------------------------------------- config and small parsers


def test_config_defaults_and_overrides() -> None:
    cfg = HarnessConfig.from_env({"HOME": "/root"})
    assert str(cfg.socket) == "/run/hive/mcp.sock"
    assert str(cfg.events_db) == "/state/hyperhive-events.sqlite"
    assert str(cfg.model_file) == "/state/hyperhive-model"
    assert cfg.claude == "claude" and cfg.rate_limit_sleep == 300
    assert cfg.reconnect_backoff == Backoff(first=2, limit=30)
    assert str(cfg.credentials_file) == "/root/.claude/.credentials.json"
    assert cfg.ui_port is None and cfg.login_command == ("claude", "auth", "login")
    assert str(cfg.ui_socket) == "/run/hive/ui.sock"
    env = {
        "HYPERHIVE_SOCKET": "/s.sock",
        "HYPERHIVE_STATE_DIR": "/st",
        "HYPERHIVE_CLAUDE": "/c",
        "HYPERHIVE_UI_PORT": "8123",  # no longer read: only --ui-port opens a TCP port
        "HYPERHIVE_RATE_LIMIT_SLEEP": "2.5",
        "HYPERHIVE_EXTRA_ALLOWED_TOOLS": "Read, Write",
    }
    cfg = HarnessConfig.from_env(env, socket="/flag.sock")
    assert str(cfg.socket) == "/flag.sock"
    assert str(cfg.events_db) == "/st/hyperhive-events.sqlite"
    assert cfg.ui_port is None and cfg.rate_limit_sleep == 2.5
    assert str(cfg.ui_socket) == "/ui.sock"  # beside the agent socket
    assert cfg.extra_allowed_tools == ("Read", "Write")
    assert HarnessConfig.from_env(env, port=9000).ui_port == 9000
    assert HarnessConfig.from_env(env, port=0).ui_port == 0
    moved = HarnessConfig.from_env({**env, "HYPERHIVE_UI_SOCKET": "/elsewhere/ui.sock"})
    assert str(moved.ui_socket) == "/elsewhere/ui.sock"


@pytest.mark.parametrize(
    "env",
    [
        {"HYPERHIVE_RATE_LIMIT_SLEEP": "-1"},
        {"HYPERHIVE_RECONNECT_BACKOFF": "2,x"},
        {"HYPERHIVE_MAX_TURN_ATTEMPTS": "0"},
    ],
)
def test_bad_config_is_refused_with_the_variable_name(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"HYPERHIVE_|backoff"):
        HarnessConfig.from_env(env)


def test_an_out_of_range_ui_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        HarnessConfig.from_env({}, port=70000)


def test_parse_backoff() -> None:
    assert parse_backoff("0.5, 1,2") == Backoff(first=0.5, limit=2)
    assert parse_backoff("3") == Backoff(first=3, limit=3)


@given(st.lists(st.binary(max_size=30), max_size=12))
def test_line_splitter_is_independent_of_chunking(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.finish()
    expected = [x.decode("utf-8", "replace").rstrip("\r") for x in data.split(b"\n")]
    if expected and not expected[-1].strip():
        expected.pop()
    assert lines == expected


def test_first_url_in_login_output() -> None:
    lines = [
        "Opening browser...",
        "\x1b[1mVisit https://claude.ai/oauth/authorize?code=1&x=y\x1b[0m.",
    ]
    assert first_url(lines) == "https://claude.ai/oauth/authorize?code=1&x=y"
    assert first_url(["no url here"]) is None


def test_extra_mcp_servers_from_the_daemon() -> None:
    from hyperhive_harness.config import HarnessConfig, parse_extra_mcp

    raw = json.dumps(
        {
            "mcpServers": {
                "search": {"type": "stdio", "command": "srch", "args": [], "env": {}},
                "hyperhive": {"type": "stdio", "command": "evil", "args": [], "env": {}},
            },
            "allowedTools": ["mcp__search__find"],
        }
    )
    servers, tools = parse_extra_mcp(raw)
    assert tools == ("mcp__search__find",)
    config = mcp_config("/py", "/run/hive/mcp.sock", servers)
    assert config["mcpServers"]["search"]["command"] == "srch"
    assert config["mcpServers"]["hyperhive"]["command"] == "/py"  # never replaced
    assert parse_extra_mcp("{not json") == ({}, ())
    assert parse_extra_mcp('["x"]') == ({}, ())
    cfg = HarnessConfig.from_env(
        {"HYPERHIVE_EXTRA_MCP": raw, "HYPERHIVE_EXTRA_ALLOWED_TOOLS": "Read"}
    )
    assert cfg.extra_allowed_tools == ("Read", "mcp__search__find")
    assert set(cfg.extra_mcp_servers) == {"search", "hyperhive"}
