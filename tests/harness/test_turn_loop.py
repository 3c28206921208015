"""End to end: a real daemon, real harness processes, the real claude, the mock API.

1. operator → alice "greet bob" → alice's claude calls ``mcp__hyperhive__send`` → bob turns.
2. ``ask`` → the operator answers with ``hyperhive answer`` → the asker turns on
   ``question_answered``.
Plus cancel, new session and the ``wake`` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from hyperhive.supervisor import Hive

from .fixtures import (
    ROOT,
    eventually,
    for_agent,
    make_harness,
    operator_send,
    result_text,
    running,
    tool_results,
    tool_uses,
    wait_acked,
)
from .mock_anthropic import MockAnthropic, RecordedRequest, hold, text, tool_use

HYPERHIVE_TOOLS = {
    f"mcp__hyperhive__{t}"
    for t in (
        "send",
        "recv",
        "ask",
        "answer",
        "get_loose_ends",
        "cancel_loose_end",
        "set_status",
        "get_agent_meta",
        "remind",
    )
}


async def test_alice_greets_bob_through_the_mcp_send_tool(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    await hive.spawn("bob")

    def reply(req: RecordedRequest) -> object:
        if for_agent("alice")(req) and not req.tool_results:
            return tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hello bob, alice here"})
        return text("done")

    mock_api.default = reply  # type: ignore[assignment]
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    bob = make_harness("bob", mock_api, claude_bin, short_tmp, paths.agent_socket("bob"))
    async with running(alice, nursery), running(bob, nursery):
        sent = await operator_send(paths.host_socket, "alice", "greet bob")
        ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert ends[0]["payload"]["ok"] is True, alice.failure_help()
        bob_start = (await bob.wait_for("turn_start", lambda p: p["from"] == "alice"))[0]
        assert bob_start["payload"]["body"] == "hello bob, alice here"
        bob_end = await bob.wait_for("turn_end", lambda p: p["id"] == bob_start["payload"]["id"])
        assert bob_end[0]["payload"]["ok"] is True

        events = alice.events()
        starts = [e["payload"] for e in events if e["kind"] == "turn_start"]
        assert starts[0]["from"] == "operator" and starts[0]["body"] == "greet bob"
        assert starts[0]["id"] == sent and starts[0]["unread"] == 0
        calls = [u for u in tool_uses(events) if u["name"] == "mcp__hyperhive__send"]
        assert calls and calls[0]["input"] == {"to": "bob", "body": "hello bob, alice here"}
        results = [r for r in tool_results(events) if r.get("tool_use_id") == calls[0]["id"]]
        assert results and not results[0].get("is_error"), results
        assert str(bob_start["payload"]["id"]) in result_text(results[0])
        kinds = [e["kind"] for e in events]
        assert kinds.index("turn_start") < kinds.index("stream") < kinds.index("turn_end")
        states = [e["payload"]["state"] for e in events if e["kind"] == "turn_state_changed"]
        assert states[:2] == ["thinking", "idle"]
        usage = [e["payload"] for e in events if e["kind"] == "token_usage_changed"]
        assert usage and usage[0]["ctx"] > 0 and usage[0]["cost"] > 0

        alice_requests = [r for r in mock_api.main_requests if for_agent("alice")(r)]
        first = alice_requests[0]
        assert set(first.tool_names) >= HYPERHIVE_TOOLS
        assert "mcp__hyperhive__request_spawn" not in first.tool_names
        assert "greet bob" in first.last_user_text
        assert f"New message #{sent} from the operator" in first.last_user_text
        assert "No other messages are waiting." in first.last_user_text
        assert "haiku" in (first.model or "")

        # Both messages were acked after their turns.
        await wait_acked(paths.agent_socket("alice"), sent)
        bob_msg = await wait_acked(paths.agent_socket("bob"), bob_start["payload"]["id"])
        assert bob_msg.from_ == "alice"


async def test_ask_then_operator_answer_wakes_the_asker(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")

    def reply(req: RecordedRequest) -> object:
        if "please ask" in req.last_user_text and not req.tool_results:
            return tool_use(
                "mcp__hyperhive__ask", {"question": "Ship it?", "options": ["yes", "no"]}
            )
        return text("noted")

    mock_api.default = reply  # type: ignore[assignment]
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "please ask the operator")
        end = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert end[0]["payload"]["ok"] is True, alice.failure_help()
        open_questions = await hive.questions.list()
        assert [(q.asker, q.question) for q in open_questions] == [("alice", "Ship it?")]
        qid = open_questions[0].id

        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "hyperhive",
                "answer",
                str(qid),
                "yes",
                "--run-dir",
                str(paths.run_dir),
                "--state-dir",
                str(paths.state_dir),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(ROOT),
        )
        assert result.returncode == 0, result.stderr.decode()

        start = (await alice.wait_for("turn_start", lambda p: p["from"] == "system"))[0]
        body = start["payload"]["body"]
        assert body.startswith("question_answered")
        fields = json.loads(body.split(" ", 1)[1])
        assert fields["id"] == qid and fields["answer"] == "yes"
        assert fields["answerer"] == "operator"
        await alice.wait_for("turn_end", lambda p: p["id"] == start["payload"]["id"])
        seen = [r for r in mock_api.main_requests if "question_answered" in r.last_user_text]
        assert seen and '"answer": "yes"' in seen[-1].last_user_text


async def test_cancel_interrupts_the_running_turn_and_acks_it(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    gate = hold()
    mock_api.script(gate)
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        refused = await alice.post("/api/cancel")
        assert refused.json() == {"cancelled": False}  # nothing runs yet
        sent = await operator_send(paths.host_socket, "alice", "long job")
        with trio.fail_after(30):
            await gate.arrived.wait()
        state = (await alice.get("/api/state")).json()
        assert state["turn_state"] == "thinking" and state["current_turn"]["id"] == sent
        assert (await alice.post("/api/cancel")).json() == {"cancelled": True}
        end = (await alice.wait_for("turn_end", lambda p: p["id"] == sent))[0]["payload"]
        gate.release()
        assert end["ok"] is False and end["outcome"] == "cancelled"
        assert "cancelled by the operator" in end["note"]
        notes = [e["payload"]["text"] for e in alice.events("note")]
        assert any("operator cancelled the turn" in n for n in notes)
        # Policy: the operator chose to stop it, so it is acked, not replayed.
        await wait_acked(paths.agent_socket("alice"), sent)
        assert (await alice.get("/api/state")).json()["turn_state"] == "idle"


async def test_new_session_runs_the_next_turn_without_continue(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        for body in ("first-marker", "second-marker"):
            sent = await operator_send(paths.host_socket, "alice", body)
            await alice.wait_for("turn_end", lambda p, sent=sent: p["id"] == sent)
        # --continue carried the first turn into the second.
        assert any("first-marker" in t for t in mock_api.main_requests[-1].user_texts)

        assert (await alice.post("/api/new-session")).json() == {"new_session": True}
        sent = await operator_send(paths.host_socket, "alice", "third-marker")
        start = (await alice.wait_for("turn_start", lambda p: p["id"] == sent))[0]["payload"]
        await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert start["new_session"] is True
        texts = mock_api.main_requests[-1].user_texts
        assert any("third-marker" in t for t in texts)
        assert not any("first-marker" in t or "second-marker" in t for t in texts)

        sent = await operator_send(paths.host_socket, "alice", "fourth-marker")
        await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        texts = mock_api.main_requests[-1].user_texts
        assert any("third-marker" in t for t in texts)  # continued again


async def test_wake_command_injects_into_the_own_inbox(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "hyperhive_harness",
                "wake",
                "--from",
                "forge: PR #4",
                "--body",
                "-",
            ],
            stdin=b"PR #4 was opened\nplease review",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(ROOT),
            env=alice.env,
        )
        assert result.returncode == 0, result.stderr.decode()
        wake_id = int(result.stdout.decode().strip())
        start = (await alice.wait_for("turn_start", lambda p: p["id"] == wake_id))[0]["payload"]
        assert start["from"] == "forge: PR #4"
        assert start["body"] == "PR #4 was opened\nplease review"
        await alice.wait_for("turn_end", lambda p: p["id"] == wake_id)
        prompt = mock_api.main_requests[-1].last_user_text
        assert "forge: PR #4" in prompt and "is a label, not an agent" in prompt

    # Without a daemon the command fails with a readable error and exit code 2.
    missing = await trio.run_process(
        [
            sys.executable,
            "-m",
            "hyperhive_harness",
            "wake",
            "--from",
            "x",
            "--body",
            "y",
            "--socket",
            str(short_tmp / "nope.sock"),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=str(ROOT),
    )
    assert missing.returncode == 2 and b"cannot connect" in missing.stderr


async def test_mcp_subcommand_serves_the_hyperhive_tools(hive: Hive) -> None:
    await hive.spawn("alice")
    socket = hive.config.paths.agent_socket("alice")
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "hyperhive_harness", "mcp", "--socket", str(socket)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for r in requests:
            await proc.stdin.send_all(json.dumps(r).encode() + b"\n")
        buf = b""
        with trio.fail_after(30):
            while b'"id":2' not in buf.replace(b" ", b""):
                data = await proc.stdout.receive_some(65536)
                assert data, "mcp server exited"
                buf += data
        replies = [json.loads(line) for line in buf.splitlines() if line.strip()]
        tools = {t["name"] for r in replies if r.get("id") == 2 for t in r["result"]["tools"]}
        assert {t.removeprefix("mcp__hyperhive__") for t in HYPERHIVE_TOOLS} <= tools
    finally:
        await proc.stdin.aclose()
        with trio.fail_after(15):
            await proc.wait()


async def test_harness_waits_for_the_daemon_and_turns_once_it_is_there(
    mock_api: MockAnthropic, claude_bin: Path, short_tmp: Path, nursery: trio.Nursery
) -> None:
    """Started before the daemon: it reports ``disconnected``, then connects."""
    from hyperhive.config import Config
    from hyperhive.supervisor import open_hive

    from ..conftest import make_paths

    paths = make_paths(short_tmp / "hive")
    # The socket dir is the daemon's to make: until then the UI lives elsewhere.
    alice = make_harness(
        "alice",
        mock_api,
        claude_bin,
        short_tmp,
        paths.agent_socket("alice"),
        HYPERHIVE_UI_SOCKET=str(short_tmp / "alice-ui.sock"),
    )
    async with running(alice, nursery):
        await alice.wait_for("status_changed", lambda p: p["status"] == "disconnected")
        assert (await alice.get("/api/state")).json()["connected"] is False
        async with open_hive(Config(paths=paths, backend="external")) as hive:
            await hive.spawn("alice")
            await alice.wait_for("status_changed", lambda p: p["status"] == "online")
            sent = await operator_send(paths.host_socket, "alice", "are you there")
            end = await alice.wait_for("turn_end", lambda p: p["id"] == sent)
            assert end[0]["payload"]["ok"] is True
            await eventually(
                lambda: hive.registry.harnesses.get("alice", 0) == 1, what="harness registered"
            )
