"""The per-agent web UI of a running harness: state, history, SSE, POST guards, /model, and
no-store mode when the events db cannot be opened."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path

import pytest
import trio

from hyperhive.supervisor import Hive
from hyperhive_harness.web import allowed_hosts, check_request, host_name

from ..conftest import need
from .fixtures import (
    CHROMIUM,
    Browser,
    eventually,
    http,
    make_harness,
    open_sse,
    operator_send,
    running,
)
from .mock_anthropic import MockAnthropic

# ---------------------------------------------------------------- request guards (sans-IO)

ALLOWED = allowed_hosts("127.0.0.1")


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("GET", {"host": "127.0.0.1:8100"}, None),
        ("GET", {"host": "localhost:8100"}, None),
        ("GET", {"host": "[::1]:8100"}, None),
        ("GET", {"host": "evil.example:8100"}, "not served"),  # DNS rebinding
        ("GET", {}, "not served"),
        ("POST", {"host": "127.0.0.1:8100", "origin": "http://127.0.0.1:8100"}, None),
        ("POST", {"host": "127.0.0.1:8100", "referer": "http://127.0.0.1:8100/"}, None),
        ("POST", {"host": "127.0.0.1:8100", "origin": "http://evil.example"}, "cross-origin"),
        ("POST", {"host": "127.0.0.1:8100", "origin": "http://127.0.0.1:9999"}, "cross-origin"),
        ("POST", {"host": "127.0.0.1:8100", "origin": "null"}, "cross-origin"),
        ("POST", {"host": "127.0.0.1:8100"}, "must carry an Origin"),
        (
            "POST",
            {
                "host": "127.0.0.1:8100",
                "origin": "http://127.0.0.1:8100",
                "sec-fetch-site": "cross-site",
            },
            "cross-site",
        ),
    ],
)
def test_check_request(method: str, headers: dict[str, str], refused: str | None) -> None:
    reason = check_request(method, headers, ALLOWED)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_allowed_hosts() -> None:
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM:80") == "example.com"
    assert "agents.example" in allowed_hosts("0.0.0.0", ("agents.example",))
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0")
    assert "10.0.0.5" in allowed_hosts("10.0.0.5")


# ---------------------------------------------------------------- against a running harness


async def test_ui_state_history_stream_and_guards(
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
        assert alice.port is not None
        # The chosen port is recorded in the state dir (sticky across restarts).
        assert (alice.state_dir / "hyperhive-ui-port").read_text().strip() == str(alice.port)

        page = await alice.get("/")
        assert page.status == 200 and b"<script>" in page.body
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert b"innerHTML" not in page.body  # untrusted text only ever goes to textContent
        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        state = (await alice.get("/api/state")).json()
        assert state["label"] == "alice" and state["role"] == "agent"
        assert state["status"] == "online" and state["turn_state"] == "idle"
        assert state["model"] == "haiku" and state["alive"] is True
        assert state["port"] == alice.port and state["events_stored"] is True

        async with open_sse(alice.port) as sse:
            with trio.fail_after(10):
                await sse.wait_open()
            assert sse.status == 200
            assert sse.headers["content-type"].startswith("text/event-stream")
            sent = await operator_send(paths.host_socket, "alice", "stream me")
            seen = []
            with trio.fail_after(60):
                while not (seen and seen[-1]["kind"] == "turn_end"):
                    seen.append(await sse.next_event())
        kinds = [e["kind"] for e in seen]
        assert kinds[0] == "turn_start" and seen[0]["payload"]["body"] == "stream me"
        assert "stream" in kinds and "turn_state_changed" in kinds
        assert seen[-1]["payload"] == {**seen[-1]["payload"], "ok": True, "id": sent}
        assert all(e["_id"] == str(e["seq"]) for e in seen)
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)

        history = (await alice.get("/events/history")).json()
        assert history["seq"] >= seen[-1]["seq"]
        by_seq = {e["seq"]: e for e in history["events"]}
        assert all(by_seq[e["seq"]]["kind"] == e["kind"] for e in seen)
        limited = (await alice.get("/events/history?limit=3")).json()["events"]
        assert [e["seq"] for e in limited] == [e["seq"] for e in history["events"][-3:]]

        # Resuming with Last-Event-ID replays exactly what came after it.
        resume_from = seen[1]["seq"]
        async with open_sse(alice.port, headers={"last-event-id": str(resume_from)}) as sse:
            with trio.fail_after(10):
                replay = [await sse.next_event() for _ in range(len(seen) - 2)]
        assert [e["seq"] for e in replay] == [e["seq"] for e in seen[2:]]

        inbox = (await alice.get("/api/inbox")).json()["messages"]
        assert [(m["id"], m["from"], m["body"]) for m in inbox] == [(sent, "operator", "stream me")]

        # Cross-origin and origin-less POSTs are refused before they act.
        evil = await alice.post("/api/model", {"model": "opus"}, origin="http://evil.example")
        assert evil.status == 403 and "cross-origin" in evil.json()["error"]
        bare = await alice.post("/api/send", {"body": "x"}, origin=None)
        assert bare.status == 403
        rebind = await http(alice.port, "GET", "/api/state", host="attacker.example")
        assert rebind.status == 403
        assert not alice.model_file.exists()
        assert len(await _inbox(alice)) == 1

        # Bad input is refused with a reason.
        assert (await alice.post("/api/model", {"model": "two words"})).status == 400
        assert (await alice.post("/api/send", {"body": "   "})).status == 400
        not_json = await http(
            alice.port,
            "POST",
            "/api/send",
            headers={"content-type": "text/plain", "content-length": "1"},
        )
        assert not_json.status in (400, 415)

        # The operator's composer: a message to this agent, sent as `operator` via wake.
        sent2 = (await alice.post("/api/send", {"body": "from the composer"})).json()["id"]
        start = (await alice.wait_for("turn_start", lambda p: p["id"] == sent2))[0]["payload"]
        assert start["from"] == "operator" and start["body"] == "from the composer"
        await alice.wait_for("turn_end", lambda p: p["id"] == sent2)
        state = (await alice.get("/api/state")).json()
        assert state["last_turn_seconds"] > 0 and state["ctx"] > 0 and state["cost"] > 0


async def _inbox(alice: object) -> list[object]:
    return (await alice.get("/api/inbox")).json()["messages"]  # type: ignore[attr-defined, no-any-return]


async def test_model_command_applies_to_the_next_turn_and_persists(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    # Short polls keep the test quick around the harness restart (see test_restarts).
    alice = make_harness(
        "alice",
        mock_api,
        claude_bin,
        short_tmp,
        paths.agent_socket("alice"),
        HYPERHIVE_RECV_WAIT="3",
    )
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "before")
        await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert "haiku" in (mock_api.main_requests[-1].model or "")

        reply = await alice.post("/api/model", {"model": "sonnet"})
        assert reply.status == 200 and reply.json() == {"model": "sonnet"}
        assert alice.model_file.read_text().strip() == "sonnet"
        changed = await alice.wait_for("model_changed", lambda p: p["model"] == "sonnet")
        assert changed
        assert (await alice.get("/api/state")).json()["model"] == "sonnet"

        sent = await operator_send(paths.host_socket, "alice", "after")
        start = (await alice.wait_for("turn_start", lambda p: p["id"] == sent))[0]["payload"]
        await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert start["model"] == "sonnet"
        model = mock_api.main_requests[-1].model or ""
        assert "sonnet" in model and "haiku" not in model

    # Across a restart of the harness the model file keeps it.
    async with running(alice, nursery):
        assert (await alice.get("/api/state")).json()["model"] == "sonnet"
        sent = await operator_send(paths.host_socket, "alice", "after restart")
        await alice.wait_for("turn_end", lambda p: p["id"] == sent)
        assert "sonnet" in (mock_api.main_requests[-1].model or "")


async def test_unwritable_events_db_still_runs_turns_and_streams(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    blocker = short_tmp / "not-a-dir"
    blocker.write_text("a regular file where a directory should be")
    db = blocker / "events.sqlite"
    alice = make_harness(
        "alice",
        mock_api,
        claude_bin,
        short_tmp,
        paths.agent_socket("alice"),
        HYPERHIVE_EVENTS_DB=str(db),
    )
    async with running(alice, nursery):
        assert alice.port is not None
        state = (await alice.get("/api/state")).json()
        assert state["events_stored"] is False and state["events_store_error"]
        history = (await alice.get("/events/history")).json()["events"]
        notes = [e["payload"]["text"] for e in history if e["kind"] == "note"]
        assert any("no-store mode" in n and str(db) in n for n in notes), notes

        async with open_sse(alice.port) as sse:
            with trio.fail_after(10):
                await sse.wait_open()
            sent = await operator_send(paths.host_socket, "alice", "no store")
            seen = []
            with trio.fail_after(60):
                while not (seen and seen[-1]["kind"] == "turn_end"):
                    seen.append(await sse.next_event())
        assert seen[0]["kind"] == "turn_start" and seen[0]["payload"]["id"] == sent
        assert any(e["kind"] == "stream" for e in seen)
        assert seen[-1]["payload"]["ok"] is True
        history = (await alice.get("/events/history")).json()["events"]
        assert any(e["kind"] == "turn_end" and e["payload"]["id"] == sent for e in history)
    assert not db.exists() and blocker.is_file()


async def test_page_in_a_real_browser_renders_live_and_never_runs_message_html(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    need(Path(CHROMIUM).is_file(), f"chromium is not installed at {CHROMIUM}")
    paths = hive.config.paths
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    hostile = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b> & done"
    async with running(alice, nursery), Browser.launch(short_tmp / "chromium") as browser:
        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        first = await operator_send(paths.host_socket, "alice", hostile)
        await alice.wait_for("turn_end", lambda p: p["id"] == first)
        page = await browser.open_page(f"http://127.0.0.1:{alice.port}/")

        async def text_of(selector: str) -> str:
            return str(
                await page.evaluate(
                    f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"
                )
            )

        async def live_has(fragment: str) -> bool:
            return fragment in await text_of("#live")

        # History: the finished turn is rendered, the hostile body as plain text.
        await eventually(lambda: live_has("✓ turn ok"), what="history rendered")
        assert await live_has(f"◆ TURN #{first} ← operator")
        assert await live_has(hostile)
        assert await page.evaluate("document.querySelectorAll('#live img, #inbox img').length") == 0
        assert await page.evaluate("document.querySelectorAll('#live b').length") == 0
        assert await page.evaluate("document.title") == "alice · hyperhive"
        assert await text_of("#status") == "online"
        assert await text_of("#model") == "model · haiku"
        await eventually(lambda: _has(text_of("#alive"), "alive"), what="SSE connected")
        await eventually(lambda: _has(text_of("#inbox"), hostile[:20]), what="inbox panel")

        # Live: a new turn arrives over SSE without a reload.
        second = await operator_send(paths.host_socket, "alice", "live-marker")
        await eventually(lambda: live_has("live-marker"), what="the new turn over SSE")
        await eventually(
            lambda: _count(text_of("#live"), "✓ turn ok", 2), what="the second turn's end"
        )
        await alice.wait_for("turn_end", lambda p: p["id"] == second)
        ctx = await text_of("#ctx")
        assert ctx.startswith("ctx · ") and ctx[len("ctx · ") :].replace(",", "").isdigit()

        # The composer: a slash command goes through the page's own (same-origin) POST.
        await page.evaluate(
            "document.getElementById('term-input').value = '/model sonnet';"
            "document.getElementById('composer').requestSubmit(); true"
        )
        await eventually(
            lambda: alice.model_file.exists() and alice.model_file.read_text().strip() == "sonnet",
            what="the model file written by the page",
        )
        await eventually(lambda: _has(text_of("#model"), "sonnet"), what="the model chip")
        # And an operator message typed into the composer.
        await page.evaluate(
            "document.getElementById('term-input').value = 'typed in the browser';"
            "document.getElementById('composer').requestSubmit(); true"
        )
        start = await alice.wait_for("turn_start", lambda p: p["body"] == "typed in the browser")
        assert start[0]["payload"]["from"] == "operator"


async def _has(text: Awaitable[str], fragment: str) -> bool:
    return fragment in await text


async def _count(text: Awaitable[str], fragment: str, n: int) -> bool:
    return (await text).count(fragment) >= n
