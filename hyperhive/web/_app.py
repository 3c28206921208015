"""The operator dashboard's HTTP surface (Starlette on hypercorn-trio, inside the daemon).

Everything but the login page needs the session cookie (or, for ``/metrics``, the token
as a bearer); every POST also needs the CSRF token and a same-origin ``Origin``.

The dashboard has no powers or logic of its own: an action is ``POST /api/<cmd>`` whose
body is a host socket request (``{"cmd": <cmd>, ...}``), decoded by the host socket's
strict codec and carried out by the same dispatcher with the operator's identity; the
reply is the host socket's reply. Bad input of any kind gets a 4xx with a reason; a 500 is
a bug, logged, and answered with a generic error.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

import hyperhive
from hyperhive.config import MAX_ID, MAX_LINE_BYTES, MAX_LOG_LINES
from hyperhive.errors import DiskFull, ProtocolError, RequestRefused
from hyperhive.events import Event
from hyperhive.kinds import ApprovalStatus
from hyperhive.ledger import add_sums
from hyperhive.names import OPERATOR
from hyperhive.protocol import (
    CONVERTER,
    HOST_TABLE,
    Logs,
    SendReply,
    encode_error,
    encode_reply,
    kinds_js,
)
from hyperhive.remote import node_refusal
from hyperhive.runtime import gather, sse
from hyperhive.runtime.sse import event_stream_response
from hyperhive.server import Connection, Principal, SocketKind
from hyperhive.web._auth import CSRF_HEADER, SESSION_COOKIE, Auth
from hyperhive.web._metrics import CONTENT_TYPE, metrics_text
from hyperhive.web._proxy import AgentUiProxy, Elsewhere, agent_name

if TYPE_CHECKING:
    from hyperhive.api import Api
    from hyperhive.hive import Hive
    from hyperhive.protocol import Reply

log = logging.getLogger(__name__)

FLOW_LIMIT: Final = 200
#: Reads of a snapshot during which events were published, before one is sent anyway.
SNAPSHOT_ATTEMPTS: Final = 4
INBOX_LIMIT: Final = 50
HISTORY_LIMIT: Final = 50
STATIC_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: The host socket's requests an action may be: all but the handshake, and ``status``,
#: whose login URL carries the token (a script on the page must not be able to read it).
#: ``watch`` is a feed on a socket connection; the dashboard has its event stream instead.
DASHBOARD_COMMANDS: Final = frozenset(HOST_TABLE.by_cmd) - {"hello", "status", "watch"}
DEFAULT_LOG_LINES: Final = 200
STATIC_NAME: Final = re.compile(r"[A-Za-z0-9_-]+\.[a-z]+")
OPERATOR_PRINCIPAL: Final = Principal(SocketKind.HOST, OPERATOR)

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


def _error(reason: str, status: int = 400) -> Response:
    return Response(encode_error(reason), status_code=status, media_type="application/json")


def parse_int(raw: str, name: str, low: int, high: int) -> int:
    """A query or path value that must be a whole number in ``low..high``: ASCII digits only.

    ``int()`` alone would take ``" 5"``, ``"1_0"``, ``"+5"`` and non-ASCII digits, and
    ``str.isdigit`` is true for ``"²"``, which ``int()`` then refuses.
    """
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)):
        value = int(raw)
        if low <= value <= high:
            return value
    raise RequestRefused(f"{name} must be a whole number from {low} to {high}")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    return default if raw is None else parse_int(raw, name, low, high)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (:class:`_TooLarge`) as soon as it is known to pass ``limit``."""
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def _last_resort(handler: Handler) -> Handler:
    """A handler that raises is a bug: logged, and a generic 500 (never the details)."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception:
            log.exception(
                "internal error in the dashboard on %s %s", request.method, request.url.path
            )
            return _secured(_error("internal error", 500))

    return guarded


class Dashboard:
    """The dashboard of ``hive``: it reads ``hive``; its actions go through ``dispatcher``."""

    def __init__(self, hive: Hive, dispatcher: Api, auth: Auth) -> None:
        self.hive = hive
        self.dispatcher = dispatcher
        self.auth = auth

    # ------------------------------------------------------------ guards

    def _session(self, request: Request) -> bool:
        return self.auth.check_session(request.cookies.get(SESSION_COOKIE))

    def page(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not self._session(request):
                return HTMLResponse(LOGIN_PAGE.replace("{message}", ""), status_code=401)
            return _secured(await handler(request))

        return _last_resort(guarded)

    def api(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not self._session(request):
                return _secured(_error("log in first", 401))
            if request.method == "POST":
                problem = self._csrf_problem(request)
                if problem is not None:
                    return _secured(_error(problem, 403))
            try:
                try:
                    return _secured(await handler(request))
                except OSError as exc:
                    self.hive.refuse_if_disk_full(exc)
                    raise
            except DiskFull as exc:
                return _secured(_error(str(exc), 507))  # Insufficient Storage
            except (RequestRefused, ProtocolError) as exc:
                return _secured(_error(str(exc)))

        return _last_resort(guarded)

    def _csrf_problem(self, request: Request) -> str | None:
        if not self.auth.check_csrf(request.headers.get(CSRF_HEADER)):
            return "missing or wrong CSRF token"
        origin = request.headers.get("origin")
        if origin is not None:
            host = request.headers.get("host", "")
            try:
                netloc = urlsplit(origin).netloc
            except ValueError:  # not a URL at all (``http://[``)
                netloc = None
            if netloc != host:
                return f"cross-origin request from {origin!r} refused"
        return None

    def operator(self) -> Connection:
        """The operator, as on the host socket (one connection per HTTP request)."""
        return Connection(OPERATOR_PRINCIPAL, peer_pid=None)

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
        if not STATIC_NAME.fullmatch(name) or suffix not in STATIC_TYPES:
            return PlainTextResponse("not found", status_code=404)
        try:
            # The kinds of the event stream come from the code, never from a copy.
            body = kinds_js().encode() if name == "kinds.js" else _static(name)
        except OSError:  # no such file, or a name the file system refuses
            return PlainTextResponse("not found", status_code=404)
        return Response(body, media_type=STATIC_TYPES[suffix])

    # ------------------------------------------------------------ reads

    async def state(self, request: Request) -> Response:
        # orjson: the snapshot of a thousand agents is a few hundred kB of JSON.
        snap = await self.snapshot(encoded_agents=True)
        return Response(orjson.dumps(snap), media_type="application/json")

    async def snapshot(self, *, encoded_agents: bool = False) -> dict[str, Any]:
        """The state with the ``seq`` it is consistent with.

        The page applies every event newer than ``seq`` on top of it, so an event published
        while the reads below ran (its effect possibly read already) would count twice: a
        snapshot during which the hub moved is read again (a few times at most). The
        checkpoint lets a task woken by the same database batch publish first.
        """
        for _ in range(SNAPSHOT_ATTEMPTS):
            seq = self.hive.events.seq
            snap = await self._read_snapshot(seq, encoded_agents)
            await trio.lowlevel.checkpoint()
            if self.hive.events.seq == seq:
                break
        return snap

    async def _read_snapshot(self, seq: int, encoded_agents: bool) -> dict[str, Any]:
        hive = self.hive
        # Queued together, the database reads share one batch of the writer.
        reads = await gather(
            {
                "approvals": lambda: hive.approvals.list(pending_only=False),
                "questions": lambda: hive.questions.list(include_answered=True),
                "unread": hive.broker.unread_by_recipient,
                "spend": hive.ledger.spend,
                "pending_reminders": hive.reminders.pending_by_agent,
                "targeting": hive.schedules.targeting_all,
                "inbox": lambda: hive.broker.recent(OPERATOR, INBOX_LIMIT),
                "flow": lambda: hive.broker.flow(FLOW_LIMIT),
                "reminders": hive.reminders.list,
                "schedules": hive.schedules.list,
                "tombstones": hive.tombstones,
            }
        )
        approvals, questions = reads["approvals"], reads["questions"]
        extras = hive.extras_from(reads["spend"], reads["pending_reminders"], reads["targeting"])
        today, total, _ctx = reads["spend"]
        return {
            "seq": seq,
            "csrf": self.auth.csrf,
            "version": hyperhive.__version__,
            "backend": hive.backend,
            "problems": hive.problems_now(),
            "state_dir_bytes": hive.disk_usage.total if hive.disk_usage else None,
            "agents": await (hive.views.wire_json if encoded_agents else hive.views.wire)(
                reads["unread"], extras
            ),
            "isolated": hive.isolation(),
            # The hive's nodes as last read (each agent says its node and whether it is up).
            "node": hive.config.node,
            "nodes": CONVERTER.unstructure(hive.node_views()),
            "tombstones": CONVERTER.unstructure(reads["tombstones"]),
            "approvals": CONVERTER.unstructure(
                [a for a in approvals if a.status == ApprovalStatus.PENDING]
                + [a for a in approvals if a.status != ApprovalStatus.PENDING][-HISTORY_LIMIT:]
            ),
            "questions": CONVERTER.unstructure(
                [q for q in questions if q.answered_at is None]
                + [q for q in questions if q.answered_at is not None][-HISTORY_LIMIT:]
            ),
            "reminders": CONVERTER.unstructure(reads["reminders"]),
            "inbox": CONVERTER.unstructure(reads["inbox"]),
            "flow": CONVERTER.unstructure(reads["flow"]),
            "spend": {
                "today_usd": add_sums(today.values()).cost_usd,
                "total_usd": add_sums(total.values()).cost_usd,
            },
            "schedules": CONVERTER.unstructure(reads["schedules"]),
            "now": time.time(),
        }

    async def stream(self, request: Request) -> Response:
        events = self.hive.events
        since: int | None = None
        if (raw := request.query_params.get("since")) is not None:
            since = parse_int(raw, "since", 0, MAX_ID)  # what the page asks for: strict
        if (last := request.headers.get("last-event-id")) is not None:
            # What the browser sends back by itself on a reconnect; not an id of ours: resync.
            try:
                since = parse_int(last, "Last-Event-ID", 0, MAX_ID)
            except RequestRefused:
                since = -1
        channel = events.subscribe()
        backlog: list[Event] | None = []
        if since is not None:
            # An id ahead of the hub comes from before a restart (seq starts at 0 again).
            backlog = events.since(since) if 0 <= since <= events.seq else None
        if backlog is None:
            sent = events.seq
            return event_stream_response(
                channel, _event_data, sent=sent, first=[sse.frame("resync", {"seq": sent}, sent)]
            )
        return event_stream_response(channel, _event_data, sent=since or 0, backlog=backlog)

    async def logs(self, request: Request) -> Response:
        lines = query_int(request, "lines", DEFAULT_LOG_LINES, 1, MAX_LOG_LINES)
        logs = Logs(name=request.path_params["name"], lines=lines)
        return _reply(await self.dispatcher.dispatch(self.operator(), logs))

    async def diff(self, request: Request) -> Response:
        approval_id = parse_int(request.path_params["id"], "approval id", 1, MAX_ID)
        approval = await self.hive.approvals.get(approval_id)
        if approval.kind != "apply_commit":
            raise RequestRefused("only apply_commit approvals have a diff")
        text = await self.hive.proposal_diff(approval)
        return JSONResponse({"ok": True, "diff": text})

    async def metrics(self, request: Request) -> Response:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not (self._session(request) or self.auth.check_token(bearer or None)):
            return PlainTextResponse("log in first\n", status_code=401)
        return Response(await metrics_text(self.hive), media_type=CONTENT_TYPE)

    async def metrics_text(self) -> str:
        return (await metrics_text(self.hive)).decode()

    # ------------------------------------------------------------ actions (POST, host requests)

    async def command(self, request: Request) -> Response:
        """``POST /api/<cmd>``: the body is the host socket request ``{"cmd": <cmd>, ...}``."""
        cmd = request.path_params["cmd"]
        if cmd not in DASHBOARD_COMMANDS:
            shown = cmd if len(cmd) <= 40 else cmd[:40] + "…"
            return _error(f"unknown action {shown!r}", 404)
        try:
            body = await _read_body(request, MAX_LINE_BYTES)
        except _TooLarge:
            return _error(f"request body too large: the limit is {MAX_LINE_BYTES} bytes", 413)
        try:
            decoded = HOST_TABLE.decode(body)
        except RecursionError:
            raise ProtocolError("request is nested too deeply") from None
        except ValueError as exc:  # e.g. an integer too long to convert
            raise ProtocolError(f"request could not be decoded: {exc}") from None
        if cmd != decoded.CMD:
            raise ProtocolError(f"the body is a {decoded.CMD!r} request, posted to /api/{cmd}")
        try:
            reply = await self.dispatcher.dispatch(self.operator(), decoded)
        # Input the codec lets through but the database cannot store (until the codec
        # refuses it itself): still the client's input, not a bug of ours.
        except OverflowError:
            raise RequestRefused("a number in the request is out of range") from None
        except UnicodeEncodeError:
            raise RequestRefused("the request holds text that is not valid Unicode") from None
        return _reply(reply)

    async def agent_send(self, request: Request) -> Response:
        """The agent UI's composer: an operator message to that agent, as on host.sock.

        Served here rather than by the agent's harness, which can only act as its agent:
        the message is a real ``send`` from ``operator``, never a ``wake`` with a label.
        """
        name = agent_name(request.path_params["name"])
        if name is None:
            return _error("no such agent", 404)
        try:
            raw = await _read_body(request, MAX_LINE_BYTES)
        except _TooLarge:
            return _error(f"request body too large: the limit is {MAX_LINE_BYTES} bytes", 413)
        try:
            fields = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError("the body is not a JSON object") from None
        if not isinstance(fields, dict) or "to" in fields or "cmd" in fields:
            raise ProtocolError('the body is {"body": "<text>", "in_reply_to"?: <id>}')
        send = HOST_TABLE.from_object({"cmd": "send", "to": name, **fields})
        reply = await self.dispatcher.dispatch(self.operator(), send)
        assert isinstance(reply, SendReply)
        return JSONResponse({"id": reply.id})

    async def elsewhere(self, name: str) -> Elsewhere | None:
        """Where the UI of an agent another node serves is (``hyperhive.remote``)."""
        registry = self.hive.registry
        if name not in registry.known() or registry.is_local(name):
            return None
        node = registry.get(name).node
        info = next((i for i in await self.hive.nodes.all() if i.name == node), None)
        refusal = node_refusal(name, node, info, self.hive.config.wall_clock())
        url = info.dashboard_url if info is not None and refusal is None else None
        if refusal is None and url is None:
            refusal = f"{name} runs on node {node}, which serves no dashboard (--dashboard-bind)"
        return Elsewhere(node=node, dashboard_url=url, refusal=refusal)

    def routes(self) -> list[Route]:
        agents = AgentUiProxy(self.hive.config.paths, self.auth.csrf, self.elsewhere)
        return [
            Route("/login", _last_resort(self.login)),
            Route("/", self.page(self.index)),
            Route("/static/{name}", self.page(self.static)),
            Route("/api/state", self.api(self.state)),
            Route("/api/stream", self.api(self.stream)),
            Route("/api/logs/{name}", self.api(self.logs)),
            Route("/api/approvals/{id}/diff", self.api(self.diff)),
            Route("/api/{cmd}", self.api(self.command), methods=["POST"]),
            Route("/metrics", _last_resort(self.metrics)),
            # Each agent's own UI (hyperhive/web/_proxy.py), behind the same login.
            Route("/agent/{name}", self.page(agents.redirect)),
            Route("/agent/{name}/", self.page(agents.page)),
            Route("/agent/{name}/api/send", self.api(self.agent_send), methods=["POST"]),
            Route("/agent/{name}/{path:path}", self.api(agents.forward), methods=["GET", "POST"]),
        ]

    def app(self) -> Starlette:
        return Starlette(routes=self.routes())


def _reply(reply: Reply) -> Response:
    return Response(encode_reply(reply), media_type="application/json")


def _secured(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def _event_data(event: Event) -> dict[str, Any]:
    return {"seq": event.seq, "ts": event.ts, **event.data}
