"""The per-agent web UI of a running harness: served on its unix socket only (0600, no TCP
port unless ``--ui-port`` is given by hand), and to the operator through the dashboard at
``/agent/<name>/``: state, history, SSE, the dashboard's login and CSRF guards, /model, the
page in real Chromium (live stream, composer, new session, login panel), and no-store mode
when the events db cannot be opened."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import Page, expect

from hyperhive.config import Config
from hyperhive.supervisor import Daemon, Hive, open_daemon
from hyperhive_harness.page import CSRF_META
from hyperhive_harness.web import allowed_hosts, check_request, host_name
from tests.conftest import make_paths
from tests.dashboard.conftest import (  # noqa: F401 - chromium is a fixture
    BrowserThread,
    base_url,
    chromium,
    open_dashboard,
    session_cookie,
)

from .fixtures import (
    HttpResponse,
    eventually,
    http,
    login_harness,
    make_harness,
    open_sse,
    operator_send,
    running,
)
from .mock_anthropic import MockAnthropic

#: Browser expectations that wait for a claude turn (the mock API is quick, the CLI less so).
TURN_MS = 60_000
_CTX = re.compile(r"^ctx · [\d,]+$")
_SONNET = re.compile("sonnet")


@pytest.fixture
async def inproc(short_tmp: Path) -> AsyncIterator[Daemon]:
    """The daemon with its dashboard on: the operator reaches every agent UI through it."""
    config = Config(
        paths=make_paths(short_tmp), backend="external", dashboard_bind=("127.0.0.1:0",)
    )
    async with open_daemon(config) as d:
        yield d


@pytest.fixture
def hive(inproc: Daemon) -> Hive:
    return inproc.hive


class Dashboard:
    """Plain HTTP to the dashboard, as the operator's browser (cookie, CSRF token, Origin)."""

    def __init__(self, inproc: Daemon) -> None:
        assert inproc.auth is not None
        port = urlsplit(base_url(inproc)).port
        assert port is not None
        self.port = port
        self.cookie = session_cookie(inproc)
        self.csrf = inproc.auth.csrf

    async def get(self, path: str, *, cookie: bool = True, **kw: Any) -> HttpResponse:
        headers = {"cookie": self.cookie} if cookie else {}
        return await http(self.port, "GET", path, headers={**headers, **kw.pop("headers", {})})

    async def post(
        self, path: str, body: Any, *, cookie: bool = True, csrf: bool = True, **kw: Any
    ) -> HttpResponse:
        headers = {"cookie": self.cookie} if cookie else {}
        if csrf:
            headers["x-csrf-token"] = self.csrf
        return await http(self.port, "POST", path, json_body=body, headers=headers, **kw)


def tcp_listeners(pid: int) -> list[int]:
    """The TCP ports process ``pid`` listens on (its sockets looked up in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------- the debug TCP guard (sans-IO)

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


async def test_the_ui_is_a_private_unix_socket_and_tcp_only_when_asked(
    hive: Hive,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    assert hive.registry.ui_url("alice") is None
    async with running(alice, nursery):
        assert alice.proc is not None and alice.port is None
        ui = paths.ui_socket("alice")
        assert alice.ui_socket == ui == paths.agent_socket("alice").with_name("ui.sock")
        mode = ui.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        # One TCP listener: the tools' MCP endpoint on 127.0.0.1 for the turn's claude
        # (docs/harness.md), which serves nothing without the running turn's secret.
        [tools] = tcp_listeners(alice.proc.pid)
        for path in ("/", "/api/state", "/mcp/"):
            refused = await http(tools, "GET", path)
            assert refused.status in (403, 404) and refused.body.startswith(b"refused"), path
        ready = next(line for line in alice.output if "ready" in line)
        assert f"ui unix:{ui} " in ready and " tcp " not in ready
        # The dashboard links to it by its own path.
        assert hive.registry.ui_url("alice") == "/agent/alice/"
        [info] = [a for a in await hive.agent_infos() if a.name == "alice"]
        assert info.ui_url == "/agent/alice/"
        state = (await alice.get("/api/state")).json()
        assert state["ui_socket"] == str(ui) and state["port"] is None
    # A stopped harness takes its socket along.
    assert not ui.exists() and hive.registry.ui_url("alice") is None

    # Asked for by hand (debugging): a TCP port too, with the browser guards on it.
    alice.args = ("--ui-port", "0")
    async with running(alice, nursery):
        assert alice.proc is not None and alice.port is not None
        [tools] = [p for p in tcp_listeners(alice.proc.pid) if p != alice.port]
        assert (await http(tools, "GET", "/api/state")).status in (403, 404)
        assert (await http(alice.port, "GET", "/api/state")).json()["port"] == alice.port
        rebind = await http(alice.port, "GET", "/api/state", host="attacker.example")
        assert rebind.status == 403
        bare = await http(alice.port, "POST", "/api/model", json_body={"model": "x"}, origin=None)
        assert bare.status == 403
        evil = await http(
            alice.port, "POST", "/api/model", json_body={"model": "opus"}, origin="http://evil"
        )
        assert evil.status == 403 and not alice.model_file.exists()
        # The unix socket is served all the same.
        assert (await alice.get("/api/state")).status == 200


async def test_ui_through_the_dashboard_state_history_stream_and_guards(
    hive: Hive,
    inproc: Daemon,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
) -> None:
    paths = hive.config.paths
    dash = Dashboard(inproc)
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    async with running(alice, nursery):
        page = await dash.get("/agent/alice/")
        assert page.status == 200 and b"<script>" in page.body
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert f'<meta name="{CSRF_META}" content="{dash.csrf}">'.encode() in page.body
        assert b"innerHTML" not in page.body  # untrusted text only ever goes to textContent
        redirect = await dash.get("/agent/alice")
        assert redirect.status == 308 and redirect.headers["location"] == "/agent/alice/"

        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        state = (await dash.get("/agent/alice/api/state")).json()
        assert state["label"] == "alice" and state["role"] == "agent"
        assert state["status"] == "online" and state["turn_state"] == "idle"
        assert state["model"] == "haiku" and state["alive"] is True
        assert state["events_stored"] is True
        subscribers = state["subscribers"]

        cookie = {"cookie": dash.cookie}
        async with open_sse(dash.port, "/agent/alice/events/stream", headers=cookie) as sse:
            with trio.fail_after(10):
                await sse.wait_open()
            assert sse.status == 200
            assert sse.headers["content-type"].startswith("text/event-stream")
            assert "sandbox" in sse.headers["content-security-policy"]
            assert sse.headers["x-content-type-options"] == "nosniff"
            sent = await operator_send(paths.host_socket, "alice", "stream me")
            seen = []
            # Frames arrive one by one while the stream stays open: nothing waits for its end.
            with trio.fail_after(60):
                while not (seen and seen[-1]["kind"] == "turn_end"):
                    seen.append(await sse.next_event())
            during = (await dash.get("/agent/alice/api/state")).json()["subscribers"]
            assert during == subscribers + 1
        kinds = [e["kind"] for e in seen]
        assert kinds[0] == "turn_start" and seen[0]["payload"]["body"] == "stream me"
        assert "stream" in kinds and "turn_state_changed" in kinds
        assert seen[-1]["payload"] == {**seen[-1]["payload"], "ok": True, "id": sent}
        assert all(e["_id"] == str(e["seq"]) for e in seen)
        assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)

        # The browser left: the dashboard closed its upstream, so the harness closed the
        # subscription (the Bus notices a closed one at its next event: make one).
        new_session = await dash.post("/agent/alice/api/new-session", {})
        assert new_session.json() == {"new_session": True}

        async def back_to_before() -> bool:
            state = (await alice.get("/api/state")).json()
            return bool(state["subscribers"] == subscribers)

        await eventually(back_to_before, within=10, what="the SSE subscriber gone")

        history = (await dash.get("/agent/alice/events/history")).json()
        assert history["seq"] >= seen[-1]["seq"]
        by_seq = {e["seq"]: e for e in history["events"]}
        assert all(by_seq[e["seq"]]["kind"] == e["kind"] for e in seen)
        limited = (await dash.get("/agent/alice/events/history?limit=3")).json()["events"]
        assert [e["seq"] for e in limited] == [e["seq"] for e in history["events"][-3:]]

        # Resuming with Last-Event-ID replays exactly what came after it.
        resume = {**cookie, "last-event-id": str(seen[1]["seq"])}
        async with open_sse(dash.port, "/agent/alice/events/stream", headers=resume) as sse:
            with trio.fail_after(10):
                replay = [await sse.next_event() for _ in range(len(seen) - 2)]
        assert [e["seq"] for e in replay] == [e["seq"] for e in seen[2:]]

        inbox = (await dash.get("/agent/alice/api/inbox")).json()["messages"]
        assert [(m["id"], m["from"], m["body"]) for m in inbox] == [(sent, "operator", "stream me")]

        # Without the operator's login nothing is read or done; POSTs also need the CSRF
        # token and, when sent, the dashboard's own Origin.
        for path in ("/agent/alice/", "/agent/alice/api/state", "/agent/alice/events/history"):
            assert (await dash.get(path, cookie=False)).status == 401
        assert (await dash.post("/agent/alice/api/send", {"body": "x"}, cookie=False)).status == 401
        no_token = await dash.post("/agent/alice/api/model", {"model": "opus"}, csrf=False)
        assert no_token.status == 403 and "CSRF" in no_token.json()["error"]
        evil = await dash.post("/agent/alice/api/send", {"body": "x"}, origin="http://evil.example")
        assert evil.status == 403 and "cross-origin" in evil.json()["error"]
        assert not alice.model_file.exists()
        assert len((await alice.get("/api/inbox")).json()["messages"]) == 1

        # Bad input is refused by the harness, with its reason passed on.
        bad = await dash.post("/agent/alice/api/model", {"model": "two words"})
        assert bad.status == 400 and "error" in bad.json()
        assert (await dash.post("/agent/alice/api/send", {"body": "   "})).status == 400
        assert (await dash.get("/agent/alice/static/index.html")).status == 404
        assert (await dash.get("/agent/Alice/api/state")).status == 404

        # The operator's composer: a message to this agent, sent as `operator` via wake.
        sent2 = (await dash.post("/agent/alice/api/send", {"body": "from the composer"})).json()
        start = (await alice.wait_for("turn_start", lambda p: p["id"] == sent2["id"]))[0]
        assert start["payload"]["from"] == "operator"
        assert start["payload"]["body"] == "from the composer"
        await alice.wait_for("turn_end", lambda p: p["id"] == sent2["id"])
        state = (await dash.get("/agent/alice/api/state")).json()
        assert state["last_turn_seconds"] > 0 and state["ctx"] > 0 and state["cost"] > 0

    # The harness is gone: a readable 502, not a hang or a crash.
    down = await dash.get("/agent/alice/")
    assert down.status == 502 and b"alice's UI is not up" in down.body
    api_down = await dash.get("/agent/alice/api/state")
    assert api_down.status == 502 and "not up" in api_down.json()["error"]


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
        state = (await alice.get("/api/state")).json()
        assert state["events_stored"] is False and state["events_store_error"]
        history = (await alice.get("/events/history")).json()["events"]
        notes = [e["payload"]["text"] for e in history if e["kind"] == "note"]
        assert any("no-store mode" in n and str(db) in n for n in notes), notes

        async with open_sse(alice.ui_socket) as sse:
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


# ---------------------------------------------------------------- the page in real Chromium


def _watch(page: Page, problems: list[str]) -> None:
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))


def _submit(page: Page, text: str) -> None:
    page.locator("#term-input").fill(text)
    page.locator("#term-input").press("Enter")


async def test_the_operator_uses_the_agent_ui_in_a_browser_through_the_dashboard(
    hive: Hive,
    inproc: Daemon,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
    chromium: BrowserThread,  # noqa: F811 - the fixture imported above
) -> None:
    paths = hive.config.paths
    await hive.spawn("alice")
    alice = make_harness("alice", mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    hostile = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b> & done"
    problems: list[str] = []
    async with running(alice, nursery):
        await alice.wait_for("status_changed", lambda p: p["status"] == "online")
        first = await operator_send(paths.host_socket, "alice", hostile)
        await alice.wait_for("turn_end", lambda p: p["id"] == first)
        login = inproc.dashboard_login_url()
        assert login is not None
        context, dash = await chromium.run(open_dashboard, chromium.browser, login, problems)
        try:

            def open_from_the_row(dash: Page) -> Page:
                row = dash.get_by_role("article", name="agent alice")
                link = row.get_by_role("link", name="alice's own page")
                expect(link).to_have_attribute("href", "/agent/alice/")
                with dash.context.expect_page() as opened:
                    link.click()
                page = opened.value
                _watch(page, problems)
                assert page.url == base_url(inproc) + "/agent/alice/"
                # History: the finished turn, the hostile body as plain text.
                live = page.locator("#live")
                expect(live).to_contain_text("✓ turn ok")
                expect(live).to_contain_text(f"◆ TURN #{first} ← operator")
                expect(live).to_contain_text(hostile)
                assert page.locator("#live img, #inbox img, #live b").count() == 0
                expect(page).to_have_title("alice · hyperhive")
                expect(page.locator("#status")).to_have_text("online")
                expect(page.locator("#model")).to_have_text("model · haiku")
                expect(page.locator("#alive")).to_have_text("alive")  # the SSE is connected
                expect(page.locator("#inbox")).to_contain_text(hostile[:20])
                return page

            page = await chromium.run(open_from_the_row, dash)

            # Live: a new turn arrives over the proxied SSE without a reload.
            second = await operator_send(paths.host_socket, "alice", "live-marker")

            def live_turn(page: Page) -> None:
                expect(page.locator("#live")).to_contain_text("live-marker", timeout=TURN_MS)
                expect(page.locator(".row.ok")).to_have_count(2, timeout=TURN_MS)
                expect(page.locator("#ctx")).to_have_text(_CTX, timeout=TURN_MS)

            await chromium.run(live_turn, page)
            await alice.wait_for("turn_end", lambda p: p["id"] == second)

            # The composer: an operator message, through the dashboard (CSRF token and all).
            await chromium.run(_submit, page, "typed in the browser")
            start = await alice.wait_for(
                "turn_start", lambda p: p["body"] == "typed in the browser"
            )
            assert start[0]["payload"]["from"] == "operator"
            await alice.wait_for("turn_end", lambda p: p["id"] == start[0]["payload"]["id"])

            # A new session, then a turn that starts it.
            def new_session(page: Page) -> None:
                _submit(page, "/new-session")
                expect(page.locator("#new-session")).to_be_visible()

            await chromium.run(new_session, page)
            await chromium.run(_submit, page, "in a fresh session")
            fresh = await alice.wait_for("turn_start", lambda p: p["body"] == "in a fresh session")
            assert fresh[0]["payload"]["new_session"] is True

            def fresh_turn(page: Page) -> None:
                expect(page.locator("#live")).to_contain_text("· new session", timeout=TURN_MS)
                expect(page.locator("#new-session")).to_be_hidden(timeout=TURN_MS)

            await chromium.run(fresh_turn, page)

            # /model writes the model file through the same path.
            await chromium.run(_submit, page, "/model sonnet")
            await eventually(
                lambda: (
                    alice.model_file.exists() and alice.model_file.read_text().strip() == "sonnet"
                ),
                what="the model file written by the page",
            )
            await chromium.run(
                lambda page: expect(page.locator("#model")).to_have_text(_SONNET), page
            )

            # The same page cannot POST without the token the dashboard gave it.
            seen_problems = len(problems)
            forged = await chromium.run(
                lambda page: page.evaluate(
                    "fetch('api/send', {method: 'POST', headers: {'content-type': "
                    "'application/json'}, body: JSON.stringify({body: 'forged'})})"
                    ".then((r) => r.status)"
                ),
                page,
            )
            assert forged == 403
            # (the browser logs that refusal; it is the one expected console error)
            await eventually(lambda: len(problems) > seen_problems, what="the 403 logged")
            assert all("403" in p for p in problems[seen_problems:])
            del problems[seen_problems:]
            await chromium.run(lambda page: page.close(), page)
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
    assert not any(e["payload"]["body"] == "forged" for e in alice.events("turn_start"))
    assert problems == []


async def test_the_login_panel_works_through_the_dashboard(
    hive: Hive,
    inproc: Daemon,
    mock_api: MockAnthropic,
    claude_bin: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
    chromium: BrowserThread,  # noqa: F811 - the fixture imported above
) -> None:
    """claude needs a login: the operator opens the agent's page, starts the login, follows
    the URL, pastes the code; the parked message is replayed."""
    paths = hive.config.paths
    await hive.spawn("alice")
    alice = login_harness(mock_api, claude_bin, short_tmp, paths.agent_socket("alice"))
    problems: list[str] = []
    async with running(alice, nursery):
        sent = await operator_send(paths.host_socket, "alice", "login-task")
        await alice.wait_for("status_changed", lambda p: p["status"] == "needs_login")
        login = inproc.dashboard_login_url()
        assert login is not None
        context, dash = await chromium.run(open_dashboard, chromium.browser, login, problems)
        try:

            def log_in(dash: Page) -> None:
                _watch(dash, problems)
                dash.goto(base_url(inproc) + "/agent/alice/")
                panel = dash.locator("#login")
                expect(panel).to_be_visible()
                expect(dash.locator("#status")).to_have_text("needs login")
                panel.get_by_role("button", name="start login").click()
                url = dash.locator("#login-url")
                expect(url).to_have_text("https://claude.ai/oauth/authorize?state=abc")
                expect(url).to_have_attribute("href", "https://claude.ai/oauth/authorize?state=abc")
                dash.locator("#login-code").fill("good-code")
                panel.get_by_role("button", name="send code").click()

            await chromium.run(log_in, dash)
            ends = await alice.wait_for("turn_end", lambda p: p["id"] == sent, count=2)
            assert ends[1]["payload"]["ok"] is True

            def logged_in(dash: Page) -> None:
                expect(dash.locator("#status")).to_have_text("online", timeout=TURN_MS)
                expect(dash.locator("#login")).to_be_hidden()
                expect(dash.locator("#live")).to_contain_text("login finished")

            await chromium.run(logged_in, dash)
        finally:
            with trio.CancelScope(shield=True):
                await chromium.run(context.close)
    assert problems == []
