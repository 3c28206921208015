"""The harness's tool socket (``McpHost``) reached through the real shim process
(``python -I -S mcp_shim.py``) started by the MCP SDK's stdio client, and the real claude
with the turn's config (over HTTP, see test_mcp_http.py), against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp.client import Client as McpClient
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult

from hyperhive.client import Client
from hyperhive.protocol import Recv, RecvReply
from hyperhive.supervisor import Hive
from hyperhive_harness.mcp_host import SHIM, McpHost
from hyperhive_harness.mcp_server import AGENT_TOOLS, ConnectionPool, build_server
from hyperhive_harness.toolserver import HANDSHAKE_VERSIONS

from .mock_anthropic import MockAnthropic, text, tool_result_text, tool_use


@asynccontextmanager
async def hosting(agent_socket: Path, listen: Path) -> AsyncIterator[McpHost]:
    """A host for ``agent_socket``'s agent, listening, identity learnt from ``hello``."""
    host = McpHost(str(agent_socket), listen)
    hello = await host.pool.hello()
    host.set_identity(hello.role, hello.name)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        yield host
        nursery.cancel_scope.cancel()


def shim_params(host: McpHost, token: str | None) -> StdioServerParameters:
    env = {"HYPERHIVE_MCP_SOCKET": str(host.listen)}
    if token is not None:
        env["HYPERHIVE_MCP_TOKEN"] = token
    return StdioServerParameters(command=sys.executable, args=["-I", "-S", str(SHIM)], env=env)


@asynccontextmanager
async def session(host: McpHost, token: str) -> AsyncIterator[McpClient]:
    with trio.fail_after(30):
        async with McpClient(shim_params(host, token)) as client:
            yield client


def result_text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def run_shim(host: McpHost, token: str | None) -> subprocess.CompletedProcess[bytes]:
    """The shim as a second process would run it, with ``token`` (or none)."""
    params = shim_params(host, token)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    with trio.fail_after(15):
        return await trio.run_process(
            [params.command, *params.args],
            stdin=json.dumps(initialize).encode() + b"\n",
            capture_stdout=True,
            capture_stderr=True,
            env=params.env,
            check=False,
        )


async def inbox(hive: Hive, name: str) -> list[Any]:
    async with await Client.connect(hive.config.paths.agent_socket(name)) as client:
        reply = await client.call(Recv(wait_seconds=0, max=32))
    assert isinstance(reply, RecvReply)
    return reply.messages


async def alices_tools_checked(mcp: McpClient, body: str) -> CallToolResult:
    """What a session of alice's harness serves, whatever the transport: her tools, a send
    to bob with ``body`` (returned), and strict arguments (no coercion, no unknown keys,
    bounds) refused in words the model reads. Four tool calls in all."""
    assert [t.name for t in (await mcp.list_tools()).tools] == list(AGENT_TOOLS)
    assert "alice" in (mcp.instructions or "")
    sent = await mcp.call_tool("send", {"to": "bob", "body": body})
    assert sent.is_error is False, sent
    wrong_type = await mcp.call_tool("send", {"to": "bob", "body": 5})
    assert wrong_type.is_error is True
    assert "invalid arguments for send: body:" in result_text(wrong_type)
    extra = await mcp.call_tool("recv", {"wait_seconds": 0, "as": "bob"})
    assert extra.is_error is True
    assert "as: unknown argument" in result_text(extra)
    too_long = await mcp.call_tool("recv", {"wait_seconds": 10_000})
    assert too_long.is_error is True and "wait_seconds" in result_text(too_long)
    return sent


async def bob_got_alices_send(hive: Hive, sent: CallToolResult, body: str) -> None:
    """Bob's inbox holds alice's send of ``body``, and the tool's answer named its id."""
    [msg] = await inbox(hive, "bob")
    assert (msg.from_, msg.body) == ("alice", body)
    assert result_text(sent) == f"sent #{msg.id} to bob"


async def test_tools_through_the_shim_act_as_the_harness_agent(hive: Hive, short_tmp: Path) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    paths = hive.config.paths
    async with hosting(paths.agent_socket("alice"), short_tmp / "mcp.sock") as host:
        token = host.open_turn()
        async with session(host, token) as mcp:
            sent = await alices_tools_checked(mcp, "via the harness")
        # Every call was timed inside the harness.
        assert len(host.call_durations) == 4
    await bob_got_alices_send(hive, sent, "via the harness")


async def test_a_second_process_without_the_turns_secret_is_refused(
    hive: Hive, short_tmp: Path
) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "mcp.sock") as host:
        # Between turns no secret is valid.
        between = await run_shim(host, "0" * 64)
        assert between.returncode == 1 and b"no turn is running" in between.stderr

        old = host.open_turn()
        token = host.open_turn()  # a new turn: the earlier secret is void
        async with session(host, token) as mcp:
            for secret, why in ((None, b"wrong secret"), ("guess", b"wrong secret")):
                refused = await run_shim(host, secret)
                assert refused.returncode == 1
                assert b"refused this session" in refused.stderr and why in refused.stderr
                assert refused.stdout == b""  # not a byte of MCP was served
            stale = await run_shim(host, old)
            assert stale.returncode == 1 and b"wrong secret" in stale.stderr
            assert host.refused == 4
            # The turn's own session still works meanwhile.
            ok = await mcp.call_tool("send", {"to": "bob", "body": "still me"})
            assert ok.is_error is False

            # The turn ends: its secret is void and its session is closed.
            host.close_turn()
            after = await run_shim(host, token)
            assert after.returncode == 1 and b"no turn is running" in after.stderr
            with trio.fail_after(10):
                try:
                    closed = await mcp.call_tool("send", {"to": "bob", "body": "too late"})
                except Exception:  # the SDK reports the closed stream as an error
                    closed = None
            assert closed is None or closed.is_error is True
    assert [m.body for m in await inbox(hive, "bob")] == ["still me"]


@pytest.mark.serial  # asserts a latency: runs alone (docs/development.md)
async def test_a_tool_call_with_the_daemon_gone_fails_within_a_second(
    daemon: Any, short_tmp: Path
) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"] is True
    async with (
        hosting(daemon.paths.agent_socket("alice"), short_tmp / "mcp.sock") as host,
        session(host, host.open_turn()) as mcp,
    ):
        ok = await mcp.call_tool("send", {"to": "operator", "body": "before"})
        assert ok.is_error is False, ok
        await daemon.kill()  # crashed: its socket file is left behind, nobody listens
        for tool, args in (("send", {"to": "operator", "body": "after"}), ("recv", {})):
            started = trio.current_time()
            failed = await mcp.call_tool(tool, args)
            elapsed = trio.current_time() - started
            assert failed.is_error is True
            assert "cannot reach the hyperhive daemon at " in result_text(failed)
            assert elapsed < 1.0, f"{tool} took {elapsed:.2f} s to fail"


async def test_claude_reads_a_readable_error_when_the_daemon_is_gone(
    daemon: Any,
    short_tmp: Path,
    mock_api: MockAnthropic,
    claude_bin: Path,
    claude_env: dict[str, str],
    claude_home: Path,
) -> None:
    assert (await daemon.call({"cmd": "spawn", "name": "alice"}))["ok"] is True
    mock_api.script(tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hi"}), text("ok"))
    async with hosting(daemon.paths.agent_socket("alice"), short_tmp / "mcp.sock") as host:
        config = short_tmp / "mcp.json"
        config.write_text(json.dumps(host.config(sys.executable, host.open_turn())))
        await daemon.kill()
        cmd = [
            str(claude_bin), "--print", "--verbose", "--output-format", "stream-json",
            "--model", "haiku", "--mcp-config", str(config), "--strict-mcp-config",
            "--allowedTools", "mcp__hyperhive__send", "--", "greet bob",
        ]  # fmt: skip
        with trio.fail_after(60):
            proc = await trio.run_process(
                cmd, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                env=claude_env, cwd=claude_home, check=False,
            )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    [init] = [e for e in events if e["type"] == "system" and e.get("subtype") == "init"]
    assert {"name": "hyperhive", "status": "connected"} in [
        {"name": s["name"], "status": s["status"]} for s in init["mcp_servers"]
    ]
    [_, second] = mock_api.main_requests
    [failed] = second.tool_results
    assert failed["is_error"] is True
    assert "cannot reach the hyperhive daemon at " in tool_result_text(failed)
    # The harness answered the failed call at once.
    [duration] = host.call_durations
    assert duration < 1.0


def test_the_turn_config_starts_the_shim_and_keeps_the_extra_servers(short_tmp: Path) -> None:
    host = McpHost("/run/hive/mcp.sock", short_tmp / "mcp.sock")
    extra = {
        "search": {"type": "stdio", "command": "srch", "args": [], "env": {}},
        "hyperhive": {"type": "stdio", "command": "evil", "args": [], "env": {}},
    }
    first, second = host.open_turn(), host.open_turn()
    assert first != second and len(second) == 64
    servers = host.shim_config("/py", second, extra)["mcpServers"]
    assert servers["search"] == extra["search"]
    assert servers["hyperhive"] == {  # never replaced by an extra server
        "type": "stdio",
        "command": "/py",
        "args": ["-I", "-S", str(SHIM)],
        "env": {"HYPERHIVE_MCP_SOCKET": str(short_tmp / "mcp.sock"), "HYPERHIVE_MCP_TOKEN": second},
    }
    # The shim needs nothing beyond the standard library (it runs with -I -S).
    assert SHIM.is_file()
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(SHIM)], env={}, capture_output=True, check=False
    )
    assert proc.returncode == 1 and b"HYPERHIVE_MCP_SOCKET is not set" in proc.stderr


async def test_the_handshake_answers(short_tmp: Path) -> None:
    server = build_server(ConnectionPool(str(short_tmp / "none.sock")), role="agent", name="a")
    discover = await server.handle({"jsonrpc": "2.0", "id": "p", "method": "server/discover"})
    assert discover is not None
    assert discover["result"]["supportedVersions"] == list(HANDSHAKE_VERSIONS)
    init = {"protocolVersion": "2099-01-01", "capabilities": {}}
    answer = await server.handle(
        {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}
    )
    assert answer is not None and answer["result"]["protocolVersion"] == HANDSHAKE_VERSIONS[-1]
    init["protocolVersion"] = "2025-06-18"
    answer = await server.handle(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
    )
    assert answer is not None and answer["result"]["protocolVersion"] == "2025-06-18"
    unknown = await server.handle({"jsonrpc": "2.0", "id": 2, "method": "resources/list"})
    assert unknown is not None and unknown["error"]["code"] == -32601
    assert await server.handle({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
