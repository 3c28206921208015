"""The harness's tools over MCP's HTTP transport (``McpHost`` + ``mcp_http``), reached the way
claude reaches them: the MCP SDK's streamable HTTP client, raw HTTP requests of another
process on the shared loopback, and the real claude, against a real daemon."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from mcp.client import Client as McpClient

from hyperhive.supervisor import Hive
from hyperhive_harness import mcp_host, mcp_http
from hyperhive_harness.mcp_http import PATH_PREFIX
from hyperhive_harness.prompt import claude_env, mcp_http_config

from .fixtures import eventually
from .mock_anthropic import MockAnthropic, text, tool_result_text, tool_use
from .test_mcp_host import (
    alices_tools_checked,
    bob_got_alices_send,
    hosting,
    inbox,
)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}},
}


async def post(url: str, body: Any, **headers: str) -> httpx2.Response:
    """One request as another process on the host's loopback would send it."""
    with trio.fail_after(15):
        async with httpx2.AsyncClient() as http:
            return await http.post(url, json=body, headers=headers)


async def test_tools_over_http_act_as_the_harness_agent(hive: Hive, short_tmp: Path) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        url = host.url(host.open_turn())
        assert url.startswith("http://127.0.0.1:")
        with trio.fail_after(30):
            async with McpClient(url) as mcp:
                sent = await alices_tools_checked(mcp, "over http")
        # Every call was timed inside the harness.
        assert len(host.call_durations) == 4
    await bob_got_alices_send(hive, sent, "over http")


async def test_the_turn_config_names_the_url_and_keeps_the_extra_servers(
    hive: Hive, short_tmp: Path
) -> None:
    await hive.spawn("alice")
    extra = {
        "search": {"type": "stdio", "command": "srch", "args": [], "env": {}},
        "hyperhive": {"type": "stdio", "command": "evil", "args": [], "env": {}},
    }
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        token = host.open_turn()
        servers = host.config("/py", token, extra)["mcpServers"]
        assert servers["search"] == extra["search"]
        assert servers["hyperhive"] == {  # never replaced by an extra server
            "type": "http",
            "url": f"http://127.0.0.1:{host.port}/mcp/{token}",
        }


async def test_a_request_without_the_turns_secret_is_refused(hive: Hive, short_tmp: Path) -> None:
    await hive.spawn("alice")
    await hive.spawn("bob")
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        base = host.url("x")[: -len(PATH_PREFIX + "x")]
        # Between turns no secret is valid.
        between = await post(host.url("0" * 64), INITIALIZE)
        assert between.status_code == 403 and "no turn is running" in between.text

        old = host.open_turn()
        token = host.open_turn()  # a new turn: the earlier secret is void
        send = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "send", "arguments": {"to": "bob", "body": "forged"}},
        }
        near = token[:-1] + ("1" if token.endswith("0") else "0")  # one digit off
        for url in (host.url("guess"), host.url(old), host.url(near), base + "/"):
            refused = await post(url, send)
            assert refused.status_code in (403, 404), url
            assert "refused" in refused.text and "jsonrpc" not in refused.text
        # A browser page (it sends an Origin) is refused even with the secret.
        browser = await post(host.url(token), send, origin="http://evil.example")
        assert browser.status_code == 403 and "Origin" in browser.text
        assert host.refused == 6

        # The turn's own requests work meanwhile, one JSON-RPC message per POST.
        ok = await post(host.url(token), {**send, "params": {"name": "send", "arguments": {
            "to": "bob", "body": "still me"}}})  # fmt: skip
        assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
        assert ok.json()["result"]["isError"] is False
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await post(host.url(token), note)).status_code == 202
        with trio.fail_after(15):
            async with httpx2.AsyncClient() as http:
                stream = await http.get(host.url(token))
        assert stream.status_code == 405  # no server event stream: nothing of our own to say
        too_big = await post(host.url(token), {"x": "y" * (1 << 20)})
        assert too_big.status_code == 413

        # The turn ends: its secret is void.
        host.close_turn()
        after = await post(host.url(token), send)
        assert after.status_code == 403 and "no turn is running" in after.text
    assert [m.body for m in await inbox(hive, "bob")] == ["still me"]


async def test_the_end_of_a_turn_cancels_its_calls_and_closes_its_connections(
    hive: Hive, short_tmp: Path
) -> None:
    await hive.spawn("alice")
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        token = host.open_turn()
        recv = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "recv", "arguments": {"wait_seconds": 120}},
        }
        answers: list[httpx2.Response | Exception] = []

        async def long_recv() -> None:
            try:
                answers.append(await post(host.url(token), recv))
            except Exception as exc:  # the connection closed under the request
                answers.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_recv)
            await eventually(lambda: host._calls, within=10, what="the call running in the harness")
            started = trio.current_time()
            host.close_turn()
        assert trio.current_time() - started < 2.0
        [answer] = answers
        assert isinstance(answer, Exception) or answer.json()["error"]["code"] == -32800
        assert host._calls == {}


async def test_claude_calls_the_tools_over_http(
    hive: Hive,
    short_tmp: Path,
    mock_api: MockAnthropic,
    claude_bin: Path,
    claude_env: dict[str, str],
    claude_home: Path,
) -> None:
    """The real claude with the turn's config (``"type": "http"``) calls a read and a write;
    both are answered by the harness as its agent. (With the daemon gone, see
    ``test_mcp_host.test_claude_reads_a_readable_error_when_the_daemon_is_gone``.)"""
    await hive.spawn("alice")
    await hive.spawn("bob")
    mock_api.script(
        tool_use("mcp__hyperhive__get_agent_meta", {}),
        tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hi from claude"}),
        text("ok"),
    )
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        config = short_tmp / "mcp.json"
        config.write_text(json.dumps(host.config("/unused", host.open_turn())))
        assert json.loads(config.read_text())["mcpServers"]["hyperhive"]["type"] == "http"
        cmd = [
            str(claude_bin), "--print", "--verbose", "--output-format", "stream-json",
            "--model", "haiku", "--mcp-config", str(config), "--strict-mcp-config",
            "--allowedTools", "mcp__hyperhive__send,mcp__hyperhive__get_agent_meta",
            "--", "greet bob",
        ]  # fmt: skip
        with trio.fail_after(90):
            proc = await trio.run_process(
                cmd, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                env=claude_env, cwd=claude_home, check=False,
            )  # fmt: skip
        host.close_turn()
        assert len(host.call_durations) == 2
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    [init] = [e for e in events if e["type"] == "system" and e.get("subtype") == "init"]
    assert {"name": "hyperhive", "status": "connected"} in [
        {"name": s["name"], "status": s["status"]} for s in init["mcp_servers"]
    ]
    [_, second, third] = mock_api.main_requests
    [meta] = second.tool_results
    assert meta.get("is_error") is not True and "alice" in tool_result_text(meta)
    sent = third.tool_results[-1]
    assert sent.get("is_error") is not True
    [msg] = await inbox(hive, "bob")
    assert (msg.from_, msg.body) == ("alice", "hi from claude")
    assert tool_result_text(sent) == f"sent #{msg.id} to bob"


def test_a_configured_proxy_is_never_asked_for_the_loopback_tools() -> None:
    env = claude_env({"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "example.org"})
    assert env["NO_PROXY"] == "127.0.0.1"
    assert env["no_proxy"] == "example.org,127.0.0.1"
    assert claude_env({"http_proxy": "p", "NO_PROXY": "127.0.0.1"})["NO_PROXY"] == "127.0.0.1"
    assert "NO_PROXY" not in claude_env({"PATH": "/bin"})  # no proxy: nothing added


async def test_a_silent_connection_is_closed_but_the_turns_own_may_idle(
    hive: Hive, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process cannot hold connections open without the secret; claude's kept-alive
    connection is not closed under it between two calls (a POST on a closing connection
    would fail the call)."""
    monkeypatch.setattr(mcp_http, "REQUEST_HEAD_SECONDS", 0.3)
    await hive.spawn("alice")
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        token = host.open_turn()
        assert host.port is not None
        with trio.fail_after(10):
            silent = await trio.open_tcp_stream("127.0.0.1", host.port)
            assert await silent.receive_some(100) == b""  # closed by the harness
            await silent.aclose()

        path = host.url(token).split(str(host.port), 1)[1]
        with trio.fail_after(10):
            kept = await trio.open_tcp_stream("127.0.0.1", host.port)
            async with kept:
                for i in range(2):
                    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"}).encode()
                    await kept.send_all(
                        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    answer = b""
                    while not answer.endswith(b"}"):
                        data = await kept.receive_some(4096)
                        assert data, "the connection was closed"
                        answer += data
                    assert answer.startswith(b"HTTP/1.1 200 ")
                    assert answer.endswith(f'"id":{i},"result":{{}}}}'.encode())
                    if i == 0:
                        # Idle for longer than a new connection may stay silent: the
                        # duration is the behaviour under test, not a stand-in for
                        # synchronisation.
                        await trio.sleep(1.0)


async def test_claude_does_not_stall_when_nobody_serves_the_tools(
    short_tmp: Path,
    mock_api: MockAnthropic,
    claude_bin: Path,
    claude_env: dict[str, str],
    claude_home: Path,
) -> None:
    """A config naming a port where no harness listens: claude shows the server as failed
    and runs the turn without the tools, about as fast as a bare turn (no retry stall)."""
    with trio.socket.socket() as probe:  # a free loopback port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = short_tmp / "mcp.json"
    config.write_text(json.dumps(mcp_http_config(f"http://127.0.0.1:{port}/mcp/{'0' * 64}")))
    cmd = [
        str(claude_bin), "--print", "--verbose", "--output-format", "stream-json",
        "--model", "haiku", "--mcp-config", str(config), "--strict-mcp-config",
        "--allowedTools", "mcp__hyperhive__send", "--", "hello",
    ]  # fmt: skip
    started = trio.current_time()
    with trio.fail_after(60):
        proc = await trio.run_process(
            cmd, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
            env=claude_env, cwd=claude_home, check=False,
        )  # fmt: skip
    elapsed = trio.current_time() - started
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    [init] = [e for e in events if e["type"] == "system" and e.get("subtype") == "init"]
    [server] = [s for s in init["mcp_servers"] if s["name"] == "hyperhive"]
    assert server["status"] == "failed"
    [request] = mock_api.main_requests
    assert not [t for t in request.tool_names if t.startswith("mcp__hyperhive__")]
    assert elapsed < 15, f"the turn took {elapsed:.1f} s"


async def test_connections_that_never_show_the_secret_cannot_lock_claude_out(
    hive: Hive, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any process of the host may connect to the loopback port: at the connection cap the
    oldest connection that has not shown the turn's secret is closed for the new one, so a
    flood of silent connections never keeps the turn's own claude from its tools."""
    monkeypatch.setattr(mcp_host, "MAX_HTTP_CONNECTIONS", 4)
    await hive.spawn("alice")
    async with hosting(hive.config.paths.agent_socket("alice"), short_tmp / "t.sock") as host:
        token = host.open_turn()
        assert host.port is not None
        with trio.fail_after(20):
            silent = [await trio.open_tcp_stream("127.0.0.1", host.port) for _ in range(4)]
            for _ in range(3):  # the cap is full of silent connections, again and again
                reply = await post(host.url(token), {"jsonrpc": "2.0", "id": 1, "method": "ping"})
                assert reply.status_code == 200 and reply.json()["result"] == {}
                silent.append(await trio.open_tcp_stream("127.0.0.1", host.port))
            # The oldest silent ones were closed to make room, the newest are still open.
            assert await silent[0].receive_some(100) == b""
            for stream in silent:
                await stream.aclose()
