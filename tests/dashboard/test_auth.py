"""Acceptance 1: nothing without the token; the token logs a browser in; POSTs need CSRF.

Over plain HTTP (h11): every route answers 401 without the session cookie (the page routes
with the login form), ``/login?token=`` hands out an HttpOnly SameSite=Strict cookie, and a
POST is refused without the CSRF token or from another origin, and accepted otherwise.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect

import hyperhive
from hyperhive.client import Client
from hyperhive.supervisor import Daemon, Hive
from hyperhive.web._auth import SESSION_COOKIE

from .conftest import UI, base_url, http, post_json, session_cookie

GUARDED_GETS = [
    "/",
    "/static/dashboard.js",
    "/static/dashboard.css",
    "/static/index.html",
    "/api/state",
    "/api/stream",
    "/api/logs/manager",
    "/api/approvals/1/diff",
    "/metrics",
]
GUARDED_POSTS = ["approve", "deny", "answer", "send", "request_spawn", "destroy", "nonsense"]


async def test_everything_needs_the_token(inproc: Daemon) -> None:
    base = base_url(inproc)
    for path in GUARDED_GETS:
        response = await http(base, "GET", path)
        assert response.status == 401, path
        if path == "/" or path.startswith("/static/"):
            # Page routes answer with the login form, never with the page itself.
            assert b'name="token"' in response.body and b"dashboard.js" not in response.body
    for verb in GUARDED_POSTS:
        response = await http(base, "POST", f"/api/{verb}", body=b"{}")
        assert response.status == 401, verb
        assert response.json() == {"ok": False, "error": "log in first"}
    # A wrong cookie or token is no better than none.
    forged = {"cookie": f"{SESSION_COOKIE}=0123abcd"}
    assert (await http(base, "GET", "/api/state", headers=forged)).status == 401
    wrong = await http(base, "GET", "/login?token=not-the-token")
    assert wrong.status == 401 and b"Wrong token." in wrong.body
    assert wrong.header("set-cookie") is None


async def test_status_on_the_host_socket_gives_a_login_url_that_works(inproc: Daemon) -> None:
    """The login URL the supervisor keeps (the dashboard's first bind + the token) is what
    the operator's ``status`` shows; it logs a browser in."""
    async with await Client.connect(inproc.hive.config.paths.host_socket) as host:
        status = await host.request({"cmd": "status"})
    assert inproc.auth is not None
    url = status["dashboard_url"]
    assert url == f"{base_url(inproc)}/login?token={inproc.auth.token}"
    login = await http(base_url(inproc), "GET", url.removeprefix(base_url(inproc)))
    assert login.status == 303 and login.header("set-cookie") is not None


async def test_the_token_logs_in_and_the_page_loads(inproc: Daemon) -> None:
    assert inproc.auth is not None
    base = base_url(inproc)
    login = await http(base, "GET", f"/login?token={inproc.auth.token}")
    assert login.status == 303 and login.header("location") == "/"
    cookie = login.header("set-cookie")
    assert cookie is not None
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in attributes and "samesite=strict" in attributes
    pair = cookie.split(";", 1)[0]
    page = await http(base, "GET", "/", headers={"cookie": pair})
    assert page.status == 200 and b'src="/static/dashboard.js"' in page.body
    assert "default-src 'self'" in (page.header("content-security-policy") or "")
    script = await http(base, "GET", "/static/dashboard.js", headers={"cookie": pair})
    assert script.status == 200
    assert (script.header("content-type") or "").startswith("text/javascript")
    assert (await http(base, "GET", "/static/../_app.py", headers={"cookie": pair})).status == 404
    state = await http(base, "GET", "/api/state", headers={"cookie": pair})
    assert state.status == 200
    snapshot = state.json()
    assert snapshot["csrf"] == inproc.auth.csrf
    assert [a["name"] for a in snapshot["agents"]] == ["manager"]


async def test_posts_need_the_csrf_token_and_the_same_origin(hive: Hive, inproc: Daemon) -> None:
    assert inproc.auth is not None
    csrf = inproc.auth.csrf
    origin = base_url(inproc)
    body = {"cmd": "request_spawn", "name": "alice"}
    missing = await post_json(inproc, "request_spawn", body, headers={"origin": origin})
    assert missing.status == 403 and "CSRF" in missing.json()["error"]
    wrong = await post_json(
        inproc, "request_spawn", body, headers={"x-csrf-token": "0" * 64, "origin": origin}
    )
    assert wrong.status == 403
    cross = await post_json(
        inproc,
        "request_spawn",
        body,
        headers={"x-csrf-token": csrf, "origin": "http://evil.example:8080"},
    )
    assert cross.status == 403 and "cross-origin" in cross.json()["error"]
    assert await hive.approvals.list(pending_only=True) == []  # none of them got through
    ok = await post_json(
        inproc, "request_spawn", body, headers={"x-csrf-token": csrf, "origin": origin}
    )
    assert ok.status == 200 and ok.json()["ok"] is True
    [pending] = await hive.approvals.list(pending_only=True)
    # The reply is the host socket's reply to the same request.
    assert ok.json()["approval"]["id"] == pending.id
    assert pending.agent == "alice" and pending.kind == "spawn"
    # GET never changes anything: the action routes only take POST.
    get = await http(
        origin, "GET", "/api/request_spawn", headers={"cookie": session_cookie(inproc)}
    )
    assert get.status == 405


async def test_the_browser_logs_in_with_the_link(ui: UI) -> None:
    def check(page: Page) -> None:
        expect(page).to_have_url(f"{ui.base}/")
        expect(page.get_by_role("article", name="agent manager")).to_be_visible()
        expect(page.locator("#version")).to_have_text(f"v{hyperhive.__version__}")
        cookies = page.context.cookies()
        assert [c["name"] for c in cookies] == [SESSION_COOKIE]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        # The session cookie is invisible to scripts.
        assert page.evaluate("document.cookie") == ""

    await ui(check)
