"""The mock Anthropic API: over raw HTTP (streaming, JSON, scripting, errors, recording)
and with the real ``claude`` binary as the client."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from .mock_anthropic import (
    MockAnthropic,
    error,
    hold,
    message,
    stream_error,
    text,
    text_block,
    tool_use,
    tool_use_block,
)

TOOLS = [{"name": "mcp__hyperhive__send", "description": "d", "input_schema": {"type": "object"}}]


def body(*, stream: bool, tools: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "model": "claude-haiku-test",
        "max_tokens": 100,
        "stream": stream,
        "system": [{"type": "text", "text": "You are a test."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        **kw,
    }
    if tools is not None:
        req["tools"] = tools
    return req


class Http:
    """A minimal keep-alive HTTP/1.1 client (h11 on a trio stream), for talking to the mock."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, mock: MockAnthropic) -> Http:
        return cls(await trio.open_tcp_stream("127.0.0.1", mock.port))

    async def request(
        self, method: str, path: str, obj: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        data = json.dumps(obj).encode() if obj is not None else b""
        headers = [("host", "127.0.0.1"), ("content-length", str(len(data)))]
        if data:
            headers.append(("content-type", "application/json"))
        out = self.conn.send(h11.Request(method=method, target=path, headers=headers))
        out += self.conn.send(h11.Data(data=data)) if data else b""
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        status, resp_headers, chunks = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, resp_headers, b"".join(chunks)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def post(self, path: str, obj: Any) -> tuple[int, dict[str, str], bytes]:
        return await self.request("POST", path, obj)

    async def aclose(self) -> None:
        await self.stream.aclose()


def sse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in data.decode().split("\n\n"):
        if not chunk.strip():
            continue
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def assemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Rebuild the message from SSE events the way an SDK client does."""
    msg: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        assert data["type"] == name
        if name == "message_start":
            msg = data["message"]
        elif name == "content_block_start":
            assert data["index"] == len(msg["content"])
            msg["content"].append(dict(data["content_block"]))
            partial[data["index"]] = ""
        elif name == "content_block_delta":
            block, delta = msg["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                partial[data["index"]] += delta["partial_json"]
        elif name == "content_block_stop":
            block = msg["content"][data["index"]]
            if block["type"] == "tool_use":
                block["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            msg.update(data["delta"])
            msg["usage"].update(data["usage"])
    assert events[-1][0] == "message_stop"
    return msg


# ---------------------------------------------------------------- over raw HTTP


async def test_default_reply_streaming_and_json(mock_api: MockAnthropic) -> None:
    http = await Http.open(mock_api)
    status, headers, data = await http.post("/v1/messages", body(stream=True, tools=TOOLS))
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    events = sse_events(data)
    assert [e for e, _ in events][:2] == ["message_start", "content_block_start"]
    msg = assemble(events)
    assert msg["content"] == [{"type": "text", "text": "ok"}]
    assert msg["stop_reason"] == "end_turn"
    assert msg["model"] == "claude-haiku-test"

    # Same connection (keep-alive), non-streaming: one JSON message.
    status, headers, data = await http.post("/v1/messages", body(stream=False, tools=TOOLS))
    assert status == 200
    assert headers["content-type"] == "application/json"
    reply = json.loads(data)
    assert reply["type"] == "message"
    assert reply["content"] == [{"type": "text", "text": "ok"}]
    assert reply["usage"]["output_tokens"] == 10
    await http.aclose()
    assert [r.stream for r in mock_api.main_requests] == [True, False]


async def test_scripted_replies_in_order(mock_api: MockAnthropic) -> None:
    long_text = "x" * 100 + " the end"
    mock_api.script(
        tool_use("mcp__hyperhive__send", {"to": "bob", "body": "hi " * 20}, id="toolu_1"),
        message(text_block(long_text), tool_use_block("Read", {"file_path": "/a"})),
        text("streamed", input_tokens=1234, output_tokens=56),
    )
    assert mock_api.pending == 3
    http = await Http.open(mock_api)
    _, _, data = await http.post("/v1/messages", body(stream=True, tools=TOOLS))
    msg = assemble(sse_events(data))
    assert msg["stop_reason"] == "tool_use"
    assert msg["content"] == [
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "mcp__hyperhive__send",
            "input": {"to": "bob", "body": "hi " * 20},
        }
    ]

    _, _, data = await http.post("/v1/messages", body(stream=False, tools=TOOLS))
    msg = json.loads(data)
    assert msg["stop_reason"] == "tool_use"
    assert msg["content"][0] == {"type": "text", "text": long_text}
    assert msg["content"][1]["name"] == "Read"
    assert msg["content"][1]["id"].startswith("toolu_")

    _, _, data = await http.post("/v1/messages", body(stream=True, tools=TOOLS))
    msg = assemble(sse_events(data))
    assert msg["content"] == [{"type": "text", "text": "streamed"}]
    assert msg["usage"]["input_tokens"] == 1234
    assert msg["usage"]["output_tokens"] == 56

    # The queue is empty: the default answers again.
    assert mock_api.pending == 0
    _, _, data = await http.post("/v1/messages", body(stream=False, tools=TOOLS))
    assert json.loads(data)["content"] == [{"type": "text", "text": "ok"}]
    await http.aclose()


async def test_side_requests_get_side_default(mock_api: MockAnthropic) -> None:
    mock_api.script(text("for the main loop"))
    mock_api.side_default = text("a side answer")
    http = await Http.open(mock_api)
    _, _, data = await http.post("/v1/messages", body(stream=False))  # no tools: side
    assert json.loads(data)["content"][0]["text"] == "a side answer"
    _, _, data = await http.post("/v1/messages?beta=true", body(stream=False, tools=TOOLS))
    assert json.loads(data)["content"][0]["text"] == "for the main loop"
    mock_api.script_side(text("scripted side"))
    _, _, data = await http.post("/v1/messages", body(stream=True))
    assert assemble(sse_events(data))["content"][0]["text"] == "scripted side"
    await http.aclose()
    assert [r.kind for r in mock_api.requests] == ["side", "main", "side"]
    assert len(mock_api.side_requests) == 2


async def test_computed_reply_sees_the_request(mock_api: MockAnthropic) -> None:
    mock_api.script(lambda req: text(f"echo: {req.last_user_text} / {req.tool_names}"))
    http = await Http.open(mock_api)
    _, _, data = await http.post("/v1/messages", body(stream=False, tools=TOOLS))
    assert json.loads(data)["content"][0]["text"] == "echo: hello there / ['mcp__hyperhive__send']"
    await http.aclose()


async def test_errors(mock_api: MockAnthropic) -> None:
    mock_api.script(
        error(429, "rate_limit_error", "slow down", retry_after=7),
        error(401, "authentication_error", "invalid x-api-key"),
        error(500, "api_error", "boom"),
        stream_error("overloaded_error", "Overloaded"),
        stream_error("overloaded_error", "Overloaded"),
    )
    http = await Http.open(mock_api)
    status, headers, data = await http.post("/v1/messages", body(stream=True, tools=TOOLS))
    assert status == 429
    assert headers["retry-after"] == "7"
    assert json.loads(data)["error"] == {"type": "rate_limit_error", "message": "slow down"}
    status, _, data = await http.post("/v1/messages", body(stream=True, tools=TOOLS))
    assert status == 401
    assert json.loads(data)["error"]["type"] == "authentication_error"
    status, _, data = await http.post("/v1/messages", body(stream=False, tools=TOOLS))
    assert (status, json.loads(data)["type"]) == (500, "error")
    # A stream error: HTTP 200, then an SSE error event; non-streaming gets HTTP 529.
    status, _, data = await http.post("/v1/messages", body(stream=True, tools=TOOLS))
    assert status == 200
    [(event, data_obj)] = sse_events(data)
    assert event == "error"
    assert data_obj["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    status, _, data = await http.post("/v1/messages", body(stream=False, tools=TOOLS))
    assert status == 529
    await http.aclose()
    assert [r.status for r in mock_api.requests] == [429, 401, 500, 200, 529]


async def test_recording_and_other_endpoints(mock_api: MockAnthropic) -> None:
    http = await Http.open(mock_api)
    req = body(stream=False, tools=TOOLS)
    req["messages"].append({"role": "assistant", "content": "hm"})
    req["messages"].append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "sent #4"},
                {"type": "text", "text": "<system-reminder>noise</system-reminder>"},
                {"type": "text", "text": "next"},
            ],
        }
    )
    await http.post("/v1/messages?beta=true", req)
    status, _, data = await http.post("/v1/messages/count_tokens?beta=true", body(stream=False))
    assert status == 200
    assert json.loads(data)["input_tokens"] > 0
    status, _, _ = await http.request("HEAD", "/api/hello")
    assert status == 200
    status, _, data = await http.request("GET", "/v1/nope")
    assert status == 404
    assert json.loads(data)["error"]["type"] == "not_found_error"
    await http.aclose()

    assert [r.kind for r in mock_api.requests] == ["main", "count_tokens", "other", "other"]
    rec = mock_api.main_requests[0]
    assert rec.model == "claude-haiku-test"
    assert rec.system_text == "You are a test."
    assert rec.tool_names == ["mcp__hyperhive__send"]
    assert rec.last_user_text == "next"
    assert rec.user_texts == ["hello there", "next"]
    assert [b["content"] for b in rec.tool_results] == ["sent #4"]
    assert rec.path == "/v1/messages?beta=true"
    assert rec.headers["content-type"] == "application/json"


async def test_wait_for_requests_and_hold(mock_api: MockAnthropic, nursery: trio.Nursery) -> None:
    gate = hold(text("released"))
    mock_api.script(gate)
    replies: list[bytes] = []
    answered = trio.Event()

    async def client() -> None:
        http = await Http.open(mock_api)
        replies.append((await http.post("/v1/messages", body(stream=False, tools=TOOLS)))[2])
        answered.set()
        await http.aclose()

    nursery.start_soon(client)
    [req] = await mock_api.wait_for_requests(1, within=10)
    assert req.last_user_text == "hello there"
    with trio.fail_after(10):
        await gate.arrived.wait()
    assert replies == []  # held: no answer yet
    gate.release()
    with trio.fail_after(10):
        await answered.wait()
    assert json.loads(replies[0])["content"][0]["text"] == "released"
    with pytest.raises(trio.TooSlowError):
        await mock_api.wait_for_requests(2, within=0.05)


# ---------------------------------------------------------------- with the real claude


async def run_claude(
    claude: Path, env: dict[str, str], cwd: Path, prompt: str, *args: str
) -> tuple[int, list[dict[str, Any]]]:
    cmd = [str(claude), "--print", "--verbose", "--output-format", "stream-json"]
    cmd += ["--model", "haiku", *args, "--", prompt]
    with trio.fail_after(60):
        proc = await trio.run_process(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            cwd=cwd,
            check=False,
        )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, lines


def final_result(events: list[dict[str, Any]]) -> dict[str, Any]:
    results = [e for e in events if e["type"] == "result"]
    assert len(results) == 1, events
    return results[0]


async def test_claude_streaming_turn(
    mock_api: MockAnthropic, claude_bin: Path, claude_env: dict[str, str], claude_home: Path
) -> None:
    mock_api.script(text("hello from the mock"))
    rc, events = await run_claude(claude_bin, claude_env, claude_home, "ping the mock")
    assert rc == 0
    result = final_result(events)
    assert result["is_error"] is False
    assert result["result"] == "hello from the mock"
    [req] = mock_api.main_requests
    assert req.stream is True
    assert req.last_user_text == "ping the mock"
    assert "haiku" in (req.model or "")
    assert "Bash" in req.tool_names
    assert req.headers["x-api-key"] == "test-key"
    assert mock_api.side_requests == []


async def test_claude_falls_back_to_json(
    mock_api: MockAnthropic, claude_bin: Path, claude_env: dict[str, str], claude_home: Path
) -> None:
    """Two broken streams make claude retry without streaming: the JSON path answers."""
    mock_api.script(stream_error(), stream_error(), text("from the json path"))
    rc, events = await run_claude(claude_bin, claude_env, claude_home, "hi")
    assert rc == 0
    assert final_result(events)["result"] == "from the json path"
    assert [r.stream for r in mock_api.main_requests] == [True, True, False]


@pytest.mark.parametrize(
    ("reply", "status", "error_type"),
    [
        (error(429, "rate_limit_error", "slow down", retry_after=0), 429, "rate_limit_error"),
        (error(401, "authentication_error", "invalid x-api-key"), 401, "authentication_error"),
        (error(500, "api_error", "boom"), 500, "api_error"),
    ],
)
async def test_claude_sees_api_errors(
    mock_api: MockAnthropic,
    claude_bin: Path,
    claude_home: Path,
    reply: Any,
    status: int,
    error_type: str,
) -> None:
    mock_api.default = reply
    env = mock_api.claude_env(claude_home, max_retries=0)
    rc, events = await run_claude(claude_bin, env, claude_home, "hi")
    assert rc != 0
    result = final_result(events)
    assert result["is_error"] is True
    assert result["terminal_reason"] == "api_error"
    assert result["api_error_status"] == status
    assert result["api_error_type"] == error_type
    assert [r.status for r in mock_api.main_requests] == [status]
