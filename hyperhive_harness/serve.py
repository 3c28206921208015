"""``hyperhive-harness serve``: the Bus, the web UI and the turn loop in one nursery.

serve()
├── open_bus                    events db (or no-store) + its writer task
├── run_ui                      hypercorn-trio; restarted with backoff if it fails,
│                               so a broken UI never stops the turn loop
├── LoginSession                the UI's claude login (started on demand)
└── TurnLoop.run                connect → recv → claude → ack, reconnecting forever
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

import hypercorn.config
import hypercorn.trio
import trio

from hyperhive_harness.bus import Bus, open_bus
from hyperhive_harness.config import HarnessConfig
from hyperhive_harness.login import LoginSession
from hyperhive_harness.loop import TurnLoop
from hyperhive_harness.turns import Backoff
from hyperhive_harness.web import UiContext, allowed_hosts, create_app

UI_RESTART_SCHEDULE = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def read_sticky_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def write_sticky_port(path: Path, port: int) -> None:
    with contextlib.suppress(OSError):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(path)


def port_of_bind(bind: str) -> int:
    """``"http://127.0.0.1:8123"`` → 8123."""
    return int(bind.rsplit(":", 1)[1].strip("/"))


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_bind_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_bind_error(e) for e in exc.exceptions)
    return False


async def run_ui(
    ctx: UiContext,
    cfg: HarnessConfig,
    bus: Bus,
    *,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the UI forever. Reports the bound port (None if the first bind failed)."""
    app = create_app(ctx)
    backoff = Backoff(UI_RESTART_SCHEDULE)
    reported = False
    sticky = read_sticky_port(cfg.ui_port_file)
    while True:
        port = cfg.ui_port or sticky or 0
        hc = hypercorn.config.Config()
        hc.bind = [bind_address(cfg.ui_host, port)]
        hc.graceful_timeout = 0.5
        hc.accesslog = None
        try:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(hypercorn.trio.serve, cast(Any, app), hc))
                ctx.port = port_of_bind(binds[0])
                write_sticky_port(cfg.ui_port_file, ctx.port)
                if not reported:
                    reported = True
                    task_status.started(ctx.port)
                backoff.reset()
        except Exception as exc:
            ctx.port = None
            if _is_bind_error(exc) and port and not cfg.ui_port and port == sticky:
                bus.note(f"the UI's recorded port {port} is taken ({exc}); choosing a new one")
                sticky = None
                continue
            delay = backoff.next()
            bus.note(f"web UI failed ({type(exc).__name__}: {exc}); restarting in {delay:g} s")
            if not reported:
                reported = True
                task_status.started(None)
            await trio.sleep(delay)


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
                allowed=allowed_hosts(cfg.ui_host, cfg.ui_allowed_hosts),
            )
            await nursery.start(loop.run)
            port = await nursery.start(run_ui, ctx, cfg, bus)
            if out is not None:
                where = f"http://{bind_address(cfg.ui_host, port)}/" if port else "unavailable"
                print(
                    f"hyperhive-harness: ready; ui {where} socket {cfg.socket} "
                    f"state {cfg.state_dir} pid {os.getpid()}",
                    file=out,
                    flush=True,
                )
            task_status.started(port)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
