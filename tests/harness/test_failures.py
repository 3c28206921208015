"""API failures through the real claude: 500 (retry once, then ack and report), 429 (rate
limited, sleep, retry the same message), 401 (needs login, parked unacked, replayed after
credentials appear)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from hyperhive.supervisor import Hive

from .fixtures import (
    eventually,
    inbox_of,
    login_harness,
    make_harness,
    message,
    operator_send,
    running,
    wait_acked,
)
from .mock_anthropic import MockAnthropic, RecordedRequest, error, text


def prompts_for(mock: MockAnthropic, marker: str) -> int:
    """How many claude runs started on a wake prompt containing ``marker``.

    Only the newest wake prompt of a request counts (a continued conversation holds the
    earlier ones; a retry after a failure runs in a new session that holds none).
    """
    count = 0
    for r in mock.main_requests:
        if r.tool_results or "New message #" not in r.last_user_text:
            continue
        newest = r.last_user_text.rsplit("New message #", 1)[1]
        count += marker in newest
    return count


async def test_server_errors_retry_once_then_ack_and_report_to_the_manager(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    mock_api.script(
        error(500, "api_error", "mock internal failure"),
        error(500, "api_error", "mock internal failure"),
    )
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "doomed-task")
        ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
        first, second = (e["payload"] for e in ends[:2])
        assert first["ok"] is False and first["outcome"] == "failed"
        assert "mock internal failure" in first["note"] and "attempt 1 of 2" in first["note"]
        assert second["ok"] is False and "giving up" in second["note"]

        # Acked once given up, so it does not loop ...
        await wait_acked(paths.agent_socket("alice"), sent)
        # ... and not lost silently: the manager hears about it, with the reason.
        reports = await eventually(
            lambda: _reports(paths.agent_socket("manager")), what="a report to the manager"
        )
        assert len(reports) == 1
        assert reports[0].from_ == "alice" and f"message #{sent}" in reports[0].body
        assert "mock internal failure" in reports[0].body and "doomed-task" in reports[0].body

        # The loop goes on: the next message is turned normally (the mock answers again).
        nxt = await operator_send(paths.host_socket, "alice", "next-task")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == nxt)
        assert end[0]["payload"]["ok"] is True
        assert prompts_for(mock_api, "doomed-task") == 2  # exactly one retry
        assert len([e for e in alice.events("turn_end") if e["payload"]["id"] == sent]) == 2


async def _reports(socket: Path) -> list:  # type: ignore[type-arg]
    return [m for m in await inbox_of(socket) if m.body.startswith("turn_failed:")]


async def test_rate_limit_sleeps_and_retries_the_same_message(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    mock_api.script(error(429, "rate_limit_error", "slow down", retry_after=1))
    alice = make_harness(
        "alice",
        mock_api,
        claude_bin,
        short_tmp,
        paths.agent_socket("alice"),
        HYPERHIVE_RATE_LIMIT_SLEEP="1.5",
    )
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "busy-task")
        limited = await alice.wait_for("status_changed", lambda p: p["status"] == "rate_limited")
        # While it sleeps: unacked, and visible on the dashboard through the status text.
        assert (await message(paths.agent_socket("alice"), sent)).acked_at is None
        await eventually(
            lambda: "rate limited" in hive.registry.get("alice").status_text,
            what="the rate limit on the dashboard's status text",
        )
        ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
        first, second = (e["payload"] for e in ends[:2])
        assert first["ok"] is False and first["outcome"] == "rate_limited"
        assert "retrying the same message in 1.5 s" in first["note"]
        assert second["ok"] is True
        starts = [e for e in alice.events("turn_start") if e["payload"]["id"] == sent]
        assert len(starts) == 2
        # The retry came after the sleep, not at once.
        assert starts[1]["ts"] - limited[0]["ts"] >= 1.4
        await alice.wait_for("status_changed", lambda p: p["status"] == "online", count=2)
        await wait_acked(paths.agent_socket("alice"), sent)
        await eventually(
            lambda: hive.registry.get("alice").status_text == "", what="the status text restored"
        )
        assert prompts_for(mock_api, "busy-task") == 2
        # The retry runs in a new session: its request carries the prompt once, not twice.
        assert starts[1]["payload"]["new_session"] is True
        retry = mock_api.main_requests[-1]
        assert "new attempt at it" in retry.last_user_text
        assert sum("busy-task" in t for t in retry.user_texts) == 1


async def test_auth_failure_parks_until_credentials_appear_then_replays(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    mock_api.script(error(401, "authentication_error", "invalid x-api-key"))
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "secret-task")
        await alice.wait_for("status_changed", lambda p: p["status"] == "needs_login")
        end = (await alice.wait_for("turn_end", lambda p: p["id"] == sent))[0]["payload"]
        assert end["ok"] is False and end["outcome"] == "needs_login"
        assert "kept unacked" in end["note"]
        state = (await alice.get("/api/state")).json()
        assert state["status"] == "needs_login"
        await eventually(
            lambda: "needs login" in hive.registry.get("alice").status_text,
            what="needs login on the dashboard's status text",
        )
        held = await message(paths.agent_socket("alice"), sent)
        assert held.delivered_at is not None and held.acked_at is None
        # Parked: five login polls (0.2 s) pass without credentials and claude is not run.
        with pytest.raises(trio.TooSlowError):
            await mock_api.wait_for_requests(2, within=1.0)
        assert prompts_for(mock_api, "secret-task") == 1

        creds = alice.home / ".claude" / ".credentials.json"
        creds.parent.mkdir(parents=True, exist_ok=True)
        creds.write_text('{"claudeAiOauth": {"accessToken": "fresh"}}')

        ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
        assert ends[1]["payload"]["ok"] is True
        notes = [e["payload"]["text"] for e in alice.events("note")]
        assert any("credentials changed" in n for n in notes)
        await wait_acked(paths.agent_socket("alice"), sent)
        assert (await alice.get("/api/state")).json()["status"] == "online"
        assert prompts_for(mock_api, "secret-task") == 2


async def test_login_panel_runs_the_login_command_and_replays(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    """The UI's login: URL shown, pasted code passed on, the parked message replayed."""

    paths = hive.config.paths
    await hive.spawn("alice")
    alice = login_harness(mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "login-task")
        await alice.wait_for("status_changed", lambda p: p["status"] == "needs_login")
        started = (await alice.post("/api/login/start")).json()
        assert started["running"] is True

        async def url() -> str | None:
            return (await alice.get("/api/state")).json()["login"]["url"]

        assert await eventually(url, what="login url") == (
            "https://claude.ai/oauth/authorize?state=abc"
        )
        no_code = await alice.post("/api/login/code", {"code": " "})
        assert no_code.status == 400
        assert (await alice.post("/api/login/code", {"code": "good-code"})).status == 200
        ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
        assert ends[1]["payload"]["ok"] is True
        login = (await alice.get("/api/state")).json()["login"]
        assert login["finished"] is True and login["exit_note"] == "login finished"


async def test_a_refused_prompt_is_given_up_once_and_does_not_poison_the_next_turns(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    """The API refuses (400) every request that carries the poisoned prompt, as it would a
    prompt it cannot accept: the message is given up, and the next turns run in a new session
    that does not carry it."""
    paths = hive.config.paths
    poison = "poisoned-prompt-7f3a"

    def refuse_the_poison(req: RecordedRequest) -> object:
        if poison in json.dumps(req.messages):
            return error(400, "invalid_request_error", "mock refuses this prompt")
        return text("ok")

    mock_api.default = refuse_the_poison  # type: ignore[assignment]
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", f"please do {poison}")
        ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
        assert [e["payload"]["outcome"] for e in ends] == ["failed", "failed"]
        assert "mock refuses this prompt" in ends[0]["payload"]["note"]
        assert "giving up" in ends[1]["payload"]["note"]
        await wait_acked(paths.agent_socket("alice"), sent)
        # The manager hears that the message was given up and that the session was ended.
        reports = await eventually(
            lambda: _reports(paths.agent_socket("manager")), what="a report to the manager"
        )
        assert f"message #{sent}" in reports[0].body
        assert "next turn starts a new session" in reports[0].body

        before = len(mock_api.main_requests)
        nxt = await operator_send(paths.host_socket, "alice", "healthy-task")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == nxt)
        # Succeeds on the first attempt ...
        assert end[0]["payload"]["ok"] is True, alice.failure_help()
        assert len([e for e in alice.events("turn_start") if e["payload"]["id"] == nxt]) == 1
        # ... in a new session whose requests carry its own prompt and not the refused one.
        requests = mock_api.main_requests[before:]
        assert requests and all(poison not in json.dumps(r.messages) for r in requests)
        assert "healthy-task" in requests[0].last_user_text
        prompt = requests[0].last_user_text
        assert "previous claude session was ended because a turn failed" in prompt
        assert f"message #{sent}" in prompt and "given up" in prompt
        start = next(e for e in alice.events("turn_start") if e["payload"]["id"] == nxt)
        assert start["payload"]["new_session"] is True
        # The operator sees why on the agent's UI (a note in its event stream).
        notes = [e["payload"]["text"] for e in alice.events("note")]
        assert any(
            n.startswith("new claude session") and f"#{sent} was given up" in n for n in notes
        ), notes

        # The session goes on normally after that (no new session without a failure).
        third = await operator_send(paths.host_socket, "alice", "third-task")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == third)
        assert end[0]["payload"]["ok"] is True
        start = next(e for e in alice.events("turn_start") if e["payload"]["id"] == third)
        assert start["payload"]["new_session"] is False
        last = next(r for r in mock_api.main_requests if "third-task" in r.last_user_text)
        assert any("healthy-task" in t for t in last.user_texts)  # continued
        assert poison not in json.dumps(last.messages)
        assert not (alice.state_dir / "hyperhive-new-session.json").exists()
