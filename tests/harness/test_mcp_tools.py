"""The hyperhive MCP server: over stdio with the MCP SDK's client against a real daemon, and
inside the real ``claude`` binary talking to the mock Anthropic API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from mcp.client import Client as McpClient
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult

from hyperhive.client import Client
from hyperhive.config import PROTOCOL_VERSION
from hyperhive.protocol import (
    Answer,
    Ask,
    GetAgentMeta,
    HelloReply,
    IdReply,
    Recv,
    RecvReply,
    Send,
    SendReply,
)
from hyperhive.supervisor import Hive
from hyperhive_harness.mcp_server import (
    AGENT_TOOLS,
    MANAGER_TOOLS,
    ConnectionPool,
    ToolError,
    connect_at_startup,
)

from .mock_anthropic import MockAnthropic, text, tool_result_text, tool_use

MCP_COMMAND = [sys.executable, "-m", "hyperhive_harness.mcp_server"]


@asynccontextmanager
async def mcp_session(socket: Path) -> AsyncIterator[McpClient]:
    params = StdioServerParameters(
        command=MCP_COMMAND[0], args=MCP_COMMAND[1:], env={"HYPERHIVE_SOCKET": str(socket)}
    )
    with trio.fail_after(30):
        async with McpClient(params) as client:
            yield client


async def call(client: McpClient, tool: str, **args: Any) -> str:
    """Call a tool that must succeed; return its text."""
    result = await client.call_tool(tool, args)
    assert isinstance(result, CallToolResult)
    assert result.is_error is False, result
    return result_text(result)


def result_text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


async def agent(hive: Hive, name: str) -> Client:
    """A direct connection to ``name``'s agent socket, to act as that agent."""
    return await Client.connect(hive.config.paths.agent_socket(name), hello_role="mcp")


async def inbox(hive: Hive, name: str) -> list[Any]:
    async with await agent(hive, name) as client:
        reply = await client.call(Recv(wait_seconds=0, max=32))
    assert isinstance(reply, RecvReply)
    return reply.messages


# ---------------------------------------------------------------- over stdio, SDK client


async def test_agent_tools_reach_the_daemon(hive: Hive) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with mcp_session(hive.config.paths.agent_socket("alice")) as mcp:
        listed = (await mcp.list_tools()).tools
        assert [t.name for t in listed] == list(AGENT_TOOLS)
        described = {t.name: t.description or "" for t in listed}
        assert "wait_seconds" in described["recv"] and "sleep" in described["recv"]
        assert "/state" in described["send"] and "'*'" in described["send"]
        assert "question_answered" in described["ask"]
        assert "alice" in (mcp.instructions or "")

        sent = await call(mcp, "send", to="bob", body="hello bob")
        assert sent.startswith("sent #") and sent.endswith(" to bob")

        refused = await mcp.call_tool("send", {"to": "nobody", "body": "hi"})
        assert refused.is_error is True
        assert "unknown recipient 'nobody'" in result_text(refused)

    [msg] = await inbox(hive, "bob")
    assert (msg.from_, msg.body) == ("alice", "hello bob")
    assert sent == f"sent #{msg.id} to bob"


async def test_manager_gets_the_manager_tools(hive: Hive) -> None:
    await hive.spawn("alice")
    async with mcp_session(hive.config.paths.agent_socket("manager")) as mcp:
        names = [t.name for t in (await mcp.list_tools()).tools]
        assert names == list(MANAGER_TOOLS)

        listing = await call(mcp, "list_containers")
        assert "alice: agent, registered" in listing
        assert "manager: manager" in listing

        requested = await call(mcp, "request_spawn", name="carol", description="a helper")
        assert "spawn carol" in requested and "pending" in requested
        [pending] = await hive.approvals.list(pending_only=True)
        assert (pending.agent, pending.kind, pending.description) == ("carol", "spawn", "a helper")
        assert f"approval #{pending.id}" in requested
        assert f"approval #{pending.id}: spawn carol, pending" in await call(mcp, "get_loose_ends")

        refused = await mcp.call_tool(
            "request_apply_commit", {"agent": "alice", "commit_ref": "xyz"}
        )
        assert refused.is_error is True
        assert "xyz" in result_text(refused)
        killed = await mcp.call_tool("kill", {"name": "alice"})
        assert killed.is_error is True
        assert "cannot kill alice" in result_text(killed)


async def test_recv_formats_acks_and_does_not_block_other_calls(hive: Hive) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with (
        await agent(hive, "bob") as bob,
        mcp_session(hive.config.paths.agent_socket("alice")) as mcp,
    ):
        first = await bob.call(Send(to="alice", body="first"))
        assert isinstance(first, SendReply)
        second = await bob.call(Send(to="alice", body="second", in_reply_to=first.id))
        assert isinstance(second, SendReply)
        got = await call(mcp, "recv", max=10)
        assert got.splitlines() == [
            f"#{first.id} from bob: first",
            f"#{second.id} from bob (reply to #{first.id}): second",
        ]
        assert await call(mcp, "recv") == "(empty)"  # acked at once: not delivered again

        # A long recv waits; meanwhile another call on the same server goes through.
        waited: list[str] = []
        done = trio.Event()

        async def long_recv() -> None:
            waited.append(await call(mcp, "recv", wait_seconds=60))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_recv)
            with trio.fail_after(10):
                await hive.broker.wait_parked("alice")  # the recv is waiting in the daemon
                sent = await call(mcp, "send", to="bob", body="while waiting")
            assert sent.startswith("sent #")
            assert not done.is_set()
            third = await bob.call(Send(to="alice", body="third"))
            assert isinstance(third, SendReply)
            with trio.fail_after(10):
                await done.wait()
        assert waited == [f"#{third.id} from bob: third"]


async def test_questions_status_and_meta(hive: Hive) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with (
        await agent(hive, "bob") as bob,
        mcp_session(hive.config.paths.agent_socket("alice")) as mcp,
    ):
        asked = await call(mcp, "ask", question="Deploy now?", options=["yes", "no"], to="bob")
        qid = int(asked.split("#", 1)[1].split()[0])
        assert asked.startswith(f"question #{qid} sent to bob")
        loose = await call(mcp, "get_loose_ends")
        assert f"question #{qid} from alice to bob: 'Deploy now?' (choose one of: yes, no)" in loose

        await bob.call(Answer(id=qid, answer="yes"))
        [answered] = (await call(mcp, "recv")).splitlines()
        assert answered.startswith("#") and " from system: question_answered " in answered
        assert json.loads(answered.split("question_answered ", 1)[1])["answer"] == "yes"
        assert await call(mcp, "get_loose_ends") == "(no loose ends)"

        # cancel_loose_end withdraws an open question.
        other = await call(mcp, "ask", question="Lunch?")
        other_id = int(other.split("#", 1)[1].split()[0])
        assert "sent to operator" in other
        assert await call(mcp, "cancel_loose_end", kind="question", id=other_id) == (
            f"cancelled question #{other_id}"
        )
        assert f"#{other_id}" not in await call(mcp, "get_loose_ends")

        # answer: bob asks alice, alice answers through the tool, bob hears back.
        bob_q = await bob.call(Ask(question="Ready?", to="alice"))
        assert isinstance(bob_q, IdReply)
        assert await call(mcp, "answer", id=bob_q.id, answer="ready") == (
            f"answered question #{bob_q.id}"
        )
        wrong = await mcp.call_tool("answer", {"id": bob_q.id, "answer": "again"})
        assert wrong.is_error is True
        assert "already resolved" in result_text(wrong)
        bob_inbox = await bob.call(Recv(wait_seconds=0, max=32))
        assert isinstance(bob_inbox, RecvReply)
        assert any(
            m.from_ == "system" and "question_answered" in m.body and '"ready"' in m.body
            for m in bob_inbox.messages
        )

        assert await call(mcp, "set_status", text="reviewing PR 12") == "status set"
        meta = await bob.call(GetAgentMeta(name="alice"))
        assert getattr(meta, "status_text", None) == "reviewing PR 12"
        mine = await call(mcp, "get_agent_meta")
        assert "name: alice" in mine and "status: reviewing PR 12" in mine
        assert "name: bob" in await call(mcp, "get_agent_meta", name="bob")
        too_long = await mcp.call_tool("set_status", {"text": "x" * 500})
        assert too_long.is_error is True
        assert "longer than" in result_text(too_long)


async def test_link_reconnects_once_after_a_daemon_restart(
    daemon: Any, nursery: trio.Nursery
) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"] is True
    link = ConnectionPool(str(daemon.paths.agent_socket("alice")))
    hello = await link.hello()
    assert isinstance(hello, HelloReply)
    assert (hello.name, hello.role, hello.protocol) == ("alice", "agent", PROTOCOL_VERSION)

    await daemon.kill()
    await daemon.start(nursery)  # the idle connection is now stale
    reply = await link.call(Send(to="operator", body="after restart"), SendReply)
    assert reply.id > 0
    inbox_reply = await daemon.call({"cmd": "inbox"})
    assert [m["body"] for m in inbox_reply["messages"]] == ["after restart"]

    await daemon.stop()
    try:
        await link.call(Send(to="operator", body="nobody home"), SendReply)
    except ToolError as exc:
        assert "cannot reach the hyperhive daemon" in str(exc)
    else:
        raise AssertionError("a call to a stopped daemon succeeded")
    await link.aclose()


async def test_startup_without_a_daemon_gives_up(short_tmp: Path) -> None:
    link = ConnectionPool(str(short_tmp / "missing.sock"))
    with trio.fail_after(5):
        assert await connect_at_startup(link, 0.2) is None


# ---------------------------------------------------------------- the real claude


def write_mcp_config(path: Path, socket: Path) -> Path:
    config = {
        "mcpServers": {
            "hyperhive": {
                "command": MCP_COMMAND[0],
                "args": MCP_COMMAND[1:],
                "env": {"HYPERHIVE_SOCKET": str(socket)},
            }
        }
    }
    path.write_text(json.dumps(config))
    return path


async def run_claude_with_mcp(
    claude: Path,
    env: dict[str, str],
    home: Path,
    mcp_config: Path,
    prompt: str,
    tools: tuple[str, ...] = AGENT_TOOLS,
) -> tuple[int, list[dict[str, Any]], str]:
    allowed = ",".join(f"mcp__hyperhive__{name}" for name in tools)
    cmd = [
        str(claude), "--print", "--verbose", "--output-format", "stream-json",
        "--model", "haiku", "--mcp-config", str(mcp_config), "--strict-mcp-config",
        "--allowedTools", allowed, "--", prompt,
    ]  # fmt: skip
    with trio.fail_after(60):
        proc = await trio.run_process(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            cwd=home,
            check=False,
        )
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, events, proc.stderr.decode(errors="replace")


async def test_claude_sends_through_the_mcp_server(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    claude_env: dict[str, str],
    claude_home: Path,
    tmp_path: Path,
) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    mock_api.script(
        tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hello from claude"}, id="toolu_a"),
        tool_use("mcp__hyperhive__send", {"to": "nobody", "body": "lost"}, id="toolu_b"),
        text("all sent"),
    )
    config = write_mcp_config(tmp_path / "mcp.json", hive.config.paths.agent_socket("alice"))
    rc, events, stderr = await run_claude_with_mcp(
        claude_bin, claude_env, claude_home, config, "greet bob"
    )
    assert rc == 0, stderr

    # bob got the message, sent as alice.
    [msg] = await inbox(hive, "bob")
    assert (msg.from_, msg.body) == ("alice", "hello from claude")

    # The model saw the hyperhive tools, and the tool results came back to it.
    first, second, third = mock_api.main_requests
    assert set(first.tool_names) >= {f"mcp__hyperhive__{name}" for name in AGENT_TOOLS}
    assert "mcp__hyperhive__request_spawn" not in first.tool_names
    assert first.last_user_text == "greet bob"
    [ok] = second.tool_results
    assert ok["tool_use_id"] == "toolu_a" and not ok.get("is_error")
    assert tool_result_text(ok) == f"sent #{msg.id} to bob"
    refused = third.tool_results[-1]
    assert refused["tool_use_id"] == "toolu_b" and refused["is_error"] is True
    assert "unknown recipient 'nobody'" in tool_result_text(refused)

    # The stream-json output: the server connected, the tool calls, and a clean result.
    [init] = [e for e in events if e["type"] == "system" and e.get("subtype") == "init"]
    assert {"name": "hyperhive", "status": "connected"} in [
        {"name": s["name"], "status": s["status"]} for s in init["mcp_servers"]
    ]
    uses = [
        block
        for e in events
        if e["type"] == "assistant"
        for block in e["message"]["content"]
        if block["type"] == "tool_use"
    ]
    assert [(u["name"], u["input"]["to"]) for u in uses] == [
        ("mcp__hyperhive__send", "bob"),
        ("mcp__hyperhive__send", "nobody"),
    ]
    [result] = [e for e in events if e["type"] == "result"]
    assert result["is_error"] is False
    assert result["result"] == "all sent"
    assert result["num_turns"] == 3


async def test_claude_manager_uses_the_manager_tools(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    claude_env: dict[str, str],
    claude_home: Path,
    tmp_path: Path,
) -> None:
    mock_api.script(
        tool_use("mcp__hyperhive__request_spawn", {"name": "dora", "description": "tests"}),
        tool_use("mcp__hyperhive__kill", {"name": "dora"}),
        text("asked"),
    )
    config = write_mcp_config(tmp_path / "mcp.json", hive.config.paths.agent_socket("manager"))
    # kill is offered to the model but not allowed: claude refuses it, the server never sees it.
    allowed = tuple(name for name in MANAGER_TOOLS if name != "kill")
    rc, events, stderr = await run_claude_with_mcp(
        claude_bin, claude_env, claude_home, config, "spawn dora", allowed
    )
    assert rc == 0, stderr
    first, second, third = mock_api.main_requests
    assert set(first.tool_names) >= {f"mcp__hyperhive__{name}" for name in MANAGER_TOOLS}
    [pending] = await hive.approvals.list(pending_only=True)
    assert (pending.agent, pending.kind, pending.description) == ("dora", "spawn", "tests")
    assert f"approval #{pending.id} (spawn dora) is pending" in tool_result_text(
        second.tool_results[-1]
    )
    assert third.tool_results[-1]["is_error"] is True
    [result] = [e for e in events if e["type"] == "result"]
    assert result["is_error"] is False
    assert [d["tool_name"] for d in result["permission_denials"]] == ["mcp__hyperhive__kill"]
