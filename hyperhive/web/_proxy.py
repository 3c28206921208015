"""The agents' own web UIs, served by the dashboard at ``/agent/<name>/``.

Each harness serves its UI on a unix socket beside its agent socket
(``<run>/agents/<name>/ui.sock``, the manager's ``<run>/manager/ui.sock``; 0600 in a 0700
dir) and on no TCP port, so only root on the host (the daemon) reaches it. The dashboard
puts it behind the operator's login:

    GET  /agent/<name>              → /agent/<name>/
    GET  /agent/<name>/             the page, with the dashboard's CSRF token; a readable
                                    502 page when the agent's UI is not up
    GET  /agent/<name>/api/…        forwarded to the agent's socket
    GET  /agent/<name>/events/…     forwarded; SSE is streamed as it comes
    POST /agent/<name>/api/…        forwarded, after the dashboard's CSRF and Origin checks

(The session and CSRF checks are the dashboard's own guards around these handlers.)

The other end is untrusted: an agent is root in its container and can replace its harness
with any server on that socket. So:

- the page is the daemon's own installed copy (:mod:`hyperhive_harness.page`), never bytes
  from the socket: nothing an agent sends runs at the dashboard's origin;
- a request forwards only a validated path under ``api/`` or ``events/``, its query, a
  body of at most :data:`MAX_REQUEST_BODY` and the headers in :data:`FORWARDED_REQUEST`:
  never the operator's cookie or CSRF token;
- a response passes only with a type in :data:`RESPONSE_TYPES`, keeps only the headers in
  :data:`FORWARDED_RESPONSE`, and gets a sandboxing CSP and ``nosniff``; its head must
  come within :data:`~hyperhive.runtime.agent_ui.HEAD_TIMEOUT` (and be at most 16 KiB), each body
  chunk within :data:`~hyperhive.runtime.agent_ui.IDLE_TIMEOUT` (the harness sends an SSE
  heartbeat every 15 s); the connection is :class:`hyperhive.runtime.agent_ui.Upstream`;
- the upstream connection is closed as soon as the browser leaves.

Errors: :class:`UpstreamUnavailable` (cannot connect, or a broken or refused answer) is a
502 with its reason.

An agent of another node (``hyperhive.nodes``): its UI socket is on that node's host, so
this dashboard does not proxy it. ``/agent/<name>/`` redirects (303) to the same path on
that node's dashboard (its URL from the ``nodes`` table), where the operator logs in with
that node's token; nothing of this dashboard's session goes along. When that node is down,
stopped or serves no dashboard, a page says so (503). Its ``api/`` and ``events/`` paths
are refused here (409) with the same reason: the page that calls them is served by the
agent's node.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import attrs
import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from hyperhive.config import Paths
from hyperhive.names import InvalidAgentName, parse_agent_name
from hyperhive.runtime.agent_ui import AgentUiUnavailable as UpstreamUnavailable
from hyperhive.runtime.agent_ui import Upstream
from hyperhive_harness.page import PAGE_HEADERS, render_page

#: Largest request body forwarded (the harness refuses more than this too).
MAX_REQUEST_BODY: Final = 1024 * 1024
FORWARDED_REQUEST: Final = ("accept", "content-type", "last-event-id")
FORWARDED_RESPONSE: Final = ("content-type", "cache-control")
RESPONSE_TYPES: Final = frozenset({"application/json", "text/event-stream", "text/plain"})
#: What every forwarded response carries: no script, no plugin, no framing, no sniffing.
RESPONSE_SECURITY: Final = {
    "content-security-policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_PATH_RE: Final = re.compile(r"(?:api|events)(?:/[A-Za-z0-9_-]+)+")
_QUERY_RE: Final = re.compile(rb"[A-Za-z0-9_.~%&=+,:-]*")


@attrs.frozen
class Elsewhere:
    """An agent another node serves: that node's dashboard URL, or why it cannot be
    reached there."""

    node: str
    dashboard_url: str | None
    refusal: str | None


#: Where an agent is served, when not on this node (None: here, or unknown).
Locate = Callable[[str], Awaitable[Elsewhere | None]]


async def _here(name: str) -> Elsewhere | None:
    return None


# ---------------------------------------------------------------- decisions (sans-IO)


def agent_name(raw: str) -> str | None:
    try:
        return parse_agent_name(raw, allow_manager=True)
    except InvalidAgentName:
        return None


def upstream_target(path: str, query: bytes) -> bytes | None:
    """The request target on the agent's socket for ``/agent/<name>/<path>?<query>``, or
    None when the path is not one of the UI's (only ``api/…`` and ``events/…`` are)."""
    if _PATH_RE.fullmatch(path) is None or _QUERY_RE.fullmatch(query) is None:
        return None
    target = b"/" + path.encode("ascii")
    return target + b"?" + query if query else target


def upstream_headers(
    headers: Iterable[tuple[str, str]], body: bytes | None
) -> list[tuple[str, str]]:
    """The headers sent upstream: the selected ones and the body's length; nothing else
    (the operator's cookie and CSRF token stay in the daemon)."""
    out = [("host", "localhost"), ("connection", "close")]
    out += [(k, v) for k, v in headers if k.lower() in FORWARDED_REQUEST]
    if body is not None:
        out.append(("content-length", str(len(body))))
    return out


def relayed_headers(status: int, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers the browser gets for an upstream response; raises
    :class:`UpstreamUnavailable` for one that is not passed on."""
    if not 200 <= status <= 599:
        raise UpstreamUnavailable(f"the agent's UI answered with status {status}")
    kept = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    kept = {k: v for k, v in kept.items() if k in FORWARDED_RESPONSE}
    media = kept.get("content-type", "").split(";")[0].strip().lower()
    if media not in RESPONSE_TYPES:
        raise UpstreamUnavailable(f"the agent's UI answered with content type {media!r}")
    out = {**kept, **RESPONSE_SECURITY}
    out.setdefault("cache-control", "no-store")
    if media == "text/event-stream":
        out["x-accel-buffering"] = "no"
    return out


def remote_page_url(dashboard_url: str, name: str) -> str:
    """The agent's page on its node's dashboard."""
    return f"{dashboard_url.rstrip('/')}/agent/{name}/"


def elsewhere_page(name: str, reason: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(name)} · on another node</title></head><body>"
        f"<h1>{html.escape(name)}'s UI is served by another node</h1>"
        f"<p>{html.escape(reason)}</p>"
        '<p><a href="/">back to the dashboard</a></p></body></html>'
    )


def unavailable_page(name: str, reason: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(name)} · UI not up</title></head><body>"
        f"<h1>{html.escape(name)}'s UI is not up</h1>"
        f"<p>{html.escape(reason)}</p>"
        "<p>Its harness serves the UI once it runs; this page works again after that.</p>"
        '<p><a href="/">back to the dashboard</a></p></body></html>'
    )


# ---------------------------------------------------------------- the connection (trio)


class Relay(Response):
    """Streams an upstream body to the browser as it arrives; when the browser leaves (or
    the body ends) the upstream connection is closed."""

    def __init__(self, upstream: Upstream, status: int, headers: dict[str, str]) -> None:
        # No body and so no content-length: the server frames what comes.
        self.status_code = status
        self.media_type = None
        self.background = None
        self.init_headers(headers)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with trio.open_nursery() as nursery:

                async def until_gone() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_gone)
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
                while (chunk := await self._upstream.next_chunk()) is not None:
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._upstream.aclose()


# ---------------------------------------------------------------- the handlers


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes:
    """The request body, refused past :data:`MAX_REQUEST_BODY` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_REQUEST_BODY):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_REQUEST_BODY:
                raise BodyTooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


class AgentUiProxy:
    """The ``/agent/<name>/…`` handlers; the dashboard wraps them in its login and CSRF
    guards."""

    def __init__(self, paths: Paths, csrf: str, locate: Locate = _here) -> None:
        self._paths = paths
        self._csrf = csrf
        self._locate = locate

    async def redirect(self, request: Request) -> Response:
        name = agent_name(request.path_params["name"])
        if name is None:
            return _error("no such agent", 404)
        return RedirectResponse(f"/agent/{name}/", status_code=308)

    async def page(self, request: Request) -> Response:
        name = agent_name(request.path_params["name"])
        if name is None:
            return HTMLResponse(unavailable_page("?", "not an agent name"), status_code=404)
        elsewhere = await self._locate(name)
        if elsewhere is not None:
            if elsewhere.dashboard_url is None:
                reason = elsewhere.refusal or f"{name} runs on node {elsewhere.node}"
                return HTMLResponse(elsewhere_page(name, reason), status_code=503)
            return RedirectResponse(remote_page_url(elsewhere.dashboard_url, name), status_code=303)
        try:
            upstream = await Upstream.open(self._paths.ui_socket(name))
        except UpstreamUnavailable as exc:
            return HTMLResponse(unavailable_page(name, str(exc)), status_code=502)
        await upstream.aclose()
        body, csp = render_page(self._csrf)
        headers = {"content-security-policy": csp, **PAGE_HEADERS}
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    async def forward(self, request: Request) -> Response:
        name = agent_name(request.path_params["name"])
        if name is None:
            return _error("no such agent", 404)
        target = upstream_target(request.path_params["path"], request.scope["query_string"])
        if target is None:
            return _error("not a path of the agent's UI", 404)
        elsewhere = await self._locate(name)
        if elsewhere is not None:
            where = elsewhere.dashboard_url or "its node's dashboard"
            reason = (
                elsewhere.refusal or f"{name} runs on node {elsewhere.node}: open it at {where}"
            )
            return _error(reason, 409)
        body: bytes | None = None
        if request.method == "POST":
            try:
                body = await read_body(request)
            except BodyTooLarge:
                return _error(f"request body over {MAX_REQUEST_BODY} bytes", 413)
        headers = upstream_headers(request.headers.items(), body)
        try:
            upstream = await Upstream.open(self._paths.ui_socket(name))
        except UpstreamUnavailable as exc:
            return _error(f"{name}'s UI is not up: {exc}", 502)
        try:
            head = await upstream.exchange(request.method, target, headers, body)
            relayed = relayed_headers(head.status_code, head.headers)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await upstream.aclose()
            if isinstance(exc, UpstreamUnavailable):
                return _error(f"{name}'s UI: {exc}", 502)
            raise
        return Relay(upstream, head.status_code, relayed)
