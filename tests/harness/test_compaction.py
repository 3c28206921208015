"""Compaction through the real claude CLI against the scripted Messages API: past the
watermark (a checkpoint turn, then ``/compact``), after a "prompt is too long" failure
(compact and retry, then a new session), and on the operator's request (the UI's
``/compact``, ``hyperhive compact NAME``). The API sees each step."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import trio

from hyperhive.client import Client
from hyperhive.protocol import Inbox, RecentReply
from hyperhive.supervisor import Hive

from .fixtures import Harness, make_harness, operator_send, running, wait_acked
from .mock_anthropic import MockAnthropic, RecordedRequest, Reply, error, text, tool_use

TOO_LONG = "prompt is too long: 250000 tokens > 200000 maximum"
SUMMARY = "<analysis>a</analysis><summary>kept: the job and who asked</summary>"


def is_compaction(req: RecordedRequest) -> bool:
    """claude's request for the summary that replaces the conversation (``/compact``)."""
    return "detailed summary of the conversation" in req.last_user_text


def is_checkpoint(req: RecordedRequest) -> bool:
    return "about to be compacted" in req.last_user_text


def newest_wake(req: RecordedRequest) -> str:
    text_ = req.last_user_text
    return text_.rsplit("New message #", 1)[1] if "New message #" in text_ else ""


def answering(marker: str, message_id: list[int]) -> Any:
    """A responder: the summary for a compaction; for a wake prompt with ``marker``, a
    ``send`` of the answer to the operator, then a closing text."""

    def respond(req: RecordedRequest) -> Reply:
        if is_compaction(req):
            return text(SUMMARY)
        if req.tool_results:
            return text("answered")
        if marker in newest_wake(req):
            body = {"to": "operator", "body": f"answer to {marker}", "in_reply_to": message_id[0]}
            return tool_use("mcp__hyperhive__send", body)
        return text("ok")

    return respond


async def operator_inbox(hive: Hive) -> list[str]:
    async with await Client.connect(hive.config.paths.host_socket, hello_role="cli") as client:
        reply = await client.call(Inbox(limit=50))
        assert isinstance(reply, RecentReply)
        return [m.body for m in reply.messages]


def states(harness: Harness) -> list[str]:
    return [e["payload"]["state"] for e in harness.events("turn_state_changed")]


def notes(harness: Harness) -> list[str]:
    return [e["payload"]["text"] for e in harness.events("note")]


async def test_past_the_watermark_a_checkpoint_turn_then_a_compaction(
    hive: Hive, mock_api: MockAnthropic, claude_bin: Path, short_tmp: Path, nursery: trio.Nursery
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")

    def respond(req: RecordedRequest) -> Reply:
        if is_compaction(req):
            return text(SUMMARY)
        if is_checkpoint(req):
            return text("notes kept", input_tokens=761_000)
        # 76 % of the 1,000,000-token window claude reports for the mock's haiku.
        return text("done", input_tokens=760_000)

    mock_api.responder = respond
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "big-job")
        await wait_acked(paths.agent_socket("alice"), sent)
        await alice.wait_for("note", lambda p: "session compacted" in p["text"])
        turn, checkpoint, compaction = mock_api.main_requests
        assert "big-job" in newest_wake(turn)
        # The checkpoint turn continues the session (the job is in its history) ...
        assert is_checkpoint(checkpoint) and any("big-job" in t for t in checkpoint.user_texts)
        assert str(alice.state_dir) in checkpoint.last_user_text
        # ... and the compaction summarises it, checkpoint included.
        assert is_compaction(compaction)
        assert any("about to be compacted" in t for t in compaction.user_texts)
        assert "compacting" in states(alice)
        ctx = [e["payload"]["ctx"] for e in alice.events("token_usage_changed")]
        assert ctx[:2] == [760_000, 761_000] and 0 < ctx[-1] < 20_000
        # One turn on the message: the checkpoint and the compaction are the harness's own.
        assert [e["payload"]["id"] for e in alice.events("turn_start")] == [sent]

        # The next turn runs on the compacted session: the summary, not the old history.
        nxt = await operator_send(paths.host_socket, "alice", "small-job")
        await wait_acked(paths.agent_socket("alice"), nxt)
        after = mock_api.main_requests[-1]
        assert "small-job" in newest_wake(after)
        assert any("kept: the job and who asked" in t for t in after.user_texts)
        assert not any("big-job" in t for t in after.user_texts)


async def warm_up(hive: Hive, harness: Harness, mock: MockAnthropic) -> int:
    """One answered turn, so claude's session has a conversation to compact; the number of
    API requests so far."""
    paths = hive.config.paths
    sent = await operator_send(paths.host_socket, harness.name, "warm-up")
    await wait_acked(paths.agent_socket(harness.name), sent)
    return len(mock.main_requests)


def ends_of(harness: Harness, message_id: int) -> list[dict[str, Any]]:
    return [e["payload"] for e in harness.events("turn_end") if e["payload"]["id"] == message_id]


def starts_of(harness: Harness, message_id: int) -> list[dict[str, Any]]:
    events = harness.events("turn_start")
    return [e["payload"] for e in events if e["payload"]["id"] == message_id]


async def test_a_too_long_prompt_is_compacted_and_retried_and_answered_once(
    hive: Hive, mock_api: MockAnthropic, claude_bin: Path, short_tmp: Path, nursery: trio.Nursery
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    ids: list[int] = []
    mock_api.responder = answering("job-x", ids)
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        before = await warm_up(hive, alice, mock_api)
        mock_api.script(error(400, "invalid_request_error", TOO_LONG))
        ids.append(await operator_send(paths.host_socket, "alice", "job-x"))
        await wait_acked(paths.agent_socket("alice"), ids[0])
        assert [e["outcome"] for e in ends_of(alice, ids[0])] == ["too_long", "ok"]
        # claude did not compact by itself (its auto-compaction is off): the failed request
        # is followed by the harness's compaction, then the retry on the compacted session.
        failed, compaction, retry, *_ = mock_api.main_requests[before:]
        assert "job-x" in newest_wake(failed) and not is_compaction(failed)
        assert is_compaction(compaction)
        assert "job-x" in newest_wake(retry) and not retry.tool_results
        assert any("kept: the job and who asked" in t for t in retry.user_texts)
        assert "compacting" in states(alice)
        assert [s["new_session"] for s in starts_of(alice, ids[0])] == [False, False]
        assert (await operator_inbox(hive)).count("answer to job-x") == 1


async def test_still_too_long_after_the_compaction_starts_a_new_session_answered_once(
    hive: Hive, mock_api: MockAnthropic, claude_bin: Path, short_tmp: Path, nursery: trio.Nursery
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    ids: list[int] = []
    mock_api.responder = answering("job-y", ids)
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        before = await warm_up(hive, alice, mock_api)
        mock_api.script(
            error(400, "invalid_request_error", TOO_LONG),
            text(SUMMARY),
            error(400, "invalid_request_error", TOO_LONG),
        )
        ids.append(await operator_send(paths.host_socket, "alice", "job-y"))
        await wait_acked(paths.agent_socket("alice"), ids[0])
        assert [e["outcome"] for e in ends_of(alice, ids[0])] == ["too_long", "too_long", "ok"]
        assert is_compaction(mock_api.main_requests[before + 1])
        assert [s["new_session"] for s in starts_of(alice, ids[0])] == [False, False, True]
        # The new session carries the message once, told it is a new attempt at it.
        fresh = mock_api.main_requests[before + 3]
        assert "job-y" in newest_wake(fresh) and "new attempt at it" in fresh.last_user_text
        assert sum("job-y" in t for t in fresh.user_texts) == 1
        assert not any("warm-up" in t for t in fresh.user_texts)
        assert (await operator_inbox(hive)).count("answer to job-y") == 1


async def cli(hive: Hive, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERHIVE_")}
    argv = [sys.executable, "-m", "hyperhive", *args, "--run-dir", str(hive.config.paths.run_dir)]
    proc = await trio.run_process(
        argv, env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode()


async def test_the_operator_compacts_from_the_ui_and_the_cli(
    hive: Hive, mock_api: MockAnthropic, claude_bin: Path, short_tmp: Path, nursery: trio.Nursery
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    await hive.spawn("bob")  # no harness runs for bob
    mock_api.responder = lambda req: text(SUMMARY) if is_compaction(req) else text("ok")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "some-work")
        await wait_acked(paths.agent_socket("alice"), sent)

        # The UI's /compact (what the dashboard forwards from /agent/alice/api/compact).
        r = await alice.post("/api/compact")
        assert r.status == 200 and r.json() == {"compact_pending": True}
        await alice.wait_for("note", lambda p: "session compacted" in p["text"])
        assert [is_compaction(r) for r in mock_api.main_requests] == [False, True]

        # hyperhive compact NAME: the daemon asks the harness on its UI socket (after one
        # more turn: a session that was just compacted has nothing to compact).
        more = await operator_send(paths.host_socket, "alice", "more-work")
        await wait_acked(paths.agent_socket("alice"), more)
        code, out = await cli(hive, "compact", "alice")
        assert code == 0 and "alice compacts its session" in out, out
        await alice.wait_for("note", lambda p: "session compacted" in p["text"], count=2)
        assert [is_compaction(r) for r in mock_api.main_requests] == [False, True, False, True]
        assert states(alice).count("compacting") == 2
        state = (await alice.get("/api/state")).json()
        assert state["turn_state"] == "idle" and state["compact_pending"] is False

        code, out = await cli(hive, "compact", "bob")
        assert code == 1 and "bob's harness cannot be reached" in out, out
        code, out = await cli(hive, "compact", "nobody")
        assert code == 1, out
