"""The operator dashboard's HTTP surface (Starlette on hypercorn-trio, inside the daemon).

Everything but the login page needs the session cookie (or, for ``/metrics``, the token
as a bearer); every POST also needs the CSRF token and a same-origin ``Origin``. Handlers
call the same :class:`~hyperhive.supervisor.Hive` operations as the host socket, so the
dashboard has no powers of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

import hyperhive
from hyperhive.config_repo import diff_proposal
from hyperhive.errors import RequestRefused
from hyperhive.events import Event
from hyperhive.names import OPERATOR
from hyperhive.protocol import CONVERTER
from hyperhive.registry import AgentState
from hyperhive.web._auth import CSRF_HEADER, SESSION_COOKIE, Auth
from hyperhive.web._proxy import AgentUiProxy

if TYPE_CHECKING:
    from hyperhive.supervisor import Hive

HEARTBEAT_SECONDS: Final = 15.0
FLOW_LIMIT: Final = 200
INBOX_LIMIT: Final = 50
HISTORY_LIMIT: Final = 50
STATIC_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[Request], Awaitable[Response]]


def _static(name: str) -> bytes:
    return resources.files("hyperhive.web").joinpath("static", name).read_bytes()


LOGIN_PAGE: Final = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>hyperhive · login</title><meta name="viewport" content="width=device-width">
<style>body{background:#11111b;color:#cdd6f4;font:15px ui-monospace,monospace;display:grid;
place-items:center;height:90vh}form{border:1px solid #45475a;padding:2em}input{background:#1e1e2e;
color:#cdd6f4;border:1px solid #585b70;padding:.5em;width:24em}button{margin-top:1em;
background:#89b4fa;color:#11111b;border:0;padding:.5em 1em;font:inherit;cursor:pointer}</style>
</head><body><form method="get" action="/login"><h1>░▒▓ HYPERHIVE ▓▒░</h1>
<p><label for="token">Dashboard token</label></p>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<p>{message}</p><button type="submit">L0G 1N</button>
<p><small>The token is in <code>dashboard-token</code> in the state dir, and
<code>hyperhive dashboard-url</code> prints a login link.</small></p></form></body></html>"""


def _refusal(exc: RequestRefused, status: int = 400) -> JSONResponse:
    return JSONResponse({"ok": False, "error": str(exc)}, status_code=status)


class Dashboard:
    def __init__(self, hive: Hive, auth: Auth) -> None:
        self.hive = hive
        self.auth = auth

    # ------------------------------------------------------------ guards

    def _session(self, request: Request) -> bool:
        return self.auth.check_session(request.cookies.get(SESSION_COOKIE))

    def page(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not self._session(request):
                return HTMLResponse(LOGIN_PAGE.replace("{message}", ""), status_code=401)
            return _secured(await handler(request))

        return guarded

    def api(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not self._session(request):
                return JSONResponse({"ok": False, "error": "log in first"}, status_code=401)
            if request.method == "POST":
                problem = self._csrf_problem(request)
                if problem is not None:
                    return JSONResponse({"ok": False, "error": problem}, status_code=403)
            try:
                return _secured(await handler(request))
            except RequestRefused as exc:
                return _refusal(exc)

        return guarded

    def _csrf_problem(self, request: Request) -> str | None:
        if not self.auth.check_csrf(request.headers.get(CSRF_HEADER)):
            return "missing or wrong CSRF token"
        origin = request.headers.get("origin")
        if origin is not None:
            host = request.headers.get("host", "")
            if urlsplit(origin).netloc != host:
                return f"cross-origin request from {origin} refused"
        return None

    # ------------------------------------------------------------ pages

    async def login(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is None:
            return HTMLResponse(LOGIN_PAGE.replace("{message}", ""), status_code=401)
        if not self.auth.check_token(token):
            return HTMLResponse(LOGIN_PAGE.replace("{message}", "Wrong token."), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, self.auth.session, httponly=True, samesite="strict", path="/"
        )
        return response

    async def index(self, request: Request) -> Response:
        return HTMLResponse(_static("index.html"))

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            return PlainTextResponse("not found", status_code=404)
        try:
            body = _static(name)
        except FileNotFoundError:
            return PlainTextResponse("not found", status_code=404)
        return Response(body, media_type=STATIC_TYPES[suffix])

    # ------------------------------------------------------------ reads

    async def state(self, request: Request) -> Response:
        return JSONResponse(await self.snapshot())

    async def snapshot(self) -> dict[str, Any]:
        hive = self.hive
        # Taken first: events after it are newer than everything read below.
        seq = hive.events.seq
        approvals = await hive.approvals.list(pending_only=False)
        questions = await hive.questions.list(include_answered=True)
        return {
            "seq": seq,
            "csrf": self.auth.csrf,
            "version": hyperhive.__version__,
            "backend": hive.backend,
            "agents": CONVERTER.unstructure(await hive.api.agent_infos()),
            "isolated": {
                name: backend.isolated for name, backend in hive.containers.backends.items()
            },
            "tombstones": CONVERTER.unstructure(await hive.tombstones()),
            "approvals": CONVERTER.unstructure(
                [a for a in approvals if a.status == "pending"]
                + [a for a in approvals if a.status != "pending"][-HISTORY_LIMIT:]
            ),
            "questions": CONVERTER.unstructure(
                [q for q in questions if q.answered_at is None]
                + [q for q in questions if q.answered_at is not None][-HISTORY_LIMIT:]
            ),
            "inbox": CONVERTER.unstructure(await hive.broker.recent(OPERATOR, INBOX_LIMIT)),
            "flow": CONVERTER.unstructure(await hive.broker.flow(FLOW_LIMIT)),
            "now": time.time(),
        }

    async def stream(self, request: Request) -> Response:
        events = self.hive.events
        last = request.headers.get("last-event-id") or request.query_params.get("since")
        channel = events.subscribe()
        try:
            since = None if last is None else int(last)
        except ValueError:
            since = -1  # not an id of ours: resync
        backlog: list[Event] | None = []
        if since is not None:
            # An id ahead of the hub comes from before a restart (seq starts at 0 again).
            backlog = events.since(since) if 0 <= since <= events.seq else None

        async def frames() -> AsyncGenerator[str, None]:
            try:
                if backlog is None:
                    sent = events.seq
                    yield _frame("resync", {"seq": sent}, sent)
                else:
                    sent = since or 0
                    for event in backlog:
                        sent = event.seq
                        yield _event_frame(event)
                while True:
                    with trio.move_on_after(HEARTBEAT_SECONDS) as idle:
                        event = await channel.receive()
                    if idle.cancelled_caught:
                        yield ": heartbeat\n\n"
                        continue
                    if event.seq > sent:
                        sent = event.seq
                        yield _event_frame(event)
            except trio.EndOfChannel:
                return  # cut off for falling behind: the client reconnects with Last-Event-ID
            finally:
                channel.close()

        return _EventStreamResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def logs(self, request: Request) -> Response:
        raw = request.query_params.get("lines", "200")
        if not raw.isdigit():
            raise RequestRefused("lines must be a number")
        lines = int(raw)
        reply = await self.hive.logs(request.path_params["name"], lines)
        return JSONResponse({"ok": True, "lines": reply.lines})

    async def diff(self, request: Request) -> Response:
        approval = await self.hive.approvals.get(int(request.path_params["id"]))
        if approval.kind != "apply_commit":
            raise RequestRefused("only apply_commit approvals have a diff")
        text = await diff_proposal(self.hive.config.paths.applied_dir(approval.agent), approval.id)
        return JSONResponse({"ok": True, "diff": text})

    async def metrics(self, request: Request) -> Response:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not (self._session(request) or self.auth.check_token(bearer or None)):
            return PlainTextResponse("log in first\n", status_code=401)
        return PlainTextResponse(await self.metrics_text(), media_type="text/plain; version=0.0.4")

    async def metrics_text(self) -> str:
        hive = self.hive
        lines = [
            "# HELP hyperhive_agents Agents by state.",
            "# TYPE hyperhive_agents gauge",
        ]
        counts = dict.fromkeys((s.value for s in AgentState), 0)
        for record in hive.registry.all():
            counts[record.state.value] += 1
        lines += [f'hyperhive_agents{{state="{s}"}} {n}' for s, n in counts.items()]
        unread = await hive.broker.unread_by_recipient()
        lines += [
            "# HELP hyperhive_unread_messages Messages not yet received, by recipient.",
            "# TYPE hyperhive_unread_messages gauge",
        ]
        lines += [
            f'hyperhive_unread_messages{{recipient="{r}"}} {n}' for r, n in sorted(unread.items())
        ]
        pending = len(await hive.approvals.list(pending_only=True))
        open_q = len(await hive.questions.list())
        lines += [
            "# HELP hyperhive_pending_approvals Approvals waiting for the operator.",
            "# TYPE hyperhive_pending_approvals gauge",
            f"hyperhive_pending_approvals {pending}",
            "# HELP hyperhive_open_questions Questions not yet resolved.",
            "# TYPE hyperhive_open_questions gauge",
            f"hyperhive_open_questions {open_q}",
            "# HELP hyperhive_messages_sent_total Messages sent since the daemon started.",
            "# TYPE hyperhive_messages_sent_total counter",
            f"hyperhive_messages_sent_total {hive.broker.sent_total}",
            "# HELP hyperhive_parked_receivers Receivers parked in a long-poll recv.",
            "# TYPE hyperhive_parked_receivers gauge",
            f"hyperhive_parked_receivers {hive.broker.parked()}",
            "# TYPE hyperhive_event_seq counter",
            f"hyperhive_event_seq {hive.events.seq}",
        ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ actions (POST, JSON body)

    async def action(self, request: Request) -> Response:
        hive = self.hive
        verb = request.path_params["verb"]
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise RequestRefused("the request body must be JSON") from None
        if not isinstance(body, dict):
            raise RequestRefused("the request body must be a JSON object")

        def field(name: str, kind: type, required: bool = True) -> Any:
            value = body.get(name)
            if value is None and not required:
                return None
            if type(value) is not kind:
                raise RequestRefused(f"{name!r} must be a {kind.__name__}")
            return value

        result: Any
        match verb:
            case "approve":
                result = await hive.approvals.approve(field("id", int))
            case "deny":
                result = await hive.approvals.deny(field("id", int), field("note", str, False))
            case "answer":
                result = await hive.questions.answer_as_operator(
                    field("id", int), field("answer", str)
                )
            case "cancel-question":
                result = await hive.questions.cancel_as_operator(field("id", int))
            case "send":
                sent = await hive.broker.send(OPERATOR, field("to", str), field("body", str))
                result = {"ids": [m.id for m in sent]}
            case "request-spawn":
                result = await hive.request_spawn(
                    field("name", str), field("description", str, False), OPERATOR
                )
            case "inbox-read":
                result = {"read": len(await hive.operator_inbox(INBOX_LIMIT))}
            case "start" | "kill" | "restart" | "rebuild":
                await hive.lifecycle(verb, field("name", str))
                result = {}
            case "destroy":
                await hive.destroy(field("name", str), purge=False)
                result = {}
            case "purge":
                name = field("name", str)
                if field("confirm", str) != name:
                    raise RequestRefused("type the agent's name to confirm the purge")
                await hive.destroy(name, purge=True)
                result = {}
            case "revive":
                result = await hive.revive(field("name", str))
            case _:
                return JSONResponse({"ok": False, "error": f"unknown action {verb!r}"}, 404)
        unstructured = CONVERTER.unstructure(result)
        return JSONResponse({"ok": True, "result": unstructured})

    def app(self) -> Starlette:
        agents = AgentUiProxy(self.hive.config.paths, self.auth.csrf)
        return Starlette(
            routes=[
                Route("/login", self.login),
                Route("/", self.page(self.index)),
                Route("/static/{name}", self.page(self.static)),
                Route("/api/state", self.api(self.state)),
                Route("/api/stream", self.api(self.stream)),
                Route("/api/logs/{name}", self.api(self.logs)),
                Route("/api/approvals/{id:int}/diff", self.api(self.diff)),
                Route("/api/{verb}", self.api(self.action), methods=["POST"]),
                Route("/metrics", self.metrics),
                # Each agent's own UI (hyperhive/web/_proxy.py), behind the same login.
                Route("/agent/{name}", self.page(agents.redirect)),
                Route("/agent/{name}/", self.page(agents.page)),
                Route(
                    "/agent/{name}/{path:path}", self.api(agents.forward), methods=["GET", "POST"]
                ),
            ]
        )


class _EventStreamResponse(StreamingResponse):
    """Closes its frame generator (and so its subscription) as soon as the client is gone.

    A disconnect cancels the streaming task while the generator waits at a ``yield``;
    without this it would only be finalized by the garbage collector.
    """

    def __init__(self, frames: AsyncGenerator[str, None], **kwargs: Any) -> None:
        super().__init__(frames, **kwargs)
        self._frames = frames

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True):
                await self._frames.aclose()


def _secured(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def _frame(kind: str, data: dict[str, Any], seq: int) -> str:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {seq}\nevent: {kind}\ndata: {payload}\n\n"


def _event_frame(event: Event) -> str:
    return _frame(event.kind, {"seq": event.seq, "ts": event.ts, **event.data}, event.seq)
