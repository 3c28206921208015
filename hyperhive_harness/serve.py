"""``hyperhive-harness serve``: the Bus, the web UI and the turn loop in one nursery.

serve()
├── open_bus                    events db (or no-store) + its writer task
├── run_ui                      hypercorn-trio on <socket dir>/ui.sock (0600; the daemon's
│   │                           dashboard proxies it), restarted with backoff if it fails,
│   │                           so a broken UI never stops the turn loop
│   └── (tcp)                   only with ``--ui-port``: a guarded TCP listener for debugging
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
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import IO, Any, Final, cast

import hypercorn.config
import hypercorn.trio
import trio
from starlette.types import ASGIApp

from hyperhive_harness.bus import Bus, open_bus
from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.login import LoginSession
from hyperhive_harness.loop import TurnLoop
from hyperhive_harness.turns import Backoff
from hyperhive_harness.web import UiContext, allowed_hosts, create_app

UI_RESTART_SCHEDULE: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
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


def _hypercorn(bind: str) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.bind = [bind]
    hc.graceful_timeout = 0.5
    hc.accesslog = None
    return hc


async def serve_ui_socket(
    app: ASGIApp, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on the unix socket ``path`` until cancelled; then remove the file."""
    sock, inode = bind_unix(path)
    try:
        # hypercorn adopts a duplicate of the descriptor; ours is closed in any case.
        hc = _hypercorn(f"fd://{os.dup(sock.fileno())}")
    finally:
        sock.close()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(hypercorn.trio.serve, cast(Any, app), hc))
            task_status.started()
    finally:
        unlink_if_ours(path, inode)


async def keep_serving(
    what: str,
    bus: Bus,
    run: Callable[..., Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run`` forever, restarted with backoff when it fails, so a broken UI never stops
    the turn loop. Reports after the first attempt, whether it came up or not."""
    backoff = Backoff(UI_RESTART_SCHEDULE)
    reported = False
    while True:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(run)
                backoff.reset()
                if not reported:
                    reported = True
                    task_status.started()
        except Exception as exc:
            delay = backoff.next()
            bus.note(
                f"web UI ({what}) failed ({type(exc).__name__}: {exc}); restarting in {delay:g} s"
            )
            if not reported:
                reported = True
                task_status.started()
            await trio.sleep(delay)


async def run_ui(
    ctx: UiContext,
    cfg: HarnessConfig,
    bus: Bus,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The UI on its unix socket and, only when asked (``--ui-port``), on TCP."""
    async with trio.open_nursery() as nursery:
        await nursery.start(
            keep_serving,
            f"unix:{cfg.ui_socket}",
            bus,
            partial(serve_ui_socket, create_app(ctx), cfg.ui_socket),
        )
        if cfg.ui_port is not None:
            tcp_app = create_app(ctx, guard=allowed_hosts(cfg.ui_host, cfg.ui_allowed_hosts))
            # After the first bind the same port is kept across restarts.
            port = cfg.ui_port

            async def tcp(*, task_status: trio.TaskStatus[None]) -> None:
                nonlocal port
                hc = _hypercorn(bind_address(cfg.ui_host, port))
                try:
                    async with trio.open_nursery() as inner:
                        binds = await inner.start(
                            partial(hypercorn.trio.serve, cast(Any, tcp_app), hc)
                        )
                        ctx.port = port = port_of_bind(binds[0])
                        task_status.started()
                finally:
                    ctx.port = None

            await nursery.start(keep_serving, "tcp", bus, tcp)
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
            open_bus(cfg.events_db, cfg.model_file) as bus,
            trio.open_nursery() as nursery,
        ):
            loop = TurnLoop(cfg, bus, runtime_dir, python=sys.executable)
            login = LoginSession(
                cfg.login_command,
                env=cfg.env,
                cwd=cfg.state_dir if cfg.state_dir.is_dir() else Path("/"),
                on_success=loop.retry_now,
                on_note=bus.note,
            )
            ctx = UiContext(
                bus=bus,
                controls=loop,
                socket=os.fspath(cfg.socket),
                login=login,
                nursery=nursery,
                ui_socket=os.fspath(cfg.ui_socket),
            )
            await nursery.start(loop.run)
            await nursery.start(run_ui, ctx, cfg, bus)
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
