"""``hyperhive-harness serve``: the event log, the web UI and the turn loop in one nursery.

serve()
├── open_event_log              events db (a hyperhive.store.Database, or no-store) + writer
├── run_ui                      hypercorn-trio on <socket dir>/ui.sock (0600; the daemon's
│   │                           dashboard proxies it) under the shared supervised ASGI loop
│   │                           (hyperhive.runtime.asgi), restarted with backoff if it fails,
│   │                           so a broken UI never stops the turn loop
│   └── (tcp)                   only with ``--ui-port``: a guarded TCP listener for debugging
├── McpHost.run                 the hyperhive MCP tools for each turn's claude, on
│                               127.0.0.1:<port> (HTTP) and <runtime dir>/tools.sock
│                               (0600), a secret per turn
├── LoginSession                the UI's claude login (started on demand)
└── TurnLoop.run                connect → recv → claude → ack, reconnecting forever
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO, Final

import trio

from hyperhive.runtime import Backoff, Report
from hyperhive.runtime.asgi import serve_asgi
from hyperhive_harness.commands import Commands
from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.event_log import EventLog, open_event_log
from hyperhive_harness.login import LoginSession
from hyperhive_harness.loop import TurnLoop
from hyperhive_harness.mcp_host import TOOL_SOCKET_NAME, McpHost
from hyperhive_harness.model import ModelFile
from hyperhive_harness.view import View
from hyperhive_harness.web import UiContext, allowed_hosts, create_app

#: 1, 2, 4, 8, 16, 30, 30, ... seconds between restarts of a failed UI listener.
UI_RESTART_BACKOFF: Final = Backoff(first=1.0, limit=30.0)
#: Open event streams must not hold the harness's shutdown up.
GRACEFUL_TIMEOUT: Final = 0.5
#: The UI socket: root (the daemon on the host, the harness in the container) only.
UI_SOCKET_MODE: Final = 0o600


def port_of_bind(bind: str) -> int:
    """``"http://127.0.0.1:8123"`` → 8123."""
    return int(bind.rsplit(":", 1)[1].strip("/"))


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_unix(path: Path) -> tuple[socket.socket, int]:
    """A socket bound at ``path`` with mode 0600, and the inode of its file.

    It is bound under a temporary name and renamed into place only after the chmod, so no
    one can connect through a wider mode meanwhile, and a stale ``path`` is replaced at once.
    """
    tmp = path.with_name(f".u{os.getpid()}")  # short: socket paths are limited to 107 bytes
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(tmp))
        os.chmod(tmp, UI_SOCKET_MODE)
        inode = os.stat(tmp).st_ino
        os.replace(tmp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sock, inode


def unlink_if_ours(path: Path, inode: int) -> None:
    """Remove the socket file unless another server has replaced it since."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


@contextlib.contextmanager
def unix_listener(path: Path) -> Iterator[list[str]]:
    """The UI's unix socket for one serving attempt (hypercorn adopts a duplicate of its
    descriptor); the file is removed when the attempt ends, unless replaced meanwhile."""
    sock, inode = bind_unix(path)
    try:
        fd = os.dup(sock.fileno())
    finally:
        sock.close()
    try:
        yield [f"fd://{fd}"]
    finally:
        unlink_if_ours(path, inode)


def ui_reporter(events: EventLog) -> Report:
    """A failing UI listener is told on the agent's own UI (a note), not to the daemon."""

    async def report(problem: str | None) -> None:
        if problem is not None:
            events.note(problem)

    return report


async def run_ui(
    ctx: UiContext,
    cfg: HarnessConfig,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The UI on its unix socket and, only when asked (``--ui-port``), on TCP; each reports
    once its first attempt came up or failed."""
    report = ui_reporter(ctx.events)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                serve_asgi,
                f"web UI (unix:{cfg.ui_socket})",
                create_app(ctx),
                partial(unix_listener, cfg.ui_socket),
                report=report,
                backoff=UI_RESTART_BACKOFF,
                graceful_timeout=GRACEFUL_TIMEOUT,
            )
        )
        if cfg.ui_port is not None:
            tcp_app = create_app(ctx, guard=allowed_hosts(cfg.ui_host, cfg.ui_allowed_hosts))
            # After the first bind the same port is kept across restarts.
            port = cfg.ui_port

            @contextlib.contextmanager
            def tcp_listener() -> Iterator[list[str]]:
                try:
                    yield [bind_address(cfg.ui_host, port)]
                finally:
                    ctx.port = None

            def bound(urls: list[str]) -> None:
                nonlocal port
                ctx.port = port = port_of_bind(urls[0])

            await nursery.start(
                partial(
                    serve_asgi,
                    "web UI (tcp)",
                    tcp_app,
                    tcp_listener,
                    report=report,
                    backoff=UI_RESTART_BACKOFF,
                    on_bound=bound,
                    graceful_timeout=GRACEFUL_TIMEOUT,
                )
            )
        task_status.started()


async def serve(
    cfg: HarnessConfig,
    *,
    out: IO[str] | None = None,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    runtime_dir = Path(tempfile.mkdtemp(prefix="hyperhive-harness-"))
    try:
        async with (
            open_event_log(cfg.events_db) as events,
            trio.open_nursery() as nursery,
        ):
            model = ModelFile(cfg.model_file, events)
            view = View(events, model)
            commands = Commands(events, model)
            mcp_host = McpHost(os.fspath(cfg.socket), runtime_dir / TOOL_SOCKET_NAME)
            loop = TurnLoop(
                cfg,
                events,
                view,
                commands,
                model,
                runtime_dir,
                python=sys.executable,
                mcp_host=mcp_host,
            )
            login = LoginSession(
                cfg.login_command,
                env=cfg.env,
                cwd=cfg.state_dir if cfg.state_dir.is_dir() else Path("/"),
                on_success=commands.retry_now,
                on_note=events.note,
            )
            ctx = UiContext(
                events=events,
                view=view,
                commands=commands,
                loop=loop,
                socket=os.fspath(cfg.socket),
                login=login,
                nursery=nursery,
                ui_socket=os.fspath(cfg.ui_socket),
            )
            await nursery.start(mcp_host.run)
            await nursery.start(loop.run)
            await nursery.start(run_ui, ctx, cfg)
            if out is not None:
                tcp = ""
                if cfg.ui_port is not None:
                    where = bind_address(cfg.ui_host, ctx.port) if ctx.port else "unavailable"
                    tcp = f" tcp http://{where}/"
                print(
                    f"hyperhive-harness: ready; ui unix:{cfg.ui_socket}{tcp} socket {cfg.socket} "
                    f"state {cfg.state_dir} pid {os.getpid()}",
                    file=out,
                    flush=True,
                )
            task_status.started(ctx.port)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
