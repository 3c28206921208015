"""``hyperhive rehearse --auto``: the whole story with the real daemon, agents and claude."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperhive.rehearsal import script
from hyperhive.rehearsal.mock_api import RecordedRequest, ToolUseBlock

#: Starts nspawn containers: on a machined host these run one at a time (tests/conftest.py).
pytestmark = pytest.mark.nspawn


async def test_rehearse_auto_plays_the_whole_story(claude_bin: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HYPERHIVE_", "ANTHROPIC_", "CLAUDE"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    done = await trio.run_process(
        [sys.executable, "-m", "hyperhive", "rehearse", "--auto", "--claude", str(claude_bin)],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, out + err
    assert "dashboard: http://127.0.0.1:" in out
    # Each step of the story, seen through host.sock, in order.
    steps = [
        f"operator -> manager: {script.KICKOFF}",
        f"The manager asks to spawn {script.NEW_AGENT!r}",
        "--auto: approving it",
        f"{script.NEW_AGENT} -> operator: {script.HELLO}",
        f"asks (question #1): {script.QUESTION}",
        f"--auto: answering {script.OPTIONS[0]!r}",
        f"{script.NEW_AGENT} -> operator: {script.REPLY_PREFIX} {script.OPTIONS[0]}.",
        "The story is over",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    # Everything stopped (no process names its dirs) and its temporary dirs are gone.
    match = re.search(r"--run-dir (/\S+)/run", out)
    assert match, out
    root = match.group(1).encode()
    assert "Stopping the rehearsal's daemon" in out
    assert not Path(root.decode()).exists()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert root not in cmdline.read_bytes(), cmdline


def _request(agent: str, *messages: dict[str, Any]) -> RecordedRequest:
    body = {
        "system": [{"type": "text", "text": f"You are **{agent}**, an agent."}],
        "tools": [{"name": "mcp__hyperhive__send"}],
        "messages": [*messages, {"role": "system", "content": "<total_tokens>1</total_tokens>"}],
    }
    return RecordedRequest("POST", "/v1/messages", {}, body, b"", "main")


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _called(name: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": name, "input": args}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
    ]


def _tool(reply: Any) -> tuple[str, dict[str, Any]] | None:
    blocks = [b for b in reply.blocks if isinstance(b, ToolUseBlock)]
    return (blocks[0].name, blocks[0].input) if blocks else None


def test_the_script_answers_each_step_from_the_request_alone() -> None:
    kickoff = _request("manager", _user(f"New message #1.\n--- message ---\n{script.KICKOFF}"))
    assert _tool(script.story_reply(kickoff)) == (
        "mcp__hyperhive__request_spawn",
        {"name": "greeter", "description": "Greets the operator (rehearsal)."},
    )
    approved = 'approval_resolved {"agent": "greeter", "status": "approved"}'
    denied = 'approval_resolved {"agent": "greeter", "status": "denied"}'
    step = _tool(script.story_reply(_request("manager", _user(f"#2\n{approved}\n"))))
    assert step == ("mcp__hyperhive__send", {"to": "greeter", "body": script.GREETER_TASK})
    assert _tool(script.story_reply(_request("manager", _user(f"#2\n{denied}\n")))) is None
    # After a tool result (even with a trailing system entry) the turn ends.
    done = _request("manager", _user(script.KICKOFF), *_called("mcp__hyperhive__send", {}))
    assert _tool(script.story_reply(done)) is None

    hello = {"to": "operator", "body": script.HELLO}
    task = _request("greeter", _user(script.GREETER_TASK))
    assert _tool(script.story_reply(task)) == ("mcp__hyperhive__send", hello)
    sent = _request("greeter", _user(script.GREETER_TASK), *_called("mcp__hyperhive__send", hello))
    assert _tool(script.story_reply(sent)) == (
        "mcp__hyperhive__ask",
        {"question": script.QUESTION, "options": list(script.OPTIONS)},
    )
    answered = _request("greeter", _user('#5\nquestion_answered {"answer": "nap", "id": 1}\n'))
    assert _tool(script.story_reply(answered)) == (
        "mcp__hyperhive__send",
        {"to": "operator", "body": f"{script.REPLY_PREFIX} nap."},
    )
    assert _tool(script.story_reply(_request("someone", _user(script.KICKOFF)))) is None
