"""The per-agent web UI: hypercorn (trio) + Starlette, one static page, JSON and SSE.

    GET  /                  the page (hyperhive_harness/static/index.html, see page.py)
    GET  /api/state         status, turn state (+since), model, ctx/cost, last turn, login
    GET  /api/inbox         the last 30 inbox messages (``recent`` on the socket)
    GET  /api/stats         this agent's spend and turn figures (``get_stats`` on the socket)
    GET  /api/loose-ends    open questions, pending reminders (``get_loose_ends`` on the socket)
    GET  /events/history    {seq, events}: the newest events (up to 2000)
    GET  /events/stream     SSE (:mod:`hyperhive.runtime.sse`): one frame per event, its type
                            the event's kind; ``Last-Event-ID`` (or ``?since=``) resumes
    POST /api/model         {model}: the model of the next turns (the model file)
    POST /api/cancel        SIGINT the running claude
    POST /api/new-session   the next turn runs without ``--continue``
    POST /api/retry         end a rate-limit sleep or a login park now
    POST /api/compact       compact claude's session as soon as no turn runs
    POST /api/login/start   run ``claude auth login``; /api/login/code {code} feeds it

The UI is served on a unix socket in the agent's socket dir (``/run/hive/ui.sock``, 0600,
in a 0700 dir): only root on the host, i.e. the daemon, reaches it, and the daemon's
dashboard serves it at ``/agent/<name>/`` behind the operator's login and CSRF checks. So a
request on that socket carries the operator's authority and is not checked again here.
The composer's messages do not come here: the dashboard serves ``/agent/<name>/api/send``
itself as a real ``send`` from ``operator`` (the harness can only act as its agent).

The optional TCP listener (``serve --ui-port``, for debugging a harness run by hand) is
reachable by every local process, so it gets :class:`GuardMiddleware`: an allowed ``Host``
(loopback, the bind address, ``HYPERHIVE_UI_ALLOWED_HOSTS``) against DNS rebinding, and a
same-origin ``Origin`` (else ``Referer``) on every POST. That stops browsers, not local
processes: never open it on a machine with untrusted users or agents.
POST bodies are JSON or form-encoded.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hyperhive.client import call_once
from hyperhive.errors import ClientError, ConnectionLost
from hyperhive.protocol import (
    CONVERTER,
    AgentStatsReply,
    GetLooseEnds,
    GetStats,
    LooseEndsReply,
    Recent,
    RecentReply,
    Reply,
)
from hyperhive.protocol import Request as Request_
from hyperhive.runtime import sse
from hyperhive_harness.commands import Commands
from hyperhive_harness.event_log import EventLog, event_json
from hyperhive_harness.login import LoginSession
from hyperhive_harness.model import InvalidModel
from hyperhive_harness.page import PAGE_HEADERS, render_page
from hyperhive_harness.view import View

R = TypeVar("R", bound=Reply)

INBOX_LIMIT: Final = 30
MAX_POST_BYTES: Final = 1024 * 1024
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


# ---------------------------------------------------------------- request checks (sans-IO)


def host_name(host_header: str) -> str:
    """``"[::1]:8080"`` → ``"::1"``, ``"Example:80"`` → ``"example"``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(bind_host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    names = set(LOOPBACK_HOSTS)
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(host_name(bind_host if ":" not in bind_host else f"[{bind_host}]"))
    names.update(host_name(h) for h in extra)
    return frozenset(names)


def check_request(method: str, headers: Mapping[str, str], allowed: frozenset[str]) -> str | None:
    """Why this request must be refused (None: it may pass). ``headers`` keys are lowercase."""
    host = headers.get("host", "")
    if not host or host_name(host) not in allowed:
        return f"host {host!r} is not served here"
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    source = origin if origin is not None else headers.get("referer")
    if source is None:
        return "a state-changing request must carry an Origin (or Referer) header"
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower():
        return f"cross-origin request refused (origin {source!r}, host {host!r})"
    return None


class GuardMiddleware:
    """Refuses requests that fail :func:`check_request` with 403 before any route runs."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            reason = check_request(scope["method"], headers, self.allowed)
            if reason is not None:
                await JSONResponse({"error": reason}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- the app


def parse_last_event_id(raw: str | None) -> int | None:
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw.strip())


class LoopState(Protocol):
    """What the UI shows of the turn loop itself."""

    @property
    def connected(self) -> bool: ...


class UiContext:
    def __init__(
        self,
        *,
        events: EventLog,
        view: View,
        commands: Commands,
        loop: LoopState,
        socket: str,
        login: LoginSession,
        nursery: trio.Nursery,
        ui_socket: str,
    ) -> None:
        self.events = events
        self.view = view
        self.commands = commands
        self.loop = loop
        self.socket = socket
        self.login = login
        self.nursery = nursery
        #: Where the UI listens: its unix socket, and the debugging TCP port if one is open.
        self.ui_socket = ui_socket
        self.port: int | None = None


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def _fields(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_POST_BYTES:
        raise BadRequest("request body too large", 413)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not raw.strip():
        return {}
    if ctype == "application/json":
        try:
            obj = json.loads(raw)
        except ValueError:
            raise BadRequest("body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise BadRequest("body must be a JSON object")
        return obj
    if ctype == "application/x-www-form-urlencoded":
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    raise BadRequest(f"unsupported content type {ctype!r}", 415)


def _text_field(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name!r} must be a non-empty string")
    return value


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    return wrapped


def create_app(ctx: UiContext, guard: frozenset[str] | None = None) -> ASGIApp:
    """The UI app; with ``guard`` (the allowed hosts) wrapped in :class:`GuardMiddleware`,
    for the TCP listener."""
    events, view, commands = ctx.events, ctx.view, ctx.commands
    page, csp = render_page()
    page_headers = {"content-security-policy": csp, **PAGE_HEADERS}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=page_headers)

    async def state(request: Request) -> Response:
        snap = view.snapshot()
        snap.update(
            new_session_pending=commands.new_session_pending,
            compact_pending=commands.compact_pending,
            **events.status(),
            seq=events.seq,
            alive=True,
            connected=ctx.loop.connected,
            socket=ctx.socket,
            ui_socket=ctx.ui_socket,
            port=ctx.port,
            login=ctx.login.state(),
            subscribers=events.subscribers,
        )
        return JSONResponse(snap)

    async def inbox(request: Request) -> Response:
        try:
            reply = await call_once(ctx.socket, Recent(limit=INBOX_LIMIT))
        except ConnectionLost as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except ClientError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        assert isinstance(reply, RecentReply)
        return JSONResponse({"messages": [CONVERTER.unstructure(m) for m in reply.messages]})

    async def ask_daemon(request_: Request_, reply_type: type[R]) -> R | Response:
        """One request on the agent's socket; the daemon's refusal or absence as an error."""
        try:
            reply = await call_once(ctx.socket, request_)
        except ConnectionLost as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except ClientError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        assert isinstance(reply, reply_type)
        return reply

    async def stats(request: Request) -> Response:
        reply = await ask_daemon(GetStats(), AgentStatsReply)
        if isinstance(reply, Response):
            return reply
        return JSONResponse(CONVERTER.unstructure(reply))

    async def loose_ends(request: Request) -> Response:
        reply = await ask_daemon(GetLooseEnds(), LooseEndsReply)
        if isinstance(reply, Response):
            return reply
        return JSONResponse({"items": CONVERTER.unstructure(reply.items)})

    async def history(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "2000"))
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        history = events.history(max(0, min(limit, 2000)))
        return JSONResponse({"seq": events.seq, "events": [event_json(e) for e in history]})

    async def stream(request: Request) -> Response:
        last = parse_last_event_id(
            request.headers.get("last-event-id") or request.query_params.get("since")
        )
        # Subscribe before looking at the ring, so nothing falls between the two.
        channel = events.subscribe()
        first = [": connected\n\n"]
        if last is None:
            return sse.event_stream_response(channel, event_json, sent=events.seq, first=first)
        backlog = events.since(last)
        if backlog is None:
            # Some already left the ring: resync, then everything the ring still has.
            first.append(sse.frame("resync", {"seq": events.seq}, events.seq))
            backlog = events.history()
        return sse.event_stream_response(
            channel, event_json, sent=last, backlog=backlog, first=first
        )

    async def model(request: Request) -> Response:
        raw = _text_field(await _fields(request), "model")
        try:
            chosen = commands.set_model(raw)
        except InvalidModel as exc:
            raise BadRequest(str(exc)) from None
        except OSError as exc:
            return JSONResponse({"error": f"cannot write the model file: {exc}"}, status_code=500)
        return JSONResponse({"model": chosen})

    async def cancel(request: Request) -> Response:
        cancelled = commands.cancel()
        return JSONResponse({"cancelled": cancelled})

    async def new_session(request: Request) -> Response:
        commands.request_new_session()
        return JSONResponse({"new_session": True})

    async def compact(request: Request) -> Response:
        commands.request_compact()
        return JSONResponse({"compact_pending": True})

    async def retry(request: Request) -> Response:
        commands.retry_now()
        return JSONResponse({"retrying": True})

    async def login_start(request: Request) -> Response:
        await ctx.login.start(ctx.nursery)
        return JSONResponse(ctx.login.state())

    async def login_code(request: Request) -> Response:
        code = _text_field(await _fields(request), "code")
        if not await ctx.login.send_code(code):
            raise BadRequest("no login is running", 409)
        return JSONResponse(ctx.login.state())

    routes = [
        Route("/", _guarded(index)),
        Route("/api/state", _guarded(state)),
        Route("/api/inbox", _guarded(inbox)),
        Route("/api/stats", _guarded(stats)),
        Route("/api/loose-ends", _guarded(loose_ends)),
        Route("/events/history", _guarded(history)),
        Route("/events/stream", _guarded(stream)),
        Route("/api/model", _guarded(model), methods=["POST"]),
        Route("/api/cancel", _guarded(cancel), methods=["POST"]),
        Route("/api/new-session", _guarded(new_session), methods=["POST"]),
        Route("/api/retry", _guarded(retry), methods=["POST"]),
        Route("/api/compact", _guarded(compact), methods=["POST"]),
        Route("/api/login/start", _guarded(login_start), methods=["POST"]),
        Route("/api/login/code", _guarded(login_code), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    return app if guard is None else GuardMiddleware(app, guard)
